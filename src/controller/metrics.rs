//! The controllers' Prometheus metrics, named as controller-runtime names them so existing
//! dashboards work, plus `tether_reconcile_stalled` and the Releases' delivery metrics.
//! Labels are bounded: the controller (kind) and the result, never the name of a Release
//! or Migration or a version; the delivery metrics name the Environment and its namespace
//! (Environments are few). The Migration controller's metrics
//! (`tether_migration_*`, from [`MigrationMetrics::register`]) are registered here too, so
//! they are registered exactly once per process, with the rest; so are the platform clients'
//! (`tether_platform_*`, `tether_credentials_rejected_total`) and the drift counters.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts};

use crate::migrate::engine::MigrationMetrics;
use crate::platform::PlatformMetrics;
use crate::sync::SyncMetrics;
use crate::telemetry::MetricsRegistry;

/// How one reconcile ended, as the `result` label says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReconcileResult {
    /// The reconcile finished and the object is as its spec asks (or suspended).
    Success,
    /// The reconcile failed, or found a permanent error and marked the object `Stalled`.
    Error,
    /// The reconcile only prepared the object (added the finalizer) and it is queued again
    /// by that change.
    Requeue,
}

impl ReconcileResult {
    fn label(self) -> &'static str {
        match self {
            ReconcileResult::Success => "success",
            ReconcileResult::Error => "error",
            ReconcileResult::Requeue => "requeue",
        }
    }
}

/// The controllers' metrics.
#[derive(Clone)]
pub struct ControllerMetrics {
    reconciles: IntCounterVec,
    errors: IntCounterVec,
    duration: HistogramVec,
    stalled: IntGaugeVec,
    stalled_objects: Arc<Mutex<BTreeMap<&'static str, BTreeSet<String>>>>,
    migration: MigrationMetrics,
    platform: PlatformMetrics,
    sync: SyncMetrics,
    releases: IntCounterVec,
    release_duration: prometheus::Histogram,
    release_step_duration: HistogramVec,
    time_to_restore: HistogramVec,
    notifications: IntCounterVec,
}

/// Buckets of rollout durations: seconds to an hour.
const ROLLOUT_BUCKETS: [f64; 10] = [
    5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0,
];

/// Buckets of times to restore: a minute to a week (a fix can take days).
const RESTORE_BUCKETS: [f64; 10] = [
    60.0, 300.0, 900.0, 1800.0, 3600.0, 10800.0, 21600.0, 86400.0, 259200.0, 604800.0,
];

impl ControllerMetrics {
    /// Creates the metrics and registers them into `registry`.
    pub fn register(registry: &MetricsRegistry) -> Result<Self, prometheus::Error> {
        let reconciles = registry.register(IntCounterVec::new(
            Opts::new(
                "controller_runtime_reconcile_total",
                "Total number of reconciliations per controller and result",
            ),
            &["controller", "result"],
        )?)?;
        let errors = registry.register(IntCounterVec::new(
            Opts::new(
                "controller_runtime_reconcile_errors_total",
                "Total number of reconciliation errors per controller",
            ),
            &["controller"],
        )?)?;
        let duration = registry.register(HistogramVec::new(
            HistogramOpts::new(
                "controller_runtime_reconcile_time_seconds",
                "Length of time per reconciliation per controller",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
            ]),
            &["controller"],
        )?)?;
        let stalled = registry.register(IntGaugeVec::new(
            Opts::new(
                "tether_reconcile_stalled",
                "Number of objects whose Stalled condition is True, per kind",
            ),
            &["kind"],
        )?)?;
        let releases = registry.register(IntCounterVec::new(
            Opts::new(
                "tether_release_total",
                "Releases that finished, per Environment and result (succeeded, failed, rolled_back)",
            ),
            &["namespace", "environment", "result"],
        )?)?;
        let release_duration = registry.register(prometheus::Histogram::with_opts(
            HistogramOpts::new(
                "tether_release_duration_seconds",
                "Time from a Release's start to its end (succeeded or failed)",
            )
            .buckets(ROLLOUT_BUCKETS.to_vec()),
        )?)?;
        let release_step_duration = registry.register(HistogramVec::new(
            HistogramOpts::new(
                "tether_release_step_duration_seconds",
                "Time from a component's deployment start until it is live, per platform",
            )
            .buckets(ROLLOUT_BUCKETS.to_vec()),
            &["platform"],
        )?)?;
        let time_to_restore = registry.register(HistogramVec::new(
            HistogramOpts::new(
                "tether_release_time_to_restore_seconds",
                "Time from the first of a run of failed Releases of an Environment to the next Release that succeeded there, per Environment",
            )
            .buckets(RESTORE_BUCKETS.to_vec()),
            &["namespace", "environment"],
        )?)?;
        let notifications = registry.register(IntCounterVec::new(
            Opts::new(
                "tether_notifications_total",
                "Release phase changes sent to webhooks, by result (sent, failed) and body format",
            ),
            &["result", "format"],
        )?)?;
        Ok(Self {
            reconciles,
            errors,
            duration,
            stalled,
            releases,
            release_duration,
            release_step_duration,
            time_to_restore,
            notifications,
            stalled_objects: Arc::default(),
            migration: MigrationMetrics::register(registry)?,
            platform: PlatformMetrics::register(registry)?,
            sync: SyncMetrics::register(registry)?,
        })
    }

    /// The Migration controller's run metrics (`tether_migration_*`).
    pub fn migration(&self) -> &MigrationMetrics {
        &self.migration
    }

    /// The platform clients' request metrics (`tether_platform_*`).
    pub fn platform(&self) -> &PlatformMetrics {
        &self.platform
    }

    /// The Environment sync's drift metrics (`tether_drift_*`).
    pub fn sync(&self) -> &SyncMetrics {
        &self.sync
    }

    /// Records a Release to Environment `namespace/environment` that finished with
    /// `result` (`succeeded`, `failed`, `rolled_back`) after `took`.
    pub fn release_finished(
        &self,
        namespace: &str,
        environment: &str,
        result: &str,
        took: Duration,
    ) {
        self.releases
            .with_label_values(&[namespace, environment, result])
            .inc();
        self.release_duration.observe(took.as_secs_f64());
    }

    /// Records that Environment `namespace/environment` was restored (a Release succeeded)
    /// `took` after its run of failed Releases began.
    pub fn release_restored(&self, namespace: &str, environment: &str, took: Duration) {
        self.time_to_restore
            .with_label_values(&[namespace, environment])
            .observe(took.as_secs_f64());
    }

    /// Records one webhook delivery of a Release phase change: `sent` or not, in `format`
    /// (`generic`, `slack`).
    pub fn notification(&self, sent: bool, format: &str) {
        let result = if sent { "sent" } else { "failed" };
        self.notifications
            .with_label_values(&[result, format])
            .inc();
    }

    /// Records a component of `platform` that went live `took` after its deployment started.
    pub fn release_step_live(&self, platform: &str, took: Duration) {
        self.release_step_duration
            .with_label_values(&[platform])
            .observe(took.as_secs_f64());
    }

    /// Records one reconcile of `controller` (the kind's lower-case name).
    pub fn observe(&self, controller: &str, result: ReconcileResult, took: Duration) {
        self.reconciles
            .with_label_values(&[controller, result.label()])
            .inc();
        if result == ReconcileResult::Error {
            self.errors.with_label_values(&[controller]).inc();
        }
        self.duration
            .with_label_values(&[controller])
            .observe(took.as_secs_f64());
    }

    /// Records whether the object `key` of `kind` is stalled now (or gone: `false`).
    pub fn set_stalled(&self, kind: &'static str, key: &str, stalled: bool) {
        let mut objects = self
            .stalled_objects
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let set = objects.entry(kind).or_default();
        if stalled {
            set.insert(key.to_string());
        } else {
            set.remove(key);
        }
        let count = i64::try_from(set.len()).unwrap_or(i64::MAX);
        self.stalled.with_label_values(&[kind]).set(count);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_controller_runtime_and_migration_names_are_registered() {
        let registry = MetricsRegistry::new();
        ControllerMetrics::register(&registry).unwrap();
        assert_eq!(
            registry.names(),
            [
                "controller_runtime_reconcile_errors_total",
                "controller_runtime_reconcile_time_seconds",
                "controller_runtime_reconcile_total",
                "tether_credentials_rejected_total",
                "tether_drift_corrected_total",
                "tether_drift_detected_total",
                "tether_drifted_objects",
                "tether_migration_applied_total",
                "tether_migration_blocked_total",
                "tether_migration_duration_seconds",
                "tether_migration_failed_total",
                "tether_migration_lint_findings_total",
                "tether_notifications_total",
                "tether_platform_rate_limited_total",
                "tether_platform_ratelimit_remaining",
                "tether_platform_request_duration_seconds",
                "tether_platform_requests_total",
                "tether_reconcile_stalled",
                "tether_release_duration_seconds",
                "tether_release_step_duration_seconds",
                "tether_release_time_to_restore_seconds",
                "tether_release_total",
            ]
        );
    }

    #[test]
    fn errors_count_in_both_counters_and_the_stalled_gauge_counts_objects() {
        let registry = MetricsRegistry::new();
        let metrics = ControllerMetrics::register(&registry).unwrap();
        metrics.observe(
            "environment",
            ReconcileResult::Error,
            Duration::from_millis(3),
        );
        metrics.observe(
            "environment",
            ReconcileResult::Success,
            Duration::from_millis(3),
        );
        metrics.set_stalled("Environment", "ns/a", true);
        metrics.set_stalled("Environment", "ns/b", true);
        metrics.set_stalled("Environment", "ns/a", false);
        let text = registry.render();
        assert!(text.contains(
            "controller_runtime_reconcile_total{controller=\"environment\",result=\"error\"} 1"
        ));
        assert!(
            text.contains(
                "controller_runtime_reconcile_errors_total{controller=\"environment\"} 1"
            )
        );
        assert!(text.contains("tether_reconcile_stalled{kind=\"Environment\"} 1"));
    }
}
