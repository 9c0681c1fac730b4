//! Environment sync: makes one platform's objects match an Environment, as
//! observe → plan → act (→ report, done by the controller).
//!
//! - **Observe** reads through the shared [`ObserveCache`] with list endpoints, so one paged
//!   list serves every Environment of an account.
//! - **Plan** is pure: desired [`Fields`] (from the spec, with platform defaults normalised and
//!   secret values replaced by keyed fingerprints) against observed `Fields` gives the
//!   field-level [`diff`]; each object gets an [`ObjectPlan`] (create, update with its changes,
//!   delete, orphan, wait, in sync) and the driver's typed `Work`.
//! - **Act** runs the work in dependency order and reports one [`ManagedObject`] per object.
//!
//! One [`Driver`] per platform lives in a submodule (`render`, `vercel`, `fly`, `supabase`),
//! each exporting a unit struct `RenderDriver`, `VercelDriver`, `FlyDriver`,
//! `SupabaseDriver` (`#[derive(Clone, Copy, Debug, Default)]`). The controller (and
//! `tether plan`) hand each driver a [`SyncInput`] and never see vendor types.

pub mod cache;
pub mod fingerprint;
pub mod fly;
pub mod plan;
pub mod progress;
pub mod render;
pub mod run;
pub mod supabase;
pub mod vercel;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};

pub use cache::{CacheKey, ObserveCache};
pub use fingerprint::Fingerprinter;

use crate::api::common::{DeletionPolicy, DriftPolicy, SecretKeyRef};
use crate::api::environment::{EnvironmentSpec, ManagedObject};
use crate::platform::http::HttpSetupError;
use crate::platform::{
    HttpConfig, Platform, PlatformError, PlatformHttp, PlatformMetrics, PlatformResult, Token,
};

/// One managed field's value.
#[derive(Clone, PartialEq, Eq)]
pub enum Field {
    /// A readable value, normalised (platform defaults filled in the same way on both sides).
    Value(String),
    /// A secret value, as its keyed fingerprint: on the desired side always; on the observed
    /// side when the platform returns the value (the driver fingerprints it at once).
    Secret {
        /// `hmac-sha256:…` of the value ([`Fingerprinter`]).
        fingerprint: String,
    },
    /// Observed only: the platform holds a value it will not show (write-only secrets).
    Present,
}

impl fmt::Debug for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Field::Value(v) => write!(f, "{v:?}"),
            Field::Secret { .. } => f.write_str("(secret)"),
            Field::Present => f.write_str("(set)"),
        }
    }
}

/// The managed fields of one platform object, by dotted name (`plan`, `envVars.API_KEY`,
/// `domains.www.example.com`). Only fields Tether manages appear; a field present on the
/// platform but absent from the desired side is removed by the plan (Tether owns the whole
/// set of an object's env vars and domains).
pub type Fields = BTreeMap<String, Field>;

/// One field that differs. Values are shown for readable fields only; secrets are `(secret)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldChange {
    /// Dotted field name.
    pub field: String,
    /// Value on the platform (`None`: absent).
    pub from: Option<String>,
    /// Value the spec asks for (`None`: remove it).
    pub to: Option<String>,
    /// The platform changed out of band (the spec did not change since it last matched).
    pub drift: bool,
    /// The two sides cannot be compared: the platform does not show the value (a write-only
    /// secret) and no fingerprint of an applied value is known. Acting writes it to be sure;
    /// `tether plan` shows it as unknown.
    pub unknown: bool,
}

impl fmt::Display for FieldChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "(absent)".into());
        write!(
            f,
            "{}: {} → {}{}",
            self.field,
            show(&self.from),
            show(&self.to),
            if self.unknown {
                " (unknown: the platform does not show it and no applied value is recorded)"
            } else if self.drift {
                " (drift)"
            } else {
                ""
            }
        )
    }
}

fn shown(field: &Field) -> String {
    match field {
        Field::Value(v) => v.clone(),
        Field::Secret { .. } | Field::Present => "(secret)".into(),
    }
}

/// The field-level diff of one object (pure).
///
/// `previous` is the object's status entry from the last reconcile (its secret fingerprints
/// tell a write-only secret's last applied value); `drift_possible` is true when the last
/// reconcile applied this same generation, so a readable difference can only come from an
/// out-of-band change. A secret whose fingerprint moved is a rotation, never drift.
pub fn diff(
    desired: &Fields,
    observed: &Fields,
    previous: Option<&ManagedObject>,
    drift_possible: bool,
) -> Vec<FieldChange> {
    let mut changes = Vec::new();
    let applied = |name: &str| previous.and_then(|p| p.secret_fingerprints.get(name));
    for (name, want) in desired {
        let have = observed.get(name);
        let (differs, rotated, unknown) = match (want, have) {
            (_, None) => (true, false, false),
            (Field::Value(w), Some(Field::Value(h))) => (w != h, false, false),
            (Field::Secret { fingerprint: w }, Some(Field::Secret { fingerprint: h })) => {
                (w != h, applied(name).is_some_and(|a| a != w), false)
            }
            (Field::Secret { fingerprint: w }, Some(Field::Present)) => {
                // Unreadable: the last applied fingerprint is all there is to compare.
                let moved = applied(name).is_none_or(|a| a != w);
                (moved, moved, applied(name).is_none())
            }
            (Field::Present, _) | (Field::Value(_), Some(_)) | (Field::Secret { .. }, _) => {
                (true, false, false)
            }
        };
        if differs {
            changes.push(FieldChange {
                field: name.clone(),
                from: have.map(shown),
                to: Some(shown(want)),
                drift: drift_possible && !rotated && previous.is_some() && !unknown,
                unknown,
            });
        }
    }
    for (name, have) in observed {
        if !desired.contains_key(name) {
            changes.push(FieldChange {
                field: name.clone(),
                from: Some(shown(have)),
                to: None,
                drift: drift_possible && previous.is_some(),
                unknown: false,
            });
        }
    }
    changes
}

/// What the plan does with one object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Create it (nothing of that name exists).
    Create,
    /// Change the listed fields.
    Update,
    /// Delete it (removed from the spec, or the Environment is being deleted).
    Delete,
    /// Leave it on the platform and stop managing it.
    Orphan,
    /// Nothing to do until the platform finishes something (a project coming up).
    Wait(String),
    /// Matches the spec.
    InSync,
}

impl Action {
    /// Lower-case verb for output.
    pub fn verb(&self) -> &'static str {
        match self {
            Action::Create => "create",
            Action::Update => "update",
            Action::Delete => "delete",
            Action::Orphan => "orphan",
            Action::Wait(_) => "wait",
            Action::InSync => "in sync",
        }
    }
}

/// The plan of one platform object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectPlan {
    /// Platform.
    pub platform: Platform,
    /// Kind on the platform (`service`, `keyValue`, `postgres`, `project`, `app`, `machine`, …).
    pub kind: String,
    /// Name (the stable name Tether finds it by).
    pub name: String,
    /// Platform id, when it exists.
    pub id: Option<String>,
    /// What happens to it.
    pub action: Action,
    /// The field-level changes (for `Create`, every managed field from `(absent)`).
    pub changes: Vec<FieldChange>,
    /// Fields changed out of band (names only).
    pub drift: Vec<String>,
    /// Write requests acting on this plan costs.
    pub writes: u32,
}

impl ObjectPlan {
    /// Whether acting would change anything on the platform.
    pub fn changes_anything(&self) -> bool {
        matches!(
            self.action,
            Action::Create | Action::Update | Action::Delete
        )
    }

    /// Whether acting is known to change something: not an update whose every change is a
    /// comparison that could not be made ([`FieldChange::unknown`]).
    pub fn changes_something_known(&self) -> bool {
        self.changes_anything()
            && !(self.action == Action::Update
                && !self.changes.is_empty()
                && self.changes.iter().all(|c| c.unknown))
    }
}

/// A driver's plan: one entry per object, and the typed work `act` executes.
#[derive(Debug)]
pub struct Planned<W> {
    /// Per-object plans, in dependency order.
    pub objects: Vec<ObjectPlan>,
    /// What `act` will do.
    pub work: W,
}

/// Something a sync did, published as a Kubernetes event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncEvent {
    /// PascalCase reason: `Created`, `Updated`, `Deleted`, `Orphaned`, `Adopted`,
    /// `DriftDetected`, `DriftCorrected`.
    pub reason: &'static str,
    /// Platform.
    pub platform: Platform,
    /// Kind on the platform.
    pub kind: String,
    /// Object name.
    pub name: String,
    /// Human sentence (field names, never secret values).
    pub note: String,
}

/// What acting on one platform produced.
#[derive(Debug, Default)]
pub struct ActOutcome {
    /// One entry per object still managed (deleted and orphaned objects are left out).
    pub objects: Vec<ManagedObject>,
    /// What was done.
    pub events: Vec<SyncEvent>,
    /// The first failure; work done before it is still reported above.
    pub error: Option<PlatformError>,
}

/// Resolved values of the Secret keys an Environment references (the controller reads them
/// just before syncing; they live only in memory).
#[derive(Clone, Default)]
pub struct SecretValues(HashMap<(String, String), Token>);

impl fmt::Debug for SecretValues {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.0.keys().map(|(n, k)| format!("{n}/{k}")))
            .finish()
    }
}

impl SecretValues {
    /// Records the value of `key` of Secret `name`.
    pub fn insert(&mut self, name: &str, key: &str, value: Token) {
        self.0.insert((name.to_string(), key.to_string()), value);
    }

    /// The value a reference points at.
    pub fn get(&self, r: &SecretKeyRef) -> Option<&Token> {
        self.0.get(&(r.name.clone(), r.key.clone()))
    }
}

/// Everything a driver needs for one Environment and one platform.
pub struct SyncInput<'a> {
    /// `namespace/name` of the Environment (for messages).
    pub environment: &'a str,
    /// The spec.
    pub spec: &'a EnvironmentSpec,
    /// Resolved secret values.
    pub secrets: &'a SecretValues,
    /// Fingerprints keyed by this platform's token.
    pub fingerprints: Fingerprinter,
    /// `status.objects` of the last reconcile (all platforms; see [`SyncInput::previous`]).
    pub previous: &'a [ManagedObject],
    /// The last reconcile applied this platform's part of the spec as it is now: a readable
    /// difference is drift.
    pub drift_possible: bool,
    /// The Environment is being deleted: every object is removed per the deletion policy.
    pub deleting: bool,
    /// The shared client of this platform and token.
    pub http: PlatformHttp,
    /// The token's fingerprint, naming the account in cache keys.
    pub account: String,
    /// The shared observation cache.
    pub cache: ObserveCache,
    /// RFC 3339 time of this sync (`lastSync`).
    pub now: String,
}

impl SyncInput<'_> {
    /// The platform this input is for.
    pub fn platform(&self) -> Platform {
        self.http.platform()
    }

    /// The status entry of `kind`/`name` on this platform from the last reconcile.
    pub fn previous(&self, kind: &str, name: &str) -> Option<&ManagedObject> {
        let platform = self.platform().as_str();
        self.previous
            .iter()
            .find(|o| o.platform == platform && o.kind == kind && o.name == name)
    }

    /// Every status entry of this platform from the last reconcile (to find objects removed
    /// from the spec).
    pub fn previous_objects(&self) -> impl Iterator<Item = &ManagedObject> {
        let platform = self.platform().as_str();
        self.previous.iter().filter(move |o| o.platform == platform)
    }

    /// The cache key of `what` in `scope` for this account.
    pub fn key(&self, scope: &str, what: &str) -> CacheKey {
        CacheKey::new(self.platform().as_str(), &self.account, scope, what)
    }

    /// What removing an object means under the deletion policy: stateful objects (databases,
    /// key-value stores, volumes, the Supabase project) are kept unless the policy is
    /// `Delete`; stateless ones are deleted unless it is `Orphan`.
    pub fn removal(&self, stateful: bool) -> Action {
        match (self.spec.deletion_policy, stateful) {
            (Some(DeletionPolicy::Delete), _) | (None, false) => Action::Delete,
            (Some(DeletionPolicy::Orphan), _) | (None, true) => Action::Orphan,
        }
    }

    /// Whether `change` should be written: drift is only reported under `driftPolicy: Report`.
    pub fn applies(&self, change: &FieldChange) -> bool {
        !(change.drift && self.spec.drift_policy == DriftPolicy::Report)
    }

    /// The desired field of a value read from a Secret: its fingerprint under `name`, or
    /// `None` when the Secret value is missing (the controller resolves every reference
    /// before syncing, so this does not happen in practice).
    pub fn secret_field(&self, name: &str, r: &SecretKeyRef) -> Option<Field> {
        self.secrets.get(r).map(|value| Field::Secret {
            fingerprint: self.fingerprints.fingerprint(name, value),
        })
    }

    /// A `ManagedObject` for `plan` with this sync's time as `lastSync`.
    pub fn managed(&self, plan: &ObjectPlan) -> ManagedObject {
        ManagedObject {
            platform: plan.platform.as_str().to_string(),
            kind: plan.kind.clone(),
            name: plan.name.clone(),
            id: plan.id.clone(),
            last_sync: Some(self.now.clone()),
            drift: plan.drift.clone(),
            ..ManagedObject::default()
        }
    }
}

/// The safety net for sub-lists no change signal covers. A sub-list of an object (a Render
/// service's env vars and custom domains, a Vercel project's domains, a Fly app's machines
/// and secrets) is read again when its parent's list entry changes (`updatedAt`, a machine
/// count), when the object was not ready or in sync at the last reconcile, when its
/// platform's part of the spec changed, and otherwise at least every this many resync intervals: an out-of-band edit that
/// moves no signal is found within this many intervals.
pub const SUBLIST_RECHECK_INTERVALS: u32 = 8;

impl SyncInput<'_> {
    /// How long a sub-list of the objects `settled` looks at may be reused while its parent's
    /// change signal holds: [`SUBLIST_RECHECK_INTERVALS`] intervals when the last reconcile
    /// applied this platform's part of the spec and every such object was ready with no drift, one max age otherwise.
    pub fn sub_list_keep(&self, settled: impl Fn(&ManagedObject) -> Option<bool>) -> Duration {
        let mut seen = false;
        let mut all = self.drift_possible;
        for verdict in self.previous_objects().filter_map(settled) {
            seen = true;
            all &= verdict;
        }
        match crate::api::common::parse_duration(&self.spec.interval) {
            Ok(interval) if seen && all => interval * SUBLIST_RECHECK_INTERVALS,
            _ => self.cache.max_age(),
        }
    }

    /// [`SyncInput::sub_list_keep`] for the one object `kind`/`name`.
    pub fn sub_list_keep_of(&self, kind: &str, name: &str) -> Duration {
        self.sub_list_keep(|o| {
            (o.kind == kind && o.name == name).then_some(o.ready && o.drift.is_empty())
        })
    }
}

/// One platform's sync.
pub trait Driver: Send + Sync {
    /// The platform.
    const PLATFORM: Platform;
    /// The typed steps `act` executes.
    type Work: Send;

    /// Observes (through the cache; no writes) and plans.
    fn plan(
        &self,
        input: &SyncInput<'_>,
    ) -> impl Future<Output = PlatformResult<Planned<Self::Work>>> + Send;

    /// Executes the plan.
    fn act(
        &self,
        input: &SyncInput<'_>,
        planned: Planned<Self::Work>,
    ) -> impl Future<Output = ActOutcome> + Send;
}

/// Where each platform's API is and how to talk to it.
#[derive(Clone, Debug)]
pub struct PlatformsConfig {
    /// Base URL per platform (the vendor spec's `servers` URL by default).
    pub endpoints: BTreeMap<Platform, String>,
    /// HTTP settings per platform.
    pub http: BTreeMap<Platform, HttpConfig>,
    /// How long observed platform state is reused across reconciles.
    pub observe_max_age: std::time::Duration,
}

impl Default for PlatformsConfig {
    fn default() -> Self {
        Self {
            endpoints: Platform::ALL
                .into_iter()
                .map(|p| (p, default_endpoint(p).to_string()))
                .collect(),
            http: Platform::ALL
                .into_iter()
                .map(|p| (p, HttpConfig::for_platform(p)))
                .collect(),
            observe_max_age: std::time::Duration::from_secs(30),
        }
    }
}

/// The vendor's production API base URL.
pub fn default_endpoint(platform: Platform) -> &'static str {
    match platform {
        Platform::Render => "https://api.render.com/v1",
        Platform::Vercel => "https://api.vercel.com",
        Platform::Fly => "https://api.machines.dev",
        Platform::Supabase => "https://api.supabase.com",
    }
}

/// The platform clients of the process, one per (platform, token), so rate limits are
/// shared by every Environment using the same account; and the observation cache.
pub struct Platforms {
    config: PlatformsConfig,
    metrics: PlatformMetrics,
    clients: Mutex<HashMap<(Platform, String), PlatformHttp>>,
    cache: ObserveCache,
}

impl Platforms {
    /// Clients built from `config`, recording into `metrics`.
    pub fn new(config: PlatformsConfig, metrics: PlatformMetrics) -> Arc<Self> {
        // reqwest is built without a default TLS provider; installing it twice is a no-op.
        crate::install_crypto_provider();
        let cache = ObserveCache::new(config.observe_max_age);
        Arc::new(Self {
            config,
            metrics,
            clients: Mutex::default(),
            cache,
        })
    }

    /// The shared observation cache.
    pub fn cache(&self) -> &ObserveCache {
        &self.cache
    }

    /// The request metrics.
    pub fn metrics(&self) -> &PlatformMetrics {
        &self.metrics
    }

    /// The client of `platform` for `token`, and the account name (the token's SHA-256
    /// prefix) used in cache keys.
    pub fn client(
        &self,
        platform: Platform,
        token: &Token,
    ) -> Result<(PlatformHttp, String), HttpSetupError> {
        let account = account_of(token);
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(client) = clients.get(&(platform, account.clone())) {
            return Ok((client.clone(), account));
        }
        let endpoint = self
            .config
            .endpoints
            .get(&platform)
            .map(String::as_str)
            .unwrap_or_else(|| default_endpoint(platform));
        let http = self
            .config
            .http
            .get(&platform)
            .cloned()
            .unwrap_or_else(|| HttpConfig::for_platform(platform));
        let client = PlatformHttp::new(
            platform,
            endpoint,
            token.clone(),
            http,
            self.metrics.clone(),
        )?;
        clients.insert((platform, account.clone()), client.clone());
        Ok((client, account))
    }
}

/// Drift metrics, labelled by platform and object kind (bounded; never object names).
#[derive(Clone)]
pub struct SyncMetrics {
    detected: prometheus::IntCounterVec,
    corrected: prometheus::IntCounterVec,
    drifted: prometheus::IntGaugeVec,
    /// Environment → `(platform, kind)` of each of its objects drifted now.
    drifted_by_environment: Arc<Mutex<BTreeMap<String, Vec<PlatformKind>>>>,
}

/// `(platform, kind)` label values.
type PlatformKind = (String, String);

impl SyncMetrics {
    /// Creates the metrics and registers them into `registry`.
    pub fn register(
        registry: &crate::telemetry::MetricsRegistry,
    ) -> Result<Self, prometheus::Error> {
        let counter = |name: &str, help: &str| {
            registry.register(prometheus::IntCounterVec::new(
                prometheus::Opts::new(name, help),
                &["platform", "kind"],
            )?)
        };
        Ok(Self {
            detected: counter(
                "tether_drift_detected_total",
                "Platform objects found changed out of band (counted when the drift appears).",
            )?,
            corrected: counter(
                "tether_drift_corrected_total",
                "Out-of-band changes reverted to the spec (driftPolicy Correct).",
            )?,
            drifted: registry.register(prometheus::IntGaugeVec::new(
                prometheus::Opts::new(
                    "tether_drifted_objects",
                    "Platform objects that differ from their Environment now and were not corrected.",
                ),
                &["platform", "kind"],
            )?)?,
            drifted_by_environment: Arc::default(),
        })
    }

    /// Records which objects of `environment` (`namespace/name`) are drifted now (an empty
    /// list when it is in sync or gone), and updates the gauge.
    pub fn set_drifted(&self, environment: &str, objects: &[ManagedObject]) {
        let mut all = self
            .drifted_by_environment
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let now: Vec<PlatformKind> = objects
            .iter()
            .filter(|o| !o.drift.is_empty())
            .map(|o| (o.platform.clone(), o.kind.clone()))
            .collect();
        let before = if now.is_empty() {
            all.remove(environment)
        } else {
            all.insert(environment.to_string(), now.clone())
        };
        for (platform, kind) in before.unwrap_or_default() {
            self.drifted.with_label_values(&[&platform, &kind]).dec();
        }
        for (platform, kind) in now {
            self.drifted.with_label_values(&[&platform, &kind]).inc();
        }
    }

    /// Counts drift newly found on an object of `kind`.
    pub fn drift_detected(&self, platform: Platform, kind: &str) {
        self.detected
            .with_label_values(&[platform.as_str(), kind])
            .inc();
    }

    /// Counts drift reverted on an object of `kind`.
    pub fn drift_corrected(&self, platform: Platform, kind: &str) {
        self.corrected
            .with_label_values(&[platform.as_str(), kind])
            .inc();
    }
}

/// A short, irreversible name of a token's account (first 16 hex digits of its SHA-256).
fn account_of(token: &Token) -> String {
    let digest = Sha256::digest(token.expose().as_bytes());
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(pairs: &[(&str, Field)]) -> Fields {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    fn value(v: &str) -> Field {
        Field::Value(v.into())
    }

    fn secret(fp: &str) -> Field {
        Field::Secret {
            fingerprint: fp.into(),
        }
    }

    fn previous(fps: &[(&str, &str)]) -> ManagedObject {
        ManagedObject {
            secret_fingerprints: fps
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..ManagedObject::default()
        }
    }

    #[test]
    fn equal_fields_give_no_changes() {
        let f = fields(&[("plan", value("starter")), ("envVars.A", secret("fp1"))]);
        assert!(diff(&f, &f, None, true).is_empty());
    }

    #[test]
    fn a_changed_field_is_the_only_change_and_is_drift_only_when_the_spec_did_not_move() {
        let desired = fields(&[("plan", value("pro")), ("region", value("oregon"))]);
        let observed = fields(&[("plan", value("starter")), ("region", value("oregon"))]);
        let prev = previous(&[]);
        let spec_change = diff(&desired, &observed, Some(&prev), false);
        assert_eq!(
            spec_change,
            vec![FieldChange {
                field: "plan".into(),
                from: Some("starter".into()),
                to: Some("pro".into()),
                drift: false,
                unknown: false,
            }]
        );
        let drift = diff(&desired, &observed, Some(&prev), true);
        assert!(drift[0].drift);
        assert_eq!(drift[0].to_string(), "plan: starter → pro (drift)");
        // Never synced before: a difference is adoption, not drift.
        assert!(!diff(&desired, &observed, None, true)[0].drift);
    }

    #[test]
    fn fields_only_on_the_platform_are_removed() {
        let desired = fields(&[("envVars.A", value("1"))]);
        let observed = fields(&[("envVars.A", value("1")), ("envVars.B", value("2"))]);
        let changes = diff(&desired, &observed, None, false);
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].field, "envVars.B");
        assert_eq!(changes[0].to, None);
    }

    #[test]
    fn write_only_secrets_compare_by_the_last_applied_fingerprint() {
        let desired = fields(&[("secrets.DB", secret("fp-new"))]);
        let observed = fields(&[("secrets.DB", Field::Present)]);
        // Applied before with the same fingerprint: nothing to do.
        let same = previous(&[("secrets.DB", "fp-new")]);
        assert!(diff(&desired, &observed, Some(&same), true).is_empty());
        // The Kubernetes Secret was rotated: re-applied, shown masked, not drift.
        let rotated = previous(&[("secrets.DB", "fp-old")]);
        let changes = diff(&desired, &observed, Some(&rotated), true);
        assert_eq!(changes.len(), 1);
        assert!(!changes[0].drift);
        assert_eq!(changes[0].from.as_deref(), Some("(secret)"));
        assert_eq!(changes[0].to.as_deref(), Some("(secret)"));
        // Deleted on the platform out of band: drift.
        let gone = diff(&desired, &Fields::new(), Some(&same), true);
        assert!(gone[0].drift);
    }

    #[test]
    fn readable_secrets_compare_fingerprints_and_show_no_values() {
        let desired = fields(&[("envVars.KEY", secret("fp-a"))]);
        let observed = fields(&[("envVars.KEY", secret("fp-b"))]);
        let prev = previous(&[("envVars.KEY", "fp-a")]);
        let changes = diff(&desired, &observed, Some(&prev), true);
        assert!(changes[0].drift, "edited on the platform out of band");
        assert_eq!(
            changes[0].to_string(),
            "envVars.KEY: (secret) → (secret) (drift)"
        );
    }

    #[test]
    fn the_drifted_gauge_counts_objects_drifted_now_per_platform_and_kind() {
        let registry = crate::telemetry::MetricsRegistry::new();
        let metrics = SyncMetrics::register(&registry).expect("register");
        let object = |kind: &str, drift: &[&str]| ManagedObject {
            platform: "render".into(),
            kind: kind.into(),
            drift: drift.iter().map(|d| d.to_string()).collect(),
            ..ManagedObject::default()
        };
        metrics.set_drifted(
            "ns/a",
            &[object("service", &["plan"]), object("postgres", &[])],
        );
        metrics.set_drifted("ns/b", &[object("service", &["image"])]);
        let gauge = |text: &str| {
            text.lines()
                .find(|l| l.starts_with("tether_drifted_objects{kind=\"service\""))
                .map(|l| l.rsplit(' ').next().unwrap_or_default().to_string())
        };
        assert_eq!(gauge(&registry.render()).as_deref(), Some("2"));
        metrics.set_drifted("ns/a", &[object("service", &[])]);
        assert_eq!(gauge(&registry.render()).as_deref(), Some("1"));
        metrics.set_drifted("ns/b", &[]);
        assert_eq!(gauge(&registry.render()).as_deref(), Some("0"));
    }

    #[test]
    fn removal_follows_the_deletion_policy_and_keeps_stateful_objects_by_default() {
        let spec = |policy| EnvironmentSpec {
            deletion_policy: policy,
            ..EnvironmentSpec::default()
        };
        let metrics =
            PlatformMetrics::register(&crate::telemetry::MetricsRegistry::new()).expect("register");
        let platforms = Platforms::new(PlatformsConfig::default(), metrics);
        let (http, account) = platforms
            .client(Platform::Render, &Token::new("t"))
            .expect("client");
        let secrets = SecretValues::default();
        for (policy, stateless, stateful) in [
            (None, Action::Delete, Action::Orphan),
            (Some(DeletionPolicy::Delete), Action::Delete, Action::Delete),
            (Some(DeletionPolicy::Orphan), Action::Orphan, Action::Orphan),
        ] {
            let spec = spec(policy);
            let input = SyncInput {
                environment: "ns/env",
                spec: &spec,
                secrets: &secrets,
                fingerprints: Fingerprinter::new(&Token::new("t")),
                previous: &[],
                drift_possible: false,
                deleting: false,
                http: http.clone(),
                account: account.clone(),
                cache: platforms.cache().clone(),
                now: "2026-01-01T00:00:00Z".into(),
            };
            assert_eq!(input.removal(false), stateless, "{policy:?}");
            assert_eq!(input.removal(true), stateful, "{policy:?}");
        }
        assert_eq!(account.len(), 16);
    }
}
