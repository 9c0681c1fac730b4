//! Leader election on a `coordination.k8s.io/v1` Lease (kube-lease-manager): only the
//! replica holding the Lease runs the controllers; they stop when leadership is lost, and
//! the Lease is released on shutdown so a standby takes over without waiting for expiry.
//!
//! The timings are controller-runtime's ([`LeaseTimings`]): a Lease valid for 15 s after
//! its last renewal, renewed every 2 s, and given up when it could not be renewed for 10 s,
//! so a leader cut off from the API server stops its controllers before a standby may take
//! the Lease over.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};
use kube_lease_manager::{LeaseManagerBuilder, LeaseParams};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::controller::metrics::ControllerMetrics;
use crate::controller::{ControllerConfig, ControllerError, Health, run_registered};
use crate::telemetry::MetricsRegistry;

/// The field manager of every write to the Lease (`kubectl get lease -o yaml` shows it).
pub const LEASE_FIELD_MANAGER: &str = "tether-leader-election";

/// How long a Lease lasts and how it is kept, with controller-runtime's meaning and
/// defaults (`LeaseDuration`, `RenewDeadline`, `RetryPeriod`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseTimings {
    /// How long a Lease is valid after its last renewal: how long a standby waits before it
    /// takes over from a leader that stopped renewing.
    pub duration: Duration,
    /// How long the leader keeps trying to renew before it gives leadership up.
    pub renew_deadline: Duration,
    /// How often the leader renews (and a standby looks at the Lease).
    pub retry_period: Duration,
}

impl Default for LeaseTimings {
    /// controller-runtime's defaults: 15 s, 10 s, 2 s.
    fn default() -> Self {
        Self {
            duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// Why lease timings cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseTimingsError {
    /// The Lease API counts whole seconds (`leaseDurationSeconds`).
    #[error("the lease {0} must be a whole number of seconds, at least 1s")]
    WholeSeconds(&'static str),
    /// The leader must give up before a standby may take over.
    #[error(
        "the lease duration ({duration:?}) must be greater than the renew deadline ({renew_deadline:?})"
    )]
    DeadlineNotBeforeExpiry {
        /// The lease duration.
        duration: Duration,
        /// The renew deadline.
        renew_deadline: Duration,
    },
    /// The leader must get more than one try before the deadline (client-go's rule, with its
    /// jitter factor of 1.2).
    #[error(
        "the renew deadline ({renew_deadline:?}) must be greater than 1.2 × the retry period ({retry_period:?})"
    )]
    RetryNotBeforeDeadline {
        /// The renew deadline.
        renew_deadline: Duration,
        /// The retry period.
        retry_period: Duration,
    },
}

impl LeaseTimings {
    /// Checked timings: whole seconds, duration > renew deadline > 1.2 × retry period.
    pub fn new(
        duration: Duration,
        renew_deadline: Duration,
        retry_period: Duration,
    ) -> Result<Self, LeaseTimingsError> {
        for (what, value) in [
            ("duration", duration),
            ("renew deadline", renew_deadline),
            ("retry period", retry_period),
        ] {
            if value.subsec_nanos() != 0 || value.is_zero() {
                return Err(LeaseTimingsError::WholeSeconds(what));
            }
        }
        if duration <= renew_deadline {
            return Err(LeaseTimingsError::DeadlineNotBeforeExpiry {
                duration,
                renew_deadline,
            });
        }
        if renew_deadline.as_secs_f64() <= 1.2 * retry_period.as_secs_f64() {
            return Err(LeaseTimingsError::RetryNotBeforeDeadline {
                renew_deadline,
                retry_period,
            });
        }
        Ok(Self {
            duration,
            renew_deadline,
            retry_period,
        })
    }
}

/// Which Lease to hold and for how long.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseConfig {
    /// Lease name.
    pub name: String,
    /// Lease namespace.
    pub namespace: String,
    /// This replica's identity (pod name, or a random id).
    pub identity: String,
    /// How long the Lease lasts and how it is kept.
    pub timings: LeaseTimings,
}

impl LeaseConfig {
    /// A Lease with controller-runtime's default timings.
    pub fn new(
        name: impl Into<String>,
        namespace: impl Into<String>,
        identity: impl Into<String>,
    ) -> Self {
        Self {
            name: name.into(),
            namespace: namespace.into(),
            identity: identity.into(),
            timings: LeaseTimings::default(),
        }
    }

    /// kube-lease-manager renews `grace` seconds before expiry: `duration - retry_period`
    /// makes it renew one retry period after each renewal. (Its `LeaseParams` panics unless
    /// 0 < grace < duration, which checked timings guarantee; the clamp keeps it so.)
    fn params(&self) -> LeaseParams {
        let duration = self.timings.duration.as_secs().max(2);
        let grace = duration
            .saturating_sub(self.timings.retry_period.as_secs())
            .clamp(1, duration - 1);
        LeaseParams::new(self.identity.clone(), duration, grace)
            .with_field_manager(LEASE_FIELD_MANAGER)
    }
}

/// How a hold on the Lease ended without the lease manager saying so.
#[derive(Debug, PartialEq, Eq)]
enum Lapse {
    /// The Lease names another holder.
    Taken,
    /// No renewal was seen for the renew deadline.
    NotRenewed,
}

/// Returns once this replica's hold on the Lease has lapsed: the Lease names another
/// holder, or its renewal has not been seen to advance for the renew deadline (the API
/// server is unreachable, or renewals fail). Looks every retry period.
async fn hold_lapsed(leases: Api<Lease>, lease: &LeaseConfig) -> Lapse {
    let timings = lease.timings;
    let mut last_renewal = None;
    let mut confirmed = Instant::now();
    loop {
        tokio::time::sleep(timings.retry_period).await;
        match leases.get(&lease.name).await {
            Ok(found) => {
                let spec = found.spec.unwrap_or_default();
                if spec.holder_identity.as_deref() != Some(lease.identity.as_str()) {
                    return Lapse::Taken;
                }
                if spec.renew_time != last_renewal {
                    last_renewal = spec.renew_time;
                    confirmed = Instant::now();
                }
            }
            Err(error) => debug!(%error, "could not read the Lease"),
        }
        if confirmed.elapsed() >= timings.renew_deadline {
            return Lapse::NotRenewed;
        }
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
    let leases: Api<Lease> = Api::namespaced(client.clone(), &lease.namespace);
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
                lapse = hold_lapsed(leases.clone(), &lease) => match lapse {
                    Lapse::Taken => {
                        warn!(identity = %lease.identity, "lost leadership (the Lease names another holder); stopping controllers");
                        None
                    }
                    Lapse::NotRenewed => {
                        warn!(identity = %lease.identity, deadline = ?lease.timings.renew_deadline, "could not renew the Lease within the renew deadline; stopping controllers");
                        result = Err(ControllerError::LeadershipLapsed {
                            lease: format!("{}/{}", lease.namespace, lease.name),
                            deadline: lease.timings.renew_deadline,
                        });
                        None
                    }
                },
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
            if let Err(error) = outcome
                && result.is_ok()
            {
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

    // Dropping the receiver makes the manager release the Lease and return. After a lapse
    // the API server is likely out of reach, and the Lease expires on its own: do not wait.
    drop(leading);
    let release_wait = if matches!(result, Err(ControllerError::LeadershipLapsed { .. })) {
        lease.timings.retry_period
    } else {
        Duration::from_secs(5)
    };
    match tokio::time::timeout(release_wait, manager_task).await {
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
    fn defaults_are_controller_runtimes_and_renew_one_retry_period_after_each_renewal() {
        let lease = LeaseConfig::new("l", "ns", "me");
        assert_eq!(
            lease.timings,
            LeaseTimings::new(
                Duration::from_secs(15),
                Duration::from_secs(10),
                Duration::from_secs(2)
            )
            .unwrap()
        );
        // Renewed `grace` seconds before expiry: 15 - 13 = 2 s after each renewal.
        assert_eq!(
            lease.params(),
            LeaseParams::new("me", 15, 13).with_field_manager(LEASE_FIELD_MANAGER)
        );
    }

    #[test]
    fn timings_that_would_let_two_leaders_overlap_are_refused() {
        let s = Duration::from_secs;
        assert_eq!(
            LeaseTimings::new(s(10), s(10), s(2)),
            Err(LeaseTimingsError::DeadlineNotBeforeExpiry {
                duration: s(10),
                renew_deadline: s(10)
            })
        );
        assert_eq!(
            LeaseTimings::new(s(15), s(2), s(2)),
            Err(LeaseTimingsError::RetryNotBeforeDeadline {
                renew_deadline: s(2),
                retry_period: s(2)
            })
        );
        assert_eq!(
            LeaseTimings::new(s(15), s(10), Duration::from_millis(1500)),
            Err(LeaseTimingsError::WholeSeconds("retry period"))
        );
        assert_eq!(
            LeaseTimings::new(s(15), s(10), Duration::ZERO),
            Err(LeaseTimingsError::WholeSeconds("retry period"))
        );
        assert!(LeaseTimings::new(s(3), s(2), s(1)).is_ok());
    }
}
