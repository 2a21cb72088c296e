//! `send-worker simulate`: serve the built-in Telnyx-compatible API on a
//! port, for the demo stack, producers' tests and people.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::ValueEnum;
use tokio_util::sync::CancellationToken;

use super::{init_logging, install_signals};
use crate::config::Settings;
use crate::sim::{self, ResetStyle, SimConfig};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Reset {
    Seconds,
    Unix,
}

#[derive(Debug, clap::Args)]
pub struct Args {
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
}

pub async fn run(args: Args, settings: Option<Settings>) -> anyhow::Result<()> {
    init_logging(settings.as_ref());
    let shutdown = CancellationToken::new();
    install_signals(shutdown.clone());
    let listen = args.listen;
    let handle = sim::start(
        listen,
        SimConfig {
            latency: Duration::from_millis(args.latency_ms),
            limit: args.limit,
            window: Duration::from_millis(args.window_ms.max(1)),
            reset_style: match args.reset_style {
                Reset::Seconds => ResetStyle::Seconds,
                Reset::Unix => ResetStyle::Unix,
            },
            api_key: args.api_key,
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
