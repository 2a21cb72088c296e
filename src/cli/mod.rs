//! The command line: one file per subcommand. [`main`] parses the arguments,
//! loads the configuration and hands over to the subcommand; the binary
//! (`src/main.rs`) is only a shell around it.

mod config;
#[cfg(feature = "sim")]
pub mod demo;
pub mod dlq;
mod probe;
pub mod publish;
mod run;
#[cfg(feature = "sim")]
mod simulate;
mod status;
mod webhooks;

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::{CommandFactory, Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, Settings};

#[derive(Parser)]
#[command(
    name = "send-worker",
    version,
    about = "Send SMS and MMS jobs from RabbitMQ through the Telnyx Messaging API"
)]
struct Cli {
    /// A TOML file layered over the built-in defaults (environment variables
    /// SEND_WORKER__<SECTION>__<KEY> still win).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the worker.
    Run,
    /// Serve a local Telnyx-compatible Messaging API.
    #[cfg(feature = "sim")]
    Simulate(simulate::Args),
    /// Run a worker against an in-process simulator and the local RabbitMQ,
    /// publish sample jobs and print what became of them.
    #[cfg(feature = "sim")]
    Demo {
        #[arg(long, default_value_t = 300)]
        jobs: usize,
        #[arg(long, default_value_t = 180)]
        timeout_secs: u64,
    },
    /// Publish send jobs from a JSONL or CSV file, stdin, or flags: validated,
    /// confirmed, mandatory, persistent.
    Publish(publish::Args),
    /// Inspect, replay and purge the dead-letter queue.
    Dlq {
        #[command(subcommand)]
        cmd: dlq::DlqCommand,
    },
    /// Serve the Telnyx webhook intake alone (POST /webhooks/telnyx, /metrics,
    /// /healthz on http.listen).
    Webhooks,
    /// What the job store knows about a job: sent, delivered or failed,
    /// dead-lettered, or unknown (exit 0 known, 1 unknown, 2 error).
    Status(status::Args),
    /// Check the configuration and print it.
    Config {
        #[command(subcommand)]
        cmd: config::ConfigCommand,
    },
    /// GET /readyz (exit 0 on 200, 1 otherwise): a health check for
    /// images without curl.
    Probe(probe::Args),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// Logs through `tracing`: JSON off a terminal (or as configured), and
/// `RUST_LOG` over `log.level`.
pub fn init_logging(settings: Option<&Settings>) {
    let (format, level) = settings.map_or((LogFormat::Auto, "info".to_owned()), |s| {
        (s.log.format, s.log.level.clone())
    });
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stdout().is_terminal(),
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if json {
        builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .init();
    } else {
        builder.init();
    }
}

/// First SIGTERM/SIGINT: cancel (drain). Second: exit at once; unacked jobs
/// go back to the queue when the connection drops, so none is lost.
pub fn install_signals(token: CancellationToken) {
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    warn!(error = %e, "cannot install the SIGTERM handler");
                    return;
                }
            };
        let mut count = 0;
        loop {
            tokio::select! {
                _ = term.recv() => {}
                r = tokio::signal::ctrl_c() => if r.is_err() { return },
            }
            count += 1;
            if count == 1 {
                info!("signal received: draining (send it again to exit at once)");
                token.cancel();
            } else {
                warn!("second signal: exiting now; unacked jobs return to the queue");
                std::process::exit(130);
            }
        }
    });
}

/// Parse the arguments and run the subcommand.
pub async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Loaded by the commands that need it: `probe` and `completions` must
    // work whatever the configuration.
    let settings = || Settings::load(cli.config.as_deref());
    match cli.command {
        Command::Probe(args) => probe::run(args).await,
        Command::Completions { shell } => {
            // Into memory first: clap_complete panics on a failed write
            // (a closed pipe), this way it is an error instead.
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "send-worker", &mut script);
            std::io::Write::write_all(&mut std::io::stdout().lock(), &script)?;
            Ok(())
        }
        Command::Config { cmd } => config::run(settings(), cmd, &mut std::io::stdout().lock()),
        Command::Run => run::run(settings()?).await,
        Command::Webhooks => webhooks::run(settings()?).await,
        Command::Status(args) => std::process::exit(status::command(settings(), args).await),
        #[cfg(feature = "sim")]
        Command::Simulate(args) => simulate::run(args, settings().ok()).await,
        #[cfg(feature = "sim")]
        Command::Demo { jobs, timeout_secs } => {
            demo::command(settings()?, jobs, timeout_secs).await
        }
        Command::Publish(args) => std::process::exit(publish::command(settings(), args).await),
        Command::Dlq { cmd } => {
            let settings = settings()?;
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            dlq::run(&settings, cmd, &mut out).await?;
            Ok(())
        }
    }
}
