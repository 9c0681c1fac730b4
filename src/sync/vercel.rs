//! The Vercel driver: makes the projects of `spec.vercel` match, each project one managed
//! object (kind `project`) whose fields are its settings, its environment variables and its
//! domains.
//!
//! Flow: **observe** the team's projects with one paged list (`GET /v10/projects` carries each
//! project's settings, git link and `env` array), shared through the [`ObserveCache`] by every
//! Environment of the team, plus one domain list per managed project (also cached) →
//! **plan** with the pure [`plan_projects`] → **act** in dependency order (project settings,
//! variables in one upsert request, then domains, redirect targets before the domains that
//! redirect to them), writing every result through to the cache.
//!
//! Fields (dotted names, as `tether plan` prints them):
//! - `framework`, `nodeVersion`: managed only when the spec sets them (unset: Vercel decides);
//! - `rootDirectory`, `installCommand`, `buildCommand`, `outputDirectory`: unset is Vercel's
//!   detection (`null`), normalised to the empty string;
//! - `gitRepository` (`provider:owner/name`) and `productionBranch`, when the spec sets them.
//!   Vercel's API links a repository only at creation and has no call to change the link or
//!   the production branch: a difference is an error naming the field, not a silent diff;
//! - `envVars.KEY@target,target` (or `…@preview#branch`): the identity of a Vercel variable
//!   is (key, targets, git branch). Literal values are `plain` (readable, so drift is seen);
//!   values from Secrets are `encrypted`, compared by the keyed fingerprint kept in status;
//! - `domains.HOST`: `production`, `redirect:OTHER` or `branch:NAME`. Vercel's own
//!   `*.vercel.app` domains are not Tether's and are left alone;
//! - env vars and domains are owned as whole sets when the spec declares them (`[]` owns an
//!   empty set); a spec that leaves either out leaves it alone, and its domains unread.
//!
//! Projects are stateless: removed from the spec (or with the Environment), they are deleted
//! unless `deletionPolicy: Orphan`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::{
    ActOutcome, Action, Driver, Field, FieldChange, Fields, ObjectPlan, Planned, SyncEvent,
    SyncInput, diff, progress,
};
use crate::api::common::DriftPolicy;
use crate::api::environment::{ManagedObject, VercelProject as ProjectSpec, VercelTarget};
use crate::platform::{
    Platform, PlatformError, PlatformResult, VercelClient, VercelDomain, VercelDomainSpec,
    VercelEnvType, VercelEnvVar, VercelEnvVarSpec, VercelProject, VercelProjectPatch,
    VercelProjectSpec, VercelProjects,
};

/// The kind of every object this driver manages.
pub const KIND: &str = "project";

/// Syncs Vercel projects.
#[derive(Clone, Copy, Debug, Default)]
pub struct VercelDriver;

/// What `act` does, one step per project, in order.
#[derive(Debug, Default)]
pub struct Work {
    steps: Vec<Step>,
}

#[derive(Debug)]
enum Step {
    Create {
        spec: VercelProjectSpec,
        domains: Vec<VercelDomainSpec>,
    },
    Update {
        id: String,
        patch: VercelProjectPatch,
        upserts: Vec<VercelEnvVarSpec>,
        env_deletes: Vec<String>,
        domain_adds: Vec<VercelDomainSpec>,
        domain_updates: Vec<VercelDomainSpec>,
        domain_deletes: Vec<String>,
    },
    Delete {
        id: String,
    },
    Keep,
}

/// One project of the spec with its secret values resolved: what it should be on Vercel.
#[derive(Debug)]
pub struct DesiredProject {
    /// Project name.
    pub name: String,
    /// The managed fields.
    pub fields: Fields,
    /// What to create when it does not exist.
    pub create: VercelProjectSpec,
    /// Variables by field name.
    pub env_vars: BTreeMap<String, VercelEnvVarSpec>,
    /// Domains by field name.
    pub domains: BTreeMap<String, VercelDomainSpec>,
    /// The spec declares its env vars (even none): they are owned as a whole set.
    pub owns_env_vars: bool,
    /// The spec declares its domains (even none): they are owned, and read, as a set.
    pub owns_domains: bool,
    /// Fingerprints of the secret values by field name.
    pub fingerprints: BTreeMap<String, String>,
}

/// What the pure planner needs besides desired and observed state.
#[derive(Debug)]
pub struct PlanContext<'a> {
    /// Status entries of this platform from the last reconcile.
    pub previous: &'a [ManagedObject],
    /// The last reconcile applied this generation.
    pub drift_possible: bool,
    /// `Correct` or `Report`.
    pub drift_policy: DriftPolicy,
    /// `Delete` or `Orphan`: what removing a project means (a project is removed when it
    /// left the spec, or with the Environment: then the desired list is empty).
    pub removal: Action,
}

impl PlanContext<'_> {
    fn previous(&self, name: &str) -> Option<&ManagedObject> {
        self.previous
            .iter()
            .find(|o| o.platform == "vercel" && o.kind == KIND && o.name == name)
    }
}

fn invalid(reason: String) -> PlatformError {
    PlatformError::Invalid {
        platform: Platform::Vercel,
        operation: "plan",
        status: None,
        reason,
    }
}

fn target_name(t: VercelTarget) -> &'static str {
    match t {
        VercelTarget::Production => "production",
        VercelTarget::Preview => "preview",
        VercelTarget::Development => "development",
    }
}

/// `envVars.KEY@production,preview` or `envVars.KEY@preview#branch`.
fn env_field(key: &str, targets: &[VercelTarget], branch: Option<&str>) -> String {
    let targets: Vec<&str> = targets.iter().map(|t| target_name(*t)).collect();
    match branch {
        Some(branch) => format!("envVars.{key}@{}#{branch}", targets.join(",")),
        None => format!("envVars.{key}@{}", targets.join(",")),
    }
}

fn domain_value(redirect: Option<&str>, branch: Option<&str>) -> String {
    match (redirect, branch) {
        (Some(target), _) => format!("redirect:{target}"),
        (None, Some(branch)) => format!("branch:{branch}"),
        (None, None) => "production".into(),
    }
}

/// Vercel's GitHub variants are one provider to the spec.
fn provider(name: &str) -> &str {
    if name.starts_with("github") {
        "github"
    } else {
        name
    }
}

fn text(value: &Option<String>) -> Field {
    Field::Value(value.clone().unwrap_or_default())
}

/// The desired state of one project (pure apart from reading resolved secrets via `secret`).
pub fn desired_project(
    spec: &ProjectSpec,
    secret: impl Fn(&str, &crate::api::common::SecretKeyRef) -> Option<(String, String)>,
) -> PlatformResult<DesiredProject> {
    let mut fields = Fields::new();
    if let Some(framework) = &spec.framework {
        fields.insert("framework".into(), Field::Value(framework.clone()));
    }
    if let Some(version) = &spec.node_version {
        fields.insert("nodeVersion".into(), Field::Value(version.clone()));
    }
    fields.insert("rootDirectory".into(), text(&spec.root_directory));
    fields.insert("installCommand".into(), text(&spec.install_command));
    fields.insert("buildCommand".into(), text(&spec.build_command));
    fields.insert("outputDirectory".into(), text(&spec.output_directory));
    let git_repository = spec.git_repository.as_ref().map(|g| {
        let provider = serde_json::to_value(g.type_)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_else(|| "github".into());
        (provider, g.repo.clone())
    });
    if let Some(git) = &spec.git_repository {
        let (provider, repo) = git_repository.clone().unwrap_or_default();
        fields.insert(
            "gitRepository".into(),
            Field::Value(format!("{provider}:{repo}")),
        );
        if let Some(branch) = &git.production_branch {
            fields.insert("productionBranch".into(), Field::Value(branch.clone()));
        }
    }
    let mut env_vars = BTreeMap::new();
    let mut fingerprints = BTreeMap::new();
    for var in spec.env_vars.iter().flatten() {
        let mut targets = var.targets.clone();
        targets.sort();
        targets.dedup();
        let name = env_field(&var.name, &targets, var.git_branch.as_deref());
        let (value, kind, field) = match (&var.value, &var.value_from) {
            (Some(value), _) => (
                value.clone(),
                VercelEnvType::Plain,
                Field::Value(value.clone()),
            ),
            (None, Some(from)) => {
                let (value, fingerprint) =
                    secret(&name, &from.secret_key_ref).ok_or_else(|| {
                        invalid(format!(
                            "project {:?} env var {}: Secret {:?} key {:?} is not available",
                            spec.name, var.name, from.secret_key_ref.name, from.secret_key_ref.key
                        ))
                    })?;
                fingerprints.insert(name.clone(), fingerprint.clone());
                (
                    value,
                    VercelEnvType::Encrypted,
                    Field::Secret { fingerprint },
                )
            }
            (None, None) => {
                return Err(invalid(format!(
                    "project {:?} env var {}: set value or valueFrom",
                    spec.name, var.name
                )));
            }
        };
        fields.insert(name.clone(), field);
        env_vars.insert(
            name,
            VercelEnvVarSpec {
                key: var.name.clone(),
                value,
                kind,
                targets,
                git_branch: var.git_branch.clone(),
            },
        );
    }
    let mut domains = BTreeMap::new();
    for domain in spec.domains.iter().flatten() {
        if domain.redirect.is_some() && domain.git_branch.is_some() {
            return Err(invalid(format!(
                "project {:?} domain {}: Vercel does not allow both redirect and gitBranch",
                spec.name, domain.name
            )));
        }
        let name = format!("domains.{}", domain.name);
        fields.insert(
            name.clone(),
            Field::Value(domain_value(
                domain.redirect.as_deref(),
                domain.git_branch.as_deref(),
            )),
        );
        domains.insert(
            name,
            VercelDomainSpec {
                name: domain.name.clone(),
                redirect: domain.redirect.clone(),
                git_branch: domain.git_branch.clone(),
            },
        );
    }
    let create = VercelProjectSpec {
        name: spec.name.clone(),
        framework: spec.framework.clone(),
        git_repository,
        root_directory: spec.root_directory.clone(),
        install_command: spec.install_command.clone(),
        build_command: spec.build_command.clone(),
        output_directory: spec.output_directory.clone(),
        node_version: spec.node_version.clone(),
        env_vars: env_vars.values().cloned().collect(),
    };
    Ok(DesiredProject {
        name: spec.name.clone(),
        fields,
        create,
        env_vars,
        domains,
        owns_env_vars: spec.env_vars.is_some(),
        owns_domains: spec.domains.is_some(),
        fingerprints,
    })
}

/// The observed fields of a project, limited to what `desired` manages where Tether does
/// not own the whole field (framework, nodeVersion, the git link) and to the sets (env vars,
/// domains) the spec declares.
pub fn observed_fields(
    desired: &DesiredProject,
    project: &VercelProject,
    domains: &[VercelDomain],
) -> Fields {
    let mut fields = Fields::new();
    if desired.fields.contains_key("framework") {
        fields.insert("framework".into(), text(&project.framework));
    }
    if desired.fields.contains_key("nodeVersion") {
        fields.insert(
            "nodeVersion".into(),
            Field::Value(project.node_version.clone()),
        );
    }
    fields.insert("rootDirectory".into(), text(&project.root_directory));
    fields.insert("installCommand".into(), text(&project.install_command));
    fields.insert("buildCommand".into(), text(&project.build_command));
    fields.insert("outputDirectory".into(), text(&project.output_directory));
    if let Some(link) = &project.git_repository {
        if desired.fields.contains_key("gitRepository") {
            fields.insert(
                "gitRepository".into(),
                Field::Value(format!("{}:{}", provider(&link.provider), link.repo)),
            );
        }
        if desired.fields.contains_key("productionBranch") {
            fields.insert("productionBranch".into(), text(&link.production_branch));
        }
    }
    for var in project.env_vars.iter().filter(|_| desired.owns_env_vars) {
        if var.kind == VercelEnvType::System {
            continue;
        }
        let name = env_field(&var.key, &var.targets, var.git_branch.as_deref());
        let field = match &var.value {
            Some(value) => Field::Value(value.clone()),
            None => Field::Present,
        };
        fields.insert(name, field);
    }
    for domain in domains.iter().filter(|_| desired.owns_domains) {
        if domain.name.ends_with(".vercel.app") {
            continue;
        }
        fields.insert(
            format!("domains.{}", domain.name),
            Field::Value(domain_value(
                domain.redirect.as_deref(),
                domain.git_branch.as_deref(),
            )),
        );
    }
    fields
}

/// Write requests an update costs.
fn update_writes(step: &Step) -> u32 {
    match step {
        Step::Update {
            patch,
            upserts,
            env_deletes,
            domain_adds,
            domain_updates,
            domain_deletes,
            ..
        } => {
            u32::from(!patch.is_empty())
                + u32::from(!upserts.is_empty())
                + (env_deletes.len()
                    + domain_adds.len()
                    + domain_updates.len()
                    + domain_deletes.len()) as u32
        }
        _ => 0,
    }
}

/// Redirect targets first: Vercel only accepts a redirect to a domain the project has.
fn ordered(mut domains: Vec<VercelDomainSpec>) -> Vec<VercelDomainSpec> {
    domains.sort_by_key(|d| d.redirect.is_some());
    domains
}

/// The setting of `field` in a patch, from the desired value.
fn patch_field(patch: &mut VercelProjectPatch, field: &str, to: Option<&str>) {
    let value = to.filter(|v| !v.is_empty()).map(str::to_owned);
    match field {
        "framework" => patch.framework = Some(value),
        "rootDirectory" => patch.root_directory = Some(value),
        "installCommand" => patch.install_command = Some(value),
        "buildCommand" => patch.build_command = Some(value),
        "outputDirectory" => patch.output_directory = Some(value),
        "nodeVersion" => patch.node_version = value,
        _ => {}
    }
}

/// Plans every project (pure): `observed` is the team's project list, `domains` the domain
/// lists of the observed projects by id.
pub fn plan_projects(
    desired: &[DesiredProject],
    observed: &[VercelProject],
    domains: &HashMap<String, Vec<VercelDomain>>,
    ctx: &PlanContext<'_>,
) -> PlatformResult<Planned<Work>> {
    let mut objects = Vec::new();
    let mut steps = Vec::new();
    let find = |name: &str| observed.iter().find(|p| p.name == name);
    for want in desired {
        let previous = ctx.previous(&want.name);
        let Some(project) = find(&want.name) else {
            let changes: Vec<FieldChange> = want
                .fields
                .iter()
                .map(|(field, value)| FieldChange {
                    field: field.clone(),
                    from: None,
                    to: Some(match value {
                        Field::Value(v) => v.clone(),
                        _ => "(secret)".into(),
                    }),
                    drift: false,
                    unknown: false,
                })
                .collect();
            let domains: Vec<VercelDomainSpec> = want.domains.values().cloned().collect();
            let writes = 1 + u32::from(want.create.node_version.is_some()) + domains.len() as u32;
            objects.push(ObjectPlan {
                platform: Platform::Vercel,
                kind: KIND.into(),
                name: want.name.clone(),
                id: None,
                action: Action::Create,
                changes,
                drift: Vec::new(),
                writes,
            });
            steps.push(Step::Create {
                spec: want.create.clone(),
                domains: ordered(domains),
            });
            continue;
        };
        let project_domains = domains.get(&project.id).map(Vec::as_slice).unwrap_or(&[]);
        let have = observed_fields(want, project, project_domains);
        for field in ["gitRepository", "productionBranch"] {
            if let Some(Field::Value(wanted)) = want.fields.get(field)
                && have.get(field) != want.fields.get(field)
            {
                let current = match have.get(field) {
                    Some(Field::Value(v)) => v.clone(),
                    _ => "(none)".into(),
                };
                return Err(invalid(format!(
                    "project {:?} {field}: Vercel has {current:?}, the spec asks for {wanted:?}; \
                     Vercel's API links a repository only when it creates the project and cannot \
                     change the link or the production branch (change it in the Vercel dashboard, \
                     or delete the project so that Tether recreates it)",
                    want.name
                )));
            }
        }
        let changes = diff(&want.fields, &have, previous, ctx.drift_possible);
        let applies = |c: &FieldChange| !(c.drift && ctx.drift_policy == DriftPolicy::Report);
        // Every out-of-band change is drift (announced and counted); under `Report` it is
        // also left in place and stays in status.
        let drift: Vec<String> = changes
            .iter()
            .filter(|c| c.drift)
            .map(|c| c.field.clone())
            .collect();
        let mut patch = VercelProjectPatch::default();
        let mut upserts = Vec::new();
        let mut env_deletes = Vec::new();
        let (mut domain_adds, mut domain_updates, mut domain_deletes) =
            (Vec::new(), Vec::new(), Vec::new());
        for change in changes.iter().filter(|c| applies(c)) {
            let field = change.field.as_str();
            if field.starts_with("envVars.") {
                match want.env_vars.get(field) {
                    Some(spec) => upserts.push(spec.clone()),
                    None => {
                        if let Some(var) = project.env_vars.iter().find(|v| {
                            env_field(&v.key, &v.targets, v.git_branch.as_deref()) == field
                        }) {
                            env_deletes.push(var.id.clone());
                        }
                    }
                }
            } else if let Some(host) = field.strip_prefix("domains.") {
                match (want.domains.get(field), &change.from) {
                    (Some(spec), None) => domain_adds.push(spec.clone()),
                    (Some(spec), Some(_)) => domain_updates.push(spec.clone()),
                    (None, _) => domain_deletes.push(host.to_owned()),
                }
            } else {
                patch_field(&mut patch, field, change.to.as_deref());
            }
        }
        let step = Step::Update {
            id: project.id.clone(),
            patch,
            upserts,
            env_deletes,
            domain_adds: ordered(domain_adds),
            domain_updates: ordered(domain_updates),
            domain_deletes,
        };
        let writes = update_writes(&step);
        objects.push(ObjectPlan {
            platform: Platform::Vercel,
            kind: KIND.into(),
            name: want.name.clone(),
            id: Some(project.id.clone()),
            action: if writes == 0 {
                Action::InSync
            } else {
                Action::Update
            },
            changes,
            drift,
            writes,
        });
        steps.push(if writes == 0 { Step::Keep } else { step });
    }
    for gone in ctx
        .previous
        .iter()
        .filter(|o| o.platform == "vercel" && o.kind == KIND)
        .filter(|o| !desired.iter().any(|d| d.name == o.name))
    {
        let id = find(&gone.name)
            .map(|p| p.id.clone())
            .or_else(|| gone.id.clone());
        let action = ctx.removal.clone();
        let delete = action == Action::Delete;
        objects.push(ObjectPlan {
            platform: Platform::Vercel,
            kind: KIND.into(),
            name: gone.name.clone(),
            id: id.clone(),
            action,
            changes: Vec::new(),
            drift: Vec::new(),
            writes: u32::from(delete && id.is_some()),
        });
        steps.push(match id {
            Some(id) if delete => Step::Delete { id },
            _ => Step::Keep,
        });
    }
    Ok(Planned {
        objects,
        work: Work { steps },
    })
}

fn client(input: &SyncInput<'_>) -> VercelClient {
    let team = input.spec.vercel.as_ref().and_then(|v| v.team_id.clone());
    VercelClient::new(input.http.clone(), team)
}

fn scope(input: &SyncInput<'_>) -> String {
    input
        .spec
        .vercel
        .as_ref()
        .and_then(|v| v.team_id.clone())
        .unwrap_or_else(|| "personal".into())
}

fn desired(input: &SyncInput<'_>) -> PlatformResult<Vec<DesiredProject>> {
    let Some(vercel) = input.spec.vercel.as_ref().filter(|_| !input.deleting) else {
        return Ok(Vec::new());
    };
    vercel
        .projects
        .iter()
        .map(|p| {
            desired_project(p, |name, r| {
                input.secrets.get(r).map(|value| {
                    (
                        value.expose().to_owned(),
                        input.fingerprints.fingerprint(name, value),
                    )
                })
            })
        })
        .collect()
}

impl Driver for VercelDriver {
    const PLATFORM: Platform = Platform::Vercel;
    type Work = Work;

    async fn plan(&self, input: &SyncInput<'_>) -> PlatformResult<Planned<Work>> {
        let desired = desired(input)?;
        let client = client(input);
        let projects: Arc<Vec<VercelProject>> = input
            .cache
            .get_or_fetch(&input.key(&scope(input), "projects"), || {
                client.list_projects()
            })
            .await?;
        let mut domains = HashMap::new();
        // Domains are read only for the projects whose spec owns them.
        // Re-read when the project's `updatedAt` moves, else at least every
        // SUBLIST_RECHECK_INTERVALS intervals (see `SyncInput::sub_list_keep`).
        for want in desired.iter().filter(|w| w.owns_domains) {
            if let Some(project) = projects.iter().find(|p| p.name == want.name) {
                let list: Arc<Vec<VercelDomain>> = input
                    .cache
                    .get_or_fetch_unless_changed(
                        &input.key(&project.id, "domains"),
                        project.updated_at.as_deref().unwrap_or_default(),
                        input.sub_list_keep_of(KIND, &want.name),
                        || client.list_domains(&project.id),
                    )
                    .await?;
                domains.insert(project.id.clone(), list.as_ref().clone());
            }
        }
        let ctx = PlanContext {
            previous: input.previous,
            drift_possible: input.drift_possible,
            drift_policy: input.spec.drift_policy,
            removal: input.removal(false),
        };
        plan_projects(&desired, &projects, &domains, &ctx)
    }

    async fn act(&self, input: &SyncInput<'_>, planned: Planned<Work>) -> ActOutcome {
        let client = client(input);
        let desired = desired(input).unwrap_or_default();
        let projects_key = input.key(&scope(input), "projects");
        let mut outcome = ActOutcome::default();
        let mut steps = planned.work.steps.into_iter();
        for plan in &planned.objects {
            let step = steps.next().unwrap_or(Step::Keep);
            let want = desired.iter().find(|d| d.name == plan.name);
            if outcome.error.is_some() {
                // Not reached: keep what status knew.
                if let Some(previous) = input.previous(KIND, &plan.name) {
                    outcome.objects.push(previous.clone());
                }
                continue;
            }
            let event = |reason: &'static str, note: String| SyncEvent {
                reason,
                platform: Platform::Vercel,
                kind: KIND.into(),
                name: plan.name.clone(),
                note,
            };
            let result = run_step(&client, input, plan, step, &projects_key).await;
            let id = match result {
                Ok(id) => id,
                Err(error) => {
                    outcome.error = Some(error);
                    if let Some(previous) = input.previous(KIND, &plan.name) {
                        outcome.objects.push(previous.clone());
                    }
                    continue;
                }
            };
            let adopted = input.previous(KIND, &plan.name).is_none();
            let unapplied: Vec<String> = if input.spec.drift_policy == DriftPolicy::Report {
                plan.drift.clone()
            } else {
                Vec::new()
            };
            match &plan.action {
                Action::Create => outcome.events.push(match &id {
                    Created::New(_) => {
                        event("Created", format!("Created Vercel project {:?}", plan.name))
                    }
                    Created::Existing(_) => event(
                        "Adopted",
                        format!("Adopted the existing Vercel project {:?}", plan.name),
                    ),
                }),
                Action::Update => {
                    if adopted {
                        outcome.events.push(event(
                            "Adopted",
                            format!("Adopted the existing Vercel project {:?}", plan.name),
                        ));
                    }
                    let fields: Vec<&str> = plan
                        .changes
                        .iter()
                        .filter(|c| !unapplied.contains(&c.field))
                        .map(|c| c.field.as_str())
                        .collect();
                    let corrected = plan
                        .changes
                        .iter()
                        .any(|c| c.drift && !unapplied.contains(&c.field));
                    outcome.events.push(if corrected {
                        event(
                            "DriftCorrected",
                            format!(
                                "Reverted out-of-band changes to Vercel project {:?}: {}",
                                plan.name,
                                fields.join(", ")
                            ),
                        )
                    } else {
                        event(
                            "Updated",
                            format!(
                                "Updated Vercel project {:?}: {}",
                                plan.name,
                                fields.join(", ")
                            ),
                        )
                    });
                }
                Action::InSync if adopted => outcome.events.push(event(
                    "Adopted",
                    format!("Adopted the existing Vercel project {:?}", plan.name),
                )),
                Action::Delete => {
                    outcome.events.push(event(
                        "Deleted",
                        format!("Deleted Vercel project {:?}", plan.name),
                    ));
                    progress::removed(plan).await;
                    continue;
                }
                Action::Orphan => {
                    outcome.events.push(event(
                        "Orphaned",
                        format!(
                            "Left Vercel project {:?} in place and stopped managing it",
                            plan.name
                        ),
                    ));
                    progress::removed(plan).await;
                    continue;
                }
                _ => {}
            }
            let mut object = input.managed(plan);
            object.id = id.id().or_else(|| plan.id.clone());
            object.ready = true;
            object.state = Some("ready".into());
            object.url = want.and_then(|w| {
                w.domains
                    .values()
                    .find(|d| d.redirect.is_none() && d.git_branch.is_none())
                    .map(|d| format!("https://{}", d.name))
            });
            // A create that found the name taken wrote nothing: no secret counts as applied,
            // so the next plan writes them.
            let wrote_nothing = plan.action == Action::Create && matches!(id, Created::Existing(_));
            if !wrote_nothing {
                object.secret_fingerprints =
                    fingerprints(want, &unapplied, input.previous(KIND, &plan.name));
            }
            object.drift = unapplied;
            if plan.changes_anything() {
                progress::written(&object).await;
            }
            outcome.objects.push(object);
        }
        outcome
    }
}

/// The fingerprints to keep in status: the desired ones, except for secret fields whose
/// difference was only reported (their last applied fingerprint still stands).
fn fingerprints(
    want: Option<&DesiredProject>,
    unapplied: &[String],
    previous: Option<&ManagedObject>,
) -> BTreeMap<String, String> {
    let Some(want) = want else {
        return BTreeMap::new();
    };
    want.fingerprints
        .iter()
        .filter_map(|(field, fingerprint)| {
            if unapplied.contains(field) {
                previous
                    .and_then(|p| p.secret_fingerprints.get(field))
                    .map(|fp| (field.clone(), fp.clone()))
            } else {
                Some((field.clone(), fingerprint.clone()))
            }
        })
        .collect()
}

enum Created {
    New(String),
    Existing(Option<String>),
}

impl Created {
    fn id(&self) -> Option<String> {
        match self {
            Created::New(id) => Some(id.clone()),
            Created::Existing(id) => id.clone(),
        }
    }
}

async fn run_step(
    client: &VercelClient,
    input: &SyncInput<'_>,
    plan: &ObjectPlan,
    step: Step,
    projects_key: &super::CacheKey,
) -> PlatformResult<Created> {
    let cache = &input.cache;
    match step {
        Step::Keep => Ok(Created::Existing(plan.id.clone())),
        Step::Delete { id } => {
            client.delete_project(&id).await?;
            cache.update::<Vec<VercelProject>, _>(projects_key, |list| list.retain(|p| p.id != id));
            cache.invalidate(&input.key(&id, "domains"));
            Ok(Created::Existing(Some(id)))
        }
        Step::Create { spec, domains } => {
            let ensured = client.ensure_project(&spec).await?;
            let project = ensured.object;
            let id = project.id.clone();
            if !ensured.created {
                // Found by name after all (a stale list): observe afresh and plan again.
                cache.invalidate(projects_key);
                return Ok(Created::Existing(Some(id)));
            }
            let mut added = Vec::new();
            for domain in &domains {
                added.push(client.ensure_domain(&id, domain).await?.object);
            }
            cache.update::<Vec<VercelProject>, _>(projects_key, |list| {
                list.retain(|p| p.id != id);
                list.push(project);
            });
            let _ = cache
                .get_or_fetch(&input.key(&id, "domains"), || async { Ok(added) })
                .await;
            Ok(Created::New(id))
        }
        Step::Update {
            id,
            patch,
            upserts,
            env_deletes,
            domain_adds,
            domain_updates,
            domain_deletes,
        } => {
            let updated = if patch.is_empty() {
                None
            } else {
                Some(client.update_project(&id, &patch).await?)
            };
            let written = client.upsert_env_vars(&id, &upserts).await?;
            for env_id in &env_deletes {
                client.delete_env_var(&id, env_id).await?;
            }
            cache.update::<Vec<VercelProject>, _>(projects_key, |list| {
                if let Some(project) = list.iter_mut().find(|p| p.id == id) {
                    if let Some(updated) = updated {
                        let env = std::mem::take(&mut project.env_vars);
                        *project = VercelProject {
                            env_vars: env,
                            ..updated
                        };
                    }
                    merge_env(&mut project.env_vars, written, &env_deletes);
                }
            });
            let domains_key = input.key(&id, "domains");
            for domain in &domain_adds {
                let added = client.ensure_domain(&id, domain).await?.object;
                cache.update::<Vec<VercelDomain>, _>(&domains_key, |list| {
                    list.retain(|d| d.name != added.name);
                    list.push(added);
                });
            }
            for domain in &domain_updates {
                let changed = client.update_domain(&id, domain).await?;
                cache.update::<Vec<VercelDomain>, _>(&domains_key, |list| {
                    list.retain(|d| d.name != changed.name);
                    list.push(changed);
                });
            }
            for name in &domain_deletes {
                client.delete_domain(&id, name).await?;
                cache.update::<Vec<VercelDomain>, _>(&domains_key, |list| {
                    list.retain(|d| d.name != *name)
                });
            }
            Ok(Created::Existing(Some(id)))
        }
    }
}

/// Applies our own variable writes to a cached project.
fn merge_env(vars: &mut Vec<VercelEnvVar>, written: Vec<VercelEnvVar>, deleted: &[String]) {
    vars.retain(|v| !deleted.contains(&v.id));
    for var in written {
        vars.retain(|v| {
            !(v.key == var.key && v.targets == var.targets && v.git_branch == var.git_branch)
        });
        vars.push(var);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::common::{EnvVarSource, SecretKeyRef};
    use crate::api::environment::{
        GitProvider, GitRepository, VercelDomain as DomainSpec, VercelEnvVar as EnvSpec,
    };
    use crate::platform::VercelGitLink;

    fn spec() -> ProjectSpec {
        ProjectSpec {
            name: "site".into(),
            framework: Some("nextjs".into()),
            git_repository: Some(GitRepository {
                type_: GitProvider::Github,
                repo: "acme/site".into(),
                production_branch: None,
            }),
            build_command: Some("pnpm build".into()),
            env_vars: Some(vec![
                EnvSpec {
                    name: "API_URL".into(),
                    value: Some("https://api".into()),
                    value_from: None,
                    targets: vec![VercelTarget::Preview, VercelTarget::Production],
                    git_branch: None,
                },
                EnvSpec {
                    name: "API_KEY".into(),
                    value: None,
                    value_from: Some(EnvVarSource {
                        secret_key_ref: SecretKeyRef {
                            name: "keys".into(),
                            key: "api".into(),
                        },
                    }),
                    targets: vec![VercelTarget::Production],
                    git_branch: None,
                },
            ]),
            domains: Some(vec![DomainSpec {
                name: "www.example.com".into(),
                redirect: None,
                git_branch: None,
            }]),
            ..ProjectSpec::default()
        }
    }

    fn resolve(spec: &ProjectSpec, secret: &str) -> DesiredProject {
        desired_project(spec, |name, _| {
            Some((secret.to_owned(), format!("fp:{name}:{secret}")))
        })
        .unwrap()
    }

    /// The project as Vercel holds it after creating `spec` with secret value "k1".
    fn observed(spec: &ProjectSpec) -> (VercelProject, Vec<VercelDomain>) {
        let project = VercelProject {
            id: "prj_1".into(),
            name: spec.name.clone(),
            framework: spec.framework.clone(),
            git_repository: spec.git_repository.as_ref().map(|g| VercelGitLink {
                provider: "github".into(),
                repo: g.repo.clone(),
                production_branch: Some("main".into()),
            }),
            root_directory: spec.root_directory.clone(),
            install_command: spec.install_command.clone(),
            build_command: spec.build_command.clone(),
            output_directory: spec.output_directory.clone(),
            node_version: "22.x".into(),
            env_vars: spec
                .env_vars
                .iter()
                .flatten()
                .enumerate()
                .map(|(i, e)| VercelEnvVar {
                    id: format!("env_{i}"),
                    key: e.name.clone(),
                    kind: if e.value.is_some() {
                        VercelEnvType::Plain
                    } else {
                        VercelEnvType::Encrypted
                    },
                    value: e.value.clone(),
                    targets: {
                        let mut t = e.targets.clone();
                        t.sort();
                        t
                    },
                    git_branch: e.git_branch.clone(),
                })
                .collect(),
            updated_at: None,
        };
        let domains = spec
            .domains
            .iter()
            .flatten()
            .map(|d| VercelDomain {
                name: d.name.clone(),
                redirect: d.redirect.clone(),
                git_branch: d.git_branch.clone(),
                verified: true,
            })
            .chain([VercelDomain {
                name: "site.vercel.app".into(),
                redirect: None,
                git_branch: None,
                verified: true,
            }])
            .collect();
        (project, domains)
    }

    /// Status after a sync that applied `desired`.
    fn status(desired: &DesiredProject) -> ManagedObject {
        ManagedObject {
            platform: "vercel".into(),
            kind: KIND.into(),
            name: desired.name.clone(),
            id: Some("prj_1".into()),
            secret_fingerprints: desired.fingerprints.clone(),
            ..ManagedObject::default()
        }
    }

    fn ctx(
        previous: &[ManagedObject],
        drift_possible: bool,
        policy: DriftPolicy,
    ) -> PlanContext<'_> {
        PlanContext {
            previous,
            drift_possible,
            drift_policy: policy,
            removal: Action::Delete,
        }
    }

    fn plan_one(
        desired: &DesiredProject,
        observed: Option<(VercelProject, Vec<VercelDomain>)>,
        ctx: &PlanContext<'_>,
    ) -> Planned<Work> {
        let (projects, domains) = match observed {
            Some((p, d)) => {
                let id = p.id.clone();
                (vec![p], HashMap::from([(id, d)]))
            }
            None => (Vec::new(), HashMap::new()),
        };
        plan_projects(std::slice::from_ref(desired), &projects, &domains, ctx).unwrap()
    }

    #[test]
    fn a_missing_project_is_created_with_its_variables_in_one_request_and_each_domain() {
        let want = resolve(&spec(), "k1");
        let planned = plan_one(&want, None, &ctx(&[], false, DriftPolicy::Correct));
        let plan = &planned.objects[0];
        assert_eq!(plan.action, Action::Create);
        assert_eq!(plan.writes, 2, "create (with env vars) + one domain");
        let key = plan
            .changes
            .iter()
            .find(|c| c.field == "envVars.API_KEY@production")
            .unwrap();
        assert_eq!(key.to.as_deref(), Some("(secret)"), "secret values masked");
        match &planned.work.steps[0] {
            Step::Create { spec, domains } => {
                assert_eq!(spec.env_vars.len(), 2);
                assert_eq!(domains.len(), 1);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_unchanged_project_is_in_sync_with_no_writes_and_vercel_domains_are_ignored() {
        let want = resolve(&spec(), "k1");
        let previous = [status(&want)];
        let planned = plan_one(
            &want,
            Some(observed(&spec())),
            &ctx(&previous, true, DriftPolicy::Correct),
        );
        let plan = &planned.objects[0];
        assert_eq!(plan.action, Action::InSync, "{:?}", plan.changes);
        assert!(plan.changes.is_empty());
        assert_eq!(plan.writes, 0);
    }

    #[test]
    fn a_changed_setting_updates_exactly_that_field_with_one_patch() {
        let mut changed = spec();
        changed.build_command = Some("pnpm build:prod".into());
        let want = resolve(&changed, "k1");
        let previous = [status(&want)];
        let planned = plan_one(
            &want,
            Some(observed(&spec())),
            &ctx(&previous, false, DriftPolicy::Correct),
        );
        let plan = &planned.objects[0];
        assert_eq!(plan.action, Action::Update);
        assert_eq!(plan.changes.len(), 1);
        assert_eq!(plan.changes[0].field, "buildCommand");
        assert!(!plan.changes[0].drift);
        assert_eq!(plan.writes, 1);
        match &planned.work.steps[0] {
            Step::Update { patch, upserts, .. } => {
                assert_eq!(
                    *patch,
                    VercelProjectPatch {
                        build_command: Some(Some("pnpm build:prod".into())),
                        ..VercelProjectPatch::default()
                    }
                );
                assert!(upserts.is_empty());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_existing_project_without_status_is_adopted_and_brought_to_the_spec() {
        let want = resolve(&spec(), "k1");
        let (mut project, domains) = observed(&spec());
        project.build_command = None;
        let planned = plan_one(
            &want,
            Some((project, domains)),
            &ctx(&[], false, DriftPolicy::Correct),
        );
        let plan = &planned.objects[0];
        assert_eq!(plan.id.as_deref(), Some("prj_1"), "found by name");
        assert_eq!(plan.action, Action::Update);
        let fields: Vec<&str> = plan.changes.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(
            fields,
            ["buildCommand", "envVars.API_KEY@production"],
            "no status: the secret's last value is unknown, so it is written once"
        );
    }

    #[test]
    fn drift_is_corrected_under_correct_and_only_listed_under_report() {
        let want = resolve(&spec(), "k1");
        let previous = [status(&want)];
        let (mut project, domains) = observed(&spec());
        project.env_vars[0].value = Some("https://edited".into());
        let corrected = plan_one(
            &want,
            Some((project.clone(), domains.clone())),
            &ctx(&previous, true, DriftPolicy::Correct),
        );
        let plan = &corrected.objects[0];
        assert_eq!(plan.action, Action::Update);
        assert!(plan.changes[0].drift);
        assert_eq!(plan.drift, ["envVars.API_URL@production,preview"]);
        match &corrected.work.steps[0] {
            Step::Update { upserts, .. } => assert_eq!(upserts[0].value, "https://api"),
            other => panic!("{other:?}"),
        }
        let reported = plan_one(
            &want,
            Some((project, domains)),
            &ctx(&previous, true, DriftPolicy::Report),
        );
        let plan = &reported.objects[0];
        assert_eq!(plan.action, Action::InSync);
        assert_eq!(plan.writes, 0);
        assert_eq!(plan.drift, ["envVars.API_URL@production,preview"]);
    }

    #[test]
    fn a_rotated_secret_is_written_again_and_is_not_drift() {
        let before = resolve(&spec(), "k1");
        let previous = [status(&before)];
        let rotated = resolve(&spec(), "k2");
        let planned = plan_one(
            &rotated,
            Some(observed(&spec())),
            &ctx(&previous, true, DriftPolicy::Report),
        );
        let plan = &planned.objects[0];
        assert_eq!(plan.action, Action::Update);
        assert_eq!(plan.changes.len(), 1);
        assert!(!plan.changes[0].drift);
        match &planned.work.steps[0] {
            Step::Update { upserts, .. } => {
                assert_eq!(upserts.len(), 1);
                assert_eq!(upserts[0].value, "k2");
                assert_eq!(upserts[0].kind, VercelEnvType::Encrypted);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn removed_variables_and_domains_are_deleted_and_changed_targets_replace_the_variable() {
        let mut changed = spec();
        changed.env_vars.as_mut().unwrap()[0].targets = vec![VercelTarget::Production];
        changed.domains = Some(Vec::new());
        let want = resolve(&changed, "k1");
        let previous = [status(&want)];
        let planned = plan_one(
            &want,
            Some(observed(&spec())),
            &ctx(&previous, false, DriftPolicy::Correct),
        );
        let plan = &planned.objects[0];
        assert_eq!(
            plan.writes, 3,
            "one upsert, one variable delete, one domain delete"
        );
        match &planned.work.steps[0] {
            Step::Update {
                upserts,
                env_deletes,
                domain_deletes,
                ..
            } => {
                assert_eq!(upserts[0].targets, [VercelTarget::Production]);
                assert_eq!(env_deletes, &["env_0".to_string()]);
                assert_eq!(domain_deletes, &["www.example.com".to_string()]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn env_vars_and_domains_the_spec_leaves_out_are_left_alone() {
        let mut unmanaged = spec();
        unmanaged.env_vars = None;
        unmanaged.domains = None;
        let want = resolve(&unmanaged, "k1");
        assert!(!want.owns_env_vars && !want.owns_domains);
        let previous = [status(&want)];
        // What the full spec left on Vercel stays: nothing to change, with or without drift.
        for drift_possible in [false, true] {
            let planned = plan_one(
                &want,
                Some(observed(&spec())),
                &ctx(&previous, drift_possible, DriftPolicy::Correct),
            );
            let plan = &planned.objects[0];
            assert_eq!(plan.action, Action::InSync, "{:?}", plan.changes);
            assert_eq!(plan.writes, 0);
        }
    }

    #[test]
    fn a_project_removed_from_the_spec_is_deleted_or_orphaned_per_policy() {
        let want = resolve(&spec(), "k1");
        let previous = [status(&want)];
        let observed = vec![observed(&spec()).0];
        for (removal, writes) in [(Action::Delete, 1), (Action::Orphan, 0)] {
            let ctx = PlanContext {
                removal: removal.clone(),
                ..ctx(&previous, false, DriftPolicy::Correct)
            };
            let planned = plan_projects(&[], &observed, &HashMap::new(), &ctx).unwrap();
            assert_eq!(planned.objects[0].action, removal);
            assert_eq!(planned.objects[0].writes, writes);
        }
    }

    #[test]
    fn a_different_repository_or_production_branch_is_a_clear_error() {
        let mut moved = spec();
        moved.git_repository.as_mut().unwrap().repo = "acme/other".into();
        let want = resolve(&moved, "k1");
        let err = plan_projects(
            std::slice::from_ref(&want),
            &[observed(&spec()).0],
            &HashMap::new(),
            &ctx(&[], false, DriftPolicy::Correct),
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("gitRepository")
                && text.contains("acme/other")
                && text.contains("vercel"),
            "{text}"
        );
        let mut branch = spec();
        branch.git_repository.as_mut().unwrap().production_branch = Some("release".into());
        let want = resolve(&branch, "k1");
        let err = plan_projects(
            std::slice::from_ref(&want),
            &[observed(&spec()).0],
            &HashMap::new(),
            &ctx(&[], false, DriftPolicy::Correct),
        )
        .unwrap_err();
        assert!(err.to_string().contains("productionBranch"), "{err}");
    }
}
