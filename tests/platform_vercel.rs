//! The Vercel adapter against the Vercel sandbox: projects, env vars, domains, deployments,
//! rollback by promotion, time-based pagination, `teamId`, faults and credentials — with
//! every exchange checked against Vercel's OpenAPI spec.

mod contract;

use std::time::Duration;

use contract::harness::{self, eventually};
use tether::platform::{
    DeploySource, DeploymentState, Deployments, EnvVar, Platform, PlatformError, Token,
    VercelClient, VercelProjectPatch, VercelProjectSpec, VercelProjects,
};
use tether::sandbox::Faults;

/// Rate-limit tests run slower so that a request interval (window / limit) stays well above
/// the scheduling jitter of a busy machine.
const STORM_SCALE: f64 = 50.0;
const SCALE: f64 = 200.0;

fn spec(name: &str) -> VercelProjectSpec {
    VercelProjectSpec {
        name: name.into(),
        framework: Some("nextjs".into()),
        git_repository: Some("acme/site".into()),
        build_command: None,
        root_directory: None,
    }
}

fn var(key: &str, value: &str, secret: bool) -> EnvVar {
    EnvVar {
        key: key.into(),
        value: Some(value.into()),
        secret,
    }
}

fn client(env: &harness::Env) -> VercelClient {
    VercelClient::new(env.http(Platform::Vercel), Some("team_sandbox".into())).with_page_limit(2)
}

async fn finished(client: &VercelClient, project: &str, id: &str) -> DeploymentState {
    eventually("deployment to finish", Duration::from_secs(10), || async {
        let d = client
            .deployment(project, id)
            .await
            .expect("read deployment");
        d.state.is_terminal().then_some(d.state)
    })
    .await
}

#[tokio::test]
async fn projects_env_vars_and_domains_go_through_create_read_update_list_delete() {
    let env = harness::start(Platform::Vercel, SCALE).await;
    let client = client(&env);

    let site = client.ensure_project(&spec("site")).await.unwrap();
    assert!(site.created);
    assert_eq!(site.object.git_repository.as_deref(), Some("acme/site"));
    let again = client.ensure_project(&spec("site")).await.unwrap();
    assert!(!again.created && again.object.id == site.object.id);

    let updated = client
        .update_project(
            &site.object.id,
            &VercelProjectPatch {
                build_command: Some("npm run build:prod".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(updated.build_command.as_deref(), Some("npm run build:prod"));
    assert_eq!(client.get_project("site").await.unwrap(), updated);

    for i in 0..4 {
        client
            .ensure_project(&spec(&format!("p{i}")))
            .await
            .unwrap();
    }
    assert_eq!(
        client.list_projects().await.unwrap().len(),
        5,
        "three pages of two"
    );

    client
        .set_env_var(&site.object.id, &var("PUBLIC_URL", "https://a", false))
        .await
        .unwrap();
    client
        .set_env_var(&site.object.id, &var("API_KEY", "s3cret", true))
        .await
        .unwrap();
    client
        .set_env_var(&site.object.id, &var("PUBLIC_URL", "https://b", false))
        .await
        .unwrap();
    let vars = client.list_env_vars(&site.object.id).await.unwrap();
    assert_eq!(vars.len(), 2, "upsert overwrote instead of duplicating");
    let public = vars.iter().find(|v| v.key == "PUBLIC_URL").unwrap();
    assert_eq!(public.value.as_deref(), Some("https://b"));
    let secret = vars.iter().find(|v| v.key == "API_KEY").unwrap();
    assert!(
        secret.secret && secret.value.is_none(),
        "secret values are not read back"
    );
    assert!(
        client
            .delete_env_var(&site.object.id, "API_KEY")
            .await
            .unwrap()
    );
    assert!(
        !client
            .delete_env_var(&site.object.id, "API_KEY")
            .await
            .unwrap()
    );

    for name in ["a.example.com", "b.example.com", "c.example.com"] {
        assert!(
            client
                .ensure_domain(&site.object.id, name)
                .await
                .unwrap()
                .created
        );
    }
    assert!(
        !client
            .ensure_domain(&site.object.id, "b.example.com")
            .await
            .unwrap()
            .created
    );
    assert_eq!(client.list_domains(&site.object.id).await.unwrap().len(), 3);
    assert!(
        client
            .delete_domain(&site.object.id, "a.example.com")
            .await
            .unwrap()
    );
    assert!(
        !client
            .delete_domain(&site.object.id, "a.example.com")
            .await
            .unwrap()
    );

    assert!(client.delete_project(&site.object.id).await.unwrap());
    assert!(!client.delete_project(&site.object.id).await.unwrap());
    let err = client.get_project("site").await.unwrap_err();
    assert!(
        matches!(
            err,
            PlatformError::NotFound {
                platform: Platform::Vercel,
                ..
            }
        ),
        "{err}"
    );
    let metrics = env.metrics.render();
    assert!(
        metrics.contains(r#"operation="create_project",platform="vercel""#),
        "{metrics}"
    );
    assert!(
        env.sandbox.exchanges().iter().all(|e| e
            .query
            .iter()
            .any(|(k, v)| k == "teamId" && v == "team_sandbox")),
        "every call carries teamId"
    );
    env.check_contract(Platform::Vercel);
}

#[tokio::test]
async fn a_deployment_goes_ready_a_failing_ref_errors_and_promotion_rolls_back() {
    let env = harness::start(Platform::Vercel, SCALE).await;
    let client = client(&env);
    let project = client.ensure_project(&spec("web")).await.unwrap().object;

    let good = client
        .deploy(&project.id, &DeploySource::Git("v1".into()))
        .await
        .unwrap();
    assert_eq!(good.state, DeploymentState::Queued);
    assert_eq!(
        finished(&client, &project.id, &good.id).await,
        DeploymentState::Live
    );

    env.set_faults(
        Platform::Vercel,
        Faults {
            failing_sources: vec!["v2-broken".into()],
            ..Faults::default()
        },
    );
    let bad = client
        .deploy(&project.id, &DeploySource::Git("v2-broken".into()))
        .await
        .unwrap();
    assert_eq!(
        finished(&client, &project.id, &bad.id).await,
        DeploymentState::Failed
    );
    assert_eq!(
        client
            .deployment(&project.id, &bad.id)
            .await
            .unwrap()
            .platform_state,
        "ERROR"
    );

    let newer = client
        .deploy(&project.id, &DeploySource::Git("v3".into()))
        .await
        .unwrap();
    assert_eq!(
        finished(&client, &project.id, &newer.id).await,
        DeploymentState::Live
    );
    let admin = env.sandbox.admin_url(Platform::Vercel).unwrap();
    let body = reqwest::get(format!("{admin}/apps/web"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(body.contains("v3 ok"), "{body}");

    let back = client.rollback(&project.id, &good.id).await.unwrap();
    assert_eq!(back.id, good.id);
    let body = reqwest::get(format!("{admin}/apps/web"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(body.contains("v1 ok"), "{body}");

    let history = client.list_deployments(&project.id).await.unwrap();
    assert_eq!(history.len(), 3, "two pages followed with until");
    assert_eq!(history[0].id, newer.id);
    let redeploy = client
        .deploy(&project.id, &DeploySource::Current)
        .await
        .unwrap();
    assert_eq!(redeploy.source.as_deref(), Some("v3"));
    let image = client
        .deploy(&project.id, &DeploySource::Image("x:1".into()))
        .await
        .unwrap_err();
    assert!(matches!(image, PlatformError::Invalid { .. }), "{image}");
    env.check_contract(Platform::Vercel);
}

#[tokio::test]
async fn a_wrong_token_is_unauthorized_and_names_vercel() {
    let env = harness::start(Platform::Vercel, SCALE).await;
    let client = VercelClient::new(
        env.http_with_token(Platform::Vercel, Token::new("vcl_wrong")),
        None,
    );
    let err = client.list_projects().await.unwrap_err();
    assert!(
        matches!(err, PlatformError::Unauthorized { status: 401, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("vercel") && !err.to_string().contains("vcl_wrong"));
    env.check_contract(Platform::Vercel);
}

#[tokio::test]
async fn under_a_429_storm_clients_stay_within_the_limit_and_finish() {
    let env = harness::start(Platform::Vercel, STORM_SCALE).await;
    let client = client(&env);
    let project = client.ensure_project(&spec("s")).await.unwrap().object;
    env.set_faults(
        Platform::Vercel,
        Faults {
            rate_limit_storm: true,
            storm_retry_after_secs: 5.0,
            ..Faults::default()
        },
    );
    let work = {
        let client = client.clone();
        let id = project.id.clone();
        tokio::spawn(async move {
            futures::future::try_join_all((0..120).map(|i| {
                let (client, id) = (&client, &id);
                async move {
                    client
                        .set_env_var(id, &var(&format!("K{i}"), "v", false))
                        .await
                }
            }))
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    env.set_faults(Platform::Vercel, Faults::default());
    work.await.unwrap().unwrap();
    assert_eq!(client.list_env_vars(&project.id).await.unwrap().len(), 120);
    assert!(env.sandbox.max_received_in_window(Platform::Vercel, "api") <= 100);
    env.check_contract(Platform::Vercel);
}

#[tokio::test]
async fn with_thirty_percent_server_errors_all_idempotent_work_finishes() {
    let env = harness::start(Platform::Vercel, SCALE).await;
    let client = client(&env);
    let project = client.ensure_project(&spec("e")).await.unwrap().object;
    env.set_faults(
        Platform::Vercel,
        Faults {
            error_share: 0.3,
            ..Faults::default()
        },
    );
    for i in 0..20 {
        client
            .set_env_var(&project.id, &var(&format!("K{i}"), "v", false))
            .await
            .unwrap();
    }
    for i in 0..5 {
        assert!(
            client
                .delete_domain(&project.id, &format!("none{i}.example.com"))
                .await
                .is_ok()
        );
        client.get_project(&project.id).await.unwrap();
    }
    let vars = client.list_env_vars(&project.id).await.unwrap();
    env.set_faults(Platform::Vercel, Faults::default());
    assert_eq!(vars.len(), 20);
    assert!(env.sandbox.exchanges().iter().any(|e| e.status >= 500));
    env.check_contract(Platform::Vercel);
}

#[tokio::test]
async fn malformed_or_unexpected_responses_give_a_clear_error_not_a_panic() {
    use axum::routing::get;
    let env = harness::start(Platform::Vercel, SCALE).await;
    let router = axum::Router::new()
        .route("/v9/projects/bad", get(|| async { "<html>oops</html>" }))
        .route(
            "/v13/deployments/odd",
            get(|| async {
                axum::Json(serde_json::json!({"id": "dpl_1", "readyState": "EXPLODED"}))
            }),
        )
        .route(
            "/v10/projects",
            get(|| async { axum::Json(serde_json::json!({"pagination": {"next": null}})) }),
        );
    let url = harness::serve_raw(router, "").await;
    let client = VercelClient::new(env.http_at(Platform::Vercel, &url, Token::new("t")), None);
    let err = client.get_project("bad").await.unwrap_err();
    assert!(
        matches!(err, PlatformError::Malformed { .. })
            && err.to_string().contains("invalid JSON body"),
        "{err}"
    );
    let err = client.deployment("p", "odd").await.unwrap_err();
    assert!(
        err.to_string().contains("unknown readyState \"EXPLODED\""),
        "{err}"
    );
    let err = client.list_projects().await.unwrap_err();
    assert!(err.to_string().contains("list without `projects`"), "{err}");
}
