//! The three controllers end to end against the in-process API: finalizers, conditions and
//! `observedGeneration`, `Stalled` on a missing Secret/ConfigMap/Environment (naming it,
//! never a Secret value), recovery through the watch on the referenced object, cleanup on
//! deletion, `/metrics` counters, a malformed object not blocking the others, and the label
//! selector.

use std::net::SocketAddr;
use std::time::Duration;

use crate::support::{TestCluster, eventually};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::api::events::v1::Event as K8sEvent;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use tether::api::{Environment, Migration, Release};
use tether::controller::{ControllerConfig, Health, server};
use tether::platform::{Platform, Token};
use tether::sandbox::SandboxConfig;
use tether::telemetry::MetricsRegistry;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(20);
const SECRET_VALUE: &str = "s3cr3t-t0ken-never-shown";

/// Controllers running in-process against one cluster, with their HTTP server.
struct Running {
    shutdown: CancellationToken,
    metrics_addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    async fn start(client: Client, config: ControllerConfig) -> Running {
        tether::telemetry::init_tracing(
            &std::env::var("TEST_LOG").unwrap_or_else(|_| "off".into()),
            tether::telemetry::LogFormat::Text,
        );
        let shutdown = CancellationToken::new();
        let metrics = MetricsRegistry::new();
        let health = Health::new();
        let (metrics_addr, serve) = server::bind(
            "127.0.0.1:0".parse().unwrap(),
            metrics.clone(),
            health.clone(),
            shutdown.clone(),
        )
        .await
        .unwrap();
        let token = shutdown.clone();
        let task = tokio::spawn(async move {
            let server = tokio::spawn(serve);
            tether::controller::run(client, config, metrics, health, token)
                .await
                .unwrap();
            server.await.unwrap().unwrap();
        });
        Running {
            shutdown,
            metrics_addr,
            task,
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("controllers stop within the grace period")
            .unwrap();
    }

    async fn get(&self, path: &str) -> (u16, String) {
        http_get(self.metrics_addr, path).await
    }
}

fn fast_config() -> ControllerConfig {
    ControllerConfig {
        min_retry: Duration::from_millis(100),
        max_retry: Duration::from_secs(1),
        ..ControllerConfig::default()
    }
}

async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    (response[9..12].parse().unwrap(), response)
}

fn counter(metrics: &str, line_prefix: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(line_prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

fn secret(name: &str, key: &str, value: &str) -> Secret {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "data": {key: k8s_openapi::ByteString(value.as_bytes().to_vec())},
    }))
    .unwrap()
}

fn environment(name: &str, spec: Value) -> Environment {
    serde_json::from_value(json!({
        "apiVersion": "tether.dev/v1alpha1", "kind": "Environment",
        "metadata": {"name": name}, "spec": spec,
    }))
    .unwrap()
}

fn render_environment(name: &str, token_secret: &str) -> Environment {
    environment(
        name,
        json!({
            "credentials": {"render": {"name": token_secret, "key": "token"}},
            "render": {"ownerId": "own-1", "services": [
                {"name": "api", "type": "web", "image": "registry.example/api:1"}]},
        }),
    )
}

fn condition(status: &Value, type_: &str) -> Option<Value> {
    status["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .cloned()
}

/// Waits until the object's status has condition `type_` with `status`, returns the status.
async fn wait_for_condition<K>(api: &Api<K>, name: &str, type_: &str, status: &str) -> Value
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    eventually(WAIT, || async {
        let obj = api.get(name).await.ok()?;
        let value = serde_json::to_value(&obj).ok()?;
        let st = value.get("status")?.clone();
        (condition(&st, type_)?["status"] == status).then_some(value)
    })
    .await
}

async fn wait_until_gone<K>(api: &Api<K>, name: &str)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    eventually(WAIT, || async {
        matches!(api.get_opt(name).await, Ok(None)).then_some(())
    })
    .await
}

/// `(reason, note, published more than once)` of every event about object `name`.
async fn event_reasons(client: &Client, name: &str) -> Vec<(String, String, bool)> {
    let events: Api<K8sEvent> = Api::default_namespaced(client.clone());
    events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .map(|e| {
            (
                e.reason.unwrap_or_default(),
                e.note.unwrap_or_default(),
                e.series.is_some(),
            )
        })
        .collect()
}

#[tokio::test]
async fn an_environment_stalls_on_a_missing_secret_recovers_when_it_appears_and_is_cleaned_up() {
    tether::install_crypto_provider();
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    // The Render sandbox accepts the test's token, so the value the test scans for is the
    // real credential the controller uses.
    let shutdown = CancellationToken::new();
    let sandbox = tether::sandbox::start(
        SandboxConfig {
            time_scale: 200.0,
            platforms: vec![Platform::Render],
            tokens: [(Platform::Render, Token::new(SECRET_VALUE))].into(),
            ..SandboxConfig::default()
        },
        shutdown.clone(),
    )
    .await
    .unwrap();
    let config = ControllerConfig {
        platforms: sandbox.platforms_config(200.0),
        ..fast_config()
    };
    let running = Running::start(client.clone(), config).await;
    let envs: Api<Environment> = Api::default_namespaced(client.clone());
    envs.create(
        &PostParams::default(),
        &render_environment("web", "render-token"),
    )
    .await
    .unwrap();

    let stalled = wait_for_condition(&envs, "web", "Stalled", "True").await;
    let stall = condition(&stalled["status"], "Stalled").unwrap();
    assert_eq!(stall["reason"], "SecretNotFound");
    assert!(
        stall["message"]
            .as_str()
            .unwrap()
            .contains("\"render-token\""),
        "{stall}"
    );
    assert_eq!(
        condition(&stalled["status"], "Ready").unwrap()["status"],
        "False"
    );
    assert_eq!(
        stalled["status"]["observedGeneration"],
        stalled["metadata"]["generation"]
    );
    let generation = stalled["metadata"]["generation"].clone();
    let obj = envs.get("web").await.unwrap();
    assert!(
        obj.finalizers()
            .contains(&"tether.dev/finalizer".to_string())
    );

    // Creating the Secret alone (the Environment is not touched) clears Stalled: the
    // Secret watch re-triggers the reconcile.
    let secrets: Api<Secret> = Api::default_namespaced(client.clone());
    secrets
        .create(
            &PostParams::default(),
            &secret("render-token", "token", SECRET_VALUE),
        )
        .await
        .unwrap();
    let ready = wait_for_condition(&envs, "web", "Ready", "True").await;
    assert_eq!(ready["metadata"]["generation"], generation);
    assert_eq!(
        condition(&ready["status"], "Stalled").unwrap()["status"],
        "False"
    );
    assert_eq!(
        condition(&ready["status"], "ReferencesResolved").unwrap()["status"],
        "True"
    );
    let message = condition(&ready["status"], "Ready").unwrap()["message"].clone();
    assert_eq!(message, "1/1 platform object ready");
    assert_eq!(ready["status"]["summary"], "1/1");

    let events = eventually(WAIT, || async {
        let events = event_reasons(&client, "web").await;
        (events.len() >= 2).then_some(events)
    })
    .await;
    let reasons: Vec<&str> = events.iter().map(|(r, _, _)| r.as_str()).collect();
    assert!(reasons.contains(&"SecretNotFound"), "{reasons:?}");
    assert!(reasons.contains(&"Synced"), "{reasons:?}");
    // Events mark transitions: the stalled state was reconciled more than once (after the
    // finalizer and after its own status write) but published once.
    assert!(
        events.iter().all(|(_, _, repeated)| !repeated),
        "{events:?}"
    );
    assert!(!ready.to_string().contains(SECRET_VALUE));
    assert!(
        events
            .iter()
            .all(|(_, note, _)| !note.contains(SECRET_VALUE))
    );
    // Status belongs to one field manager, written by server-side apply.
    let managers: Vec<(&str, &str)> = ready["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["subresource"] == "status")
        .map(|m| {
            (
                m["manager"].as_str().unwrap(),
                m["operation"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(managers, [("tether-controller", "Apply")]);

    envs.delete("web", &DeleteParams::default()).await.unwrap();
    wait_until_gone(&envs, "web").await;
    running.stop().await;
    shutdown.cancel();
    sandbox.stopped().await;
}

#[tokio::test]
async fn a_release_stalls_until_its_environment_exists_and_rejects_unknown_components() {
    tether::install_crypto_provider();
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let running = Running::start(client.clone(), fast_config()).await;
    let releases: Api<Release> = Api::default_namespaced(client.clone());
    let release = |name: &str, component: &str| -> Release {
        serde_json::from_value(json!({
            "apiVersion": "tether.dev/v1alpha1", "kind": "Release",
            "metadata": {"name": name},
            "spec": {"environmentRef": {"name": "prod"}, "version": "1.0.0",
                "artifacts": [{"component": component, "platform": "render",
                    "image": "registry.example/api:1"}]},
        }))
        .unwrap()
    };
    releases
        .create(&PostParams::default(), &release("v1", "api"))
        .await
        .unwrap();
    releases
        .create(&PostParams::default(), &release("typo", "apii"))
        .await
        .unwrap();
    let stalled = wait_for_condition(&releases, "v1", "Stalled", "True").await;
    let stall = condition(&stalled["status"], "Stalled").unwrap();
    assert_eq!(stall["reason"], "EnvironmentNotFound");
    assert!(stall["message"].as_str().unwrap().contains("\"prod\""));

    // The Environment appearing re-triggers the Releases that name it.
    let secrets: Api<Secret> = Api::default_namespaced(client.clone());
    secrets
        .create(
            &PostParams::default(),
            &secret("tokens", "token", SECRET_VALUE),
        )
        .await
        .unwrap();
    let envs: Api<Environment> = Api::default_namespaced(client.clone());
    envs.create(
        &PostParams::default(),
        &render_environment("prod", "tokens"),
    )
    .await
    .unwrap();
    // Resolved and planned; the Environment has not created the service (no platform is
    // reachable here), so the rollout waits for it, and is not Ready.
    let ready = wait_for_condition(&releases, "v1", "Reconciling", "True").await;
    let waiting = condition(&ready["status"], "Reconciling").unwrap();
    assert_eq!(waiting["reason"], "WaitingForEnvironment");
    assert_eq!(
        condition(&ready["status"], "Ready").unwrap()["status"],
        "Unknown"
    );
    assert_eq!(ready["status"]["phase"], "Pending");
    assert_eq!(ready["status"]["steps"][0]["component"], "api");
    assert_eq!(
        ready["status"]["observedGeneration"],
        ready["metadata"]["generation"]
    );
    let typo = wait_for_condition(&releases, "typo", "Stalled", "True").await;
    let stall = condition(&typo["status"], "Stalled").unwrap();
    assert_eq!(stall["reason"], "UnknownComponent");
    assert!(stall["message"].as_str().unwrap().contains("\"apii\""));

    let rel = releases.get("v1").await.unwrap();
    assert!(
        rel.finalizers()
            .contains(&"tether.dev/finalizer".to_string())
    );
    releases
        .delete("v1", &DeleteParams::default())
        .await
        .unwrap();
    wait_until_gone(&releases, "v1").await;
    running.stop().await;
}

#[tokio::test]
async fn a_migration_stalls_on_a_missing_config_map_and_runs_once_it_exists_without_showing_the_secret()
 {
    tether::install_crypto_provider();
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let running = Running::start(client.clone(), fast_config()).await;
    let secrets: Api<Secret> = Api::default_namespaced(client.clone());
    secrets
        .create(&PostParams::default(), &secret("db", "url", SECRET_VALUE))
        .await
        .unwrap();
    let migrations: Api<Migration> = Api::default_namespaced(client.clone());
    let migration: Migration = serde_json::from_value(json!({
        "apiVersion": "tether.dev/v1alpha1", "kind": "Migration",
        "metadata": {"name": "schema"},
        "spec": {"database": {"connectionSecretRef": {"name": "db", "key": "url"}},
            "source": {"configMapRef": {"name": "sql"}}},
    }))
    .unwrap();
    migrations
        .create(&PostParams::default(), &migration)
        .await
        .unwrap();
    let stalled = wait_for_condition(&migrations, "schema", "Stalled", "True").await;
    let stall = condition(&stalled["status"], "Stalled").unwrap();
    assert_eq!(stall["reason"], "ConfigMapNotFound");
    assert!(stall["message"].as_str().unwrap().contains("\"sql\""));

    let config_maps: Api<ConfigMap> = Api::default_namespaced(client.clone());
    let files: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "sql"},
        "data": {"20240101000000_init.sql": "create table a (id int);",
                 "20240102000000_more.sql": "create table b (id int);"},
    }))
    .unwrap();
    config_maps
        .create(&PostParams::default(), &files)
        .await
        .unwrap();
    // The references resolve; the Secret's value is no connection string, so the run
    // fails to connect, without the value in status.
    let ready = wait_for_condition(&migrations, "schema", "ReferencesResolved", "True").await;
    let not_ready = condition(&ready["status"], "Ready").unwrap();
    assert_eq!(not_ready["status"], "False");
    assert_eq!(not_ready["reason"], "ConnectFailed");
    assert_eq!(ready["status"]["phase"], "Failed");
    assert!(!ready.to_string().contains(SECRET_VALUE));

    migrations
        .delete("schema", &DeleteParams::default())
        .await
        .unwrap();
    wait_until_gone(&migrations, "schema").await;
    running.stop().await;
}

#[tokio::test]
async fn metrics_expose_the_reconcile_counters_and_they_move_with_reconciles() {
    tether::install_crypto_provider();
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let running = Running::start(client.clone(), fast_config()).await;
    eventually(WAIT, || async {
        (running.get("/readyz").await.0 == 200).then_some(())
    })
    .await;
    assert_eq!(running.get("/healthz").await.0, 200);

    let success =
        "controller_runtime_reconcile_total{controller=\"environment\",result=\"success\"}";
    let (_, before) = running.get("/metrics").await;
    let envs: Api<Environment> = Api::default_namespaced(client.clone());
    envs.create(&PostParams::default(), &environment("plain", json!({})))
        .await
        .unwrap();
    wait_for_condition(&envs, "plain", "Ready", "True").await;
    let after = eventually(WAIT, || async {
        let (_, text) = running.get("/metrics").await;
        (counter(&text, success) > counter(&before, success)).then_some(text)
    })
    .await;
    assert!(
        after.contains(
            "controller_runtime_reconcile_time_seconds_bucket{controller=\"environment\""
        )
    );
    assert!(
        counter(
            &after,
            "controller_runtime_reconcile_total{controller=\"environment\",result=\"requeue\"}"
        ) >= 1.0
    );

    envs.create(
        &PostParams::default(),
        &render_environment("stuck", "absent"),
    )
    .await
    .unwrap();
    wait_for_condition(&envs, "stuck", "Stalled", "True").await;
    let text = eventually(WAIT, || async {
        let (_, text) = running.get("/metrics").await;
        (counter(&text, "tether_reconcile_stalled{kind=\"Environment\"}") == 1.0).then_some(text)
    })
    .await;
    assert!(
        counter(
            &text,
            "controller_runtime_reconcile_errors_total{controller=\"environment\"}"
        ) >= 1.0
    );
    running.stop().await;
}

#[tokio::test]
async fn a_malformed_object_does_not_block_the_others() {
    tether::install_crypto_provider();
    // Store an Environment that does not match the schema through the store's raw
    // interface, as an older schema or a direct etcd write would leave it.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    {
        use tether::localapi::store::{FileStore, Store, StoreOp};
        let store = FileStore::open(&path).unwrap();
        let broken = json!({
            "apiVersion": "tether.dev/v1alpha1", "kind": "Environment",
            "metadata": {"name": "broken", "namespace": "default", "uid": "u-broken",
                "resourceVersion": "5", "generation": 1,
                "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"suspend": "sometimes", "interval": 42},
        });
        let json = serde_json::to_vec(&broken).unwrap();
        store
            .commit(
                &[StoreOp::Put {
                    key: "environments.tether.dev\u{0}default/broken",
                    json: &json,
                }],
                5,
            )
            .unwrap();
    }
    let cluster = TestCluster::builder().file_store(&path).start().await;
    let client = cluster.client();
    let running = Running::start(client.clone(), fast_config()).await;
    let envs: Api<Environment> = Api::default_namespaced(client.clone());
    envs.create(&PostParams::default(), &environment("healthy", json!({})))
        .await
        .unwrap();
    // The healthy object reconciles although the list holds an undecodable one...
    wait_for_condition(&envs, "healthy", "Ready", "True").await;
    // ...and the bad one is reported (counted as an error), not retried hot or skipped silently.
    let errors = "controller_runtime_reconcile_errors_total{controller=\"environment\"}";
    eventually(WAIT, || async {
        let (_, text) = running.get("/metrics").await;
        (counter(&text, errors) >= 1.0).then_some(())
    })
    .await;
    // Other kinds are unaffected.
    let migrations: Api<Migration> = Api::default_namespaced(client.clone());
    let migration: Migration = serde_json::from_value(json!({
        "apiVersion": "tether.dev/v1alpha1", "kind": "Migration",
        "metadata": {"name": "m"},
        "spec": {"database": {"environmentRef": {"name": "healthy"}},
            "source": {"inline": [{"version": "1", "name": "init", "sql": "select 1"}]}},
    }))
    .unwrap();
    migrations
        .create(&PostParams::default(), &migration)
        .await
        .unwrap();
    let stalled = wait_for_condition(&migrations, "m", "Stalled", "True").await;
    assert_eq!(
        condition(&stalled["status"], "Stalled").unwrap()["reason"],
        "NoDatabase"
    );
    running.stop().await;
}

/// Issue 21's reproducers: an `interval` or `lockTimeout` that no longer passes admission
/// (a duration beyond any clock, or `0s`), stored before the bounds existed. Each object
/// stalls with the field and the reason; the controllers keep reconciling the others and
/// stay healthy. (The same values are refused at admission: see the fixtures.)
#[tokio::test]
async fn out_of_range_durations_stall_their_object_and_the_controllers_go_on() {
    tether::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    {
        use tether::localapi::store::{FileStore, Store, StoreOp};
        let store = FileStore::open(&path).unwrap();
        let stored = |kind: &str, name: &str, spec: Value| {
            json!({
                "apiVersion": "tether.dev/v1alpha1", "kind": kind,
                "metadata": {"name": name, "namespace": "default", "uid": format!("u-{name}"),
                    "resourceVersion": "5", "generation": 1,
                    "creationTimestamp": "2026-01-01T00:00:00Z"},
                "spec": spec,
            })
        };
        let objects = [
            (
                "environments.tether.dev\u{0}default/huge",
                stored(
                    "Environment",
                    "huge",
                    json!({"interval": "18446744073709551615s"}),
                ),
            ),
            (
                "environments.tether.dev\u{0}default/zero",
                stored("Environment", "zero", json!({"interval": "0s"})),
            ),
            (
                "migrations.tether.dev\u{0}default/locks",
                stored(
                    "Migration",
                    "locks",
                    json!({"database": {"environmentRef": {"name": "zero"}},
                        "source": {"inline": [{"version": "1", "name": "a", "sql": "select 1"}]},
                        "policy": {"lockTimeout": "18446744073709551615s"}}),
                ),
            ),
        ];
        let json: Vec<(&str, Vec<u8>)> = objects
            .iter()
            .map(|(key, object)| (*key, serde_json::to_vec(object).unwrap()))
            .collect();
        let ops: Vec<StoreOp<'_>> = json
            .iter()
            .map(|(key, json)| StoreOp::Put { key, json })
            .collect();
        store.commit(&ops, 5).unwrap();
    }
    let cluster = TestCluster::builder().file_store(&path).start().await;
    let client = cluster.client();
    let running = Running::start(client.clone(), fast_config()).await;
    let envs: Api<Environment> = Api::default_namespaced(client.clone());
    for (name, message) in [
        (
            "huge",
            r#"spec.interval: invalid duration "18446744073709551615s": at most 8760h (one year)"#,
        ),
        ("zero", "spec.interval: must be between 1s and 168h"),
    ] {
        let stalled = wait_for_condition(&envs, name, "Stalled", "True").await;
        let condition = condition(&stalled["status"], "Stalled").unwrap();
        assert_eq!(condition["reason"], "InvalidInterval");
        assert_eq!(condition["message"], message);
    }
    let migrations: Api<Migration> = Api::default_namespaced(client.clone());
    let stalled = wait_for_condition(&migrations, "locks", "Stalled", "True").await;
    assert_eq!(
        condition(&stalled["status"], "Stalled").unwrap()["message"],
        r#"spec.policy.lockTimeout: invalid duration "18446744073709551615s": at most 8760h (one year)"#
    );
    // The controllers are alive and still reconcile new objects.
    envs.create(&PostParams::default(), &environment("healthy", json!({})))
        .await
        .unwrap();
    wait_for_condition(&envs, "healthy", "Ready", "True").await;
    assert_eq!(running.get("/healthz").await.0, 200);
    // Readiness follows the caches' first lists (polled every 100 ms), which can come just
    // after the first reconcile.
    eventually(Duration::from_secs(10), || async {
        (running.get("/readyz").await.0 == 200).then_some(())
    })
    .await;
    running.stop().await;
}

#[tokio::test]
async fn the_label_selector_limits_which_objects_are_reconciled() {
    tether::install_crypto_provider();
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let config = ControllerConfig {
        selector: Some("shard=a".into()),
        ..fast_config()
    };
    let running = Running::start(client.clone(), config).await;
    let envs: Api<Environment> = Api::default_namespaced(client.clone());
    let mut mine = environment("mine", json!({}));
    mine.metadata.labels = Some([("shard".to_string(), "a".to_string())].into());
    envs.create(&PostParams::default(), &environment("other", json!({})))
        .await
        .unwrap();
    envs.create(&PostParams::default(), &mine).await.unwrap();
    wait_for_condition(&envs, "mine", "Ready", "True").await;
    let other = envs.get("other").await.unwrap();
    assert!(other.status.is_none());
    assert!(other.finalizers().is_empty());
    running.stop().await;
}

#[tokio::test]
async fn a_namespaced_controller_ignores_other_namespaces() {
    tether::install_crypto_provider();
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let apps: k8s_openapi::api::core::v1::Namespace =
        serde_json::from_value(json!({"metadata": {"name": "apps"}})).unwrap();
    namespaces
        .create(&PostParams::default(), &apps)
        .await
        .unwrap();
    let config = ControllerConfig {
        namespace: Some("apps".into()),
        ..fast_config()
    };
    let running = Running::start(client.clone(), config).await;
    let in_default: Api<Environment> = Api::default_namespaced(client.clone());
    let in_apps: Api<Environment> = Api::namespaced(client.clone(), "apps");
    in_default
        .create(&PostParams::default(), &environment("elsewhere", json!({})))
        .await
        .unwrap();
    in_apps
        .create(&PostParams::default(), &environment("here", json!({})))
        .await
        .unwrap();
    wait_for_condition(&in_apps, "here", "Ready", "True").await;
    let elsewhere = in_default.get("elsewhere").await.unwrap();
    assert!(elsewhere.status.is_none());
    assert!(elsewhere.finalizers().is_empty());
    running.stop().await;
}

#[tokio::test]
async fn a_suspended_environment_is_not_reconciled_and_says_so() {
    tether::install_crypto_provider();
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let running = Running::start(client.clone(), fast_config()).await;
    let envs: Api<Environment> = Api::default_namespaced(client.clone());
    let mut env = render_environment("paused", "missing-token");
    env.spec.suspend = true;
    envs.create(&PostParams::default(), &env).await.unwrap();
    let status = eventually(WAIT, || async {
        let value = serde_json::to_value(envs.get("paused").await.ok()?).ok()?;
        let ready = condition(&value["status"], "Ready")?;
        (ready["reason"] == "Suspended").then_some(value)
    })
    .await;
    // Suspended means no actions: the missing Secret is not even looked up.
    assert_eq!(
        condition(&status["status"], "Ready").unwrap()["status"],
        "False"
    );
    assert_eq!(
        condition(&status["status"], "Stalled").unwrap()["status"],
        "False"
    );
    running.stop().await;
}
