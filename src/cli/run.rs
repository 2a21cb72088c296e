//! `send-worker run`: the worker, its ops endpoints (and the webhook intake
//! when `webhooks.public_key` is set), and the signals that drain it.

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::{init_logging, install_signals};
use crate::config::Settings;
use crate::ops::metrics::Metrics;
use crate::telnyx::TelnyxClient;
use crate::webhooks::Intake;
use crate::worker::Worker;

pub async fn run(settings: Settings) -> anyhow::Result<()> {
    settings.require_api_key()?;
    init_logging(Some(&settings));
    let shutdown = CancellationToken::new();
    install_signals(shutdown.clone());
    let metrics = Metrics::new();
    let api = TelnyxClient::new(&settings.telnyx).context("building the Telnyx client")?;
    let listen = settings.http_listen();
    let worker = Worker::new(settings, api, metrics.clone()).context("building the job store")?;
    let http_stop = CancellationToken::new();
    let mut app = crate::ops::http::router(metrics.clone(), worker.state.clone());
    if let Some(intake) = Intake::from_settings(
        &worker.settings,
        worker.store.clone(),
        worker.redis.clone(),
        metrics,
    )? {
        info!(
            path = crate::webhooks::PATH,
            dedupe = intake.dedupe_backend(),
            "webhook intake on"
        );
        app = app.merge(intake.router());
    }
    let (addr, http) = crate::ops::http::serve_router(listen, app, http_stop.clone())
        .await
        .with_context(|| format!("binding http.listen {listen}"))?;
    info!(%addr, "ops endpoints listening");
    worker.run(shutdown).await?;
    http_stop.cancel();
    let _ = http.await;
    info!("stopped");
    Ok(())
}
