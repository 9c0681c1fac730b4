//! The Render adapter against the Render sandbox: object lifecycles, pagination, deploys,
//! rollback, faults (429 storm, 5xx), credentials and malformed responses — with every
//! exchange checked against Render's OpenAPI spec.

use std::time::Duration;

use crate::contract::harness::{self, eventually};
use crate::support::{app_answer, host_of};
use tether::platform::{
    DatastoreStatus, DeploySource, DeploymentState, Deployments, EnvVar, Platform, PlatformError,
    RenderCidr, RenderClient, RenderDatastores, RenderKeyValuePatch, RenderKeyValueSpec,
    RenderPostgresPatch, RenderPostgresSpec, RenderServiceKind, RenderServicePatch,
    RenderServiceSpec, RenderServices, Token,
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
        region: Some("frankfurt".into()),
        plan: Some("starter".into()),
        ..Default::default()
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
            &web.object,
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
async fn updated_after_lists_only_services_created_or_changed_since() {
    let env = harness::start(Platform::Render, SCALE).await;
    let client = RenderClient::new(env.http(Platform::Render)).with_page_limit(2);
    for name in ["old-1", "old-2", "old-3"] {
        client
            .ensure_service(&spec(name, "acme/o:1"))
            .await
            .unwrap();
    }
    // Render's timestamps are to the millisecond or finer; a pause keeps "after" strict.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let since = std::time::SystemTime::now();
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(
        client
            .list_services_updated_after("tea-test", since)
            .await
            .unwrap()
            .is_empty(),
        "nothing changed yet"
    );
    let new = client
        .ensure_service(&spec("new", "acme/n:1"))
        .await
        .unwrap()
        .object;
    let old = client
        .list_services("tea-test", Some("old-1"))
        .await
        .unwrap();
    client
        .update_service(
            &old[0],
            &RenderServicePatch {
                plan: Some("standard".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    // A dashboard edit is an update too.
    let dashboard = serde_json::json!({"object": "service", "name": "old-2", "field": "serviceDetails.numInstances", "value": 2});
    assert_eq!(edit(&env, dashboard).await, 204);
    let mut changed: Vec<String> = client
        .list_services_updated_after("tea-test", since)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    changed.sort();
    assert_eq!(
        changed,
        ["new", "old-1", "old-2"],
        "two pages of two are followed"
    );
    assert_eq!(
        client.list_services("tea-test", None).await.unwrap().len(),
        4
    );
    assert!(new.id.starts_with("srv-"));
    env.check_contract(Platform::Render);

    // A timestamp Render cannot read is refused, not ignored.
    let raw = reqwest::Client::new()
        .get(format!(
            "{}/services?updatedAfter=yesterday",
            env.sandbox.url(Platform::Render).unwrap()
        ))
        .bearer_auth(env.sandbox.token(Platform::Render).unwrap().expose())
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status().as_u16(), 400);
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
    let host = host_of(service.url.as_deref().unwrap());
    let (_, body) = app_answer(env.sandbox.edge_url(), host).await;
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
    let contract = crate::contract::Contract::load(Platform::Render);
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

    // The deployed app answers with 500 and the metrics count it.
    let host = host_of(service.url.as_deref().unwrap()).to_owned();
    let edge = env.sandbox.edge_url().to_owned();
    eventually(
        "first deploy to go live",
        Duration::from_secs(10),
        || async { (app_answer(&edge, &host).await.0 == 500).then_some(()) },
    )
    .await;
    let metrics = reqwest::get(format!("{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(
            "sandbox_app_requests_total{app=\"dash\",version=\"acme/d:1\",code=\"500\"} 1"
        ),
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

fn cidr(block: &str) -> RenderCidr {
    RenderCidr {
        cidr_block: block.into(),
        description: "office".into(),
    }
}

async fn edit(env: &harness::Env, body: serde_json::Value) -> u16 {
    let admin = env.sandbox.admin_url(Platform::Render).unwrap();
    let token = env.sandbox.token(Platform::Render).unwrap();
    reqwest::Client::new()
        .post(format!("{admin}/edit"))
        .bearer_auth(token.expose())
        .json(&body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn every_service_kind_is_created_with_its_settings_and_they_read_back_from_the_list() {
    let env = harness::start(Platform::Render, SCALE).await;
    let client = RenderClient::new(env.http(Platform::Render)).with_page_limit(2);
    let repo = Some("https://github.com/acme/app".to_string());
    let specs = [
        RenderServiceSpec {
            name: "api".into(),
            owner_id: "tea-test".into(),
            kind: RenderServiceKind::WebService,
            repo: repo.clone(),
            branch: Some("main".into()),
            runtime: Some("node".into()),
            build_command: Some("npm ci".into()),
            start_command: Some("npm start".into()),
            health_check_path: Some("/healthz".into()),
            instances: Some(2),
            region: Some("ohio".into()),
            plan: Some("standard".into()),
            env_vars: vec![EnvVar {
                key: "API_KEY".into(),
                value: Some("s3cret".into()),
                secret: true,
            }],
            ..Default::default()
        },
        RenderServiceSpec {
            name: "nightly".into(),
            owner_id: "tea-test".into(),
            kind: RenderServiceKind::CronJob,
            image: Some("acme/job:1".into()),
            schedule: Some("0 3 * * *".into()),
            start_command: Some("./job".into()),
            ..Default::default()
        },
        RenderServiceSpec {
            name: "docs".into(),
            owner_id: "tea-test".into(),
            kind: RenderServiceKind::StaticSite,
            repo: repo.clone(),
            build_command: Some("make site".into()),
            publish_path: Some("site".into()),
            ..Default::default()
        },
        RenderServiceSpec {
            name: "queue".into(),
            owner_id: "tea-test".into(),
            kind: RenderServiceKind::BackgroundWorker,
            image: Some("acme/worker:1".into()),
            ..Default::default()
        },
        RenderServiceSpec {
            name: "internal".into(),
            owner_id: "tea-test".into(),
            kind: RenderServiceKind::PrivateService,
            image: Some("acme/internal:1".into()),
            ..Default::default()
        },
    ];
    for spec in &specs {
        assert!(client.ensure_service(spec).await.unwrap().created);
    }
    let listed = client.list_services("tea-test", None).await.unwrap();
    assert_eq!(listed.len(), 5, "three pages of two are followed");
    let by_name = |name: &str| listed.iter().find(|s| s.name == name).unwrap().clone();

    let api = by_name("api");
    assert_eq!(api.kind, Some(RenderServiceKind::WebService));
    assert_eq!(api.runtime.as_deref(), Some("node"));
    assert_eq!(api.build_command.as_deref(), Some("npm ci"));
    assert_eq!(api.start_command.as_deref(), Some("npm start"));
    assert_eq!(api.health_check_path.as_deref(), Some("/healthz"));
    assert_eq!(api.num_instances, Some(2));
    assert_eq!(api.region.as_deref(), Some("ohio"));
    assert_eq!(api.plan.as_deref(), Some("standard"));
    assert_eq!(api.branch.as_deref(), Some("main"));
    assert!(!api.auto_deploy, "Tether owns deploys");
    let vars = client.list_env_vars(&api.id).await.unwrap();
    assert_eq!(vars.len(), 1, "env vars go with the create");

    let cron = by_name("nightly");
    assert_eq!(cron.kind, Some(RenderServiceKind::CronJob));
    assert_eq!(cron.schedule.as_deref(), Some("0 3 * * *"));
    assert_eq!(cron.start_command.as_deref(), Some("./job"));
    assert_eq!(cron.runtime.as_deref(), Some("image"));
    assert_eq!(cron.num_instances, None);

    let docs = by_name("docs");
    assert_eq!(docs.kind, Some(RenderServiceKind::StaticSite));
    assert_eq!(docs.publish_path.as_deref(), Some("site"));
    assert_eq!(docs.build_command.as_deref(), Some("make site"));
    assert!(docs.url.is_some());

    let worker = by_name("queue");
    assert_eq!(worker.kind, Some(RenderServiceKind::BackgroundWorker));
    assert_eq!(worker.num_instances, Some(1), "Render's default");
    assert_eq!(worker.start_command, None, "empty reads as unset");
    assert_eq!(
        by_name("internal").kind,
        Some(RenderServiceKind::PrivateService)
    );

    // Each kind takes its own patch fields; the response is the new state.
    let api = client
        .update_service(
            &api,
            &RenderServicePatch {
                start_command: Some("npm run serve".into()),
                health_check_path: Some("/ready".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(api.start_command.as_deref(), Some("npm run serve"));
    assert_eq!(
        api.build_command.as_deref(),
        Some("npm ci"),
        "an untouched command stays"
    );
    assert_eq!(api.health_check_path.as_deref(), Some("/ready"));
    let cron = client
        .update_service(
            &cron,
            &RenderServicePatch {
                schedule: Some("*/5 * * * *".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(cron.schedule.as_deref(), Some("*/5 * * * *"));
    let docs = client
        .update_service(
            &docs,
            &RenderServicePatch {
                publish_path: Some("out".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(docs.publish_path.as_deref(), Some("out"));
    let worker = client
        .update_service(
            &worker,
            &RenderServicePatch {
                runtime: Some("python".into()),
                image: None,
                start_command: Some("python worker.py".into()),
                build_command: Some("pip install .".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(worker.runtime.as_deref(), Some("python"));
    assert_eq!(worker.start_command.as_deref(), Some("python worker.py"));
    assert_eq!(worker.build_command.as_deref(), Some("pip install ."));

    // Instances change through /scale (202), and a cron job cannot be scaled.
    client.scale_service(&api.id, 4).await.unwrap();
    assert_eq!(
        client.get_service(&api.id).await.unwrap().num_instances,
        Some(4)
    );
    let err = client.scale_service(&cron.id, 2).await.unwrap_err();
    assert!(
        matches!(
            err,
            PlatformError::Invalid {
                status: Some(400),
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("scale_service"), "{err}");

    // Fields a kind does not have are refused before anything is sent.
    let sent = env.sandbox.exchanges().len();
    let err = client
        .update_service(
            &cron,
            &RenderServicePatch {
                health_check_path: Some("/x".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("healthCheckPath cannot be set on a cron_job"),
        "{err}"
    );
    assert_eq!(env.sandbox.exchanges().len(), sent);

    let create = env
        .sandbox
        .exchanges()
        .into_iter()
        .find(|e| e.method == "POST" && e.path == "/services")
        .unwrap();
    assert_eq!(create.request_body.unwrap()["autoDeploy"], "no");
    env.check_contract(Platform::Render);
}

#[tokio::test]
async fn key_value_stores_are_created_become_available_and_are_updated_and_deleted() {
    let env = harness::start(Platform::Render, SCALE).await;
    let client = RenderClient::new(env.http(Platform::Render)).with_page_limit(2);
    let spec = RenderKeyValueSpec {
        name: "cache".into(),
        owner_id: "tea-test".into(),
        plan: "starter".into(),
        region: Some("frankfurt".into()),
        maxmemory_policy: Some("noeviction".into()),
        ip_allow_list: vec![cidr("203.0.113.0/24")],
    };
    let created = client.ensure_key_value(&spec).await.unwrap();
    assert!(created.created);
    assert_eq!(created.object.status, DatastoreStatus::Creating);
    assert_eq!(created.object.region, "frankfurt");
    assert_eq!(
        created.object.maxmemory_policy.as_deref(),
        Some("noeviction")
    );
    assert_eq!(created.object.ip_allow_list, vec![cidr("203.0.113.0/24")]);
    let again = client.ensure_key_value(&spec).await.unwrap();
    assert!(!again.created, "found by name, not duplicated");
    assert_eq!(again.object.id, created.object.id);

    for i in 0..4 {
        client
            .ensure_key_value(&RenderKeyValueSpec {
                name: format!("other-{i}"),
                owner_id: "tea-test".into(),
                plan: "free".into(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let listed = client.list_key_values("tea-test", None).await.unwrap();
    assert_eq!(listed.len(), 5, "pages are followed");
    assert!(listed.iter().all(|k| k.dashboard_url.is_some()));
    let other = listed.iter().find(|k| k.name == "other-0").unwrap();
    assert_eq!(other.region, "oregon", "Render's default region");
    assert_eq!(other.maxmemory_policy.as_deref(), Some("allkeys_lru"));
    assert!(
        client
            .list_key_values("tea-else", None)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        client
            .list_key_values("tea-test", Some("cache"))
            .await
            .unwrap()
            .len(),
        1
    );

    let id = created.object.id.clone();
    let available = eventually("key value available", Duration::from_secs(5), || async {
        let k = client.get_key_value(&id).await.unwrap();
        (k.status == DatastoreStatus::Available).then_some(k)
    })
    .await;
    assert_eq!(available.plan, "starter");

    let updated = client
        .update_key_value(
            &id,
            &RenderKeyValuePatch {
                plan: Some("standard".into()),
                maxmemory_policy: Some("volatile_lru".into()),
                ip_allow_list: Some(vec![]),
            },
        )
        .await
        .unwrap();
    assert_eq!(updated.plan, "standard");
    assert_eq!(updated.maxmemory_policy.as_deref(), Some("volatile_lru"));
    assert!(updated.ip_allow_list.is_empty());
    assert_eq!(updated.region, "frankfurt", "region never changes");

    assert!(client.delete_key_value(&id).await.unwrap());
    assert!(!client.delete_key_value(&id).await.unwrap());
    assert!(matches!(
        client.get_key_value(&id).await.unwrap_err(),
        PlatformError::NotFound { .. }
    ));
    env.check_contract(Platform::Render);
}

#[tokio::test]
async fn postgres_databases_are_created_become_available_and_are_updated_and_deleted() {
    let env = harness::start(Platform::Render, SCALE).await;
    let client = RenderClient::new(env.http(Platform::Render));
    let spec = RenderPostgresSpec {
        name: "main-db".into(),
        owner_id: "tea-test".into(),
        plan: "basic_1gb".into(),
        region: Some("virginia".into()),
        version: "17".into(),
        disk_size_gb: Some(10),
        database_name: Some("app".into()),
        database_user: Some("app_user".into()),
        high_availability: false,
        ip_allow_list: vec![cidr("198.51.100.7/32")],
    };
    let created = client.ensure_postgres(&spec).await.unwrap();
    assert!(created.created);
    let db = created.object;
    assert_eq!(db.status, DatastoreStatus::Creating);
    assert_eq!(
        (db.version.as_str(), db.region.as_str()),
        ("17", "virginia")
    );
    assert_eq!(
        (db.database_name.as_str(), db.database_user.as_str()),
        ("app", "app_user")
    );
    assert_eq!(db.disk_size_gb, Some(10));
    assert!(!client.ensure_postgres(&spec).await.unwrap().created);

    let unnamed = client
        .ensure_postgres(&RenderPostgresSpec {
            name: "scratch".into(),
            owner_id: "tea-test".into(),
            plan: "free".into(),
            version: "16".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .object;
    assert!(!unnamed.database_name.is_empty() && !unnamed.database_user.is_empty());
    assert_eq!(unnamed.region, "oregon");

    let available = eventually("postgres available", Duration::from_secs(5), || async {
        let list = client.list_postgres("tea-test", None).await.unwrap();
        list.into_iter()
            .find(|p| p.name == "main-db" && p.status == DatastoreStatus::Available)
    })
    .await;
    assert_eq!(available.ip_allow_list, vec![cidr("198.51.100.7/32")]);

    let updated = client
        .update_postgres(
            &db.id,
            &RenderPostgresPatch {
                plan: Some("pro_4gb".into()),
                disk_size_gb: Some(50),
                high_availability: Some(true),
                ip_allow_list: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(updated.plan, "pro_4gb");
    assert_eq!(updated.disk_size_gb, Some(50));
    assert!(updated.high_availability);
    assert_eq!(
        updated.ip_allow_list,
        vec![cidr("198.51.100.7/32")],
        "an absent field is left alone"
    );
    let patch = env
        .sandbox
        .exchanges()
        .into_iter()
        .find(|e| e.method == "PATCH")
        .unwrap();
    assert_eq!(
        patch.request_body.unwrap()["enableHighAvailability"],
        true,
        "the write side's name"
    );
    let shrink = client
        .update_postgres(
            &db.id,
            &RenderPostgresPatch {
                disk_size_gb: Some(5),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            shrink,
            PlatformError::Invalid {
                status: Some(400),
                ..
            }
        ),
        "{shrink}"
    );

    assert!(client.delete_postgres(&db.id).await.unwrap());
    assert!(!client.delete_postgres(&db.id).await.unwrap());
    assert_eq!(
        client.list_postgres("tea-test", None).await.unwrap().len(),
        1
    );
    env.check_contract(Platform::Render);
}

#[tokio::test]
async fn dashboard_edits_reach_services_domains_key_values_and_postgres() {
    let env = harness::start(Platform::Render, SCALE).await;
    let client = RenderClient::new(env.http(Platform::Render));
    let web = client
        .ensure_service(&spec("edited", "acme/e:1"))
        .await
        .unwrap()
        .object;
    let kv = client
        .ensure_key_value(&RenderKeyValueSpec {
            name: "edited-cache".into(),
            owner_id: "tea-test".into(),
            plan: "starter".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .object;
    let db = client
        .ensure_postgres(&RenderPostgresSpec {
            name: "edited-db".into(),
            owner_id: "tea-test".into(),
            plan: "basic_256mb".into(),
            version: "16".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .object;

    let edits = [
        serde_json::json!({"object": "service", "name": "edited", "field": "serviceDetails.numInstances", "value": 3}),
        serde_json::json!({"object": "service", "name": "edited", "field": "serviceDetails.envSpecificDetails.dockerCommand", "value": "./other"}),
        serde_json::json!({"object": "customDomain", "name": "edited", "field": "rogue.example.com", "value": true}),
        serde_json::json!({"object": "keyValue", "name": "edited-cache", "field": "options.maxmemoryPolicy", "value": "noeviction"}),
        serde_json::json!({"object": "keyValue", "name": "edited-cache", "field": "ipAllowList", "value": [{"cidrBlock": "0.0.0.0/0", "description": "everyone"}]}),
        serde_json::json!({"object": "postgres", "name": "edited-db", "field": "highAvailabilityEnabled", "value": true}),
        serde_json::json!({"object": "postgres", "name": "edited-db", "field": "plan", "value": "pro_8gb"}),
    ];
    for body in edits {
        assert_eq!(edit(&env, body.clone()).await, 204, "{body}");
    }
    let web = client.get_service(&web.id).await.unwrap();
    assert_eq!(web.num_instances, Some(3));
    assert_eq!(web.start_command.as_deref(), Some("./other"));
    let domains = client.list_domains(&web.id).await.unwrap();
    assert_eq!(domains.len(), 1);
    assert_eq!(domains[0].name, "rogue.example.com");
    let kv = client.get_key_value(&kv.id).await.unwrap();
    assert_eq!(kv.maxmemory_policy.as_deref(), Some("noeviction"));
    assert_eq!(kv.ip_allow_list[0].cidr_block, "0.0.0.0/0");
    let db = client.get_postgres(&db.id).await.unwrap();
    assert!(db.high_availability);
    assert_eq!(db.plan, "pro_8gb");

    // A domain removed in the dashboard; unknown objects are 404.
    let removed = serde_json::json!({"object": "customDomain", "name": "edited", "field": "rogue.example.com", "value": null});
    assert_eq!(edit(&env, removed).await, 204);
    assert!(client.list_domains(&web.id).await.unwrap().is_empty());
    let unknown =
        serde_json::json!({"object": "postgres", "name": "nope", "field": "plan", "value": "free"});
    assert_eq!(edit(&env, unknown).await, 404);
    env.check_contract(Platform::Render);
}
