//! The Vercel adapter against the Vercel sandbox: projects, env vars, domains, deployments,
//! rollback by promotion, time-based pagination, `teamId`, faults and credentials — with
//! every exchange checked against Vercel's OpenAPI spec.

use std::time::Duration;

use crate::contract::harness::{self, eventually};
use crate::support::app_answer;
use serde_json::{Value, json};
use tether::api::environment::VercelTarget::{self, Development, Preview, Production};
use tether::platform::{
    DeploySource, DeploymentState, Deployments, Platform, PlatformError, Token, VercelClient,
    VercelDomainSpec, VercelEnvType, VercelEnvVarSpec, VercelProjectPatch, VercelProjectSpec,
    VercelProjects,
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
        git_repository: Some(("github".into(), "acme/site".into())),
        ..VercelProjectSpec::default()
    }
}

fn var(key: &str, value: &str, kind: VercelEnvType, targets: &[VercelTarget]) -> VercelEnvVarSpec {
    VercelEnvVarSpec {
        key: key.into(),
        value: value.into(),
        kind,
        targets: targets.to_vec(),
        git_branch: None,
    }
}

fn plain(key: &str, value: &str) -> VercelEnvVarSpec {
    var(key, value, VercelEnvType::Plain, &[Production, Preview])
}

/// A dashboard edit through the sandbox's admin endpoint.
async fn edit(env: &harness::Env, object: &str, name: &str, field: &str, value: Value) {
    let admin = env.sandbox.admin_url(Platform::Vercel).unwrap();
    let token = env.sandbox.token(Platform::Vercel).unwrap();
    let status = reqwest::Client::new()
        .post(format!("{admin}/edit"))
        .bearer_auth(token.expose())
        .json(&json!({ "object": object, "name": name, "field": field, "value": value }))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status.as_u16(), 204, "edit {object} {name} {field}");
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
async fn projects_go_through_create_read_update_list_delete_with_every_setting() {
    let env = harness::start(Platform::Vercel, SCALE).await;
    let client = client(&env);

    let full = VercelProjectSpec {
        name: "site".into(),
        framework: Some("nextjs".into()),
        git_repository: Some(("gitlab".into(), "acme/site".into())),
        root_directory: Some("apps/web".into()),
        install_command: Some("pnpm install".into()),
        build_command: Some("pnpm build".into()),
        output_directory: Some("dist".into()),
        node_version: Some("20.x".into()),
        env_vars: vec![plain("PUBLIC_URL", "https://a")],
    };
    let site = client.ensure_project(&full).await.unwrap();
    assert!(site.created);
    let project = &site.object;
    let link = project.git_repository.as_ref().unwrap();
    assert_eq!(
        (link.provider.as_str(), link.repo.as_str()),
        ("gitlab", "acme/site")
    );
    assert_eq!(link.production_branch.as_deref(), Some("main"));
    assert_eq!(project.root_directory.as_deref(), Some("apps/web"));
    assert_eq!(project.install_command.as_deref(), Some("pnpm install"));
    assert_eq!(project.build_command.as_deref(), Some("pnpm build"));
    assert_eq!(project.output_directory.as_deref(), Some("dist"));
    assert_eq!(
        project.node_version, "20.x",
        "set by the follow-up PATCH the create body cannot carry"
    );
    assert_eq!(
        project.env_vars.len(),
        1,
        "variables created with the project"
    );

    let again = client.ensure_project(&full).await.unwrap();
    assert!(
        !again.created && again.object.id == project.id,
        "a taken name is adopted, not duplicated"
    );

    let updated = client
        .update_project(
            &project.id,
            &VercelProjectPatch {
                build_command: Some(Some("pnpm build:prod".into())),
                output_directory: Some(None),
                node_version: Some("22.x".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(updated.build_command.as_deref(), Some("pnpm build:prod"));
    assert_eq!(updated.output_directory, None, "null resets to detection");
    assert_eq!(updated.node_version, "22.x");
    assert_eq!(
        updated.install_command.as_deref(),
        Some("pnpm install"),
        "untouched"
    );
    assert_eq!(client.get_project("site").await.unwrap(), updated);

    for i in 0..4 {
        client
            .ensure_project(&spec(&format!("p{i}")))
            .await
            .unwrap();
    }
    let listed = client.list_projects().await.unwrap();
    assert_eq!(listed.len(), 5, "three pages of two");
    assert_eq!(
        listed.iter().find(|p| p.name == "site"),
        Some(&updated),
        "the list carries settings, link and variables"
    );

    assert!(client.delete_project(&project.id).await.unwrap());
    assert!(!client.delete_project(&project.id).await.unwrap());
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
async fn env_vars_are_identified_by_key_targets_and_branch_and_upserted_in_one_request() {
    let env = harness::start(Platform::Vercel, SCALE).await;
    let client = client(&env);
    let id = client
        .ensure_project(&spec("site"))
        .await
        .unwrap()
        .object
        .id;

    let mut branch = var(
        "API_URL",
        "https://feature",
        VercelEnvType::Plain,
        &[Preview],
    );
    branch.git_branch = Some("feature-1".into());
    let written = client
        .upsert_env_vars(
            &id,
            &[
                var(
                    "API_URL",
                    "https://prod",
                    VercelEnvType::Plain,
                    &[Production],
                ),
                var(
                    "API_URL",
                    "https://dev",
                    VercelEnvType::Plain,
                    &[Preview, Development],
                ),
                branch,
                var(
                    "API_KEY",
                    "s3cret",
                    VercelEnvType::Encrypted,
                    &[Production, Preview],
                ),
            ],
        )
        .await
        .unwrap();
    assert_eq!(written.len(), 4);
    let before = env.sandbox.exchanges().len();
    client
        .upsert_env_vars(
            &id,
            &[
                var(
                    "API_URL",
                    "https://prod2",
                    VercelEnvType::Plain,
                    &[Production],
                ),
                var(
                    "API_KEY",
                    "rotated",
                    VercelEnvType::Encrypted,
                    &[Preview, Production],
                ),
            ],
        )
        .await
        .unwrap();
    assert_eq!(env.sandbox.exchanges().len(), before + 1, "one request");

    let project = client
        .list_projects()
        .await
        .unwrap()
        .into_iter()
        .find(|p| p.id == id)
        .unwrap();
    assert_eq!(project.env_vars, client.list_env_vars(&id).await.unwrap());
    let vars = project.env_vars;
    assert_eq!(
        vars.len(),
        4,
        "upsert replaced the same identity instead of adding"
    );
    let prod = vars
        .iter()
        .find(|v| v.key == "API_URL" && v.targets == [Production])
        .unwrap();
    assert_eq!(prod.value.as_deref(), Some("https://prod2"));
    let feature = vars
        .iter()
        .find(|v| v.git_branch.as_deref() == Some("feature-1"))
        .unwrap();
    assert_eq!(
        (feature.targets.as_slice(), feature.value.as_deref()),
        (&[Preview][..], Some("https://feature"))
    );
    let key = vars.iter().find(|v| v.key == "API_KEY").unwrap();
    assert_eq!(key.kind, VercelEnvType::Encrypted);
    assert_eq!(key.value, None, "encrypted values are not read back");

    let overlap = client
        .upsert_env_vars(
            &id,
            &[var(
                "API_URL",
                "x",
                VercelEnvType::Plain,
                &[Production, Preview],
            )],
        )
        .await
        .unwrap_err();
    assert!(
        matches!(overlap, PlatformError::Conflict { .. }),
        "{overlap}"
    );
    let mut misplaced = plain("X", "y");
    misplaced.git_branch = Some("b".into());
    let invalid = client.upsert_env_vars(&id, &[misplaced]).await.unwrap_err();
    assert!(
        matches!(invalid, PlatformError::Invalid { .. }),
        "{invalid}"
    );

    assert!(client.delete_env_var(&id, &prod.id).await.unwrap());
    assert!(!client.delete_env_var(&id, &prod.id).await.unwrap());
    assert_eq!(client.list_env_vars(&id).await.unwrap().len(), 3);
    env.check_contract(Platform::Vercel);
}

#[tokio::test]
async fn domains_carry_redirect_and_git_branch_and_are_patched_and_deleted() {
    let env = harness::start(Platform::Vercel, SCALE).await;
    let client = client(&env);
    let id = client
        .ensure_project(&spec("site"))
        .await
        .unwrap()
        .object
        .id;
    let domain = |name: &str, redirect: Option<&str>, branch: Option<&str>| VercelDomainSpec {
        name: name.into(),
        redirect: redirect.map(Into::into),
        git_branch: branch.map(Into::into),
    };

    let www = client
        .ensure_domain(&id, &domain("www.example.com", None, None))
        .await
        .unwrap();
    assert!(www.created && www.object.verified);
    let apex = client
        .ensure_domain(&id, &domain("example.com", Some("www.example.com"), None))
        .await
        .unwrap();
    assert_eq!(apex.object.redirect.as_deref(), Some("www.example.com"));
    client
        .ensure_domain(&id, &domain("beta.example.com", None, Some("beta")))
        .await
        .unwrap();
    let again = client
        .ensure_domain(&id, &domain("www.example.com", None, None))
        .await
        .unwrap();
    assert!(!again.created, "an attached domain is adopted");

    let other = client
        .ensure_project(&spec("other"))
        .await
        .unwrap()
        .object
        .id;
    let taken = client
        .ensure_domain(&other, &domain("www.example.com", None, None))
        .await
        .unwrap_err();
    assert!(matches!(taken, PlatformError::Conflict { .. }), "{taken}");
    let both = client
        .ensure_domain(
            &id,
            &domain("x.example.com", Some("www.example.com"), Some("b")),
        )
        .await
        .unwrap_err();
    assert!(matches!(both, PlatformError::Invalid { .. }), "{both}");

    let patched = client
        .update_domain(&id, &domain("example.com", None, None))
        .await
        .unwrap();
    assert_eq!(patched.redirect, None, "null clears the redirect");
    let patched = client
        .update_domain(&id, &domain("beta.example.com", None, Some("next")))
        .await
        .unwrap();
    assert_eq!(patched.git_branch.as_deref(), Some("next"));

    let listed = client.list_domains(&id).await.unwrap();
    assert_eq!(listed.len(), 3, "two pages of two");
    assert!(listed.contains(&patched));
    assert!(client.delete_domain(&id, "example.com").await.unwrap());
    assert!(!client.delete_domain(&id, "example.com").await.unwrap());
    env.check_contract(Platform::Vercel);
}

#[tokio::test]
async fn dashboard_edits_change_settings_env_vars_and_domains_out_of_band() {
    let env = harness::start(Platform::Vercel, SCALE).await;
    let client = client(&env);
    let mut full = spec("site");
    full.env_vars = vec![
        var("A", "1", VercelEnvType::Plain, &[Production]),
        var("A", "2", VercelEnvType::Plain, &[Preview]),
        plain("GONE", "x"),
    ];
    let id = client.ensure_project(&full).await.unwrap().object.id;
    client
        .ensure_domain(
            &id,
            &VercelDomainSpec {
                name: "www.example.com".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();

    edit(&env, "project", "site", "buildCommand", json!("make")).await;
    edit(&env, "project", "site", "nodeVersion", json!("18.x")).await;
    edit(
        &env,
        "project",
        "site",
        "link.productionBranch",
        json!("release"),
    )
    .await;
    edit(&env, "envVar", "site", "A@preview", json!("edited")).await;
    edit(&env, "envVar", "site", "GONE", Value::Null).await;
    edit(
        &env,
        "domain",
        "site",
        "www.example.com",
        json!({ "gitBranch": "dev" }),
    )
    .await;

    let project = client.get_project(&id).await.unwrap();
    assert_eq!(project.build_command.as_deref(), Some("make"));
    assert_eq!(project.node_version, "18.x");
    assert_eq!(
        project.git_repository.unwrap().production_branch.as_deref(),
        Some("release")
    );
    let values: Vec<_> = project
        .env_vars
        .iter()
        .map(|v| (v.targets.clone(), v.value.clone().unwrap()))
        .collect();
    assert_eq!(
        values,
        vec![
            (vec![Production], "1".to_string()),
            (vec![Preview], "edited".to_string())
        ],
        "only the selected variable changed, the removed one is gone"
    );
    let domains = client.list_domains(&id).await.unwrap();
    assert_eq!(domains[0].git_branch.as_deref(), Some("dev"));
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
    let (_, body) = app_answer(env.sandbox.edge_url(), "web.vercel.app").await;
    assert!(body.contains("v3 ok"), "{body}");

    let back = client.rollback(&project.id, &good.id).await.unwrap();
    assert_eq!(back.id, good.id);
    let (_, body) = app_answer(env.sandbox.edge_url(), "web.vercel.app").await;
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
                        .upsert_env_vars(id, &[plain(&format!("K{i}"), "v")])
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
            .upsert_env_vars(&project.id, &[plain(&format!("K{i}"), "v")])
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
