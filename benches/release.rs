//! Release rollout benchmark (prints its numbers; `make bench`).
//!
//! N Environments (default 100; `--releases N` or `TETHER_BENCH_RELEASES`), each with a
//! Render web service, a Fly app of two machines with a check and a Vercel project with a
//! custom domain, all in one account per platform, are created and brought to `Ready`. Then
//! N Releases — one per Environment, created at once — roll a new version out: step 1 the
//! Render service (then a health check of its URL), step 2 the Fly app (a canary) and the
//! Vercel project in parallel, then a health check of the web domain. The controllers run
//! in this process against the in-process Kubernetes API (memory store) and the sandbox,
//! which enforces the documented rate limits with every window divided by the time scale
//! (default 60: a vendor minute per wall second); the controllers' client-side limits run at
//! the same scale. Render's limit of 20 service creates per hour is lifted on both sides
//! for the setup only matters to it: the benchmark measures rollouts, not creation.
//!
//! Printed:
//! 1. **Rollout time**: wall time from creating the Releases until every one is
//!    `Succeeded`, against the least time the rollout can take: the rate-limit bound of the
//!    requests the rollout needs (per Release: one Render deploy and one read of it; one
//!    Vercel deployment and one read of it; each platform's needed requests over its
//!    documented rate: the time before which the last Release cannot have started), plus
//!    the longest critical path of the sandbox's deploy durations (Render deploy, then the
//!    longer of the Fly canary's two machine starts and the Vercel build), which that last
//!    Release still needs once started.
//!
//!    Goal: at most 1.2 times that bound.
//! 2. **Platform requests** per Release and platform, by operation, next to what the rollout
//!    needs at the least; writes beyond one deployment per component would be a bug.
//!
//! `cargo bench --bench release -- --releases 20` runs a smaller one; `--time-scale` and
//! `--concurrency` are the other knobs (also `TETHER_BENCH_TIME_SCALE`,
//! `TETHER_BENCH_CONCURRENCY`).

#[path = "support/flags.rs"]
mod flags;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams, PostParams};
use serde_json::{Value, json};
use tether::api::common::ConditionStatus;
use tether::api::{Environment, Release};
use tether::controller::{ControllerConfig, Health};
use tether::localapi::{self, LocalApiConfig, StoreConfig};
use tether::platform::Platform;
use tether::platform::http::documented_limits;
use tether::sandbox::{SandboxConfig, deploy_durations};
use tether::telemetry::MetricsRegistry;
use tokio_util::sync::CancellationToken;

const NAMESPACE: &str = "default";
const REQUESTS: &str = "tether_platform_requests_total";

struct Settings {
    releases: usize,
    time_scale: f64,
    concurrency: u16,
    timeout: Duration,
}

impl Settings {
    fn from_args() -> Settings {
        let get = flags::value;
        let number = |flag: &str, var: &str, default: f64| -> f64 {
            get(flag, var).map_or(default, |v| {
                v.parse()
                    .unwrap_or_else(|_| panic!("{flag}: {v:?} is not a number"))
            })
        };
        let releases = number("--releases", "TETHER_BENCH_RELEASES", 100.0) as usize;
        let time_scale = number("--time-scale", "TETHER_BENCH_TIME_SCALE", 60.0);
        assert!(releases > 0, "--releases must be positive");
        assert!(time_scale > 0.0, "--time-scale must be positive");
        Settings {
            releases,
            time_scale,
            concurrency: number("--concurrency", "TETHER_BENCH_CONCURRENCY", 16.0) as u16,
            timeout: Duration::from_secs(300),
        }
    }
}

fn credentials(platform: Platform) -> Value {
    json!({"name": format!("tether-sandbox-{platform}"), "key": "token"})
}

fn environment(i: usize) -> Environment {
    let name = format!("rel-{i:03}");
    serde_json::from_value(json!({
        "apiVersion": "tether.dev/v1alpha1", "kind": "Environment",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "credentials": {
                "render": credentials(Platform::Render),
                "vercel": credentials(Platform::Vercel),
                "fly": credentials(Platform::Fly),
            },
            "interval": "1h",
            "render": {"ownerId": "tea-bench0000000000000000", "services": [
                {"name": format!("{name}-api"), "type": "web", "image": "ghcr.io/acme/api:1"}]},
            "fly": {"org": "acme", "apps": [{
                "name": format!("{name}-edge"),
                "image": "registry.fly.io/edge:1",
                "regions": [{"region": "ams", "count": 2}],
                "services": [{"internalPort": 8080, "ports": [{"port": 443, "handlers": ["tls", "http"]}]}],
                "checks": [{"name": "alive", "type": "http", "port": 8080, "path": "/healthz"}],
            }]},
            "vercel": {"projects": [{
                "name": format!("{name}-web"),
                "gitRepository": {"type": "github", "repo": format!("acme/{name}-web")},
                "domains": [{"name": format!("www.{name}.example.com")}],
            }]},
        },
    }))
    .expect("the benchmark Environment deserializes")
}

fn release(i: usize) -> Release {
    let name = format!("rel-{i:03}");
    serde_json::from_value(json!({
        "apiVersion": "tether.dev/v1alpha1", "kind": "Release",
        "metadata": {"name": format!("{name}-v2"), "namespace": NAMESPACE},
        "spec": {
            "environmentRef": {"name": name},
            "version": "2",
            "artifacts": [
                {"component": format!("{name}-api"), "platform": "render", "image": "ghcr.io/acme/api:2"},
                {"component": format!("{name}-edge"), "platform": "fly", "image": "registry.fly.io/edge:2", "strategy": "canary"},
                {"component": format!("{name}-web"), "platform": "vercel", "gitRef": "v2"},
            ],
            "steps": [
                {"components": [format!("{name}-api")]},
                {"components": [format!("{name}-edge"), format!("{name}-web")]},
            ],
            "healthChecks": [
                {"name": "api", "component": format!("{name}-api"), "path": "/healthz", "interval": "1s"},
                {"name": "web", "url": format!("https://www.{name}.example.com/"), "interval": "1s"},
            ],
        },
    }))
    .expect("the benchmark Release deserializes")
}

/// Platform requests the controllers made so far, by (platform, operation).
fn requests(metrics: &MetricsRegistry) -> BTreeMap<(String, String), u64> {
    let mut out = BTreeMap::new();
    for line in metrics.render().lines() {
        let Some(rest) = line
            .strip_prefix(REQUESTS)
            .and_then(|r| r.strip_prefix('{'))
        else {
            continue;
        };
        let Some((labels, value)) = rest.split_once("} ") else {
            continue;
        };
        let label = |name: &str| {
            labels
                .split(',')
                .find_map(|l| l.strip_prefix(&format!("{name}=\"")))
                .map(|v| v.trim_end_matches('"').to_owned())
                .unwrap_or_default()
        };
        *out.entry((label("platform"), label("operation")))
            .or_default() += value.parse::<f64>().unwrap_or(0.0) as u64;
    }
    out
}

/// Environments with `Ready=True`.
async fn count_ready_environments(api: &Api<Environment>) -> usize {
    api.list(&ListParams::default())
        .await
        .map(|list| {
            list.items
                .iter()
                .filter(|e| {
                    e.status.as_ref().is_some_and(|s| {
                        s.conditions
                            .iter()
                            .any(|c| c.type_ == "Ready" && c.status == ConditionStatus::True)
                    })
                })
                .count()
        })
        .unwrap_or(0)
}

/// Releases by `status.phase`.
async fn phases(api: &Api<Release>) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    if let Ok(list) = api.list(&ListParams::default()).await {
        for r in list.items {
            let phase = r
                .status
                .and_then(|s| s.phase)
                .map_or("None".to_string(), |p| format!("{p:?}"));
            *out.entry(phase).or_default() += 1;
        }
    }
    out
}

/// Requests per minute `class` of `platform` allows (documented).
fn per_minute(platform: Platform, class: &str) -> f64 {
    documented_limits(platform)
        .into_iter()
        .find(|l| l.class == class)
        .map_or(f64::INFINITY, |l| {
            l.max as f64 * 60.0 / l.window.as_secs_f64()
        })
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    tether::install_crypto_provider();
    let settings = Settings::from_args();
    let n = settings.releases;
    let scale = settings.time_scale;
    println!(
        "release: {n} Releases across {n} Environments (Render web service; Fly app of 2 machines, canary; Vercel project), time scale {scale}, concurrency {}",
        settings.concurrency
    );
    let shutdown = CancellationToken::new();
    let api = localapi::start(
        LocalApiConfig {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            store: StoreConfig::Memory,
            crds: tether::api::crds(),
            security: None,
        },
        shutdown.clone(),
    )
    .await
    .expect("the local API starts");
    let client = api.client();
    let without_creates = |platform: Platform| {
        documented_limits(platform)
            .into_iter()
            .filter(|l| l.class != "service_create")
            .collect::<Vec<_>>()
    };
    let sandbox = tether::sandbox::start(
        SandboxConfig {
            time_scale: scale,
            platforms: vec![Platform::Render, Platform::Vercel, Platform::Fly],
            limits: [(Platform::Render, without_creates(Platform::Render))].into(),
            ..SandboxConfig::default()
        },
        shutdown.clone(),
    )
    .await
    .expect("the sandbox starts");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NAMESPACE);
    for (_, secret) in sandbox.credential_secrets(NAMESPACE) {
        secrets
            .create(&PostParams::default(), &secret)
            .await
            .expect("create a credentials Secret");
    }
    let mut platforms = sandbox.platforms_config(scale);
    if let Some(http) = platforms.http.get_mut(&Platform::Render) {
        http.limits.retain(|l| l.class != "service_create");
    }
    let config = ControllerConfig {
        concurrency: settings.concurrency,
        min_retry: Duration::from_millis(100),
        max_retry: Duration::from_secs(2),
        // A rollout is polled every 2 s in production (at most every --pending-interval):
        // the same simulated cadence here.
        pending_interval: Duration::from_secs(2)
            .div_f64(scale)
            .max(Duration::from_millis(10)),
        health_check_via: sandbox.edge_url().parse().ok(),
        platforms,
        ..ControllerConfig::default()
    };
    let metrics = MetricsRegistry::new();
    let controllers = {
        let (client, metrics, token) = (client.clone(), metrics.clone(), shutdown.clone());
        tokio::spawn(async move {
            tether::controller::run(client, config, metrics, Health::new(), token)
                .await
                .expect("the controllers run");
        })
    };

    // Setup: every Environment Ready.
    let environments: Api<Environment> = Api::namespaced(client.clone(), NAMESPACE);
    let setup = Instant::now();
    stream::iter(0..n)
        .map(|i| {
            let api = environments.clone();
            async move { api.create(&PostParams::default(), &environment(i)).await }
        })
        .buffer_unordered(16)
        .try_for_each(|_| async { Ok(()) })
        .await
        .expect("create the Environments");
    loop {
        let ready = count_ready_environments(&environments).await;
        if ready == n {
            break;
        }
        assert!(
            setup.elapsed() < settings.timeout,
            "{ready} of {n} Environments Ready after {:?}",
            settings.timeout
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "setup: {n} Environments Ready in {:.1}s",
        setup.elapsed().as_secs_f64()
    );

    // The rollout.
    let before = requests(&metrics);
    let releases: Api<Release> = Api::namespaced(client.clone(), NAMESPACE);
    let started = Instant::now();
    stream::iter(0..n)
        .map(|i| {
            let api = releases.clone();
            async move { api.create(&PostParams::default(), &release(i)).await }
        })
        .buffer_unordered(16)
        .try_for_each(|_| async { Ok(()) })
        .await
        .expect("create the Releases");
    // When each platform's last deployment was started (from the request counters).
    let mut last_start: BTreeMap<&str, f64> = BTreeMap::new();
    let took = loop {
        let made = requests(&metrics);
        for (platform, operation) in [
            ("render", "trigger_deploy"),
            ("vercel", "create_deployment"),
            ("fly", "update_machine"),
        ] {
            let key = (platform.to_string(), operation.to_string());
            let count = made.get(&key).unwrap_or(&0) - before.get(&key).unwrap_or(&0);
            let want = if platform == "fly" {
                2 * n as u64
            } else {
                n as u64
            };
            if count >= want && !last_start.contains_key(platform) {
                last_start.insert(platform, started.elapsed().as_secs_f64());
            }
        }
        let now = phases(&releases).await;
        if now.get("Succeeded") == Some(&n) {
            break started.elapsed();
        }
        assert!(!now.contains_key("Failed"), "a Release failed: {now:?}");
        assert!(
            started.elapsed() < settings.timeout,
            "not every Release Succeeded after {:?}: {now:?}",
            settings.timeout
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let after = requests(&metrics);
    println!(
        "last deployment started at: {}",
        last_start
            .iter()
            .map(|(p, t)| format!("{p} {t:.2}s"))
            .collect::<Vec<_>>()
            .join(", ")
    );

    // The bounds, in simulated time.
    let d = deploy_durations();
    let critical = d.render + (d.fly_machine * 2).max(d.vercel);
    let needed = |per_release: f64, platform, class| {
        Duration::from_secs_f64(per_release * n as f64 / per_minute(platform, class) * 60.0)
    };
    let limits = [
        ("render writes", needed(1.0, Platform::Render, "write")),
        ("render reads", needed(1.0, Platform::Render, "read")),
        ("vercel requests", needed(2.0, Platform::Vercel, "api")),
    ];
    let (bound_name, limit_bound) = limits
        .iter()
        .max_by_key(|(_, d)| *d)
        .map(|(name, d)| (*name, *d))
        .unwrap_or(("none", Duration::ZERO));
    let bound = limit_bound + critical;
    let wall = |sim: Duration| sim.div_f64(scale).as_secs_f64();
    let ratio = took.as_secs_f64() / wall(bound);
    println!(
        "rollout: {n} Releases Succeeded in {:.2}s; critical path of deploy durations {:.2}s (render {:?} + max(fly 2 x {:?}, vercel {:?}) simulated), rate-limit bound of the needed requests {:.2}s ({bound_name}); ratio {ratio:.2} of their sum (goal <= 1.2: {})",
        took.as_secs_f64(),
        wall(critical),
        d.render,
        d.fly_machine,
        d.vercel,
        wall(limit_bound),
        if ratio <= 1.2 { "met" } else { "MISSED" }
    );
    // Requests per Release.
    let mut by_platform: BTreeMap<String, Vec<(String, f64)>> = BTreeMap::new();
    for ((platform, operation), count) in &after {
        let made = count
            - before
                .get(&(platform.clone(), operation.clone()))
                .unwrap_or(&0);
        if made > 0 {
            by_platform
                .entry(platform.clone())
                .or_default()
                .push((operation.clone(), made as f64 / n as f64));
        }
    }
    let least = [
        ("render", "trigger_deploy 1, get_deploy 1"),
        ("vercel", "create_deployment 1, get_deployment 1"),
        (
            "fly",
            "list_machines 2 (canary, rest), per machine: lease, update, release (6)",
        ),
    ];
    for (platform, operations) in &by_platform {
        let total: f64 = operations.iter().map(|(_, c)| c).sum();
        let detail: Vec<String> = operations
            .iter()
            .map(|(op, c)| format!("{op} {c:.2}"))
            .collect();
        let need = least
            .iter()
            .find(|(p, _)| p == platform)
            .map_or("", |(_, s)| s);
        println!(
            "requests per Release, {platform}: {total:.2} ({}); at least: {need}",
            detail.join(", ")
        );
    }
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), controllers).await;
}
