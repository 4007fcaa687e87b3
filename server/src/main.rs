//! The `apiary` binary.

use apiary_server::config::{self, Command, LogArgs};
use tracing_subscriber::EnvFilter;

fn init_logging(log: &LogArgs) {
    let filter = EnvFilter::try_new(&log.filter).unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if log.log_format == "json" {
        builder.json().with_current_span(true).init();
    } else {
        builder.with_ansi(std::io::stderr().is_terminal()).init();
    }
}

fn main() -> anyhow::Result<()> {
    // Two TLS backends end up in the dependency tree; pick one for the whole process.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = match config::parse_args(std::env::args_os()) {
        Ok(cli) => cli,
        Err(e) => match e.downcast::<clap::Error>() {
            Ok(clap_err) => clap_err.exit(),
            Err(e) => {
                eprintln!("apiary: {e:#}");
                std::process::exit(2);
            }
        },
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("apiary-io")
        .build()?;
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Sql(args) => {
                init_logging(&args.log);
                apiary_server::cli::run(args).await
            }
            Command::Serve(args) => {
                init_logging(&args.log);
                apiary_server::serve::run(args).await
            }
            Command::CheckConfig(args) => {
                init_logging(&LogArgs {
                    filter: "warn".into(),
                    ..args.log.clone()
                });
                apiary_server::serve::check_config(&args).await
            }
            Command::Health(args) => apiary_server::cli::health(&args).await,
            Command::Version => {
                print!("{}", apiary_server::cli::version());
                Ok(())
            }
            Command::HashPassword => {
                let mut password = String::new();
                std::io::stdin().read_line(&mut password)?;
                let password = password.trim_end_matches(['\r', '\n']);
                if password.is_empty() {
                    anyhow::bail!("no password on stdin");
                }
                println!("{}", apiary_server::auth::hash_password(password)?);
                Ok(())
            }
        }
    });
    // Blocking work still running (a storage call cut short by shutdown) gets a moment, not
    // forever.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    if let Err(e) = result {
        eprintln!("apiary: {e:#}");
        std::process::exit(1);
    }
    Ok(())
}
