//! The kubectl must-shows of the embedded API (issue 3), with the real kubectl v1.32 against
//! an in-process embedded API server: `apply -f config/samples/`, `get env,rel,mig` with the
//! printer columns, `describe` listing events, `wait --for=condition=Ready`, `delete` waiting
//! for the finalizer, `apply` of an invalid object printing the CEL message, and
//! `explain environment.spec`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use serde_json::json;
use tether::localapi::{LocalApiConfig, LocalApiHandle, StoreConfig};
use tether::standalone::apply::Applier;
use tether::standalone::manifests;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(10);

/// The embedded API in process (memory store, random port, the Tether CRDs) and a kubeconfig
/// file for kubectl; stops when dropped.
struct Cluster {
    api: LocalApiHandle,
    kubeconfig: tempfile::TempPath,
    shutdown: CancellationToken,
}

impl Cluster {
    async fn start() -> Self {
        tether::install_crypto_provider();
        let shutdown = CancellationToken::new();
        let config = LocalApiConfig {
            addr: "127.0.0.1:0".parse().expect("addr"),
            store: StoreConfig::Memory,
            crds: tether::api::crds(),
            security: None,
        };
        let api = tether::localapi::start(config, shutdown.clone())
            .await
            .expect("start the embedded API");
        let file = tempfile::NamedTempFile::new().expect("kubeconfig file");
        let yaml = serde_saphyr::to_string(&api.kubeconfig()).expect("kubeconfig yaml");
        std::fs::write(file.path(), yaml).expect("write kubeconfig");
        Self {
            api,
            kubeconfig: file.into_temp_path(),
            shutdown,
        }
    }

    fn client(&self) -> kube::Client {
        self.api.client()
    }

    fn kubeconfig_path(&self) -> PathBuf {
        self.kubeconfig.to_path_buf()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn kubectl(kubeconfig: &Path, args: &[&str]) -> Output {
    Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .expect("run kubectl")
}

fn kubectl_ok(kubeconfig: &Path, args: &[&str]) -> String {
    let out = kubectl(kubeconfig, args);
    assert!(
        out.status.success(),
        "kubectl {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn environments(client: &kube::Client) -> Api<DynamicObject> {
    let gvk = kube::api::GroupVersionKind::gvk("tether.dev", "v1alpha1", "Environment");
    let resource = kube::api::ApiResource::from_gvk_with_plural(&gvk, "environments");
    Api::namespaced_with(client.clone(), "default", &resource)
}

/// Writes status the way a controller does: server-side apply on the status subresource.
async fn set_ready(client: &kube::Client, name: &str, status: &str, message: &str) {
    let patch = json!({
        "apiVersion": "tether.dev/v1alpha1",
        "kind": "Environment",
        "status": {
            "summary": "7/7",
            "conditions": [{
                "type": "Ready", "status": status, "reason": "Synced", "message": message,
                "lastTransitionTime": "2026-01-01T00:00:00Z",
            }],
        },
    });
    environments(client)
        .patch_status(
            name,
            &PatchParams::apply("test-controller").force(),
            &Patch::Apply(&patch),
        )
        .await
        .expect("status patch");
}

/// Loads config/samples/ through the client (server-side apply, as `tether run` does), for
/// the tests whose subject is another kubectl command.
async fn load_samples(cluster: &Cluster) {
    let root = repo("config/samples");
    let mut applier = Applier::new(cluster.client());
    let mut files = manifests::scan(&root, None).expect("scan samples");
    // Secrets and ConfigMaps before the Tether kinds that name them.
    files.sort_by_key(|f| f.contains("environment") || f.contains("release"));
    for file in files {
        let source = manifests::SourceFile::read(&root, &file);
        for doc in source.parsed.expect("samples parse") {
            let object = doc.expect("sample documents are objects");
            let resolved = applier
                .resolve(&object.gvk)
                .await
                .expect("sample kinds are served");
            applier
                .apply(&object, &resolved, &file)
                .await
                .unwrap_or_else(|e| panic!("{file}: {e}"));
        }
    }
}

async fn apply_samples(cluster: &Cluster) {
    let kubeconfig = cluster.kubeconfig_path();
    let samples = repo("config/samples");
    let out = kubectl_ok(
        &kubeconfig,
        &["apply", "-f", samples.to_str().expect("utf-8 path")],
    );
    for created in [
        "secret/platform-tokens created",
        "environment.tether.dev/staging created",
        "migration.tether.dev/app-schema created",
        "release.tether.dev/staging-1-4-2 created",
        "configmap/",
    ] {
        assert!(out.contains(created), "{created:?} missing from:\n{out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_applies_the_samples_and_gets_them_with_their_printer_columns() {
    let cluster = Cluster::start().await;
    apply_samples(&cluster).await;
    set_ready(&cluster.client(), "staging", "True", "all 7 objects ready").await;

    let out = kubectl_ok(&cluster.kubeconfig_path(), &["get", "env,rel,mig"]);
    let lines: Vec<&str> = out.lines().collect();
    let columns: Vec<Vec<&str>> = lines
        .iter()
        .filter(|l| l.starts_with("NAME"))
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert!(
        columns.contains(&vec!["NAME", "READY", "OBJECTS", "STATUS", "AGE"]),
        "Environment columns in:\n{out}"
    );
    assert!(
        columns.contains(&vec![
            "NAME",
            "ENVIRONMENT",
            "VERSION",
            "PHASE",
            "STEPS",
            "READY",
            "AGE"
        ]),
        "Release columns in:\n{out}"
    );
    assert!(
        columns.contains(&vec!["NAME", "PHASE", "VERSION", "READY", "STATUS", "AGE"]),
        "Migration columns in:\n{out}"
    );
    let env_row = lines
        .iter()
        .find(|l| l.starts_with("environment.tether.dev/staging"))
        .unwrap_or_else(|| panic!("no staging row in:\n{out}"));
    for cell in ["True", "7/7", "all 7 objects ready"] {
        assert!(
            env_row.contains(cell),
            "{cell:?} missing from row {env_row:?}"
        );
    }
    let rel_row = lines
        .iter()
        .find(|l| l.starts_with("release.tether.dev/staging-1-4-2"))
        .unwrap_or_else(|| panic!("no release row in:\n{out}"));
    assert!(
        rel_row.contains("staging") && rel_row.contains("1.4.2"),
        "{rel_row}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_describe_lists_the_events_of_an_environment() {
    let cluster = Cluster::start().await;
    load_samples(&cluster).await;
    let client = cluster.client();
    let env = environments(&client).get("staging").await.expect("get env");
    let reference = ObjectReference {
        api_version: Some("tether.dev/v1alpha1".into()),
        kind: Some("Environment".into()),
        name: env.metadata.name.clone(),
        namespace: env.metadata.namespace.clone(),
        uid: env.metadata.uid.clone(),
        ..Default::default()
    };
    // Published the way the controllers publish events: kube's recorder (events.k8s.io/v1).
    let recorder = Recorder::new(client.clone(), Reporter::from("tether-controller"));
    recorder
        .publish(
            &Event {
                type_: EventType::Warning,
                reason: "DeployFailed".into(),
                note: Some("render service staging-api: deployment dep-42 failed".into()),
                action: "Deploy".into(),
                secondary: None,
            },
            &reference,
        )
        .await
        .expect("publish event");

    let out = kubectl_ok(
        &cluster.kubeconfig_path(),
        &["describe", "environment", "staging", "-n", "default"],
    );
    assert!(out.contains("Events:"), "{out}");
    let event = out
        .lines()
        .find(|l| l.contains("DeployFailed"))
        .unwrap_or_else(|| panic!("no DeployFailed event in:\n{out}"));
    assert!(event.contains("Warning"), "{event}");
    assert!(event.contains("deployment dep-42 failed"), "{event}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_wait_returns_when_the_environment_becomes_ready() {
    let cluster = Cluster::start().await;
    load_samples(&cluster).await;
    let client = cluster.client();
    set_ready(&client, "staging", "False", "creating 7 objects").await;

    let mut wait = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(cluster.kubeconfig_path())
        .args([
            "wait",
            "--for=condition=Ready",
            "environment/staging",
            "-n",
            "default",
            "--timeout=20s",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kubectl wait");
    // Not ready yet: kubectl must still be waiting.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        wait.try_wait().expect("poll").is_none(),
        "kubectl wait returned early"
    );

    // The controllers are not wired into Cluster yet: the status write stands in for
    // the Environment controller's.
    set_ready(&client, "staging", "True", "all 7 objects ready").await;
    let out = wait_for_exit(wait).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("environment.tether.dev/staging condition met"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_delete_waits_for_the_finalizer() {
    let cluster = Cluster::start().await;
    load_samples(&cluster).await;
    let client = cluster.client();
    let envs = environments(&client);
    let finalizer = json!({"metadata": {"finalizers": ["tether.dev/cleanup"]}});
    envs.patch(
        "staging",
        &PatchParams::default(),
        &Patch::Merge(&finalizer),
    )
    .await
    .expect("add finalizer");

    let delete = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(cluster.kubeconfig_path())
        .args([
            "delete",
            "environment",
            "staging",
            "-n",
            "default",
            "--timeout=20s",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kubectl delete");
    let deadline = Instant::now() + WAIT;
    loop {
        let env = envs.get("staging").await.expect("still there");
        if env.metadata.deletion_timestamp.is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "deletionTimestamp never set");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut delete = delete;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        delete.try_wait().expect("poll").is_none(),
        "kubectl delete returned while the finalizer was still there"
    );

    // The controller's cleanup is done: it removes its finalizer.
    let none = json!({"metadata": {"finalizers": null}});
    envs.patch("staging", &PatchParams::default(), &Patch::Merge(&none))
        .await
        .expect("remove finalizer");
    let out = wait_for_exit(delete).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("environment.tether.dev \"staging\" deleted")
    );
    assert!(envs.get_opt("staging").await.expect("get").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_apply_of_an_invalid_object_prints_the_cel_message() {
    let cluster = Cluster::start().await;
    let fixture = repo("tests/fixtures/invalid/render-cron-without-schedule.yaml");
    let expected = std::fs::read_to_string(&fixture)
        .expect("fixture")
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("# expect: "))
        .expect("fixture starts with `# expect: <message>`")
        .to_string();
    let out = kubectl(
        &cluster.kubeconfig_path(),
        &["apply", "-f", fixture.to_str().expect("utf-8 path")],
    );
    assert!(!out.status.success(), "an invalid object must be rejected");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&expected),
        "{expected:?} missing from:\n{stderr}"
    );
    assert!(stderr.contains("is invalid"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_explain_describes_environment_spec() {
    let cluster = Cluster::start().await;
    let out = kubectl_ok(&cluster.kubeconfig_path(), &["explain", "environment.spec"]);
    assert!(
        out.contains("KIND:") && out.contains("Environment"),
        "{out}"
    );
    assert!(out.contains("FIELDS:"), "{out}");
    for field in [
        "credentials",
        "render",
        "vercel",
        "fly",
        "supabase",
        "driftPolicy",
    ] {
        assert!(out.contains(field), "{field} missing from:\n{out}");
    }
    assert!(
        out.contains("The Secrets holding each platform's API token"),
        "field descriptions come from the doc comments:\n{out}"
    );
}

async fn wait_for_exit(child: std::process::Child) -> Output {
    let waited = tokio::task::spawn_blocking(move || child.wait_with_output());
    tokio::time::timeout(Duration::from_secs(20), waited)
        .await
        .expect("kubectl exits")
        .expect("join")
        .expect("wait")
}
