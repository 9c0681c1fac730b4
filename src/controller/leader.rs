//! Leader election on a `coordination.k8s.io/v1` Lease (kube-lease-manager): only the
//! replica holding the Lease runs the controllers; they stop when leadership is lost, and
//! the Lease is released on shutdown so a standby takes over without waiting for expiry.

use std::time::Duration;

use kube::Client;
use kube_lease_manager::{LeaseManagerBuilder, LeaseParams};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::controller::metrics::ControllerMetrics;
use crate::controller::{ControllerConfig, ControllerError, Health, run_registered};
use crate::telemetry::MetricsRegistry;

/// The field manager of every write to the Lease (`kubectl get lease -o yaml` shows it).
pub const LEASE_FIELD_MANAGER: &str = "tether-leader-election";

/// Which Lease to hold and for how long.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseConfig {
    /// Lease name.
    pub name: String,
    /// Lease namespace.
    pub namespace: String,
    /// This replica's identity (pod name, or a random id).
    pub identity: String,
    /// How long a lock is valid after its last renewal (whole seconds, at least 2).
    pub duration: Duration,
    /// How long before expiry the holder renews (whole seconds, below `duration`).
    pub grace: Duration,
}

impl LeaseConfig {
    /// A Lease with the defaults of kube-lease-manager: 30 s validity, renewed 5 s early.
    pub fn new(
        name: impl Into<String>,
        namespace: impl Into<String>,
        identity: impl Into<String>,
    ) -> Self {
        Self {
            name: name.into(),
            namespace: namespace.into(),
            identity: identity.into(),
            duration: Duration::from_secs(30),
            grace: Duration::from_secs(5),
        }
    }

    fn params(&self) -> LeaseParams {
        // LeaseParams panics unless 0 < grace < duration: clamp to that range here.
        let duration = self.duration.as_secs().max(2);
        let grace = self.grace.as_secs().clamp(1, duration - 1);
        LeaseParams::new(self.identity.clone(), duration, grace)
            .with_field_manager(LEASE_FIELD_MANAGER)
    }
}

/// Runs the controllers only while this replica holds the Lease, until `shutdown`.
/// `health` is ready while standing by (a standby is healthy) and, while leading, once the
/// caches have synced.
pub async fn run_elected(
    client: Client,
    config: ControllerConfig,
    lease: LeaseConfig,
    metrics: MetricsRegistry,
    health: Health,
    shutdown: CancellationToken,
) -> Result<(), ControllerError> {
    let metrics = ControllerMetrics::register(&metrics)?;
    let manager = LeaseManagerBuilder::new(client.clone(), &lease.name)
        .with_namespace(&lease.namespace)
        .with_parameters(lease.params())
        .build()
        .await
        .map_err(|source| ControllerError::LeaderElection {
            lease: format!("{}/{}", lease.namespace, lease.name),
            source,
        })?;
    let (mut leading, manager_task) = manager.watch().await;
    health.set_ready(true);
    info!(lease = %lease.name, identity = %lease.identity, "waiting for leadership");

    let mut result = Ok(());
    let mut manager_stopped = false;
    loop {
        if *leading.borrow_and_update() {
            info!(identity = %lease.identity, "acquired leadership; starting controllers");
            health.set_ready(false);
            let term = shutdown.child_token();
            let controllers = run_registered(
                client.clone(),
                &config,
                metrics.clone(),
                health.clone(),
                term.clone(),
            );
            tokio::pin!(controllers);
            let finished = tokio::select! {
                outcome = &mut controllers => Some(outcome),
                changed = leading.changed() => {
                    if changed.is_err() {
                        manager_stopped = true;
                    }
                    if manager_stopped || !*leading.borrow() {
                        warn!(identity = %lease.identity, "lost leadership; stopping controllers");
                    }
                    None
                }
                () = shutdown.cancelled() => None,
            };
            term.cancel();
            let outcome = match finished {
                Some(outcome) => outcome,
                None => controllers.await,
            };
            if let Err(error) = outcome {
                result = Err(error);
            }
            health.set_ready(true);
            if shutdown.is_cancelled() || result.is_err() || manager_stopped {
                break;
            }
        } else {
            tokio::select! {
                changed = leading.changed() => if changed.is_err() {
                    manager_stopped = true;
                    break;
                },
                () = shutdown.cancelled() => break,
            }
        }
    }
    if manager_stopped && result.is_ok() {
        // Never keep running (or report success) without a working election.
        result = Err(ControllerError::LeaseManagerStopped);
    }

    // Dropping the receiver makes the manager release the Lease and return.
    drop(leading);
    match tokio::time::timeout(Duration::from_secs(5), manager_task).await {
        Ok(Ok(Ok(_))) => info!("released the lease"),
        Ok(Ok(Err(error))) => warn!(%error, "failed to release the lease"),
        Ok(Err(_)) | Err(_) => warn!("the lease manager did not stop in time"),
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_timings_are_clamped_to_what_the_lease_manager_accepts() {
        let mut lease = LeaseConfig::new("l", "ns", "me");
        lease.duration = Duration::from_secs(1);
        lease.grace = Duration::from_secs(9);
        // Would panic inside LeaseParams::new without the clamp.
        let _ = lease.params();
    }
}
