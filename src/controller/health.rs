//! A Release's HTTP health checks: where each check sends its request (a component's public
//! URL from its Environment's status, or an absolute URL), one attempt ([`Prober::probe`]),
//! and what a run of attempts adds up to ([`record`], pure). The counts live in the
//! Release's status, so a check resumes where it was after a restart.

use std::time::{Duration, Instant};

use crate::api::Environment;
use crate::api::common::parse_duration;
use crate::api::release::{CheckStatus, HealthCheck};

/// A check's state in status while attempts go on.
pub const RUNNING: &str = "Running";
/// A check's state once it has seen `successThreshold` healthy answers in a row.
pub const PASSED: &str = "Passed";
/// A check's state once it has seen more than `retries` unhealthy answers.
pub const FAILED: &str = "Failed";

/// Sends health-check requests.
#[derive(Clone, Debug)]
pub struct Prober {
    client: reqwest::Client,
    /// Every request goes to this base URL instead, with the check URL's host in `Host`
    /// (the sandbox's app edge); `None`: to the URL itself.
    via: Option<reqwest::Url>,
}

impl Default for Prober {
    fn default() -> Self {
        Self::new(None)
    }
}

impl Prober {
    /// A prober sending every request to `via` (keeping the check URL's host in the `Host`
    /// header), or to the check's URL itself. Redirects are not followed: a check sees the
    /// status its URL answers.
    pub fn new(via: Option<reqwest::Url>) -> Self {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("tether-health-check/", env!("CARGO_PKG_VERSION")))
            .build()
            .unwrap_or_default();
        Prober { client, via }
    }

    /// One `GET` of `url`, given up after `budget`.
    pub async fn probe(&self, url: &str, budget: Duration) -> Probe {
        let started = Instant::now();
        let request = match self.request(url) {
            Ok(request) => request,
            Err(reason) => {
                return Probe {
                    status: None,
                    latency: Duration::ZERO,
                    error: Some(reason),
                };
            }
        };
        let result = request.timeout(budget).send().await;
        let latency = started.elapsed();
        match result {
            Ok(response) => Probe {
                status: Some(response.status().as_u16()),
                latency,
                error: None,
            },
            Err(e) if e.is_timeout() => Probe {
                status: None,
                latency,
                error: Some(format!(
                    "no answer within the latency budget of {}",
                    humantime(budget)
                )),
            },
            Err(e) if e.is_connect() => Probe {
                status: None,
                latency,
                error: Some("cannot connect".into()),
            },
            Err(_) => Probe {
                status: None,
                latency,
                error: Some("the request failed".into()),
            },
        }
    }

    fn request(&self, url: &str) -> Result<reqwest::RequestBuilder, String> {
        let target = reqwest::Url::parse(url).map_err(|e| format!("invalid URL: {e}"))?;
        let Some(via) = &self.via else {
            return Ok(self.client.get(target));
        };
        let host = target
            .host_str()
            .ok_or_else(|| "the URL has no host".to_string())?;
        let host = match target.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_string(),
        };
        let mut routed = via.clone();
        routed.set_path(target.path());
        routed.set_query(target.query());
        Ok(self.client.get(routed).header(reqwest::header::HOST, host))
    }
}

/// What one attempt saw.
#[derive(Clone, Debug, PartialEq)]
pub struct Probe {
    /// The HTTP status, when an answer came.
    pub status: Option<u16>,
    /// Time to the answer's headers (or to the failure).
    pub latency: Duration,
    /// Why no answer came.
    pub error: Option<String>,
}

fn humantime(d: Duration) -> String {
    if d.as_millis() < 1000 {
        format!("{}ms", d.as_millis())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

/// The URL a check requests: its own, or its component's public URL from `environment`'s
/// status with the check's path.
pub fn url_of(check: &HealthCheck, environment: &Environment) -> Result<String, String> {
    if let Some(url) = &check.url {
        return Ok(url.clone());
    }
    let component = check.component.as_deref().unwrap_or_default();
    let objects = environment
        .status
        .as_ref()
        .map(|s| s.objects.as_slice())
        .unwrap_or_default();
    let base = objects
        .iter()
        .filter(|o| matches!(o.kind.as_str(), "service" | "project" | "app"))
        .find(|o| o.name == component)
        .and_then(|o| o.url.clone())
        .ok_or_else(|| {
            format!("the Environment's status records no public URL for component {component:?}")
        })?;
    let path = check.path.as_deref().unwrap_or("/");
    Ok(format!("{}{path}", base.trim_end_matches('/')))
}

/// The check's latency budget and interval (the schema bounds them; a value that does not
/// parse falls back to the defaults).
pub fn timings(check: &HealthCheck) -> (Duration, Duration) {
    let budget = parse_duration(&check.latency_budget).unwrap_or(Duration::from_secs(1));
    let interval = parse_duration(&check.interval).unwrap_or(Duration::from_secs(10));
    (budget, interval)
}

/// Adds one attempt to a check's status (pure): healthy when the expected status came
/// within the latency budget; `successThreshold` healthy answers in a row pass the check,
/// more than `retries` unhealthy ones fail it.
pub fn record(
    check: &HealthCheck,
    mut status: CheckStatus,
    probe: &Probe,
    now: &str,
) -> CheckStatus {
    let (budget, _) = timings(check);
    let ms = probe.latency.as_millis();
    let (healthy, message) = match (probe.status, &probe.error) {
        (Some(code), _) if i32::from(code) != check.expected_status => (
            false,
            format!("HTTP {code} in {ms}ms, expected {}", check.expected_status),
        ),
        (Some(code), _) if probe.latency > budget => (
            false,
            format!(
                "HTTP {code} in {ms}ms, over the latency budget of {}",
                humantime(budget)
            ),
        ),
        (Some(code), _) => (true, format!("HTTP {code} in {ms}ms")),
        (None, error) => (
            false,
            error.clone().unwrap_or_else(|| "no answer".to_string()),
        ),
    };
    if healthy {
        status.successes += 1;
    } else {
        status.successes = 0;
        status.failures += 1;
    }
    status.last_probe_at = Some(now.to_string());
    status.state = if status.successes >= check.success_threshold.max(1) {
        PASSED
    } else if status.failures > check.retries.max(0) {
        FAILED
    } else {
        RUNNING
    }
    .to_string();
    status.message = Some(message);
    status
}

/// How long until `status`'s next attempt is due (zero: now).
pub fn due_in(check: &HealthCheck, status: &CheckStatus, now: jiff::Timestamp) -> Duration {
    let (_, interval) = timings(check);
    let Some(last) = status
        .last_probe_at
        .as_deref()
        .and_then(|t| t.parse::<jiff::Timestamp>().ok())
    else {
        return Duration::ZERO;
    };
    let elapsed: Duration = now
        .duration_since(last)
        .try_into()
        .unwrap_or(Duration::ZERO);
    interval.saturating_sub(elapsed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::environment::{EnvironmentStatus, ManagedObject};

    fn check() -> HealthCheck {
        HealthCheck {
            name: "api".into(),
            component: Some("api".into()),
            path: Some("/healthz".into()),
            expected_status: 200,
            latency_budget: "500ms".into(),
            retries: 1,
            success_threshold: 2,
            interval: "1s".into(),
            ..HealthCheck::default()
        }
    }

    fn answer(code: u16, ms: u64) -> Probe {
        Probe {
            status: Some(code),
            latency: Duration::from_millis(ms),
            error: None,
        }
    }

    #[test]
    fn consecutive_healthy_answers_pass_and_an_unhealthy_one_starts_the_count_again() {
        let c = check();
        let s = record(&c, CheckStatus::default(), &answer(200, 10), "t1");
        assert_eq!((s.state.as_str(), s.successes), (RUNNING, 1));
        let s = record(&c, s, &answer(503, 10), "t2");
        assert_eq!((s.state.as_str(), s.successes, s.failures), (RUNNING, 0, 1));
        assert_eq!(s.message.as_deref(), Some("HTTP 503 in 10ms, expected 200"));
        let s = record(&c, s, &answer(200, 10), "t3");
        let s = record(&c, s, &answer(200, 10), "t4");
        assert_eq!((s.state.as_str(), s.successes), (PASSED, 2));
        assert_eq!(s.last_probe_at.as_deref(), Some("t4"));
    }

    #[test]
    fn more_unhealthy_answers_than_retries_fail_and_slow_ones_count_as_unhealthy() {
        let c = check();
        let s = record(&c, CheckStatus::default(), &answer(200, 900), "t1");
        assert_eq!(s.state, RUNNING);
        assert!(
            s.message
                .as_deref()
                .unwrap()
                .contains("over the latency budget of 500ms"),
            "{s:?}"
        );
        let timeout = Probe {
            status: None,
            latency: Duration::from_millis(500),
            error: Some("no answer within the latency budget of 500ms".into()),
        };
        let s = record(&c, s, &timeout, "t2");
        assert_eq!((s.state.as_str(), s.failures), (FAILED, 2));
    }

    #[test]
    fn a_component_check_requests_the_components_url_with_its_path() {
        let mut env = Environment::new("staging", Default::default());
        env.status = Some(EnvironmentStatus {
            objects: vec![ManagedObject {
                platform: "render".into(),
                kind: "service".into(),
                name: "api".into(),
                url: Some("https://api-x.onrender.com/".into()),
                ..ManagedObject::default()
            }],
            ..EnvironmentStatus::default()
        });
        assert_eq!(
            url_of(&check(), &env).unwrap(),
            "https://api-x.onrender.com/healthz"
        );
        let mut other = check();
        other.component = Some("web".into());
        assert!(url_of(&other, &env).unwrap_err().contains("\"web\""));
        let absolute = HealthCheck {
            url: Some("https://example.com/up".into()),
            component: None,
            path: None,
            ..check()
        };
        assert_eq!(url_of(&absolute, &env).unwrap(), "https://example.com/up");
    }

    #[test]
    fn through_an_edge_the_request_keeps_the_checked_host() {
        crate::install_crypto_provider();
        let prober = Prober::new(Some("http://127.0.0.1:9/".parse().unwrap()));
        let request = prober
            .request("https://api-x.onrender.com/healthz?deep=1")
            .unwrap()
            .build()
            .unwrap();
        assert_eq!(request.url().as_str(), "http://127.0.0.1:9/healthz?deep=1");
        assert_eq!(request.headers()["host"], "api-x.onrender.com");
    }

    #[test]
    fn the_next_attempt_is_due_an_interval_after_the_last() {
        let c = check();
        let now: jiff::Timestamp = "2026-12-06T10:00:00.400Z".parse().unwrap();
        let status = CheckStatus {
            last_probe_at: Some("2026-12-06T10:00:00Z".into()),
            ..CheckStatus::default()
        };
        assert_eq!(due_in(&c, &status, now), Duration::from_millis(600));
        assert_eq!(due_in(&c, &CheckStatus::default(), now), Duration::ZERO);
    }
}
