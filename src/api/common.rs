//! Types shared by the three kinds: references to Secrets and other objects, environment
//! variables, durations, and the kstatus-style conditions every status carries.

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A reference to one key of a Secret in the same namespace as the object.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key inside the Secret's data.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// A reference to an API token: a key of a Secret in the same namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenSecretRef {
    /// Name of the Secret holding the token.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key inside the Secret's data that holds the token.
    #[serde(default = "default_token_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

fn default_token_key() -> String {
    "token".to_string()
}

/// A reference to another object of a known kind in the same namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LocalObjectRef {
    /// Name of the object.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// Where an environment variable's value comes from.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnvVarSource {
    /// A key of a Secret in the same namespace. The value is written to the platform and
    /// never copied into status, events or logs.
    pub secret_key_ref: SecretKeyRef,
}

/// One environment variable: a literal `value` or a value from a Secret (exactly one).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.value) != has(self.valueFrom)").message("exactly one of value or valueFrom must be set"))]
pub struct EnvVar {
    /// Variable name, as the application reads it.
    #[schemars(regex(pattern = r"^[A-Za-z_][A-Za-z0-9_.-]*$"), length(max = 256))]
    pub name: String,
    /// Literal value. Use `valueFrom` for anything secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 65536))]
    pub value: Option<String>,
    /// Value read from a Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_from: Option<EnvVarSource>,
}

/// What Tether does when a platform object no longer matches the spec.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum DriftPolicy {
    /// Revert out-of-band changes to the spec's values.
    #[default]
    Correct,
    /// Only report drift (condition `DriftDetected`, an event and a metric).
    Report,
}

/// What happens to platform objects when the owning resource is deleted, or when an
/// object is removed from the spec.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum DeletionPolicy {
    /// Delete every platform object, stateful ones (databases, key-value stores, volumes,
    /// the Supabase project) included.
    Delete,
    /// Leave every platform object in place.
    Orphan,
}

/// The status of a condition, as Kubernetes spells it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ConditionStatus {
    /// The condition holds.
    True,
    /// The condition does not hold.
    False,
    /// Not yet known.
    #[default]
    Unknown,
}

/// One observation of the object's state, in the shape of `metav1.Condition`.
///
/// Polarity follows kstatus: `Ready` is positive (True is good); `Reconciling` and
/// `Stalled` are abnormal-true (present and True only while the object is in that state).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Type of the condition: `Ready`, `Reconciling`, `Stalled` or a domain type.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: ConditionStatus,
    /// The `metadata.generation` this condition was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// When the status last changed (RFC 3339).
    pub last_transition_time: String,
    /// Machine-readable reason in CamelCase.
    pub reason: String,
    /// Human-readable explanation.
    #[serde(default)]
    pub message: String,
}

/// Condition types shared by the three kinds.
pub mod condition_types {
    /// Every managed thing matches the spec and is healthy.
    pub const READY: &str = "Ready";
    /// Work is in progress toward the spec.
    pub const RECONCILING: &str = "Reconciling";
    /// Progress is impossible until the spec or a referenced object changes.
    pub const STALLED: &str = "Stalled";
}

/// A Go-style duration such as `30s`, `5m` or `1h30m`, as the API server accepts in
/// `metav1.Duration` fields. Kept as a string in the API; parsed with
/// [`parse_duration`].
pub const DURATION_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$";

/// The longest duration any Tether field or flag takes: one year (`8760h`). Far beyond any
/// sensible interval or timeout, and far inside what timers and clocks can add.
pub const MAX_DURATION: std::time::Duration = std::time::Duration::from_secs(8760 * 3600);

/// Parses a duration written as [`DURATION_PATTERN`] describes, at most [`MAX_DURATION`].
pub fn parse_duration(text: &str) -> Result<std::time::Duration, InvalidDuration> {
    let syntax = || InvalidDuration::Syntax(text.to_string());
    if text.is_empty() {
        return Err(syntax());
    }
    let mut total = 0f64;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(syntax)?;
        let (number, tail) = rest.split_at(digits);
        let number: f64 = number.parse().map_err(|_| syntax())?;
        let (unit_seconds, unit_len) = if tail.starts_with("ms") {
            (0.001, 2)
        } else if tail.starts_with('s') {
            (1.0, 1)
        } else if tail.starts_with('m') {
            (60.0, 1)
        } else if tail.starts_with('h') {
            (3600.0, 1)
        } else {
            return Err(syntax());
        };
        total += number * unit_seconds;
        rest = &tail[unit_len..];
    }
    std::time::Duration::try_from_secs_f64(total)
        .ok()
        .filter(|d| *d <= MAX_DURATION)
        .ok_or_else(|| InvalidDuration::OutOfRange(text.to_string()))
}

/// Parses a duration and checks it is within `[min, max]` (written as the CRDs write them,
/// e.g. `1s` and `168h`), with the CRD rule's message: what admission enforces, enforced
/// again for objects stored before the rule (ratcheting keeps those).
pub fn parse_duration_within(
    text: &str,
    min: &str,
    max: &str,
) -> Result<std::time::Duration, String> {
    let bound = |b: &str| parse_duration(b).unwrap_or(MAX_DURATION);
    let duration = parse_duration(text).map_err(|e| e.to_string())?;
    if duration < bound(min) || duration > bound(max) {
        return Err(format!("must be between {min} and {max}"));
    }
    Ok(duration)
}

/// A duration string Tether cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidDuration {
    /// Not of the form `1h30m`, `45s` or `500ms`.
    #[error(
        "invalid duration {0:?}: expected a number with a unit (ms, s, m, h), e.g. 30s or 1h30m"
    )]
    Syntax(String),
    /// Longer than [`MAX_DURATION`].
    #[error("invalid duration {0:?}: at most 8760h (one year)")]
    OutOfRange(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn durations_with_several_units_add_up() {
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
    }

    #[test]
    fn durations_beyond_a_year_are_out_of_range_not_a_panic() {
        assert_eq!(parse_duration("8760h").unwrap(), MAX_DURATION);
        for huge in [
            "8761h",
            "18446744073709551615s",
            "1e400s",
            "99999999999999999999999h",
        ] {
            assert!(
                matches!(
                    parse_duration(huge),
                    Err(InvalidDuration::OutOfRange(_)) | Err(InvalidDuration::Syntax(_))
                ),
                "{huge}"
            );
        }
        assert_eq!(
            parse_duration("18446744073709551615s")
                .unwrap_err()
                .to_string(),
            r#"invalid duration "18446744073709551615s": at most 8760h (one year)"#
        );
    }

    #[test]
    fn durations_without_a_unit_are_rejected() {
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("5d").is_err());
    }

    #[test]
    fn the_pattern_accepts_exactly_what_the_parser_accepts() {
        let pattern = regex::Regex::new(DURATION_PATTERN).unwrap();
        for ok in ["10m", "1h30m", "500ms", "1.5s"] {
            assert!(pattern.is_match(ok) && parse_duration(ok).is_ok(), "{ok}");
        }
        for bad in ["10", "5d", "m", ""] {
            assert!(
                !pattern.is_match(bad) && parse_duration(bad).is_err(),
                "{bad}"
            );
        }
    }
}
