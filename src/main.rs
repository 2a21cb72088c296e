//! The `send-worker` binary: a thin shell over the library.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use tracing_subscriber::EnvFilter;

use send_worker::config::{LogFormat, Settings};
use send_worker::metrics::Metrics;
use send_worker::simulator::{self, ResetStyle, SimConfig};
use send_worker::telnyx::TelnyxClient;
use send_worker::worker::Worker;

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

#[derive(Clone, Copy, ValueEnum)]
enum Reset {
    Seconds,
    Unix,
}

#[derive(Subcommand)]
enum Command {
    /// Run the worker.
    Run,
    /// Serve a local Telnyx-compatible Messaging API.
    Simulate {
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Added latency per request, in milliseconds.
        #[arg(long, default_value_t = 20)]
        latency_ms: u64,
        /// Requests per window (0: unlimited).
        #[arg(long, default_value_t = 0)]
        limit: u64,
        #[arg(long, default_value_t = 1000)]
        window_ms: u64,
        #[arg(long, value_enum, default_value_t = Reset::Seconds)]
        reset_style: Reset,
        /// Accept only this bearer token (any non-empty token otherwise).
        #[arg(long, env = "SIM_API_KEY", hide_env_values = true)]
        api_key: Option<String>,
    },
    /// Run a worker against an in-process simulator and the local RabbitMQ,
    /// publish sample jobs and print what became of them.
    Demo {
        #[arg(long, default_value_t = 300)]
        jobs: usize,
        #[arg(long, default_value_t = 180)]
        timeout_secs: u64,
    },
    /// Inspect, replay and purge the dead-letter queue.
    Dlq {
        #[command(subcommand)]
        cmd: send_worker::dlq::DlqCommand,
    },
}

fn init_logging(settings: Option<&Settings>) {
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
fn install_signals(token: CancellationToken) {
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let settings = Settings::load(cli.config.as_deref());
    match cli.command {
        Command::Run => {
            let settings = settings?;
            settings.require_api_key()?;
            init_logging(Some(&settings));
            let shutdown = CancellationToken::new();
            install_signals(shutdown.clone());
            let metrics = Metrics::new();
            let api = TelnyxClient::new(&settings.telnyx).context("building the Telnyx client")?;
            let listen = settings.http_listen();
            let worker = Worker::new(settings, api, metrics.clone());
            let http_stop = CancellationToken::new();
            let (addr, http) =
                send_worker::http::serve(listen, metrics, worker.state.clone(), http_stop.clone())
                    .await
                    .with_context(|| format!("binding http.listen {listen}"))?;
            info!(%addr, "ops endpoints listening");
            worker.run(shutdown).await?;
            http_stop.cancel();
            let _ = http.await;
            info!("stopped");
            Ok(())
        }
        Command::Simulate {
            listen,
            latency_ms,
            limit,
            window_ms,
            reset_style,
            api_key,
        } => {
            init_logging(settings.as_ref().ok());
            let shutdown = CancellationToken::new();
            install_signals(shutdown.clone());
            let handle = simulator::start(
                listen,
                SimConfig {
                    latency: Duration::from_millis(latency_ms),
                    limit,
                    window: Duration::from_millis(window_ms.max(1)),
                    reset_style: match reset_style {
                        Reset::Seconds => ResetStyle::Seconds,
                        Reset::Unix => ResetStyle::Unix,
                    },
                    api_key,
                },
                shutdown.clone(),
            )
            .await
            .with_context(|| format!("binding {listen}"))?;
            println!(
                "simulated Telnyx API on {} (POST /v2/messages)",
                handle.base_url()
            );
            shutdown.cancelled().await;
            Ok(())
        }
        Command::Demo { jobs, timeout_secs } => {
            let mut settings = settings?;
            // The demo's output is its summary; per-job warnings would bury it.
            if std::env::var_os("SEND_WORKER__LOG__LEVEL").is_none() {
                settings.log.level = "error".into();
            }
            init_logging(Some(&settings));
            let report =
                send_worker::demo::run(settings, jobs, Duration::from_secs(timeout_secs)).await?;
            println!("{report}");
            Ok(())
        }
        Command::Dlq { cmd } => {
            let settings = settings?;
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            send_worker::dlq::run(&settings, cmd, &mut out).await?;
            Ok(())
        }
    }
}
