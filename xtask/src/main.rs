//! `cargo xtask`: set up a machine for relayhub, build it, run it, lint and
//! test it. Plain std + clap so it builds fast on a bare machine.

mod cmd;
mod install;
mod setup;

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

use setup::Need;

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Build, run and test relayhub",
    version
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Make this machine ready (Debian 12, as root): apt packages, nightly
    /// rust-src and clippy, bpf-linker, bpffs, and for `test-guests` QEMU,
    /// a Debian kernel and virtme-ng. Skips what is present; elsewhere
    /// prints the commands to run.
    Setup {
        /// Only report what is missing; install nothing.
        #[arg(long)]
        check: bool,
    },
    /// Build relayhub (`cargo build -p relay-user`; its build.rs builds the XDP program).
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Build relayhub --release and run `relayhub run ARGS...` as root (via sudo if needed).
    Run {
        /// Arguments for `relayhub run`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Build relayhub --release and install it as a service: PREFIX/bin/relayhub,
    /// /etc/systemd/system/relayhub.service (ExecStart pointing at it) and
    /// /etc/relayhub/relayhub.toml (the example; an existing one is kept).
    Install {
        /// Stage under DIR instead of / (for packaging; needs no root).
        #[arg(long, value_name = "DIR")]
        destdir: Option<PathBuf>,
        /// Installation prefix of the binary.
        #[arg(long, default_value = "/usr/local")]
        prefix: PathBuf,
    },
    /// rustfmt --check and clippy -D warnings over the workspace.
    Lint,
    /// Everything, as root: prerequisites, lint, release build, unit and
    /// in-kernel tests, the end-to-end tests (one at a time), bench smoke,
    /// fuzzing, then the kernel WireGuard guests (as `test-guests`).
    Test {
        /// Passed to the test binaries (after cargo's `--`): a filter,
        /// --nocapture, --ignored, ...
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// The client matrix with the Linux kernel's WireGuard, as root: two
    /// spokes in QEMU guests (virtme-ng, software emulation) with a
    /// wireguard-go and a boringtun spoke (`kernel_clients_e2e`, ~1 min).
    TestGuests,
    /// Fuzz the userspace parsers (cargo-fuzz targets in fuzz/, nightly)
    /// for N seconds each; fails on any crash. Longer runs by hand:
    /// `cargo +nightly fuzz run TARGET -- -max_total_time=SECONDS`.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Targets to run (default: all).
        targets: Vec<String>,
    },
    /// Benchmarks, as root: every relay mode in one run on the same netns
    /// topology; writes bench/RESULTS.md and bench/results.png (~15 min).
    Bench {
        /// Short harness check (CI): tiny windows, results to
        /// target/bench-smoke, never asserts on speed.
        #[arg(long)]
        smoke: bool,
    },
}

fn main() -> ExitCode {
    cargo_bin_on_path();
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Setup { check } => setup::setup(check),
        Cmd::Build { release } => setup::ensure(Need::Build).and_then(|()| build(release)),
        Cmd::Run { args } => run(args),
        Cmd::Install { destdir, prefix } => install(destdir.as_deref(), &prefix),
        Cmd::Lint => lint(),
        Cmd::Test { args } => test(&args),
        Cmd::TestGuests => test_guests_alone(),
        Cmd::Fuzz { seconds, targets } => fuzz(seconds, &targets),
        Cmd::Bench { smoke } => bench(smoke),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `cargo install` puts bpf-linker in $CARGO_HOME/bin; the eBPF build and our
/// checks find it through PATH, which may lack that directory (sudo, CI).
fn cargo_bin_on_path() {
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")));
    let Some(bin) = cargo_home.map(|h| h.join("bin")) else {
        return;
    };
    let path = std::env::var_os("PATH").unwrap_or_default();
    if std::env::split_paths(&path).any(|p| p == bin) {
        return;
    }
    let joined = std::env::join_paths(std::iter::once(bin).chain(std::env::split_paths(&path)))
        .expect("PATH entries are joinable");
    // SAFETY: first thing in main, before any other thread exists.
    unsafe { std::env::set_var("PATH", joined) };
}

/// The workspace root (xtask lives one level below it).
fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask is inside the workspace")
}

/// `cargo` (the rustup proxy on PATH) in the workspace root.
fn cargo() -> Command {
    let mut c = Command::new("cargo");
    c.current_dir(root());
    c
}

fn build(release: bool) -> Result<()> {
    let mut c = cargo();
    c.args(["build", "-p", "relay-user"]);
    if release {
        c.arg("--release");
    }
    cmd::run(&mut c)
}

/// The relayhub binary of a release build, honouring CARGO_TARGET_DIR and
/// cargo config (asks `cargo metadata`).
fn relayhub_bin() -> Result<PathBuf> {
    let mut c = cargo();
    c.args(["metadata", "--format-version", "1", "--no-deps"]);
    let out = c
        .output()
        .with_context(|| format!("could not start `{}`", cmd::display(&c)))?;
    if !out.status.success() {
        bail!(
            "`{}` failed: {}",
            cmd::display(&c),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let json = String::from_utf8_lossy(&out.stdout);
    let dir = json_string(&json, "target_directory")
        .context("no target_directory in `cargo metadata` output")?;
    Ok(Path::new(&dir).join("release").join("relayhub"))
}

/// The first `"key":"value"` string in a JSON document (enough for cargo metadata).
fn json_string(json: &str, key: &str) -> Option<String> {
    let pattern = format!("\"{key}\":\"");
    let start = json.find(&pattern)? + pattern.len();
    let mut out = String::new();
    let mut chars = json[start..].chars();
    loop {
        match chars.next()? {
            '"' => return Some(out),
            '\\' => match chars.next()? {
                'n' => out.push('\n'),
                't' => out.push('\t'),
                'r' => out.push('\r'),
                'b' => out.push('\u{8}'),
                'f' => out.push('\u{c}'),
                'u' => {
                    let hex: String = chars.by_ref().take(4).collect();
                    out.push(char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?);
                }
                c => out.push(c), // \" \\ \/
            },
            c => out.push(c),
        }
    }
}

fn run(args: Vec<OsString>) -> Result<()> {
    setup::ensure(Need::Run)?;
    build(true)?;
    let bin = relayhub_bin()?;
    let mut c = if setup::is_root() {
        Command::new(&bin)
    } else if cmd::on_path("sudo") {
        let mut c = Command::new("sudo");
        c.arg(&bin);
        c
    } else {
        bail!(
            "relayhub needs root (XDP, BPF maps, WireGuard) and sudo is not available: run as root: {} run ...",
            bin.display()
        );
    };
    c.arg("run").args(args);
    eprintln!("+ {}", cmd::display(&c));
    let err = c.exec(); // only returns on failure
    Err(err).with_context(|| format!("could not exec `{}`", cmd::display(&c)))
}

fn install(destdir: Option<&Path>, prefix: &Path) -> Result<()> {
    install::check_args(destdir, prefix)?;
    setup::ensure(Need::Build)?;
    build(true)?;
    install::install(&relayhub_bin()?, &root().join("contrib"), destdir, prefix)
}

/// Named steps with their outcome, for the summary at the end of `lint` and `test`.
#[derive(Default)]
struct Steps(Vec<(String, Duration, bool)>);

impl Steps {
    /// Runs one step; a failure is recorded and printed, not returned.
    fn step(&mut self, name: &str, f: impl FnOnce() -> Result<()>) -> bool {
        eprintln!("==> {name}");
        let start = Instant::now();
        let result = f();
        if let Err(e) = &result {
            eprintln!("error: {name}: {e:#}");
        }
        self.0
            .push((name.to_string(), start.elapsed(), result.is_ok()));
        result.is_ok()
    }

    fn summary(&self, title: &str) -> Result<()> {
        eprintln!("\n{title} summary:");
        for (name, took, ok) in &self.0 {
            let verdict = if *ok { "ok" } else { "FAILED" };
            eprintln!("  {verdict:<6} {name} ({:.1}s)", took.as_secs_f64());
        }
        let failed: Vec<&str> = self
            .0
            .iter()
            .filter(|(_, _, ok)| !ok)
            .map(|(n, _, _)| n.as_str())
            .collect();
        if failed.is_empty() {
            eprintln!("{title}: all {} steps passed", self.0.len());
            Ok(())
        } else {
            bail!("{title}: failed: {}", failed.join(", "))
        }
    }
}

fn lint_steps(steps: &mut Steps) {
    steps.step("fmt", || {
        cmd::run(cargo().args(["fmt", "--all", "--", "--check"]))
    });
    // relay-ebpf only builds for the BPF target (on the host: "unwinding
    // panics are not supported without std"), so clippy it there, with
    // nightly like relay-user's build.rs does.
    steps.step("clippy", || {
        cmd::run(cargo().args([
            "clippy",
            "--workspace",
            "--exclude",
            "relay-ebpf",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))
    });
    steps.step("clippy relay-ebpf (bpfel-unknown-none)", || {
        cmd::run(cargo().args([
            "+nightly",
            "clippy",
            "-p",
            "relay-ebpf",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--",
            "-D",
            "warnings",
        ]))
    });
    // The fuzz targets are their own workspace: without this, a changed
    // signature they call breaks only the (later) fuzz step.
    steps.step("check fuzz targets", || {
        cmd::run(cargo().args([
            "+nightly",
            "check",
            "--manifest-path",
            "fuzz/Cargo.toml",
            "--bins",
        ]))
    });
}

fn lint() -> Result<()> {
    setup::ensure(Need::Build)?; // clippy runs relay-user's build.rs
    let mut steps = Steps::default();
    lint_steps(&mut steps);
    steps.summary("lint")
}

fn test(args: &[String]) -> Result<()> {
    if !setup::is_root() {
        bail!(
            "`cargo xtask test` must run as root (network namespaces, XDP, BPF maps): \
             run it from a root shell, e.g. `sudo -i`, then `cd {} && cargo xtask test`",
            root().display()
        );
    }
    setup::ensure(Need::Test)?;
    let mut steps = Steps::default();
    lint_steps(&mut steps);
    if !steps.step("build relayhub (release)", || build(true)) {
        return steps.summary("test");
    }
    let bin = relayhub_bin()?;
    if !bin.is_file() {
        bail!("built relayhub but {} does not exist", bin.display());
    }
    eprintln!("RELAYHUB_BIN={}", bin.display());
    let test_env = |c: &mut Command| {
        c.env("RELAYHUB_BIN", &bin);
        // Hubs under test get their settings from the tests alone, never
        // from this machine's /etc/relayhub/relayhub.toml.
        c.env("RELAYHUB_CONFIG", "/dev/null");
        if std::env::var_os("RUST_BACKTRACE").is_none() {
            c.env("RUST_BACKTRACE", "1");
        }
    };
    steps.step("unit + in-kernel tests", || {
        let mut c = cargo();
        // relay-ebpf only links for the BPF target (relay-user's build.rs builds it).
        c.args(["test", "--workspace", "--release"])
            .args(["--exclude", "relay-ebpf", "--exclude", "relay-tests"])
            .arg("--")
            .args(args);
        test_env(&mut c);
        cmd::run(&mut c)
    });
    // Each e2e test builds its own namespaces and could run in parallel, but
    // wireguard-go spokes and a hub on 2 cores time out under contention.
    steps.step("end-to-end tests (relay-tests)", || {
        let mut c = cargo();
        // --no-fail-fast: one failing test file must not hide the others'
        // results in a CI run.
        c.args([
            "test",
            "-p",
            "relay-tests",
            "--release",
            "--no-fail-fast",
            "--",
        ])
        .arg("--test-threads=1")
        .args(args);
        test_env(&mut c);
        cmd::run(&mut c)
    });
    steps.step("bench smoke (relay-bench run --smoke)", || run_bench(true));
    steps.step("fuzz userspace parsers (cargo-fuzz)", || {
        fuzz(TEST_FUZZ_SECONDS, &[])
    });
    // Last: the longest single test, and the only one that needs QEMU.
    steps.step("kernel WireGuard guests (kernel_clients_e2e)", || {
        test_guests(&bin)
    });
    steps.summary("test")
}

fn test_guests_alone() -> Result<()> {
    if !setup::is_root() {
        bail!("`cargo xtask test-guests` must run as root (network namespaces, taps, XDP)");
    }
    setup::ensure(Need::Guests)?;
    build(true)?;
    test_guests(&relayhub_bin()?)
}

/// `kernel_clients_e2e`: ignored by the plain e2e step (it boots two QEMU
/// guests), run here with the guest kit setup installed.
fn test_guests(relayhub: &Path) -> Result<()> {
    setup::ensure(Need::Guests)?;
    let mut c = cargo();
    c.args(["test", "-p", "relay-tests", "--release"])
        .args(["--test", "kernel_clients_e2e", "--"])
        .args(["--ignored", "--nocapture", "--test-threads=1"])
        .env("RELAYHUB_BIN", relayhub)
        .env("RELAYHUB_VNG", setup::vng())
        .env("RELAYHUB_GUEST_KERNEL", setup::GUEST_KERNEL);
    if std::env::var_os("RUST_BACKTRACE").is_none() {
        c.env("RUST_BACKTRACE", "1");
    }
    cmd::run(&mut c)
}

/// The cargo-fuzz targets in fuzz/fuzz_targets.
const FUZZ_TARGETS: [&str; 7] = [
    "handshake",
    "registry_json",
    "endpoint",
    "http_request",
    "route_tables",
    "fallback_sample",
    "join_tokens",
];
/// Seconds per fuzz target in `cargo xtask test`.
const TEST_FUZZ_SECONDS: u64 = 20;

/// Run each fuzz target for `seconds` (all when `only` is empty): corpus in
/// fuzz/corpus/TARGET (kept between runs), seeds from fuzz/seeds/TARGET.
/// A crash fails (libFuzzer saves the input in fuzz/artifacts/TARGET).
fn fuzz(seconds: u64, only: &[String]) -> Result<()> {
    setup::ensure(Need::Build)?; // relay-user's build.rs builds the XDP object
    if !setup::cargo_fuzz_installed() {
        eprintln!("cargo-fuzz is missing: installing it");
        cmd::run(&mut setup::cargo_fuzz_install())?;
    }
    for t in only {
        if !FUZZ_TARGETS.contains(&t.as_str()) {
            bail!(
                "unknown fuzz target {t:?}; targets: {}",
                FUZZ_TARGETS.join(", ")
            );
        }
    }
    let targets: Vec<&str> = if only.is_empty() {
        FUZZ_TARGETS.to_vec()
    } else {
        only.iter().map(String::as_str).collect()
    };
    let dir = root().join("fuzz");
    cmd::run(cargo().args(["+nightly", "fuzz", "build"]))?;
    let mut summary = Vec::new();
    for t in &targets {
        let corpus = dir.join("corpus").join(t);
        std::fs::create_dir_all(&corpus)
            .with_context(|| format!("cannot create {}", corpus.display()))?;
        let mut c = cargo();
        c.args(["+nightly", "fuzz", "run", t])
            .arg(&corpus)
            .arg(dir.join("seeds").join(t))
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .arg("-print_final_stats=1");
        eprintln!("+ {}", cmd::display(&c));
        let out = c
            .stderr(std::process::Stdio::piped())
            .output()
            .with_context(|| format!("could not start `{}`", cmd::display(&c)))?;
        let log = String::from_utf8_lossy(&out.stderr);
        // libFuzzer's progress is long: keep the last lines and the stats.
        let lines: Vec<&str> = log.lines().collect();
        for l in &lines[lines.len().saturating_sub(12)..] {
            eprintln!("  {l}");
        }
        let stat = |name: &str| {
            lines
                .iter()
                .find_map(|l| l.strip_prefix(&format!("stat::{name}:")))
                .map(|v| v.trim().to_string())
                .unwrap_or_else(|| "?".into())
        };
        let line = format!(
            "{t}: {} executions in {} s, {} crashes",
            stat("number_of_executed_units"),
            seconds,
            if out.status.success() { "0" } else { "1+" }
        );
        eprintln!("fuzz {line}");
        summary.push(line);
        if !out.status.success() {
            bail!(
                "fuzz target {t} failed ({}); the input is in {}",
                out.status,
                dir.join("artifacts").join(t).display()
            );
        }
    }
    eprintln!("fuzz summary:");
    for l in &summary {
        eprintln!("  {l}");
    }
    Ok(())
}

fn bench(smoke: bool) -> Result<()> {
    if !setup::is_root() {
        bail!("`cargo xtask bench` must run as root (network namespaces, XDP, BPF maps)");
    }
    setup::ensure(Need::Test)?;
    run_bench(smoke)
}

/// Build relayhub and relay-bench (release) and run the benchmark driver;
/// the full run writes bench/RESULTS.md and bench/results.png.
fn run_bench(smoke: bool) -> Result<()> {
    cmd::run(cargo().args([
        "build",
        "--release",
        "-p",
        "relay-user",
        "-p",
        "relay-bench",
    ]))?;
    let relayhub = relayhub_bin()?;
    let release = relayhub.parent().context("release directory")?;
    let (out, command) = if smoke {
        (release.join("bench-smoke"), "cargo xtask bench --smoke")
    } else {
        // The plot's labels need a TTF font; without one it has bare bars.
        let font = Path::new("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf");
        if !font.exists() && cmd::on_path("apt-get") {
            let _ = cmd::run(Command::new("apt-get").args([
                "install",
                "-y",
                "-q",
                "fonts-dejavu-core",
            ]));
        }
        (root().join("bench"), "cargo xtask bench")
    };
    let mut c = Command::new(release.join("relay-bench"));
    c.current_dir(root())
        .env("RELAYHUB_BIN", &relayhub)
        .args(["run", "--command", command, "--out"])
        .arg(&out);
    if smoke {
        c.arg("--smoke");
    }
    cmd::run(&mut c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_string_unescapes() {
        let json = r#"{"packages":[],"target_directory":"/a \"b\"\\c\u00e9","version":1}"#;
        assert_eq!(
            json_string(json, "target_directory").as_deref(),
            Some("/a \"b\"\\cé")
        );
        assert_eq!(json_string(json, "workspace_root"), None);
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
