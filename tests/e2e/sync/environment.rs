//! The Environment controller's sync, platform-independent parts, end to end (embedded API
//! + sandbox + controllers): conditions and status of an Environment, credentials errors,
//!   and no secret value anywhere visible.

use crate::support::eventually;
use crate::support::sync::{SyncHarness, WAIT, condition, condition_is};
use serde_json::{Value, json};
use tether::platform::{Platform, RenderClient, RenderServices, VercelClient, VercelProjects};
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

/// A Secret no API server would admit (one value not base64), as an API server that skipped
/// validation stores it: the Environment that references it stalls, naming the Secret and
/// the key; no value of the Secret reaches a log line (at debug level, kube's included), an
/// event, a status or a metric.
#[tokio::test]
async fn an_undecodable_secret_stalls_its_environment_naming_the_key_and_nothing_leaks() {
    use tether::localapi::store::{FileStore, Store, StoreOp};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let leaked = "sk_live_51HleakedLeaked*value";
    let encoded_db = "cG9zdGdyZXM6Ly9hcHA6c2VjcmV0LWRiLXZhbHVlQGRiL2FwcA==";
    {
        let store = FileStore::open(&path).unwrap();
        let secret = json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "pay", "namespace": "default", "uid": "u-pay",
                "resourceVersion": "3", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "type": "Opaque",
            "data": {"db": encoded_db, "stripe-key": leaked},
        });
        let json = serde_json::to_vec(&secret).unwrap();
        store
            .commit(
                &[StoreOp::Put {
                    key: "secrets\u{0}default/pay",
                    json: &json,
                }],
                3,
            )
            .unwrap();
    }
    let h = crate::support::sync::SyncHarness::start_on(
        crate::support::TestCluster::builder().file_store(&path),
        crate::support::sync::TIME_SCALE,
    )
    .await;
    let mut env = render_env("pay", "tether-sandbox-render", "pay-api");
    env["spec"]["render"]["services"][0]["envVars"][0]["valueFrom"]["secretKeyRef"]["name"] =
        json!("pay");
    h.apply(env).await;
    let stalled = h
        .wait_for("pay", "stalled on the Secret", |e| {
            condition_is(e, "Stalled", "True")
        })
        .await;
    let stall = condition(&stalled, "Stalled").unwrap();
    assert_eq!(stall["reason"], "InvalidSecret");
    assert_eq!(
        stall["message"],
        r#"failed to read a referenced Secret: Secret default/pay cannot be decoded: data["stripe-key"] is not valid base64"#
    );
    assert!(!condition_is(&stalled, "Ready", "True"));

    let visible = h.everything_visible().await;
    assert!(visible.contains("pay"), "something was captured");
    for secret in [leaked, "sk_live_51Hleaked", encoded_db, "secret-db-value"] {
        assert!(!visible.contains(secret), "{secret:?} leaked");
    }
    h.stop().await;
}

/// A referenced Secret deleted and restored: the Environment stalls meanwhile, its status
/// keeps every object (ids, fingerprints), and nothing is written to the platform, neither
/// during the stall nor after it (the restored value is the one already applied).
#[tokio::test]
async fn a_stall_on_a_deleted_secret_keeps_status_and_restoring_it_writes_nothing() {
    use k8s_openapi::api::core::v1::Secret;
    use kube::api::{Api, DeleteParams};
    let h = SyncHarness::start().await;
    h.put_secret("app", &[("db", DB_URL)]).await;
    h.apply(render_env("keep", "tether-sandbox-render", "keep-api"))
        .await;
    let ready = h.wait_ready("keep").await;
    // What status knows of each object, without the time it was last read.
    let known = |objects: &Value| -> Value {
        let mut objects = objects.clone();
        for o in objects.as_array_mut().into_iter().flatten() {
            o.as_object_mut().map(|o| o.remove("lastSync"));
        }
        objects
    };
    let objects = known(&ready["status"]["objects"]);
    assert!(objects.as_array().is_some_and(|o| !o.is_empty()), "{ready}");
    let writes = || {
        h.requests(Platform::Render)
            .into_iter()
            .filter(|r| !r.starts_with("GET "))
            .collect::<Vec<_>>()
    };
    let before = writes();

    Api::<Secret>::namespaced(h.client.clone(), "default")
        .delete("app", &DeleteParams::default())
        .await
        .unwrap();
    let stalled = h
        .wait_for("keep", "stalled on the missing Secret", |e| {
            condition_is(e, "Stalled", "True")
        })
        .await;
    assert_eq!(
        known(&stalled["status"]["objects"]),
        objects,
        "the stall kept status"
    );

    h.put_secret("app", &[("db", DB_URL)]).await;
    h.wait_for("keep", "ready again", |e| {
        condition_is(e, "Ready", "True") && condition_is(e, "Stalled", "False")
    })
    .await;
    // A few resyncs (interval 1s) after the recovery.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let after = h.environments().get("keep").await.unwrap();
    let after = serde_json::to_value(&after).unwrap();
    assert_eq!(known(&after["status"]["objects"]), objects);
    assert_eq!(writes(), before, "no platform write after the stall");
    assert!(
        !h.events("keep")
            .await
            .iter()
            .any(|(_, reason, _)| reason == "Adopted"),
        "nothing is adopted again"
    );
    h.stop().await;
}

/// Deleting an Environment whose credentials Secret is gone: with nothing created it goes at
/// once; with platform objects it stays, `Stalled` (`CleanupBlocked`) saying how to let it go,
/// and `deletionPolicy: Orphan` lets it go with the objects left in place.
#[tokio::test]
async fn an_environment_without_credentials_deletes_at_once_when_nothing_was_created() {
    use k8s_openapi::api::core::v1::Secret;
    use kube::api::{Api, DeleteParams, Patch, PatchParams};
    let h = SyncHarness::start().await;
    h.put_secret("app", &[("db", DB_URL)]).await;

    // Nothing created: the missing credentials cannot hold the deletion.
    h.apply(render_env("never", "no-such-token", "never-api"))
        .await;
    h.wait_for("never", "stalled on the missing credentials", |e| {
        condition_is(e, "Stalled", "True")
    })
    .await;
    tokio::time::timeout(std::time::Duration::from_secs(10), h.delete("never"))
        .await
        .expect("deleted at once");

    // Objects created, then the credentials deleted: the Environment stays and says why.
    let token = h.sandbox.token(Platform::Render).unwrap();
    h.put_secret("render-token", &[("token", token.expose())])
        .await;
    h.apply(render_env("made", "render-token", "made-api"))
        .await;
    h.wait_ready("made").await;
    Api::<Secret>::namespaced(h.client.clone(), "default")
        .delete("render-token", &DeleteParams::default())
        .await
        .unwrap();
    h.environments()
        .delete("made", &DeleteParams::default())
        .await
        .unwrap();
    let blocked = h
        .wait_for("made", "cleanup blocked", |e| {
            condition(e, "Stalled").is_some_and(|c| c["reason"] == "CleanupBlocked")
        })
        .await;
    let message = condition(&blocked, "Stalled").unwrap()["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        message.contains("\"render-token\"") && message.contains("deletionPolicy: Orphan"),
        "{message}"
    );
    assert!(
        blocked["status"]["objects"]
            .as_array()
            .is_some_and(|o| !o.is_empty()),
        "status keeps the objects while blocked"
    );

    h.environments()
        .patch(
            "made",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"deletionPolicy": "Orphan"}})),
        )
        .await
        .unwrap();
    eventually(WAIT, || async {
        h.environments()
            .get_opt("made")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    let services = RenderClient::new(h.http(Platform::Render))
        .list_services("tea-e2e", None)
        .await
        .unwrap();
    assert!(
        services.iter().any(|s| s.name == "made-api"),
        "orphaned, not deleted"
    );
    h.stop().await;
}

#[tokio::test]
async fn a_second_environment_naming_a_managed_object_stalls_naming_the_first_and_its_deletion_leaves_it()
 {
    let h = SyncHarness::start().await;
    h.put_secret("app", &[("db", DB_URL)]).await;
    h.apply(render_env("first", "tether-sandbox-render", "shared-api"))
        .await;
    h.wait_ready("first").await;
    let writes = |h: &SyncHarness| {
        h.requests(Platform::Render)
            .into_iter()
            .filter(|r| !r.starts_with("GET "))
            .count()
    };
    let before = writes(&h);

    h.apply(render_env("second", "tether-sandbox-render", "shared-api"))
        .await;
    let env = h
        .wait_for("second", "Stalled=True", |e| {
            condition_is(e, "Stalled", "True")
        })
        .await;
    let stalled = condition(&env, "Stalled").unwrap();
    assert_eq!(stalled["reason"], "ObjectManagedElsewhere");
    let message = stalled["message"].as_str().unwrap();
    assert!(
        message.contains(r#"render service "shared-api""#)
            && message.contains("managed by Environment default/first"),
        "{message}"
    );
    assert!(
        env["status"]["objects"]
            .as_array()
            .is_none_or(Vec::is_empty),
        "nothing adopted: {env}"
    );
    assert_eq!(writes(&h), before, "the second Environment wrote nothing");

    h.delete("second").await;
    let services = RenderClient::new(h.http(Platform::Render))
        .list_services("tea-e2e", None)
        .await
        .unwrap();
    assert_eq!(
        services.iter().filter(|s| s.name == "shared-api").count(),
        1,
        "deleting the second Environment left the first's service"
    );
    assert_eq!(writes(&h), before);
    let first = h.wait_ready("first").await;
    assert_eq!(first["status"]["summary"], "1/1");
    h.stop().await;
}

#[tokio::test]
async fn an_object_another_environment_lets_go_is_adopted_at_the_next_interval() {
    let h = SyncHarness::start().await;
    h.put_secret("app", &[("db", DB_URL)]).await;
    let mut first = render_env("first", "tether-sandbox-render", "moving-api");
    first["spec"]["deletionPolicy"] = json!("Orphan");
    h.apply(first).await;
    h.wait_ready("first").await;
    h.apply(render_env("second", "tether-sandbox-render", "moving-api"))
        .await;
    h.wait_for("second", "Stalled=True", |e| {
        condition(e, "Stalled").is_some_and(|c| c["reason"] == "ObjectManagedElsewhere")
    })
    .await;
    // The first Environment goes and leaves the service (Orphan): the second takes it over.
    h.delete("first").await;
    let env = h.wait_ready("second").await;
    assert_eq!(env["status"]["summary"], "1/1");
    let creates = h
        .requests(Platform::Render)
        .iter()
        .filter(|r| *r == "POST /services")
        .count();
    assert_eq!(creates, 1, "adopted, not created again");
    h.stop().await;
}

#[tokio::test]
async fn a_change_to_one_platforms_part_leaves_drift_reported_on_another_as_it_is() {
    let h = SyncHarness::start().await;
    let spec = |build: &str| {
        json!({
            "credentials": {
                "render": {"name": "tether-sandbox-render", "key": "token"},
                "vercel": {"name": "tether-sandbox-vercel"},
            },
            "render": {"ownerId": "tea-e2e", "services": [
                {"name": "split-api", "type": "web", "image": "ghcr.io/acme/api:1",
                 "startCommand": "./serve"}]},
            "vercel": {"teamId": "team_sandbox", "projects": [
                {"name": "split-site", "framework": "nextjs", "buildCommand": build}]},
            "driftPolicy": "Report",
            "interval": "1s",
        })
    };
    h.apply(manifest("split", spec("pnpm build"))).await;
    h.wait_ready("split").await;
    // An out-of-band edit on Render is reported, not corrected (driftPolicy: Report).
    h.edit(
        Platform::Render,
        "service",
        "split-api",
        "serviceDetails.envSpecificDetails.dockerCommand",
        json!("./by-hand"),
    )
    .await;
    h.wait_for("split", "Render drift reported", |env| {
        condition_is(env, "DriftDetected", "True")
    })
    .await;
    // A change to the Vercel part is applied; the Render part did not change, so what differs
    // there is still drift: reported, not overwritten.
    h.apply(manifest("split", spec("pnpm build:prod"))).await;
    let env = h.wait_ready("split").await;
    let vercel = VercelClient::new(h.http(Platform::Vercel), Some("team_sandbox".into()));
    assert_eq!(
        vercel
            .get_project("split-site")
            .await
            .unwrap()
            .build_command
            .as_deref(),
        Some("pnpm build:prod")
    );
    assert!(condition_is(&env, "DriftDetected", "True"), "{env}");
    let render = RenderClient::new(h.http(Platform::Render));
    let service = render
        .list_services("tea-e2e", Some("split-api"))
        .await
        .unwrap();
    assert_eq!(service[0].start_command.as_deref(), Some("./by-hand"));
    h.stop().await;
}
