//! Command line: every default is a flag and an environment variable.

pub mod config_file;
pub mod policy;
pub mod publish;
pub mod status;
pub mod store;
pub mod token;

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};

use crate::core::registry::TunnelNet;
use crate::datapath::{AttachMode, Capacity};
use crate::hub::{self, RunConfig};
use crate::io::netinfo;
use crate::provision::{mesh, spoke};
use crate::store::dir::StateDir;
use crate::store::{Store, StoreSpec};

#[derive(Parser, Debug)]
#[command(
    name = "relayhub",
    version,
    about = "WireGuard hub that relays spoke-to-spoke frames in XDP without decrypting them"
)]
pub struct Cli {
    /// Where the hub keeps its key and the spoke registry.
    #[arg(
        long,
        env = "RELAYHUB_STATE_DIR",
        default_value = "/var/lib/relayhub",
        global = true
    )]
    pub state_dir: PathBuf,
    /// Where the registry, the policy and the join tokens are kept: `dir`
    /// (the state directory) or etcd shared by several hubs,
    /// etcd://HOST:PORT[,HOST:PORT...][/PREFIX] (default prefix
    /// /relayhub/). The hub's key stays in the state directory either way.
    #[arg(long, env = "RELAYHUB_STORE", default_value = "dir", global = true)]
    pub store: StoreSpec,
    /// UDP port shared by the relay and the hub's own WireGuard.
    #[arg(long, env = "RELAYHUB_PORT", default_value_t = relay_common::wire::DEFAULT_PORT, global = true)]
    pub port: u16,
    /// Tunnel network; the hub takes its first address. The default holds
    /// some 65,000 spokes; hubs set up with the earlier default
    /// 10.88.0.0/24 move to it as they are (their spokes' addresses lie in
    /// it, and relayhub-sync adds the wider route on the spokes).
    #[arg(
        long,
        env = "RELAYHUB_NETWORK",
        default_value = "10.88.0.0/16",
        global = true
    )]
    pub network: TunnelNet,
    /// IPv6 inside the tunnel: every tunnel address gets an IPv6 twin in
    /// this prefix (at most /96; the IPv4 address fills its last 32 bits,
    /// e.g. fd88::/96 gives 10.88.0.2 fd88::a58:2), and exit spokes route
    /// ::/0 through the hub too. Off by default: spokes without IPv6
    /// would fail to bring their interface up.
    #[arg(long, env = "RELAYHUB_NETWORK6", global = true, value_name = "PREFIX")]
    pub network6: Option<crate::core::registry::Net6>,
    /// The hub's public address as spokes reach it, HOST or HOST:PORT
    /// (default: the address of the default-route interface).
    #[arg(long, env = "RELAYHUB_ENDPOINT", global = true)]
    pub endpoint: Option<String>,
    /// TCP port of the enrollment endpoint (TLS) on the hub's public
    /// address, where nodes join with a token; 0 turns it off.
    #[arg(long, env = "RELAYHUB_ENROLL_PORT", default_value_t = crate::hub::enroll::DEFAULT_ENROLL_PORT, global = true)]
    pub enroll_port: u16,
    /// Settings file (TOML; keys are these long flag names, e.g. `port =
    /// 51820`); flags and RELAYHUB_* variables override it. Default:
    /// /etc/relayhub/relayhub.toml if it exists.
    #[arg(long, env = "RELAYHUB_CONFIG", value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,
    /// DNS zone of the hub's names: NAME.ZONE is spoke NAME's tunnel
    /// address (or the hub's, for a published service NAME).
    #[arg(long, env = "RELAYHUB_DNS_ZONE", default_value = crate::core::names::DEFAULT_ZONE, global = true)]
    pub dns_zone: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the hub: attach XDP, bring up the hub's WireGuard, serve metrics.
    Run(RunArgs),
    /// Manage spokes (works whether or not the hub runs).
    #[command(subcommand)]
    Spoke(SpokeCommand),
    /// Which spokes may reach which (policy.json in the state directory;
    /// without it every spoke may reach every other). The running hub
    /// applies changes within a second.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Services published on the hub's address, proxied to spoke ports
    /// over the hub's WireGuard (load balanced, health checked).
    #[command(subcommand)]
    Publish(PublishCommand),
    /// Join tokens: a node with a token enrolls itself over TLS (one line
    /// to paste, printed by `token create`).
    #[command(subcommand)]
    Token(TokenCommand),
    /// The hub mesh's members (several active hubs on one store, each with
    /// its own address and spokes).
    #[command(subcommand)]
    Hub(HubCommand),
    /// The store of the registry, policy and tokens (`--store`): show it,
    /// or copy a state directory into etcd.
    #[command(subcommand)]
    Store(StoreCommand),
    /// Show every spoke's state, endpoint, keepalives and relayed traffic
    /// (from a running hub's API).
    ///
    /// States, with PK = the spokes' PersistentKeepalive: up = a frame
    /// within PK + 5 s; stale = silent longer, up to 3 x PK + 5 s; down =
    /// silent longer than that, or not heard from since the hub started.
    Status(StatusArgs),
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// The hub's API address (its --metrics-addr).
    #[arg(long, env = "RELAYHUB_METRICS_ADDR", default_value = "127.0.0.1:9851")]
    pub metrics_addr: SocketAddr,
    /// Print JSON (the `/v1/spokes` document) instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Print the API token and exit: the console (`/`) and `/v1/*` need it
    /// when the API is bound beyond loopback (open /?token=TOKEN in a
    /// browser, or send `Authorization: Bearer TOKEN`).
    #[arg(long, conflicts_with_all = ["json", "watch"])]
    pub token: bool,
    /// Refresh in place until interrupted.
    #[arg(long)]
    pub watch: bool,
    /// Seconds between refreshes with --watch.
    #[arg(long, default_value_t = 2.0, value_parser = positive_secs)]
    pub interval: f64,
}

fn positive_secs(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.1 => Ok(v),
        _ => Err(format!("{s:?} is not a number of seconds >= 0.1")),
    }
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Underlay interface to attach to (default: the one holding the default route).
    #[arg(long, env = "RELAYHUB_IFACE")]
    pub iface: Option<String>,
    /// Name of the hub's own WireGuard interface.
    #[arg(long, env = "RELAYHUB_WG_IFACE", default_value = "relayhub0")]
    pub wg_iface: String,
    /// Address for /metrics and /healthz.
    #[arg(long, env = "RELAYHUB_METRICS_ADDR", default_value = "127.0.0.1:9851")]
    pub metrics_addr: SocketAddr,
    /// XDP attach mode.
    #[arg(long, env = "RELAYHUB_XDP_MODE", value_enum, default_value = "auto")]
    pub xdp_mode: AttachMode,
    /// Capacity of the spoke tables (BPF maps are sized at start).
    #[arg(long, env = "RELAYHUB_MAX_SPOKES", default_value_t = relay_common::MAX_SLOTS)]
    pub max_spokes: u32,
    /// PersistentKeepalive the spokes use, seconds (health thresholds; the
    /// same variable sets the value `spoke add` prints).
    #[arg(long, env = "RELAYHUB_KEEPALIVE", default_value_t = relay_common::wire::DEFAULT_PERSISTENT_KEEPALIVE_SECS)]
    pub keepalive: u16,
    /// Enable the kernel's BPF run-time statistics while the hub runs
    /// (exports the XDP program's run time; kernel-wide, two clock reads per BPF run:
    /// ~70 ns per frame on the bench VM).
    #[arg(long, env = "RELAYHUB_BPF_STATS")]
    pub bpf_stats: bool,
    /// Capacity of the relay session table (LRU).
    #[arg(long, env = "RELAYHUB_MAX_SESSIONS", default_value_t = relay_common::MAX_SESSIONS)]
    pub max_sessions: u32,
    /// bpffs directory where the maps and the XDP link are pinned (one
    /// subdirectory per interface), so the program keeps relaying while no
    /// controller runs and the next one adopts the session table.
    #[arg(long, env = "RELAYHUB_PIN_DIR", default_value = "/sys/fs/bpf/relayhub")]
    pub pin_dir: PathBuf,
    /// On SIGINT/SIGTERM leave XDP attached, the maps pinned and the hub's
    /// WireGuard interface up, for a restart or upgrade without loss
    /// (default: remove everything). After SIGKILL everything stays anyway.
    #[arg(long, env = "RELAYHUB_KEEP_ON_EXIT", value_parser = clap::builder::BoolishValueParser::new())]
    pub keep_on_exit: bool,
    /// Path of frames between IPv4 and IPv6 spokes: `xdp` rebuilds the
    /// headers in the XDP program (frames it cannot rebuild still go
    /// through userspace); `userspace` sends them all through the
    /// controller (for drivers that mishandle bpf_xdp_adjust_head).
    #[arg(
        long,
        env = "RELAYHUB_CROSS_FAMILY_PATH",
        value_enum,
        default_value = "xdp"
    )]
    pub cross_family_path: crate::datapath::CrossPath,
    /// Handshake initiations per second one source address may pass to the
    /// hub's own WireGuard (all are still routed by the controller); the
    /// rest are dropped in XDP so a flood cannot keep it from answering
    /// real spokes. 0 = no limit.
    #[arg(long, env = "RELAYHUB_INITIATIONS_PER_SOURCE", default_value_t = 64)]
    pub initiations_per_source: u32,
    /// TCP port on the hub's tunnel address where spokes pull their peer
    /// list over the tunnel (`relayhub-sync`); 0 turns it off.
    #[arg(long, env = "RELAYHUB_PEERS_PORT", default_value_t = crate::hub::peers::DEFAULT_PEERS_PORT)]
    pub peers_port: u16,
    /// Serve this hub's relay tables (endpoints, sessions) to a standby
    /// hub on ADDR:PORT while this hub is active (TCP; MAC'd with a key
    /// from hub.key, not encrypted: use a link only the hubs reach). Off by
    /// default. Alone, the hub starts active.
    #[arg(long, env = "RELAYHUB_REPLICA_LISTEN", value_name = "ADDR:PORT")]
    pub replica_listen: Option<SocketAddr>,
    /// Start as the standby of the hub whose --replica-listen is
    /// HOST:PORT: keep a live copy of its relay tables in this hub's maps
    /// while standby (SIGUSR1 promotes, SIGUSR2 demotes). With
    /// --replica-listen too, as on both hubs of a pair, the hub serves
    /// once promoted, so the other can follow it and fail back.
    #[arg(long, env = "RELAYHUB_STANDBY_OF", value_name = "HOST:PORT")]
    pub standby_of: Option<String>,
    /// Hub mesh: this hub's name among the store's hubs (`relayhub hub
    /// add`). It serves the spokes homed on it and relays to the others
    /// through their home hubs, in XDP.
    #[arg(long, env = "RELAYHUB_HUB_NAME", value_name = "NAME")]
    pub hub_name: Option<String>,
    /// With the API bound beyond loopback (--metrics-addr), /metrics and
    /// /healthz need the API token too (default: open, for scrapers and
    /// load balancers; the console and /v1/* always need it there).
    #[arg(long, env = "RELAYHUB_PROTECT_METRICS", value_parser = clap::builder::BoolishValueParser::new())]
    pub protect_metrics: bool,
    /// Port of the DNS server on the hub's tunnel address (answers for
    /// --dns-zone only, to spokes only); 0 turns it off.
    #[arg(long, env = "RELAYHUB_DNS_PORT", default_value_t = 53)]
    pub dns_port: u16,
}

#[derive(Subcommand, Debug)]
pub enum PublishCommand {
    /// Publish a service: the hub listens on PROTO/PORT (its public
    /// addresses and its tunnel address) and spreads connections over the
    /// healthy backends. Backends see the hub (10.88.0.1) as the client.
    Add {
        name: String,
        /// tcp/PORT or udp/PORT.
        #[arg(long)]
        listen: crate::core::publish::Listen,
        /// A backend, SPOKE:PORT (repeat for more).
        #[arg(long = "to", required = true)]
        to: Vec<crate::core::publish::Target>,
        /// UDP: health probe payload in hex; a backend is healthy while it
        /// answers it (without one: while its spoke's WireGuard is up).
        #[arg(long, value_name = "HEX")]
        udp_probe: Option<String>,
    },
    /// List published services (and, from a running hub, their backends'
    /// health and traffic).
    List {
        /// The hub's API address (its --metrics-addr).
        #[arg(long, env = "RELAYHUB_METRICS_ADDR", default_value = "127.0.0.1:9851")]
        metrics_addr: SocketAddr,
    },
    /// Withdraw a service: the hub stops listening within a second.
    Remove { name: String },
}

#[derive(Subcommand, Debug)]
pub enum SpokeCommand {
    /// Register a spoke and print its wg-quick file (with its private key, once).
    Add {
        name: String,
        /// Use this public key instead of generating a key pair.
        #[arg(long)]
        pubkey: Option<String>,
        /// PersistentKeepalive written into the file, seconds.
        #[arg(long, env = "RELAYHUB_KEEPALIVE", default_value_t = relay_common::wire::DEFAULT_PERSISTENT_KEEPALIVE_SECS)]
        keepalive: u16,
        /// Which hub endpoint the file names: ipv6 for IPv6-only spokes
        /// (remembered for later `spoke config`).
        #[arg(long, value_enum)]
        family: Option<crate::provision::spoke::Family>,
        /// Hub mesh: the hub the spoke dials (required once the store has
        /// hubs).
        #[arg(long)]
        hub: Option<String>,
        /// Route the spoke's internet traffic through the hub (0.0.0.0/0 on
        /// its hub peer); the hub forwards it for exit users of the policy
        /// (`relayhub policy exit allow NAME`).
        #[arg(long)]
        exit: bool,
        /// Add `DNS = HUB, ZONE` to the file (see `spoke config --dns`).
        #[arg(long)]
        dns: bool,
    },
    /// Change a spoke and print its new file.
    Set {
        name: String,
        /// Route its internet traffic through the hub.
        #[arg(long, conflicts_with = "no_exit")]
        exit: bool,
        /// Send its internet traffic directly again.
        #[arg(long)]
        no_exit: bool,
    },
    /// Home a spoke on another mesh hub and print its new file.
    Move {
        name: String,
        #[arg(long)]
        hub: String,
    },
    /// Print a spoke's current wg-quick file (no private key).
    Config {
        name: String,
        /// Add `DNS = HUB, ZONE`: the spoke resolves names through the hub
        /// while the tunnel is up (wg-quick with resolvconf).
        #[arg(long)]
        dns: bool,
        #[arg(long, env = "RELAYHUB_KEEPALIVE", default_value_t = relay_common::wire::DEFAULT_PERSISTENT_KEEPALIVE_SECS)]
        keepalive: u16,
        /// Override the hub endpoint family the spoke was added with.
        #[arg(long, value_enum)]
        family: Option<crate::provision::spoke::Family>,
    },
    /// List registered spokes.
    List,
    /// Remove a spoke.
    Remove { name: String },
}

#[derive(Subcommand, Debug)]
pub enum HubCommand {
    /// Add a hub to the mesh, or change one (its spokes dial ENDPOINT).
    Add {
        name: String,
        /// IP[:PORT] spokes homed there dial and peer hubs send to.
        #[arg(long)]
        endpoint: String,
        /// First mesh port: peer hubs send a spoke's frames to port
        /// BASE + its mesh index on this hub (default 40000; the hub can
        /// home 65535 - BASE spokes).
        #[arg(long)]
        mesh_base: Option<u16>,
    },
    /// List the mesh's hubs and how many spokes each is home to.
    List,
    /// Remove a hub from the mesh (move its spokes first).
    Remove { name: String },
}

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Make a join token and print the line to paste on a node.
    Create {
        /// How many nodes may join with it.
        #[arg(long, default_value_t = 1)]
        uses: u32,
        /// How long it admits nodes: 30m, 24h, 7d, ... or `never`.
        #[arg(long, default_value = "24h", value_parser = token::parse_expiry)]
        expires: token::Expiry,
        /// Policy group the nodes that join with it are added to.
        #[arg(long)]
        group: Option<String>,
    },
    /// List tokens (ids, uses, expiry, state; never the secrets).
    List,
    /// Revoke a token by id (or the whole token).
    Revoke { id: String },
    /// Remove tokens that admit nobody any more (used up, expired, revoked).
    Prune,
}

#[derive(Subcommand, Debug)]
pub enum StoreCommand {
    /// Print the store in use (--store) and what it holds.
    Show,
    /// List the hubs running on the store (etcd: each registers itself
    /// while it runs).
    Hubs,
    /// Copy the registry, policy and tokens of the state directory
    /// (--state-dir) into etcd, all or nothing; refuses keys that exist.
    Migrate {
        /// The etcd store, etcd://HOST:PORT[,HOST:PORT...][/PREFIX].
        #[arg(long)]
        to: StoreSpec,
        /// Overwrite keys that exist.
        #[arg(long)]
        force: bool,
    },
}

/// Terms: a spoke name, `@group`, or `*` (every spoke). Rules are
/// symmetric; deny beats allow.
#[derive(Subcommand, Debug)]
pub enum PolicyCommand {
    /// Print the rules and which spokes each registered spoke may reach.
    Show,
    /// Validate FILE (JSON, see README "Policy") and make it the policy,
    /// all or nothing.
    Set { file: PathBuf },
    /// Let A and B reach each other (without a policy yet: start from
    /// nothing allowed).
    Allow { a: String, b: String },
    /// Stop A and B reaching each other (without a policy yet: start from
    /// everything allowed).
    Deny { a: String, b: String },
    /// Set group NAME to these spokes; no spokes removes the group.
    Group { name: String, spokes: Vec<String> },
    /// Who may use the hub as its exit to the internet (spokes added
    /// with --exit route their internet traffic to the hub; it forwards
    /// and masquerades it only for these).
    Exit {
        #[command(subcommand)]
        cmd: ExitCommand,
    },
    /// Remove the policy: every spoke may reach every other.
    Reset,
}

#[derive(Subcommand, Debug)]
pub enum ExitCommand {
    /// Let a spoke, @group or * use the hub as exit.
    Allow { who: String },
    /// Take a spoke, @group or * off the exit users.
    Deny { who: String },
}

const DEFAULT_KEEPALIVE: u16 = relay_common::wire::DEFAULT_PERSISTENT_KEEPALIVE_SECS;

/// Carry out one command line.
pub fn execute(mut cli: Cli) -> anyhow::Result<()> {
    cli.network = cli.network.with_v6(cli.network6);
    match cli.command {
        Command::Run(args) => {
            let iface = match args.iface {
                Some(i) => i,
                None => netinfo::default_route_interface()
                    .context("no --iface given and no default route to pick one from")?,
            };
            let cfg = RunConfig {
                state_dir: cli.state_dir,
                iface,
                port: cli.port,
                net: cli.network,
                wg_iface: args.wg_iface,
                metrics_addr: args.metrics_addr,
                xdp_mode: args.xdp_mode,
                capacity: Capacity {
                    slots: args.max_spokes,
                    sessions: args.max_sessions,
                },
                keepalive: args.keepalive,
                bpf_stats: args.bpf_stats,
                pin_dir: args.pin_dir,
                keep_on_exit: args.keep_on_exit,
                cross_path: args.cross_family_path,
                initiations_per_source: args.initiations_per_source,
                peers_port: args.peers_port,
                enroll_port: cli.enroll_port,
                endpoint: cli.endpoint,
                store: cli.store,
                replica_listen: args.replica_listen,
                standby_of: args.standby_of,
                hub_name: args.hub_name,
                dns_port: args.dns_port,
                protect_metrics: args.protect_metrics,
                dns_zone: cli.dns_zone,
            };
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(hub::run(cfg, crate::EBPF_OBJECT))
        }
        Command::Status(args) => status(&args, &cli.state_dir),
        Command::Hub(cmd) => {
            let state = StateDir::open(&cli.state_dir)?;
            let store = Store::open(&cli.store, &state)?;
            let out = match cmd {
                HubCommand::Add {
                    name,
                    endpoint,
                    mesh_base,
                } => mesh::add(&store, &name, &endpoint, cli.port, mesh_base)?,
                HubCommand::List => mesh::list(&store)?,
                HubCommand::Remove { name } => mesh::remove(&store, &name)?,
            };
            print!("{out}");
            Ok(())
        }
        Command::Store(cmd) => {
            let state = StateDir::open(&cli.state_dir)?;
            let out = match cmd {
                StoreCommand::Show => store::show(&Store::open(&cli.store, &state)?)?,
                StoreCommand::Hubs => store::hubs(&Store::open(&cli.store, &state)?)?,
                StoreCommand::Migrate { to, force } => store::migrate(&state, &to, force)?,
            };
            print!("{out}");
            Ok(())
        }
        Command::Token(cmd) => {
            let state = StateDir::open(&cli.state_dir)?;
            let store = Store::open(&cli.store, &state)?;
            let ctx = spoke::SpokeCtx {
                state: &state,
                store: &store,
                net: &cli.network,
                endpoint: cli.endpoint.as_deref(),
                port: cli.port,
                keepalive: 0,
            };
            let out = match cmd {
                TokenCommand::Create {
                    uses,
                    expires,
                    group,
                } => token::create(&ctx, cli.enroll_port, uses, expires, group.as_deref())?,
                TokenCommand::List => token::list(&store)?,
                TokenCommand::Revoke { id } => token::revoke(&store, &id)?,
                TokenCommand::Prune => token::prune(&store)?,
            };
            print!("{out}");
            Ok(())
        }
        Command::Publish(cmd) => {
            let state = StateDir::open(&cli.state_dir)?;
            let store = Store::open(&cli.store, &state)?;
            let out = match cmd {
                PublishCommand::Add {
                    name,
                    listen,
                    to,
                    udp_probe,
                } => {
                    let probe = udp_probe
                        .as_deref()
                        .map(crate::core::publish::parse_probe)
                        .transpose()
                        .map_err(|e| anyhow::anyhow!("--udp-probe: {e}"))?;
                    publish::add(&store, &name, listen, to, probe, &cli.dns_zone)?
                }
                PublishCommand::List { metrics_addr } => publish::list(
                    &store,
                    &status::ApiClient::new(metrics_addr, &cli.state_dir),
                )?,
                PublishCommand::Remove { name } => publish::remove(&store, &name)?,
            };
            print!("{out}");
            Ok(())
        }
        Command::Policy(cmd) => {
            let state = StateDir::open(&cli.state_dir)?;
            let store = Store::open(&cli.store, &state)?;
            let out = match cmd {
                PolicyCommand::Show => policy::show(&store)?,
                PolicyCommand::Set { file } => policy::set(&store, &file)?,
                PolicyCommand::Allow { a, b } => policy::allow(&store, &a, &b)?,
                PolicyCommand::Deny { a, b } => policy::deny(&store, &a, &b)?,
                PolicyCommand::Group { name, spokes } => policy::group(&store, &name, &spokes)?,
                PolicyCommand::Exit { cmd } => match cmd {
                    ExitCommand::Allow { who } => policy::exit(&store, true, &who)?,
                    ExitCommand::Deny { who } => policy::exit(&store, false, &who)?,
                },
                PolicyCommand::Reset => policy::reset(&store)?,
            };
            print!("{out}");
            Ok(())
        }
        Command::Spoke(cmd) => {
            let dns_line = |file: String, dns: bool| -> anyhow::Result<String> {
                if !dns {
                    return Ok(file);
                }
                let zone = crate::core::names::normalize(&cli.dns_zone)
                    .with_context(|| format!("--dns-zone {:?} is not a DNS name", cli.dns_zone))?;
                Ok(crate::provision::render::with_dns(
                    &file,
                    cli.network.hub,
                    &zone,
                ))
            };
            let state = StateDir::open(&cli.state_dir)?;
            let store = Store::open(&cli.store, &state)?;
            let ctx = |keepalive| spoke::SpokeCtx {
                state: &state,
                store: &store,
                net: &cli.network,
                endpoint: cli.endpoint.as_deref(),
                port: cli.port,
                keepalive,
            };
            let out = match cmd {
                SpokeCommand::Add {
                    name,
                    pubkey,
                    keepalive,
                    family,
                    hub,
                    exit,
                    dns,
                } => dns_line(
                    spoke::add_with(
                        &ctx(keepalive),
                        &name,
                        pubkey.as_deref(),
                        family,
                        hub.as_deref(),
                        exit,
                    )?,
                    dns,
                )?,
                SpokeCommand::Set {
                    name,
                    exit,
                    no_exit,
                } => {
                    anyhow::ensure!(exit || no_exit, "say what to change: --exit or --no-exit");
                    spoke::set_exit(&ctx(DEFAULT_KEEPALIVE), &name, exit)?
                }
                // Printed files keep the default keepalive (0 would leave a
                // spoke behind NAT without one).
                SpokeCommand::Move { name, hub } => {
                    spoke::move_to(&ctx(DEFAULT_KEEPALIVE), &name, &hub)?
                }
                SpokeCommand::Config {
                    name,
                    dns,
                    keepalive,
                    family,
                } => dns_line(spoke::config_in(&ctx(keepalive), &name, family)?, dns)?,
                SpokeCommand::List => spoke::list(&ctx(0))?,
                SpokeCommand::Remove { name } => spoke::remove(&ctx(0), &name)?,
            };
            print!("{out}");
            Ok(())
        }
    }
}

fn status(args: &StatusArgs, state_dir: &std::path::Path) -> anyhow::Result<()> {
    use std::io::Write as _;
    if args.token {
        let path = state_dir.join(crate::store::dir::API_TOKEN_FILE);
        let token = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "reading the API token {}: the hub writes it on its first start (run as root)",
                path.display()
            )
        })?;
        println!("{}", token.trim());
        return Ok(());
    }
    let api = status::ApiClient::new(args.metrics_addr, state_dir);
    loop {
        let out = if args.json {
            api.fetch("/v1/spokes")?
        } else {
            let (hub, spokes) = api.fetch_all()?;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            status::render_table(&hub, &spokes, now)
        };
        let mut stdout = std::io::stdout().lock();
        if args.watch {
            // Home the cursor and clear: redraw in place.
            write!(stdout, "\x1b[H\x1b[2J")?;
        }
        write!(stdout, "{}", out.trim_end())?;
        writeln!(stdout)?;
        stdout.flush()?;
        if !args.watch {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_secs_f64(args.interval));
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, FromArgMatches};

    use super::*;

    /// Parse `args` as `relayhub ARGS`, blind to the environment: these
    /// tests see the defaults whatever RELAYHUB_* the caller has set.
    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        fn no_env(c: clap::Command) -> clap::Command {
            c.mut_args(|a| a.env(None)).mut_subcommands(no_env)
        }
        let argv = std::iter::once("relayhub").chain(args.iter().copied());
        let m = no_env(Cli::command()).try_get_matches_from(argv)?;
        Cli::from_arg_matches(&m)
    }

    fn run_args(cli: Cli) -> RunArgs {
        match cli.command {
            Command::Run(a) => a,
            c => panic!("not `run`: {c:?}"),
        }
    }

    #[test]
    fn definition_is_consistent() {
        Cli::command().debug_assert();
    }

    /// The defaults README and the printed spoke files rely on.
    #[test]
    fn defaults() {
        let cli = parse(&["run"]).unwrap();
        assert_eq!(cli.state_dir, PathBuf::from("/var/lib/relayhub"));
        assert_eq!(cli.port, 51820);
        assert_eq!(cli.network.to_string(), "10.88.0.0/16");
        assert_eq!(cli.endpoint, None);
        assert_eq!(cli.store, StoreSpec::Dir);
        let r = run_args(cli);
        assert_eq!(r.iface, None);
        assert_eq!(r.wg_iface, "relayhub0");
        assert_eq!(r.metrics_addr.to_string(), "127.0.0.1:9851");
        assert_eq!(r.xdp_mode, AttachMode::Auto);
        assert_eq!(r.max_spokes, relay_common::MAX_SLOTS);
        assert_eq!(r.max_sessions, relay_common::MAX_SESSIONS);
        assert_eq!(r.keepalive, 25);
        assert!(!r.bpf_stats && !r.keep_on_exit);
        assert_eq!(r.pin_dir, PathBuf::from("/sys/fs/bpf/relayhub"));
        assert_eq!(r.cross_family_path, crate::datapath::CrossPath::Xdp);
        assert_eq!(r.initiations_per_source, 64);
        match parse(&["status"]).unwrap().command {
            Command::Status(s) => {
                assert_eq!(s.metrics_addr.to_string(), "127.0.0.1:9851");
                assert_eq!(s.interval, 2.0);
                assert!(!s.json && !s.watch);
            }
            c => panic!("{c:?}"),
        }
    }

    /// Global options work after the subcommand too (`relayhub spoke add
    /// x --endpoint ...` is how people type it).
    #[test]
    fn global_options_after_the_subcommand() {
        let cli = parse(&[
            "spoke",
            "add",
            "x",
            "--endpoint",
            "hub.example:51999",
            "--port",
            "5000",
        ])
        .unwrap();
        assert_eq!(cli.endpoint.as_deref(), Some("hub.example:51999"));
        assert_eq!(cli.port, 5000);
        let r = run_args(parse(&["run", "--keep-on-exit", "--xdp-mode", "generic"]).unwrap());
        assert!(r.keep_on_exit);
        assert_eq!(r.xdp_mode, AttachMode::Generic);
    }

    /// Every default is also an environment variable (module doc, README):
    /// the names are part of the interface.
    #[test]
    fn environment_variables() {
        let cmd = Cli::command();
        let env = |c: &clap::Command, id: &str| {
            c.get_arguments()
                .find(|a| a.get_id() == id)
                .and_then(|a| a.get_env())
                .map(|e| e.to_string_lossy().into_owned())
        };
        for (id, var) in [
            ("state_dir", "RELAYHUB_STATE_DIR"),
            ("port", "RELAYHUB_PORT"),
            ("network", "RELAYHUB_NETWORK"),
            ("endpoint", "RELAYHUB_ENDPOINT"),
            ("store", "RELAYHUB_STORE"),
        ] {
            assert_eq!(env(&cmd, id).as_deref(), Some(var), "--{id}");
        }
        let run = cmd.find_subcommand("run").unwrap();
        for (id, var) in [
            ("iface", "RELAYHUB_IFACE"),
            ("wg_iface", "RELAYHUB_WG_IFACE"),
            ("metrics_addr", "RELAYHUB_METRICS_ADDR"),
            ("xdp_mode", "RELAYHUB_XDP_MODE"),
            ("max_spokes", "RELAYHUB_MAX_SPOKES"),
            ("keepalive", "RELAYHUB_KEEPALIVE"),
            ("bpf_stats", "RELAYHUB_BPF_STATS"),
            ("max_sessions", "RELAYHUB_MAX_SESSIONS"),
            ("pin_dir", "RELAYHUB_PIN_DIR"),
            ("keep_on_exit", "RELAYHUB_KEEP_ON_EXIT"),
            ("cross_family_path", "RELAYHUB_CROSS_FAMILY_PATH"),
            ("initiations_per_source", "RELAYHUB_INITIATIONS_PER_SOURCE"),
            ("peers_port", "RELAYHUB_PEERS_PORT"),
            ("replica_listen", "RELAYHUB_REPLICA_LISTEN"),
            ("standby_of", "RELAYHUB_STANDBY_OF"),
            ("hub_name", "RELAYHUB_HUB_NAME"),
        ] {
            assert_eq!(env(run, id).as_deref(), Some(var), "run --{id}");
        }
        // `spoke add` prints the keepalive the hub's health checks assume.
        let add = cmd
            .find_subcommand("spoke")
            .and_then(|s| s.find_subcommand("add"))
            .unwrap();
        assert_eq!(env(add, "keepalive").as_deref(), Some("RELAYHUB_KEEPALIVE"));
    }

    /// Bad input is a usage error that names the option and the value,
    /// never a panic.
    #[test]
    fn bad_input_is_a_clear_error() {
        for (args, flag, says) in [
            (&["--port", "70000", "run"][..], "--port", "70000"),
            (
                &["--network", "10.88.0.0/31", "run"],
                "--network",
                "/30 or shorter",
            ),
            (
                &["--network", "10.88.0.1/24", "run"],
                "--network",
                "10.88.0.0/24",
            ),
            (
                &["--network", "fd00::/64", "run"],
                "--network",
                "A.B.C.D/PREFIX",
            ),
            (&["run", "--xdp-mode", "fast"], "--xdp-mode", "native"),
            (
                &["run", "--metrics-addr", "localhost"],
                "--metrics-addr",
                "localhost",
            ),
            (&["run", "--max-spokes", "many"], "--max-spokes", "many"),
            (
                &["run", "--cross-family-path", "kernel"],
                "--cross-family-path",
                "userspace",
            ),
            (&["status", "--interval", "0"], "--interval", ">= 0.1"),
            (
                &["--store", "etcd:/x", "spoke", "list"],
                "--store",
                "etcd://HOST:PORT",
            ),
            (
                &["spoke", "list", "--store", "etcd://h:70000"],
                "--store",
                "port",
            ),
            (&["store", "migrate", "--to", "dir:x"], "--to", "etcd://"),
            (&["status", "--interval", "NaN"], "--interval", ">= 0.1"),
        ] {
            let Err(e) = parse(args) else {
                panic!("{args:?} accepted")
            };
            use clap::error::ErrorKind::{InvalidValue, ValueValidation};
            assert!(
                matches!(e.kind(), InvalidValue | ValueValidation),
                "{args:?}: {:?} {e}",
                e.kind()
            );
            let msg = e.to_string();
            assert!(msg.contains(flag) && msg.contains(says), "{args:?}: {msg}");
        }
        for args in [
            &["frobnicate"][..],
            &["spoke"],
            &["spoke", "add"],
            &["policy", "allow", "a"],
        ] {
            assert!(parse(args).is_err(), "{args:?} accepted");
        }
    }
}
