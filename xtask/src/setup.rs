//! What a machine needs to build, run and test relayhub, and how to get it
//! (see /work/shared/TOOLCHAIN.md). Checks are cheap, so every build/run/test
//! checks first and only installs what is missing.

use std::process::Command;

use anyhow::{Result, bail};

use crate::cmd::{self, display, probe, probe_any_status};

/// Debian packages, with a program that shows the package is present on
/// machines without dpkg (`None`: a library, only needed to build
/// bpf-linker), and the least command that needs it: a hub that only runs
/// gets no test tools.
const APT_PACKAGES: &[(&str, Option<&str>, Need)] = &[
    // To build bpf-linker against LLVM 22 (the LLVM of rustc 1.95 and nightly).
    ("llvm-22-dev", None, Need::Build),
    ("libpolly-22-dev", None, Need::Build),
    ("zlib1g-dev", None, Need::Build),
    ("libzstd-dev", None, Need::Build),
    ("libxml2-dev", None, Need::Build),
    // etcd-client's build script compiles etcd's protobuf definitions.
    ("protobuf-compiler", Some("protoc"), Need::Build),
    // Its well-known types (google/protobuf/*.proto) that etcd's import: a
    // Recommends of protobuf-compiler, which --no-install-recommends skips.
    ("libprotobuf-dev", None, Need::Build),
    // The hub's own WireGuard where the kernel has no module, and `ip`.
    ("wireguard-go", Some("wireguard-go"), Need::Run),
    ("wireguard-tools", Some("wg"), Need::Run),
    ("iproute2", Some("ip"), Need::Run),
    // Egress: the hub's masquerading table for exit spokes (`nft -f`).
    ("nftables", Some("nft"), Need::Run),
    // Namespaces, NAT and traffic in the end-to-end tests and benchmarks.
    ("iptables", Some("iptables"), Need::Test),
    ("conntrack", Some("conntrack"), Need::Test),
    ("iperf3", Some("iperf3"), Need::Test),
    ("tcpdump", Some("tcpdump"), Need::Test),
    ("ethtool", Some("ethtool"), Need::Test),
    ("bpftool", Some("bpftool"), Need::Test),
    ("curl", Some("curl"), Need::Test),
    // The console's end-to-end test drives a real browser (WebDriver).
    ("chromium", Some("chromium"), Need::Test),
    ("chromium-driver", Some("chromedriver"), Need::Test),
    ("iputils-ping", Some("ping"), Need::Test),
    // failover_e2e moves the hubs' shared address with VRRP.
    ("keepalived", Some("keepalived"), Need::Test),
    // The shared-store tests run a throwaway etcd (`--store etcd://`).
    ("etcd-server", Some("etcd"), Need::Test),
    // `systemd-analyze verify` on the units in contrib/ (contrib_units).
    ("systemd", Some("systemd-analyze"), Need::Test),
    // Kernel WireGuard spokes in QEMU guests (`cargo xtask test-guests`):
    // virtme-ng boots the guest kernel over the host's root filesystem,
    // from an initramfs that needs a static busybox; kmod's depmod and
    // modprobe index and load the guest kernel's modules.
    ("qemu-system-x86", Some("qemu-system-x86_64"), Need::Guests),
    ("kmod", Some("depmod"), Need::Guests),
    ("busybox-static", Some("busybox"), Need::Guests),
    ("python3-venv", Some("python3"), Need::Guests),
];

/// rust-src: relay-user's build.rs compiles core for the BPF target
/// (-Z build-std=core).
/// clippy: `cargo xtask lint` checks relay-ebpf for the BPF target.
const NIGHTLY_COMPONENTS: &[&str] = &["rust-src", "clippy"];

const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
const BPFFS: &str = "/sys/fs/bpf";

/// What a subcommand needs; each level includes the ones before it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Need {
    /// Building and linting relayhub: nightly with rust-src (the eBPF build) and
    /// clippy, and bpf-linker.
    Build,
    /// Running the hub: wireguard-go, iproute2, bpffs.
    Run,
    /// Testing it: test tools, boringtun, cargo-fuzz, promtool.
    Test,
    /// The kernel WireGuard guests of `cargo xtask test-guests`: QEMU, a
    /// Debian kernel and virtme-ng (everything `setup` installs).
    Guests,
}

/// One missing thing and the commands that provide it.
struct Missing {
    what: String,
    /// Commands in order; `root` says whether they need root.
    fix: Vec<(Command, bool)>,
    /// A hint when there is no command we can run (e.g. no rustup).
    hint: Option<String>,
}

fn host() -> (bool, bool) {
    (is_root(), is_debian())
}

/// `cargo xtask setup`: install whatever is missing (root on Debian only),
/// otherwise print the commands to run. With `check_only`, install nothing.
pub fn setup(check_only: bool) -> Result<()> {
    let missing = find_missing(Need::Guests, true);
    if missing.is_empty() {
        eprintln!("setup: nothing to do");
        return Ok(());
    }
    let (root, debian) = host();
    if check_only || !root || !debian {
        print_instructions(&missing, root, debian);
        bail!("{} prerequisite(s) missing (see above)", missing.len());
    }
    install(missing)?;
    // Recheck: an install that "succeeded" but left things missing is a failure.
    let still = find_missing(Need::Guests, false);
    if !still.is_empty() {
        print_instructions(&still, root, debian);
        bail!("still missing after setup: {}", names(&still));
    }
    eprintln!("setup: done");
    Ok(())
}

/// The check used by build/run/test: silent when all is there; as root on
/// Debian runs `setup`; otherwise names the commands to run and fails.
pub fn ensure(need: Need) -> Result<()> {
    let missing = find_missing(need, false);
    if missing.is_empty() {
        return Ok(());
    }
    let (root, debian) = host();
    if root && debian {
        eprintln!("missing {}: running `cargo xtask setup`", names(&missing));
        return setup(false);
    }
    print_instructions(&missing, root, debian);
    bail!(
        "missing prerequisites: {} — run `cargo xtask setup` as root or the commands above",
        names(&missing)
    );
}

fn names(missing: &[Missing]) -> String {
    missing
        .iter()
        .map(|m| m.what.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn install(missing: Vec<Missing>) -> Result<()> {
    for m in missing {
        if m.fix.is_empty() {
            bail!("cannot install {}: {}", m.what, m.hint.unwrap_or_default());
        }
        eprintln!("setup: installing {}", m.what);
        for (mut command, _) in m.fix {
            cmd::run(&mut command)?;
        }
    }
    Ok(())
}

fn print_instructions(missing: &[Missing], root: bool, debian: bool) {
    eprintln!("missing prerequisites:");
    for m in missing {
        eprintln!("  - {}", m.what);
    }
    if !debian {
        eprintln!(
            "not Debian: `cargo xtask setup` installs nothing here; the Debian commands are below, \
             install the equivalent packages with your package manager"
        );
    } else if !root {
        eprintln!(
            "not root: `cargo xtask setup` installs nothing; run these (or `cargo xtask setup` as root):"
        );
    } else {
        eprintln!("to install, run `cargo xtask setup` or:");
    }
    for m in missing {
        if let Some(hint) = &m.hint {
            eprintln!("    # {hint}");
        }
        for (command, needs_root) in &m.fix {
            let sudo = if *needs_root && !root { "sudo " } else { "" };
            eprintln!("    {sudo}{}", display(command));
        }
    }
}

/// Everything missing for `need`, in install order. With `verbose`, also
/// says what is present (and so skipped).
fn find_missing(need: Need, verbose: bool) -> Vec<Missing> {
    let say = |s: String| {
        if verbose {
            eprintln!("setup: {s}");
        }
    };
    let mut missing = Vec::new();
    let debian = is_debian();

    // bpf-linker first: whether it works decides which packages matter
    // off Debian (the -dev libraries only serve to build it).
    let linker = bpf_linker_version();
    let linker_ok = linker.as_deref() == Some(BPF_LINKER_VERSION);

    if need >= Need::Run || !linker_ok {
        let absent = if debian {
            missing_debs(need)
        } else {
            missing_programs(need, linker_ok)
        };
        if absent.is_empty() {
            say(format!(
                "skip apt packages: all {} installed",
                APT_PACKAGES.iter().filter(|(_, _, n)| *n <= need).count()
            ));
        } else {
            let mut install = Command::new("apt-get");
            install
                .env("DEBIAN_FRONTEND", "noninteractive")
                .args(["install", "-y", "--no-install-recommends"])
                .args(&absent);
            let mut update = Command::new("apt-get");
            update.arg("update");
            missing.push(Missing {
                what: format!("packages {}", absent.join(" ")),
                fix: vec![(update, true), (install, true)],
                hint: None,
            });
        }
    }

    if !cmd::on_path("rustup") {
        missing.push(Missing {
            what: "rustup".into(),
            fix: vec![],
            hint: Some("install rustup from https://rustup.rs, then rerun".into()),
        });
    } else {
        let installed = probe(
            "rustup",
            &["component", "list", "--toolchain", "nightly", "--installed"],
        );
        match installed {
            None => {
                let mut c = Command::new("rustup");
                c.args(["toolchain", "install", "nightly", "--profile", "minimal"]);
                for component in NIGHTLY_COMPONENTS {
                    c.args(["--component", component]);
                }
                missing.push(Missing {
                    what: format!("nightly toolchain with {}", NIGHTLY_COMPONENTS.join(", ")),
                    fix: vec![(c, false)],
                    hint: None,
                });
            }
            Some(list) => {
                // `rust-src`, but `clippy-x86_64-unknown-linux-gnu`.
                let has = |name: &str| {
                    list.lines()
                        .map(str::trim)
                        .any(|l| l == name || l.starts_with(&format!("{name}-")))
                };
                let absent: Vec<&str> = NIGHTLY_COMPONENTS
                    .iter()
                    .copied()
                    .filter(|c| !has(c))
                    .collect();
                if absent.is_empty() {
                    say(format!(
                        "skip nightly components: {} installed",
                        NIGHTLY_COMPONENTS.join(", ")
                    ));
                } else {
                    let mut c = Command::new("rustup");
                    c.args(["component", "add"])
                        .args(&absent)
                        .args(["--toolchain", "nightly"]);
                    missing.push(Missing {
                        what: format!("nightly components {}", absent.join(", ")),
                        fix: vec![(c, false)],
                        hint: None,
                    });
                }
            }
        }
    }

    if linker_ok {
        say(format!("skip bpf-linker: {BPF_LINKER_VERSION} installed"));
    } else {
        let mut c = Command::new("cargo");
        // --force: also replaces a bpf-linker 0.13.0 that no longer runs
        // (e.g. its libLLVM went away).
        c.env("LLVM_PREFIX", LLVM_PREFIX).args([
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--no-default-features",
            "--features",
            "llvm-22",
            "--force",
        ]);
        let found = match linker {
            Some(v) => format!("found {v}"),
            None => "not found or not working".into(),
        };
        missing.push(Missing {
            what: format!("bpf-linker {BPF_LINKER_VERSION} ({found})"),
            fix: vec![(c, false)],
            hint: None,
        });
    }

    if need >= Need::Run {
        if bpffs_mounted() {
            say(format!("skip bpffs: mounted at {BPFFS}"));
        } else {
            let mut c = Command::new("mount");
            c.args(["-t", "bpf", "bpf", BPFFS]);
            missing.push(Missing {
                what: format!("bpffs at {BPFFS}"),
                fix: vec![(c, true)],
                hint: None,
            });
        }
    }

    if need >= Need::Test {
        if cmd::on_path("promtool") {
            say("skip promtool: installed".into());
        } else {
            // Only the checker from Debian's prometheus package: installing
            // the package would also start a Prometheus server.
            let mut c = Command::new("sh");
            c.args(["-ec", PROMTOOL_INSTALL]);
            missing.push(Missing {
                what: "promtool (from Debian's prometheus package)".into(),
                fix: vec![(c, true)],
                hint: None,
            });
        }
    }
    if need >= Need::Test {
        if boringtun_installed() {
            say(format!("skip boringtun-cli: {BORINGTUN_VERSION} installed"));
        } else {
            // A client of the client-matrix test (clients_e2e); Debian has
            // no package for it.
            let mut c = Command::new("cargo");
            c.args([
                "install",
                "boringtun-cli",
                "--version",
                BORINGTUN_VERSION,
                "--locked",
            ]);
            missing.push(Missing {
                what: format!("boringtun-cli {BORINGTUN_VERSION} (for the client matrix test)"),
                fix: vec![(c, false)],
                hint: None,
            });
        }
        if cargo_fuzz_installed() {
            say("skip cargo-fuzz: installed".into());
        } else {
            missing.push(Missing {
                what: "cargo-fuzz (for `cargo xtask fuzz`)".into(),
                fix: vec![(cargo_fuzz_install(), false)],
                hint: None,
            });
        }
    }
    if need >= Need::Guests {
        if guest_kernel_installed() {
            say(format!("skip guest kernel: {GUEST_KERNEL} installed"));
        } else {
            let mut c = Command::new("sh");
            c.args([
                "-ec",
                GUEST_KERNEL_INSTALL,
                "sh",
                GUEST_KERNEL,
                GUEST_KERNEL_DIR,
            ]);
            missing.push(Missing {
                what: format!("guest kernel {GUEST_KERNEL} (Debian's linux-image, unpacked)"),
                fix: vec![(c, true)],
                hint: None,
            });
        }
        if vng_installed() {
            say(format!("skip virtme-ng: {VIRTME_NG_VERSION} installed"));
        } else {
            // Its own venv: Debian's python refuses pip installs into the
            // system (PEP 668), and a fixed path does not depend on PATH.
            // Debian's python, not whichever PATH finds (pyenv), so the
            // venv's interpreter stays where python3-venv put it.
            let python = if cmd::on_path("/usr/bin/python3") {
                "/usr/bin/python3"
            } else {
                "python3"
            };
            let dir = virtme_ng_venv();
            let mut venv = Command::new(python);
            venv.args(["-m", "venv", "--clear", &dir]);
            let mut pip = Command::new(format!("{dir}/bin/pip"));
            pip.args([
                "install",
                "--disable-pip-version-check",
                "-q",
                &format!("virtme-ng=={VIRTME_NG_VERSION}"),
            ]);
            missing.push(Missing {
                what: format!("virtme-ng {VIRTME_NG_VERSION} (PyPI, in {dir})"),
                fix: vec![(venv, true), (pip, true)],
                hint: None,
            });
        }
    }
    missing
}

/// The kernel the guests of `cargo xtask test-guests` boot: Debian 12's,
/// whose wireguard.ko is the kernel WireGuard most spokes run (README
/// "Clients" names it as tested).
pub const GUEST_KERNEL: &str = "6.1.0-57-amd64";
/// Where its modules go (with the image as `vmlinuz`, where virtme-ng
/// looks for a kernel given by version).
const GUEST_KERNEL_DIR: &str = "/usr/lib/modules";

/// Fetch linux-image-$1 without installing it (no initramfs or bootloader
/// hooks touch the host), copy its modules to $2/$1, index them and put the
/// image there last: `vmlinuz` marks a complete install.
const GUEST_KERNEL_INSTALL: &str = "v=$1; dst=$2/$1; d=$(mktemp -d); cd \"$d\"; \
    get() { apt-get download -q -o APT::Sandbox::User=root linux-image-$v; }; \
    get || { apt-get update && get; }; \
    dpkg-deb -x linux-image-${v}_*.deb x; \
    m=x/lib/modules/$v; [ -d \"$m\" ] || m=x/usr/lib/modules/$v; \
    mkdir -p \"$dst\"; cp -a \"$m/.\" \"$dst/\"; \
    depmod -a $v; install -m 0644 x/boot/vmlinuz-$v \"$dst/vmlinuz\"; \
    cd /; rm -rf \"$d\"";

/// Whether the guest kernel is unpacked completely (see GUEST_KERNEL_INSTALL).
fn guest_kernel_installed() -> bool {
    let dir = std::path::Path::new(GUEST_KERNEL_DIR).join(GUEST_KERNEL);
    [
        "vmlinuz",
        "modules.dep",
        "kernel/drivers/net/wireguard/wireguard.ko",
    ]
    .iter()
    .all(|f| dir.join(f).is_file())
}

/// virtme-ng, pinned: it boots a kernel over the host's root filesystem,
/// so the guests run the host's wg-quick, ping and shell.
pub const VIRTME_NG_VERSION: &str = "1.42";

/// The venv virtme-ng is installed in (one per version: a version bump
/// installs afresh).
fn virtme_ng_venv() -> String {
    format!("/opt/virtme-ng-{VIRTME_NG_VERSION}")
}

/// The `vng` of the pinned virtme-ng.
pub fn vng() -> String {
    format!("{}/bin/vng", virtme_ng_venv())
}

fn vng_installed() -> bool {
    probe(&vng(), &["--version"]).is_some_and(|v| v.contains(VIRTME_NG_VERSION))
}

/// The boringtun the client matrix tests (README "Clients").
pub const BORINGTUN_VERSION: &str = "0.7.1";

/// Whether boringtun-cli BORINGTUN_VERSION is on PATH.
pub fn boringtun_installed() -> bool {
    probe("boringtun-cli", &["--version"]).is_some_and(|v| v.contains(BORINGTUN_VERSION))
}

/// Whether `cargo fuzz` works (it runs the fuzz targets with nightly).
pub fn cargo_fuzz_installed() -> bool {
    probe("cargo-fuzz", &["--version"]).is_some()
}

/// `cargo install cargo-fuzz --locked` (from crates.io, into $CARGO_HOME/bin).
pub fn cargo_fuzz_install() -> Command {
    let mut c = Command::new("cargo");
    c.args(["install", "cargo-fuzz", "--locked"]);
    c
}

/// Extract /usr/bin/promtool from the prometheus .deb into /usr/local/bin.
const PROMTOOL_INSTALL: &str = "d=$(mktemp -d); cd \"$d\"; \
    apt-get download prometheus || { apt-get update && apt-get download prometheus; }; \
    dpkg-deb -x prometheus_*.deb x; install -m 0755 x/usr/bin/promtool /usr/local/bin/promtool; \
    cd /; rm -rf \"$d\"";

/// `Some("0.13.0")` for `bpf-linker 0.13.0`; `None` if it does not run.
fn bpf_linker_version() -> Option<String> {
    let out = probe("bpf-linker", &["--version"])?;
    let version = out.split_whitespace().nth(1)?;
    Some(version.to_string())
}

/// Packages of APT_PACKAGES up to `need` that dpkg does not list as installed.
fn missing_debs(need: Need) -> Vec<String> {
    let wanted = || APT_PACKAGES.iter().filter(move |(_, _, n)| *n <= need);
    let mut args = vec!["-W", "-f=${Package} ${db:Status-Abbrev}\n"];
    args.extend(wanted().map(|(p, _, _)| *p));
    let out = probe_any_status("dpkg-query", &args).unwrap_or_default();
    let installed: Vec<&str> = out
        .lines()
        .filter_map(|l| {
            let (name, status) = l.split_once(' ')?;
            status.starts_with("ii").then_some(name)
        })
        .collect();
    wanted()
        .map(|(p, _, _)| *p)
        .filter(|p| !installed.contains(p))
        .map(String::from)
        .collect()
}

/// Off Debian: the packages whose program is not found (sbin included, as
/// non-root PATHs often lack it); libraries only if bpf-linker must be built.
fn missing_programs(need: Need, linker_ok: bool) -> Vec<String> {
    let found = |prog: &str| {
        cmd::on_path(prog)
            || ["/usr/sbin", "/sbin", "/usr/bin"]
                .iter()
                .any(|dir| cmd::on_path(&format!("{dir}/{prog}")))
    };
    APT_PACKAGES
        .iter()
        .filter(|(_, _, n)| *n <= need)
        .filter(|(_, prog, _)| match prog {
            Some(prog) => !found(prog),
            None => !linker_ok,
        })
        .map(|(p, _, _)| p.to_string())
        .collect()
}

fn bpffs_mounted() -> bool {
    std::fs::read_to_string("/proc/mounts")
        .map(|mounts| {
            mounts.lines().any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.len() > 2 && f[1] == BPFFS && f[2] == "bpf"
            })
        })
        .unwrap_or(false)
}

/// Effective uid 0, from /proc/self/status (std only, no libc).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

fn is_debian() -> bool {
    std::fs::read_to_string("/etc/os-release")
        .map(|s| {
            s.lines()
                .any(|l| l.trim() == "ID=debian" || l.trim() == "ID=\"debian\"")
        })
        .unwrap_or(false)
}
