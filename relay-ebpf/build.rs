use which::which;

/// Building this crate needs the `bpf-linker` binary, which cargo cannot
/// express as a dependency: rebuild when it changes, and say how to get it.
fn main() {
    match which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(_) => println!(
            "cargo:warning=bpf-linker not found: run `cargo xtask setup` (or see TOOLCHAIN in README)"
        ),
    }
}
