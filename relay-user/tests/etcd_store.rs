//! The shared store on a real etcd (Debian's etcd-server, one member on a
//! free loopback port, data in a temp directory): the CLI on etcd,
//! concurrent writers from two processes and two store handles (nothing
//! lost), `store migrate` (and its refusal to overwrite), and clear
//! one-line errors for an unreachable etcd. No root needed.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

use relay_user::core::join::NewToken;
use relay_user::core::registry::TunnelNet;
use relay_user::store::dir::StateDir;
use relay_user::store::token::{TokenStore as _, TokenStoreError};
use relay_user::store::{Store, StoreSpec};
use testkit::etcd::Etcd;

/// A directory under the system temp dir, removed on drop.
struct Tmp(PathBuf);

impl Tmp {
    fn new(tag: &str) -> Tmp {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "relayhub-etcd-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Tmp(p)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    /// A state directory inside (mode 0700).
    fn state(&self, name: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt as _;
        let p = self.0.join(name);
        std::fs::create_dir_all(&p).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700)).unwrap();
        p
    }
}

impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `relayhub --state-dir STATE ARGS`, blind to this machine's settings.
fn relayhub(state: &Path, args: &[&str]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_relayhub"));
    for (k, _) in std::env::vars() {
        if k.starts_with("RELAYHUB_") {
            c.env_remove(k);
        }
    }
    c.env("RELAYHUB_CONFIG", "/dev/null")
        .env("RUST_LOG", "warn")
        .arg("--state-dir")
        .arg(state)
        .args(args)
        .output()
        .unwrap()
}

/// stdout of a command that must succeed.
fn ok(state: &Path, args: &[&str]) -> String {
    let o = relayhub(state, args);
    assert!(
        o.status.success(),
        "relayhub {args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

/// stderr of a command that must fail.
fn fails(state: &Path, args: &[&str]) -> String {
    let o = relayhub(state, args);
    assert!(!o.status.success(), "relayhub {args:?} succeeded");
    String::from_utf8(o.stderr).unwrap()
}

fn etcd(tag: &str, tmp: &Tmp) -> Etcd {
    Etcd::start(&format!("rhetcd-{tag}-{}", std::process::id()), tmp.path()).unwrap()
}

#[test]
fn cli_on_etcd() {
    let tmp = Tmp::new("cli");
    let e = etcd("cli", &tmp);
    let st = tmp.state("hub-a");
    let url = e.url();
    let s = ["--store", url.as_str()];
    let with = |args: &[&'static str]| [&s[..], args].concat();
    let conf = ok(
        &st,
        &with(&["spoke", "add", "web1", "--endpoint", "192.0.2.1"]),
    );
    assert!(conf.contains("Address = 10.88.0.2/16"), "{conf}");
    ok(&st, &with(&["spoke", "add", "web2"]));
    ok(&st, &with(&["spoke", "add", "db1"]));
    let list = ok(&st, &with(&["spoke", "list"]));
    assert_eq!(list.lines().count(), 4, "{list}");
    // Nothing of it in the state directory: only the hub's own files.
    assert!(!st.join("spokes.json").exists());
    assert!(st.join("hub.key").exists());
    let out = ok(&st, &with(&["spoke", "remove", "web2"]));
    assert!(out.starts_with("removed spoke web2"), "{out}");
    let out = ok(&st, &with(&["policy", "allow", "web1", "db1"]));
    assert!(
        out.contains(&format!("policy: {url}/relayhub/policy")),
        "{out}"
    );
    assert!(out.contains("  web1: db1\n  db1: web1\n"), "{out}");
    assert!(ok(&st, &with(&["policy", "show"])).contains("allow:\n  web1 <-> db1"));
    let line = ok(&st, &with(&["token", "create", "--uses", "3"]));
    assert!(line.contains("--pinnedpubkey 'sha256//"), "{line}");
    let tokens = ok(&st, &with(&["token", "list"]));
    assert!(tokens.contains("active  0/3"), "{tokens}");
    assert!(!st.join("tokens.json").exists());
    let show = ok(&st, &with(&["store", "show"]));
    assert!(
        show.starts_with(&format!("store: {url}/relayhub/\n")),
        "{show}"
    );
    assert!(show.contains("registry: 2 spoke(s)"), "{show}");
    assert!(show.contains("/relayhub/hub-public-key"), "{show}");
    assert!(ok(&st, &with(&["policy", "reset"])).starts_with("removed "));
    // A second hub with another key is refused (the spokes could not
    // reach it); with the first hub's key copied it sees the same store.
    let other = tmp.state("hub-b");
    ok(&other, &["spoke", "list"]);
    let e2 = fails(&other, &with(&["spoke", "add", "x"]));
    assert!(e2.contains("differs from the one the hubs on"), "{e2}");
    std::fs::copy(st.join("hub.key"), other.join("hub.key")).unwrap();
    std::fs::copy(st.join("enroll.pem"), other.join("enroll.pem")).unwrap();
    // The endpoint given on the first hub is the store's: the second hub
    // prints it without being told (it is the address both answer on).
    let x = ok(&other, &with(&["spoke", "add", "x"]));
    assert!(x.contains("Endpoint = 192.0.2.1:51820\n"), "{x}");
    assert!(!other.join("endpoint").exists());
    ok(&other, &with(&["token", "create"]));
    assert!(ok(&st, &with(&["spoke", "list"])).contains("\nx "));
}

/// Two processes add spokes at the same time, as two admins on two hubs
/// would: every add is kept, with its own id and address.
#[test]
fn concurrent_cli_adds_lose_nothing() {
    const PER_SIDE: usize = 20;
    let tmp = Tmp::new("concurrent");
    let e = etcd("conc", &tmp);
    let (a, b) = (tmp.state("hub-a"), tmp.state("hub-b"));
    let url = e.url();
    // The second hub has the first one's key (README: hub key distribution).
    StateDir::open(&a).unwrap().hub_key().unwrap();
    std::fs::copy(a.join("hub.key"), b.join("hub.key")).unwrap();
    let t0 = std::time::Instant::now();
    let sides: Vec<_> = [("a", a.clone()), ("b", b.clone())]
        .into_iter()
        .map(|(side, st)| {
            let url = url.clone();
            std::thread::spawn(move || {
                for i in 0..PER_SIDE {
                    let name = format!("{side}{i}");
                    ok(
                        &st,
                        &[
                            "--store",
                            &url,
                            "spoke",
                            "add",
                            &name,
                            "--endpoint",
                            "192.0.2.1",
                        ],
                    );
                }
            })
        })
        .collect();
    for s in sides {
        s.join().unwrap();
    }
    eprintln!("{} concurrent adds in {:?}", 2 * PER_SIDE, t0.elapsed());
    let store = Store::open(&url.parse().unwrap(), &StateDir::open(&a).unwrap()).unwrap();
    let reg = store.registry().load().unwrap();
    let lost: Vec<String> = ["a", "b"]
        .iter()
        .flat_map(|side| (0..PER_SIDE).map(move |i| format!("{side}{i}")))
        .filter(|n| reg.get(n).is_none())
        .collect();
    assert!(lost.is_empty(), "{} adds lost: {lost:?}", lost.len());
    let mut ids: Vec<u32> = reg.spokes().iter().map(|s| s.id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 2 * PER_SIDE, "duplicate ids");
    let mut addrs: Vec<_> = reg.spokes().iter().map(|s| s.address).collect();
    addrs.sort();
    addrs.dedup();
    assert_eq!(addrs.len(), 2 * PER_SIDE, "duplicate addresses");
}

/// Two store handles hammer the registry and one token: every update is
/// kept, and a token admits exactly as many nodes as it says.
#[test]
fn concurrent_store_updates_lose_nothing() {
    let tmp = Tmp::new("handles");
    let e = etcd("handles", &tmp);
    let spec: StoreSpec = e.url().parse().unwrap();
    let state = StateDir::open(&tmp.state("st")).unwrap();
    let store = Store::open(&spec, &state).unwrap();
    let token = store
        .tokens()
        .update(|t| {
            let new = NewToken {
                max_uses: 25,
                expires_in: None,
                group: None,
            };
            t.create(&new, 1, [9; 20]).map_err(TokenStoreError::Store)
        })
        .unwrap();
    let net = TunnelNet::default();
    let workers: Vec<_> = (0..2u8)
        .map(|w| {
            let store = Store::open(&spec, &state).unwrap();
            let token = token.clone();
            std::thread::spawn(move || {
                let mut redeemed = 0;
                for i in 0..30u8 {
                    let key = wireguard_control::Key([w * 100 + i + 1; 32]);
                    store
                        .registry()
                        .update(&mut |r| r.add(&format!("w{w}-{i}"), key.clone(), &net).map(|_| ()))
                        .unwrap();
                    let took = store.tokens().update(|t| {
                        Ok::<_, TokenStoreError>(t.redeem(&token, &format!("w{w}-{i}"), 2).is_ok())
                    });
                    redeemed += usize::from(took.unwrap());
                }
                redeemed
            })
        })
        .collect();
    let redeemed: usize = workers.into_iter().map(|w| w.join().unwrap()).sum();
    let reg = store.registry().load().unwrap();
    assert_eq!(reg.len(), 60);
    let ids: Vec<u32> = reg.spokes().iter().map(|s| s.id).collect();
    assert_eq!(ids, (1..=60).collect::<Vec<_>>());
    assert_eq!(redeemed, 25, "a 25-use token admitted {redeemed}");
    let t = store.tokens().load().unwrap();
    assert_eq!(t.tokens[0].uses, 25);
    assert_eq!(t.tokens[0].joined.len(), 25);
}

#[test]
fn migrate_copies_and_refuses_to_overwrite() {
    let tmp = Tmp::new("migrate");
    let e = etcd("migrate", &tmp);
    let st = tmp.state("dir");
    ok(&st, &["spoke", "add", "a", "--endpoint", "192.0.2.1"]);
    ok(&st, &["spoke", "add", "b"]);
    ok(&st, &["policy", "deny", "a", "b"]);
    ok(&st, &["token", "create", "--uses", "2"]);
    let url = e.url();
    let before = |what: &str| ok(&st, &[what, "list"]);
    let (spokes, tokens) = (before("spoke"), before("token"));
    let policy = ok(&st, &["policy", "show"]);
    let out = ok(&st, &["store", "migrate", "--to", &url]);
    assert!(
        out.starts_with(&format!("copied into {url}/relayhub/:\n")),
        "{out}"
    );
    assert!(out.contains("registry  2 spoke(s) from "), "{out}");
    assert!(out.contains("tokens    1 join token(s) from "), "{out}");
    assert!(out.contains("endpoint  192.0.2.1:51820\n"), "{out}");
    assert!(out.contains("copy hub.key and enroll.pem"), "{out}");
    // The same documents, read through etcd.
    assert_eq!(ok(&st, &["--store", &url, "spoke", "list"]), spokes);
    assert_eq!(ok(&st, &["--store", &url, "token", "list"]), tokens);
    let on_etcd = ok(&st, &["--store", &url, "policy", "show"]);
    let rules = |t: &str| t.split_once("groups:").map(|(_, r)| r.to_owned());
    assert_eq!(rules(&on_etcd), rules(&policy));
    // Changes on etcd, then a second migrate: refused, nothing written.
    ok(&st, &["--store", &url, "spoke", "add", "c"]);
    let err = fails(&st, &["store", "migrate", "--to", &url]);
    assert!(
        err.contains("/relayhub/registry, /relayhub/policy, /relayhub/tokens, /relayhub/endpoint exist(s) already; nothing copied"),
        "{err}"
    );
    assert!(err.contains("--force"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(ok(&st, &["--store", &url, "spoke", "list"]).contains("\nc "));
    // --force puts the state directory's version back.
    ok(&st, &["store", "migrate", "--to", &url, "--force"]);
    assert_eq!(ok(&st, &["--store", &url, "spoke", "list"]), spokes);
    // Another prefix is another store.
    let other = format!("{url}/site2");
    ok(&st, &["store", "migrate", "--to", &other]);
    assert!(ok(&st, &["--store", &other, "store", "show"]).contains("/site2/registry"));
    // migrate only goes into etcd.
    let err = fails(&st, &["store", "migrate", "--to", "dir"]);
    assert!(err.contains("give etcd://HOST:PORT"), "{err}");
}

#[test]
fn unreachable_etcd_is_a_one_line_error() {
    let tmp = Tmp::new("down");
    let st = tmp.state("st");
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("etcd://127.0.0.1:{port}");
    for args in [
        &["spoke", "list"][..],
        &["spoke", "add", "x", "--endpoint", "192.0.2.1"],
        &["policy", "show"],
        &["token", "list"],
        &["store", "show"],
    ] {
        let t0 = std::time::Instant::now();
        let err = fails(&st, &[&["--store", url.as_str()][..], args].concat());
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(5),
            "{args:?} hung"
        );
        let err = err.trim();
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(
            err.starts_with(&format!("relayhub: {url}/relayhub/ (--store): ")),
            "{args:?}: {err}"
        );
        assert!(err.contains("Connection refused"), "{args:?}: {err}");
    }
    let err = fails(&st, &["--store", "etcd://h:0", "spoke", "list"]);
    assert!(err.contains("--store") && err.contains("port"), "{err}");
}

/// A hub lists itself under hubs/ while it runs, and is gone when it
/// stops.
#[test]
fn hubs_register_while_they_run() {
    let tmp = Tmp::new("hubs");
    let e = etcd("hubs", &tmp);
    let st = tmp.state("st");
    let url = e.url();
    let Store::Etcd(store) =
        Store::open(&url.parse().unwrap(), &StateDir::open(&st).unwrap()).unwrap()
    else {
        panic!("not etcd")
    };
    assert!(ok(&st, &["--store", &url, "store", "hubs"]).starts_with("no hub runs on "));
    let info = r#"{"endpoint": "192.0.2.1:51820", "metrics_addr": "127.0.0.1:9851", "version": "0.1.0", "started_unix": 0}"#;
    let member = store.register("hub-a", info.to_owned());
    let listed = || ok(&st, &["--store", &url, "store", "hubs"]);
    let t0 = std::time::Instant::now();
    while !listed().contains("hub-a") {
        assert!(t0.elapsed().as_secs() < 5, "never listed: {}", listed());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let table = listed();
    assert!(
        table.contains("hub-a  192.0.2.1:51820  127.0.0.1:9851  0.1.0    1970-01-01T00:00:00Z"),
        "{table}"
    );
    drop(member);
    assert!(listed().starts_with("no hub runs on "));
    assert!(ok(&st, &["store", "hubs"]).contains("one hub's store"));
}
