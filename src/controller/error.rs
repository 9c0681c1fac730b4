//! Errors of one reconcile, named after the step that failed, classified as *permanent*
//! (the object is `Stalled` until its spec or a referenced object changes) or *transient*
//! (retried with exponential backoff and jitter), and the backoff itself.

use std::time::Duration;

use crate::controller::references::Missing;

/// Why one reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The object could not be decoded into its type (stored bypassing admission, or
    /// written by an older schema).
    #[error("failed to decode the object: {0}")]
    Decode(String),
    /// The spec is invalid in a way the CRD schema cannot express.
    #[error("failed to validate the spec: {message}")]
    ValidateSpec {
        /// PascalCase reason, e.g. `UnknownComponent`.
        reason: &'static str,
        /// What is wrong, naming the field.
        message: String,
    },
    /// One or more referenced objects (or keys of them) do not exist.
    #[error("failed to resolve references: {}", describe_missing(.0))]
    ResolveReferences(Vec<Missing>),
    /// Reading a referenced object from the API failed.
    #[error("failed to read {what}: {source}")]
    ReadReference {
        /// The object, e.g. `Secret "render-token"`.
        what: String,
        /// The API error.
        source: kube::Error,
    },
    /// A referenced Secret exists but cannot be decoded (names the Secret and key, never
    /// a value).
    #[error("failed to read a referenced Secret: {0}")]
    InvalidSecret(String),
    /// Deleting the object's platform objects cannot proceed until a person acts (the
    /// message says how).
    #[error("{0}")]
    CleanupBlocked(String),
    /// Writing status failed.
    #[error("failed to patch status: {0}")]
    PatchStatus(#[source] kube::Error),
    /// The object changed since this reconcile read it (a write conditional on the version
    /// it read was refused): nothing was done, and the newer version is reconciled next.
    #[error("the object changed since it was read; the newer version is reconciled next")]
    Outdated,
    /// Adding the finalizer failed.
    #[error("failed to add the finalizer: {0}")]
    AddFinalizer(#[source] kube::Error),
    /// Removing the finalizer failed.
    #[error("failed to remove the finalizer: {0}")]
    RemoveFinalizer(#[source] kube::Error),
    /// A platform call failed (during cleanup; apply reports platform failures in status).
    #[error("failed to sync the platform objects: {message}")]
    Platform {
        /// PascalCase reason, e.g. `CredentialsRejected`.
        reason: &'static str,
        /// Names the platform and operation (and the Secret, for credentials); never a value.
        message: String,
        /// Retrying will not help.
        permanent: bool,
    },
    /// The object has no name or namespace (a namespaced object always has both).
    #[error("failed to identify the object: it has no name or namespace")]
    Unidentified,
    /// Tether's code panicked on this object: a bug, reported on the object so the other
    /// objects go on being reconciled.
    #[error("internal error (a bug in Tether, please report it): {0}")]
    Panicked(String),
}

fn describe_missing(missing: &[Missing]) -> String {
    missing
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl ReconcileError {
    /// A bounded, PascalCase name of the error for metric labels and event reasons.
    pub fn kind(&self) -> &'static str {
        match self {
            ReconcileError::Decode(_) => "DecodeFailed",
            ReconcileError::ValidateSpec { reason, .. } => reason,
            ReconcileError::ResolveReferences(missing) => missing
                .first()
                .map(Missing::reason)
                .unwrap_or("ReferenceNotFound"),
            ReconcileError::ReadReference { .. } => "ReadReferenceFailed",
            ReconcileError::InvalidSecret(_) => "InvalidSecret",
            ReconcileError::CleanupBlocked(_) => "CleanupBlocked",
            ReconcileError::PatchStatus(_) => "PatchStatusFailed",
            ReconcileError::Outdated => "Outdated",
            ReconcileError::AddFinalizer(_) => "AddFinalizerFailed",
            ReconcileError::RemoveFinalizer(_) => "RemoveFinalizerFailed",
            ReconcileError::Platform { reason, .. } => reason,
            ReconcileError::Unidentified => "Unidentified",
            ReconcileError::Panicked(_) => "InternalError",
        }
    }

    /// Permanent errors cannot be fixed by retrying: the object is marked `Stalled` and
    /// waits for a change of itself or of a watched reference.
    pub fn is_permanent(&self) -> bool {
        match self {
            ReconcileError::Decode(_)
            | ReconcileError::ValidateSpec { .. }
            | ReconcileError::ResolveReferences(_)
            | ReconcileError::Unidentified
            | ReconcileError::InvalidSecret(_)
            | ReconcileError::CleanupBlocked(_)
            | ReconcileError::Panicked(_) => true,
            ReconcileError::Platform { permanent, .. } => *permanent,
            ReconcileError::Outdated => false,
            ReconcileError::ReadReference { source, .. }
            | ReconcileError::PatchStatus(source)
            | ReconcileError::AddFinalizer(source)
            | ReconcileError::RemoveFinalizer(source) => is_permanent_api_error(source),
        }
    }

    /// The message for the `Stalled` condition: names the missing object or invalid field;
    /// never a Secret value (no error variant ever holds one).
    pub fn stall_message(&self) -> String {
        match self {
            ReconcileError::ResolveReferences(missing) => describe_missing(missing),
            ReconcileError::ValidateSpec { message, .. } => message.clone(),
            other => other.to_string(),
        }
    }
}

/// API errors that retrying will not fix: forbidden, invalid (422), bad request.
fn is_permanent_api_error(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if matches!(status.code, 400 | 403 | 422))
}

impl ReconcileError {
    /// The error of reading a referenced Secret.
    pub fn from_secret_read(
        name: &str,
        error: crate::platform::credentials::SecretReadError,
    ) -> Self {
        use crate::platform::credentials::SecretReadError;
        match error {
            SecretReadError::Api(source) => ReconcileError::ReadReference {
                what: format!("Secret {name:?}"),
                source,
            },
            undecodable @ SecretReadError::Undecodable { .. } => {
                ReconcileError::InvalidSecret(undecodable.to_string())
            }
        }
    }
}

impl From<kube::runtime::finalizer::Error<ReconcileError>> for ReconcileError {
    fn from(error: kube::runtime::finalizer::Error<ReconcileError>) -> Self {
        use kube::runtime::finalizer::Error;
        match error {
            Error::ApplyFailed(e) | Error::CleanupFailed(e) => e,
            Error::AddFinalizer(e) => ReconcileError::AddFinalizer(e),
            Error::RemoveFinalizer(e) => ReconcileError::RemoveFinalizer(e),
            Error::UnnamedObject | Error::InvalidFinalizer => ReconcileError::Unidentified,
        }
    }
}

/// Retry bounds for transient errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// First retry delay.
    pub min: Duration,
    /// Longest retry delay.
    pub max: Duration,
}

impl Backoff {
    /// The delay before retry number `failures` (1 for the first failure): `min * 2^(n-1)`
    /// capped at `max`, then scaled by `jitter` (a factor in `[0, 1]`) into the upper half,
    /// `[d/2, d]`, so that objects failing together spread out. Never below `min` unless
    /// `min > max`, where `max` wins.
    pub fn delay(&self, failures: u32, jitter: f64) -> Duration {
        let exponent = failures.saturating_sub(1).min(32);
        let base = self
            .min
            .saturating_mul(2u32.saturating_pow(exponent))
            .min(self.max);
        let jitter = jitter.clamp(0.0, 1.0);
        let jittered = base.mul_f64(0.5 + 0.5 * jitter);
        jittered.max(self.min.min(self.max))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::references::{Missing, RefKind};

    fn backoff() -> Backoff {
        Backoff {
            min: Duration::from_secs(5),
            max: Duration::from_secs(300),
        }
    }

    #[test]
    fn the_delay_doubles_with_each_failure() {
        let b = backoff();
        assert_eq!(b.delay(1, 1.0), Duration::from_secs(5));
        assert_eq!(b.delay(2, 1.0), Duration::from_secs(10));
        assert_eq!(b.delay(4, 1.0), Duration::from_secs(40));
    }

    #[test]
    fn the_delay_never_exceeds_the_maximum() {
        assert_eq!(backoff().delay(30, 1.0), Duration::from_secs(300));
        assert_eq!(backoff().delay(u32::MAX, 1.0), Duration::from_secs(300));
    }

    #[test]
    fn jitter_keeps_the_delay_within_the_minimum_and_the_exponential_value() {
        let b = backoff();
        for failures in 1..12 {
            for jitter in [0.0, 0.3, 0.99] {
                let d = b.delay(failures, jitter);
                assert!(d >= b.min, "{d:?} below min");
                assert!(d <= b.delay(failures, 1.0), "{d:?} above unjittered");
            }
        }
        assert_eq!(b.delay(6, 0.0), Duration::from_secs(80));
    }

    #[test]
    fn missing_references_are_permanent_and_name_the_object() {
        let err = ReconcileError::ResolveReferences(vec![Missing {
            kind: RefKind::Secret,
            name: "render-token".into(),
            key: None,
            field: "spec.credentials.render".into(),
        }]);
        assert!(err.is_permanent());
        assert_eq!(err.kind(), "SecretNotFound");
        assert!(err.stall_message().contains("\"render-token\""));
    }

    #[test]
    fn api_outages_are_transient_and_forbidden_is_permanent() {
        let status = |code| {
            kube::Error::Api(Box::new(
                kube::core::Status::failure("boom", "Reason").with_code(code),
            ))
        };
        let read = |code| ReconcileError::ReadReference {
            what: "Secret \"a\"".into(),
            source: status(code),
        };
        assert!(!read(500).is_permanent());
        assert!(!read(429).is_permanent());
        assert!(read(403).is_permanent());
        assert!(!ReconcileError::PatchStatus(status(409)).is_permanent());
        assert_eq!(read(500).kind(), "ReadReferenceFailed");
    }

    #[test]
    fn invalid_specs_are_permanent_with_their_own_reason() {
        let err = ReconcileError::ValidateSpec {
            reason: "UnknownComponent",
            message: "spec.artifacts[0].component \"api\" is not a render service".into(),
        };
        assert!(err.is_permanent());
        assert_eq!(err.kind(), "UnknownComponent");
    }
}
