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
pub(crate) struct TestDb {
    name: String,
    pub(crate) url: String,
}

impl TestDb {
    /// Creates `tether_test_<random>`.
    pub(crate) async fn create() -> TestDb {
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

/// `(version, name, statements)` rows of the Supabase history table, by version (none
/// when the table does not exist).
async fn history(client: &Client) -> Vec<(String, String, Vec<String>)> {
    if !table_exists(client, "supabase_migrations.schema_migrations").await {
        return Vec::new();
    }
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
        .query_one(
            "select count(*) from supabase_migrations.tether_migration_checksums",
            &[],
        )
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
async fn a_commit_the_shape_check_missed_is_caught_and_the_file_not_recorded() {
    // A COMMIT inside a file makes it run as written; this drives a transaction with the
    // shape check defeated, to show the runner's own guard: the history insert only
    // happens inside the transaction Tether opened.
    use tether::migrate::db::{self, DbError, Durability, Timeouts};
    use tether::migrate::exec::{End, Session};
    use tether::migrate::shape::{FileShape, Shape, StatementKind};
    let db = TestDb::create().await;
    let client = db::connect(&db.url).await.unwrap();
    let set = MigrationSet::from_inline([(
        "1_sneaky.sql",
        "create table s1 (id int);\ncommit;\ncreate table s2 (id int);\n",
    )])
    .unwrap();
    let mut sneaky = set.migrations()[0].clone();
    assert!(matches!(sneaky.shape.shape, Shape::AsWritten { .. }));
    sneaky.shape = FileShape {
        shape: Shape::Plain,
        kinds: vec![StatementKind::Plain; 3],
        adds_enum_values: Vec::new(),
    };
    let timeouts = Timeouts {
        lock: Duration::from_secs(1),
        statement: Duration::from_secs(10),
    };
    let mut session = Session::new(&client, timeouts, false);
    let err = session
        .transaction(&[&sneaky], End::Commit(Durability::WaitForFlush))
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

/// A fixture history under `tests/fixtures/histories/`.
fn history_fixture(shape: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/histories")
        .join(shape)
}

/// The files of `dir` that are migrations (`<digits>_<name>.sql`), in version order.
fn migration_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<(u128, std::path::PathBuf)> = std::fs::read_dir(dir)
        .expect("read fixture directory")
        .filter_map(|e| {
            let path = e.ok()?.path();
            let name = path.file_name()?.to_str()?.to_string();
            let (digits, _) = name.strip_suffix(".sql")?.split_once('_')?;
            Some((digits.parse().ok()?, path))
        })
        .collect();
    files.sort();
    files.into_iter().map(|(_, p)| p).collect()
}

/// Applies each migration file of `dir` with its own `psql -f` (a session per file, as
/// the files are meant to run).
fn psql_apply(url: &str, dir: &Path) {
    for file in migration_files(dir) {
        let out = Command::new("psql")
            .arg(url)
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-f"])
            .arg(&file)
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "psql -f {} failed: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The database's schema as `pg_dump --schema-only` prints it, leaving out the schema the
/// Supabase CLI leaves out of its dumps (`supabase_migrations`) and pg_dump's random
/// `\restrict` keys.
fn schema_of(url: &str) -> String {
    let out = Command::new("pg_dump")
        .args(["--schema-only", "--quote-all-identifier"])
        .args(["--exclude-schema", "supabase_migrations"])
        .arg(url)
        .output()
        .expect("run pg_dump");
    assert!(
        out.status.success(),
        "pg_dump failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with("\\restrict") && !l.starts_with("\\unrestrict"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `tether migrate ARGS…`: (stdout + stderr, success).
fn tether_migrate(args: &[&str]) -> (String, bool) {
    let out = Command::new(env!("CARGO_BIN_EXE_tether"))
        .arg("migrate")
        .args(args)
        .output()
        .expect("run tether");
    (
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr),
        out.status.success(),
    )
}

/// Applies the fixture history `shape` with `tether migrate apply` and default flags to one
/// fresh database and with psql to another, and checks the schemas are the same and every
/// migration file has its history row. Returns Tether's database and output.
async fn applies_like_psql(shape: &str, extra: &[&str]) -> (TestDb, String) {
    let dir = history_fixture(shape);
    let with_psql = TestDb::create().await;
    psql_apply(&with_psql.url, &dir);
    let db = TestDb::create().await;
    let mut args = vec!["apply", dir.to_str().unwrap(), "--database-url", &db.url];
    args.extend_from_slice(extra);
    let (out, ok) = tether_migrate(&args);
    assert!(ok, "{out}");
    let tether_schema = schema_of(&db.url);
    assert!(
        tether_schema == schema_of(&with_psql.url),
        "{shape}: the schema Tether built differs from psql's\n--- tether\n{tether_schema}\n--- psql\n{}",
        schema_of(&with_psql.url)
    );
    let expected: Vec<String> = migration_files(&dir)
        .iter()
        .map(|p| p.file_stem().unwrap().to_str().unwrap().to_string())
        .collect();
    let recorded: Vec<String> = history(&db.client().await)
        .await
        .into_iter()
        .map(|(v, n, _)| format!("{v}_{n}"))
        .collect();
    assert_eq!(recorded, expected, "{out}");
    (db, out)
}

#[tokio::test]
async fn history_enum_add_then_use_applies_with_default_flags_like_psql() {
    let (db, out) = applies_like_psql("enum-add-then-use", &[]).await;
    // Nobody else is connected to a test database, so the run was rehearsed on a copy.
    assert!(
        out.contains(
            "checked: all 3 pending files were applied to a scratch copy of the database first"
        ),
        "{out}"
    );
    let client = db.client().await;
    let copies: i64 = client
        .query_one(
            "select count(*) from pg_database where datname like $1",
            &[&format!("tether_rehearsal_{}%", &db.name[..20])],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(copies, 0, "the scratch copy is dropped again");
}

#[tokio::test]
async fn history_dump_header_applies_with_default_flags_like_psql() {
    let (_db, out) = applies_like_psql("dump-header", &[]).await;
    assert!(
        out.contains("checked: all 2 pending files ran in one transaction"),
        "{out}"
    );
}

#[tokio::test]
async fn history_dump_header_applies_file_by_file_like_the_cli() {
    applies_like_psql("dump-header", &["--no-dry-run"]).await;
}

#[tokio::test]
async fn history_with_a_byte_order_mark_applies_with_default_flags_like_psql() {
    let (db, _) = applies_like_psql("bom", &[]).await;
    let rows = history(&db.client().await).await;
    assert_eq!(
        rows[1].2,
        vec!["alter table public.notes add column pinned boolean not null default false"]
    );
}

#[tokio::test]
async fn history_with_stray_sql_files_applies_with_default_flags_like_psql() {
    let (_db, out) = applies_like_psql("stray-files", &[]).await;
    for file in ["local_20240107152745_ollama.sql", "seed.sql"] {
        assert!(
            out.contains(&format!(
                "warning: skipped {file}: file name must match <version>_<name>.sql"
            )),
            "{out}"
        );
    }
    let dir = history_fixture("stray-files");
    let (lint, ok) = tether_migrate(&["lint", dir.to_str().unwrap()]);
    assert!(ok && lint.contains("warning: skipped seed.sql"), "{lint}");
}

#[tokio::test]
async fn history_with_own_transactions_applies_with_default_flags_like_psql() {
    let (db, out) = applies_like_psql("own-transaction", &[]).await;
    assert!(
        out.contains("runs as written: 20240102000000_order_lines.sql (it manages its own transactions (COMMIT at line 7))")
            && out.contains("runs as written: 20240103000000_order_lines_index.sql (CREATE INDEX CONCURRENTLY cannot run inside a transaction (line 2))"),
        "{out}"
    );
    assert!(
        out.contains("checked: all 4 pending files were applied to a scratch copy"),
        "{out}"
    );
    // The CLI's history row keeps the wrapper the file was written with.
    let rows = history(&db.client().await).await;
    assert_eq!(rows[0].2.first().map(String::as_str), Some("BEGIN"));
    assert_eq!(rows[0].2.last().map(String::as_str), Some("COMMIT"));
}

#[tokio::test]
async fn history_that_drops_what_it_created_applies_with_default_flags_like_psql() {
    let (_db, out) = applies_like_psql("drop-created-earlier", &[]).await;
    for rule in [
        "ban-drop-view",
        "ban-drop-table",
        "ban-drop-column",
        "renaming-column",
        "changing-column-type",
    ] {
        assert!(
            out.contains(&format!("{rule} [no data lost]")),
            "{rule}: {out}"
        );
    }
    assert!(
        out.contains("public.import_staging is created by 20240101000000_import.sql earlier in this run and holds no data before it"),
        "{out}"
    );
    assert!(
        out.contains("public.old_customers does not exist before this run"),
        "{out}"
    );
    assert!(!out.contains("[blocking]"), "{out}");
}

#[tokio::test]
async fn history_from_a_dump_with_tethers_old_bookkeeping_applies_like_psql() {
    let (db, _) = applies_like_psql("dump-with-tether-bookkeeping", &[]).await;
    // The dump's `tether` schema is the user's now: a later run leaves it alone.
    let dir = history_fixture("dump-with-tether-bookkeeping");
    let (out, ok) = tether_migrate(&["apply", dir.to_str().unwrap(), "--database-url", &db.url]);
    assert!(ok && out.contains("pending: \n"), "{out}");
    assert!(table_exists(&db.client().await, "tether.migration_checksums").await);
}

#[tokio::test]
async fn tethers_bookkeeping_is_where_supabase_dumps_do_not_look() {
    let db = TestDb::create().await;
    let report = run(&spec(), &source(fixtures()), &db.url).await;
    assert!(report.error.is_none(), "{:?}", report.error);
    let client = db.client().await;
    assert!(!table_exists(&client, "tether.migration_checksums").await);
    let schemas: i64 = client
        .query_one(
            "select count(*) from pg_namespace where nspname = 'tether'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(schemas, 0);
    let checksums: i64 = client
        .query_one(
            "select count(*) from supabase_migrations.tether_migration_checksums",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(checksums, 4);
    let dump = schema_of(&db.url);
    assert!(!dump.contains("tether"), "{dump}");
}

#[tokio::test]
async fn checksums_kept_by_older_tether_versions_are_read_then_moved() {
    let db = TestDb::create().await;
    let dir = dir_with(&[("1_a.sql", "create table a (id int);\n")]);
    let set = source(dir.path());
    let client = db.client().await;
    // The layout older Tether versions left: checksums in a schema of their own.
    client
        .batch_execute(&format!(
            "create schema supabase_migrations;
             create table supabase_migrations.schema_migrations (version text not null primary key, statements text[], name text);
             insert into supabase_migrations.schema_migrations values ('1', '{{\"create table a (id int)\"}}', 'a');
             create table a (id int);
             create schema tether;
             create table tether.migration_checksums (version text NOT NULL PRIMARY KEY, checksum text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now(), duration_ms double precision NOT NULL);
             insert into tether.migration_checksums values ('1', '{}', now(), 1.5);",
            set.migrations()[0].checksum
        ))
        .await
        .unwrap();
    // Before anything is written, the old checksums are what edits are compared with.
    std::fs::write(
        dir.path().join("1_a.sql"),
        "create table a (id int); -- edited\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("2_b.sql"), "create table b (id int);\n").unwrap();
    let (plan, ok) = tether_migrate(&[
        "plan",
        dir.path().to_str().unwrap(),
        "--database-url",
        &db.url,
    ]);
    assert!(ok, "{plan}");
    assert!(
        plan.contains("changed after apply (not re-run): 1 1_a.sql: sha256 differs"),
        "{plan}"
    );
    let report = run(&spec(), &source(dir.path()), &db.url).await;
    assert!(report.error.is_none(), "{:?}", report.error);
    assert_eq!(report.changed.len(), 1);
    assert!(!table_exists(&client, "tether.migration_checksums").await);
    let moved: Vec<(String, f64)> = client
        .query(
            "select version, duration_ms from supabase_migrations.tether_migration_checksums order by version",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(moved.len(), 2);
    assert_eq!(moved[0], ("1".to_string(), 1.5));
    let schemas: i64 = client
        .query_one(
            "select count(*) from pg_namespace where nspname = 'tether'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(schemas, 0, "the emptied schema is dropped");
    // After the move the edit is still seen.
    let again = run(&spec(), &source(dir.path()), &db.url).await;
    assert_eq!(again.changed.len(), 1, "{:?}", again.changed);
}

#[tokio::test]
async fn a_rehearsal_in_one_transaction_stops_where_an_enum_value_must_be_committed() {
    let db = TestDb::create().await;
    let spec = RunSpec {
        scratch_copy: false,
        ..spec()
    };
    let report = run(
        &spec,
        &source(&history_fixture("enum-add-then-use")),
        &db.url,
    )
    .await;
    assert!(report.error.is_none(), "{:?}", report.error);
    assert_eq!(report.applied.len(), 3);
    let checked = report.checked.expect("checked");
    assert_eq!((checked.files, checked.total), (2, 3));
    assert_eq!(
        checked.stopped.as_deref(),
        Some(
            "20240103000000_use_done_status.sql uses the enum value \"done\" that 20240102000000_add_done_status.sql adds, which Postgres accepts only once 20240102000000_add_done_status.sql has committed, so it are checked as they run"
        )
    );
}

#[tokio::test]
async fn a_failing_file_after_an_enum_addition_is_caught_on_a_scratch_copy_before_anything_is_applied()
 {
    let db = TestDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    for file in migration_files(&history_fixture("enum-add-then-use")) {
        std::fs::copy(&file, dir.path().join(file.file_name().unwrap())).unwrap();
    }
    std::fs::write(
        dir.path().join("20240104000000_broken.sql"),
        "update public.tasks set status = 'done';\nalter table public.missing add column x int;\n",
    )
    .unwrap();
    let (out, ok) = tether_migrate(&[
        "apply",
        dir.path().to_str().unwrap(),
        "--database-url",
        &db.url,
    ]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("error: dry run failed, nothing was applied: failed to apply migration 20240104000000_broken.sql: statement 2 (line 2) failed: relation \"public.missing\" does not exist")
            && out.contains("found by applying the pending files to a scratch copy of the database"),
        "{out}"
    );
    let client = db.client().await;
    assert!(!table_exists(&client, "public.tasks").await);
    assert!(!table_exists(&client, "supabase_migrations.schema_migrations").await);
}

#[tokio::test]
async fn a_rehearsal_checks_the_files_after_one_that_runs_as_written() {
    let db = TestDb::create().await;
    let dir = dir_with(&[
        ("1_a.sql", "create table a (id int);"),
        (
            "2_b.sql",
            "begin;\ncreate table b (id int);\ncommit;\nbegin;\ninsert into b values (1);\ncommit;\n",
        ),
        ("3_c.sql", "insert into b values ('x');"),
    ]);
    let spec = RunSpec {
        scratch_copy: false,
        ..spec()
    };
    let report = run(&spec, &source(dir.path()), &db.url).await;
    let Some(RunError::DryRun(failed)) = &report.error else {
        panic!("expected a dry-run error, got {:?}", report.error)
    };
    assert_eq!(failed.file, "3_c.sql");
    assert!(report.applied.is_empty());
    assert!(!table_exists(&db.client().await, "public.a").await);

    std::fs::write(dir.path().join("3_c.sql"), "insert into b values (3);").unwrap();
    let report = run(&spec, &source(dir.path()), &db.url).await;
    assert!(report.error.is_none(), "{:?}", report.error);
    let checked = report.checked.expect("checked");
    assert_eq!(
        (checked.files, checked.total, checked.stopped),
        (3, 3, None)
    );
    let rows: i64 = db
        .client()
        .await
        .query_one("select count(*) from b", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 2);
}

#[tokio::test]
async fn a_file_run_as_written_that_fails_part_way_says_what_stays() {
    let db = TestDb::create().await;
    let dir = dir_with(&[(
        "1_a.sql",
        "begin;\ncreate table a (id int);\ncommit;\nbegin;\ninsert into a values ('x');\ncommit;\n",
    )]);
    let spec = RunSpec {
        dry_run_first: false,
        ..spec()
    };
    let report = run(&spec, &source(dir.path()), &db.url).await;
    let Some(RunError::Apply(failed)) = &report.error else {
        panic!("expected an apply error, got {:?}", report.error)
    };
    let message = report.error.as_ref().unwrap().to_string();
    assert_eq!((failed.index, failed.line), (5, 5));
    assert!(
        message.contains("1_a.sql runs as written (it manages its own transactions (COMMIT at line 3)), so what it committed before this statement stays applied and it is not recorded as applied"),
        "{message}"
    );
    let client = db.client().await;
    assert!(table_exists(&client, "public.a").await);
    assert!(history(&client).await.is_empty());
}

#[tokio::test]
async fn applied_versions_missing_locally_stop_the_cli_with_the_repair_command() {
    let db = TestDb::create().await;
    let dir = dir_with(&[("1_a.sql", "create table a (id int);")]);
    let path = dir.path().to_str().unwrap();
    assert!(tether_migrate(&["apply", path, "--database-url", &db.url]).1);
    std::fs::remove_file(dir.path().join("1_a.sql")).unwrap();
    std::fs::write(dir.path().join("2_b.sql"), "create table b (id int);").unwrap();
    let (plan, ok) = tether_migrate(&["plan", path, "--database-url", &db.url]);
    assert!(
        !ok && plan.contains("applied but missing from the directory: 1"),
        "{plan}"
    );
    let (out, ok) = tether_migrate(&["apply", path, "--database-url", &db.url]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("the database has migrations that are not in the source: 1")
            && out.contains("supabase migration repair --status reverted 1"),
        "{out}"
    );
    assert!(!table_exists(&db.client().await, "public.b").await);
}

#[tokio::test]
async fn an_older_pending_file_needs_include_all() {
    let db = TestDb::create().await;
    let dir = dir_with(&[("2_b.sql", "create table b (id int);")]);
    let path = dir.path().to_str().unwrap();
    assert!(tether_migrate(&["apply", path, "--database-url", &db.url]).1);
    std::fs::write(dir.path().join("1_a.sql"), "create table a (id int);").unwrap();
    let (out, ok) = tether_migrate(&["apply", path, "--database-url", &db.url]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("these pending files are older than the newest applied migration: 1_a.sql. Rerun with --include-all"),
        "{out}"
    );
    assert!(!table_exists(&db.client().await, "public.a").await);
    let (out, ok) = tether_migrate(&["apply", path, "--database-url", &db.url, "--include-all"]);
    assert!(ok && out.contains("applied 1_a"), "{out}");
}

#[tokio::test]
async fn a_changed_applied_file_says_what_to_do_and_fails_with_strict() {
    let db = TestDb::create().await;
    let dir = dir_with(&[("1_a.sql", "create table a (id int);")]);
    let path = dir.path().to_str().unwrap();
    assert!(tether_migrate(&["apply", path, "--database-url", &db.url]).1);
    std::fs::write(dir.path().join("1_a.sql"), "create table a (id bigint);").unwrap();
    let (out, ok) = tether_migrate(&["apply", path, "--database-url", &db.url]);
    assert!(ok, "{out}");
    assert!(
        out.contains("changed after apply (not re-run): 1 1_a.sql")
            && out.contains("restore it as it was applied")
            && out.contains("supabase migration new"),
        "{out}"
    );
    let (out, ok) = tether_migrate(&["apply", path, "--database-url", &db.url, "--strict"]);
    assert!(!ok, "{out}");
    assert!(out.contains("failed to apply (--strict)"), "{out}");
}

#[tokio::test]
async fn a_run_with_nothing_to_apply_creates_nothing_and_failed_verification_is_the_outcome() {
    let db = TestDb::create().await;
    let dir = dir_with(&[("seed.sql", "insert into nothing values (1);")]);
    let path = dir.path().to_str().unwrap();
    let (out, ok) = tether_migrate(&["apply", path, "--database-url", &db.url]);
    assert!(ok, "{out}");
    let schemas: i64 = db
        .client()
        .await
        .query_one(
            "select count(*) from pg_namespace where nspname in ('supabase_migrations', 'tether')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(schemas, 0, "{out}");
    std::fs::write(dir.path().join("1_a.sql"), "create table a (id int);").unwrap();
    let (out, ok) = tether_migrate(&[
        "apply",
        path,
        "--database-url",
        &db.url,
        "--verify-table",
        "ghost",
    ]);
    assert!(!ok, "{out}");
    let last = out.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("applied, but verification failed: 1 applied"),
        "{out}"
    );
}
