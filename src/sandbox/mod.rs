//! The sandbox: stateful imitations of the vendor APIs, served on loopback (or, with
//! `tether sandbox --addr`, on any address, e.g. in a pod next to the controller) so the
//! platform clients (and `tether run --sandbox`) work with no accounts.
//!
//! Each platform gets its own listener whose base URL stands where the spec's `servers` URL
//! stands (Render's ends in `/v1`). Every request passes one shared pipeline before the
//! platform's handlers: admin routes (`/_sandbox/...`) → token check (401) → faults
//! (latency, 429 storm, share of 5xx) → documented rate limits with the vendor's headers →
//! recording of the exchange (for the contract tests). Asynchronous state machines
//! (deploys, machines, projects) advance with wall time multiplied by the time scale.
//!
//! Admin endpoints on every platform listener (same bearer token):
//! - `GET|PUT /_sandbox/faults` — read or replace the [`Faults`] (JSON).
//! - `POST /_sandbox/edit` — an out-of-band "dashboard edit": `{"object": "service",
//!   "name": "web", "field": "serviceDetails.plan", "value": "pro"}`.
//! - `GET /_sandbox/metrics` — Prometheus text with each app's requests by version and
//!   status code.
//!
//! The **app edge** ([`SandboxHandle::edge_url`], one more listener) serves every Render
//! service, Vercel project and Fly app the sandbox runs, chosen by the `Host` header as a
//! platform's edge chooses by name: `<slug>.onrender.com`, `<project>.vercel.app`,
//! `<app>.fly.dev` and every custom domain or certificate added through the APIs. An app
//! answers according to the version live on it (a Fly app: each request on the next started
//! machine, as Fly's proxy balances them): `200 <name> <version> ok`, `500` for a
//! version in `Faults::unhealthy_sources`, the same after `Faults::slow_ms` for one in
//! `Faults::slow_sources`, `503` while nothing is live. Health checks reach it with
//! `tether controller --health-check-via <edge URL>` (`tether run --sandbox` sets it).

pub mod cli;
pub mod fly;
pub mod render;
pub mod supabase;
pub mod vercel;

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::platform::Platform;
use crate::platform::Token;
use crate::platform::http::{LimitSpec, LimitStyle, documented_limits};

/// How to start the sandbox.
#[derive(Clone, Debug)]
pub struct SandboxConfig {
    /// Simulated seconds per wall-clock second: deploy phases and rate-limit windows are
    /// divided by it. 1.0 is real time; tests use 50–1000.
    pub time_scale: f64,
    /// Keep every exchange for contract checks ([`SandboxHandle::exchanges`]).
    pub record: bool,
    /// Platforms to serve (default all four).
    pub platforms: Vec<Platform>,
    /// Rate limits per platform (default: the documented ones).
    pub limits: HashMap<Platform, Vec<LimitSpec>>,
    /// The token each platform accepts (default: a random one per start).
    pub tokens: HashMap<Platform, Token>,
    /// The address every platform listens on (default 127.0.0.1). The sandbox has no real
    /// security: anything else exposes it to whoever can reach that address.
    pub addr: IpAddr,
    /// The port each platform listens on; a platform not listed (or 0) gets a free port.
    pub ports: HashMap<Platform, u16>,
    /// The app edge's port (0: a free port).
    pub edge_port: u16,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            time_scale: 1.0,
            record: false,
            platforms: Platform::ALL.to_vec(),
            limits: HashMap::new(),
            tokens: HashMap::new(),
            addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            ports: HashMap::new(),
            edge_port: 0,
        }
    }
}

/// Faults, switchable at run time.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct Faults {
    /// Added latency per request, in milliseconds (wall time).
    pub latency_ms: u64,
    /// Reject every request with 429 (and the vendor's headers) while set.
    pub rate_limit_storm: bool,
    /// Seconds (simulated) the storm's 429s ask clients to wait.
    pub storm_retry_after_secs: f64,
    /// Share (0–1) of requests answered with a 5xx.
    pub error_share: f64,
    /// Deployments of these images/refs fail: the build on Render and Vercel, the machine
    /// launch on Fly (`failed`), the project on Supabase.
    pub failing_sources: Vec<String>,
    /// Versions that build but do not start: Render deploys end `update_failed`; Fly
    /// machines start with every check `critical`, then stop.
    pub crashing_sources: Vec<String>,
    /// Apps running a version listed here answer every request with 500.
    pub unhealthy_sources: Vec<String>,
    /// Apps running a version listed here answer after [`Faults::slow_ms`].
    pub slow_sources: Vec<String>,
    /// How long a slow version takes to answer, in milliseconds (wall time).
    pub slow_ms: u64,
    /// Requests answered with a 5xx without being applied, each as `METHOD path-suffix`
    /// (`GET /deploys`: every list of a service's deploys).
    pub failing_requests: Vec<String>,
}

/// One request/response pair seen by the sandbox.
#[derive(Clone, Debug)]
pub struct Exchange {
    /// Platform served.
    pub platform: Platform,
    /// HTTP method.
    pub method: String,
    /// Path as the spec writes it (after the base URL's path).
    pub path: String,
    /// Decoded query parameters, in order.
    pub query: Vec<(String, String)>,
    /// Request body, if JSON.
    pub request_body: Option<Value>,
    /// Response status.
    pub status: u16,
    /// Response body, if JSON.
    pub response_body: Option<Value>,
    /// Raw response body when it is not JSON (non-empty only).
    pub response_text: Option<String>,
}

/// Why the sandbox failed to start.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// Binding the app edge's listen address failed.
    #[error("failed to bind {addr} for the sandbox's app edge")]
    BindEdge {
        /// The address (port 0: any free port).
        addr: SocketAddr,
        /// IO error.
        #[source]
        source: std::io::Error,
    },
    /// Binding the platform's listen address failed.
    #[error("failed to bind {addr} for the {platform} sandbox")]
    Bind {
        /// Platform.
        platform: Platform,
        /// The address (port 0: any free port).
        addr: SocketAddr,
        /// IO error.
        #[source]
        source: std::io::Error,
    },
}

/// Per-platform state shared by the pipeline.
pub(crate) struct Common {
    platform: Platform,
    token: String,
    time_scale: f64,
    started: Instant,
    faults: RwLock<Faults>,
    limits: Vec<LimitSpec>,
    counters: Mutex<Counters>,
    /// 429s sent because a documented limit was exceeded (not the storm fault).
    limit_rejections: std::sync::atomic::AtomicU64,
    recorder: Option<Mutex<Vec<Exchange>>>,
    /// The crash point shared by every platform of this sandbox.
    crash: Arc<CrashPoint>,
    /// Prefix of the base URL's path (`/v1` for Render).
    prefix: &'static str,
    /// Requests each app answered: (app, version, status code) → count.
    apps: Mutex<BTreeMap<(String, String, u16), u64>>,
}

/// A crash point for chaos tests, shared by every platform of one sandbox: the n-th request
/// received after it is armed is held, never applied and never answered, as if its client
/// died just before sending it; releasing answers the held requests 503 (their client is
/// gone by then).
#[derive(Default)]
struct CrashPoint {
    /// Requests left before the one that is held (`None`: disarmed).
    countdown: Mutex<Option<u64>>,
    /// Counts trips.
    tripped: tokio::sync::watch::Sender<u64>,
    /// Counts releases.
    released: tokio::sync::watch::Sender<u64>,
}

impl CrashPoint {
    /// Counts a request; returns what to wait for when it is the one to hold.
    fn hold(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        let mut countdown = self
            .countdown
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match *countdown {
            Some(n) if n <= 1 => {
                *countdown = None;
                let release = self.released.subscribe();
                self.tripped.send_modify(|trips| *trips += 1);
                Some(release)
            }
            Some(n) => {
                *countdown = Some(n - 1);
                None
            }
            None => None,
        }
    }
}

/// A rate-limit class and the object key it is counted for.
type ClassKey = (&'static str, String);

#[derive(Default)]
struct Counters {
    /// (class, key) → per fixed window index → (received, accepted).
    windows: HashMap<ClassKey, HashMap<u64, (u32, u32)>>,
    /// (class, key) → (tokens, last refill) for bucket-style limits.
    buckets: HashMap<ClassKey, (f64, Instant)>,
}

impl Common {
    /// Simulated time since `since`.
    pub(crate) fn sim_elapsed(&self, since: Instant) -> Duration {
        since.elapsed().mul_f64(self.time_scale)
    }

    /// A copy of the current faults.
    pub(crate) fn faults(&self) -> Faults {
        self.faults
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    pub(crate) fn source_fails(&self, source: &str) -> bool {
        self.faults().failing_sources.iter().any(|s| s == source)
    }

    pub(crate) fn source_crashes(&self, source: &str) -> bool {
        self.faults
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .crashing_sources
            .iter()
            .any(|s| s == source)
    }

    fn wall(&self, simulated: Duration) -> Duration {
        simulated.div_f64(self.time_scale)
    }

    /// Vendor error body.
    pub(crate) fn error_body(&self, code: &str, message: &str) -> Value {
        match self.platform {
            Platform::Render => json!({ "id": code, "message": message }),
            Platform::Vercel => json!({ "error": { "code": code, "message": message } }),
            Platform::Fly => json!({ "error": message }),
            Platform::Supabase => json!({ "message": message }),
        }
    }

    pub(crate) fn error(&self, status: StatusCode, code: &str, message: &str) -> Response {
        (status, axum::Json(self.error_body(code, message))).into_response()
    }

    /// Counts the request against its classes; returns the tightest window (limit,
    /// remaining, reset) and whether it is rejected.
    fn count(&self, classes: &[(&'static str, String)]) -> (Option<(u32, u32, Duration)>, bool) {
        let mut counters = self
            .counters
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = Instant::now();
        let elapsed = now.duration_since(self.started);
        let mut tightest: Option<(u32, u32, Duration)> = None;
        let mut rejected = false;
        for (class, key) in classes {
            let Some(spec) = self.limits.iter().find(|l| l.class == *class) else {
                continue;
            };
            let key = if spec.per_key {
                key.clone()
            } else {
                String::new()
            };
            match spec.style {
                LimitStyle::Window => {
                    let window = spec.window.as_nanos().max(1);
                    let index = (elapsed.as_nanos() / window) as u64;
                    let reset = Duration::from_nanos(
                        (window - elapsed.as_nanos() % window).min(u64::MAX as u128) as u64,
                    );
                    let entry = counters
                        .windows
                        .entry((class, key))
                        .or_default()
                        .entry(index)
                        .or_default();
                    entry.0 += 1;
                    if entry.1 >= spec.max {
                        rejected = true;
                    }
                    let remaining = spec.max.saturating_sub(entry.1 + 1);
                    if tightest.is_none_or(|(_, r, _)| remaining < r) {
                        tightest = Some((spec.max, remaining, reset));
                    }
                }
                LimitStyle::Bucket { burst } => {
                    let rate = spec.max as f64 / spec.window.as_secs_f64().max(1e-9);
                    let entry = counters
                        .buckets
                        .entry((class, key))
                        .or_insert((burst as f64, now));
                    let tokens = (entry.0 + now.duration_since(entry.1).as_secs_f64() * rate)
                        .min(burst as f64);
                    entry.1 = now;
                    // A tolerance for the jitter between a client taking its token and the
                    // request arriving: 25 ms of refill (at most half a token), in real
                    // time, so a sandbox running faster than real time is not stricter.
                    if tokens < 1.0 - (rate * BUCKET_ARRIVAL_JITTER.as_secs_f64()).min(0.5) {
                        entry.0 = tokens;
                        rejected = true;
                    } else {
                        entry.0 = tokens - 1.0;
                    }
                }
            }
        }
        if !rejected {
            for (class, key) in classes {
                let Some(spec) = self.limits.iter().find(|l| l.class == *class) else {
                    continue;
                };
                if spec.style != LimitStyle::Window {
                    continue;
                }
                let key = if spec.per_key {
                    key.clone()
                } else {
                    String::new()
                };
                let window = spec.window.as_nanos().max(1);
                let index = (elapsed.as_nanos() / window) as u64;
                if let Some(entry) = counters
                    .windows
                    .get_mut(&(*class, key))
                    .and_then(|w| w.get_mut(&index))
                {
                    entry.1 += 1;
                }
            }
        }
        (tightest, rejected)
    }

    fn rate_headers(&self, headers: &mut HeaderMap, window: (u32, u32, Duration)) {
        let (limit, remaining, reset) = window;
        let names: [&str; 3] = match self.platform {
            Platform::Render => ["ratelimit-limit", "ratelimit-remaining", "ratelimit-reset"],
            Platform::Vercel | Platform::Supabase => [
                "x-ratelimit-limit",
                "x-ratelimit-remaining",
                "x-ratelimit-reset",
            ],
            // Fly documents no rate-limit headers.
            Platform::Fly => return,
        };
        let reset = format!("{:.3}", reset.as_secs_f64());
        for (name, value) in
            names
                .into_iter()
                .zip([limit.to_string(), remaining.to_string(), reset])
        {
            if let Ok(value) = HeaderValue::from_str(&value) {
                headers.insert(name, value);
            }
        }
    }

    fn too_many(&self, wait: Duration, window: Option<(u32, u32, Duration)>) -> Response {
        let body = match self.platform {
            Platform::Vercel => {
                let reset_at = std::time::SystemTime::now() + wait;
                let reset_ms = reset_at
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_millis() as u64;
                json!({ "error": {
                    "code": "rate_limited",
                    "message": "Rate limit exceeded",
                    "limit": {
                        "remaining": 0,
                        "reset": reset_ms / 1000,
                        "resetMs": reset_ms,
                        "total": window.map(|w| w.0).unwrap_or(0),
                    },
                }})
            }
            _ => self.error_body("rate_limited", "Rate limit exceeded"),
        };
        let mut response = (StatusCode::TOO_MANY_REQUESTS, axum::Json(body)).into_response();
        let headers = response.headers_mut();
        if let Some((limit, _, _)) = window {
            self.rate_headers(headers, (limit, 0, wait));
        }
        if self.platform != Platform::Fly
            && let Ok(value) = HeaderValue::from_str(&format!("{:.3}", wait.as_secs_f64()))
        {
            headers.insert("retry-after", value);
        }
        response
    }

    /// Counts one request an app answered, for the per-app metrics.
    fn app_hit(&self, app: &str, version: &str, code: StatusCode) {
        *self
            .apps
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .entry((app.to_owned(), version.to_owned(), code.as_u16()))
            .or_default() += 1;
    }
}

/// What a platform imitation provides to the shared pipeline.
pub(crate) trait Imitation: Send + Sync + 'static {
    /// The rate-limit classes (and per-object key) a request counts against.
    fn classify(&self, method: &str, path: &str) -> Vec<(&'static str, String)>;
    /// Applies a dashboard edit; false when the object is unknown.
    fn edit(&self, object: &str, name: &str, field: &str, value: Value) -> bool;
    /// The source (image/ref) live for the app called `name`, if any.
    fn live_source(&self, name: &str) -> Option<String>;
    /// The name of the app the platform's edge serves `host` with, if any.
    fn app_for_host(&self, _host: &str) -> Option<String> {
        None
    }
}

/// The host of an absolute URL (`https://web-x.onrender.com/...` → `web-x.onrender.com`).
pub(crate) fn url_host(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    Some(authority.rsplit_once('@').map_or(authority, |(_, h)| h))
}

/// How long (simulated) the sandbox's deploys take when nothing fails: what bounds a
/// rollout from below.
#[derive(Clone, Copy, Debug)]
pub struct DeployDurations {
    /// A Render deploy, from trigger to `live`.
    pub render: Duration,
    /// A Vercel deployment, from creation to `READY`.
    pub vercel: Duration,
    /// A Fly machine update, from the update to `started` with its checks passing.
    pub fly_machine: Duration,
}

/// The sandbox's deploy durations (simulated time).
pub fn deploy_durations() -> DeployDurations {
    DeployDurations {
        render: render::DEPLOY,
        vercel: vercel::DEPLOY,
        fly_machine: fly::MACHINE_START,
    }
}

/// A running sandbox.
pub struct SandboxHandle {
    servers: Vec<(Platform, String, Token, Arc<Common>)>,
    edge: String,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    crash: Arc<CrashPoint>,
}

impl SandboxHandle {
    /// The app edge's base URL (`http://127.0.0.1:PORT`): every app answers there, chosen
    /// by the `Host` header.
    pub fn edge_url(&self) -> &str {
        &self.edge
    }

    /// Platforms served, each with its base URL and token.
    pub fn endpoints(&self) -> Vec<(Platform, String, Token)> {
        self.servers
            .iter()
            .map(|(p, url, token, _)| (*p, url.clone(), token.clone()))
            .collect()
    }

    fn common(&self, platform: Platform) -> Option<&Arc<Common>> {
        self.servers
            .iter()
            .find(|(p, ..)| *p == platform)
            .map(|(.., c)| c)
    }

    /// The base URL for `platform` (where the spec's `servers` URL stands).
    pub fn url(&self, platform: Platform) -> Option<String> {
        self.servers
            .iter()
            .find(|(p, ..)| *p == platform)
            .map(|(_, url, ..)| url.clone())
    }

    /// The token `platform` accepts.
    pub fn token(&self, platform: Platform) -> Option<Token> {
        self.servers
            .iter()
            .find(|(p, ..)| *p == platform)
            .map(|(_, _, token, _)| token.clone())
    }

    /// One Kubernetes Secret per served platform holding its sandbox token under key
    /// `token`, named `tether-sandbox-<platform>` — what `tether run --sandbox` applies so
    /// that Environments can name their credentials as they would in production.
    pub fn credential_secrets(
        &self,
        namespace: &str,
    ) -> Vec<(Platform, k8s_openapi::api::core::v1::Secret)> {
        self.servers
            .iter()
            .map(|(platform, _, token, _)| {
                let name = format!("tether-sandbox-{platform}");
                (
                    *platform,
                    crate::platform::credentials::secret_for_token(
                        namespace, &name, "token", token,
                    ),
                )
            })
            .collect()
    }

    /// Platform settings pointing every served platform at this sandbox, with the client
    /// side's rate-limit windows scaled like the sandbox's (`time_scale`).
    pub fn platforms_config(&self, time_scale: f64) -> crate::sync::PlatformsConfig {
        let mut config = crate::sync::PlatformsConfig::default();
        for (platform, url, _) in self.endpoints() {
            config.endpoints.insert(platform, url);
            config.http.insert(
                platform,
                crate::platform::HttpConfig::for_platform(platform).time_scaled(time_scale),
            );
        }
        config
    }

    /// The admin base URL of `platform` (`<origin>/_sandbox`).
    pub fn admin_url(&self, platform: Platform) -> Option<String> {
        let common = self.common(platform)?;
        let url = self.url(platform)?;
        Some(format!(
            "{}/_sandbox",
            url.strip_suffix(common.prefix).unwrap_or(&url)
        ))
    }

    /// Arms the crash point: the `n`-th request (`n` ≥ 1, counted over every platform) from
    /// now on is held, neither applied nor answered. The receiver changes when it trips.
    pub fn crash_before(&self, n: u64) -> tokio::sync::watch::Receiver<u64> {
        let tripped = self.crash.tripped.subscribe();
        *self
            .crash
            .countdown
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(n.max(1));
        tripped
    }

    /// Disarms the crash point and answers every held request 503; call it once the client
    /// that sent them is gone.
    pub fn release_held(&self) {
        *self
            .crash
            .countdown
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = None;
        self.crash.released.send_modify(|releases| *releases += 1);
    }

    /// Replaces the faults of `platform` (the same as `PUT /_sandbox/faults`).
    pub fn set_faults(&self, platform: Platform, faults: Faults) {
        if let Some(common) = self.common(platform) {
            *common
                .faults
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner()) = faults;
        }
    }

    /// Every exchange recorded so far (empty unless `record` was set).
    pub fn exchanges(&self) -> Vec<Exchange> {
        self.servers
            .iter()
            .filter_map(|(.., c)| c.recorder.as_ref())
            .flat_map(|r| {
                r.lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .clone()
            })
            .collect()
    }

    /// The most requests any fixed window of `class` received (accepted or not), over all
    /// keys — what "never exceed the documented limit" is measured by.
    pub fn max_received_in_window(&self, platform: Platform, class: &str) -> u32 {
        self.window_stat(platform, class, |(received, _)| received)
    }

    /// 429s the sandbox sent because a client exceeded a documented limit (storm 429s
    /// excluded).
    pub fn limit_rejections(&self, platform: Platform) -> u64 {
        self.common(platform)
            .map(|c| {
                c.limit_rejections
                    .load(std::sync::atomic::Ordering::Relaxed)
            })
            .unwrap_or(0)
    }

    /// Requests of `class` accepted in total (all windows and keys).
    pub fn accepted(&self, platform: Platform, class: &str) -> u64 {
        let Some(common) = self.common(platform) else {
            return 0;
        };
        let counters = common
            .counters
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        counters
            .windows
            .iter()
            .filter(|((c, _), _)| *c == class)
            .flat_map(|(_, w)| w.values())
            .map(|(_, accepted)| u64::from(*accepted))
            .sum()
    }

    fn window_stat(&self, platform: Platform, class: &str, f: impl Fn((u32, u32)) -> u32) -> u32 {
        let Some(common) = self.common(platform) else {
            return 0;
        };
        let counters = common
            .counters
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        counters
            .windows
            .iter()
            .filter(|((c, _), _)| *c == class)
            .flat_map(|(_, w)| w.values())
            .map(|v| f(*v))
            .max()
            .unwrap_or(0)
    }

    /// Waits until every server has shut down.
    pub async fn stopped(self) {
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// The fixed token `tether run --sandbox` and `tether plan --sandbox` give each platform:
/// what the samples' `platform-tokens` Secret holds.
pub fn sample_token(platform: Platform) -> Token {
    Token::new(format!("sandbox-{platform}-token"))
}

fn random_token(platform: Platform) -> String {
    let prefix = match platform {
        Platform::Render => "rnd_",
        Platform::Vercel => "vcl_",
        Platform::Fly => "fo1_",
        Platform::Supabase => "sbp_",
    };
    format!("{prefix}{}", uuid::Uuid::new_v4().simple())
}

/// Starts the configured platforms on `config.addr` (loopback by default) and `config.ports`
/// (free ports by default); they serve until `shutdown`.
pub async fn start(
    config: SandboxConfig,
    shutdown: CancellationToken,
) -> Result<SandboxHandle, SandboxError> {
    let scale = if config.time_scale.is_finite() && config.time_scale > 0.0 {
        config.time_scale
    } else {
        1.0
    };
    let crash = Arc::new(CrashPoint::default());
    let mut apps: Vec<Pipeline> = Vec::new();
    let mut handle = SandboxHandle {
        servers: Vec::new(),
        edge: String::new(),
        tasks: Vec::new(),
        crash: crash.clone(),
    };
    for platform in config.platforms.iter().copied() {
        let limits = config
            .limits
            .get(&platform)
            .cloned()
            .unwrap_or_else(|| documented_limits(platform))
            .into_iter()
            .map(|mut l| {
                l.window = l.window.div_f64(scale);
                l
            })
            .collect();
        let prefix = match platform {
            Platform::Render => "/v1",
            _ => "",
        };
        let token = config
            .tokens
            .get(&platform)
            .map(|t| t.expose().to_string())
            .unwrap_or_else(|| random_token(platform));
        let common = Arc::new(Common {
            platform,
            token: token.clone(),
            time_scale: scale,
            started: Instant::now(),
            faults: RwLock::new(Faults::default()),
            limits,
            counters: Mutex::new(Counters::default()),
            limit_rejections: std::sync::atomic::AtomicU64::new(0),
            recorder: config.record.then(|| Mutex::new(Vec::new())),
            crash: crash.clone(),
            prefix,
            apps: Mutex::new(BTreeMap::new()),
        });
        let (api, imitation): (Router, Arc<dyn Imitation>) = match platform {
            Platform::Render => render::router(common.clone()),
            Platform::Vercel => vercel::router(common.clone()),
            Platform::Fly => fly::router(common.clone()),
            Platform::Supabase => supabase::router(common.clone()),
        };
        let wanted = SocketAddr::new(
            config.addr,
            config.ports.get(&platform).copied().unwrap_or(0),
        );
        let listener = tokio::net::TcpListener::bind(wanted)
            .await
            .map_err(|source| SandboxError::Bind {
                platform,
                addr: wanted,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| SandboxError::Bind {
            platform,
            addr: wanted,
            source,
        })?;
        let pipeline = Pipeline {
            common: common.clone(),
            imitation: imitation.clone(),
        };
        apps.push(pipeline.clone());
        let api = if prefix.is_empty() {
            api
        } else {
            Router::new().nest(prefix, api)
        };
        let app = api
            .layer(axum::middleware::from_fn_with_state(
                pipeline.clone(),
                pipeline_layer,
            ))
            .merge(admin_router(pipeline));
        let stop = shutdown.clone();
        handle.tasks.push(tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "sandbox server failed");
            }
        }));
        handle.servers.push((
            platform,
            format!("http://{addr}{prefix}"),
            Token::new(token),
            common,
        ));
    }
    let wanted = SocketAddr::new(config.addr, config.edge_port);
    let listener = tokio::net::TcpListener::bind(wanted)
        .await
        .map_err(|source| SandboxError::BindEdge {
            addr: wanted,
            source,
        })?;
    let addr = listener
        .local_addr()
        .map_err(|source| SandboxError::BindEdge {
            addr: wanted,
            source,
        })?;
    handle.edge = format!("http://{addr}");
    let edge = Router::new().fallback(serve_app).with_state(Arc::new(apps));
    handle.tasks.push(tokio::spawn(async move {
        let served = axum::serve(listener, edge)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "sandbox app edge failed");
        }
    }));
    Ok(handle)
}

/// The app edge: the app whose platform serves the request's `Host` answers it, according to
/// the version live on it.
async fn serve_app(State(platforms): State<Arc<Vec<Pipeline>>>, request: Request) -> Response {
    let host = request
        .headers()
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| request.uri().host())
        .unwrap_or_default();
    let host = host.rsplit_once(':').map_or(host, |(h, port)| {
        if port.chars().all(|c| c.is_ascii_digit()) {
            h
        } else {
            host
        }
    });
    let Some((p, name)) = platforms
        .iter()
        .find_map(|p| p.imitation.app_for_host(host).map(|name| (p, name)))
    else {
        return (
            StatusCode::NOT_FOUND,
            format!("no app answers for {host}\n"),
        )
            .into_response();
    };
    let Some(version) = p.imitation.live_source(&name) else {
        p.common.app_hit(&name, "", StatusCode::SERVICE_UNAVAILABLE);
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{name}: no live deployment\n"),
        )
            .into_response();
    };
    let faults = p.common.faults();
    if faults.slow_sources.contains(&version) {
        tokio::time::sleep(Duration::from_millis(faults.slow_ms)).await;
    }
    let code = if faults.unhealthy_sources.contains(&version) {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::OK
    };
    p.common.app_hit(&name, &version, code);
    let word = if code.is_success() { "ok" } else { "failing" };
    (code, format!("{name} {version} {word}\n")).into_response()
}

#[derive(Clone)]
struct Pipeline {
    common: Arc<Common>,
    imitation: Arc<dyn Imitation>,
}

fn authorized(common: &Common, headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let presented = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("FlyV1 "))
        .unwrap_or("");
    presented == common.token
}

const BODY_LIMIT: usize = 8 * 1024 * 1024;

/// How much earlier than its bucket allows a request may arrive and still be accepted: the
/// time between a client taking its token and the server counting the request varies.
const BUCKET_ARRIVAL_JITTER: Duration = Duration::from_millis(25);

async fn pipeline_layer(
    State(pipeline): State<Pipeline>,
    request: Request,
    next: Next,
) -> Response {
    let common = &pipeline.common;
    if let Some(mut release) = common.crash.hold() {
        // The client "dies" before this request reaches the platform: nothing is applied
        // or recorded.
        let _ = release.changed().await;
        return common.error(
            StatusCode::SERVICE_UNAVAILABLE,
            "crash_point",
            "held by the sandbox's crash point",
        );
    }
    let method = request.method().as_str().to_owned();
    let full_path = request.uri().path().to_owned();
    let path = full_path
        .strip_prefix(common.prefix)
        .unwrap_or(&full_path)
        .to_owned();
    let query: Vec<(String, String)> = request
        .uri()
        .query()
        .map(url_decode_pairs)
        .unwrap_or_default();
    let (parts, body) = request.into_parts();
    let bytes = axum::body::to_bytes(body, BODY_LIMIT)
        .await
        .unwrap_or_default();
    let request_body = serde_json::from_slice::<Value>(&bytes).ok();
    let response = handle_request(&pipeline, &parts, &method, &path, bytes, next).await;
    let (parts, body) = response.into_parts();
    let out = axum::body::to_bytes(body, BODY_LIMIT)
        .await
        .unwrap_or_default();
    if let Some(recorder) = &common.recorder {
        let response_body = serde_json::from_slice::<Value>(&out).ok();
        let response_text = (response_body.is_none() && !out.is_empty())
            .then(|| String::from_utf8_lossy(&out).into_owned());
        recorder
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(Exchange {
                platform: common.platform,
                method,
                path,
                query,
                request_body,
                status: parts.status.as_u16(),
                response_body,
                response_text,
            });
    }
    Response::from_parts(parts, Body::from(out))
}

async fn handle_request(
    pipeline: &Pipeline,
    parts: &axum::http::request::Parts,
    method: &str,
    path: &str,
    bytes: bytes::Bytes,
    next: Next,
) -> Response {
    let common = &pipeline.common;
    if !authorized(common, &parts.headers) {
        return common.error(StatusCode::UNAUTHORIZED, "unauthorized", "Unauthorized");
    }
    let faults = common.faults();
    if faults.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(faults.latency_ms)).await;
    }
    let classes = pipeline.imitation.classify(method, path);
    let (window, rejected) = common.count(&classes);
    if faults.rate_limit_storm {
        let wait = common.wall(Duration::from_secs_f64(
            faults.storm_retry_after_secs.max(0.0),
        ));
        return common.too_many(wait, window);
    }
    if rejected {
        common
            .limit_rejections
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let wait = window
            .map(|(_, _, reset)| reset)
            .unwrap_or_else(|| common.wall(Duration::from_secs(1)));
        return common.too_many(wait, window);
    }
    let failing = faults.failing_requests.iter().any(|f| {
        f.split_once(' ')
            .is_some_and(|(m, suffix)| m == method && path.ends_with(suffix))
    });
    if failing || faults.error_share > 0.0 && rand::random::<f64>() < faults.error_share {
        let status = if rand::random::<bool>() {
            StatusCode::INTERNAL_SERVER_ERROR
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        return common.error(status, "internal_error", "Injected failure");
    }
    let request = Request::from_parts(parts.clone(), Body::from(bytes));
    let mut response = next.run(request).await;
    if let Some(window) = window {
        common.rate_headers(response.headers_mut(), window);
    }
    response
}

fn url_decode_pairs(query: &str) -> Vec<(String, String)> {
    url::form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

#[derive(Deserialize)]
struct Edit {
    object: String,
    name: String,
    field: String,
    value: Value,
}

fn admin_router(pipeline: Pipeline) -> Router {
    use axum::routing::{get, post};
    Router::new()
        .route("/_sandbox/faults", get(get_faults).put(put_faults))
        .route("/_sandbox/edit", post(post_edit))
        .route("/_sandbox/metrics", get(get_metrics))
        .with_state(pipeline)
}

async fn get_faults(State(p): State<Pipeline>, headers: HeaderMap) -> Response {
    if !authorized(&p.common, &headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    axum::Json(p.common.faults()).into_response()
}

async fn put_faults(
    State(p): State<Pipeline>,
    headers: HeaderMap,
    axum::Json(faults): axum::Json<Faults>,
) -> Response {
    if !authorized(&p.common, &headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    *p.common
        .faults
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner()) = faults.clone();
    axum::Json(faults).into_response()
}

async fn post_edit(
    State(p): State<Pipeline>,
    headers: HeaderMap,
    axum::Json(edit): axum::Json<Edit>,
) -> Response {
    if !authorized(&p.common, &headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    if p.imitation
        .edit(&edit.object, &edit.name, &edit.field, edit.value)
    {
        StatusCode::NO_CONTENT.into_response()
    } else {
        StatusCode::NOT_FOUND.into_response()
    }
}

async fn get_metrics(State(p): State<Pipeline>) -> Response {
    let apps = p
        .common
        .apps
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .clone();
    let mut text = String::from(
        "# HELP sandbox_app_requests_total Requests the app answered, by version and status code.\n# TYPE sandbox_app_requests_total counter\n",
    );
    for ((app, version, code), count) in &apps {
        text.push_str(&format!(
            "sandbox_app_requests_total{{app=\"{}\",version=\"{}\",code=\"{code}\"}} {count}\n",
            label(app),
            label(version)
        ));
    }
    ([("content-type", "text/plain; version=0.0.4")], text).into_response()
}

/// A Prometheus label value, escaped.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Sets a dotted `field` (`serviceDetails.plan`) inside a stored JSON object.
pub(crate) fn set_field(object: &mut Value, field: &str, value: Value) -> bool {
    let mut target = object;
    let mut parts = field.split('.').peekable();
    while let Some(part) = parts.next() {
        if parts.peek().is_none() {
            if let Some(map) = target.as_object_mut() {
                map.insert(part.to_owned(), value);
                return true;
            }
            return false;
        }
        let Some(map) = target.as_object_mut() else {
            return false;
        };
        target = map.entry(part.to_owned()).or_insert_with(|| json!({}));
    }
    false
}

/// RFC 3339 timestamp for a wall-clock instant.
pub(crate) fn timestamp() -> String {
    jiff::Timestamp::now().to_string()
}

/// A stable digest of a value (image shas, secret digests) that does not reveal it.
pub(crate) fn digest(text: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
}
