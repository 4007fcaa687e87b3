//! The `apiary` binary.

use apiary_server::config::{self, Command, LogArgs};
use tracing_subscriber::EnvFilter;

fn init_logging(log: &LogArgs) {
    let filter = EnvFilter::try_new(&log.filter).unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> anyhow::Result<()> {
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
                anyhow::bail!("serve: not built yet (listen {})", args.flight.listen)
            }
            Command::HashPassword => anyhow::bail!("hash-password: not built yet"),
        }
    });
    if let Err(e) = result {
        eprintln!("apiary: {e:#}");
        std::process::exit(1);
    }
    Ok(())
}
