use anyhow::Context as _;
use clap::Parser as _;
use relay_user::cli::{Cli, Command, PolicyCommand, SpokeCommand, StatusArgs};
use relay_user::controller::{self, RunConfig};
use relay_user::datapath::Capacity;
use relay_user::state::StateDir;
use relay_user::{netinfo, policy_cmd, spoke_cmd};

fn main() {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = real_main(cli) {
        // One line, the whole chain: what failed and what to do.
        eprintln!("relayhub: {e:#}");
        std::process::exit(1);
    }
}

fn real_main(cli: Cli) -> anyhow::Result<()> {
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
            };
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(controller::run(cfg, relay_user::EBPF_OBJECT))
        }
        Command::Status(args) => status(&args),
        Command::Policy(cmd) => {
            let state = StateDir::open(&cli.state_dir)?;
            let out = match cmd {
                PolicyCommand::Show => policy_cmd::show(&state)?,
                PolicyCommand::Set { file } => policy_cmd::set(&state, &file)?,
                PolicyCommand::Allow { a, b } => policy_cmd::allow(&state, &a, &b)?,
                PolicyCommand::Deny { a, b } => policy_cmd::deny(&state, &a, &b)?,
                PolicyCommand::Group { name, spokes } => policy_cmd::group(&state, &name, &spokes)?,
                PolicyCommand::Reset => policy_cmd::reset(&state)?,
            };
            print!("{out}");
            Ok(())
        }
        Command::Spoke(cmd) => {
            let state = StateDir::open(&cli.state_dir)?;
            let ctx = |keepalive| spoke_cmd::SpokeCtx {
                state: &state,
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
                } => spoke_cmd::add_in(&ctx(keepalive), &name, pubkey.as_deref(), family)?,
                SpokeCommand::Config {
                    name,
                    keepalive,
                    family,
                } => spoke_cmd::config_in(&ctx(keepalive), &name, family)?,
                SpokeCommand::List => spoke_cmd::list(&ctx(0))?,
                SpokeCommand::Remove { name } => spoke_cmd::remove(&ctx(0), &name)?,
            };
            print!("{out}");
            Ok(())
        }
    }
}

fn status(args: &StatusArgs) -> anyhow::Result<()> {
    use std::io::Write as _;
    loop {
        let out = if args.json {
            relay_user::status::fetch(args.metrics_addr, "/v1/spokes")?
        } else {
            let (hub, spokes) = relay_user::status::fetch_all(args.metrics_addr)?;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            relay_user::status::render_table(&hub, &spokes, now)
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
