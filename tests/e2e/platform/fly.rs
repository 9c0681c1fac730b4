//! The Fly Machines adapter against the Fly sandbox: apps (idempotent create), machines
//! (leases, `current_version`, `fly-next-cursor` paging), secrets, certificates, image
//! rollouts and rollback, faults and credentials — every exchange checked against Fly's
//! OpenAPI spec.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::contract::harness::{self, eventually};
use crate::support::app_answer;
use tether::platform::{
    Autostop, DeploySource, DeploymentState, Deployments, FlyAppSpec, FlyApps, FlyClient,
    FlyMachineConfig, FlyMachineSpec, FlyVolumeSpec, MachineCheck, MachineGuest, MachineMount,
    MachinePort, MachineService, Platform, PlatformError, Token,
};
use tether::sandbox::Faults;

const SCALE: f64 = 200.0;
/// Fly's buckets refill every second; at 20x a token is 50 ms, well above the scheduling
/// jitter of a busy 2-core machine, so the bucket check measures the client, not the box.
const BUCKET_SCALE: f64 = 20.0;

fn app(name: &str) -> FlyAppSpec {
    FlyAppSpec {
        name: name.into(),
        org_slug: "acme".into(),
    }
}

fn machine(name: &str, image: &str) -> FlyMachineSpec {
    FlyMachineSpec {
        name: name.into(),
        region: Some("ams".into()),
        config: FlyMachineConfig {
            image: image.into(),
            env: BTreeMap::from([("PORT".to_owned(), "8080".to_owned())]),
            ..FlyMachineConfig::default()
        },
        min_secrets_version: None,
    }
}

async fn settled(client: &FlyClient, app: &str, image: &str) -> DeploymentState {
    eventually("rollout to settle", Duration::from_secs(10), || async {
        let d = client.deployment(app, image).await.expect("read rollout");
        d.state.is_terminal().then_some(d.state)
    })
    .await
}

#[tokio::test]
async fn apps_machines_secrets_and_certificates_go_through_their_lifecycles() {
    let env = harness::start(Platform::Fly, SCALE).await;
    let client = FlyClient::new(env.http(Platform::Fly)).with_page_limit(2);

    let created = client.ensure_app(&app("web")).await.unwrap();
    assert!(created.created);
    let again = client.ensure_app(&app("web")).await.unwrap();
    assert!(!again.created && again.object.id == created.object.id);
    for i in 0..4 {
        client.ensure_app(&app(&format!("a{i}"))).await.unwrap();
    }
    let apps = client.list_apps("acme").await.unwrap();
    assert_eq!(apps.len(), 5, "three pages of two");
    assert!(apps.iter().all(|a| a.org.as_deref() == Some("acme")));

    for i in 0..5 {
        let m = client
            .ensure_machine("web", &machine(&format!("m{i}"), "acme/web:1"))
            .await
            .unwrap();
        assert!(m.created);
    }
    assert!(
        !client
            .ensure_machine("web", &machine("m0", "acme/web:1"))
            .await
            .unwrap()
            .created
    );
    let machines = client.list_machines("web").await.unwrap();
    assert_eq!(
        machines.len(),
        5,
        "followed fly-next-cursor over three pages"
    );
    let first = &machines[0];
    let started = eventually("machine to start", Duration::from_secs(10), || async {
        let m = client.get_machine("web", &first.id).await.unwrap();
        (m.state == "started").then_some(m)
    })
    .await;

    let mut changed = machine(&first.name, "acme/web:1");
    changed
        .config
        .env
        .insert("LOG_LEVEL".into(), "debug".into());
    let updated = client
        .update_machine("web", &first.id, &changed)
        .await
        .unwrap();
    assert_ne!(
        updated.version, started.version,
        "an update makes a new version"
    );
    assert_eq!(
        updated.config.env.get("LOG_LEVEL").map(String::as_str),
        Some("debug")
    );

    client.stop_machine("web", &first.id).await.unwrap();
    eventually("machine to stop", Duration::from_secs(10), || async {
        (client.get_machine("web", &first.id).await.unwrap().state == "stopped").then_some(())
    })
    .await;
    client.start_machine("web", &first.id).await.unwrap();
    assert!(client.delete_machine("web", &machines[4].id).await.unwrap());
    assert!(!client.delete_machine("web", &machines[4].id).await.unwrap());

    let values = BTreeMap::from([
        ("DATABASE_URL".to_owned(), "postgres://x".to_owned()),
        ("API_KEY".to_owned(), "k".to_owned()),
    ]);
    let v1 = client.set_secrets("web", &values).await.unwrap();
    let v2 = client
        .set_secrets(
            "web",
            &BTreeMap::from([("API_KEY".to_owned(), "k2".to_owned())]),
        )
        .await
        .unwrap();
    assert!(v2 > v1);
    assert!(
        client
            .delete_secret("web", "API_KEY")
            .await
            .unwrap()
            .is_some()
    );
    let secrets = client.list_secrets("web").await.unwrap();
    assert_eq!(secrets.len(), 1);
    assert!(secrets[0].secret && secrets[0].value.is_none());
    let before = client.delete_secret("web", "API_KEY").await.unwrap();
    assert_eq!(before, None, "already gone");
    let version = client.delete_secret("web", "DATABASE_URL").await.unwrap();
    assert!(
        version.is_some_and(|v| v > 0),
        "a deletion gives the new secrets version"
    );
    assert_eq!(
        client.delete_secret("web", "DATABASE_URL").await.unwrap(),
        None
    );

    assert!(
        client
            .ensure_certificate("web", "www.example.com")
            .await
            .unwrap()
            .created
    );
    assert!(
        !client
            .ensure_certificate("web", "www.example.com")
            .await
            .unwrap()
            .created
    );
    assert_eq!(client.list_certificates("web").await.unwrap().len(), 1);
    assert!(
        client
            .delete_certificate("web", "www.example.com")
            .await
            .unwrap()
    );

    assert!(client.delete_app("a0").await.unwrap());
    assert!(!client.delete_app("a0").await.unwrap());
    let err = client.get_app("a0").await.unwrap_err();
    assert!(
        matches!(
            err,
            PlatformError::NotFound {
                platform: Platform::Fly,
                ..
            }
        ),
        "{err}"
    );
    let metrics = env.metrics.render();
    assert!(
        metrics.contains(r#"operation="update_machine",platform="fly""#),
        "{metrics}"
    );
    env.check_contract(Platform::Fly);
}

#[tokio::test]
async fn a_rollout_goes_live_a_failing_image_fails_and_rollback_restores_it() {
    let env = harness::start(Platform::Fly, SCALE).await;
    let client = FlyClient::new(env.http(Platform::Fly));
    client.ensure_app(&app("api")).await.unwrap();
    for i in 0..2 {
        client
            .ensure_machine("api", &machine(&format!("m{i}"), "acme/api:1"))
            .await
            .unwrap();
    }
    assert_eq!(
        settled(&client, "api", "acme/api:1").await,
        DeploymentState::Live
    );

    env.set_faults(
        Platform::Fly,
        Faults {
            failing_sources: vec!["acme/api:2".into()],
            ..Faults::default()
        },
    );
    let bad = client
        .deploy("api", &DeploySource::Image("acme/api:2".into()))
        .await
        .unwrap();
    assert_eq!(bad.id, "acme/api:2");
    assert_eq!(
        settled(&client, "api", "acme/api:2").await,
        DeploymentState::Failed
    );

    client.rollback("api", "acme/api:1").await.unwrap();
    assert_eq!(
        settled(&client, "api", "acme/api:1").await,
        DeploymentState::Live
    );
    let old = client.deployment("api", "acme/api:2").await.unwrap();
    assert_eq!(old.state, DeploymentState::Superseded);
    let (_, body) = app_answer(env.sandbox.edge_url(), "api.fly.dev").await;
    assert!(body.contains("acme/api:1 ok"), "{body}");
    env.check_contract(Platform::Fly);
}

#[tokio::test]
async fn a_bluegreen_rollout_serves_its_greens_only_once_all_pass_and_a_crashing_one_leaves_blue() {
    use tether::platform::fly::{BlueGreenRun, GREEN_OF};
    let env = harness::start(Platform::Fly, SCALE).await;
    let client = FlyClient::new(env.http(Platform::Fly));
    client.ensure_app(&app("api")).await.unwrap();
    let mut spec = machine("api-ams-0", "acme/api:1");
    spec.config.checks.insert(
        "alive".into(),
        MachineCheck {
            kind: "http".into(),
            port: 8080,
            path: Some("/healthz".into()),
            interval: Some("10s".into()),
            timeout: Some("2s".into()),
        },
    );
    for name in ["api-ams-0", "api-ams-1"] {
        spec.name = name.into();
        client.ensure_machine("api", &spec).await.unwrap();
    }
    assert_eq!(
        settled(&client, "api", "acme/api:1").await,
        DeploymentState::Live
    );
    let blue = client.list_machines("api").await.unwrap();
    let run = BlueGreenRun::default();
    // First move: a green twin per machine, out of the proxy.
    let moved = client.bluegreen("api", "acme/api:2", &run).await.unwrap();
    assert_eq!(moved.deployment.state, DeploymentState::Deploying);
    assert_eq!(moved.green.len(), 2);
    let all = client.list_machines("api").await.unwrap();
    assert_eq!(all.len(), 4);
    for m in all.iter().filter(|m| moved.green.contains(&m.id)) {
        assert!(m.name.ends_with("-g"), "{}", m.name);
        assert!(blue.iter().any(|b| m.green_of() == Some(b.id.as_str())));
        assert_eq!(m.config.env, spec.config.env, "the blue machine's config");
    }
    let (_, body) = app_answer(env.sandbox.edge_url(), "api.fly.dev").await;
    assert!(body.contains("acme/api:1 ok"), "{body}");
    // Moved on until live: the blue machines are gone, the greens serve.
    let live = eventually("bluegreen live", Duration::from_secs(10), || async {
        let moved = client.bluegreen("api", "acme/api:2", &run).await.unwrap();
        (moved.deployment.state == DeploymentState::Live).then_some(moved)
    })
    .await;
    let now = client.list_machines("api").await.unwrap();
    let mut ids: Vec<String> = now.iter().map(|m| m.id.clone()).collect();
    ids.sort();
    let mut green = live.green.clone();
    green.sort();
    assert_eq!(ids, green);
    assert!(now.iter().all(|m| m.metadata.contains_key(GREEN_OF)));
    for _ in 0..4 {
        let (_, body) = app_answer(env.sandbox.edge_url(), "api.fly.dev").await;
        assert!(body.contains("acme/api:2 ok"), "{body}");
    }
    // A version that never passes its checks: its greens go, the machines stay as they were.
    env.set_faults(
        Platform::Fly,
        Faults {
            crashing_sources: vec!["acme/api:3".into()],
            ..Faults::default()
        },
    );
    let failed = eventually("bluegreen failed", Duration::from_secs(10), || async {
        let moved = client.bluegreen("api", "acme/api:3", &run).await.unwrap();
        (moved.deployment.state == DeploymentState::Failed).then_some(moved)
    })
    .await;
    assert!(
        failed
            .deployment
            .platform_state
            .contains("check(s) alive critical"),
        "{}",
        failed.deployment.platform_state
    );
    let after = client.list_machines("api").await.unwrap();
    assert_eq!(after, now, "the machines are as they were");
    // Names alternate: the greens of the `-g` machines were `-b`.
    assert!(env.sandbox.exchanges().iter().any(|e| {
        e.method == "POST"
            && e.request_body
                .as_ref()
                .is_some_and(|b| b["name"] == "api-ams-0-b")
    }));
    env.check_contract(Platform::Fly);
}

#[tokio::test]
async fn a_rollout_after_a_bluegreen_stopped_half_way_destroys_its_greens_first() {
    use tether::platform::FlyStrategy;
    use tether::platform::fly::BlueGreenRun;
    let env = harness::start(Platform::Fly, SCALE).await;
    let client = FlyClient::new(env.http(Platform::Fly));
    client.ensure_app(&app("api")).await.unwrap();
    for name in ["api-ams-0", "api-ams-1"] {
        client
            .ensure_machine("api", &machine(name, "acme/api:1"))
            .await
            .unwrap();
    }
    assert_eq!(
        settled(&client, "api", "acme/api:1").await,
        DeploymentState::Live
    );
    let blue = client.list_machines("api").await.unwrap();
    // A bluegreen to version 2 made its greens, then stopped (superseded, say).
    let stopped = client
        .bluegreen("api", "acme/api:2", &BlueGreenRun::default())
        .await
        .unwrap();
    assert_eq!(client.list_machines("api").await.unwrap().len(), 4);
    // A rollback (every machine at once) to version 1: the greens go, nothing to update.
    let back = client
        .roll("api", "acme/api:1", FlyStrategy::Immediate)
        .await
        .unwrap();
    assert_eq!(back.state, DeploymentState::Live, "{back:?}");
    let now = client.list_machines("api").await.unwrap();
    assert_eq!(now, blue);
    assert!(
        stopped
            .green
            .iter()
            .all(|id| now.iter().all(|m| &m.id != id))
    );
    env.check_contract(Platform::Fly);
}

#[tokio::test]
async fn an_update_racing_another_writer_is_a_conflict_not_a_lost_write() {
    let env = harness::start(Platform::Fly, SCALE).await;
    let client = FlyClient::new(env.http(Platform::Fly));
    client.ensure_app(&app("race")).await.unwrap();
    let m = client
        .ensure_machine("race", &machine("m", "acme/r:1"))
        .await
        .unwrap()
        .object;
    // Someone changes the machine in the dashboard after we read it: the version we send
    // as current_version is stale.
    let admin = env.sandbox.admin_url(Platform::Fly).unwrap();
    let token = env.sandbox.token(Platform::Fly).unwrap();
    let edit = reqwest::Client::new()
        .post(format!("{admin}/edit"))
        .bearer_auth(token.expose())
        .json(&serde_json::json!({"object": "machine", "name": "m", "field": "config.env.PORT", "value": "9090"}))
        .send()
        .await
        .unwrap();
    assert_eq!(edit.status(), 204);
    let stale = tether::platform::http::ApiRequest::post(
        "update_machine",
        &["v1", "apps", "race", "machines", &m.id],
    )
    .json(serde_json::json!({"config": {"image": "acme/r:2"}, "current_version": m.version}));
    let err = env.http(Platform::Fly).send(&stale).await.unwrap_err();
    assert!(matches!(err, PlatformError::Conflict { .. }), "{err}");
    let now = client.get_machine("race", &m.id).await.unwrap();
    assert_eq!(now.config.image, "acme/r:1", "nothing was applied");
    // The adapter reads the current version first, so its update goes through.
    let updated = client
        .update_machine("race", &m.id, &machine("m", "acme/r:2"))
        .await
        .unwrap();
    assert_eq!(updated.config.image, "acme/r:2");
    env.check_contract(Platform::Fly);
}

#[tokio::test]
async fn a_wrong_token_is_unauthorized_and_names_fly() {
    let env = harness::start(Platform::Fly, SCALE).await;
    let client = FlyClient::new(env.http_with_token(Platform::Fly, Token::new("FlyV1 fm2_wrong")));
    let err = client.list_apps("acme").await.unwrap_err();
    assert!(
        matches!(err, PlatformError::Unauthorized { status: 401, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("fly") && !err.to_string().contains("fm2_wrong"));
    env.check_contract(Platform::Fly);
}

#[tokio::test]
async fn under_a_429_storm_clients_keep_to_the_per_action_limits_and_finish() {
    let env = harness::start(Platform::Fly, BUCKET_SCALE).await;
    let client = FlyClient::new(env.http(Platform::Fly));
    client.ensure_app(&app("s")).await.unwrap();
    let m = client
        .ensure_machine("s", &machine("m", "acme/s:1"))
        .await
        .unwrap()
        .object;
    env.set_faults(
        Platform::Fly,
        Faults {
            rate_limit_storm: true,
            storm_retry_after_secs: 5.0,
            ..Faults::default()
        },
    );
    let work = {
        let client = client.clone();
        let id = m.id.clone();
        tokio::spawn(async move {
            futures::future::try_join_all((0..40).map(|i| {
                let (client, id) = (&client, &id);
                async move {
                    client.get_machine("s", id).await?;
                    client
                        .set_secrets("s", &BTreeMap::from([(format!("K{i}"), "v".to_owned())]))
                        .await
                }
            }))
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    env.set_faults(Platform::Fly, Faults::default());
    work.await.unwrap().unwrap();
    assert_eq!(client.list_secrets("s").await.unwrap().len(), 40);
    let storm_over = env
        .sandbox
        .exchanges()
        .iter()
        .rposition(|e| e.status == 429)
        .unwrap_or(0);
    let limited_after = env.sandbox.exchanges()[storm_over..]
        .iter()
        .filter(|e| e.status == 429)
        .count();
    assert!(
        limited_after <= 1,
        "after the storm the clients stay within the buckets"
    );
    assert_eq!(
        env.sandbox.limit_rejections(Platform::Fly),
        0,
        "the client never overran a bucket"
    );
    env.check_contract(Platform::Fly);
}

#[tokio::test]
async fn with_thirty_percent_server_errors_all_idempotent_work_finishes() {
    let env = harness::start(Platform::Fly, SCALE).await;
    let client = FlyClient::new(env.http(Platform::Fly));
    client.ensure_app(&app("e")).await.unwrap();
    let m = client
        .ensure_machine("e", &machine("m", "acme/e:1"))
        .await
        .unwrap()
        .object;
    env.set_faults(
        Platform::Fly,
        Faults {
            error_share: 0.3,
            ..Faults::default()
        },
    );
    for i in 0..15 {
        client
            .set_secrets("e", &BTreeMap::from([(format!("K{i}"), "v".to_owned())]))
            .await
            .unwrap();
        client.get_machine("e", &m.id).await.unwrap();
    }
    assert!(
        !client
            .delete_certificate("e", "none.example.com")
            .await
            .unwrap()
    );
    let secrets = client.list_secrets("e").await.unwrap();
    env.set_faults(Platform::Fly, Faults::default());
    assert_eq!(secrets.len(), 15);
    assert!(env.sandbox.exchanges().iter().any(|e| e.status >= 500));
    env.check_contract(Platform::Fly);
}

#[tokio::test]
async fn malformed_or_unexpected_responses_give_a_clear_error_not_a_panic() {
    use axum::routing::get;
    let env = harness::start(Platform::Fly, SCALE).await;
    let router = axum::Router::new()
        .route(
            "/v1/apps/x/machines/m",
            get(|| async { axum::Json(serde_json::json!({"id": "m", "state": "started"})) }),
        )
        .route(
            "/v1/apps/x/machines",
            get(|| async { axum::Json(serde_json::json!({"not": "a list"})) }),
        );
    let url = harness::serve_raw(router, "").await;
    let client = FlyClient::new(env.http_at(Platform::Fly, &url, Token::new("t")));
    let err = client.get_machine("x", "m").await.unwrap_err();
    assert!(
        err.to_string().contains("machine without `version`"),
        "{err}"
    );
    let err = client.list_machines("x").await.unwrap_err();
    assert!(
        matches!(
            err,
            PlatformError::Malformed {
                platform: Platform::Fly,
                ..
            }
        ),
        "{err}"
    );
}

/// A dashboard edit through the sandbox's admin API.
async fn edit(env: &harness::Env, object: &str, name: &str, field: &str, value: serde_json::Value) {
    let admin = env.sandbox.admin_url(Platform::Fly).unwrap();
    let token = env.sandbox.token(Platform::Fly).unwrap();
    let response = reqwest::Client::new()
        .post(format!("{admin}/edit"))
        .bearer_auth(token.expose())
        .json(&serde_json::json!({"object": object, "name": name, "field": field, "value": value}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204, "edit {object} {name} {field}");
}

fn full_config(image: &str) -> FlyMachineConfig {
    FlyMachineConfig {
        image: image.into(),
        env: BTreeMap::from([("PORT".to_owned(), "8080".to_owned())]),
        guest: MachineGuest {
            cpu_kind: "performance".into(),
            cpus: 2,
            memory_mb: 4096,
        },
        services: vec![MachineService {
            protocol: "tcp".into(),
            internal_port: 8080,
            ports: vec![
                MachinePort {
                    port: 80,
                    handlers: vec!["http".into()],
                    force_https: true,
                },
                MachinePort {
                    port: 443,
                    handlers: vec!["tls".into(), "http".into()],
                    force_https: false,
                },
            ],
            autostop: Autostop::Stop,
            autostart: false,
            min_machines_running: 1,
        }],
        checks: BTreeMap::from([(
            "alive".to_owned(),
            MachineCheck {
                kind: "http".into(),
                port: 8080,
                path: Some("/healthz".into()),
                interval: Some("10s".into()),
                timeout: Some("3s".into()),
            },
        )]),
        mounts: Vec::new(),
    }
}

#[tokio::test]
async fn a_machine_keeps_its_full_config_and_an_update_keeps_what_tether_does_not_manage() {
    let env = harness::start(Platform::Fly, SCALE).await;
    let client = FlyClient::new(env.http(Platform::Fly));
    client.ensure_app(&app("full")).await.unwrap();
    let spec = FlyMachineSpec {
        config: full_config("acme/full:1"),
        ..machine("full-ams-0", "unused")
    };
    let created = client.ensure_machine("full", &spec).await.unwrap().object;
    assert_eq!(
        created.config, spec.config,
        "the create answers the config given"
    );
    let listed = client.list_machines("full").await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        listed[0].config, spec.config,
        "the list reads it back whole"
    );
    let healthy = eventually("checks to pass", Duration::from_secs(10), || async {
        let m = client.get_machine("full", &created.id).await.unwrap();
        m.is_healthy().then_some(m)
    })
    .await;
    assert_eq!(
        healthy.checks.get("alive").map(String::as_str),
        Some("passing")
    );

    // Someone outside Tether adds metadata; Tether's next update changes the guest only
    // and sends the metadata back as it was.
    edit(
        &env,
        "machine",
        "full-ams-0",
        "config.metadata.owner",
        serde_json::json!("ops"),
    )
    .await;
    let before = client.get_machine("full", &created.id).await.unwrap();
    assert_ne!(
        before.version, healthy.version,
        "the edit made a new version"
    );
    let mut bigger = spec.clone();
    bigger.config.guest.memory_mb = 8192;
    let updated = client
        .update_machine("full", &created.id, &bigger)
        .await
        .unwrap();
    assert_eq!(updated.config, bigger.config);
    let exchanges = env.sandbox.exchanges();
    let sent = exchanges
        .iter()
        .rfind(|e| e.method == "POST" && e.path == format!("/v1/apps/full/machines/{}", created.id))
        .and_then(|e| e.request_body.clone())
        .unwrap();
    assert_eq!(sent["config"]["metadata"]["owner"], "ops", "{sent}");
    assert_eq!(sent["config"]["guest"]["memory_mb"], 8192);
    assert_eq!(sent["config"]["services"][0]["autostop"], "stop");
    assert_eq!(sent["current_version"], before.version.as_str());

    // A deploy changes the image and keeps the rest of the config.
    client
        .deploy("full", &DeploySource::Image("acme/full:2".into()))
        .await
        .unwrap();
    let deployed = client.get_machine("full", &created.id).await.unwrap();
    assert_eq!(deployed.config.image, "acme/full:2");
    assert_eq!(deployed.config.guest, bigger.config.guest);
    assert_eq!(deployed.config.services, bigger.config.services);
    env.check_contract(Platform::Fly);
}

#[tokio::test]
async fn volumes_are_created_in_a_region_mounted_extended_and_destroyed_once_detached() {
    let env = harness::start(Platform::Fly, SCALE).await;
    let client = FlyClient::new(env.http(Platform::Fly)).with_page_limit(1);
    client.ensure_app(&app("db")).await.unwrap();
    let ams = client
        .create_volume(
            "db",
            &FlyVolumeSpec {
                name: "data".into(),
                region: "ams".into(),
                size_gb: 1,
            },
        )
        .await
        .unwrap();
    let iad = client
        .create_volume(
            "db",
            &FlyVolumeSpec {
                name: "data".into(),
                region: "iad".into(),
                size_gb: 1,
            },
        )
        .await
        .unwrap();
    assert_ne!(ams.id, iad.id, "volume names repeat; ids do not");
    assert_eq!(
        client.list_volumes("db").await.unwrap().len(),
        2,
        "followed fly-next-cursor"
    );

    let mut spec = machine("db-ams-0", "acme/db:1");
    spec.config.mounts = vec![MachineMount {
        volume: iad.id.clone(),
        path: "/data".into(),
    }];
    let err = client.ensure_machine("db", &spec).await.unwrap_err();
    assert!(
        matches!(
            err,
            PlatformError::Invalid {
                status: Some(400),
                ..
            }
        ),
        "a volume mounts only in its region: {err}"
    );
    spec.config.mounts[0].volume = ams.id.clone();
    let m = client.ensure_machine("db", &spec).await.unwrap().object;
    assert_eq!(m.config.mounts, spec.config.mounts);
    let volumes = client.list_volumes("db").await.unwrap();
    let attached = volumes.iter().find(|v| v.id == ams.id).unwrap();
    assert_eq!(attached.attached_machine_id.as_deref(), Some(m.id.as_str()));
    assert_eq!((attached.region.as_str(), attached.size_gb), ("ams", 1));

    let (grown, needs_restart) = client.extend_volume("db", &ams.id, 3).await.unwrap();
    assert_eq!(grown.size_gb, 3);
    assert!(
        needs_restart,
        "the attached machine sees the new size after a restart"
    );
    let err = client.extend_volume("db", &ams.id, 2).await.unwrap_err();
    assert!(
        matches!(err, PlatformError::Invalid { .. }),
        "no shrinking: {err}"
    );

    let err = client.delete_volume("db", &ams.id).await.unwrap_err();
    assert!(
        matches!(err, PlatformError::Invalid { .. }),
        "attached: {err}"
    );
    assert!(client.delete_machine("db", &m.id).await.unwrap());
    assert!(client.delete_volume("db", &ams.id).await.unwrap());
    assert!(!client.delete_volume("db", &ams.id).await.unwrap());
    assert_eq!(client.list_volumes("db").await.unwrap().len(), 1);
    env.check_contract(Platform::Fly);
}

#[tokio::test]
async fn a_machine_update_names_the_secrets_version_it_needs() {
    let env = harness::start(Platform::Fly, SCALE).await;
    let client = FlyClient::new(env.http(Platform::Fly));
    client.ensure_app(&app("sec")).await.unwrap();
    let m = client
        .ensure_machine("sec", &machine("m", "acme/s:1"))
        .await
        .unwrap()
        .object;
    let version = client
        .set_secrets(
            "sec",
            &BTreeMap::from([("API_KEY".to_owned(), "k1".to_owned())]),
        )
        .await
        .unwrap();
    let mut spec = machine("m", "acme/s:1");
    spec.min_secrets_version = Some(version + 1);
    let err = client
        .update_machine("sec", &m.id, &spec)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            PlatformError::Invalid {
                status: Some(400),
                ..
            }
        ),
        "secrets newer than the app holds cannot be waited for: {err}"
    );
    spec.min_secrets_version = Some(version);
    client.update_machine("sec", &m.id, &spec).await.unwrap();
    let sent = env
        .sandbox
        .exchanges()
        .into_iter()
        .rfind(|e| e.method == "POST" && e.path == format!("/v1/apps/sec/machines/{}", m.id))
        .and_then(|e| e.request_body)
        .unwrap();
    assert_eq!(sent["min_secrets_version"], version);
    env.check_contract(Platform::Fly);
}

#[tokio::test]
async fn dashboard_edits_change_machine_config_app_secrets_and_volumes() {
    let env = harness::start(Platform::Fly, SCALE).await;
    let client = FlyClient::new(env.http(Platform::Fly));
    client.ensure_app(&app("ed")).await.unwrap();
    let m = client
        .ensure_machine("ed", &machine("ed-ams-0", "acme/e:1"))
        .await
        .unwrap()
        .object;
    edit(
        &env,
        "machine",
        "ed-ams-0",
        "config.guest.memory_mb",
        serde_json::json!(512),
    )
    .await;
    edit(
        &env,
        "machine",
        "ed-ams-0",
        "config.env.PORT",
        serde_json::json!("9090"),
    )
    .await;
    let edited = client.list_machines("ed").await.unwrap().remove(0);
    assert_eq!(edited.config.guest.memory_mb, 512);
    assert_eq!(edited.config.env["PORT"], "9090");
    assert_ne!(
        edited.version, m.version,
        "a dashboard change makes a new version"
    );

    client
        .set_secrets("ed", &BTreeMap::from([("A".to_owned(), "1".to_owned())]))
        .await
        .unwrap();
    edit(&env, "app", "ed", "secrets.B", serde_json::json!("2")).await;
    edit(&env, "app", "ed", "secrets.A", serde_json::Value::Null).await;
    let names: Vec<String> = client
        .list_secrets("ed")
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.key)
        .collect();
    assert_eq!(names, ["B"]);
    let next = client
        .set_secrets("ed", &BTreeMap::from([("C".to_owned(), "3".to_owned())]))
        .await
        .unwrap();
    assert_eq!(next, 4, "edits moved the secrets version on");

    let v = client
        .create_volume(
            "ed",
            &FlyVolumeSpec {
                name: "data".into(),
                region: "ams".into(),
                size_gb: 1,
            },
        )
        .await
        .unwrap();
    edit(&env, "volume", "ed/data", "size_gb", serde_json::json!(5)).await;
    let volumes = client.list_volumes("ed").await.unwrap();
    assert_eq!(
        (volumes[0].id.as_str(), volumes[0].size_gb),
        (v.id.as_str(), 5)
    );
    env.check_contract(Platform::Fly);
}

/// Fly's 429s carry no `Retry-After`: the client backs off exponentially (with jitter), not
/// at a flat pace that keeps hammering an account already over its limit.
#[tokio::test]
async fn a_429_without_retry_after_is_retried_with_exponential_backoff() {
    let env = harness::start(Platform::Fly, BUCKET_SCALE).await;
    let client = FlyClient::new(env.http(Platform::Fly));
    client.ensure_app(&app("b")).await.unwrap();
    env.set_faults(
        Platform::Fly,
        Faults {
            rate_limit_storm: true,
            ..Faults::default()
        },
    );
    let call = {
        let client = client.clone();
        tokio::spawn(async move { client.list_secrets("b").await })
    };
    // 1 s of storm: at BUCKET_SCALE the first backoff is 10 ms, so a flat pace would send
    // about 100 requests; doubling delays (10, 20, 40, … ms) send fewer than 10.
    tokio::time::sleep(Duration::from_secs(1)).await;
    env.set_faults(Platform::Fly, Faults::default());
    call.await
        .unwrap()
        .expect("the call succeeds once the storm is over");
    let limited = env
        .sandbox
        .exchanges()
        .iter()
        .filter(|e| e.status == 429)
        .count();
    assert!(
        (2..=10).contains(&limited),
        "{limited} requests were answered 429 in 1 s: the client did not back off exponentially"
    );
}
