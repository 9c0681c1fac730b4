//! Pure status computation: from what a reconcile concluded (a [`Verdict`]) and the
//! conditions already in status, the next set of kstatus conditions, and the event that
//! marks a transition. No I/O here, so every rule is a unit test.
//!
//! Polarity (kstatus):
//! - `Ready` is positive: `True` when every reference resolved and the object is in the
//!   state its spec asks for; `False` otherwise.
//! - `Reconciling` is abnormal-true: `True` only while work is in progress; after a
//!   finished reconcile it is `False`.
//! - `Stalled` is abnormal-true: `True` only while progress is impossible until the spec or
//!   a referenced object changes (a missing Secret, an invalid spec).
//! - `ReferencesResolved` (domain) is positive: `True` when every Secret, ConfigMap and
//!   object the spec names exists with the keys it names.
//!
//! `lastTransitionTime` only changes when a condition's status flips.

use crate::api::common::condition_types::{READY, RECONCILING, STALLED};
use crate::api::{Condition, ConditionStatus};

/// Domain condition: every referenced object exists (positive polarity).
pub const REFERENCES_RESOLVED: &str = "ReferencesResolved";

/// Reason on `Ready` and `ReferencesResolved` when every reference resolved.
pub const REASON_REFERENCES_RESOLVED: &str = "ReferencesResolved";
/// Reason when `spec.suspend` is true.
pub const REASON_SUSPENDED: &str = "Suspended";
/// Stall reasons that mean a reference does not resolve (`ReferencesResolved=False`); any
/// other stall (rejected credentials, an invalid field) leaves the references resolved.
pub const UNRESOLVED_REASONS: &[&str] = &[
    "SecretNotFound",
    "SecretKeyNotFound",
    "ConfigMapNotFound",
    "EnvironmentNotFound",
    "MigrationNotFound",
    "ReferenceNotFound",
    "InvalidSecret",
];
/// `Ready=False` reasons that mean work in progress (platform objects coming up), not a
/// failure: their transition events are Normal, since no person needs to act.
pub const PROGRESS_REASONS: &[&str] = &["ObjectsNotReady"];
/// Reason on `Reconciling=False` after a finished reconcile.
pub const REASON_RECONCILED: &str = "Reconciled";
/// Reason on `Stalled=False` when nothing blocks progress.
pub const REASON_NOT_STALLED: &str = "NotStalled";

/// What one reconcile concluded about an object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every reference resolved; `message` is the human summary for `Ready`.
    Ready {
        /// Reason for `Ready=True`, e.g. `ReferencesResolved`.
        reason: String,
        /// Human summary, e.g. "All references resolved; 3 platform objects declared".
        message: String,
    },
    /// Progress is impossible until something changes (permanent error).
    Stalled {
        /// PascalCase reason, e.g. `SecretNotFound`.
        reason: String,
        /// Names what is missing or invalid; never a Secret value.
        message: String,
    },
    /// Not ready, but expected to make progress without a change (a transient failure
    /// that is retried): `Ready=False`, `Stalled=False`.
    NotReady {
        /// PascalCase reason, e.g. `LockTimeout`.
        reason: String,
        /// Human summary; never a Secret value.
        message: String,
    },
    /// `spec.suspend` is true: nothing is done.
    Suspended,
    /// Work is under way and not finished (written while a sync runs): `Reconciling=True`
    /// says what, `Ready=Unknown` until the reconcile concludes.
    Progressing {
        /// PascalCase reason, e.g. `Progressing` or `RateLimited`.
        reason: String,
        /// What is being done or waited for; never a Secret value.
        message: String,
    },
}

impl Verdict {
    /// Whether the verdict means the object is stalled.
    pub fn is_stalled(&self) -> bool {
        matches!(self, Verdict::Stalled { .. })
    }
}

/// Computes the next conditions from the previous ones and the verdict.
///
/// Conditions of types this function does not own (none today) are kept untouched, so a
/// later domain condition written by another step survives.
pub fn next_conditions(
    previous: &[Condition],
    verdict: &Verdict,
    generation: Option<i64>,
    now: &str,
) -> Vec<Condition> {
    let (ready, stalled, resolved) = match verdict {
        Verdict::Ready { reason, message } => (
            (ConditionStatus::True, reason.as_str(), message.clone()),
            (ConditionStatus::False, REASON_NOT_STALLED, String::new()),
            (
                ConditionStatus::True,
                REASON_REFERENCES_RESOLVED,
                "Every referenced Secret, ConfigMap and object exists".to_string(),
            ),
        ),
        Verdict::NotReady { reason, message } => (
            (ConditionStatus::False, reason.as_str(), message.clone()),
            (ConditionStatus::False, REASON_NOT_STALLED, String::new()),
            (
                ConditionStatus::True,
                REASON_REFERENCES_RESOLVED,
                "Every referenced Secret, ConfigMap and object exists".to_string(),
            ),
        ),
        Verdict::Stalled { reason, message } => (
            (ConditionStatus::False, reason.as_str(), message.clone()),
            (ConditionStatus::True, reason.as_str(), message.clone()),
            if UNRESOLVED_REASONS.contains(&reason.as_str()) {
                (ConditionStatus::False, reason.as_str(), message.clone())
            } else {
                (
                    ConditionStatus::True,
                    REASON_REFERENCES_RESOLVED,
                    "Every referenced Secret, ConfigMap and object exists".to_string(),
                )
            },
        ),
        Verdict::Suspended => {
            let message = "Reconciliation is suspended (spec.suspend is true)".to_string();
            (
                (ConditionStatus::False, REASON_SUSPENDED, message.clone()),
                (ConditionStatus::False, REASON_SUSPENDED, String::new()),
                (ConditionStatus::Unknown, REASON_SUSPENDED, message),
            )
        }
        Verdict::Progressing { reason, message } => (
            (ConditionStatus::Unknown, reason.as_str(), message.clone()),
            (ConditionStatus::False, REASON_NOT_STALLED, String::new()),
            (
                ConditionStatus::True,
                REASON_REFERENCES_RESOLVED,
                "Every referenced Secret, ConfigMap and object exists".to_string(),
            ),
        ),
    };
    let reconciling = match verdict {
        Verdict::Progressing { reason, message } => {
            (ConditionStatus::True, reason.as_str(), message.clone())
        }
        _ => (ConditionStatus::False, REASON_RECONCILED, String::new()),
    };
    let owned = [
        (READY, ready),
        (RECONCILING, reconciling),
        (STALLED, stalled),
        (REFERENCES_RESOLVED, resolved),
    ];
    let mut next: Vec<Condition> = owned
        .into_iter()
        .map(|(type_, (status, reason, message))| {
            let last_transition_time = previous
                .iter()
                .find(|c| c.type_ == type_ && c.status == status)
                .map(|c| c.last_transition_time.clone())
                .unwrap_or_else(|| now.to_string());
            Condition {
                type_: type_.to_string(),
                status,
                observed_generation: generation,
                last_transition_time,
                reason: reason.to_string(),
                message,
            }
        })
        .collect();
    next.extend(
        previous
            .iter()
            .filter(|c| {
                ![READY, RECONCILING, STALLED, REFERENCES_RESOLVED].contains(&c.type_.as_str())
            })
            .cloned(),
    );
    next
}

/// An event to publish because a condition changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransitionEvent {
    /// `true` for a Warning event, `false` for Normal.
    pub warning: bool,
    /// PascalCase reason.
    pub reason: String,
    /// Human sentence.
    pub note: String,
}

/// The event marking the change from `previous` to `next` conditions, if `Ready` or
/// `Stalled` changed status or reason; `None` when nothing changed (no event per loop).
pub fn transition_event(previous: &[Condition], next: &[Condition]) -> Option<TransitionEvent> {
    let key = |conds: &[Condition], type_: &str| {
        conds
            .iter()
            .find(|c| c.type_ == type_)
            .map(|c| (c.status, c.reason.clone()))
    };
    if key(previous, READY) == key(next, READY) && key(previous, STALLED) == key(next, STALLED) {
        return None;
    }
    let ready = next.iter().find(|c| c.type_ == READY)?;
    let stalled = next
        .iter()
        .any(|c| c.type_ == STALLED && c.status == ConditionStatus::True);
    let failing = ready.status == ConditionStatus::False
        && ready.reason != REASON_SUSPENDED
        && !PROGRESS_REASONS.contains(&ready.reason.as_str());
    Some(TransitionEvent {
        warning: stalled || failing,
        reason: ready.reason.clone(),
        note: ready.message.clone(),
    })
}

/// Whether `conditions` say the object is stalled.
pub fn is_stalled(conditions: &[Condition]) -> bool {
    conditions
        .iter()
        .any(|c| c.type_ == STALLED && c.status == ConditionStatus::True)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready() -> Verdict {
        Verdict::Ready {
            reason: REASON_REFERENCES_RESOLVED.into(),
            message: "All references resolved; 2 platform objects declared".into(),
        }
    }

    fn stalled() -> Verdict {
        Verdict::Stalled {
            reason: "SecretNotFound".into(),
            message: "Secret \"render-token\" not found".into(),
        }
    }

    fn find<'a>(conds: &'a [Condition], type_: &str) -> &'a Condition {
        conds.iter().find(|c| c.type_ == type_).unwrap()
    }

    #[test]
    fn progress_is_reconciling_with_ready_unknown_and_keeps_other_conditions() {
        let before = next_conditions(&[], &ready(), Some(1), "t0");
        let mut with_domain = before.clone();
        with_domain.push(Condition {
            type_: "RenderSynced".into(),
            status: ConditionStatus::True,
            observed_generation: Some(1),
            last_transition_time: "t0".into(),
            reason: "Synced".into(),
            message: String::new(),
        });
        let verdict = Verdict::Progressing {
            reason: "RateLimited".into(),
            message: "render: waiting for its rate limit".into(),
        };
        let next = next_conditions(&with_domain, &verdict, Some(2), "t1");
        let reconciling = find(&next, RECONCILING);
        assert_eq!(reconciling.status, ConditionStatus::True);
        assert_eq!(reconciling.reason, "RateLimited");
        assert_eq!(reconciling.message, "render: waiting for its rate limit");
        assert_eq!(find(&next, READY).status, ConditionStatus::Unknown);
        assert_eq!(find(&next, STALLED).status, ConditionStatus::False);
        assert_eq!(find(&next, "RenderSynced").status, ConditionStatus::True);
        assert_eq!(find(&next, READY).observed_generation, Some(2));
    }

    #[test]
    fn a_not_ready_verdict_is_not_ready_but_not_stalled_and_warns_once() {
        let verdict = Verdict::NotReady {
            reason: "LockTimeout".into(),
            message: "lock timeout".into(),
        };
        let next = next_conditions(&[], &verdict, None, "t1");
        assert_eq!(find(&next, READY).status, ConditionStatus::False);
        assert_eq!(find(&next, STALLED).status, ConditionStatus::False);
        assert!(transition_event(&[], &next).unwrap().warning);
        assert_eq!(transition_event(&next, &next), None);
    }

    #[test]
    fn a_ready_verdict_sets_ready_true_and_the_abnormal_conditions_false() {
        let next = next_conditions(&[], &ready(), Some(3), "t1");
        assert_eq!(find(&next, READY).status, ConditionStatus::True);
        assert_eq!(find(&next, STALLED).status, ConditionStatus::False);
        assert_eq!(find(&next, RECONCILING).status, ConditionStatus::False);
        assert_eq!(
            find(&next, REFERENCES_RESOLVED).status,
            ConditionStatus::True
        );
        assert!(next.iter().all(|c| c.observed_generation == Some(3)));
        assert!(next.iter().all(|c| c.last_transition_time == "t1"));
    }

    #[test]
    fn a_stalled_verdict_sets_stalled_true_with_its_reason_and_message() {
        let next = next_conditions(&[], &stalled(), Some(1), "t1");
        let s = find(&next, STALLED);
        assert_eq!(s.status, ConditionStatus::True);
        assert_eq!(s.reason, "SecretNotFound");
        assert!(s.message.contains("render-token"));
        assert_eq!(find(&next, READY).status, ConditionStatus::False);
        assert_eq!(
            find(&next, REFERENCES_RESOLVED).status,
            ConditionStatus::False
        );
    }

    #[test]
    fn last_transition_time_is_kept_while_the_status_does_not_flip() {
        let first = next_conditions(&[], &ready(), Some(1), "t1");
        let second = next_conditions(&first, &ready(), Some(2), "t2");
        assert_eq!(find(&second, READY).last_transition_time, "t1");
        assert_eq!(find(&second, READY).observed_generation, Some(2));
    }

    #[test]
    fn last_transition_time_moves_when_the_status_flips() {
        let first = next_conditions(&[], &ready(), Some(1), "t1");
        let second = next_conditions(&first, &stalled(), Some(1), "t2");
        assert_eq!(find(&second, READY).last_transition_time, "t2");
        assert_eq!(find(&second, STALLED).last_transition_time, "t2");
        // Reconciling stayed False: its time is kept.
        assert_eq!(find(&second, RECONCILING).last_transition_time, "t1");
    }

    #[test]
    fn suspension_reports_the_suspended_reason_and_is_not_stalled() {
        let next = next_conditions(&[], &Verdict::Suspended, Some(1), "t1");
        assert_eq!(find(&next, READY).reason, REASON_SUSPENDED);
        assert_eq!(find(&next, READY).status, ConditionStatus::False);
        assert!(!is_stalled(&next));
    }

    #[test]
    fn conditions_of_other_types_survive() {
        let other = Condition {
            type_: "DriftDetected".into(),
            status: ConditionStatus::False,
            observed_generation: Some(1),
            last_transition_time: "t0".into(),
            reason: "NoDrift".into(),
            message: String::new(),
        };
        let next = next_conditions(std::slice::from_ref(&other), &ready(), Some(1), "t1");
        assert!(next.contains(&other));
    }

    #[test]
    fn an_event_is_emitted_on_a_transition_and_not_on_a_repeat() {
        let first = next_conditions(&[], &stalled(), Some(1), "t1");
        let event = transition_event(&[], &first).unwrap();
        assert!(event.warning);
        assert_eq!(event.reason, "SecretNotFound");

        let again = next_conditions(&first, &stalled(), Some(1), "t2");
        assert_eq!(transition_event(&first, &again), None);

        let fixed = next_conditions(&again, &ready(), Some(1), "t3");
        let event = transition_event(&again, &fixed).unwrap();
        assert!(!event.warning);
        assert_eq!(event.reason, REASON_REFERENCES_RESOLVED);
    }

    #[test]
    fn a_different_stall_reason_is_a_transition() {
        let first = next_conditions(&[], &stalled(), Some(1), "t1");
        let other = Verdict::Stalled {
            reason: "ConfigMapNotFound".into(),
            message: "ConfigMap \"sql\" not found".into(),
        };
        let next = next_conditions(&first, &other, Some(1), "t2");
        assert_eq!(
            transition_event(&first, &next).map(|e| e.reason),
            Some("ConfigMapNotFound".to_string())
        );
    }

    #[test]
    fn objects_coming_up_are_a_normal_event_and_a_failure_a_warning() {
        let not_ready = |reason: &str| Verdict::NotReady {
            reason: reason.into(),
            message: "m".into(),
        };
        let now = "2026-01-01T00:00:00Z";
        let coming_up = next_conditions(&[], &not_ready("ObjectsNotReady"), Some(1), now);
        let event = transition_event(&[], &coming_up).unwrap();
        assert!(!event.warning, "progress is Normal");
        let failing = next_conditions(&[], &not_ready("PlatformUnavailable"), Some(1), now);
        assert!(transition_event(&[], &failing).unwrap().warning);
    }

    #[test]
    fn only_a_stall_on_a_reference_unresolves_the_references() {
        let stalled = |reason: &str| Verdict::Stalled {
            reason: reason.into(),
            message: "m".into(),
        };
        let now = "2026-01-01T00:00:00Z";
        let resolved = |verdict: &Verdict| {
            next_conditions(&[], verdict, Some(1), now)
                .into_iter()
                .find(|c| c.type_ == REFERENCES_RESOLVED)
                .unwrap()
                .status
        };
        assert_eq!(
            resolved(&stalled("CredentialsRejected")),
            ConditionStatus::True
        );
        assert_eq!(resolved(&stalled("SecretNotFound")), ConditionStatus::False);
    }
}
