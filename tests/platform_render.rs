//! The Render adapter against the Render sandbox: object lifecycles, pagination, deploys,
//! rollback, faults (429 storm, 5xx), credentials and malformed responses — with every
//! exchange checked against Render's OpenAPI spec.

mod contract;

use std::time::Duration;

use contract::harness::{self, eventually};
use tether::platform::{
    DeploySource, DeploymentState, Deployments, Platform, PlatformError, RenderClient,
    RenderServiceKind, RenderServicePatch, RenderServiceSpec, RenderServices, Token,
};
use tether::sandbox::Faults;

/// Rate-limit tests run slower so that a request interval (window / limit) stays well above
/// the scheduling jitter of a busy machine.
const STORM_SCALE: f64 = 50.0;
const SCALE: f64 = 200.0;

fn spec(name: &str, image: &str) -> RenderServiceSpec {
    RenderServiceSpec {
        name: name.into(),
        owner_id: "tea-test".into(),
        kind: RenderServiceKind::WebService,
        image: Some(image.into()),
        repo: None,
        branch: None,
        region: Some("frankfurt".into()),
        plan: Some("starter".into()),
    }
}

async fn live_or_failed(client: &RenderClient, service: &str, deploy: &str) -> DeploymentState {
    eventually("deploy to finish", Duration::from_secs(10), || async {
        let d = client
            .deployment(service, deploy)
            .await
            .expect("read deploy");
        d.state.is_terminal().then_some(d.state)
    })
    .await
}

#[tokio::test]
async fn services_env_vars_and_domains_go_through_create_read_update_list_delete() {
    let env = harness::start(Platform::Render, SCALE).await;
    let client = RenderClient::new(env.http(Platform::Render)).with_page_limit(3);

    let web = client
        .ensure_service(&spec("web", "acme/web:1"))
        .await
        .unwrap();
    assert!(web.created);
    let again = client
        .ensure_service(&spec("web", "acme/web:1"))
        .await
        .unwrap();
    assert!(
        !again.created,
        "a second ensure adopts instead of duplicating"
    );
    assert_eq!(again.object.id, web.object.id);

    let read = client.get_service(&web.object.id).await.unwrap();
    assert_eq!(read.region.as_deref(), Some("frankfurt"));
    assert_eq!(read.image.as_deref(), Some("acme/web:1"));

    let updated = client
        .update_service(
            &web.object.id,
            &RenderServicePatch {
                plan: Some("standard".into()),
                image: Some("acme/web:2".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(updated.plan.as_deref(), Some("standard"));
    assert_eq!(updated.image.as_deref(), Some("acme/web:2"));

    for i in 0..7 {
        client
            .ensure_service(&spec(&format!("worker-{i}"), "acme/w:1"))
            .await
            .unwrap();
    }
    let all = client.list_services("tea-test", None).await.unwrap();
    assert_eq!(all.len(), 8, "three pages of three are all followed");
    assert!(
        client
            .list_services("tea-other", None)
            .await
            .unwrap()
            .is_empty()
    );

    for i in 0..5 {
        client
            .set_env_var(&web.object.id, &format!("KEY_{i}"), &format!("v{i}"))
            .await
            .unwrap();
    }
    client
        .set_env_var(&web.object.id, "KEY_0", "changed")
        .await
        .unwrap();
    let vars = client.list_env_vars(&web.object.id).await.unwrap();
    assert_eq!(vars.len(), 5);
    assert_eq!(vars[0].value.as_deref(), Some("changed"));
    assert!(
        client
            .delete_env_var(&web.object.id, "KEY_1")
            .await
            .unwrap()
    );
    assert!(
        !client
            .delete_env_var(&web.object.id, "KEY_1")
            .await
            .unwrap()
    );
    assert_eq!(client.list_env_vars(&web.object.id).await.unwrap().len(), 4);

    let domain = client
        .ensure_domain(&web.object.id, "www.example.com")
        .await
        .unwrap();
    assert!(domain.created && !domain.object.verified);
    let again = client
        .ensure_domain(&web.object.id, "www.example.com")
        .await
        .unwrap();
    assert!(!again.created);
    assert_eq!(client.list_domains(&web.object.id).await.unwrap().len(), 1);
    assert!(
        client
            .delete_domain(&web.object.id, "www.example.com")
            .await
            .unwrap()
    );
    assert!(
        client
            .list_domains(&web.object.id)
            .await
            .unwrap()
            .is_empty()
    );

    assert!(client.delete_service(&web.object.id).await.unwrap());
    assert!(
        !client.delete_service(&web.object.id).await.unwrap(),
        "already gone counts as deleted"
    );
    let err = client.get_service(&web.object.id).await.unwrap_err();
    assert!(
        matches!(
            err,
            PlatformError::NotFound {
                platform: Platform::Render,
                ..
            }
        ),
        "{err}"
    );

    let metrics = env.metrics.render();
    assert!(
        metrics.contains(r#"tether_platform_requests_total{code="201",operation="create_service",platform="render"}"#),
        "{metrics}"
    );
    assert!(metrics.contains("tether_platform_ratelimit_remaining{platform=\"render\"}"));
    env.check_contract(Platform::Render);
}

#[tokio::test]
async fn a_deploy_goes_live_a_failing_image_fails_and_rollback_restores_the_old_one() {
    let env = harness::start(Platform::Render, SCALE).await;
    let client = RenderClient::new(env.http(Platform::Render));
    let service = client
        .ensure_service(&spec("api", "acme/api:1"))
        .await
        .unwrap()
        .object;

    let first = client
        .deploy(&service.id, &DeploySource::Image("acme/api:1".into()))
        .await
        .unwrap();
    assert_eq!(
        live_or_failed(&client, &service.id, &first.id).await,
        DeploymentState::Live
    );

    env.set_faults(
        Platform::Render,
        Faults {
            failing_sources: vec!["acme/api:2".into()],
            ..Faults::default()
        },
    );
    let bad = client
        .deploy(&service.id, &DeploySource::Image("acme/api:2".into()))
        .await
        .unwrap();
    assert_eq!(
        live_or_failed(&client, &service.id, &bad.id).await,
        DeploymentState::Failed
    );
    let failed = client.deployment(&service.id, &bad.id).await.unwrap();
    assert_eq!(failed.platform_state, "build_failed");

    let back = client.rollback(&service.id, &first.id).await.unwrap();
    assert_eq!(
        live_or_failed(&client, &service.id, &back.id).await,
        DeploymentState::Live
    );
    assert_eq!(back.source.as_deref(), Some("acme/api:1"));

    let history = client.list_deployments(&service.id).await.unwrap();
    assert_eq!(history[0].id, back.id, "newest first");
    assert!(
        history
            .iter()
            .any(|d| d.id == bad.id && d.state == DeploymentState::Failed)
    );
    let url = format!(
        "{}/apps/api",
        env.sandbox.admin_url(Platform::Render).unwrap()
    );
    let body = reqwest::get(&url).await.unwrap().text().await.unwrap();
    assert!(body.contains("acme/api:1 ok"), "{body}");
    env.check_contract(Platform::Render);
}

#[tokio::test]
async fn a_deploy_triggered_while_another_runs_is_queued_and_found() {
    let env = harness::start(Platform::Render, 20.0).await;
    let client = RenderClient::new(env.http(Platform::Render));
    let service = client
        .ensure_service(&spec("q", "acme/q:1"))
        .await
        .unwrap()
        .object;
    // The create started a deploy that is still building: the next one is queued (202).
    let queued = client
        .deploy(&service.id, &DeploySource::Image("acme/q:2".into()))
        .await
        .unwrap();
    assert_eq!(queued.state, DeploymentState::Queued);
    assert_eq!(queued.source.as_deref(), Some("acme/q:2"));
    assert!(env.sandbox.exchanges().iter().any(|e| e.status == 202));
    env.check_contract(Platform::Render);
}

#[tokio::test]
async fn a_wrong_token_is_unauthorized_and_names_render() {
    let env = harness::start(Platform::Render, SCALE).await;
    let client = RenderClient::new(env.http_with_token(Platform::Render, Token::new("rnd_wrong")));
    let err = client.list_services("tea-test", None).await.unwrap_err();
    assert!(
        matches!(err, PlatformError::Unauthorized { status: 401, .. }),
        "{err}"
    );
    let text = err.to_string();
    assert!(
        text.contains("render") && text.contains("list_services"),
        "{text}"
    );
    assert!(!text.contains("rnd_wrong"));
    env.check_contract(Platform::Render);
}

#[tokio::test]
async fn under_a_429_storm_clients_stay_within_the_documented_limits_and_finish() {
    let env = harness::start(Platform::Render, STORM_SCALE).await;
    let client = RenderClient::new(env.http(Platform::Render));
    let service = client
        .ensure_service(&spec("s", "acme/s:1"))
        .await
        .unwrap()
        .object;
    env.set_faults(
        Platform::Render,
        Faults {
            rate_limit_storm: true,
            storm_retry_after_secs: 5.0,
            ..Faults::default()
        },
    );
    let work = {
        let client = client.clone();
        let id = service.id.clone();
        tokio::spawn(async move {
            let writes = futures::future::try_join_all((0..40).map(|i| {
                let (client, id) = (&client, &id);
                async move { client.set_env_var(id, &format!("K{i}"), "v").await }
            }));
            let reads = futures::future::try_join_all((0..120).map(|_| client.get_service(&id)));
            futures::future::try_join(writes, reads).await.map(|_| ())
        })
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    env.set_faults(Platform::Render, Faults::default());
    work.await.unwrap().unwrap();
    assert_eq!(client.list_env_vars(&service.id).await.unwrap().len(), 40);
    assert!(
        env.sandbox
            .max_received_in_window(Platform::Render, "write")
            <= 30
    );
    assert!(env.sandbox.max_received_in_window(Platform::Render, "read") <= 400);
    let metrics = env.metrics.render();
    assert!(metrics.contains("tether_platform_rate_limited_total{platform=\"render\"}"));
    env.check_contract(Platform::Render);
}

#[tokio::test]
async fn with_thirty_percent_server_errors_all_idempotent_work_finishes() {
    let env = harness::start(Platform::Render, SCALE).await;
    let client = RenderClient::new(env.http(Platform::Render)).with_page_limit(5);
    let service = client
        .ensure_service(&spec("e", "acme/e:1"))
        .await
        .unwrap()
        .object;
    env.set_faults(
        Platform::Render,
        Faults {
            error_share: 0.3,
            ..Faults::default()
        },
    );
    for i in 0..20 {
        client
            .set_env_var(&service.id, &format!("K{i}"), "v")
            .await
            .unwrap();
    }
    for i in 0..5 {
        assert!(
            client
                .delete_env_var(&service.id, &format!("K{i}"))
                .await
                .is_ok()
        );
        client.get_service(&service.id).await.unwrap();
    }
    let vars = client.list_env_vars(&service.id).await.unwrap();
    env.set_faults(Platform::Render, Faults::default());
    assert_eq!(vars.len(), 15);
    assert!(
        env.sandbox.exchanges().iter().any(|e| e.status >= 500),
        "faults were injected"
    );
    env.check_contract(Platform::Render);
}

#[tokio::test]
async fn malformed_or_unexpected_responses_give_a_clear_error_not_a_panic() {
    use axum::routing::get;
    let env = harness::start(Platform::Render, SCALE).await;
    let router = axum::Router::new()
        .route("/v1/services/bad-json", get(|| async { "{not json" }))
        .route(
            "/v1/services/missing",
            get(|| async { axum::Json(serde_json::json!({"id": "srv-1"})) }),
        )
        .route(
            "/v1/services",
            get(|| async { axum::Json(serde_json::json!([{"nothing": 1}])) }),
        )
        .route(
            "/v1/services/redirect",
            get(|| async { (axum::http::StatusCode::NOT_MODIFIED, "") }),
        );
    let url = harness::serve_raw(router, "/v1").await;
    let client = RenderClient::new(env.http_at(Platform::Render, &url, Token::new("t")));
    for (id, needle) in [
        ("bad-json", "invalid JSON body"),
        ("missing", "missing field"),
        ("redirect", "unexpected HTTP status 304"),
    ] {
        let err = client.get_service(id).await.unwrap_err();
        assert!(matches!(err, PlatformError::Malformed { .. }), "{err}");
        let text = err.to_string();
        assert!(text.contains("render") && text.contains(needle), "{text}");
    }
    let err = client.list_services("tea", None).await.unwrap_err();
    assert!(
        err.to_string().contains("list item without `service`"),
        "{err}"
    );
}

#[test]
fn the_contract_check_names_the_spec_path_and_field_of_a_mismatch() {
    let contract = contract::Contract::load(Platform::Render);
    let exchange = tether::sandbox::Exchange {
        platform: Platform::Render,
        method: "GET".into(),
        path: "/services/srv-1".into(),
        query: vec![("limit".into(), "7".into())],
        request_body: None,
        status: 200,
        response_body: Some(serde_json::json!({"id": "srv-1", "suspended": true})),
        response_text: None,
    };
    let errors = contract.check(&exchange).join("\n");
    assert!(
        errors.contains("paths./services/{serviceId}.get"),
        "{errors}"
    );
    assert!(
        errors.contains("query parameter limit: not declared"),
        "{errors}"
    );
    assert!(errors.contains("field /suspended"), "{errors}");
    assert!(
        errors.contains("\"name\" is a required property"),
        "{errors}"
    );
    let unknown = tether::sandbox::Exchange {
        path: "/services/srv-1/explode".into(),
        ..exchange
    };
    assert!(contract.check(&unknown)[0].contains("no such operation"));
}

#[tokio::test]
async fn the_admin_endpoint_switches_faults_and_applies_dashboard_edits_at_run_time() {
    let env = harness::start(Platform::Render, SCALE).await;
    let client = RenderClient::new(env.http(Platform::Render));
    let service = client
        .ensure_service(&spec("dash", "acme/d:1"))
        .await
        .unwrap()
        .object;
    let admin = env.sandbox.admin_url(Platform::Render).unwrap();
    let token = env.sandbox.token(Platform::Render).unwrap();
    let http = reqwest::Client::new();

    // A person changes the plan in the dashboard: the next read shows the drift.
    let edit = http
        .post(format!("{admin}/edit"))
        .bearer_auth(token.expose())
        .json(&serde_json::json!({"object": "service", "name": "dash", "field": "serviceDetails.plan", "value": "pro"}))
        .send()
        .await
        .unwrap();
    assert_eq!(edit.status(), 204);
    assert_eq!(
        client
            .get_service(&service.id)
            .await
            .unwrap()
            .plan
            .as_deref(),
        Some("pro")
    );
    let unknown = http
        .post(format!("{admin}/edit"))
        .bearer_auth(token.expose())
        .json(&serde_json::json!({"object": "service", "name": "nope", "field": "x", "value": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);

    // Faults are switched over HTTP too, and need the token.
    let faults = serde_json::json!({"latencyMs": 80, "unhealthySources": ["acme/d:1"]});
    let anonymous = http
        .put(format!("{admin}/faults"))
        .json(&faults)
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    let put = http
        .put(format!("{admin}/faults"))
        .bearer_auth(token.expose())
        .json(&faults)
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200);
    let started = std::time::Instant::now();
    client.get_service(&service.id).await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(80),
        "latency fault applies"
    );

    // The deployed app answers its health endpoint with 500 and the metrics count it.
    eventually(
        "first deploy to go live",
        Duration::from_secs(10),
        || async {
            let r = reqwest::get(format!("{admin}/apps/dash")).await.unwrap();
            (r.status() == 500).then_some(())
        },
    )
    .await;
    let metrics = reqwest::get(format!("{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("sandbox_app_errors_total{app=\"dash\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("sandbox_app_requests_total{app=\"dash\"} 1"),
        "{metrics}"
    );
    env.check_contract(Platform::Render);
}

#[tokio::test]
async fn sandbox_credentials_round_trip_through_kubernetes_secrets() {
    let env = harness::start(Platform::Render, SCALE).await;
    let secrets = env.sandbox.credential_secrets("default");
    assert_eq!(secrets.len(), 1);
    let (platform, secret) = &secrets[0];
    assert_eq!(*platform, Platform::Render);
    let token = tether::platform::credentials::token_from_secret_object(
        secret,
        "default",
        "tether-sandbox-render",
        "token",
    )
    .unwrap();
    let client = RenderClient::new(env.http_with_token(Platform::Render, token));
    assert!(
        client
            .list_services("tea-test", None)
            .await
            .unwrap()
            .is_empty()
    );
    env.check_contract(Platform::Render);
}
