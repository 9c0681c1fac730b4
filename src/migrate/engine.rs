//! The run pipeline shared by the CLI and the Migration controller:
//! `connect → lock → history → plan → lint → dry-run → apply → verify → report`.
//!
//! [`plan`] is pure (source + history → what is pending, edited, missing);
//! [`run`] does the I/O and folds every outcome, including errors, into a [`RunReport`],
//! which is plain data: the CLI prints it, the controller turns it into status, events
//! and metrics ([`MigrationMetrics::observe`]). Nothing here knows about Kubernetes.
//!
//! Guarantees: two runners never apply concurrently (advisory lock; the second waits, then
//! finds nothing pending); each migration commits together with its history row or not
//! at all; an applied migration is never re-run, even when its file changed (that is
//! reported); a blocked or failed run applies nothing more after the point it stopped.

use std::fmt;
use std::time::{Duration, Instant};

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts};

use super::db::{self, AppliedRow, DbError, Durability, StatementFailed, Timeouts, VerifyResult};
use super::lint::{Finding, LintPolicy, lint_all};
use super::source::{Migration, MigrationSet};
use crate::telemetry::MetricsRegistry;

/// Everything a run needs besides the migrations and the database URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunSpec {
    /// What blocks and what is acknowledged.
    pub lint: LintPolicy,
    /// `lock_timeout` for each migration's statements.
    pub lock_timeout: Duration,
    /// `statement_timeout` for each migration's statements.
    pub statement_timeout: Duration,
    /// How long to wait for another runner's advisory lock.
    pub advisory_lock_wait: Duration,
    /// Run all pending migrations in a rolled-back transaction before applying any.
    pub dry_run_first: bool,
    /// Stop after the dry run (apply nothing).
    pub dry_run_only: bool,
    /// Tables that must exist after applying (`schema.table`, or `table` in `public`).
    pub verify_tables: Vec<String>,
    /// Tables that must have row-level security enabled after applying.
    pub verify_rls: Vec<String>,
}

impl Default for RunSpec {
    fn default() -> Self {
        RunSpec {
            lint: LintPolicy::default(),
            lock_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(300),
            advisory_lock_wait: Duration::from_secs(300),
            dry_run_first: true,
            dry_run_only: false,
            verify_tables: Vec::new(),
            verify_rls: Vec::new(),
        }
    }
}

/// An applied migration whose file no longer matches what was applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Changed {
    /// The version.
    pub version: String,
    /// The file now in the source.
    pub file: String,
    /// How the change was noticed.
    pub evidence: &'static str,
}

/// What a run would do, from the source and the history alone.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Migrations not yet applied, in version order.
    pub pending: Vec<Migration>,
    /// Applied migrations whose content changed since (never re-run).
    pub changed: Vec<Changed>,
    /// Applied versions with no file in the source.
    pub missing: Vec<String>,
    /// Pending versions older than the newest applied one (applied anyway, in order).
    pub out_of_order: Vec<String>,
}

/// Compares the source with the history. Pure.
pub fn plan(source: &MigrationSet, history: &[AppliedRow]) -> Plan {
    let applied = |version: &str| history.iter().find(|row| row.version == version);
    let newest = history
        .iter()
        .filter_map(|row| super::source::Version::parse(&row.version))
        .max();
    let mut out = Plan::default();
    for migration in source.migrations() {
        match applied(migration.version.as_str()) {
            None => {
                if newest.as_ref().is_some_and(|n| migration.version < *n) {
                    out.out_of_order.push(migration.version.to_string());
                }
                out.pending.push(migration.clone());
            }
            Some(row) => {
                let evidence = match (&row.checksum, &row.statements) {
                    (Some(sum), _) if *sum != migration.checksum => {
                        Some("sha256 differs from the one recorded at apply time")
                    }
                    (None, Some(stored)) if *stored != migration.statement_texts() => Some(
                        "statements differ from the ones in supabase_migrations.schema_migrations",
                    ),
                    _ => None,
                };
                if let Some(evidence) = evidence {
                    out.changed.push(Changed {
                        version: row.version.clone(),
                        file: migration.file.clone(),
                        evidence,
                    });
                }
            }
        }
    }
    let mut missing: Vec<&AppliedRow> = history
        .iter()
        .filter(|row| source.get(&row.version).is_none())
        .collect();
    missing.sort_by(|a, b| a.version.cmp(&b.version));
    out.missing = missing.into_iter().map(|row| row.version.clone()).collect();
    out
}

/// Where a run ended (the controller also shows `Pending`, `Linting` and `Applying`
/// while one is under way).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Not started.
    Pending,
    /// Linting the pending migrations.
    Linting,
    /// A blocking lint finding stopped the run before anything ran.
    Blocked,
    /// Applying.
    Applying,
    /// Every pending migration is applied (see `verify` for the checks).
    Applied,
    /// The run stopped on an error.
    Failed,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Pending => "Pending",
            Phase::Linting => "Linting",
            Phase::Blocked => "Blocked",
            Phase::Applying => "Applying",
            Phase::Applied => "Applied",
            Phase::Failed => "Failed",
        })
    }
}

/// A migration applied by this run.
#[derive(Clone, Debug, PartialEq)]
pub struct Applied {
    /// The version.
    pub version: String,
    /// The name.
    pub name: String,
    /// When its transaction started (RFC 3339, UTC).
    pub applied_at: String,
    /// How long it took on the server.
    pub duration: Duration,
}

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The dry run failed: nothing was applied.
    #[error("dry run failed, nothing was applied: {0}")]
    DryRun(Box<StatementFailed>),
    /// A migration failed; the ones before it are applied, it left no trace.
    #[error(transparent)]
    Apply(Box<StatementFailed>),
    /// Connecting, locking or bookkeeping failed.
    #[error(transparent)]
    Database(DbError),
}

impl RunError {
    /// The failed statement, when a statement failed.
    pub fn statement(&self) -> Option<&StatementFailed> {
        match self {
            RunError::DryRun(s) | RunError::Apply(s) => Some(s),
            RunError::Database(_) => None,
        }
    }

    /// A short, bounded name for metric labels and event reasons.
    pub fn kind(&self) -> &'static str {
        match self {
            RunError::DryRun(_) => "DryRunFailed",
            RunError::Apply(_) => "MigrationFailed",
            RunError::Database(DbError::LockBusy { .. }) => "LockBusy",
            RunError::Database(DbError::Connect { .. } | DbError::BadUrl { .. }) => "ConnectFailed",
            RunError::Database(_) => "DatabaseError",
        }
    }
}

/// The outcome of one run, as data.
#[derive(Debug)]
pub struct RunReport {
    /// Where the run ended.
    pub phase: Phase,
    /// Versions pending when the run started.
    pub pending: Vec<String>,
    /// Migrations this run applied, in order.
    pub applied: Vec<Applied>,
    /// Applied migrations whose files changed since.
    pub changed: Vec<Changed>,
    /// Applied versions missing from the source.
    pub missing: Vec<String>,
    /// Lint findings for the pending migrations.
    pub findings: Vec<Finding>,
    /// Verify checks (empty unless the run reached them).
    pub verify: Vec<VerifyResult>,
    /// The history as the run left it (every applied migration, by any tool).
    pub recorded: Vec<AppliedRow>,
    /// The error that stopped the run.
    pub error: Option<RunError>,
    /// Wall time of the whole run.
    pub elapsed: Duration,
}

impl Default for RunReport {
    fn default() -> Self {
        RunReport::new()
    }
}

impl RunReport {
    /// An empty report in phase `Pending`.
    pub fn new() -> Self {
        RunReport {
            phase: Phase::Pending,
            pending: Vec::new(),
            applied: Vec::new(),
            changed: Vec::new(),
            missing: Vec::new(),
            findings: Vec::new(),
            verify: Vec::new(),
            recorded: Vec::new(),
            error: None,
            elapsed: Duration::ZERO,
        }
    }

    /// True when every verify check passed (vacuously true when none ran).
    pub fn verified(&self) -> bool {
        self.verify.iter().all(|v| v.ok)
    }

    /// The findings that stopped (or would stop) the run.
    pub fn blocking(&self) -> impl Iterator<Item = &Finding> {
        self.findings.iter().filter(|f| f.blocking)
    }
}

/// Runs the whole pipeline for `source` against `database_url`. Never panics on bad input;
/// every outcome is in the report.
pub async fn run(spec: &RunSpec, source: &MigrationSet, database_url: &str) -> RunReport {
    let started = Instant::now();
    let mut report = RunReport::new();
    if let Err(error) = run_inner(spec, source, database_url, &mut report).await {
        report.phase = Phase::Failed;
        report.error = Some(error);
    }
    report.elapsed = started.elapsed();
    report
}

async fn run_inner(
    spec: &RunSpec,
    source: &MigrationSet,
    url: &str,
    report: &mut RunReport,
) -> Result<(), RunError> {
    let client = db::connect(url).await.map_err(RunError::Database)?;
    db::lock(&client, spec.advisory_lock_wait)
        .await
        .map_err(RunError::Database)?;
    let outcome = locked(spec, source, &client, report).await;
    // Closing the connection releases the lock as well; unlocking first is just tidy.
    let unlocked = db::unlock(&client).await;
    outcome?;
    unlocked.map_err(RunError::Database)
}

async fn locked(
    spec: &RunSpec,
    source: &MigrationSet,
    client: &tokio_postgres::Client,
    report: &mut RunReport,
) -> Result<(), RunError> {
    db::ensure_tables(client)
        .await
        .map_err(RunError::Database)?;
    let history = db::read_history(client).await.map_err(RunError::Database)?;
    let plan = plan(source, &history);
    report.recorded = history;
    report.pending = plan.pending.iter().map(|m| m.version.to_string()).collect();
    report.changed = plan.changed;
    report.missing = plan.missing;

    report.phase = Phase::Linting;
    report.findings = lint_all(&plan.pending, &spec.lint);
    if report.blocking().next().is_some() {
        report.phase = Phase::Blocked;
        return Ok(());
    }

    report.phase = Phase::Applying;
    let timeouts = Timeouts {
        lock: spec.lock_timeout,
        statement: spec.statement_timeout,
    };
    if (spec.dry_run_first || spec.dry_run_only) && !plan.pending.is_empty() {
        let pending: Vec<&Migration> = plan.pending.iter().collect();
        db::dry_run(client, &pending, timeouts)
            .await
            .map_err(|e| match e {
                DbError::Statement(s) => RunError::DryRun(s),
                other => RunError::Database(other),
            })?;
    }
    if spec.dry_run_only {
        report.phase = Phase::Pending;
        return Ok(());
    }
    let recorder = db::Recorder::prepare(client)
        .await
        .map_err(RunError::Database)?;
    if let Err(error) = apply_all(client, &recorder, &plan.pending, timeouts, report).await {
        // The migrations before the failed one committed without waiting for their WAL
        // flush; make them durable before reporting them applied (see `db`'s header). On
        // success the last commit waited for the flush, which covers the earlier ones.
        if !report.applied.is_empty()
            && let Err(flush) = db::flush(client).await
        {
            tracing::warn!(error = %flush, "could not confirm the applied migrations are durable");
        }
        return Err(error);
    }
    report.phase = Phase::Applied;
    if !report.applied.is_empty() {
        report.recorded = db::read_history(client).await.map_err(RunError::Database)?;
    }
    report.verify = db::verify(client, &spec.verify_tables, &spec.verify_rls)
        .await
        .map_err(RunError::Database)?;
    Ok(())
}

/// Applies `pending` in order, stopping at the first failure; only the last one waits for
/// its WAL flush (the caller flushes after a failure).
async fn apply_all(
    client: &tokio_postgres::Client,
    recorder: &db::Recorder,
    pending: &[Migration],
    timeouts: Timeouts,
    report: &mut RunReport,
) -> Result<(), RunError> {
    for (i, migration) in pending.iter().enumerate() {
        let durability = if i + 1 == pending.len() {
            Durability::WaitForFlush
        } else {
            Durability::FlushLater
        };
        let recorded = db::apply_one(client, recorder, migration, timeouts, durability)
            .await
            .map_err(|e| match e {
                DbError::Statement(s) => RunError::Apply(s),
                other => RunError::Database(other),
            })?;
        report.applied.push(Applied {
            version: migration.version.to_string(),
            name: migration.name.clone(),
            applied_at: recorded.applied_at,
            duration: recorded.duration,
        });
    }
    Ok(())
}

/// Reads the history and plans without taking the lock or creating anything.
pub async fn plan_against(source: &MigrationSet, database_url: &str) -> Result<Plan, DbError> {
    let client = db::connect(database_url).await?;
    let history = db::read_history(&client).await?;
    Ok(plan(source, &history))
}

/// The migration metrics, registered into the process's [`MetricsRegistry`].
#[derive(Clone)]
pub struct MigrationMetrics {
    applied: IntCounter,
    failed: IntCounter,
    blocked: IntCounter,
    duration: Histogram,
    findings: IntCounterVec,
}

impl MigrationMetrics {
    /// Registers `tether_migration_applied_total`, `tether_migration_failed_total`,
    /// `tether_migration_blocked_total`, `tether_migration_duration_seconds` and
    /// `tether_migration_lint_findings_total{rule}`.
    pub fn register(registry: &MetricsRegistry) -> Result<Self, prometheus::Error> {
        Ok(MigrationMetrics {
            applied: registry.register(IntCounter::new(
                "tether_migration_applied_total",
                "Migrations applied.",
            )?)?,
            failed: registry.register(IntCounter::new(
                "tether_migration_failed_total",
                "Migration runs that failed.",
            )?)?,
            blocked: registry.register(IntCounter::new(
                "tether_migration_blocked_total",
                "Migration runs blocked by a lint finding.",
            )?)?,
            duration: registry.register(Histogram::with_opts(
                HistogramOpts::new(
                    "tether_migration_duration_seconds",
                    "Time to apply one migration.",
                )
                .buckets(vec![0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0, 600.0]),
            )?)?,
            findings: registry.register(IntCounterVec::new(
                Opts::new(
                    "tether_migration_lint_findings_total",
                    "Lint findings in pending migrations, by rule.",
                ),
                &["rule"],
            )?)?,
        })
    }

    /// Counts one finished run. Rule names are a fixed set, so the label stays bounded.
    pub fn observe(&self, report: &RunReport) {
        self.applied.inc_by(report.applied.len() as u64);
        for applied in &report.applied {
            self.duration.observe(applied.duration.as_secs_f64());
        }
        for finding in &report.findings {
            self.findings
                .with_label_values(&[finding.rule.as_str()])
                .inc();
        }
        match report.phase {
            Phase::Blocked => self.blocked.inc(),
            Phase::Failed => self.failed.inc(),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(version: &str, checksum: Option<&str>, statements: Option<Vec<&str>>) -> AppliedRow {
        AppliedRow {
            version: version.into(),
            name: String::new(),
            statements: statements.map(|s| s.into_iter().map(String::from).collect()),
            checksum: checksum.map(String::from),
            applied_at: None,
            duration: None,
        }
    }

    fn source() -> MigrationSet {
        MigrationSet::from_inline([
            ("1_a.sql", "select 1;"),
            ("2_b.sql", "select 2;"),
            ("3_c.sql", "select 3;"),
        ])
        .unwrap()
    }

    #[test]
    fn versions_absent_from_the_history_are_pending_in_order() {
        let set = source();
        let plan = plan(&set, &[row("1", Some(&set.migrations()[0].checksum), None)]);
        let pending: Vec<_> = plan.pending.iter().map(|m| m.version.to_string()).collect();
        assert_eq!(pending, vec!["2", "3"]);
        assert!(plan.changed.is_empty() && plan.missing.is_empty() && plan.out_of_order.is_empty());
    }

    #[test]
    fn a_changed_checksum_is_reported_and_not_pending() {
        let plan = plan(&source(), &[row("1", Some("0000"), None)]);
        assert_eq!(plan.changed[0].version, "1");
        assert!(plan.pending.iter().all(|m| m.version.as_str() != "1"));
    }

    #[test]
    fn rows_from_the_supabase_cli_are_compared_by_statements() {
        let same = plan(&source(), &[row("1", None, Some(vec!["select 1"]))]);
        assert!(same.changed.is_empty());
        let edited = plan(&source(), &[row("1", None, Some(vec!["select 42"]))]);
        assert_eq!(edited.changed[0].version, "1");
    }

    #[test]
    fn applied_versions_without_files_are_missing_and_older_pending_ones_out_of_order() {
        let set = source();
        let plan = plan(
            &set,
            &[
                row("2", Some(&set.migrations()[1].checksum), None),
                row("9", None, None),
            ],
        );
        assert_eq!(plan.missing, vec!["9"]);
        assert_eq!(plan.out_of_order, vec!["1", "3"]);
    }

    #[test]
    fn metrics_count_applied_blocked_and_findings_by_rule() {
        let registry = MetricsRegistry::new();
        let metrics = MigrationMetrics::register(&registry).unwrap();
        let mut report = RunReport::new();
        report.phase = Phase::Blocked;
        report.findings = crate::migrate::lint::lint_all(
            MigrationSet::from_inline([("1_a.sql", "drop table t;")])
                .unwrap()
                .migrations(),
            &LintPolicy::default(),
        );
        metrics.observe(&report);
        let text = registry.render();
        assert!(text.contains("tether_migration_blocked_total 1"), "{text}");
        assert!(
            text.contains("tether_migration_lint_findings_total{rule=\"ban-drop-table\"} 1"),
            "{text}"
        );
        assert!(
            registry
                .names()
                .contains(&"tether_migration_duration_seconds".to_string())
        );
    }
}
