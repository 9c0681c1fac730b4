//! `tether controller` and its hidden helpers `tether metrics-names` and `tether rbac`:
//! flags (mapped 1:1 by the Helm chart's values), logging, the HTTP server, signals.

use std::net::SocketAddr;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::api::common::parse_duration;
use crate::controller::leader::{LeaseConfig, LeaseTimings, LeaseTimingsError, run_elected};
use crate::controller::metrics::ControllerMetrics;
use crate::controller::{ControllerConfig, Health, run, server};
use crate::platform::Platform;
use crate::sync::{PlatformsConfig, default_endpoint};
use crate::telemetry::{LogFormat, MetricsRegistry, init_tracing};

/// Flags of `tether controller`.
#[derive(Clone, Debug, clap::Args)]
pub struct ControllerArgs {
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "TETHER_NAMESPACE")]
    pub namespace: Option<String>,
    /// Reconcile only objects matching this label selector (e.g. `shard=a`).
    #[arg(long)]
    pub selector: Option<String>,
    /// Log filter in RUST_LOG syntax.
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    pub log_level: String,
    /// Log line format.
    #[arg(long, value_enum, default_value_t = LogFormat::Json)]
    pub log_format: LogFormat,
    /// Address serving /metrics, /healthz and /readyz.
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,
    /// Run the controllers only while holding the Lease.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_elect: bool,
    /// Name of the leader-election Lease.
    #[arg(long, default_value = "tether-controller")]
    pub lease_name: String,
    /// Namespace of the leader-election Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,
    /// How long the Lease is valid after its last renewal: how long a standby waits before
    /// taking over from a leader that stopped renewing (whole seconds).
    #[arg(long, default_value = "15s", value_parser = duration)]
    pub lease_duration: Duration,
    /// How long the leader keeps trying to renew the Lease before it stops its controllers
    /// and exits (below --lease-duration).
    #[arg(long, default_value = "10s", value_parser = duration)]
    pub lease_renew_deadline: Duration,
    /// How often the leader renews the Lease (below --lease-renew-deadline / 1.2).
    #[arg(long, default_value = "2s", value_parser = duration)]
    pub lease_retry_period: Duration,
    /// First retry delay after a transient error.
    #[arg(long, default_value = "5s", value_parser = duration)]
    pub min_retry_interval: Duration,
    /// Longest retry delay after repeated transient errors.
    #[arg(long, default_value = "5m", value_parser = duration)]
    pub max_retry_interval: Duration,
    /// Reconciles running at once per controller.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..))]
    pub concurrency: u16,
    /// How soon an Environment with platform objects still coming up is looked at again.
    #[arg(long, default_value = "15s", value_parser = duration)]
    pub pending_interval: Duration,
    /// How long platform state read by one reconcile is reused by others (one list call
    /// serves every Environment of an account within this window).
    #[arg(long, default_value = "30s", value_parser = duration)]
    pub observe_max_age: Duration,
    /// Database URL of a Supabase project, for Migrations that name an Environment:
    /// `{ref}` stands for the project ref; the password comes from the Environment.
    #[arg(long, default_value = crate::controller::DEFAULT_SUPABASE_DATABASE_URL)]
    pub supabase_database_url: String,
    /// Send every Release health check to this base URL instead, keeping the checked URL's
    /// host in the `Host` header: the sandbox's app edge (`tether sandbox` prints it).
    #[arg(long, env = "TETHER_HEALTH_CHECK_VIA")]
    pub health_check_via: Option<reqwest::Url>,
    /// Render API base URL.
    #[arg(long, env = "TETHER_RENDER_URL", default_value = default_endpoint(Platform::Render))]
    pub render_url: String,
    /// Vercel API base URL.
    #[arg(long, env = "TETHER_VERCEL_URL", default_value = default_endpoint(Platform::Vercel))]
    pub vercel_url: String,
    /// Fly.io Machines API base URL.
    #[arg(long, env = "TETHER_FLY_URL", default_value = default_endpoint(Platform::Fly))]
    pub fly_url: String,
    /// Supabase Management API base URL.
    #[arg(long, env = "TETHER_SUPABASE_URL", default_value = default_endpoint(Platform::Supabase))]
    pub supabase_url: String,
    /// Divides every platform client's rate-limit windows and backoff delays by this factor,
    /// to match a sandbox running faster than real time (`tether sandbox --time-scale`).
    /// For benchmarks and tests only: against the real APIs it must stay 1.
    #[arg(long, hide = true, default_value_t = 1.0, value_parser = time_scale)]
    pub platform_time_scale: f64,
}

fn duration(text: &str) -> Result<Duration, String> {
    parse_duration(text).map_err(|e| e.to_string())
}

fn time_scale(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(scale) if scale.is_finite() && scale > 0.0 => Ok(scale),
        _ => Err(format!("{text:?} is not a positive number")),
    }
}

/// Why `tether controller` stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// `--min-retry-interval` exceeds `--max-retry-interval`.
    #[error(
        "failed to start: --min-retry-interval ({min:?}) exceeds --max-retry-interval ({max:?})"
    )]
    RetryBounds {
        /// The minimum.
        min: Duration,
        /// The maximum.
        max: Duration,
    },
    /// `--lease-duration`, `--lease-renew-deadline` and `--lease-retry-period` do not fit.
    #[error(
        "failed to start: --lease-duration, --lease-renew-deadline and --lease-retry-period do not fit: {0}"
    )]
    LeaseTimings(#[source] LeaseTimingsError),
    /// No usable kubeconfig or in-cluster configuration.
    #[error("failed to configure the Kubernetes client: {0}")]
    Client(#[source] kube::Error),
    /// The HTTP server failed.
    #[error(transparent)]
    Server(#[from] server::ServerError),
    /// The controllers failed.
    #[error(transparent)]
    Controller(#[from] crate::controller::ControllerError),
}

impl ControllerArgs {
    /// The controller configuration these flags describe.
    pub fn config(&self) -> Result<ControllerConfig, CliError> {
        if self.min_retry_interval > self.max_retry_interval {
            return Err(CliError::RetryBounds {
                min: self.min_retry_interval,
                max: self.max_retry_interval,
            });
        }
        let defaults = PlatformsConfig::default();
        let http = defaults
            .http
            .into_iter()
            .map(|(platform, http)| (platform, http.time_scaled(self.platform_time_scale)))
            .collect();
        Ok(ControllerConfig {
            namespace: self.namespace.clone(),
            selector: self.selector.clone(),
            min_retry: self.min_retry_interval,
            max_retry: self.max_retry_interval,
            concurrency: self.concurrency,
            pending_interval: self.pending_interval,
            supabase_database_url: self.supabase_database_url.clone(),
            health_check_via: self.health_check_via.clone(),
            platforms: PlatformsConfig {
                endpoints: [
                    (Platform::Render, self.render_url.clone()),
                    (Platform::Vercel, self.vercel_url.clone()),
                    (Platform::Fly, self.fly_url.clone()),
                    (Platform::Supabase, self.supabase_url.clone()),
                ]
                .into(),
                http,
                observe_max_age: self.observe_max_age,
            },
        })
    }

    /// The Lease these flags describe, held as `identity`.
    pub fn lease(&self, identity: impl Into<String>) -> Result<LeaseConfig, CliError> {
        let mut lease = LeaseConfig::new(&self.lease_name, &self.lease_namespace, identity);
        lease.timings = LeaseTimings::new(
            self.lease_duration,
            self.lease_renew_deadline,
            self.lease_retry_period,
        )
        .map_err(CliError::LeaseTimings)?;
        Ok(lease)
    }
}

/// Runs `tether controller` until SIGTERM or Ctrl-C.
pub async fn run_cli(args: ControllerArgs) -> Result<(), CliError> {
    init_tracing(&args.log_level, args.log_format);
    let config = args.config()?;
    let identity = std::env::var("POD_NAME")
        .unwrap_or_else(|_| format!("tether-{}", uuid::Uuid::new_v4().simple()));
    let lease = args.lease(identity)?;
    let client = crate::client::infer("controller")
        .await
        .map_err(CliError::Client)?;
    let shutdown = CancellationToken::new();
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            wait_for_signal().await;
            info!("shutdown requested");
            crate::controller::exit_if_shutdown_overruns();
            shutdown.cancel();
        }
    });
    let metrics = MetricsRegistry::new();
    let health = Health::new();
    let (addr, serve) = server::bind(
        args.metrics_addr,
        metrics.clone(),
        health.clone(),
        shutdown.clone(),
    )
    .await?;
    info!(%addr, "serving /metrics, /healthz and /readyz");
    let server = tokio::spawn(serve);
    let result = if args.leader_elect {
        run_elected(client, config, lease, metrics, health, shutdown.clone()).await
    } else {
        run(client, config, metrics, health, shutdown.clone()).await
    };
    shutdown.cancel();
    if let Ok(Err(error)) = server.await {
        tracing::warn!(%error, "HTTP server stopped with an error");
    }
    result.map_err(CliError::from)
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Every metric name the binary registers, one per line, as `tether metrics-names`
/// prints them: the registry is built the way `tether controller` builds it.
pub fn metric_names() -> Result<String, prometheus::Error> {
    let registry = MetricsRegistry::new();
    ControllerMetrics::register(&registry)?;
    Ok(registry
        .names()
        .into_iter()
        .map(|n| n + "\n")
        .collect::<String>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ControllerArgs,
    }

    #[test]
    fn defaults_match_the_documented_flags() {
        let cli = Cli::try_parse_from(["tether"]).unwrap();
        let config = cli.args.config().unwrap();
        assert_eq!(config.min_retry, Duration::from_secs(5));
        assert_eq!(config.max_retry, Duration::from_secs(300));
        assert_eq!(config.concurrency, 4);
        assert!(cli.args.leader_elect);
        assert_eq!(cli.args.lease_name, "tether-controller");
        assert_eq!(
            cli.args.lease("me").unwrap().timings,
            LeaseTimings::default()
        );
        assert_eq!(cli.args.metrics_addr.port(), 8080);
    }

    #[test]
    fn leader_election_can_be_turned_off_and_selectors_passed() {
        let cli = Cli::try_parse_from([
            "tether",
            "--leader-elect=false",
            "--selector",
            "shard=a",
            "--namespace",
            "apps",
            "--min-retry-interval",
            "1s",
            "--max-retry-interval",
            "30s",
        ])
        .unwrap();
        assert!(!cli.args.leader_elect);
        let config = cli.args.config().unwrap();
        assert_eq!(config.selector.as_deref(), Some("shard=a"));
        assert_eq!(config.namespace.as_deref(), Some("apps"));
        assert_eq!(config.max_retry, Duration::from_secs(30));
    }

    #[test]
    fn inverted_retry_bounds_are_rejected() {
        let cli = Cli::try_parse_from([
            "tether",
            "--min-retry-interval",
            "10m",
            "--max-retry-interval",
            "1m",
        ])
        .unwrap();
        assert!(matches!(
            cli.args.config(),
            Err(CliError::RetryBounds { .. })
        ));
    }

    #[test]
    fn the_hidden_platform_time_scale_shortens_every_platform_s_limit_windows() {
        let real = Cli::try_parse_from(["tether"])
            .unwrap()
            .args
            .config()
            .unwrap();
        let cli = Cli::try_parse_from(["tether", "--platform-time-scale", "60"]).unwrap();
        let scaled = cli.args.config().unwrap();
        for platform in Platform::ALL {
            let (real, scaled) = (
                &real.platforms.http[&platform].limits,
                &scaled.platforms.http[&platform].limits,
            );
            assert!(!real.is_empty(), "{platform}");
            for (r, s) in real.iter().zip(scaled) {
                let ratio = r.window.as_secs_f64() / s.window.as_secs_f64();
                assert!(
                    (ratio - 60.0).abs() < 1e-4,
                    "{platform} {}: {ratio}",
                    r.class
                );
                assert_eq!(s.max, r.max);
            }
        }
        assert!(Cli::try_parse_from(["tether", "--platform-time-scale", "0"]).is_err());
    }

    #[test]
    fn the_platform_time_scale_is_not_in_the_help() {
        use clap::CommandFactory;
        let help = Cli::command().render_long_help().to_string();
        assert!(help.contains("--observe-max-age"));
        assert!(!help.contains("--platform-time-scale"));
    }

    #[test]
    fn a_bad_duration_flag_is_rejected_by_the_parser() {
        assert!(Cli::try_parse_from(["tether", "--min-retry-interval", "5"]).is_err());
        // Issue 21: a duration beyond any clock is an error, not a panic.
        let Err(err) =
            Cli::try_parse_from(["tether", "--min-retry-interval", "18446744073709551615s"])
        else {
            panic!("an out-of-range duration must not parse");
        };
        let err = err.to_string();
        assert!(err.contains("at most 8760h"), "{err}");
    }

    #[test]
    fn metric_names_lists_the_controller_metrics() {
        let names = metric_names().unwrap();
        assert!(names.contains("controller_runtime_reconcile_total\n"));
        assert!(names.contains("tether_reconcile_stalled\n"));
        for migration in [
            "tether_migration_applied_total",
            "tether_migration_duration_seconds",
            "tether_migration_lint_findings_total",
        ] {
            assert!(names.contains(&format!("{migration}\n")), "{migration}");
        }
    }

    #[test]
    fn lease_timings_are_flags_and_ones_that_do_not_fit_are_refused_before_starting() {
        let cli = Cli::try_parse_from([
            "tether",
            "--lease-duration=30s",
            "--lease-renew-deadline=20s",
            "--lease-retry-period=5s",
        ])
        .unwrap();
        let timings = cli.args.lease("me").unwrap().timings;
        assert_eq!(timings.duration, Duration::from_secs(30));
        assert_eq!(timings.renew_deadline, Duration::from_secs(20));
        assert_eq!(timings.retry_period, Duration::from_secs(5));

        let cli = Cli::try_parse_from([
            "tether",
            "--lease-duration=10s",
            "--lease-renew-deadline=10s",
        ])
        .unwrap();
        let error = cli.args.lease("me").unwrap_err().to_string();
        assert_eq!(
            error,
            "failed to start: --lease-duration, --lease-renew-deadline and --lease-retry-period do not fit: \
             the lease duration (10s) must be greater than the renew deadline (10s)"
        );
    }
}
