//! `tether plan --manifests DIR`: what the Environment controller would do to the platforms,
//! without doing it — for a pull request, or before a first `tether run`.
//!
//! **load → resolve → plan → print**:
//!
//! - *load*: every `*.yaml`/`*.yml` under the directory is scanned and parsed as `tether run`
//!   does ([`crate::standalone::manifests`]) and each document admitted against the CRDs as
//!   `tether validate` does ([`crate::schema::validate::admit_document`]), so defaults and CEL
//!   rules apply; any problem stops here, named by file, document and field.
//! - *resolve*: every Secret key an Environment names ([`references`]) is looked up in the
//!   environment (`TETHER_SECRET_<SECRET>_<KEY>`), then the `--secrets` files, then the
//!   Secret manifests of the directory ([`SecretSource`]); a missing one stops here, named by
//!   Secret, key and field.
//! - *plan*: each Environment is synced in [`Mode::Plan`] (observe and plan, no writes),
//!   against the last applied state when one is given ([`State`]: the Environments and their
//!   status, read from the cluster with `--from-cluster` or from a `kubectl get env -o yaml`
//!   export with `--state`): fingerprints of applied secrets make unchanged write-only secrets
//!   compare equal, objects removed from the manifests show as deletes or orphans, and
//!   Environments removed from the manifests show their cleanup. Without a state it plans as if
//!   nothing had been applied; a comparison that needs the state is shown as unknown.
//! - *print*: a [`PlanReport`], per Environment and per object, with the field-level
//!   changes (secret values are masked by [`super::diff`]) and a summary line; exit code 0
//!   when nothing would change, 2 when something would, 1 on any error.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Secret;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::run::{Failure, Mode, PlatformSync, Request, sync};
use super::{Action, ObjectPlan, Platforms, PlatformsConfig, SecretValues, default_endpoint};
use crate::api::{Environment, EnvironmentSpec};
use crate::controller::environment::references;
use crate::controller::references::RefKind;
use crate::platform::{Platform, PlatformMetrics, Token};
use crate::schema::SchemaRegistry;
use crate::schema::validate::admit_document;
use crate::standalone::manifests::{self, ManifestObject, SourceFile};
use crate::telemetry::{LogFormat, MetricsRegistry, init_tracing};

/// The platform request counter whose total is the reads a plan made.
const REQUESTS_METRIC: &str = "tether_platform_requests_total";
/// Time scale of the in-process sandbox (`--sandbox`): a plan only reads, so it only
/// shortens the client's rate-limit windows the way `tether run --sandbox` does.
const SANDBOX_TIME_SCALE: f64 = 10.0;
/// The namespace of a manifest that names none (kubectl's default).
const DEFAULT_NAMESPACE: &str = "default";

/// Flags of `tether plan`.
#[derive(Debug, Clone, clap::Args)]
pub struct PlanArgs {
    /// Directory of manifests (`*.yaml`, `*.yml`, searched recursively).
    #[arg(long, value_name = "DIR")]
    pub manifests: PathBuf,
    /// A YAML file of Secret manifests (repeatable; later files win). Its keys override
    /// the Secret manifests of the directory; `TETHER_SECRET_<SECRET>_<KEY>` environment
    /// variables override both.
    #[arg(long = "secrets", value_name = "FILE")]
    pub secrets: Vec<PathBuf>,
    /// Plan against the built-in sandbox of the four platform APIs, started in process
    /// (it accepts the tokens `sandbox-<platform>-token`, as in the samples; it starts
    /// empty, so everything is to be created).
    #[arg(long)]
    pub sandbox: bool,
    /// Compare with the last applied state in the cluster: the Environments and their status,
    /// read with `--kubeconfig`, `$KUBECONFIG`, `~/.kube/config` or the in-cluster account.
    #[arg(long, conflicts_with = "state")]
    pub from_cluster: bool,
    /// The kubeconfig of `--from-cluster`.
    #[arg(long, value_name = "FILE", requires = "from_cluster")]
    pub kubeconfig: Option<PathBuf>,
    /// Compare with an exported state: the output of `kubectl get env -A -o yaml` (a List, or
    /// Environment documents).
    #[arg(long, value_name = "FILE")]
    pub state: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
    /// Log filter for stderr logs, in RUST_LOG syntax.
    #[arg(long, default_value = "warn")]
    pub log_level: String,
    /// Render API base URL (ignored with `--sandbox`).
    #[arg(long, env = "TETHER_RENDER_URL", default_value = default_endpoint(Platform::Render))]
    pub render_url: String,
    /// Vercel API base URL (ignored with `--sandbox`).
    #[arg(long, env = "TETHER_VERCEL_URL", default_value = default_endpoint(Platform::Vercel))]
    pub vercel_url: String,
    /// Fly.io Machines API base URL (ignored with `--sandbox`).
    #[arg(long, env = "TETHER_FLY_URL", default_value = default_endpoint(Platform::Fly))]
    pub fly_url: String,
    /// Supabase Management API base URL (ignored with `--sandbox`).
    #[arg(long, env = "TETHER_SUPABASE_URL", default_value = default_endpoint(Platform::Supabase))]
    pub supabase_url: String,
}

impl PlanArgs {
    /// The platform settings of the endpoint flags. A plan is a command a person (or a CI
    /// job) waits for: an unreachable platform fails it within seconds (two retries), where
    /// the controller keeps retrying for minutes.
    pub fn platforms_config(&self) -> PlatformsConfig {
        let defaults = PlatformsConfig::default();
        PlatformsConfig {
            endpoints: [
                (Platform::Render, self.render_url.clone()),
                (Platform::Vercel, self.vercel_url.clone()),
                (Platform::Fly, self.fly_url.clone()),
                (Platform::Supabase, self.supabase_url.clone()),
            ]
            .into(),
            http: defaults
                .http
                .into_iter()
                .map(|(platform, http)| {
                    (
                        platform,
                        crate::platform::HttpConfig {
                            max_retries: 2,
                            max_backoff: std::time::Duration::from_secs(1),
                            ..http
                        },
                    )
                })
                .collect(),
            ..defaults
        }
    }
}

/// How the plan is printed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// Lines for a terminal or a pull-request comment.
    #[default]
    Text,
    /// One JSON document.
    Json,
}

/// Why `tether plan` could not produce a plan.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// `--manifests` could not be listed.
    #[error(transparent)]
    ScanManifests(#[from] manifests::ScanError),
    /// A `--secrets` file could not be read.
    #[error("failed to read secrets file {path}: {source}")]
    ReadSecrets {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The CRDs could not be compiled (a bug).
    #[error("failed to compile the Tether CRDs: {0}")]
    Schema(#[from] crate::schema::SchemaError),
    /// Manifests that the API server would reject, or that cannot be read.
    #[error("failed to load the manifests:\n{}", lines(.0))]
    LoadManifests(Vec<String>),
    /// Secret keys the Environments name that no source provides.
    #[error("failed to resolve the Secrets the Environments reference:\n{}", lines(.0))]
    ResolveSecrets(Vec<MissingSecret>),
    /// The platform metrics could not be registered (a bug).
    #[error("failed to register the platform metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// `--sandbox` was given but the sandbox did not start.
    #[error("failed to start the platform sandbox: {0}")]
    Sandbox(#[from] crate::sandbox::SandboxError),
    /// The async runtime could not be built.
    #[error("failed to start the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// The last applied state could not be read.
    #[error("failed to read the last applied state from {source_name}: {reason}")]
    State {
        /// The file, or `the cluster`.
        source_name: String,
        /// Why.
        reason: String,
    },
    /// Stdout could not be written.
    #[error("failed to write the plan to stdout: {0}")]
    Output(#[source] std::io::Error),
}

fn lines<T: fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(|i| format!("  {i}"))
        .collect::<Vec<_>>()
        .join("\n")
}

// ---------------------------------------------------------------------------------------
// Load
// ---------------------------------------------------------------------------------------

/// What the manifests hold for a plan: the Environments (admitted, defaults applied) and
/// the Secret manifests.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Environments, sorted by namespace and name.
    pub environments: Vec<Environment>,
    /// Secret values from the directory and the `--secrets` files.
    pub secrets: SecretSource,
}

/// Loads the manifest directory and the `--secrets` files; every problem found is
/// reported at once, as `file:document: Kind/name: field: message`.
pub fn load(dir: &Path, secret_files: &[PathBuf]) -> Result<Loaded, PlanError> {
    let registry = SchemaRegistry::new(&crate::api::crds())?;
    let mut problems = Vec::new();
    let mut loaded = Loaded::default();
    let mut seen = BTreeSet::new();
    for path in manifests::scan(dir, None)? {
        let file = SourceFile::read(dir, &path);
        for object in admitted(&registry, file, &mut problems) {
            let kind = object.gvk.kind.as_str();
            let namespace = object.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE);
            let at = format!("{path}:{}: {kind}/{}", object.index, object.name);
            let is_environment = object.gvk.group == "tether.dev" && kind == "Environment";
            let is_secret = object.gvk.group.is_empty() && kind == "Secret";
            if (is_environment || is_secret)
                && !seen.insert((kind.to_string(), namespace.to_string(), object.name.clone()))
            {
                problems.push(format!(
                    "{at}: metadata.name: Duplicate value: {kind} {namespace}/{} is defined twice",
                    object.name
                ));
                continue;
            }
            if is_environment {
                match serde_json::from_value::<Environment>(object.body) {
                    Ok(mut env) => {
                        env.metadata.namespace = Some(namespace.to_string());
                        loaded.environments.push(env);
                    }
                    Err(e) => problems.push(format!("{at}: {e}")),
                }
            } else if is_secret {
                loaded
                    .secrets
                    .add(Layer::Directory, &at, namespace, &object, &mut problems);
            }
        }
    }
    for file in secret_files {
        let content = std::fs::read_to_string(file).map_err(|source| PlanError::ReadSecrets {
            path: file.clone(),
            source,
        })?;
        let path = file.display().to_string();
        let file = SourceFile::parse(path.clone(), content);
        for object in admitted(&registry, file, &mut problems) {
            let namespace = object.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE);
            let at = format!(
                "{path}:{}: {}/{}",
                object.index, object.gvk.kind, object.name
            );
            if object.gvk.group.is_empty() && object.gvk.kind == "Secret" {
                loaded
                    .secrets
                    .add(Layer::SecretsFile, &at, namespace, &object, &mut problems);
            } else {
                problems.push(format!(
                    "{at}: kind: Unsupported value: {:?}: a --secrets file holds only Secrets",
                    object.gvk.kind
                ));
            }
        }
    }
    if !problems.is_empty() {
        return Err(PlanError::LoadManifests(problems));
    }
    loaded.environments.sort_by_key(key);
    Ok(loaded)
}

/// The documents of `file` that parse and pass admission (defaults applied); the others
/// add their problems.
fn admitted(
    registry: &SchemaRegistry,
    file: SourceFile,
    problems: &mut Vec<String>,
) -> Vec<ManifestObject> {
    let path = file.path;
    let documents = match file.parsed {
        Ok(documents) => documents,
        Err(e) => {
            problems.push(format!("{path}: {e}"));
            return Vec::new();
        }
    };
    let mut objects = Vec::new();
    for document in documents {
        let mut object = match document {
            Ok(object) => object,
            Err(e) => {
                problems.push(format!("{path}:{}: {e}", e.index));
                continue;
            }
        };
        let (name, admission) = admit_document(registry, &mut object.body);
        match admission {
            Ok(warnings) => {
                for warning in warnings {
                    tracing::warn!("{path}:{}: {name}: {warning}", object.index);
                }
                objects.push(object);
            }
            Err(causes) => problems.extend(
                causes
                    .iter()
                    .map(|c| format!("{path}:{}: {name}: {c}", object.index)),
            ),
        }
    }
    objects
}

/// `namespace/name` of an Environment.
fn key(env: &Environment) -> String {
    format!(
        "{}/{}",
        env.metadata
            .namespace
            .as_deref()
            .unwrap_or(DEFAULT_NAMESPACE),
        env.metadata.name.as_deref().unwrap_or_default()
    )
}

// ---------------------------------------------------------------------------------------
// Resolve
// ---------------------------------------------------------------------------------------

/// Where a Secret value came from; later layers win.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Layer {
    /// A Secret manifest in the manifest directory.
    Directory,
    /// A Secret manifest in a `--secrets` file.
    SecretsFile,
}

/// The Secret values a plan can use, from the Secret manifests of the directory and of the
/// `--secrets` files (values live only in memory, as [`Token`]s).
#[derive(Debug, Default)]
pub struct SecretSource {
    /// (namespace, name) → key → (layer, value).
    secrets: HashMap<(String, String), HashMap<String, (Layer, Token)>>,
}

impl SecretSource {
    /// Adds the keys of one Secret manifest (`data`, base64, and `stringData`, which wins
    /// as the API server merges it).
    fn add(
        &mut self,
        layer: Layer,
        at: &str,
        namespace: &str,
        object: &ManifestObject,
        problems: &mut Vec<String>,
    ) {
        let secret: Secret = match serde_json::from_value(object.body.clone()) {
            Ok(secret) => secret,
            // Admission checked the shape; what is left (bad base64) names no value.
            Err(_) => {
                problems.push(format!("{at}: data: must be a map of base64 strings"));
                return;
            }
        };
        let keys = self
            .secrets
            .entry((namespace.to_string(), object.name.clone()))
            .or_default();
        let mut put = |key: String, value: Token| match keys.get(&key) {
            Some((existing, _)) if *existing > layer => {}
            _ => {
                keys.insert(key, (layer, value));
            }
        };
        for (key, bytes) in secret.data.unwrap_or_default() {
            match String::from_utf8(bytes.0) {
                Ok(text) => put(key, Token::new(text)),
                Err(_) => problems.push(format!("{at}: data[{key}]: must be UTF-8 text")),
            }
        }
        for (key, text) in secret.string_data.unwrap_or_default() {
            put(key, Token::new(text));
        }
    }

    /// Resolves every Secret key `spec` (of an Environment in `namespace`) references:
    /// `env` (the process environment, `TETHER_SECRET_<SECRET>_<KEY>`) first, then the
    /// `--secrets` files, then the directory. Names every key that none provides.
    pub fn resolve(
        &self,
        environment: &str,
        namespace: &str,
        spec: &EnvironmentSpec,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<SecretValues, Vec<MissingSecret>> {
        let mut values = SecretValues::default();
        let mut missing = Vec::new();
        for reference in references(spec) {
            let (RefKind::Secret, Some(key)) = (reference.kind, reference.key.as_deref()) else {
                continue;
            };
            let variable = secret_env_var(&reference.name, key);
            let stored = self
                .secrets
                .get(&(namespace.to_string(), reference.name.clone()));
            match (env(&variable), stored.and_then(|keys| keys.get(key))) {
                (Some(value), _) => values.insert(&reference.name, key, Token::new(value)),
                (None, Some((_, value))) => values.insert(&reference.name, key, value.clone()),
                (None, None) => missing.push(MissingSecret {
                    environment: environment.to_string(),
                    secret: reference.name.clone(),
                    key: key.to_string(),
                    field: reference.field.clone(),
                    secret_found: stored.is_some(),
                    variable,
                }),
            }
        }
        if missing.is_empty() {
            Ok(values)
        } else {
            Err(missing)
        }
    }
}

/// The environment variable that provides key `key` of Secret `secret`:
/// `TETHER_SECRET_<SECRET>_<KEY>`, upper-cased, every other character than a letter or a
/// digit replaced by `_`.
pub fn secret_env_var(secret: &str, key: &str) -> String {
    let clean = |s: &str| {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_uppercase()
                } else {
                    '_'
                }
            })
            .collect::<String>()
    };
    format!("TETHER_SECRET_{}_{}", clean(secret), clean(key))
}

/// A Secret key an Environment references that no source provides.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MissingSecret {
    /// `namespace/name` of the Environment.
    pub environment: String,
    /// Secret name.
    pub secret: String,
    /// Key.
    pub key: String,
    /// The spec field that references it.
    pub field: String,
    /// The Secret is in the manifests but lacks the key.
    pub secret_found: bool,
    /// The environment variable that would provide it.
    pub variable: String,
}

impl fmt::Display for MissingSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Environment {}: {}: Secret {:?} ",
            self.environment, self.field, self.secret
        )?;
        if self.secret_found {
            write!(f, "has no key {:?}", self.key)?;
        } else {
            write!(
                f,
                "(key {:?}) is in no Secret manifest of the directory or --secrets file",
                self.key
            )?;
        }
        write!(f, " and ${} is not set", self.variable)
    }
}

// ---------------------------------------------------------------------------------------
// Plan
// ---------------------------------------------------------------------------------------

/// The plan of one Environment.
#[derive(Debug)]
pub struct EnvironmentPlan {
    /// `namespace/name`.
    pub environment: String,
    /// `spec.suspend`: the controller would do nothing.
    pub suspended: bool,
    /// In the state but no longer in the manifests: it would be deleted, its objects removed
    /// per `deletionPolicy`.
    pub removed: bool,
    /// One entry per platform the Environment uses.
    pub platforms: Vec<PlatformSync>,
}

/// Everything `tether plan` found: per Environment and object, and the requests made.
#[derive(Debug, Default)]
pub struct PlanReport {
    /// Environments, in namespace/name order.
    pub environments: Vec<EnvironmentPlan>,
    /// Platform requests the plan made (`tether_platform_requests_total`).
    pub reads: u64,
}

/// Counts of a [`PlanReport`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Objects to create.
    pub create: usize,
    /// Objects to update.
    pub update: usize,
    /// Objects to delete.
    pub delete: usize,
    /// Objects matching their spec.
    pub in_sync: usize,
    /// Objects left on the platform and no longer managed.
    pub orphan: usize,
    /// Objects waiting for the platform.
    pub wait: usize,
    /// Updates whose every change is a comparison that could not be made.
    pub unknown: usize,
    /// Platform requests made to plan.
    pub reads: u64,
    /// Write requests acting on the plan would cost.
    pub writes: u64,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Plan: {} to create, {} to change, {} to delete, {} in sync, {} orphaned",
            self.create, self.update, self.delete, self.in_sync, self.orphan
        )?;
        if self.wait > 0 {
            write!(f, ", {} waiting", self.wait)?;
        }
        if self.unknown > 0 {
            write!(
                f,
                ", {} unknown (write-only values with no applied state to compare: --from-cluster or --state)",
                self.unknown
            )?;
        }
        write!(
            f,
            "; {} platform requests ({} reads made, {} writes to apply)",
            self.reads + self.writes,
            self.reads,
            self.writes
        )
    }
}

impl PlanReport {
    fn objects(&self) -> impl Iterator<Item = &ObjectPlan> {
        self.environments
            .iter()
            .flat_map(|e| &e.platforms)
            .flat_map(|p| &p.plans)
    }

    /// Every platform that could not be planned, with its Environment.
    pub fn failures(&self) -> impl Iterator<Item = (&str, &Failure)> {
        self.environments.iter().flat_map(|e| {
            e.platforms
                .iter()
                .filter_map(move |p| Some((e.environment.as_str(), p.failure.as_ref()?)))
        })
    }

    /// The counts for the summary line.
    pub fn summary(&self) -> Summary {
        let mut summary = Summary {
            reads: self.reads,
            ..Summary::default()
        };
        for plan in self.objects() {
            summary.writes += u64::from(plan.writes);
            match plan.action {
                Action::Update if !plan.changes_something_known() => summary.unknown += 1,
                Action::Create => summary.create += 1,
                Action::Update => summary.update += 1,
                Action::Delete => summary.delete += 1,
                Action::InSync => summary.in_sync += 1,
                Action::Orphan => summary.orphan += 1,
                Action::Wait(_) => summary.wait += 1,
            }
        }
        summary
    }

    /// 1 when a platform could not be planned, 2 when acting would change something on a
    /// platform (a comparison that could not be made does not count), 0 otherwise.
    pub fn exit_code(&self) -> i32 {
        if self.failures().next().is_some() {
            1
        } else if self.objects().any(ObjectPlan::changes_something_known) {
            2
        } else {
            0
        }
    }

    /// The plan as one JSON document (the same content as the text).
    pub fn to_json(&self) -> Value {
        let environments: Vec<Value> = self
            .environments
            .iter()
            .map(|e| {
                let objects: Vec<Value> = e
                    .platforms
                    .iter()
                    .flat_map(|p| &p.plans)
                    .map(|o| {
                        json!({
                            "platform": o.platform.as_str(),
                            "kind": o.kind,
                            "name": o.name,
                            "id": o.id,
                            "action": o.action.verb(),
                            "waitingFor": match &o.action {
                                Action::Wait(reason) => Some(reason),
                                _ => None,
                            },
                            "changes": o.changes.iter().map(|c| json!({
                                "field": c.field,
                                "from": c.from,
                                "to": c.to,
                                "drift": c.drift,
                                "unknown": c.unknown,
                            })).collect::<Vec<_>>(),
                            "drift": o.drift,
                            "writes": o.writes,
                        })
                    })
                    .collect();
                let failures: Vec<Value> = e
                    .platforms
                    .iter()
                    .filter_map(|p| p.failure.as_ref())
                    .map(|f| {
                        json!({
                            "platform": f.platform.as_str(),
                            "reason": f.reason,
                            "message": f.message,
                        })
                    })
                    .collect();
                json!({
                    "environment": e.environment,
                    "suspended": e.suspended,
                    "removed": e.removed,
                    "objects": objects,
                    "failures": failures,
                })
            })
            .collect();
        let s = self.summary();
        json!({
            "environments": environments,
            "summary": {
                "create": s.create,
                "update": s.update,
                "delete": s.delete,
                "inSync": s.in_sync,
                "orphan": s.orphan,
                "wait": s.wait,
                "unknown": s.unknown,
                "reads": s.reads,
                "writes": s.writes,
                "requests": s.reads + s.writes,
            },
        })
    }
}

fn symbol(action: &Action) -> char {
    match action {
        Action::Create => '+',
        Action::Update => '~',
        Action::Delete => '-',
        Action::Orphan => 'o',
        Action::Wait(_) => '*',
        Action::InSync => '=',
    }
}

fn label(plan: &ObjectPlan) -> String {
    format!("{} {} {:?}", plan.platform, plan.kind, plan.name)
}

impl fmt::Display for PlanReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let width = self
            .objects()
            .map(|o| label(o).chars().count())
            .chain(
                self.failures()
                    .map(|(_, failure)| failure.platform.as_str().len()),
            )
            .max()
            .unwrap_or(0)
            + 2;
        for env in &self.environments {
            writeln!(f, "environment {}", env.environment)?;
            if env.removed {
                writeln!(
                    f,
                    "  (not in the manifests any more: deleted, its objects removed per deletionPolicy)"
                )?;
            }
            if env.suspended {
                writeln!(f, "  (suspended: nothing would be done)")?;
            } else if env.platforms.is_empty() {
                writeln!(f, "  (no platform objects)")?;
            }
            for platform in &env.platforms {
                for object in &platform.plans {
                    let verb = match &object.action {
                        Action::Wait(reason) => format!("wait ({reason})"),
                        other => other.verb().to_string(),
                    };
                    writeln!(
                        f,
                        "  {} {:<width$}{verb}",
                        symbol(&object.action),
                        label(object)
                    )?;
                    for change in &object.changes {
                        writeln!(f, "      {change}")?;
                    }
                }
                if let Some(failure) = &platform.failure {
                    writeln!(
                        f,
                        "  ! {:<width$}failed ({}): {}",
                        failure.platform.as_str(),
                        failure.reason,
                        failure.message
                    )?;
                }
            }
        }
        if !self.environments.is_empty() {
            writeln!(f)?;
        }
        let failed = self.failures().count();
        if failed > 0 {
            // A partial plan summed up would read as the whole one.
            return write!(
                f,
                "No plan: {failed} platform(s) could not be planned (the errors above say why)"
            );
        }
        write!(f, "{}", self.summary())
    }
}

/// What to plan: every Environment of the manifests, with its last applied status from the
/// state, then every Environment of the state the manifests no longer have (to be deleted).
pub fn targets(loaded: &Loaded, state: &[Environment]) -> Vec<Target> {
    let applied = |k: &str| state.iter().find(|s| key(s) == k);
    let mut targets: Vec<Target> = loaded
        .environments
        .iter()
        .map(|env| Target {
            environment: env.clone(),
            previous: applied(&key(env))
                .and_then(|s| s.status.as_ref())
                .map(|s| s.objects.clone())
                .unwrap_or_default(),
            removed: false,
        })
        .collect();
    for gone in state {
        if !loaded.environments.iter().any(|e| key(e) == key(gone)) {
            targets.push(Target {
                environment: gone.clone(),
                previous: gone
                    .status
                    .as_ref()
                    .map(|s| s.objects.clone())
                    .unwrap_or_default(),
                removed: true,
            });
        }
    }
    targets
}

/// One Environment to plan.
#[derive(Clone, Debug)]
pub struct Target {
    /// Its manifest (or, when removed, its last applied object).
    pub environment: Environment,
    /// `status.objects` of the last applied state (empty without one).
    pub previous: Vec<crate::api::environment::ManagedObject>,
    /// No longer in the manifests.
    pub removed: bool,
}

/// Plans every target against `platforms` (reads only), recording the requests into
/// `registry`.
pub async fn plan(
    targets: &[Target],
    values: &[SecretValues],
    platforms: &Platforms,
    registry: &MetricsRegistry,
) -> PlanReport {
    let mut report = PlanReport::default();
    let now = jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .unwrap_or_else(|_| jiff::Timestamp::now())
        .to_string();
    for (target, secrets) in targets.iter().zip(values) {
        let env = &target.environment;
        let environment = key(env);
        let suspended = env.spec.suspend && !target.removed;
        let platforms = if suspended {
            Vec::new()
        } else {
            let owners = super::run::Owners::default();
            let request = Request {
                environment: &environment,
                spec: &env.spec,
                secrets,
                previous: &target.previous,
                drift_possible: &[],
                deleting: target.removed,
                now: now.clone(),
                owners: &owners,
            };
            sync(platforms, &request, Mode::Plan).await
        };
        report.environments.push(EnvironmentPlan {
            environment,
            suspended,
            removed: target.removed,
            platforms,
        });
    }
    report.reads = registry.counter_total(REQUESTS_METRIC);
    report
}

/// Reads the last applied state `args` names: none, the cluster's Environments, or an
/// exported file.
async fn read_state(args: &PlanArgs) -> Result<Vec<Environment>, PlanError> {
    if let Some(path) = &args.state {
        let failed = |reason: String| PlanError::State {
            source_name: path.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| failed(e.to_string()))?;
        let documents =
            crate::schema::validate::parse_stream(&text).map_err(|e| failed(e.to_string()))?;
        let mut environments = Vec::new();
        for document in documents {
            let items = match document["kind"].as_str() {
                Some("List" | "EnvironmentList") => {
                    document["items"].as_array().cloned().unwrap_or_default()
                }
                _ => vec![document],
            };
            for item in items.into_iter().filter(|i| i["kind"] == "Environment") {
                let name = item["metadata"]["name"].as_str().unwrap_or("?").to_owned();
                environments.push(
                    serde_json::from_value::<Environment>(item)
                        .map_err(|e| failed(format!("Environment {name}: {e}")))?,
                );
            }
        }
        return Ok(environments);
    }
    if !args.from_cluster {
        return Ok(Vec::new());
    }
    let failed = |reason: String| PlanError::State {
        source_name: "the cluster".into(),
        reason,
    };
    let client = match &args.kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| failed(format!("kubeconfig {}: {e}", path.display())))?;
            let config = kube::Config::from_custom_kubeconfig(
                kubeconfig,
                &kube::config::KubeConfigOptions::default(),
            )
            .await
            .map_err(|e| failed(format!("kubeconfig {}: {e}", path.display())))?;
            crate::client::named(config, "plan").map_err(|e| failed(e.to_string()))?
        }
        None => crate::client::infer("plan")
            .await
            .map_err(|e| failed(e.to_string()))?,
    };
    let api: kube::Api<Environment> = kube::Api::all(client);
    let list = api
        .list(&kube::api::ListParams::default())
        .await
        .map_err(|e| failed(e.to_string()))?;
    Ok(list.items)
}

/// Runs `tether plan`: prints the plan to stdout (failures also to stderr) and returns the
/// exit code ([`PlanReport::exit_code`]). Errors before planning (manifests, Secrets,
/// sandbox) are returned.
pub fn main(args: PlanArgs) -> Result<i32, PlanError> {
    init_tracing(&args.log_level, LogFormat::Text);
    let loaded = load(&args.manifests, &args.secrets)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(PlanError::Runtime)?;
    let state = runtime.block_on(read_state(&args))?;
    if args.from_cluster || args.state.is_some() {
        let recorded: usize = state
            .iter()
            .filter_map(|e| e.status.as_ref())
            .map(|s| s.objects.len())
            .sum();
        eprintln!(
            "comparing with the last applied state: {} Environment(s), {recorded} platform object(s) recorded",
            state.len()
        );
    }
    let targets = targets(&loaded, &state);
    let env = |name: &str| std::env::var(name).ok();
    let mut values = Vec::new();
    let mut missing = Vec::new();
    for target in &targets {
        let environment = &target.environment;
        let namespace = environment
            .metadata
            .namespace
            .as_deref()
            .unwrap_or(DEFAULT_NAMESPACE);
        match loaded
            .secrets
            .resolve(&key(environment), namespace, &environment.spec, &env)
        {
            Ok(resolved) => values.push(resolved),
            Err(more) => missing.extend(more),
        }
    }
    if !missing.is_empty() {
        return Err(PlanError::ResolveSecrets(missing));
    }
    let report = runtime.block_on(async {
        let stop = CancellationToken::new();
        let _stop_on_return = stop.clone().drop_guard();
        let (config, sandbox) = if args.sandbox {
            let handle = crate::sandbox::start(
                crate::sandbox::SandboxConfig {
                    time_scale: SANDBOX_TIME_SCALE,
                    tokens: Platform::ALL
                        .into_iter()
                        .map(|p| (p, crate::sandbox::sample_token(p)))
                        .collect(),
                    ..crate::sandbox::SandboxConfig::default()
                },
                stop.clone(),
            )
            .await?;
            (handle.platforms_config(SANDBOX_TIME_SCALE), Some(handle))
        } else {
            (args.platforms_config(), None)
        };
        let registry = MetricsRegistry::new();
        let platforms = Platforms::new(config, PlatformMetrics::register(&registry)?);
        let report = plan(&targets, &values, &platforms, &registry).await;
        stop.cancel();
        if let Some(sandbox) = sandbox {
            sandbox.stopped().await;
        }
        Ok::<_, PlanError>(report)
    })?;
    let text = match args.output {
        OutputFormat::Text => format!("{report}\n"),
        OutputFormat::Json => format!("{:#}\n", report.to_json()),
    };
    crate::print_stdout(&text).map_err(PlanError::Output)?;
    for (environment, failure) in report.failures() {
        eprintln!(
            "error: failed to plan {} of Environment {environment}: {}",
            failure.platform, failure.message
        );
    }
    Ok(report.exit_code())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::SecretKeyRef;
    use crate::sync::FieldChange;

    fn secret(name: &str, body: Value) -> ManifestObject {
        let mut doc = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}});
        if let (Value::Object(doc), Value::Object(body)) = (&mut doc, body) {
            doc.extend(body);
        }
        ManifestObject::from_document(1, 1, doc).expect("a Secret manifest")
    }

    fn spec(refs: &[(&str, &str, &str)]) -> EnvironmentSpec {
        let mut credentials = serde_json::Map::new();
        for (platform, name, key) in refs {
            credentials.insert(platform.to_string(), json!({"name": name, "key": key}));
        }
        serde_json::from_value(json!({"credentials": credentials})).expect("spec")
    }

    fn value(values: &SecretValues, name: &str, key: &str) -> Option<String> {
        values
            .get(&SecretKeyRef {
                name: name.into(),
                key: key.into(),
            })
            .map(|t| t.expose().to_string())
    }

    #[test]
    fn the_environment_variable_of_a_secret_key_is_upper_case_with_underscores() {
        assert_eq!(
            secret_env_var("app-secrets", "stripe-key"),
            "TETHER_SECRET_APP_SECRETS_STRIPE_KEY"
        );
        assert_eq!(
            secret_env_var("db.v2", "tls.crt"),
            "TETHER_SECRET_DB_V2_TLS_CRT"
        );
    }

    #[test]
    fn the_environment_wins_over_secrets_files_which_win_over_the_directory() {
        let mut source = SecretSource::default();
        let mut problems = Vec::new();
        // Added out of order: the layer decides, not the order.
        source.add(
            Layer::SecretsFile,
            "f",
            "default",
            &secret("s", json!({"stringData": {"b": "file-b", "c": "file-c"}})),
            &mut problems,
        );
        source.add(
            Layer::Directory,
            "d",
            "default",
            // `data` is base64: "dir-a", "dir-b", "dir-c".
            &secret(
                "s",
                json!({"data": {"a": "ZGlyLWE=", "b": "ZGlyLWI=", "c": "ZGlyLWM="}}),
            ),
            &mut problems,
        );
        assert!(problems.is_empty(), "{problems:?}");
        let spec = spec(&[
            ("render", "s", "a"),
            ("vercel", "s", "b"),
            ("fly", "s", "c"),
        ]);
        let env = |name: &str| (name == "TETHER_SECRET_S_C").then(|| "env-c".to_string());
        let values = source
            .resolve("default/web", "default", &spec, &env)
            .expect("resolved");
        assert_eq!(value(&values, "s", "a").as_deref(), Some("dir-a"));
        assert_eq!(value(&values, "s", "b").as_deref(), Some("file-b"));
        assert_eq!(value(&values, "s", "c").as_deref(), Some("env-c"));
        // Secrets of another namespace are not seen.
        assert!(source.resolve("other/web", "other", &spec, &env).is_err());
    }

    #[test]
    fn a_missing_key_is_named_with_its_secret_field_and_variable() {
        let mut source = SecretSource::default();
        source.add(
            Layer::Directory,
            "d",
            "default",
            &secret("tokens", json!({"stringData": {"render": "x"}})),
            &mut Vec::new(),
        );
        let spec = spec(&[("render", "tokens", "vercel"), ("fly", "gone", "token")]);
        let missing = source
            .resolve("default/web", "default", &spec, &|_| None)
            .expect_err("missing");
        let messages: Vec<String> = missing.iter().map(ToString::to_string).collect();
        assert_eq!(
            messages,
            [
                "Environment default/web: spec.credentials.render: Secret \"tokens\" has no key \
                 \"vercel\" and $TETHER_SECRET_TOKENS_VERCEL is not set",
                "Environment default/web: spec.credentials.fly: Secret \"gone\" (key \"token\") \
                 is in no Secret manifest of the directory or --secrets file and \
                 $TETHER_SECRET_GONE_TOKEN is not set",
            ]
        );
    }

    fn object(platform: Platform, kind: &str, name: &str, action: Action) -> ObjectPlan {
        ObjectPlan {
            platform,
            kind: kind.into(),
            name: name.into(),
            id: None,
            action,
            changes: Vec::new(),
            drift: Vec::new(),
            writes: 0,
        }
    }

    fn synced(platform: Platform, plans: Vec<ObjectPlan>) -> PlatformSync {
        PlatformSync {
            platform,
            plans,
            objects: Vec::new(),
            events: Vec::new(),
            failure: None,
        }
    }

    fn report() -> PlanReport {
        let mut create = object(Platform::Render, "service", "api", Action::Create);
        create.writes = 2;
        create.changes = vec![
            FieldChange {
                field: "plan".into(),
                from: None,
                to: Some("starter".into()),
                drift: false,
                unknown: false,
            },
            FieldChange {
                field: "envVars.KEY".into(),
                from: None,
                to: Some("(secret)".into()),
                drift: false,
                unknown: false,
            },
        ];
        let mut update = object(Platform::Vercel, "project", "web", Action::Update);
        update.writes = 1;
        update.changes = vec![FieldChange {
            field: "buildCommand".into(),
            from: Some("npm run build".into()),
            to: Some("pnpm build".into()),
            drift: false,
            unknown: false,
        }];
        PlanReport {
            environments: vec![EnvironmentPlan {
                environment: "default/staging".into(),
                suspended: false,
                removed: false,
                platforms: vec![
                    synced(Platform::Render, vec![create]),
                    synced(Platform::Vercel, vec![update]),
                    synced(
                        Platform::Supabase,
                        vec![object(Platform::Supabase, "project", "db", Action::InSync)],
                    ),
                ],
            }],
            reads: 4,
        }
    }

    #[test]
    fn the_text_plan_lists_each_object_with_its_changes_and_a_summary() {
        assert_eq!(
            report().to_string(),
            "environment default/staging\n\
             \x20 + render service \"api\"   create\n\
             \x20     plan: (absent) → starter\n\
             \x20     envVars.KEY: (absent) → (secret)\n\
             \x20 ~ vercel project \"web\"   update\n\
             \x20     buildCommand: npm run build → pnpm build\n\
             \x20 = supabase project \"db\"  in sync\n\
             \n\
             Plan: 1 to create, 1 to change, 0 to delete, 1 in sync, 0 orphaned; \
             7 platform requests (4 reads made, 3 writes to apply)"
        );
        assert_eq!(report().exit_code(), 2);
    }

    #[test]
    fn only_creates_updates_and_deletes_count_as_changes_and_failures_exit_1() {
        let mut quiet = report();
        quiet.environments[0].platforms = vec![synced(
            Platform::Fly,
            vec![
                object(Platform::Fly, "app", "edge", Action::InSync),
                object(Platform::Fly, "volume", "data", Action::Orphan),
                object(
                    Platform::Supabase,
                    "project",
                    "db",
                    Action::Wait("COMING_UP".into()),
                ),
            ],
        )];
        assert_eq!(quiet.exit_code(), 0);
        let text = quiet.to_string();
        assert!(
            text.contains("  * supabase project \"db\"  wait (COMING_UP)\n"),
            "{text}"
        );
        assert!(text.ends_with("1 in sync, 1 orphaned, 1 waiting; 4 platform requests (4 reads made, 0 writes to apply)"), "{text}");

        let mut failed = report();
        failed.environments[0].platforms[1].failure = Some(Failure {
            platform: Platform::Vercel,
            reason: "CredentialsRejected",
            message: "vercel rejected the token".into(),
            permanent: true,
            retry_after: None,
        });
        assert_eq!(failed.exit_code(), 1);
        assert!(
            failed
                .to_string()
                .contains("  ! vercel                 failed (CredentialsRejected): vercel rejected the token\n"),
            "{failed}"
        );
    }

    #[test]
    fn the_json_plan_has_the_objects_changes_and_summary() {
        let json = report().to_json();
        let objects = &json["environments"][0]["objects"];
        assert_eq!(objects[0]["action"], "create");
        assert_eq!(objects[0]["changes"][1]["to"], "(secret)");
        assert_eq!(objects[1]["changes"][0]["from"], "npm run build");
        assert_eq!(objects[2]["action"], "in sync");
        assert_eq!(json["summary"]["requests"], 7);
        assert_eq!(json["summary"]["writes"], 3);
    }
}
