//! Network namespaces for tests, each removed (with what runs in it) by a
//! drop guard, named with a caller's prefix, the process id and a sequence
//! number so that concurrent tests and test binaries never collide.

use std::{
    fs::File,
    os::fd::AsRawFd,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    thread::JoinHandle,
};

static NS_SEQ: AtomicU32 = AtomicU32::new(0);

/// Run `args` (program first); panic with its stderr unless it succeeds.
pub fn run(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Move the calling thread into the network namespace of `ns`.
pub fn enter(ns: &File) -> std::io::Result<()> {
    // SAFETY: plain syscall on a valid descriptor.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Kill every process in namespace `name`, then delete it.
fn destroy(name: &str) {
    if let Ok(o) = Command::new("ip").args(["netns", "pids", name]).output() {
        for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
            let _ = Command::new("kill").arg(pid).status();
        }
    }
    let _ = Command::new("ip").args(["netns", "del", name]).status();
}

/// A network namespace the test thread lives in until dropped.
pub struct Netns {
    pub name: String,
    pub orig: File,
}

impl Netns {
    /// A namespace named `rhg-<pid>-<n>`, entered by the calling thread.
    pub fn new() -> Self {
        Self::with_prefix("rhg")
    }

    /// A namespace named `<prefix>-<pid>-<n>`, entered by the calling thread.
    pub fn with_prefix(prefix: &str) -> Self {
        let name = format!(
            "{prefix}-{}-{}",
            std::process::id(),
            NS_SEQ.fetch_add(1, Ordering::Relaxed)
        );
        run(&["ip", "netns", "add", &name]);
        let orig = File::open("/proc/thread-self/ns/net").expect("own netns");
        let ns = Self { name, orig };
        let f = File::open(format!("/run/netns/{}", ns.name)).expect("netns file");
        enter(&f).expect("setns");
        ns
    }

    /// `ip -n NAME ARGS...` (`args` split at whitespace).
    pub fn ip(&self, args: &str) {
        let mut v = vec!["ip", "-n", &self.name];
        v.extend(args.split_whitespace());
        run(&v);
    }

    pub fn sysctl(&self, kv: &str) {
        run(&["ip", "netns", "exec", &self.name, "sysctl", "-qw", kv]);
    }

    /// A veth pair `a` (MAC `a_mac`) / `b` (MAC `b_mac`) in this namespace.
    pub fn veth(&self, a: &str, a_mac: [u8; 6], b: &str, b_mac: [u8; 6]) {
        self.ip(&format!(
            "link add {a} address {} type veth peer name {b} address {}",
            crate::frame::mac(a_mac),
            crate::frame::mac(b_mac)
        ));
    }

    /// The ifindex of `dev` (the calling thread must be inside).
    pub fn ifindex(&self, dev: &str) -> u32 {
        let c = std::ffi::CString::new(dev).unwrap();
        // SAFETY: valid NUL-terminated name.
        let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
        assert_ne!(i, 0, "ifindex of {dev}");
        i
    }
}

impl Default for Netns {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = enter(&self.orig);
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// The namespace `<prefix>-<pid>` (lo up) and its wireguard-go interface
/// `<prefix><pid>`, for wireguard-go initiating to a UDP socket of the
/// test in the same namespace; processes in it are killed and it is
/// deleted on drop. The calling thread stays where it is.
pub struct WgGoNs {
    pub name: String,
    pub ifname: String,
}

impl WgGoNs {
    pub fn new(prefix: &str) -> Self {
        let tag = format!("{:04x}", std::process::id() & 0xffff);
        let ns = WgGoNs {
            name: format!("{prefix}-{tag}"),
            ifname: format!("{prefix}{tag}"),
        };
        let _ = Command::new("ip").args(["netns", "del", &ns.name]).status();
        run(&["ip", "netns", "add", &ns.name]);
        run(&["ip", "-n", &ns.name, "link", "set", "lo", "up"]);
        ns
    }

    /// Run `f` on a thread that entered the namespace (sockets it opens
    /// live there).
    pub fn spawn_inside<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> JoinHandle<T> {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let ns = File::open(&path).expect("netns file");
            enter(&ns).expect("setns");
            f()
        })
    }

    /// Start wireguard-go with private key `private` (base64), one peer
    /// `peer` (public key, base64) at `endpoint` (persistent keepalive 1 s,
    /// so it initiates at once), interface up.
    pub fn initiate(&self, private: &str, peer: &str, endpoint: &str) {
        let keyfile = std::env::temp_dir().join(format!("{}.key", self.name));
        std::fs::write(&keyfile, private).unwrap();
        run(&[
            "ip",
            "netns",
            "exec",
            &self.name,
            "wireguard-go",
            &self.ifname,
        ]);
        run(&[
            "ip",
            "netns",
            "exec",
            &self.name,
            "wg",
            "set",
            &self.ifname,
            "private-key",
            keyfile.to_str().unwrap(),
            "peer",
            peer,
            "endpoint",
            endpoint,
            "allowed-ips",
            "10.99.0.2/32",
            "persistent-keepalive",
            "1",
        ]);
        let _ = std::fs::remove_file(&keyfile);
        run(&["ip", "-n", &self.name, "link", "set", &self.ifname, "up"]);
    }
}

impl Drop for WgGoNs {
    fn drop(&mut self) {
        destroy(&self.name);
    }
}
