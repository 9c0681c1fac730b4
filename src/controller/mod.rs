//! The controllers: one reconciler per kind on `kube::runtime::Controller`, and the shared
//! runtime around them.
//!
//! A tour, in the order a change flows through:
//! - [`run`] starts the three controllers (Environment, Release, Migration), each watching
//!   its kind (through [`decoded::Decoded`], so a malformed object never blocks the others)
//!   plus the Secrets, ConfigMaps and Environments its objects reference; a change of a
//!   referenced object is mapped to the objects naming it through the controller's own
//!   reflector store.
//! - [`reconcile`] is the contract every reconcile goes through: finalizer, permanent errors
//!   as `Stalled`, status by server-side apply, events on transitions, backoff, metrics.
//! - [`environment`], [`release`], [`migration`]: the reconcilers, each observe → plan → act
//!   → report with a pure plan; [`references`] resolves what a spec names; [`conditions`]
//!   computes kstatus conditions.
//! - [`events`]: the shared event recorder, its memory bounded; [`server`]: `/metrics`,
//!   `/healthz`, `/readyz`; [`leader`]: Lease-based leader
//!   election; [`rbac`]: the API calls the controllers make; [`cli`]: `tether controller`.

pub mod analysis;
pub mod cli;
pub mod conditions;
pub mod decoded;
pub mod environment;
pub mod error;
pub mod events;
pub mod gates;
pub mod health;
pub mod leader;
pub mod metrics;
pub mod migration;
pub mod notify;
pub mod progress;
pub mod rbac;
pub mod reconcile;
pub mod references;
pub mod release;
pub mod rollout;
pub mod server;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Config as RuntimeConfig, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use tracing::{info, warn};

use crate::api::release::ReleasePhase;
use crate::api::{Environment, Migration, Release};
use crate::sync::{Platforms, PlatformsConfig};
use crate::telemetry::MetricsRegistry;
use decoded::Decoded;
use error::Backoff;
use metrics::ControllerMetrics;
use reconcile::{Context, Reconciled};
pub use server::Health;

/// How long shutdown may take from the signal to the exit, whatever hangs (the chart gives
/// the pod more, but a 10 s budget keeps rollouts fast).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// How long in-flight reconciles get to finish after shutdown is requested (a reconcile in a
/// slow platform call, or a controller waiting for its first list, would otherwise wait
/// forever); the rest of [`SHUTDOWN_GRACE`] releases the lease and stops the servers.
pub const RECONCILE_GRACE: Duration = Duration::from_secs(7);

/// Ends the process if shutdown, requested now, is still running when [`SHUTDOWN_GRACE`]
/// is nearly over: a last resort, so that no stuck component outlives the grace period.
pub fn exit_if_shutdown_overruns() {
    tokio::spawn(async {
        tokio::time::sleep(SHUTDOWN_GRACE - Duration::from_millis(500)).await;
        tracing::error!("shutdown did not finish within {SHUTDOWN_GRACE:?}; exiting now");
        std::process::exit(1);
    });
}

/// What the controllers watch and how they retry.
#[derive(Clone, Debug)]
pub struct ControllerConfig {
    /// Watch only this namespace (`None`: all namespaces).
    pub namespace: Option<String>,
    /// Reconcile only objects matching this label selector.
    pub selector: Option<String>,
    /// First retry delay after a transient error.
    pub min_retry: Duration,
    /// Longest retry delay.
    pub max_retry: Duration,
    /// Reconciles running at once per controller.
    pub concurrency: u16,
    /// Where the platform APIs are and how to talk to them.
    pub platforms: PlatformsConfig,
    /// How soon an Environment whose platform objects are still coming up (a Supabase
    /// project, a Render database, a deploy) is looked at again.
    pub pending_interval: Duration,
    /// Template of a Supabase project's database URL for Migrations that name an
    /// Environment (`{ref}` = the project ref; the password comes from the Environment).
    pub supabase_database_url: String,
    /// Send every Release health check to this base URL, with the checked URL's host in
    /// the `Host` header (the sandbox's app edge); `None`: to the checked URL itself.
    pub health_check_via: Option<reqwest::Url>,
}

/// Where a Supabase project's database listens (direct connection, TLS required).
pub const DEFAULT_SUPABASE_DATABASE_URL: &str =
    "postgres://postgres@db.{ref}.supabase.co:5432/postgres?sslmode=require";

impl Default for ControllerConfig {
    fn default() -> Self {
        Self {
            namespace: None,
            selector: None,
            min_retry: Duration::from_secs(5),
            max_retry: Duration::from_secs(300),
            concurrency: 4,
            platforms: PlatformsConfig::default(),
            pending_interval: Duration::from_secs(15),
            supabase_database_url: DEFAULT_SUPABASE_DATABASE_URL.to_string(),
            health_check_via: None,
        }
    }
}

/// Why the controllers could not run.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// Registering metrics failed (a name registered twice).
    #[error("failed to register controller metrics: {0}")]
    RegisterMetrics(#[from] prometheus::Error),
    /// Leader election failed to start (the Lease could not be read or created).
    #[error("failed to start leader election on Lease {lease}: {source}")]
    LeaderElection {
        /// `namespace/name` of the Lease.
        lease: String,
        /// The lease manager's error.
        source: kube_lease_manager::LeaseManagerError,
    },
    /// The lease manager stopped on its own, so leadership can no longer be known.
    #[error("failed to keep leader election running: the lease manager stopped")]
    LeaseManagerStopped,
    /// The leader could not renew its Lease within the renew deadline: it stopped its
    /// controllers before a standby may take over, and the process exits so that it starts
    /// again as a candidate (controller-runtime does the same).
    #[error(
        "failed to keep leadership on Lease {lease}: it could not be renewed within the renew deadline ({deadline:?})"
    )]
    LeadershipLapsed {
        /// `namespace/name` of the Lease.
        lease: String,
        /// The renew deadline.
        deadline: std::time::Duration,
    },
    /// A controller task panicked.
    #[error("failed to run the {0} controller: its task ended abnormally")]
    Join(&'static str),
    /// A controller's loop ended while the process was not shutting down: the process can
    /// no longer do its job, so it stops (and `/healthz` fails until it does).
    #[error("failed to keep the {0} controller running: its loop stopped")]
    Stopped(&'static str),
}

/// Runs the three controllers until `shutdown`; registers metrics into `metrics`; `health`
/// turns ready once every controller's cache has synced.
pub async fn run(
    client: Client,
    config: ControllerConfig,
    metrics: MetricsRegistry,
    health: Health,
    shutdown: CancellationToken,
) -> Result<(), ControllerError> {
    let metrics = ControllerMetrics::register(&metrics)?;
    run_registered(client, &config, metrics, health, shutdown).await
}

/// What the reconcilers of `config` share (the Environment store aside, which
/// [`Context::with_environments`] adds).
pub fn context(client: Client, config: &ControllerConfig, metrics: ControllerMetrics) -> Context {
    let backoff = Backoff {
        min: config.min_retry,
        max: config.max_retry,
    };
    let platforms = Platforms::new(config.platforms.clone(), metrics.platform().clone());
    Context::new(
        client,
        metrics,
        backoff,
        platforms,
        config.pending_interval,
        config.supabase_database_url.clone(),
    )
    .with_prober(health::Prober::new(config.health_check_via.clone()))
}

/// [`run`] with metrics already registered (leader election starts the controllers once
/// per leadership term).
pub(crate) async fn run_registered(
    client: Client,
    config: &ControllerConfig,
    metrics: ControllerMetrics,
    health: Health,
    shutdown: CancellationToken,
) -> Result<(), ControllerError> {
    let (env_store, env_writer) = reflector::store();
    let ctx =
        Arc::new(context(client.clone(), config, metrics).with_environments(env_store.clone()));
    let watch = match &config.selector {
        Some(selector) => watcher::Config::default().labels(selector),
        None => watcher::Config::default(),
    };
    let runtime = RuntimeConfig::default().concurrency(config.concurrency);
    let ns = config.namespace.as_deref();

    // The watches of referenced objects ask for metadata only (`PartialObjectMeta`: what
    // the mappers read), so no spec, status or Secret data crosses the wire, fills a list
    // page or sits in controller memory.
    //
    // An Environment's own status writes do not trigger it again: the resync interval and
    // the requeues schedule those reconciles (see `environment::changed`).
    let env_changes = watcher::watcher(api::<Decoded<Environment>>(&client, ns), watch.clone())
        .reflect(env_writer)
        .applied_objects()
        .predicate_filter(environment::changed, Default::default());
    let environments =
        Controller::for_stream(env_changes, env_store.clone()).with_config(runtime.clone());
    let environments = environments.watches(
        api::<PartialObjectMeta<Secret>>(&client, ns),
        watcher::Config::default(),
        referencing(
            env_store.clone(),
            |env: &Environment, secret: &PartialObjectMeta<Secret>| {
                environment::references_secret(env, &secret.name_any())
            },
        ),
    );

    let releases = Controller::new(api::<Decoded<Release>>(&client, ns), watch.clone())
        .with_config(runtime.clone());
    let release_store = releases.store();
    let releases = releases
        .watches(
            api::<PartialObjectMeta<Environment>>(&client, ns),
            watcher::Config::default(),
            referencing(
                release_store.clone(),
                |rel: &Release, env: &PartialObjectMeta<Environment>| {
                    // A Release that ended stays as it ended: its Environment's changes (a
                    // status write every reconcile) would only rewrite its status.
                    if rel
                        .status
                        .as_ref()
                        .and_then(|s| s.phase)
                        .is_some_and(ReleasePhase::is_final)
                    {
                        return false;
                    }
                    let name = env.name_any();
                    rel.spec.environment_ref.name == name
                        || rel
                            .spec
                            .promotion
                            .as_ref()
                            .is_some_and(|p| p.from_environment == name)
                },
            ),
        )
        .watches(
            api::<PartialObjectMeta<Migration>>(&client, ns),
            watcher::Config::default(),
            referencing(
                release_store.clone(),
                |rel: &Release, mig: &PartialObjectMeta<Migration>| {
                    rel.spec.migrations.contains(&mig.name_any())
                },
            ),
        );

    let migrations =
        Controller::new(api::<Decoded<Migration>>(&client, ns), watch).with_config(runtime);
    let migration_store = migrations.store();
    let migrations = migrations
        .watches(
            api::<PartialObjectMeta<Environment>>(&client, ns),
            watcher::Config::default(),
            referencing(
                migration_store.clone(),
                |m: &Migration, env: &PartialObjectMeta<Environment>| {
                    m.spec
                        .database
                        .environment_ref
                        .as_ref()
                        .is_some_and(|r| r.name == env.name_any())
                },
            ),
        )
        .watches(
            api::<PartialObjectMeta<Secret>>(&client, ns),
            watcher::Config::default(),
            referencing(
                migration_store.clone(),
                |m: &Migration, s: &PartialObjectMeta<Secret>| {
                    m.spec
                        .database
                        .connection_secret_ref
                        .as_ref()
                        .is_some_and(|r| r.name == s.name_any())
                },
            ),
        )
        .watches(
            api::<PartialObjectMeta<ConfigMap>>(&client, ns),
            watcher::Config::default(),
            referencing(
                migration_store.clone(),
                |m: &Migration, c: &PartialObjectMeta<ConfigMap>| {
                    m.spec
                        .source
                        .config_map_ref
                        .as_ref()
                        .is_some_and(|r| r.name == c.name_any())
                },
            ),
        );

    let readiness = AbortOnDropHandle::new(tokio::spawn({
        let health = health.clone();
        async move {
            let synced = futures::future::join3(
                synced(&env_store),
                synced(&release_store),
                synced(&migration_store),
            )
            .await;
            if let (Ok(()), Ok(()), Ok(())) = synced {
                info!("caches synced; ready");
                health.set_ready(true);
            }
        }
    }));

    // The three loops share one fate: if one stops before shutdown, the others are stopped
    // too and the process reports it, instead of serving half its objects while healthy.
    let term = shutdown.child_token();
    let mut tasks = vec![
        (
            "environment",
            spawn_controller(environments, ctx.clone(), term.clone()),
        ),
        (
            "release",
            spawn_controller(releases, ctx.clone(), term.clone()),
        ),
        ("migration", spawn_controller(migrations, ctx, term.clone())),
    ];
    let mut result = Ok(());
    while !tasks.is_empty() {
        let (joined, index, _) =
            futures::future::select_all(tasks.iter_mut().map(|(_, task)| task)).await;
        let (name, _) = tasks.remove(index);
        if joined.is_err() {
            result = result.and(Err(ControllerError::Join(name)));
        } else if !term.is_cancelled() {
            result = result.and(Err(ControllerError::Stopped(name)));
        }
        if result.is_err() && !term.is_cancelled() {
            tracing::error!(
                controller = name,
                "a controller loop stopped; stopping the others"
            );
            health.set_failed(name);
            term.cancel();
        }
    }
    readiness.abort();
    health.set_ready(false);
    result
}

/// Waits until `store` has its first complete list.
///
/// `Store::wait_until_ready` keeps one waker per store, and the controller's own applier
/// waits on the same store, so a second waiter can miss the wake-up; polling it again on a
/// short tick makes the wait reliable.
async fn synced<K>(store: &Store<K>) -> Result<(), kube::runtime::reflector::store::WriterDropped>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    loop {
        if let Ok(result) =
            tokio::time::timeout(Duration::from_millis(100), store.wait_until_ready()).await
        {
            return result;
        }
    }
}

fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// A watch mapper: the objects in `store`, in the changed object's namespace, that
/// `references` says name it. Reads the reflector store, never the API.
fn referencing<K, Other>(
    store: Store<Decoded<K>>,
    references: impl Fn(&K, &Other) -> bool + Send + Sync + 'static,
) -> impl Fn(Other) -> Vec<ObjectRef<Decoded<K>>> + Send + Sync + 'static
where
    K: Reconciled,
    Other: Resource,
{
    move |other: Other| {
        let namespace = other.meta().namespace.clone();
        store
            .state()
            .iter()
            .filter(|obj| obj.meta().namespace == namespace)
            .filter(|obj| obj.object().is_ok_and(|k| references(k, &other)))
            .map(|obj| ObjectRef::from_obj(obj.as_ref()))
            .collect()
    }
}

/// Runs one controller until `shutdown`, logging (never propagating) every error the
/// runtime reports, and bounding the shutdown by [`RECONCILE_GRACE`]. The task is aborted
/// when its handle is dropped: a caller that stops (or is killed) takes its controllers
/// with it.
fn spawn_controller<K: Reconciled>(
    controller: Controller<Decoded<K>>,
    ctx: Arc<Context>,
    shutdown: CancellationToken,
) -> AbortOnDropHandle<()> {
    let stop = shutdown.clone();
    let stream = controller
        .graceful_shutdown_on(async move { stop.cancelled().await })
        .run(reconcile::reconcile::<K>, reconcile::error_policy::<K>, ctx)
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => tracing::trace!(%object, "reconciled"),
                Err(kube::runtime::controller::Error::ReconcilerFailed(..)) => {
                    // Already logged and counted by the reconcile driver.
                }
                Err(error) => warn!(controller = K::CONTROLLER, %error, "controller stream error"),
            }
        });
    AbortOnDropHandle::new(tokio::spawn(async move {
        tokio::select! {
            () = stream => {}
            () = async {
                shutdown.cancelled().await;
                tokio::time::sleep(RECONCILE_GRACE).await;
            } => warn!(controller = K::CONTROLLER, "shutdown grace period ran out"),
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::reflector::store::Writer;
    use kube::runtime::watcher::Event;

    fn decoded(value: serde_json::Value) -> Decoded<Environment> {
        serde_json::from_value(value).unwrap()
    }

    fn env(namespace: &str, name: &str, token_secret: &str) -> Decoded<Environment> {
        decoded(serde_json::json!({
            "apiVersion": "tether.dev/v1alpha1", "kind": "Environment",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"credentials": {"fly": {"name": token_secret}}},
        }))
    }

    fn secret(namespace: &str, name: &str) -> PartialObjectMeta<Secret> {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": namespace},
        }))
        .unwrap()
    }

    #[test]
    fn a_secret_change_maps_to_the_objects_in_its_namespace_that_reference_it() {
        let mut writer: Writer<Decoded<Environment>> = Writer::default();
        for obj in [
            env("a", "uses-it", "fly-token"),
            env("a", "other", "different"),
            env("b", "same-name-other-namespace", "fly-token"),
            decoded(serde_json::json!({
                "metadata": {"name": "malformed", "namespace": "a"},
                "spec": {"suspend": "no"},
            })),
        ] {
            writer.apply_watcher_event(&Event::Apply(obj));
        }
        let mapper = referencing(
            writer.as_reader(),
            |env: &Environment, s: &PartialObjectMeta<Secret>| {
                environment::references_secret(env, &s.name_any())
            },
        );
        let refs = mapper(secret("a", "fly-token"));
        let names: Vec<&str> = refs.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["uses-it"]);
        assert!(mapper(secret("a", "unrelated")).is_empty());
    }
}
