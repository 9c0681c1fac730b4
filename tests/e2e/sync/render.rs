//! Render end to end. First the driver against the Render sandbox: observe → plan → act in
//! a loop as the Environment controller runs it (status carried from one sync to the next),
//! with every exchange checked against Render's OpenAPI spec. Then the whole controller
//! (embedded API + sandbox + controllers) on an Environment with Render objects.

use std::time::{Duration, Instant};

use crate::contract::harness::{self, Env};
use crate::support::sync::{SyncHarness, condition_is, object};
use serde_json::{Value, json};
use tether::api::common::{DeletionPolicy, DriftPolicy, EnvVar, EnvVarSource, SecretKeyRef};
use tether::api::environment::{
    CidrBlock, EnvironmentSpec, ManagedObject, RenderKeyValue, RenderPostgres, RenderRegion,
    RenderService, RenderServiceType, RenderSpec,
};
use tether::platform::{
    Platform, RenderClient, RenderDatastores, RenderServiceSpec, RenderServices, Token,
};
use tether::sandbox::Exchange;
use tether::sync::render::RenderDriver;
use tether::sync::{
    ActOutcome, Action, Driver, Fingerprinter, ObjectPlan, ObserveCache, SecretValues, SyncInput,
};

const SCALE: f64 = 200.0;
const OWNER: &str = "tea-sync";
const SECRET_V1: &str = "sk_live_first_value_1";
const SECRET_V2: &str = "sk_live_rotated_value_2";

fn web() -> RenderService {
    RenderService {
        name: "web".into(),
        type_: RenderServiceType::Web,
        plan: "starter".into(),
        region: RenderRegion::Frankfurt,
        instances: Some(2),
        image: Some("acme/web:1".into()),
        start_command: Some("./serve".into()),
        health_check_path: Some("/healthz".into()),
        env_vars: Some(vec![
            EnvVar {
                name: "MODE".into(),
                value: Some("production".into()),
                value_from: None,
            },
            EnvVar {
                name: "API_KEY".into(),
                value: None,
                value_from: Some(EnvVarSource {
                    secret_key_ref: SecretKeyRef {
                        name: "web-secrets".into(),
                        key: "api-key".into(),
                    },
                }),
            },
        ]),
        custom_domains: Some(vec!["www.example.com".into()]),
        ..RenderService::default()
    }
}

fn spec() -> EnvironmentSpec {
    EnvironmentSpec {
        render: Some(RenderSpec {
            owner_id: OWNER.into(),
            services: vec![
                web(),
                RenderService {
                    name: "nightly".into(),
                    type_: RenderServiceType::Cron,
                    plan: "starter".into(),
                    image: Some("acme/job:1".into()),
                    schedule: Some("0 3 * * *".into()),
                    ..RenderService::default()
                },
                RenderService {
                    name: "docs".into(),
                    type_: RenderServiceType::Static,
                    repo: Some("https://github.com/acme/docs".into()),
                    build_command: Some("make site".into()),
                    publish_path: Some("site".into()),
                    ..RenderService::default()
                },
            ],
            key_values: vec![RenderKeyValue {
                name: "cache".into(),
                plan: "starter".into(),
                maxmemory_policy: Some("allkeys_lru".into()),
                ..RenderKeyValue::default()
            }],
            postgres: vec![RenderPostgres {
                name: "db".into(),
                plan: "basic_1gb".into(),
                version: "16".into(),
                disk_size_gb: Some(10),
                ip_allow_list: vec![CidrBlock {
                    cidr_block: "203.0.113.0/24".into(),
                    description: "office".into(),
                }],
                ..RenderPostgres::default()
            }],
        }),
        ..EnvironmentSpec::default()
    }
}

/// The controller's loop in miniature: the status of one sync is the `previous` of the next,
/// and drift is possible once a sync applied the current spec without error.
struct Loop {
    env: Env,
    token: Token,
    cache: ObserveCache,
    spec: EnvironmentSpec,
    secrets: SecretValues,
    status: Vec<ManagedObject>,
    applied: Option<EnvironmentSpec>,
}

struct Synced {
    plans: Vec<ObjectPlan>,
    outcome: ActOutcome,
    /// Exchanges of this sync only.
    exchanges: Vec<Exchange>,
}

impl Synced {
    fn writes(&self) -> Vec<&Exchange> {
        self.exchanges
            .iter()
            .filter(|e| e.method != "GET")
            .collect()
    }

    fn plan(&self, name: &str) -> &ObjectPlan {
        self.plans.iter().find(|p| p.name == name).expect("planned")
    }

    fn reasons(&self, name: &str) -> Vec<&'static str> {
        self.outcome
            .events
            .iter()
            .filter(|e| e.name == name)
            .map(|e| e.reason)
            .collect()
    }
}

impl Loop {
    async fn start() -> Loop {
        Self::with_cache(Duration::ZERO).await
    }

    async fn with_cache(max_age: Duration) -> Loop {
        let env = harness::start(Platform::Render, SCALE).await;
        let token = env.sandbox.token(Platform::Render).unwrap();
        let mut secrets = SecretValues::default();
        secrets.insert("web-secrets", "api-key", Token::new(SECRET_V1));
        Loop {
            env,
            token,
            cache: ObserveCache::new(max_age),
            spec: spec(),
            secrets,
            status: Vec::new(),
            applied: None,
        }
    }

    fn client(&self) -> RenderClient {
        RenderClient::new(self.env.http(Platform::Render))
    }

    async fn sync_with(&mut self, deleting: bool) -> Synced {
        let before = self.env.sandbox.exchanges().len();
        let input = SyncInput {
            environment: "default/shop",
            spec: &self.spec,
            secrets: &self.secrets,
            fingerprints: Fingerprinter::new(&self.token),
            previous: &self.status,
            drift_possible: self.applied.as_ref() == Some(&self.spec),
            deleting,
            http: self.env.http(Platform::Render),
            account: "sandbox".into(),
            cache: self.cache.clone(),
            now: "2026-11-22T07:30:00Z".into(),
        };
        let planned = RenderDriver.plan(&input).await.expect("observe and plan");
        let plans = planned.objects.clone();
        let outcome = RenderDriver.act(&input, planned).await;
        if outcome.error.is_none() {
            self.applied = Some(self.spec.clone());
        }
        self.status = outcome.objects.clone();
        let exchanges = self.env.sandbox.exchanges().split_off(before);
        Synced {
            plans,
            outcome,
            exchanges,
        }
    }

    async fn sync(&mut self) -> Synced {
        self.sync_with(false).await
    }

    /// Syncs until every object is ready (datastores come up `creating → available`).
    async fn converge(&mut self) -> Synced {
        for _ in 0..100 {
            let synced = self.sync().await;
            assert!(synced.outcome.error.is_none(), "{:?}", synced.outcome.error);
            if synced.outcome.objects.iter().all(|o| o.ready)
                && synced.plans.iter().all(|p| p.action == Action::InSync)
            {
                return synced;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("did not converge: {:?}", self.status);
    }

    fn object(&self, kind: &str, name: &str) -> &ManagedObject {
        self.status
            .iter()
            .find(|o| o.kind == kind && o.name == name)
            .unwrap_or_else(|| panic!("{kind} {name} in status"))
    }

    async fn edit(&self, object: &str, name: &str, field: &str, value: Value) {
        let admin = self.env.sandbox.admin_url(Platform::Render).unwrap();
        let status = reqwest::Client::new()
            .post(format!("{admin}/edit"))
            .bearer_auth(self.token.expose())
            .json(&json!({"object": object, "name": name, "field": field, "value": value}))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 204, "edit {object} {name} {field}");
    }

    /// Everything the sync made visible: plans, events, status and errors.
    fn visible(&self, synced: &Synced) -> String {
        format!(
            "{:?}{:?}{:?}{:?}",
            synced.plans, synced.outcome.events, synced.outcome.error, self.status
        )
    }
}

#[tokio::test]
async fn from_nothing_every_object_is_created_ready_and_then_in_sync_without_writes() {
    let mut l = Loop::start().await;
    let first = l.sync().await;
    assert!(first.outcome.error.is_none(), "{:?}", first.outcome.error);
    let created: Vec<(&str, &str)> = first
        .plans
        .iter()
        .map(|p| (p.kind.as_str(), p.name.as_str()))
        .collect();
    assert_eq!(
        created,
        [
            ("keyValue", "cache"),
            ("postgres", "db"),
            ("service", "web"),
            ("service", "nightly"),
            ("service", "docs"),
        ]
    );
    assert!(first.plans.iter().all(|p| p.action == Action::Create));
    let planned_writes: u32 = first.plans.iter().map(|p| p.writes).sum();
    assert_eq!(
        planned_writes as usize,
        first.writes().len(),
        "the plan's request count is what acting sent"
    );
    for name in ["web", "nightly", "docs", "cache", "db"] {
        assert_eq!(first.reasons(name), ["Created"], "{name}");
    }
    assert!(
        !l.object("postgres", "db").ready,
        "a new database is still creating"
    );

    let ready = l.converge().await;
    assert!(ready.writes().is_empty());
    let web = l.object("service", "web");
    assert!(web.id.as_deref().unwrap().starts_with("srv-"));
    assert!(web.url.as_deref().unwrap().starts_with("https://"));
    assert!(
        web.secret_fingerprints["envVars.API_KEY"].starts_with("hmac-sha256:"),
        "{web:?}"
    );
    assert_eq!(
        l.object("postgres", "db").state.as_deref(),
        Some("available")
    );
    assert_eq!(
        l.object("keyValue", "cache").state.as_deref(),
        Some("available")
    );

    // What Render holds is what the spec says.
    let client = l.client();
    let services = client.list_services(OWNER, None).await.unwrap();
    let web = services.iter().find(|s| s.name == "web").unwrap();
    assert_eq!(web.region.as_deref(), Some("frankfurt"));
    assert_eq!(web.num_instances, Some(2));
    assert_eq!(web.start_command.as_deref(), Some("./serve"));
    assert_eq!(web.health_check_path.as_deref(), Some("/healthz"));
    assert!(!web.auto_deploy);
    let vars = client.list_env_vars(&web.id).await.unwrap();
    assert!(
        vars.iter()
            .any(|v| v.key == "API_KEY" && v.value.as_deref() == Some(SECRET_V1))
    );
    assert_eq!(client.list_domains(&web.id).await.unwrap().len(), 1);
    let db = &client.list_postgres(OWNER, None).await.unwrap()[0];
    assert_eq!((db.disk_size_gb, db.ip_allow_list.len()), (Some(10), 1));

    // A resync of the unchanged spec writes nothing.
    let again = l.sync().await;
    assert!(again.plans.iter().all(|p| p.action == Action::InSync));
    assert!(again.writes().is_empty(), "{:?}", again.writes());
    assert!(again.outcome.events.is_empty());
    assert!(!l.visible(&first).contains(SECRET_V1));
    l.env.check_contract(Platform::Render);
}

#[tokio::test]
async fn a_changed_field_is_the_only_thing_written() {
    let mut l = Loop::start().await;
    l.converge().await;
    let web_id = l.object("service", "web").id.clone().unwrap();
    let cache_id = l.object("keyValue", "cache").id.clone().unwrap();

    l.spec.render.as_mut().unwrap().services[0].plan = "pro".into();
    let synced = l.sync().await;
    assert_eq!(synced.plan("web").changes.len(), 1);
    assert_eq!(
        synced.plan("web").changes[0].to_string(),
        "plan: starter → pro"
    );
    let writes = synced.writes();
    assert_eq!(writes.len(), 1, "{writes:?}");
    assert_eq!(
        (writes[0].method.as_str(), writes[0].path.clone()),
        ("PATCH", format!("/services/{web_id}"))
    );
    assert_eq!(
        writes[0].request_body,
        Some(json!({"serviceDetails": {"plan": "pro"}}))
    );
    assert_eq!(synced.reasons("web"), ["Updated"]);

    let render = l.spec.render.as_mut().unwrap();
    render.services[0].instances = Some(3);
    render.key_values[0].maxmemory_policy = Some("noeviction".into());
    let synced = l.sync().await;
    let mut writes: Vec<(String, String, Option<Value>)> = synced
        .writes()
        .into_iter()
        .map(|e| (e.method.clone(), e.path.clone(), e.request_body.clone()))
        .collect();
    writes.sort_by(|a, b| a.1.cmp(&b.1));
    assert_eq!(
        writes,
        [
            (
                "PATCH".to_string(),
                format!("/key-value/{cache_id}"),
                Some(json!({"maxmemoryPolicy": "noeviction"}))
            ),
            (
                "POST".to_string(),
                format!("/services/{web_id}/scale"),
                Some(json!({"numInstances": 3}))
            ),
        ]
    );
    assert!(l.sync().await.writes().is_empty(), "and then it is in sync");
    l.env.check_contract(Platform::Render);
}

async fn running_image(l: &Loop) -> Option<String> {
    l.client().list_services(OWNER, Some("web")).await.unwrap()[0]
        .image
        .clone()
}

#[tokio::test]
async fn a_changed_image_is_deployed_and_a_releases_image_is_not_reverted() {
    use tether::platform::{DeploySource, Deployments};
    let mut l = Loop::start().await;
    l.converge().await;
    let web_id = l.object("service", "web").id.clone().unwrap();
    assert_eq!(
        l.object("service", "web").image.as_deref(),
        Some("acme/web:1")
    );

    // The Environment's image changes: one deploy of the new image, recorded in status.
    l.spec.render.as_mut().unwrap().services[0].image = Some("acme/web:2".into());
    let synced = l.sync().await;
    assert_eq!(
        synced.plan("web").changes[0].to_string(),
        "image: acme/web:1 → acme/web:2"
    );
    let writes = synced.writes();
    assert_eq!(writes.len(), 1, "{writes:?}");
    assert_eq!(
        (writes[0].method.as_str(), writes[0].path.clone()),
        ("POST", format!("/services/{web_id}/deploys"))
    );
    assert_eq!(
        writes[0].request_body,
        Some(json!({"imageUrl": "acme/web:2"}))
    );
    assert_eq!(
        l.object("service", "web").image.as_deref(),
        Some("acme/web:2")
    );
    assert_eq!(running_image(&l).await.as_deref(), Some("acme/web:2"));

    // A Release deploys another image: the unchanged spec neither reverts nor reports it.
    l.client()
        .deploy(&web_id, &DeploySource::Image("acme/web:3".into()))
        .await
        .unwrap();
    for _ in 0..2 {
        let synced = l.sync().await;
        assert!(synced.writes().is_empty(), "{:?}", synced.writes());
        assert!(synced.plan("web").drift.is_empty());
        assert_eq!(synced.plan("web").action, Action::InSync);
    }
    assert_eq!(running_image(&l).await.as_deref(), Some("acme/web:3"));
    l.env.check_contract(Platform::Render);
}

#[tokio::test]
async fn removed_objects_are_deleted_or_orphaned_per_policy() {
    let mut l = Loop::start().await;
    l.converge().await;
    // Default policy: the service is deleted, the stateful datastores are left in place.
    let render = l.spec.render.as_mut().unwrap();
    render.services.retain(|s| s.name != "nightly");
    render.key_values.clear();
    render.postgres.clear();
    let synced = l.sync().await;
    assert_eq!(synced.plan("nightly").action, Action::Delete);
    assert_eq!(synced.plan("cache").action, Action::Orphan);
    assert_eq!(synced.plan("db").action, Action::Orphan);
    assert_eq!(synced.reasons("nightly"), ["Deleted"]);
    assert_eq!(synced.reasons("db"), ["Orphaned"]);
    let client = l.client();
    let names: Vec<String> = client
        .list_services(OWNER, None)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert!(!names.contains(&"nightly".to_string()));
    assert_eq!(client.list_key_values(OWNER, None).await.unwrap().len(), 1);
    assert_eq!(client.list_postgres(OWNER, None).await.unwrap().len(), 1);
    assert!(
        l.status.iter().all(|o| o.kind == "service"),
        "orphaned objects leave status: {:?}",
        l.status
    );

    // Deleting the Environment with `Delete` removes every object, stateful ones included.
    let mut l = Loop::start().await;
    l.spec.deletion_policy = Some(DeletionPolicy::Delete);
    l.converge().await;
    let gone = l.sync_with(true).await;
    assert!(gone.outcome.error.is_none(), "{:?}", gone.outcome.error);
    assert!(gone.plans.iter().all(|p| p.action == Action::Delete));
    assert!(l.status.is_empty());
    let client = l.client();
    assert!(client.list_services(OWNER, None).await.unwrap().is_empty());
    assert!(
        client
            .list_key_values(OWNER, None)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(client.list_postgres(OWNER, None).await.unwrap().is_empty());
    // Already gone counts as deleted: nothing left to plan.
    assert!(l.sync_with(true).await.plans.is_empty());
    l.env.check_contract(Platform::Render);
}

#[tokio::test]
async fn a_service_that_already_exists_is_adopted_not_duplicated() {
    let mut l = Loop::start().await;
    let client = l.client();
    let existing = client
        .ensure_service(&RenderServiceSpec {
            name: "web".into(),
            owner_id: OWNER.into(),
            image: Some("acme/web:0".into()),
            region: Some("frankfurt".into()),
            plan: Some("standard".into()),
            ..RenderServiceSpec::default()
        })
        .await
        .unwrap()
        .object;
    let synced = l.sync().await;
    assert!(synced.outcome.error.is_none(), "{:?}", synced.outcome.error);
    let web = synced.plan("web");
    assert_eq!(web.action, Action::Update);
    assert_eq!(web.id.as_deref(), Some(existing.id.as_str()));
    assert!(web.drift.is_empty(), "adopting is not drift");
    assert!(synced.reasons("web").contains(&"Adopted"));
    let creates = synced
        .writes()
        .into_iter()
        .filter(|e| e.method == "POST" && e.path == "/services")
        .count();
    assert_eq!(creates, 2, "only the two services that did not exist");
    let services = client.list_services(OWNER, Some("web")).await.unwrap();
    assert_eq!(services.len(), 1);
    assert_eq!(
        services[0].plan.as_deref(),
        Some("starter"),
        "made to match"
    );
    assert!(!services[0].auto_deploy);
    assert_eq!(l.object("service", "web").id, Some(existing.id));
    l.env.check_contract(Platform::Render);
}

#[tokio::test]
async fn dashboard_drift_is_corrected_under_correct_and_only_reported_under_report() {
    let mut l = Loop::start().await;
    l.converge().await;
    l.edit("service", "web", "serviceDetails.plan", json!("pro"))
        .await;
    l.edit("postgres", "db", "highAvailabilityEnabled", json!(true))
        .await;
    let synced = l.sync().await;
    assert_eq!(synced.plan("web").drift, ["plan"]);
    assert_eq!(synced.plan("db").drift, ["highAvailability"]);
    assert_eq!(synced.reasons("web"), ["DriftCorrected"]);
    assert_eq!(synced.writes().len(), 2);
    let client = l.client();
    let web = &client.list_services(OWNER, Some("web")).await.unwrap()[0];
    assert_eq!(web.plan.as_deref(), Some("starter"));
    assert!(!client.list_postgres(OWNER, None).await.unwrap()[0].high_availability);

    l.spec.drift_policy = DriftPolicy::Report;
    l.sync().await;
    l.edit("keyValue", "cache", "plan", json!("pro")).await;
    l.edit("customDomain", "web", "rogue.example.com", json!(true))
        .await;
    let synced = l.sync().await;
    assert!(synced.writes().is_empty(), "{:?}", synced.writes());
    assert_eq!(synced.plan("cache").drift, ["plan"]);
    assert_eq!(synced.plan("web").drift, ["domains.rogue.example.com"]);
    assert_eq!(l.object("keyValue", "cache").drift, ["plan"]);
    assert_eq!(
        client.list_key_values(OWNER, None).await.unwrap()[0].plan,
        "pro"
    );
    l.env.check_contract(Platform::Render);
}

#[tokio::test]
async fn sets_the_spec_leaves_out_are_neither_read_nor_changed_and_an_empty_set_clears_them() {
    let mut l = Loop::start().await;
    let web = &mut l.spec.render.as_mut().unwrap().services[0];
    web.env_vars = None;
    web.custom_domains = None;
    l.converge().await;
    l.edit("envVar", "web", "SET_BY_HAND", json!("kept")).await;
    l.edit("customDomain", "web", "hand.example.com", json!(true))
        .await;
    let synced = l.sync().await;
    assert!(synced.writes().is_empty(), "{:?}", synced.writes());
    assert!(synced.plans.iter().all(|p| p.action == Action::InSync));
    let sub_reads: Vec<&str> = synced
        .exchanges
        .iter()
        .map(|e| e.path.as_str())
        .filter(|p| p.contains("/env-vars") || p.contains("/custom-domains"))
        .collect();
    assert!(
        sub_reads.is_empty(),
        "undeclared sets are not read: {sub_reads:?}"
    );

    // Declaring the sets empty owns them: what is there is removed.
    let web = &mut l.spec.render.as_mut().unwrap().services[0];
    web.env_vars = Some(Vec::new());
    web.custom_domains = Some(Vec::new());
    let synced = l.sync().await;
    assert!(synced.outcome.error.is_none(), "{:?}", synced.outcome.error);
    let changed: Vec<&str> = synced
        .plan("web")
        .changes
        .iter()
        .map(|c| c.field.as_str())
        .collect();
    assert_eq!(changed, ["domains.hand.example.com", "envVars.SET_BY_HAND"]);
    let id = l.object("service", "web").id.clone().unwrap();
    let client = l.client();
    assert!(client.list_env_vars(&id).await.unwrap().is_empty());
    assert!(client.list_domains(&id).await.unwrap().is_empty());
    l.env.check_contract(Platform::Render);
}

#[tokio::test]
async fn rotating_a_secret_writes_the_new_value_without_showing_it() {
    let mut l = Loop::start().await;
    let first = l.converge().await;
    let before = l.object("service", "web").secret_fingerprints["envVars.API_KEY"].clone();
    l.secrets
        .insert("web-secrets", "api-key", Token::new(SECRET_V2));
    let synced = l.sync().await;
    let change = &synced.plan("web").changes;
    assert_eq!(change.len(), 1);
    assert_eq!(
        change[0].to_string(),
        "envVars.API_KEY: (secret) → (secret)"
    );
    assert!(!change[0].drift, "a rotation is not drift");
    let writes = synced.writes();
    assert_eq!(writes.len(), 1);
    assert!(writes[0].method == "PUT" && writes[0].path.ends_with("/env-vars/API_KEY"));
    let after = &l.object("service", "web").secret_fingerprints["envVars.API_KEY"];
    assert_ne!(
        &before, after,
        "the fingerprint in status moves with the value"
    );
    let web = l.object("service", "web").id.clone().unwrap();
    let vars = l.client().list_env_vars(&web).await.unwrap();
    assert!(
        vars.iter()
            .any(|v| v.key == "API_KEY" && v.value.as_deref() == Some(SECRET_V2))
    );
    let seen = format!("{}{}", l.visible(&first), l.visible(&synced));
    for secret in [SECRET_V1, SECRET_V2] {
        assert!(!seen.contains(secret), "a secret value leaked: {seen}");
    }
    assert!(l.sync().await.writes().is_empty());
    l.env.check_contract(Platform::Render);
}

#[tokio::test]
async fn a_region_change_is_a_clear_error_after_the_other_changes_are_applied() {
    let mut l = Loop::start().await;
    l.converge().await;
    let render = l.spec.render.as_mut().unwrap();
    render.services[0].region = RenderRegion::Singapore;
    render.services[1].schedule = Some("0 4 * * *".into());
    let synced = l.sync().await;
    let error = synced
        .outcome
        .error
        .as_ref()
        .expect("the region is refused");
    let text = error.to_string();
    assert!(
        text.contains("render")
            && text.contains("service web")
            && text.contains("region: frankfurt → singapore"),
        "{text}"
    );
    assert!(error.is_permanent(), "waits for a spec change");
    let writes = synced.writes();
    assert_eq!(writes.len(), 1, "the schedule still changed: {writes:?}");
    assert_eq!(
        writes[0].request_body,
        Some(json!({"serviceDetails": {"schedule": "0 4 * * *"}}))
    );
    assert_eq!(l.status.len(), 5, "every object is still reported");
    l.env.check_contract(Platform::Render);
}

#[tokio::test]
async fn with_a_shared_cache_a_steady_resync_reads_nothing_and_creates_are_written_through() {
    let mut l = Loop::with_cache(Duration::from_secs(600)).await;
    // Datastores need fresh reads while they come up; services are seen from the cache.
    l.spec.render.as_mut().unwrap().key_values.clear();
    l.spec.render.as_mut().unwrap().postgres.clear();
    let first = l.sync().await;
    assert!(first.outcome.error.is_none(), "{:?}", first.outcome.error);
    let second = l.sync().await;
    assert!(
        second.plans.iter().all(|p| p.action == Action::InSync),
        "{:?}",
        second.plans
    );
    assert!(
        second.exchanges.is_empty(),
        "a resync within the cache age sends nothing: {:?}",
        second
            .exchanges
            .iter()
            .map(|e| format!("{} {}", e.method, e.path))
            .collect::<Vec<_>>()
    );
    l.env.check_contract(Platform::Render);
}

/// The GETs of a service's env vars and custom domains a sync sent.
fn sub_list_reads(synced: &Synced) -> Vec<String> {
    synced
        .exchanges
        .iter()
        .filter(|e| e.method == "GET")
        .filter(|e| e.path.contains("/env-vars") || e.path.contains("/custom-domains"))
        .map(|e| e.path.clone())
        .collect()
}

#[tokio::test]
async fn a_settled_services_sets_are_read_again_only_when_its_updated_at_moves_or_the_safety_net_ends()
 {
    let mut l = Loop::with_cache(Duration::from_millis(20)).await;
    // Kept at most SUBLIST_RECHECK_INTERVALS (8) intervals: 2 s.
    l.spec.interval = "250ms".into();
    let keep = Duration::from_millis(250) * tether::sync::SUBLIST_RECHECK_INTERVALS;
    l.spec.render.as_mut().unwrap().key_values.clear();
    l.spec.render.as_mut().unwrap().postgres.clear();
    l.converge().await;
    // Settled: read once more, then kept while the service's `updatedAt` holds (the first
    // deadline of each of the two sets is spread at random over `keep`, so one more read of
    // each may fall in the window; after a read a set is kept for all of `keep`, longer than
    // the window).
    l.sync().await;
    let mut reading = 0;
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(40)).await;
        let steady = l.sync().await;
        assert!(
            steady.exchanges.iter().any(|e| e.path == "/services"),
            "the shared list is read"
        );
        reading += usize::from(!sub_list_reads(&steady).is_empty());
    }
    assert!(reading <= 2, "{reading} of 10 steady syncs read the sets");

    // A dashboard edit of the service moves its `updatedAt`: its sets are read at once, and
    // an env var added by hand meanwhile is found and removed.
    l.edit("envVar", "web", "SET_BY_HAND", json!("x")).await;
    l.edit("service", "web", "updatedAt", json!("2099-01-01T00:00:00Z"))
        .await;
    tokio::time::sleep(Duration::from_millis(40)).await;
    let moved = l.sync().await;
    assert_eq!(sub_list_reads(&moved).len(), 2, "env vars and domains");
    assert_eq!(moved.plan("web").drift, ["envVars.SET_BY_HAND"]);
    assert_eq!(moved.reasons("web"), ["DriftCorrected"]);
    l.converge().await;

    // An edit that moves no signal is found by the safety net, within `keep`.
    l.edit("customDomain", "web", "rogue.example.com", json!(true))
        .await;
    let edited = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let synced = l.sync().await;
        if synced.plan("web").drift == ["domains.rogue.example.com"] {
            break;
        }
        assert!(
            edited.elapsed() < keep + Duration::from_millis(500),
            "found within {keep:?}"
        );
    }
    let id = l.object("service", "web").id.clone().unwrap();
    let domains = l.client().list_domains(&id).await.unwrap();
    assert!(
        domains.iter().all(|d| d.name != "rogue.example.com"),
        "corrected"
    );
    l.env.check_contract(Platform::Render);
}

#[tokio::test]
async fn the_staging_samples_render_part_converges_and_stays_in_sync() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/samples/10-environment-staging.yaml"
    ))
    .expect("the sample is readable");
    let sample: tether::api::Environment =
        serde_saphyr::from_str(&text).expect("the sample parses");
    let mut l = Loop::start().await;
    l.spec = sample.spec.clone();
    l.secrets
        .insert("app-secrets", "stripe-key", Token::new(SECRET_V1));
    let ready = l.converge().await;
    assert!(ready.writes().is_empty());
    let render = sample.spec.render.as_ref().unwrap();
    let expected = render.services.len() + render.key_values.len() + render.postgres.len();
    assert_eq!(l.status.len(), expected);
    assert!(l.status.iter().all(|o| o.ready), "{:?}", l.status);
    l.env.check_contract(Platform::Render);
}

// ---------------------------------------------------------------------------------------
// The controller
// ---------------------------------------------------------------------------------------

fn manifest(web_plan: &str) -> Value {
    json!({
        "apiVersion": "tether.dev/v1alpha1",
        "kind": "Environment",
        "metadata": {"name": "shop", "namespace": "default"},
        "spec": {
            "credentials": {"render": {"name": "tether-sandbox-render", "key": "token"}},
            "interval": "1s",
            "render": {
                "ownerId": OWNER,
                "services": [{
                    "name": "shop-web",
                    "type": "web",
                    "plan": web_plan,
                    "image": "acme/web:1",
                    "envVars": [
                        {"name": "MODE", "value": "production"},
                        {"name": "API_KEY", "valueFrom": {"secretKeyRef": {"name": "shop-secrets", "key": "api-key"}}},
                    ],
                    "customDomains": ["shop.example.com"],
                }],
                "keyValues": [{"name": "shop-cache", "plan": "starter"}],
                "postgres": [{"name": "shop-db", "plan": "basic_256mb"}],
            },
        },
    })
}

/// Requests to Render that change something, from index `since` on.
fn render_writes(h: &SyncHarness, since: usize) -> Vec<String> {
    h.requests(Platform::Render)
        .into_iter()
        .skip(since)
        .filter(|r| !r.starts_with("GET "))
        .collect()
}

#[tokio::test]
async fn the_controller_creates_updates_corrects_rotates_and_cleans_up_render_objects() {
    let h = SyncHarness::start().await;
    h.put_secret("shop-secrets", &[("api-key", SECRET_V1)])
        .await;
    h.apply(manifest("starter")).await;
    let env = h.wait_ready("shop").await;
    assert_eq!(env["status"]["summary"], "3/3");
    assert!(condition_is(&env, "RenderSynced", "True"), "{env}");
    let db = object(&env, "render", "postgres", "shop-db").expect("db in status");
    assert_eq!(db["state"], "available");
    let web = object(&env, "render", "service", "shop-web").expect("web in status");
    let web_id = web["id"].as_str().unwrap().to_string();

    // One field changes: exactly one write.
    let since = h.requests(Platform::Render).len();
    h.apply(manifest("standard")).await;
    h.wait_ready("shop").await;
    eventually_writes(&h, since, |w| !w.is_empty()).await;
    assert_eq!(
        render_writes(&h, since),
        [format!("PATCH /services/{web_id}")]
    );

    // A dashboard edit is corrected on the next resync.
    let since = h.requests(Platform::Render).len();
    h.edit(
        Platform::Render,
        "service",
        "shop-web",
        "serviceDetails.plan",
        json!("pro"),
    )
    .await;
    eventually_writes(&h, since, |w| {
        w.contains(&format!("PATCH /services/{web_id}"))
    })
    .await;

    // A rotated Secret is written again.
    let since = h.requests(Platform::Render).len();
    h.put_secret("shop-secrets", &[("api-key", SECRET_V2)])
        .await;
    eventually_writes(&h, since, |w| {
        w.contains(&format!("PUT /services/{web_id}/env-vars/API_KEY"))
    })
    .await;
    let seen = h.everything_visible().await;
    for secret in [SECRET_V1, SECRET_V2] {
        assert!(!seen.contains(secret), "a secret value is visible");
    }

    // Deleting the Environment deletes the service and leaves the datastores (stateful).
    h.delete("shop").await;
    let http = h.http(Platform::Render);
    let client = RenderClient::new(http);
    assert!(client.list_services(OWNER, None).await.unwrap().is_empty());
    assert_eq!(client.list_key_values(OWNER, None).await.unwrap().len(), 1);
    assert_eq!(client.list_postgres(OWNER, None).await.unwrap().len(), 1);
    h.stop().await;
}

/// Waits until the Render writes since `since` satisfy `check`.
async fn eventually_writes(h: &SyncHarness, since: usize, check: impl Fn(&Vec<String>) -> bool) {
    crate::support::eventually(crate::support::sync::WAIT, || async {
        let writes = render_writes(h, since);
        check(&writes).then_some(())
    })
    .await;
}
