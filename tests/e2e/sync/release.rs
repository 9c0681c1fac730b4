//! A Release rolled out through the platforms (embedded API + sandbox + controllers): its
//! deployment ids in status, Ready only once every component is live, a failed deploy
//! stopping it with the platform's reason.

use serde_json::{Value, json};
use tether::api::Release;
use tether::platform::Platform;
use tether::sandbox::Faults;

use crate::support::eventually;
use crate::support::sync::{SyncHarness, WAIT, condition, condition_is};

fn environment() -> Value {
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

fn release(name: &str, image: &str) -> Value {
    json!({
        "apiVersion": "tether.dev/v1alpha1", "kind": "Release",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"environmentRef": {"name": "shop"}, "version": name,
            "artifacts": [{"component": "shop-api", "platform": "render", "image": image}]},
    })
}

async fn apply_release(h: &SyncHarness, manifest: Value) {
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

async fn wait_release(h: &SyncHarness, name: &str, check: impl Fn(&Value) -> bool) -> Value {
    let api: kube::Api<Release> = kube::Api::namespaced(h.client.clone(), "default");
    eventually(WAIT, || async {
        let rel = serde_json::to_value(api.get(name).await.ok()?).ok()?;
        check(&rel).then_some(rel)
    })
    .await
}

fn deploys_of(h: &SyncHarness, image: &str) -> usize {
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
        "tether_release_total{result=\"succeeded\"} 1",
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
