//! `Migration`: an ordered set of SQL migrations for the Postgres database of an
//! Environment's Supabase project (or any Postgres reachable through a connection string),
//! applied with guard rails: lint, dry-run, advisory lock, timeouts, Supabase-compatible
//! history, checksums and verification.

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{Condition, LocalObjectRef, SecretKeyRef};

/// Schema migrations to apply to a database.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "tether.dev",
    version = "v1alpha1",
    kind = "Migration",
    plural = "migrations",
    shortname = "mig",
    category = "tether",
    namespaced,
    doc = "A Migration: ordered Postgres (Supabase) schema migrations applied with lint, dry-run, advisory lock, timeouts, Supabase-CLI-compatible history, checksums and verification.",
    status = "MigrationStatus",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Version","type":"string","description":"Latest applied version","jsonPath":".status.latestVersion"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Status","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].message"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct MigrationSpec {
    /// The database to migrate.
    pub database: DatabaseRef,
    /// Where the migrations come from.
    pub source: MigrationSource,
    /// Guard rails.
    #[serde(default)]
    pub policy: MigrationPolicy,
    /// Checks run after applying.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<Verify>,
    /// How often the history is re-read to detect edited or missing migrations. Between 1s and 168h.
    #[serde(default = "super::environment::default_interval")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"), length(max = 32))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1s') && duration(self) <= duration('168h')").message("must be between 1s and 168h"))]
    pub interval: String,
    /// Apply nothing while true.
    #[serde(default)]
    pub suspend: bool,
}

/// The database to migrate: an Environment's Supabase project, or a connection string.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.environmentRef) != has(self.connectionSecretRef)").message("set exactly one of environmentRef or connectionSecretRef"))]
pub struct DatabaseRef {
    /// An Environment (same namespace) whose Supabase project's database is migrated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment_ref: Option<LocalObjectRef>,
    /// A Secret key holding a Postgres connection string (`postgres://…`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_secret_ref: Option<SecretKeyRef>,
}

/// Where the SQL comes from.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.inline) != has(self.configMapRef)").message("set exactly one of inline or configMapRef"))]
pub struct MigrationSource {
    /// Migrations written in the manifest (at most 200; use a ConfigMap for more), a list
    /// keyed by `version`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 200))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["version".into()]))]
    pub inline: Option<Vec<InlineMigration>>,
    /// A ConfigMap whose keys are `<version>_<name>.sql` files, as a kustomize
    /// configMapGenerator makes from `supabase/migrations/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_ref: Option<LocalObjectRef>,
}

/// One migration written in the manifest.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InlineMigration {
    /// Version: digits, usually a UTC timestamp `YYYYMMDDHHMMSS`; applied in numeric order.
    #[schemars(regex(pattern = r"^[0-9]+$"), length(max = 32))]
    pub version: String,
    /// Name (the part after the version in a Supabase migration file name).
    #[schemars(regex(pattern = r"^[A-Za-z0-9_-]+$"), length(min = 1, max = 200))]
    pub name: String,
    /// The SQL.
    #[schemars(length(min = 1))]
    pub sql: String,
}

/// Guard rails.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct MigrationPolicy {
    /// Apply migrations with destructive lint findings (dropping tables or columns, type
    /// changes, renames, truncation) without acknowledging each finding.
    #[serde(default)]
    pub allow_destructive: bool,
    /// `lock_timeout` of each migration's transaction: fail fast instead of queueing
    /// behind a long-held lock. Between 0s (no limit) and 1h.
    #[serde(default = "default_lock_timeout")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"), length(max = 32))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('0s') && duration(self) <= duration('1h')").message("must be between 0s and 1h"))]
    pub lock_timeout: String,
    /// `statement_timeout` of each migration's transaction. Between 0s (no limit) and 24h.
    #[serde(default = "default_statement_timeout")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"), length(max = 32))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('0s') && duration(self) <= duration('24h')").message("must be between 0s and 24h"))]
    pub statement_timeout: String,
    /// Lint findings accepted for a given migration.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 500))]
    pub acknowledge: Vec<Acknowledgement>,
}

impl Default for MigrationPolicy {
    fn default() -> Self {
        Self {
            allow_destructive: false,
            lock_timeout: default_lock_timeout(),
            statement_timeout: default_statement_timeout(),
            acknowledge: Vec::new(),
        }
    }
}

fn default_lock_timeout() -> String {
    "5s".to_string()
}

fn default_statement_timeout() -> String {
    "5m".to_string()
}

/// Lint findings accepted for one migration.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Acknowledgement {
    /// The migration version.
    #[schemars(regex(pattern = r"^[0-9]+$"))]
    pub version: String,
    /// Lint rule names accepted for it (as reported in status, e.g. `ban-drop-column`).
    #[schemars(length(min = 1))]
    pub rules: Vec<String>,
    /// Why it is safe, for reviewers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Expectations checked after applying.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Verify {
    /// Tables that must exist (`schema.table`, or `table` in `public`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tables_exist: Vec<String>,
    /// Tables that must have row-level security enabled.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rls_enabled: Vec<String>,
}

/// The phases of a Migration.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum MigrationPhase {
    /// Not started.
    #[default]
    Pending,
    /// Linting pending migrations.
    Linting,
    /// A blocking lint finding stops the run.
    Blocked,
    /// Applying.
    Applying,
    /// Every migration is applied (and verified, when asked).
    Applied,
    /// A migration or a verification failed.
    Failed,
}

/// Observed state of a Migration.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MigrationStatus {
    /// The generation the status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Reconciling`, `Stalled`, `Verified` and domain conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Where the run is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<MigrationPhase>,
    /// The highest applied version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_version: Option<String>,
    /// Versions in the source not yet applied.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending: Vec<String>,
    /// Applied migrations.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub applied: Vec<AppliedMigration>,
    /// Lint findings of pending migrations.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub findings: Vec<LintFinding>,
}

/// A migration recorded as applied.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppliedMigration {
    /// Version.
    pub version: String,
    /// Name.
    pub name: String,
    /// When it was applied (RFC 3339), when Tether applied it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_at: Option<String>,
    /// How long it took, in milliseconds, when Tether applied it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<i64>,
    /// The migration's content no longer matches what was applied.
    #[serde(default)]
    pub checksum_mismatch: bool,
}

/// A lint finding.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LintFinding {
    /// Migration version.
    pub version: String,
    /// Rule name.
    pub rule: String,
    /// Line in the migration.
    pub line: i32,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    /// Whether the finding stops the run.
    pub blocking: bool,
}
