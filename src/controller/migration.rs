//! The Migration reconciler: observe (the Environment whose Supabase database it targets,
//! or the connection Secret; the ConfigMap source) → validate (durations, ConfigMap file
//! names `<version>_<name>.sql` as the Supabase CLI writes them, unique versions,
//! acknowledgements naming known versions) → plan (the ordered migrations, a pure value)
//! → act (the `crate::migrate` engine applies the plan here in a later step; nothing is
//! applied today) → report (phase `Pending`, the pending versions).

use std::collections::BTreeMap;
use std::fmt;

use kube::ResourceExt;

use crate::api::Migration;
use crate::api::common::parse_duration;
use crate::api::migration::{MigrationPhase, MigrationSpec};
use crate::controller::conditions::{REASON_REFERENCES_RESOLVED, Verdict};
use crate::controller::error::ReconcileError;
use crate::controller::reconcile::{Context, Reconciled, Report};
use crate::controller::references::{RefKind, Reference, Snapshot};

/// Every object a Migration names.
pub fn references(spec: &MigrationSpec) -> Vec<Reference> {
    let mut refs = Vec::new();
    if let Some(env) = &spec.database.environment_ref {
        refs.push(Reference::object(
            RefKind::Environment,
            &env.name,
            "spec.database.environmentRef",
        ));
    }
    if let Some(secret) = &spec.database.connection_secret_ref {
        refs.push(Reference::secret_key(
            secret,
            "spec.database.connectionSecretRef",
        ));
    }
    if let Some(config_map) = &spec.source.config_map_ref {
        refs.push(Reference::object(
            RefKind::ConfigMap,
            &config_map.name,
            "spec.source.configMapRef",
        ));
    }
    refs
}

/// One migration file of the source.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PlannedMigration {
    /// Numeric version, e.g. `20240101120000`.
    pub version: String,
    /// Name after the version.
    pub name: String,
}

/// The migrations to apply, ordered by version: the input of the migrate engine.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MigrationPlan {
    /// Migrations in version order.
    pub migrations: Vec<PlannedMigration>,
}

impl fmt::Display for MigrationPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for m in &self.migrations {
            writeln!(f, "apply {}_{}", m.version, m.name)?;
        }
        Ok(())
    }
}

fn invalid(reason: &'static str, message: String) -> ReconcileError {
    ReconcileError::ValidateSpec { reason, message }
}

/// Parses a ConfigMap key of the form `<version>_<name>.sql`; other keys (a README) are
/// not migrations and yield `None`.
fn parse_file_name(key: &str) -> Option<Result<PlannedMigration, String>> {
    let stem = key.strip_suffix(".sql")?;
    let Some((version, name)) = stem.split_once('_') else {
        return Some(Err(key.to_string()));
    };
    let version_ok = !version.is_empty() && version.bytes().all(|b| b.is_ascii_digit());
    let name_ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    Some(if version_ok && name_ok {
        Ok(PlannedMigration {
            version: version.to_string(),
            name: name.to_string(),
        })
    } else {
        Err(key.to_string())
    })
}

/// Plans the migrations of `spec`, reading a ConfigMap source from `config_map` (pure).
pub fn plan(
    spec: &MigrationSpec,
    config_map: Option<&BTreeMap<String, String>>,
) -> Result<MigrationPlan, ReconcileError> {
    let mut migrations: Vec<PlannedMigration> = match (&spec.source.inline, config_map) {
        (Some(inline), _) => inline
            .iter()
            .map(|m| PlannedMigration {
                version: m.version.clone(),
                name: m.name.clone(),
            })
            .collect(),
        (None, Some(data)) => {
            let name = spec
                .source
                .config_map_ref
                .as_ref()
                .map(|r| r.name.as_str())
                .unwrap_or_default();
            let mut parsed = Vec::new();
            for key in data.keys() {
                match parse_file_name(key) {
                    Some(Ok(m)) => parsed.push(m),
                    Some(Err(bad)) => {
                        return Err(invalid(
                            "InvalidSource",
                            format!(
                                "ConfigMap {name:?} key {bad:?} is not named <version>_<name>.sql"
                            ),
                        ));
                    }
                    None => {}
                }
            }
            if parsed.is_empty() {
                return Err(invalid(
                    "InvalidSource",
                    format!("ConfigMap {name:?} holds no <version>_<name>.sql keys"),
                ));
            }
            parsed
        }
        (None, None) => Vec::new(),
    };
    migrations.sort_by(|a, b| (a.version.len(), &a.version).cmp(&(b.version.len(), &b.version)));
    if let Some(pair) = migrations.windows(2).find(|w| w[0].version == w[1].version) {
        return Err(invalid(
            "DuplicateVersion",
            format!(
                "migration version {} appears more than once",
                pair[0].version
            ),
        ));
    }
    for (i, ack) in spec.policy.acknowledge.iter().enumerate() {
        if !migrations.iter().any(|m| m.version == ack.version) {
            return Err(invalid(
                "UnknownVersion",
                format!(
                    "spec.policy.acknowledge[{i}].version {} names no migration of the source",
                    ack.version
                ),
            ));
        }
    }
    Ok(MigrationPlan { migrations })
}

/// Checks the durations the engine will need.
pub fn validate(spec: &MigrationSpec) -> Result<std::time::Duration, ReconcileError> {
    for (field, value) in [
        ("spec.policy.lockTimeout", &spec.policy.lock_timeout),
        (
            "spec.policy.statementTimeout",
            &spec.policy.statement_timeout,
        ),
    ] {
        parse_duration(value).map_err(|e| invalid("InvalidDuration", format!("{field}: {e}")))?;
    }
    parse_duration(&spec.interval)
        .map_err(|e| invalid("InvalidInterval", format!("spec.interval: {e}")))
}

/// The status fields of a resolved Migration (pure).
pub fn report(plan: &MigrationPlan) -> Report {
    let pending: Vec<&str> = plan.migrations.iter().map(|m| m.version.as_str()).collect();
    let mut status = serde_json::Map::new();
    status.insert("phase".into(), serde_json::json!(MigrationPhase::Pending));
    status.insert("pending".into(), serde_json::json!(pending));
    Report {
        verdict: Verdict::Ready {
            reason: REASON_REFERENCES_RESOLVED.into(),
            message: format!(
                "All references resolved; {} migration(s) pending (applying not yet enabled)",
                pending.len()
            ),
        },
        status,
        requeue_after: None,
    }
}

impl Reconciled for Migration {
    const CONTROLLER: &'static str = "migration";

    async fn apply(&self, ctx: &Context) -> Result<Report, ReconcileError> {
        if self.spec.suspend {
            return Ok(Report::suspended());
        }
        let interval = validate(&self.spec)?;
        let namespace = self.namespace().ok_or(ReconcileError::Unidentified)?;
        let refs = references(&self.spec);
        let snapshot = Snapshot::read(&ctx.client, &namespace, &refs).await?;
        let missing = snapshot.missing(&refs);
        if !missing.is_empty() {
            return Err(ReconcileError::ResolveReferences(missing));
        }
        if let Some(env_ref) = &self.spec.database.environment_ref
            && snapshot
                .environment(&env_ref.name)
                .is_some_and(|env| env.spec.supabase.is_none())
        {
            return Err(invalid(
                "NoDatabase",
                format!(
                    "spec.database.environmentRef: Environment {:?} declares no Supabase project",
                    env_ref.name
                ),
            ));
        }
        let config_map = self
            .spec
            .source
            .config_map_ref
            .as_ref()
            .and_then(|r| snapshot.config_map(&r.name));
        let plan = plan(&self.spec, config_map)?;
        tracing::debug!(%plan, "planned");
        // Act — the seam for the migrate engine (branch `migrate`, not on main yet): read the
        // database URL (the connection Secret's key, or the Environment's Supabase
        // database), build the set with `migrate::reconcile::resolve_source(&spec.source,
        // config_map)`, run `migrate::reconcile::run_migration`, and report with
        // `migrate::reconcile::status_from` instead of `report(&plan)` below. Until then
        // nothing is applied and every version is reported pending.
        let mut report = report(&plan);
        report.requeue_after = Some(interval);
        Ok(report)
    }

    async fn cleanup(&self, _ctx: &Context) -> Result<(), ReconcileError> {
        // Applied migrations are never reverted on deletion; nothing else to release.
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(source: serde_json::Value) -> MigrationSpec {
        serde_json::from_value(serde_json::json!({
            "database": {"environmentRef": {"name": "prod"}},
            "source": source,
        }))
        .unwrap()
    }

    fn data(keys: &[&str]) -> BTreeMap<String, String> {
        keys.iter()
            .map(|k| (k.to_string(), "select 1;".to_string()))
            .collect()
    }

    #[test]
    fn the_environment_and_the_config_map_are_references() {
        let refs = references(&spec(serde_json::json!({"configMapRef": {"name": "sql"}})));
        let kinds: Vec<_> = refs.iter().map(|r| (r.kind, r.name.as_str())).collect();
        assert_eq!(
            kinds,
            [(RefKind::Environment, "prod"), (RefKind::ConfigMap, "sql")]
        );
    }

    #[test]
    fn a_connection_secret_is_a_secret_key_reference() {
        let spec: MigrationSpec = serde_json::from_value(serde_json::json!({
            "database": {"connectionSecretRef": {"name": "db", "key": "url"}},
            "source": {"inline": [{"version": "1", "name": "a", "sql": "select 1"}]},
        }))
        .unwrap();
        assert_eq!(
            references(&spec),
            [Reference::secret(
                "db",
                "url",
                "spec.database.connectionSecretRef"
            )]
        );
    }

    #[test]
    fn config_map_files_are_planned_in_version_order_and_other_keys_ignored() {
        let spec = spec(serde_json::json!({"configMapRef": {"name": "sql"}}));
        let plan = plan(
            &spec,
            Some(&data(&[
                "20240102000000_add_users.sql",
                "9_first.sql",
                "README.md",
            ])),
        )
        .unwrap();
        assert_eq!(
            plan.to_string(),
            "apply 9_first\napply 20240102000000_add_users\n"
        );
    }

    #[test]
    fn a_badly_named_sql_file_is_an_invalid_source_naming_the_key() {
        let spec = spec(serde_json::json!({"configMapRef": {"name": "sql"}}));
        let err = plan(&spec, Some(&data(&["init.sql"]))).unwrap_err();
        assert_eq!(err.kind(), "InvalidSource");
        assert!(err.stall_message().contains("\"init.sql\""));
    }

    #[test]
    fn a_config_map_without_migrations_is_invalid() {
        let spec = spec(serde_json::json!({"configMapRef": {"name": "sql"}}));
        assert_eq!(
            plan(&spec, Some(&data(&["notes.txt"]))).unwrap_err().kind(),
            "InvalidSource"
        );
    }

    #[test]
    fn duplicate_versions_across_files_are_rejected() {
        let spec = spec(serde_json::json!({"configMapRef": {"name": "sql"}}));
        let err = plan(&spec, Some(&data(&["1_a.sql", "1_b.sql"]))).unwrap_err();
        assert_eq!(err.kind(), "DuplicateVersion");
    }

    #[test]
    fn an_acknowledgement_of_an_unknown_version_is_rejected() {
        let mut spec =
            spec(serde_json::json!({"inline": [{"version": "1", "name": "a", "sql": "x"}]}));
        spec.policy.acknowledge = serde_json::from_value(serde_json::json!([
            {"version": "2", "rules": ["ban-drop-table"]}]))
        .unwrap();
        assert_eq!(plan(&spec, None).unwrap_err().kind(), "UnknownVersion");
    }

    #[test]
    fn the_report_lists_every_version_as_pending() {
        let spec = spec(serde_json::json!({"inline": [
            {"version": "2", "name": "b", "sql": "x"}, {"version": "1", "name": "a", "sql": "x"}]}));
        let report = report(&plan(&spec, None).unwrap());
        assert_eq!(report.status["pending"], serde_json::json!(["1", "2"]));
        assert_eq!(report.status["phase"], "Pending");
    }

    #[test]
    fn an_unparseable_lock_timeout_is_an_invalid_spec() {
        let mut spec = spec(serde_json::json!({"inline": []}));
        spec.policy.lock_timeout = "forever".into();
        assert_eq!(validate(&spec).unwrap_err().kind(), "InvalidDuration");
    }
}
