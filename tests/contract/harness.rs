//! Test harness for the platform tests: an in-process sandbox (recording on, time scaled),
//! clients pointed at it through the shared HTTP layer, and polling helpers.

use std::future::Future;
use std::time::{Duration, Instant};

use tether::platform::{HttpConfig, Platform, PlatformHttp, PlatformMetrics, Token};
use tether::sandbox::{Faults, SandboxConfig, SandboxHandle};
use tether::telemetry::MetricsRegistry;
use tokio_util::sync::CancellationToken;

use super::Contract;

/// A running sandbox plus what tests need around it.
pub struct Env {
    /// The sandbox.
    pub sandbox: SandboxHandle,
    /// Stops the sandbox when dropped.
    _guard: tokio_util::sync::DropGuard,
    /// The registry the client metrics live in.
    pub metrics: MetricsRegistry,
    platform_metrics: PlatformMetrics,
    scale: f64,
}

/// Starts the sandbox for `platform` at `scale` simulated seconds per second, recording.
pub async fn start(platform: Platform, scale: f64) -> Env {
    tether::install_crypto_provider();
    let shutdown = CancellationToken::new();
    let sandbox = tether::sandbox::start(
        SandboxConfig {
            time_scale: scale,
            record: true,
            platforms: vec![platform],
            ..SandboxConfig::default()
        },
        shutdown.clone(),
    )
    .await
    .expect("sandbox starts");
    let metrics = MetricsRegistry::new();
    let platform_metrics = PlatformMetrics::register(&metrics).expect("metrics register");
    Env {
        sandbox,
        _guard: shutdown.drop_guard(),
        metrics,
        platform_metrics,
        scale,
    }
}

impl Env {
    /// The shared HTTP layer for `platform`, with the sandbox's token.
    pub fn http(&self, platform: Platform) -> PlatformHttp {
        let token = self.sandbox.token(platform).expect("platform served");
        self.http_with_token(platform, token)
    }

    /// The shared HTTP layer for `platform` with an arbitrary token.
    pub fn http_with_token(&self, platform: Platform, token: Token) -> PlatformHttp {
        let url = self.sandbox.url(platform).expect("platform served");
        self.http_at(platform, &url, token)
    }

    /// The shared HTTP layer for `platform` pointed at another server.
    pub fn http_at(&self, platform: Platform, url: &str, token: Token) -> PlatformHttp {
        let config = HttpConfig::for_platform(platform).time_scaled(self.scale);
        PlatformHttp::new(platform, url, token, config, self.platform_metrics.clone())
            .expect("client builds")
    }

    /// Replaces the faults of `platform`.
    pub fn set_faults(&self, platform: Platform, faults: Faults) {
        self.sandbox.set_faults(platform, faults);
    }

    /// Validates every recorded exchange of `platform` against the spec subset.
    pub fn check_contract(&self, platform: Platform) {
        Contract::load(platform).assert_all(&self.sandbox.exchanges());
    }
}

/// Polls `probe` until it returns `Some`, or panics after `timeout` naming `what`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Serves `router` on a random loopback port (for malformed-response tests); returns its
/// base URL.
pub async fn serve_raw(router: axum::Router, prefix: &str) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    format!("http://{addr}{prefix}")
}
