//! Rehearsing a run on a scratch copy of the database, for the runs one rolled-back
//! transaction cannot check (a file adds an enum value that a later file uses, or runs
//! statements that cannot run in a transaction).
//!
//! The copy is `CREATE DATABASE tether_rehearsal_<target>_<random> TEMPLATE <target>`, made from the
//! server's maintenance database (`postgres`, or `template1` when the target is
//! `postgres`). Postgres copies a template only while nobody is connected to it, so the
//! runner closes its own connection (and with it the advisory lock) for the copy, applies
//! the pending files to the copy exactly as it will apply them to the target (same
//! transactions, same commits), drops the copy, and then connects, locks and plans again;
//! the rehearsal counts only if the pending files are still the same.
//!
//! [`possible`] says beforehand whether a copy can work: nobody else connected, a role that
//! may create databases (and own or be allowed to copy this one), and a database of at most
//! [`SCRATCH_COPY_MAX_BYTES`]. Hosted databases (Supabase) always have other sessions, so
//! there the rolled-back transaction is the check.

use tokio_postgres::Client;

use super::db::{self, DbError, StatementFailed, Timeouts};
use super::engine::{RunReport, RunSpec, SCRATCH_COPY_MAX_BYTES, apply_segments, plan, segments};
use super::exec::Session;
use super::source::MigrationSet;

/// Why a rehearsal on a copy did not prove the run.
#[derive(Debug)]
pub enum CopyFailure {
    /// No copy could be made (or used); the reason, for the report.
    NoCopy(String),
    /// A file failed on the copy; nothing was applied to the target.
    Failed(Box<StatementFailed>),
}

/// Whether a copy of the database `client` is connected to can be made right now;
/// `Err` says why not.
pub async fn possible(client: &Client) -> Result<(), String> {
    let row = client
        .query_one(
            "SELECT (SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()), \
                    pg_database_size(current_database()), \
                    coalesce((SELECT rolcreatedb OR rolsuper FROM pg_roles WHERE rolname = current_user), false), \
                    coalesce((SELECT rolsuper FROM pg_roles WHERE rolname = current_user), false) \
                      OR pg_has_role(current_user, d.datdba, 'MEMBER') OR d.datistemplate \
             FROM pg_database d WHERE d.datname = current_database()",
            &[],
        )
        .await
        .map_err(|e| format!("could not look at the database: {}", db::describe(&e)))?;
    let (others, size, createdb, may_copy): (i64, i64, bool, bool) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    if others > 0 {
        return Err(format!(
            "{others} other session(s) are connected to the database, and Postgres copies a database only while nobody is"
        ));
    }
    if !createdb || !may_copy {
        return Err("the role may not create a copy of the database (it needs CREATEDB and to own the database)".into());
    }
    if size > SCRATCH_COPY_MAX_BYTES {
        return Err(format!(
            "the database is {} MiB, more than the {} MiB Tether copies",
            size / (1024 * 1024),
            SCRATCH_COPY_MAX_BYTES / (1024 * 1024)
        ));
    }
    Ok(())
}

/// Copies the database at `url`, applies the pending files of `source` to the copy (they
/// must be the ones in `key`: `(version, checksum)`), and drops the copy again.
pub async fn rehearse(
    url: &str,
    spec: &RunSpec,
    source: &MigrationSet,
    key: &[(String, String)],
) -> Result<(), CopyFailure> {
    let no_copy = |why: String| CopyFailure::NoCopy(why);
    let target = db::database_name(url).map_err(|e| no_copy(e.to_string()))?;
    let maintenance = if target == "postgres" {
        "template1"
    } else {
        "postgres"
    };
    let admin = db::connect_database(url, maintenance).await.map_err(|e| {
        no_copy(format!(
            "could not connect to the {maintenance} database: {e}"
        ))
    })?;
    // Named after the target, so a copy left by a killed runner is easy to place.
    let stem: String = target
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
        .take(30)
        .collect();
    let scratch = format!("tether_rehearsal_{stem}_{:08x}", rand::random::<u32>());
    admin
        .batch_execute(&format!(
            "CREATE DATABASE {} TEMPLATE {}",
            quote_ident(&scratch),
            quote_ident(&target)
        ))
        .await
        .map_err(|e| {
            no_copy(format!(
                "CREATE DATABASE … TEMPLATE failed: {}",
                db::describe(&e)
            ))
        })?;
    let outcome = rehearse_on(url, &scratch, spec, source, key).await;
    let force = admin
        .query_one(
            "SELECT current_setting('server_version_num')::int >= 130000",
            &[],
        )
        .await
        .map(|r| r.get::<_, bool>(0))
        .unwrap_or(false);
    let drop = format!(
        "DROP DATABASE IF EXISTS {}{}",
        quote_ident(&scratch),
        if force { " WITH (FORCE)" } else { "" }
    );
    if let Err(e) = admin.batch_execute(&drop).await {
        tracing::warn!(database = %scratch, error = %db::describe(&e), "could not drop the scratch copy; drop it by hand");
    }
    outcome
}

async fn rehearse_on(
    url: &str,
    scratch: &str,
    spec: &RunSpec,
    source: &MigrationSet,
    key: &[(String, String)],
) -> Result<(), CopyFailure> {
    let client = db::connect_database(url, scratch)
        .await
        .map_err(|e| CopyFailure::NoCopy(format!("could not connect to the copy: {e}")))?;
    let history = db::read_history(&client)
        .await
        .map_err(|e| CopyFailure::NoCopy(e.to_string()))?;
    let plan = plan(source, &history);
    let same: Vec<(String, String)> = plan
        .pending
        .iter()
        .map(|m| (m.version.to_string(), m.checksum.clone()))
        .collect();
    if same != key {
        return Err(CopyFailure::NoCopy(
            "the history changed while the copy was made".into(),
        ));
    }
    let timeouts = Timeouts {
        lock: spec.lock_timeout,
        statement: spec.statement_timeout,
    };
    let mut session = Session::new(&client, timeouts, false);
    let segments = segments(&plan.pending, false);
    let mut report = RunReport::new();
    match apply_segments(&mut session, &segments, &mut report, true).await {
        Ok(()) => Ok(()),
        Err(error) => match error {
            super::engine::RunError::DryRun(mut failed)
            | super::engine::RunError::Apply(mut failed) => {
                let note = "found by applying the pending files to a scratch copy of the database, which was dropped again";
                failed.note = Some(match failed.note.take() {
                    Some(n) => format!("{note}; {n}"),
                    None => note.to_string(),
                });
                Err(CopyFailure::Failed(failed))
            }
            super::engine::RunError::Database(DbError::EndedTransaction { file }) => Err(
                CopyFailure::NoCopy(format!("{file} ended its transaction on the copy")),
            ),
            other => Err(CopyFailure::NoCopy(format!(
                "the rehearsal on the copy failed: {other}"
            ))),
        },
    }
}

/// `"name"` with embedded quotes doubled.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}
