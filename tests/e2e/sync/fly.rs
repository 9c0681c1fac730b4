//! The Fly driver end to end (embedded API + sandbox + controllers): an Environment's Fly
//! apps, machines, volumes and secrets created from nothing to Ready, a field change written
//! as exactly that field, scale-down and removal per deletion policy, adoption by name, drift
//! from the sandbox's dashboard edits corrected or only reported, and a rotated Secret
//! re-applied with the machines relaunched on the new secrets version — with no secret value
//! visible anywhere.

use std::time::Duration;

use crate::support::sync::{SyncHarness, condition_is, object};
use serde_json::{Value, json};
use tether::platform::{
    FlyAppSpec, FlyApps, FlyClient, FlyMachineConfig, FlyMachineSpec, Platform,
};
use tether::sandbox::{Exchange, Faults};

const SECRET_V1: &str = "fly-api-key-value-one";
const SECRET_V2: &str = "fly-api-key-value-two";

/// An app `name` with `regions` (`[("ams", 2)]`), 256 MB shared guests, one HTTP service,
/// one check, a plain env var and a secret from Secret `app-secrets` key `api-key`.
fn app(name: &str, regions: &[(&str, i32)]) -> Value {
    json!({
        "name": name,
        "image": "registry.fly.io/acme:1",
        "regions": regions.iter().map(|(r, c)| json!({"region": r, "count": c})).collect::<Vec<_>>(),
        "guest": {"cpuKind": "shared", "cpus": 1, "memoryMb": 256},
        "services": [{
            "internalPort": 8080,
            "ports": [{"port": 80, "handlers": ["http"], "forceHttps": true},
                      {"port": 443, "handlers": ["tls", "http"]}],
            "autostop": true,
            "minMachinesRunning": 1
        }],
        "checks": [{"name": "alive", "type": "http", "port": 8080, "path": "/healthz",
                    "interval": "10s", "timeout": "2s"}],
        "env": {"LOG_LEVEL": "info"},
        "secrets": [{"name": "API_KEY", "secretKeyRef": {"name": "app-secrets", "key": "api-key"}}]
    })
}

fn environment(name: &str, apps: Vec<Value>, extra: Value) -> Value {
    let mut spec = json!({
        "credentials": {"fly": {"name": "tether-sandbox-fly", "key": "token"}},
        "interval": "1s",
        "fly": {"org": "acme", "apps": apps},
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

async fn start() -> SyncHarness {
    let h = SyncHarness::start().await;
    h.put_secret("app-secrets", &[("api-key", SECRET_V1)]).await;
    h
}

/// A Fly client of the sandbox, as a person with the dashboard's token would use it.
fn fly(h: &SyncHarness) -> FlyClient {
    FlyClient::new(h.http(Platform::Fly))
}

fn fly_exchanges(h: &SyncHarness) -> Vec<Exchange> {
    h.sandbox
        .exchanges()
        .into_iter()
        .filter(|e| e.platform == Platform::Fly)
        .collect()
}

fn writes(exchanges: &[Exchange]) -> Vec<String> {
    exchanges
        .iter()
        .filter(|e| e.method != "GET")
        .map(|e| format!("{} {}", e.method, e.path))
        .collect()
}

/// Machine updates (`POST /v1/apps/{app}/machines/{id}`) among `exchanges`.
fn machine_updates<'a>(exchanges: &'a [Exchange], app: &str) -> Vec<&'a Exchange> {
    let prefix = format!("/v1/apps/{app}/machines/");
    exchanges
        .iter()
        .filter(|e| {
            e.method == "POST"
                && e.path
                    .strip_prefix(&prefix)
                    .is_some_and(|rest| !rest.contains('/'))
        })
        .collect()
}

/// Waits for an event about Environment `name` with `reason` whose note contains `text`.
async fn wait_event(h: &SyncHarness, name: &str, reason: &str, text: &str) {
    crate::support::eventually(crate::support::sync::WAIT, || async {
        h.events(name)
            .await
            .iter()
            .any(|(_, r, n)| r == reason && n.contains(text))
            .then_some(())
    })
    .await;
}

fn machine_names(machines: &[tether::platform::FlyMachine]) -> Vec<String> {
    let mut names: Vec<String> = machines.iter().map(|m| m.name.clone()).collect();
    names.sort();
    names
}

#[tokio::test]
async fn from_nothing_to_ready_then_a_field_change_writes_exactly_that_field() {
    let h = start().await;
    h.apply(environment(
        "edge",
        vec![app("edge", &[("ams", 2), ("iad", 1)])],
        json!({}),
    ))
    .await;
    let env = h.wait_ready("edge").await;
    assert_eq!(env["status"]["summary"], "4/4");
    let app_status = object(&env, "fly", "app", "edge").unwrap();
    assert_eq!(app_status["url"], "https://edge.fly.dev");
    assert!(
        app_status["secretFingerprints"]["secrets.API_KEY"]
            .as_str()
            .unwrap()
            .starts_with("hmac-sha256:")
    );
    let m = object(&env, "fly", "machine", "edge-ams-1").unwrap();
    assert_eq!(
        (m["state"].as_str(), m["ready"].as_bool()),
        (Some("started"), Some(true))
    );

    let client = fly(&h);
    let machines = client.list_machines("edge").await.unwrap();
    assert_eq!(
        machine_names(&machines),
        ["edge-ams-0", "edge-ams-1", "edge-iad-0"]
    );
    let config = &machines[0].config;
    assert_eq!(config.guest.memory_mb, 256);
    assert_eq!(config.services[0].ports.len(), 2);
    assert_eq!(config.checks["alive"].path.as_deref(), Some("/healthz"));
    assert_eq!(config.env["LOG_LEVEL"], "info");
    let secrets = client.list_secrets("edge").await.unwrap();
    assert_eq!(secrets.len(), 1);
    let created = fly_exchanges(&h);
    let creates = created
        .iter()
        .filter(|e| e.method == "POST" && e.path == "/v1/apps/edge/machines")
        .count();
    assert_eq!(creates, 3);

    // Steady state: resyncs read, and write nothing.
    let before = fly_exchanges(&h).len();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let steady = fly_exchanges(&h)[before..].to_vec();
    assert!(
        steady.iter().any(|e| e.method == "GET"),
        "the resync observed the platform"
    );
    assert!(writes(&steady).is_empty(), "{:?}", writes(&steady));

    // One field changes: every machine is updated with exactly that change.
    let before = fly_exchanges(&h).len();
    let mut changed = app("edge", &[("ams", 2), ("iad", 1)]);
    changed["guest"]["memoryMb"] = json!(512);
    h.apply(environment("edge", vec![changed], json!({}))).await;
    h.wait_for("edge", "the memory change applied", |env| {
        env["status"]["observedGeneration"] == env["metadata"]["generation"]
            && condition_is(env, "Ready", "True")
    })
    .await;
    let after = fly_exchanges(&h)[before..].to_vec();
    let updates = machine_updates(&after, "edge");
    assert_eq!(updates.len(), 3, "{:?}", writes(&after));
    for update in &updates {
        let body = update.request_body.as_ref().unwrap();
        let config = &body["config"];
        assert_eq!(config["guest"]["memory_mb"], 512);
        assert_eq!(config["image"], "registry.fly.io/acme:1");
        assert_eq!(config["env"]["LOG_LEVEL"], "info");
        assert!(body["current_version"].is_string());
    }
    assert!(
        writes(&after).iter().all(|w| w.contains("/machines/")),
        "nothing but the machines was written: {:?}",
        writes(&after)
    );
    for m in client.list_machines("edge").await.unwrap() {
        assert_eq!(m.config.guest.memory_mb, 512);
    }
    wait_event(&h, "edge", "Updated", "guest.memoryMb").await;
    crate::contract::Contract::load(Platform::Fly).assert_all(&h.sandbox.exchanges());
    h.stop().await;
}

#[tokio::test]
async fn scaling_down_deletes_machines_and_removed_apps_go_per_deletion_policy() {
    let h = start().await;
    let mut with_volume = app("db", &[("ams", 1), ("iad", 1)]);
    with_volume["volumes"] = json!([{"name": "data", "sizeGb": 1, "mountPath": "/data"}]);
    h.apply(environment(
        "scale",
        vec![app("web", &[("ams", 3)]), with_volume.clone()],
        json!({}),
    ))
    .await;
    let env = h.wait_ready("scale").await;
    let client = fly(&h);
    let volumes = client.list_volumes("db").await.unwrap();
    assert_eq!(volumes.len(), 2);
    assert!(volumes.iter().all(|v| v.attached_machine_id.is_some()));
    let db_ams = client
        .list_machines("db")
        .await
        .unwrap()
        .into_iter()
        .find(|m| m.name == "db-ams-0")
        .unwrap();
    assert_eq!(db_ams.config.mounts[0].path, "/data");
    assert_eq!(
        object(&env, "fly", "volume", "db/ams/data").unwrap()["id"],
        db_ams.config.mounts[0].volume.as_str()
    );

    // Scale web down to one machine and drop db's iad region: the highest indexes go,
    // and iad's volume is kept (stateful, default policy).
    with_volume["regions"] = json!([{"region": "ams", "count": 1}]);
    h.apply(environment(
        "scale",
        vec![app("web", &[("ams", 1)]), with_volume],
        json!({}),
    ))
    .await;
    let env = h.wait_ready("scale").await;
    assert_eq!(
        machine_names(&client.list_machines("web").await.unwrap()),
        ["web-ams-0"]
    );
    assert_eq!(
        machine_names(&client.list_machines("db").await.unwrap()),
        ["db-ams-0"]
    );
    assert_eq!(
        client.list_volumes("db").await.unwrap().len(),
        2,
        "orphaned, not deleted"
    );
    assert!(object(&env, "fly", "machine", "web-ams-2").is_none());
    assert!(object(&env, "fly", "volume", "db/iad/data").is_none());
    for (reason, what) in [
        ("Deleted", "web-ams-2"),
        ("Deleted", "web-ams-1"),
        ("Orphaned", "db/iad/data"),
    ] {
        wait_event(&h, "scale", reason, what).await;
    }

    // Remove both apps: web is deleted; db keeps its volume, so the app stays too and only
    // its machine goes.
    h.apply(environment("scale", vec![], json!({}))).await;
    h.wait_ready("scale").await;
    let apps: Vec<String> = client
        .list_apps("acme")
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.name)
        .collect();
    assert_eq!(apps, ["db"]);
    assert!(client.list_machines("db").await.unwrap().is_empty());
    assert_eq!(client.list_volumes("db").await.unwrap().len(), 2);

    // Under deletionPolicy Delete a removed app goes with its volumes.
    let mut again = app("vol", &[("ams", 1)]);
    again["volumes"] = json!([{"name": "data", "sizeGb": 1, "mountPath": "/data"}]);
    h.apply(environment(
        "scale",
        vec![again],
        json!({"deletionPolicy": "Delete"}),
    ))
    .await;
    h.wait_ready("scale").await;
    assert_eq!(client.list_volumes("vol").await.unwrap().len(), 1);
    h.delete("scale").await;
    let apps: Vec<String> = client
        .list_apps("acme")
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.name)
        .collect();
    assert_eq!(apps, ["db"], "the Environment's deletion removed app vol");
    crate::contract::Contract::load(Platform::Fly).assert_all(&h.sandbox.exchanges());
    h.stop().await;
}

#[tokio::test]
async fn an_app_and_machine_made_by_hand_are_adopted_by_name() {
    let h = start().await;
    let client = fly(&h);
    let made = client
        .ensure_app(&FlyAppSpec {
            name: "hand".into(),
            org_slug: "acme".into(),
        })
        .await
        .unwrap()
        .object;
    let machine = client
        .ensure_machine(
            "hand",
            &FlyMachineSpec {
                name: "hand-ams-0".into(),
                region: Some("ams".into()),
                config: FlyMachineConfig {
                    image: "registry.fly.io/acme:0".into(),
                    ..FlyMachineConfig::default()
                },
                min_secrets_version: None,
            },
        )
        .await
        .unwrap()
        .object;
    let before = fly_exchanges(&h).len();
    h.apply(environment(
        "adopt",
        vec![app("hand", &[("ams", 1)])],
        json!({}),
    ))
    .await;
    let env = h.wait_ready("adopt").await;
    assert_eq!(
        object(&env, "fly", "app", "hand").unwrap()["id"],
        made.id.as_str()
    );
    assert_eq!(
        object(&env, "fly", "machine", "hand-ams-0").unwrap()["id"],
        machine.id.as_str()
    );
    let after = fly_exchanges(&h)[before..].to_vec();
    let written = writes(&after);
    assert!(
        !written
            .iter()
            .any(|w| w == "POST /v1/apps" || w == "POST /v1/apps/hand/machines"),
        "nothing was created twice: {written:?}"
    );
    let machines = client.list_machines("hand").await.unwrap();
    assert_eq!(machines.len(), 1);
    assert_eq!(
        machines[0].config.image, "registry.fly.io/acme:1",
        "brought to the spec"
    );
    wait_event(&h, "adopt", "Adopted", "hand-ams-0").await;
    crate::contract::Contract::load(Platform::Fly).assert_all(&h.sandbox.exchanges());
    h.stop().await;
}

#[tokio::test]
async fn dashboard_drift_is_corrected_under_correct_and_only_reported_under_report() {
    let h = start().await;
    h.apply(environment(
        "drift",
        vec![app("fixed", &[("ams", 1)])],
        json!({"driftPolicy": "Correct"}),
    ))
    .await;
    h.wait_ready("drift").await;
    let client = fly(&h);
    h.edit(
        Platform::Fly,
        "machine",
        "fixed-ams-0",
        "config.guest.memory_mb",
        json!(1024),
    )
    .await;
    h.edit(
        Platform::Fly,
        "machine",
        "fixed-ams-0",
        "config.env.LOG_LEVEL",
        json!("debug"),
    )
    .await;
    crate::support::eventually(crate::support::sync::WAIT, || async {
        let m = client.list_machines("fixed").await.ok()?.pop()?;
        (m.config.guest.memory_mb == 256 && m.config.env["LOG_LEVEL"] == "info").then_some(())
    })
    .await;
    wait_event(&h, "drift", "DriftCorrected", "guest.memoryMb").await;

    // Report: the edit stays, the status lists it and DriftDetected is True.
    h.apply(environment(
        "drift",
        vec![app("fixed", &[("ams", 1)])],
        json!({"driftPolicy": "Report"}),
    ))
    .await;
    h.wait_ready("drift").await;
    h.edit(
        Platform::Fly,
        "machine",
        "fixed-ams-0",
        "config.guest.memory_mb",
        json!(2048),
    )
    .await;
    let env = h
        .wait_for("drift", "drift reported", |env| {
            condition_is(env, "DriftDetected", "True")
        })
        .await;
    let m = object(&env, "fly", "machine", "fixed-ams-0").unwrap();
    assert_eq!(m["drift"], json!(["guest.memoryMb"]));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let machine = client.list_machines("fixed").await.unwrap().pop().unwrap();
    assert_eq!(
        machine.config.guest.memory_mb, 2048,
        "reported, not reverted"
    );

    // A secret unset in the dashboard is drift on the app too.
    h.edit(
        Platform::Fly,
        "app",
        "fixed",
        "secrets.API_KEY",
        Value::Null,
    )
    .await;
    let env = h
        .wait_for("drift", "secret drift reported", |env| {
            object(env, "fly", "app", "fixed")
                .is_some_and(|a| a["drift"] == json!(["secrets.API_KEY"]))
        })
        .await;
    assert!(condition_is(&env, "DriftDetected", "True"));
    assert!(client.list_secrets("fixed").await.unwrap().is_empty());
    crate::contract::Contract::load(Platform::Fly).assert_all(&h.sandbox.exchanges());
    h.stop().await;
}

#[tokio::test]
async fn a_rotated_secret_is_set_again_and_the_machines_relaunch_on_its_version() {
    let h = start().await;
    h.apply(environment(
        "rotate",
        vec![app("rot", &[("ams", 1), ("iad", 1)])],
        json!({}),
    ))
    .await;
    let env = h.wait_ready("rotate").await;
    let fingerprint =
        object(&env, "fly", "app", "rot").unwrap()["secretFingerprints"]["secrets.API_KEY"].clone();
    let before = fly_exchanges(&h).len();
    h.put_secret("app-secrets", &[("api-key", SECRET_V2)]).await;
    let env = h
        .wait_for("rotate", "the new fingerprint", |env| {
            object(env, "fly", "app", "rot")
                .is_some_and(|a| a["secretFingerprints"]["secrets.API_KEY"] != fingerprint)
                && condition_is(env, "Ready", "True")
        })
        .await;
    assert!(object(&env, "fly", "app", "rot").unwrap()["drift"].is_null());
    let after = fly_exchanges(&h)[before..].to_vec();
    let set = after
        .iter()
        .find(|e| e.method == "POST" && e.path == "/v1/apps/rot/secrets")
        .expect("the secret was set again");
    assert_eq!(
        set.request_body.as_ref().unwrap()["values"]["API_KEY"],
        SECRET_V2
    );
    let version = set.response_body.as_ref().unwrap()["version"].clone();
    let updates = machine_updates(&after, "rot");
    assert_eq!(updates.len(), 2);
    for update in updates {
        assert_eq!(
            update.request_body.as_ref().unwrap()["min_secrets_version"],
            version
        );
    }
    let visible = h.everything_visible().await;
    for value in [SECRET_V1, SECRET_V2] {
        assert!(!visible.contains(value), "a secret value is visible");
    }
    crate::contract::Contract::load(Platform::Fly).assert_all(&h.sandbox.exchanges());
    h.stop().await;
}

#[tokio::test]
async fn a_crash_after_creating_a_volume_leaves_exactly_one_volume_machine_and_app() {
    let mut h = start().await;
    // Every request takes a while, so the controller is killed soon after Fly created the
    // volume (which Fly does not deduplicate).
    h.sandbox.set_faults(
        Platform::Fly,
        Faults {
            latency_ms: 300,
            ..Faults::default()
        },
    );
    let mut spec = app("crash", &[("ams", 1)]);
    spec["volumes"] = json!([{"name": "data", "sizeGb": 1, "mountPath": "/data"}]);
    h.apply(environment("crash", vec![spec], json!({}))).await;
    crate::support::eventually(crate::support::sync::WAIT, || async {
        h.requests(Platform::Fly)
            .iter()
            .any(|r| r == "POST /v1/apps/crash/volumes")
            .then_some(())
    })
    .await;
    // Status records the volume right after its create, so the kill may land on either side
    // of that write: either way the restarted controller must find the one volume.
    h.kill_controllers();

    h.sandbox.set_faults(Platform::Fly, Faults::default());
    h.start_controllers().await;
    let env = h.wait_ready("crash").await;
    assert_eq!(env["status"]["summary"], "3/3");
    let requests = h.requests(Platform::Fly);
    let count = |what: &str| requests.iter().filter(|r| *r == what).count();
    assert_eq!(count("POST /v1/apps"), 1);
    assert_eq!(
        count("POST /v1/apps/crash/volumes"),
        1,
        "the volume was adopted"
    );
    let client = fly(&h);
    let volumes = client.list_volumes("crash").await.unwrap();
    assert_eq!(volumes.len(), 1);
    let machines = client.list_machines("crash").await.unwrap();
    assert_eq!(machine_names(&machines), ["crash-ams-0"]);
    assert_eq!(machines[0].config.mounts[0].volume, volumes[0].id);
    crate::contract::Contract::load(Platform::Fly).assert_all(&h.sandbox.exchanges());
    h.stop().await;
}

#[tokio::test]
async fn a_removed_secret_is_deleted_and_the_machines_relaunch_on_the_version_without_it() {
    let h = start().await;
    h.put_secret(
        "app-secrets",
        &[("api-key", SECRET_V1), ("other", SECRET_V2)],
    )
    .await;
    let mut spec = app("unset", &[("ams", 1)]);
    spec["secrets"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "OTHER", "secretKeyRef": {"name": "app-secrets", "key": "other"}}));
    h.apply(environment("unset", vec![spec.clone()], json!({})))
        .await;
    h.wait_ready("unset").await;
    let before = fly_exchanges(&h).len();
    spec["secrets"].as_array_mut().unwrap().pop();
    h.apply(environment("unset", vec![spec], json!({}))).await;
    h.wait_for("unset", "OTHER gone from status", |env| {
        condition_is(env, "Ready", "True")
            && env["status"]["observedGeneration"] == env["metadata"]["generation"]
            && object(env, "fly", "app", "unset")
                .is_some_and(|a| a["secretFingerprints"]["secrets.OTHER"].is_null())
    })
    .await;
    let after = fly_exchanges(&h)[before..].to_vec();
    let deleted = after
        .iter()
        .find(|e| e.method == "DELETE" && e.path == "/v1/apps/unset/secrets/OTHER")
        .expect("the secret was deleted");
    let version = deleted.response_body.as_ref().unwrap()["version"].clone();
    assert!(version.is_u64(), "{version}");
    let updates = machine_updates(&after, "unset");
    assert_eq!(updates.len(), 1);
    assert_eq!(
        updates[0].request_body.as_ref().unwrap()["min_secrets_version"],
        version,
        "the machine must not start before the deletion reached it"
    );
    h.stop().await;
}
