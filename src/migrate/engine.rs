//! The run pipeline shared by the CLI and the Migration controller:
//! `connect → lock → history → plan → lint → check → apply → verify → report`.
//!
//! [`plan`] is pure (source + history → what is pending, edited, missing); [`segments`] is
//! pure (pending files → the transactions they run in); [`run`] does the I/O and folds every
//! outcome, including errors, into a [`RunReport`], which is plain data: the CLI prints it,
//! the controller turns it into status, events and metrics ([`MigrationMetrics::observe`]).
//! Nothing here knows about Kubernetes.
//!
//! **How files run.** As `supabase db push` runs them: settings reset before each file,
//! each file's statements and history rows atomic, files with their own `BEGIN`/`COMMIT`
//! as written ([`super::shape`], [`super::exec`]).
//!
//! **The check before applying** (the default, `dry_run_first`) proves that every pending
//! file succeeds before any of them is committed, without running the DDL twice:
//! - The pending files run in **one transaction** that commits only after the last one
//!   succeeded (each file after `RESET ALL`, each with its own history rows). A failing
//!   file rolls everything back: nothing is applied, and the error names the file. This is
//!   the apply itself, as fast as `psql -1`.
//! - When some file needs a commit before the next one can run (it adds an enum value, which
//!   Postgres lets no transaction use before it committed, or it runs as written), the
//!   files run in several transactions (see [`segments`]), and the run is **rehearsed**
//!   first: on a scratch copy of the database (`CREATE DATABASE … TEMPLATE`, when nobody
//!   else is connected, the role may create databases and the database is at most
//!   [`SCRATCH_COPY_MAX_BYTES`]), which proves everything; otherwise in one transaction that
//!   is rolled back, which proves every file up to the first one that needs an earlier
//!   file's commit (a use of an enum value added in the run, or a statement that cannot run
//!   in a transaction). The report says how far the check went ([`Checked`]); the files
//!   after that point are checked as they run, each transaction still atomic.
//!
//! `dry_run_only` runs the check and commits nothing. Without `dry_run_first` each file
//! commits on its own, as the CLI does: a failure keeps the files before it.
//!
//! Guarantees: two runners never apply concurrently (advisory lock; the second waits, then
//! finds nothing pending); each migration commits together with its history row or not
//! at all (files that run as written: their history row after them); an applied migration
//! is never re-run, even when its file changed (that is reported); a blocked or failed run
//! applies nothing more after the point it stopped.

use std::fmt;
use std::time::{Duration, Instant};

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts};

use super::db::{self, AppliedRow, DbError, Durability, StatementFailed, Timeouts, VerifyResult};
use super::exec::{End, Session};
use super::lint::{self, Finding, LintPolicy};
use super::scratch::CopyFailure;
use super::shape::{Shape, StatementKind};
use super::source::{Migration, MigrationSet, Skipped};
use crate::telemetry::MetricsRegistry;

/// The largest database Tether copies for a rehearsal (`pg_database_size`).
pub const SCRATCH_COPY_MAX_BYTES: i64 = 256 * 1024 * 1024;

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
    /// Prove that every pending file succeeds before committing any (see the module
    /// documentation); without it each file commits on its own.
    pub dry_run_first: bool,
    /// Only check (apply nothing).
    pub dry_run_only: bool,
    /// Apply pending files older than the newest applied version (the CLI's
    /// `--include-all`); without it such files stop the run before anything is applied.
    pub include_all: bool,
    /// Applied versions without a file in the source are only reported; without it they
    /// stop the run before anything is applied, as they stop `supabase db push`.
    pub allow_missing: bool,
    /// Applied files that changed since stop the run before anything is applied.
    pub strict: bool,
    /// Rehearse on a scratch copy of the database when one transaction cannot check the
    /// whole run and the database allows a copy.
    pub scratch_copy: bool,
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
            include_all: false,
            allow_missing: false,
            strict: false,
            scratch_copy: true,
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

/// What to do about an applied file that changed, in a sentence.
pub const CHANGED_HINT: &str = "Tether never re-runs an applied file: restore it as it was applied (e.g. git checkout -- <file>) and put the change in a new migration (supabase migration new <name>)";

/// What a run would do, from the source and the history alone.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Migrations not yet applied, in version order.
    pub pending: Vec<Migration>,
    /// Applied migrations whose content changed since (never re-run).
    pub changed: Vec<Changed>,
    /// Applied versions with no file in the source.
    pub missing: Vec<String>,
    /// Pending versions older than the newest applied one.
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
                    (None, Some(stored))
                        if !same_statements(stored, &migration.statement_texts()) =>
                    {
                        Some(
                            "statements differ from the ones in supabase_migrations.schema_migrations",
                        )
                    }
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

/// The CLI keeps a file's leading byte-order mark in its first statement; Tether does not.
fn same_statements(stored: &[String], local: &[String]) -> bool {
    stored.len() == local.len()
        && stored.iter().zip(local).enumerate().all(|(i, (a, b))| {
            let a = if i == 0 {
                a.trim_start_matches('\u{feff}')
            } else {
                a
            };
            a == b
        })
}

/// One transaction of a run, or a file that runs as written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Segment<'a> {
    /// Files that run in one transaction, in order.
    Together(Vec<&'a Migration>),
    /// A file that manages its own transactions (see [`Shape::AsWritten`]).
    AsWritten(&'a Migration),
}

/// How `pending` runs: with `per_file`, each file in a transaction of its own (the CLI's
/// way); otherwise as few transactions as the files allow: a new one starts after a file
/// that adds an enum value (its use needs the commit), and a file that runs as written
/// stands alone. Pure.
pub fn segments(pending: &[Migration], per_file: bool) -> Vec<Segment<'_>> {
    let mut out = Vec::new();
    let mut current: Vec<&Migration> = Vec::new();
    for migration in pending {
        if let Shape::AsWritten { .. } = migration.shape.shape {
            if !current.is_empty() {
                out.push(Segment::Together(std::mem::take(&mut current)));
            }
            out.push(Segment::AsWritten(migration));
            continue;
        }
        current.push(migration);
        if per_file || !migration.shape.adds_enum_values.is_empty() {
            out.push(Segment::Together(std::mem::take(&mut current)));
        }
    }
    if !current.is_empty() {
        out.push(Segment::Together(current));
    }
    out
}

/// How the files of a run were proven before anything was committed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckedBy {
    /// The run was one transaction, committed only after every file succeeded.
    OneTransaction,
    /// A transaction that ran the files and was rolled back.
    Rehearsal,
    /// The whole run, applied to a scratch copy of the database that was dropped again.
    ScratchCopy,
}

/// What the check before applying proved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checked {
    /// How.
    pub by: CheckedBy,
    /// How many pending files (from the first) were proven before anything was committed.
    pub files: usize,
    /// How many files were pending.
    pub total: usize,
    /// Why the check stopped before the last file, if it did.
    pub stopped: Option<String>,
    /// Why there was no scratch copy, when one would have checked more.
    pub no_copy: Option<String>,
}

impl fmt::Display for Checked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (n, total) = (self.files, self.total);
        match self.by {
            CheckedBy::OneTransaction => write!(
                f,
                "all {total} pending files ran in one transaction, committed only after every one succeeded"
            )?,
            CheckedBy::ScratchCopy => write!(
                f,
                "all {total} pending files were applied to a scratch copy of the database first"
            )?,
            CheckedBy::Rehearsal if n == total => write!(
                f,
                "all {total} pending files ran in a transaction that was rolled back before applying"
            )?,
            CheckedBy::Rehearsal => write!(
                f,
                "{n} of {total} pending files ran in a transaction that was rolled back before applying"
            )?,
        }
        if let Some(stopped) = &self.stopped {
            write!(f, "; {stopped}")?;
        }
        if let Some(no_copy) = &self.no_copy {
            write!(f, " (no scratch copy: {no_copy})")?;
        }
        Ok(())
    }
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
    /// When it started (RFC 3339, UTC).
    pub applied_at: String,
    /// How long it took on the server.
    pub duration: Duration,
}

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A file failed before anything was committed: nothing was applied.
    #[error("dry run failed, nothing was applied: {0}")]
    DryRun(Box<StatementFailed>),
    /// A migration failed; the ones before it are applied, it left no trace.
    #[error(transparent)]
    Apply(Box<StatementFailed>),
    /// Applied versions have no file in the source (as `supabase db push`, nothing is applied).
    #[error(
        "failed to apply: the database has migrations that are not in the source: {}. Make sure the migrations directory is up to date (git pull); if they were removed on purpose, mark them reverted: supabase migration repair --status reverted {}",
        .0.join(", "),
        .0.join(" ")
    )]
    MissingLocal(Vec<String>),
    /// Pending files are older than the newest applied version and `include_all` is off.
    #[error(
        "failed to apply: these pending files are older than the newest applied migration: {}. Rerun with --include-all to apply them",
        .0.join(", ")
    )]
    OutOfOrder(Vec<String>),
    /// Applied files changed since and `strict` is on.
    #[error(
        "failed to apply (--strict): applied migrations changed since they were applied: {}. {CHANGED_HINT}",
        .0.iter().map(|c| format!("{} ({})", c.version, c.file)).collect::<Vec<_>>().join(", ")
    )]
    Changed(Vec<Changed>),
    /// Connecting, locking or bookkeeping failed.
    #[error(transparent)]
    Database(DbError),
}

impl RunError {
    /// The failed statement, when a statement failed.
    pub fn statement(&self) -> Option<&StatementFailed> {
        match self {
            RunError::DryRun(s) | RunError::Apply(s) => Some(s),
            _ => None,
        }
    }

    /// A short, bounded name for metric labels and event reasons.
    pub fn kind(&self) -> &'static str {
        match self {
            RunError::DryRun(_) => "DryRunFailed",
            RunError::Apply(_) => "MigrationFailed",
            RunError::MissingLocal(_) => "MissingLocalMigrations",
            RunError::OutOfOrder(_) => "OutOfOrderMigrations",
            RunError::Changed(_) => "MigrationEdited",
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
    /// Pending versions older than the newest applied one.
    pub out_of_order: Vec<String>,
    /// Pending files that run as written, with the reason.
    pub as_written: Vec<(String, String)>,
    /// Migrations this run applied, in order.
    pub applied: Vec<Applied>,
    /// Applied migrations whose files changed since.
    pub changed: Vec<Changed>,
    /// Applied versions missing from the source.
    pub missing: Vec<String>,
    /// `*.sql` files of the source directory that are not migrations.
    pub skipped: Vec<Skipped>,
    /// Lint findings for the pending migrations.
    pub findings: Vec<Finding>,
    /// What the check before applying proved (when one ran).
    pub checked: Option<Checked>,
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
            out_of_order: Vec::new(),
            as_written: Vec::new(),
            applied: Vec::new(),
            changed: Vec::new(),
            missing: Vec::new(),
            skipped: Vec::new(),
            findings: Vec::new(),
            checked: None,
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
    report.skipped = source.skipped().to_vec();
    if let Err(error) = run_inner(spec, source, database_url, &mut report).await {
        report.phase = Phase::Failed;
        report.error = Some(error);
    }
    report.elapsed = started.elapsed();
    report
}

/// What the locked part of a run asks of the connection-level loop.
enum Next {
    /// The run is over.
    Done,
    /// Rehearse these pending files on a scratch copy, then come back.
    CopyFirst(Vec<(String, String)>),
}

/// The outcome of a rehearsal on a scratch copy, for the pending files it rehearsed.
struct CopyOutcome {
    /// `(version, checksum)` of the pending files it rehearsed.
    key: Vec<(String, String)>,
    /// `Ok`: it proved them all; `Err`: why there was no copy (or the error it found).
    result: Result<(), CopyFailure>,
}

async fn run_inner(
    spec: &RunSpec,
    source: &MigrationSet,
    url: &str,
    report: &mut RunReport,
) -> Result<(), RunError> {
    let mut copy: Option<CopyOutcome> = None;
    loop {
        let client = db::connect(url).await.map_err(RunError::Database)?;
        db::lock(&client, spec.advisory_lock_wait)
            .await
            .map_err(RunError::Database)?;
        let outcome = locked(spec, source, &client, report, copy.as_ref()).await;
        // Closing the connection releases the lock as well; unlocking first is just tidy.
        let unlocked = db::unlock(&client).await;
        match outcome? {
            Next::Done => return unlocked.map_err(RunError::Database),
            Next::CopyFirst(key) => {
                // A template database must have no sessions, this one included.
                drop(client);
                let result = super::scratch::rehearse(url, spec, source, &key).await;
                copy = Some(CopyOutcome { key, result });
            }
        }
    }
}

fn key_of(pending: &[Migration]) -> Vec<(String, String)> {
    pending
        .iter()
        .map(|m| (m.version.to_string(), m.checksum.clone()))
        .collect()
}

async fn locked(
    spec: &RunSpec,
    source: &MigrationSet,
    client: &tokio_postgres::Client,
    report: &mut RunReport,
    copy: Option<&CopyOutcome>,
) -> Result<Next, RunError> {
    let history = db::read_history(client).await.map_err(RunError::Database)?;
    let plan = plan(source, &history);
    report.recorded = history;
    report.pending = plan.pending.iter().map(|m| m.version.to_string()).collect();
    report.out_of_order = plan.out_of_order.clone();
    report.as_written = plan
        .pending
        .iter()
        .filter_map(|m| match &m.shape.shape {
            Shape::AsWritten { reason } => Some((m.file.clone(), reason.clone())),
            _ => None,
        })
        .collect();
    report.changed = plan.changed.clone();
    report.missing = plan.missing.clone();

    report.phase = Phase::Linting;
    let objects = lint::objects_to_check(&plan.pending);
    let before = db::existing(client, &objects)
        .await
        .map_err(RunError::Database)?;
    report.findings = lint::lint_against(&plan.pending, &spec.lint, &before);

    if !spec.allow_missing && !plan.missing.is_empty() {
        return Err(RunError::MissingLocal(plan.missing));
    }
    if !spec.include_all && !plan.out_of_order.is_empty() {
        let files = plan
            .pending
            .iter()
            .filter(|m| plan.out_of_order.contains(&m.version.to_string()))
            .map(|m| m.file.clone())
            .collect();
        return Err(RunError::OutOfOrder(files));
    }
    if spec.strict && !plan.changed.is_empty() {
        return Err(RunError::Changed(plan.changed));
    }
    if report.blocking().next().is_some() {
        report.phase = Phase::Blocked;
        return Ok(Next::Done);
    }

    report.phase = Phase::Applying;
    let timeouts = Timeouts {
        lock: spec.lock_timeout,
        statement: spec.statement_timeout,
    };
    let mut session = Session::new(client, timeouts, false);
    let segments = segments(&plan.pending, !spec.dry_run_first && !spec.dry_run_only);
    let single = matches!(segments.as_slice(), [Segment::Together(_)]);
    if !plan.pending.is_empty() && (spec.dry_run_only || (spec.dry_run_first && !single)) {
        let total = plan.pending.len();
        let key = key_of(&plan.pending);
        let copied = copy.filter(|c| c.key == key);
        let no_copy = match copied.map(|c| &c.result) {
            Some(Ok(())) => {
                report.checked = Some(Checked {
                    by: CheckedBy::ScratchCopy,
                    files: total,
                    total,
                    stopped: None,
                    no_copy: None,
                });
                None
            }
            Some(Err(CopyFailure::Failed(failed))) => {
                return Err(RunError::DryRun(failed.clone()));
            }
            Some(Err(CopyFailure::NoCopy(why))) => Some(why.clone()),
            None if spec.scratch_copy && copy.is_none() && needs_commits(&plan.pending) => {
                match super::scratch::possible(client).await {
                    Ok(()) => return Ok(Next::CopyFirst(key)),
                    Err(why) => Some(why),
                }
            }
            None => None,
        };
        if report.checked.is_none() {
            let mut checked = rehearse(&mut session, &plan.pending).await?;
            if checked.stopped.is_some() {
                if spec.scratch_copy && copy.is_none() {
                    match super::scratch::possible(client).await {
                        Ok(()) => return Ok(Next::CopyFirst(key)),
                        Err(why) => checked.no_copy = Some(why),
                    }
                } else {
                    checked.no_copy = no_copy;
                }
            }
            report.checked = Some(checked);
        }
    } else if spec.dry_run_first && single {
        report.checked = Some(Checked {
            by: CheckedBy::OneTransaction,
            files: plan.pending.len(),
            total: plan.pending.len(),
            stopped: None,
            no_copy: None,
        });
    }
    if spec.dry_run_only {
        report.phase = Phase::Pending;
        return Ok(Next::Done);
    }
    if let Err(error) = apply_segments(&mut session, &segments, report, spec.dry_run_first).await {
        // Transactions before the failed one committed without waiting for their WAL
        // flush; make them durable before reporting them applied. On success the last
        // commit waited for the flush, which covers the earlier ones.
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
    Ok(Next::Done)
}

/// Whether one rolled-back transaction cannot check the whole run, as far as the files
/// show: a statement that cannot run in a transaction, or a later file that mentions an
/// enum label an earlier one adds.
fn needs_commits(pending: &[Migration]) -> bool {
    pending.iter().enumerate().any(|(i, m)| {
        m.shape
            .kinds
            .iter()
            .any(|k| matches!(k, StatementKind::NoTransaction(_)))
            || m.shape.adds_enum_values.iter().any(|label| {
                let quoted = format!("'{}'", label.replace('\'', "''"));
                pending[i + 1..]
                    .iter()
                    .any(|later| later.sql.contains(&quoted))
            })
    })
}

/// The label in `unsafe use of new value "c" of enum type status`.
fn unsafe_enum_label(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unsafe use of new value \"")?;
    let end = rest.rfind("\" of enum type")?;
    Some(rest[..end].to_string())
}

/// Runs the pending files in one transaction that is rolled back, up to the first file that
/// needs an earlier file committed (which ends the check there, not the run).
async fn rehearse(session: &mut Session<'_>, pending: &[Migration]) -> Result<Checked, RunError> {
    let total = pending.len();
    let cut = pending
        .iter()
        .position(|m| {
            m.shape
                .kinds
                .iter()
                .any(|k| matches!(k, StatementKind::NoTransaction(_)))
        })
        .unwrap_or(total);
    let after = |k: usize| match total - k - 1 {
        0 => String::new(),
        1 => " and the file after it".to_string(),
        n => format!(" and the {n} files after it"),
    };
    let mut stopped = (cut < total).then(|| {
        let reason = match &pending[cut].shape.shape {
            Shape::AsWritten { reason } => reason.clone(),
            _ => "it has a statement that cannot run in a transaction".into(),
        };
        format!(
            "{} runs as written ({reason}), so it{} are checked as they run",
            pending[cut].file,
            after(cut)
        )
    });
    let files: Vec<&Migration> = pending[..cut].iter().collect();
    let checked = |files: usize, stopped| Checked {
        by: CheckedBy::Rehearsal,
        files,
        total,
        stopped,
        no_copy: None,
    };
    if files.is_empty() {
        return Ok(checked(0, stopped));
    }
    match session.transaction(&files, End::Rollback).await {
        Ok(_) => Ok(checked(cut, stopped)),
        Err(DbError::Statement(failed)) => {
            let k = files
                .iter()
                .position(|m| m.version.as_str() == failed.version)
                .unwrap_or(0);
            let adder = (failed.sqlstate.as_deref() == Some("55P04"))
                .then(|| unsafe_enum_label(&failed.message))
                .flatten()
                .and_then(|label| {
                    let adds = |m: &Migration| m.shape.adds_enum_values.contains(&label);
                    let earlier = files[..k].iter().find(|m| adds(m));
                    // A file that runs as written commits between its own statements.
                    let itself = (matches!(files[k].shape.shape, Shape::AsWritten { .. })
                        && adds(files[k]))
                    .then_some(&files[k]);
                    earlier.or(itself).map(|m| (label.clone(), m.file.clone()))
                });
            match adder {
                Some((label, adder)) => {
                    stopped = Some(format!(
                        "{} uses the enum value {label:?} that {adder} adds, which Postgres accepts only once {adder} has committed, so it{} are checked as they run",
                        files[k].file,
                        after(k)
                    ));
                    Ok(checked(k, stopped))
                }
                None => Err(RunError::DryRun(failed)),
            }
        }
        Err(other) => Err(RunError::Database(other)),
    }
}

/// Applies `segments` in order, stopping at the first failure; only the last transaction
/// waits for its WAL flush (the caller flushes after a failure). `checked`: the run is
/// checked (nothing commits before the files are proven), so a failure before the first
/// commit is reported as "nothing was applied".
pub(crate) async fn apply_segments(
    session: &mut Session<'_>,
    segments: &[Segment<'_>],
    report: &mut RunReport,
    checked: bool,
) -> Result<(), RunError> {
    for (k, segment) in segments.iter().enumerate() {
        let durability = if k + 1 == segments.len() {
            Durability::WaitForFlush
        } else {
            Durability::FlushLater
        };
        let (files, outcome) = match segment {
            Segment::Together(files) => (
                files.clone(),
                session.transaction(files, End::Commit(durability)).await,
            ),
            Segment::AsWritten(file) => {
                (vec![*file], session.as_written(file).await.map(|r| vec![r]))
            }
        };
        let recorded = outcome.map_err(|e| match e {
            // A transaction rolls back whole: with nothing committed before, nothing is applied.
            DbError::Statement(s)
                if checked
                    && report.applied.is_empty()
                    && matches!(segment, Segment::Together(_)) =>
            {
                RunError::DryRun(s)
            }
            DbError::Statement(s) => RunError::Apply(s),
            other => RunError::Database(other),
        })?;
        for (migration, recorded) in files.iter().zip(recorded) {
            report.applied.push(Applied {
                version: migration.version.to_string(),
                name: migration.name.clone(),
                applied_at: recorded.applied_at,
                duration: recorded.duration,
            });
        }
    }
    Ok(())
}

/// Reads the history and plans without taking the lock or creating anything, and lints the
/// pending files against the database.
pub async fn plan_against(
    source: &MigrationSet,
    database_url: &str,
    policy: &LintPolicy,
) -> Result<(Plan, Vec<Finding>), DbError> {
    let client = db::connect(database_url).await?;
    let history = db::read_history(&client).await?;
    let plan = plan(source, &history);
    let before = db::existing(&client, &lint::objects_to_check(&plan.pending)).await?;
    let findings = lint::lint_against(&plan.pending, policy, &before);
    Ok((plan, findings))
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
