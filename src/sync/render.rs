//! Render driver: makes a workspace's services, key-value stores and Postgres databases match
//! the `render` part of an Environment.
//!
//! Pipeline: **observe** (one paged list each of services, key-value stores and Postgres per
//! workspace, shared through the [`ObserveCache`](super::ObserveCache); per service the env
//! vars and custom domains its spec declares, keyed by the service id; datastores still `creating` are re-read
//! by id so readiness is seen without waiting for the list to age) → **plan**
//! ([`plan_render`], pure: desired [`Fields`] per object against observed ones) → **act**
//! (datastores before services, removals after, write-through into the cache).
//!
//! Field rules, so that an unchanged spec never diffs:
//! - optional settings left unset in the spec (instances, commands, health check path,
//!   publish path, eviction policy, disk size, database name and user) are not managed: the
//!   platform's value (or default) is left alone;
//! - `image` is deployed when the spec's image differs from the one this Environment last
//!   rolled out (kept in status): a change of the spec is rolled out (a deploy of the new
//!   image), an image a Release deployed since is not reverted and is not drift;
//! - env vars and custom domains are owned as whole sets (extra ones are removed) when the
//!   spec declares them (`[]` owns an empty set); a service whose spec leaves either out
//!   keeps what it has, and that set is not read; a value
//!   from a Secret is compared by its keyed fingerprint, and values of variables that are
//!   not literals in the spec are never shown;
//! - `type` and `region` (and a Postgres `version`, `databaseName`, `databaseUser`) are fixed
//!   at creation: a difference is reported as a clear error naming the field, after every
//!   other change was applied, never silently ignored;
//! - key-value stores and Postgres databases are stateful: removing them from the spec (or
//!   deleting the Environment) orphans them unless `deletionPolicy: Delete`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use super::{
    ActOutcome, Action, Driver, Field, FieldChange, Fields, ObjectPlan, Planned, SyncEvent,
    SyncInput, diff, progress,
};
use crate::api::common::EnvVar as SpecEnvVar;
use crate::api::environment::{
    CidrBlock, ManagedObject, RenderKeyValue as SpecKeyValue, RenderPostgres as SpecPostgres,
    RenderRegion, RenderService as SpecService, RenderServiceType,
};
use crate::platform::render::{
    DatastoreStatus, RenderCidr, RenderClient, RenderDatastores, RenderKeyValue,
    RenderKeyValuePatch, RenderKeyValueSpec, RenderPostgres, RenderPostgresPatch,
    RenderPostgresSpec, RenderService, RenderServiceKind, RenderServicePatch, RenderServiceSpec,
    RenderServices,
};
use crate::platform::{
    DeploySource, Deployments as _, Domain, EnvVar, Platform, PlatformError, PlatformResult, Token,
};

/// Kind of a Render service in status and plans.
pub const SERVICE: &str = "service";
/// Kind of a Render key-value store.
pub const KEY_VALUE: &str = "keyValue";
/// Kind of a Render Postgres database.
pub const POSTGRES: &str = "postgres";

const ENV_PREFIX: &str = "envVars.";
const DOMAIN_PREFIX: &str = "domains.";
/// The image field of an image-backed service (see the module documentation).
const IMAGE: &str = "image";
/// The value of a custom-domain field: the domain is attached.
const ATTACHED: &str = "attached";

/// The Render [`Driver`].
#[derive(Clone, Copy, Debug, Default)]
pub struct RenderDriver;

/// What observing one workspace found.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// Every service of the workspace.
    pub services: Vec<RenderService>,
    /// Every key-value store of the workspace.
    pub key_values: Vec<RenderKeyValue>,
    /// Every Postgres database of the workspace.
    pub postgres: Vec<RenderPostgres>,
    /// Env vars of the spec's existing services, by service id.
    pub env_vars: HashMap<String, Arc<Vec<EnvVar>>>,
    /// Custom domains of the spec's existing services, by service id.
    pub domains: HashMap<String, Arc<Vec<Domain>>>,
    /// Whether the workspace was listed at all (false when the spec has no `render` part:
    /// removals then go by the ids in status).
    pub listed: bool,
}

/// The typed steps of a Render sync, one item per object, in the order they run.
pub struct RenderWork {
    items: Vec<Item>,
}

impl std::fmt::Debug for RenderWork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.items.iter().map(|i| (i.plan, i.op.verb())))
            .finish()
    }
}

/// The work for one object.
struct Item {
    /// Index of its [`ObjectPlan`].
    plan: usize,
    op: Op,
    /// What status shows when the op succeeds without returning a newer state.
    status: Shown,
    /// A create-only field differs: reported as an error after everything else ran.
    refusal: Option<String>,
    /// Keyed fingerprints of the secret values the spec asks for.
    fingerprints: BTreeMap<String, String>,
    /// Found by name without a status entry: adopted.
    adopted: bool,
    /// Field names of the applied changes, split into drift corrected and spec changes.
    drift_fields: Vec<String>,
    spec_fields: Vec<String>,
    /// The image this Environment has rolled out once the op succeeded.
    image: Option<String>,
}

/// The state shown in status.
#[derive(Clone, Debug, Default)]
struct Shown {
    id: Option<String>,
    url: Option<String>,
    state: Option<String>,
    ready: bool,
}

enum Op {
    Nothing,
    CreateService {
        spec: Box<RenderServiceSpec>,
        domains: Vec<String>,
    },
    UpdateService {
        current: Box<RenderService>,
        patch: RenderServicePatch,
        scale: Option<i32>,
        /// Deploy this image (the spec's image changed).
        deploy_image: Option<String>,
        set_env: Vec<(String, Token)>,
        delete_env: Vec<String>,
        add_domains: Vec<String>,
        remove_domains: Vec<String>,
    },
    CreateKeyValue(RenderKeyValueSpec),
    UpdateKeyValue {
        id: String,
        patch: RenderKeyValuePatch,
    },
    CreatePostgres(RenderPostgresSpec),
    UpdatePostgres {
        id: String,
        patch: RenderPostgresPatch,
    },
    Delete {
        kind: &'static str,
        id: String,
    },
    Orphan,
}

impl Op {
    fn verb(&self) -> &'static str {
        match self {
            Op::Nothing => "nothing",
            Op::CreateService { .. } | Op::CreateKeyValue(_) | Op::CreatePostgres(_) => "create",
            Op::UpdateService { .. } | Op::UpdateKeyValue { .. } | Op::UpdatePostgres { .. } => {
                "update"
            }
            Op::Delete { .. } => "delete",
            Op::Orphan => "orphan",
        }
    }
}

// ---------------------------------------------------------------------------------------
// Desired fields
// ---------------------------------------------------------------------------------------

fn region(region: RenderRegion) -> &'static str {
    match region {
        RenderRegion::Oregon => "oregon",
        RenderRegion::Ohio => "ohio",
        RenderRegion::Virginia => "virginia",
        RenderRegion::Frankfurt => "frankfurt",
        RenderRegion::Singapore => "singapore",
    }
}

fn kind_of(type_: RenderServiceType) -> RenderServiceKind {
    match type_ {
        RenderServiceType::Web => RenderServiceKind::WebService,
        RenderServiceType::Private => RenderServiceKind::PrivateService,
        RenderServiceType::Worker => RenderServiceKind::BackgroundWorker,
        RenderServiceType::Cron => RenderServiceKind::CronJob,
        RenderServiceType::Static => RenderServiceKind::StaticSite,
    }
}

fn value(v: impl Into<String>) -> Field {
    Field::Value(v.into())
}

/// One readable value for a whole allow list: sorted `cidr (description)` entries.
fn allow_list_value(list: impl IntoIterator<Item = (String, String)>) -> String {
    let mut entries: Vec<String> = list
        .into_iter()
        .map(|(block, description)| {
            if description.is_empty() {
                block
            } else {
                format!("{block} ({description})")
            }
        })
        .collect();
    entries.sort();
    if entries.is_empty() {
        "(none)".into()
    } else {
        entries.join(", ")
    }
}

fn spec_cidrs(list: &[CidrBlock]) -> Vec<RenderCidr> {
    list.iter()
        .map(|c| RenderCidr {
            cidr_block: c.cidr_block.clone(),
            description: c.description.clone(),
        })
        .collect()
}

fn cidr_value(list: &[RenderCidr]) -> String {
    allow_list_value(
        list.iter()
            .map(|c| (c.cidr_block.clone(), c.description.clone())),
    )
}

/// A service as the spec wants it.
struct DesiredService {
    fields: Fields,
    create: RenderServiceSpec,
    /// Values of the env vars (literal or resolved), by key.
    values: BTreeMap<String, Token>,
    /// Env var fields whose Secret could not be resolved: left alone this time.
    unresolved: BTreeSet<String>,
    /// Which sets the spec owns (declared, even empty); an undeclared set is left alone.
    owns: OwnedSets,
}

/// The whole-set fields of a service the spec declares.
#[derive(Clone, Copy, Debug, Default)]
struct OwnedSets {
    env_vars: bool,
    domains: bool,
}

impl OwnedSets {
    fn of(s: &SpecService) -> Self {
        Self {
            env_vars: s.env_vars.is_some(),
            domains: s.custom_domains.is_some(),
        }
    }
}

fn desired_service(input: &SyncInput<'_>, owner: &str, s: &SpecService) -> DesiredService {
    let kind = kind_of(s.type_);
    let mut fields = Fields::new();
    fields.insert("type".into(), value(kind.as_api()));
    fields.insert("autoDeploy".into(), value("no"));
    let create = RenderServiceSpec {
        name: s.name.clone(),
        owner_id: owner.to_owned(),
        kind,
        image: s.image.clone(),
        repo: s.repo.clone(),
        branch: s.branch.clone(),
        region: (kind != RenderServiceKind::StaticSite).then(|| region(s.region).to_owned()),
        plan: (kind != RenderServiceKind::StaticSite).then(|| s.plan.clone()),
        instances: s.instances.filter(|_| kind.has_instances()),
        runtime: s.runtime.clone(),
        build_command: s.build_command.clone(),
        start_command: s.start_command.clone(),
        health_check_path: s.health_check_path.clone(),
        schedule: s.schedule.clone(),
        publish_path: s.publish_path.clone(),
        env_vars: Vec::new(),
    };
    if kind != RenderServiceKind::StaticSite {
        fields.insert("region".into(), value(region(s.region)));
        fields.insert("plan".into(), value(&s.plan));
        if let Some(runtime) = create.effective_runtime() {
            fields.insert("runtime".into(), value(runtime));
        }
    }
    if let Some(n) = create.instances {
        fields.insert("instances".into(), value(n.to_string()));
    }
    let optional = [
        ("repo", &s.repo),
        ("branch", &s.branch),
        ("buildCommand", &s.build_command),
        ("startCommand", &s.start_command),
        ("healthCheckPath", &s.health_check_path),
        ("schedule", &s.schedule),
        ("publishPath", &s.publish_path),
    ];
    for (name, v) in optional {
        if let Some(v) = v {
            fields.insert(name.into(), value(v));
        }
    }
    let mut values = BTreeMap::new();
    let mut unresolved = BTreeSet::new();
    for var in s.env_vars.iter().flatten() {
        let field = format!("{ENV_PREFIX}{}", var.name);
        match env_value(input, &field, var) {
            Some((f, token)) => {
                fields.insert(field, f);
                values.insert(var.name.clone(), token);
            }
            None => {
                unresolved.insert(field);
            }
        }
    }
    for domain in s.custom_domains.iter().flatten() {
        fields.insert(format!("{DOMAIN_PREFIX}{domain}"), value(ATTACHED));
    }
    let create = RenderServiceSpec {
        env_vars: values
            .iter()
            .map(|(k, v)| EnvVar {
                key: k.clone(),
                value: Some(v.expose().to_owned()),
                secret: fields
                    .get(&format!("{ENV_PREFIX}{k}"))
                    .is_some_and(|f| matches!(f, Field::Secret { .. })),
            })
            .collect(),
        ..create
    };
    DesiredService {
        fields,
        create,
        values,
        unresolved,
        owns: OwnedSets::of(s),
    }
}

/// The desired field and the value of one env var: literals as readable values, Secret
/// references as their fingerprint. `None` when the Secret value is missing.
fn env_value(input: &SyncInput<'_>, field: &str, var: &SpecEnvVar) -> Option<(Field, Token)> {
    match (&var.value, &var.value_from) {
        (Some(literal), _) => Some((value(literal), Token::new(literal.clone()))),
        (None, Some(from)) => {
            let token = input.secrets.get(&from.secret_key_ref)?.clone();
            let field = input.secret_field(field, &from.secret_key_ref)?;
            Some((field, token))
        }
        (None, None) => None,
    }
}

fn desired_key_value(owner: &str, k: &SpecKeyValue) -> (Fields, RenderKeyValueSpec) {
    let create = RenderKeyValueSpec {
        name: k.name.clone(),
        owner_id: owner.to_owned(),
        plan: k.plan.clone(),
        region: Some(region(k.region).to_owned()),
        maxmemory_policy: k.maxmemory_policy.clone(),
        ip_allow_list: spec_cidrs(&k.ip_allow_list),
    };
    let mut fields = Fields::new();
    fields.insert("plan".into(), value(&k.plan));
    fields.insert("region".into(), value(region(k.region)));
    if let Some(policy) = &k.maxmemory_policy {
        fields.insert("maxmemoryPolicy".into(), value(policy.replace('-', "_")));
    }
    fields.insert(
        "ipAllowList".into(),
        value(cidr_value(&create.ip_allow_list)),
    );
    (fields, create)
}

fn desired_postgres(owner: &str, p: &SpecPostgres) -> (Fields, RenderPostgresSpec) {
    let create = RenderPostgresSpec {
        name: p.name.clone(),
        owner_id: owner.to_owned(),
        plan: p.plan.clone(),
        region: Some(region(p.region).to_owned()),
        version: p.version.clone(),
        disk_size_gb: p.disk_size_gb,
        database_name: p.database_name.clone(),
        database_user: p.database_user.clone(),
        high_availability: p.high_availability,
        ip_allow_list: spec_cidrs(&p.ip_allow_list),
    };
    let mut fields = Fields::new();
    fields.insert("plan".into(), value(&p.plan));
    fields.insert("region".into(), value(region(p.region)));
    fields.insert("version".into(), value(&p.version));
    fields.insert(
        "highAvailability".into(),
        value(p.high_availability.to_string()),
    );
    fields.insert(
        "ipAllowList".into(),
        value(cidr_value(&create.ip_allow_list)),
    );
    if let Some(size) = p.disk_size_gb {
        fields.insert("diskSizeGB".into(), value(size.to_string()));
    }
    if let Some(name) = &p.database_name {
        fields.insert("databaseName".into(), value(name));
    }
    if let Some(user) = &p.database_user {
        fields.insert("databaseUser".into(), value(user));
    }
    (fields, create)
}

// ---------------------------------------------------------------------------------------
// Observed fields
// ---------------------------------------------------------------------------------------

/// Keeps the observed fields the desired side manages: the named ones, and every env var
/// and domain of a set the spec owns, except env vars left alone this time.
fn managed_only(
    mut observed: Fields,
    desired: &Fields,
    unresolved: &BTreeSet<String>,
    owns: OwnedSets,
) -> Fields {
    observed.retain(|k, _| {
        !unresolved.contains(k)
            && (desired.contains_key(k)
                || (owns.env_vars && k.starts_with(ENV_PREFIX))
                || (owns.domains && k.starts_with(DOMAIN_PREFIX)))
    });
    observed
}

fn observed_service(
    input: &SyncInput<'_>,
    svc: &RenderService,
    env: &[EnvVar],
    domains: &[Domain],
    desired: &DesiredService,
) -> Fields {
    let mut fields = Fields::new();
    let kind = svc.kind.map(RenderServiceKind::as_api).unwrap_or("unknown");
    fields.insert("type".into(), value(kind));
    fields.insert(
        "autoDeploy".into(),
        value(if svc.auto_deploy { "yes" } else { "no" }),
    );
    let optional = [
        ("region", &svc.region),
        ("plan", &svc.plan),
        ("runtime", &svc.runtime),
        ("repo", &svc.repo),
        ("branch", &svc.branch),
        ("buildCommand", &svc.build_command),
        ("startCommand", &svc.start_command),
        ("healthCheckPath", &svc.health_check_path),
        ("schedule", &svc.schedule),
        ("publishPath", &svc.publish_path),
    ];
    for (name, v) in optional {
        if let Some(v) = v {
            fields.insert(name.into(), value(v));
        }
    }
    if let Some(n) = svc.num_instances {
        fields.insert("instances".into(), value(n.to_string()));
    }
    for var in env {
        let name = format!("{ENV_PREFIX}{}", var.key);
        let shown = match (desired.fields.get(&name), &var.value) {
            // A literal in the spec: compare (and show) the value.
            (Some(Field::Value(_)), Some(v)) => value(v),
            // Anything else may be secret: compare fingerprints, show nothing.
            (_, Some(v)) => Field::Secret {
                fingerprint: input
                    .fingerprints
                    .fingerprint(&name, &Token::new(v.clone())),
            },
            (_, None) => Field::Present,
        };
        fields.insert(name, shown);
    }
    for domain in domains {
        fields.insert(format!("{DOMAIN_PREFIX}{}", domain.name), value(ATTACHED));
    }
    managed_only(fields, &desired.fields, &desired.unresolved, desired.owns)
}

fn observed_key_value(k: &RenderKeyValue, desired: &Fields) -> Fields {
    let mut fields = Fields::new();
    fields.insert("plan".into(), value(&k.plan));
    fields.insert("region".into(), value(&k.region));
    if let Some(policy) = &k.maxmemory_policy {
        fields.insert("maxmemoryPolicy".into(), value(policy));
    }
    fields.insert("ipAllowList".into(), value(cidr_value(&k.ip_allow_list)));
    managed_only(fields, desired, &BTreeSet::new(), OwnedSets::default())
}

fn observed_postgres(p: &RenderPostgres, desired: &Fields) -> Fields {
    let mut fields = Fields::new();
    fields.insert("plan".into(), value(&p.plan));
    fields.insert("region".into(), value(&p.region));
    fields.insert("version".into(), value(&p.version));
    fields.insert(
        "highAvailability".into(),
        value(p.high_availability.to_string()),
    );
    fields.insert("ipAllowList".into(), value(cidr_value(&p.ip_allow_list)));
    if let Some(size) = p.disk_size_gb {
        fields.insert("diskSizeGB".into(), value(size.to_string()));
    }
    fields.insert("databaseName".into(), value(&p.database_name));
    fields.insert("databaseUser".into(), value(&p.database_user));
    managed_only(fields, desired, &BTreeSet::new(), OwnedSets::default())
}

fn service_shown(s: &RenderService) -> Shown {
    Shown {
        id: Some(s.id.clone()),
        // Only public addresses (a private service's URL is an internal host:port).
        url: s.url.clone().filter(|u| u.starts_with("https://")),
        state: Some(
            if s.suspended {
                "suspended"
            } else {
                "not_suspended"
            }
            .into(),
        ),
        ready: !s.suspended,
    }
}

fn datastore_shown(id: &str, status: &DatastoreStatus) -> Shown {
    Shown {
        id: Some(id.to_owned()),
        url: None,
        state: Some(status.as_str().to_owned()),
        ready: *status == DatastoreStatus::Available,
    }
}

// ---------------------------------------------------------------------------------------
// Plan (pure)
// ---------------------------------------------------------------------------------------

/// Fields fixed at creation, per kind.
fn create_only(kind: &str, field: &str) -> bool {
    match kind {
        SERVICE => matches!(field, "type" | "region"),
        KEY_VALUE => field == "region",
        _ => matches!(
            field,
            "region" | "version" | "databaseName" | "databaseUser"
        ),
    }
}

/// The error text of create-only changes.
fn refusal(kind: &str, name: &str, changes: &[&FieldChange]) -> Option<String> {
    if changes.is_empty() {
        return None;
    }
    let list: Vec<String> = changes.iter().map(|c| c.to_string()).collect();
    Some(format!(
        "{kind} {name}: {} fixed when Render created it ({}); delete it on Render to recreate it, or restore the spec",
        if changes.len() == 1 {
            "this field is"
        } else {
            "these fields are"
        },
        list.join(", ")
    ))
}

/// Builds the plan and items of one object from its field changes.
struct ObjectStep<'a> {
    kind: &'static str,
    name: &'a str,
    id: Option<String>,
    changes: Vec<FieldChange>,
}

impl ObjectStep<'_> {
    /// Changes to write (not reported-only drift, not create-only), and the refusal.
    fn split(&self, input: &SyncInput<'_>) -> (Vec<&FieldChange>, Option<String>) {
        let applicable: Vec<&FieldChange> =
            self.changes.iter().filter(|c| input.applies(c)).collect();
        let (fixed, writable): (Vec<&FieldChange>, Vec<&FieldChange>) = applicable
            .into_iter()
            .partition(|c| create_only(self.kind, &c.field));
        (writable, refusal(self.kind, self.name, &fixed))
    }

    fn drift(&self) -> Vec<String> {
        self.changes
            .iter()
            .filter(|c| c.drift)
            .map(|c| c.field.clone())
            .collect()
    }
}

/// Everything [`plan_render`] needs besides the input.
struct Planner<'i, 'a> {
    input: &'i SyncInput<'a>,
    objects: Vec<ObjectPlan>,
    items: Vec<Item>,
}

impl Planner<'_, '_> {
    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        kind: &'static str,
        name: &str,
        id: Option<String>,
        action: Action,
        changes: Vec<FieldChange>,
        drift: Vec<String>,
        writes: u32,
        item: Item,
    ) {
        self.objects.push(ObjectPlan {
            platform: Platform::Render,
            kind: kind.into(),
            name: name.into(),
            id,
            action,
            changes,
            drift,
            writes,
        });
        let plan = self.objects.len() - 1;
        self.items.push(Item { plan, ..item });
    }

    fn item(op: Op, status: Shown) -> Item {
        Item {
            plan: 0,
            op,
            status,
            refusal: None,
            fingerprints: BTreeMap::new(),
            adopted: false,
            drift_fields: Vec::new(),
            spec_fields: Vec::new(),
            image: None,
        }
    }

    /// An existing object with its changes: update, wait or in sync.
    #[allow(clippy::too_many_arguments)]
    fn existing(
        &mut self,
        step: ObjectStep<'_>,
        op: impl FnOnce(&[&FieldChange]) -> (Op, u32),
        status: Shown,
        fingerprints: BTreeMap<String, String>,
        waiting: Option<String>,
    ) {
        let (writable, refused) = step.split(self.input);
        let adopted = self.input.previous(step.kind, step.name).is_none();
        let drift = step.drift();
        let (action, op, writes) = match (&waiting, writable.is_empty()) {
            (Some(why), _) => (Action::Wait(why.clone()), Op::Nothing, 0),
            (None, true) if refused.is_none() => (Action::InSync, Op::Nothing, 0),
            (None, true) => (Action::Update, Op::Nothing, 0),
            (None, false) => {
                let (op, writes) = op(&writable);
                (Action::Update, op, writes)
            }
        };
        let (drift_fields, spec_fields) = if waiting.is_some() {
            (Vec::new(), Vec::new())
        } else {
            let (d, s): (Vec<&FieldChange>, Vec<&FieldChange>) =
                writable.iter().partition(|c| c.drift);
            (
                d.into_iter().map(|c| c.field.clone()).collect(),
                s.into_iter().map(|c| c.field.clone()).collect(),
            )
        };
        let item = Item {
            refusal: if waiting.is_some() { None } else { refused },
            fingerprints,
            adopted,
            drift_fields,
            spec_fields,
            ..Self::item(op, status)
        };
        let id = step.id.clone();
        self.push(
            step.kind,
            step.name,
            id,
            action,
            step.changes,
            drift,
            writes,
            item,
        );
    }

    /// A new object: every managed field from `(absent)`.
    fn create(&mut self, kind: &'static str, name: &str, desired: &Fields, op: Op, writes: u32) {
        let changes = diff(desired, &Fields::new(), None, false);
        let fingerprints = secret_fingerprints(desired);
        let item = Item {
            fingerprints,
            ..Self::item(op, Shown::default())
        };
        self.push(
            kind,
            name,
            None,
            Action::Create,
            changes,
            Vec::new(),
            writes,
            item,
        );
    }

    /// An object leaving management: delete or orphan per policy; skipped when gone.
    fn remove(&mut self, kind: &'static str, name: &str, id: Option<String>, stateful: bool) {
        let Some(id) = id else {
            return;
        };
        let action = self.input.removal(stateful);
        let (op, writes) = match action {
            Action::Delete => (
                Op::Delete {
                    kind,
                    id: id.clone(),
                },
                1,
            ),
            _ => (Op::Orphan, 0),
        };
        let status = Shown {
            id: Some(id.clone()),
            ..Shown::default()
        };
        let item = Self::item(op, status);
        self.push(
            kind,
            name,
            Some(id),
            action,
            Vec::new(),
            Vec::new(),
            writes,
            item,
        );
    }
}

fn secret_fingerprints(desired: &Fields) -> BTreeMap<String, String> {
    desired
        .iter()
        .filter_map(|(k, f)| match f {
            Field::Secret { fingerprint } => Some((k.clone(), fingerprint.clone())),
            _ => None,
        })
        .collect()
}

/// The desired value of a changed field (`to`), for the readable fields.
fn to(change: &FieldChange) -> Option<&str> {
    change.to.as_deref()
}

/// Plans the Render objects of `input` against `observed` (pure: no I/O).
pub fn plan_render(input: &SyncInput<'_>, observed: &Observed) -> Planned<RenderWork> {
    let mut planner = Planner {
        input,
        objects: Vec::new(),
        items: Vec::new(),
    };
    let deleting = input.deleting;
    let spec = input.spec.render.as_ref();
    let owner = spec.map(|r| r.owner_id.as_str()).unwrap_or_default();
    let mut in_spec: BTreeSet<(&'static str, String)> = BTreeSet::new();
    let mut removals: Vec<(&'static str, String)> = Vec::new();

    // Datastores first: services may depend on them.
    for k in spec.map(|r| r.key_values.as_slice()).unwrap_or_default() {
        if deleting {
            // What goes is what this Environment recorded (below): an object of the same
            // name it never recorded belongs to someone else.
            continue;
        }
        in_spec.insert((KEY_VALUE, k.name.clone()));
        let (desired, create) = desired_key_value(owner, k);
        match observed.key_values.iter().find(|o| o.name == k.name) {
            None => planner.create(KEY_VALUE, &k.name, &desired, Op::CreateKeyValue(create), 1),
            Some(found) => {
                let fields = observed_key_value(found, &desired);
                let previous = input.previous(KEY_VALUE, &k.name);
                let step = ObjectStep {
                    kind: KEY_VALUE,
                    name: &k.name,
                    id: Some(found.id.clone()),
                    changes: diff(&desired, &fields, previous, input.drift_possible),
                };
                let waiting = (found.status == DatastoreStatus::Creating)
                    .then(|| "the key-value store is being created".to_string());
                let id = found.id.clone();
                planner.existing(
                    step,
                    |changes| {
                        let mut patch = RenderKeyValuePatch::default();
                        for c in changes {
                            match c.field.as_str() {
                                "plan" => patch.plan = to(c).map(str::to_owned),
                                "maxmemoryPolicy" => {
                                    patch.maxmemory_policy = to(c).map(str::to_owned)
                                }
                                "ipAllowList" => {
                                    patch.ip_allow_list = Some(spec_cidrs(&k.ip_allow_list))
                                }
                                _ => {}
                            }
                        }
                        (Op::UpdateKeyValue { id, patch }, 1)
                    },
                    datastore_shown(&found.id, &found.status),
                    BTreeMap::new(),
                    waiting,
                );
            }
        }
    }
    for p in spec.map(|r| r.postgres.as_slice()).unwrap_or_default() {
        if deleting {
            // What goes is what this Environment recorded (below): an object of the same
            // name it never recorded belongs to someone else.
            continue;
        }
        in_spec.insert((POSTGRES, p.name.clone()));
        let (desired, create) = desired_postgres(owner, p);
        match observed.postgres.iter().find(|o| o.name == p.name) {
            None => planner.create(POSTGRES, &p.name, &desired, Op::CreatePostgres(create), 1),
            Some(found) => {
                let fields = observed_postgres(found, &desired);
                let previous = input.previous(POSTGRES, &p.name);
                let step = ObjectStep {
                    kind: POSTGRES,
                    name: &p.name,
                    id: Some(found.id.clone()),
                    changes: diff(&desired, &fields, previous, input.drift_possible),
                };
                let waiting = (found.status == DatastoreStatus::Creating)
                    .then(|| "the database is being created".to_string());
                let id = found.id.clone();
                planner.existing(
                    step,
                    |changes| {
                        let mut patch = RenderPostgresPatch::default();
                        for c in changes {
                            match c.field.as_str() {
                                "plan" => patch.plan = to(c).map(str::to_owned),
                                "diskSizeGB" => patch.disk_size_gb = p.disk_size_gb,
                                "highAvailability" => {
                                    patch.high_availability = Some(p.high_availability)
                                }
                                "ipAllowList" => {
                                    patch.ip_allow_list = Some(spec_cidrs(&p.ip_allow_list))
                                }
                                _ => {}
                            }
                        }
                        (Op::UpdatePostgres { id, patch }, 1)
                    },
                    datastore_shown(&found.id, &found.status),
                    BTreeMap::new(),
                    waiting,
                );
            }
        }
    }
    for s in spec.map(|r| r.services.as_slice()).unwrap_or_default() {
        if deleting {
            // What goes is what this Environment recorded (below): an object of the same
            // name it never recorded belongs to someone else.
            continue;
        }
        in_spec.insert((SERVICE, s.name.clone()));
        let desired = desired_service(input, owner, s);
        match observed.services.iter().find(|o| o.name == s.name) {
            None => {
                let domains = s.custom_domains.clone().unwrap_or_default();
                let writes = 1 + domains.len() as u32;
                let op = Op::CreateService {
                    spec: Box::new(desired.create.clone()),
                    domains,
                };
                planner.create(SERVICE, &s.name, &desired.fields, op, writes);
                if let Some(item) = planner.items.last_mut() {
                    item.image = s.image.clone();
                }
            }
            Some(found) => {
                let env = observed
                    .env_vars
                    .get(&found.id)
                    .map(|v| v.as_slice())
                    .unwrap_or_default();
                let domains = observed
                    .domains
                    .get(&found.id)
                    .map(|v| v.as_slice())
                    .unwrap_or_default();
                let mut fields = observed_service(input, found, env, domains, &desired);
                let previous = input.previous(SERVICE, &s.name);
                let mut wanted = desired.fields.clone();
                let rolled_out = previous.and_then(|p| p.image.as_deref());
                if let Some(image) = &s.image
                    && rolled_out != Some(image.as_str())
                {
                    // The spec's image is not yet rolled out by this Environment: compare it
                    // with what runs (nothing recorded: as when adopting).
                    wanted.insert(IMAGE.into(), value(image));
                    if let Some(running) = &found.image {
                        fields.insert(IMAGE.into(), value(running));
                    }
                }
                let mut changes = diff(&wanted, &fields, previous, input.drift_possible);
                for change in changes.iter_mut().filter(|c| c.field == IMAGE) {
                    // The spec's own image, not yet rolled out: never drift.
                    change.drift = false;
                }
                let step = ObjectStep {
                    kind: SERVICE,
                    name: &s.name,
                    id: Some(found.id.clone()),
                    changes,
                };
                let fingerprints = secret_fingerprints(&desired.fields);
                planner.existing(
                    step,
                    |changes| service_update(found, s, &desired, changes),
                    service_shown(found),
                    fingerprints,
                    None,
                );
                if let Some(item) = planner.items.last_mut() {
                    item.image = match &item.op {
                        Op::UpdateService {
                            deploy_image: Some(image),
                            ..
                        } => Some(image.clone()),
                        _ if s.image.is_some() && found.image == s.image => s.image.clone(),
                        _ => rolled_out.map(str::to_owned),
                    };
                }
            }
        }
    }

    // Objects that leave management: removed from the spec, or the Environment is going.
    for previous in input.previous_objects() {
        let key = match previous.kind.as_str() {
            SERVICE => SERVICE,
            KEY_VALUE => KEY_VALUE,
            POSTGRES => POSTGRES,
            _ => continue,
        };
        let entry = (key, previous.name.clone());
        if !in_spec.contains(&entry) && !removals.contains(&entry) {
            removals.push(entry);
        }
    }
    // Services go before the datastores they may use.
    removals.sort_by_key(|(kind, _)| *kind != SERVICE);
    for (kind, name) in removals {
        let found = if observed.listed {
            match kind {
                SERVICE => observed
                    .services
                    .iter()
                    .find(|o| o.name == name)
                    .map(|o| o.id.clone()),
                KEY_VALUE => observed
                    .key_values
                    .iter()
                    .find(|o| o.name == name)
                    .map(|o| o.id.clone()),
                _ => observed
                    .postgres
                    .iter()
                    .find(|o| o.name == name)
                    .map(|o| o.id.clone()),
            }
        } else {
            // Not listed (no `render` part left): the id in status is all there is; a delete
            // of something already gone counts as done.
            input.previous(kind, &name).and_then(|p| p.id.clone())
        };
        planner.remove(kind, &name, found, kind != SERVICE);
    }
    Planned {
        objects: planner.objects,
        work: RenderWork {
            items: planner.items,
        },
    }
}

/// The update op of a service and its write count, from its writable changes.
fn service_update(
    found: &RenderService,
    s: &SpecService,
    desired: &DesiredService,
    changes: &[&FieldChange],
) -> (Op, u32) {
    let mut patch = RenderServicePatch::default();
    let mut scale = None;
    let mut deploy_image = None;
    let (mut set_env, mut delete_env) = (Vec::new(), Vec::new());
    let (mut add_domains, mut remove_domains) = (Vec::new(), Vec::new());
    for c in changes {
        let new = to(c).map(str::to_owned);
        if let Some(key) = c.field.strip_prefix(ENV_PREFIX) {
            match desired.values.get(key) {
                Some(v) => set_env.push((key.to_owned(), v.clone())),
                None => delete_env.push(key.to_owned()),
            }
            continue;
        }
        if let Some(domain) = c.field.strip_prefix(DOMAIN_PREFIX) {
            match new {
                Some(_) => add_domains.push(domain.to_owned()),
                None => remove_domains.push(domain.to_owned()),
            }
            continue;
        }
        match c.field.as_str() {
            "plan" => patch.plan = new,
            "instances" => scale = s.instances,
            "repo" => patch.repo = new,
            "branch" => patch.branch = new,
            "runtime" => {
                patch.runtime = new;
                // A runtime switch may change where the commands live: send them again.
                patch.build_command = s.build_command.clone();
                patch.start_command = s.start_command.clone();
            }
            "buildCommand" => patch.build_command = new,
            "startCommand" => patch.start_command = new,
            "healthCheckPath" => patch.health_check_path = new,
            "schedule" => patch.schedule = new,
            "publishPath" => patch.publish_path = new,
            "autoDeploy" => patch.auto_deploy = Some(new.as_deref() == Some("yes")),
            IMAGE => deploy_image = new,
            _ => {}
        }
    }
    let writes = u32::from(!patch.is_empty())
        + u32::from(scale.is_some())
        + u32::from(deploy_image.is_some())
        + (set_env.len() + delete_env.len() + add_domains.len() + remove_domains.len()) as u32;
    let op = Op::UpdateService {
        current: Box::new(found.clone()),
        patch,
        scale,
        deploy_image,
        set_env,
        delete_env,
        add_domains,
        remove_domains,
    };
    (op, writes)
}

// ---------------------------------------------------------------------------------------
// Observe and act
// ---------------------------------------------------------------------------------------

impl RenderDriver {
    async fn observe(&self, input: &SyncInput<'_>) -> PlatformResult<Observed> {
        let Some(spec) = &input.spec.render else {
            return Ok(Observed::default());
        };
        let client = RenderClient::new(input.http.clone());
        let owner = spec.owner_id.as_str();
        let cache = &input.cache;
        // Between full lists, a re-list asks only for what changed (`updatedAfter`).
        let lister = &client;
        let services = cache
            .get_or_refresh(
                &input.key(owner, "services"),
                || client.list_services(owner, None),
                |previous: Arc<Vec<RenderService>>, since| async move {
                    let changed = lister.list_services_updated_after(owner, since).await?;
                    let mut all = Vec::clone(&previous);
                    for service in changed {
                        replace(&mut all, service);
                    }
                    Ok(all)
                },
            )
            .await?;
        // The workspace's lists are shared by every Environment; this one keeps only the
        // objects its spec names or its status records (planning finds nothing else), so a
        // reconcile does not copy the whole workspace.
        // A kind the spec does not declare and status does not record is not listed at all.
        let wanted =
            |kind: &str, name: &str, named: bool| named || input.previous(kind, name).is_some();
        let any = |kind: &str, declared: bool| {
            declared || input.previous_objects().any(|o| o.kind == kind)
        };
        let kv_key = input.key(owner, "keyValues");
        let key_values = if any(KEY_VALUE, !spec.key_values.is_empty()) {
            cache
                .get_or_fetch(&kv_key, || client.list_key_values(owner, None))
                .await?
        } else {
            Arc::default()
        };
        let mut key_values: Vec<RenderKeyValue> = key_values
            .iter()
            .filter(|o| {
                wanted(
                    KEY_VALUE,
                    &o.name,
                    spec.key_values.iter().any(|s| s.name == o.name),
                )
            })
            .cloned()
            .collect();
        let pg_key = input.key(owner, "postgres");
        let postgres = if any(POSTGRES, !spec.postgres.is_empty()) {
            cache
                .get_or_fetch(&pg_key, || client.list_postgres(owner, None))
                .await?
        } else {
            Arc::default()
        };
        let mut postgres: Vec<RenderPostgres> = postgres
            .iter()
            .filter(|o| {
                wanted(
                    POSTGRES,
                    &o.name,
                    spec.postgres.iter().any(|s| s.name == o.name),
                )
            })
            .cloned()
            .collect();
        if !input.deleting {
            // Datastores of this spec still coming up: the list may be older than their
            // readiness, so read them by id (and write the news through).
            for k in key_values.iter_mut() {
                if k.status == DatastoreStatus::Creating
                    && spec.key_values.iter().any(|s| s.name == k.name)
                {
                    *k = client.get_key_value(&k.id).await?;
                    let fresh = k.clone();
                    cache.update::<Vec<RenderKeyValue>, _>(&kv_key, |all| replace(all, fresh));
                }
            }
            for p in postgres.iter_mut() {
                if p.status == DatastoreStatus::Creating
                    && spec.postgres.iter().any(|s| s.name == p.name)
                {
                    *p = client.get_postgres(&p.id).await?;
                    let fresh = p.clone();
                    cache.update::<Vec<RenderPostgres>, _>(&pg_key, |all| replace(all, fresh));
                }
            }
        }
        let mut observed = Observed {
            services: services
                .iter()
                .filter(|o| {
                    wanted(
                        SERVICE,
                        &o.name,
                        spec.services.iter().any(|s| s.name == o.name),
                    )
                })
                .cloned()
                .collect(),
            key_values,
            postgres,
            listed: true,
            ..Observed::default()
        };
        if input.deleting {
            return Ok(observed);
        }
        // The spec's existing services with the sets it owns: an undeclared set is not read.
        let ours: Vec<(&RenderService, OwnedSets)> = services
            .iter()
            .filter_map(|o| {
                let s = spec.services.iter().find(|s| s.name == o.name)?;
                Some((o, OwnedSets::of(s)))
            })
            .collect();
        let client = &client;
        // A service's sets are read again when its `updatedAt` moves, else at least every
        // SUBLIST_RECHECK_INTERVALS intervals (see `SyncInput::sub_list_keep`).
        let signal = |o: &RenderService| o.updated_at.clone().unwrap_or_default();
        let env_lists = futures::future::try_join_all(ours.iter().map(|(o, owns)| async move {
            if !owns.env_vars {
                return Ok(None);
            }
            let key = input.key(&o.id, "envVars");
            cache
                .get_or_fetch_unless_changed(
                    &key,
                    &signal(o),
                    input.sub_list_keep_of(SERVICE, &o.name),
                    || client.list_env_vars(&o.id),
                )
                .await
                .map(Some)
        }))
        .await?;
        // Only web services and static sites can have custom domains: the others need no
        // read for them.
        let domain_lists = futures::future::try_join_all(ours.iter().map(|(o, owns)| async move {
            if !owns.domains
                || !matches!(
                    o.kind,
                    Some(RenderServiceKind::WebService | RenderServiceKind::StaticSite)
                )
            {
                return Ok(None);
            }
            let key = input.key(&o.id, "domains");
            cache
                .get_or_fetch_unless_changed(
                    &key,
                    &signal(o),
                    input.sub_list_keep_of(SERVICE, &o.name),
                    || client.list_domains(&o.id),
                )
                .await
                .map(Some)
        }))
        .await?;
        for (((o, _), env), domains) in ours.iter().zip(env_lists).zip(domain_lists) {
            if let Some(env) = env {
                observed.env_vars.insert(o.id.clone(), env);
            }
            if let Some(domains) = domains {
                observed.domains.insert(o.id.clone(), domains);
            }
        }
        Ok(observed)
    }
}

/// Something with an id, for write-through.
trait HasId {
    fn id(&self) -> &str;
}

impl HasId for RenderService {
    fn id(&self) -> &str {
        &self.id
    }
}

impl HasId for RenderKeyValue {
    fn id(&self) -> &str {
        &self.id
    }
}

impl HasId for RenderPostgres {
    fn id(&self) -> &str {
        &self.id
    }
}

/// Replaces (or appends) `fresh` in `all` by id.
fn replace<T: HasId>(all: &mut Vec<T>, fresh: T) {
    match all.iter_mut().find(|o| o.id() == fresh.id()) {
        Some(slot) => *slot = fresh,
        None => all.push(fresh),
    }
}

/// What executing one item produced.
struct Done {
    /// The newest state, when the op returned one.
    shown: Option<Shown>,
    /// The object is no longer managed (deleted or orphaned).
    gone: bool,
    created: bool,
}

impl Driver for RenderDriver {
    const PLATFORM: Platform = Platform::Render;
    type Work = RenderWork;

    async fn plan(&self, input: &SyncInput<'_>) -> PlatformResult<Planned<RenderWork>> {
        let observed = self.observe(input).await?;
        Ok(plan_render(input, &observed))
    }

    async fn act(&self, input: &SyncInput<'_>, planned: Planned<RenderWork>) -> ActOutcome {
        let client = RenderClient::new(input.http.clone());
        let mut outcome = ActOutcome::default();
        let mut refusals = Vec::new();
        for item in planned.work.items {
            let plan = &planned.objects[item.plan];
            let previous = input.previous(&plan.kind, &plan.name);
            if outcome.error.is_some() {
                // Not reached: keep what status knew, so the next sync picks it up again.
                let mut object = input.managed(plan);
                apply_shown(&mut object, &item.status);
                object.secret_fingerprints = previous
                    .map(|p| p.secret_fingerprints.clone())
                    .unwrap_or_default();
                object.image = previous.and_then(|p| p.image.clone());
                outcome.objects.push(object);
                continue;
            }
            match execute(&client, input, &item).await {
                Ok(done) => {
                    events(&mut outcome.events, plan, &item, &done);
                    if done.gone {
                        progress::removed(plan).await;
                        continue;
                    }
                    let mut object = input.managed(plan);
                    apply_shown(&mut object, done.shown.as_ref().unwrap_or(&item.status));
                    object.secret_fingerprints = item.fingerprints.clone();
                    object.image = item.image.clone();
                    if plan.changes_anything() {
                        progress::written(&object).await;
                    }
                    outcome.objects.push(object);
                    if let Some(reason) = &item.refusal {
                        refusals.push((plan.kind.clone(), reason.clone()));
                    }
                }
                Err(error) => {
                    let mut object = input.managed(plan);
                    apply_shown(&mut object, &item.status);
                    object.secret_fingerprints = previous
                        .map(|p| p.secret_fingerprints.clone())
                        .unwrap_or_default();
                    object.image = previous.and_then(|p| p.image.clone());
                    outcome.objects.push(object);
                    outcome.error = Some(error);
                }
            }
        }
        if outcome.error.is_none()
            && let Some((kind, reason)) = refusals.into_iter().next()
        {
            outcome.error = Some(PlatformError::Invalid {
                platform: Platform::Render,
                operation: match kind.as_str() {
                    SERVICE => "update_service",
                    KEY_VALUE => "update_key_value",
                    _ => "update_postgres",
                },
                status: None,
                reason,
            });
        }
        outcome
    }
}

fn apply_shown(object: &mut ManagedObject, shown: &Shown) {
    object.id = shown.id.clone().or(object.id.take());
    object.url = shown.url.clone();
    object.state = shown.state.clone();
    object.ready = shown.ready;
}

fn events(out: &mut Vec<SyncEvent>, plan: &ObjectPlan, item: &Item, done: &Done) {
    let mut event = |reason: &'static str, note: String| {
        out.push(SyncEvent {
            reason,
            platform: Platform::Render,
            kind: plan.kind.clone(),
            name: plan.name.clone(),
            note,
        });
    };
    let what = format!("{} {}", plan.kind, plan.name);
    match item.op {
        Op::Delete { .. } => event("Deleted", format!("Deleted Render {what}")),
        Op::Orphan => event(
            "Orphaned",
            format!("Left Render {what} in place and stopped managing it"),
        ),
        Op::CreateService { .. } | Op::CreateKeyValue(_) | Op::CreatePostgres(_) => {
            if done.created {
                event("Created", format!("Created Render {what}"));
            } else {
                event("Adopted", format!("Adopted existing Render {what}"));
            }
        }
        Op::Nothing
        | Op::UpdateService { .. }
        | Op::UpdateKeyValue { .. }
        | Op::UpdatePostgres { .. } => {
            if item.adopted {
                event("Adopted", format!("Adopted existing Render {what}"));
            }
            if matches!(item.op, Op::Nothing) {
                return;
            }
            if !item.spec_fields.is_empty() {
                event(
                    "Updated",
                    format!("Updated Render {what}: {}", item.spec_fields.join(", ")),
                );
            }
            if !item.drift_fields.is_empty() {
                event(
                    "DriftCorrected",
                    format!(
                        "Reverted out-of-band changes of Render {what}: {}",
                        item.drift_fields.join(", ")
                    ),
                );
            }
        }
    }
}

async fn execute(
    client: &RenderClient,
    input: &SyncInput<'_>,
    item: &Item,
) -> PlatformResult<Done> {
    let owner = input
        .spec
        .render
        .as_ref()
        .map(|r| r.owner_id.as_str())
        .unwrap_or_default();
    let cache = &input.cache;
    let services_key = input.key(owner, "services");
    let kv_key = input.key(owner, "keyValues");
    let pg_key = input.key(owner, "postgres");
    let kept = |shown: Shown| Done {
        shown: Some(shown),
        gone: false,
        created: false,
    };
    match &item.op {
        Op::Nothing => Ok(Done {
            shown: None,
            gone: false,
            created: false,
        }),
        Op::Orphan => Ok(Done {
            shown: None,
            gone: true,
            created: false,
        }),
        Op::Delete { kind, id } => {
            match *kind {
                SERVICE => {
                    client.delete_service(id).await?;
                    cache.update::<Vec<RenderService>, _>(&services_key, |all| {
                        all.retain(|o| &o.id != id)
                    });
                }
                KEY_VALUE => {
                    client.delete_key_value(id).await?;
                    cache.update::<Vec<RenderKeyValue>, _>(&kv_key, |all| {
                        all.retain(|o| &o.id != id)
                    });
                }
                _ => {
                    client.delete_postgres(id).await?;
                    cache.update::<Vec<RenderPostgres>, _>(&pg_key, |all| {
                        all.retain(|o| &o.id != id)
                    });
                }
            }
            Ok(Done {
                shown: None,
                gone: true,
                created: false,
            })
        }
        Op::CreateKeyValue(spec) => {
            let ensured = client.ensure_key_value(spec).await?;
            let shown = datastore_shown(&ensured.object.id, &ensured.object.status);
            let created = ensured.created;
            cache.update::<Vec<RenderKeyValue>, _>(&kv_key, |all| replace(all, ensured.object));
            Ok(Done {
                created,
                ..kept(shown)
            })
        }
        Op::CreatePostgres(spec) => {
            let ensured = client.ensure_postgres(spec).await?;
            let shown = datastore_shown(&ensured.object.id, &ensured.object.status);
            let created = ensured.created;
            cache.update::<Vec<RenderPostgres>, _>(&pg_key, |all| replace(all, ensured.object));
            Ok(Done {
                created,
                ..kept(shown)
            })
        }
        Op::UpdateKeyValue { id, patch } => {
            let updated = client.update_key_value(id, patch).await?;
            let shown = datastore_shown(&updated.id, &updated.status);
            cache.update::<Vec<RenderKeyValue>, _>(&kv_key, |all| replace(all, updated));
            Ok(kept(shown))
        }
        Op::UpdatePostgres { id, patch } => {
            let updated = client.update_postgres(id, patch).await?;
            let shown = datastore_shown(&updated.id, &updated.status);
            cache.update::<Vec<RenderPostgres>, _>(&pg_key, |all| replace(all, updated));
            Ok(kept(shown))
        }
        Op::CreateService { spec, domains } => {
            let ensured = client.ensure_service(spec).await?;
            let service = ensured.object;
            for domain in domains {
                client.add_domain(&service.id, domain).await?;
            }
            let env_key = input.key(&service.id, "envVars");
            let domain_key = input.key(&service.id, "domains");
            if ensured.created {
                // Seed the sub-lists with what was just written: the next sync reads nothing.
                let vars = spec.env_vars.clone();
                let _ = cache.get_or_fetch(&env_key, || async { Ok(vars) }).await;
                let attached: Vec<Domain> = domains
                    .iter()
                    .map(|name| Domain {
                        id: name.clone(),
                        name: name.clone(),
                        verified: false,
                    })
                    .collect();
                let _ = cache
                    .get_or_fetch(&domain_key, || async { Ok(attached) })
                    .await;
            } else {
                // Adopted: its env vars and domains are whatever they are; read them next.
                cache.invalidate(&env_key);
                cache.invalidate(&domain_key);
            }
            let shown = service_shown(&service);
            let created = ensured.created;
            cache.update::<Vec<RenderService>, _>(&services_key, |all| replace(all, service));
            Ok(Done {
                created,
                ..kept(shown)
            })
        }
        Op::UpdateService {
            current,
            patch,
            scale,
            deploy_image,
            set_env,
            delete_env,
            add_domains,
            remove_domains,
        } => {
            let mut service = (**current).clone();
            if !patch.is_empty() {
                service = client.update_service(current, patch).await?;
            }
            if let Some(n) = scale {
                client.scale_service(&service.id, *n).await?;
                service.num_instances = Some(*n);
            }
            if let Some(image) = deploy_image {
                // A deploy of an image also makes it the service's image.
                client
                    .deploy(&service.id, &DeploySource::Image(image.clone()))
                    .await?;
                service.image = Some(image.clone());
            }
            let shown = service_shown(&service);
            let id = service.id.clone();
            cache.update::<Vec<RenderService>, _>(&services_key, |all| replace(all, service));
            let env_key = input.key(&id, "envVars");
            for (key, v) in set_env {
                client.set_env_var(&id, key, v.expose()).await?;
                cache.update::<Vec<EnvVar>, _>(&env_key, |vars| {
                    vars.retain(|e| &e.key != key);
                    vars.push(EnvVar {
                        key: key.clone(),
                        value: Some(v.expose().to_owned()),
                        secret: false,
                    });
                });
            }
            for key in delete_env {
                client.delete_env_var(&id, key).await?;
                cache.update::<Vec<EnvVar>, _>(&env_key, |vars| vars.retain(|e| &e.key != key));
            }
            let domain_key = input.key(&id, "domains");
            for name in add_domains {
                client.add_domain(&id, name).await?;
                cache.update::<Vec<Domain>, _>(&domain_key, |all| {
                    all.push(Domain {
                        id: name.clone(),
                        name: name.clone(),
                        verified: false,
                    })
                });
            }
            for name in remove_domains {
                client.delete_domain(&id, name).await?;
                cache.update::<Vec<Domain>, _>(&domain_key, |all| all.retain(|d| &d.name != name));
            }
            Ok(kept(shown))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::common::{DeletionPolicy, DriftPolicy, EnvVarSource, SecretKeyRef};
    use crate::api::environment::{EnvironmentSpec, RenderSpec};
    use crate::platform::PlatformMetrics;
    use crate::sync::{Fingerprinter, Platforms, PlatformsConfig, SecretValues};

    const TOKEN: &str = "rnd_test";

    fn spec() -> EnvironmentSpec {
        EnvironmentSpec {
            render: Some(RenderSpec {
                owner_id: "tea-1".into(),
                services: vec![SpecService {
                    name: "web".into(),
                    type_: RenderServiceType::Web,
                    plan: "starter".into(),
                    image: Some("acme/web:1".into()),
                    env_vars: Some(vec![
                        SpecEnvVar {
                            name: "MODE".into(),
                            value: Some("prod".into()),
                            value_from: None,
                        },
                        SpecEnvVar {
                            name: "API_KEY".into(),
                            value: None,
                            value_from: Some(EnvVarSource {
                                secret_key_ref: SecretKeyRef {
                                    name: "app".into(),
                                    key: "api-key".into(),
                                },
                            }),
                        },
                    ]),
                    custom_domains: Some(vec!["www.example.com".into()]),
                    ..SpecService::default()
                }],
                key_values: vec![SpecKeyValue {
                    name: "cache".into(),
                    plan: "starter".into(),
                    ..SpecKeyValue::default()
                }],
                postgres: vec![SpecPostgres {
                    name: "db".into(),
                    plan: "basic_256mb".into(),
                    version: "16".into(),
                    ..SpecPostgres::default()
                }],
            }),
            ..EnvironmentSpec::default()
        }
    }

    fn secrets(api_key: &str) -> SecretValues {
        let mut s = SecretValues::default();
        s.insert("app", "api-key", Token::new(api_key));
        s
    }

    /// Runs `f` with a `SyncInput` over `spec` (no request is ever sent: planning is pure).
    fn with_input<T>(
        spec: &EnvironmentSpec,
        secrets: &SecretValues,
        previous: &[ManagedObject],
        drift_possible: bool,
        f: impl FnOnce(&SyncInput<'_>) -> T,
    ) -> T {
        let metrics =
            PlatformMetrics::register(&crate::telemetry::MetricsRegistry::new()).expect("metrics");
        let platforms = Platforms::new(PlatformsConfig::default(), metrics);
        let (http, account) = platforms
            .client(Platform::Render, &Token::new(TOKEN))
            .expect("client");
        let input = SyncInput {
            environment: "ns/env",
            spec,
            secrets,
            fingerprints: Fingerprinter::new(&Token::new(TOKEN)),
            previous,
            drift_possible,
            deleting: false,
            http,
            account,
            cache: platforms.cache().clone(),
            now: "2026-11-22T07:00:00Z".into(),
        };
        f(&input)
    }

    fn plan(
        spec: &EnvironmentSpec,
        secrets: &SecretValues,
        previous: &[ManagedObject],
        drift_possible: bool,
        observed: &Observed,
    ) -> Planned<RenderWork> {
        with_input(spec, secrets, previous, drift_possible, |input| {
            plan_render(input, observed)
        })
    }

    fn fingerprint(name: &str, value: &str) -> String {
        Fingerprinter::new(&Token::new(TOKEN)).fingerprint(name, &Token::new(value))
    }

    /// What Render shows after creating [`spec`] (defaults filled in as Render does).
    fn observed(api_key: &str) -> Observed {
        let service = RenderService {
            id: "srv-1".into(),
            name: "web".into(),
            owner_id: "tea-1".into(),
            kind: Some(RenderServiceKind::WebService),
            image: Some("acme/web:7".into()),
            repo: None,
            branch: None,
            region: Some("oregon".into()),
            plan: Some("starter".into()),
            url: Some("https://web-1.onrender.com".into()),
            suspended: false,
            auto_deploy: false,
            num_instances: Some(1),
            runtime: Some("image".into()),
            build_command: None,
            start_command: None,
            health_check_path: None,
            schedule: None,
            publish_path: None,
            updated_at: None,
        };
        let env = vec![
            EnvVar {
                key: "MODE".into(),
                value: Some("prod".into()),
                secret: false,
            },
            EnvVar {
                key: "API_KEY".into(),
                value: Some(api_key.into()),
                secret: false,
            },
        ];
        let domains = vec![Domain {
            id: "cdm-1".into(),
            name: "www.example.com".into(),
            verified: false,
        }];
        Observed {
            services: vec![service],
            key_values: vec![RenderKeyValue {
                id: "red-1".into(),
                name: "cache".into(),
                owner_id: "tea-1".into(),
                plan: "starter".into(),
                region: "oregon".into(),
                status: DatastoreStatus::Available,
                maxmemory_policy: Some("allkeys_lru".into()),
                ip_allow_list: vec![],
                dashboard_url: None,
            }],
            postgres: vec![RenderPostgres {
                id: "dpg-1".into(),
                name: "db".into(),
                owner_id: "tea-1".into(),
                plan: "basic_256mb".into(),
                region: "oregon".into(),
                version: "16".into(),
                status: DatastoreStatus::Available,
                disk_size_gb: Some(15),
                database_name: "db_x1".into(),
                database_user: "db_user".into(),
                high_availability: false,
                ip_allow_list: vec![],
                suspended: false,
                dashboard_url: "https://dashboard.render.com/d/dpg-1".into(),
            }],
            env_vars: HashMap::from([("srv-1".to_string(), Arc::new(env))]),
            domains: HashMap::from([("srv-1".to_string(), Arc::new(domains))]),
            listed: true,
        }
    }

    /// Status after a sync that applied [`spec`] with `api_key`.
    fn previous(api_key: &str) -> Vec<ManagedObject> {
        let object = |kind: &str, name: &str, id: &str| ManagedObject {
            platform: "render".into(),
            kind: kind.into(),
            name: name.into(),
            id: Some(id.into()),
            ..ManagedObject::default()
        };
        let mut web = object(SERVICE, "web", "srv-1");
        // The spec's image was rolled out (a Release deployed acme/web:7 since).
        web.image = Some("acme/web:1".into());
        web.secret_fingerprints.insert(
            "envVars.API_KEY".into(),
            fingerprint("envVars.API_KEY", api_key),
        );
        vec![
            object(KEY_VALUE, "cache", "red-1"),
            object(POSTGRES, "db", "dpg-1"),
            web,
        ]
    }

    fn find<'p>(planned: &'p Planned<RenderWork>, name: &str) -> (&'p ObjectPlan, &'p Item) {
        let index = planned
            .objects
            .iter()
            .position(|o| o.name == name)
            .expect("object planned");
        let item = planned
            .work
            .items
            .iter()
            .find(|i| i.plan == index)
            .expect("work item");
        (&planned.objects[index], item)
    }

    #[test]
    fn from_nothing_every_object_is_created_datastores_first_with_its_write_count() {
        let planned = plan(&spec(), &secrets("k1"), &[], false, &Observed::default());
        let order: Vec<(&str, &str, u32)> = planned
            .objects
            .iter()
            .map(|o| (o.kind.as_str(), o.name.as_str(), o.writes))
            .collect();
        assert_eq!(
            order,
            [
                (KEY_VALUE, "cache", 1),
                (POSTGRES, "db", 1),
                (SERVICE, "web", 2)
            ],
            "env vars ride on the create; each domain is one more write"
        );
        assert!(planned.objects.iter().all(|o| o.action == Action::Create));
        let (web, item) = find(&planned, "web");
        let api_key = web
            .changes
            .iter()
            .find(|c| c.field == "envVars.API_KEY")
            .unwrap();
        assert_eq!(api_key.to.as_deref(), Some("(secret)"));
        assert!(!format!("{:?}{:?}", planned.objects, planned.work).contains("k1"));
        let Op::CreateService { spec, domains } = &item.op else {
            panic!("a service create");
        };
        assert_eq!(spec.env_vars.len(), 2);
        assert!(spec.instances.is_none());
        assert_eq!(domains, &["www.example.com".to_string()]);
        assert_eq!(
            item.fingerprints.get("envVars.API_KEY"),
            Some(&fingerprint("envVars.API_KEY", "k1"))
        );
    }

    #[test]
    fn an_unchanged_spec_is_in_sync_with_no_writes_even_after_a_release_changed_the_image() {
        let planned = plan(
            &spec(),
            &secrets("k1"),
            &previous("k1"),
            true,
            &observed("k1"),
        );
        for object in &planned.objects {
            assert_eq!(object.action, Action::InSync, "{object:?}");
            assert!(object.changes.is_empty(), "{object:?}");
            assert_eq!(object.writes, 0);
        }
        assert!(
            planned
                .work
                .items
                .iter()
                .all(|i| matches!(i.op, Op::Nothing))
        );
    }

    #[test]
    fn a_changed_image_in_the_spec_is_deployed_with_one_write_and_recorded() {
        let mut spec = spec();
        spec.render.as_mut().unwrap().services[0].image = Some("acme/web:2".into());
        let planned = plan(
            &spec,
            &secrets("k1"),
            &previous("k1"),
            true,
            &observed("k1"),
        );
        let (web, item) = find(&planned, "web");
        assert_eq!(web.action, Action::Update);
        assert_eq!(web.writes, 1);
        assert_eq!(
            web.changes
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            ["image: acme/web:7 → acme/web:2"]
        );
        assert!(web.drift.is_empty(), "a spec change is not drift");
        let Op::UpdateService {
            deploy_image,
            patch,
            ..
        } = &item.op
        else {
            panic!("a service update");
        };
        assert_eq!(deploy_image.as_deref(), Some("acme/web:2"));
        assert!(patch.is_empty());
        assert_eq!(item.image.as_deref(), Some("acme/web:2"));

        // Recorded as rolled out: the same spec later, with a Release's image running, is
        // in sync and keeps the record.
        let mut after = previous("k1");
        after[2].image = Some("acme/web:2".into());
        let planned = plan(&spec, &secrets("k1"), &after, true, &observed("k1"));
        let (web, item) = find(&planned, "web");
        assert_eq!(web.action, Action::InSync);
        assert_eq!(item.image.as_deref(), Some("acme/web:2"));
    }

    #[test]
    fn a_changed_plan_updates_exactly_that_field_with_one_write() {
        let mut spec = spec();
        spec.render.as_mut().unwrap().services[0].plan = "pro".into();
        spec.render.as_mut().unwrap().postgres[0].high_availability = true;
        let planned = plan(
            &spec,
            &secrets("k1"),
            &previous("k1"),
            false,
            &observed("k1"),
        );
        let (web, item) = find(&planned, "web");
        assert_eq!(web.action, Action::Update);
        assert_eq!(
            web.changes,
            vec![FieldChange {
                field: "plan".into(),
                from: Some("starter".into()),
                to: Some("pro".into()),
                drift: false,
                unknown: false,
            }]
        );
        assert_eq!(web.writes, 1);
        let Op::UpdateService {
            patch,
            scale,
            set_env,
            ..
        } = &item.op
        else {
            panic!("a service update");
        };
        assert_eq!(
            *patch,
            RenderServicePatch {
                plan: Some("pro".into()),
                ..Default::default()
            }
        );
        assert!(scale.is_none() && set_env.is_empty());
        let (db, item) = find(&planned, "db");
        assert_eq!(db.writes, 1);
        let Op::UpdatePostgres { patch, .. } = &item.op else {
            panic!("a postgres update");
        };
        assert_eq!(patch.high_availability, Some(true));
        assert_eq!(patch.plan, None);
        assert_eq!(find(&planned, "cache").0.action, Action::InSync);
    }

    #[test]
    fn instances_go_through_scale_and_env_vars_and_domains_one_request_each() {
        let mut spec = spec();
        let web = &mut spec.render.as_mut().unwrap().services[0];
        web.instances = Some(3);
        web.env_vars.as_mut().unwrap().remove(0);
        web.custom_domains = Some(vec!["api.example.com".into()]);
        let planned = plan(
            &spec,
            &secrets("k1"),
            &previous("k1"),
            false,
            &observed("k1"),
        );
        let (web, item) = find(&planned, "web");
        let Op::UpdateService {
            patch,
            scale,
            delete_env,
            add_domains,
            remove_domains,
            ..
        } = &item.op
        else {
            panic!("a service update");
        };
        assert!(patch.is_empty());
        assert_eq!(*scale, Some(3));
        assert_eq!(delete_env, &["MODE".to_string()]);
        assert_eq!(add_domains, &["api.example.com".to_string()]);
        assert_eq!(remove_domains, &["www.example.com".to_string()]);
        assert_eq!(web.writes, 4);
    }

    #[test]
    fn drift_is_corrected_under_correct_and_only_listed_under_report() {
        let mut drifted = observed("k1");
        drifted.services[0].plan = Some("pro".into());
        drifted.key_values[0].maxmemory_policy = Some("noeviction".into());
        let planned = plan(&spec(), &secrets("k1"), &previous("k1"), true, &drifted);
        let (web, item) = find(&planned, "web");
        assert_eq!(web.action, Action::Update);
        assert_eq!(web.drift, vec!["plan".to_string()]);
        assert_eq!(item.drift_fields, vec!["plan".to_string()]);
        assert_eq!(web.writes, 1);
        assert_eq!(
            find(&planned, "cache").0.action,
            Action::InSync,
            "an unmanaged setting changing is not drift"
        );

        let mut report = spec();
        report.drift_policy = DriftPolicy::Report;
        let planned = plan(&report, &secrets("k1"), &previous("k1"), true, &drifted);
        let (web, item) = find(&planned, "web");
        assert_eq!(web.action, Action::InSync);
        assert_eq!(web.drift, vec!["plan".to_string()]);
        assert_eq!(web.writes, 0);
        assert!(matches!(item.op, Op::Nothing));
    }

    #[test]
    fn a_rotated_secret_is_written_again_and_is_not_drift_while_an_edited_one_is() {
        // The Kubernetes Secret changed: same status, new value.
        let planned = plan(
            &spec(),
            &secrets("k2"),
            &previous("k1"),
            true,
            &observed("k1"),
        );
        let (web, item) = find(&planned, "web");
        assert_eq!(web.changes.len(), 1);
        assert_eq!(web.changes[0].field, "envVars.API_KEY");
        assert!(!web.changes[0].drift, "a rotation is not drift");
        assert_eq!(
            web.changes[0].to_string(),
            "envVars.API_KEY: (secret) → (secret)"
        );
        let Op::UpdateService { set_env, .. } = &item.op else {
            panic!("a service update");
        };
        assert_eq!(set_env.len(), 1);
        assert_eq!(set_env[0].1.expose(), "k2");
        assert_eq!(
            item.fingerprints["envVars.API_KEY"],
            fingerprint("envVars.API_KEY", "k2")
        );
        // Someone edited the value on Render: drift.
        let planned = plan(
            &spec(),
            &secrets("k1"),
            &previous("k1"),
            true,
            &observed("edited"),
        );
        assert_eq!(
            find(&planned, "web").0.drift,
            vec!["envVars.API_KEY".to_string()]
        );
    }

    #[test]
    fn objects_found_by_name_without_status_are_adopted_not_created() {
        let mut spec = spec();
        // Adopted as running: the spec names the image the service runs.
        spec.render.as_mut().unwrap().services[0].image = Some("acme/web:7".into());
        let planned = plan(&spec, &secrets("k1"), &[], true, &observed("k1"));
        for object in &planned.objects {
            assert_eq!(object.action, Action::InSync, "{object:?}");
            assert!(object.drift.is_empty(), "adoption is not drift");
        }
        assert!(planned.work.items.iter().all(|i| i.adopted));
    }

    #[test]
    fn removed_objects_are_deleted_or_orphaned_per_policy_and_stateful_ones_kept_by_default() {
        let mut bare = spec();
        bare.render.as_mut().unwrap().services.clear();
        bare.render.as_mut().unwrap().key_values.clear();
        let cases = [
            (None, Action::Delete, Action::Orphan),
            (Some(DeletionPolicy::Delete), Action::Delete, Action::Delete),
            (Some(DeletionPolicy::Orphan), Action::Orphan, Action::Orphan),
        ];
        for (policy, service, cache) in cases {
            bare.deletion_policy = policy;
            let planned = plan(
                &bare,
                &secrets("k1"),
                &previous("k1"),
                true,
                &observed("k1"),
            );
            let (web, _) = find(&planned, "web");
            assert_eq!(web.action, service, "{policy:?}");
            assert_eq!(web.writes, u32::from(service == Action::Delete));
            assert_eq!(find(&planned, "cache").0.action, cache, "{policy:?}");
            assert_eq!(find(&planned, "db").0.action, Action::InSync);
        }
        // Already gone from Render: nothing to plan.
        let mut gone = observed("k1");
        gone.services.clear();
        let planned = plan(&bare, &secrets("k1"), &previous("k1"), true, &gone);
        assert!(planned.objects.iter().all(|o| o.name != "web"));
    }

    /// `input` for an Environment being deleted.
    fn deleting<'a>(input: &SyncInput<'a>) -> SyncInput<'a> {
        SyncInput {
            deleting: true,
            http: input.http.clone(),
            cache: input.cache.clone(),
            account: input.account.clone(),
            fingerprints: input.fingerprints.clone(),
            now: input.now.clone(),
            ..*input
        }
    }

    #[test]
    fn deleting_the_environment_removes_services_before_datastores() {
        let spec = EnvironmentSpec {
            deletion_policy: Some(DeletionPolicy::Delete),
            ..spec()
        };
        let planned = with_input(&spec, &secrets("k1"), &previous("k1"), true, |input| {
            plan_render(&deleting(input), &observed("k1"))
        });
        let order: Vec<(&str, &Action)> = planned
            .objects
            .iter()
            .map(|o| (o.name.as_str(), &o.action))
            .collect();
        assert_eq!(
            order,
            [
                ("web", &Action::Delete),
                ("cache", &Action::Delete),
                ("db", &Action::Delete)
            ]
        );
        // Objects of the spec's names that this Environment never recorded are someone
        // else's: deleting it leaves them.
        let untouched = with_input(&spec, &secrets("k1"), &[], true, |input| {
            plan_render(&deleting(input), &observed("k1"))
        });
        assert!(untouched.objects.is_empty(), "{:?}", untouched.objects);
    }

    #[test]
    fn a_region_change_is_refused_with_a_clear_reason_and_no_write() {
        let mut moved = spec();
        moved.render.as_mut().unwrap().services[0].region = RenderRegion::Frankfurt;
        moved.render.as_mut().unwrap().postgres[0].version = "17".into();
        let planned = plan(
            &moved,
            &secrets("k1"),
            &previous("k1"),
            false,
            &observed("k1"),
        );
        let (web, item) = find(&planned, "web");
        assert_eq!(web.action, Action::Update);
        assert_eq!(web.changes[0].field, "region");
        assert_eq!(web.writes, 0);
        assert!(matches!(item.op, Op::Nothing));
        let reason = item.refusal.as_deref().unwrap();
        assert!(
            reason.contains("service web")
                && reason.contains("region: oregon → frankfurt")
                && reason.contains("fixed when Render created it"),
            "{reason}"
        );
        let (_, item) = find(&planned, "db");
        assert!(
            item.refusal
                .as_deref()
                .unwrap()
                .contains("version: 16 → 17")
        );
    }

    #[test]
    fn a_datastore_being_created_waits_and_is_not_ready() {
        let mut creating = observed("k1");
        creating.postgres[0].status = DatastoreStatus::Creating;
        creating.postgres[0].plan = "free".into();
        let planned = plan(&spec(), &secrets("k1"), &previous("k1"), false, &creating);
        let (db, item) = find(&planned, "db");
        assert!(matches!(db.action, Action::Wait(_)), "{db:?}");
        assert_eq!(db.writes, 0);
        assert!(!item.status.ready);
        assert_eq!(item.status.state.as_deref(), Some("creating"));
    }
}
