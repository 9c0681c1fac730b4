//! `tether plan --manifests DIR`, run as a binary on temporary manifest directories: against
//! the in-process sandbox (`--sandbox`), and against a sandbox this test started and filled
//! (endpoint flags). Exit codes, the per-object lines, where credentials come from, and no
//! secret value in the output.

use std::path::Path;
use std::process::{Command, Output};

use tether::platform::Platform;
use tether::sandbox::{SandboxConfig, sample_token};
use tether::sync::Platforms;
use tether::sync::run::{Mode, Request, sync};
use tether::telemetry::MetricsRegistry;
use tokio_util::sync::CancellationToken;

const TETHER: &str = env!("CARGO_BIN_EXE_tether");
/// An application secret the test manifests hold; it must never be printed.
const STRIPE_KEY: &str = "sk_test_plan_cli_4f9d2a7c";

/// The Secret with the sandbox's tokens (as the samples name it) and an app secret.
fn secrets_yaml() -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: platform-tokens\n  namespace: default\n\
         stringData:\n  fly: sandbox-fly-token\n  render: sandbox-render-token\n---\n\
         apiVersion: v1\nkind: Secret\nmetadata:\n  name: app-secrets\n  namespace: default\n\
         stringData:\n  stripe-key: {STRIPE_KEY}\n"
    )
}

/// An Environment with one Fly app of `image` in one region, a plain env var and, when
/// `with_secret`, a secret from Secret `app-secrets`.
fn fly_env(name: &str, image: &str, with_secret: bool) -> String {
    let secrets = if with_secret {
        "        secrets:\n          - name: STRIPE_KEY\n            \
         secretKeyRef: { name: app-secrets, key: stripe-key }\n"
    } else {
        ""
    };
    format!(
        "apiVersion: tether.dev/v1alpha1\nkind: Environment\nmetadata:\n  name: {name}\n  namespace: default\n\
         spec:\n  credentials:\n    fly: {{ name: platform-tokens, key: fly }}\n\
         \x20 fly:\n    org: acme\n    apps:\n      - name: acme-edge\n        image: {image}\n\
         \x20       regions: [{{ region: ams, count: 1 }}]\n\
         \x20       env: {{ LOG_LEVEL: info }}\n{secrets}"
    )
}

const IMAGE_1: &str = "registry.fly.io/acme-edge:1";
const IMAGE_2: &str = "registry.fly.io/acme-edge:2";
const APP: &str = r#"fly app "acme-edge""#;

const EMPTY_ENV: &str = "apiVersion: tether.dev/v1alpha1\nkind: Environment\nmetadata:\n  name: empty\n  namespace: default\nspec: {}\n";

fn manifests(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    for (name, content) in files {
        let path = dir.path().join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(path, content).expect("write manifest");
    }
    dir
}

/// Runs `tether plan --manifests dir ARGS` with `envs` set and no inherited
/// `TETHER_SECRET_*`/endpoint variables.
fn plan(dir: &Path, args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut command = Command::new(TETHER);
    command.arg("plan").arg("--manifests").arg(dir).args(args);
    for (name, _) in std::env::vars() {
        if name.starts_with("TETHER_") {
            command.env_remove(name);
        }
    }
    command.envs(envs.iter().copied());
    command.output().expect("run tether plan")
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_no_secret(out: &Output, secrets: &[&str]) {
    let (stdout, stderr) = text(out);
    for secret in secrets {
        assert!(!stdout.contains(secret), "{secret} in stdout:\n{stdout}");
        assert!(!stderr.contains(secret), "{secret} in stderr:\n{stderr}");
    }
}

/// The line of `object` (`fly app "acme-edge"`) in the text plan.
fn object_line<'a>(stdout: &'a str, object: &str) -> &'a str {
    stdout
        .lines()
        .find(|l| l.contains(object))
        .unwrap_or_else(|| panic!("no line for {object}:\n{stdout}"))
}

#[test]
fn an_empty_sandbox_plans_every_object_as_a_create_and_exits_2() {
    let dir = manifests(&[
        ("00-secrets.yaml", &secrets_yaml()),
        ("envs/staging.yaml", &fly_env("staging", IMAGE_1, true)),
    ]);
    let out = plan(dir.path(), &["--sandbox"], &[]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stdout}\n{stderr}");
    assert!(
        stdout.starts_with("environment default/staging\n"),
        "{stdout}"
    );
    let line = object_line(&stdout, APP);
    assert!(line.starts_with("  + "), "{line}");
    assert!(line.trim_end().ends_with("create"), "{line}");
    assert!(
        stdout.contains(&format!("image: (absent) → {IMAGE_1}")),
        "{stdout}"
    );
    assert!(
        stdout.contains("env.LOG_LEVEL: (absent) → info"),
        "{stdout}"
    );
    // Every line is a create, and the summary counts them.
    let creates = stdout.lines().filter(|l| l.starts_with("  + ")).count();
    assert!(
        stdout
            .lines()
            .all(|l| !l.starts_with("  ~ ") && !l.starts_with("  = ")),
        "{stdout}"
    );
    let summary = stdout.lines().last().unwrap_or_default();
    assert!(
        summary.starts_with(&format!(
            "Plan: {creates} to create, 0 to change, 0 to delete, 0 in sync, 0 orphaned; "
        )),
        "{summary}"
    );
    assert!(summary.contains(" reads made, "), "{summary}");
    assert_no_secret(&out, &[STRIPE_KEY, "sandbox-fly-token"]);
}

#[test]
fn the_json_output_lists_the_same_plan_without_secret_values() {
    let dir = manifests(&[
        ("secrets.yml", &secrets_yaml()),
        ("staging.yaml", &fly_env("staging", IMAGE_1, true)),
    ]);
    let out = plan(dir.path(), &["--sandbox", "--output", "json"], &[]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stdout}\n{stderr}");
    let plan: serde_json::Value = serde_json::from_str(&stdout).expect("JSON plan");
    let object = &plan["environments"][0]["objects"][0];
    assert_eq!(plan["environments"][0]["environment"], "default/staging");
    assert_eq!(object["platform"], "fly");
    assert_eq!(object["kind"], "app");
    assert_eq!(object["name"], "acme-edge");
    assert_eq!(object["action"], "create");
    let objects = plan["environments"][0]["objects"]
        .as_array()
        .expect("objects");
    assert_eq!(plan["summary"]["create"], objects.len());
    assert_no_secret(&out, &[STRIPE_KEY, "sandbox-fly-token"]);
}

#[test]
fn a_credential_from_the_environment_overrides_the_manifests() {
    // The directory holds a wrong token; TETHER_SECRET_… holds the one the sandbox accepts.
    let wrong = secrets_yaml().replace("sandbox-fly-token", "wrong-fly-token");
    let dir = manifests(&[
        ("secrets.yaml", &wrong),
        ("staging.yaml", &fly_env("staging", IMAGE_1, true)),
    ]);
    let rejected = plan(dir.path(), &["--sandbox"], &[]);
    let (stdout, stderr) = text(&rejected);
    assert_eq!(rejected.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stderr.contains("fly"), "{stderr}");
    assert!(stderr.contains("platform-tokens"), "{stderr}");
    assert_no_secret(&rejected, &["wrong-fly-token", STRIPE_KEY]);

    let out = plan(
        dir.path(),
        &["--sandbox"],
        &[("TETHER_SECRET_PLATFORM_TOKENS_FLY", "sandbox-fly-token")],
    );
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stdout}\n{stderr}");
    assert!(object_line(&stdout, APP).starts_with("  + "), "{stdout}");
    assert_no_secret(&out, &["sandbox-fly-token", STRIPE_KEY]);
}

#[test]
fn a_secrets_file_provides_what_the_directory_lacks() {
    let dir = manifests(&[("staging.yaml", &fly_env("staging", IMAGE_1, true))]);
    let secrets = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(secrets.path(), secrets_yaml()).expect("write secrets");
    let secrets_path = secrets.path().to_str().expect("utf-8 path");
    let out = plan(dir.path(), &["--sandbox", "--secrets", secrets_path], &[]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stdout}\n{stderr}");
    assert!(object_line(&stdout, APP).contains("create"), "{stdout}");
    assert_no_secret(&out, &["sandbox-fly-token", STRIPE_KEY]);
}

#[test]
fn a_missing_secret_exits_1_naming_the_secret_key_and_field() {
    let only_tokens = "apiVersion: v1\nkind: Secret\nmetadata:\n  name: platform-tokens\n\
                       stringData:\n  fly: sandbox-fly-token\n";
    let dir = manifests(&[
        ("secrets.yaml", only_tokens),
        ("staging.yaml", &fly_env("staging", IMAGE_1, true)),
    ]);
    let out = plan(dir.path(), &["--sandbox"], &[]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    for expected in [
        "Environment default/staging",
        r#"Secret "app-secrets""#,
        r#""stripe-key""#,
        "spec.fly.apps[0].secrets[0].secretKeyRef",
        "TETHER_SECRET_APP_SECRETS_STRIPE_KEY",
    ] {
        assert!(
            stderr.contains(expected),
            "{expected} missing in:\n{stderr}"
        );
    }
    assert_no_secret(&out, &["sandbox-fly-token"]);

    // The Secret exists but lacks the key.
    let dir = manifests(&[
        (
            "secrets.yaml",
            &secrets_yaml().replace("stripe-key:", "other-key:"),
        ),
        ("staging.yaml", &fly_env("staging", IMAGE_1, true)),
    ]);
    let out = plan(dir.path(), &["--sandbox"], &[]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(r#"Secret "app-secrets" has no key "stripe-key""#),
        "{stderr}"
    );
    assert_no_secret(&out, &["sandbox-fly-token", STRIPE_KEY]);
}

#[test]
fn an_invalid_manifest_exits_1_naming_file_document_and_field() {
    let bad = format!(
        "{}---\napiVersion: tether.dev/v1alpha1\nkind: Environment\nmetadata:\n  name: bad\nspec:\n  fly:\n    org: acme\n",
        EMPTY_ENV
    );
    let dir = manifests(&[("envs/all.yaml", &bad)]);
    let out = plan(dir.path(), &["--sandbox"], &[]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("envs/all.yaml:2: Environment/bad: spec: Invalid value"),
        "{stderr}"
    );
    assert!(
        stderr.contains("spec.credentials.fly is required when spec.fly is set"),
        "{stderr}"
    );
}

#[test]
fn an_environment_without_platform_objects_changes_nothing_and_exits_0() {
    let dir = manifests(&[("empty.yaml", EMPTY_ENV)]);
    let out = plan(dir.path(), &["--sandbox"], &[]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert_eq!(
        stdout,
        "environment default/empty\n  (no platform objects)\n\n\
         Plan: 0 to create, 0 to change, 0 to delete, 0 in sync, 0 orphaned; \
         0 platform requests (0 reads made, 0 writes to apply)\n"
    );
}

/// Applies `dir`'s Environments to `sandbox` through the library (what the controller
/// does), so the plan that follows finds the objects.
async fn apply(dir: &Path, platforms: &Platforms) {
    let loaded = tether::sync::plan::load(dir, &[]).expect("load manifests");
    for env in &loaded.environments {
        let namespace = env.metadata.namespace.clone().unwrap_or_default();
        let key = format!(
            "{namespace}/{}",
            env.metadata.name.clone().unwrap_or_default()
        );
        let secrets = loaded
            .secrets
            .resolve(&key, &namespace, &env.spec, &|_| None)
            .expect("resolve secrets");
        let request = Request {
            environment: &key,
            spec: &env.spec,
            secrets: &secrets,
            previous: &[],
            drift_possible: &[],
            deleting: false,
            now: "2026-11-22T08:00:00Z".into(),
            owners: &Default::default(),
        };
        for synced in sync(platforms, &request, Mode::Apply).await {
            assert!(synced.failure.is_none(), "{:?}", synced.failure);
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sandbox_already_holding_the_objects_plans_nothing_and_exits_0_until_the_spec_changes() {
    let stop = CancellationToken::new();
    let sandbox = tether::sandbox::start(
        SandboxConfig {
            time_scale: 100.0,
            tokens: Platform::ALL
                .into_iter()
                .map(|p| (p, sample_token(p)))
                .collect(),
            ..SandboxConfig::default()
        },
        stop.clone(),
    )
    .await
    .expect("start the sandbox");
    let registry = MetricsRegistry::new();
    let platforms = Platforms::new(
        sandbox.platforms_config(100.0),
        tether::platform::PlatformMetrics::register(&registry).expect("metrics"),
    );
    let dir = manifests(&[
        ("secrets.yaml", &secrets_yaml()),
        // Fly secrets are write-only: without a previous status a plan cannot tell them
        // unchanged, so this Environment has none.
        ("staging.yaml", &fly_env("staging", IMAGE_1, false)),
    ]);
    apply(dir.path(), &platforms).await;
    let fly_url = sandbox.url(Platform::Fly).expect("fly served");
    let endpoints = ["--fly-url", fly_url.as_str()];

    let dir_path = dir.path().to_path_buf();
    let args = endpoints.map(String::from);
    let out = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        plan(&dir_path, &args, &[])
    })
    .await
    .expect("plan");
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    let line = object_line(&stdout, APP);
    assert!(line.starts_with("  = "), "{line}");
    assert!(line.trim_end().ends_with("in sync"), "{line}");
    assert!(
        stdout
            .lines()
            .all(|l| !l.starts_with("  + ") && !l.starts_with("  ~ ") && !l.starts_with("  - ")),
        "{stdout}"
    );
    assert!(
        stdout.contains("Plan: 0 to create, 0 to change, 0 to delete, "),
        "{stdout}"
    );
    assert!(stdout.contains("0 writes to apply"), "{stdout}");
    assert_no_secret(&out, &[STRIPE_KEY, "sandbox-fly-token"]);

    // The image changes in the manifests: exactly that field is to be updated.
    std::fs::write(
        dir.path().join("staging.yaml"),
        fly_env("staging", IMAGE_2, false),
    )
    .expect("rewrite");
    let dir_path = dir.path().to_path_buf();
    let args = endpoints.map(String::from);
    let out = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        plan(&dir_path, &args, &[])
    })
    .await
    .expect("plan");
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stdout}\n{stderr}");
    let line = object_line(&stdout, "  ~ fly ");
    assert!(line.trim_end().ends_with("update"), "{line}");
    assert!(
        stdout.contains(&format!("image: {IMAGE_1} → {IMAGE_2}")),
        "{stdout}"
    );
    assert!(
        !stdout.contains("LOG_LEVEL"),
        "unchanged fields are not listed:\n{stdout}"
    );
    assert_no_secret(&out, &[STRIPE_KEY, "sandbox-fly-token"]);
    stop.cancel();
    sandbox.stopped().await;
}

/// An Environment the controller reconciled, planned against the cluster's state: unchanged
/// (write-only secret included) it exits 0; an app removed from the manifests is a delete; an
/// Environment removed from them shows its cleanup. Without the state the secret cannot be
/// compared: it is shown as unknown and does not make the exit code 2.
#[tokio::test(flavor = "multi_thread")]
async fn planned_against_the_clusters_state_an_unchanged_environment_exits_0_and_removals_show() {
    use crate::support::sync::SyncHarness;

    let h = SyncHarness::start().await;
    h.put_secret("app-secrets", &[("stripe-key", STRIPE_KEY)])
        .await;
    let token = h.sandbox.token(Platform::Fly).unwrap();
    let environment = |apps: &[&str]| {
        let apps: String = apps
            .iter()
            .map(|app| {
                format!(
                    "      - name: {app}\n        image: {IMAGE_1}\n        regions: [{{ region: ams, count: 1 }}]\n\
                     \x20       secrets:\n          - name: STRIPE_KEY\n            \
                     secretKeyRef: {{ name: app-secrets, key: stripe-key }}\n"
                )
            })
            .collect();
        format!(
            "apiVersion: tether.dev/v1alpha1\nkind: Environment\nmetadata:\n  name: staging\n  namespace: default\n\
             spec:\n  credentials:\n    fly: {{ name: tether-sandbox-fly, key: token }}\n\
             \x20 fly:\n    org: acme\n    apps:\n{apps}"
        )
    };
    let both = environment(&["acme-edge", "acme-jobs"]);
    let docs = tether::schema::validate::parse_stream(&both).unwrap();
    h.apply(docs[0].clone()).await;
    h.wait_ready("staging").await;

    let secrets = format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: tether-sandbox-fly\n  namespace: default\n\
         stringData:\n  token: {}\n---\n\
         apiVersion: v1\nkind: Secret\nmetadata:\n  name: app-secrets\n  namespace: default\n\
         stringData:\n  stripe-key: {STRIPE_KEY}\n",
        token.expose()
    );
    let dir = manifests(&[("secrets.yaml", &secrets), ("staging.yaml", &both)]);
    let fly_url = h.sandbox.url(Platform::Fly).unwrap();
    let kubeconfig = h.cluster.kubeconfig_path().display().to_string();
    let run = |args: Vec<String>| {
        let dir = dir.path().to_path_buf();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            plan(&dir, &args, &[])
        })
    };
    let from_cluster: Vec<String> = [
        "--fly-url",
        &fly_url,
        "--from-cluster",
        "--kubeconfig",
        &kubeconfig,
    ]
    .map(String::from)
    .to_vec();

    // Unchanged, with the cluster's state: everything in sync.
    let out = run(from_cluster.clone()).await.unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(
        object_line(&stdout, APP).starts_with("  = "),
        "{stdout}\n{stderr}"
    );
    assert!(!stdout.contains("unknown"), "{stdout}");

    // Without a state the write-only secret cannot be compared: unknown, still exit 0.
    let out = run(vec!["--fly-url".into(), fly_url.clone()])
        .await
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("secrets.STRIPE_KEY: (secret) → (secret) (unknown: "),
        "{stdout}"
    );
    // Two apps, and their machines relaunched only because of those secrets.
    assert!(stdout.contains(", 4 unknown ("), "{stdout}");

    // The same state exported with kubectl's List format.
    let listed = h
        .environments()
        .list(&Default::default())
        .await
        .unwrap()
        .items;
    let export = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": listed});
    let exported = tempfile::tempdir().unwrap();
    let state = exported.path().join("state.json");
    std::fs::write(&state, export.to_string()).unwrap();
    let out = run(vec![
        "--fly-url".into(),
        fly_url.clone(),
        "--state".into(),
        state.display().to_string(),
    ])
    .await
    .unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(!stdout.contains("unknown"), "{stdout}");

    // An app removed from the manifests: its deletion, and its machine's.
    std::fs::write(dir.path().join("staging.yaml"), environment(&["acme-edge"])).unwrap();
    let out = run(from_cluster.clone()).await.unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stdout}\n{stderr}");
    let removed = object_line(&stdout, r#"fly app "acme-jobs""#);
    assert!(
        removed.starts_with("  - ") && removed.trim_end().ends_with("delete"),
        "{stdout}"
    );
    assert!(object_line(&stdout, APP).starts_with("  = "), "{stdout}");

    // The whole Environment removed: its cleanup.
    std::fs::remove_file(dir.path().join("staging.yaml")).unwrap();
    let out = run(from_cluster).await.unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("environment default/staging\n  (not in the manifests any more"),
        "{stdout}"
    );
    assert!(object_line(&stdout, APP).starts_with("  - "), "{stdout}");
    assert_no_secret(&out, &[STRIPE_KEY, token.expose()]);
    h.stop().await;
}

#[test]
fn an_unreachable_platform_fails_the_plan_within_seconds_naming_the_host_and_with_no_summary() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = manifests(&[
        ("00-secrets.yaml", &secrets_yaml()),
        ("staging.yaml", &fly_env("staging", IMAGE_1, false)),
    ]);
    let url = format!("http://127.0.0.1:{port}");
    let started = std::time::Instant::now();
    let out = plan(dir.path(), &["--fly-url", &url], &[]);
    let took = started.elapsed();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        took < std::time::Duration::from_secs(15),
        "took {took:?} to give up"
    );
    assert!(
        stderr.contains(&format!("cannot connect to 127.0.0.1:{port}")),
        "{stderr}"
    );
    assert!(
        !stdout.contains("Plan:"),
        "no summary of a partial plan:\n{stdout}"
    );
    assert!(
        stdout.contains("No plan: 1 platform(s) could not be planned"),
        "{stdout}"
    );
}
