//! Release notifications: the webhooks of an Environment (or of the Release itself) receive
//! every phase change they subscribe to, in order, as the generic or the Slack body, with
//! retries, never twice across a restart, and with the webhook URL (a credential) nowhere.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, Uri};
use serde_json::{Value, json};
use tether::api::Release;

use super::release::{apply_release, environment, release, wait_release};
use crate::support::eventually;
use crate::support::sync::{SyncHarness, WAIT};

/// A webhook receiver: every request's path and body, and scripted answers per path
/// (200 once a path's script is used up; `always` answers the rest of a path).
#[derive(Clone, Default)]
struct Receiver {
    received: Arc<Mutex<Vec<(String, String)>>>,
    script: Arc<Mutex<BTreeMap<String, VecDeque<u16>>>>,
    always: Arc<Mutex<BTreeMap<String, u16>>>,
}

impl Receiver {
    async fn serve(&self) -> SocketAddr {
        async fn hook(State(receiver): State<Receiver>, uri: Uri, body: Bytes) -> StatusCode {
            let path = uri.path().to_owned();
            receiver
                .received
                .lock()
                .unwrap()
                .push((path.clone(), String::from_utf8_lossy(&body).into_owned()));
            let scripted = receiver
                .script
                .lock()
                .unwrap()
                .get_mut(&path)
                .and_then(VecDeque::pop_front);
            let code = scripted
                .or_else(|| receiver.always.lock().unwrap().get(&path).copied())
                .unwrap_or(200);
            StatusCode::from_u16(code).unwrap()
        }
        let router = axum::Router::new()
            .route("/{*path}", axum::routing::post(hook))
            .with_state(self.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        addr
    }

    /// The bodies received on `path`, in order.
    fn bodies(&self, path: &str) -> Vec<Value> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _)| p == path)
            .map(|(_, body)| serde_json::from_str(body).expect("a JSON body"))
            .collect()
    }

    /// Every body received, as sent.
    fn raw(&self) -> String {
        let received = self.received.lock().unwrap();
        received.iter().map(|(_, body)| body.as_str()).collect()
    }
}

/// The secret part of the webhook URLs: it must appear nowhere but in the Secret.
const SECRET: &str = "s3cr3t-T0K3N";

async fn approve(h: &SyncHarness, name: &str) {
    let api: kube::Api<Release> = kube::Api::namespaced(h.client.clone(), "default");
    api.patch(
        name,
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(
            json!({"metadata": {"annotations": {"tether.dev/approved-by": "ada"}}}),
        ),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn an_environments_webhooks_receive_each_phase_change_in_order_once_and_without_the_secret() {
    let receiver = Receiver::default();
    let addr = receiver.serve().await;
    let mut h = SyncHarness::start().await;
    h.put_secret(
        "hooks",
        &[
            ("audit", &format!("http://{addr}/audit/{SECRET}")),
            ("chat", &format!("http://{addr}/chat/{SECRET}")),
        ],
    )
    .await;
    let mut env = environment();
    env["spec"]["notifications"] = json!({"webhooks": [
        {"name": "audit", "urlSecretRef": {"name": "hooks", "key": "audit"}},
        {"name": "chat", "urlSecretRef": {"name": "hooks", "key": "chat"}, "format": "slack",
         "events": ["AwaitingApproval", "Succeeded", "Failed", "RolledBack"]},
    ]});
    h.apply(env).await;
    h.wait_ready("shop").await;
    let mut rel = release("v5", "ghcr.io/acme/api:5");
    rel["spec"]["approval"] = json!({"required": true});
    rel["spec"]["healthChecks"] = json!([{"name": "api", "component": "shop-api",
        "path": "/healthz", "successThreshold": 2, "interval": "1s"}]);
    apply_release(&h, rel).await;
    wait_release(&h, "v5", |r| r["status"]["phase"] == "AwaitingApproval").await;
    approve(&h, "v5").await;
    let done = wait_release(&h, "v5", |r| r["status"]["phase"] == "Succeeded").await;
    assert_eq!(done["status"]["notifiedPhase"], "Succeeded", "{done}");
    // A restarted controller reconciles the Release again, and sends nothing again.
    h.stop_controllers().await;
    h.start_controllers().await;
    eventually(WAIT, || async {
        let metrics = h.metrics().await;
        metrics
            .contains(
                r#"controller_runtime_reconcile_total{controller="release",result="success"}"#,
            )
            .then_some(())
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;

    let audit = receiver.bodies(&format!("/audit/{SECRET}"));
    let phases: Vec<&str> = audit.iter().map(|b| b["phase"].as_str().unwrap()).collect();
    assert_eq!(
        phases,
        ["AwaitingApproval", "Deploying", "Verifying", "Succeeded"],
        "{audit:#?}"
    );
    let mut previous = Value::Null;
    for body in &audit {
        assert_eq!(body["previousPhase"], previous, "{body}");
        previous = body["phase"].clone();
        assert_eq!(
            (
                &body["kind"],
                &body["namespace"],
                &body["name"],
                &body["environment"],
                &body["version"]
            ),
            (
                &json!("Release"),
                &json!("default"),
                &json!("v5"),
                &json!("shop"),
                &json!("v5")
            )
        );
        assert!(
            body["at"]
                .as_str()
                .unwrap()
                .parse::<jiff::Timestamp>()
                .is_ok()
        );
    }
    let succeeded = audit.last().unwrap();
    assert_eq!(succeeded["reason"], "Succeeded");
    assert_eq!(
        succeeded["message"], "1 component(s) deployed and live",
        "{succeeded}"
    );
    // The Slack hook: only the phases it subscribes to, as Slack messages.
    let chat = receiver.bodies(&format!("/chat/{SECRET}"));
    assert_eq!(chat.len(), 2, "{chat:#?}");
    for (body, phase) in chat.iter().zip(["AwaitingApproval", "Succeeded"]) {
        let text = body["text"].as_str().unwrap();
        assert!(
            text.contains("Release v5 (version v5) to default/shop")
                && text.ends_with(&format!(": {phase}")),
            "{text}"
        );
        let blocks = body["blocks"].as_array().unwrap();
        assert_eq!(blocks[0]["type"], "section", "{body}");
        assert_eq!(blocks[1]["type"], "context", "{body}");
    }
    // The waiting message's `<your name>` is escaped for Slack.
    assert!(
        chat[0]["blocks"][1]["elements"][0]["text"]
            .as_str()
            .unwrap()
            .contains("approved-by=&lt;your name&gt;"),
        "{}",
        chat[0]
    );
    // The URL's secret is in no body, status, event, log or metric.
    assert!(!receiver.raw().contains(SECRET));
    let rel = serde_json::to_string(
        &kube::Api::<Release>::namespaced(h.client.clone(), "default")
            .get("v5")
            .await
            .unwrap(),
    )
    .unwrap();
    let visible = h.everything_visible().await + &rel;
    assert!(!visible.contains(SECRET), "the webhook URL leaked");
    assert!(
        !visible.contains(&addr.to_string()),
        "the webhook URL leaked"
    );
    h.stop().await;
}

#[tokio::test]
async fn a_releases_own_webhook_is_retried_after_5xx_and_one_answering_404_is_reported() {
    let receiver = Receiver::default();
    let addr = receiver.serve().await;
    receiver
        .script
        .lock()
        .unwrap()
        .insert(format!("/flaky/{SECRET}"), VecDeque::from([500, 500]));
    receiver
        .always
        .lock()
        .unwrap()
        .insert(format!("/gone/{SECRET}"), 404);
    let h = SyncHarness::start().await;
    h.put_secret(
        "hooks",
        &[
            ("flaky", &format!("http://{addr}/flaky/{SECRET}")),
            ("gone", &format!("http://{addr}/gone/{SECRET}")),
        ],
    )
    .await;
    h.apply(environment()).await;
    h.wait_ready("shop").await;
    let mut rel = release("v6", "ghcr.io/acme/api:6");
    rel["spec"]["notifications"] = json!({"webhooks": [
        {"name": "flaky", "urlSecretRef": {"name": "hooks", "key": "flaky"}, "events": ["Succeeded"]},
        {"name": "gone", "urlSecretRef": {"name": "hooks", "key": "gone"}, "events": ["Succeeded"]},
    ]});
    apply_release(&h, rel).await;
    wait_release(&h, "v6", |r| r["status"]["phase"] == "Succeeded").await;
    // 500, 500, then 200: three attempts of the one change.
    let flaky = receiver.bodies(&format!("/flaky/{SECRET}"));
    let phases: Vec<&Value> = flaky.iter().map(|b| &b["phase"]).collect();
    assert_eq!(phases, [&json!("Succeeded"); 3], "{flaky:#?}");
    // A 404 is not retried, and is reported.
    assert_eq!(receiver.bodies(&format!("/gone/{SECRET}")).len(), 1);
    let events = h.wait_events("v6", &["NotificationFailed"]).await;
    let failed: Vec<&(String, String, String)> = events
        .iter()
        .filter(|(_, reason, _)| reason == "NotificationFailed")
        .collect();
    assert_eq!(failed.len(), 1, "{events:?}");
    let (kind, _, note) = failed[0];
    assert_eq!(kind, "Warning");
    assert_eq!(
        note,
        "webhook gone: the change Deploying → Succeeded was not delivered: HTTP 404 after 1 attempt(s)"
    );
    let metrics = h.metrics().await;
    for line in [
        r#"tether_notifications_total{format="generic",result="sent"} 1"#,
        r#"tether_notifications_total{format="generic",result="failed"} 1"#,
    ] {
        assert!(metrics.contains(line), "{line} missing from:\n{metrics}");
    }
    assert!(!h.everything_visible().await.contains(SECRET));
    h.stop().await;
}
