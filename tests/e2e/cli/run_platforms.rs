//! `tether run` against platform APIs it does not start itself: the endpoint flags of
//! `tether controller`, and the console line per change made on a platform.

use tether::platform::Platform;
use tether::sandbox::{SandboxConfig, sample_token};
use tokio_util::sync::CancellationToken;

use super::run_harness::{TetherRun, Workspace};

#[tokio::test(flavor = "multi_thread")]
async fn tether_run_takes_the_platform_url_flags_and_prints_each_change_it_makes() {
    let stop = CancellationToken::new();
    let sandbox = tether::sandbox::start(
        SandboxConfig {
            time_scale: 100.0,
            record: true,
            platforms: vec![Platform::Render],
            tokens: [(Platform::Render, sample_token(Platform::Render))].into(),
            ..SandboxConfig::default()
        },
        stop.clone(),
    )
    .await
    .expect("start the sandbox");
    let url = sandbox.url(Platform::Render).unwrap();
    let ws = Workspace::new();
    ws.write(
        "ns.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: staging\n",
    );
    ws.write(
        "secret.yaml",
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: tokens\n  namespace: staging\n\
         stringData:\n  render: sandbox-render-token\n",
    );
    ws.write(
        "env.yaml",
        "apiVersion: tether.dev/v1alpha1\nkind: Environment\nmetadata:\n  name: web\n  namespace: staging\n\
         spec:\n  credentials:\n    render: { name: tokens, key: render }\n\
         \x20 render:\n    ownerId: tea-sandbox\n    services:\n\
         \x20     - { name: web-api, type: web, image: ghcr.io/acme/api:1 }\n",
    );
    let (manifests, state) = (ws.manifests(), ws.state());
    let line = tokio::task::spawn_blocking(move || {
        let mut run = TetherRun::start_with(&manifests, &state, &["--render-url", &url]);
        let line = run.wait_for("platform environment staging/web  Created:");
        drop(ws);
        line
    })
    .await
    .unwrap();
    assert!(
        line.contains(r#"render service "web-api""#) || line.contains("web-api"),
        "{line}"
    );
    assert!(
        sandbox
            .exchanges()
            .iter()
            .any(|e| e.method == "POST" && e.path == "/services" && e.status == 201),
        "the service was created on the platform the flag names"
    );
    stop.cancel();
    sandbox.stopped().await;
}
