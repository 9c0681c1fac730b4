//! A Release rolling a Fly app out `bluegreen` (embedded API + sandbox + controllers): a green
//! twin per machine, recorded in status, taking over once every green passes its checks
//! while the Environment keeps the app Ready and recreates nothing; a version whose greens
//! never pass fails and leaves the blue machines serving; a controller killed mid-step, or
//! one that crashed before it recorded its greens, ends with exactly one green per machine;
//! a failed health check rolls the greens back to the previous image.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::{Value, json};
use tether::api::Release;
use tether::platform::fly::{BlueGreenRun, GREEN_FOR, GREEN_OF};
use tether::platform::{FlyApps, FlyClient, FlyMachine, Platform};
use tether::sandbox::Faults;

use super::release::{apply_release, wait_release};
use crate::support::app_answer;
use crate::support::sync::{SyncHarness, WAIT, condition, condition_is, object};

const APP: &str = "shop-edge";
const HOST: &str = "shop-edge.fly.dev";

/// Environment `edge`: one Fly app of three machines (two in ams, one in iad) with a check,
/// synced every second so that its sync runs all through the rollouts.
fn edge() -> Value {
    json!({
        "apiVersion": "tether.dev/v1alpha1", "kind": "Environment",
        "metadata": {"name": "edge", "namespace": "default"},
        "spec": {
            "credentials": {"fly": {"name": "tether-sandbox-fly", "key": "token"}},
            "fly": {"org": "acme", "apps": [{
                "name": APP,
                "image": "registry.fly.io/edge:1",
                "regions": [{"region": "ams", "count": 2}, {"region": "iad", "count": 1}],
                "guest": {"cpuKind": "shared", "cpus": 1, "memoryMb": 256},
                "services": [{"internalPort": 8080,
                    "ports": [{"port": 443, "handlers": ["tls", "http"]}]}],
                "checks": [{"name": "alive", "type": "http", "port": 8080, "path": "/healthz",
                    "interval": "10s", "timeout": "2s"}],
            }]},
            "interval": "1s",
        },
    })
}

/// Release `name` of `registry.fly.io/edge:<v>`, bluegreen, with a health check of the app.
fn bluegreen(name: &str, v: &str) -> Value {
    json!({
        "apiVersion": "tether.dev/v1alpha1", "kind": "Release",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "environmentRef": {"name": "edge"}, "version": v,
            "artifacts": [{"component": APP, "platform": "fly",
                "image": image(v), "strategy": "bluegreen"}],
            "healthChecks": [{"name": "edge", "component": APP, "path": "/healthz",
                "interval": "1s"}],
        },
    })
}

fn image(v: &str) -> String {
    format!("registry.fly.io/edge:{v}")
}

fn fly(h: &SyncHarness) -> FlyClient {
    FlyClient::new(h.http(Platform::Fly))
}

async fn machines(h: &SyncHarness) -> Vec<FlyMachine> {
    let mut machines = fly(h).list_machines(APP).await.expect("list machines");
    machines.sort_by(|a, b| a.name.cmp(&b.name));
    machines
}

/// Machine creates of `image` the sandbox received.
fn creates(h: &SyncHarness, image: &str) -> usize {
    h.sandbox
        .exchanges()
        .iter()
        .filter(|e| {
            e.platform == Platform::Fly
                && e.method == "POST"
                && e.path == format!("/v1/apps/{APP}/machines")
                && e.request_body
                    .as_ref()
                    .is_some_and(|b| b["config"]["image"] == image)
        })
        .count()
}

/// Machine ids the sandbox was asked to destroy.
fn destroyed(h: &SyncHarness) -> BTreeSet<String> {
    let prefix = format!("/v1/apps/{APP}/machines/");
    h.sandbox
        .exchanges()
        .iter()
        .filter(|e| e.platform == Platform::Fly && e.method == "DELETE")
        .filter_map(|e| e.path.strip_prefix(&prefix).map(str::to_owned))
        .filter(|id| !id.contains('/'))
        .collect()
}

/// In-place updates (`POST …/machines/{id}`) the sandbox received.
fn updates(h: &SyncHarness) -> usize {
    let prefix = format!("/v1/apps/{APP}/machines/");
    h.sandbox
        .exchanges()
        .iter()
        .filter(|e| e.platform == Platform::Fly && e.method == "POST")
        .filter(|e| {
            e.path
                .strip_prefix(&prefix)
                .is_some_and(|id| !id.contains('/'))
        })
        .count()
}

fn ids(machines: &[FlyMachine]) -> BTreeSet<String> {
    machines.iter().map(|m| m.id.clone()).collect()
}

fn green_machines(rel: &Value) -> BTreeSet<String> {
    rel["status"]["steps"][0]["greenMachines"]
        .as_array()
        .map(|ids| {
            ids.iter()
                .filter_map(|id| id.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The app's answers to six requests (the edge spreads them over the machines it routes to).
async fn answers(h: &SyncHarness) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..6 {
        let (code, body) = app_answer(h.sandbox.edge_url(), HOST).await;
        out.push(format!("{code} {body}"));
    }
    out
}

async fn start() -> (SyncHarness, Vec<FlyMachine>) {
    start_with(crate::support::sync::TIME_SCALE).await
}

/// The harness with the sandbox `scale` times faster than real time, and the Environment
/// Ready with its three (blue) machines.
async fn start_with(scale: f64) -> (SyncHarness, Vec<FlyMachine>) {
    let h = SyncHarness::start_with(scale).await;
    h.apply(edge()).await;
    h.wait_ready("edge").await;
    let blue = machines(&h).await;
    assert_eq!(blue.len(), 3, "{blue:?}");
    (h, blue)
}

#[tokio::test]
async fn a_bluegreen_release_replaces_every_machine_by_a_green_twin_and_the_environment_keeps_them()
{
    let (h, blue) = start().await;
    apply_release(&h, bluegreen("edge-2", "2")).await;
    // All through the rollout the Environment stays Ready (its slots wait for the greens).
    let releases: kube::Api<Release> = kube::Api::namespaced(h.client.clone(), "default");
    let started = std::time::Instant::now();
    let rel = loop {
        assert!(started.elapsed() < WAIT, "not Succeeded");
        let rel = serde_json::to_value(releases.get("edge-2").await.unwrap()).unwrap();
        assert_ne!(rel["status"]["phase"], "Failed", "{rel}");
        let env = serde_json::to_value(h.environments().get("edge").await.unwrap()).unwrap();
        assert!(condition_is(&env, "Ready", "True"), "{env}");
        if rel["status"]["phase"] == "Succeeded" {
            break rel;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let step = &rel["status"]["steps"][0];
    assert_eq!(step["state"], "Live", "{step}");
    assert_eq!(rel["status"]["checks"][0]["state"], "Passed", "{rel}");
    // Exactly as many machines as before, each the green twin of one blue machine: the
    // blue machine's name with `-g`, its region, the new image, recorded in status.
    let green = machines(&h).await;
    assert_eq!(green.len(), 3, "{green:?}");
    assert_eq!(ids(&green), green_machines(&rel), "{rel}");
    for (b, g) in blue.iter().zip(&green) {
        assert_eq!(g.name, format!("{}-g", b.name));
        assert_eq!(g.region, b.region);
        assert_eq!(g.config.image, image("2"));
        assert_eq!(g.config.guest, b.config.guest);
        assert_eq!(g.config.checks, b.config.checks);
        assert_eq!(g.metadata.get(GREEN_OF), Some(&b.id));
        assert_eq!(
            g.metadata.get(GREEN_FOR).map(String::as_str),
            Some("release:default/edge-2")
        );
        assert!(g.is_healthy(), "{g:?}");
    }
    // The blue machines were destroyed, never updated.
    assert_eq!(destroyed(&h), ids(&blue));
    assert_eq!(creates(&h, &image("2")), 3);
    assert_eq!(updates(&h), 0);
    for answer in answers(&h).await {
        assert!(
            answer.starts_with("200") && answer.contains(&image("2")),
            "{answer}"
        );
    }
    // The Environment takes the greens as its machines (each slot keeps its name) and
    // stays Ready; resyncs later it has created, deleted and updated nothing.
    let env = h
        .wait_for("edge", "the green machines in status", |env| {
            blue.iter().zip(&green).all(|(b, g)| {
                object(env, "fly", "machine", &b.name).is_some_and(|o| o["id"] == g.id.as_str())
            })
        })
        .await;
    assert!(condition_is(&env, "Ready", "True"), "{env}");
    let settled = h.sandbox.exchanges().len();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let env = h.wait_ready("edge").await;
    assert!(condition_is(&env, "DriftDetected", "False"), "{env}");
    let later: Vec<String> = h.sandbox.exchanges()[settled..]
        .iter()
        .filter(|e| e.platform == Platform::Fly && e.method != "GET")
        .map(|e| format!("{} {}", e.method, e.path))
        .collect();
    assert!(later.is_empty(), "the Environment wrote: {later:?}");
    assert_eq!(ids(&machines(&h).await), ids(&green));
    h.stop().await;
}

#[tokio::test]
async fn a_bluegreen_version_whose_machines_never_pass_their_checks_fails_and_blue_keeps_serving() {
    let (h, blue) = start().await;
    h.sandbox.set_faults(
        Platform::Fly,
        Faults {
            crashing_sources: vec![image("3")],
            ..Faults::default()
        },
    );
    apply_release(&h, bluegreen("edge-3", "3")).await;
    let rel = wait_release(&h, "edge-3", |r| {
        matches!(r["status"]["phase"].as_str(), Some("Failed" | "Succeeded"))
    })
    .await;
    assert_eq!(rel["status"]["phase"], "Failed", "{rel}");
    let stalled = condition(&rel, "Stalled").unwrap();
    assert_eq!(stalled["reason"], "DeployFailed", "{stalled}");
    let message = stalled["message"].as_str().unwrap();
    for part in [
        "shop-edge (fly)",
        "check(s) alive critical",
        "green machines were destroyed",
    ] {
        assert!(message.contains(part), "{part}: {message}");
    }
    // Three greens were made and recorded, and destroyed; the blue machines are untouched.
    let recorded = green_machines(&rel);
    assert_eq!(recorded.len(), 3, "{rel}");
    assert_eq!(creates(&h, &image("3")), 3);
    assert_eq!(destroyed(&h), recorded);
    assert_eq!(updates(&h), 0);
    let now = machines(&h).await;
    assert_eq!(ids(&now), ids(&blue));
    let versions = |ms: &[FlyMachine]| -> BTreeMap<String, String> {
        ms.iter()
            .map(|m| (m.id.clone(), m.version.clone()))
            .collect()
    };
    assert_eq!(versions(&now), versions(&blue), "a blue machine changed");
    for answer in answers(&h).await {
        assert!(
            answer.starts_with("200") && answer.contains(&image("1")),
            "{answer}"
        );
    }
    let events = h.events("edge-3").await;
    assert!(
        events.iter().any(|(kind, reason, note)| kind == "Warning"
            && reason == "DeployFailed"
            && note.contains("critical")),
        "{events:?}"
    );
    assert!(condition_is(&h.wait_ready("edge").await, "Ready", "True"));
    h.stop().await;
}

#[tokio::test]
async fn killed_at_every_moment_of_a_bluegreen_step_the_release_ends_with_one_green_per_machine() {
    // Machines take 0.4 s to start: the greens are recorded well before they pass.
    let (mut h, blue) = start_with(5.0).await;
    apply_release(&h, bluegreen("edge-4", "4")).await;
    let api: kube::Api<Release> = kube::Api::namespaced(h.client.clone(), "default");
    let mut seen: Vec<String> = Vec::new();
    let started = std::time::Instant::now();
    let rel = loop {
        assert!(started.elapsed() < WAIT * 2, "not done: {seen:?}");
        let rel = serde_json::to_value(api.get("edge-4").await.unwrap()).unwrap();
        let status = &rel["status"];
        if status["phase"] == "Succeeded" {
            break rel;
        }
        assert_ne!(status["phase"], "Failed", "{rel}");
        let step = &status["steps"][0];
        let moment = format!(
            "{} {} {}",
            status["phase"], step["state"], step["greenMachines"]
        );
        if !seen.contains(&moment) {
            seen.push(moment);
            h.kill_controllers();
            h.start_controllers().await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // Among the moments: the greens created and recorded, not yet serving.
    assert!(
        seen.iter()
            .any(|m| m.starts_with("\"Deploying\" \"Deploying\" [\"")),
        "never killed with the greens recorded: {seen:?}"
    );
    assert_eq!(creates(&h, &image("4")), 3, "one green per machine");
    let green = machines(&h).await;
    assert_eq!(ids(&green), green_machines(&rel));
    assert_eq!(destroyed(&h), ids(&blue));
    assert!(green.iter().all(|m| m.config.image == image("4")));
    h.stop().await;
}

#[tokio::test]
async fn greens_made_before_a_crash_recorded_them_are_adopted_not_made_again() {
    let (mut h, blue) = start().await;
    // What a controller that crashed right after creating the greens leaves behind: the
    // greens beside their blue machines, no Release status naming them.
    h.stop_controllers().await;
    let run = BlueGreenRun {
        owner: "release:default/edge-5".into(),
        ..BlueGreenRun::default()
    };
    let made = fly(&h).bluegreen(APP, &image("5"), &run).await.unwrap();
    assert_eq!(made.green.len(), 3);
    h.start_controllers().await;
    apply_release(&h, bluegreen("edge-5", "5")).await;
    let rel = wait_release(&h, "edge-5", |r| r["status"]["phase"] == "Succeeded").await;
    assert_eq!(
        green_machines(&rel),
        made.green.iter().cloned().collect::<BTreeSet<_>>()
    );
    assert_eq!(creates(&h, &image("5")), 3, "the greens were adopted");
    assert_eq!(ids(&machines(&h).await), green_machines(&rel));
    assert_eq!(destroyed(&h), ids(&blue));
    h.stop().await;
}

#[tokio::test]
async fn a_bluegreen_release_whose_health_check_fails_rolls_its_greens_back_to_the_previous_image()
{
    let (h, _) = start().await;
    apply_release(&h, bluegreen("edge-6", "6")).await;
    wait_release(&h, "edge-6", |r| r["status"]["phase"] == "Succeeded").await;
    let before = machines(&h).await;
    // Version 7 starts and passes Fly's checks, but answers 500.
    h.sandbox.set_faults(
        Platform::Fly,
        Faults {
            unhealthy_sources: vec![image("7")],
            ..Faults::default()
        },
    );
    apply_release(&h, bluegreen("edge-7", "7")).await;
    let rel = wait_release(&h, "edge-7", |r| {
        matches!(
            r["status"]["phase"].as_str(),
            Some("RolledBack" | "Failed" | "Succeeded")
        )
    })
    .await;
    assert_eq!(rel["status"]["phase"], "RolledBack", "{rel}");
    assert_eq!(rel["status"]["rollback"]["reason"], "HealthCheckFailed");
    // The greens of version 7 took over (twins `-b` of the `-g` machines), then went back
    // to version 6 in place: still three machines, the same ones.
    let after = machines(&h).await;
    assert_eq!(after.len(), 3, "{after:?}");
    assert_eq!(ids(&after), green_machines(&rel));
    for (b, m) in before.iter().zip(&after) {
        assert_eq!(m.name, b.name.replace("-g", "-b"));
        assert_eq!(m.config.image, image("6"));
    }
    for answer in answers(&h).await {
        assert!(
            answer.starts_with("200") && answer.contains(&image("6")),
            "{answer}"
        );
    }
    h.wait_ready("edge").await;
    h.stop().await;
}
