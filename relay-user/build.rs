//! Builds the XDP program (relay-ebpf) for the BPF target and leaves the
//! object in OUT_DIR, where `EBPF_OBJECT` embeds it.
//!
//! By hand rather than with aya-build: aya-build 0.2 sets the nested
//! build's rustflags itself, and the program needs one more,
//! `-C target-feature=+allows-misaligned-mem-access`. LLVM's BPF backend
//! takes target features only from the command line (not per function),
//! and without this one it splits every load or store it cannot prove
//! aligned — which is every header field, a frame's IP header starting 14
//! bytes in — into byte loads, shifts and ors. The kernel JITs misaligned
//! packet and map access as plain loads on x86-64 and arm64; the verifier
//! still rejects misaligned stack access, which relay-ebpf's `mem` avoids.
//! The rest is what aya-build does: `rustup run nightly cargo build
//! -Z build-std=core --target bpfel-unknown-none`, with BTF and the
//! `bpf_target_arch` cfg.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, bail};

const PACKAGE: &str = "relay-ebpf";
const BINARY: &str = "relay";

fn main() -> anyhow::Result<()> {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let root = manifest.join("../relay-ebpf");
    // The build-dependency on relay-ebpf reruns us when its library or
    // relay-common changes; this covers its binary's sources.
    println!("cargo:rerun-if-changed={}", root.display());
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);

    let target = match env::var("CARGO_CFG_TARGET_ENDIAN")?.as_str() {
        "little" => "bpfel-unknown-none",
        "big" => "bpfeb-unknown-none",
        other => bail!("unsupported endianness {other}"),
    };
    // aya-ebpf's helpers and context accessors differ per architecture.
    let arch = env::var("CARGO_CFG_TARGET_ARCH")?;
    let arch = if arch.starts_with("riscv64") {
        "riscv64"
    } else {
        &arch
    };
    let rustflags = [
        format!("--cfg=bpf_target_arch=\"{arch}\""),
        "-Cdebuginfo=2".into(),
        "-Clink-arg=--btf".into(),
        "-Ctarget-feature=+allows-misaligned-mem-access".into(),
    ]
    .join("\x1f");

    let target_dir = out_dir.join("ebpf-target");
    let mut cmd = Command::new("rustup");
    cmd.args(["run", "nightly", "cargo", "build", "--package", PACKAGE])
        .args(["--bins", "--release", "--target", target])
        .args(["-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(&target_dir)
        .current_dir(&root)
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags)
        // The host build's compiler and wrappers are not the nightly's.
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTC_WRAPPER")
        // stdout is for build-script directives only.
        .stdout(Stdio::null());
    let out = cmd
        .output()
        .with_context(|| format!("running {cmd:?} (is rustup installed? `cargo xtask setup`)"))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        // Cargo shows a failed build script's stderr.
        eprintln!("{stderr}");
        bail!("building the XDP program failed ({}): {cmd:?}", out.status);
    }
    forward_warnings(&stderr);
    copy(
        &target_dir.join(target).join("release").join(BINARY),
        &out_dir.join(BINARY),
    )
}

/// The nested build's compiler warnings as cargo warnings (cargo shows a
/// build script's own output only when it fails), without the one every
/// build prints for the unstable target feature and the per-crate counts.
fn forward_warnings(stderr: &str) {
    let mut keep = false;
    for line in stderr.lines() {
        if line.starts_with("warning") || line.starts_with("error") {
            keep = line.starts_with("warning")
                && !line.contains("unstable feature specified for `-Ctarget-feature`")
                && !line.contains(" generated ");
        } else if line.trim_start().starts_with(char::is_uppercase) {
            // Cargo's progress ("Compiling ...", "Finished ...").
            keep = false;
        }
        if keep {
            println!("cargo:warning={line}");
        }
    }
}

fn copy(from: &Path, to: &Path) -> anyhow::Result<()> {
    fs::copy(from, to)
        .map(drop)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))
}
