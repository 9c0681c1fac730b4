//! The HTTP endpoints next to the controllers: `/metrics` (Prometheus text of the process's
//! [`MetricsRegistry`]), `/healthz` (the process is alive) and `/readyz` (200 once every
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

/// Readiness shared between the controllers (which set it) and `/readyz` (which reads it).
#[derive(Clone, Debug, Default)]
pub struct Health {
    ready: Arc<AtomicBool>,
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
        self.ready.load(Ordering::SeqCst)
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
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(ServerState { metrics, health })
}

async fn metrics_handler(State(state): State<ServerState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
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
    async fn readyz_turns_200_only_once_ready_and_healthz_is_always_200() {
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
