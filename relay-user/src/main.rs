use relay_user::cli;

fn main() {
    // Flags, then RELAYHUB_* variables, then the settings file.
    let cli = cli::config_file::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = cli::execute(cli) {
        // One line, the whole chain: what failed and what to do.
        eprintln!("relayhub: {e:#}");
        std::process::exit(1);
    }
}
