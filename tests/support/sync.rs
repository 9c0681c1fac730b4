//! Harness for the Environment sync end-to-end tests: the in-process Kubernetes API, the
//! four-platform sandbox (exchanges recorded), and the controllers pointed at the sandbox,
//! with the sandbox's tokens in Secrets `tether-sandbox-<platform>` (key `token`) of
//! namespace `default`. Every log line the process writes is kept so a test can scan it for
//! secret values.
//!
//! ```ignore
//! let h = SyncHarness::start().await;
//! h.apply(environment_json).await;
//! let env = h.wait_ready("web").await;
//! ```

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event as K8sEvent;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::Value;
use tether::api::Environment;
use tether::controller::{ControllerConfig, Health, server};
use tether::platform::Platform;
use tether::sandbox::{SandboxConfig, SandboxHandle};
use tether::sync::PlatformsConfig;
use tether::telemetry::MetricsRegistry;
use tokio_util::sync::CancellationToken;

use super::{TestCluster, TestClusterBuilder, eventually};

/// How long the harness waits for a condition.
pub const WAIT: Duration = Duration::from_secs(60);
/// Sandbox time scale: deploys and projects come up fast, rate-limit windows are short.
pub const TIME_SCALE: f64 = 200.0;
/// How long a killed controller stays down before [`SyncHarness::start_controllers`] starts
/// the next: long enough for a request it had on the wire to reach the in-process sandbox,
/// short against the sandbox's deploys (75 ms at [`TIME_SCALE`]), so that a restart still
/// finds them running.
const RESTART: Duration = Duration::from_millis(20);

static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();

#[derive(Clone)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Every log line of the process at debug level for Tether and kube (info for the rest), kept in
/// memory (and echoed to stderr when `TEST_LOG` is set).
fn capture_logs() -> Arc<Mutex<Vec<u8>>> {
    LOGS.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let writer = Captured(buffer.clone());
        let echo = std::env::var("TEST_LOG").is_ok();
        let _ = tracing_subscriber::fmt()
            .with_env_filter("info,tether=debug,kube=debug,kube_client=debug,kube_runtime=debug")
            .json()
            .with_writer(move || -> Box<dyn Write> {
                if echo {
                    Box::new(TeeStderr(writer.clone()))
                } else {
                    Box::new(writer.clone())
                }
            })
            .try_init();
        buffer
    })
    .clone()
}

struct TeeStderr(Captured);

impl Write for TeeStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stderr().write_all(buf);
        self.0.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The running controllers.
struct Controllers {
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    metrics_addr: SocketAddr,
}

/// Cluster + sandbox + controllers.
pub struct SyncHarness {
    /// The in-process Kubernetes API.
    pub cluster: TestCluster,
    /// The sandbox of the four platforms.
    pub sandbox: SandboxHandle,
    sandbox_shutdown: CancellationToken,
    /// A client of the cluster.
    pub client: Client,
    config: ControllerConfig,
    controllers: Option<Controllers>,
    /// The killed controllers' task, until it has ended.
    killed: Option<tokio::task::JoinHandle<()>>,
    logs: Arc<Mutex<Vec<u8>>>,
}

/// The controller configuration pointing every platform at `sandbox`, fast retries, a
/// short pending interval and a short observation cache.
pub fn sandbox_config(sandbox: &SandboxHandle, time_scale: f64) -> ControllerConfig {
    let platforms = PlatformsConfig {
        observe_max_age: Duration::from_millis(200),
        ..sandbox.platforms_config(time_scale)
    };
    ControllerConfig {
        min_retry: Duration::from_millis(100),
        max_retry: Duration::from_secs(2),
        pending_interval: Duration::from_millis(300),
        platforms,
        health_check_via: sandbox.edge_url().parse().ok(),
        ..ControllerConfig::default()
    }
}

impl SyncHarness {
    /// Starts everything with the default time scale.
    pub async fn start() -> SyncHarness {
        Self::start_with(TIME_SCALE).await
    }

    /// Starts everything with the sandbox running `time_scale` times faster than real time.
    pub async fn start_with(time_scale: f64) -> SyncHarness {
        Self::start_on(TestCluster::builder(), time_scale).await
    }

    /// Starts everything on an API server built from `cluster` (e.g. one whose file store
    /// already holds objects no API server would have admitted).
    pub async fn start_on(cluster: TestClusterBuilder, time_scale: f64) -> SyncHarness {
        let logs = capture_logs();
        let cluster = cluster.start().await;
        let client = cluster.client();
        let sandbox_shutdown = CancellationToken::new();
        let sandbox = tether::sandbox::start(
            SandboxConfig {
                time_scale,
                record: true,
                ..SandboxConfig::default()
            },
            sandbox_shutdown.clone(),
        )
        .await
        .expect("start the sandbox");
        let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
        for (_, secret) in sandbox.credential_secrets("default") {
            secrets
                .create(&PostParams::default(), &secret)
                .await
                .expect("create the sandbox credentials Secret");
        }
        let config = sandbox_config(&sandbox, time_scale);
        let mut harness = SyncHarness {
            cluster,
            sandbox,
            sandbox_shutdown,
            client,
            config,
            controllers: None,
            killed: None,
            logs,
        };
        harness.start_controllers().await;
        harness
    }

    /// Starts the controllers (again, after [`SyncHarness::stop_controllers`]).
    pub async fn start_controllers(&mut self) {
        if let Some(killed) = self.killed.take() {
            // A restart: the killed process is gone first, and the requests it had already
            // sent have landed (in a cluster a new pod, or a new leader after the old lease
            // ran out, takes seconds; the adoption of a deployment recorded `Starting` sees
            // what landed before it looks).
            let _ = killed.await;
            tokio::time::sleep(RESTART).await;
        }
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
        let client = self.client.clone();
        let config = self.config.clone();
        let token = shutdown.clone();
        let task = tokio::spawn(async move {
            let server = tokio::spawn(serve);
            tether::controller::run(client, config, metrics, health, token)
                .await
                .unwrap();
            let _ = server.await;
        });
        self.controllers = Some(Controllers {
            shutdown,
            task,
            metrics_addr,
        });
    }

    /// The controllers' configuration (pointed at the sandbox).
    pub fn config(&self) -> &ControllerConfig {
        &self.config
    }

    /// Stops the controllers gracefully.
    pub async fn stop_controllers(&mut self) {
        if let Some(c) = self.controllers.take() {
            c.shutdown.cancel();
            let _ = tokio::time::timeout(WAIT, c.task).await;
        }
    }

    /// Kills the controllers at once (no graceful shutdown: a crash). Aborting the task drops
    /// the controllers' own tasks with it; their token is cancelled only afterwards (to stop
    /// the metrics server), so no graceful shutdown runs.
    pub fn kill_controllers(&mut self) {
        if let Some(c) = self.controllers.take() {
            c.task.abort();
            self.killed = Some(tokio::spawn(async move {
                let _ = c.task.await;
                c.shutdown.cancel();
            }));
        }
    }

    /// The Environments API of namespace `default`.
    pub fn environments(&self) -> Api<Environment> {
        Api::namespaced(self.client.clone(), "default")
    }

    /// Creates or updates an Environment from its full JSON manifest (server-side apply as
    /// `kubectl` would).
    pub async fn apply(&self, manifest: Value) -> Environment {
        let name = manifest["metadata"]["name"]
            .as_str()
            .expect("metadata.name")
            .to_string();
        self.environments()
            .patch(
                &name,
                &PatchParams::apply("e2e-test").force(),
                &Patch::Apply(&manifest),
            )
            .await
            .unwrap_or_else(|e| panic!("apply Environment {name}: {e}"))
    }

    /// Creates or replaces a Secret's string data.
    pub async fn put_secret(&self, name: &str, data: &[(&str, &str)]) {
        let manifest = serde_json::json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": name, "namespace": "default"},
            "stringData": data.iter().map(|(k, v)| (k.to_string(), Value::from(*v)))
                .collect::<serde_json::Map<_, _>>(),
        });
        Api::<Secret>::namespaced(self.client.clone(), "default")
            .patch(
                name,
                &PatchParams::apply("e2e-test").force(),
                &Patch::Apply(&manifest),
            )
            .await
            .unwrap_or_else(|e| panic!("apply Secret {name}: {e}"));
    }

    /// Waits until `check` accepts the Environment's JSON, and returns it.
    pub async fn wait_for(&self, name: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        let envs = self.environments();
        tracing::debug!(name, what, "waiting");
        eventually(WAIT, || {
            let envs = envs.clone();
            let check = &check;
            async move {
                let env = envs.get_opt(name).await.ok().flatten()?;
                let json = serde_json::to_value(&env).ok()?;
                check(&json).then_some(json)
            }
        })
        .await
    }

    /// Waits until the Environment is Ready for its current generation.
    pub async fn wait_ready(&self, name: &str) -> Value {
        self.wait_for(name, "Ready=True for the current generation", |env| {
            condition_is(env, "Ready", "True")
                && env["status"]["observedGeneration"] == env["metadata"]["generation"]
        })
        .await
    }

    /// Deletes the Environment and waits until it is gone (its cleanup ran).
    pub async fn delete(&self, name: &str) {
        let envs = self.environments();
        envs.delete(name, &DeleteParams::default())
            .await
            .unwrap_or_else(|e| panic!("delete Environment {name}: {e}"));
        eventually(WAIT, || {
            let envs = envs.clone();
            async move { envs.get_opt(name).await.ok()?.is_none().then_some(()) }
        })
        .await;
    }

    /// An out-of-band "dashboard edit" on `platform` (`POST /_sandbox/edit`).
    pub async fn edit(
        &self,
        platform: Platform,
        object: &str,
        name: &str,
        field: &str,
        value: Value,
    ) {
        let url = format!("{}/edit", self.sandbox.admin_url(platform).unwrap());
        let token = self.sandbox.token(platform).unwrap();
        let response = reqwest::Client::new()
            .post(&url)
            .bearer_auth(token.expose())
            .json(&serde_json::json!({"object": object, "name": name, "field": field, "value": value}))
            .send()
            .await
            .expect("sandbox edit");
        assert!(
            response.status().is_success(),
            "sandbox edit {object} {name} {field}: HTTP {}",
            response.status()
        );
    }

    /// `(type, reason, note)` of every event about Environment `name`.
    pub async fn events(&self, name: &str) -> Vec<(String, String, String)> {
        let events: Api<K8sEvent> = Api::namespaced(self.client.clone(), "default");
        let list = events
            .list(&ListParams::default())
            .await
            .expect("list events");
        list.items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
            .map(|e| {
                (
                    e.type_.unwrap_or_default(),
                    e.reason.unwrap_or_default(),
                    e.note.unwrap_or_default(),
                )
            })
            .collect()
    }

    /// Waits until Environment `name` has an event with each of `reasons` (an event is
    /// recorded after the platform write it reports, so it can trail what a test saw on
    /// the platform), then returns every event about it.
    pub async fn wait_events(&self, name: &str, reasons: &[&str]) -> Vec<(String, String, String)> {
        eventually(WAIT, || async {
            let events = self.events(name).await;
            reasons
                .iter()
                .all(|r| events.iter().any(|e| e.1 == *r))
                .then_some(events)
        })
        .await
    }

    /// The controllers' `/metrics` text.
    pub async fn metrics(&self) -> String {
        let addr = self
            .controllers
            .as_ref()
            .expect("controllers running")
            .metrics_addr;
        reqwest::get(format!("http://{addr}/metrics"))
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics body")
    }

    /// Everything logged so far.
    pub fn logs(&self) -> String {
        String::from_utf8_lossy(&self.logs.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }

    /// Every Environment, event and Secret-free status as text, with the logs and metrics:
    /// what a test scans for secret values.
    pub async fn everything_visible(&self) -> String {
        let mut text = self.logs();
        for env in self
            .environments()
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
        {
            text.push_str(&serde_json::to_string(&env.status).unwrap());
            text.push_str(&env.name_any());
        }
        let events: Api<K8sEvent> = Api::namespaced(self.client.clone(), "default");
        for event in events.list(&ListParams::default()).await.unwrap().items {
            text.push_str(&serde_json::to_string(&event).unwrap());
        }
        if self.controllers.is_some() {
            text.push_str(&self.metrics().await);
        }
        text
    }

    /// A client of the sandbox's `platform` with its token, as a person with the dashboard
    /// would use it (its requests are not the controller's: its metrics are its own).
    pub fn http(&self, platform: Platform) -> tether::platform::PlatformHttp {
        tether::platform::PlatformHttp::new(
            platform,
            &self.sandbox.url(platform).expect("platform served"),
            self.sandbox.token(platform).expect("platform served"),
            tether::platform::HttpConfig::for_platform(platform).time_scaled(TIME_SCALE),
            tether::platform::PlatformMetrics::register(&MetricsRegistry::new())
                .expect("register metrics"),
        )
        .expect("sandbox client")
    }

    /// Recorded sandbox exchanges of `platform` with `method`, as `"METHOD path"` lines.
    pub fn requests(&self, platform: Platform) -> Vec<String> {
        self.sandbox
            .exchanges()
            .into_iter()
            .filter(|e| e.platform == platform)
            .map(|e| format!("{} {}", e.method, e.path))
            .collect()
    }

    /// Stops everything.
    pub async fn stop(mut self) {
        self.stop_controllers().await;
        self.sandbox_shutdown.cancel();
        self.sandbox.stopped().await;
        self.cluster.stop().await;
    }
}

/// Whether condition `type_` of the Environment JSON has `status`.
pub fn condition_is(env: &Value, type_: &str, status: &str) -> bool {
    condition(env, type_).is_some_and(|c| c["status"] == status)
}

/// Condition `type_` of the Environment JSON.
pub fn condition<'a>(env: &'a Value, type_: &str) -> Option<&'a Value> {
    env["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

/// The status entry of `platform`/`kind`/`name`.
pub fn object<'a>(env: &'a Value, platform: &str, kind: &str, name: &str) -> Option<&'a Value> {
    env["status"]["objects"]
        .as_array()?
        .iter()
        .find(|o| o["platform"] == platform && o["kind"] == kind && o["name"] == name)
}
