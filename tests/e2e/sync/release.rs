//! A Release rolled out through the platforms (embedded API + sandbox + controllers): its
//! deployment ids in status, Ready only once every component is live, a failed deploy
//! stopping it with the platform's reason.

use serde_json::{Value, json};
use tether::api::Release;
use tether::platform::Platform;
use tether::sandbox::Faults;

use crate::support::sync::{SyncHarness, WAIT, condition, condition_is};
use crate::support::{app_answer, eventually};

pub(super) fn environment() -> Value {
    json!({
        "apiVersion": "tether.dev/v1alpha1", "kind": "Environment",
        "metadata": {"name": "shop", "namespace": "default"},
        "spec": {
            "credentials": {"render": {"name": "tether-sandbox-render", "key": "token"}},
            "render": {"ownerId": "tea-rel", "services": [
                {"name": "shop-api", "type": "web", "image": "ghcr.io/acme/api:1"}]},
            "interval": "1h",
        },
    })
}

pub(super) fn release(name: &str, image: &str) -> Value {
    json!({
        "apiVersion": "tether.dev/v1alpha1", "kind": "Release",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"environmentRef": {"name": "shop"}, "version": name,
            "artifacts": [{"component": "shop-api", "platform": "render", "image": image}]},
    })
}

pub(super) async fn apply_release(h: &SyncHarness, manifest: Value) {
    let name = manifest["metadata"]["name"].as_str().unwrap().to_owned();
    let api: kube::Api<Release> = kube::Api::namespaced(h.client.clone(), "default");
    api.patch(
        &name,
        &kube::api::PatchParams::apply("e2e-test").force(),
        &kube::api::Patch::Apply(&manifest),
    )
    .await
    .unwrap();
}

pub(super) async fn wait_release(
    h: &SyncHarness,
    name: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let api: kube::Api<Release> = kube::Api::namespaced(h.client.clone(), "default");
    eventually(WAIT, || async {
        let rel = serde_json::to_value(api.get(name).await.ok()?).ok()?;
        check(&rel).then_some(rel)
    })
    .await
}

pub(super) fn deploys_of(h: &SyncHarness, image: &str) -> usize {
    h.sandbox
        .exchanges()
        .iter()
        .filter(|e| {
            e.platform == Platform::Render
                && e.method == "POST"
                && e.path.ends_with("/deploys")
                && e.request_body
                    .as_ref()
                    .is_some_and(|b| b.to_string().contains(image))
        })
        .count()
}

#[tokio::test]
async fn a_release_deploys_its_image_and_is_ready_only_once_it_is_live() {
    let h = SyncHarness::start().await;
    h.apply(environment()).await;
    h.wait_ready("shop").await;
    apply_release(&h, release("v2", "ghcr.io/acme/api:2")).await;
    let rel = wait_release(&h, "v2", |r| condition_is(r, "Ready", "True")).await;
    assert_eq!(rel["status"]["phase"], "Succeeded", "{rel}");
    assert_eq!(rel["status"]["progress"], "1/1");
    let step = &rel["status"]["steps"][0];
    assert_eq!(step["component"], "shop-api");
    assert_eq!(step["state"], "Live");
    assert!(step["deploymentId"].is_string(), "{step}");
    assert!(rel["status"]["finishedAt"].is_string());
    assert_eq!(deploys_of(&h, "ghcr.io/acme/api:2"), 1, "one deployment");
    let events = h.events("v2").await;
    assert!(
        events
            .iter()
            .any(|(_, reason, _)| reason == "DeploySucceeded"),
        "{events:?}"
    );
    let metrics = h.metrics().await;
    for line in [
        "tether_release_total{environment=\"shop\",namespace=\"default\",result=\"succeeded\"} 1",
        "tether_release_duration_seconds_count 1",
        "tether_release_step_duration_seconds_count{platform=\"render\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} missing from:\n{metrics}");
    }
    // The Environment does not revert what the Release deployed.
    let env = h.wait_ready("shop").await;
    assert!(condition_is(&env, "DriftDetected", "False"), "{env}");
    assert_eq!(deploys_of(&h, "ghcr.io/acme/api:1"), 0);
    h.stop().await;
}

#[tokio::test]
async fn a_failed_deploy_stops_the_release_with_the_platforms_reason() {
    let h = SyncHarness::start().await;
    h.apply(environment()).await;
    h.wait_ready("shop").await;
    h.sandbox.set_faults(
        Platform::Render,
        Faults {
            failing_sources: vec!["ghcr.io/acme/api:bad".into()],
            ..Faults::default()
        },
    );
    apply_release(&h, release("bad", "ghcr.io/acme/api:bad")).await;
    let rel = wait_release(&h, "bad", |r| condition_is(r, "Stalled", "True")).await;
    assert_eq!(rel["status"]["phase"], "Failed", "{rel}");
    let stalled = condition(&rel, "Stalled").unwrap();
    assert_eq!(stalled["reason"], "DeployFailed");
    assert!(
        stalled["message"]
            .as_str()
            .unwrap()
            .contains("shop-api (render)"),
        "{stalled}"
    );
    assert!(!condition_is(&rel, "Ready", "True"));
    assert_eq!(rel["status"]["steps"][0]["state"], "Failed");
    h.stop().await;
}

#[tokio::test]
async fn a_controller_restarted_mid_rollout_resumes_the_same_deployment() {
    let mut h = SyncHarness::start().await;
    h.apply(environment()).await;
    h.wait_ready("shop").await;
    apply_release(&h, release("v3", "ghcr.io/acme/api:3")).await;
    // The deployment id is in status before the rollout waits on it.
    wait_release(&h, "v3", |r| {
        r["status"]["steps"][0]["deploymentId"].is_string()
    })
    .await;
    h.kill_controllers();
    h.start_controllers().await;
    let rel = wait_release(&h, "v3", |r| condition_is(r, "Ready", "True")).await;
    assert_eq!(rel["status"]["phase"], "Succeeded");
    assert_eq!(
        deploys_of(&h, "ghcr.io/acme/api:3"),
        1,
        "the restarted controller polled the deployment it had started"
    );
    h.stop().await;
}

#[tokio::test]
async fn a_release_deploys_nothing_until_its_migrations_are_applied() {
    let h = SyncHarness::start().await;
    h.apply(environment()).await;
    h.wait_ready("shop").await;
    // A Migration that cannot run (its database Secret does not exist).
    let migration = json!({
        "apiVersion": "tether.dev/v1alpha1", "kind": "Migration",
        "metadata": {"name": "schema", "namespace": "default"},
        "spec": {"database": {"connectionSecretRef": {"name": "no-such-db", "key": "url"}},
            "source": {"inline": [{"version": "1", "name": "init", "sql": "select 1;"}]}},
    });
    let migrations: kube::Api<tether::api::Migration> =
        kube::Api::namespaced(h.client.clone(), "default");
    migrations
        .patch(
            "schema",
            &kube::api::PatchParams::apply("e2e-test").force(),
            &kube::api::Patch::Apply(&migration),
        )
        .await
        .unwrap();
    let mut rel = release("v4", "ghcr.io/acme/api:4");
    rel["spec"]["migrations"] = json!(["schema"]);
    apply_release(&h, rel).await;
    let rel = wait_release(&h, "v4", |r| r["status"]["phase"] == "Migrating").await;
    let reconciling = condition(&rel, "Reconciling").unwrap();
    assert_eq!(reconciling["reason"], "WaitingForMigrations");
    assert!(
        reconciling["message"]
            .as_str()
            .unwrap()
            .contains(r#"Migration "schema" to be Applied"#),
        "{reconciling}"
    );
    assert!(!condition_is(&rel, "Ready", "True"));
    assert_eq!(deploys_of(&h, "ghcr.io/acme/api:4"), 0, "nothing deployed");
    h.stop().await;
}

/// An Environment on three platforms: two Render services, a Fly app of three machines with
/// a check, a Vercel project with a custom domain.
pub(super) fn shop() -> Value {
    json!({
        "apiVersion": "tether.dev/v1alpha1", "kind": "Environment",
        "metadata": {"name": "shop", "namespace": "default"},
        "spec": {
            "credentials": {
                "render": {"name": "tether-sandbox-render", "key": "token"},
                "vercel": {"name": "tether-sandbox-vercel", "key": "token"},
                "fly": {"name": "tether-sandbox-fly", "key": "token"},
            },
            "render": {"ownerId": "tea-rel", "services": [
                {"name": "shop-api", "type": "web", "image": "ghcr.io/acme/api:1"},
                {"name": "shop-worker", "type": "worker", "image": "ghcr.io/acme/worker:1"}]},
            "fly": {"org": "acme", "apps": [{
                "name": "shop-edge",
                "image": "registry.fly.io/edge:1",
                "regions": [{"region": "ams", "count": 3}],
                "guest": {"cpuKind": "shared", "cpus": 1, "memoryMb": 256},
                "services": [{"internalPort": 8080,
                    "ports": [{"port": 443, "handlers": ["tls", "http"]}]}],
                "checks": [{"name": "alive", "type": "http", "port": 8080, "path": "/healthz",
                    "interval": "10s", "timeout": "2s"}],
            }]},
            "vercel": {"teamId": "team_sandbox", "projects": [{
                "name": "shop-web",
                "framework": "nextjs",
                "gitRepository": {"type": "github", "repo": "acme/shop-web"},
                "domains": [{"name": "www.shop.example.com"}],
            }]},
            "interval": "1h",
        },
    })
}

/// Version `v` of every shop component: the API and worker first, then the edge (a canary)
/// and the web app, with a health check of each step and one of the web app's domain.
fn shop_release(name: &str, v: &str) -> Value {
    json!({
        "apiVersion": "tether.dev/v1alpha1", "kind": "Release",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "environmentRef": {"name": "shop"}, "version": v,
            "artifacts": [
                {"component": "shop-api", "platform": "render", "image": format!("ghcr.io/acme/api:{v}")},
                {"component": "shop-worker", "platform": "render", "image": format!("ghcr.io/acme/worker:{v}")},
                {"component": "shop-edge", "platform": "fly", "image": format!("registry.fly.io/edge:{v}"),
                 "strategy": "canary", "maxUnavailable": 2},
                {"component": "shop-web", "platform": "vercel", "gitRef": format!("v{v}")},
            ],
            "steps": [
                {"components": ["shop-api", "shop-worker"]},
                {"components": ["shop-edge", "shop-web"]},
            ],
            "healthChecks": [
                {"name": "api", "component": "shop-api", "path": "/healthz",
                 "successThreshold": 2, "interval": "1s", "retries": 2},
                {"name": "edge", "component": "shop-edge", "path": "/healthz", "interval": "1s"},
                {"name": "web", "url": "https://www.shop.example.com/", "interval": "1s"},
            ],
        },
    })
}

/// Requests of `method` whose path ends with `suffix` on `platform`.
fn requests(h: &SyncHarness, platform: Platform, method: &str, suffix: &str) -> Vec<Value> {
    h.sandbox
        .exchanges()
        .into_iter()
        .filter(|e| e.platform == platform && e.method == method && e.path.ends_with(suffix))
        .map(|e| e.request_body.unwrap_or(Value::Null))
        .collect()
}

/// Fly machine updates to `image`.
pub(super) fn machine_updates(h: &SyncHarness, image: &str) -> usize {
    h.sandbox
        .exchanges()
        .iter()
        .filter(|e| {
            e.platform == Platform::Fly
                && e.method == "POST"
                && e.path.starts_with("/v1/apps/shop-edge/machines/")
                && e.path.matches('/').count() == 5
                && e.request_body
                    .as_ref()
                    .is_some_and(|b| b["config"]["image"] == image)
        })
        .count()
}

pub(super) fn host_of(env: &Value, component: &str) -> String {
    let url = env["status"]["objects"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == component && o["url"].is_string())
        .unwrap_or_else(|| panic!("no URL for {component} in {env}"))["url"]
        .as_str()
        .unwrap()
        .to_owned();
    url.trim_start_matches("https://")
        .trim_end_matches('/')
        .to_owned()
}

#[tokio::test]
async fn a_release_across_render_fly_and_vercel_succeeds_after_its_health_checks_hit_the_new_versions()
 {
    let h = SyncHarness::start().await;
    h.apply(shop()).await;
    h.wait_ready("shop").await;
    apply_release(&h, shop_release("shop-2", "2")).await;
    // Ready is never True before the phase is Succeeded.
    let api: kube::Api<Release> = kube::Api::namespaced(h.client.clone(), "default");
    let mut phases: Vec<String> = Vec::new();
    let started = std::time::Instant::now();
    let rel = loop {
        assert!(started.elapsed() < WAIT, "not Succeeded: {phases:?}");
        let rel = serde_json::to_value(api.get("shop-2").await.unwrap()).unwrap();
        let phase = rel["status"]["phase"].as_str().unwrap_or("").to_owned();
        assert!(
            !condition_is(&rel, "Ready", "True") || phase == "Succeeded",
            "Ready before Succeeded: {rel}"
        );
        assert_ne!(phase, "Failed", "{rel}");
        if phases.last() != Some(&phase) {
            phases.push(phase.clone());
        }
        if phase == "Succeeded" {
            break rel;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert!(phases.contains(&"Verifying".to_string()), "{phases:?}");
    assert!(condition_is(&rel, "Ready", "True"), "{rel}");
    assert_eq!(rel["status"]["progress"], "2/2");
    for check in rel["status"]["checks"].as_array().unwrap() {
        assert_eq!(check["state"], "Passed", "{check}");
    }
    assert_eq!(
        rel["status"]["checks"].as_array().unwrap().len(),
        3,
        "{}",
        rel["status"]
    );
    let api_check = &rel["status"]["checks"][0];
    assert_eq!(api_check["successes"], 2, "{api_check}");
    assert!(
        api_check["url"]
            .as_str()
            .unwrap()
            .ends_with(".onrender.com/healthz"),
        "{api_check}"
    );
    // One deployment per component.
    assert_eq!(deploys_of(&h, "ghcr.io/acme/api:2"), 1);
    assert_eq!(deploys_of(&h, "ghcr.io/acme/worker:2"), 1);
    assert_eq!(
        requests(&h, Platform::Vercel, "POST", "/v13/deployments")
            .iter()
            .filter(|b| b["gitSource"]["ref"] == "v2")
            .count(),
        1
    );
    assert_eq!(machine_updates(&h, "registry.fly.io/edge:2"), 3);
    // The new versions answer on the sandbox's app URLs.
    let env_now = h.wait_ready("shop").await;
    for (host, version) in [
        (host_of(&env_now, "shop-api"), "ghcr.io/acme/api:2"),
        ("shop-edge.fly.dev".to_string(), "registry.fly.io/edge:2"),
        ("www.shop.example.com".to_string(), "v2"),
    ] {
        let (code, body) = app_answer(h.sandbox.edge_url(), &host).await;
        assert_eq!(code, 200, "{host}: {body}");
        assert!(body.contains(version), "{host}: {body}");
    }
    // The health checks' requests reached the apps (the sandbox counts them per version).
    let metrics = reqwest::get(format!(
        "{}/metrics",
        h.sandbox.admin_url(Platform::Render).unwrap()
    ))
    .await
    .unwrap()
    .text()
    .await
    .unwrap();
    assert!(
        metrics.contains("app=\"shop-api\",version=\"ghcr.io/acme/api:2\",code=\"200\""),
        "{metrics}"
    );
    let events = h.events("shop-2").await;
    assert!(
        events
            .iter()
            .any(|(_, reason, _)| reason == "HealthCheckPassed"),
        "{events:?}"
    );
    h.stop().await;
}

#[tokio::test]
async fn a_fly_canary_waits_for_its_checks_and_one_that_never_passes_them_fails_the_release() {
    let h = SyncHarness::start().await;
    h.apply(shop()).await;
    h.wait_ready("shop").await;
    h.sandbox.set_faults(
        Platform::Fly,
        Faults {
            crashing_sources: vec!["registry.fly.io/edge:3".into()],
            ..Faults::default()
        },
    );
    apply_release(&h, shop_release("shop-3", "3")).await;
    let rel = wait_release(&h, "shop-3", |r| r["status"]["phase"] == "Failed").await;
    let stalled = condition(&rel, "Stalled").unwrap();
    assert_eq!(stalled["reason"], "DeployFailed", "{stalled}");
    let message = stalled["message"].as_str().unwrap();
    assert!(
        message.contains("shop-edge (fly)") && message.contains("check(s) alive critical"),
        "{message}"
    );
    assert!(!condition_is(&rel, "Ready", "True"));
    // The canary was the only machine given the broken image.
    assert_eq!(machine_updates(&h, "registry.fly.io/edge:3"), 1);
    let events = h.events("shop-3").await;
    assert!(
        events.iter().any(|(kind, reason, note)| kind == "Warning"
            && reason == "DeployFailed"
            && note.contains("critical")),
        "{events:?}"
    );
    h.stop().await;
}

#[tokio::test]
async fn a_failing_health_check_fails_the_release_with_what_the_app_answered() {
    let h = SyncHarness::start().await;
    h.apply(shop()).await;
    h.wait_ready("shop").await;
    h.sandbox.set_faults(
        Platform::Render,
        Faults {
            unhealthy_sources: vec!["ghcr.io/acme/api:4".into()],
            ..Faults::default()
        },
    );
    apply_release(&h, shop_release("shop-4", "4")).await;
    let rel = wait_release(&h, "shop-4", |r| r["status"]["phase"] == "Failed").await;
    let stalled = condition(&rel, "Stalled").unwrap();
    assert_eq!(stalled["reason"], "HealthCheckFailed", "{stalled}");
    let message = stalled["message"].as_str().unwrap();
    assert!(
        message.contains("step 1/2: health check api failed after 3 unhealthy answer(s)")
            && message.contains("HTTP 500"),
        "{message}"
    );
    let check = &rel["status"]["checks"][0];
    assert_eq!(
        (&check["state"], &check["failures"]),
        (&json!("Failed"), &json!(3))
    );
    // The next step never started.
    assert_eq!(machine_updates(&h, "registry.fly.io/edge:4"), 0);
    let events = h.events("shop-4").await;
    assert!(
        events
            .iter()
            .any(|(kind, reason, _)| kind == "Warning" && reason == "HealthCheckFailed"),
        "{events:?}"
    );
    h.stop().await;
}

#[tokio::test]
async fn a_render_version_that_does_not_start_fails_the_release_with_update_failed() {
    let h = SyncHarness::start().await;
    h.apply(environment()).await;
    h.wait_ready("shop").await;
    h.sandbox.set_faults(
        Platform::Render,
        Faults {
            crashing_sources: vec!["ghcr.io/acme/api:crash".into()],
            ..Faults::default()
        },
    );
    apply_release(&h, release("crash", "ghcr.io/acme/api:crash")).await;
    let rel = wait_release(&h, "crash", |r| r["status"]["phase"] == "Failed").await;
    let message = condition(&rel, "Stalled").unwrap()["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(message.contains("update_failed"), "{message}");
    h.stop().await;
}

#[tokio::test]
async fn killed_at_every_phase_boundary_and_mid_step_the_release_completes_with_one_deployment_per_component()
 {
    let mut h = SyncHarness::start().await;
    h.apply(shop()).await;
    h.wait_ready("shop").await;
    apply_release(&h, shop_release("shop-5", "5")).await;
    let api: kube::Api<Release> = kube::Api::namespaced(h.client.clone(), "default");
    // Every new (phase, progress, deployment ids, check states) the status shows is a
    // moment to kill the controllers at: the phase boundaries, each deployment id recorded
    // before it is waited on, each step becoming live, each health check attempt.
    let mut seen: Vec<String> = Vec::new();
    let mut kills = 0;
    let started = std::time::Instant::now();
    loop {
        assert!(
            started.elapsed() < WAIT * 2,
            "not done after {kills} kills: {seen:?}"
        );
        let rel = serde_json::to_value(api.get("shop-5").await.unwrap()).unwrap();
        let status = &rel["status"];
        if status["phase"] == "Succeeded" {
            break;
        }
        assert_ne!(status["phase"], "Failed", "{rel}");
        let ids: Vec<&Value> = status["steps"]
            .as_array()
            .map(|s| s.iter().map(|s| &s["deploymentId"]).collect())
            .unwrap_or_default();
        let moment = format!(
            "{} {} {:?} {}",
            status["phase"], status["progress"], ids, status["checks"]
        );
        if !seen.contains(&moment) {
            seen.push(moment);
            h.kill_controllers();
            kills += 1;
            h.start_controllers().await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // Among the moments: a step deploying with its ids recorded, health checks running,
    // the second step deploying.
    for moment in [
        "\"Deploying\" \"0/2\" [String",
        "\"Verifying\"",
        "\"Deploying\" \"1/2\"",
    ] {
        assert!(
            seen.iter().any(|m| m.starts_with(moment)),
            "never killed at {moment}: {seen:?}"
        );
    }
    assert_eq!(deploys_of(&h, "ghcr.io/acme/api:5"), 1);
    assert_eq!(deploys_of(&h, "ghcr.io/acme/worker:5"), 1);
    assert_eq!(
        requests(&h, Platform::Vercel, "POST", "/v13/deployments")
            .iter()
            .filter(|b| b["gitSource"]["ref"] == "v5")
            .count(),
        1
    );
    assert_eq!(machine_updates(&h, "registry.fly.io/edge:5"), 3);
    h.stop().await;
}

#[tokio::test]
async fn a_vercel_deployment_id_is_promoted_to_production_without_a_new_build() {
    use tether::platform::{DeploySource, DeploymentState, Deployments, VercelClient};
    let h = SyncHarness::start().await;
    h.apply(shop()).await;
    let env = h.wait_ready("shop").await;
    let project = env["status"]["objects"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == "shop-web")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // Two builds: the later one is what production serves.
    let vercel = VercelClient::new(h.http(Platform::Vercel), Some("team_sandbox".into()));
    let prebuilt = vercel
        .deploy(&project, &DeploySource::Git("prebuilt".into()))
        .await
        .unwrap();
    vercel
        .deploy(&project, &DeploySource::Git("later".into()))
        .await
        .unwrap();
    eventually(WAIT, || async {
        let list = vercel.list_deployments(&project).await.ok()?;
        list.iter()
            .all(|d| d.state == DeploymentState::Live)
            .then_some(())
    })
    .await;
    assert!(
        app_answer(h.sandbox.edge_url(), "www.shop.example.com")
            .await
            .1
            .contains("later")
    );
    let builds = requests(&h, Platform::Vercel, "POST", "/v13/deployments").len();
    let mut rel = shop_release("shop-6", "6");
    rel["spec"]["artifacts"] = json!([
        {"component": "shop-web", "platform": "vercel", "deploymentId": prebuilt.id}]);
    rel["spec"]["steps"] = json!([{"components": ["shop-web"]}]);
    rel["spec"]["healthChecks"] = json!([]);
    apply_release(&h, rel).await;
    let rel = wait_release(&h, "shop-6", |r| r["status"]["phase"] == "Succeeded").await;
    assert_eq!(
        rel["status"]["steps"][0]["deploymentId"],
        json!(prebuilt.id)
    );
    let (code, body) = app_answer(h.sandbox.edge_url(), "www.shop.example.com").await;
    assert_eq!(code, 200);
    assert!(
        body.contains("prebuilt"),
        "production serves the promoted deployment: {body}"
    );
    assert_eq!(
        requests(&h, Platform::Vercel, "POST", "/v13/deployments").len(),
        builds,
        "no new build"
    );
    h.stop().await;
}

/// A second Environment ("prod") with its own Render service.
fn prod() -> Value {
    let mut env = environment();
    env["metadata"]["name"] = json!("prod");
    env["spec"]["render"]["services"][0]["name"] = json!("prod-api");
    env
}

fn prod_release(name: &str, version: &str, image: &str) -> Value {
    let mut rel = release(name, image);
    rel["spec"]["environmentRef"]["name"] = json!("prod");
    rel["spec"]["version"] = json!(version);
    rel["spec"]["artifacts"][0]["component"] = json!("prod-api");
    rel["spec"]["promotion"] = json!({"fromEnvironment": "shop"});
    rel
}

#[tokio::test]
async fn a_release_waits_for_approval_deploys_nothing_meanwhile_and_records_who_approved() {
    let h = SyncHarness::start().await;
    h.apply(environment()).await;
    h.wait_ready("shop").await;
    let mut rel = release("gated", "ghcr.io/acme/api:7");
    rel["spec"]["approval"] = json!({"required": true});
    apply_release(&h, rel.clone()).await;
    let waiting = wait_release(&h, "gated", |r| r["status"]["phase"] == "AwaitingApproval").await;
    let approved = condition(&waiting, "Approved").unwrap();
    assert_eq!(
        (&approved["status"], &approved["reason"]),
        (&json!("False"), &json!("AwaitingApproval"))
    );
    assert!(
        condition(&waiting, "Reconciling").unwrap()["message"]
            .as_str()
            .unwrap()
            .contains("tether.dev/approved-by=<your name>"),
        "{waiting}"
    );
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(
        deploys_of(&h, "ghcr.io/acme/api:7"),
        0,
        "nothing deployed before approval"
    );
    rel["metadata"]["annotations"] = json!({"tether.dev/approved-by": "ada@example.com"});
    apply_release(&h, rel).await;
    let done = wait_release(&h, "gated", |r| r["status"]["phase"] == "Succeeded").await;
    assert_eq!(done["status"]["approvedBy"], "ada@example.com");
    assert!(done["status"]["approvedAt"].is_string(), "{done}");
    assert!(condition_is(&done, "Approved", "True"));
    assert_eq!(deploys_of(&h, "ghcr.io/acme/api:7"), 1);
    let events = h.events("gated").await;
    for reason in ["AwaitingApproval", "Approved"] {
        assert!(
            events.iter().any(|(_, r, _)| r == reason),
            "{reason}: {events:?}"
        );
    }
    h.stop().await;
}

#[tokio::test]
async fn only_a_version_that_succeeded_with_the_same_artifacts_in_the_source_environment_is_promoted()
 {
    let h = SyncHarness::start().await;
    h.apply(environment()).await;
    h.apply(prod()).await;
    h.wait_ready("shop").await;
    h.wait_ready("prod").await;
    // Never released to the source Environment: refused, nothing deployed.
    apply_release(&h, prod_release("prod-9", "9", "ghcr.io/acme/api:9")).await;
    let refused = wait_release(&h, "prod-9", |r| condition_is(r, "Stalled", "True")).await;
    let stalled = condition(&refused, "Stalled").unwrap();
    assert_eq!(stalled["reason"], "UntestedVersion", "{refused}");
    assert!(
        stalled["message"]
            .as_str()
            .unwrap()
            .contains("version 9 has no Succeeded Release in Environment shop"),
        "{stalled}"
    );
    assert!(condition_is(&refused, "Promotable", "False"));
    let mut tested = release("shop-8", "ghcr.io/acme/api:8");
    tested["spec"]["version"] = json!("8");
    apply_release(&h, tested).await;
    wait_release(&h, "shop-8", |r| r["status"]["phase"] == "Succeeded").await;
    // Tested in the source Environment: promoted once a person approves.
    let mut to_prod = prod_release("prod-8", "8", "ghcr.io/acme/api:8");
    to_prod["spec"]["approval"] = json!({"required": true});
    apply_release(&h, to_prod.clone()).await;
    let waiting = wait_release(&h, "prod-8", |r| r["status"]["phase"] == "AwaitingApproval").await;
    assert!(condition_is(&waiting, "Approved", "False"), "{waiting}");
    assert_eq!(
        deploys_of(&h, "ghcr.io/acme/api:8"),
        1,
        "only the source's deployment"
    );
    to_prod["metadata"]["annotations"] = json!({"tether.dev/approved-by": "ada"});
    apply_release(&h, to_prod).await;
    let promoted = wait_release(&h, "prod-8", |r| r["status"]["phase"] == "Succeeded").await;
    assert_eq!(promoted["status"]["approvedBy"], "ada");
    assert_eq!(promoted["status"]["promotedFrom"], "shop-8");
    assert!(condition_is(&promoted, "Promotable", "True"));
    // The same version with another image was not what was tested.
    apply_release(
        &h,
        prod_release("prod-8b", "8", "ghcr.io/acme/api:8-hotfix"),
    )
    .await;
    let differs = wait_release(&h, "prod-8b", |r| condition_is(r, "Stalled", "True")).await;
    assert_eq!(
        condition(&differs, "Stalled").unwrap()["reason"],
        "ArtifactsDiffer"
    );
    assert_eq!(deploys_of(&h, "ghcr.io/acme/api:9"), 0);
    assert_eq!(deploys_of(&h, "ghcr.io/acme/api:8-hotfix"), 0);
    h.stop().await;
}

#[tokio::test]
async fn a_newer_release_of_an_environment_waits_for_the_one_in_progress() {
    let h = SyncHarness::start().await;
    h.apply(environment()).await;
    h.wait_ready("shop").await;
    // The first stays in progress for a few seconds: three healthy answers a second apart.
    let mut first = release("first", "ghcr.io/acme/api:10");
    first["spec"]["healthChecks"] = json!([{"name": "api", "component": "shop-api",
        "path": "/healthz", "successThreshold": 3, "interval": "1s"}]);
    apply_release(&h, first).await;
    wait_release(&h, "first", |r| r["status"]["phase"] == "Verifying").await;
    apply_release(&h, release("second", "ghcr.io/acme/api:11")).await;
    let waiting = wait_release(&h, "second", |r| {
        condition(r, "Reconciling").is_some_and(|c| c["reason"] == "WaitingForRelease")
    })
    .await;
    assert!(
        condition(&waiting, "Reconciling").unwrap()["message"]
            .as_str()
            .unwrap()
            .contains("waiting for Release first"),
        "{waiting}"
    );
    let second = wait_release(&h, "second", |r| r["status"]["phase"] == "Succeeded").await;
    let first = wait_release(&h, "first", |r| r["status"]["phase"] == "Succeeded").await;
    let at = |r: &Value, field: &str| {
        r["status"][field]
            .as_str()
            .unwrap()
            .parse::<jiff::Timestamp>()
            .unwrap()
    };
    assert!(
        at(&second, "startedAt") >= at(&first, "finishedAt"),
        "the second started after the first finished: {first}\n{second}"
    );
    h.stop().await;
}

#[tokio::test]
async fn after_a_crash_mid_deploy_nothing_is_sent_again_until_the_platforms_deploys_can_be_read() {
    let mut h = SyncHarness::start().await;
    h.apply(shop()).await;
    h.wait_ready("shop").await;
    // Every Render call takes a while: the API's deploy stays `Starting` in status meanwhile.
    h.sandbox.set_faults(
        Platform::Render,
        Faults {
            latency_ms: 400,
            ..Faults::default()
        },
    );
    apply_release(&h, shop_release("shop-2", "2")).await;
    wait_release(&h, "shop-2", |r| {
        r["status"]["steps"].as_array().is_some_and(|steps| {
            steps
                .iter()
                .any(|s| s["component"] == "shop-api" && s["state"] == "Starting")
        })
    })
    .await;
    // Killed with the deploy recorded as starting; the next controller cannot list the
    // service's deploys (to find the one the crash may have left behind).
    h.kill_controllers();
    h.sandbox.set_faults(
        Platform::Render,
        Faults {
            failing_requests: vec!["GET /deploys".into()],
            ..Faults::default()
        },
    );
    let image = "ghcr.io/acme/api:2";
    let before = deploys_of(&h, image);
    h.start_controllers().await;
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert!(
        !requests(&h, Platform::Render, "GET", "/deploys").is_empty(),
        "the restarted controller tried to list the deploys"
    );
    assert_eq!(deploys_of(&h, image), before, "nothing sent while blind");
    // Once the list can be read, the release goes on with exactly one deploy of the API.
    h.sandbox.set_faults(Platform::Render, Faults::default());
    wait_release(&h, "shop-2", |r| r["status"]["phase"] == "Succeeded").await;
    assert_eq!(deploys_of(&h, image), 1);
    h.stop().await;
}

#[tokio::test]
async fn a_reconcile_of_an_outdated_version_sends_lists_and_writes_nothing() {
    use futures::StreamExt;
    use kube::ResourceExt;
    use kube::runtime::{WatchStreamExt, watcher};
    use std::sync::{Arc, Mutex};
    use tether::controller::decoded::Decoded;
    use tether::controller::metrics::ControllerMetrics;
    use tether::controller::reconcile::{FINALIZER, reconcile};

    let mut h = SyncHarness::start().await;
    h.apply(environment()).await;
    h.wait_ready("shop").await;
    // Every version of the Release as the API sends them (a controller's cache holds each
    // in turn, and can trail the API by a write or two).
    let api: kube::Api<Release> = kube::Api::namespaced(h.client.clone(), "default");
    let versions: Arc<Mutex<Vec<Release>>> = Arc::default();
    let watching = tokio::spawn({
        let (api, versions) = (api.clone(), versions.clone());
        async move {
            watcher(api, watcher::Config::default())
                .applied_objects()
                .for_each(|r| {
                    if let Ok(r) = r {
                        versions.lock().unwrap().push(r);
                    }
                    async {}
                })
                .await;
        }
    });
    let image = "ghcr.io/acme/api:9";
    apply_release(&h, release("shop-9", image)).await;
    wait_release(&h, "shop-9", |r| r["status"]["phase"] == "Succeeded").await;
    h.stop_controllers().await;
    watching.abort();
    // The version a reconcile saw before the deploy started: finalizer on, no step yet.
    let outdated = versions
        .lock()
        .unwrap()
        .iter()
        .find(|r| r.finalizers().iter().any(|f| f == FINALIZER))
        .cloned()
        .expect("a version with the finalizer");
    assert!(
        outdated.status.as_ref().is_none_or(|s| s
            .steps
            .iter()
            .all(|s| s.deployment_id.is_none() && s.state.as_deref() != Some("Starting"))),
        "{:?}",
        outdated.status
    );
    assert_eq!(deploys_of(&h, image), 1);
    let live = api.get("shop-9").await.unwrap();

    let metrics = ControllerMetrics::register(&tether::telemetry::MetricsRegistry::new()).unwrap();
    let ctx = Arc::new(tether::controller::context(
        h.client.clone(),
        h.config(),
        metrics,
    ));
    // And the version that recorded the deploy as starting, before its id was written: its
    // deploy is not looked for on the platform (the newer version has the id).
    let starting = versions
        .lock()
        .unwrap()
        .iter()
        .find(|r| {
            r.status.as_ref().is_some_and(|s| {
                s.steps
                    .iter()
                    .any(|s| s.state.as_deref() == Some("Starting") && s.deployment_id.is_none())
            })
        })
        .cloned()
        .expect("a version with the deploy recorded starting");
    // And the version with the deploy's id recorded, still deploying: read on its own, it
    // would be finished again (a new `finishedAt`).
    let deploying = versions
        .lock()
        .unwrap()
        .iter()
        .find(|r| {
            r.status.as_ref().is_some_and(|s| {
                s.phase == Some(tether::api::release::ReleasePhase::Deploying)
                    && s.steps.iter().all(|s| s.deployment_id.is_some())
            })
        })
        .cloned()
        .expect("a version deploying with the deploy's id");
    let lists = requests(&h, Platform::Render, "GET", "/deploys").len();
    for version in [outdated, starting, deploying] {
        let action = reconcile(Arc::new(Decoded::from(version)), ctx.clone()).await;
        assert!(action.is_ok(), "{action:?}");
        assert_eq!(deploys_of(&h, image), 1, "the deploy was not sent again");
        assert_eq!(
            requests(&h, Platform::Render, "GET", "/deploys").len(),
            lists,
            "no list of deploys"
        );
        let after = api.get("shop-9").await.unwrap();
        assert_eq!(
            after.resource_version(),
            live.resource_version(),
            "status as it was: {:?}",
            after.status
        );
    }
    h.stop().await;
}

/// Release reconciles so far (every result), once the count has held still for 300 ms.
async fn release_reconciles(h: &SyncHarness) -> u64 {
    let count = || async {
        h.metrics()
            .await
            .lines()
            .filter(|l| l.starts_with(r#"controller_runtime_reconcile_total{controller="release""#))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    };
    let mut last = count().await;
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let now = count().await;
        if now == last {
            return now;
        }
        last = now;
    }
}

#[tokio::test]
async fn a_finished_release_is_not_reconciled_again_when_its_environment_changes() {
    let h = SyncHarness::start().await;
    h.apply(environment()).await;
    h.wait_ready("shop").await;
    apply_release(&h, release("shop-7", "ghcr.io/acme/api:7")).await;
    wait_release(&h, "shop-7", |r| r["status"]["phase"] == "Succeeded").await;
    let before = release_reconciles(&h).await;
    // Two changes of the Environment, each reconciled and its status written.
    for interval in ["2h", "3h"] {
        let mut env = environment();
        env["spec"]["interval"] = json!(interval);
        h.apply(env).await;
        h.wait_ready("shop").await;
    }
    assert_eq!(release_reconciles(&h).await, before);
    h.stop().await;
}

/// Render rollbacks (`POST /services/{id}/rollback`) to the deploy `deploy_id`.
pub(super) fn rollbacks_to(h: &SyncHarness, deploy_id: &Value) -> usize {
    requests(h, Platform::Render, "POST", "/rollback")
        .iter()
        .filter(|b| &b["deployId"] == deploy_id)
        .count()
}

#[tokio::test]
async fn a_failed_health_check_rolls_every_changed_component_back_even_across_a_controller_kill() {
    let mut h = SyncHarness::start().await;
    h.apply(shop()).await;
    let env = h.wait_ready("shop").await;
    apply_release(&h, shop_release("shop-20", "20")).await;
    let good = wait_release(&h, "shop-20", |r| r["status"]["phase"] == "Succeeded").await;
    h.sandbox.set_faults(
        Platform::Render,
        Faults {
            unhealthy_sources: vec!["ghcr.io/acme/api:21".into()],
            ..Faults::default()
        },
    );
    apply_release(&h, shop_release("shop-21", "21")).await;
    // Killed once the rollback has started, and again once a rollback deploy is recorded.
    wait_release(&h, "shop-21", |r| r["status"]["phase"] == "RollingBack").await;
    h.kill_controllers();
    h.start_controllers().await;
    wait_release(&h, "shop-21", |r| {
        r["status"]["rollback"]["steps"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| s["deploymentId"].is_string()))
            || r["status"]["phase"] == "RolledBack"
    })
    .await;
    h.kill_controllers();
    h.start_controllers().await;
    let rel = wait_release(&h, "shop-21", |r| r["status"]["phase"] == "RolledBack").await;
    let stalled = condition(&rel, "Stalled").unwrap();
    assert_eq!(stalled["reason"], "RolledBack", "{rel}");
    let message = stalled["message"].as_str().unwrap();
    assert!(
        message.contains("rolled back to Release shop-20 (2 component(s))")
            && message.contains("health check api failed"),
        "{message}"
    );
    assert!(!condition_is(&rel, "Ready", "True"));
    assert_eq!(rel["status"]["rollback"]["to"], "shop-20");
    assert_eq!(rel["status"]["rollback"]["reason"], "HealthCheckFailed");
    // Step 1 changed the API and the worker; step 2 never started.
    let components: Vec<&str> = rel["status"]["rollback"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["component"].as_str().unwrap())
        .collect();
    assert_eq!(components, ["shop-api", "shop-worker"]);
    // One rollback per component to the deploy the good Release made, none twice.
    assert_eq!(
        rollbacks_to(&h, &good["status"]["steps"][0]["deploymentId"]),
        1
    );
    assert_eq!(
        rollbacks_to(&h, &good["status"]["steps"][1]["deploymentId"]),
        1
    );
    assert_eq!(machine_updates(&h, "registry.fly.io/edge:21"), 0);
    // The previous version is live again.
    let (code, body) = app_answer(h.sandbox.edge_url(), &host_of(&env, "shop-api")).await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("ghcr.io/acme/api:20"), "{body}");
    let events = h.events("shop-21").await;
    // (The events of the reconcile the kill interrupted may be lost, as on a crash.)
    assert!(
        events.iter().any(|(_, r, _)| r == "RolledBack"),
        "{events:?}"
    );
    // (The `rolled_back` count is the reconcile's that ended it, which may be the killed
    // controller's: `sync::delivery` checks the counts without kills.)
    h.stop().await;
}

#[tokio::test]
async fn a_failing_fly_canary_rolls_back_render_fly_and_vercel_to_the_previous_release() {
    let h = SyncHarness::start().await;
    h.apply(shop()).await;
    h.wait_ready("shop").await;
    apply_release(&h, shop_release("shop-30", "30")).await;
    wait_release(&h, "shop-30", |r| r["status"]["phase"] == "Succeeded").await;
    h.sandbox.set_faults(
        Platform::Fly,
        Faults {
            crashing_sources: vec!["registry.fly.io/edge:31".into()],
            ..Faults::default()
        },
    );
    apply_release(&h, shop_release("shop-31", "31")).await;
    let rel = wait_release(&h, "shop-31", |r| {
        matches!(r["status"]["phase"].as_str(), Some("RolledBack" | "Failed"))
    })
    .await;
    assert_eq!(rel["status"]["phase"], "RolledBack", "{rel}");
    assert_eq!(rel["status"]["rollback"]["reason"], "DeployFailed");
    for (host, version) in [
        ("shop-edge.fly.dev", "registry.fly.io/edge:30"),
        ("www.shop.example.com", "v30"),
    ] {
        let (code, body) = app_answer(h.sandbox.edge_url(), host).await;
        assert_eq!(code, 200, "{host}: {body}");
        assert!(body.contains(version), "{host}: {body}");
    }
    // The canary went back; the other machines never left the previous image.
    assert_eq!(machine_updates(&h, "registry.fly.io/edge:31"), 1);
    assert_eq!(machine_updates(&h, "registry.fly.io/edge:30"), 3 + 1);
    let events = h.events("shop-31").await;
    for reason in ["DeployFailed", "RollbackStarted", "RolledBack"] {
        assert!(
            events.iter().any(|(_, r, _)| r == reason),
            "{reason}: {events:?}"
        );
    }
    h.stop().await;
}

#[tokio::test]
async fn a_migration_applied_since_the_previous_release_that_is_not_backward_compatible_stops_the_rollback()
 {
    let db = crate::migrate::TestDb::create().await;
    let h = SyncHarness::start().await;
    h.put_secret("db", &[("url", db.url.as_str())]).await;
    h.apply(environment()).await;
    h.wait_ready("shop").await;
    let migrations: kube::Api<tether::api::Migration> =
        kube::Api::namespaced(h.client.clone(), "default");
    let apply_migration = |files: Value| {
        let migrations = migrations.clone();
        async move {
            let manifest = json!({
                "apiVersion": "tether.dev/v1alpha1", "kind": "Migration",
                "metadata": {"name": "schema", "namespace": "default"},
                "spec": {"database": {"connectionSecretRef": {"name": "db", "key": "url"}},
                    "source": {"inline": files}, "policy": {"allowDestructive": true}},
            });
            migrations
                .patch(
                    "schema",
                    &kube::api::PatchParams::apply("e2e-test").force(),
                    &kube::api::Patch::Apply(&manifest),
                )
                .await
                .unwrap();
        }
    };
    let create =
        json!({"version": "1", "name": "notes", "sql": "create table notes (id int, body text);"});
    apply_migration(json!([create])).await;
    let mut good = release("v40", "ghcr.io/acme/api:40");
    good["spec"]["migrations"] = json!(["schema"]);
    apply_release(&h, good).await;
    wait_release(&h, "v40", |r| r["status"]["phase"] == "Succeeded").await;
    // After v40 succeeded, a migration drops a column the old code may read.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let drop =
        json!({"version": "2", "name": "drop_body", "sql": "alter table notes drop column body;"});
    apply_migration(json!([create, drop])).await;
    eventually(WAIT, || async {
        let m = migrations.get("schema").await.ok()?;
        let applied = m.status?.applied;
        (applied.len() == 2).then_some(())
    })
    .await;
    h.sandbox.set_faults(
        Platform::Render,
        Faults {
            unhealthy_sources: vec!["ghcr.io/acme/api:41".into()],
            ..Faults::default()
        },
    );
    let mut bad = release("v41", "ghcr.io/acme/api:41");
    bad["spec"]["migrations"] = json!(["schema"]);
    bad["spec"]["healthChecks"] =
        json!([{"name": "api", "component": "shop-api", "interval": "1s", "retries": 0}]);
    apply_release(&h, bad).await;
    let rel = wait_release(&h, "v41", |r| {
        matches!(r["status"]["phase"].as_str(), Some("Failed" | "RolledBack"))
    })
    .await;
    assert_eq!(rel["status"]["phase"], "Failed", "{rel}");
    let safe = condition(&rel, "RollbackSafe").unwrap();
    assert_eq!(safe["status"], "False", "{safe}");
    assert_eq!(safe["reason"], "MigrationNotBackwardCompatible");
    let message = safe["message"].as_str().unwrap();
    assert!(
        message.contains("migration 2_drop_body.sql of Migration \"schema\"")
            && message.contains("ban-drop-column"),
        "{message}"
    );
    assert!(
        condition(&rel, "Stalled").unwrap()["message"]
            .as_str()
            .unwrap()
            .contains("not rolled back"),
        "{rel}"
    );
    assert!(rel["status"]["rollback"].is_null(), "{rel}");
    assert_eq!(requests(&h, Platform::Render, "POST", "/rollback").len(), 0);
    h.stop().await;
}

#[tokio::test]
async fn a_release_that_supersedes_stops_the_older_ones_and_deploys_over_them() {
    let h = SyncHarness::start().await;
    h.apply(environment()).await;
    let env = h.wait_ready("shop").await;
    // The first would verify for a minute; the next waits for approval.
    let mut first = release("a-first", "ghcr.io/acme/api:12");
    first["spec"]["healthChecks"] = json!([{"name": "api", "component": "shop-api",
        "path": "/healthz", "successThreshold": 60, "interval": "1s"}]);
    apply_release(&h, first).await;
    wait_release(&h, "a-first", |r| r["status"]["phase"] == "Verifying").await;
    let mut waiting = release("b-waiting", "ghcr.io/acme/api:13");
    waiting["spec"]["approval"] = json!({"required": true});
    apply_release(&h, waiting).await;
    wait_release(&h, "b-waiting", |r| {
        r["status"]["phase"] == "AwaitingApproval"
    })
    .await;
    let mut hotfix = release("c-hotfix", "ghcr.io/acme/api:14");
    hotfix["spec"]["concurrencyPolicy"] = json!("Supersede");
    apply_release(&h, hotfix).await;
    let done = wait_release(&h, "c-hotfix", |r| r["status"]["phase"] == "Succeeded").await;
    for (name, was) in [("a-first", "Verifying"), ("b-waiting", "AwaitingApproval")] {
        let old = wait_release(&h, name, |r| r["status"]["phase"] == "Superseded").await;
        let stalled = condition(&old, "Stalled").unwrap();
        assert_eq!(stalled["reason"], "Superseded", "{old}");
        let message = stalled["message"].as_str().unwrap();
        assert!(
            message.contains("superseded by Release c-hotfix") && message.contains(was),
            "{message}"
        );
        assert!(!condition_is(&old, "Ready", "True"), "{old}");
        assert_eq!(
            old["metadata"]["annotations"]["tether.dev/superseded-by"],
            "c-hotfix"
        );
    }
    assert_eq!(deploys_of(&h, "ghcr.io/acme/api:13"), 0, "never deployed");
    assert_eq!(deploys_of(&h, "ghcr.io/acme/api:14"), 1);
    let (code, body) = app_answer(h.sandbox.edge_url(), &host_of(&env, "shop-api")).await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("ghcr.io/acme/api:14"), "{body}");
    let events = h.events("c-hotfix").await;
    assert!(
        events
            .iter()
            .any(|(_, r, n)| r == "Superseding" && n.contains("a-first")),
        "{events:?}"
    );
    assert_eq!(done["status"]["phase"], "Succeeded");
    assert!(
        h.metrics()
            .await
            .lines()
            .any(|l| l.starts_with("tether_release_total{") && l.contains("superseded")),
        "superseded Releases are counted"
    );
    h.stop().await;
}

#[tokio::test]
async fn a_promotion_waits_until_its_migrations_were_applied_in_the_source_environments_database() {
    let staging_db = crate::migrate::TestDb::create().await;
    let prod_db = crate::migrate::TestDb::create().await;
    let h = SyncHarness::start().await;
    h.put_secret("staging-db", &[("url", staging_db.url.as_str())])
        .await;
    h.put_secret("prod-db", &[("url", prod_db.url.as_str())])
        .await;
    h.apply(environment()).await;
    h.apply(prod()).await;
    h.wait_ready("shop").await;
    h.wait_ready("prod").await;
    let migrations: kube::Api<tether::api::Migration> =
        kube::Api::namespaced(h.client.clone(), "default");
    let apply_migration = |name: &'static str, secret: &'static str, files: Value| {
        let migrations = migrations.clone();
        async move {
            let manifest = json!({
                "apiVersion": "tether.dev/v1alpha1", "kind": "Migration",
                "metadata": {"name": name, "namespace": "default"},
                "spec": {"database": {"connectionSecretRef": {"name": secret, "key": "url"}},
                    "source": {"inline": files}},
            });
            migrations
                .patch(
                    name,
                    &kube::api::PatchParams::apply("e2e-test").force(),
                    &kube::api::Patch::Apply(&manifest),
                )
                .await
                .unwrap();
        }
    };
    let create =
        json!({"version": "1", "name": "notes", "sql": "create table notes (id int, body text);"});
    let index =
        json!({"version": "2", "name": "notes_id", "sql": "create index notes_id on notes (id);"});
    // Staging has only the first migration; production's Migration has both.
    apply_migration("staging-schema", "staging-db", json!([create])).await;
    apply_migration("prod-schema", "prod-db", json!([create, index])).await;
    let mut tested = release("shop-8", "ghcr.io/acme/api:8");
    tested["spec"]["version"] = json!("8");
    tested["spec"]["migrations"] = json!(["staging-schema"]);
    apply_release(&h, tested).await;
    wait_release(&h, "shop-8", |r| r["status"]["phase"] == "Succeeded").await;
    let mut to_prod = prod_release("prod-8", "8", "ghcr.io/acme/api:8");
    to_prod["spec"]["migrations"] = json!(["prod-schema"]);
    to_prod["spec"]["approval"] = json!({"required": true});
    to_prod["metadata"]["annotations"] = json!({"tether.dev/approved-by": "ada"});
    apply_release(&h, to_prod.clone()).await;
    let refused = wait_release(&h, "prod-8", |r| condition_is(r, "Stalled", "True")).await;
    let stalled = condition(&refused, "Stalled").unwrap();
    assert_eq!(stalled["reason"], "MigrationsUntested", "{refused}");
    let message = stalled["message"].as_str().unwrap();
    assert!(
        message.contains("migration 2_notes_id.sql of Migration \"prod-schema\" was never applied in Environment shop's database")
            && message.contains("staging-schema"),
        "{message}"
    );
    assert!(condition_is(&refused, "Promotable", "False"));
    assert_eq!(
        deploys_of(&h, "ghcr.io/acme/api:8"),
        1,
        "only the staging deploy"
    );
    // Once staging applied it too, the promotion goes ahead (the approval change wakes it).
    apply_migration("staging-schema", "staging-db", json!([create, index])).await;
    eventually(WAIT, || async {
        let m = migrations.get("staging-schema").await.ok()?;
        (m.status?.applied.len() == 2).then_some(())
    })
    .await;
    to_prod["metadata"]["annotations"] = json!({"tether.dev/approved-by": "grace"});
    apply_release(&h, to_prod).await;
    let promoted = wait_release(&h, "prod-8", |r| r["status"]["phase"] == "Succeeded").await;
    assert_eq!(promoted["status"]["promotedFrom"], "shop-8");
    assert!(condition_is(&promoted, "Promotable", "True"));
    assert_eq!(deploys_of(&h, "ghcr.io/acme/api:8"), 2);
    h.stop().await;
}

#[tokio::test]
async fn a_deployment_started_before_a_crash_recorded_its_id_is_adopted_not_started_again() {
    let mut h = SyncHarness::start().await;
    h.apply(environment()).await;
    let env = h.wait_ready("shop").await;
    // A Release waiting for approval (nothing deployed yet).
    let mut rel = release("v5", "ghcr.io/acme/api:5");
    rel["spec"]["approval"] = json!({"required": true});
    apply_release(&h, rel.clone()).await;
    wait_release(&h, "v5", |r| r["status"]["phase"] == "AwaitingApproval").await;
    // What a controller that crashed right after its deploy call leaves behind: the step
    // recorded `Starting` (written before the call), the deploy on the platform, no id.
    h.kill_controllers();
    let api: kube::Api<Release> = kube::Api::namespaced(h.client.clone(), "default");
    api.patch_status(
        "v5",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(json!({"status": {"steps": [{"component": "shop-api",
            "platform": "render", "state": "Starting", "startedAt": "2026-12-06T10:00:00Z"}]}})),
    )
    .await
    .unwrap();
    let service = env["status"]["objects"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == "shop-api")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let base = h.sandbox.url(Platform::Render).unwrap();
    let token = h.sandbox.token(Platform::Render).unwrap();
    let made = reqwest::Client::new()
        .post(format!("{base}/services/{service}/deploys"))
        .bearer_auth(token.expose())
        .json(&json!({"imageUrl": "ghcr.io/acme/api:5"}))
        .send()
        .await
        .unwrap();
    assert!(made.status().is_success(), "{made:?}");
    rel["metadata"]["annotations"] = json!({"tether.dev/approved-by": "ada"});
    apply_release(&h, rel).await;
    h.start_controllers().await;
    let done = wait_release(&h, "v5", |r| r["status"]["phase"] == "Succeeded").await;
    assert!(
        done["status"]["steps"][0]["deploymentId"].is_string(),
        "{done}"
    );
    assert_eq!(
        deploys_of(&h, "ghcr.io/acme/api:5"),
        1,
        "the deploy made before the crash is adopted, no second one"
    );
    // Without a recorded start there is nothing to look for: no list before a deploy.
    apply_release(&h, release("v6", "ghcr.io/acme/api:6")).await;
    wait_release(&h, "v6", |r| r["status"]["phase"] == "Succeeded").await;
    let lists = h
        .sandbox
        .exchanges()
        .iter()
        .filter(|e| e.method == "GET" && e.path.ends_with(&format!("{service}/deploys")))
        // (a deploy queued behind another is found by a list of the queued ones)
        .filter(|e| !e.query.iter().any(|(k, v)| k == "status" && v == "queued"))
        .count();
    assert_eq!(lists, 1, "only v5's adoption listed the deploys");
    h.stop().await;
}
