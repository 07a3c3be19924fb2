//! Running external commands: echo them, fail loudly with the command line.

use std::ffi::OsStr;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

/// Runs `cmd` with inherited stdio, echoing it first (`+ cmd`).
/// Fails with the command line if it cannot start or exits unsuccessfully.
pub fn run(cmd: &mut Command) -> Result<()> {
    let line = display(cmd);
    eprintln!("+ {line}");
    let status = cmd
        .status()
        .with_context(|| format!("could not start `{line}`"))?;
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    Ok(())
}

/// Runs a probe quietly and returns its stdout if it exited successfully;
/// `None` if it could not start or failed. Not echoed: probes are not actions.
pub fn probe(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Like [`probe`], but returns stdout even when the command exits non-zero
/// (dpkg-query fails if any one package is unknown yet still prints the others).
pub fn probe_any_status(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The command as a shell line: `VAR=value program args...`, quoted where needed.
pub fn display(cmd: &Command) -> String {
    let mut words = Vec::new();
    for (key, value) in cmd.get_envs() {
        if let Some(value) = value {
            words.push(format!(
                "{}={}",
                key.to_string_lossy(),
                quote(value.to_string_lossy().as_ref())
            ));
        }
    }
    words.push(quote_os(cmd.get_program()));
    words.extend(cmd.get_args().map(quote_os));
    words.join(" ")
}

fn quote_os(s: &OsStr) -> String {
    quote(&s.to_string_lossy())
}

fn quote(s: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c);
    if !s.is_empty() && s.chars().all(plain) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Whether `program` is an executable file in PATH (or an absolute path to one).
pub fn on_path(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let is_exe = |p: &std::path::Path| {
        p.metadata()
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if program.contains('/') {
        return is_exe(std::path::Path::new(program));
    }
    std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).any(|dir| is_exe(&dir.join(program))))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_quotes_and_shows_env() {
        let mut cmd = Command::new("cargo");
        cmd.env("LLVM_PREFIX", "/usr/lib/llvm-22").args([
            "test",
            "--",
            "it's",
            "a b",
            "--test-threads=1",
        ]);
        assert_eq!(
            display(&cmd),
            r"LLVM_PREFIX=/usr/lib/llvm-22 cargo test -- 'it'\''s' 'a b' --test-threads=1"
        );
    }
}
