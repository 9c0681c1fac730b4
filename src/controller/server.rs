//! The HTTP endpoints next to the controllers: `/metrics` (Prometheus text of the process's
//! [`MetricsRegistry`]), `/healthz` (200 while every controller loop runs; 503 once one has
//! stopped, so a liveness probe restarts the process) and `/readyz` (200 once every
//! controller's cache has synced, or while this replica stands by for leadership).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::telemetry::MetricsRegistry;

/// Readiness and liveness shared between the controllers (which set them) and `/readyz` and
/// `/healthz` (which read them).
#[derive(Clone, Debug, Default)]
pub struct Health {
    ready: Arc<AtomicBool>,
    failed: Arc<std::sync::Mutex<Option<&'static str>>>,
}

impl Health {
    /// Not ready yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Marks the process ready or not.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    /// Whether `/readyz` answers 200.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst) && self.failure().is_none()
    }

    /// Marks the process unhealthy for good: the `controller` loop stopped. `/healthz` and
    /// `/readyz` answer 503 from now on, so a liveness probe restarts the process.
    pub fn set_failed(&self, controller: &'static str) {
        *self.failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(controller);
    }

    /// The controller whose loop stopped, if one did.
    pub fn failure(&self) -> Option<&'static str> {
        *self.failed.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[derive(Clone)]
struct ServerState {
    metrics: MetricsRegistry,
    health: Health,
}

/// Why the HTTP server could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Binding the listen address failed.
    #[error("failed to listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Serving failed.
    #[error("failed to serve HTTP: {0}")]
    Serve(#[source] std::io::Error),
}

/// The router with the three endpoints.
pub fn router(metrics: MetricsRegistry, health: Health) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(ServerState { metrics, health })
}

async fn metrics_handler(State(state): State<ServerState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

async fn healthz(State(state): State<ServerState>) -> impl IntoResponse {
    match state.health.failure() {
        None => (StatusCode::OK, "ok".to_string()),
        Some(controller) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the {controller} controller's loop stopped"),
        ),
    }
}

async fn readyz(State(state): State<ServerState>) -> impl IntoResponse {
    if state.health.is_ready() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "caches not synced")
    }
}

/// Binds `addr` and returns the bound address (useful with port 0) and the serving future,
/// which ends when `shutdown` is cancelled.
pub async fn bind(
    addr: SocketAddr,
    metrics: MetricsRegistry,
    health: Health,
    shutdown: CancellationToken,
) -> Result<(SocketAddr, impl Future<Output = Result<(), ServerError>>), ServerError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| ServerError::Bind { addr, source })?;
    let serve = async move {
        axum::serve(listener, router(metrics, health))
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await
            .map_err(ServerError::Serve)
    };
    Ok((bound, serve))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn get_status(addr: SocketAddr, path: &str) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        let code = response[9..12].parse().unwrap();
        (code, response)
    }

    #[tokio::test]
    async fn readyz_turns_200_once_ready_and_healthz_fails_once_a_loop_stopped() {
        let health = Health::new();
        let metrics = MetricsRegistry::new();
        let shutdown = CancellationToken::new();
        let (addr, serve) = bind(
            "127.0.0.1:0".parse().unwrap(),
            metrics,
            health.clone(),
            shutdown.clone(),
        )
        .await
        .unwrap();
        let server = tokio::spawn(serve);
        assert_eq!(get_status(addr, "/healthz").await.0, 200);
        assert_eq!(get_status(addr, "/readyz").await.0, 503);
        health.set_ready(true);
        assert_eq!(get_status(addr, "/readyz").await.0, 200);
        // A controller loop that stopped makes the process unhealthy for good.
        health.set_failed("environment");
        let (code, body) = get_status(addr, "/healthz").await;
        assert_eq!(code, 503);
        assert!(
            body.ends_with("the environment controller's loop stopped"),
            "{body}"
        );
        assert_eq!(get_status(addr, "/readyz").await.0, 503);
        shutdown.cancel();
        server.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn metrics_serves_the_registry_as_prometheus_text() {
        let metrics = MetricsRegistry::new();
        let c = metrics
            .register(prometheus::IntCounter::new("tether_test_total", "help").unwrap())
            .unwrap();
        c.inc();
        let shutdown = CancellationToken::new();
        let (addr, serve) = bind(
            "127.0.0.1:0".parse().unwrap(),
            metrics,
            Health::new(),
            shutdown.clone(),
        )
        .await
        .unwrap();
        let server = tokio::spawn(serve);
        let (code, body) = get_status(addr, "/metrics").await;
        assert_eq!(code, 200);
        assert!(body.contains("tether_test_total 1"));
        shutdown.cancel();
        server.await.unwrap().unwrap();
    }
}
