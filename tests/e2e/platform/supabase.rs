//! The Supabase adapter against the Supabase sandbox: projects coming up (or failing),
//! rename, resize, database password, pause/restore, health, Auth and Data API settings,
//! dashboard edits, secrets, offset paging, faults and credentials — every exchange checked
//! against Supabase's OpenAPI spec.

use std::time::Duration;

use crate::contract::harness::{self, eventually};
use serde_json::json;
use tether::platform::{
    Platform, PlatformError, ProjectState, SupabaseApiSettings, SupabaseAuthSettings,
    SupabaseClient, SupabaseProjectSpec, SupabaseProjects, Token,
};
use tether::sandbox::Faults;

/// Rate-limit tests run slower so that a request interval (window / limit) stays well above
/// the scheduling jitter of a busy machine.
const STORM_SCALE: f64 = 50.0;
const SCALE: f64 = 500.0;

fn spec(name: &str) -> SupabaseProjectSpec {
    SupabaseProjectSpec {
        name: name.into(),
        organization_slug: "acme".into(),
        region: Some("eu-central-1".into()),
        instance_size: Some("micro".into()),
        db_pass: Token::new("db-pass-secret"),
    }
}

async fn settled(client: &SupabaseClient, reference: &str) -> ProjectState {
    eventually("project to settle", Duration::from_secs(10), || async {
        let p = client.get_project(reference).await.expect("read project");
        (p.state != ProjectState::Provisioning).then_some(p.state)
    })
    .await
}

#[tokio::test]
async fn a_project_comes_up_healthy_and_goes_through_its_lifecycle() {
    let env = harness::start(Platform::Supabase, SCALE).await;
    let client = SupabaseClient::new(env.http(Platform::Supabase)).with_page_limit(2);

    let created = client.ensure_project(&spec("main")).await.unwrap();
    assert!(created.created);
    assert_eq!(created.object.status, "COMING_UP");
    let again = client.ensure_project(&spec("main")).await.unwrap();
    assert!(!again.created && again.object.id == created.object.id);
    let reference = created.object.id.clone();
    assert_eq!(settled(&client, &reference).await, ProjectState::Healthy);
    let health = client.project_health(&reference).await.unwrap();
    assert_eq!(health.len(), 4);
    assert!(health.iter().all(|h| h.status == "ACTIVE_HEALTHY"));

    for i in 0..4 {
        client
            .ensure_project(&spec(&format!("p{i}")))
            .await
            .unwrap();
    }
    assert_eq!(
        client.list_projects("acme").await.unwrap().len(),
        5,
        "three offset pages"
    );
    assert!(client.list_projects("other").await.unwrap().is_empty());

    client
        .rename_project(&reference, "main-renamed")
        .await
        .unwrap();
    assert_eq!(
        client.get_project(&reference).await.unwrap().name,
        "main-renamed"
    );

    client
        .set_secrets(
            &reference,
            &[("STRIPE_KEY".into(), "sk".into()), ("A".into(), "b".into())],
        )
        .await
        .unwrap();
    let secrets = client.list_secrets(&reference).await.unwrap();
    assert_eq!(secrets.len(), 2);
    assert!(secrets.iter().all(|s| s.secret && s.value.is_none()));
    client
        .delete_secrets(&reference, &["A".into()])
        .await
        .unwrap();
    assert_eq!(client.list_secrets(&reference).await.unwrap().len(), 1);
    let err = client
        .set_secrets(&reference, &[("SUPABASE_URL".into(), "x".into())])
        .await
        .unwrap_err();
    assert!(matches!(err, PlatformError::Invalid { .. }), "{err}");

    client.pause_project(&reference).await.unwrap();
    assert_eq!(
        client.get_project(&reference).await.unwrap().state,
        ProjectState::Paused
    );
    eventually("project to pause", Duration::from_secs(10), || async {
        (client.get_project(&reference).await.unwrap().status == "INACTIVE").then_some(())
    })
    .await;
    client.restore_project(&reference).await.unwrap();
    assert_eq!(
        client.get_project(&reference).await.unwrap().status,
        "RESTORING"
    );
    assert_eq!(settled(&client, &reference).await, ProjectState::Healthy);

    assert!(client.delete_project(&reference).await.unwrap());
    assert!(!client.delete_project(&reference).await.unwrap());
    let err = client.get_project(&reference).await.unwrap_err();
    assert!(
        matches!(
            err,
            PlatformError::NotFound {
                platform: Platform::Supabase,
                ..
            }
        ),
        "{err}"
    );
    let metrics = env.metrics.render();
    assert!(
        metrics.contains(r#"operation="create_project",platform="supabase""#),
        "{metrics}"
    );
    env.check_contract(Platform::Supabase);
}

#[tokio::test]
async fn a_project_whose_creation_fails_reports_init_failed() {
    let env = harness::start(Platform::Supabase, SCALE).await;
    env.set_faults(
        Platform::Supabase,
        Faults {
            failing_sources: vec!["doomed".into()],
            ..Faults::default()
        },
    );
    let client = SupabaseClient::new(env.http(Platform::Supabase));
    let project = client.ensure_project(&spec("doomed")).await.unwrap().object;
    assert_eq!(settled(&client, &project.id).await, ProjectState::Failed);
    assert_eq!(
        client.get_project(&project.id).await.unwrap().status,
        "INIT_FAILED"
    );
    let health = client.project_health(&project.id).await.unwrap();
    assert!(health.iter().all(|h| h.status == "UNHEALTHY"));
    env.check_contract(Platform::Supabase);
}

#[tokio::test]
async fn a_wrong_token_is_unauthorized_and_names_supabase() {
    let env = harness::start(Platform::Supabase, SCALE).await;
    let client =
        SupabaseClient::new(env.http_with_token(Platform::Supabase, Token::new("sbp_wrong")));
    let err = client.list_projects("acme").await.unwrap_err();
    assert!(
        matches!(err, PlatformError::Unauthorized { status: 401, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("supabase") && !err.to_string().contains("sbp_wrong"));
    env.check_contract(Platform::Supabase);
}

#[tokio::test]
async fn under_a_429_storm_clients_stay_within_the_limit_and_finish() {
    let env = harness::start(Platform::Supabase, STORM_SCALE).await;
    let client = SupabaseClient::new(env.http(Platform::Supabase));
    let project = client.ensure_project(&spec("s")).await.unwrap().object;
    env.set_faults(
        Platform::Supabase,
        Faults {
            rate_limit_storm: true,
            storm_retry_after_secs: 10.0,
            ..Faults::default()
        },
    );
    let work = {
        let client = client.clone();
        let id = project.id.clone();
        tokio::spawn(async move {
            futures::future::try_join_all((0..150).map(|i| {
                let (client, id) = (&client, &id);
                async move {
                    client
                        .set_secrets(id, &[(format!("K{i}"), "v".to_owned())])
                        .await
                }
            }))
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    env.set_faults(Platform::Supabase, Faults::default());
    work.await.unwrap().unwrap();
    assert_eq!(client.list_secrets(&project.id).await.unwrap().len(), 150);
    assert!(
        env.sandbox
            .max_received_in_window(Platform::Supabase, "api")
            <= 120
    );
    env.check_contract(Platform::Supabase);
}

#[tokio::test]
async fn with_thirty_percent_server_errors_all_idempotent_work_finishes() {
    let env = harness::start(Platform::Supabase, SCALE).await;
    let client = SupabaseClient::new(env.http(Platform::Supabase));
    let project = client.ensure_project(&spec("e")).await.unwrap().object;
    env.set_faults(
        Platform::Supabase,
        Faults {
            error_share: 0.3,
            ..Faults::default()
        },
    );
    for i in 0..20 {
        client
            .set_secrets(&project.id, &[(format!("K{i}"), "v".into())])
            .await
            .unwrap();
        client.get_project(&project.id).await.unwrap();
    }
    client.rename_project(&project.id, "e2").await.unwrap();
    let secrets = client.list_secrets(&project.id).await.unwrap();
    env.set_faults(Platform::Supabase, Faults::default());
    assert_eq!(secrets.len(), 20);
    assert_eq!(client.get_project(&project.id).await.unwrap().name, "e2");
    assert!(env.sandbox.exchanges().iter().any(|e| e.status >= 500));
    env.check_contract(Platform::Supabase);
}

#[tokio::test]
async fn malformed_or_unexpected_responses_give_a_clear_error_not_a_panic() {
    use axum::routing::get;
    let env = harness::start(Platform::Supabase, SCALE).await;
    let router = axum::Router::new()
        .route(
            "/v1/projects/abcdefghijklmnopqrst",
            get(|| async {
                axum::Json(serde_json::json!({"ref": "abcdefghijklmnopqrst", "name": 7}))
            }),
        )
        .route("/v1/organizations/acme/projects", get(|| async { "" }));
    let url = harness::serve_raw(router, "").await;
    let client = SupabaseClient::new(env.http_at(Platform::Supabase, &url, Token::new("t")));
    let err = client
        .get_project("abcdefghijklmnopqrst")
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            PlatformError::Malformed {
                platform: Platform::Supabase,
                ..
            }
        ),
        "{err}"
    );
    let err = client.list_projects("acme").await.unwrap_err();
    assert!(
        err.to_string().contains("get_project") || err.to_string().contains("list_projects"),
        "{err}"
    );
}

/// A dashboard edit through the sandbox's admin endpoint.
async fn dashboard_edit(env: &harness::Env, name: &str, field: &str, value: serde_json::Value) {
    let url = env.sandbox.admin_url(Platform::Supabase).unwrap();
    let token = env.sandbox.token(Platform::Supabase).unwrap();
    let response = reqwest::Client::new()
        .post(format!("{url}/edit"))
        .bearer_auth(token.expose())
        .json(&json!({ "object": "project", "name": name, "field": field, "value": value }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204, "edit {field}");
}

#[tokio::test]
async fn auth_and_api_settings_wait_for_a_healthy_project_then_update_only_the_fields_sent() {
    let env = harness::start(Platform::Supabase, SCALE).await;
    let client = SupabaseClient::new(env.http(Platform::Supabase));
    let project = client.ensure_project(&spec("cfg")).await.unwrap().object;
    let err = client.get_auth_config(&project.id).await.unwrap_err();
    assert!(matches!(err, PlatformError::Conflict { .. }), "{err}");
    assert!(!err.is_permanent(), "coming up is a wait, not a stall");
    assert_eq!(settled(&client, &project.id).await, ProjectState::Healthy);

    let auth = client.get_auth_config(&project.id).await.unwrap();
    assert_eq!(auth.jwt_expiry_seconds, Some(3600));
    assert_eq!(auth.additional_redirect_urls, Some(vec![]));
    assert_eq!(auth.disable_signup, Some(false));
    let updated = client
        .update_auth_config(
            &project.id,
            &SupabaseAuthSettings {
                site_url: Some("https://app.example.com".into()),
                additional_redirect_urls: Some(vec![
                    "https://a.example.com".into(),
                    "https://b.example.com/**".into(),
                ]),
                ..SupabaseAuthSettings::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(updated.site_url.as_deref(), Some("https://app.example.com"));
    assert_eq!(updated.jwt_expiry_seconds, Some(3600), "untouched");
    assert_eq!(client.get_auth_config(&project.id).await.unwrap(), updated);
    let patch = env
        .sandbox
        .exchanges()
        .into_iter()
        .find(|e| e.method == "PATCH" && e.path.ends_with("/config/auth"))
        .unwrap();
    assert_eq!(
        patch.request_body.unwrap(),
        json!({
            "site_url": "https://app.example.com",
            "uri_allow_list": "https://a.example.com,https://b.example.com/**",
        })
    );

    let api = client.get_api_config(&project.id).await.unwrap();
    assert_eq!(
        api.schemas,
        Some(vec!["public".to_owned(), "graphql_public".to_owned()])
    );
    let updated = client
        .update_api_config(
            &project.id,
            &SupabaseApiSettings {
                schemas: Some(vec!["public".into(), "api".into()]),
                max_rows: Some(250),
                ..SupabaseApiSettings::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(updated.max_rows, Some(250));
    assert_eq!(
        updated.extra_search_path, api.extra_search_path,
        "untouched"
    );
    assert_eq!(client.get_api_config(&project.id).await.unwrap(), updated);

    let err = client
        .update_api_config(
            &project.id,
            &SupabaseApiSettings {
                max_rows: Some(2_000_000),
                ..SupabaseApiSettings::default()
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, PlatformError::Invalid { status: None, .. }),
        "refused before sending: {err}"
    );
    env.check_contract(Platform::Supabase);
}

#[tokio::test]
async fn instance_size_is_listed_and_changed_through_the_compute_addon() {
    // Slower than the other tests: the project must still be coming up after three more
    // requests, also on a loaded machine (at 500x it is up in about 0.2 s).
    let env = harness::start(Platform::Supabase, SCALE / 10.0).await;
    let client = SupabaseClient::new(env.http(Platform::Supabase));
    let project = client.ensure_project(&spec("sized")).await.unwrap().object;
    let mut unsized_spec = spec("default-size");
    unsized_spec.instance_size = None;
    client.ensure_project(&unsized_spec).await.unwrap();
    let listed = client.list_projects("acme").await.unwrap();
    let size_of = |name: &str| {
        listed
            .iter()
            .find(|p| p.name == name)
            .and_then(|p| p.instance_size.clone())
    };
    assert_eq!(size_of("sized").as_deref(), Some("micro"));
    assert_eq!(size_of("default-size").as_deref(), Some("nano"));
    assert_eq!(listed[0].region, "eu-central-1");

    let err = client
        .resize_project(&project.id, "small")
        .await
        .unwrap_err();
    assert!(
        matches!(err, PlatformError::Conflict { .. }),
        "not yet healthy: {err}"
    );
    settled(&client, &project.id).await;
    client.resize_project(&project.id, "small").await.unwrap();
    assert_eq!(
        client.get_project(&project.id).await.unwrap().status,
        "RESIZING"
    );
    assert_eq!(settled(&client, &project.id).await, ProjectState::Healthy);
    let listed = client.list_projects("acme").await.unwrap();
    assert_eq!(
        listed
            .iter()
            .find(|p| p.id == project.id)
            .unwrap()
            .instance_size
            .as_deref(),
        Some("small")
    );
    let err = client
        .resize_project(&project.id, "nano")
        .await
        .unwrap_err();
    assert!(
        matches!(err, PlatformError::Invalid { status: None, .. })
            && err.to_string().contains("supabase")
            && err.to_string().contains("nano"),
        "{err}"
    );
    env.check_contract(Platform::Supabase);
}

#[tokio::test]
async fn the_database_password_is_changed_without_the_value_in_errors() {
    let env = harness::start(Platform::Supabase, SCALE).await;
    let client = SupabaseClient::new(env.http(Platform::Supabase));
    let project = client.ensure_project(&spec("pw")).await.unwrap().object;
    client
        .update_database_password(&project.id, &Token::new("rotated-pass"))
        .await
        .unwrap();
    let sent = env
        .sandbox
        .exchanges()
        .into_iter()
        .find(|e| e.path.ends_with("/database/password"))
        .unwrap();
    assert_eq!(sent.method, "PATCH");
    assert_eq!(
        sent.request_body.unwrap(),
        json!({ "password": "rotated-pass" })
    );
    let err = client
        .update_database_password(&project.id, &Token::new("abc"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, PlatformError::Invalid { status: None, .. })
            && !err.to_string().contains("abc"),
        "refused before sending: {err}"
    );
    let err = client
        .update_database_password("abcdefghijklmnopqrst", &Token::new("whatever"))
        .await
        .unwrap_err();
    assert!(matches!(err, PlatformError::NotFound { .. }), "{err}");
    env.check_contract(Platform::Supabase);
}

#[tokio::test]
async fn dashboard_edits_change_every_managed_field_out_of_band() {
    let env = harness::start(Platform::Supabase, SCALE).await;
    let client = SupabaseClient::new(env.http(Platform::Supabase));
    let project = client.ensure_project(&spec("edited")).await.unwrap().object;
    settled(&client, &project.id).await;
    for (field, value) in [
        ("auth.site_url", json!("https://evil.example.com")),
        ("auth.uri_allow_list", json!("https://x.example.com")),
        ("auth.disable_signup", json!(true)),
        ("auth.jwt_exp", json!(60)),
        ("auth.mailer_autoconfirm", json!(true)),
        ("postgrest.db_schema", json!("public")),
        ("postgrest.db_extra_search_path", json!("public")),
        ("postgrest.max_rows", json!(5)),
        ("instance_size", json!("large")),
        ("region", json!("us-west-1")),
    ] {
        dashboard_edit(&env, "edited", field, value).await;
    }
    let auth = client.get_auth_config(&project.id).await.unwrap();
    assert_eq!(
        auth,
        SupabaseAuthSettings {
            site_url: Some("https://evil.example.com".into()),
            additional_redirect_urls: Some(vec!["https://x.example.com".into()]),
            disable_signup: Some(true),
            jwt_expiry_seconds: Some(60),
            mailer_autoconfirm: Some(true),
        }
    );
    let api = client.get_api_config(&project.id).await.unwrap();
    assert_eq!(
        api,
        SupabaseApiSettings {
            schemas: Some(vec!["public".into()]),
            extra_search_path: Some(vec!["public".into()]),
            max_rows: Some(5),
        }
    );
    let listed = client.list_projects("acme").await.unwrap();
    assert_eq!(listed[0].instance_size.as_deref(), Some("large"));
    assert_eq!(listed[0].region, "us-west-1");
    env.check_contract(Platform::Supabase);
}
