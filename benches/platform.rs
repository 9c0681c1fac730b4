//! Platform layer benchmark (prints its numbers; `make bench`).
//!
//! 1. Throughput: requests per second through the shared HTTP layer (auth, limiter,
//!    metrics, JSON decode) against the in-process sandbox, with rate limits set out of
//!    reach so the layer itself is measured.
//! 2. Rate-limit efficiency: with a documented-style limit (a fixed window, shortened to one
//!    second so the run takes seconds) and more demand than it allows, the share of the
//!    allowed requests the client actually gets accepted. Goal: at least 90%, with no window
//!    ever over the limit.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tether::platform::http::{LimitSpec, LimitStyle};
use tether::platform::{
    HttpConfig, Platform, PlatformHttp, PlatformMetrics, SupabaseClient, SupabaseProjectSpec,
    SupabaseProjects, Token,
};
use tether::sandbox::{SandboxConfig, SandboxHandle};
use tether::telemetry::MetricsRegistry;
use tokio_util::sync::CancellationToken;

fn limit(max: u32, window: Duration) -> Vec<LimitSpec> {
    vec![LimitSpec {
        class: "api",
        max,
        window,
        style: LimitStyle::Window,
        per_key: false,
    }]
}

async fn sandbox(limits: Vec<LimitSpec>, shutdown: &CancellationToken) -> SandboxHandle {
    tether::sandbox::start(
        SandboxConfig {
            time_scale: 1.0,
            record: false,
            platforms: vec![Platform::Supabase],
            limits: HashMap::from([(Platform::Supabase, limits)]),
            ..SandboxConfig::default()
        },
        shutdown.clone(),
    )
    .await
    .expect("sandbox starts")
}

fn client(
    sandbox: &SandboxHandle,
    limits: Vec<LimitSpec>,
    metrics: &PlatformMetrics,
) -> SupabaseClient {
    let mut config = HttpConfig::for_platform(Platform::Supabase);
    config.limits = limits;
    let http = PlatformHttp::new(
        Platform::Supabase,
        &sandbox.url(Platform::Supabase).expect("served"),
        sandbox.token(Platform::Supabase).expect("served"),
        config,
        metrics.clone(),
    )
    .expect("client builds");
    SupabaseClient::new(http)
}

async fn project(client: &SupabaseClient) -> String {
    client
        .ensure_project(&SupabaseProjectSpec {
            name: "bench".into(),
            organization_slug: "acme".into(),
            region: None,
            instance_size: None,
            db_pass: Token::new("pw"),
        })
        .await
        .expect("project")
        .object
        .id
}

/// Runs `concurrency` workers issuing GETs until `deadline`; returns completed requests.
async fn hammer(
    client: Arc<SupabaseClient>,
    reference: String,
    concurrency: usize,
    run: Duration,
) -> u64 {
    let deadline = Instant::now() + run;
    let workers = (0..concurrency).map(|_| {
        let client = client.clone();
        let reference = reference.clone();
        tokio::spawn(async move {
            let mut done = 0u64;
            while Instant::now() < deadline {
                if client.get_project(&reference).await.is_ok() {
                    done += 1;
                }
            }
            done
        })
    });
    let mut total = 0;
    for worker in workers {
        total += worker.await.unwrap_or(0);
    }
    total
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    tether::install_crypto_provider();
    let registry = MetricsRegistry::new();
    let metrics = PlatformMetrics::register(&registry).expect("metrics");

    // 1. Throughput with limits out of reach.
    let shutdown = CancellationToken::new();
    let unlimited = limit(u32::MAX / 2, Duration::from_secs(1));
    let sb = sandbox(unlimited.clone(), &shutdown).await;
    let c = Arc::new(client(&sb, unlimited, &metrics));
    let reference = project(&c).await;
    hammer(c.clone(), reference.clone(), 8, Duration::from_millis(300)).await; // warm up
    let run = Duration::from_secs(3);
    let started = Instant::now();
    let done = hammer(c, reference, 16, run).await;
    let rps = done as f64 / started.elapsed().as_secs_f64();
    println!(
        "throughput: {done} requests in {:.2}s = {rps:.0} requests/s through the shared layer (16 concurrent)",
        started.elapsed().as_secs_f64()
    );
    shutdown.cancel();
    sb.stopped().await;

    // 2. Share of the allowed rate under a limit of 200 per 1-second window.
    let shutdown = CancellationToken::new();
    let (max, window) = (200u32, Duration::from_secs(1));
    let limited = limit(max, window);
    let sb = sandbox(limited.clone(), &shutdown).await;
    let c = Arc::new(client(&sb, limited, &metrics));
    let reference = project(&c).await;
    let windows = 6u32;
    let started = Instant::now();
    hammer(c, reference, 32, window * windows).await;
    let elapsed = started.elapsed();
    let accepted = sb.accepted(Platform::Supabase, "api");
    let allowed = f64::from(max) * elapsed.as_secs_f64() / window.as_secs_f64();
    let share = accepted as f64 / allowed;
    let worst = sb.max_received_in_window(Platform::Supabase, "api");
    let rejected = sb.limit_rejections(Platform::Supabase);
    println!(
        "rate limit: limit {max} per {window:?}; {accepted} accepted in {:.2}s vs {allowed:.0} allowed = {:.1}% of the allowed rate (goal >= 90%)",
        elapsed.as_secs_f64(),
        share * 100.0
    );
    println!(
        "rate limit: busiest window received {worst} (limit {max}); 429s for exceeding the limit: {rejected}"
    );
    shutdown.cancel();
    sb.stopped().await;
}
