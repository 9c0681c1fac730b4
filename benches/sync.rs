//! Environment sync benchmark (prints its numbers; `make bench`).
//!
//! N Environments (default 1,000; `--environments N` or `TETHER_BENCH_ENVIRONMENTS`;
//! `--environments 2000` is the 10,000-object size of issue 17) with five managed objects
//! each, on all four platforms — a Render web service declaring two env vars (one from a
//! Secret) and a custom domain, a Vercel project declaring two env vars (one from a Secret)
//! and a domain, a Fly app with a secret and its one machine, and a Supabase project — are
//! synced by the real controller binary, run as its own process against the in-process
//! Kubernetes API (memory store) and the in-process sandbox, which enforces the documented
//! rate limits with every window divided by the time scale (default 3,600: an hour of vendor
//! time per wall second). The controller's own client-side limits run at the same scale
//! (`--platform-time-scale`).
//!
//! 1. **Convergence**: the wall time from starting the controller until every Environment is
//!    `Ready`, as a share of the limit-bound minimum. That minimum is, over every rate-limit
//!    bucket the work passed, the requests the sandbox accepted in the bucket divided by the
//!    bucket's (scaled) rate; the largest one binds. Goal: at least 90%.
//! 2. **Steady-state resync**: the platform requests the controller made (its `/metrics`
//!    `tether_platform_requests_total`) in a window of one resync interval after convergence,
//!    split into reads (operations named `list_*`, `get_*`, `find_*`) and writes (everything
//!    else), per managed object; goal at most 0.25 reads and no writes. The window is the
//!    second interval after convergence (the first, printed as `settling`, holds each
//!    Environment's first resync after it became Ready). The declared sub-sets
//!    (a Render service's env vars and domains, a Vercel project's domains, a Fly app's
//!    machines and secrets) are re-read when their parent's list entry changes, and otherwise
//!    at least every `SUBLIST_RECHECK_INTERVALS` (8) intervals, each object's first deadline
//!    spread at random over those 8, so one interval's window carries its share of those
//!    re-reads. And the Environment reconciles in that window (the controller's
//!    `controller_runtime_reconcile_total`), per Environment; goal at most 1.1.
//! 3. **Latency**: `--waiting` Environments (default 1,000, at most N − probes) get two more
//!    Render services, so they wait for Render's 20 creates an hour (twice each: an
//!    Environment is done only once its second create, queued behind every first one, is
//!    served); once the number that say they wait stops growing, `--probes` others
//!    (default 100) each change a Vercel env var, 20 ms apart, and each change is timed from
//!    its patch until status records its one platform write (the progress write that follows
//!    it, `Reconciling` counting the change applied, or `Ready` for the new generation; so an
//!    upper bound of the time to that write). Goal: p99 under 100 ms.
//! 4. **Peak memory**: the controller process's `VmHWM` once the N Environments' objects
//!    converged and resynced (before the latency step adds two Render services to each
//!    waiting Environment, beyond the benchmark's size), and at the end. Goal: at most
//!    100 MiB at the benchmark's size.
//!
//! Wall-clock settings: `spec.interval` is 60 s (`--interval`) and `--observe-max-age` is a
//! twentieth of it, the ratio of the production defaults (10 m and 30 s), so a resync costs
//! the reads it would cost in production. The pending interval is 250 ms and the retry delays
//! 100 ms–2 s (a few vendor minutes at the default scale).
//!
//! The default run takes about three minutes on two cores (convergence ~55 s bound by
//! Render's 20 service creates per hour, one 60 s resync window, the latency probes);
//! `--environments 2000` about five. `cargo bench --bench sync -- --environments 200
//! --interval 10` runs a small one; `--time-scale`, `--concurrency`, `--timeout`,
//! `--waiting`, `--probes` and `--log-level` (the controller's) are the other knobs, each
//! also an environment variable (`TETHER_BENCH_*`); `TETHER_BENCH_LOG_FILE` keeps the
//! controller's log in that file.

#[path = "support/flags.rs"]
mod flags;
use std::collections::{BTreeMap, HashMap};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::watcher::{self, Event};
use serde_json::{Value, json};
use tether::api::Environment;
use tether::localapi::{self, LocalApiConfig, LocalApiHandle, StoreConfig};
use tether::platform::Platform;
use tether::platform::http::{LimitStyle, documented_limits};
use tether::sandbox::{SandboxConfig, SandboxHandle};
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;

/// The platforms the benchmark's Environments use.
const PLATFORMS: [Platform; 4] = Platform::ALL;
/// Managed objects per Environment.
const OBJECTS_PER_ENVIRONMENT: usize = 5;
const NAMESPACE: &str = "default";
/// The Secret holding the values of the secret env vars, the Fly secret and the Supabase
/// database password.
const APP_SECRET: &str = "bench-app";

/// What to run; every knob has a flag and an environment variable.
#[derive(Debug)]
struct Settings {
    environments: usize,
    time_scale: f64,
    interval: Duration,
    concurrency: u16,
    timeout: Duration,
    log_level: String,
    /// Environments given two more Render services while the latency is measured.
    waiting: usize,
    /// Environments whose spec change is timed meanwhile.
    probes: usize,
}

impl Settings {
    fn from_args() -> Settings {
        let get = flags::value;
        fn parsed<T: std::str::FromStr>(value: Option<String>, what: &str, default: T) -> T {
            match value {
                None => default,
                Some(v) => v
                    .parse()
                    .unwrap_or_else(|_| panic!("{what}: {v:?} does not parse")),
            }
        }
        let environments = parsed(
            get("--environments", "TETHER_BENCH_ENVIRONMENTS"),
            "--environments",
            1_000usize,
        );
        assert!(environments > 0, "--environments must be positive");
        let time_scale: f64 = parsed(
            get("--time-scale", "TETHER_BENCH_TIME_SCALE"),
            "--time-scale",
            3_600.0,
        );
        assert!(time_scale > 0.0, "--time-scale must be positive");
        let probes = parsed(
            get("--probes", "TETHER_BENCH_PROBES"),
            "--probes",
            100usize.min(environments / 2),
        )
        .min(environments);
        Settings {
            environments,
            time_scale,
            interval: Duration::from_secs(parsed(
                get("--interval", "TETHER_BENCH_INTERVAL_SECS"),
                "--interval (seconds)",
                60u64,
            )),
            concurrency: parsed(
                get("--concurrency", "TETHER_BENCH_CONCURRENCY"),
                "--concurrency",
                32u16,
            ),
            timeout: Duration::from_secs(parsed(
                get("--timeout", "TETHER_BENCH_TIMEOUT_SECS"),
                "--timeout (seconds)",
                180u64,
            )),
            log_level: get("--log-level", "TETHER_BENCH_LOG").unwrap_or_else(|| "warn".into()),
            probes,
            waiting: parsed(
                get("--waiting", "TETHER_BENCH_WAITING"),
                "--waiting",
                1_000usize.min(environments - probes),
            )
            .min(environments - probes),
        }
    }

    fn observe_max_age(&self) -> Duration {
        self.interval / 20
    }
}

/// Environment `i`: five objects on the four platforms, all in one account per platform.
fn environment(i: usize, interval: Duration) -> Environment {
    let name = format!("bench-{i:04}");
    let token =
        |platform: Platform| json!({"name": format!("tether-sandbox-{platform}"), "key": "token"});
    let secret = |key: &str| json!({"secretKeyRef": {"name": APP_SECRET, "key": key}});
    serde_json::from_value(json!({
        "apiVersion": "tether.dev/v1alpha1",
        "kind": "Environment",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "credentials": {
                "render": token(Platform::Render),
                "vercel": token(Platform::Vercel),
                "fly": token(Platform::Fly),
                "supabase": token(Platform::Supabase),
            },
            "interval": format!("{}s", interval.as_secs()),
            "render": {
                "ownerId": "tea-bench0000000000000000",
                "services": [render_service(&format!("{name}-api"))],
            },
            "vercel": {
                "projects": [{
                    "name": format!("{name}-web"),
                    "envVars": [
                        {
                            "name": "NEXT_PUBLIC_API_URL",
                            "value": format!("https://{name}-api.onrender.com"),
                            "targets": ["production", "preview"],
                        },
                        {
                            "name": "SESSION_SECRET",
                            "valueFrom": secret("session-secret"),
                            "targets": ["production"],
                        },
                    ],
                    "domains": [{"name": format!("{name}.example.com")}],
                }],
            },
            "fly": {
                "org": "bench",
                "apps": [{
                    "name": format!("{name}-edge"),
                    "image": "registry.fly.io/edge:1",
                    "regions": [{"region": "ams", "count": 1}],
                    "secrets": [{"name": "SESSION_SECRET", "secretKeyRef": {"name": APP_SECRET, "key": "session-secret"}}],
                }],
            },
            "supabase": {
                "name": name,
                "organizationId": "bench-org",
                "region": "eu-central-1",
                "databasePasswordSecretRef": {"name": APP_SECRET, "key": "db-password"},
            },
        },
    }))
    .expect("the benchmark Environment deserializes")
}

/// A Render web service declaring its env vars (one from a Secret) and a custom domain, so
/// that Tether owns, and observes, both sets.
fn render_service(name: &str) -> Value {
    json!({
        "name": name,
        "type": "web",
        "image": "ghcr.io/acme/api:1.4.1",
        "envVars": [
            {"name": "LOG_LEVEL", "value": "info"},
            {"name": "SESSION_SECRET", "valueFrom": {"secretKeyRef": {"name": APP_SECRET, "key": "session-secret"}}},
        ],
        "customDomains": [format!("{name}.example.com")],
    })
}

/// Where every Environment stands, from a watch.
#[derive(Clone, Debug, Default)]
struct Progress {
    ready: usize,
    stalled: usize,
    /// Environments whose `Reconciling` condition says they wait for a rate limit.
    rate_limited: usize,
    /// `reason: message` of one not-ready Environment per distinct reason.
    not_ready: BTreeMap<String, String>,
}

fn condition<'a>(status: &'a Value, type_: &str) -> Option<&'a Value> {
    status["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

/// Where one Environment stands.
struct State {
    /// `Ready` for its current generation.
    ready: bool,
    stalled: bool,
    /// `Reconciling` says it waits for a rate limit.
    rate_limited: bool,
    /// `Ready`'s reason and message.
    reason: String,
    message: String,
}

/// Where `env` stands.
fn state(env: &Environment) -> State {
    let status = serde_json::to_value(&env.status).unwrap_or(Value::Null);
    let current = status["observedGeneration"].as_i64() == env.metadata.generation;
    let ready = condition(&status, "Ready");
    let is = |c: Option<&Value>| c.is_some_and(|c| c["status"] == "True");
    let text = |field: &str| {
        ready
            .and_then(|c| c[field].as_str())
            .unwrap_or_default()
            .to_string()
    };
    let reconciling = condition(&status, "Reconciling");
    State {
        ready: current && is(ready),
        stalled: current && is(condition(&status, "Stalled")),
        rate_limited: is(reconciling) && reconciling.is_some_and(|c| c["reason"] == "RateLimited"),
        reason: text("reason"),
        message: text("message"),
    }
}

/// Whether `env`'s status shows that the work of generation `generation` made its first
/// platform write: `Reconciling` counts a change of it applied, or it is `Ready`.
fn written(env: &Environment, generation: Option<i64>) -> bool {
    let status = serde_json::to_value(&env.status).unwrap_or(Value::Null);
    if status["observedGeneration"].as_i64() != generation {
        return false;
    }
    let applied = condition(&status, "Reconciling")
        .and_then(|c| c["message"].as_str())
        .is_some_and(|m| m.contains(": 1 of 1 changes applied"));
    applied || state(env).ready
}

/// Spec changes whose first platform write is awaited: Environment name → (the generation
/// the change makes, when it was made, who waits for the time it took).
type Probes = Arc<Mutex<HashMap<String, (i64, Instant, oneshot::Sender<Duration>)>>>;

/// Watches the Environments and publishes the [`Progress`] after every change (counted as
/// each Environment changes, not recounted over all of them), and answers the [`Probes`]
/// when the watch shows their write.
fn watch_progress(
    api: Api<Environment>,
) -> (
    watch::Receiver<Progress>,
    Probes,
    tokio::task::JoinHandle<()>,
) {
    let (send, receive) = watch::channel(Progress::default());
    let probes = Probes::default();
    let pending = probes.clone();
    let task = tokio::spawn(async move {
        let mut states: HashMap<String, State> = HashMap::new();
        let mut counts = Progress::default();
        // Not-ready Environments per reason, and one message of each reason.
        let mut reasons: BTreeMap<String, (usize, String)> = BTreeMap::new();
        let mut count = |state: &State, sign: isize, counts: &mut Progress| {
            let add = |n: &mut usize, yes: bool| {
                if yes {
                    *n = n.saturating_add_signed(sign);
                }
            };
            add(&mut counts.ready, state.ready);
            add(&mut counts.rate_limited, state.rate_limited);
            add(&mut counts.stalled, state.stalled);
            if !state.ready {
                let reason = if state.reason.is_empty() {
                    "(no Ready condition yet)"
                } else {
                    &state.reason
                };
                let entry = reasons
                    .entry(reason.to_string())
                    .or_insert_with(|| (0, state.message.clone()));
                entry.0 = entry.0.saturating_add_signed(sign);
                if entry.0 == 0 {
                    reasons.remove(reason);
                }
            }
            counts.not_ready = reasons
                .iter()
                .map(|(reason, (_, message))| (reason.clone(), message.clone()))
                .collect();
        };
        let mut events = std::pin::pin!(watcher::watcher(api, watcher::Config::default()));
        while let Some(event) = events.next().await {
            match event {
                Ok(Event::Apply(env) | Event::InitApply(env)) => {
                    let name = env.metadata.name.clone().unwrap_or_default();
                    {
                        let mut probes = pending.lock().unwrap();
                        if let Some((generation, _, _)) = probes.get(&name)
                            && written(&env, Some(*generation))
                            && let Some((_, changed, done)) = probes.remove(&name)
                        {
                            let _ = done.send(changed.elapsed());
                        }
                    }
                    let new = state(&env);
                    count(&new, 1, &mut counts);
                    if let Some(old) = states.insert(name, new) {
                        count(&old, -1, &mut counts);
                    }
                }
                Ok(Event::Delete(env)) => {
                    if let Some(old) = states.remove(&env.metadata.name.clone().unwrap_or_default())
                    {
                        count(&old, -1, &mut counts);
                    }
                }
                Ok(Event::Init) => continue,
                Ok(Event::InitDone) => {}
                Err(error) => {
                    eprintln!("watch of Environments failed (retrying): {error}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            }
            if send.send(counts.clone()).is_err() {
                return;
            }
        }
    });
    (receive, probes, task)
}

/// The controller binary, run as its own process.
struct Controller {
    child: tokio::process::Child,
    pid: u32,
    metrics: String,
    started: Instant,
}

impl Controller {
    async fn spawn(
        settings: &Settings,
        sandbox: &SandboxHandle,
        kubeconfig: &Path,
        log: &Path,
    ) -> Controller {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        let metrics_addr = SocketAddr::from(([127, 0, 0, 1], port));
        let url = |platform| sandbox.url(platform).expect("the sandbox serves it");
        let log_file = std::fs::File::create(log).expect("the controller log file");
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_tether"));
        command
            .args(["controller", "--leader-elect=false"])
            .args(["--metrics-addr", &metrics_addr.to_string()])
            .args(["--render-url", &url(Platform::Render)])
            .args(["--vercel-url", &url(Platform::Vercel)])
            .args(["--fly-url", &url(Platform::Fly)])
            .args(["--supabase-url", &url(Platform::Supabase)])
            .args(["--concurrency", &settings.concurrency.to_string()])
            .args(["--pending-interval", "250ms"])
            .args([
                "--observe-max-age",
                &format!("{}ms", settings.observe_max_age().as_millis()),
            ])
            .args([
                "--min-retry-interval",
                "100ms",
                "--max-retry-interval",
                "2s",
            ])
            .args(["--platform-time-scale", &settings.time_scale.to_string()])
            .args(["--log-level", &settings.log_level, "--log-format", "json"])
            .env("KUBECONFIG", kubeconfig)
            .env_remove("RUST_LOG")
            .env_remove("TETHER_NAMESPACE")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log file handle"))
            .stderr(log_file)
            .kill_on_drop(true);
        let started = Instant::now();
        let child = command.spawn().expect("the tether binary starts");
        let pid = child.id().expect("a running child has a pid");
        let controller = Controller {
            child,
            pid,
            metrics: format!("http://{metrics_addr}/metrics"),
            started,
        };
        // Up once it serves /metrics.
        for _ in 0..600 {
            if reqwest::get(&controller.metrics).await.is_ok() {
                return controller;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "the controller did not serve /metrics within 30s; its log:\n{}",
            tail(log)
        );
    }

    async fn metrics(&self) -> Metrics {
        let text = reqwest::get(&self.metrics)
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("the /metrics body");
        Metrics::parse(&text)
    }

    /// `(VmHWM, VmRSS)` in KiB, and user+system CPU seconds.
    fn memory_and_cpu(&self) -> (u64, u64, f64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .expect("/proc/<pid>/status of the controller");
        let kib = |field: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).unwrap_or_default();
        // Fields after the `(comm)`: state is field 3, utime 14, stime 15 (1-based).
        let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
        let fields: Vec<&str> = after.split_whitespace().collect();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        let cpu = (ticks(11) + ticks(12)) / clock_ticks();
        (kib("VmHWM:"), kib("VmRSS:"), cpu)
    }

    async fn stop(mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
        if tokio::time::timeout(Duration::from_secs(15), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// The counters the benchmark reads from the controller's `/metrics`.
#[derive(Clone, Debug, Default)]
struct Metrics {
    /// `(platform, operation)` → requests (all status codes).
    requests: BTreeMap<(String, String), f64>,
    /// Environment reconciles (all results).
    reconciles: f64,
}

impl Metrics {
    fn parse(text: &str) -> Metrics {
        let mut metrics = Metrics::default();
        for line in text.lines() {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            let Some((name, labels)) = series.split_once('{') else {
                continue;
            };
            let labels = labels_of(labels.trim_end_matches('}'));
            let label = |k: &str| labels.get(k).cloned().unwrap_or_default();
            match name {
                "tether_platform_requests_total" => {
                    *metrics
                        .requests
                        .entry((label("platform"), label("operation")))
                        .or_default() += value;
                }
                "controller_runtime_reconcile_total" if label("controller") == "environment" => {
                    metrics.reconciles += value;
                }
                _ => {}
            }
        }
        metrics
    }

    /// What happened between `self` and `later`.
    fn since(&self, later: &Metrics) -> Metrics {
        let mut requests = BTreeMap::new();
        for (key, after) in &later.requests {
            let delta = after - self.requests.get(key).copied().unwrap_or(0.0);
            if delta > 0.0 {
                requests.insert(key.clone(), delta);
            }
        }
        Metrics {
            requests,
            reconciles: later.reconciles - self.reconciles,
        }
    }

    fn total(&self, pick: impl Fn(&str) -> bool) -> f64 {
        self.requests
            .iter()
            .filter(|((_, op), _)| pick(op))
            .fold(0.0, |sum, (_, n)| sum + n)
    }

    /// Requests per operation, largest first, as `platform op=n` items.
    fn breakdown(&self, pick: impl Fn(&str) -> bool) -> String {
        let mut ops: Vec<_> = self
            .requests
            .iter()
            .filter(|((_, op), _)| pick(op))
            .collect();
        ops.sort_by(|a, b| b.1.total_cmp(a.1));
        let items: Vec<String> = ops
            .iter()
            .map(|((p, op), n)| format!("{p} {op}={n:.0}"))
            .collect();
        if items.is_empty() {
            "none".into()
        } else {
            items.join(", ")
        }
    }
}

fn labels_of(text: &str) -> HashMap<String, String> {
    let mut labels = HashMap::new();
    let mut rest = text;
    while let Some((key, after)) = rest.split_once("=\"") {
        let Some(end) = after.find('"') else { break };
        labels.insert(
            key.trim_start_matches(',').trim().to_string(),
            after[..end].to_string(),
        );
        rest = &after[end + 1..];
    }
    labels
}

/// Gives `settings.waiting` Environments two more Render services (each then waits for
/// Render's create limit), then changes a Vercel env var of `settings.probes` others, one
/// every 20 ms, and prints the p99 time from each change to its first platform write, as
/// status records it (the progress write that follows the write: `Reconciling` counting the
/// change applied, or `Ready` for the new generation; so an upper bound).
async fn latency(
    client: &kube::Client,
    settings: &Settings,
    progress: &mut watch::Receiver<Progress>,
    probes: &Probes,
) {
    if settings.probes == 0 {
        return;
    }
    let api: Api<Environment> = Api::namespaced(client.clone(), NAMESPACE);
    let patch = |spec: Value| Patch::Merge(json!({ "spec": spec }));
    let waiting_before = progress.borrow().rate_limited;
    stream::iter(0..settings.waiting)
        .map(|i| {
            let api = api.clone();
            let name = format!("bench-{i:04}");
            let services = json!({"render": {"ownerId": "tea-bench0000000000000000", "services": [
                render_service(&format!("{name}-api")),
                render_service(&format!("{name}-api2")),
                render_service(&format!("{name}-api3")),
            ]}});
            async move {
                api.patch(&name, &PatchParams::default(), &patch(services))
                    .await
            }
        })
        .buffer_unordered(16)
        .try_for_each(|_| async { Ok(()) })
        .await
        .expect("add two Render services");
    // Until nine in ten say they wait and that number stops growing: the probes are timed
    // while those wait, not while the controller is still taking in their spec changes.
    let patched = Instant::now();
    let until = patched + Duration::from_secs(60);
    let mut most = waiting_before;
    let mut grown = Instant::now();
    while Instant::now() < until
        && (most < waiting_before + settings.waiting * 9 / 10
            || grown.elapsed() < Duration::from_secs(2))
    {
        let now = progress.borrow_and_update().rate_limited;
        if now > most {
            most = now;
            grown = Instant::now();
        }
        let _ = tokio::time::timeout(Duration::from_millis(100), progress.changed()).await;
    }
    // How many of them were seen waiting at once, and when: the probes below are only timed
    // "while N wait" if the controller took the spec changes in faster than the limit serves.
    println!(
        "latency: at most {} of the {} Environments given two more Render services said they wait at once ({:.1}s after their changes); the probes start {:.1}s after",
        most.saturating_sub(waiting_before),
        settings.waiting,
        grown.duration_since(patched).as_secs_f64(),
        patched.elapsed().as_secs_f64()
    );
    let timed = (settings.waiting..settings.waiting + settings.probes).map(|i| {
        let api = api.clone();
        let progress = progress.clone();
        let probes = probes.clone();
        let name = format!("bench-{i:04}");
        let mut vercel = serde_json::to_value(environment(i, settings.interval).spec.vercel)
            .expect("the Vercel spec serializes");
        vercel["projects"][0]["envVars"][0]["value"] =
            json!(format!("https://{name}-api-v2.onrender.com"));
        async move {
            tokio::time::sleep(Duration::from_millis(20) * (i - settings.waiting) as u32).await;
            let generation = api
                .get(&name)
                .await
                .expect("read the Environment")
                .metadata
                .generation
                .unwrap_or_default();
            let waiting = progress.borrow().rate_limited;
            // The watch answers when status shows the change's write (no polling, which
            // would load the API the controller writes to).
            let (done, took) = oneshot::channel();
            probes
                .lock()
                .unwrap()
                .insert(name.clone(), (generation + 1, Instant::now(), done));
            let patched = api
                .patch(
                    &name,
                    &PatchParams::default(),
                    &patch(json!({ "vercel": vercel })),
                )
                .await
                .expect("change the Vercel env var");
            assert_eq!(
                patched.metadata.generation,
                Some(generation + 1),
                "{name} changed by someone else meanwhile"
            );
            (took.await.expect("the watch answers"), waiting)
        }
    });
    let probed: Vec<(Duration, usize)> =
        tokio::time::timeout(Duration::from_secs(120), futures::future::join_all(timed))
            .await
            .expect("every probed change is written within 120 s");
    let waiting = probed.iter().map(|(_, w)| *w).min().unwrap_or(0);
    let mut took: Vec<Duration> = probed.into_iter().map(|(d, _)| d).collect();
    took.sort();
    let p = |q: f64| took[((took.len() as f64 * q).ceil() as usize).clamp(1, took.len()) - 1];
    let p99 = p(0.99);
    println!(
        "latency: {} spec changes (a Vercel env var) while at least {waiting} Environments wait for a rate limit (Render creates): to the first platform write (as status records it) p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (goal p99 < 100 ms: {})",
        took.len(),
        p(0.5).as_secs_f64() * 1000.0,
        p99.as_secs_f64() * 1000.0,
        took[took.len() - 1].as_secs_f64() * 1000.0,
        verdict(p99 < Duration::from_millis(100))
    );
}

/// A read is an operation that only observes.
fn is_read(operation: &str) -> bool {
    ["list_", "get_", "find_"]
        .iter()
        .any(|p| operation.starts_with(p))
}

/// One rate-limit bucket the work passed, and what it cost.
struct Bucket {
    platform: Platform,
    class: &'static str,
    per_key: bool,
    /// Requests per wall second the sandbox allows (scaled).
    rate: f64,
    /// `max/window` as documented.
    documented: String,
    accepted: u64,
}

impl Bucket {
    fn minimum(&self) -> Duration {
        Duration::from_secs_f64(self.accepted as f64 / self.rate)
    }
}

fn buckets(sandbox: &SandboxHandle, time_scale: f64) -> Vec<Bucket> {
    let mut buckets = Vec::new();
    for platform in PLATFORMS {
        for limit in documented_limits(platform) {
            let window = limit.window.div_f64(time_scale);
            let documented = format!("{}/{}", limit.max, human(limit.window));
            let rate = f64::from(limit.max) / window.as_secs_f64();
            // The sandbox counts fixed windows per class; token buckets (Fly's) are unused.
            if limit.style != LimitStyle::Window {
                continue;
            }
            buckets.push(Bucket {
                platform,
                class: limit.class,
                per_key: limit.per_key,
                rate,
                documented,
                accepted: sandbox.accepted(platform, limit.class),
            });
        }
    }
    buckets
}

fn human(d: Duration) -> String {
    match d.as_secs() {
        3600 => "hour".into(),
        60 => "min".into(),
        1 => "s".into(),
        s => format!("{s}s"),
    }
}

async fn start_api(shutdown: &CancellationToken) -> LocalApiHandle {
    localapi::start(
        LocalApiConfig {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            store: StoreConfig::Memory,
            crds: tether::api::crds(),
            security: None,
        },
        shutdown.clone(),
    )
    .await
    .expect("the local API starts")
}

async fn create_environments(client: &kube::Client, settings: &Settings) {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NAMESPACE);
    let app: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": APP_SECRET, "namespace": NAMESPACE},
        "stringData": {"session-secret": "bench-session-secret-value", "db-password": "bench-db-password-value"},
    }))
    .expect("the app Secret deserializes");
    secrets
        .create(&PostParams::default(), &app)
        .await
        .expect("create the app Secret");
    let environments: Api<Environment> = Api::namespaced(client.clone(), NAMESPACE);
    stream::iter(0..settings.environments)
        .map(|i| {
            let api = environments.clone();
            let env = environment(i, settings.interval);
            async move { api.create(&PostParams::default(), &env).await }
        })
        .buffer_unordered(16)
        .try_for_each(|_| async { Ok(()) })
        .await
        .expect("create the Environments");
}

async fn credentials(client: &kube::Client, sandbox: &SandboxHandle) {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NAMESPACE);
    for (_, secret) in sandbox.credential_secrets(NAMESPACE) {
        secrets
            .create(&PostParams::default(), &secret)
            .await
            .expect("create a credentials Secret");
    }
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "MISSED" }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    tether::install_crypto_provider();
    let settings = Settings::from_args();
    let n = settings.environments;
    let objects = n * OBJECTS_PER_ENVIRONMENT;
    println!(
        "sync: {n} Environments x {OBJECTS_PER_ENVIRONMENT} objects = {objects} (Render web service with 2 env vars and a custom domain; Vercel project with 2 env vars and a domain; Fly app with a secret, and its machine; Supabase project)"
    );
    println!(
        "sync: sandbox and client limits at time scale {} ({:.1} vendor minutes per wall second); interval {:?}, observe max age {:?}, pending 250ms, concurrency {}",
        settings.time_scale,
        settings.time_scale / 60.0,
        settings.interval,
        settings.observe_max_age(),
        settings.concurrency
    );

    let shutdown = CancellationToken::new();
    let api = start_api(&shutdown).await;
    let client = api.client();
    let sandbox = tether::sandbox::start(
        SandboxConfig {
            time_scale: settings.time_scale,
            record: false,
            platforms: PLATFORMS.to_vec(),
            ..SandboxConfig::default()
        },
        shutdown.clone(),
    )
    .await
    .expect("the sandbox starts");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        serde_saphyr::to_string(&api.kubeconfig()).expect("the kubeconfig serializes"),
    )
    .expect("write the kubeconfig");
    // `TETHER_BENCH_LOG_FILE` keeps the controller's log (with `--log-level`) after the run.
    let log = std::env::var_os("TETHER_BENCH_LOG_FILE")
        .map_or_else(|| dir.path().join("controller.log"), Into::into);

    credentials(&client, &sandbox).await;
    let created = Instant::now();
    create_environments(&client, &settings).await;
    println!(
        "setup: {n} Environments created in {:.2}s",
        created.elapsed().as_secs_f64()
    );
    let environments: Api<Environment> = Api::namespaced(client.clone(), NAMESPACE);
    let (mut progress, probes, watching) = watch_progress(environments);

    // 1. Convergence from nothing.
    let controller = Controller::spawn(&settings, &sandbox, &kubeconfig, &log).await;
    let before = Metrics::default();
    let deadline = controller.started + settings.timeout;
    let mut last_report = Instant::now();
    let outcome = loop {
        let current = progress.borrow_and_update().clone();
        if current.ready == n {
            break Ok(controller.started.elapsed());
        }
        if current.ready + current.stalled == n {
            break Err(format!(
                "every Environment settled but {} are Stalled",
                current.stalled
            ));
        }
        if Instant::now() > deadline {
            break Err(format!(
                "{} of {n} Environments Ready after {:?}",
                current.ready, settings.timeout
            ));
        }
        if last_report.elapsed() > Duration::from_secs(10) {
            last_report = Instant::now();
            eprintln!(
                "  ... {:.0}s: {} Ready, {} Stalled",
                controller.started.elapsed().as_secs_f64(),
                current.ready,
                current.stalled
            );
        }
        let _ = tokio::time::timeout(Duration::from_millis(500), progress.changed()).await;
    };
    let at_convergence = controller.metrics().await;
    let converge = before.since(&at_convergence);
    let buckets = buckets(&sandbox, settings.time_scale);
    let rejections: Vec<String> = PLATFORMS
        .iter()
        .map(|p| format!("{p} {}", sandbox.limit_rejections(*p)))
        .collect();

    println!("convergence: requests the work passed per rate-limit bucket (sandbox-accepted):");
    let binding = buckets
        .iter()
        .filter(|b| !b.per_key)
        .max_by(|a, b| a.minimum().cmp(&b.minimum()));
    for bucket in &buckets {
        let binds = binding.is_some_and(|b| std::ptr::eq(b, bucket));
        if bucket.per_key {
            println!(
                "  {:<8} {:<15} {:>6} requests  limit {:>8} per object (not a shared bucket)",
                bucket.platform.as_str(),
                bucket.class,
                bucket.accepted,
                bucket.documented,
            );
        } else {
            println!(
                "  {:<8} {:<15} {:>6} requests  limit {:>8} = {:>8.2}/s scaled  minimum {:>7.2}s{}",
                bucket.platform.as_str(),
                bucket.class,
                bucket.accepted,
                bucket.documented,
                bucket.rate,
                bucket.minimum().as_secs_f64(),
                if binds { "  <- binds" } else { "" }
            );
        }
    }
    println!(
        "convergence: 429s for exceeding a limit: {}",
        rejections.join(", ")
    );
    println!(
        "convergence: controller requests: {:.0} reads, {:.0} writes, {:.0} Environment reconciles",
        converge.total(is_read),
        converge.total(|op| !is_read(op)),
        converge.reconciles
    );
    println!("  writes: {}", converge.breakdown(|op| !is_read(op)));
    println!("  reads:  {}", converge.breakdown(is_read));
    let minimum = binding.map(Bucket::minimum).unwrap_or_default();
    match &outcome {
        Ok(measured) => {
            let share = minimum.as_secs_f64() / measured.as_secs_f64();
            println!(
                "convergence: {n} Environments Ready in {:.2}s; limit-bound minimum {:.2}s ({} {}) = {:.1}% of the limit-bound rate (goal >= 90%: {})",
                measured.as_secs_f64(),
                minimum.as_secs_f64(),
                binding.map(|b| b.platform.as_str()).unwrap_or("-"),
                binding.map(|b| b.class).unwrap_or("-"),
                share * 100.0,
                verdict(share >= 0.9)
            );
        }
        Err(why) => {
            let current = progress.borrow().clone();
            println!("convergence: NOT CONVERGED: {why}");
            for (reason, message) in &current.not_ready {
                println!("  not ready: {reason}: {message}");
            }
        }
    }

    // 2. One steady-state resync interval, after the first one (each Environment's first
    // resync after it became Ready reads the sub-sets it read while they were still changing,
    // and from then on spreads their re-reads over SUBLIST_RECHECK_INTERVALS intervals).
    let settling_start = controller.metrics().await;
    tokio::time::sleep(settings.interval + Duration::from_secs(1)).await;
    let start = controller.metrics().await;
    let settling = settling_start.since(&start);
    println!(
        "settling: the first resync interval after convergence: {:.0} reads = {:.3} per object, {:.0} writes",
        settling.total(is_read),
        settling.total(is_read) / objects as f64,
        settling.total(|op| !is_read(op))
    );
    tokio::time::sleep(settings.interval).await;
    let end = controller.metrics().await;
    let resync = start.since(&end);
    let reads = resync.total(is_read);
    let writes = resync.total(|op| !is_read(op));
    let per_object = reads / objects as f64;
    let reconciles = resync.reconciles / n as f64;
    println!(
        "steady state: one resync interval ({:?}): {reads:.0} reads for {objects} objects = {per_object:.3} reads per object (goal <= 0.25: {}); {writes:.0} writes = {:.3} per object (goal 0: {})",
        settings.interval,
        verdict(per_object <= 0.25),
        writes / objects as f64,
        verdict(writes == 0.0)
    );
    println!(
        "steady state: {:.0} Environment reconciles = {reconciles:.2} per Environment per interval (goal <= 1.1: {})",
        resync.reconciles,
        verdict(reconciles <= 1.1)
    );
    println!("  reads:  {}", resync.breakdown(is_read));
    if writes > 0.0 {
        println!("  writes: {}", resync.breakdown(|op| !is_read(op)));
    }
    if outcome.is_err() {
        println!("steady state: (measured although the Environments did not converge)");
    }

    // 4. Peak memory at the benchmark's size (the latency step adds objects).
    let (sized_hwm, _, _) = controller.memory_and_cpu();

    // 3. Latency of a spec change while others wait for a rate limit.
    latency(&client, &settings, &mut progress, &probes).await;

    let (hwm, rss, cpu) = controller.memory_and_cpu();
    let mib = |kib: u64| kib as f64 / 1024.0;
    println!(
        "memory: controller peak RSS (VmHWM) at {objects} objects {:.1} MiB (goal <= 100 MiB: {}); after the latency step ({} more Render services) peak {:.1} MiB, now {:.1} MiB; CPU {cpu:.1}s over {:.0}s",
        mib(sized_hwm),
        verdict(mib(sized_hwm) <= 100.0),
        2 * settings.waiting,
        mib(hwm),
        mib(rss),
        controller.started.elapsed().as_secs_f64()
    );
    if outcome.is_err() {
        eprintln!("controller log (last lines):\n{}", tail(&log));
    }

    watching.abort();
    controller.stop().await;
    shutdown.cancel();
    sandbox.stopped().await;
    api.stopped().await;
}
