//! `send-worker webhooks`: the Telnyx webhook intake alone, for a deployment
//! of its own behind an ingress: `POST /webhooks/telnyx`, `/metrics` and
//! `/healthz` on `http.listen`. Events carry job ids only when the job store
//! is shared (`dedupe.backend = "redis"`): a `memory` store lives inside
//! each worker process, so only the worker's own server can correlate.

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{init_logging, install_signals};
use crate::config::{DedupeBackend, Settings};
use crate::ops::metrics::Metrics;
use crate::store::Store;
use crate::webhooks::Intake;

pub async fn run(settings: Settings) -> anyhow::Result<()> {
    init_logging(Some(&settings));
    let metrics = Metrics::new();
    let redis =
        crate::redis::Redis::from_settings(&settings.redis).context("building the Redis client")?;
    let store = Store::from_settings(&settings, redis.as_ref(), metrics.clone())
        .context("building the job store")?;
    let intake = Intake::from_settings(&settings, store, redis, metrics.clone())?.context(
        "webhooks.public_key is not set (SEND_WORKER__WEBHOOKS__PUBLIC_KEY): the intake \
         never accepts unsigned events",
    )?;
    if settings.dedupe.backend != DedupeBackend::Redis {
        warn!(
            "dedupe.backend is not \"redis\": this intake cannot see the workers' job store, \
             so its events carry no job_id"
        );
    }
    let shutdown = CancellationToken::new();
    install_signals(shutdown.clone());
    let listen = settings.http_listen();
    let app = crate::ops::http::metrics_router(metrics).merge(intake.router());
    let (addr, http) = crate::ops::http::serve_router(listen, app, shutdown.clone())
        .await
        .with_context(|| format!("binding http.listen {listen}"))?;
    info!(%addr, path = crate::webhooks::PATH, dedupe = intake.dedupe_backend(),
        "webhook intake listening");
    let _ = http.await;
    info!("stopped");
    Ok(())
}
