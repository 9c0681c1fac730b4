//! The `tether` binary's controller surface: `tether controller` starts against a kubeconfig,
//! turns ready, and exits cleanly on SIGTERM; the hidden `tether rbac` and
//! `tether metrics-names` print what the Helm chart's tests compare against.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{TestCluster, eventually};

const TETHER: &str = env!("CARGO_BIN_EXE_tether");

#[test]
fn rbac_prints_the_controllers_api_calls_as_json() {
    let out = Command::new(TETHER).arg("rbac").output().unwrap();
    assert!(out.status.success());
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let expected = serde_json::to_value(tether::controller::rbac::API_ACCESS).unwrap();
    assert_eq!(printed, expected);
    assert!(
        printed
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["apiGroup"] == "coordination.k8s.io" && a["resource"] == "leases")
    );
}

/// Issue 21: a duration flag beyond any clock is a usage error (exit 2) naming the limit,
/// never a panic (exit 101).
#[test]
fn out_of_range_duration_flags_are_usage_errors_not_panics() {
    let huge = "18446744073709551615s";
    for args in [
        vec!["controller", "--min-retry-interval", huge],
        vec![
            "migrate",
            "apply",
            "migrations",
            "--database-url",
            "postgres://x",
            "--lock-timeout",
            huge,
        ],
    ] {
        let out = Command::new(TETHER).args(&args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains("at most 8760h (one year)"),
            "{args:?}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

#[test]
fn metrics_names_lists_every_registered_metric() {
    let out = Command::new(TETHER).arg("metrics-names").output().unwrap();
    assert!(out.status.success());
    let names = String::from_utf8(out.stdout).unwrap();
    for name in [
        "controller_runtime_reconcile_total",
        "controller_runtime_reconcile_errors_total",
        "controller_runtime_reconcile_time_seconds",
        "tether_reconcile_stalled",
        "tether_migration_applied_total",
        "tether_migration_duration_seconds",
        "tether_migration_lint_findings_total",
    ] {
        assert!(
            names.lines().any(|l| l == name),
            "{name} missing from {names}"
        );
    }
}

#[tokio::test]
async fn the_controller_becomes_ready_and_shuts_down_gracefully_on_sigterm() {
    let cluster = TestCluster::start().await;
    let mut child = Command::new(TETHER)
        .args([
            "controller",
            "--leader-elect=false",
            "--metrics-addr",
            "127.0.0.1:0",
            "--log-level",
            "info",
        ])
        .env("KUBECONFIG", cluster.kubeconfig_path())
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // JSON logs: find the line announcing the bound address.
    let stderr = child.stderr.take().unwrap();
    let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let mut addr_tx = Some(addr_tx);
        // Keep draining stderr so the child never blocks on a full pipe.
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("{line}");
            let value: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            if let Some(addr) = value["addr"].as_str().and_then(|a| a.parse().ok())
                && let Some(tx) = addr_tx.take()
            {
                let _ = tx.send(addr);
            }
        }
    });
    let addr: std::net::SocketAddr = tokio::time::timeout(Duration::from_secs(20), addr_rx)
        .await
        .expect("the controller logs its metrics address in time")
        .expect("the controller logs its metrics address as JSON");

    eventually(Duration::from_secs(20), || async {
        let response = reqwest_free_get(addr, "/readyz").await?;
        response.starts_with("HTTP/1.1 200").then_some(())
    })
    .await;

    let (status, _) = terminate(&mut child).await;
    assert!(status.success(), "exit status {status:?}");
}

/// Sends SIGTERM to `child` and waits (20 s at most) for it to exit: its status, and how
/// long it took.
async fn terminate(child: &mut std::process::Child) -> (std::process::ExitStatus, Duration) {
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return (status, started.elapsed());
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the controller did not exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A minimal HTTP GET (the crate has no HTTP client dependency).
async fn reqwest_free_get(addr: std::net::SocketAddr, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    Some(response)
}

/// Kubernetes sends SIGKILL when the grace period is over: a reconcile stuck in a slow
/// platform call must not keep the controller past it (nor its lease release).
#[tokio::test]
async fn a_controller_stuck_in_a_platform_call_exits_within_10_s_of_sigterm() {
    use kube::api::{Api, Patch, PatchParams, PostParams};
    use tether::platform::Platform;
    use tether::sandbox::{Faults, SandboxConfig};

    tether::install_crypto_provider();
    let cluster = TestCluster::start().await;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let sandbox = tether::sandbox::start(
        SandboxConfig {
            platforms: vec![Platform::Render],
            ..SandboxConfig::default()
        },
        shutdown.clone(),
    )
    .await
    .unwrap();
    let _stop_sandbox = shutdown.drop_guard();
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(cluster.client(), "default");
    for (_, secret) in sandbox.credential_secrets("default") {
        secrets
            .create(&PostParams::default(), &secret)
            .await
            .unwrap();
    }
    // Every Render call hangs for a minute.
    sandbox.set_faults(
        Platform::Render,
        Faults {
            latency_ms: 60_000,
            ..Faults::default()
        },
    );
    let render_url = sandbox.url(Platform::Render).unwrap();
    let mut child = Command::new(TETHER)
        .args([
            "controller",
            "--leader-elect=true",
            "--lease-namespace",
            "default",
            "--metrics-addr",
            "127.0.0.1:0",
            "--render-url",
            &render_url,
        ])
        .env("KUBECONFIG", cluster.kubeconfig_path())
        .stderr(Stdio::inherit())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let envs: Api<tether::api::Environment> = Api::namespaced(cluster.client(), "default");
    let manifest = serde_json::json!({
        "apiVersion": "tether.dev/v1alpha1", "kind": "Environment",
        "metadata": {"name": "slow", "namespace": "default"},
        "spec": {
            "credentials": {"render": {"name": "tether-sandbox-render", "key": "token"}},
            "render": {"ownerId": "tea-e2e", "services": [
                {"name": "slow-api", "type": "web", "image": "ghcr.io/acme/api:1"}]},
        },
    });
    envs.patch(
        "slow",
        &PatchParams::apply("e2e-test").force(),
        &Patch::Apply(&manifest),
    )
    .await
    .unwrap();
    // The finalizer is added just before the first apply, whose first Render call hangs.
    eventually(Duration::from_secs(30), || async {
        let env = envs.get("slow").await.ok()?;
        (!env.metadata.finalizers.unwrap_or_default().is_empty()).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let (status, took) = terminate(&mut child).await;
    eprintln!("exited {took:?} after SIGTERM with {status:?}");
    assert!(
        took < Duration::from_secs(10),
        "the controller took {took:?} to exit, past the 10 s grace period"
    );
    assert!(status.success(), "exit status {status:?}");
}
