//! The Fly Machines adapter against the Fly sandbox: apps (idempotent create), machines
//! (leases, `current_version`, `fly-next-cursor` paging), secrets, certificates, image
//! rollouts and rollback, faults and credentials — every exchange checked against Fly's
//! OpenAPI spec.

mod contract;

use std::collections::BTreeMap;
use std::time::Duration;

use contract::harness::{self, eventually};
use tether::platform::{
    DeploySource, DeploymentState, Deployments, FlyAppSpec, FlyApps, FlyClient, FlyMachineSpec,
    Platform, PlatformError, Token,
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
        image: image.into(),
        env: BTreeMap::from([("PORT".to_owned(), "8080".to_owned())]),
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
    assert_eq!(
        client.list_apps("acme").await.unwrap().len(),
        5,
        "three pages of two"
    );

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
    changed.env.insert("LOG_LEVEL".into(), "debug".into());
    let updated = client
        .update_machine("web", &first.id, &changed)
        .await
        .unwrap();
    assert_ne!(
        updated.version, started.version,
        "an update makes a new version"
    );
    assert_eq!(
        updated.env.get("LOG_LEVEL").map(String::as_str),
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
    assert!(client.delete_secret("web", "API_KEY").await.unwrap());
    let secrets = client.list_secrets("web").await.unwrap();
    assert_eq!(secrets.len(), 1);
    assert!(secrets[0].secret && secrets[0].value.is_none());
    assert!(client.delete_secret("web", "DATABASE_URL").await.unwrap());
    assert!(!client.delete_secret("web", "DATABASE_URL").await.unwrap());

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
    let admin = env.sandbox.admin_url(Platform::Fly).unwrap();
    let body = reqwest::get(format!("{admin}/apps/api"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(body.contains("acme/api:1 ok"), "{body}");
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
        .json(&serde_json::json!({"object": "machine", "name": "m", "field": "instance_id", "value": "01HOTHER"}))
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
    assert_eq!(
        now.image.as_deref(),
        Some("acme/r:1"),
        "nothing was applied"
    );
    // The adapter reads the current version first, so its update goes through.
    let updated = client
        .update_machine("race", &m.id, &machine("m", "acme/r:2"))
        .await
        .unwrap();
    assert_eq!(updated.image.as_deref(), Some("acme/r:2"));
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
        err.to_string().contains("machine without `instance_id`"),
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
