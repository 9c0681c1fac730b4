//! Status while a sync runs: what is being done and what it waits for shows within seconds,
//! each object is recorded as soon as it is written, and a controller restarted mid-sync
//! neither creates nor writes anything again.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tether::platform::Platform;

use crate::support::eventually;
use crate::support::sync::{SyncHarness, WAIT, condition, condition_is, object};

/// Render allows 20 service creates an hour; the client paces them (one, then one every
/// 3600/19 s). At this scale an hour lasts 3 minutes, so the second create waits about 9.5 s.
const SCALE: f64 = 20.0;
const SERVICES: usize = 2;

fn services() -> Vec<Value> {
    (0..SERVICES)
        .map(|i| json!({"name": format!("svc-{i:02}"), "type": "web", "image": "ghcr.io/acme/api:1"}))
        .collect()
}

fn environment(name: &str, extra: Value) -> Value {
    let mut spec = json!({
        "credentials": {
            "render": {"name": "tether-sandbox-render", "key": "token"},
            "fly": {"name": "tether-sandbox-fly", "key": "token"},
        },
        "render": {"ownerId": "tea-e2e", "services": services()},
        "interval": "1h",
    });
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        spec.extend(extra.clone());
    }
    json!({
        "apiVersion": "tether.dev/v1alpha1",
        "kind": "Environment",
        "metadata": {"name": name, "namespace": "default"},
        "spec": spec,
    })
}

fn creates(h: &SyncHarness) -> usize {
    h.requests(Platform::Render)
        .iter()
        .filter(|r| *r == "POST /services")
        .count()
}

fn with_ids(env: &Value, platform: &str) -> usize {
    env["status"]["objects"]
        .as_array()
        .map(|objects| {
            objects
                .iter()
                .filter(|o| o["platform"] == platform && o["id"].is_string())
                .count()
        })
        .unwrap_or(0)
}

#[tokio::test]
async fn a_sync_waiting_for_a_rate_limit_says_so_in_status_within_5_s() {
    let h = SyncHarness::start_with(SCALE).await;
    h.apply(environment("wide", json!({}))).await;
    eventually(WAIT, || async { (creates(&h) >= 1).then_some(()) }).await;
    let waiting_since = Instant::now();
    let env = eventually(Duration::from_secs(5), || async {
        let env = serde_json::to_value(h.environments().get("wide").await.ok()?).ok()?;
        let reconciling = condition(&env, "Reconciling")?;
        (reconciling["status"] == "True" && reconciling["reason"] == "RateLimited").then_some(env)
    })
    .await;
    let shown_after = waiting_since.elapsed();
    let message = condition(&env, "Reconciling").unwrap()["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        message.contains("render is waiting for its API rate limit: create_service is sent at"),
        "{message}"
    );
    assert!(condition_is(&env, "Ready", "Unknown"), "{env}");
    assert_eq!(
        env["status"]["observedGeneration"], env["metadata"]["generation"],
        "kstatus reads Reconciling=True of the current generation as in progress"
    );
    assert_eq!(
        with_ids(&env, "render"),
        1,
        "the service created so far is in status with its id"
    );
    eprintln!("the wait showed in status {shown_after:?} after it began");

    let env = h.wait_ready("wide").await;
    assert!(condition_is(&env, "Reconciling", "False"));
    assert_eq!(with_ids(&env, "render"), SERVICES);
    assert_eq!(creates(&h), SERVICES);
    h.stop().await;
}

#[tokio::test]
async fn a_controller_restarted_mid_sync_writes_no_secret_and_updates_no_machine_again() {
    let mut h = SyncHarness::start_with(SCALE).await;
    h.put_secret("app-secrets", &[("api-key", "sk_live_restart-test-value")])
        .await;
    let fly = json!({"org": "acme", "apps": [{
        "name": "mid",
        "image": "registry.fly.io/acme:1",
        "regions": [{"region": "ams", "count": 2}],
        "guest": {"cpuKind": "shared", "cpus": 1, "memoryMb": 256},
        "secrets": [{"name": "API_KEY", "secretKeyRef": {"name": "app-secrets", "key": "api-key"}}]
    }]});
    h.apply(environment("mid", json!({ "fly": fly }))).await;
    // Fly is done (its secrets set, its machines created) while Render waits for its create
    // limit: the sync is still running, and status already holds what Fly wrote.
    h.wait_for("mid", "Fly recorded while Render waits", |env| {
        condition(env, "Reconciling").is_some_and(|c| c["reason"] == "RateLimited")
            && object(env, "fly", "app", "mid")
                .is_some_and(|o| o["secretFingerprints"]["secrets.API_KEY"].is_string())
            && with_ids(env, "fly") == 3
    })
    .await;
    h.kill_controllers();
    let fly_writes = |h: &SyncHarness| {
        h.requests(Platform::Fly)
            .into_iter()
            .filter(|r| r.starts_with("POST ") || r.starts_with("PUT ") || r.starts_with("DELETE "))
            .collect::<Vec<_>>()
    };
    let before = fly_writes(&h);
    assert_eq!(
        before
            .iter()
            .filter(|r| *r == "POST /v1/apps/mid/secrets")
            .count(),
        1
    );

    h.start_controllers().await;
    h.wait_ready("mid").await;
    assert_eq!(
        fly_writes(&h),
        before,
        "the restarted controller wrote nothing to Fly: no secret, no machine update"
    );
    assert_eq!(creates(&h), SERVICES, "no Render service was created twice");
    h.stop().await;
}

/// The sample Environment at the sandbox's real-time limits (Render: 20 service creates an
/// hour, paced one every 3 minutes): within 5 s of applying it, status lists the first
/// objects and `Reconciling` names the wait and its time.
#[tokio::test]
async fn at_real_time_limits_the_sample_environment_shows_its_first_objects_and_the_wait_within_5_s()
 {
    use kube::api::{Api, Patch, PatchParams};

    let mut h = SyncHarness::start_with(1.0).await;
    let root = env!("CARGO_MANIFEST_DIR");
    let secrets = std::fs::read_to_string(format!("{root}/config/samples/00-secrets.yaml"))
        .expect("sample secrets");
    let api: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(h.client.clone(), "default");
    for mut doc in tether::schema::validate::parse_stream(&secrets).expect("valid YAML") {
        let name = doc["metadata"]["name"].as_str().unwrap().to_owned();
        if name == "platform-tokens" {
            // The sample's tokens are those `tether run --sandbox` configures; this sandbox
            // has its own.
            for platform in Platform::ALL {
                let token = h.sandbox.token(platform).unwrap();
                doc["stringData"][platform.as_str()] = token.expose().into();
            }
        }
        api.patch(
            &name,
            &PatchParams::apply("e2e-test").force(),
            &Patch::Apply(&doc),
        )
        .await
        .unwrap();
    }
    let sample =
        std::fs::read_to_string(format!("{root}/config/samples/10-environment-staging.yaml"))
            .expect("sample Environment");
    let sample = tether::schema::validate::parse_stream(&sample)
        .unwrap()
        .remove(0);
    let applied = Instant::now();
    h.apply(sample).await;
    let env = eventually(Duration::from_secs(5), || async {
        let env = serde_json::to_value(h.environments().get("staging").await.ok()?).ok()?;
        let reconciling = condition(&env, "Reconciling")?;
        (reconciling["reason"] == "RateLimited" && with_ids(&env, "render") >= 1).then_some(env)
    })
    .await;
    eprintln!("shown {:?} after the apply", applied.elapsed());
    let message = condition(&env, "Reconciling").unwrap()["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        message.contains("render is waiting for its API rate limit: create_service is sent at"),
        "{message}"
    );
    // Nothing more to see: the next create is minutes away.
    h.kill_controllers();
    h.stop().await;
}

/// A wait for a rate limit never holds a worker: with every worker's Environment waiting for
/// Render's create limit, an Environment on another platform still becomes Ready at once.
#[tokio::test]
async fn an_environment_on_one_platform_is_ready_while_many_wait_for_anothers_create_limit() {
    let mut h = SyncHarness::start_with(SCALE).await;
    // More Environments than workers (4), each with two services: after the first create
    // every one of them waits about 9.5 s per further create.
    for i in 0..6 {
        let name = format!("wide-{i}");
        let mut env = environment(&name, json!({}));
        env["spec"]["render"]["services"] = json!([
            {"name": format!("w{i}-a"), "type": "web", "image": "ghcr.io/acme/api:1"},
            {"name": format!("w{i}-b"), "type": "web", "image": "ghcr.io/acme/api:1"},
        ]);
        h.apply(env).await;
    }
    eventually(WAIT, || async { (creates(&h) >= 1).then_some(()) }).await;
    let creates_then = creates(&h);
    let vercel = json!({
        "apiVersion": "tether.dev/v1alpha1",
        "kind": "Environment",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {
            "credentials": {"vercel": {"name": "tether-sandbox-vercel"}},
            "vercel": {"teamId": "team_sandbox", "projects": [{
                "name": "site", "framework": "nextjs",
                "gitRepository": {"type": "github", "repo": "acme/site"}}]},
        },
    });
    let applied = Instant::now();
    h.apply(vercel).await;
    h.wait_ready("web").await;
    let took = applied.elapsed();
    eprintln!(
        "Ready in {took:?} while {} Render creates were done",
        creates(&h)
    );
    // The Render Environments were still waiting: at most one more create went out.
    assert!(
        creates(&h) <= creates_then + 1,
        "the Vercel Environment waited for Render's limit: {took:?}"
    );
    // Meanwhile each waiting Environment says what it waits for.
    eventually(Duration::from_secs(5), || async {
        let envs = h.environments().list(&Default::default()).await.ok()?.items;
        let waiting = envs
            .iter()
            .filter(|e| {
                e.status.as_ref().is_some_and(|s| {
                    s.conditions
                        .iter()
                        .any(|c| c.type_ == "Reconciling" && c.reason == "RateLimited")
                })
            })
            .count();
        (waiting >= 5).then_some(())
    })
    .await;
    h.kill_controllers();
    h.stop().await;
}
