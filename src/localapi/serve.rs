//! The accept loop: plain HTTP (the test harness) or TLS (`tether run`), HTTP/1.1 and
//! HTTP/2 on every connection, each connection in a task of its own (a client that stalls
//! its TLS handshake holds up nobody else), and a graceful shutdown: when the token fires,
//! no new connection is accepted, idle ones are closed and requests in flight finish (watch
//! streams end on the same token).

use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// How long a client has to complete its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long accepting pauses after an error that is not the client's (out of file
/// descriptors): retrying at once would spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_secs(1);

/// Serves `router` on `listener` (over TLS when `tls` is set) until `shutdown` fires, then
/// waits for the open connections to finish.
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    router: axum::Router,
    shutdown: CancellationToken,
) {
    let graceful = GracefulShutdown::new();
    loop {
        let stream = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    if !is_connection_error(&e) {
                        tracing::error!(error = %e, "local API failed to accept a connection");
                        tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    }
                    continue;
                }
            },
        };
        let watcher = graceful.watcher();
        let router = router.clone();
        let Some(acceptor) = tls.clone() else {
            tokio::spawn(connection(stream, router, watcher));
            continue;
        };
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream));
            let stream = tokio::select! {
                () = shutdown.cancelled() => return,
                done = handshake => match done {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "TLS handshake with a local API client failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!("TLS handshake with a local API client timed out");
                        return;
                    }
                },
            };
            connection(stream, router, watcher).await;
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Serves one connection (HTTP/1.1 or HTTP/2, whichever the client speaks).
async fn connection<I>(io: I, router: axum::Router, watcher: Watcher)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let builder = auto::Builder::new(TokioExecutor::new());
    let conn =
        builder.serve_connection_with_upgrades(TokioIo::new(io), TowerToHyperService::new(router));
    if let Err(e) = watcher.watch(conn).await {
        tracing::debug!(error = %e, "local API connection ended with an error");
    }
}

/// Errors of one connection that came and went before it was accepted: nothing to report.
fn is_connection_error(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}
