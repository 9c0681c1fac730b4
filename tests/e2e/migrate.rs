//! The migration engine against the real PostgreSQL at `DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`). Each test creates its own database with a
//! random name and drops it again, even when the test panics.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use tether::migrate::db::Check;
use tether::migrate::engine::{Phase, RunError, RunSpec, run};
use tether::migrate::{LintPolicy, MigrationSet};
use tokio_postgres::{Client, NoTls};

/// The server-level URL the tests start from.
fn admin_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string())
}

/// A database created for one test.
struct TestDb {
    name: String,
    url: String,
}

impl TestDb {
    /// Creates `tether_test_<random>`.
    async fn create() -> TestDb {
        tether::install_crypto_provider();
        let name = format!("tether_test_{:016x}", rand::random::<u64>());
        let admin = connect(&admin_url()).await;
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create test database");
        let base = admin_url();
        let (prefix, _) = base
            .rsplit_once('/')
            .expect("DATABASE_URL has a database path");
        let url = format!("{prefix}/{name}");
        TestDb { name, url }
    }

    /// A plain connection to the test database.
    async fn client(&self) -> Client {
        connect(&self.url).await
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // psql, so that dropping works from a panicking test without a runtime.
        let _ = Command::new("psql")
            .arg(admin_url())
            .args([
                "-q",
                "-c",
                &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
            ])
            .output();
    }
}

/// Connects without TLS (the local test server).
async fn connect(url: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .expect("connect to PostgreSQL");
    tokio::spawn(connection);
    client
}

/// Writes `files` into a fresh temporary directory.
fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, sql) in files {
        std::fs::write(dir.path().join(name), sql).expect("write migration");
    }
    dir
}

/// `(version, name, statements)` rows of the Supabase history table, by version.
async fn history(client: &Client) -> Vec<(String, String, Vec<String>)> {
    client
        .query("SELECT version, name, statements FROM supabase_migrations.schema_migrations ORDER BY version", &[])
        .await
        .expect("read history")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

/// True when `schema.table` exists.
async fn table_exists(client: &Client, table: &str) -> bool {
    client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
        .await
        .expect("to_regclass")
        .get(0)
}

/// The fixture directory of real-world-shaped migrations.
fn fixtures() -> &'static Path {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/migrations"
    ))
}

fn spec() -> RunSpec {
    RunSpec {
        lock_timeout: Duration::from_secs(2),
        statement_timeout: Duration::from_secs(30),
        ..RunSpec::default()
    }
}

fn source(dir: &Path) -> MigrationSet {
    MigrationSet::from_dir(dir).expect("read migrations")
}

#[tokio::test]
async fn real_world_migrations_apply_and_the_history_reads_as_the_supabase_cli_writes_it() {
    let db = TestDb::create().await;
    let spec = RunSpec {
        verify_tables: vec!["profiles".into(), "public.todos".into()],
        verify_rls: vec!["public.profiles".into(), "todos".into()],
        ..spec()
    };
    let report = run(&spec, &source(fixtures()), &db.url).await;
    assert!(report.error.is_none(), "{:?}", report.error);
    assert_eq!(report.phase, Phase::Applied);
    assert_eq!(report.applied.len(), 4);
    assert!(
        report.verified() && report.verify.len() == 4,
        "{:?}",
        report.verify
    );
    assert!(report.blocking().next().is_none(), "{:?}", report.findings);

    let client = db.client().await;
    let columns: Vec<(String, String, String)> = client
        .query(
            "SELECT column_name::text, data_type::text, is_nullable::text FROM information_schema.columns \
             WHERE table_schema = 'supabase_migrations' AND table_name = 'schema_migrations' ORDER BY ordinal_position",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let expected = [
        ("version", "text", "NO"),
        ("statements", "ARRAY", "YES"),
        ("name", "text", "YES"),
    ];
    assert_eq!(
        columns,
        expected.map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
    );
    let primary_key: String = client
        .query_one(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = 'supabase_migrations.schema_migrations'::regclass AND contype = 'p'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(primary_key, "PRIMARY KEY (version)");

    let rows = history(&client).await;
    let versions: Vec<(&str, &str)> = rows
        .iter()
        .map(|(v, n, _)| (v.as_str(), n.as_str()))
        .collect();
    assert_eq!(
        versions,
        vec![
            ("20240101000000", "create_profiles"),
            ("20240102000000", "create_todos"),
            ("20240103000000", "updated_at_trigger"),
            ("20240104000000", "search_and_stats"),
        ]
    );
    // What `supabase db push` stores for the trigger file: comments kept, `;` and outer
    // whitespace trimmed, the $$ body (with its own semicolons) in one statement.
    assert_eq!(rows[2].2, vec![
        "-- Keep profiles.updated_at current; the body has its own semicolons.\ncreate or replace function public.set_updated_at()\nreturns trigger\nlanguage plpgsql\nas $$\nbegin\n  new.updated_at = now();\n  return new;\nend;\n$$".to_string(),
        "create trigger profiles_set_updated_at\n  before update on public.profiles\n  for each row execute function public.set_updated_at()".to_string(),
    ]);
    assert_eq!(rows[3].2.len(), 4, "{:#?}", rows[3].2);
    assert!(rows[3].2[0].starts_with(
        "/* Search helpers; a block comment with a ; inside. */\ncreate or replace function"
    ));
    assert!(rows[3].2[0].ends_with("order by username;\n$fn$"));
    assert_eq!(
        rows[3].2[3],
        "comment on table public.todos is 'Things to do; one row per task.'"
    );
    assert_eq!(rows[0].2.len(), 5);

    // The trigger really works, so the $$ body arrived intact.
    client.batch_execute("insert into profiles (id, username, updated_at) values ('00000000-0000-0000-0000-000000000001', 'ada', '2000-01-01')").await.unwrap();
    client
        .batch_execute("update profiles set full_name = 'Ada' where username = 'ada'")
        .await
        .unwrap();
    let fresh: bool = client
        .query_one("select updated_at > '2001-01-01' from profiles", &[])
        .await
        .unwrap()
        .get(0);
    assert!(fresh);

    // Running again finds nothing to do.
    let again = run(&spec, &source(fixtures()), &db.url).await;
    assert!(
        again.error.is_none() && again.applied.is_empty() && again.pending.is_empty(),
        "{again:?}"
    );
}

#[tokio::test]
async fn a_failing_migration_leaves_no_trace_names_its_statement_and_a_fixed_rerun_continues() {
    let db = TestDb::create().await;
    let good = "create table a (id int primary key);\n";
    let bad = "create table b (id int primary key);\n\ninsert into b (id) values (1);\nalter table missing_table\n  add column x int;\n";
    let dir = dir_with(&[
        ("1_a.sql", good),
        ("2_b.sql", bad),
        ("3_c.sql", "create table c (id int);\n"),
    ]);
    // Without the dry run, so the apply path itself is what fails.
    let spec = RunSpec {
        dry_run_first: false,
        ..spec()
    };
    let report = run(&spec, &source(dir.path()), &db.url).await;
    assert_eq!(report.phase, Phase::Failed);
    let Some(RunError::Apply(failed)) = &report.error else {
        panic!("expected an apply error, got {:?}", report.error)
    };
    assert_eq!(
        (failed.version.as_str(), failed.file.as_str(), failed.index),
        ("2", "2_b.sql", 3)
    );
    assert_eq!(
        failed.statement,
        "alter table missing_table\n  add column x int"
    );
    assert_eq!(failed.line, 4);
    assert_eq!(failed.sqlstate.as_deref(), Some("42P01"));
    let message = report.error.as_ref().unwrap().to_string();
    assert!(
        message.contains("2_b.sql")
            && message.contains("statement 3")
            && message.contains("missing_table")
            && message.contains("42P01"),
        "{message}"
    );
    assert_eq!(
        report
            .applied
            .iter()
            .map(|a| a.version.as_str())
            .collect::<Vec<_>>(),
        vec!["1"]
    );

    let client = db.client().await;
    assert!(table_exists(&client, "public.a").await);
    assert!(
        !table_exists(&client, "public.b").await,
        "the failed migration's first statement must be rolled back"
    );
    assert!(
        !table_exists(&client, "public.c").await,
        "nothing after the failure runs"
    );
    assert_eq!(history(&client).await.len(), 1);
    let checksums: i64 = client
        .query_one("select count(*) from tether.migration_checksums", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(checksums, 1);

    std::fs::write(
        dir.path().join("2_b.sql"),
        "create table b (id int primary key);\ninsert into b (id) values (1);\n",
    )
    .unwrap();
    let fixed = run(&spec, &source(dir.path()), &db.url).await;
    assert!(fixed.error.is_none(), "{:?}", fixed.error);
    assert_eq!(
        fixed
            .applied
            .iter()
            .map(|a| a.version.as_str())
            .collect::<Vec<_>>(),
        vec!["2", "3"]
    );
    assert_eq!(history(&client).await.len(), 3);
}

#[tokio::test]
async fn the_dry_run_catches_a_late_failure_before_anything_is_committed() {
    let db = TestDb::create().await;
    let dir = dir_with(&[
        ("1_a.sql", "create table a (id int);"),
        ("2_b.sql", "insert into a values ('not a number');"),
    ]);
    let report = run(&spec(), &source(dir.path()), &db.url).await;
    let Some(RunError::DryRun(failed)) = &report.error else {
        panic!("expected a dry-run error, got {:?}", report.error)
    };
    assert_eq!(failed.file, "2_b.sql");
    assert_eq!(failed.sqlstate.as_deref(), Some("22P02"));
    assert!(report.applied.is_empty());
    let client = db.client().await;
    assert!(!table_exists(&client, "public.a").await);
    assert!(history(&client).await.is_empty());
}

#[tokio::test]
async fn two_runners_started_at_once_apply_each_migration_exactly_once() {
    let db = TestDb::create().await;
    let files: Vec<(String, String)> = (1..=20)
        .map(|i| {
            (
                format!("{i}_t{i}.sql"),
                format!("create table t{i} (id int);\ninsert into t{i} values ({i});\n"),
            )
        })
        .collect();
    let set =
        MigrationSet::from_inline(files.iter().map(|(n, s)| (n.as_str(), s.as_str()))).unwrap();
    let spec = spec();
    let (first, second) = tokio::join!(run(&spec, &set, &db.url), run(&spec, &set, &db.url));
    assert!(
        first.error.is_none() && second.error.is_none(),
        "{:?} {:?}",
        first.error,
        second.error
    );
    let mut applied: Vec<String> = first
        .applied
        .iter()
        .chain(&second.applied)
        .map(|a| a.version.clone())
        .collect();
    assert_eq!(
        applied.len(),
        20,
        "each migration applied once across both runners"
    );
    applied.sort();
    applied.dedup();
    assert_eq!(applied.len(), 20);
    assert!(
        first.applied.is_empty() || second.applied.is_empty(),
        "one runner waited and found nothing pending"
    );
    let client = db.client().await;
    assert_eq!(history(&client).await.len(), 20);
    let rows: i64 = client
        .query_one("select count(*) from t7", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 1);
}

#[tokio::test]
async fn a_destructive_migration_is_blocked_by_rule_name_until_allowed() {
    let db = TestDb::create().await;
    let dir = dir_with(&[("1_a.sql", "create table a (id int, old text);")]);
    let first = run(&spec(), &source(dir.path()), &db.url).await;
    assert!(first.error.is_none());
    std::fs::write(
        dir.path().join("2_drop.sql"),
        "alter table a drop column old;",
    )
    .unwrap();
    let blocked = run(&spec(), &source(dir.path()), &db.url).await;
    assert_eq!(blocked.phase, Phase::Blocked);
    let rules: Vec<&str> = blocked.blocking().map(|f| f.rule.as_str()).collect();
    assert_eq!(rules, vec!["ban-drop-column"]);
    assert!(blocked.applied.is_empty());
    let client = db.client().await;
    let columns: i64 = client
        .query_one("select count(*) from information_schema.columns where table_name = 'a' and column_name = 'old'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(columns, 1, "a blocked migration does not run");

    let acknowledged = RunSpec {
        lint: LintPolicy {
            acknowledged: [(
                "2".to_string(),
                BTreeSet::from(["ban-drop-column".to_string()]),
            )]
            .into(),
            ..LintPolicy::default()
        },
        ..spec()
    };
    let acked = run(&acknowledged, &source(dir.path()), &db.url).await;
    assert_eq!(acked.phase, Phase::Applied, "{:?}", acked.error);
    assert!(acked.findings[0].acknowledged);
    let columns: i64 = client
        .query_one("select count(*) from information_schema.columns where table_name = 'a' and column_name = 'old'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(columns, 0);

    std::fs::write(dir.path().join("3_truncate.sql"), "truncate a;").unwrap();
    let allowed = RunSpec {
        lint: LintPolicy {
            allow_destructive: true,
            ..LintPolicy::default()
        },
        ..spec()
    };
    let report = run(&allowed, &source(dir.path()), &db.url).await;
    assert_eq!(report.phase, Phase::Applied, "{:?}", report.error);
    assert_eq!(report.findings[0].rule, "ban-truncate");
    assert_eq!(report.applied[0].version, "3");
}

#[tokio::test]
async fn an_applied_migration_edited_afterwards_is_reported_by_checksum_and_not_rerun() {
    let db = TestDb::create().await;
    let dir = dir_with(&[("1_a.sql", "create table a (id int);")]);
    assert!(
        run(&spec(), &source(dir.path()), &db.url)
            .await
            .error
            .is_none()
    );
    std::fs::write(dir.path().join("1_a.sql"), "create table a (id bigint);").unwrap();
    std::fs::write(dir.path().join("2_b.sql"), "create table b (id int);").unwrap();
    let report = run(&spec(), &source(dir.path()), &db.url).await;
    assert!(report.error.is_none(), "{:?}", report.error);
    assert_eq!(report.changed.len(), 1);
    assert_eq!(report.changed[0].version, "1");
    assert!(report.changed[0].evidence.contains("sha256"));
    assert_eq!(
        report
            .applied
            .iter()
            .map(|a| a.version.as_str())
            .collect::<Vec<_>>(),
        vec!["2"]
    );

    // A version recorded by another tool and absent from the source is reported as missing.
    let client = db.client().await;
    client.batch_execute("insert into supabase_migrations.schema_migrations (version, name, statements) values ('0', 'manual', '{}')").await.unwrap();
    let report = run(&spec(), &source(dir.path()), &db.url).await;
    assert_eq!(report.missing, vec!["0"]);
}

#[tokio::test]
async fn verify_names_a_missing_table_and_a_table_without_rls() {
    let db = TestDb::create().await;
    let dir = dir_with(&[(
        "1_a.sql",
        "create table secured (id int);\nalter table secured enable row level security;\ncreate table open (id int);\n",
    )]);
    let spec = RunSpec {
        verify_tables: vec!["secured".into(), "public.ghost".into()],
        verify_rls: vec!["secured".into(), "open".into()],
        ..spec()
    };
    let report = run(&spec, &source(dir.path()), &db.url).await;
    assert_eq!(report.phase, Phase::Applied);
    assert!(!report.verified());
    let failures: Vec<(&str, Check, &str)> = report
        .verify
        .iter()
        .filter(|v| !v.ok)
        .map(|v| (v.table.as_str(), v.check, v.message.as_str()))
        .collect();
    assert_eq!(
        failures,
        vec![
            (
                "public.ghost",
                Check::TableExists,
                "table public.ghost does not exist"
            ),
            (
                "open",
                Check::RlsEnabled,
                "row-level security is not enabled on table open"
            ),
        ]
    );
}

#[tokio::test]
async fn a_long_held_table_lock_makes_the_migration_fail_fast_by_lock_timeout() {
    let db = TestDb::create().await;
    let client = db.client().await;
    client
        .batch_execute("create table busy (id int)")
        .await
        .unwrap();
    let holder = db.client().await;
    holder
        .batch_execute("begin; lock table busy in access share mode")
        .await
        .unwrap();

    let dir = dir_with(&[("1_alter.sql", "alter table busy add column note text;")]);
    let spec = RunSpec {
        lock_timeout: Duration::from_millis(300),
        dry_run_first: false,
        ..spec()
    };
    let started = Instant::now();
    let report = run(&spec, &source(dir.path()), &db.url).await;
    let elapsed = started.elapsed();
    let failed = report
        .error
        .as_ref()
        .and_then(RunError::statement)
        .expect("a statement error");
    assert_eq!(failed.sqlstate.as_deref(), Some("55P03"), "{failed}");
    assert!(failed.message.contains("lock timeout"), "{failed}");
    assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
    assert!(history(&client).await.is_empty());
    holder.batch_execute("rollback").await.unwrap();

    let report = run(&spec, &source(dir.path()), &db.url).await;
    assert!(report.error.is_none(), "{:?}", report.error);
}

#[tokio::test]
async fn the_cli_plans_and_applies_with_the_password_masked() {
    let db = TestDb::create().await;
    let url = db
        .url
        .replacen("postgres://postgres@", "postgres://postgres:hunter2@", 1);
    let tether = env!("CARGO_BIN_EXE_tether");
    let dir = fixtures().to_str().unwrap();
    let plan = Command::new(tether)
        .args(["migrate", "plan", dir, "--database-url", &url])
        .output()
        .unwrap();
    let out =
        String::from_utf8_lossy(&plan.stdout).to_string() + &String::from_utf8_lossy(&plan.stderr);
    assert!(plan.status.success(), "{out}");
    assert!(
        out.contains("pending: 4") && out.contains("20240103000000_updated_at_trigger.sql"),
        "{out}"
    );
    assert!(
        out.contains("postgres:****@") && !out.contains("hunter2"),
        "{out}"
    );

    let apply = Command::new(tether)
        .args([
            "migrate",
            "apply",
            dir,
            "--database-url",
            &url,
            "--lock-timeout",
            "2s",
            "--verify-rls",
            "todos",
        ])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&apply.stdout).to_string()
        + &String::from_utf8_lossy(&apply.stderr);
    assert!(apply.status.success(), "{out}");
    assert!(
        out.contains("applied 20240104000000_search_and_stats") && out.contains("verify rls ok"),
        "{out}"
    );
    assert!(!out.contains("hunter2"), "{out}");
}

#[tokio::test]
async fn a_file_that_commits_by_itself_is_not_recorded_as_applied() {
    // Lint blocks such files; this drives the apply step directly to show the runner's
    // own guard: the history insert only happens inside Tether's transaction.
    use tether::migrate::db::{self, DbError, Durability, Recorder, Timeouts};
    let db = TestDb::create().await;
    let client = db::connect(&db.url).await.unwrap();
    db::ensure_tables(&client).await.unwrap();
    let recorder = Recorder::prepare(&client).await.unwrap();
    let set = MigrationSet::from_inline([(
        "1_sneaky.sql",
        "create table s1 (id int);\ncommit;\ncreate table s2 (id int);\n",
    )])
    .unwrap();
    let timeouts = Timeouts {
        lock: Duration::from_secs(1),
        statement: Duration::from_secs(10),
    };
    let err = db::apply_one(
        &client,
        &recorder,
        &set.migrations()[0],
        timeouts,
        Durability::WaitForFlush,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, DbError::EndedTransaction { .. }), "{err}");
    assert!(err.to_string().contains("1_sneaky.sql"));
    assert!(history(&db.client().await).await.is_empty());
    // The durability barrier a run ends with after a failure works on this session.
    db::flush(&client).await.unwrap();
}

#[tokio::test]
async fn a_connection_error_carries_postgres_message_and_sqlstate_not_just_db_error() {
    tether::install_crypto_provider();
    let base = admin_url();
    let (prefix, _) = base
        .rsplit_once('/')
        .expect("DATABASE_URL has a database path");
    let missing = format!("{prefix}/tether_missing_{:016x}", rand::random::<u64>());
    let error = match tether::migrate::db::connect(&missing).await {
        Ok(_) => panic!("connecting to a missing database succeeded"),
        Err(error) => error.to_string(),
    };
    assert!(error.contains("does not exist"), "{error}");
    assert!(error.contains("SQLSTATE 3D000"), "{error}");
}
