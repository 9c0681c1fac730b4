//! The Migration reconciler: observe (the connection Secret, or the Environment whose
//! Supabase database it targets; the ConfigMap source) → validate (durations, the source
//! through `migrate::reconcile::resolve_source`: file names `<version>_<name>.sql`,
//! unique versions; acknowledgements naming known versions) → act (the `crate::migrate`
//! engine: lint → dry-run → apply → verify, through the seam in `migrate::reconcile`) →
//! report (phase, pending/applied versions, findings, `Ready`/`Stalled`/`Verified`, one
//! event per migration applied or blocked, `tether_migration_*` metrics).
//!
//! The run gate ([`MigrationRuns`]): the database is only touched when the inputs changed
//! (generation, migration checksums, the Secret's resourceVersion), when the last run did
//! not settle (a transient failure), or once per `spec.interval` (the checksum and
//! missing-version check). Otherwise the reconcile reports the status it already has.
//!
//! The connection string is read from the Secret at act time and handed to the engine
//! only: it is never logged, nor put in status, events or errors. A database named by
//! `environmentRef` is the Environment's Supabase project's database: its project ref comes
//! from the Environment's status (once the project is ready), the host from
//! `--supabase-database-url` and the password from the Environment's
//! `databasePasswordSecretRef`.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kube::ResourceExt;

use crate::api::common::{ConditionStatus, SecretKeyRef, condition_types, parse_duration_within};
use crate::api::migration::{MigrationSpec, MigrationStatus};
use crate::api::{Condition, Migration};
use crate::controller::conditions::Verdict;
use crate::controller::error::ReconcileError;
use crate::controller::reconcile::{Context, Reconciled, Report, ReportEvent};
use crate::controller::references::{RefKind, Reference, Snapshot};
use crate::migrate::engine::RunReport;
use crate::migrate::reconcile::{
    EventType, SpecError, VERIFIED, events_from, requeue_after, resolve_source, run_migration,
    status_from,
};
use crate::migrate::source::MigrationSet;

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

fn invalid(reason: &'static str, message: String) -> ReconcileError {
    ReconcileError::ValidateSpec { reason, message }
}

fn spec_error(error: SpecError) -> ReconcileError {
    invalid(error.reason(), error.to_string())
}

/// Rejects acknowledgements naming a version the source does not hold (a typo would
/// otherwise silently acknowledge nothing).
pub fn check_acknowledgements(
    spec: &MigrationSpec,
    set: &MigrationSet,
) -> Result<(), ReconcileError> {
    for (i, ack) in spec.policy.acknowledge.iter().enumerate() {
        if set.get(&ack.version).is_none() {
            return Err(invalid(
                "UnknownVersion",
                format!(
                    "spec.policy.acknowledge[{i}].version {} names no migration of the source",
                    ack.version
                ),
            ));
        }
    }
    Ok(())
}

/// Checks the durations the engine will need.
pub fn validate(spec: &MigrationSpec) -> Result<std::time::Duration, ReconcileError> {
    for (field, value, max) in [
        ("spec.policy.lockTimeout", &spec.policy.lock_timeout, "1h"),
        (
            "spec.policy.statementTimeout",
            &spec.policy.statement_timeout,
            "24h",
        ),
    ] {
        parse_duration_within(value, "0s", max)
            .map_err(|e| invalid("InvalidDuration", format!("{field}: {e}")))?;
    }
    parse_duration_within(&spec.interval, "1s", "168h")
        .map_err(|e| invalid("InvalidInterval", format!("spec.interval: {e}")))
}

/// The status fields, verdict and `Verified` condition a Migration status stands for
/// (pure): used for a fresh run's status and to re-report a status when the run gate
/// skips the database.
pub fn report_from_status(status: &MigrationStatus) -> Report {
    let find = |type_: &str| status.conditions.iter().find(|c| c.type_ == type_);
    let stalled = find(condition_types::STALLED).is_some_and(|c| c.status == ConditionStatus::True);
    let verdict = match find(condition_types::READY) {
        Some(ready) if stalled => Verdict::Stalled {
            reason: ready.reason.clone(),
            message: ready.message.clone(),
        },
        Some(ready) if ready.status == ConditionStatus::True => Verdict::Ready {
            reason: ready.reason.clone(),
            message: ready.message.clone(),
        },
        Some(ready) => Verdict::NotReady {
            reason: ready.reason.clone(),
            message: ready.message.clone(),
        },
        None => Verdict::NotReady {
            reason: "Progressing".into(),
            message: "the migrations have not run yet".into(),
        },
    };
    let conditions: Vec<Condition> = find(VERIFIED).cloned().into_iter().collect();
    let fields = MigrationStatus {
        observed_generation: None,
        conditions: Vec::new(),
        ..status.clone()
    };
    let status = match serde_json::to_value(fields) {
        Ok(serde_json::Value::Object(map)) => map,
        _ => serde_json::Map::new(),
    };
    Report {
        verdict,
        status,
        requeue_after: None,
        conditions,
        events: Vec::new(),
    }
}

/// The last database run of each Migration, so reconciles triggered by the Migration's
/// own status writes (or by unrelated changes) do not run the engine again.
#[derive(Debug, Default)]
pub struct MigrationRuns {
    runs: Mutex<HashMap<String, LastRun>>,
}

#[derive(Clone, Copy, Debug)]
struct LastRun {
    inputs: u64,
    at: Instant,
    settled: bool,
}

impl MigrationRuns {
    /// How long the run of `key` with `inputs` may still be trusted, if at all.
    fn fresh(&self, key: &str, inputs: u64, interval: Duration) -> Option<Duration> {
        let runs = self.runs.lock().unwrap_or_else(|p| p.into_inner());
        let last = runs.get(key)?;
        let age = last.at.elapsed();
        (last.settled && last.inputs == inputs && age < interval).then(|| interval - age)
    }

    fn record(&self, key: &str, inputs: u64, settled: bool) {
        self.runs.lock().unwrap_or_else(|p| p.into_inner()).insert(
            key.to_string(),
            LastRun {
                inputs,
                at: Instant::now(),
                settled,
            },
        );
    }

    fn forget(&self, key: &str) {
        self.runs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }
}

/// A fingerprint of what a run depends on: the spec's generation, every migration's
/// checksum and the connection Secret's resourceVersion (never its value).
fn inputs(generation: Option<i64>, set: &MigrationSet, secret_version: Option<&str>) -> u64 {
    let mut hasher = DefaultHasher::new();
    generation.hash(&mut hasher);
    for m in set.migrations() {
        (&m.file, &m.checksum).hash(&mut hasher);
    }
    secret_version.hash(&mut hasher);
    hasher.finish()
}

/// Reads the connection string from the Secret key (returns the Secret's resourceVersion
/// beside it). Errors name the Secret and key, never the value.
async fn connection(
    ctx: &Context,
    namespace: &str,
    secret_ref: &SecretKeyRef,
    field: &str,
) -> Result<(String, Option<String>), ReconcileError> {
    let secret =
        crate::platform::credentials::read_secret(&ctx.client, namespace, &secret_ref.name)
            .await
            .map_err(|e| ReconcileError::from_secret_read(&secret_ref.name, e))?
            .ok_or_else(|| {
                ReconcileError::ResolveReferences(vec![crate::controller::references::Missing {
                    kind: crate::controller::references::RefKind::Secret,
                    name: secret_ref.name.clone(),
                    key: None,
                    field: field.to_string(),
                }])
            })?;
    let from_data = secret
        .data
        .as_ref()
        .and_then(|d| d.get(&secret_ref.key))
        .map(|b| String::from_utf8(b.0.clone()));
    let from_string = secret
        .string_data
        .as_ref()
        .and_then(|d| d.get(&secret_ref.key))
        .cloned();
    let url = match (from_data, from_string) {
        (Some(Ok(url)), _) | (None, Some(url)) => url,
        (Some(Err(_)), _) => {
            return Err(invalid(
                "InvalidSecret",
                format!(
                    "{field}: Secret {:?} key {:?} is not UTF-8 text",
                    secret_ref.name, secret_ref.key
                ),
            ));
        }
        (None, None) => {
            return Err(invalid(
                "SecretKeyNotFound",
                format!(
                    "{field}: Secret {:?} has no key {:?}",
                    secret_ref.name, secret_ref.key
                ),
            ));
        }
    };
    let url = url.trim().to_string();
    Ok((url, secret.resource_version()))
}

/// The connection to the database of Environment `name`'s Supabase project, once the
/// Environment controller has it ready: the host from `--supabase-database-url` with the
/// project ref, the password from the Environment's `databasePasswordSecretRef`. `None`
/// while the project is not ready yet. The second value changes whenever the connection
/// does (project ref, password Secret version).
async fn supabase_connection(
    ctx: &Context,
    namespace: &str,
    name: &str,
    env: &crate::api::Environment,
) -> Result<Option<(String, Option<String>)>, ReconcileError> {
    let Some(project) = &env.spec.supabase else {
        return Err(invalid(
            "NoDatabase",
            format!(
                "spec.database.environmentRef: Environment {name:?} declares no Supabase project"
            ),
        ));
    };
    let ready = env.status.as_ref().and_then(|s| {
        s.objects.iter().find(|o| {
            o.platform == "supabase" && o.kind == "project" && o.name == project.name && o.ready
        })
    });
    let Some(project_ref) = ready.and_then(|o| o.id.as_deref()) else {
        return Ok(None);
    };
    let password_ref = &project.database_password_secret_ref;
    let field = format!("Environment {name:?} spec.supabase.databasePasswordSecretRef");
    let (password, version) = connection(ctx, namespace, password_ref, &field).await?;
    let url = supabase_database_url(&ctx.supabase_database_url, project_ref, &password)
        .ok_or_else(|| {
            invalid(
                "InvalidDatabaseUrl",
                format!(
                    "--supabase-database-url does not give a postgres:// URL for project {project_ref:?}"
                ),
            )
        })?;
    Ok(Some((
        url,
        Some(format!("{project_ref}/{}", version.unwrap_or_default())),
    )))
}

/// `template` with `{ref}` replaced by the project ref and the password set (percent-encoded).
/// `None` when the result is not a `postgres://` URL.
pub fn supabase_database_url(template: &str, project_ref: &str, password: &str) -> Option<String> {
    let mut url = url::Url::parse(&template.replace("{ref}", project_ref)).ok()?;
    if !matches!(url.scheme(), "postgres" | "postgresql") {
        return None;
    }
    url.set_password(Some(password)).ok()?;
    Some(url.to_string())
}

/// Not ready: the Environment's Supabase project is not ready yet (looked at again when the
/// Environment changes, and on the pending interval).
fn waiting_for_database(environment: &str, ctx: &Context) -> Report {
    Report {
        verdict: Verdict::NotReady {
            reason: "WaitingForDatabase".into(),
            message: format!(
                "Waiting for Environment {environment:?}'s Supabase project to be ready"
            ),
        },
        status: serde_json::Map::new(),
        requeue_after: Some(ctx.pending_interval),
        conditions: Vec::new(),
        events: Vec::new(),
    }
}

/// The run's events (`migrate::reconcile::events_from`), each with an action naming the
/// migration or table it is about, so the shared Recorder keeps one event per migration
/// instead of folding them into one series.
fn report_events(run: &RunReport) -> Vec<ReportEvent> {
    let blocked: BTreeSet<&str> = run.blocking().map(|f| f.version.as_str()).collect();
    let mut applied = run.applied.iter().map(|a| format!("Apply {}", a.version));
    let mut blocked = blocked.into_iter().map(|v| format!("Lint {v}"));
    let mut verify = run
        .verify
        .iter()
        .filter(|v| !v.ok)
        .map(|v| format!("Verify {}", v.table));
    events_from(run)
        .into_iter()
        .map(|e| {
            let action = match e.reason {
                "MigrationApplied" => applied.next(),
                "MigrationBlocked" => blocked.next(),
                "VerifyFailed" => verify.next(),
                _ => None,
            };
            ReportEvent {
                warning: e.type_ == EventType::Warning,
                reason: e.reason.to_string(),
                note: e.note,
                always: false,
                action: action.unwrap_or_else(|| "Reconcile".into()),
            }
        })
        .collect()
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
        let config_map = self
            .spec
            .source
            .config_map_ref
            .as_ref()
            .and_then(|r| snapshot.config_map(&r.name));
        let set = resolve_source(&self.spec.source, config_map).map_err(spec_error)?;
        check_acknowledgements(&self.spec, &set)?;
        let (url, secret_version) = match (
            &self.spec.database.connection_secret_ref,
            &self.spec.database.environment_ref,
        ) {
            (Some(secret_ref), _) => {
                connection(
                    ctx,
                    &namespace,
                    secret_ref,
                    "spec.database.connectionSecretRef",
                )
                .await?
            }
            (None, Some(env_ref)) => {
                let Some(env) = snapshot.environment(&env_ref.name) else {
                    // `missing` above already stalls on an absent Environment.
                    return Err(ReconcileError::Unidentified);
                };
                match supabase_connection(ctx, &namespace, &env_ref.name, env).await? {
                    Some(connection) => connection,
                    None => return Ok(waiting_for_database(&env_ref.name, ctx)),
                }
            }
            (None, None) => {
                return Err(invalid(
                    "NoDatabase",
                    "spec.database names neither a connectionSecretRef nor an \
                     environmentRef"
                        .into(),
                ));
            }
        };
        let key = format!("{namespace}/{}", self.name_any());
        let generation = self.metadata.generation;
        let fingerprint = inputs(generation, &set, secret_version.as_deref());
        if let (Some(status), Some(remaining)) = (
            &self.status,
            ctx.migration_runs.fresh(&key, fingerprint, interval),
        ) {
            tracing::debug!("inputs unchanged since the last run; not touching the database");
            let mut report = report_from_status(status);
            report.requeue_after = Some(remaining);
            return Ok(report);
        }

        let run = run_migration(&self.spec, &set, &url)
            .await
            .map_err(spec_error)?;
        ctx.metrics.migration().observe(&run);
        tracing::info!(
            phase = ?run.phase,
            applied = run.applied.len(),
            pending = run.pending.len(),
            findings = run.findings.len(),
            elapsed_ms = run.elapsed.as_millis() as u64,
            "migration run finished"
        );
        let now = jiff::Timestamp::now()
            .round(jiff::Unit::Second)
            .unwrap_or_else(|_| jiff::Timestamp::now())
            .to_string();
        let status = status_from(&run, generation, self.status.as_ref(), &now);
        let mut report = report_from_status(&status);
        let settled = !matches!(report.verdict, Verdict::NotReady { .. });
        ctx.migration_runs.record(&key, fingerprint, settled);
        report.requeue_after = Some(requeue_after(&run, interval));
        report.events = report_events(&run);
        Ok(report)
    }

    async fn cleanup(&self, ctx: &Context) -> Result<(), ReconcileError> {
        // Applied migrations are never reverted on deletion; only forget the last run.
        let namespace = self.namespace().unwrap_or_default();
        ctx.migration_runs
            .forget(&format!("{namespace}/{}", self.name_any()));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_supabase_database_url_carries_the_project_ref_and_the_encoded_password() {
        let url = supabase_database_url(
            crate::controller::DEFAULT_SUPABASE_DATABASE_URL,
            "abcdefghijklmnop",
            "p@ss word/1",
        )
        .unwrap();
        assert_eq!(
            url,
            "postgres://postgres:p%40ss%20word%2F1@db.abcdefghijklmnop.supabase.co:5432/postgres?sslmode=require"
        );
        assert_eq!(supabase_database_url("https://x/{ref}", "r", "p"), None);
    }
    use std::collections::BTreeMap;

    fn spec(source: serde_json::Value) -> MigrationSpec {
        serde_json::from_value(serde_json::json!({
            "database": {"environmentRef": {"name": "prod"}},
            "source": source,
        }))
        .unwrap()
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
    fn an_acknowledgement_of_an_unknown_version_is_rejected() {
        let mut spec =
            spec(serde_json::json!({"inline": [{"version": "1", "name": "a", "sql": "x"}]}));
        let set = resolve_source(&spec.source, None).unwrap();
        spec.policy.acknowledge = serde_json::from_value(serde_json::json!([
            {"version": "2", "rules": ["ban-drop-table"]}]))
        .unwrap();
        let err = check_acknowledgements(&spec, &set).unwrap_err();
        assert_eq!(err.kind(), "UnknownVersion");
    }

    #[test]
    fn a_badly_named_config_map_key_is_an_invalid_source() {
        let spec = spec(serde_json::json!({"configMapRef": {"name": "sql"}}));
        let data = BTreeMap::from([("init.sql".to_string(), "select 1;".to_string())]);
        let err = spec_error(resolve_source(&spec.source, Some(&data)).unwrap_err());
        assert_eq!(err.kind(), "InvalidSource");
        assert!(err.stall_message().contains("init.sql"), "{err}");
    }

    #[test]
    fn an_unparseable_lock_timeout_is_an_invalid_spec() {
        let mut spec = spec(serde_json::json!({"inline": []}));
        spec.policy.lock_timeout = "forever".into();
        assert_eq!(validate(&spec).unwrap_err().kind(), "InvalidDuration");
    }

    fn condition(type_: &str, status: ConditionStatus, reason: &str) -> Condition {
        Condition {
            type_: type_.into(),
            status,
            observed_generation: None,
            last_transition_time: "t".into(),
            reason: reason.into(),
            message: format!("{reason} message"),
        }
    }

    #[test]
    fn a_status_maps_back_to_its_verdict_fields_and_verified_condition() {
        let status: MigrationStatus = serde_json::from_value(serde_json::json!({
            "observedGeneration": 2,
            "phase": "Blocked",
            "pending": ["5"],
        }))
        .unwrap();
        let status = MigrationStatus {
            conditions: vec![
                condition("Ready", ConditionStatus::False, "MigrationBlocked"),
                condition("Stalled", ConditionStatus::True, "MigrationBlocked"),
                condition(VERIFIED, ConditionStatus::False, "VerifyFailed"),
            ],
            ..status
        };
        let report = report_from_status(&status);
        assert!(report.verdict.is_stalled());
        assert_eq!(report.status["phase"], "Blocked");
        assert_eq!(report.status["pending"], serde_json::json!(["5"]));
        assert!(!report.status.contains_key("conditions"));
        assert!(!report.status.contains_key("observedGeneration"));
        assert_eq!(report.conditions.len(), 1);
        assert_eq!(report.conditions[0].type_, VERIFIED);
        let transient = MigrationStatus {
            conditions: vec![condition("Ready", ConditionStatus::False, "LockTimeout")],
            ..MigrationStatus::default()
        };
        assert!(matches!(
            report_from_status(&transient).verdict,
            Verdict::NotReady { .. }
        ));
    }

    #[test]
    fn the_run_gate_trusts_a_settled_run_with_the_same_inputs_within_the_interval() {
        let runs = MigrationRuns::default();
        let hour = Duration::from_secs(3600);
        assert_eq!(runs.fresh("ns/a", 1, hour), None);
        runs.record("ns/a", 1, true);
        assert!(runs.fresh("ns/a", 1, hour).is_some());
        assert_eq!(runs.fresh("ns/a", 2, hour), None, "inputs changed");
        assert_eq!(
            runs.fresh("ns/a", 1, Duration::ZERO),
            None,
            "interval passed"
        );
        runs.record("ns/a", 1, false);
        assert_eq!(runs.fresh("ns/a", 1, hour), None, "transient failure");
        runs.record("ns/a", 1, true);
        runs.forget("ns/a");
        assert_eq!(runs.fresh("ns/a", 1, hour), None);
    }

    #[test]
    fn the_fingerprint_changes_with_generation_sql_and_secret_version() {
        let a = MigrationSet::from_inline([("1_a.sql", "select 1;")]).unwrap();
        let b = MigrationSet::from_inline([("1_a.sql", "select 2;")]).unwrap();
        let base = inputs(Some(1), &a, Some("10"));
        assert_eq!(base, inputs(Some(1), &a, Some("10")));
        assert_ne!(base, inputs(Some(2), &a, Some("10")));
        assert_ne!(base, inputs(Some(1), &b, Some("10")));
        assert_ne!(base, inputs(Some(1), &a, Some("11")));
    }

    #[test]
    fn each_applied_migration_gets_an_event_with_its_own_action() {
        use crate::migrate::engine::Applied;
        let mut run = RunReport::new();
        run.applied = ["1", "2"]
            .iter()
            .map(|v| Applied {
                version: v.to_string(),
                name: "m".into(),
                applied_at: "t".into(),
                duration: Duration::from_millis(3),
            })
            .collect();
        let events = report_events(&run);
        let actions: Vec<&str> = events.iter().map(|e| e.action.as_str()).collect();
        assert_eq!(actions, ["Apply 1", "Apply 2"]);
        assert!(
            events
                .iter()
                .all(|e| e.reason == "MigrationApplied" && !e.warning)
        );
    }
}
