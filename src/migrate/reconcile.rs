//! The seam between the Migration controller and the engine: everything the Migration
//! reconciler needs that does not touch Kubernetes.
//!
//! The reconciler's flow (`dereference → run → report`):
//! 1. **dereference** (controller): read the ConfigMap named by `spec.source.configMapRef`
//!    (its `data`), and the database URL from `spec.database` (the Secret key, or the
//!    Environment's Supabase database).
//! 2. [`resolve_source`] turns the spec's source (+ the ConfigMap data) into a
//!    [`MigrationSet`]; [`run_spec`] turns the spec's policy and verify into a [`RunSpec`].
//!    Their errors are permanent until the spec changes: set `Stalled`.
//! 3. [`run_migration`] runs lint → dry-run → apply → verify and returns a [`RunReport`]
//!    (every outcome is data; nothing here panics or retries).
//! 4. **report**: [`status_from`] gives the new `MigrationStatus` (phase, pending, applied
//!    with time and duration, findings, conditions `Ready`/`Stalled`/`Verified`),
//!    [`events_from`] the events to emit, and [`MigrationMetrics::observe`](super::engine::MigrationMetrics::observe) counts the run.
//!    [`requeue_after`] says when to look again.
//!
//! `spec.suspend` is the controller's to honour (skip step 3).
//!
//! `controller::migration` is the caller: it registers `MigrationMetrics` once with the
//! controller metrics, and per reconcile calls `resolve_source`, `run_migration`,
//! `status_from`, `events_from`, `MigrationMetrics::observe` and `requeue_after`.
//! `SpecError`s set `Stalled` with `SpecError::reason`.

use std::collections::BTreeMap;
use std::time::Duration;

use super::engine::{Phase, RunError, RunReport, RunSpec, run};
use super::lint::LintPolicy;
use super::source::{MigrationSet, SourceError, Version};
use crate::api::common::{
    Condition, ConditionStatus, InvalidDuration, condition_types, parse_duration,
};
use crate::api::migration::{
    AppliedMigration, LintFinding, MigrationPhase, MigrationSource, MigrationSpec, MigrationStatus,
};

/// The `Verified` condition type (domain condition of a Migration).
pub const VERIFIED: &str = "Verified";

/// A spec the engine cannot run; permanent until the spec (or the ConfigMap) changes.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The migrations could not be parsed or ordered.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// A timeout is not a duration.
    #[error("failed to read the migration policy: {0}")]
    Duration(#[from] InvalidDuration),
    /// The source names a ConfigMap but the controller passed no data for it.
    #[error("failed to resolve the migration source: the ConfigMap's data was not provided")]
    ConfigMapMissing,
}

impl SpecError {
    /// A bounded reason for conditions and events.
    pub fn reason(&self) -> &'static str {
        match self {
            SpecError::Source(_) => "InvalidSource",
            SpecError::Duration(_) => "InvalidPolicy",
            SpecError::ConfigMapMissing => "ConfigMapNotFound",
        }
    }
}

/// Builds the migration set from the spec's source; `config_map` is the referenced
/// ConfigMap's `data` when the source is a ConfigMap.
pub fn resolve_source(
    source: &MigrationSource,
    config_map: Option<&BTreeMap<String, String>>,
) -> Result<MigrationSet, SpecError> {
    match (&source.inline, &source.config_map_ref) {
        (Some(inline), _) => {
            Ok(MigrationSet::from_inline(inline.iter().map(|m| {
                (format!("{}_{}.sql", m.version, m.name), m.sql.clone())
            }))?)
        }
        (None, Some(_)) => Ok(MigrationSet::from_config_map(
            config_map.ok_or(SpecError::ConfigMapMissing)?,
        )?),
        (None, None) => Ok(MigrationSet::default()),
    }
}

/// The engine's options from the spec's policy and verify sections.
pub fn run_spec(spec: &MigrationSpec) -> Result<RunSpec, SpecError> {
    let policy = &spec.policy;
    let mut acknowledged: BTreeMap<String, std::collections::BTreeSet<String>> = BTreeMap::new();
    for ack in &policy.acknowledge {
        acknowledged
            .entry(ack.version.clone())
            .or_default()
            .extend(ack.rules.iter().cloned());
    }
    let verify = spec.verify.clone().unwrap_or_default();
    Ok(RunSpec {
        lint: LintPolicy {
            allow_destructive: policy.allow_destructive,
            acknowledged,
            require_timeouts: false,
        },
        lock_timeout: parse_duration(&policy.lock_timeout)?,
        statement_timeout: parse_duration(&policy.statement_timeout)?,
        // A controller must not sit on a worker for long: another runner (a CI job, a
        // second replica during a rollout) holding the lock means "try again later".
        advisory_lock_wait: Duration::from_secs(30),
        dry_run_first: true,
        dry_run_only: false,
        // Several Migrations may share a database, each with its own versions: another
        // Migration's versions are neither missing here nor out of order.
        include_all: true,
        allow_missing: true,
        // An edited file is reported (Ready=False, MigrationEdited) without stopping the
        // files after it.
        strict: false,
        scratch_copy: true,
        verify_tables: verify.tables_exist,
        verify_rls: verify.rls_enabled,
    })
}

/// Runs the spec against `database_url`: lint → dry-run → apply → verify.
pub async fn run_migration(
    spec: &MigrationSpec,
    source: &MigrationSet,
    database_url: &str,
) -> Result<RunReport, SpecError> {
    Ok(run(&run_spec(spec)?, source, database_url).await)
}

/// How soon to reconcile again after this report (the spec's `interval` when all is well).
pub fn requeue_after(report: &RunReport, interval: Duration) -> Duration {
    match &report.error {
        Some(error) if !is_permanent(error) => interval.min(Duration::from_secs(30)),
        _ => interval,
    }
}

/// Statement failures that a retry will not fix (as opposed to lock or statement
/// timeouts, serialization failures and lost connections).
fn is_permanent(error: &RunError) -> bool {
    error.statement().is_some_and(|s| {
        let class = s.sqlstate.as_deref().map(|c| &c[..2.min(c.len())]);
        !matches!(class, Some("55" | "57" | "40" | "08" | "53") | None)
    })
}

fn phase(report: &RunReport) -> MigrationPhase {
    match report.phase {
        Phase::Pending => MigrationPhase::Pending,
        Phase::Linting => MigrationPhase::Linting,
        Phase::Blocked => MigrationPhase::Blocked,
        Phase::Applying => MigrationPhase::Applying,
        Phase::Applied => MigrationPhase::Applied,
        Phase::Failed => MigrationPhase::Failed,
    }
}

/// The status a finished run leads to. `previous` keeps `lastTransitionTime` of
/// conditions whose status did not change; `now` is an RFC 3339 timestamp.
pub fn status_from(
    report: &RunReport,
    generation: Option<i64>,
    previous: Option<&MigrationStatus>,
    now: &str,
) -> MigrationStatus {
    let changed: Vec<&str> = report.changed.iter().map(|c| c.version.as_str()).collect();
    // Only this Migration's versions: other Migrations may share the database, and their
    // rows are theirs to report.
    let mut applied: Vec<AppliedMigration> = report
        .recorded
        .iter()
        .filter(|row| !report.missing.contains(&row.version))
        .map(|row| AppliedMigration {
            version: row.version.clone(),
            name: row.name.clone(),
            applied_at: row.applied_at.clone(),
            duration_ms: row
                .duration
                .map(|d| d.as_millis().min(i64::MAX as u128) as i64),
            checksum_mismatch: changed.contains(&row.version.as_str()),
        })
        .collect();
    applied.sort_by(
        |a, b| match (Version::parse(&a.version), Version::parse(&b.version)) {
            (Some(x), Some(y)) => x.cmp(&y),
            _ => a.version.cmp(&b.version),
        },
    );
    let applied_now: Vec<&str> = report.applied.iter().map(|a| a.version.as_str()).collect();
    let pending = report
        .pending
        .iter()
        .filter(|v| !applied_now.contains(&v.as_str()))
        .cloned()
        .collect();
    let findings = report
        .findings
        .iter()
        .map(|f| LintFinding {
            version: f.version.clone(),
            rule: f.rule.clone(),
            line: i32::try_from(f.line).unwrap_or(i32::MAX),
            message: match &f.context {
                Some(context) => format!("{} {context}", f.message),
                None => f.message.clone(),
            },
            hint: Some(f.hint.clone()),
            blocking: f.blocking,
        })
        .collect();

    let mut conditions = Vec::new();
    let mut set = |type_: &str, status: ConditionStatus, reason: &str, message: String| {
        let kept = previous
            .and_then(|p| p.conditions.iter().find(|c| c.type_ == type_))
            .filter(|c| c.status == status)
            .map(|c| c.last_transition_time.clone());
        conditions.push(Condition {
            type_: type_.to_string(),
            status,
            observed_generation: generation,
            last_transition_time: kept.unwrap_or_else(|| now.to_string()),
            reason: reason.to_string(),
            message,
        });
    };
    let (ready, reason, message, stalled) = ready_condition(report);
    set(condition_types::READY, ready, reason, message.clone());
    if stalled {
        set(
            condition_types::STALLED,
            ConditionStatus::True,
            reason,
            message,
        );
    }
    if !report.verify.is_empty() {
        let failures: Vec<&str> = report
            .verify
            .iter()
            .filter(|v| !v.ok)
            .map(|v| v.message.as_str())
            .collect();
        if failures.is_empty() {
            set(
                VERIFIED,
                ConditionStatus::True,
                "VerifySucceeded",
                format!("{} checks passed", report.verify.len()),
            );
        } else {
            set(
                VERIFIED,
                ConditionStatus::False,
                "VerifyFailed",
                failures.join("; "),
            );
        }
    }

    MigrationStatus {
        observed_generation: generation,
        conditions,
        phase: Some(phase(report)),
        latest_version: applied.last().map(|a| a.version.clone()),
        pending,
        applied,
        findings,
    }
}

/// (Ready status, reason, message, stalled?) for a finished run.
fn ready_condition(report: &RunReport) -> (ConditionStatus, &'static str, String, bool) {
    if let Some(error) = &report.error {
        return (
            ConditionStatus::False,
            error.kind(),
            error.to_string(),
            is_permanent(error),
        );
    }
    match report.phase {
        Phase::Blocked => {
            let rules: Vec<String> = report
                .blocking()
                .map(|f| format!("{} in {}", f.rule, f.version))
                .collect();
            let remedy = if report.blocking().all(|f| f.waivable()) {
                "set allowDestructive or acknowledge the rule"
            } else {
                "fix the migration file (Postgres would refuse it; no policy waives this)"
            };
            (
                ConditionStatus::False,
                "MigrationBlocked",
                format!("blocked by {}: {remedy}", rules.join(", ")),
                true,
            )
        }
        Phase::Applied if !report.changed.is_empty() => {
            let versions: Vec<&str> = report.changed.iter().map(|c| c.version.as_str()).collect();
            (
                ConditionStatus::False,
                "MigrationEdited",
                format!(
                    "applied migrations changed since they were applied (not re-run): {}",
                    versions.join(", ")
                ),
                true,
            )
        }
        Phase::Applied if !report.verified() => (
            ConditionStatus::False,
            "VerifyFailed",
            "verification failed".into(),
            true,
        ),
        Phase::Applied => {
            let latest = report
                .recorded
                .iter()
                .filter_map(|r| Version::parse(&r.version))
                .max();
            let latest = latest
                .map(|v| v.to_string())
                .unwrap_or_else(|| "none".into());
            (
                ConditionStatus::True,
                "MigrationsApplied",
                format!(
                    "{} applied this run, latest version {latest}",
                    report.applied.len()
                ),
                false,
            )
        }
        _ => (
            ConditionStatus::Unknown,
            "Progressing",
            "run did not finish".into(),
            false,
        ),
    }
}

/// Whether an event is routine or needs attention.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    /// Routine.
    Normal,
    /// Needs attention.
    Warning,
}

/// One event the reconciler should record on the Migration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MigrationEvent {
    /// Normal or Warning.
    pub type_: EventType,
    /// PascalCase reason.
    pub reason: &'static str,
    /// A human sentence.
    pub note: String,
}

/// The events a finished run should emit: one per migration applied, one per blocked
/// migration, one per failed verify check, and one for a failure.
pub fn events_from(report: &RunReport) -> Vec<MigrationEvent> {
    let mut events: Vec<MigrationEvent> = report
        .applied
        .iter()
        .map(|a| MigrationEvent {
            type_: EventType::Normal,
            reason: "MigrationApplied",
            note: format!(
                "Applied migration {}_{} in {} ms",
                a.version,
                a.name,
                a.duration.as_millis()
            ),
        })
        .collect();
    let mut blocked: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for f in report.blocking() {
        blocked
            .entry(f.version.as_str())
            .or_default()
            .push(f.rule.as_str());
    }
    events.extend(blocked.into_iter().map(|(version, rules)| MigrationEvent {
        type_: EventType::Warning,
        reason: "MigrationBlocked",
        note: format!("Migration {version} blocked by {}", rules.join(", ")),
    }));
    for c in &report.changed {
        events.push(MigrationEvent {
            type_: EventType::Warning,
            reason: "MigrationEdited",
            note: format!(
                "Migration {} ({}) changed after it was applied; it is not re-run",
                c.version, c.file
            ),
        });
    }
    events.extend(
        report
            .verify
            .iter()
            .filter(|v| !v.ok)
            .map(|v| MigrationEvent {
                type_: EventType::Warning,
                reason: "VerifyFailed",
                note: v.message.clone(),
            }),
    );
    if let Some(error) = &report.error {
        events.push(MigrationEvent {
            type_: EventType::Warning,
            reason: error.kind(),
            note: error.to_string(),
        });
    }
    events
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::common::LocalObjectRef;
    use crate::api::migration::{Acknowledgement, InlineMigration, MigrationPolicy, Verify};
    use crate::migrate::db::{AppliedRow, Check, VerifyResult};
    use crate::migrate::engine::Applied;
    use crate::migrate::lint::lint_all;

    fn inline(version: &str, name: &str, sql: &str) -> InlineMigration {
        InlineMigration {
            version: version.into(),
            name: name.into(),
            sql: sql.into(),
        }
    }

    #[test]
    fn inline_and_config_map_sources_resolve_to_ordered_sets() {
        let source = MigrationSource {
            inline: Some(vec![
                inline("10", "b", "select 2;"),
                inline("9", "a", "select 1;"),
            ]),
            config_map_ref: None,
        };
        let set = resolve_source(&source, None).unwrap();
        assert_eq!(set.migrations()[0].file, "9_a.sql");
        let source = MigrationSource {
            inline: None,
            config_map_ref: Some(LocalObjectRef { name: "m".into() }),
        };
        assert!(matches!(
            resolve_source(&source, None),
            Err(SpecError::ConfigMapMissing)
        ));
        let data = BTreeMap::from([("1_x.sql".to_string(), "select 1;".to_string())]);
        assert_eq!(
            resolve_source(&source, Some(&data))
                .unwrap()
                .migrations()
                .len(),
            1
        );
        let bad = BTreeMap::from([("x.sql".to_string(), String::new())]);
        assert_eq!(
            resolve_source(&source, Some(&bad)).unwrap_err().reason(),
            "InvalidSource"
        );
    }

    #[test]
    fn the_policy_maps_onto_the_run_spec() {
        let spec = MigrationSpec {
            policy: MigrationPolicy {
                allow_destructive: false,
                lock_timeout: "1.5s".into(),
                statement_timeout: "1m30s".into(),
                acknowledge: vec![Acknowledgement {
                    version: "7".into(),
                    rules: vec!["ban-drop-table".into()],
                    reason: None,
                }],
            },
            verify: Some(Verify {
                tables_exist: vec!["a".into()],
                rls_enabled: vec!["b".into()],
            }),
            ..MigrationSpec::default()
        };
        let run = run_spec(&spec).unwrap();
        assert_eq!(run.lock_timeout, Duration::from_millis(1500));
        assert_eq!(run.statement_timeout, Duration::from_secs(90));
        assert!(run.lint.acknowledged["7"].contains("ban-drop-table"));
        assert_eq!(
            (run.verify_tables, run.verify_rls),
            (vec!["a".to_string()], vec!["b".to_string()])
        );
        let bad = MigrationSpec {
            policy: MigrationPolicy {
                lock_timeout: "soon".into(),
                ..MigrationPolicy::default()
            },
            ..MigrationSpec::default()
        };
        assert_eq!(run_spec(&bad).unwrap_err().reason(), "InvalidPolicy");
    }

    fn applied_report() -> RunReport {
        let mut report = RunReport::new();
        report.phase = Phase::Applied;
        report.pending = vec!["2".into()];
        report.applied = vec![Applied {
            version: "2".into(),
            name: "b".into(),
            applied_at: "2026-01-01T00:00:00.000000Z".into(),
            duration: Duration::from_millis(12),
        }];
        report.recorded = ["10", "2"]
            .iter()
            .map(|v| AppliedRow {
                version: v.to_string(),
                name: "x".into(),
                statements: None,
                checksum: None,
                applied_at: Some("2026-01-01T00:00:00.000000Z".into()),
                duration: Some(Duration::from_millis(12)),
            })
            .collect();
        report
    }

    #[test]
    fn an_applied_run_is_ready_with_applied_versions_in_numeric_order() {
        let status = status_from(&applied_report(), Some(3), None, "2026-01-02T00:00:00Z");
        assert_eq!(status.phase, Some(MigrationPhase::Applied));
        assert_eq!(
            status
                .applied
                .iter()
                .map(|a| a.version.as_str())
                .collect::<Vec<_>>(),
            vec!["2", "10"]
        );
        assert_eq!(status.latest_version.as_deref(), Some("10"));
        assert_eq!(status.applied[0].duration_ms, Some(12));
        assert!(status.pending.is_empty());
        // Another Migration's version in the same database is not this one's.
        let mut shared = applied_report();
        shared.missing = vec!["10".into()];
        let status = status_from(&shared, Some(3), None, "2026-01-02T00:00:00Z");
        assert_eq!(
            status
                .applied
                .iter()
                .map(|a| a.version.as_str())
                .collect::<Vec<_>>(),
            vec!["2"]
        );
        assert_eq!(status.latest_version.as_deref(), Some("2"));
        let ready = &status.conditions[0];
        assert_eq!(
            (
                ready.type_.as_str(),
                ready.status,
                ready.observed_generation
            ),
            ("Ready", ConditionStatus::True, Some(3))
        );
        assert!(status.conditions.iter().all(|c| c.type_ != "Stalled"));
        let events = events_from(&applied_report());
        assert_eq!(events[0].reason, "MigrationApplied");
        assert!(events[0].note.contains("2_b"));
    }

    #[test]
    fn a_blocked_run_is_stalled_and_names_the_rule() {
        let mut report = RunReport::new();
        report.phase = Phase::Blocked;
        report.findings = lint_all(
            MigrationSet::from_inline([("5_drop.sql", "drop table t;")])
                .unwrap()
                .migrations(),
            &LintPolicy::default(),
        );
        let status = status_from(&report, None, None, "now");
        let stalled = status
            .conditions
            .iter()
            .find(|c| c.type_ == "Stalled")
            .expect("Stalled");
        assert!(
            stalled.message.contains("ban-drop-table in 5"),
            "{}",
            stalled.message
        );
        assert!(status.findings[0].blocking);
        let events = events_from(&report);
        assert_eq!(
            (events[0].reason, events[0].type_),
            ("MigrationBlocked", EventType::Warning)
        );
    }

    #[test]
    fn a_failed_verify_sets_verified_false_naming_the_table() {
        let mut report = applied_report();
        report.verify = vec![VerifyResult {
            table: "profiles".into(),
            check: Check::RlsEnabled,
            ok: false,
            message: "row-level security is not enabled on table profiles".into(),
        }];
        let status = status_from(&report, None, None, "now");
        let verified = status
            .conditions
            .iter()
            .find(|c| c.type_ == VERIFIED)
            .unwrap();
        assert_eq!(verified.status, ConditionStatus::False);
        assert!(verified.message.contains("profiles"));
        assert!(
            events_from(&report)
                .iter()
                .any(|e| e.reason == "VerifyFailed" && e.note.contains("profiles"))
        );
    }

    #[test]
    fn unchanged_conditions_keep_their_transition_time() {
        let first = status_from(&applied_report(), None, None, "t1");
        let second = status_from(&applied_report(), None, Some(&first), "t2");
        assert_eq!(second.conditions[0].last_transition_time, "t1");
        let mut blocked = RunReport::new();
        blocked.phase = Phase::Blocked;
        let third = status_from(&blocked, None, Some(&second), "t3");
        assert_eq!(third.conditions[0].last_transition_time, "t3");
    }
}
