//! wireguard-go in a private network namespace, initiating to a UDP socket
//! of the test in the same namespace (the mac1 and cookie interop tests).

use std::process::Command;
use std::thread::JoinHandle;

use wireguard_control::Key;

use super::run;

/// The namespace `<prefix>-<pid>` (lo up) and its wireguard-go interface
/// `<prefix><pid>`; processes in it are killed and it is deleted on drop.
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
            let ns = std::fs::File::open(&path).expect("netns file");
            nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
    }

    /// Start wireguard-go with `private`, one peer `peer` at `endpoint`
    /// (persistent keepalive 1 s, so it initiates at once), interface up.
    pub fn initiate(&self, private: &Key, peer: &Key, endpoint: &str) {
        let keyfile = std::env::temp_dir().join(format!("{}.key", self.name));
        std::fs::write(&keyfile, private.to_base64()).unwrap();
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
            &peer.to_base64(),
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
        if let Ok(o) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
        {
            for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                let _ = Command::new("kill").arg(pid).status();
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}
