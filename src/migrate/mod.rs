//! The Postgres/Supabase migration engine: parse, lint, plan, lock, dry-run, apply,
//! record, verify. Used by `tether migrate …` ([`cli`]) and by the Migration controller
//! (through [`engine::run`], which returns a [`engine::RunReport`] as plain data).
//!
//! - [`source`]: migrations from an inline list, a ConfigMap data map or a directory,
//!   validated and ordered by numeric version.
//! - [`split`]: statements split exactly as the Supabase CLI splits them.
//! - [`shape`]: how each file has to run (plain, wrapped in its own `BEGIN`/`COMMIT`, or
//!   as written), and which files add enum values (a commit must follow them).
//! - [`lint`]: squawk rules mapped to Tether findings; destructive ones block.
//! - [`db`]: connection (TLS by `sslmode`), the Supabase history table, Tether's checksum
//!   table, the advisory lock, pipelined per-migration transactions, verify queries.
//! - [`engine`]: the pure plan, the run pipeline, the report and the metrics.
//!
//! No Kubernetes types here: the controller resolves the Migration's source and database
//! URL, calls [`engine::run`], and maps the report onto status, events and metrics.

pub mod cli;
pub mod db;
pub mod engine;
pub mod exec;
pub mod lint;
pub mod reconcile;
pub mod scratch;
pub mod shape;
pub mod source;
pub mod split;

pub use engine::{MigrationMetrics, Phase, Plan, RunReport, RunSpec, plan, run};
pub use lint::{Finding, LintPolicy};
pub use source::{Migration, MigrationSet, SourceError};
