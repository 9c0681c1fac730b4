//! Running migration files against the database, as the Supabase CLI runs them: settings
//! reset before each file (`RESET ALL`, as `supabase db push` does, so a dump header's
//! `set_config('search_path', '', false)` does not reach the next file), each file's
//! statements and its history rows in one transaction, and files that manage their own
//! transactions run as written.
//!
//! [`Session::transaction`] runs one or more files in one transaction, in a single pipelined
//! round trip (`RESET ALL; SET LOCAL …`, every statement, the two history inserts, for each
//! file, then `COMMIT` or `ROLLBACK`). If a statement fails, Postgres aborts the
//! transaction, the later statements fail with 25P02 and the pipelined `COMMIT` becomes a
//! rollback, so nothing of the transaction stays. The engine decides how many files share
//! a transaction (see [`super::engine`]).
//!
//! [`Session::as_written`] runs a file whose shape is [`Shape::AsWritten`]: statement by
//! statement in the session when the file has its own `BEGIN`/`COMMIT`, or with the
//! statements between those that cannot run in a transaction (`CREATE INDEX CONCURRENTLY`)
//! grouped into transactions; its history rows follow in a transaction of their own, as
//! the CLI records them after the file.
//!
//! The first transaction that records a migration also creates the history tables
//! ([`db::bootstrap_sql`]), so a run that fails or applies nothing leaves no schema behind.

use std::future::Future;
use std::pin::Pin;

use futures::future::join_all;
use tokio_postgres::{Client, Row};

use super::db::{
    self, DbError, Durability, Recorded, Recorder, StatementFailed, Timeouts, statement_failed,
};
use super::shape::{Shape, StatementKind};
use super::source::Migration;

/// A query parameter (the history and checksum rows bind four each).
type Param<'a> = &'a (dyn tokio_postgres::types::ToSql + Sync);

/// How a transaction ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// Commit it.
    Commit(Durability),
    /// Roll it back (a rehearsal).
    Rollback,
}

/// One connection running migrations, with the prepared bookkeeping inserts.
pub struct Session<'a> {
    client: &'a Client,
    timeouts: Timeouts,
    recorder: Option<Recorder>,
    /// The history tables are known to exist (committed).
    bootstrapped: bool,
}

type Pending<'f> = Pin<Box<dyn Future<Output = Result<Done, tokio_postgres::Error>> + Send + 'f>>;

enum Done {
    Ok,
    Rows(u64),
    Row(Option<Row>),
}

#[derive(Clone, Copy, Debug)]
enum Step {
    Prefix,
    Statement(usize, usize),
    History(usize),
    Checksum(usize),
    End,
}

impl<'a> Session<'a> {
    /// A session on `client`; `bootstrapped` when the history tables are known to exist.
    pub fn new(client: &'a Client, timeouts: Timeouts, bootstrapped: bool) -> Session<'a> {
        Session {
            client,
            timeouts,
            recorder: None,
            bootstrapped,
        }
    }

    /// Opens a transaction (creating the history tables in it when needed), prepares the
    /// inserts, and returns the transaction's id (the history inserts' guard).
    async fn begin(&mut self) -> Result<i64, DbError> {
        let sql = if self.bootstrapped {
            "BEGIN; SELECT txid_current()".to_string()
        } else {
            format!("BEGIN; {}; SELECT txid_current()", db::bootstrap_sql())
        };
        let messages = match self.client.simple_query(&sql).await {
            Ok(messages) => messages,
            Err(e) => {
                let _ = self.client.batch_execute("ROLLBACK").await;
                return Err(DbError::query("begin the migration transaction")(e));
            }
        };
        let txid = messages.iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => {
                row.get(0).and_then(|v| v.parse::<i64>().ok())
            }
            _ => None,
        });
        if self.recorder.is_none() {
            match Recorder::prepare(self.client).await {
                Ok(recorder) => self.recorder = Some(recorder),
                Err(e) => {
                    let _ = self.client.batch_execute("ROLLBACK").await;
                    return Err(e);
                }
            }
        }
        txid.ok_or_else(|| DbError::Protocol("txid_current() returned no row".into()))
    }

    /// After a transaction ended: the tables exist for good once one committed; a
    /// rolled-back bootstrap took them away again, and the prepared inserts with them.
    fn ended(&mut self, committed: bool) {
        if committed {
            self.bootstrapped = true;
        } else if !self.bootstrapped {
            self.recorder = None;
        }
    }

    /// The statements sent before each file: settings reset, Tether's timeouts, the file's
    /// start time.
    fn prefix(&self, durability: Option<Durability>) -> String {
        format!(
            "RESET ALL; {}; {}SELECT set_config('tether.file_started', extract(epoch from clock_timestamp())::text, true)",
            self.timeouts.set(true),
            match durability {
                Some(Durability::FlushLater) => "SET LOCAL synchronous_commit = off; ",
                _ => "",
            }
        )
    }

    /// Runs `files` in one transaction, each after `RESET ALL`, each recorded in the history
    /// right after its statements, and ends it as `end` says. Transaction control of a
    /// wrapped (or rehearsed as-written) file is not sent. Returns what was recorded for each
    /// file (rolled back again by [`End::Rollback`]).
    pub async fn transaction(
        &mut self,
        files: &[&Migration],
        end: End,
    ) -> Result<Vec<Recorded>, DbError> {
        let txid = self.begin().await?;
        let durability = match end {
            End::Commit(d) => Some(d),
            End::Rollback => None,
        };
        let prefix = self.prefix(durability);
        let texts: Vec<Vec<String>> = files.iter().map(|m| m.statement_texts()).collect();
        let digests: Vec<String> = texts.iter().map(|t| db::statements_digest(t)).collect();
        let versions: Vec<&str> = files.iter().map(|m| m.version.as_str()).collect();
        let history_params: Vec<[Param<'_>; 4]> = (0..files.len())
            .map(|i| [&versions[i] as Param<'_>, &files[i].name, &texts[i], &txid])
            .collect();
        let checksum_params: Vec<[Param<'_>; 4]> = (0..files.len())
            .map(|i| {
                [
                    &versions[i] as Param<'_>,
                    &files[i].checksum,
                    &digests[i],
                    &txid,
                ]
            })
            .collect();
        let recorder = self.recorder.as_ref().expect("prepared in begin");
        let client = self.client;
        let mut steps = Vec::new();
        let mut pending: Vec<Pending<'_>> = Vec::new();
        for (f, migration) in files.iter().enumerate() {
            steps.push(Step::Prefix);
            let prefix = prefix.as_str();
            pending.push(Box::pin(async move {
                client.batch_execute(prefix).await.map(|()| Done::Ok)
            }));
            for (i, statement) in migration.statements.iter().enumerate() {
                if migration.shape.kinds[i].is_transaction_control() {
                    continue;
                }
                steps.push(Step::Statement(f, i));
                let sql = statement.text.as_str();
                pending.push(Box::pin(async move {
                    client.batch_execute(sql).await.map(|()| Done::Ok)
                }));
            }
            steps.push(Step::History(f));
            let params = &history_params[f];
            pending.push(Box::pin(async move {
                client
                    .execute(&recorder.history, params)
                    .await
                    .map(Done::Rows)
            }));
            steps.push(Step::Checksum(f));
            let params = &checksum_params[f];
            pending.push(Box::pin(async move {
                client
                    .query_opt(&recorder.checksum, params)
                    .await
                    .map(Done::Row)
            }));
        }
        steps.push(Step::End);
        let finish = match end {
            End::Commit(_) => "COMMIT",
            End::Rollback => "ROLLBACK",
        };
        pending.push(Box::pin(async move {
            client.batch_execute(finish).await.map(|()| Done::Ok)
        }));

        let results = join_all(pending).await;
        let mut recorded = Vec::with_capacity(files.len());
        let mut failure = None;
        for (step, result) in steps.iter().zip(results) {
            match (step, result) {
                (Step::Statement(f, i), Err(e)) => {
                    failure = Some(DbError::Statement(statement_failed(files[*f], *i, &e)));
                }
                (Step::Prefix, Err(e)) => {
                    failure = Some(DbError::query("set up the migration transaction")(e));
                }
                (Step::History(_) | Step::Checksum(_), Err(e)) => {
                    failure = Some(DbError::query("record the migration in the history tables")(e));
                }
                (Step::End, Err(e)) => {
                    failure = Some(DbError::query("end the migration transaction")(e));
                }
                (Step::History(f), Ok(Done::Rows(n))) if n != 1 => {
                    failure = Some(DbError::EndedTransaction {
                        file: files[*f].file.clone(),
                    });
                }
                (Step::Checksum(f), Ok(Done::Row(row))) => match row {
                    Some(row) => recorded.push(recorded_from(&row)),
                    None => {
                        failure = Some(DbError::EndedTransaction {
                            file: files[*f].file.clone(),
                        })
                    }
                },
                _ => {}
            }
            if failure.is_some() {
                break;
            }
        }
        if let Some(failure) = failure {
            // The pipelined COMMIT ran in an aborted transaction, which Postgres turns into
            // a rollback; this ROLLBACK covers errors that did not abort it.
            let _ = self.client.batch_execute("ROLLBACK").await;
            self.ended(false);
            return Err(failure);
        }
        self.ended(end != End::Rollback);
        Ok(recorded)
    }

    /// Runs a file that manages its own transactions (or holds statements that cannot run
    /// in one) as written, then records it in a transaction of its own. A failure part-way
    /// leaves what the file committed before it; the error's note says so.
    pub async fn as_written(&mut self, migration: &Migration) -> Result<Recorded, DbError> {
        let reason = match &migration.shape.shape {
            Shape::AsWritten { reason } => reason.clone(),
            _ => "it runs as written".to_string(),
        };
        let setup = format!(
            "RESET ALL; {}; SELECT set_config('tether.file_started', extract(epoch from clock_timestamp())::text, false)",
            self.timeouts.set(false)
        );
        self.client
            .batch_execute(&setup)
            .await
            .map_err(DbError::query("set up the migration session"))?;
        let kinds = &migration.shape.kinds;
        let result = if kinds.iter().any(StatementKind::is_transaction_control) {
            self.statement_by_statement(migration, 0..kinds.len()).await
        } else {
            self.grouped(migration).await
        };
        if let Err(mut failed) = result {
            let _ = self.client.batch_execute("ROLLBACK").await;
            failed.note = Some(format!(
                "{} runs as written ({reason}), so what it committed before this statement stays applied and it is not recorded as applied: make the file safe to run again (IF NOT EXISTS, CREATE OR REPLACE) or finish it by hand, then run again",
                migration.file
            ));
            return Err(DbError::Statement(failed));
        }
        let txid = self.begin().await?;
        let texts = migration.statement_texts();
        let digest = db::statements_digest(&texts);
        let version = migration.version.as_str();
        let recorder = self.recorder.as_ref().expect("prepared in begin");
        let history_params: [Param<'_>; 4] = [&version, &migration.name, &texts, &txid];
        let checksum_params: [Param<'_>; 4] = [&version, &migration.checksum, &digest, &txid];
        let (history, checksum, committed) = futures::join!(
            self.client.execute(&recorder.history, &history_params),
            self.client.query_opt(&recorder.checksum, &checksum_params),
            self.client.batch_execute("COMMIT"),
        );
        let outcome = match (history, checksum, committed) {
            (Ok(1), Ok(Some(row)), Ok(())) => Ok(recorded_from(&row)),
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
                Err(DbError::query("record the migration in the history tables")(e))
            }
            _ => Err(DbError::EndedTransaction {
                file: migration.file.clone(),
            }),
        };
        if outcome.is_err() {
            let _ = self.client.batch_execute("ROLLBACK").await;
        }
        self.ended(outcome.is_ok());
        outcome
    }

    /// Sends statements `range` one at a time, in the session, stopping at the first error.
    async fn statement_by_statement(
        &self,
        migration: &Migration,
        range: std::ops::Range<usize>,
    ) -> Result<(), Box<StatementFailed>> {
        for i in range {
            if let Err(e) = self
                .client
                .batch_execute(&migration.statements[i].text)
                .await
            {
                return Err(statement_failed(migration, i, &e));
            }
        }
        Ok(())
    }

    /// Runs each statement that cannot run in a transaction on its own, and the statements
    /// between them each group in one transaction.
    async fn grouped(&self, migration: &Migration) -> Result<(), Box<StatementFailed>> {
        let kinds = &migration.shape.kinds;
        let mut start = 0;
        while start < kinds.len() {
            if matches!(kinds[start], StatementKind::NoTransaction(_)) {
                self.statement_by_statement(migration, start..start + 1)
                    .await?;
                start += 1;
                continue;
            }
            let end = (start..kinds.len())
                .find(|&i| matches!(kinds[i], StatementKind::NoTransaction(_)))
                .unwrap_or(kinds.len());
            let client = self.client;
            let begin = client.batch_execute("BEGIN").await;
            if let Err(e) = begin {
                return Err(statement_failed(migration, start, &e));
            }
            let results = join_all(
                migration.statements[start..end]
                    .iter()
                    .map(|s| client.batch_execute(&s.text)),
            )
            .await;
            let committed = client.batch_execute("COMMIT").await;
            if let Some((i, e)) = results
                .into_iter()
                .enumerate()
                .find_map(|(i, r)| r.err().map(|e| (i, e)))
            {
                return Err(statement_failed(migration, start + i, &e));
            }
            if let Err(e) = committed {
                return Err(statement_failed(migration, end - 1, &e));
            }
            start = end;
        }
        Ok(())
    }
}

fn recorded_from(row: &Row) -> Recorded {
    let millis: f64 = row.get(1);
    Recorded {
        applied_at: row.get(0),
        duration: std::time::Duration::from_secs_f64(millis.max(0.0) / 1000.0),
    }
}
