//! `tether run`: standalone mode, no cluster needed.
//!
//! Starts the embedded Kubernetes API ([`crate::localapi`]) with its store in
//! `<state-dir>/store.redb`, over HTTPS and requiring a bearer token (both kept in the state
//! directory, [`crate::localapi::security`]), writes `<state-dir>/kubeconfig` for kubectl
//! (with the CA certificate and the token), applies every
//! manifest under `--manifests` as `kubectl apply --server-side` would, prunes what was
//! removed, keeps watching the directory, runs the controllers, and prints progress lines.
//!
//! Flow: [`run`] (signals, runtime) → [`serve`]: start API → kubeconfig → progress watchers
//! → controllers → [`sync::Syncer`] pass (scan → parse → resolve → apply → prune) → wait for
//! a directory change ([`dirwatch`]) → pass → … → shutdown.

pub mod apply;
pub mod dirwatch;
pub mod inventory;
pub mod manifests;
pub mod progress;
pub mod sync;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::localapi::access::{restrict_to_owner, write_owner_only};
use crate::localapi::security::{ApiSecurity, SecurityError};
use crate::localapi::{LocalApiConfig, LocalApiError, StoreConfig};
use progress::{Progress, Reporter};

/// How long a burst of file changes must be quiet before a sync pass starts.
const DEBOUNCE: Duration = Duration::from_millis(300);
/// How long the start waits for the progress watchers' first list.
const WATCHERS_LISTED: Duration = Duration::from_secs(5);
/// How long shutdown waits for the API server and the controllers to stop (within the 10 s
/// grace period, [`crate::controller::SHUTDOWN_GRACE`]).
const DRAIN: Duration = Duration::from_secs(9);
/// The shortest poll of objects coming up on the sandbox, however fast its clock runs.
const MIN_PENDING_INTERVAL: Duration = Duration::from_millis(250);

/// Flags of `tether run`.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Directory of manifests (`*.yaml`, `*.yml`, searched recursively).
    #[arg(long, value_name = "DIR")]
    pub manifests: PathBuf,
    /// Where the store (`store.redb`) and the kubeconfig are kept; a restart keeps everything.
    #[arg(long, value_name = "DIR", default_value = ".tether")]
    pub state_dir: PathBuf,
    /// Address of the embedded API server (loopback; port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub addr: SocketAddr,
    /// Log filter for stderr logs, in RUST_LOG syntax (`info`, `tether=debug,kube=warn`).
    #[arg(long, default_value = "warn")]
    pub log_level: String,
    /// Start the built-in sandbox of the four platform APIs in process and point every
    /// platform client at it (tokens `sandbox-<platform>-token`, as in the samples). Its
    /// state lives in memory: after a restart Tether creates the objects again.
    #[arg(long)]
    pub sandbox: bool,
    /// With `--sandbox`: simulated seconds per wall-clock second (deploys and projects come
    /// up this many times faster; rate-limit windows pass as fast).
    #[arg(long, default_value_t = 10.0, requires = "sandbox")]
    pub sandbox_time_scale: f64,
    /// Render API base URL, as for `tether controller` (ignored with `--sandbox`).
    #[arg(long, env = "TETHER_RENDER_URL", default_value = crate::sync::default_endpoint(crate::platform::Platform::Render))]
    pub render_url: String,
    /// Vercel API base URL (ignored with `--sandbox`).
    #[arg(long, env = "TETHER_VERCEL_URL", default_value = crate::sync::default_endpoint(crate::platform::Platform::Vercel))]
    pub vercel_url: String,
    /// Fly.io Machines API base URL (ignored with `--sandbox`).
    #[arg(long, env = "TETHER_FLY_URL", default_value = crate::sync::default_endpoint(crate::platform::Platform::Fly))]
    pub fly_url: String,
    /// Supabase Management API base URL (ignored with `--sandbox`).
    #[arg(long, env = "TETHER_SUPABASE_URL", default_value = crate::sync::default_endpoint(crate::platform::Platform::Supabase))]
    pub supabase_url: String,
}

/// Why `tether run` could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// `--sandbox` was given but the sandbox did not start.
    #[error("failed to start the platform sandbox: {0}")]
    Sandbox(#[from] crate::sandbox::SandboxError),
    /// `--manifests` is not a readable directory.
    #[error("failed to open manifest directory {path}: {reason}")]
    ManifestDir {
        /// The path given.
        path: PathBuf,
        /// Why it cannot be used.
        reason: String,
    },
    /// `--addr` is not a loopback address.
    #[error(
        "failed to use --addr {0}: the embedded API server serves Secrets and is meant for \
         this machine only, so it only listens on a loopback address (127.0.0.1 or ::1)"
    )]
    NotLoopback(SocketAddr),
    /// The state directory could not be created.
    #[error("failed to create state directory {path}: {source}")]
    StateDir {
        /// The path given.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The API token or the TLS certificate could not be loaded or created.
    #[error("failed to set up the embedded API server's token and certificate: {0}")]
    Security(#[from] SecurityError),
    /// The embedded API server did not start.
    #[error("failed to start the embedded API server: {0}")]
    StartApi(#[from] LocalApiError),
    /// The kubeconfig could not be written.
    #[error("failed to write kubeconfig {path}: {reason}")]
    Kubeconfig {
        /// Where it should have gone.
        path: PathBuf,
        /// Why it could not be written.
        reason: String,
    },
    /// The directory watch did not start.
    #[error(transparent)]
    Watch(#[from] dirwatch::WatchError),
    /// The async runtime or signal handlers could not be set up.
    #[error("failed to start the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

/// Runs `tether run` until Ctrl-C or SIGTERM: builds the async runtime, installs the signal
/// handlers and calls [`serve`].
pub fn run(args: RunArgs) -> Result<(), RunError> {
    crate::telemetry::init_tracing(&args.log_level, crate::telemetry::LogFormat::Text);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(RunError::Runtime)?;
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(RunError::Runtime)?;
        let on_signal = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = sigterm.recv() => {}
            }
            crate::controller::exit_if_shutdown_overruns();
            on_signal.cancel();
        });
        serve(args, Reporter::stdout(), shutdown).await
    })
}

/// Serves `tether run` until `shutdown` is cancelled, printing progress to `reporter`.
pub async fn serve(
    args: RunArgs,
    reporter: Reporter,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    if !args.manifests.is_dir() {
        return Err(RunError::ManifestDir {
            path: args.manifests.clone(),
            reason: "not a directory".into(),
        });
    }
    if !args.addr.ip().is_loopback() {
        return Err(RunError::NotLoopback(args.addr));
    }
    create_state_dir(&args.state_dir).map_err(|source| RunError::StateDir {
        path: args.state_dir.clone(),
        source,
    })?;
    let store = args.state_dir.join("store.redb");
    let crds = crate::api::crds();
    let security = ApiSecurity::load_or_create(&args.state_dir)?;

    // Everything started below stops with `stop`; `shutdown` only triggers it, so the
    // order of stopping stays ours (sync loop first, then controllers, then the API).
    let stop = CancellationToken::new();
    // An early return (a failed start step) stops whatever was already started.
    let _stop_on_return = stop.clone().drop_guard();
    let api = crate::localapi::start(
        LocalApiConfig {
            addr: args.addr,
            store: StoreConfig::File(store.clone()),
            crds: crds.clone(),
            security: Some(security),
        },
        stop.clone(),
    )
    .await?;
    let client = api.client();
    let kubeconfig = args.state_dir.join("kubeconfig");
    write_kubeconfig(&kubeconfig, &api.kubeconfig())?;
    reporter.print(Progress::Listening {
        url: api.url(),
        store: store.display().to_string(),
    });
    reporter.print(Progress::KubectlHint {
        kubeconfig: kubeconfig.display().to_string(),
    });

    // The progress watchers list first, so every change from the first sync pass on is
    // printed (bounded: a watcher that cannot list only costs its lines, not the run).
    let mut tasks = tokio::task::JoinSet::new();
    let watchers = crds.len() + 1;
    let (listed, mut listed_rx) = tokio::sync::mpsc::channel(watchers);
    tasks.spawn(progress::watch_conditions(
        client.clone(),
        crds.clone(),
        reporter.clone(),
        listed.clone(),
        stop.clone(),
    ));
    tasks.spawn(progress::watch_events(
        client.clone(),
        reporter.clone(),
        listed,
        stop.clone(),
    ));
    let all_listed = async {
        for _ in 0..watchers {
            listed_rx.recv().await;
        }
    };
    if tokio::time::timeout(WATCHERS_LISTED, all_listed)
        .await
        .is_err()
    {
        tracing::warn!("progress watchers did not list within {WATCHERS_LISTED:?}");
    }

    let mut config = crate::controller::ControllerConfig::default();
    let sandbox = if args.sandbox {
        let handle = crate::sandbox::start(
            crate::sandbox::SandboxConfig {
                time_scale: args.sandbox_time_scale,
                tokens: crate::platform::Platform::ALL
                    .into_iter()
                    .map(|p| (p, crate::sandbox::sample_token(p)))
                    .collect(),
                ..crate::sandbox::SandboxConfig::default()
            },
            stop.clone(),
        )
        .await?;
        for (platform, url, _) in handle.endpoints() {
            reporter.print(Progress::Sandbox {
                platform: platform.to_string(),
                url,
            });
        }
        reporter.print(Progress::AppEdge {
            url: handle.edge_url().to_string(),
        });
        config.platforms = handle.platforms_config(args.sandbox_time_scale);
        // Health checks reach the sandbox's apps through its edge.
        config.health_check_via = handle.edge_url().parse().ok();
        // Objects coming up are polled every 15 simulated seconds, as on the real platforms:
        // the sandbox's clock runs `time_scale` times faster than the wall clock.
        config.pending_interval = config
            .pending_interval
            .div_f64(args.sandbox_time_scale)
            .max(MIN_PENDING_INTERVAL);
        Some(handle)
    } else {
        use crate::platform::Platform;
        config.platforms.endpoints = [
            (Platform::Render, args.render_url.clone()),
            (Platform::Vercel, args.vercel_url.clone()),
            (Platform::Fly, args.fly_url.clone()),
            (Platform::Supabase, args.supabase_url.clone()),
        ]
        .into();
        None
    };
    tasks.spawn(run_controllers(
        client.clone(),
        config,
        reporter.clone(),
        stop.clone(),
    ));

    let mut watch = dirwatch::DirWatch::start(&args.manifests, &args.state_dir, DEBOUNCE)?;
    let tether_groups: Vec<String> = crds.iter().map(|c| c.spec.group.clone()).collect();
    let mut syncer = sync::Syncer::new(
        client,
        &args.manifests,
        &args.state_dir,
        tether_groups,
        reporter.clone(),
    );
    // A pass may be cut short by shutdown: every apply is idempotent and the inventory's
    // intent record covers objects created just before, so the next start finishes the job.
    let first = sync_and_report(&mut syncer, &reporter, &args.manifests);
    let mut stopping = tokio::select! {
        _ = first => false,
        _ = shutdown.cancelled() => true,
    };
    if !stopping {
        reporter.print(Progress::Watching {
            dir: args.manifests.display().to_string(),
        });
    }
    while !stopping {
        stopping = tokio::select! {
            _ = shutdown.cancelled() => true,
            changed = watch.changed() => {
                if changed {
                    let pass = sync_and_report(&mut syncer, &reporter, &args.manifests);
                    tokio::select! {
                        _ = pass => false,
                        _ = shutdown.cancelled() => true,
                    }
                } else {
                    // The watch ended (cannot happen while `watch` lives): keep serving.
                    shutdown.cancelled().await;
                    true
                }
            }
        };
    }

    reporter.print(Progress::Stopping);
    stop.cancel();
    let drained = async {
        while tasks.join_next().await.is_some() {}
        if let Some(sandbox) = sandbox {
            sandbox.stopped().await;
        }
        api.stopped().await;
    };
    if tokio::time::timeout(DRAIN, drained).await.is_err() {
        tracing::warn!("components did not stop within {DRAIN:?}; exiting anyway");
    }
    Ok(())
}

/// Runs the Environment, Release and Migration controllers against the embedded API until
/// `stop`: every namespace, no label selector, and no leader election (the store belongs to
/// this one process; a second `tether run` on the same state directory cannot open it).
/// Their metrics go to a registry of their own: `tether run` serves no `/metrics`.
async fn run_controllers(
    client: kube::Client,
    config: crate::controller::ControllerConfig,
    reporter: Reporter,
    stop: CancellationToken,
) {
    let ran = crate::controller::run(
        client,
        config,
        crate::telemetry::MetricsRegistry::new(),
        crate::controller::Health::new(),
        stop,
    )
    .await;
    if let Err(err) = ran {
        reporter.print(Progress::Error {
            place: "controllers".into(),
            object: None,
            reason: err.to_string(),
        });
    }
}

/// A failed pass (directory unreadable, inventory unreachable) is printed; the next change
/// triggers another pass.
async fn sync_and_report(syncer: &mut sync::Syncer, reporter: &Reporter, dir: &Path) {
    if let Err(err) = syncer.sync().await {
        reporter.print(Progress::Error {
            place: dir.display().to_string(),
            object: None,
            reason: err.to_string(),
        });
    }
}

/// Creates the state directory readable by its owner only (0700), tightening an existing one:
/// it holds the store (every Secret), the API token, the TLS key and the kubeconfig.
fn create_state_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)?;
    restrict_to_owner(dir, 0o700)
}

/// Writes `config` to `path` as YAML, readable by kubectl, replacing any older file
/// atomically (write to a temporary file, then rename) and readable only by its owner.
fn write_kubeconfig(path: &Path, config: &kube::config::Kubeconfig) -> Result<(), RunError> {
    let error = |reason: String| RunError::Kubeconfig {
        path: path.to_path_buf(),
        reason,
    };
    let yaml = serde_saphyr::to_string(config).map_err(|e| error(e.to_string()))?;
    write_owner_only(path, yaml.as_bytes()).map_err(|e| error(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::config::{Cluster, Context, Kubeconfig, NamedCluster, NamedContext};

    fn local_kubeconfig() -> Kubeconfig {
        Kubeconfig {
            clusters: vec![NamedCluster {
                name: "tether".into(),
                cluster: Some(Cluster {
                    server: Some("http://127.0.0.1:41234".into()),
                    ..Default::default()
                }),
                other: Default::default(),
            }],
            contexts: vec![NamedContext {
                name: "tether".into(),
                context: Some(Context {
                    cluster: "tether".into(),
                    ..Default::default()
                }),
                other: Default::default(),
            }],
            current_context: Some("tether".into()),
            ..Default::default()
        }
    }

    #[test]
    fn the_kubeconfig_is_written_as_yaml_that_reads_back_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kubeconfig");
        std::fs::write(&path, "old").unwrap();
        write_kubeconfig(&path, &local_kubeconfig()).unwrap();
        let read = Kubeconfig::read_from(&path).unwrap();
        assert_eq!(read.current_context.as_deref(), Some("tether"));
        assert_eq!(
            read.clusters[0].cluster.as_ref().unwrap().server.as_deref(),
            Some("http://127.0.0.1:41234")
        );
        assert!(!path.with_extension("tmp").exists());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn kubectl_reads_the_written_kubeconfig() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kubeconfig");
        write_kubeconfig(&path, &local_kubeconfig()).unwrap();
        let out = std::process::Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&path)
            .args([
                "config",
                "view",
                "-o",
                "jsonpath={.clusters[0].cluster.server} {.current-context}",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "http://127.0.0.1:41234 tether"
        );
    }
}
