//! The `apiary` binary.

use apiary_server::config::{self, Command, LogArgs};
use tracing_subscriber::EnvFilter;

fn init_logging(log: &LogArgs) {
    let filter = EnvFilter::try_new(&log.filter).unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
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
    if let Err(e) = result {
        eprintln!("apiary: {e:#}");
        std::process::exit(1);
    }
    Ok(())
}
