//! The Supabase driver end to end against the Supabase sandbox: observe → plan → act through
//! `sync::Driver`, reconcile after reconcile, with the previous status fed back in as the
//! controller does. Create from nothing to ready, a one-field update, removal (orphan or
//! delete), adoption, drift (corrected or reported), a rotated password Secret and a region
//! change — every exchange checked against Supabase's OpenAPI spec, and no secret value in
//! any status entry, event, plan or error. Then the same through the Environment controller
//! (embedded API + sandbox + controllers): to Ready, a Secret rotation, deletion.

use std::time::Duration;

use crate::contract::harness::{self, Env};
use serde_json::{Value, json};
use tether::api::common::{DeletionPolicy, DriftPolicy, SecretKeyRef};
use tether::api::environment::{
    EnvironmentSpec, ManagedObject, SupabaseApi, SupabaseAuth, SupabaseProject,
};
use tether::platform::{Platform, SupabaseClient, SupabaseProjectSpec, SupabaseProjects, Token};
use tether::sync::supabase::SupabaseDriver;
use tether::sync::{
    ActOutcome, Action, Driver, Fingerprinter, ObjectPlan, ObserveCache, SecretValues, SyncInput,
};

const SCALE: f64 = 500.0;
const PASSWORD: &str = "first-db-password-9f3k";
const ROTATED: &str = "rotated-db-password-x7q2";

fn spec() -> EnvironmentSpec {
    EnvironmentSpec {
        supabase: Some(SupabaseProject {
            name: "shop-staging".into(),
            organization_id: "acme".into(),
            region: "eu-central-1".into(),
            instance_size: Some("micro".into()),
            database_password_secret_ref: SecretKeyRef {
                name: "db".into(),
                key: "password".into(),
            },
            auth: Some(SupabaseAuth {
                site_url: Some("https://shop.example.com".into()),
                additional_redirect_urls: vec!["https://preview.shop.example.com".into()],
                disable_signup: Some(true),
                jwt_expiry_seconds: Some(1800),
                mailer_autoconfirm: None,
            }),
            api: Some(SupabaseApi {
                schemas: vec!["public".into(), "api".into()],
                extra_search_path: vec![],
                max_rows: Some(500),
            }),
        }),
        ..EnvironmentSpec::default()
    }
}

/// One Environment reconciled by hand: the spec, its Secret values and the status the
/// last reconcile wrote.
struct Rig {
    env: Env,
    spec: EnvironmentSpec,
    password: String,
    previous: Vec<ManagedObject>,
    /// The spec has not changed since the last reconcile applied it.
    applied_this_spec: bool,
    cache: ObserveCache,
    /// Everything every reconcile produced, to scan for secret values.
    seen: Vec<String>,
}

#[derive(Debug)]
struct Synced {
    plans: Vec<ObjectPlan>,
    outcome: ActOutcome,
}

impl Rig {
    async fn start() -> Rig {
        // Re-read the platform on every reconcile, so out-of-band edits are seen at once.
        Self::start_with_cache(Duration::ZERO).await
    }

    async fn start_with_cache(max_age: Duration) -> Rig {
        Rig {
            env: harness::start(Platform::Supabase, SCALE).await,
            spec: spec(),
            password: PASSWORD.into(),
            previous: Vec::new(),
            applied_this_spec: false,
            cache: ObserveCache::new(max_age),
            seen: Vec::new(),
        }
    }

    fn client(&self) -> SupabaseClient {
        SupabaseClient::new(self.env.http(Platform::Supabase))
    }

    fn change(&mut self, edit: impl FnOnce(&mut EnvironmentSpec)) {
        edit(&mut self.spec);
        self.applied_this_spec = false;
    }

    async fn sync_with(&mut self, deleting: bool) -> Result<Synced, String> {
        let token = self.env.sandbox.token(Platform::Supabase).unwrap();
        let mut secrets = SecretValues::default();
        secrets.insert("db", "password", Token::new(self.password.clone()));
        let input = SyncInput {
            environment: "default/shop",
            spec: &self.spec,
            secrets: &secrets,
            fingerprints: Fingerprinter::new(&token),
            previous: &self.previous,
            drift_possible: self.applied_this_spec,
            deleting,
            http: self.env.http(Platform::Supabase),
            account: "sandbox".into(),
            cache: self.cache.clone(),
            now: "2026-11-22T07:00:00Z".into(),
        };
        let planned = match SupabaseDriver.plan(&input).await {
            Ok(planned) => planned,
            Err(e) => {
                self.seen.push(e.to_string());
                return Err(e.to_string());
            }
        };
        let plans = planned.objects.clone();
        self.seen.push(format!("{plans:?}"));
        let outcome = SupabaseDriver.act(&input, planned).await;
        self.seen.push(format!("{:?}", outcome));
        if let Some(e) = &outcome.error {
            return Err(e.to_string());
        }
        self.previous = outcome.objects.clone();
        self.applied_this_spec = true;
        Ok(Synced { plans, outcome })
    }

    async fn sync(&mut self) -> Synced {
        self.sync_with(false).await.expect("sync succeeds")
    }

    /// Reconciles (as the controller's short pending interval would) until the project is
    /// ready and in sync; returns every event on the way.
    async fn until_ready(&mut self) -> Vec<&'static str> {
        let mut events = Vec::new();
        for _ in 0..200 {
            let synced = self.sync().await;
            events.extend(synced.outcome.events.iter().map(|e| e.reason));
            let object = &synced.outcome.objects[0];
            if synced.plans[0].action == Action::InSync && object.ready {
                return events;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the project never became ready");
    }

    /// Exchanges from index `from` on that wrote something.
    fn writes_since(&self, from: usize) -> Vec<(String, String, Option<Value>)> {
        self.env.sandbox.exchanges()[from..]
            .iter()
            .filter(|e| e.method != "GET")
            .map(|e| (e.method.clone(), e.path.clone(), e.request_body.clone()))
            .collect()
    }

    fn mark(&self) -> usize {
        self.env.sandbox.exchanges().len()
    }

    async fn dashboard_edit(&self, field: &str, value: Value) {
        let url = self.env.sandbox.admin_url(Platform::Supabase).unwrap();
        let token = self.env.sandbox.token(Platform::Supabase).unwrap();
        let response = reqwest::Client::new()
            .post(format!("{url}/edit"))
            .bearer_auth(token.expose())
            .json(&json!({"object": "project", "name": "shop-staging", "field": field, "value": value}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 204, "edit {field}");
    }

    /// No secret value in anything the driver produced.
    fn assert_no_secret_leaked(&self) {
        for text in &self.seen {
            for secret in [PASSWORD, ROTATED] {
                assert!(!text.contains(secret), "secret value leaked into: {text}");
            }
        }
        let status = serde_json::to_string(&self.previous).unwrap();
        assert!(
            !status.contains(PASSWORD) && !status.contains(ROTATED),
            "{status}"
        );
        self.env.check_contract(Platform::Supabase);
    }
}

#[tokio::test]
async fn a_project_is_created_from_nothing_waited_for_and_configured_until_ready() {
    let mut rig = Rig::start().await;
    let first = rig.sync().await;
    assert_eq!(first.plans[0].action, Action::Create);
    let object = &first.outcome.objects[0];
    assert_eq!(object.state.as_deref(), Some("COMING_UP"));
    assert!(!object.ready);
    assert!(object.secret_fingerprints["databasePassword"].starts_with("hmac-sha256:"));

    let created: Vec<_> = first.outcome.events.iter().map(|e| e.reason).collect();
    assert_eq!(created, ["Created"]);
    let events = rig.until_ready().await;
    assert!(
        events.contains(&"Updated") && !events.contains(&"Created"),
        "settings applied once healthy: {events:?}"
    );
    let object = &rig.previous[0];
    assert_eq!(object.state.as_deref(), Some("ACTIVE_HEALTHY"));
    assert_eq!(
        object.url,
        Some(format!(
            "https://{}.supabase.co",
            object.id.as_deref().unwrap()
        ))
    );

    // What Supabase now holds is what the spec says.
    let client = rig.client();
    let id = object.id.clone().unwrap();
    let auth = client.get_auth_config(&id).await.unwrap();
    assert_eq!(auth.site_url.as_deref(), Some("https://shop.example.com"));
    assert_eq!(auth.disable_signup, Some(true));
    assert_eq!(auth.jwt_expiry_seconds, Some(1800));
    assert_eq!(
        auth.mailer_autoconfirm,
        Some(false),
        "unmanaged: left at its default"
    );
    let api = client.get_api_config(&id).await.unwrap();
    assert_eq!(api.max_rows, Some(500));
    let create = rig
        .env
        .sandbox
        .exchanges()
        .into_iter()
        .find(|e| e.method == "POST" && e.path == "/v1/projects")
        .unwrap();
    let body = create.request_body.unwrap();
    assert_eq!(body["desired_instance_size"], "micro");
    assert_eq!(body["region_selection"]["code"], "eu-central-1");

    // Steady state: no writes, no changes.
    let mark = rig.mark();
    let steady = rig.sync().await;
    assert_eq!(steady.plans[0].action, Action::InSync);
    assert!(steady.plans[0].changes.is_empty() && steady.outcome.events.is_empty());
    assert!(rig.writes_since(mark).is_empty());
    assert_eq!(rig.client().list_projects("acme").await.unwrap().len(), 1);
    rig.assert_no_secret_leaked();
}

#[tokio::test]
async fn with_a_long_lived_observation_cache_a_project_coming_up_is_still_seen_healthy_and_a_resync_reads_nothing()
 {
    let mut rig = Rig::start_with_cache(Duration::from_secs(600)).await;
    // The create writes the new project through to the cache as COMING_UP; waiting on it
    // re-lists instead of trusting that entry for ten minutes.
    rig.until_ready().await;
    let mark = rig.mark();
    let steady = rig.sync().await;
    assert_eq!(steady.plans[0].action, Action::InSync);
    assert!(
        rig.env.sandbox.exchanges().len() == mark,
        "a resync within the cache age costs no request"
    );
    rig.assert_no_secret_leaked();
}

#[tokio::test]
async fn changing_one_field_updates_exactly_that_field() {
    let mut rig = Rig::start().await;
    rig.until_ready().await;
    rig.change(|s| s.supabase.as_mut().unwrap().api.as_mut().unwrap().max_rows = Some(42));
    let mark = rig.mark();
    let synced = rig.sync().await;
    assert_eq!(synced.plans[0].action, Action::Update);
    assert_eq!(synced.plans[0].writes, 1);
    assert_eq!(synced.plans[0].changes.len(), 1);
    assert_eq!(
        synced.plans[0].changes[0].to_string(),
        "api.maxRows: 500 → 42"
    );
    assert!(
        synced.plans[0].drift.is_empty(),
        "a spec change is not drift"
    );
    let writes = rig.writes_since(mark);
    assert_eq!(writes.len(), 1, "{writes:?}");
    let (method, path, body) = &writes[0];
    assert_eq!(method, "PATCH");
    assert!(path.ends_with("/postgrest"), "{path}");
    assert_eq!(body.as_ref().unwrap(), &json!({ "max_rows": 42 }));
    assert_eq!(rig.sync().await.plans[0].action, Action::InSync);

    // An auth field too: only it is sent.
    rig.change(|s| {
        s.supabase
            .as_mut()
            .unwrap()
            .auth
            .as_mut()
            .unwrap()
            .additional_redirect_urls = vec![
            "https://preview.shop.example.com".into(),
            "https://qa.shop.example.com".into(),
        ]
    });
    let mark = rig.mark();
    rig.sync().await;
    let writes = rig.writes_since(mark);
    assert_eq!(writes.len(), 1, "{writes:?}");
    assert_eq!(
        writes[0].2.as_ref().unwrap(),
        &json!({"uri_allow_list": "https://preview.shop.example.com,https://qa.shop.example.com"})
    );

    // And the compute size, through the compute add-on.
    rig.change(|s| s.supabase.as_mut().unwrap().instance_size = Some("small".into()));
    let mark = rig.mark();
    let synced = rig.sync().await;
    assert_eq!(synced.outcome.objects[0].state.as_deref(), Some("RESIZING"));
    assert!(!synced.outcome.objects[0].ready);
    let writes = rig.writes_since(mark);
    assert_eq!(writes.len(), 1, "{writes:?}");
    assert!(writes[0].1.ends_with("/billing/addons"));
    assert_eq!(
        writes[0].2.as_ref().unwrap(),
        &json!({"addon_type": "compute_instance", "addon_variant": "ci_small"})
    );
    rig.until_ready().await;
    rig.assert_no_secret_leaked();
}

#[tokio::test]
async fn a_removed_project_is_orphaned_by_default_and_deleted_under_delete() {
    let mut rig = Rig::start().await;
    rig.until_ready().await;
    let id = rig.previous[0].id.clone().unwrap();

    // Unset deletion policy: the project holds the database, so it is left in place.
    rig.change(|s| s.supabase = None);
    let mark = rig.mark();
    let synced = rig.sync().await;
    assert_eq!(synced.plans[0].action, Action::Orphan);
    assert_eq!(synced.outcome.events[0].reason, "Orphaned");
    assert!(synced.outcome.objects.is_empty(), "no longer managed");
    assert!(rig.writes_since(mark).is_empty());
    assert!(rig.client().get_project(&id).await.is_ok(), "still there");

    // Back in the spec: adopted by name, not duplicated. Then deleted under Delete.
    rig.change(|s| *s = spec());
    let events = rig.until_ready().await;
    assert!(events.contains(&"Adopted"), "{events:?}");
    assert_eq!(rig.previous[0].id.as_deref(), Some(id.as_str()));
    rig.change(|s| {
        s.deletion_policy = Some(DeletionPolicy::Delete);
        s.supabase = None;
    });
    let synced = rig.sync().await;
    assert_eq!(synced.plans[0].action, Action::Delete);
    assert_eq!(synced.outcome.events[0].reason, "Deleted");
    assert!(rig.client().get_project(&id).await.is_err(), "deleted");
    assert!(rig.client().list_projects("acme").await.unwrap().is_empty());
    rig.assert_no_secret_leaked();
}

#[tokio::test]
async fn deleting_the_environment_deletes_the_project_only_under_delete() {
    let mut rig = Rig::start().await;
    rig.until_ready().await;
    let synced = rig.sync_with(true).await.unwrap();
    assert_eq!(synced.plans[0].action, Action::Orphan);
    assert_eq!(rig.client().list_projects("acme").await.unwrap().len(), 1);

    rig.change(|s| s.deletion_policy = Some(DeletionPolicy::Delete));
    rig.previous = Vec::new();
    rig.until_ready().await;
    let synced = rig.sync_with(true).await.unwrap();
    assert_eq!(synced.plans[0].action, Action::Delete);
    assert_eq!(synced.outcome.events[0].reason, "Deleted");
    assert!(rig.client().list_projects("acme").await.unwrap().is_empty());

    // Already gone (deleted by hand after the last status write) counts as deleted.
    rig.until_ready().await;
    let id = rig.previous[0].id.clone().unwrap();
    assert!(rig.client().delete_project(&id).await.unwrap());
    let synced = rig.sync_with(true).await.unwrap();
    assert_eq!(synced.plans[0].action, Action::Delete);
    assert_eq!(synced.outcome.events[0].reason, "Deleted");
    assert!(synced.outcome.objects.is_empty());
    rig.assert_no_secret_leaked();
}

#[tokio::test]
async fn a_pre_existing_project_is_adopted_and_never_duplicated() {
    let mut rig = Rig::start().await;
    let existing = rig
        .client()
        .ensure_project(&SupabaseProjectSpec {
            name: "shop-staging".into(),
            organization_slug: "acme".into(),
            region: Some("eu-central-1".into()),
            instance_size: Some("micro".into()),
            db_pass: Token::new("made-by-hand"),
        })
        .await
        .unwrap()
        .object;
    let mark = rig.mark();
    let events = rig.until_ready().await;
    assert!(
        events.contains(&"Adopted") && !events.contains(&"Created"),
        "{events:?}"
    );
    assert_eq!(rig.previous[0].id.as_deref(), Some(existing.id.as_str()));
    assert!(
        rig.writes_since(mark)
            .iter()
            .all(|(m, p, _)| !(m == "POST" && p == "/v1/projects")),
        "no second create"
    );
    // Its password is set to the spec's, so the Environment's database connection works.
    assert!(
        rig.writes_since(mark)
            .iter()
            .any(|(_, p, _)| p.ends_with("/database/password"))
    );
    assert_eq!(rig.client().list_projects("acme").await.unwrap().len(), 1);
    rig.assert_no_secret_leaked();
}

#[tokio::test]
async fn dashboard_drift_is_corrected_under_correct_and_only_reported_under_report() {
    let mut rig = Rig::start().await;
    rig.until_ready().await;
    rig.sync().await;

    rig.dashboard_edit("auth.site_url", json!("https://evil.example.com"))
        .await;
    let mark = rig.mark();
    let synced = rig.sync().await;
    assert_eq!(synced.plans[0].drift, ["auth.siteUrl"]);
    let reasons: Vec<_> = synced.outcome.events.iter().map(|e| e.reason).collect();
    assert!(reasons.contains(&"DriftCorrected"), "{reasons:?}");
    assert!(synced.outcome.objects[0].drift.is_empty(), "corrected");
    assert_eq!(
        rig.writes_since(mark)[0].2.as_ref().unwrap(),
        &json!({"site_url": "https://shop.example.com"})
    );

    rig.spec.drift_policy = DriftPolicy::Report;
    rig.dashboard_edit("postgrest.max_rows", json!(7)).await;
    let mark = rig.mark();
    let synced = rig.sync().await;
    assert_eq!(synced.plans[0].drift, ["api.maxRows"]);
    assert_eq!(synced.plans[0].action, Action::InSync);
    assert_eq!(synced.outcome.objects[0].drift, ["api.maxRows"]);
    assert!(rig.writes_since(mark).is_empty(), "reported only");
    let id = rig.previous[0].id.clone().unwrap();
    assert_eq!(
        rig.client().get_api_config(&id).await.unwrap().max_rows,
        Some(7)
    );
    rig.assert_no_secret_leaked();
}

#[tokio::test]
async fn rotating_the_password_secret_re_applies_it_and_shows_only_fingerprints() {
    let mut rig = Rig::start().await;
    rig.until_ready().await;
    let before = rig.previous[0].secret_fingerprints["databasePassword"].clone();

    rig.password = ROTATED.into();
    let mark = rig.mark();
    let synced = rig.sync().await;
    assert_eq!(synced.plans[0].action, Action::Update);
    assert_eq!(
        synced.plans[0].changes[0].to_string(),
        "databasePassword: (secret) → (secret)"
    );
    assert!(synced.plans[0].drift.is_empty(), "a rotation is not drift");
    let writes = rig.writes_since(mark);
    assert_eq!(writes.len(), 1, "{writes:?}");
    assert!(writes[0].1.ends_with("/database/password"));
    assert_eq!(
        writes[0].2.as_ref().unwrap(),
        &json!({ "password": ROTATED })
    );
    let after = &rig.previous[0].secret_fingerprints["databasePassword"];
    assert_ne!(&before, after, "the rotation is visible in status");
    assert_eq!(rig.sync().await.plans[0].action, Action::InSync);
    rig.assert_no_secret_leaked();
}

#[tokio::test]
async fn a_region_change_is_refused_clearly_and_nothing_is_recreated() {
    let mut rig = Rig::start().await;
    rig.until_ready().await;
    rig.change(|s| s.supabase.as_mut().unwrap().region = "us-east-1".into());
    let mark = rig.mark();
    let err = rig.sync_with(false).await.unwrap_err();
    assert!(
        err.contains("supabase")
            && err.contains("create-only")
            && err.contains("eu-central-1")
            && err.contains("us-east-1"),
        "{err}"
    );
    assert!(rig.writes_since(mark).is_empty());
    assert_eq!(rig.client().list_projects("acme").await.unwrap().len(), 1);
    rig.assert_no_secret_leaked();
}

fn manifest(spec: Value) -> Value {
    json!({
        "apiVersion": "tether.dev/v1alpha1",
        "kind": "Environment",
        "metadata": {"name": "shop", "namespace": "default"},
        "spec": spec,
    })
}

fn environment_spec(max_rows: i64) -> Value {
    json!({
        "credentials": {"supabase": {"name": "tether-sandbox-supabase"}},
        "supabase": {
            "name": "shop-staging",
            "organizationId": "acme",
            "region": "eu-central-1",
            "databasePasswordSecretRef": {"name": "db", "key": "password"},
            "auth": {"siteUrl": "https://shop.example.com", "disableSignup": true},
            "api": {"schemas": ["public", "api"], "maxRows": max_rows},
        },
    })
}

#[tokio::test]
async fn through_the_controller_a_supabase_environment_becomes_ready_rotates_and_is_orphaned_on_delete()
 {
    use crate::support::sync::{SyncHarness, condition_is, object};
    let h = SyncHarness::start().await;
    h.put_secret("db", &[("password", PASSWORD)]).await;
    h.apply(manifest(environment_spec(500))).await;
    let env = h.wait_ready("shop").await;
    let project = object(&env, "supabase", "project", "shop-staging").expect("status entry");
    assert_eq!(project["ready"], true);
    assert_eq!(project["state"], "ACTIVE_HEALTHY");
    assert!(condition_is(&env, "SupabaseSynced", "True"), "{env}");
    let id = project["id"].as_str().unwrap().to_owned();
    let fingerprint = project["secretFingerprints"]["databasePassword"].clone();
    let requests = h.requests(Platform::Supabase);
    assert_eq!(
        requests
            .iter()
            .filter(|r| *r == "POST /v1/projects")
            .count(),
        1,
        "{requests:?}"
    );

    // A spec change: exactly that field is written.
    let before = h.requests(Platform::Supabase).len();
    h.apply(manifest(environment_spec(42))).await;
    h.wait_ready("shop").await;
    let writes: Vec<String> = h.requests(Platform::Supabase)[before..]
        .iter()
        .filter(|r| !r.starts_with("GET"))
        .cloned()
        .collect();
    assert_eq!(writes, [format!("PATCH /v1/projects/{id}/postgrest")]);

    // Rotating the password Secret re-applies it.
    h.put_secret("db", &[("password", ROTATED)]).await;
    h.wait_for("shop", "a new password fingerprint", |env| {
        object(env, "supabase", "project", "shop-staging")
            .is_some_and(|o| o["secretFingerprints"]["databasePassword"] != fingerprint)
    })
    .await;
    let sent = h
        .sandbox
        .exchanges()
        .into_iter()
        .filter(|e| e.path.ends_with("/database/password"))
        .filter_map(|e| e.request_body)
        .collect::<Vec<_>>();
    assert_eq!(sent, [json!({ "password": ROTATED })]);

    // Deleting the Environment leaves the stateful project in place (no deletionPolicy).
    h.delete("shop").await;
    let client = SupabaseClient::new(h.http(Platform::Supabase));
    assert!(
        client.get_project(&id).await.is_ok(),
        "orphaned, not deleted"
    );
    let reasons: Vec<String> = h.events("shop").await.into_iter().map(|e| e.1).collect();
    assert!(reasons.iter().any(|r| r == "Created"), "{reasons:?}");

    let visible = h.everything_visible().await;
    for secret in [PASSWORD, ROTATED] {
        assert!(!visible.contains(secret), "a database password is visible");
    }
    crate::contract::Contract::load(Platform::Supabase).assert_all(
        &h.sandbox
            .exchanges()
            .into_iter()
            .filter(|e| e.platform == Platform::Supabase)
            .collect::<Vec<_>>(),
    );
    h.stop().await;
}
