//! A Release's metric analysis against a real Prometheus scraping the sandbox's per-app
//! request metrics (embedded API + sandbox + controller + Prometheus): a version whose error
//! rate breaks the threshold is rolled back, a healthy one passes, a query without data is
//! reported inconclusive and left for a person, who rolls it back with an annotation.

use std::time::Duration;

use serde_json::{Value, json};
use tether::api::Release;
use tether::platform::Platform;
use tether::sandbox::Faults;

use super::release::{
    apply_release, environment, host_of, machine_updates, release, rollbacks_to, shop, wait_release,
};
use crate::support::app_answer;
use crate::support::prometheus::PrometheusServer;
use crate::support::sync::{SyncHarness, condition, condition_is};

/// The share of the app's requests to `image` answered with a 5xx, over the last 10 s (0
/// while there are requests and no 5xx; no data while there are no requests).
fn error_rate(image: &str) -> String {
    error_rate_of("shop-api", image)
}

fn error_rate_of(app: &str, image: &str) -> String {
    format!(
        "(sum(rate(sandbox_app_requests_total{{app=\"{app}\",version=\"{image}\",code=~\"5..\"}}[10s])) or vector(0)) / sum(rate(sandbox_app_requests_total{{app=\"{app}\",version=\"{image}\"}}[10s]))"
    )
}

/// Release `name` of `image` with an analysis of `query` (below `threshold`).
fn analysed(name: &str, image: &str, prometheus: &str, query: &str, limits: Value) -> Value {
    let mut manifest = release(name, image);
    let mut analysis = json!({
        "prometheusUrl": prometheus,
        "interval": "1s",
        "count": 3,
        "metrics": [{"name": "error-rate", "query": query, "threshold": 0.05}],
    });
    for (k, v) in limits.as_object().unwrap() {
        analysis[k] = v.clone();
    }
    manifest["spec"]["analysis"] = analysis;
    manifest
}

/// Users of the app: a request to `host` on the sandbox's edge every 20 ms until aborted.
fn traffic(edge: String, host: String) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let client = reqwest::Client::new();
        loop {
            let _ = client
                .get(format!("{edge}/"))
                .header("host", &host)
                .send()
                .await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
}

#[tokio::test]
async fn an_error_rate_above_the_threshold_rolls_the_release_back_and_a_healthy_one_passes() {
    let mut h = SyncHarness::start().await;
    let Some(prometheus) = PrometheusServer::start(&h.sandbox).await else {
        return h.stop().await;
    };
    h.apply(environment()).await;
    let env = h.wait_ready("shop").await;
    let users = traffic(h.sandbox.edge_url().to_owned(), host_of(&env, "shop-api"));
    // Version 2 is healthy: its error rate stays at 0 (no data until Prometheus has two
    // scrapes of it is tolerated).
    let v2 = "ghcr.io/acme/api:2";
    apply_release(
        &h,
        analysed(
            "shop-2",
            v2,
            prometheus.url(),
            &error_rate(v2),
            json!({"inconclusiveLimit": 10}),
        ),
    )
    .await;
    let good = wait_release(&h, "shop-2", |r| {
        matches!(
            r["status"]["phase"].as_str(),
            Some("Succeeded" | "Failed" | "RolledBack")
        )
    })
    .await;
    assert_eq!(good["status"]["phase"], "Succeeded", "{good}");
    assert_eq!(good["status"]["analysis"]["state"], "Passed", "{good}");
    // Three measurements of 0 (the first ones may have found no data yet).
    let metric = &good["status"]["analysis"]["metrics"][0];
    assert_eq!(metric["successful"], 3, "{good}");
    assert_eq!(metric["failed"], 0, "{good}");
    assert_eq!(metric["lastValue"], 0.0, "{good}");
    // Version 3 answers 500: the analysis sees it in Prometheus and rolls it back.
    let v3 = "ghcr.io/acme/api:3";
    h.sandbox.set_faults(
        Platform::Render,
        Faults {
            unhealthy_sources: vec![v3.into()],
            ..Faults::default()
        },
    );
    apply_release(
        &h,
        analysed(
            "shop-3",
            v3,
            prometheus.url(),
            &error_rate(v3),
            json!({"inconclusiveLimit": 10}),
        ),
    )
    .await;
    // Killed while it rolls back: it completes with one rollback deploy.
    wait_release(&h, "shop-3", |r| {
        matches!(
            r["status"]["phase"].as_str(),
            Some("RollingBack" | "RolledBack" | "Failed")
        )
    })
    .await;
    // An event follows the status write it reports: a kill between the two loses it (events
    // are notifications, not state), so the kill waits for the one asserted below.
    h.wait_events("shop-3", &["AnalysisFailed"]).await;
    h.kill_controllers();
    h.start_controllers().await;
    let rel = wait_release(&h, "shop-3", |r| {
        matches!(r["status"]["phase"].as_str(), Some("RolledBack" | "Failed"))
    })
    .await;
    users.abort();
    assert_eq!(rel["status"]["phase"], "RolledBack", "{rel}");
    assert_eq!(rel["status"]["analysis"]["state"], "Failed", "{rel}");
    assert_eq!(
        rel["status"]["rollback"]["reason"], "AnalysisFailed",
        "{rel}"
    );
    let message = rel["status"]["rollback"]["message"].as_str().unwrap();
    assert!(
        message.contains("analysis failed") && message.contains("not < 0.05"),
        "{message}"
    );
    let value = rel["status"]["analysis"]["metrics"][0]["lastValue"]
        .as_f64()
        .unwrap();
    assert!(value > 0.5, "the error rate Prometheus measured: {value}");
    assert_eq!(
        rollbacks_to(&h, &good["status"]["steps"][0]["deploymentId"]),
        1
    );
    let (code, body) = app_answer(h.sandbox.edge_url(), &host_of(&env, "shop-api")).await;
    assert_eq!(code, 200, "{body}");
    assert!(
        body.contains(v2),
        "the previous version is live again: {body}"
    );
    let events = h
        .wait_events("shop-3", &["AnalysisFailed", "RolledBack"])
        .await;
    assert!(
        events
            .iter()
            .any(|(_, r, n)| r == "AnalysisFailed" && n.contains("error-rate")),
        "{events:?}"
    );
    assert!(
        events.iter().any(|(_, r, _)| r == "RolledBack"),
        "{events:?}"
    );
    let good_events = h.events("shop-2").await;
    assert!(
        good_events.iter().any(|(_, r, _)| r == "AnalysisPassed"),
        "{good_events:?}"
    );
    h.stop().await;
}

#[tokio::test]
async fn an_analysis_without_data_is_inconclusive_and_left_live_until_a_person_rolls_it_back() {
    let h = SyncHarness::start().await;
    let Some(prometheus) = PrometheusServer::start(&h.sandbox).await else {
        return h.stop().await;
    };
    h.apply(environment()).await;
    let env = h.wait_ready("shop").await;
    apply_release(&h, release("shop-1", "ghcr.io/acme/api:1")).await;
    let good = wait_release(&h, "shop-1", |r| r["status"]["phase"] == "Succeeded").await;
    // Nobody requests version 2: its error rate has no data.
    let v2 = "ghcr.io/acme/api:2";
    apply_release(
        &h,
        analysed(
            "shop-2",
            v2,
            prometheus.url(),
            &error_rate(v2),
            json!({"inconclusiveLimit": 1}),
        ),
    )
    .await;
    let rel = wait_release(&h, "shop-2", |r| r["status"]["phase"] == "Failed").await;
    let stalled = condition(&rel, "Stalled").unwrap();
    assert_eq!(stalled["reason"], "AnalysisInconclusive", "{rel}");
    assert!(
        stalled["message"]
            .as_str()
            .unwrap()
            .contains("tether.dev/rollback"),
        "{rel}"
    );
    assert_eq!(rel["status"]["analysis"]["state"], "Inconclusive");
    assert_eq!(rel["status"]["analysis"]["metrics"][0]["inconclusive"], 2);
    assert!(
        rel["status"]["rollback"].is_null(),
        "not rolled back: {rel}"
    );
    let (_, body) = app_answer(h.sandbox.edge_url(), &host_of(&env, "shop-api")).await;
    assert!(body.contains(v2), "the new version stays live: {body}");
    // A person decides: the annotation rolls it back.
    let api: kube::Api<Release> = kube::Api::namespaced(h.client.clone(), "default");
    api.patch(
        "shop-2",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(
            json!({"metadata": {"annotations": {"tether.dev/rollback": "alice"}}}),
        ),
    )
    .await
    .unwrap();
    let rel = wait_release(&h, "shop-2", |r| r["status"]["phase"] == "RolledBack").await;
    assert_eq!(rel["status"]["rollback"]["requestedBy"], "alice", "{rel}");
    assert_eq!(rel["status"]["rollback"]["to"], "shop-1");
    assert!(!condition_is(&rel, "Ready", "True"));
    assert_eq!(
        rollbacks_to(&h, &good["status"]["steps"][0]["deploymentId"]),
        1
    );
    let (code, body) = app_answer(h.sandbox.edge_url(), &host_of(&env, "shop-api")).await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("ghcr.io/acme/api:1"), "{body}");
    let events = h.events("shop-2").await;
    assert!(
        events
            .iter()
            .any(|(_, r, n)| r == "RollbackStarted" && n.contains("alice")),
        "{events:?}"
    );
    h.stop().await;
}

/// Version `v` of the shop's Fly app alone, a canary analysed with the error rate of `v`.
fn edge_release(name: &str, v: &str, prometheus: &str) -> Value {
    let image = format!("registry.fly.io/edge:{v}");
    json!({
        "apiVersion": "tether.dev/v1alpha1", "kind": "Release",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "environmentRef": {"name": "shop"}, "version": v,
            "artifacts": [{"component": "shop-edge", "platform": "fly", "image": image,
                "strategy": "canary", "maxUnavailable": 2}],
            "analysis": {"prometheusUrl": prometheus, "interval": "1s", "count": 2,
                "inconclusiveLimit": 10,
                "metrics": [{"name": "edge-errors", "query": error_rate_of("shop-edge", &image),
                    "threshold": 0.05}]},
        },
    })
}

#[tokio::test]
async fn a_fly_canary_is_analysed_before_the_other_machines_and_a_breach_rolls_it_back() {
    let h = SyncHarness::start().await;
    let Some(prometheus) = PrometheusServer::start(&h.sandbox).await else {
        return h.stop().await;
    };
    h.apply(shop()).await;
    let env = h.wait_ready("shop").await;
    let users = traffic(h.sandbox.edge_url().to_owned(), host_of(&env, "shop-edge"));
    // A healthy version: the canary's analysis passes, then the rest, then the final one.
    apply_release(&h, edge_release("edge-2", "2", prometheus.url())).await;
    let good = wait_release(&h, "edge-2", |r| {
        matches!(
            r["status"]["phase"].as_str(),
            Some("Succeeded" | "Failed" | "RolledBack")
        )
    })
    .await;
    assert_eq!(good["status"]["phase"], "Succeeded", "{good}");
    assert_eq!(
        good["status"]["canaryAnalysis"]["state"], "Passed",
        "{good}"
    );
    assert_eq!(good["status"]["analysis"]["state"], "Passed", "{good}");
    assert_eq!(machine_updates(&h, "registry.fly.io/edge:2"), 3);
    // A version whose canary answers 500: the rest of the machines never get it.
    h.sandbox.set_faults(
        Platform::Fly,
        Faults {
            unhealthy_sources: vec!["registry.fly.io/edge:3".into()],
            ..Faults::default()
        },
    );
    apply_release(&h, edge_release("edge-3", "3", prometheus.url())).await;
    let held = wait_release(&h, "edge-3", |r| r["status"]["canaryAnalysis"].is_object()).await;
    assert_eq!(held["status"]["phase"], "Deploying", "{held}");
    let rel = wait_release(&h, "edge-3", |r| {
        matches!(r["status"]["phase"].as_str(), Some("RolledBack" | "Failed"))
    })
    .await;
    users.abort();
    assert_eq!(rel["status"]["phase"], "RolledBack", "{rel}");
    assert_eq!(rel["status"]["canaryAnalysis"]["state"], "Failed", "{rel}");
    assert!(
        rel["status"]["analysis"].is_null(),
        "no final analysis: {rel}"
    );
    assert_eq!(rel["status"]["rollback"]["reason"], "AnalysisFailed");
    assert!(
        rel["status"]["rollback"]["message"]
            .as_str()
            .unwrap()
            .contains("canary analysis failed"),
        "{rel}"
    );
    assert_eq!(
        machine_updates(&h, "registry.fly.io/edge:3"),
        1,
        "only the canary got the version"
    );
    let (code, body) = app_answer(h.sandbox.edge_url(), &host_of(&env, "shop-edge")).await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("registry.fly.io/edge:2"), "{body}");
    h.stop().await;
}
