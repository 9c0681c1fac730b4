//! `tether run` end to end, through the real binary and kubectl: a directory is applied in
//! dependency order, a changed file is re-applied, a removed file's objects are pruned (also
//! when removed while `tether run` was stopped), a bad manifest is reported with file, field
//! and reason while the others apply, and a SIGKILLed `tether run` restarted on the same state
//! directory still has every object and its status.

use std::time::{Duration, Instant};

use super::run_harness::Workspace;

const NAMESPACE: &str = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: staging\n";

const SECRET: &str = "\
apiVersion: v1
kind: Secret
metadata:
  name: tokens
  namespace: staging
stringData:
  render: sandbox-render-token
";

fn config_maps(value: &str) -> String {
    format!(
        "---\n# two config maps and an empty document\n\
         apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: app\n  namespace: staging\ndata:\n  level: {value}\n\
         ---\n---\n\
         apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: extra\n  namespace: staging\ndata:\n  a: b\n"
    )
}

fn environment(name: &str) -> String {
    format!(
        "\
apiVersion: tether.dev/v1alpha1
kind: Environment
metadata:
  name: {name}
  namespace: staging
spec:
  credentials:
    render: {{ name: tokens, key: render }}
  render:
    ownerId: tea-sandbox
    services:
      - {{ name: {name}-api, type: web, image: ghcr.io/acme/api:1 }}
"
    )
}

/// An Environment that breaks the CEL rule "spec.credentials.render is required when
/// spec.render is set" (line 1 is a comment, so the document starts on line 2).
const ENVIRONMENT_BREAKING_CEL: &str = "\
# render is set but its credentials are not
apiVersion: tether.dev/v1alpha1
kind: Environment
metadata:
  name: broken
  namespace: staging
spec:
  credentials: {}
  render:
    ownerId: tea-sandbox
    services:
      - { name: x, type: web, image: ghcr.io/acme/api:1 }
";

fn standard_workspace() -> Workspace {
    let ws = Workspace::new();
    // File names sort the Tether kind first: the apply order must not follow them.
    ws.write("a-environment.yaml", &environment("web"));
    ws.write("app/config.yaml", &config_maps("info"));
    ws.write("app/secret.yml", SECRET);
    ws.write("namespace.yaml", NAMESPACE);
    ws
}

#[test]
fn a_directory_is_applied_namespaces_first_with_one_line_per_object() {
    let ws = standard_workspace();
    let mut run = ws.start();
    let all = run.output();
    assert!(
        all.contains("kubectl --kubeconfig") && all.contains("get env,rel,mig"),
        "the kubectl hint is printed:\n{all}"
    );
    let ns = all.find("applied  namespace staging  (namespace.yaml)");
    let secret = all.find("applied  secret staging/tokens  (app/secret.yml)");
    let env = all.find("applied  environment staging/web  (a-environment.yaml)");
    assert!(
        ns.is_some() && secret.is_some() && env.is_some(),
        "every object is reported:\n{all}"
    );
    assert!(
        ns < secret && secret < env,
        "namespace, then secret, then environment:\n{all}"
    );
    assert!(all.contains("applied  configmap staging/app  (app/config.yaml)"));
    assert!(all.contains("applied  configmap staging/extra  (app/config.yaml)"));
    run.wait_for("synced   4 files: 5 applied, 0 pruned, 0 errors");

    let names = run.kubectl_ok(&[
        "get",
        "configmaps,secrets,environments",
        "-n",
        "staging",
        "-l",
        "app.kubernetes.io/managed-by=tether-run",
        "-o",
        "name",
    ]);
    for expected in [
        "configmap/app",
        "configmap/extra",
        "secret/tokens",
        "environment.tether.dev/web",
    ] {
        assert!(
            names.contains(expected),
            "{expected} missing from:\n{names}"
        );
    }
    let source = run.kubectl_ok(&[
        "get",
        "configmap",
        "app",
        "-n",
        "staging",
        "-o",
        "jsonpath={.metadata.annotations.tether\\.dev/source}",
    ]);
    assert_eq!(source, "app/config.yaml");
    let managers = run.kubectl_ok(&[
        "get",
        "configmap",
        "app",
        "-n",
        "staging",
        "--show-managed-fields",
        "-o",
        "jsonpath={.metadata.managedFields[*].manager}",
    ]);
    assert!(managers.contains("tether-run"), "field manager: {managers}");
}

#[test]
fn a_changed_file_is_re_applied_and_a_removed_file_is_pruned() {
    let ws = standard_workspace();
    let mut run = ws.start();
    run.wait_for("synced");

    ws.write("app/config.yaml", &config_maps("debug"));
    let line = run.wait_for("applied  configmap staging/app");
    assert!(line.ends_with("(app/config.yaml)"));
    let summary = run.wait_for("synced");
    assert!(
        summary.contains("2 applied, 0 pruned"),
        "only the changed file is applied: {summary}"
    );
    let level = run.kubectl_ok(&[
        "get",
        "configmap",
        "app",
        "-n",
        "staging",
        "-o",
        "jsonpath={.data.level}",
    ]);
    assert_eq!(level, "debug");

    // A new directory is watched too.
    ws.write(
        "more/nested/extra.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: nested, namespace: staging}\n",
    );
    run.wait_for("applied  configmap staging/nested  (more/nested/extra.yaml)");

    // Someone takes `extra` over (removes the tether-run label): it is theirs now.
    run.kubectl_ok(&[
        "label",
        "configmap",
        "extra",
        "-n",
        "staging",
        "app.kubernetes.io/managed-by-",
    ]);
    ws.remove("app/config.yaml");
    run.wait_for("pruned   configmap staging/app  (no longer in app/config.yaml)");
    let summary = run.wait_for("synced");
    assert!(summary.contains("1 pruned"), "{summary}");
    let gone = run.kubectl(&["get", "configmap", "app", "-n", "staging"]);
    assert!(!gone.status.success());
    assert!(String::from_utf8_lossy(&gone.stderr).contains("NotFound"));
    run.kubectl_ok(&["get", "configmap", "extra", "-n", "staging"]);
    // Objects of the other files are untouched, and the inventory no longer lists `app`.
    run.kubectl_ok(&["get", "secret", "tokens", "-n", "staging"]);
    let inventory = run.kubectl_ok(&[
        "get",
        "configmap",
        "tether-run-inventory",
        "-n",
        "default",
        "-o",
        r"jsonpath={.data.entries\.json}",
    ]);
    let entries: serde_json::Value = serde_json::from_str(&inventory).expect("inventory JSON");
    let names: Vec<&str> = entries
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|e| e["name"].as_str())
        .collect();
    assert!(
        names.contains(&"nested") && names.contains(&"tokens"),
        "{names:?}"
    );
    assert!(
        !names.contains(&"app") && !names.contains(&"extra"),
        "{names:?}"
    );
}

#[test]
fn a_bad_manifest_is_reported_with_file_field_and_reason_and_the_others_still_apply() {
    let ws = standard_workspace();
    ws.write(
        "bad/syntax.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: [unclosed\n",
    );
    ws.write(
        "bad/kinds.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {namespace: staging}\n---\n\
         apiVersion: example.com/v1\nkind: Gadget\nmetadata: {name: g, namespace: staging}\n---\n\
         apiVersion: v1\nkind: ConfigMap\nmetadata: {name: survivor, namespace: staging}\n",
    );
    let mut run = ws.start();
    let all = run.output();

    let syntax = line_with(&all, "bad/syntax.yaml");
    assert!(
        syntax.starts_with("error    bad/syntax.yaml (line "),
        "{syntax}"
    );
    assert!(syntax.contains("invalid YAML"), "{syntax}");

    let no_name = line_with(&all, "bad/kinds.yaml (document 1, line 1)");
    assert!(
        no_name.contains("metadata.name: Required value"),
        "{no_name}"
    );

    let unknown = line_with(&all, "bad/kinds.yaml (document 2, line 5)");
    assert!(
        unknown.contains("gadget staging/g") && unknown.contains("kind Gadget"),
        "{unknown}"
    );

    assert!(all.contains("applied  configmap staging/survivor  (bad/kinds.yaml)"));
    assert!(all.contains("applied  environment staging/web"));
    run.wait_for("synced   6 files: 6 applied, 0 pruned, 3 errors");
    run.kubectl_ok(&["get", "configmap", "survivor", "-n", "staging"]);
}

#[test]
fn an_object_rejected_by_a_cel_rule_is_reported_with_the_rules_message() {
    let ws = standard_workspace();
    ws.write("bad/cel.yaml", ENVIRONMENT_BREAKING_CEL);
    let mut run = ws.start();
    let all = run.output();
    let cel = line_with(&all, "bad/cel.yaml (document 1, line 2)");
    assert!(cel.starts_with("error    "), "{cel}");
    assert!(cel.contains("environment staging/broken"), "{cel}");
    assert!(
        cel.contains("spec.credentials.render is required when spec.render is set"),
        "the CEL rule's message: {cel}"
    );
    assert!(all.contains("applied  environment staging/web"), "{all}");
    run.wait_for("synced   5 files: 5 applied, 0 pruned, 1 errors");
    let missing = run.kubectl(&["get", "environment", "broken", "-n", "staging"]);
    assert!(
        !missing.status.success(),
        "the invalid Environment was not stored"
    );
}

#[test]
fn a_file_with_errors_prunes_nothing_it_applied_before() {
    let ws = standard_workspace();
    let mut run = ws.start();
    run.wait_for("synced");
    ws.write(
        "app/config.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: [broken\n",
    );
    run.wait_for("error    app/config.yaml");
    let summary = run.wait_for("synced");
    assert!(summary.contains("0 pruned"), "{summary}");
    run.kubectl_ok(&["get", "configmap", "app", "-n", "staging"]);
}

#[test]
fn a_sigkilled_run_restarted_on_the_same_state_keeps_every_object() {
    let ws = standard_workspace();
    let mut run = ws.start();
    run.wait_for("synced");
    let before = identities(&run);
    // An object made with kubectl, not from the manifests: restart must keep it, and
    // `tether run` must not prune it.
    let by_hand = ws.scratch_file(
        "by-hand.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: by-hand, namespace: staging}\ndata: {k: v}\n",
    );
    run.kubectl_ok(&["create", "--validate=false", "-f", path(&by_hand)]);
    run.kill();

    // Removed while stopped: pruned on the next start, from the stored inventory.
    ws.remove("app/secret.yml");
    let mut run = ws.start();
    run.wait_for("synced   3 files: 4 applied, 1 pruned, 0 errors");
    let all = run.output();
    assert!(
        all.contains("pruned   secret staging/tokens  (no longer in app/secret.yml)"),
        "{all}"
    );
    let after = identities(&run);
    for object in [
        "configmap/app",
        "configmap/extra",
        "environment.tether.dev/web",
    ] {
        let uid = |list: &[(String, String)]| {
            list.iter()
                .find(|(name, _)| name == object)
                .map(|(_, uid)| uid.clone())
        };
        assert!(
            uid(&before).is_some(),
            "{object} existed before: {before:?}"
        );
        assert_eq!(
            uid(&before),
            uid(&after),
            "{object} is the same object after the restart, not a new one"
        );
    }
    run.kubectl_ok(&["get", "configmap", "by-hand", "-n", "staging"]);
    assert!(run.terminate(), "SIGTERM stops tether run cleanly");
}

#[test]
fn status_written_by_the_controllers_survives_a_sigkill() {
    let ws = standard_workspace();
    let run = ws.start();
    // The Environment controller has reported on `web` (observedGeneration is current).
    let deadline = Instant::now() + Duration::from_secs(8);
    let before = loop {
        let env = environment_json(&run);
        let status = &env["status"];
        if status["observedGeneration"] == env["metadata"]["generation"] && ready(status).is_some()
        {
            break status.clone();
        }
        assert!(
            Instant::now() < deadline,
            "the controller never reported: {env}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    // A status rewritten after the restart would carry a later lastTransitionTime: wait
    // until the clock has passed the stored one, so the two cannot coincide.
    let stored = ready(&before)
        .and_then(|c| c["lastTransitionTime"].as_str())
        .and_then(|t| t.parse::<jiff::Timestamp>().ok())
        .expect("Ready has a lastTransitionTime");
    while jiff::Timestamp::now() < stored + jiff::SignedDuration::from_millis(1100) {
        std::thread::sleep(Duration::from_millis(50));
    }
    run.kill();

    let run = ws.start();
    let after = environment_json(&run)["status"].clone();
    assert_eq!(after["observedGeneration"], before["observedGeneration"]);
    assert_eq!(
        ready(&after),
        ready(&before),
        "the Ready condition, lastTransitionTime included, is the stored one"
    );
}

/// A PostgreSQL database of its own for one test, dropped when the test ends (the samples'
/// Migrations apply to it instead of `tether_demo`).
struct ScratchDatabase {
    admin_url: String,
    name: String,
}

impl ScratchDatabase {
    fn create() -> ScratchDatabase {
        let admin_url = std::env::var("DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string());
        let name = format!("tether_run_{:016x}", rand::random::<u64>());
        let out = std::process::Command::new("psql")
            .args([
                admin_url.as_str(),
                "-q",
                "-c",
                &format!("CREATE DATABASE {name}"),
            ])
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "create database: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        ScratchDatabase { admin_url, name }
    }

    fn url(&self) -> String {
        let (prefix, _) = self
            .admin_url
            .rsplit_once('/')
            .expect("DATABASE_URL has a database");
        format!("{prefix}/{}", self.name)
    }
}

impl Drop for ScratchDatabase {
    fn drop(&mut self) {
        let _ = std::process::Command::new("psql")
            .args([
                self.admin_url.as_str(),
                "-q",
                "-c",
                &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
            ])
            .output();
    }
}

#[test]
fn kubectl_wait_sees_the_controllers_make_the_samples_ready() {
    let database = ScratchDatabase::create();
    let ws = Workspace::new();
    let samples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/samples");
    for entry in std::fs::read_dir(&samples).expect("config/samples") {
        let path = entry.expect("sample").path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .expect("file name");
        let text = std::fs::read_to_string(&path).expect("read sample");
        let sample_url = "postgres://postgres@127.0.0.1:5432/tether_demo";
        ws.write(name, &text.replace(sample_url, &database.url()));
    }
    let mut run = ws.start();
    run.wait_for("0 errors");
    let established = run.kubectl_ok(&[
        "wait",
        "--for=condition=Established",
        "crd",
        "--all",
        "--timeout=10s",
    ]);
    assert!(
        established.contains(
            "customresourcedefinition.apiextensions.k8s.io/environments.tether.dev condition met"
        ),
        "{established}"
    );
    // No status is written by the test: Ready comes from the controllers `tether run` runs.
    let out = run.kubectl_ok(&[
        "wait",
        "--for=condition=Ready",
        "environment/staging",
        "migration/app-schema",
        "-n",
        "default",
        "--timeout=40s",
    ]);
    for object in [
        "environment.tether.dev/staging condition met",
        "migration.tether.dev/app-schema condition met",
    ] {
        assert!(out.contains(object), "{object:?} missing from:\n{out}");
    }
    // The sample Release deploys every component (migrations first), runs its health checks
    // against the sandbox's apps and succeeds: `kubectl wait` for Ready returns only then.
    let out = run.kubectl_ok(&[
        "wait",
        "--for=condition=Ready",
        "release/staging-1-4-2",
        "-n",
        "default",
        "--timeout=60s",
    ]);
    assert!(
        out.contains("release.tether.dev/staging-1-4-2 condition met"),
        "{out}"
    );
    let release = run.kubectl_ok(&[
        "get",
        "release",
        "staging-1-4-2",
        "-n",
        "default",
        "-o",
        "jsonpath={.status.phase} {.status.progress} {.status.checks[*].state}",
    ]);
    assert_eq!(release, "Succeeded 2/2 Passed Passed Passed", "{release}");
    let all = run.output();
    assert!(
        all.contains("environment default/staging  Ready=True"),
        "the transition is printed:\n{all}"
    );
}

fn environment_json(run: &super::run_harness::TetherRun) -> serde_json::Value {
    let json = run.kubectl_ok(&["get", "environment", "web", "-n", "staging", "-o", "json"]);
    serde_json::from_str(&json).expect("kubectl -o json")
}

fn ready(status: &serde_json::Value) -> Option<&serde_json::Value> {
    status["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")
}

/// `kind/name` and uid of every object in namespace staging.
fn identities(run: &super::run_harness::TetherRun) -> Vec<(String, String)> {
    let out = run.kubectl_ok(&[
        "get",
        "configmaps,secrets,environments",
        "-n",
        "staging",
        "-o",
        r#"jsonpath={range .items[*]}{.kind}/{.metadata.name} {.metadata.uid}{"\n"}{end}"#,
    ]);
    out.lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(name, uid)| {
            let name = name
                .replacen("ConfigMap/", "configmap/", 1)
                .replacen("Secret/", "secret/", 1)
                .replacen("Environment/", "environment.tether.dev/", 1);
            (name, uid.to_string())
        })
        .collect()
}

#[test]
fn condition_transitions_and_warning_events_of_tether_objects_are_printed() {
    let ws = standard_workspace();
    let mut run = ws.start();
    run.wait_for("synced");
    // The controllers sync the Environment's Render service on the sandbox.
    run.wait_for("environment staging/web  Ready=True Synced: 1/1 platform object ready");
    // A token the sandbox rejects: the edited Secret is applied, the Environment stalls.
    ws.write(
        "app/secret.yml",
        &SECRET.replace("sandbox-render-token", "rnd_rejected-token"),
    );
    let stalled = run.wait_for("environment staging/web  Ready=False CredentialsRejected: ");
    assert!(stalled.contains("Secret \"tokens\""), "{stalled}");
    assert!(!run.output().contains("rnd_rejected-token"));
    ws.write("app/secret.yml", SECRET);
    run.wait_for("environment staging/web  Ready=True Synced: 1/1 platform object ready");

    let event = ws.scratch_file(
        "event.yaml",
        "\
apiVersion: events.k8s.io/v1
kind: Event
metadata: { name: web.deploy-failed, namespace: staging }
eventTime: \"2026-01-01T00:00:00.000000Z\"
reportingController: tether.dev/controller
reportingInstance: tether-controller-0
action: Deploy
reason: DeployFailed
note: render service web-api deployment dep-1 failed
type: Warning
regarding: { apiVersion: tether.dev/v1alpha1, kind: Environment, name: web, namespace: staging }
",
    );
    run.kubectl_ok(&["create", "--validate=false", "-f", path(&event)]);
    run.wait_for(
        "warning  environment staging/web  DeployFailed: render service web-api deployment dep-1 failed",
    );
}

#[test]
fn a_missing_manifest_directory_or_a_non_loopback_address_is_refused_with_a_clear_error() {
    let ws = Workspace::new();
    let missing = ws.manifests().join("nope");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tether"))
        .args([
            "run",
            "--manifests",
            path(&missing),
            "--state-dir",
            path(&ws.state()),
        ])
        .output()
        .expect("run tether");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("failed to open manifest directory"),
        "{stderr}"
    );

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tether"))
        .args([
            "run",
            "--manifests",
            path(&ws.manifests()),
            "--addr",
            "0.0.0.0:0",
        ])
        .args(["--state-dir", path(&ws.state())])
        .output()
        .expect("run tether");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("only listens on a loopback address"),
        "{stderr}"
    );
    assert!(
        !ws.state().exists(),
        "nothing is created when the flags are refused"
    );
}

fn path(p: &std::path::Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn line_with<'a>(all: &'a str, needle: &str) -> &'a str {
    all.lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line with {needle:?} in:\n{all}"))
}

/// The permission bits of `p`.
fn mode(p: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777
}

/// The kubeconfig `tether run` wrote.
fn kubeconfig(ws: &Workspace) -> kube::config::Kubeconfig {
    kube::config::Kubeconfig::read_from(ws.state().join("kubeconfig")).unwrap()
}

/// The server URL, the CA certificate (PEM) and the token of the kubeconfig `tether run`
/// wrote.
fn credentials(ws: &Workspace) -> (String, Vec<u8>, String) {
    use base64::Engine as _;
    use secrecy::ExposeSecret as _;
    let config = kubeconfig(ws);
    let cluster = config.clusters[0].cluster.clone().unwrap();
    let ca = base64::engine::general_purpose::STANDARD
        .decode(cluster.certificate_authority_data.unwrap())
        .unwrap();
    let auth = config.auth_infos[0].auth_info.clone().unwrap();
    let token = auth.token.unwrap().expose_secret().to_owned();
    (cluster.server.unwrap(), ca, token)
}

/// The status code and body of a GET of `path` over TLS (trusting only `ca`, a PEM
/// certificate) at `url` (`https://127.0.0.1:<port>`), with these headers.
fn get_tls(url: &str, ca: &[u8], path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    use rustls::pki_types::pem::PemObject as _;
    use std::io::{Read, Write};
    let authority = url.strip_prefix("https://").expect("https URL");
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from_pem_slice(ca).expect("CA PEM"))
        .expect("CA certificate");
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let ip: std::net::IpAddr = authority
        .rsplit_once(':')
        .expect("host:port")
        .0
        .parse()
        .expect("an IP address");
    let connection =
        rustls::ClientConnection::new(std::sync::Arc::new(config), ip.into()).expect("TLS");
    let tcp = std::net::TcpStream::connect(authority).expect("connect");
    let mut stream = rustls::StreamOwned::new(connection, tcp);
    let mut request = format!("GET {path} HTTP/1.1\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).expect("send");
    let mut response = Vec::new();
    // The server may close without a TLS close_notify: what was read is kept.
    let _ = stream.read_to_end(&mut response);
    let response = String::from_utf8(response).expect("text");
    let (_, body) = response.split_once("\r\n\r\n").expect("a response");
    (
        response[9..12].parse().expect("status code"),
        body.to_owned(),
    )
}

/// What answers plain HTTP on the address of `url`.
fn plain_http_answer(url: &str) -> Vec<u8> {
    use std::io::{Read, Write};
    let authority = url.strip_prefix("https://").expect("https URL");
    let mut stream = std::net::TcpStream::connect(authority).expect("connect");
    let request = format!("GET /api HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).expect("send");
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    response
}

/// The files of the state directory that must not change across restarts.
const KEPT_FILES: [&str; 4] = ["api-token", "api-ca.crt", "api-tls.crt", "api-tls.key"];

#[test]
fn the_state_directory_is_private_and_the_api_answers_only_https_with_the_token() {
    use std::os::unix::fs::PermissionsExt;
    let ws = standard_workspace();
    // A state directory and store from before: readable by everyone.
    std::fs::create_dir(ws.state()).unwrap();
    std::fs::set_permissions(ws.state(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let store = ws.state().join("store.redb");
    std::fs::write(&store, "").unwrap();
    std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o644)).unwrap();

    let mut run = ws.start();
    run.wait_for("synced");
    assert_eq!(mode(&ws.state()), 0o700);
    for file in ["store.redb", "kubeconfig", "api-token", "api-tls.key"] {
        assert_eq!(mode(&ws.state().join(file)), 0o600, "{file}");
    }
    let written = std::fs::read_to_string(ws.state().join("kubeconfig")).unwrap();
    assert!(
        !written.contains("PRIVATE KEY") && !written.contains("client-key"),
        "the kubeconfig holds no key:\n{written}"
    );
    let (server, ca, token) = credentials(&ws);
    assert!(server.starts_with("https://127.0.0.1:"), "{server}");
    assert_eq!(
        token,
        std::fs::read_to_string(ws.state().join("api-token"))
            .unwrap()
            .trim()
    );
    let host = server.trim_start_matches("https://").to_owned();
    let bearer = format!("Bearer {token}");
    let path = "/api/v1/secrets";
    let auth = ("Authorization", bearer.as_str());
    assert_eq!(get_tls(&server, &ca, path, &[("Host", &host), auth]).0, 200);
    let (code, body) = get_tls(&server, &ca, path, &[("Host", &host)]);
    assert_eq!(code, 401, "{body}");
    assert!(body.contains(r#""reason":"Unauthorized""#), "{body}");
    let wrong = ("Authorization", "Bearer not-the-token");
    assert_eq!(
        get_tls(&server, &ca, path, &[("Host", &host), wrong]).0,
        401
    );
    assert_eq!(get_tls(&server, &ca, "/readyz", &[("Host", &host)]).0, 200);
    assert_eq!(
        get_tls(&server, &ca, path, &[("Host", "evil.example"), auth]).0,
        403
    );
    let plain = plain_http_answer(&server);
    assert!(
        !plain.starts_with(b"HTTP/"),
        "plain HTTP is answered: {}",
        String::from_utf8_lossy(&plain)
    );
    run.kubectl_ok(&["get", "secret", "tokens", "-n", "staging"]);
    let envs = run.kubectl_ok(&["get", "env", "-n", "staging", "-o", "name"]);
    assert!(envs.contains("environment.tether.dev/web"), "{envs}");
    let kept: Vec<Vec<u8>> = KEPT_FILES
        .iter()
        .map(|f| std::fs::read(ws.state().join(f)).unwrap())
        .collect();
    assert!(run.terminate(), "SIGTERM stops tether run cleanly");

    // Restarted: the same token and certificate, so earlier kubeconfigs stay valid.
    let run = ws.start();
    for (file, before) in KEPT_FILES.iter().zip(&kept) {
        assert_eq!(
            &std::fs::read(ws.state().join(file)).unwrap(),
            before,
            "{file}"
        );
    }
    for file in ["api-token", "api-tls.key"] {
        assert_eq!(mode(&ws.state().join(file)), 0o600, "{file}");
    }
    let (_, ca_after, token_after) = credentials(&ws);
    assert_eq!((ca_after, token_after), (ca, token));
    run.kubectl_ok(&["get", "env", "-n", "staging"]);
}
