//! Command line: every default is a flag and an environment variable.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::datapath::AttachMode;
use crate::registry::TunnelNet;

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
    /// UDP port shared by the relay and the hub's own WireGuard.
    #[arg(long, env = "RELAYHUB_PORT", default_value_t = relay_common::wire::DEFAULT_PORT, global = true)]
    pub port: u16,
    /// Tunnel network; the hub takes its first address.
    #[arg(
        long,
        env = "RELAYHUB_NETWORK",
        default_value = "10.88.0.0/24",
        global = true
    )]
    pub network: TunnelNet,
    /// The hub's public address as spokes reach it, HOST or HOST:PORT
    /// (default: the address of the default-route interface).
    #[arg(long, env = "RELAYHUB_ENDPOINT", global = true)]
    pub endpoint: Option<String>,
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
    /// Capacity of the relay session table (LRU).
    #[arg(long, env = "RELAYHUB_MAX_SESSIONS", default_value_t = relay_common::MAX_SESSIONS)]
    pub max_sessions: u32,
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
    },
    /// Print a spoke's current wg-quick file (no private key).
    Config {
        name: String,
        #[arg(long, env = "RELAYHUB_KEEPALIVE", default_value_t = relay_common::wire::DEFAULT_PERSISTENT_KEEPALIVE_SECS)]
        keepalive: u16,
    },
    /// List registered spokes.
    List,
    /// Remove a spoke.
    Remove { name: String },
}
