//! `tether migrate lint|plan|apply`: the engine for users' CI. Output is line-oriented
//! so it reads well in a pull-request log (`file:line rule: message (hint)`), database
//! URLs are printed with the password masked, and the exit code is 1 when something
//! blocks or fails.
//!
//! The flags follow `supabase db push` where users expect its behaviour: `*.sql` files that
//! are not `<version>_<name>.sql` are skipped with a warning, applied versions without a
//! local file stop the run (exit 1), pending files older than the newest applied one need
//! `--include-all`, and `--strict` makes a changed applied file an error (it is always
//! reported, with what to do).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;

use super::db::{Check, mask_url};
use super::engine::{self, CHANGED_HINT, Changed, Phase, Plan, RunReport, RunSpec, Segment};
use super::lint::{Finding, LintPolicy, lint_all};
use super::source::{MigrationSet, Skipped};

/// The `tether migrate` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum MigrateCommand {
    /// Lint every migration in DIR; exit 1 on blocking (destructive, unacknowledged) findings.
    Lint {
        /// Directory of `<version>_<name>.sql` files (e.g. supabase/migrations).
        dir: PathBuf,
        #[command(flatten)]
        lint: LintArgs,
    },
    /// Show what `apply` would do: pending migrations, edited or missing ones, lint findings
    /// against the database; exit 1 when `apply` would stop.
    Plan {
        /// Directory of `<version>_<name>.sql` files.
        dir: PathBuf,
        /// Postgres URL (`sslmode` as in libpq; Supabase needs `sslmode=require`).
        #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
        database_url: String,
        #[command(flatten)]
        lint: LintArgs,
        #[command(flatten)]
        history: HistoryArgs,
    },
    /// Lint, check, then apply the pending migrations (nothing is committed until every
    /// pending file has succeeded; see docs/migrations.md).
    Apply {
        /// Directory of `<version>_<name>.sql` files.
        dir: PathBuf,
        /// Postgres URL (`sslmode` as in libpq; Supabase needs `sslmode=require`).
        #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
        database_url: String,
        #[command(flatten)]
        lint: LintArgs,
        #[command(flatten)]
        history: HistoryArgs,
        /// `lock_timeout` for each migration (e.g. 500ms, 5s, 1m).
        #[arg(long, default_value = "5s", value_parser = crate::api::common::parse_duration)]
        lock_timeout: Duration,
        /// `statement_timeout` for each migration.
        #[arg(long, default_value = "5m", value_parser = crate::api::common::parse_duration)]
        statement_timeout: Duration,
        /// How long to wait for another runner holding the migration lock.
        #[arg(long, default_value = "5m", value_parser = crate::api::common::parse_duration)]
        lock_wait: Duration,
        /// Commit each file on its own as it runs, like `supabase db push` (a failure keeps
        /// the files before it), instead of proving all of them first.
        #[arg(long)]
        no_dry_run: bool,
        /// Only check: run the pending migrations and commit nothing.
        #[arg(long, conflicts_with = "no_dry_run")]
        dry_run: bool,
        /// Never rehearse on a scratch copy of the database (`CREATE DATABASE … TEMPLATE`).
        #[arg(long)]
        no_scratch_copy: bool,
        /// A table that must exist afterwards (`schema.table` or `table`); repeatable.
        #[arg(long = "verify-table", value_name = "TABLE")]
        verify_tables: Vec<String>,
        /// A table that must have row-level security enabled afterwards; repeatable.
        #[arg(long = "verify-rls", value_name = "TABLE")]
        verify_rls: Vec<String>,
    },
}

/// Lint options shared by the subcommands.
#[derive(Debug, clap::Args)]
pub struct LintArgs {
    /// Destructive findings (drop, type change, rename, truncate) do not block.
    #[arg(long)]
    allow_destructive: bool,
    /// Acknowledge rules for one migration: `VERSION:rule[,rule…]`; repeatable.
    #[arg(long = "acknowledge", value_name = "VERSION:RULES", value_parser = parse_acknowledgement)]
    acknowledge: Vec<(String, Vec<String>)>,
    /// Also require lock/statement timeouts in the files (Tether sets them itself).
    #[arg(long)]
    require_timeouts: bool,
}

/// How the history must match the files, as `supabase db push` sees it.
#[derive(Debug, clap::Args)]
pub struct HistoryArgs {
    /// Also apply pending files older than the newest applied migration (as `supabase db
    /// push --include-all`); without it they stop the run.
    #[arg(long)]
    include_all: bool,
    /// Exit 1, applying nothing, when an applied file changed since it was applied.
    #[arg(long)]
    strict: bool,
}

impl LintArgs {
    fn policy(&self) -> LintPolicy {
        let mut acknowledged: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (version, rules) in &self.acknowledge {
            acknowledged
                .entry(version.clone())
                .or_default()
                .extend(rules.iter().cloned());
        }
        LintPolicy {
            allow_destructive: self.allow_destructive,
            acknowledged,
            require_timeouts: self.require_timeouts,
        }
    }
}

fn parse_acknowledgement(text: &str) -> Result<(String, Vec<String>), String> {
    let (version, rules) = text
        .split_once(':')
        .ok_or("expected VERSION:rule[,rule…]")?;
    if version.is_empty() || !version.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("version {version:?} is not numeric"));
    }
    let rules: Vec<String> = rules
        .split(',')
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .map(String::from)
        .collect();
    if rules.is_empty() {
        return Err("no rules given".into());
    }
    Ok((version.to_string(), rules))
}

/// Runs a `tether migrate` subcommand; returns the process exit code.
pub fn main(command: MigrateCommand) -> anyhow::Result<i32> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let (text, code) = execute(command).await?;
        crate::print_stdout(&text)?;
        Ok(code)
    })
}

/// Runs a subcommand and returns its output and exit code (the testable part of `main`).
pub async fn execute(command: MigrateCommand) -> anyhow::Result<(String, i32)> {
    match command {
        MigrateCommand::Lint { dir, lint } => {
            let source = MigrationSet::from_dir(&dir)?;
            let findings = lint_all(source.migrations(), &lint.policy());
            let mut out = String::new();
            write_skipped(&mut out, source.skipped());
            write_findings(&mut out, &findings);
            let blocking = findings.iter().filter(|f| f.blocking).count();
            let _ = writeln!(
                out,
                "{} migrations, {} findings, {} blocking",
                source.migrations().len(),
                findings.len(),
                blocking
            );
            Ok((out, i32::from(blocking > 0)))
        }
        MigrateCommand::Plan {
            dir,
            database_url,
            lint,
            history,
        } => {
            let source = MigrationSet::from_dir(&dir)?;
            let (plan, findings) = engine::plan_against(&source, &database_url, &lint.policy())
                .await
                .with_context(|| format!("failed to plan against {}", mask_url(&database_url)))?;
            let mut out = format!("database: {}\n", mask_url(&database_url));
            write_skipped(&mut out, source.skipped());
            write_plan(&mut out, &plan, history.include_all);
            let _ = writeln!(out, "lint: {} findings", findings.len());
            write_findings(&mut out, &findings);
            let mut stops = Vec::new();
            if findings.iter().any(|f| f.blocking) {
                stops.push("blocking lint findings");
            }
            if !plan.missing.is_empty() {
                stops.push("applied migrations missing from the directory");
            }
            if !plan.out_of_order.is_empty() && !history.include_all {
                stops.push("pending files older than the newest applied one (--include-all)");
            }
            if !plan.changed.is_empty() && history.strict {
                stops.push("changed applied files (--strict)");
            }
            if !stops.is_empty() {
                let _ = writeln!(out, "apply would stop: {}", stops.join(", "));
            }
            Ok((out, i32::from(!stops.is_empty())))
        }
        MigrateCommand::Apply {
            dir,
            database_url,
            lint,
            history,
            lock_timeout,
            statement_timeout,
            lock_wait,
            no_dry_run,
            dry_run,
            no_scratch_copy,
            verify_tables,
            verify_rls,
        } => {
            let source = MigrationSet::from_dir(&dir)?;
            let spec = RunSpec {
                lint: lint.policy(),
                lock_timeout,
                statement_timeout,
                advisory_lock_wait: lock_wait,
                dry_run_first: !no_dry_run,
                dry_run_only: dry_run,
                include_all: history.include_all,
                allow_missing: false,
                strict: history.strict,
                scratch_copy: !no_scratch_copy,
                verify_tables,
                verify_rls,
            };
            let report = engine::run(&spec, &source, &database_url).await;
            let mut out = format!("database: {}\n", mask_url(&database_url));
            write_report(&mut out, &report, dry_run);
            let ok = report.error.is_none() && report.phase != Phase::Blocked && report.verified();
            Ok((out, i32::from(!ok)))
        }
    }
}

fn write_skipped(out: &mut String, skipped: &[Skipped]) {
    for s in skipped {
        let _ = writeln!(out, "warning: {s}");
    }
}

fn write_findings(out: &mut String, findings: &[Finding]) {
    for finding in findings {
        let _ = writeln!(out, "{finding}");
    }
}

fn write_changed(out: &mut String, changed: &[Changed]) {
    for c in changed {
        let _ = writeln!(
            out,
            "changed after apply (not re-run): {} {}: {}",
            c.version, c.file, c.evidence
        );
    }
    if !changed.is_empty() {
        let _ = writeln!(out, "  {CHANGED_HINT}");
    }
}

fn write_plan(out: &mut String, plan: &Plan, include_all: bool) {
    let _ = writeln!(out, "pending: {}", plan.pending.len());
    for m in &plan.pending {
        let late = match (
            plan.out_of_order.contains(&m.version.to_string()),
            include_all,
        ) {
            (true, true) => " (older than the newest applied; applied with --include-all)",
            (true, false) => " (older than the newest applied; needs --include-all)",
            _ => "",
        };
        let _ = writeln!(out, "  {}{late}", m.file);
    }
    for segment in engine::segments(&plan.pending, false) {
        if let Segment::AsWritten(m) = segment
            && let super::shape::Shape::AsWritten { reason } = &m.shape.shape
        {
            let _ = writeln!(out, "runs as written: {} ({reason})", m.file);
        }
    }
    write_changed(out, &plan.changed);
    for v in &plan.missing {
        let _ = writeln!(out, "applied but missing from the directory: {v}");
    }
}

fn write_report(out: &mut String, report: &RunReport, dry_run: bool) {
    write_skipped(out, &report.skipped);
    let _ = writeln!(out, "pending: {}", report.pending.join(", "));
    for (file, reason) in &report.as_written {
        let _ = writeln!(out, "runs as written: {file} ({reason})");
    }
    write_changed(out, &report.changed);
    for v in &report.missing {
        let _ = writeln!(out, "applied but missing from the directory: {v}");
    }
    write_findings(out, &report.findings);
    if let Some(checked) = &report.checked {
        let _ = writeln!(out, "checked: {checked}");
    }
    for a in &report.applied {
        let _ = writeln!(
            out,
            "applied {}_{} in {:.1?}",
            a.version, a.name, a.duration
        );
    }
    for v in &report.verify {
        let status = if v.ok { "ok" } else { "FAILED" };
        let check = match v.check {
            Check::TableExists => "exists",
            Check::RlsEnabled => "rls",
        };
        let _ = writeln!(out, "verify {check} {status}: {}", v.message);
    }
    if let Some(error) = &report.error {
        let _ = writeln!(out, "error: {error}");
    }
    let outcome = match report.phase {
        Phase::Blocked if report.blocking().all(|f| f.waivable()) => {
            "blocked by lint findings (use --allow-destructive or --acknowledge VERSION:rule)"
                .to_string()
        }
        Phase::Blocked => {
            "blocked by lint findings that no flag waives (fix the files named above)".to_string()
        }
        Phase::Pending if dry_run && report.error.is_none() => {
            "dry run succeeded, nothing applied".to_string()
        }
        Phase::Applied if !report.verified() => "applied, but verification failed".to_string(),
        phase => phase.to_string(),
    };
    let _ = writeln!(
        out,
        "{outcome}: {} applied in {:.1?}",
        report.applied.len(),
        report.elapsed
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocked_by(files: &[(&str, &str)]) -> String {
        let mut report = RunReport::new();
        report.phase = Phase::Blocked;
        report.findings = lint_all(
            MigrationSet::from_inline(files.iter().copied())
                .unwrap()
                .migrations(),
            &LintPolicy::default(),
        );
        let mut out = String::new();
        write_report(&mut out, &report, false);
        out.lines().last().unwrap_or_default().to_string()
    }

    #[test]
    fn the_last_line_of_a_blocked_run_offers_a_waiver_only_when_one_exists() {
        assert!(
            blocked_by(&[("5_drop.sql", "drop table t;")])
                .starts_with("blocked by lint findings (use --allow-destructive or --acknowledge")
        );
        let unfixable = blocked_by(&[(
            "6_index.sql",
            "begin;\ncreate index concurrently i on t (c);\ncommit;\n",
        )]);
        assert!(
            unfixable.starts_with("blocked by lint findings that no flag waives (fix the files"),
            "{unfixable}"
        );
    }

    #[test]
    fn acknowledgements_name_a_version_and_rules() {
        assert_eq!(
            parse_acknowledgement("20240101:ban-drop-table, renaming-column"),
            Ok((
                "20240101".into(),
                vec!["ban-drop-table".into(), "renaming-column".into()]
            ))
        );
        assert!(parse_acknowledgement("x:ban-drop-table").is_err());
        assert!(parse_acknowledgement("1:").is_err());
    }

    #[tokio::test]
    async fn lint_prints_file_line_rule_and_exits_1_on_blocking_findings() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("1_ok.sql"),
            "create table t (id bigint primary key);\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("2_drop.sql"), "-- cleanup\ndrop table t;\n").unwrap();
        let lint = || LintArgs {
            allow_destructive: false,
            acknowledge: vec![],
            require_timeouts: false,
        };
        let (out, code) = execute(MigrateCommand::Lint {
            dir: dir.path().into(),
            lint: lint(),
        })
        .await
        .unwrap();
        assert_eq!(code, 1, "{out}");
        assert!(
            out.contains("2_drop.sql:2 ban-drop-table [blocking]: "),
            "{out}"
        );
        let acknowledged = LintArgs {
            acknowledge: vec![("2".into(), vec!["ban-drop-table".into()])],
            ..lint()
        };
        let (out, code) = execute(MigrateCommand::Lint {
            dir: dir.path().into(),
            lint: acknowledged,
        })
        .await
        .unwrap();
        assert_eq!(code, 0, "{out}");
        assert!(out.contains("[acknowledged]"), "{out}");
    }
}
