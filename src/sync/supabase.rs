//! The Supabase driver: makes the Environment's one Supabase project match `spec.supabase`.
//!
//! - **Observe**: the organization's project list (one paged list through the shared cache,
//!   shared by every Environment of the account: it carries each project's status, region
//!   and compute size), then, only for a healthy project and only for the sections the spec
//!   sets, the Auth and PostgREST configs (cached per project ref).
//! - **Plan** ([`plan_project`], pure): the project is found by name (adopted when status has
//!   no entry for it); a missing project is created; one coming up (or resizing, restoring,
//!   paused, unhealthy) is waited for, because its config endpoints answer only once it is
//!   `ACTIVE_HEALTHY`; a healthy one gets the field-level diff. A project removed from the
//!   spec (or the whole Environment deleted) is orphaned unless `deletionPolicy: Delete`:
//!   the project holds the database.
//! - **Act**: create, then resize, password, Auth, PostgREST (one write each, only when a
//!   field of it changed), stopping at the first failure.
//!
//! Managed fields and how they are normalised (an unset spec field is not managed, so an
//! unchanged spec never diffs against Supabase's defaults):
//! `region` (create-only: a difference is a permanent error naming both regions, never a
//! silent re-create), `instanceSize` (when set; changed through the compute add-on),
//! `databasePassword` (write-only: compared by the keyed fingerprint of the last applied
//! value, changed through `PATCH …/database/password`), `auth.siteUrl`,
//! `auth.additionalRedirectUrls` (whenever `auth` is set; sorted, comma-joined),
//! `auth.disableSignup`, `auth.jwtExpirySeconds`, `auth.mailerAutoconfirm`, `api.schemas`
//! and `api.extraSearchPath` (when non-empty; order kept, since the first schema is the
//! default one), `api.maxRows`.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{
    ActOutcome, Action, CacheKey, Driver, Field, FieldChange, Fields, ObjectPlan, ObserveCache,
    Planned, SyncEvent, SyncInput, diff, progress,
};
use crate::api::common::DriftPolicy;
use crate::api::environment::{ManagedObject, SupabaseProject as ProjectSpec};
use crate::platform::{
    Platform, PlatformError, PlatformResult, ProjectState, SupabaseApiSettings,
    SupabaseAuthSettings, SupabaseClient, SupabaseProject, SupabaseProjectSpec, SupabaseProjects,
    Token,
};

const KIND: &str = "project";
const PASSWORD: &str = "databasePassword";

/// The cache entry of organization `organization`'s project list for `account`.
fn projects_key(account: &str, organization: &str) -> CacheKey {
    CacheKey::new(
        Platform::Supabase.as_str(),
        account,
        organization,
        "projects",
    )
}

/// Organization `organization`'s projects, through the shared cache (one list serves every
/// Environment of the account).
async fn organization_projects(
    cache: &ObserveCache,
    account: &str,
    client: &SupabaseClient,
    organization: &str,
) -> PlatformResult<Arc<Vec<SupabaseProject>>> {
    cache
        .get_or_fetch(&projects_key(account, organization), || {
            client.list_projects(organization)
        })
        .await
}

/// Syncs the Supabase project.
#[derive(Clone, Copy, Debug, Default)]
pub struct SupabaseDriver;

/// The project the spec asks for, with its secret resolved.
#[derive(Clone, Debug)]
pub struct DesiredProject {
    /// Project name (identity in the organization).
    pub name: String,
    /// Organization slug.
    pub organization: String,
    /// Region (create-only).
    pub region: String,
    /// Compute size, when the spec sets one.
    pub instance_size: Option<String>,
    /// The database password.
    pub password: Token,
    /// Keyed fingerprint of the password.
    pub password_fingerprint: String,
    /// Auth settings to manage (fields `None` are not managed).
    pub auth: Option<SupabaseAuthSettings>,
    /// Data API settings to manage (fields `None` are not managed).
    pub api: Option<SupabaseApiSettings>,
}

impl DesiredProject {
    /// Builds the desired project from the spec and the resolved password.
    pub fn new(spec: &ProjectSpec, password: Token, password_fingerprint: String) -> Self {
        let auth = spec.auth.as_ref().map(|a| SupabaseAuthSettings {
            site_url: a.site_url.clone(),
            additional_redirect_urls: Some(a.additional_redirect_urls.clone()),
            disable_signup: a.disable_signup,
            jwt_expiry_seconds: a.jwt_expiry_seconds.map(i64::from),
            mailer_autoconfirm: a.mailer_autoconfirm,
        });
        let api = spec.api.as_ref().map(|a| SupabaseApiSettings {
            schemas: (!a.schemas.is_empty()).then(|| a.schemas.clone()),
            extra_search_path: (!a.extra_search_path.is_empty())
                .then(|| a.extra_search_path.clone()),
            max_rows: a.max_rows.map(i64::from),
        });
        DesiredProject {
            name: spec.name.clone(),
            organization: spec.organization_id.clone(),
            region: spec.region.clone(),
            instance_size: spec.instance_size.clone(),
            password,
            password_fingerprint,
            auth,
            api,
        }
    }

    /// The managed fields.
    pub fn fields(&self) -> Fields {
        let mut fields = Fields::new();
        fields.insert("region".into(), Field::Value(self.region.clone()));
        if let Some(size) = &self.instance_size {
            fields.insert("instanceSize".into(), Field::Value(size.clone()));
        }
        fields.insert(
            PASSWORD.into(),
            Field::Secret {
                fingerprint: self.password_fingerprint.clone(),
            },
        );
        if let Some(auth) = &self.auth {
            auth_fields(auth, &mut fields);
        }
        if let Some(api) = &self.api {
            api_fields(api, &mut fields);
        }
        fields
    }
}

fn value(v: impl ToString) -> Field {
    Field::Value(v.to_string())
}

fn auth_fields(auth: &SupabaseAuthSettings, fields: &mut Fields) {
    if let Some(v) = &auth.site_url {
        fields.insert("auth.siteUrl".into(), value(v));
    }
    if let Some(urls) = &auth.additional_redirect_urls {
        let mut urls = urls.clone();
        urls.sort();
        urls.dedup();
        fields.insert("auth.additionalRedirectUrls".into(), value(urls.join(",")));
    }
    if let Some(v) = auth.disable_signup {
        fields.insert("auth.disableSignup".into(), value(v));
    }
    if let Some(v) = auth.jwt_expiry_seconds {
        fields.insert("auth.jwtExpirySeconds".into(), value(v));
    }
    if let Some(v) = auth.mailer_autoconfirm {
        fields.insert("auth.mailerAutoconfirm".into(), value(v));
    }
}

fn api_fields(api: &SupabaseApiSettings, fields: &mut Fields) {
    if let Some(v) = &api.schemas {
        fields.insert("api.schemas".into(), value(v.join(",")));
    }
    if let Some(v) = &api.extra_search_path {
        fields.insert("api.extraSearchPath".into(), value(v.join(",")));
    }
    if let Some(v) = api.max_rows {
        fields.insert("api.maxRows".into(), value(v));
    }
}

/// The project as observed: the list entry, and its configs when they were read (healthy
/// project, section set in the spec).
#[derive(Clone, Debug)]
pub struct ObservedProject {
    /// The organization list's entry.
    pub project: SupabaseProject,
    /// Auth config.
    pub auth: Option<SupabaseAuthSettings>,
    /// PostgREST config.
    pub api: Option<SupabaseApiSettings>,
}

impl ObservedProject {
    /// The observed fields Tether manages for `desired` (unmanaged ones are left out, so
    /// Supabase's defaults for them never diff).
    fn fields(&self, desired: &Fields) -> Fields {
        let mut fields = Fields::new();
        fields.insert("region".into(), value(&self.project.region));
        if let Some(size) = &self.project.instance_size {
            fields.insert("instanceSize".into(), value(size));
        }
        fields.insert(PASSWORD.into(), Field::Present);
        if let Some(auth) = &self.auth {
            auth_fields(auth, &mut fields);
        }
        if let Some(api) = &self.api {
            api_fields(api, &mut fields);
        }
        fields.retain(|name, _| desired.contains_key(name));
        fields
    }
}

/// How the Environment wants changes and removals handled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// The last reconcile applied this generation: a readable difference is drift.
    pub drift_possible: bool,
    /// `driftPolicy`.
    pub drift: DriftPolicy,
    /// The Environment is being deleted.
    pub deleting: bool,
    /// What removing the project means (`Delete` or `Orphan`; the project is stateful).
    pub removal: Action,
}

/// One step of the work.
#[derive(Debug)]
enum Step {
    Create(SupabaseProjectSpec),
    Resize(String),
    Password(Token),
    Auth(SupabaseAuthSettings),
    Api(SupabaseApiSettings),
    Delete(String),
}

/// What `act` does for one object.
#[derive(Debug)]
struct ObjectWork {
    /// Index into `Planned::objects`.
    plan: usize,
    /// The project as observed (none before a create).
    observed: Option<SupabaseProject>,
    steps: Vec<Step>,
    /// Found by name with no status entry: adopted.
    adopted: bool,
    /// Drifted fields this work reverts.
    corrected: Vec<String>,
    /// Secret fingerprints of the last reconcile.
    fingerprints: BTreeMap<String, String>,
    /// Fingerprint to record once the password step (or the create) succeeds.
    password_fingerprint: Option<String>,
    /// Organization, for the cache write-through.
    organization: Option<String>,
}

/// The Supabase work: per object, its steps.
#[derive(Debug, Default)]
pub struct SupabaseWork {
    objects: Vec<ObjectWork>,
}

fn plan_error(reason: String) -> PlatformError {
    PlatformError::Invalid {
        platform: Platform::Supabase,
        operation: "plan_project",
        status: None,
        reason,
    }
}

fn object_plan(name: &str, id: Option<String>, action: Action) -> ObjectPlan {
    ObjectPlan {
        platform: Platform::Supabase,
        kind: KIND.into(),
        name: name.to_owned(),
        id,
        action,
        changes: Vec::new(),
        drift: Vec::new(),
        writes: 0,
    }
}

/// Plans the removal of a project: deleted (one write, when its id is known) or orphaned.
fn remove(
    objects: &mut Vec<ObjectPlan>,
    work: &mut SupabaseWork,
    policy: &Policy,
    name: &str,
    id: Option<String>,
    organization: Option<String>,
) {
    let mut object = object_plan(name, id.clone(), policy.removal.clone());
    let mut steps = Vec::new();
    if let (Action::Delete, Some(id)) = (&policy.removal, id) {
        object.writes = 1;
        steps.push(Step::Delete(id));
    }
    work.objects.push(ObjectWork {
        plan: objects.len(),
        observed: None,
        steps,
        adopted: false,
        corrected: Vec::new(),
        fingerprints: BTreeMap::new(),
        password_fingerprint: None,
        organization,
    });
    objects.push(object);
}

/// Plans the Supabase project (pure).
///
/// `desired`: the spec's project (`None`: no `spec.supabase`); `observed`: the project of
/// that name in the organization, if any; `previous`: its status entry; `removed`: status
/// entries of projects no longer in the spec.
pub fn plan_project(
    desired: Option<&DesiredProject>,
    observed: Option<&ObservedProject>,
    previous: Option<&ManagedObject>,
    removed: &[ManagedObject],
    policy: &Policy,
) -> PlatformResult<Planned<SupabaseWork>> {
    let mut objects = Vec::new();
    let mut work = SupabaseWork::default();
    let plan = object_plan;
    let fingerprints =
        |p: Option<&ManagedObject>| p.map(|p| p.secret_fingerprints.clone()).unwrap_or_default();
    for gone in removed {
        remove(
            &mut objects,
            &mut work,
            policy,
            &gone.name,
            gone.id.clone(),
            None,
        );
    }
    let Some(desired) = desired else {
        return Ok(Planned { objects, work });
    };
    if policy.deleting {
        let id = observed
            .map(|o| o.project.id.clone())
            .or_else(|| previous.and_then(|p| p.id.clone()));
        // Only a project this Environment recorded goes: one of the same name it never
        // recorded belongs to someone else.
        if previous.is_some() {
            let org = Some(desired.organization.clone());
            remove(&mut objects, &mut work, policy, &desired.name, id, org);
        }
        return Ok(Planned { objects, work });
    }

    let wanted = desired.fields();
    let Some(observed) = observed else {
        let mut object = plan(&desired.name, None, Action::Create);
        object.changes = diff(&wanted, &Fields::new(), None, false);
        object.writes = 1;
        work.objects.push(ObjectWork {
            plan: objects.len(),
            observed: None,
            steps: vec![Step::Create(SupabaseProjectSpec {
                name: desired.name.clone(),
                organization_slug: desired.organization.clone(),
                region: Some(desired.region.clone()),
                instance_size: desired.instance_size.clone(),
                db_pass: desired.password.clone(),
            })],
            adopted: false,
            corrected: Vec::new(),
            fingerprints: BTreeMap::new(),
            password_fingerprint: Some(desired.password_fingerprint.clone()),
            organization: Some(desired.organization.clone()),
        });
        objects.push(object);
        return Ok(Planned { objects, work });
    };

    let project = &observed.project;
    if project.region != desired.region {
        return Err(plan_error(format!(
            "spec.supabase.region is create-only: project {} is in {}, the spec asks for {}; \
             a new region needs a new project (delete the project, or set the region back)",
            desired.name, project.region, desired.region
        )));
    }
    let id = Some(project.id.clone());
    let adopted = previous.is_none();
    let mut object_work = ObjectWork {
        plan: objects.len(),
        observed: Some(project.clone()),
        steps: Vec::new(),
        adopted,
        corrected: Vec::new(),
        fingerprints: fingerprints(previous),
        password_fingerprint: None,
        organization: Some(desired.organization.clone()),
    };
    match project.state {
        ProjectState::Healthy => {}
        ProjectState::Failed | ProjectState::Gone => {
            return Err(plan_error(format!(
                "project {} is {}: Supabase could not bring it up; delete it in Supabase and \
                 Tether creates it again",
                desired.name, project.status
            )));
        }
        ProjectState::Provisioning | ProjectState::Paused | ProjectState::Unhealthy => {
            // Its config endpoints answer only once it is ACTIVE_HEALTHY.
            let hint = if project.state == ProjectState::Paused {
                " (paused: restore it in Supabase)"
            } else {
                ""
            };
            let reason = format!("project {} is {}{hint}", desired.name, project.status);
            objects.push(plan(&desired.name, id, Action::Wait(reason)));
            work.objects.push(object_work);
            return Ok(Planned { objects, work });
        }
    }

    let have = observed.fields(&wanted);
    // Settings wait for the project to be healthy: until a reconcile has seen it ready, they
    // were never applied, and a difference is the rest of the creation, not drift.
    let settled = previous.is_some_and(|p| p.ready);
    let changes = diff(&wanted, &have, previous, policy.drift_possible && settled);
    let applied: Vec<&FieldChange> = changes
        .iter()
        .filter(|c| !(c.drift && policy.drift == DriftPolicy::Report))
        .collect();
    let touches = |prefix: &str| applied.iter().any(|c| c.field.starts_with(prefix));
    if let (true, Some(size)) = (
        applied.iter().any(|c| c.field == "instanceSize"),
        &desired.instance_size,
    ) {
        object_work.steps.push(Step::Resize(size.clone()));
    }
    if applied.iter().any(|c| c.field == PASSWORD) {
        object_work
            .steps
            .push(Step::Password(desired.password.clone()));
        object_work.password_fingerprint = Some(desired.password_fingerprint.clone());
    }
    if let (true, Some(auth)) = (touches("auth."), &desired.auth) {
        let changed = |field: &str| applied.iter().any(|c| c.field == field);
        object_work.steps.push(Step::Auth(SupabaseAuthSettings {
            site_url: auth.site_url.clone().filter(|_| changed("auth.siteUrl")),
            additional_redirect_urls: auth
                .additional_redirect_urls
                .clone()
                .filter(|_| changed("auth.additionalRedirectUrls")),
            disable_signup: auth
                .disable_signup
                .filter(|_| changed("auth.disableSignup")),
            jwt_expiry_seconds: auth
                .jwt_expiry_seconds
                .filter(|_| changed("auth.jwtExpirySeconds")),
            mailer_autoconfirm: auth
                .mailer_autoconfirm
                .filter(|_| changed("auth.mailerAutoconfirm")),
        }));
    }
    if let (true, Some(api)) = (touches("api."), &desired.api) {
        let changed = |field: &str| applied.iter().any(|c| c.field == field);
        object_work.steps.push(Step::Api(SupabaseApiSettings {
            schemas: api.schemas.clone().filter(|_| changed("api.schemas")),
            extra_search_path: api
                .extra_search_path
                .clone()
                .filter(|_| changed("api.extraSearchPath")),
            max_rows: api.max_rows.filter(|_| changed("api.maxRows")),
        }));
    }
    object_work.corrected = applied
        .iter()
        .filter(|c| c.drift)
        .map(|c| c.field.clone())
        .collect();
    let mut object = plan(
        &desired.name,
        id,
        if object_work.steps.is_empty() {
            Action::InSync
        } else {
            Action::Update
        },
    );
    object.drift = changes
        .iter()
        .filter(|c| c.drift)
        .map(|c| c.field.clone())
        .collect();
    object.writes = object_work.steps.len() as u32;
    object.changes = changes;
    objects.push(object);
    work.objects.push(object_work);
    Ok(Planned { objects, work })
}

impl SupabaseDriver {
    fn desired(input: &SyncInput<'_>) -> PlatformResult<Option<DesiredProject>> {
        let Some(spec) = &input.spec.supabase else {
            return Ok(None);
        };
        let r = &spec.database_password_secret_ref;
        let (Some(password), Some(Field::Secret { fingerprint })) =
            (input.secrets.get(r), input.secret_field(PASSWORD, r))
        else {
            return Err(plan_error(format!(
                "spec.supabase.databasePasswordSecretRef: key {} of Secret {} is not available",
                r.key, r.name
            )));
        };
        Ok(Some(DesiredProject::new(
            spec,
            password.clone(),
            fingerprint,
        )))
    }

    async fn observe(
        input: &SyncInput<'_>,
        client: &SupabaseClient,
        desired: &DesiredProject,
    ) -> PlatformResult<Option<ObservedProject>> {
        let projects =
            organization_projects(&input.cache, &input.account, client, &desired.organization)
                .await?;
        let Some(project) = projects.iter().find(|p| p.name == desired.name).cloned() else {
            return Ok(None);
        };
        if project.state == ProjectState::Provisioning {
            // Coming up (or resizing): the next reconcile, a short pending interval away,
            // must see the new status rather than this entry until it ages out.
            input
                .cache
                .invalidate(&projects_key(&input.account, &desired.organization));
        }
        let mut observed = ObservedProject {
            project,
            auth: None,
            api: None,
        };
        if observed.project.state == ProjectState::Healthy && !input.deleting {
            let id = observed.project.id.clone();
            if desired.auth.is_some() {
                let auth = input
                    .cache
                    .get_or_fetch(&input.key(&id, "auth"), || client.get_auth_config(&id))
                    .await?;
                observed.auth = Some((*auth).clone());
            }
            if desired.api.is_some() {
                let api = input
                    .cache
                    .get_or_fetch(&input.key(&id, "postgrest"), || client.get_api_config(&id))
                    .await?;
                observed.api = Some((*api).clone());
            }
        }
        Ok(Some(observed))
    }
}

impl Driver for SupabaseDriver {
    const PLATFORM: Platform = Platform::Supabase;
    type Work = SupabaseWork;

    async fn plan(&self, input: &SyncInput<'_>) -> PlatformResult<Planned<SupabaseWork>> {
        let desired = Self::desired(input)?;
        let client = SupabaseClient::new(input.http.clone());
        let observed = match &desired {
            Some(d) => Self::observe(input, &client, d).await?,
            None => None,
        };
        let current = desired.as_ref().map(|d| d.name.as_str());
        let removed: Vec<ManagedObject> = input
            .previous_objects()
            .filter(|o| o.kind == KIND && Some(o.name.as_str()) != current)
            .cloned()
            .collect();
        let previous = current.and_then(|name| input.previous(KIND, name));
        let policy = Policy {
            drift_possible: input.drift_possible,
            drift: input.spec.drift_policy,
            deleting: input.deleting,
            removal: input.removal(true),
        };
        plan_project(
            desired.as_ref(),
            observed.as_ref(),
            previous,
            &removed,
            &policy,
        )
    }

    async fn act(&self, input: &SyncInput<'_>, planned: Planned<SupabaseWork>) -> ActOutcome {
        let client = SupabaseClient::new(input.http.clone());
        let mut outcome = ActOutcome::default();
        for object in planned.work.objects {
            let plan = &planned.objects[object.plan];
            if let Err(error) = act_object(input, &client, plan, object, &mut outcome).await {
                outcome.error = Some(error);
                break;
            }
        }
        outcome
    }
}

fn event(reason: &'static str, plan: &ObjectPlan, note: String) -> SyncEvent {
    SyncEvent {
        reason,
        platform: Platform::Supabase,
        kind: KIND.into(),
        name: plan.name.clone(),
        note,
    }
}

/// Runs one object's steps; on failure the object is still reported (as it was observed,
/// with what was done up to the failure) before the error is returned.
async fn act_object(
    input: &SyncInput<'_>,
    client: &SupabaseClient,
    plan: &ObjectPlan,
    work: ObjectWork,
    outcome: &mut ActOutcome,
) -> PlatformResult<()> {
    let mut managed = input.managed(plan);
    managed.secret_fingerprints = work.fingerprints.clone();
    let mut project = work.observed.clone();
    let projects_key = work
        .organization
        .as_deref()
        .map(|org| projects_key(&input.account, org));
    let mut done: Vec<&'static str> = Vec::new();
    let mut result = Ok(());
    for step in &work.steps {
        let step_result = match step {
            Step::Create(spec) => match client.ensure_project(spec).await {
                Ok(ensured) => {
                    if let Some(key) = &projects_key {
                        let created = ensured.object.clone();
                        input.cache.update::<Vec<SupabaseProject>, _>(key, |list| {
                            if !list.iter().any(|p| p.id == created.id) {
                                list.push(created);
                            }
                        });
                    }
                    project = Some(ensured.object);
                    Ok("create")
                }
                Err(e) => Err(e),
            },
            Step::Resize(size) => match &project {
                Some(p) => client.resize_project(&p.id, size).await.map(|()| {
                    if let Some(key) = &projects_key {
                        let (id, size) = (p.id.clone(), size.clone());
                        input.cache.update::<Vec<SupabaseProject>, _>(key, |list| {
                            if let Some(p) = list.iter_mut().find(|p| p.id == id) {
                                p.instance_size = Some(size);
                                p.status = "RESIZING".into();
                                p.state = ProjectState::Provisioning;
                            }
                        });
                    }
                    "resize"
                }),
                None => Ok("resize"),
            },
            Step::Password(password) => match &project {
                Some(p) => client
                    .update_database_password(&p.id, password)
                    .await
                    .map(|()| "password"),
                None => Ok("password"),
            },
            Step::Auth(settings) => match &project {
                Some(p) => client.update_auth_config(&p.id, settings).await.map(|now| {
                    input
                        .cache
                        .update::<SupabaseAuthSettings, _>(&input.key(&p.id, "auth"), |a| *a = now);
                    "auth"
                }),
                None => Ok("auth"),
            },
            Step::Api(settings) => match &project {
                Some(p) => client.update_api_config(&p.id, settings).await.map(|now| {
                    input
                        .cache
                        .update::<SupabaseApiSettings, _>(&input.key(&p.id, "postgrest"), |a| {
                            *a = now
                        });
                    "api"
                }),
                None => Ok("api"),
            },
            Step::Delete(id) => client.delete_project(id).await.map(|_| {
                if let Some(key) = &projects_key {
                    let id = id.clone();
                    input
                        .cache
                        .update::<Vec<SupabaseProject>, _>(key, |list| list.retain(|p| p.id != id));
                }
                "delete"
            }),
        };
        match step_result {
            Ok(name) => {
                done.push(name);
                if let (true, Some(fp)) = (
                    matches!(name, "create" | "password"),
                    &work.password_fingerprint,
                ) {
                    managed
                        .secret_fingerprints
                        .insert(PASSWORD.into(), fp.clone());
                }
                if matches!(name, "create" | "password") {
                    // Status records the project and the password just written before the
                    // next step: a restart must neither create nor write them again.
                    let mut now = managed.clone();
                    if let Some(p) = &project {
                        now.id = Some(p.id.clone());
                        now.url = Some(format!("https://{}.supabase.co", p.id));
                        now.state = Some(p.status.clone());
                    }
                    progress::written(&now).await;
                }
            }
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }

    match &plan.action {
        Action::Delete | Action::Orphan => {
            if result.is_err() {
                // Still managed: keep its last status entry.
                if let Some(previous) = input.previous(KIND, &plan.name) {
                    outcome.objects.push(previous.clone());
                }
                return result;
            }
            let (reason, note) = if plan.action == Action::Delete {
                ("Deleted", format!("deleted Supabase project {}", plan.name))
            } else {
                (
                    "Orphaned",
                    format!(
                        "left Supabase project {} in place and stopped managing it \
                         (deletionPolicy keeps stateful objects)",
                        plan.name
                    ),
                )
            };
            outcome.events.push(event(reason, plan, note));
            progress::removed(plan).await;
            return Ok(());
        }
        _ => {}
    }

    if let Some(p) = &project {
        managed.id = Some(p.id.clone());
        managed.url = Some(format!("https://{}.supabase.co", p.id));
        let resized = done.contains(&"resize");
        managed.state = Some(if resized {
            "RESIZING".into()
        } else {
            p.status.clone()
        });
        managed.ready = !resized
            && p.state == ProjectState::Healthy
            && !matches!(plan.action, Action::Wait(_) | Action::Create);
    }
    if result.is_ok() {
        // Corrected drift no longer differs; reported drift still does.
        managed.drift.retain(|f| !work.corrected.contains(f));
    }
    if work.adopted && result.is_ok() {
        outcome.events.push(event(
            "Adopted",
            plan,
            format!(
                "found existing Supabase project {} by name and took it over",
                plan.name
            ),
        ));
    }
    if done.contains(&"create") {
        outcome.events.push(event(
            "Created",
            plan,
            format!(
                "created Supabase project {}; it is coming up, settings follow once it is healthy",
                plan.name
            ),
        ));
    }
    let updated: Vec<&str> = plan
        .changes
        .iter()
        .filter(|c| !(c.drift && input.spec.drift_policy == DriftPolicy::Report))
        .map(|c| c.field.as_str())
        .collect();
    if plan.action == Action::Update && result.is_ok() {
        outcome.events.push(event(
            "Updated",
            plan,
            format!(
                "updated Supabase project {}: {}",
                plan.name,
                updated.join(", ")
            ),
        ));
        if !work.corrected.is_empty() {
            outcome.events.push(event(
                "DriftCorrected",
                plan,
                format!(
                    "reverted out-of-band changes to Supabase project {}: {}",
                    plan.name,
                    work.corrected.join(", ")
                ),
            ));
        }
    }
    if plan.changes_anything() {
        progress::written(&managed).await;
    }
    outcome.objects.push(managed);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desired() -> DesiredProject {
        DesiredProject::new(
            &ProjectSpec {
                name: "app".into(),
                organization_id: "acme".into(),
                region: "eu-central-1".into(),
                instance_size: Some("small".into()),
                database_password_secret_ref: Default::default(),
                auth: Some(crate::api::environment::SupabaseAuth {
                    site_url: Some("https://app.example.com".into()),
                    additional_redirect_urls: vec![
                        "https://b.example.com".into(),
                        "https://a.example.com".into(),
                    ],
                    jwt_expiry_seconds: Some(3600),
                    ..Default::default()
                }),
                api: Some(crate::api::environment::SupabaseApi {
                    schemas: vec!["public".into(), "api".into()],
                    max_rows: Some(500),
                    ..Default::default()
                }),
            },
            Token::new("pw-1"),
            "fp-1".into(),
        )
    }

    /// The project exactly as `desired()` asks, healthy.
    fn observed() -> ObservedProject {
        ObservedProject {
            project: SupabaseProject {
                id: "abcdefghijklmnopqrst".into(),
                name: "app".into(),
                organization_slug: Some("acme".into()),
                region: "eu-central-1".into(),
                status: "ACTIVE_HEALTHY".into(),
                state: ProjectState::Healthy,
                instance_size: Some("small".into()),
            },
            auth: Some(SupabaseAuthSettings {
                site_url: Some("https://app.example.com".into()),
                additional_redirect_urls: Some(vec![
                    "https://a.example.com".into(),
                    "https://b.example.com".into(),
                ]),
                disable_signup: Some(false),
                jwt_expiry_seconds: Some(3600),
                mailer_autoconfirm: Some(false),
            }),
            api: Some(SupabaseApiSettings {
                schemas: Some(vec!["public".into(), "api".into()]),
                extra_search_path: Some(vec!["public".into(), "extensions".into()]),
                max_rows: Some(500),
            }),
        }
    }

    fn previous(fp: &str) -> ManagedObject {
        ManagedObject {
            platform: "supabase".into(),
            kind: KIND.into(),
            name: "app".into(),
            id: Some("abcdefghijklmnopqrst".into()),
            secret_fingerprints: [(PASSWORD.to_string(), fp.to_string())].into(),
            ready: true,
            ..ManagedObject::default()
        }
    }

    fn policy() -> Policy {
        Policy {
            drift_possible: false,
            drift: DriftPolicy::Correct,
            deleting: false,
            removal: Action::Orphan,
        }
    }

    fn steps(planned: &Planned<SupabaseWork>) -> Vec<String> {
        planned.work.objects[0]
            .steps
            .iter()
            .map(|s| match s {
                Step::Create(_) => "create".to_string(),
                Step::Resize(size) => format!("resize {size}"),
                Step::Password(_) => "password".into(),
                Step::Auth(a) => format!("auth {a:?}"),
                Step::Api(a) => format!("api {a:?}"),
                Step::Delete(id) => format!("delete {id}"),
            })
            .collect()
    }

    #[test]
    fn a_missing_project_is_created_with_every_field_listed_and_one_write() {
        let d = desired();
        let planned = plan_project(Some(&d), None, None, &[], &policy()).unwrap();
        let object = &planned.objects[0];
        assert_eq!(object.action, Action::Create);
        assert_eq!(object.writes, 1);
        let fields: Vec<&str> = object.changes.iter().map(|c| c.field.as_str()).collect();
        assert!(fields.contains(&"region") && fields.contains(&"auth.siteUrl"));
        let password = object.changes.iter().find(|c| c.field == PASSWORD).unwrap();
        assert_eq!(password.to.as_deref(), Some("(secret)"));
        assert_eq!(steps(&planned), ["create"]);
    }

    #[test]
    fn a_project_matching_the_spec_is_in_sync_with_no_writes() {
        let d = desired();
        let planned = plan_project(
            Some(&d),
            Some(&observed()),
            Some(&previous("fp-1")),
            &[],
            &policy(),
        )
        .unwrap();
        assert_eq!(planned.objects[0].action, Action::InSync);
        assert_eq!(planned.objects[0].writes, 0);
        assert!(
            planned.objects[0].changes.is_empty(),
            "{:?}",
            planned.objects[0].changes
        );
        assert!(steps(&planned).is_empty());
    }

    #[test]
    fn unset_spec_fields_are_not_managed_so_supabase_defaults_never_diff() {
        let mut d = desired();
        d.instance_size = None;
        d.auth = None;
        d.api = None;
        let mut o = observed();
        o.project.instance_size = Some("nano".into());
        o.auth = None;
        o.api = None;
        let planned =
            plan_project(Some(&d), Some(&o), Some(&previous("fp-1")), &[], &policy()).unwrap();
        assert_eq!(planned.objects[0].action, Action::InSync);
    }

    #[test]
    fn one_changed_field_updates_exactly_that_field_in_one_write() {
        let mut d = desired();
        d.api.as_mut().unwrap().max_rows = Some(100);
        let planned = plan_project(
            Some(&d),
            Some(&observed()),
            Some(&previous("fp-1")),
            &[],
            &policy(),
        )
        .unwrap();
        let object = &planned.objects[0];
        assert_eq!(object.action, Action::Update);
        assert_eq!(object.writes, 1);
        assert_eq!(object.changes.len(), 1);
        assert_eq!(object.changes[0].to_string(), "api.maxRows: 500 → 100");
        assert_eq!(
            steps(&planned),
            [format!(
                "api {:?}",
                SupabaseApiSettings {
                    max_rows: Some(100),
                    ..SupabaseApiSettings::default()
                }
            )]
        );
    }

    #[test]
    fn a_changed_instance_size_is_a_resize() {
        let mut d = desired();
        d.instance_size = Some("large".into());
        let planned = plan_project(
            Some(&d),
            Some(&observed()),
            Some(&previous("fp-1")),
            &[],
            &policy(),
        )
        .unwrap();
        assert_eq!(steps(&planned), ["resize large"]);
    }

    #[test]
    fn an_existing_project_without_status_is_adopted_and_gets_the_spec_password() {
        let d = desired();
        let planned = plan_project(Some(&d), Some(&observed()), None, &[], &policy()).unwrap();
        assert!(planned.work.objects[0].adopted);
        assert_eq!(
            planned.objects[0].id.as_deref(),
            Some("abcdefghijklmnopqrst")
        );
        // Its password is unknown to Tether: set so Migrations can connect.
        assert_eq!(steps(&planned), ["password"]);
        assert!(planned.objects[0].drift.is_empty(), "adoption is not drift");
    }

    #[test]
    fn a_rotated_password_secret_is_re_applied_and_is_not_drift() {
        let d = desired();
        let mut p = policy();
        p.drift_possible = true;
        let planned = plan_project(
            Some(&d),
            Some(&observed()),
            Some(&previous("fp-0")),
            &[],
            &p,
        )
        .unwrap();
        assert_eq!(steps(&planned), ["password"]);
        assert!(planned.objects[0].drift.is_empty());
        assert_eq!(
            planned.objects[0].changes[0].to_string(),
            "databasePassword: (secret) → (secret)"
        );
    }

    #[test]
    fn settings_applied_once_a_new_project_is_healthy_are_the_creation_not_drift() {
        let d = desired();
        let mut o = observed();
        o.auth.as_mut().unwrap().site_url = Some("http://localhost:3000".into());
        let mut p = policy();
        p.drift_possible = true;
        // The last reconcile saw the project still coming up.
        let mut coming_up = previous("fp-1");
        coming_up.ready = false;
        let planned = plan_project(Some(&d), Some(&o), Some(&coming_up), &[], &p).unwrap();
        assert!(planned.objects[0].drift.is_empty(), "not drift");
        assert_eq!(planned.objects[0].action, Action::Update, "still applied");
        assert!(planned.work.objects[0].corrected.is_empty());
    }

    #[test]
    fn drift_is_corrected_under_correct_and_only_reported_under_report() {
        let d = desired();
        let mut o = observed();
        o.auth.as_mut().unwrap().site_url = Some("https://evil.example.com".into());
        let mut p = policy();
        p.drift_possible = true;
        let planned = plan_project(Some(&d), Some(&o), Some(&previous("fp-1")), &[], &p).unwrap();
        assert_eq!(planned.objects[0].drift, ["auth.siteUrl"]);
        assert_eq!(planned.objects[0].action, Action::Update);
        assert_eq!(planned.work.objects[0].corrected, ["auth.siteUrl"]);
        assert_eq!(planned.objects[0].writes, 1);

        p.drift = DriftPolicy::Report;
        let planned = plan_project(Some(&d), Some(&o), Some(&previous("fp-1")), &[], &p).unwrap();
        assert_eq!(planned.objects[0].drift, ["auth.siteUrl"]);
        assert_eq!(planned.objects[0].action, Action::InSync);
        assert_eq!(planned.objects[0].writes, 0);
    }

    #[test]
    fn a_project_coming_up_is_waited_for_without_writes() {
        let d = desired();
        let mut o = observed();
        o.project.status = "COMING_UP".into();
        o.project.state = ProjectState::Provisioning;
        o.auth = None;
        o.api = None;
        let planned =
            plan_project(Some(&d), Some(&o), Some(&previous("fp-1")), &[], &policy()).unwrap();
        assert!(matches!(&planned.objects[0].action, Action::Wait(r) if r.contains("COMING_UP")));
        assert_eq!(planned.objects[0].writes, 0);
        assert!(steps(&planned).is_empty());
    }

    #[test]
    fn a_region_change_is_a_clear_permanent_error_never_a_re_create() {
        let mut d = desired();
        d.region = "us-east-1".into();
        let err = plan_project(
            Some(&d),
            Some(&observed()),
            Some(&previous("fp-1")),
            &[],
            &policy(),
        )
        .unwrap_err();
        assert!(err.is_permanent());
        let text = err.to_string();
        assert!(
            text.contains("create-only")
                && text.contains("eu-central-1")
                && text.contains("us-east-1"),
            "{text}"
        );
    }

    #[test]
    fn a_removed_project_is_orphaned_by_default_and_deleted_only_under_delete() {
        let gone = previous("fp-1");
        let planned =
            plan_project(None, None, None, std::slice::from_ref(&gone), &policy()).unwrap();
        assert_eq!(planned.objects[0].action, Action::Orphan);
        assert_eq!(planned.objects[0].writes, 0);
        let mut p = policy();
        p.removal = Action::Delete;
        let planned = plan_project(None, None, None, std::slice::from_ref(&gone), &p).unwrap();
        assert_eq!(planned.objects[0].action, Action::Delete);
        assert_eq!(steps(&planned), ["delete abcdefghijklmnopqrst"]);
    }

    #[test]
    fn deleting_the_environment_removes_the_current_project_per_policy() {
        let d = desired();
        let mut p = policy();
        p.deleting = true;
        p.removal = Action::Delete;
        let planned = plan_project(
            Some(&d),
            Some(&observed()),
            Some(&previous("fp-1")),
            &[],
            &p,
        )
        .unwrap();
        assert_eq!(planned.objects.len(), 1);
        assert_eq!(planned.objects[0].action, Action::Delete);
        assert_eq!(steps(&planned), ["delete abcdefghijklmnopqrst"]);
        // A project of that name this Environment never recorded is someone else's.
        let untouched = plan_project(Some(&d), Some(&observed()), None, &[], &p).unwrap();
        assert!(untouched.objects.is_empty() && untouched.work.objects.is_empty());
    }
}
