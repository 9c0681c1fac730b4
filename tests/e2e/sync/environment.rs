//! The Environment controller's sync, platform-independent parts, end to end (embedded API
//! + sandbox + controllers): conditions and status of an Environment, credentials errors,
//!   and no secret value anywhere visible.

use crate::support::eventually;
use crate::support::sync::{SyncHarness, WAIT, condition, condition_is};
use serde_json::{Value, json};
use tether::platform::{Platform, RenderClient, RenderServices};
use tether::sandbox::Faults;

fn manifest(name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "tether.dev/v1alpha1",
        "kind": "Environment",
        "metadata": {"name": name, "namespace": "default"},
        "spec": spec,
    })
}

#[tokio::test]
async fn an_environment_without_platform_objects_is_ready_with_nothing_to_manage() {
    let h = SyncHarness::start().await;
    h.apply(manifest("empty", json!({}))).await;
    let env = h.wait_ready("empty").await;
    assert_eq!(env["status"]["summary"], "0/0");
    assert_eq!(
        condition(&env, "Ready").unwrap()["message"],
        "0/0 platform objects ready"
    );
    assert!(condition_is(&env, "DriftDetected", "False"));
    h.stop().await;
}

/// A Render Environment with one web service. Its env var rides on the create; its custom
/// domain is one more request after it, the window the crash test kills the controller in.
fn render_env(name: &str, token_secret: &str, service: &str) -> Value {
    manifest(
        name,
        json!({
            "credentials": {"render": {"name": token_secret, "key": "token"}},
            "render": {"ownerId": "tea-e2e", "services": [
                {"name": service, "type": "web", "image": "ghcr.io/acme/api:1",
                 "envVars": [{"name": "DATABASE_URL",
                              "valueFrom": {"secretKeyRef": {"name": "app", "key": "db"}}}],
                 "customDomains": [format!("{service}.example.com")]}]},
            "interval": "1s",
        }),
    )
}

const DB_URL: &str = "postgres://app:hunter2-very-secret@db.internal/app";

#[tokio::test]
async fn rejected_credentials_stall_with_a_message_naming_the_secret_and_the_platform() {
    let h = SyncHarness::start().await;
    h.put_secret("app", &[("db", DB_URL)]).await;
    h.put_secret("wrong-token", &[("token", "rnd_not-the-sandbox-token")])
        .await;
    h.apply(render_env("web", "wrong-token", "web-api")).await;
    let env = h
        .wait_for("web", "Stalled=True", |e| {
            condition_is(e, "Stalled", "True")
        })
        .await;
    let stalled = condition(&env, "Stalled").unwrap();
    assert_eq!(stalled["reason"], "CredentialsRejected");
    let message = stalled["message"].as_str().unwrap();
    assert!(
        message.contains("render") && message.contains("\"wrong-token\""),
        "{message}"
    );
    assert!(condition_is(&env, "RenderSynced", "False"));
    assert!(
        h.metrics()
            .await
            .contains("tether_credentials_rejected_total{platform=\"render\"}")
    );

    // Fixing the Secret (the Environment is not touched) recovers through the Secret watch.
    let token = h.sandbox.token(Platform::Render).unwrap();
    h.put_secret("wrong-token", &[("token", token.expose())])
        .await;
    let env = h.wait_ready("web").await;
    assert_eq!(env["status"]["summary"], "1/1");
    assert!(
        !h.everything_visible()
            .await
            .contains("rnd_not-the-sandbox-token")
    );
    h.stop().await;
}

#[tokio::test]
async fn a_crash_between_a_create_and_its_status_write_leaves_exactly_one_platform_object() {
    let mut h = SyncHarness::start().await;
    h.put_secret("app", &[("db", DB_URL)]).await;
    // Every request after the create takes a while, so the controller is killed after the
    // platform created the service and before the status that records it is written.
    h.sandbox.set_faults(
        Platform::Render,
        Faults {
            latency_ms: 400,
            ..Faults::default()
        },
    );
    h.apply(render_env("crash", "tether-sandbox-render", "crash-api"))
        .await;
    eventually(WAIT, || async {
        h.requests(Platform::Render)
            .iter()
            .any(|r| r == "POST /services")
            .then_some(())
    })
    .await;
    h.kill_controllers();
    let env = h.environments().get("crash").await.unwrap();
    let recorded = env
        .status
        .as_ref()
        .is_some_and(|s| s.objects.iter().any(|o| o.id.is_some()));
    assert!(!recorded, "the status write came first: {:?}", env.status);

    h.sandbox.set_faults(Platform::Render, Faults::default());
    h.start_controllers().await;
    let env = h.wait_ready("crash").await;
    assert_eq!(env["status"]["summary"], "1/1");
    let creates = h
        .requests(Platform::Render)
        .iter()
        .filter(|r| *r == "POST /services")
        .count();
    assert_eq!(creates, 1, "the restarted controller adopted the service");
    let services = RenderClient::new(h.http(Platform::Render))
        .list_services("tea-e2e", None)
        .await
        .unwrap();
    assert_eq!(services.iter().filter(|s| s.name == "crash-api").count(), 1);
    h.stop().await;
}

#[tokio::test]
async fn no_secret_value_reaches_a_log_line_an_event_a_status_or_a_metric() {
    let h = SyncHarness::start().await;
    h.put_secret("app", &[("db", DB_URL)]).await;
    h.apply(render_env("scan", "tether-sandbox-render", "scan-api"))
        .await;
    h.wait_ready("scan").await;
    // Rotate the value: re-applied, visible as a new fingerprint only.
    let before = h.wait_ready("scan").await;
    let rotated = "postgres://app:rotated-hunter3-secret@db.internal/app";
    h.put_secret("app", &[("db", rotated)]).await;
    let after = h
        .wait_for("scan", "the rotated value applied", |e| {
            let fp = |env: &Value| {
                crate::support::sync::object(env, "render", "service", "scan-api")
                    .map(|o| o["secretFingerprints"].clone())
            };
            condition_is(e, "Ready", "True") && fp(e).is_some() && fp(e) != fp(&before)
        })
        .await;
    assert!(after.to_string().contains("hmac-sha256:"));
    h.delete("scan").await;

    let visible = h.everything_visible().await;
    assert!(visible.len() > 1000, "something was captured");
    for secret in [
        DB_URL,
        "hunter2-very-secret",
        rotated,
        "rotated-hunter3-secret",
    ] {
        assert!(!visible.contains(secret), "{secret:?} leaked");
    }
    for (platform, _, token) in h.sandbox.endpoints() {
        assert!(
            !visible.contains(token.expose()),
            "the {platform} token leaked"
        );
    }
    h.stop().await;
}
