//! The database side of the engine: connecting (TLS per `sslmode`), the Supabase history
//! table and Tether's checksum table, the advisory lock, the bookkeeping inserts, and the
//! verify queries. Running the migrations' statements is [`super::exec`].
//!
//! History table: created with the very statements the Supabase CLI uses
//! (`apps/cli-go/pkg/migration/history.go`), so `supabase migration list` and Tether read
//! the same rows: schema `supabase_migrations`, table `schema_migrations (version text NOT
//! NULL PRIMARY KEY, statements text[], name text)`, one row per migration inserted in the
//! migration's own transaction. Both are created only when there is something to apply, in
//! the transaction of the first migration, so a run that applies nothing leaves nothing.
//!
//! Checksums: the CLI keeps none, so Tether keeps them in
//! `supabase_migrations.tether_migration_checksums`, written in the same transaction. The
//! `supabase_migrations` schema is on the CLI's exclude lists (`InternalSchemas` and
//! `excludedSchemas` in `pkg/migration/dump.go`, and `db diff`), so `supabase db dump` and
//! `db diff` leave Tether's bookkeeping out, and `db reset` truncates it together with the
//! history. Older Tether versions kept the table in a schema of its own, `tether`, which
//! dumps did include; the first run that writes moves those rows over and drops the old
//! table (and the schema when nothing else is in it). A `tether.migration_checksums` with
//! no rows is left alone: that is a replayed dump's table, part of the user's schema now.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::error::{ErrorPosition, SqlState};
use tokio_postgres::{Client, Config, NoTls, Statement as Prepared};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::lint::Object;
use super::source::Migration;
use super::split::line_of;

/// The advisory lock key every Tether runner takes ("tethermg" in ASCII).
pub const ADVISORY_LOCK_KEY: i64 = 0x7465_7468_6572_6d67;

/// The Supabase CLI's history-table bootstrap, statement for statement.
const CREATE_HISTORY: &[&str] = &[
    "SET lock_timeout = '4s'",
    "CREATE SCHEMA IF NOT EXISTS supabase_migrations",
    "CREATE TABLE IF NOT EXISTS supabase_migrations.schema_migrations (version text NOT NULL PRIMARY KEY)",
    "ALTER TABLE supabase_migrations.schema_migrations ADD COLUMN IF NOT EXISTS statements text[]",
    "ALTER TABLE supabase_migrations.schema_migrations ADD COLUMN IF NOT EXISTS name text",
];
/// Tether's checksum table, next to the history, and the move from the old location.
const CREATE_CHECKSUMS: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS supabase_migrations.tether_migration_checksums (version text NOT NULL PRIMARY KEY, checksum text NOT NULL, statements_sha256 text, applied_at timestamptz NOT NULL DEFAULT now(), duration_ms double precision NOT NULL)",
    "DO $tether$ DECLARE kept bigint; BEGIN \
       IF to_regclass('tether.migration_checksums') IS NOT NULL THEN \
         EXECUTE 'SELECT count(*) FROM tether.migration_checksums' INTO kept; \
         IF kept > 0 THEN \
           EXECUTE 'INSERT INTO supabase_migrations.tether_migration_checksums (version, checksum, applied_at, duration_ms) \
                    SELECT version, checksum, applied_at, duration_ms FROM tether.migration_checksums \
                    ON CONFLICT (version) DO NOTHING'; \
           EXECUTE 'DROP TABLE tether.migration_checksums'; \
           BEGIN EXECUTE 'DROP SCHEMA tether'; EXCEPTION WHEN dependent_objects_still_exist THEN NULL; END; \
         END IF; \
       END IF; \
     EXCEPTION WHEN undefined_column OR datatype_mismatch THEN NULL; \
     END $tether$",
    "RESET lock_timeout",
];
/// The Supabase CLI's insert (same columns and values), guarded: it only inserts in the
/// transaction Tether opened for the file (`$4`, its id). A statement that ended that
/// transaction early (a COMMIT the shape check missed) makes it insert nothing, and the
/// file is then not recorded as applied.
const INSERT_HISTORY: &str = "INSERT INTO supabase_migrations.schema_migrations(version, name, statements) \
     SELECT $1::text, $2::text, $3::text[] WHERE txid_current() = $4::bigint";
/// `applied_at` is when the file started and `duration_ms` the server time it took
/// (`tether.file_started`, set before the file's first statement; the transaction start
/// if the file reset it).
const INSERT_CHECKSUM: &str = "WITH started AS (SELECT coalesce(to_timestamp(nullif(current_setting('tether.file_started', true), '')::float8), now()) AS at) \
     INSERT INTO supabase_migrations.tether_migration_checksums(version, checksum, statements_sha256, applied_at, duration_ms) \
     SELECT $1::text, $2::text, $3::text, started.at, extract(epoch from clock_timestamp() - started.at) * 1000 FROM started \
     WHERE txid_current() = $4::bigint \
     ON CONFLICT (version) DO UPDATE SET checksum = EXCLUDED.checksum, statements_sha256 = EXCLUDED.statements_sha256, applied_at = EXCLUDED.applied_at, duration_ms = EXCLUDED.duration_ms \
     RETURNING to_char(applied_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), duration_ms";

/// The SQL that creates the history and checksum tables (idempotent), for the start of the
/// first transaction that records a migration.
pub fn bootstrap_sql() -> String {
    [CREATE_HISTORY, CREATE_CHECKSUMS].concat().join(";\n")
}

/// A digest of a history row's `statements`, to tell whether the row Tether recorded was
/// rewritten by another tool since (then Tether's checksum no longer describes it).
pub fn statements_digest<S: AsRef<str>>(statements: &[S]) -> String {
    let mut bytes = Vec::new();
    for s in statements {
        bytes.extend_from_slice(s.as_ref().as_bytes());
        bytes.push(0);
    }
    super::source::sha256_hex(&bytes)
}

/// Why talking to the database failed (migration failures are [`StatementFailed`]).
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The database URL could not be parsed. The URL itself is not repeated (it may hold a password).
    #[error("failed to parse the database URL {masked}: {reason}")]
    BadUrl {
        /// The URL with its password masked.
        masked: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The connection (or TLS set-up) failed.
    #[error("failed to connect to {masked}: {reason}")]
    Connect {
        /// The URL with its password masked.
        masked: String,
        /// Why.
        reason: String,
    },
    /// Another runner held the advisory lock for longer than the wait allows.
    #[error(
        "failed to take the migration lock within {waited:?}: another runner is applying migrations"
    )]
    LockBusy {
        /// How long this runner waited.
        waited: Duration,
    },
    /// A bookkeeping query failed.
    #[error("failed to {step}: {}", describe(source))]
    Query {
        /// What Tether was doing.
        step: &'static str,
        /// The driver's error.
        source: tokio_postgres::Error,
    },
    /// A statement of the file ended Tether's transaction (a COMMIT or ROLLBACK that the
    /// shape check did not see), so it could not be applied atomically; it was not recorded
    /// as applied.
    #[error(
        "failed to apply migration {file}: a statement of the file ended the migration transaction (COMMIT or ROLLBACK); statements before that were committed and it is not recorded as applied; put BEGIN/COMMIT on lines of their own, or remove them"
    )]
    EndedTransaction {
        /// The migration file.
        file: String,
    },
    /// A migration statement failed.
    #[error(transparent)]
    Statement(#[from] Box<StatementFailed>),
    /// The server answered something Tether did not expect.
    #[error("failed to run the migrations: unexpected answer from the database: {0}")]
    Protocol(String),
}

/// The driver's error with Postgres's own message and SQLSTATE when the server sent one
/// (tokio-postgres alone displays a server error as just "db error"), else the error and its
/// cause. Neither carries the connection string.
pub(crate) fn describe(error: &tokio_postgres::Error) -> String {
    if let Some(db) = error.as_db_error() {
        return format!("{} (SQLSTATE {})", db.message(), db.code().code());
    }
    match std::error::Error::source(error) {
        Some(cause) => format!("{error}: {cause}"),
        None => error.to_string(),
    }
}

impl DbError {
    pub(crate) fn query(step: &'static str) -> impl FnOnce(tokio_postgres::Error) -> DbError {
        move |source| DbError::Query { step, source }
    }
}

/// A migration statement that Postgres rejected. The migration left no trace, unless it
/// runs as written (then `note` says what stays).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "failed to apply migration {file}: statement {index} (line {line}) failed: {message}{}{}{}\n{}",
    sqlstate.as_ref().map(|s| format!(" (SQLSTATE {s})")).unwrap_or_default(),
    detail.as_ref().map(|d| format!("\n{d}")).unwrap_or_default(),
    note.as_ref().map(|n| format!("\n{n}")).unwrap_or_default(),
    excerpt(statement)
)]
pub struct StatementFailed {
    /// The migration version.
    pub version: String,
    /// The migration file name.
    pub file: String,
    /// 1-based number of the statement in the file.
    pub index: usize,
    /// The statement's text.
    pub statement: String,
    /// 1-based line in the file: where Postgres reported the error, else where the statement starts.
    pub line: usize,
    /// Postgres's error message.
    pub message: String,
    /// The SQLSTATE code, when Postgres sent one.
    pub sqlstate: Option<String>,
    /// Postgres's DETAIL, if any.
    pub detail: Option<String>,
    /// What the failure left behind and what to do, when more than "nothing".
    pub note: Option<String>,
}

/// The first lines of a statement, for error messages.
fn excerpt(statement: &str) -> String {
    const MAX: usize = 400;
    if statement.len() <= MAX {
        return statement.to_string();
    }
    let mut end = MAX;
    while !statement.is_char_boundary(end) {
        end -= 1;
    }
    format!("{} …", &statement[..end])
}

/// The URL with any password replaced by `****` (URL and `key=value` forms).
pub fn mask_url(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(authority_end);
        let masked_authority = match authority.rsplit_once('@') {
            Some((userinfo, host)) => match userinfo.split_once(':') {
                Some((user, _)) => format!("{user}:****@{host}"),
                None => format!("{userinfo}@{host}"),
            },
            None => authority.to_string(),
        };
        let masked_tail = match tail.split_once('?') {
            Some((path, query)) => {
                let query = query
                    .split('&')
                    .map(|pair| match pair.split_once('=') {
                        Some((key, _)) if key.eq_ignore_ascii_case("password") => {
                            format!("{key}=****")
                        }
                        _ => pair.to_string(),
                    })
                    .collect::<Vec<_>>()
                    .join("&");
                format!("{path}?{query}")
            }
            None => tail.to_string(),
        };
        return format!("{scheme}://{masked_authority}{masked_tail}");
    }
    // Key/value form. A word that is no `key=value` pair is not shown either: a Secret
    // holding something else (a bare password or token) must not be echoed.
    url.split_whitespace()
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=****"),
            Some(_) => pair.to_string(),
            None => "****".to_string(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// How to secure the connection, from the URL's `sslmode` (libpq's meanings).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Tls {
    /// `disable`.
    Off,
    /// `prefer`/`allow` (the default) and `require`: encrypt, do not verify the certificate
    /// (libpq's behaviour without a root certificate).
    Unverified,
    /// `verify-ca`/`verify-full`: verify against the system roots plus `sslrootcert`
    /// (both check the host name here, which is stricter than libpq's `verify-ca`).
    Verified { root_cert: Option<String> },
}

/// Parses `url`, taking out `sslmode` and `sslrootcert` (which tokio-postgres does not
/// understand in their libpq forms).
fn parse_url(url: &str) -> Result<(Config, Tls), DbError> {
    let bad = |reason: String| DbError::BadUrl {
        masked: mask_url(url),
        reason,
    };
    let mut sslmode = None;
    let mut root_cert = None;
    let cleaned = match url.split_once('?') {
        Some((base, query)) if url.contains("://") => {
            let kept: Vec<&str> = query
                .split('&')
                .filter(|pair| match pair.split_once('=') {
                    Some(("sslmode", value)) => {
                        sslmode = Some(value.to_string());
                        false
                    }
                    Some(("sslrootcert", value)) => {
                        root_cert = Some(value.to_string());
                        false
                    }
                    _ => true,
                })
                .collect();
            if kept.is_empty() {
                base.to_string()
            } else {
                format!("{base}?{}", kept.join("&"))
            }
        }
        _ => url.to_string(),
    };
    let mut config: Config = cleaned
        .parse()
        .map_err(|e: tokio_postgres::Error| bad(e.to_string()))?;
    let tls = match sslmode.as_deref() {
        Some("disable") => {
            config.ssl_mode(tokio_postgres::config::SslMode::Disable);
            Tls::Off
        }
        None | Some("allow") | Some("prefer") => {
            config.ssl_mode(tokio_postgres::config::SslMode::Prefer);
            Tls::Unverified
        }
        Some("require") => {
            config.ssl_mode(tokio_postgres::config::SslMode::Require);
            Tls::Unverified
        }
        Some("verify-ca") | Some("verify-full") => {
            config.ssl_mode(tokio_postgres::config::SslMode::Require);
            Tls::Verified { root_cert }
        }
        Some(other) => return Err(bad(format!("unknown sslmode {other:?}"))),
    };
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(10));
    }
    config.application_name("tether-migrate");
    Ok((config, tls))
}

/// Opens one connection to `url`; the connection task runs on the current runtime.
pub async fn connect(url: &str) -> Result<Client, DbError> {
    let (config, tls) = parse_url(url)?;
    connect_with(url, config, tls).await
}

/// Opens one connection to database `dbname` on the server of `url` (same user, password
/// and TLS).
pub async fn connect_database(url: &str, dbname: &str) -> Result<Client, DbError> {
    let (mut config, tls) = parse_url(url)?;
    config.dbname(dbname);
    connect_with(url, config, tls).await
}

/// The database `url` names (libpq's default: the user name).
pub fn database_name(url: &str) -> Result<String, DbError> {
    let (config, _) = parse_url(url)?;
    Ok(config
        .get_dbname()
        .or(config.get_user())
        .unwrap_or("postgres")
        .to_string())
}

async fn connect_with(url: &str, config: Config, tls: Tls) -> Result<Client, DbError> {
    let failed = |reason: String| DbError::Connect {
        masked: mask_url(url),
        reason,
    };
    match tls {
        Tls::Off => {
            let (client, connection) = config
                .connect(NoTls)
                .await
                .map_err(|e| failed(describe(&e)))?;
            tokio::spawn(connection);
            Ok(client)
        }
        tls => {
            let connector = MakeRustlsConnect::new(rustls_config(&tls).map_err(failed)?);
            let (client, connection) = config
                .connect(connector)
                .await
                .map_err(|e| failed(describe(&e)))?;
            tokio::spawn(connection);
            Ok(client)
        }
    }
}

fn rustls_config(tls: &Tls) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    Ok(match tls {
        Tls::Verified { root_cert } => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
            if let Some(path) = root_cert {
                use rustls::pki_types::{CertificateDer, pem::PemObject};
                for cert in CertificateDer::pem_file_iter(path)
                    .map_err(|e| format!("sslrootcert {path}: {e}"))?
                {
                    roots
                        .add(cert.map_err(|e| format!("sslrootcert {path}: {e}"))?)
                        .map_err(|e| e.to_string())?;
                }
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        _ => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(EncryptOnly(provider)))
            .with_no_client_auth(),
    })
}

/// `sslmode=require`: the channel is encrypted and the handshake signatures are checked,
/// but the certificate chain is not (libpq does the same without a root certificate;
/// Supabase's server certificates chain to Supabase's own CA).
#[derive(Debug)]
struct EncryptOnly(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Takes the session-level advisory lock, waiting at most `wait` (Postgres's `lock_timeout`
/// applies to advisory locks too).
pub async fn lock(client: &Client, wait: Duration) -> Result<(), DbError> {
    let sql = format!(
        "SET lock_timeout = '{}ms'; SELECT pg_advisory_lock({ADVISORY_LOCK_KEY}); RESET lock_timeout",
        wait.as_millis().max(1)
    );
    match client.batch_execute(&sql).await {
        Ok(()) => Ok(()),
        Err(e) if e.code() == Some(&SqlState::LOCK_NOT_AVAILABLE) => {
            // The failed batch leaves the session-level SET in place; undo it.
            client
                .batch_execute("RESET lock_timeout")
                .await
                .map_err(DbError::query("reset lock_timeout"))?;
            Err(DbError::LockBusy { waited: wait })
        }
        Err(e) => Err(DbError::Query {
            step: "take the migration advisory lock",
            source: e,
        }),
    }
}

/// Releases the advisory lock (closing the connection releases it too).
pub async fn unlock(client: &Client) -> Result<(), DbError> {
    client
        .execute("SELECT pg_advisory_unlock($1)", &[&ADVISORY_LOCK_KEY])
        .await
        .map(drop)
        .map_err(DbError::query("release the migration advisory lock"))
}

/// Creates the history table (as the Supabase CLI does) and Tether's checksum table, and
/// moves checksums from the old `tether` schema, outside any migration (tests and tools;
/// runs do it in their first transaction).
pub async fn ensure_tables(client: &Client) -> Result<(), DbError> {
    client
        .batch_execute(&bootstrap_sql())
        .await
        .map_err(DbError::query("create the migration history tables"))
}

/// One row of the history, joined with Tether's checksum when there is one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppliedRow {
    /// The version.
    pub version: String,
    /// The name column (empty when NULL, as the CLI reads it).
    pub name: String,
    /// The statements column (NULL for rows written by very old CLI versions).
    pub statements: Option<Vec<String>>,
    /// Tether's checksum, absent for rows written by another tool (or rewritten since).
    pub checksum: Option<String>,
    /// When Tether applied it (RFC 3339, UTC), if Tether did.
    pub applied_at: Option<String>,
    /// How long it took on the server, if Tether applied it.
    pub duration: Option<Duration>,
}

/// Reads the applied migrations; an absent history table means nothing is applied.
/// Checksums come from `supabase_migrations.tether_migration_checksums`, or from the old
/// `tether.migration_checksums` while that has not been moved yet.
pub async fn read_history(client: &Client) -> Result<Vec<AppliedRow>, DbError> {
    let step = "read the migration history";
    let exists = client
        .query_one(
            "SELECT to_regclass('supabase_migrations.schema_migrations') IS NOT NULL, \
                    to_regclass('supabase_migrations.tether_migration_checksums') IS NOT NULL, \
                    to_regclass('tether.migration_checksums') IS NOT NULL",
            &[],
        )
        .await
        .map_err(DbError::query(step))?;
    let (history, checksums, legacy): (bool, bool, bool) =
        (exists.get(0), exists.get(1), exists.get(2));
    if !history {
        return Ok(Vec::new());
    }
    let joined = |table: &str, digest: &str| {
        format!(
            "SELECT h.version, coalesce(h.name, ''), h.statements, c.checksum, {digest}, \
                    to_char(c.applied_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), c.duration_ms::float8 \
             FROM supabase_migrations.schema_migrations h LEFT JOIN {table} c ON c.version = h.version"
        )
    };
    let plain = "SELECT version, coalesce(name, ''), statements, NULL::text, NULL::text, NULL::text, NULL::float8 \
                 FROM supabase_migrations.schema_migrations";
    let rows = if checksums {
        client
            .query(
                &joined(
                    "supabase_migrations.tether_migration_checksums",
                    "c.statements_sha256",
                ),
                &[],
            )
            .await
    } else if legacy {
        // A table of that name with other columns is the user's, not Tether's.
        match client
            .query(&joined("tether.migration_checksums", "NULL::text"), &[])
            .await
        {
            Ok(rows) => Ok(rows),
            Err(_) => client.query(plain, &[]).await,
        }
    } else {
        client.query(plain, &[]).await
    }
    .map_err(DbError::query(step))?;
    Ok(rows
        .iter()
        .map(|row| {
            let statements: Option<Vec<String>> = row.get(2);
            let digest: Option<String> = row.get(4);
            // Another tool rewrote the row after Tether recorded it (e.g. `supabase migration
            // repair` and `db push` with an edited file): the checksum describes a file that
            // is no longer the applied one.
            let rewritten = match (&digest, &statements) {
                (Some(d), Some(s)) => *d != statements_digest(s),
                _ => false,
            };
            AppliedRow {
                version: row.get(0),
                name: row.get(1),
                checksum: if rewritten { None } else { row.get(3) },
                statements,
                applied_at: row.get(5),
                duration: row
                    .get::<_, Option<f64>>(6)
                    .map(|ms| Duration::from_secs_f64(ms.max(0.0) / 1000.0)),
            }
        })
        .collect())
}

/// Which of `objects` exist in the database now (before the run), for lint.
pub async fn existing(
    client: &Client,
    objects: &[Object],
) -> Result<BTreeMap<Object, bool>, DbError> {
    if objects.is_empty() {
        return Ok(BTreeMap::new());
    }
    let mut kinds = Vec::new();
    let mut schemas = Vec::new();
    let mut names = Vec::new();
    let mut columns = Vec::new();
    for object in objects {
        let (kind, schema, name, column) = match object {
            Object::Relation { schema, name } => ("r", schema.as_str(), name.as_str(), ""),
            Object::Column {
                schema,
                table,
                column,
            } => ("c", schema.as_str(), table.as_str(), column.as_str()),
            Object::Type { schema, name } => ("t", schema.as_str(), name.as_str(), ""),
            Object::Schema { name } => ("s", "", name.as_str(), ""),
        };
        kinds.push(kind);
        schemas.push(schema);
        names.push(name);
        columns.push(column);
    }
    let rows = client
        .query(
            "SELECT CASE k \
               WHEN 'r' THEN to_regclass(format('%I.%I', s, n)) IS NOT NULL \
               WHEN 't' THEN to_regtype(format('%I.%I', s, n)) IS NOT NULL \
               WHEN 's' THEN EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = n) \
               ELSE EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass(format('%I.%I', s, n)) \
                            AND attname = c AND attnum > 0 AND NOT attisdropped) END \
             FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) WITH ORDINALITY AS x(k, s, n, c, i) ORDER BY i",
            &[&kinds, &schemas, &names, &columns],
        )
        .await
        .map_err(DbError::query("look up the objects the pending migrations touch"))?;
    Ok(objects
        .iter()
        .cloned()
        .zip(rows.iter().map(|r| r.get::<_, bool>(0)))
        .collect())
}

/// The per-transaction timeouts every migration runs under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// `SET LOCAL lock_timeout`.
    pub lock: Duration,
    /// `SET LOCAL statement_timeout`.
    pub statement: Duration,
}

impl Timeouts {
    /// `SET [LOCAL] lock_timeout …; SET [LOCAL] statement_timeout …`.
    pub(crate) fn set(&self, local: bool) -> String {
        let scope = if local { "SET LOCAL" } else { "SET" };
        format!(
            "{scope} lock_timeout = '{}ms'; {scope} statement_timeout = '{}ms'",
            self.lock.as_millis().max(1),
            self.statement.as_millis().max(1),
        )
    }
}

/// Whether a transaction's commit waits for its WAL flush.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// Wait (the server's `synchronous_commit` setting).
    WaitForFlush,
    /// Do not wait; the caller must call [`flush`] before reporting the migration applied.
    FlushLater,
}

/// Makes every earlier commit of this session durable: a transaction that takes a
/// transaction id writes a commit record, and its synchronous commit flushes the WAL up to
/// it, which includes every earlier (asynchronous) commit.
pub async fn flush(client: &Client) -> Result<(), DbError> {
    client
        .batch_execute("BEGIN; SET LOCAL synchronous_commit = on; SELECT txid_current(); COMMIT")
        .await
        .map_err(DbError::query("flush the applied migrations to disk"))
}

/// Prepared bookkeeping statements, reused for every migration of a run.
pub struct Recorder {
    pub(crate) history: Prepared,
    pub(crate) checksum: Prepared,
}

impl Recorder {
    /// Prepares the inserts (the tables must exist, possibly only in the open transaction).
    pub async fn prepare(client: &Client) -> Result<Recorder, DbError> {
        let step = "prepare the history inserts";
        Ok(Recorder {
            history: client
                .prepare(INSERT_HISTORY)
                .await
                .map_err(DbError::query(step))?,
            checksum: client
                .prepare(INSERT_CHECKSUM)
                .await
                .map_err(DbError::query(step))?,
        })
    }
}

/// What applying one migration recorded.
#[derive(Clone, Debug, PartialEq)]
pub struct Recorded {
    /// When the migration started (RFC 3339, UTC).
    pub applied_at: String,
    /// Server-side time the migration took.
    pub duration: Duration,
}

pub(crate) fn statement_failed(
    migration: &Migration,
    index: usize,
    error: &tokio_postgres::Error,
) -> Box<StatementFailed> {
    let statement = &migration.statements[index];
    let (message, sqlstate, detail, position) = match error.as_db_error() {
        Some(db) => (
            db.message().to_string(),
            Some(db.code().code().to_string()),
            db.detail().map(str::to_string),
            match db.position() {
                Some(ErrorPosition::Original(p)) => Some(*p as usize),
                _ => None,
            },
        ),
        None => (error.to_string(), None, None, None),
    };
    // Postgres positions are 1-based character positions within the statement.
    let offset_in_statement = position
        .and_then(|p| statement.text.char_indices().nth(p.saturating_sub(1)))
        .map_or(0, |(byte, _)| byte);
    Box::new(StatementFailed {
        version: migration.version.to_string(),
        file: migration.file.clone(),
        index: index + 1,
        statement: statement.text.clone(),
        line: line_of(&migration.sql, statement.offset + offset_in_statement),
        message,
        sqlstate,
        detail,
        note: None,
    })
}

/// Which check a verify result is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    /// The table exists.
    TableExists,
    /// Row-level security is enabled on the table (`pg_class.relrowsecurity`).
    RlsEnabled,
}

/// The outcome of one verify check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyResult {
    /// The table, as declared (`schema.table` or `table` for `public`).
    pub table: String,
    /// The check.
    pub check: Check,
    /// Whether it passed.
    pub ok: bool,
    /// A sentence naming the table.
    pub message: String,
}

/// Checks that each of `tables` exists and that each of `rls_tables` has RLS enabled.
pub async fn verify(
    client: &Client,
    tables: &[String],
    rls_tables: &[String],
) -> Result<Vec<VerifyResult>, DbError> {
    let step = "verify the declared tables";
    let lookup = client
        .prepare(
            "SELECT c.relrowsecurity FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
        )
        .await
        .map_err(DbError::query(step))?;
    let mut results = Vec::new();
    let checks = tables
        .iter()
        .map(|t| (t, Check::TableExists))
        .chain(rls_tables.iter().map(|t| (t, Check::RlsEnabled)));
    for (table, check) in checks {
        let (schema, name) = table.split_once('.').unwrap_or(("public", table.as_str()));
        let row = client
            .query_opt(&lookup, &[&schema, &name])
            .await
            .map_err(DbError::query(step))?;
        let rls: Option<bool> = row.map(|r| r.get(0));
        let (ok, message) = match (check, rls) {
            (_, None) => (false, format!("table {table} does not exist")),
            (Check::TableExists, Some(_)) => (true, format!("table {table} exists")),
            (Check::RlsEnabled, Some(true)) => {
                (true, format!("row-level security is enabled on {table}"))
            }
            (Check::RlsEnabled, Some(false)) => (
                false,
                format!("row-level security is not enabled on table {table}"),
            ),
        };
        results.push(VerifyResult {
            table: table.clone(),
            check,
            ok,
            message,
        });
    }
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_masked_in_urls_and_key_value_strings() {
        assert_eq!(
            mask_url("postgres://app:s3cr3t@db.example.com:5432/postgres?sslmode=require"),
            "postgres://app:****@db.example.com:5432/postgres?sslmode=require"
        );
        assert_eq!(
            mask_url("postgresql://u:p%40ss@h/db?password=x"),
            "postgresql://u:****@h/db?password=****"
        );
        assert_eq!(
            mask_url("postgres://postgres@127.0.0.1/postgres"),
            "postgres://postgres@127.0.0.1/postgres"
        );
        assert_eq!(
            mask_url("host=h password=secret user=u"),
            "host=h password=**** user=u"
        );
        assert_eq!(mask_url("s3cr3t-not-a-url"), "****");
    }

    #[test]
    fn sslmode_is_read_with_libpq_meanings() {
        let (_, tls) = parse_url("postgres://u@h/db?sslmode=require").unwrap();
        assert_eq!(tls, Tls::Unverified);
        let (_, tls) = parse_url("postgres://u@h/db?sslmode=disable").unwrap();
        assert_eq!(tls, Tls::Off);
        let (config, tls) = parse_url(
            "postgres://u@h/db?sslmode=verify-full&sslrootcert=/ca.pem&connect_timeout=3",
        )
        .unwrap();
        assert_eq!(
            tls,
            Tls::Verified {
                root_cert: Some("/ca.pem".into())
            }
        );
        assert_eq!(config.get_connect_timeout(), Some(&Duration::from_secs(3)));
        let err = parse_url("postgres://u:hunter2@h/db?sslmode=sometimes")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("sometimes") && !err.contains("hunter2"),
            "{err}"
        );
    }
}
