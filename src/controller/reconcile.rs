//! The reconcile driver shared by the three kinds. Each kind implements [`Reconciled`]
//! (observe → plan → act, returning a [`Report`]); this module wraps it in the contract
//! every object gets:
//!
//! 1. `kube::runtime::finalizer` (name [`FINALIZER`]): the finalizer is added before the
//!    first apply; on deletion `cleanup` runs and the finalizer is removed after it succeeds.
//! 2. Permanent errors become a `Stalled` verdict written to status; the object waits for a
//!    change of itself or a watched reference (no requeue).
//! 3. Status is written with server-side apply under [`FIELD_MANAGER`] with
//!    `observedGeneration` and the conditions of [`conditions::next_conditions`] (plus a
//!    kind's domain conditions, [`Report::conditions`]).
//! 4. An event is published through the one shared `Recorder` when `Ready`/`Stalled` change;
//!    a kind's own events ([`Report::events`]) go through it too: Normal ones (work done in
//!    this reconcile) always, Warning ones only on such a transition.
//! 5. Transient errors are returned to the runtime; [`error_policy`] backs off per object.
//! 6. Metrics record every reconcile.

use std::collections::HashMap;
use std::fmt::Debug;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt;

use kube::api::{Patch, PatchParams};
use kube::core::NamespaceResourceScope;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Reporter};
use kube::runtime::finalizer::{Event as FinalizerEvent, finalizer};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::{info, instrument, warn};

use crate::api::Condition;
use crate::api::Environment;
use crate::controller::conditions::{self, Verdict};
use crate::controller::decoded::{Conditioned, Decoded};
use crate::controller::error::{Backoff, ReconcileError};
use crate::controller::events::Events;
use crate::controller::metrics::{ControllerMetrics, ReconcileResult};
use crate::controller::migration::MigrationRuns;
use crate::sync::Platforms;
use crate::sync::run::Owners;
use kube::runtime::reflector::Store;

/// The finalizer every reconciled object carries until its cleanup has run.
pub const FINALIZER: &str = "tether.dev/finalizer";
/// The server-side-apply field manager that owns status.
pub const FIELD_MANAGER: &str = "tether-controller";

/// What the reconcilers share: the API client, the one event recorder, metrics, retry
/// bounds and per-object failure counts.
pub struct Context {
    /// API client.
    pub client: Client,
    /// The shared event recorder (reporter `tether-controller`).
    pub recorder: Events,
    /// Reconcile metrics.
    pub metrics: ControllerMetrics,
    /// Retry bounds for transient errors.
    pub backoff: Backoff,
    /// When each Migration last ran against its database (the run gate).
    pub migration_runs: MigrationRuns,
    /// The platform clients and the shared observation cache.
    pub platforms: Arc<Platforms>,
    /// Requeue delay while platform objects are still coming up.
    pub pending_interval: Duration,
    /// Template of a Supabase project's database URL (`{ref}` = the project ref).
    pub supabase_database_url: String,
    /// Sends the Releases' health-check requests.
    pub prober: crate::controller::health::Prober,
    /// Asks Prometheus for the Releases' metric analysis.
    pub prometheus: crate::controller::analysis::Prometheus,
    /// Sends the Releases' phase changes to their webhooks.
    pub notifier: crate::controller::notify::Notifier,
    /// The Environments the controller watches, with their status (one owner per platform
    /// object is checked against them).
    environments: Option<Store<Decoded<Environment>>>,
    failures: Mutex<HashMap<String, u32>>,
    /// Per object (`namespace/name`), the resourceVersion of its own status write earlier in
    /// the reconcile under way (a Release's `Starting` record): what its conditional status
    /// write expects instead of the version read.
    written: Mutex<HashMap<String, String>>,
}

impl Context {
    /// A context for controllers talking to `client`.
    pub fn new(
        client: Client,
        metrics: ControllerMetrics,
        backoff: Backoff,
        platforms: Arc<Platforms>,
        pending_interval: Duration,
        supabase_database_url: String,
    ) -> Self {
        let reporter = Reporter {
            controller: FIELD_MANAGER.into(),
            // Tells replicas apart in `kubectl describe` (the chart sets POD_NAME).
            instance: std::env::var("POD_NAME").ok(),
        };
        let recorder = Events::new(client.clone(), reporter);
        Self {
            client,
            recorder,
            metrics,
            backoff,
            migration_runs: MigrationRuns::default(),
            platforms,
            pending_interval,
            supabase_database_url,
            prober: crate::controller::health::Prober::default(),
            prometheus: crate::controller::analysis::Prometheus::default(),
            notifier: crate::controller::notify::Notifier::default(),
            environments: None,
            failures: Mutex::default(),
            written: Mutex::default(),
        }
    }

    /// The context sending health checks with `prober`.
    pub fn with_prober(mut self, prober: crate::controller::health::Prober) -> Self {
        self.prober = prober;
        self
    }

    /// The context with the store of the watched Environments.
    pub fn with_environments(mut self, store: Store<Decoded<Environment>>) -> Self {
        self.environments = Some(store);
        self
    }

    /// The platform objects the watched Environments other than `except`
    /// (`namespace/name`) manage.
    pub fn owners_except(&self, except: &str) -> Owners {
        let Some(store) = &self.environments else {
            return Owners::default();
        };
        let store = store.clone();
        let except = except.to_string();
        Owners::new(move |platform, id| {
            let environments = store.state();
            Owners::lookup(
                environments.iter().filter_map(|env| {
                    let object = env.object().ok()?;
                    let objects = object.status.as_ref()?.objects.as_slice();
                    Some((object_key(object), objects))
                }),
                &except,
                platform,
                id,
            )
        })
    }

    fn record_failure(&self, key: &str) -> u32 {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let count = failures.entry(key.to_string()).or_insert(0);
        *count = count.saturating_add(1);
        *count
    }

    /// Records that the reconcile of `obj` under way wrote it, leaving `resource_version`.
    pub fn wrote<K: Resource>(&self, obj: &K, resource_version: Option<String>) {
        let mut written = self.written.lock().unwrap_or_else(|p| p.into_inner());
        match resource_version {
            Some(version) => written.insert(object_key(obj), version),
            None => written.remove(&object_key(obj)),
        };
    }

    /// The resourceVersion the reconcile of `key` under way last wrote, forgotten.
    fn take_written(&self, key: &str) -> Option<String> {
        self.written
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key)
    }

    fn clear_failures(&self, key: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }
}

/// What an apply concluded, ready to be written to status.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    /// The verdict conditions are computed from.
    pub verdict: Verdict,
    /// Kind-specific status fields (besides `observedGeneration` and `conditions`).
    pub status: serde_json::Map<String, serde_json::Value>,
    /// When to reconcile again (`None`: only on a change).
    pub requeue_after: Option<Duration>,
    /// Domain conditions beside the ones the verdict sets (e.g. a Migration's `Verified`).
    pub conditions: Vec<Condition>,
    /// Kind-specific events. Normal ones mark work done in this reconcile and are always
    /// published; Warning ones are published only when `Ready`/`Stalled` transition (the
    /// transition-only rule), in place of the generic transition event of the same reason.
    pub events: Vec<ReportEvent>,
}

/// An event a reconciler asks to publish on its object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReportEvent {
    /// `true` for a Warning event, `false` for Normal.
    pub warning: bool,
    /// PascalCase reason, e.g. `MigrationApplied`.
    pub reason: String,
    /// Human sentence; never a Secret value.
    pub note: String,
    /// Publish even without a `Ready`/`Stalled` transition: the reconciler already emits it
    /// only when its own condition transitions (a Warning like `DriftDetected`).
    pub always: bool,
    /// What was done, e.g. `Apply 20240101000000`. The shared `Recorder` folds events of
    /// the same type, reason and action on one object into a series, so events about
    /// different migrations carry different actions.
    pub action: String,
}

impl Report {
    /// A report for a suspended object: nothing done, nothing requeued.
    pub fn suspended() -> Self {
        Self {
            verdict: Verdict::Suspended,
            status: serde_json::Map::new(),
            requeue_after: None,
            conditions: Vec::new(),
            events: Vec::new(),
        }
    }
}

/// One kind's reconciler: observe → plan → act, reported as a [`Report`].
pub trait Reconciled:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + Debug
    + DeserializeOwned
    + Serialize
    + Send
    + Sync
    + Conditioned
    + 'static
{
    /// The `controller` metric label, e.g. `environment`.
    const CONTROLLER: &'static str;

    /// Whether status is written only over the version the reconcile read (or its own write
    /// since, [`Context::wrote`]): a reconcile of a version the cache still held after a
    /// newer one was written ends [`ReconcileError::Outdated`] instead of writing a status
    /// computed from the older one.
    const CONDITIONAL_STATUS: bool = false;

    /// Brings the world toward the spec. Permanent errors are turned into `Stalled` by the
    /// driver; transient ones are retried with backoff.
    fn apply(&self, ctx: &Context) -> impl Future<Output = Result<Report, ReconcileError>> + Send;

    /// Undoes what apply did. Idempotent, and works even if apply never ran.
    fn cleanup(&self, ctx: &Context) -> impl Future<Output = Result<(), ReconcileError>> + Send;
}

fn object_key<K: Resource>(obj: &K) -> String {
    format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any())
}

/// The reconcile function handed to `Controller::run`.
#[instrument(skip_all, fields(
    kind = %K::kind(&()),
    namespace = %obj.namespace().unwrap_or_default(),
    name = %obj.name_any(),
    generation = obj.meta().generation.unwrap_or_default(),
))]
pub async fn reconcile<K: Reconciled>(
    obj: Arc<Decoded<K>>,
    ctx: Arc<Context>,
) -> Result<Action, ReconcileError> {
    let started = Instant::now();
    let key = object_key(obj.as_ref());
    let namespace = obj.namespace().ok_or(ReconcileError::Unidentified)?;
    let api: Api<Decoded<K>> = Api::namespaced(ctx.client.clone(), &namespace);
    let had_finalizer = obj.finalizers().iter().any(|f| f == FINALIZER);
    let deleting = obj.meta().deletion_timestamp.is_some();

    let outcome = finalizer(&api, FINALIZER, obj.clone(), |event| async {
        // Nothing this object's earlier reconciles wrote is expected now.
        ctx.take_written(&key);
        match event {
            FinalizerEvent::Apply(obj) => apply(&api, &obj, &ctx).await,
            FinalizerEvent::Cleanup(obj) => {
                if let Ok(object) = obj.object()
                    && let Err(error) = guarded(object.cleanup(&ctx)).await
                {
                    if error.is_permanent() {
                        // Say on the object why it is not going away (the finalizer stays
                        // until cleanup succeeds).
                        warn!(error = %error, error_kind = error.kind(), "cleanup stalled");
                        let stalled = Report {
                            verdict: Verdict::Stalled {
                                reason: error.kind().to_string(),
                                message: error.stall_message(),
                            },
                            status: kept_status(&obj),
                            requeue_after: None,
                            conditions: Vec::new(),
                            events: Vec::new(),
                        };
                        write_status(&api, &obj, &stalled, &ctx).await?;
                        ctx.metrics
                            .set_stalled(kind_name::<K>(), &object_key(obj.as_ref()), true);
                    }
                    return Err(error);
                }
                ctx.metrics
                    .set_stalled(kind_name::<K>(), &object_key(obj.as_ref()), false);
                ctx.metrics
                    .observe(K::CONTROLLER, ReconcileResult::Success, started.elapsed());
                info!("cleanup finished; removing the finalizer");
                Ok(Action::await_change())
            }
        }
    })
    .await;

    let result = match outcome {
        Ok(action) if !had_finalizer && !deleting => {
            // `finalizer` only added the finalizer; the patch queues the object again.
            ctx.metrics
                .observe(K::CONTROLLER, ReconcileResult::Requeue, started.elapsed());
            Ok(action)
        }
        Ok(action) => Ok(action),
        Err(error) => Err(ReconcileError::from(error)),
    };
    if let Err(ReconcileError::Outdated) = result {
        // Not a failure: the cache held an older version than the API (its watch event is
        // on the way and wakes the object again; the requeue is the fallback).
        info!("read an outdated version; nothing done, the newer one is reconciled next");
        ctx.metrics
            .observe(K::CONTROLLER, ReconcileResult::Requeue, started.elapsed());
        return Ok(Action::requeue(ctx.backoff.min));
    }
    if result.is_ok() {
        ctx.clear_failures(&key);
    }
    if let Err(error) = &result {
        ctx.metrics
            .observe(K::CONTROLLER, ReconcileResult::Error, started.elapsed());
        warn!(error = %error, error_kind = error.kind(), "reconcile failed");
    }
    result
}

/// Runs a kind's apply or cleanup, turning a panic into [`ReconcileError::Panicked`]: an
/// object the code cannot handle stalls with the panic's message, and the controller goes on
/// with the others (a panic would otherwise end the controller's whole stream).
async fn guarded<T>(
    work: impl Future<Output = Result<T, ReconcileError>>,
) -> Result<T, ReconcileError> {
    match std::panic::AssertUnwindSafe(work).catch_unwind().await {
        Ok(result) => result,
        Err(payload) => {
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_string());
            Err(ReconcileError::Panicked(message))
        }
    }
}

fn kind_name<K: Resource<DynamicType = ()>>() -> &'static str {
    // The three kinds' names are static; anything else is a programming error caught by
    // the metrics test, not a runtime branch.
    match K::kind(&()).as_ref() {
        "Environment" => "Environment",
        "Release" => "Release",
        "Migration" => "Migration",
        _ => "Unknown",
    }
}

/// The apply branch: run the kind's apply, turn permanent errors into `Stalled`, write
/// status, publish the transition event, record metrics.
async fn apply<K: Reconciled>(
    api: &Api<Decoded<K>>,
    obj: &Decoded<K>,
    ctx: &Context,
) -> Result<Action, ReconcileError> {
    let started = Instant::now();
    let applied = match obj.object() {
        Ok(object) => guarded(object.apply(ctx)).await,
        Err(message) => Err(ReconcileError::Decode(message.to_string())),
    };
    let report = match applied {
        Ok(report) => report,
        Err(error) if error.is_permanent() => {
            warn!(error = %error, error_kind = error.kind(), "stalled until a change");
            Report {
                verdict: Verdict::Stalled {
                    reason: error.kind().to_string(),
                    message: error.stall_message(),
                },
                // What is known (platform ids, fingerprints of what was written) outlives
                // the stall: status is applied whole, so fields left out would be removed.
                status: kept_status(obj),
                requeue_after: None,
                conditions: Vec::new(),
                events: Vec::new(),
            }
        }
        Err(error) => return Err(error),
    };
    write_status(api, obj, &report, ctx).await?;
    let stalled = report.verdict.is_stalled();
    ctx.metrics
        .set_stalled(kind_name::<K>(), &object_key(obj), stalled);
    let result = if stalled {
        ReconcileResult::Error
    } else {
        ReconcileResult::Success
    };
    ctx.metrics
        .observe(K::CONTROLLER, result, started.elapsed());
    Ok(report
        .requeue_after
        .map_or_else(Action::await_change, Action::requeue))
}

/// The kind-specific fields of the object's current status (all but `conditions` and
/// `observedGeneration`, which every status write sets), to write back unchanged.
fn kept_status<K: Reconciled>(obj: &Decoded<K>) -> serde_json::Map<String, serde_json::Value> {
    let Ok(object) = obj.object() else {
        return serde_json::Map::new();
    };
    let mut status = match serde_json::to_value(object) {
        Ok(serde_json::Value::Object(mut value)) => match value.remove("status") {
            Some(serde_json::Value::Object(status)) => status,
            _ => serde_json::Map::new(),
        },
        _ => serde_json::Map::new(),
    };
    status.remove("conditions");
    status.remove("observedGeneration");
    status.retain(|_, v| !v.is_null());
    status
}

async fn write_status<K: Reconciled>(
    api: &Api<Decoded<K>>,
    obj: &Decoded<K>,
    report: &Report,
    ctx: &Context,
) -> Result<(), ReconcileError> {
    let generation = obj.meta().generation;
    let now = jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .unwrap_or_else(|_| jiff::Timestamp::now())
        .to_string();
    let previous = obj.conditions();
    let mut next = conditions::next_conditions(previous, &report.verdict, generation, &now);
    for domain in &report.conditions {
        match next.iter_mut().find(|c| c.type_ == domain.type_) {
            Some(slot) => *slot = domain.clone(),
            None => next.push(domain.clone()),
        }
    }
    let mut status = report.status.clone();
    status.insert("observedGeneration".into(), serde_json::json!(generation));
    status.insert("conditions".into(), serde_json::json!(next));
    let mut patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    let written = ctx.take_written(&object_key(obj));
    if K::CONDITIONAL_STATUS {
        let expected = written.or_else(|| obj.resource_version());
        patch["metadata"] = serde_json::json!({ "resourceVersion": expected });
    }
    let name = obj.name_any();
    match api
        .patch_status(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if K::CONDITIONAL_STATUS && e.code == 409 => {
            return Err(ReconcileError::Outdated);
        }
        Err(error) => return Err(ReconcileError::PatchStatus(error)),
    }

    let transition = conditions::transition_event(previous, &next);
    let mut events: Vec<ReportEvent> = report
        .events
        .iter()
        .filter(|e| !e.warning || e.always || transition.is_some())
        .cloned()
        .collect();
    if let Some(event) = transition
        && !events.iter().any(|e| e.reason == event.reason)
    {
        events.insert(
            0,
            ReportEvent {
                warning: event.warning,
                reason: event.reason,
                note: event.note,
                always: false,
                action: "Reconcile".into(),
            },
        );
    }
    for event in events {
        let published = ctx
            .recorder
            .publish(
                &Event {
                    type_: if event.warning {
                        EventType::Warning
                    } else {
                        EventType::Normal
                    },
                    reason: event.reason,
                    note: Some(event.note),
                    action: event.action,
                    secondary: None,
                },
                &obj.object_ref(&()),
            )
            .await;
        if let Err(error) = published {
            // An event is a notification, not state: losing one must not fail the reconcile.
            warn!(error = %error, "failed to publish an event");
        }
    }
    Ok(())
}

/// The error policy handed to `Controller::run`: exponential backoff with jitter per
/// object, within `--min-retry-interval` and `--max-retry-interval`.
pub fn error_policy<K: Reconciled>(
    obj: Arc<Decoded<K>>,
    _error: &ReconcileError,
    ctx: Arc<Context>,
) -> Action {
    let failures = ctx.record_failure(&object_key(obj.as_ref()));
    Action::requeue(ctx.backoff.delay(failures, rand::random::<f64>()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panic_in_apply_is_a_permanent_error_with_its_message() {
        let panicked = guarded(async {
            if true {
                panic!("cannot convert float seconds to Duration");
            }
            Ok(())
        })
        .await
        .unwrap_err();
        assert!(panicked.is_permanent());
        assert_eq!(panicked.kind(), "InternalError");
        assert_eq!(
            panicked.stall_message(),
            "internal error (a bug in Tether, please report it): cannot convert float seconds to Duration"
        );
        let formatted = guarded(async {
            let n = 3;
            if n > 2 {
                panic!("index {n} out of range");
            }
            Ok(())
        })
        .await
        .unwrap_err();
        assert!(formatted.to_string().ends_with("index 3 out of range"));
        assert!(guarded(async { Ok::<_, ReconcileError>(7) }).await.is_ok());
    }
}
