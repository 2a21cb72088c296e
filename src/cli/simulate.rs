//! `send-worker simulate`: serve the built-in Telnyx-compatible API on a
//! port, for the demo stack, producers' tests and people. The flags set the
//! rate-limit server model and its headers (semantics in `src/sim/models`);
//! `POST /_sim/control` changes any of them at runtime.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use super::{init_logging, install_signals};
use crate::config::Settings;
use crate::sim::{self, ModelKind, ResetStyle, RetryAfterStyle, SimConfig};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Added latency per request, in milliseconds.
    #[arg(long, default_value_t = 20)]
    latency_ms: u64,
    /// Up to this many milliseconds more per request, drawn uniformly.
    #[arg(long, default_value_t = 0)]
    latency_jitter_ms: u64,
    /// How the rate limit counts.
    #[arg(long, value_enum, default_value_t = ModelKind::FixedFirst)]
    model: ModelKind,
    /// Requests per window (0: unlimited).
    #[arg(long, default_value_t = 0)]
    limit: u64,
    #[arg(long, default_value_t = 1000)]
    window_ms: u64,
    /// The gcra model's bucket capacity.
    #[arg(long, default_value_t = 10)]
    burst: u64,
    /// Refused (429) requests count against the limit.
    #[arg(long)]
    count_refused: bool,
    /// How `x-ratelimit-reset` is written.
    #[arg(long, value_enum, default_value_t = ResetStyle::Unix)]
    reset_style: ResetStyle,
    /// How `retry-after` is written on a 429.
    #[arg(long, value_enum, default_value_t = RetryAfterStyle::Seconds)]
    retry_after: RetryAfterStyle,
    /// Accept only this bearer token (any non-empty token otherwise).
    #[arg(long, env = "SIM_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Send no x-ratelimit-* headers (an API that does not say its limit).
    #[arg(long)]
    no_rate_headers: bool,
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
            latency_jitter: Duration::from_millis(args.latency_jitter_ms),
            model: args.model,
            limit: args.limit,
            window: Duration::from_millis(args.window_ms.max(1)),
            burst: args.burst,
            count_refused: args.count_refused,
            reset_style: args.reset_style,
            retry_after: args.retry_after,
            api_key: args.api_key,
            rate_headers: !args.no_rate_headers,
        },
        shutdown.clone(),
    )
    .await
    .with_context(|| format!("binding {listen}"))?;
    let c = handle.config();
    println!(
        "simulated Telnyx API on {} (POST /v2/messages): {}, limit {} per {} ms",
        handle.base_url(),
        c.model,
        c.limit,
        c.window_ms
    );
    shutdown.cancelled().await;
    Ok(())
}
