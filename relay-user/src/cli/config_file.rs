//! The optional settings file: TOML with one top-level key per
//! `RELAYHUB_*` environment variable, named like its long flag
//! (`state-dir = "/var/lib/relayhub"`, `port = 51820`, `keep-on-exit =
//! true`). A key sets every command's flag of that name, as the variable
//! does (`metrics-addr` is where `run` listens and where `status` asks).
//!
//! The file is `--config FILE` / `RELAYHUB_CONFIG`, else
//! [`DEFAULT_PATH`] when it exists. Precedence: flag, then variable, then
//! file, then the built-in default. Each file value is checked with its
//! argument's own clap parser, then becomes that argument's default, so
//! clap applies the order itself and the values reach the commands exactly
//! as if typed. Every error names FILE:LINE.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::{Arg, ArgAction, ArgMatches, Command, CommandFactory as _, FromArgMatches as _};
use toml::de::{DeTable, DeValue};

use super::Cli;

/// Read when neither `--config` nor `RELAYHUB_CONFIG` names a file, and
/// only if it exists.
pub const DEFAULT_PATH: &str = "/etc/relayhub/relayhub.toml";
/// The id of the argument that names the file.
const CONFIG_ARG: &str = "config";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot read the settings file: {source}", file.display())]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{}:{line}: {what}", file.display())]
    At {
        file: PathBuf,
        line: usize,
        what: String,
    },
}

#[derive(Debug)]
pub enum ParseError {
    /// The command line itself (clap's message, help and version included).
    Usage(clap::Error),
    /// The settings file.
    Config(ConfigError),
}

/// This process's command line with the settings file applied. Exits as
/// clap does on usage errors, help and version; an error in the file
/// exits 2 (a usage error) with FILE:LINE.
pub fn parse() -> Cli {
    let argv: Vec<OsString> = std::env::args_os().collect();
    let matches = match parse_from(Cli::command(), &argv, Path::new(DEFAULT_PATH)) {
        Ok(m) => m,
        Err(ParseError::Usage(e)) => e.exit(),
        Err(ParseError::Config(e)) => {
            eprintln!("relayhub: {e}");
            std::process::exit(2);
        }
    };
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.format(&mut Cli::command()).exit())
}

/// Parse `argv` with `cmd`, applying the settings file named by its
/// `config` argument, else `default_path` if that exists.
pub fn parse_from(
    cmd: Command,
    argv: &[OsString],
    default_path: &Path,
) -> Result<ArgMatches, ParseError> {
    let first = cmd
        .clone()
        .try_get_matches_from(argv)
        .map_err(ParseError::Usage)?;
    let named = first.get_one::<PathBuf>(CONFIG_ARG);
    let file = named.map_or(default_path, PathBuf::as_path);
    let bytes = match std::fs::read(file) {
        Ok(b) => b,
        // Only the default may be absent; a named file must be there.
        Err(e) if named.is_none() && e.kind() == std::io::ErrorKind::NotFound => return Ok(first),
        Err(source) => {
            return Err(ParseError::Config(ConfigError::Read {
                file: file.to_path_buf(),
                source,
            }));
        }
    };
    let values = read_settings(&cmd, file, &bytes).map_err(ParseError::Config)?;
    if values.is_empty() {
        return Ok(first);
    }
    with_defaults(cmd, &values)
        .try_get_matches_from(argv)
        .map_err(ParseError::Usage)
}

/// What a key's TOML value must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Bool,
    Integer,
    Float,
    Text,
}

impl Kind {
    fn of(arg: &Arg) -> Kind {
        use std::any::TypeId;
        if matches!(arg.get_action(), ArgAction::SetTrue | ArgAction::SetFalse) {
            return Kind::Bool;
        }
        let t = arg.get_value_parser().type_id();
        let is = |ids: &[TypeId]| ids.iter().any(|id| t == *id);
        if is(&[TypeId::of::<bool>()]) {
            Kind::Bool
        } else if is(&[
            TypeId::of::<u8>(),
            TypeId::of::<u16>(),
            TypeId::of::<u32>(),
            TypeId::of::<u64>(),
            TypeId::of::<usize>(),
            TypeId::of::<i8>(),
            TypeId::of::<i16>(),
            TypeId::of::<i32>(),
            TypeId::of::<i64>(),
        ]) {
            Kind::Integer
        } else if is(&[TypeId::of::<f32>(), TypeId::of::<f64>()]) {
            Kind::Float
        } else {
            Kind::Text
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Bool => "true or false",
            Kind::Integer => "an integer",
            Kind::Float => "a number",
            Kind::Text => "a string",
        }
    }
}

fn toml_type(v: &DeValue<'_>) -> &'static str {
    match v {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date-time",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

/// The keys the file may set: long name -> one argument with that name and
/// an environment variable (the first found; the test
/// `one_variable_per_key` keeps them alike).
fn settings(cmd: &Command) -> BTreeMap<String, Arg> {
    fn walk(cmd: &Command, out: &mut BTreeMap<String, Arg>) {
        for a in cmd.get_arguments() {
            if let (Some(long), Some(_)) = (a.get_long(), a.get_env())
                && a.get_id() != CONFIG_ARG
            {
                out.entry(long.to_string()).or_insert_with(|| a.clone());
            }
        }
        for s in cmd.get_subcommands() {
            walk(s, out);
        }
    }
    let mut out = BTreeMap::new();
    walk(cmd, &mut out);
    out
}

/// 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// The file's settings as command-line text, each checked with its
/// argument's parser. Keys of other commands are checked too: one file
/// serves them all.
fn read_settings(
    cmd: &Command,
    file: &Path,
    bytes: &[u8],
) -> Result<BTreeMap<String, String>, ConfigError> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let line = bytes[..e.valid_up_to()]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1;
        ConfigError::At {
            file: file.to_path_buf(),
            line,
            what: "not UTF-8 text (TOML files are UTF-8)".into(),
        }
    })?;
    let at = |offset: usize, what: String| ConfigError::At {
        file: file.to_path_buf(),
        line: line_of(text, offset),
        what,
    };
    let table = DeTable::parse(text).map_err(|e| {
        let offset = e.span().map_or(0, |s| s.start);
        at(offset, format!("not valid TOML: {}", e.message().trim()))
    })?;
    let known = settings(cmd);
    let mut out = BTreeMap::new();
    // In file order, so the first error reported is the first in the file.
    let mut entries: Vec<_> = table.get_ref().iter().collect();
    entries.sort_by_key(|(k, _)| k.span().start);
    for (key, value) in entries {
        let (name, key_at) = (key.get_ref().as_ref(), key.span().start);
        let value_at = value.span().start;
        if let DeValue::Table(_) = value.get_ref() {
            return Err(at(
                key_at,
                format!(
                    "[{name}]: there are no sections: every key is top-level, named like its flag, \
                     and applies to every command that has that flag (e.g. `port = 51820`)"
                ),
            ));
        }
        if name == CONFIG_ARG {
            return Err(at(
                key_at,
                "`config` cannot be set in the settings file (use --config or RELAYHUB_CONFIG)"
                    .into(),
            ));
        }
        let Some(arg) = known.get(name) else {
            return Err(at(key_at, unknown_key(name, &known)));
        };
        let kind = Kind::of(arg);
        let v = value.get_ref();
        let wrong_type = || {
            at(
                value_at,
                format!(
                    "`{name}` must be {} (like --{name}), not {}",
                    kind.name(),
                    toml_type(v)
                ),
            )
        };
        let text_value = match (kind, v) {
            (Kind::Bool, DeValue::Boolean(b)) => b.to_string(),
            (Kind::Integer | Kind::Float, DeValue::Integer(i)) => {
                i128::from_str_radix(i.as_str(), i.radix())
                    .map_err(|_| at(value_at, format!("`{name}`: {i} is out of range")))?
                    .to_string()
            }
            (Kind::Float, DeValue::Float(f)) => f.as_str().replace('_', ""),
            (Kind::Text, DeValue::String(s)) => s.to_string(),
            _ => return Err(wrong_type()),
        };
        if kind != Kind::Bool {
            check_value(arg, &text_value)
                .map_err(|e| at(value_at, format!("`{name} = {}`: {e}", v_display(v))))?;
        }
        out.insert(name.to_string(), text_value);
    }
    Ok(out)
}

fn v_display(v: &DeValue<'_>) -> String {
    match v {
        DeValue::String(s) => format!("{s:?}"),
        DeValue::Integer(i) => i.to_string(),
        DeValue::Float(f) => f.to_string(),
        DeValue::Boolean(b) => b.to_string(),
        other => toml_type(other).to_string(),
    }
}

fn unknown_key(name: &str, known: &BTreeMap<String, Arg>) -> String {
    let closest = known
        .keys()
        .map(|k| (strsim::jaro_winkler(name, k), k))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0));
    match closest {
        Some((_, k)) => format!("unknown key `{name}`: did you mean `{k}`?"),
        None => format!(
            "unknown key `{name}`; the keys are the long flags that have a RELAYHUB_* variable: {}",
            known.keys().cloned().collect::<Vec<_>>().join(", ")
        ),
    }
}

/// Check `value` with `arg`'s own parser (clap's validation and message),
/// by parsing `--LONG=VALUE` with a command that has only that argument.
fn check_value(arg: &Arg, value: &str) -> Result<(), String> {
    let Some(long) = arg.get_long() else {
        return Ok(());
    };
    let alone = arg
        .clone()
        .env(None)
        .default_value(None)
        .global(false)
        .required(false);
    let probe = Command::new("relayhub")
        .no_binary_name(true)
        .disable_help_flag(true)
        .disable_version_flag(true)
        .arg(alone);
    match probe.try_get_matches_from([format!("--{long}={value}")]) {
        Ok(_) => Ok(()),
        Err(e) => Err(clap_message(&e)),
    }
}

/// clap's message without its "error: " prefix and usage footer, on one line.
fn clap_message(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let body = text
        .split("\n\nUsage:")
        .next()
        .unwrap_or_default()
        .split("\n\nFor more information")
        .next()
        .unwrap_or_default();
    let body = body.trim().strip_prefix("error: ").unwrap_or(body.trim());
    body.split('\n')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// `cmd` with every argument that has a file value defaulting to it.
fn with_defaults(cmd: Command, values: &BTreeMap<String, String>) -> Command {
    cmd.mut_args(|a| {
        let value = match (a.get_long(), a.get_env()) {
            (Some(long), Some(_)) => values.get(long).cloned(),
            _ => None,
        };
        match value {
            Some(v) => a.default_value(v),
            None => a,
        }
    })
    .mut_subcommands(|s| with_defaults(s, values))
}

#[cfg(test)]
mod tests {
    use clap::parser::ValueSource;

    use super::*;
    use crate::cli::{Command as Sub, RunArgs};
    use crate::datapath::AttachMode;

    /// The command blind to the environment (the tests' RELAYHUB_* must
    /// not leak in; variables are checked through the binary in
    /// tests/config_file.rs).
    fn no_env(c: Command) -> Command {
        c.mut_args(|a| {
            let id = a.get_id().to_string();
            // Keep the variable's presence (it marks a setting) under a
            // name no environment has.
            if a.get_env().is_some() {
                a.env(format!("RELAYHUB_TEST_UNSET_{id}"))
            } else {
                a
            }
        })
        .mut_subcommands(no_env)
    }

    /// A settings file in a temporary directory, removed on drop.
    struct File(PathBuf);

    impl File {
        fn new(name: &str, contents: &[u8]) -> File {
            let dir = std::env::temp_dir().join(format!(
                "relayhub-config-file-{}-{name}",
                std::process::id()
            ));
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join("relayhub.toml");
            std::fs::write(&path, contents).unwrap();
            File(path)
        }
    }

    impl Drop for File {
        fn drop(&mut self) {
            if let Some(dir) = self.0.parent() {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }

    fn argv(args: &[&str]) -> Vec<OsString> {
        std::iter::once("relayhub")
            .chain(args.iter().copied())
            .map(OsString::from)
            .collect()
    }

    /// `relayhub ARGS` with `file` as the default settings path.
    fn parse_with(args: &[&str], default: &Path) -> Result<(Cli, ArgMatches), ParseError> {
        let m = parse_from(no_env(Cli::command()), &argv(args), default)?;
        let cli = Cli::from_arg_matches(&m).map_err(ParseError::Usage)?;
        Ok((cli, m))
    }

    fn run_args(cli: Cli) -> RunArgs {
        match cli.command {
            Sub::Run(a) => a,
            c => panic!("not `run`: {c:?}"),
        }
    }

    fn config_error(args: &[&str], contents: &[u8]) -> (String, PathBuf) {
        let f = File::new(&format!("err-{}", contents.len()), contents);
        let mut a = vec!["--config", f.0.to_str().unwrap()];
        a.extend_from_slice(args);
        match parse_with(&a, Path::new("/nonexistent")) {
            Err(ParseError::Config(e)) => (e.to_string(), f.0.clone()),
            Err(ParseError::Usage(e)) => panic!("usage error instead of a file error: {e}"),
            Ok((cli, _)) => panic!("{contents:?} accepted: {cli:?}"),
        }
    }

    const FILE: &str = r#"
# comment
state-dir = "/srv/relayhub"
port = 51999
endpoint = "hub.example.net"
wg-iface = "hubwg"
metrics-addr = "127.0.0.1:9999"
xdp-mode = "generic"
keep-on-exit = true
initiations-per-source = 0x10
"#;

    #[test]
    fn config_flag_and_variable_names() {
        let cmd = Cli::command();
        let a = cmd
            .get_arguments()
            .find(|a| a.get_id() == CONFIG_ARG)
            .unwrap();
        assert_eq!(a.get_long(), Some("config"));
        assert_eq!(
            a.get_env().map(|e| e.to_string_lossy().into_owned()),
            Some("RELAYHUB_CONFIG".into())
        );
        assert!(a.is_global_set());
    }

    /// The file fills in what neither a flag nor a variable set; flags win.
    #[test]
    fn file_under_flags_over_defaults() {
        let f = File::new("precedence", FILE.as_bytes());
        let path = f.0.to_str().unwrap();
        let (cli, m) = parse_with(
            &[
                "--config",
                path,
                "run",
                "--port",
                "5000",
                "--xdp-mode",
                "native",
            ],
            Path::new("/nonexistent"),
        )
        .unwrap();
        assert_eq!(cli.port, 5000, "flag beats file");
        assert_eq!(m.value_source("port"), Some(ValueSource::CommandLine));
        assert_eq!(cli.state_dir, PathBuf::from("/srv/relayhub"), "file");
        assert_eq!(cli.endpoint.as_deref(), Some("hub.example.net"));
        assert_eq!(cli.network.to_string(), "10.88.0.0/16", "default");
        let r = run_args(cli);
        assert_eq!(r.xdp_mode, AttachMode::Native, "flag beats file");
        assert_eq!(r.wg_iface, "hubwg");
        assert_eq!(r.metrics_addr.to_string(), "127.0.0.1:9999");
        assert!(r.keep_on_exit, "a boolean from the file");
        assert!(!r.bpf_stats, "default");
        assert_eq!(r.initiations_per_source, 16, "hex integer");
        assert_eq!(r.max_spokes, relay_common::MAX_SLOTS, "default");
    }

    /// One key reaches every command with that flag, as its variable does.
    #[test]
    fn a_key_serves_every_command() {
        let f = File::new("every", FILE.as_bytes());
        let path = f.0.to_str().unwrap();
        let (cli, _) = parse_with(&["--config", path, "status"], Path::new("/x")).unwrap();
        match cli.command {
            Sub::Status(s) => assert_eq!(s.metrics_addr.to_string(), "127.0.0.1:9999"),
            c => panic!("{c:?}"),
        }
        // `spoke list` has no --wg-iface: the key is checked, not applied.
        let (cli, _) = parse_with(&["--config", path, "spoke", "list"], Path::new("/x")).unwrap();
        assert_eq!(cli.port, 51999);
    }

    /// The default path is read only when it exists; a named file must.
    #[test]
    fn default_path_and_named_file() {
        let f = File::new("default", b"port = 51001\n");
        let (cli, m) = parse_with(&["run"], &f.0).unwrap();
        assert_eq!(cli.port, 51001);
        assert_eq!(m.value_source("port"), Some(ValueSource::DefaultValue));
        let (cli, _) = parse_with(&["run"], Path::new("/nonexistent/relayhub.toml")).unwrap();
        assert_eq!(cli.port, 51820);
        match parse_with(
            &["--config", "/nonexistent/relayhub.toml", "run"],
            Path::new("/x"),
        ) {
            Err(ParseError::Config(e @ ConfigError::Read { .. })) => {
                let msg = e.to_string();
                assert!(
                    msg.starts_with("/nonexistent/relayhub.toml: cannot read"),
                    "{msg}"
                );
            }
            other => panic!("{other:?}"),
        }
        // --config after the subcommand (it is global) names the file too.
        let (cli, _) =
            parse_with(&["run", "--config", f.0.to_str().unwrap()], Path::new("/x")).unwrap();
        assert_eq!(cli.port, 51001);
    }

    /// Every error names FILE:LINE and what to do; none panics.
    #[test]
    fn errors_name_file_and_line() {
        for (contents, line, says) in [
            // Unknown key, with the closest flag.
            (
                &b"port = 1\nwg-interface = \"x\"\n"[..],
                2,
                "did you mean `wg-iface`?",
            ),
            (b"\n\nstate_dir = \"/x\"\n", 3, "did you mean `state-dir`?"),
            (b"frobnicate = 1\n", 1, "keys are the long flags"),
            // A flag without a variable is not a setting.
            (b"json = true\n", 1, "unknown key `json`"),
            // Wrong types.
            (b"\nport = \"51820\"\n", 2, "`port` must be an integer"),
            (b"state-dir = 5\n", 1, "`state-dir` must be a string"),
            (b"keep-on-exit = \"yes\"\n", 1, "must be true or false"),
            (b"port = 1.5\n", 1, "not a float"),
            (b"endpoint = [\"a\"]\n", 1, "not an array"),
            // Invalid values, by clap's own parsers.
            (
                b"port = 70000\n",
                1,
                "invalid value '70000' for '--port <PORT>'",
            ),
            (b"port = -1\n", 1, "--port"),
            (b"network = \"10.88.0.1/24\"\n", 1, "10.88.0.0/24"),
            (
                b"xdp-mode = \"fast\"\n",
                1,
                "possible values: auto, native, generic",
            ),
            (b"metrics-addr = \"localhost\"\n", 1, "--metrics-addr"),
            (
                b"port = 99999999999999999999999999999999999999999\n",
                1,
                "out of range",
            ),
            // Sections, the file naming a file, TOML syntax, encoding.
            (b"port = 1\n[run]\nport = 2\n", 2, "there are no sections"),
            (b"run.port = 2\n", 1, "there are no sections"),
            (b"config = \"/etc/x\"\n", 1, "--config or RELAYHUB_CONFIG"),
            (b"port = 1\nport = 2\n", 2, "not valid TOML"),
            (b"zzz = 1\nport = \"x\"\n", 1, "unknown key `zzz`"),
            (b"port = \n", 1, "not valid TOML"),
            (b"port = 1\n\xff\n", 2, "not UTF-8"),
        ] {
            let (msg, file) = config_error(&["run"], contents);
            let prefix = format!("{}:{line}: ", file.display());
            assert!(
                msg.starts_with(&prefix) && msg.contains(says),
                "{:?}: wanted {prefix}...{says}..., got: {msg}",
                String::from_utf8_lossy(contents)
            );
        }
    }

    /// A key is a variable's flag name: if two commands ever give the same
    /// long flag different variables, one key cannot mean both.
    #[test]
    fn one_variable_per_key() {
        fn walk(cmd: &Command, seen: &mut BTreeMap<String, String>) {
            for a in cmd.get_arguments() {
                if let (Some(long), Some(env)) = (a.get_long(), a.get_env()) {
                    let env = env.to_string_lossy().into_owned();
                    let prev = seen.entry(long.to_string()).or_insert_with(|| env.clone());
                    assert_eq!(*prev, env, "--{long} has two variables");
                }
            }
            for s in cmd.get_subcommands() {
                walk(s, seen);
            }
        }
        let mut seen = BTreeMap::new();
        walk(&Cli::command(), &mut seen);
        // The documented keys (README, contrib/relayhub.toml) are all there.
        let keys = settings(&Cli::command());
        for k in [
            "state-dir",
            "port",
            "network",
            "endpoint",
            "iface",
            "wg-iface",
            "metrics-addr",
            "xdp-mode",
            "max-spokes",
            "keepalive",
            "bpf-stats",
            "max-sessions",
            "pin-dir",
            "keep-on-exit",
            "cross-family-path",
            "initiations-per-source",
        ] {
            assert!(keys.contains_key(k), "{k}");
        }
        assert!(!keys.contains_key("config"));
    }

    /// contrib/relayhub.toml, uncommented, is a valid file that sets every
    /// key to its built-in default.
    #[test]
    fn shipped_example_is_every_default() {
        let example = include_str!("../../../contrib/relayhub.toml");
        let uncommented: String = example
            .lines()
            .filter_map(|l| l.strip_prefix("# "))
            .filter(|l| {
                l.split_once(" = ").is_some_and(|(k, _)| {
                    !k.is_empty() && k.bytes().all(|b| b.is_ascii_lowercase() || b == b'-')
                })
            })
            .map(|l| format!("{l}\n"))
            .collect();
        let cmd = no_env(Cli::command());
        let values = read_settings(&cmd, Path::new("example"), uncommented.as_bytes())
            .unwrap_or_else(|e| panic!("{e}\n{uncommented}"));
        let keys = settings(&cmd);
        let missing: Vec<&String> = keys
            .keys()
            .filter(|k| {
                !values.contains_key(*k)
                    && ![
                        "iface",
                        "endpoint",
                        "replica-listen",
                        "standby-of",
                        "hub-name",
                        "network6",
                    ]
                    .contains(&k.as_str())
            })
            .collect();
        assert!(
            missing.is_empty(),
            "keys missing from the example: {missing:?}"
        );
        // Same result as no file at all.
        let f = File::new("example", uncommented.as_bytes());
        let with = parse_with(&["run"], &f.0).unwrap().0;
        let without = parse_with(&["run"], Path::new("/nonexistent")).unwrap().0;
        assert_eq!(format!("{with:?}"), format!("{without:?}"));
    }
}
