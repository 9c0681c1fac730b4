//! The Migration controller end to end: the in-process API (TestCluster), the controllers,
//! and the real PostgreSQL at `DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`), each test with its own random database.
//! Inline and ConfigMap sources apply (history rows, `MigrationApplied` events, the
//! applied counter), a destructive migration is blocked until allowed, a failing one is
//! `Failed` naming its statement and leaves no trace, a failed verify sets
//! `Verified=False` naming the table, and the connection string's password appears in no
//! status, event or log line. A database named by an Environment waits for, then migrates,
//! the Environment's Supabase project's database once the Environment reports it ready —
//! also end to end with the Supabase sync against the Supabase sandbox.

use std::io::Write;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use crate::support::{TestCluster, eventually};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::api::events::v1::Event as K8sEvent;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use tether::api::Migration;
use tether::controller::{ControllerConfig, Health, server};
use tether::telemetry::MetricsRegistry;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(20);
/// Trust authentication accepts any password, so the URL can carry one to look for.
const PASSWORD: &str = "pw-Zq7-never-shown";

/// Every log line the process writes (debug and up), to search for the password.
fn logs() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let sink = buffer.clone();
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("debug"))
            .with_writer(move || Sink(sink.clone()))
            .try_init();
        buffer
    })
}

struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn admin_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string())
}

/// A database created for one test, dropped after it.
struct TestDb {
    name: String,
    /// The URL with [`PASSWORD`] in it, as a user's Secret would hold it.
    url: String,
}

/// `scheme://user@host` from `scheme://user:password@host`.
fn without_password(base: &str) -> String {
    let mut url = url::Url::parse(base).expect("a URL");
    url.set_password(None).expect("a URL with a host");
    url.to_string().trim_end_matches('/').to_string()
}

impl TestDb {
    async fn create() -> TestDb {
        Self::named(&format!("tether_ctl_{:016x}", rand::random::<u64>())).await
    }

    async fn named(name: &str) -> TestDb {
        let name = name.to_string();
        connect(&admin_url())
            .await
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create test database");
        let base = admin_url();
        let (prefix, _) = base.rsplit_once('/').expect("a database path");
        let (scheme, rest) = prefix.split_once("://").expect("a URL");
        let rest = match rest.split_once('@') {
            Some((user, host)) => {
                let user = user.split(':').next().unwrap_or(user);
                format!("{user}:{PASSWORD}@{host}")
            }
            None => format!("postgres:{PASSWORD}@{rest}"),
        };
        TestDb {
            url: format!("{scheme}://{rest}/{name}"),
            name,
        }
    }

    async fn query(&self, sql: &str) -> Vec<tokio_postgres::Row> {
        connect(&self.url).await.query(sql, &[]).await.unwrap()
    }

    /// The history rows; none when the history table does not exist (a run that applied
    /// nothing creates nothing).
    async fn history(&self) -> Vec<(String, String)> {
        if self
            .query("select to_regclass('supabase_migrations.schema_migrations') is null")
            .await[0]
            .get::<_, bool>(0)
        {
            return Vec::new();
        }
        self.query(
            "select version, name from supabase_migrations.schema_migrations order by version",
        )
        .await
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
    }

    async fn table_exists(&self, table: &str) -> bool {
        !self
            .query(&format!(
                "select 1 from pg_tables where schemaname = 'public' and tablename = '{table}'"
            ))
            .await
            .is_empty()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
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

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect to PostgreSQL");
    tokio::spawn(connection);
    client
}

/// A cluster, the controllers with their `/metrics` server, and a database.
struct Harness {
    cluster: TestCluster,
    shutdown: CancellationToken,
    metrics_addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
    db: TestDb,
}

impl Harness {
    async fn start() -> Harness {
        Self::start_with(TestDb::create().await, ControllerConfig::default()).await
    }

    /// Starts the controllers with `config` (fast retries and the test database's URL
    /// template added) against `db`.
    async fn start_with(db: TestDb, config: ControllerConfig) -> Harness {
        tether::install_crypto_provider();
        logs();
        let cluster = TestCluster::start().await;
        let shutdown = CancellationToken::new();
        let metrics = MetricsRegistry::new();
        let health = Health::new();
        let (metrics_addr, serve) = server::bind(
            "127.0.0.1:0".parse().unwrap(),
            metrics.clone(),
            health.clone(),
            shutdown.clone(),
        )
        .await
        .unwrap();
        let (client, token) = (cluster.client(), shutdown.clone());
        let (base, _) = db.url.rsplit_once('/').expect("a database path");
        let config = ControllerConfig {
            min_retry: Duration::from_millis(100),
            max_retry: Duration::from_secs(1),
            pending_interval: Duration::from_millis(200),
            // The "project ref" is the test database's name; the password is dropped so
            // the Environment's password Secret is what fills it in.
            supabase_database_url: format!("{}/{{ref}}", without_password(base)),
            ..config
        };
        let task = tokio::spawn(async move {
            let server = tokio::spawn(serve);
            tether::controller::run(client, config, metrics, health, token)
                .await
                .unwrap();
            server.await.unwrap().unwrap();
        });
        let secrets: Api<Secret> = Api::default_namespaced(cluster.client());
        let secret: Secret = serde_json::from_value(json!({
            "metadata": {"name": "db"},
            "data": {"url": k8s_openapi::ByteString(db.url.as_bytes().to_vec())},
        }))
        .unwrap();
        secrets
            .create(&PostParams::default(), &secret)
            .await
            .unwrap();
        Harness {
            cluster,
            shutdown,
            metrics_addr,
            task,
            db,
        }
    }

    fn client(&self) -> Client {
        self.cluster.client()
    }

    fn migrations(&self) -> Api<Migration> {
        Api::default_namespaced(self.client())
    }

    async fn create(&self, name: &str, spec: Value) {
        let mut spec = spec;
        spec["database"] = json!({"connectionSecretRef": {"name": "db", "key": "url"}});
        let migration: Migration = serde_json::from_value(json!({
            "apiVersion": "tether.dev/v1alpha1", "kind": "Migration",
            "metadata": {"name": name}, "spec": spec,
        }))
        .unwrap();
        self.migrations()
            .create(&PostParams::default(), &migration)
            .await
            .unwrap();
    }

    /// Waits until the Migration's status has `phase` and condition `type_` = `status`.
    async fn wait_for(&self, name: &str, phase: &str, type_: &str, status: &str) -> Value {
        let api = self.migrations();
        eventually(WAIT, || async {
            let obj = api.get(name).await.ok()?;
            let st = serde_json::to_value(&obj).ok()?.get("status")?.clone();
            (st["phase"] == phase && condition(&st, type_)?["status"] == status).then_some(st)
        })
        .await
    }

    /// `(reason, note)` of every event about `name`.
    async fn events(&self, name: &str) -> Vec<(String, String)> {
        let events: Api<K8sEvent> = Api::default_namespaced(self.client());
        events
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
            .map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
            .collect()
    }

    async fn wait_for_event(
        &self,
        name: &str,
        reason: &str,
        count: usize,
    ) -> Vec<(String, String)> {
        eventually(WAIT, || async {
            let events = self.events(name).await;
            (events.iter().filter(|(r, _)| r == reason).count() >= count).then_some(events)
        })
        .await
    }

    async fn metrics(&self) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(self.metrics_addr)
            .await
            .unwrap();
        let request = "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    }

    /// Asserts the password is in no status, event or captured log line.
    async fn assert_password_hidden(&self) {
        for migration in self
            .migrations()
            .list(&ListParams::default())
            .await
            .unwrap()
        {
            let status = serde_json::to_string(&migration.status).unwrap();
            assert!(
                !status.contains(PASSWORD),
                "status of {}",
                migration.name_any()
            );
        }
        let events: Api<K8sEvent> = Api::default_namespaced(self.client());
        let events =
            serde_json::to_string(&events.list(&ListParams::default()).await.unwrap()).unwrap();
        assert!(!events.contains(PASSWORD), "events");
        let logs = String::from_utf8_lossy(&logs().lock().unwrap()).to_string();
        assert!(
            logs.contains("migration run finished"),
            "logs were captured"
        );
        assert!(!logs.contains(PASSWORD), "logs");
    }

    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("controllers stop")
            .unwrap();
        self.cluster.stop().await;
    }
}

fn condition(status: &Value, type_: &str) -> Option<Value> {
    status["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .cloned()
}

fn counter(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(&format!("{name} ")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

fn inline(migrations: &[(&str, &str, &str)]) -> Value {
    json!({"inline": migrations
        .iter()
        .map(|(version, name, sql)| json!({"version": version, "name": name, "sql": sql}))
        .collect::<Vec<_>>()})
}

#[tokio::test]
async fn an_inline_migration_is_applied_recorded_reported_and_counted_without_showing_the_password()
{
    let h = Harness::start().await;
    assert_eq!(
        counter(&h.metrics().await, "tether_migration_applied_total"),
        0.0
    );
    h.create(
        "schema",
        json!({
            "source": inline(&[
                ("20240101000000", "profiles", "create table profiles (id bigint primary key);\nalter table profiles enable row level security;"),
                ("20240102000000", "notes", "create table notes (id bigint primary key, body text);"),
            ]),
            "verify": {"tablesExist": ["profiles", "notes"], "rlsEnabled": ["profiles"]},
        }),
    )
    .await;
    let status = h.wait_for("schema", "Applied", "Ready", "True").await;
    assert_eq!(condition(&status, "Verified").unwrap()["status"], "True");
    assert_eq!(condition(&status, "Stalled").unwrap()["status"], "False");
    assert_eq!(status["latestVersion"], "20240102000000");
    let applied = status["applied"].as_array().unwrap();
    assert_eq!(applied.len(), 2, "{status}");
    assert_eq!(applied[0]["version"], "20240101000000");
    assert!(applied[0]["appliedAt"].is_string(), "{status}");
    assert!(applied[0]["durationMs"].is_i64(), "{status}");
    assert!(status.get("pending").is_none(), "{status}");

    assert_eq!(
        h.db.history().await,
        vec![
            ("20240101000000".to_string(), "profiles".to_string()),
            ("20240102000000".to_string(), "notes".to_string()),
        ]
    );
    let events = h.wait_for_event("schema", "MigrationApplied", 2).await;
    assert!(
        events
            .iter()
            .any(|(r, n)| r == "MigrationApplied" && n.contains("20240102000000_notes")),
        "{events:?}"
    );
    let metrics = eventually(WAIT, || async {
        let text = h.metrics().await;
        (counter(&text, "tether_migration_applied_total") == 2.0).then_some(text)
    })
    .await;
    assert!(metrics.contains("tether_migration_duration_seconds_count 2"));

    // The status write and later reconciles do not run the migrations again.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        counter(&h.metrics().await, "tether_migration_applied_total"),
        2.0
    );
    assert_eq!(
        h.events("schema")
            .await
            .iter()
            .filter(|(r, _)| r == "MigrationApplied")
            .count(),
        2
    );
    h.assert_password_hidden().await;
    h.stop().await;
}

#[tokio::test]
async fn a_config_map_of_migration_files_is_applied() {
    let h = Harness::start().await;
    let config_map: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "sql"},
        "data": {
            "20240101000000_accounts.sql": "create table accounts (id bigint primary key);",
            "20240105000000_index.sql": "alter table accounts add column email text;",
            "README.md": "not a migration",
        },
    }))
    .unwrap();
    Api::<ConfigMap>::default_namespaced(h.client())
        .create(&PostParams::default(), &config_map)
        .await
        .unwrap();
    h.create(
        "files",
        json!({"source": {"configMapRef": {"name": "sql"}}}),
    )
    .await;
    let status = h.wait_for("files", "Applied", "Ready", "True").await;
    assert_eq!(status["latestVersion"], "20240105000000");
    assert_eq!(
        h.db.history()
            .await
            .into_iter()
            .map(|(v, _)| v)
            .collect::<Vec<_>>(),
        ["20240101000000", "20240105000000"]
    );
    assert!(h.db.table_exists("accounts").await);
    h.wait_for_event("files", "MigrationApplied", 2).await;
    h.stop().await;
}

#[tokio::test]
async fn a_destructive_migration_is_blocked_with_its_rule_until_allowed() {
    let h = Harness::start().await;
    h.db.query("create table legacy (id int)").await;
    h.create(
        "cleanup",
        json!({"source": inline(&[("7", "drop_legacy", "drop table legacy;")])}),
    )
    .await;
    let status = h.wait_for("cleanup", "Blocked", "Stalled", "True").await;
    let ready = condition(&status, "Ready").unwrap();
    assert_eq!(ready["status"], "False");
    assert!(
        ready["message"]
            .as_str()
            .unwrap()
            .contains("ban-drop-table in 7"),
        "{ready}"
    );
    assert_eq!(status["pending"], json!(["7"]));
    assert!(
        status["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["rule"] == "ban-drop-table" && f["blocking"] == true),
        "{status}"
    );
    let events = h.wait_for_event("cleanup", "MigrationBlocked", 1).await;
    assert!(
        events
            .iter()
            .any(|(r, n)| r == "MigrationBlocked" && n.contains("ban-drop-table")),
        "{events:?}"
    );
    assert!(
        h.db.table_exists("legacy").await,
        "nothing applied while blocked"
    );
    let blocked = counter(&h.metrics().await, "tether_migration_blocked_total");
    assert!(blocked >= 1.0);

    h.migrations()
        .patch(
            "cleanup",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"policy": {"allowDestructive": true}}})),
        )
        .await
        .unwrap();
    h.wait_for("cleanup", "Applied", "Ready", "True").await;
    assert!(!h.db.table_exists("legacy").await);
    assert_eq!(
        h.db.history().await,
        [("7".to_string(), "drop_legacy".to_string())]
    );
    h.wait_for_event("cleanup", "MigrationApplied", 1).await;
    h.stop().await;
}

#[tokio::test]
async fn a_failing_migration_is_failed_naming_its_statement_and_leaves_no_trace() {
    let h = Harness::start().await;
    h.create(
        "broken",
        json!({"source": inline(&[
            ("1", "good", "create table good (id int);"),
            ("2", "bad", "create table half (id int);\nselect * from missing_table;"),
        ])}),
    )
    .await;
    let status = h.wait_for("broken", "Failed", "Ready", "False").await;
    let ready = condition(&status, "Ready").unwrap();
    let message = ready["message"].as_str().unwrap();
    assert!(message.contains("select * from missing_table"), "{message}");
    assert!(message.contains("42P01"), "{message}");
    assert_eq!(condition(&status, "Stalled").unwrap()["status"], "True");
    assert!(
        !h.db.table_exists("half").await,
        "the failing migration left a table"
    );
    assert!(
        !h.db.history().await.iter().any(|(v, _)| v == "2"),
        "the failing migration was recorded"
    );
    h.assert_password_hidden().await;
    h.stop().await;
}

#[tokio::test]
async fn a_failed_verify_sets_verified_false_naming_the_table() {
    let h = Harness::start().await;
    h.create(
        "open",
        json!({
            "source": inline(&[("1", "profiles", "create table profiles (id int);")]),
            "verify": {"tablesExist": ["profiles"], "rlsEnabled": ["profiles"]},
        }),
    )
    .await;
    let status = h.wait_for("open", "Applied", "Verified", "False").await;
    let verified = condition(&status, "Verified").unwrap();
    assert!(
        verified["message"].as_str().unwrap().contains("profiles"),
        "{verified}"
    );
    assert_eq!(condition(&status, "Ready").unwrap()["status"], "False");
    let events = h.wait_for_event("open", "VerifyFailed", 1).await;
    assert!(
        events
            .iter()
            .any(|(r, n)| r == "VerifyFailed" && n.contains("profiles")),
        "{events:?}"
    );
    h.stop().await;
}

#[tokio::test]
async fn a_database_named_by_an_environment_waits_for_its_supabase_project_then_migrates_it() {
    let h = Harness::start().await;
    let password: Secret = serde_json::from_value(json!({
        "metadata": {"name": "supabase-db"},
        "stringData": {"password": PASSWORD},
    }))
    .unwrap();
    Api::<Secret>::default_namespaced(h.client())
        .create(&PostParams::default(), &password)
        .await
        .unwrap();
    // Suspended: the Environment controller leaves its status to this test, which plays
    // the part of the Supabase sync.
    let environment: tether::api::Environment = serde_json::from_value(json!({
        "apiVersion": "tether.dev/v1alpha1", "kind": "Environment",
        "metadata": {"name": "staging"},
        "spec": {
            "suspend": true,
            "credentials": {"supabase": {"name": "tokens", "key": "supabase"}},
            "supabase": {"name": "acme-staging", "organizationId": "acme-org",
                "region": "eu-central-1",
                "databasePasswordSecretRef": {"name": "supabase-db", "key": "password"}},
        },
    }))
    .unwrap();
    let envs = Api::<tether::api::Environment>::default_namespaced(h.client());
    envs.create(&PostParams::default(), &environment)
        .await
        .unwrap();
    let migration: Migration = serde_json::from_value(json!({
        "apiVersion": "tether.dev/v1alpha1", "kind": "Migration",
        "metadata": {"name": "platform"},
        "spec": {"database": {"environmentRef": {"name": "staging"}},
            "source": inline(&[("1", "a", "create table a (id int);")])},
    }))
    .unwrap();
    h.migrations()
        .create(&PostParams::default(), &migration)
        .await
        .unwrap();
    let api = h.migrations();
    let waiting = eventually(WAIT, || async {
        let st = serde_json::to_value(api.get("platform").await.ok()?)
            .ok()?
            .get("status")?
            .clone();
        let ready = condition(&st, "Ready")?;
        (ready["reason"] == "WaitingForDatabase").then_some(ready)
    })
    .await;
    assert!(
        waiting["message"].as_str().unwrap().contains("\"staging\""),
        "{waiting}"
    );
    assert!(!h.db.table_exists("a").await);

    // The project is ready; its ref names the test database (the harness's
    // --supabase-database-url is postgres://…/{ref}).
    let status = json!({
        "apiVersion": "tether.dev/v1alpha1", "kind": "Environment",
        "status": {"objects": [{"platform": "supabase", "kind": "project",
            "name": "acme-staging", "id": h.db.name, "ready": true}]},
    });
    envs.patch_status(
        "staging",
        &kube::api::PatchParams::apply("supabase-sync-test").force(),
        &kube::api::Patch::Apply(&status),
    )
    .await
    .unwrap();
    eventually(WAIT, || async {
        h.db.table_exists("a").await.then_some(())
    })
    .await;
    let st = eventually(WAIT, || async {
        let st = serde_json::to_value(api.get("platform").await.ok()?)
            .ok()?
            .get("status")?
            .clone();
        (condition(&st, "Ready")?["status"] == "True").then_some(st)
    })
    .await;
    assert!(!st.to_string().contains(PASSWORD));
    h.stop().await;
}

#[tokio::test]
async fn through_the_supabase_sync_a_sandbox_project_is_waited_for_then_its_database_migrated() {
    use tether::platform::{
        HttpConfig, Platform, PlatformHttp, PlatformMetrics, SupabaseClient, SupabaseProjectSpec,
        SupabaseProjects, Token,
    };
    use tether::sandbox::SandboxConfig;
    use tether::sync::PlatformsConfig;

    tether::install_crypto_provider();
    // Slow enough that the project is still coming up (30 simulated seconds: 7.5 s) when the
    // Migration first looks for it.
    const SCALE: f64 = 4.0;
    let sandbox_shutdown = CancellationToken::new();
    let sandbox = tether::sandbox::start(
        SandboxConfig {
            time_scale: SCALE,
            record: true,
            platforms: vec![Platform::Supabase],
            ..SandboxConfig::default()
        },
        sandbox_shutdown.clone(),
    )
    .await
    .unwrap();
    let (url, token) = (
        sandbox.url(Platform::Supabase).unwrap(),
        sandbox.token(Platform::Supabase).unwrap(),
    );
    // The project exists already (the Environment adopts it); the test database is named
    // after its ref, so applying there shows the ref went from Supabase through the
    // Environment's status to the Migration.
    let supabase = SupabaseClient::new(
        PlatformHttp::new(
            Platform::Supabase,
            &url,
            token.clone(),
            HttpConfig::for_platform(Platform::Supabase).time_scaled(SCALE),
            PlatformMetrics::register(&MetricsRegistry::new()).unwrap(),
        )
        .unwrap(),
    );
    let project = supabase
        .ensure_project(&SupabaseProjectSpec {
            name: "acme-staging".into(),
            organization_slug: "acme".into(),
            region: Some("eu-central-1".into()),
            instance_size: None,
            db_pass: Token::new("made-by-hand"),
        })
        .await
        .unwrap()
        .object;
    let mut platforms = PlatformsConfig::default();
    platforms.endpoints.insert(Platform::Supabase, url);
    platforms.http.insert(
        Platform::Supabase,
        HttpConfig::for_platform(Platform::Supabase).time_scaled(SCALE),
    );
    let h = Harness::start_with(
        TestDb::named(&project.id).await,
        ControllerConfig {
            platforms,
            ..ControllerConfig::default()
        },
    )
    .await;
    for (name, key, value) in [
        ("tokens", "supabase", token.expose()),
        ("supabase-db", "password", PASSWORD),
    ] {
        let secret: Secret = serde_json::from_value(json!({
            "metadata": {"name": name},
            "stringData": {key: value},
        }))
        .unwrap();
        Api::<Secret>::default_namespaced(h.client())
            .create(&PostParams::default(), &secret)
            .await
            .unwrap();
    }
    let environment: tether::api::Environment = serde_json::from_value(json!({
        "apiVersion": "tether.dev/v1alpha1", "kind": "Environment",
        "metadata": {"name": "staging"},
        "spec": {
            "credentials": {"supabase": {"name": "tokens", "key": "supabase"}},
            "supabase": {"name": "acme-staging", "organizationId": "acme",
                "region": "eu-central-1",
                "databasePasswordSecretRef": {"name": "supabase-db", "key": "password"}},
        },
    }))
    .unwrap();
    Api::<tether::api::Environment>::default_namespaced(h.client())
        .create(&PostParams::default(), &environment)
        .await
        .unwrap();
    let migration: Migration = serde_json::from_value(json!({
        "apiVersion": "tether.dev/v1alpha1", "kind": "Migration",
        "metadata": {"name": "platform"},
        "spec": {"database": {"environmentRef": {"name": "staging"}},
            "source": inline(&[("1", "a", "create table a (id int);")])},
    }))
    .unwrap();
    h.migrations()
        .create(&PostParams::default(), &migration)
        .await
        .unwrap();
    let api = h.migrations();
    let waiting = eventually(WAIT, || async {
        let st = serde_json::to_value(api.get("platform").await.ok()?)
            .ok()?
            .get("status")?
            .clone();
        (condition(&st, "Ready")?["reason"] == "WaitingForDatabase").then_some(st)
    })
    .await;
    assert!(
        condition(&waiting, "Stalled").is_none_or(|c| c["status"] != "True"),
        "waiting, not stalled: {waiting}"
    );
    assert!(!h.db.table_exists("a").await);
    let status = h.wait_for("platform", "Applied", "Ready", "True").await;
    assert_eq!(status["applied"][0]["version"], "1", "{status}");
    assert!(
        h.db.table_exists("a").await,
        "applied in the project's database"
    );
    // The Environment set the project's password to its Secret's (adoption).
    assert!(sandbox.exchanges().iter().any(|e| {
        e.path.ends_with("/database/password")
            && e.request_body == Some(json!({ "password": PASSWORD }))
    }));
    h.assert_password_hidden().await;
    h.stop().await;
    sandbox_shutdown.cancel();
}
