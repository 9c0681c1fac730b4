//! The one HTTP layer every platform adapter sends through: bearer auth, timeouts,
//! client-side rate limiting (governor, seeded from the documented limits and corrected live
//! from the platforms' rate-limit headers), retries with exponential backoff and jitter
//! (backon), typed errors and request metrics.
//!
//! Adapters describe a call as an [`ApiRequest`] (operation name, path segments, query, JSON
//! body, which rate-limit classes it counts against) and get back an [`ApiResponse`] or a
//! [`PlatformError`]. Nothing here knows a vendor's types.

use std::collections::HashMap;
use std::fmt;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use backon::{BackoffBuilder, ExponentialBuilder};
use bytes::Bytes;
use governor::clock::Clock as _;
use governor::{DefaultKeyedRateLimiter, Quota};
use http::{HeaderMap, Method};
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts};
use reqwest::Url;
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;

use super::{Platform, PlatformError, PlatformResult};
use crate::telemetry::MetricsRegistry;

/// A platform API token. Debug and Display print `***`; the value only leaves this type as
/// the `Authorization` header.
#[derive(Clone)]
pub struct Token(SecretString);

impl Token {
    /// Wraps a token value.
    pub fn new(value: impl Into<String>) -> Self {
        Token(SecretString::from(value.into()))
    }

    /// The value, for building the `Authorization` header (and for the sandbox's check).
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// How a documented limit counts requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitStyle {
    /// `max` requests per fixed `window` (Render, Vercel, Supabase). The client paces itself
    /// so that no window of that length ever holds more than `max` requests.
    Window,
    /// A token bucket refilling `max` per `window` with bursts up to `burst` (Fly).
    Bucket {
        /// Largest burst.
        burst: u32,
    },
}

/// One documented rate limit of a platform.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LimitSpec {
    /// Class name requests refer to (`read`, `write`, `service_create`, …).
    pub class: &'static str,
    /// Requests allowed per window.
    pub max: u32,
    /// Window length.
    pub window: Duration,
    /// Counting style.
    pub style: LimitStyle,
    /// Whether the limit applies per object (the request's limit key) rather than per token.
    pub per_key: bool,
}

impl LimitSpec {
    /// `(burst, paced)`: requests allowed at once, and per window after the burst.
    fn shape(&self) -> (u32, u32) {
        let max = self.max.max(1);
        match self.style {
            // GCRA allows `burst + window/interval` requests in any window; keeping a burst
            // of 1/20 and pacing the rest keeps every window at or under `max` while
            // sustaining 95% of it.
            LimitStyle::Window => {
                let burst = max.div_ceil(20).max(1);
                (burst, (max - burst).max(1))
            }
            LimitStyle::Bucket { burst } => (burst.max(1), max),
        }
    }

    fn period_of(&self, paced: u32) -> Duration {
        (self.window / paced.max(1)).max(Duration::from_nanos(1))
    }

    /// The time between two requests once the burst is spent.
    fn period(&self) -> Duration {
        self.period_of(self.shape().1)
    }

    fn quota(&self) -> Quota {
        let (burst, paced) = self.shape();
        let interval = self.period_of(paced);
        let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
        Quota::with_period(interval)
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            .allow_burst(burst)
    }
}

/// The documented limits of a platform (see the issue and provider-apis/README.md).
pub fn documented_limits(platform: Platform) -> Vec<LimitSpec> {
    const MIN: Duration = Duration::from_secs(60);
    const HOUR: Duration = Duration::from_secs(3600);
    const SEC: Duration = Duration::from_secs(1);
    let window = |class, max, window, per_key| LimitSpec {
        class,
        max,
        window,
        style: LimitStyle::Window,
        per_key,
    };
    match platform {
        Platform::Render => vec![
            window("read", 400, MIN, false),
            window("write", 30, MIN, false),
            window("service_action", 10, MIN, true),
            window("service_create", 20, HOUR, false),
        ],
        // Vercel publishes no per-endpoint quotas in its spec; 100/min is a conservative
        // seed, corrected live from X-RateLimit-* headers and the 429 body.
        Platform::Vercel => vec![window("api", 100, MIN, false)],
        Platform::Fly => vec![
            LimitSpec {
                class: "action",
                max: 1,
                window: SEC,
                style: LimitStyle::Bucket { burst: 3 },
                per_key: true,
            },
            LimitSpec {
                class: "get_machine",
                max: 5,
                window: SEC,
                style: LimitStyle::Bucket { burst: 10 },
                per_key: true,
            },
        ],
        Platform::Supabase => vec![window("api", 120, MIN, false)],
    }
}

/// Settings of the HTTP layer for one platform.
#[derive(Clone, Debug)]
pub struct HttpConfig {
    /// Whole-request timeout.
    pub timeout: Duration,
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// Retries after the first attempt for transient failures of idempotent requests.
    pub max_retries: usize,
    /// First backoff delay.
    pub min_backoff: Duration,
    /// Largest backoff delay.
    pub max_backoff: Duration,
    /// How long one call may keep waiting out 429s before giving up with `RateLimited`.
    pub max_rate_limited_wait: Duration,
    /// Client-side limits (defaults: the documented ones).
    pub limits: Vec<LimitSpec>,
}

impl HttpConfig {
    /// Defaults for `platform`, with its documented rate limits.
    pub fn for_platform(platform: Platform) -> Self {
        HttpConfig {
            timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            max_retries: 8,
            min_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(20),
            max_rate_limited_wait: Duration::from_secs(300),
            limits: documented_limits(platform),
        }
    }

    /// Divides every limit window (and the backoff delays) by `scale`, for tests and
    /// benchmarks that run the sandbox faster than real time.
    pub fn time_scaled(mut self, scale: f64) -> Self {
        let scale = if scale.is_finite() && scale > 0.0 {
            scale
        } else {
            1.0
        };
        for limit in &mut self.limits {
            limit.window = limit.window.div_f64(scale);
        }
        self.min_backoff = self
            .min_backoff
            .div_f64(scale)
            .max(Duration::from_millis(1));
        self.max_backoff = self
            .max_backoff
            .div_f64(scale)
            .max(Duration::from_millis(2));
        self
    }
}

/// Request metrics shared by every platform client of the process.
#[derive(Clone)]
pub struct PlatformMetrics {
    requests: IntCounterVec,
    duration: HistogramVec,
    remaining: IntGaugeVec,
    rate_limited: IntCounterVec,
    credentials_rejected: IntCounterVec,
}

impl PlatformMetrics {
    /// Creates the metrics and registers them into `registry`.
    pub fn register(registry: &MetricsRegistry) -> Result<Self, prometheus::Error> {
        Ok(PlatformMetrics {
            requests: registry.register(IntCounterVec::new(
                Opts::new(
                    "tether_platform_requests_total",
                    "Platform API requests by platform, operation and HTTP status code.",
                ),
                &["platform", "operation", "code"],
            )?)?,
            duration: registry.register(HistogramVec::new(
                HistogramOpts::new(
                    "tether_platform_request_duration_seconds",
                    "Duration of platform API requests.",
                ),
                &["platform", "operation"],
            )?)?,
            remaining: registry.register(IntGaugeVec::new(
                Opts::new(
                    "tether_platform_ratelimit_remaining",
                    "Requests left in the platform's current rate-limit window, as last reported.",
                ),
                &["platform"],
            )?)?,
            rate_limited: registry.register(IntCounterVec::new(
                Opts::new(
                    "tether_platform_rate_limited_total",
                    "Responses with HTTP 429 from the platform.",
                ),
                &["platform"],
            )?)?,
            credentials_rejected: registry.register(IntCounterVec::new(
                Opts::new(
                    "tether_credentials_rejected_total",
                    "Responses with HTTP 401 or 403: the platform rejected the token.",
                ),
                &["platform"],
            )?)?,
        })
    }
}

/// One API call as an adapter describes it.
#[derive(Clone, Debug)]
pub struct ApiRequest {
    method: Method,
    operation: &'static str,
    segments: Vec<String>,
    query: Vec<(&'static str, String)>,
    headers: Vec<(&'static str, String)>,
    body: Option<serde_json::Value>,
    idempotent: bool,
    limits: &'static [&'static str],
    limit_key: String,
}

impl ApiRequest {
    /// A request; GET, PUT and DELETE count as idempotent (retried on transient failures).
    pub fn new(method: Method, operation: &'static str, segments: &[&str]) -> Self {
        let idempotent = matches!(
            method,
            Method::GET | Method::PUT | Method::DELETE | Method::HEAD
        );
        ApiRequest {
            method,
            operation,
            segments: segments.iter().map(|s| (*s).to_owned()).collect(),
            query: Vec::new(),
            headers: Vec::new(),
            body: None,
            idempotent,
            limits: &[],
            limit_key: String::new(),
        }
    }

    /// A GET.
    pub fn get(operation: &'static str, segments: &[&str]) -> Self {
        Self::new(Method::GET, operation, segments)
    }

    /// A POST (not idempotent unless [`ApiRequest::idempotent`] is called).
    pub fn post(operation: &'static str, segments: &[&str]) -> Self {
        Self::new(Method::POST, operation, segments)
    }

    /// Adds a query parameter.
    pub fn query(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.query.push((name, value.into()));
        self
    }

    /// Adds a header.
    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    /// Sets a JSON body.
    pub fn json(mut self, body: serde_json::Value) -> Self {
        self.body = Some(body);
        self
    }

    /// Marks the request safe to repeat (a POST carrying an idempotency key, or a
    /// `current_version`-guarded update).
    pub fn idempotent(mut self) -> Self {
        self.idempotent = true;
        self
    }

    /// The rate-limit classes this request counts against, and the object key for
    /// per-object classes.
    pub fn limited(mut self, classes: &'static [&'static str], key: impl Into<String>) -> Self {
        self.limits = classes;
        self.limit_key = key.into();
        self
    }

    /// The operation name (metric label and error text).
    pub fn operation(&self) -> &'static str {
        self.operation
    }
}

/// A successful (2xx) response.
#[derive(Clone, Debug)]
pub struct ApiResponse {
    /// HTTP status.
    pub status: u16,
    /// Response headers.
    pub headers: HeaderMap,
    /// Raw body.
    pub body: Bytes,
}

impl ApiResponse {
    /// A header value as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Decodes a JSON body, turning failures into [`PlatformError::Malformed`] without echoing
/// body content (it may hold secrets).
pub fn decode<T: DeserializeOwned>(
    platform: Platform,
    operation: &'static str,
    body: &[u8],
) -> PlatformResult<T> {
    serde_json::from_slice(body).map_err(|e| {
        let text = e.to_string();
        // serde's "missing field `x`" names a field, never a value; other messages can
        // quote values, so only their category and position are reported.
        let reason = if text.starts_with("missing field") {
            text
        } else {
            format!(
                "invalid JSON body ({:?} error at line {} column {})",
                e.classify(),
                e.line(),
                e.column()
            )
        };
        PlatformError::Malformed {
            platform,
            operation,
            reason,
        }
    })
}

struct Limiters {
    classes: HashMap<&'static str, (LimitSpec, DefaultKeyedRateLimiter<String>)>,
    /// Set from rate-limit headers: no request leaves before this instant.
    paused_until: Mutex<Option<Instant>>,
    /// The parked requests of each limit (class and key), in line.
    lines: Mutex<HashMap<(&'static str, String), Line>>,
}

/// The syncs waiting for one limit, in the order they came: the next token is for the first
/// one in a worker, unless one ahead of it is expected back for it (parked, its turn not yet
/// come). Parked syncs thus keep their place, are not all woken by the next token (a
/// thundering herd that would keep every worker busy re-reconciling), and one coming back
/// late (the workers were busy) neither loses its place nor holds the others back meanwhile
/// (a token left unused is throughput lost for good). Each is told the wait behind those ahead of it, so that only the first
/// one or two wait in a worker.
#[derive(Debug)]
struct Line {
    /// Who waits, first first.
    waiting: std::collections::VecDeque<Place>,
    /// When the limiter has its next token (as it said at the last refusal).
    next_token: Instant,
    /// The time between two tokens (the limit's period).
    period: Duration,
}

/// One sync's place in a line.
#[derive(Debug)]
struct Place {
    /// Whose sync (`namespace/name`).
    who: std::sync::Arc<str>,
    /// When it was told its turn comes.
    turn: Instant,
    /// In a worker now, waiting in place (not parked).
    present: bool,
}

impl Line {
    /// Forgets syncs long past their turn that never came back (gone, or their spec no
    /// longer needs the request); whether the line is over.
    fn tidy(&mut self, now: Instant) -> bool {
        let stale = (self.period * 2).max(STALE_TURN);
        self.waiting
            .retain(|p| p.present || now.saturating_duration_since(p.turn) < stale);
        self.waiting.is_empty()
    }

    /// `who`'s place, joining at the end if it is not in line, and the turn it was told
    /// before (`None` for a newcomer).
    fn place_of(&mut self, who: &std::sync::Arc<str>, now: Instant) -> (usize, Option<Instant>) {
        match self.waiting.iter().position(|p| p.who == *who) {
            Some(index) => (index, Some(self.waiting[index].turn)),
            None => {
                self.waiting.push_back(Place {
                    who: who.clone(),
                    turn: now,
                    present: false,
                });
                (self.waiting.len() - 1, None)
            }
        }
    }

    /// How many ahead of `index` the next tokens are kept for: those in a worker, and
    /// those parked whose turn has not come yet.
    fn ahead(&self, index: usize, now: Instant) -> u32 {
        let holding = self
            .waiting
            .range(..index)
            .filter(|p| p.present || now < p.turn)
            .count();
        u32::try_from(holding).unwrap_or(u32::MAX)
    }
}

/// What a sync's request does next about one limit.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// It has its token: send.
    Go,
    /// Its turn is close: wait this long in place, then ask again.
    Wait(Duration),
    /// Its turn is this far: park (the sync returns and comes back for it).
    Park(Duration),
}

/// A sync waiting in place: when the wait ends or is abandoned (the reconcile was dropped),
/// it no longer holds the next token back for itself.
struct InPlace<'a> {
    limiters: &'a Limiters,
    line_key: &'a (&'static str, String),
    who: &'a std::sync::Arc<str>,
}

impl Drop for InPlace<'_> {
    fn drop(&mut self) {
        let mut lines = self
            .limiters
            .lines
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(place) = lines
            .get_mut(self.line_key)
            .and_then(|line| line.waiting.iter_mut().find(|p| p.who == *self.who))
        {
            place.present = false;
        }
    }
}

/// The least time a turn is kept for a parked request that has not come back.
const STALE_TURN: Duration = Duration::from_secs(5);

/// When a sync parked for `wait` comes back: a little before its turn, so that it is in a
/// worker, its observation done, when the token is there (a sync coming back late leaves the
/// token unused: the limit's throughput is lost); the rest it waits out in place.
fn come_back(wait: Duration) -> Duration {
    wait.saturating_sub(crate::sync::progress::PARK_AFTER / 2)
}

impl Limiters {
    fn new(limits: &[LimitSpec]) -> Self {
        Limiters {
            classes: limits
                .iter()
                .map(|l| {
                    (
                        l.class,
                        (l.clone(), DefaultKeyedRateLimiter::keyed(l.quota())),
                    )
                })
                .collect(),
            paused_until: Mutex::new(None),
            lines: Mutex::new(HashMap::new()),
        }
    }

    /// Waits until `request` may be sent: past a pause the platform asked for, then a token
    /// of each of its limit classes. A wait long enough to matter is reported to the sync in
    /// progress (its Environment's status says what it waits for and until when); inside a
    /// controller's sync it is not waited out but returned (`Err(wait)`: the sync parks).
    async fn acquire(&self, platform: Platform, request: &ApiRequest) -> Result<(), Duration> {
        use crate::sync::progress::{self, PARK_AFTER};
        loop {
            let pause = *self
                .paused_until
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            match pause {
                Some(until) if until > Instant::now() => {
                    let wait = until - Instant::now();
                    progress::waiting(platform, request.operation, wait);
                    if progress::parks(wait) {
                        return Err(wait);
                    }
                    tokio::time::sleep_until(until.into()).await
                }
                _ => break,
            }
        }
        // A sync's requests take their turn in the line of each limit; requests outside a
        // sync (`tether plan`) wait for the limiter.
        let who = progress::who().filter(|_| progress::parks(PARK_AFTER));
        for class in request.limits {
            let Some((spec, limiter)) = self.classes.get(class) else {
                continue;
            };
            let key = if spec.per_key {
                request.limit_key.clone()
            } else {
                String::new()
            };
            let Some(who) = &who else {
                if let Err(not_until) = limiter.check_key(&key) {
                    let wait = not_until.wait_time_from(limiter.clock().now());
                    progress::waiting(platform, request.operation, wait);
                    limiter.until_key_ready(&key).await;
                }
                continue;
            };
            let line_key = (*class, key.clone());
            loop {
                match self.step(&line_key, who, limiter, spec.period()) {
                    Step::Go => break,
                    Step::Park(wait) => {
                        progress::waiting(platform, request.operation, wait);
                        return Err(come_back(wait));
                    }
                    Step::Wait(wait) => {
                        let _in_place = InPlace {
                            limiters: self,
                            line_key: &line_key,
                            who,
                        };
                        tokio::time::sleep(wait).await;
                    }
                }
            }
        }
        Ok(())
    }

    /// What `who`'s request does next about the limit of `line_key`: take the token if
    /// nobody ahead holds it, else wait in place when its turn is under [`PARK_AFTER`]
    /// away, or park until it.
    fn step(
        &self,
        line_key: &(&'static str, String),
        who: &std::sync::Arc<str>,
        limiter: &DefaultKeyedRateLimiter<String>,
        period: Duration,
    ) -> Step {
        use crate::sync::progress::PARK_AFTER;
        let now = Instant::now();
        let next_token = |not_until: governor::NotUntil<_>| {
            now + not_until.wait_time_from(limiter.clock().now())
        };
        let mut lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        // Lines that are over go (every key's line, so keys never asked again do not stay).
        lines.retain(|_, line| !line.tidy(now));
        let line = match lines.entry(line_key.clone()) {
            std::collections::hash_map::Entry::Occupied(line) => line.into_mut(),
            // Nobody waits: a token goes at once, else the line starts.
            std::collections::hash_map::Entry::Vacant(vacant) => {
                match limiter.check_key(&line_key.1) {
                    Ok(()) => return Step::Go,
                    Err(not_until) => vacant.insert(Line {
                        waiting: std::collections::VecDeque::new(),
                        next_token: next_token(not_until),
                        period,
                    }),
                }
            }
        };
        let (index, told) = line.place_of(who, now);
        let ahead = line.ahead(index, now);
        if ahead == 0 {
            match limiter.check_key(&line_key.1) {
                Ok(()) => {
                    line.waiting.remove(index);
                    return Step::Go;
                }
                Err(not_until) => line.next_token = next_token(not_until),
            }
        }
        let wait = line.next_token.saturating_duration_since(now) + line.period * ahead;
        // A sync back for its turn waits a little longer in place: one ahead of it that came
        // back late took a token meanwhile, and parking again would make it late in turn and
        // send everyone behind it around once more.
        let back_for_turn = told.is_some_and(|turn| turn <= now + PARK_AFTER);
        let in_place = if back_for_turn {
            PARK_AFTER * 2
        } else {
            PARK_AFTER
        };
        let place = &mut line.waiting[index];
        place.turn = now + wait;
        if wait >= in_place {
            place.present = false;
            Step::Park(wait)
        } else {
            place.present = true;
            // Ask again at the next token at the latest: one ahead may have gone meanwhile.
            Step::Wait(wait.min(line.period).max(Duration::from_millis(1)))
        }
    }

    fn pause_for(&self, wait: Duration) {
        let until = Instant::now() + wait;
        let mut paused = self
            .paused_until
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if paused.is_none_or(|current| current < until) {
            *paused = Some(until);
        }
    }
}

/// The shared HTTP client for one platform (cheap to clone).
#[derive(Clone)]
pub struct PlatformHttp {
    inner: Arc<Inner>,
}

struct Inner {
    platform: Platform,
    base: Url,
    token: Token,
    client: reqwest::Client,
    config: HttpConfig,
    limiters: Limiters,
    metrics: PlatformMetrics,
}

/// Why building a client failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpSetupError {
    /// The base URL does not parse or cannot carry paths.
    #[error("failed to parse the {platform} base URL: {reason}")]
    BaseUrl {
        /// Platform.
        platform: Platform,
        /// Parser message.
        reason: String,
    },
    /// reqwest could not build a client (TLS setup).
    #[error("failed to build the {platform} HTTP client")]
    Client {
        /// Platform.
        platform: Platform,
        /// Builder error.
        #[source]
        source: reqwest::Error,
    },
}

enum Failure {
    /// Stop and return this error.
    Final(PlatformError),
    /// Retry after at least `wait` (when retries allow); `None`: the platform gave no
    /// hint, so the client backs off exponentially.
    Retry {
        error: PlatformError,
        rate_limited: bool,
        wait: Option<Duration>,
    },
}

impl PlatformHttp {
    /// Builds the client for `platform` at `base_url` (the spec's `servers` URL, e.g.
    /// `https://api.render.com/v1`).
    pub fn new(
        platform: Platform,
        base_url: &str,
        token: Token,
        config: HttpConfig,
        metrics: PlatformMetrics,
    ) -> Result<Self, HttpSetupError> {
        let base = Url::parse(base_url).map_err(|e| HttpSetupError::BaseUrl {
            platform,
            reason: e.to_string(),
        })?;
        if base.cannot_be_a_base() {
            return Err(HttpSetupError::BaseUrl {
                platform,
                reason: "URL cannot carry a path".into(),
            });
        }
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.connect_timeout)
            .user_agent(concat!("tether/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|source| HttpSetupError::Client { platform, source })?;
        Ok(PlatformHttp {
            inner: Arc::new(Inner {
                platform,
                base,
                token,
                client,
                limiters: Limiters::new(&config.limits),
                config,
                metrics,
            }),
        })
    }

    /// The platform this client talks to.
    pub fn platform(&self) -> Platform {
        self.inner.platform
    }

    /// Sends `request`, waiting for the rate limiters and retrying as the request allows.
    /// Returns the 2xx response or a typed error.
    pub async fn send(&self, request: &ApiRequest) -> PlatformResult<ApiResponse> {
        let inner = &self.inner;
        let started = Instant::now();
        let mut backoff = ExponentialBuilder::default()
            .with_jitter()
            .with_min_delay(inner.config.min_backoff)
            .with_max_delay(inner.config.max_backoff)
            .without_max_times()
            .build();
        let mut transient_retries = 0usize;
        loop {
            let outcome = self.attempt(request).await;
            let (error, rate_limited, wait) = match outcome {
                Ok(response) => return Ok(response),
                Err(Failure::Final(error)) => return Err(error),
                Err(Failure::Retry {
                    error,
                    rate_limited,
                    wait,
                }) => (error, rate_limited, wait),
            };
            let backoff_delay = backoff.next().unwrap_or(inner.config.max_backoff);
            let delay = match (rate_limited, wait) {
                // The limiter pause already waits `wait`; a little jitter spreads the herd.
                (true, Some(_)) => backoff_delay.min(inner.config.min_backoff),
                // A 429 without a hint (Fly sends none): exponential backoff with jitter,
                // for every request of this client, not a flat retry per second.
                (true, None) => backoff_delay,
                (false, wait) => backoff_delay.max(wait.unwrap_or_default()),
            };
            // A 429 means the platform did not act on the request, so every request may be
            // repeated after it; 5xx and timeouts may have been applied, so only idempotent
            // requests are repeated after those.
            let may_retry = if rate_limited {
                started.elapsed() + wait.unwrap_or(delay) <= inner.config.max_rate_limited_wait
            } else {
                request.idempotent && transient_retries < inner.config.max_retries
            };
            if !may_retry {
                return Err(error);
            }
            if !rate_limited {
                transient_retries += 1;
            }
            if rate_limited && wait.is_none() {
                inner.limiters.pause_for(delay);
            }
            tracing::debug!(
                platform = %inner.platform,
                operation = request.operation,
                kind = error.kind(),
                ?delay,
                "retrying platform request"
            );
            tokio::time::sleep(delay).await;
        }
    }

    /// Sends `request` and decodes its JSON body.
    pub async fn json<T: DeserializeOwned>(&self, request: &ApiRequest) -> PlatformResult<T> {
        let response = self.send(request).await?;
        decode(self.inner.platform, request.operation, &response.body)
    }

    fn url(&self, request: &ApiRequest) -> Url {
        let mut url = self.inner.base.clone();
        if let Ok(mut segments) = url.path_segments_mut() {
            segments.pop_if_empty();
            segments.extend(request.segments.iter());
        }
        if !request.query.is_empty() {
            let mut pairs = url.query_pairs_mut();
            for (name, value) in &request.query {
                pairs.append_pair(name, value);
            }
        }
        url
    }

    async fn attempt(&self, request: &ApiRequest) -> Result<ApiResponse, Failure> {
        let inner = &self.inner;
        let platform = inner.platform;
        let operation = request.operation;
        if let Err(wait) = inner.limiters.acquire(platform, request).await {
            return Err(Failure::Final(PlatformError::RateLimited {
                platform,
                operation,
                retry_after: wait,
            }));
        }
        let mut builder = inner
            .client
            .request(request.method.clone(), self.url(request))
            .header(http::header::ACCEPT, "application/json")
            .header(http::header::AUTHORIZATION, auth_header(&inner.token));
        for (name, value) in &request.headers {
            builder = builder.header(*name, value);
        }
        if let Some(body) = &request.body {
            builder = builder.json(body);
        }
        let timer = inner
            .metrics
            .duration
            .with_label_values(&[platform.as_str(), operation])
            .start_timer();
        let result = match builder.send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                let headers = response.headers().clone();
                response.bytes().await.map(|body| (status, headers, body))
            }
            Err(e) => Err(e),
        };
        timer.observe_duration();
        let (status, headers, body) = match result {
            Ok(parts) => parts,
            Err(e) => {
                let code = if e.is_timeout() { "timeout" } else { "error" };
                inner
                    .metrics
                    .requests
                    .with_label_values(&[platform.as_str(), operation, code])
                    .inc();
                // The host (never the path or query, which may name objects) tells a person
                // which endpoint is unreachable.
                let host = inner.base.host_str().map_or_else(String::new, |h| {
                    inner
                        .base
                        .port()
                        .map_or_else(|| h.to_owned(), |port| format!("{h}:{port}"))
                });
                let reason = if e.is_timeout() {
                    format!("no answer from {host} in time")
                } else if e.is_connect() {
                    format!("cannot connect to {host}")
                } else {
                    format!("transport error talking to {host}")
                };
                return Err(Failure::Retry {
                    error: PlatformError::Transient {
                        platform,
                        operation,
                        reason,
                    },
                    rate_limited: false,
                    wait: None,
                });
            }
        };
        inner
            .metrics
            .requests
            .with_label_values(&[platform.as_str(), operation, &status.to_string()])
            .inc();
        let window = read_rate_headers(&headers);
        if let Some(remaining) = window.remaining {
            inner
                .metrics
                .remaining
                .with_label_values(&[platform.as_str()])
                .set(remaining);
            if remaining <= 0
                && let Some(reset) = window.reset
            {
                inner.limiters.pause_for(reset);
            }
        }
        match status {
            200..=299 => Ok(ApiResponse {
                status,
                headers,
                body,
            }),
            429 => {
                inner
                    .metrics
                    .rate_limited
                    .with_label_values(&[platform.as_str()])
                    .inc();
                let wait = window
                    .retry_after
                    .or(window.reset)
                    .or_else(|| vercel_body_reset(&body));
                if let Some(wait) = wait {
                    inner.limiters.pause_for(wait);
                }
                Err(Failure::Retry {
                    error: PlatformError::RateLimited {
                        platform,
                        operation,
                        retry_after: wait.unwrap_or(inner.config.min_backoff),
                    },
                    rate_limited: true,
                    wait,
                })
            }
            500..=599 => Err(Failure::Retry {
                error: PlatformError::Transient {
                    platform,
                    operation,
                    reason: format!("HTTP {status}"),
                },
                rate_limited: false,
                wait: window.retry_after,
            }),
            401 | 403 => {
                inner
                    .metrics
                    .credentials_rejected
                    .with_label_values(&[platform.as_str()])
                    .inc();
                Err(Failure::Final(PlatformError::Unauthorized {
                    platform,
                    operation,
                    status,
                }))
            }
            404 | 410 => Err(Failure::Final(PlatformError::NotFound {
                platform,
                operation,
            })),
            409 | 412 => Err(Failure::Final(PlatformError::Conflict {
                platform,
                operation,
                reason: error_code(&body).unwrap_or_else(|| format!("HTTP {status}")),
            })),
            408 => Err(Failure::Retry {
                error: PlatformError::Transient {
                    platform,
                    operation,
                    reason: "HTTP 408".into(),
                },
                rate_limited: false,
                wait: None,
            }),
            400..=499 => Err(Failure::Final(PlatformError::Invalid {
                platform,
                operation,
                status: Some(status),
                reason: error_code(&body).unwrap_or_else(|| format!("HTTP {status}")),
            })),
            _ => Err(Failure::Final(PlatformError::Malformed {
                platform,
                operation,
                reason: format!("unexpected HTTP status {status}"),
            })),
        }
    }
}

/// Fly macaroons (`FlyV1 …`) carry their own scheme; every other token is a bearer token.
fn auth_header(token: &Token) -> String {
    let value = token.expose();
    if value.starts_with("FlyV1 ") {
        value.to_owned()
    } else {
        format!("Bearer {value}")
    }
}

#[derive(Default)]
struct RateWindow {
    remaining: Option<i64>,
    reset: Option<Duration>,
    retry_after: Option<Duration>,
}

fn header_f64(headers: &HeaderMap, names: &[&str]) -> Option<f64> {
    names.iter().find_map(|name| {
        headers
            .get(*name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|v| v.is_finite() && *v >= 0.0)
    })
}

/// A reset value is either seconds to wait or a UNIX epoch in seconds (Render's docs say
/// epoch, their example looks like seconds); anything above a billion is an epoch.
fn reset_to_wait(value: f64) -> Duration {
    if value > 1e9 {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        Duration::from_secs_f64((value - now).clamp(0.0, 3600.0))
    } else {
        Duration::from_secs_f64(value.min(3600.0))
    }
}

fn read_rate_headers(headers: &HeaderMap) -> RateWindow {
    RateWindow {
        remaining: header_f64(headers, &["ratelimit-remaining", "x-ratelimit-remaining"])
            .map(|v| v as i64),
        reset: header_f64(headers, &["ratelimit-reset", "x-ratelimit-reset"]).map(reset_to_wait),
        retry_after: header_f64(headers, &["retry-after"]).map(reset_to_wait),
    }
}

/// Vercel's 429 body: `{"error": {"limit": {"reset": <epoch s>, "resetMs": <epoch ms>}}}`.
fn vercel_body_reset(body: &[u8]) -> Option<Duration> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let limit = value.get("error")?.get("limit")?;
    if let Some(ms) = limit.get("resetMs").and_then(|v| v.as_f64()) {
        return Some(reset_to_wait(ms / 1000.0));
    }
    limit
        .get("reset")
        .and_then(|v| v.as_f64())
        .map(reset_to_wait)
}

/// A short, bounded error code from a vendor error body (Vercel `error.code`, Fly `status`,
/// Render `id`), never the free-text message (it may echo input).
fn error_code(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let code = value
        .get("error")
        .and_then(|e| e.get("code"))
        .or_else(|| value.get("status"))
        .or_else(|| value.get("code"))
        .and_then(|v| v.as_str())?;
    let safe = code.len() <= 64
        && code
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.');
    safe.then(|| code.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `acquire` of a create inside the sync of `who`: `Ok`, or the parked wait.
    async fn create_as(limiters: &Limiters, who: &str) -> Result<(), Duration> {
        const CREATE: &[&str] = &["create"];
        let request = ApiRequest::post("create_service", &["services"]).limited(CREATE, "");
        let (sink, _reports) = tokio::sync::mpsc::unbounded_channel();
        crate::sync::progress::scoped(sink, who, limiters.acquire(Platform::Render, &request)).await
    }

    fn about(wait: Result<(), Duration>, periods: u32, period: Duration) -> bool {
        // A parked sync comes back half of PARK_AFTER before its turn.
        let wait = wait.expect_err("parked") + crate::sync::progress::PARK_AFTER / 2;
        let want = period * periods;
        wait <= want && wait + Duration::from_millis(200) >= want
    }

    #[tokio::test]
    async fn parked_syncs_come_back_one_period_apart_in_the_order_they_came() {
        // One create at once, then one every 1.2 s.
        let spec = LimitSpec {
            class: "create",
            max: 1,
            window: Duration::from_millis(1200),
            style: LimitStyle::Bucket { burst: 1 },
            per_key: false,
        };
        let period = spec.period();
        assert_eq!(period, Duration::from_millis(1200));
        let limiters = Limiters::new(&[spec]);
        assert_eq!(create_as(&limiters, "ns/a").await, Ok(()));
        // The next ones park, each with its own turn (not all at the next token).
        assert!(about(create_as(&limiters, "ns/b").await, 1, period));
        assert!(about(create_as(&limiters, "ns/c").await, 2, period));
        assert!(about(create_as(&limiters, "ns/d").await, 3, period));
        // Coming back early keeps the place in line.
        assert!(about(create_as(&limiters, "ns/c").await, 2, period));
        assert!(about(create_as(&limiters, "ns/b").await, 1, period));
        tokio::time::sleep(period).await;
        // B's turn: it goes; C still waits its turn, a newcomer queues behind D.
        assert_eq!(create_as(&limiters, "ns/b").await, Ok(()));
        assert!(about(create_as(&limiters, "ns/c").await, 1, period));
        assert!(about(create_as(&limiters, "ns/e").await, 3, period));
    }

    #[tokio::test]
    async fn a_request_completing_a_write_already_sent_waits_for_its_token_instead_of_parking() {
        // One request at once, then one every 300 ms (PARK_AFTER is 100 ms).
        let spec = LimitSpec {
            class: "create",
            max: 1,
            window: Duration::from_millis(300),
            style: LimitStyle::Bucket { burst: 1 },
            per_key: false,
        };
        let limiters = Limiters::new(&[spec]);
        assert_eq!(create_as(&limiters, "ns/a").await, Ok(()));
        // A sync's request parks (fails as if unsent) ...
        assert!(create_as(&limiters, "ns/b").await.is_err());
        // ... unless it completes a write already sent (the id of a queued deploy): then
        // the sync waits in its worker for the next token.
        let started = Instant::now();
        let waited = crate::sync::progress::in_place(create_as(&limiters, "ns/c")).await;
        assert_eq!(waited, Ok(()));
        assert!(
            started.elapsed() >= Duration::from_millis(200),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn a_wait_counts_those_ahead_in_line_and_only_a_short_one_is_waited_out_in_place() {
        // One create at once, then one every 45 ms: a short wait (under PARK_AFTER) is not
        // worth a reconcile, but the third in line waits three periods and parks.
        let spec = LimitSpec {
            class: "create",
            max: 1,
            window: Duration::from_millis(45),
            style: LimitStyle::Bucket { burst: 1 },
            per_key: false,
        };
        let period = spec.period();
        assert!(period * 2 < crate::sync::progress::PARK_AFTER);
        assert!(period * 3 > crate::sync::progress::PARK_AFTER);
        let limiters = Limiters::new(&[spec]);
        assert_eq!(create_as(&limiters, "ns/a").await, Ok(()));
        let started = Instant::now();
        let timed = |who| {
            let limiters = &limiters;
            async move { (create_as(limiters, who).await, started.elapsed()) }
        };
        let ((b, b_at), (c, c_at), (d, _)) =
            tokio::join!(timed("ns/b"), timed("ns/c"), timed("ns/d"));
        // B and C waited in place for their turns, in order, one period apart.
        assert_eq!((b, c), (Ok(()), Ok(())));
        assert!(b_at + period / 2 <= c_at, "b at {b_at:?}, c at {c_at:?}");
        assert!(c_at >= period * 2 - Duration::from_millis(10), "{c_at:?}");
        // D was told the wait behind both, not the next token's.
        assert!(about(d, 3, period), "{d:?}");
    }

    fn create_line(period_ms: u64) -> (Limiters, Duration) {
        let spec = LimitSpec {
            class: "create",
            max: 1,
            window: Duration::from_millis(period_ms),
            style: LimitStyle::Bucket { burst: 1 },
            per_key: false,
        };
        let period = spec.period();
        (Limiters::new(&[spec]), period)
    }

    fn step_of(limiters: &Limiters, who: &str) -> Step {
        let (spec, limiter) = &limiters.classes["create"];
        let who: std::sync::Arc<str> = who.into();
        limiters.step(&("create", String::new()), &who, limiter, spec.period())
    }

    fn parked_about(step: Step, periods: u32, period: Duration) -> bool {
        let Step::Park(wait) = step else {
            return false;
        };
        let want = period * periods;
        wait <= want && wait + Duration::from_millis(30) >= want
    }

    #[tokio::test]
    async fn of_many_syncs_asking_at_once_only_the_first_two_wait_in_a_worker() {
        // A token every 45 ms: ten syncs ask right after one was taken. Only those whose turn
        // is under PARK_AFTER away wait in place; the others park, one period apart.
        let (limiters, period) = create_line(45);
        assert_eq!(step_of(&limiters, "ns/0"), Step::Go);
        let steps: Vec<Step> = (1..=10)
            .map(|n| step_of(&limiters, &format!("ns/{n}")))
            .collect();
        let in_place = steps.iter().filter(|s| matches!(s, Step::Wait(_))).count();
        assert_eq!(in_place, 2, "{steps:?}");
        for (n, step) in steps.into_iter().enumerate().skip(2) {
            assert!(parked_about(step, n as u32 + 1, period), "ns/{}", n + 1);
        }
    }

    #[tokio::test]
    async fn a_sync_back_late_keeps_its_place_without_holding_the_others_back() {
        // A token every 120 ms: B and C park for the next two.
        let (limiters, period) = create_line(120);
        assert_eq!(step_of(&limiters, "ns/a"), Step::Go);
        assert!(parked_about(step_of(&limiters, "ns/b"), 1, period));
        assert!(parked_about(step_of(&limiters, "ns/c"), 2, period));
        // Neither comes back in time (their workers were busy): the token is not kept for
        // them, D (come meanwhile) takes it.
        tokio::time::sleep(period * 2 + Duration::from_millis(30)).await;
        assert_eq!(step_of(&limiters, "ns/d"), Step::Go);
        // Back, B and C are still first and second: B, back for its turn, waits in place for
        // the next token; a newcomer queues behind them.
        let b = step_of(&limiters, "ns/b");
        assert!(matches!(b, Step::Wait(wait) if wait <= period), "{b:?}");
        assert!(parked_about(step_of(&limiters, "ns/c"), 2, period));
        assert!(parked_about(step_of(&limiters, "ns/e"), 3, period));
    }

    #[test]
    fn token_prints_as_stars_in_debug_and_display() {
        let token = Token::new("rnd_supersecret");
        assert_eq!(format!("{token:?}"), "***");
        assert_eq!(format!("{token}"), "***");
        assert_eq!(token.expose(), "rnd_supersecret");
    }

    #[test]
    fn fly_macaroons_keep_their_scheme_and_others_get_bearer() {
        assert_eq!(auth_header(&Token::new("FlyV1 fm2_x")), "FlyV1 fm2_x");
        assert_eq!(auth_header(&Token::new("abc")), "Bearer abc");
    }

    #[test]
    fn reset_values_are_read_as_seconds_or_epoch() {
        assert_eq!(reset_to_wait(45.0), Duration::from_secs(45));
        let epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
            + 30.0;
        let wait = reset_to_wait(epoch);
        assert!(wait > Duration::from_secs(28) && wait <= Duration::from_secs(30));
    }

    #[test]
    fn vercel_rate_limit_body_gives_the_wait() {
        let reset = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as f64
            + 10_000.0;
        let body = serde_json::json!({"error": {"code": "rate_limited", "message": "x",
            "limit": {"remaining": 0, "reset": 0, "resetMs": reset, "total": 100}}});
        let wait = vercel_body_reset(body.to_string().as_bytes()).unwrap();
        assert!(wait > Duration::from_secs(8) && wait <= Duration::from_secs(10));
    }

    #[test]
    fn error_codes_with_free_text_are_not_echoed() {
        assert_eq!(
            error_code(br#"{"error":{"code":"name_taken"}}"#),
            Some("name_taken".into())
        );
        assert_eq!(
            error_code(br#"{"status":"value sk_live_123 is bad"}"#),
            None
        );
    }

    #[test]
    fn window_quota_never_allows_more_than_max_in_a_window() {
        let spec = LimitSpec {
            class: "write",
            max: 30,
            window: Duration::from_secs(60),
            style: LimitStyle::Window,
            per_key: false,
        };
        let quota = spec.quota();
        let per_window = quota.burst_size().get() as u128
            + spec.window.as_nanos() / quota.replenish_interval().as_nanos();
        assert!(per_window <= 30, "{per_window}");
        assert!(per_window >= 28, "{per_window}");
    }

    #[test]
    fn malformed_json_reports_position_not_content() {
        let err = decode::<serde_json::Value>(Platform::Render, "get_service", b"{\"a\": sk_")
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("render") && text.contains("get_service"),
            "{text}"
        );
        assert!(!text.contains("sk_"), "{text}");
    }
}
