//! The ops endpoints: `/metrics`, `/healthz`, `/readyz`; and the server that
//! serves them (with the webhook intake's routes merged in when it is on).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::ops::metrics::Metrics;
use crate::ops::state::WorkerState;

#[derive(Clone)]
struct Ops {
    metrics: Metrics,
    state: Arc<WorkerState>,
}

pub fn router(metrics: Metrics, state: Arc<WorkerState>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(Ops { metrics, state })
}

async fn metrics_handler(State(ops): State<Ops>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        ops.metrics.render(),
    )
}

async fn healthz() -> impl IntoResponse {
    (StatusCode::OK, "ok\n")
}

async fn readyz(State(ops): State<Ops>) -> impl IntoResponse {
    let r = ops.state.readiness();
    let status = if r.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(r))
}

/// `/metrics` and `/healthz` alone (for `send-worker webhooks`, which has
/// no worker to be ready).
pub fn metrics_router(metrics: Metrics) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(healthz))
        .with_state(Ops {
            state: Arc::new(WorkerState::new(metrics.clone())),
            metrics,
        })
}

/// Bind `addr` (port 0 picks one) and serve until `shutdown`.
pub async fn serve(
    addr: SocketAddr,
    metrics: Metrics,
    state: Arc<WorkerState>,
    shutdown: CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    serve_router(addr, router(metrics, state), shutdown).await
}

/// Bind `addr` (port 0 picks one) and serve `app` until `shutdown`.
pub async fn serve_router(
    addr: SocketAddr,
    app: Router,
    shutdown: CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let handle = tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
    });
    Ok((local, handle))
}
