//! The Environment reconciler: observe (resolve every credentials Secret, env var Secret
//! and the Supabase password Secret), then for each platform in use observe → plan → act
//! through its driver ([`crate::sync`]), then report: one status entry per managed object,
//! `Ready`/`Reconciling`/`Stalled`, `<Platform>Synced` per platform and `DriftDetected`,
//! events for what was done, and the drift metrics. Cleanup removes (or orphans) every
//! platform object per `deletionPolicy` before the finalizer goes.

use std::time::Duration;

use kube::{Resource, ResourceExt};

use crate::api::common::condition_types::RECONCILING;
use crate::api::common::{DeletionPolicy, LocalObjectRef, parse_duration_within};
use crate::api::environment::{EnvironmentSpec, EnvironmentStatus, ManagedObject};
use crate::api::{Condition, ConditionStatus, EnvVar, Environment};
use crate::controller::conditions::{Verdict, is_stalled};
use crate::controller::decoded::Decoded;
use crate::controller::error::ReconcileError;
use crate::controller::progress;
use crate::controller::reconcile::{Context, Reconciled, Report, ReportEvent};
use crate::controller::references::{RefKind, Reference, Snapshot};
use crate::platform::Platform;
use crate::sync;
use crate::sync::run::{Failure, Mode, PlatformSync};

/// Every Secret key an Environment spec names, with the field that names it.
pub fn references(spec: &EnvironmentSpec) -> Vec<Reference> {
    let mut refs = Vec::new();
    let credentials = [
        ("render", &spec.credentials.render),
        ("vercel", &spec.credentials.vercel),
        ("fly", &spec.credentials.fly),
        ("supabase", &spec.credentials.supabase),
    ];
    for (platform, token) in credentials {
        if let Some(token) = token {
            refs.push(Reference::secret(
                &token.name,
                &token.key,
                format!("spec.credentials.{platform}"),
            ));
        }
    }
    let env_var_refs = |refs: &mut Vec<Reference>, vars: &[EnvVar], field: &str| {
        for (i, var) in vars.iter().enumerate() {
            if let Some(from) = &var.value_from {
                refs.push(Reference::secret_key(
                    &from.secret_key_ref,
                    format!("{field}.envVars[{i}].valueFrom.secretKeyRef"),
                ));
            }
        }
    };
    if let Some(render) = &spec.render {
        for (i, service) in render.services.iter().enumerate() {
            env_var_refs(
                &mut refs,
                service.env_vars.as_deref().unwrap_or_default(),
                &format!("spec.render.services[{i}]"),
            );
        }
    }
    if let Some(vercel) = &spec.vercel {
        for (i, project) in vercel.projects.iter().enumerate() {
            for (j, var) in project.env_vars.iter().flatten().enumerate() {
                if let Some(from) = &var.value_from {
                    refs.push(Reference::secret_key(
                        &from.secret_key_ref,
                        format!("spec.vercel.projects[{i}].envVars[{j}].valueFrom.secretKeyRef"),
                    ));
                }
            }
        }
    }
    if let Some(fly) = &spec.fly {
        for (i, app) in fly.apps.iter().enumerate() {
            for (j, secret) in app.secrets.iter().enumerate() {
                refs.push(Reference::secret_key(
                    &secret.secret_key_ref,
                    format!("spec.fly.apps[{i}].secrets[{j}].secretKeyRef"),
                ));
            }
        }
    }
    if let Some(supabase) = &spec.supabase {
        refs.push(Reference::secret_key(
            &supabase.database_password_secret_ref,
            "spec.supabase.databasePasswordSecretRef",
        ));
    }
    refs
}

/// Condition: the platform objects differ from the spec out of band (abnormal-true).
pub const DRIFT_DETECTED: &str = "DriftDetected";

/// The `<Platform>Synced` condition type: the last calls to that platform succeeded.
pub fn synced_condition(platform: Platform) -> String {
    let name = platform.as_str();
    let mut chars = name.chars();
    let first = chars.next().map(|c| c.to_ascii_uppercase()).unwrap_or('X');
    format!("{first}{}Synced", chars.as_str())
}

/// What the report needs besides the sync results.
pub struct ReportInput<'a> {
    /// The spec.
    pub spec: &'a EnvironmentSpec,
    /// The previous status conditions (for transition times).
    pub previous_conditions: &'a [Condition],
    /// The previous `status.objects` (to tell new drift from drift already reported).
    pub previous_objects: &'a [ManagedObject],
    /// The generation this reconcile works on.
    pub generation: Option<i64>,
    /// RFC 3339 now.
    pub now: &'a str,
    /// Resync interval.
    pub interval: Duration,
    /// Requeue delay while objects are coming up or a platform call failed transiently.
    pub pending_interval: Duration,
}

/// The status, conditions, events and requeue one sync stands for, and the drift to count
/// in metrics (pure).
#[derive(Debug)]
pub struct Reported {
    /// The report for the reconcile driver.
    pub report: Report,
    /// `(platform, kind)` of every object with newly found drift.
    pub drift_detected: Vec<(Platform, String)>,
    /// `(platform, kind)` of every object whose drift was reverted.
    pub drift_corrected: Vec<(Platform, String)>,
}

/// Builds the report of one sync (pure).
pub fn report(input: &ReportInput<'_>, syncs: Vec<PlatformSync>) -> Reported {
    let mut objects: Vec<ManagedObject> = Vec::new();
    let mut events: Vec<ReportEvent> = Vec::new();
    let mut conditions: Vec<Condition> = Vec::new();
    let mut drift_detected = Vec::new();
    let mut drift_corrected = Vec::new();
    let mut failures: Vec<&Failure> = Vec::new();
    let mut drifted: Vec<String> = Vec::new();
    let condition = |type_: &str, status: ConditionStatus, reason: &str, message: String| {
        let last_transition_time = input
            .previous_conditions
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .map(|c| c.last_transition_time.clone())
            .unwrap_or_else(|| input.now.to_string());
        Condition {
            type_: type_.to_string(),
            status,
            observed_generation: input.generation,
            last_transition_time,
            reason: reason.to_string(),
            message,
        }
    };
    for sync in &syncs {
        let platform = sync.platform;
        for plan in &sync.plans {
            if plan.drift.is_empty() {
                continue;
            }
            let before = input.previous_objects.iter().find(|o| {
                o.platform == platform.as_str() && o.kind == plan.kind && o.name == plan.name
            });
            let known = before.is_some_and(|o| plan.drift.iter().all(|f| o.drift.contains(f)));
            if !known {
                drift_detected.push((platform, plan.kind.clone()));
                events.push(ReportEvent {
                    warning: true,
                    always: true,
                    reason: "DriftDetected".into(),
                    note: format!(
                        "{platform} {} {:?} changed out of band: {}",
                        plan.kind,
                        plan.name,
                        plan.drift.join(", ")
                    ),
                    action: format!("Observe {platform} {} {}", plan.kind, plan.name),
                });
            }
        }
        for event in &sync.events {
            if event.reason == "DriftCorrected" {
                drift_corrected.push((event.platform, event.kind.clone()));
            }
            events.push(ReportEvent {
                warning: false,
                always: true,
                reason: event.reason.to_string(),
                note: event.note.clone(),
                action: format!(
                    "{} {} {} {}",
                    event.reason, event.platform, event.kind, event.name
                ),
            });
        }
        for object in &sync.objects {
            if !object.drift.is_empty() {
                drifted.push(format!(
                    "{platform} {} {:?} ({})",
                    object.kind,
                    object.name,
                    object.drift.join(", ")
                ));
            }
        }
        objects.extend(sync.objects.iter().cloned());
        let type_ = synced_condition(platform);
        conditions.push(match &sync.failure {
            None => condition(
                &type_,
                ConditionStatus::True,
                "Synced",
                format!("The last {platform} calls succeeded"),
            ),
            Some(failure) => condition(
                &type_,
                ConditionStatus::False,
                failure.reason,
                failure.message.clone(),
            ),
        });
        failures.extend(sync.failure.as_ref());
    }
    conditions.push(if drifted.is_empty() {
        condition(
            DRIFT_DETECTED,
            ConditionStatus::False,
            "NoDrift",
            String::new(),
        )
    } else {
        condition(
            DRIFT_DETECTED,
            ConditionStatus::True,
            "DriftFound",
            format!(
                "Changed out of band and not corrected (driftPolicy {:?}): {}",
                input.spec.drift_policy,
                drifted.join("; ")
            ),
        )
    });

    let total = objects.len();
    let ready = objects.iter().filter(|o| o.ready).count();
    let waiting: Vec<String> = objects
        .iter()
        .filter(|o| !o.ready)
        .map(|o| {
            format!(
                "{} {} {:?} ({})",
                o.platform,
                o.kind,
                o.name,
                o.state.as_deref().unwrap_or("pending")
            )
        })
        .collect();
    let parked_until = failures.iter().filter_map(|f| f.retry_after).min();
    let (verdict, requeue) = match failures.iter().find(|f| f.permanent).or(failures.first()) {
        Some(failure) if failure.permanent => (
            Verdict::Stalled {
                reason: failure.reason.to_string(),
                message: failure.message.clone(),
            },
            // Only a change fixes a stall, except an object another Environment manages: it
            // is free once that one lets go, which no watch of this one sees.
            (failure.reason == "ObjectManagedElsewhere").then_some(input.interval),
        ),
        // Every failure is a wait for a rate limit: work in progress, resumed when the
        // earliest limit allows (the worker is free meanwhile).
        Some(_) if failures.iter().all(|f| f.retry_after.is_some()) => (
            Verdict::Progressing {
                reason: "RateLimited".into(),
                message: failures
                    .iter()
                    .map(|f| f.message.as_str())
                    .collect::<Vec<_>>()
                    .join("; "),
            },
            parked_until,
        ),
        Some(failure) => (
            Verdict::NotReady {
                reason: failure.reason.to_string(),
                message: failure.message.clone(),
            },
            Some(input.pending_interval),
        ),
        None if waiting.is_empty() => (
            Verdict::Ready {
                reason: "Synced".into(),
                message: format!(
                    "{ready}/{total} platform object{} ready",
                    if total == 1 { "" } else { "s" }
                ),
            },
            Some(input.interval),
        ),
        None => (
            Verdict::NotReady {
                reason: "ObjectsNotReady".into(),
                message: format!(
                    "{ready}/{total} platform objects ready; waiting for {}",
                    waiting.join(", ")
                ),
            },
            Some(input.pending_interval),
        ),
    };
    if let Verdict::NotReady { reason, message } = &verdict {
        conditions.push(condition(
            RECONCILING,
            ConditionStatus::True,
            reason,
            message.clone(),
        ));
    }

    let mut secret_refs: Vec<String> = references(input.spec).into_iter().map(|r| r.name).collect();
    secret_refs.sort();
    secret_refs.dedup();
    let secret_refs: Vec<LocalObjectRef> = secret_refs
        .into_iter()
        .map(|name| LocalObjectRef { name })
        .collect();
    let mut status = serde_json::Map::new();
    status.insert(
        "summary".into(),
        serde_json::json!(format!("{ready}/{total}")),
    );
    status.insert("objects".into(), serde_json::json!(objects));
    status.insert("secretRefs".into(), serde_json::json!(secret_refs));
    let digests: std::collections::BTreeMap<&str, String> = Platform::ALL
        .into_iter()
        .filter_map(|p| spec_digest(input.spec, p).map(|d| (p.as_str(), d)))
        .collect();
    status.insert("specDigests".into(), serde_json::json!(digests));
    Reported {
        report: Report {
            verdict,
            status,
            requeue_after: requeue,
            conditions,
            events,
        },
        drift_detected,
        drift_corrected,
    }
}

/// A digest of `platform`'s part of `spec` and its credentials reference (`None` when the
/// spec has neither), recorded in `status.specDigests`.
pub fn spec_digest(spec: &EnvironmentSpec, platform: Platform) -> Option<String> {
    use sha2::{Digest, Sha256};
    let c = &spec.credentials;
    let part = match platform {
        Platform::Render => serde_json::to_vec(&(&spec.render, &c.render)),
        Platform::Vercel => serde_json::to_vec(&(&spec.vercel, &c.vercel)),
        Platform::Fly => serde_json::to_vec(&(&spec.fly, &c.fly)),
        Platform::Supabase => serde_json::to_vec(&(&spec.supabase, &c.supabase)),
    }
    .ok()?;
    if part == b"[null,null]" {
        return None;
    }
    let digest = Sha256::digest(&part);
    Some(digest[..12].iter().map(|b| format!("{b:02x}")).collect())
}

/// The platforms whose part of the spec the last reconcile saw as it is now, when it was not
/// stalled: a difference found there can only come from outside. A status from before
/// `specDigests` counts its whole `observedGeneration`.
pub fn drift_possible(
    spec: &EnvironmentSpec,
    status: Option<&EnvironmentStatus>,
    generation: Option<i64>,
) -> Vec<Platform> {
    let Some(status) = status.filter(|s| !is_stalled(&s.conditions)) else {
        return Vec::new();
    };
    Platform::ALL
        .into_iter()
        .filter(|&p| {
            if status.spec_digests.is_empty() {
                status.observed_generation == generation
            } else {
                spec_digest(spec, p)
                    .is_some_and(|d| status.spec_digests.get(p.as_str()) == Some(&d))
            }
        })
        .collect()
}

/// Checks the interval parses and is within the CRD's bounds (an object stored before the
/// bounds existed keeps an out-of-range value until it changes).
pub fn validate(spec: &EnvironmentSpec) -> Result<std::time::Duration, ReconcileError> {
    parse_duration_within(&spec.interval, "1s", "168h").map_err(|e| ReconcileError::ValidateSpec {
        reason: "InvalidInterval",
        message: format!("spec.interval: {e}"),
    })
}

impl Environment {
    fn key(&self) -> String {
        format!(
            "{}/{}",
            self.namespace().unwrap_or_default(),
            self.name_any()
        )
    }

    /// Reads every referenced Secret (permanent error when one is missing).
    async fn read_references(&self, ctx: &Context) -> Result<Snapshot, ReconcileError> {
        let namespace = self.namespace().ok_or(ReconcileError::Unidentified)?;
        let refs = references(&self.spec);
        let snapshot = Snapshot::read(&ctx.client, &namespace, &refs).await?;
        let missing = snapshot.missing(&refs);
        if !missing.is_empty() {
            return Err(ReconcileError::ResolveReferences(missing));
        }
        Ok(snapshot)
    }

    /// What the progress writer starts from.
    fn progress_start(&self, ctx: &Context) -> Result<progress::Start, ReconcileError> {
        let namespace = self.namespace().ok_or(ReconcileError::Unidentified)?;
        let mut status = match serde_json::to_value(&self.status) {
            Ok(serde_json::Value::Object(status)) => status,
            _ => serde_json::Map::new(),
        };
        status.remove("conditions");
        status.remove("observedGeneration");
        status.retain(|_, v| !v.is_null());
        Ok(progress::Start {
            api: kube::Api::namespaced(ctx.client.clone(), &namespace),
            name: self.name_any(),
            generation: self.metadata.generation,
            status,
            objects: self.previous_objects().to_vec(),
            conditions: self
                .status
                .as_ref()
                .map(|s| s.conditions.clone())
                .unwrap_or_default(),
        })
    }

    fn previous_objects(&self) -> &[ManagedObject] {
        self.status.as_ref().map_or(&[], |s| s.objects.as_slice())
    }
}

fn now() -> String {
    jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .unwrap_or_else(|_| jiff::Timestamp::now())
        .to_string()
}

impl Reconciled for Environment {
    const CONTROLLER: &'static str = "environment";

    async fn apply(&self, ctx: &Context) -> Result<Report, ReconcileError> {
        if self.spec.suspend {
            return Ok(Report::suspended());
        }
        let interval = validate(&self.spec)?;
        // Observe the Kubernetes side: every referenced Secret.
        let snapshot = self.read_references(ctx).await?;
        let status = self.status.as_ref();
        let generation = self.metadata.generation;
        // The last reconcile applied a platform's part of the spec as it is now and was not
        // stalled: a readable difference there now can only come from outside.
        let drift_possible = drift_possible(&self.spec, status, generation);
        let now = now();
        let key = self.key();
        let owners = ctx.owners_except(&key);
        let request = sync::run::Request {
            environment: &key,
            spec: &self.spec,
            secrets: &snapshot.values,
            previous: self.previous_objects(),
            drift_possible: &drift_possible,
            deleting: false,
            now: now.clone(),
            owners: &owners,
        };
        // Observe the platforms, plan, act; status shows the progress meanwhile.
        let (reports, received) = tokio::sync::mpsc::unbounded_channel();
        let progress = progress::write(self.progress_start(ctx)?, received);
        let who = format!(
            "{}/{}",
            self.namespace().unwrap_or_default(),
            self.name_any()
        );
        let (syncs, ()) = tokio::join!(
            sync::progress::scoped(
                reports,
                &who,
                sync::run::sync(&ctx.platforms, &request, Mode::Apply)
            ),
            progress
        );
        // Report.
        let reported = report(
            &ReportInput {
                spec: &self.spec,
                previous_conditions: status.map_or(&[], |s| s.conditions.as_slice()),
                previous_objects: self.previous_objects(),
                generation,
                now: &now,
                interval,
                pending_interval: ctx.pending_interval,
            },
            syncs,
        );
        for (platform, kind) in &reported.drift_detected {
            ctx.metrics.sync().drift_detected(*platform, kind);
        }
        for (platform, kind) in &reported.drift_corrected {
            ctx.metrics.sync().drift_corrected(*platform, kind);
        }
        let objects: Vec<ManagedObject> = reported
            .report
            .status
            .get("objects")
            .and_then(|o| serde_json::from_value(o.clone()).ok())
            .unwrap_or_default();
        ctx.metrics.sync().set_drifted(&key, &objects);
        Ok(reported.report)
    }

    async fn cleanup(&self, ctx: &Context) -> Result<(), ReconcileError> {
        // With `deletionPolicy: Orphan` nothing is called on any platform, so a deleted
        // credentials Secret cannot block the deletion.
        if self.spec.deletion_policy == Some(DeletionPolicy::Orphan) {
            ctx.metrics.sync().set_drifted(&self.key(), &[]);
            return Ok(());
        }
        let snapshot = match self.read_references(ctx).await {
            Ok(snapshot) => snapshot,
            // Nothing was ever recorded as created: there is nothing to delete, and no
            // credentials are needed to delete nothing.
            Err(ReconcileError::ResolveReferences(_))
                if !self.previous_objects().iter().any(|o| o.id.is_some()) =>
            {
                ctx.metrics.sync().set_drifted(&self.key(), &[]);
                return Ok(());
            }
            Err(ReconcileError::ResolveReferences(missing)) => {
                return Err(ReconcileError::CleanupBlocked(format!(
                    "cannot delete the platform objects: {}; restore it, or set spec.deletionPolicy: Orphan to leave the objects on the platforms and let the Environment go",
                    missing
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("; ")
                )));
            }
            Err(other) => return Err(other),
        };
        let key = self.key();
        let request = sync::run::Request {
            environment: &key,
            spec: &self.spec,
            secrets: &snapshot.values,
            previous: self.previous_objects(),
            drift_possible: &[],
            deleting: true,
            now: now(),
            // Deleting removes only what this Environment recorded.
            owners: &sync::run::Owners::default(),
        };
        let syncs = sync::run::sync(&ctx.platforms, &request, Mode::Apply).await;
        match syncs.into_iter().find_map(|s| s.failure) {
            None => {
                ctx.metrics.sync().set_drifted(&key, &[]);
                Ok(())
            }
            Some(failure) => Err(ReconcileError::Platform {
                reason: failure.reason,
                message: failure.message,
                permanent: failure.permanent,
            }),
        }
    }
}

/// Whether `env` references Secret `name` (used to map Secret changes to Environments).
pub fn references_secret(env: &Environment, name: &str) -> bool {
    references(&env.spec)
        .iter()
        .any(|r| r.kind == RefKind::Secret && r.name == name)
}

/// The watch predicate of the Environment controller: the hash of what makes a change worth
/// a reconcile — the spec (its generation), deletion, finalizers and annotations (so
/// `kubectl annotate` forces a sync). A status write, the controller's own at the end of
/// every reconcile included, does not change it: the resync interval and the requeues
/// schedule those reconciles, and a referenced Secret's change triggers through its watch.
pub fn changed(env: &Decoded<Environment>) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let meta = env.meta();
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    meta.generation.hash(&mut hasher);
    meta.deletion_timestamp.is_some().hash(&mut hasher);
    meta.finalizers.hash(&mut hasher);
    meta.annotations.hash(&mut hasher);
    Some(hasher.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_spec_deletion_finalizer_and_annotation_changes_pass_the_watch_predicate() {
        let base = serde_json::json!({
            "apiVersion": "tether.dev/v1alpha1", "kind": "Environment",
            "metadata": {"name": "web", "namespace": "ns", "generation": 3,
                         "resourceVersion": "10", "finalizers": ["tether.dev/cleanup"]},
            "spec": {},
            "status": {"summary": "1/2"},
        });
        let hash = |edit: &dyn Fn(&mut serde_json::Value)| {
            let mut value = base.clone();
            edit(&mut value);
            changed(&serde_json::from_value::<Decoded<Environment>>(value).unwrap())
        };
        let unchanged = hash(&|_| {});
        let status_only = hash(&|v| {
            v["metadata"]["resourceVersion"] = "11".into();
            v["status"]["summary"] = "2/2".into();
        });
        assert_eq!(unchanged, status_only, "a status write does not trigger");
        let triggering = [
            ("generation", serde_json::json!(4)),
            ("deletionTimestamp", "2026-12-05T10:00:00Z".into()),
            ("finalizers", serde_json::json!([])),
            ("annotations", serde_json::json!({"tether.dev/sync": "now"})),
        ];
        for (field, value) in triggering {
            let edited = hash(&|v| v["metadata"][field] = value.clone());
            assert_ne!(unchanged, edited, "a {field} change triggers");
        }
    }

    fn spec() -> EnvironmentSpec {
        serde_json::from_value(serde_json::json!({
            "credentials": {"render": {"name": "tokens", "key": "render"},
                            "supabase": {"name": "tokens"}},
            "render": {"ownerId": "own", "services": [
                {"name": "api", "type": "web", "image": "img", "envVars": [
                    {"name": "DB", "valueFrom": {"secretKeyRef": {"name": "db", "key": "url"}}},
                    {"name": "MODE", "value": "prod"}]}],
                "postgres": [{"name": "main", "plan": "basic"}]},
            "supabase": {"name": "proj", "organizationId": "org", "region": "us-east-1",
                "databasePasswordSecretRef": {"name": "supa", "key": "password"}}
        }))
        .unwrap()
    }

    #[test]
    fn every_secret_the_spec_names_is_a_reference_with_its_field() {
        let refs = references(&spec());
        let described: Vec<_> = refs
            .iter()
            .map(|r| {
                format!(
                    "{}:{}:{}",
                    r.name,
                    r.key.clone().unwrap_or_default(),
                    r.field
                )
            })
            .collect();
        assert_eq!(
            described,
            [
                "tokens:render:spec.credentials.render",
                "tokens:token:spec.credentials.supabase",
                "db:url:spec.render.services[0].envVars[0].valueFrom.secretKeyRef",
                "supa:password:spec.supabase.databasePasswordSecretRef",
            ]
        );
    }

    fn object(platform: &str, kind: &str, name: &str, ready: bool) -> ManagedObject {
        ManagedObject {
            platform: platform.into(),
            kind: kind.into(),
            name: name.into(),
            ready,
            state: Some(if ready { "live" } else { "creating" }.into()),
            ..ManagedObject::default()
        }
    }

    fn sync_of(platform: Platform, objects: Vec<ManagedObject>) -> PlatformSync {
        PlatformSync {
            platform,
            plans: Vec::new(),
            objects,
            events: Vec::new(),
            failure: None,
        }
    }

    fn input<'a>(spec: &'a EnvironmentSpec, previous: &'a [ManagedObject]) -> ReportInput<'a> {
        ReportInput {
            spec,
            previous_conditions: &[],
            previous_objects: previous,
            generation: Some(2),
            now: "2026-11-22T07:00:00Z",
            interval: Duration::from_secs(600),
            pending_interval: Duration::from_secs(15),
        }
    }

    fn condition<'a>(report: &'a Report, type_: &str) -> &'a Condition {
        report
            .conditions
            .iter()
            .find(|c| c.type_ == type_)
            .unwrap_or_else(|| panic!("no {type_} condition in {:?}", report.conditions))
    }

    #[test]
    fn every_object_ready_is_ready_with_a_summary_and_a_synced_condition_per_platform() {
        let spec = spec();
        let syncs = vec![
            sync_of(
                Platform::Render,
                vec![
                    object("render", "service", "api", true),
                    object("render", "postgres", "main", true),
                ],
            ),
            sync_of(
                Platform::Supabase,
                vec![object("supabase", "project", "proj", true)],
            ),
        ];
        let reported = report(&input(&spec, &[]), syncs).report;
        assert_eq!(
            reported.verdict,
            Verdict::Ready {
                reason: "Synced".into(),
                message: "3/3 platform objects ready".into()
            }
        );
        assert_eq!(reported.requeue_after, Some(Duration::from_secs(600)));
        assert_eq!(reported.status["summary"], "3/3");
        assert_eq!(reported.status["objects"][1]["name"], "main");
        assert_eq!(
            condition(&reported, "RenderSynced").status,
            ConditionStatus::True
        );
        assert_eq!(
            condition(&reported, "SupabaseSynced").status,
            ConditionStatus::True
        );
        assert_eq!(
            condition(&reported, DRIFT_DETECTED).status,
            ConditionStatus::False
        );
        assert_eq!(
            reported.status["secretRefs"],
            serde_json::json!([{"name": "db"}, {"name": "supa"}, {"name": "tokens"}])
        );
    }

    #[test]
    fn objects_coming_up_are_reconciling_and_requeued_on_the_short_interval() {
        let spec = spec();
        let syncs = vec![sync_of(
            Platform::Supabase,
            vec![object("supabase", "project", "proj", false)],
        )];
        let reported = report(&input(&spec, &[]), syncs).report;
        match &reported.verdict {
            Verdict::NotReady { reason, message } => {
                assert_eq!(reason, "ObjectsNotReady");
                assert_eq!(
                    message,
                    "0/1 platform objects ready; waiting for supabase project \"proj\" (creating)"
                );
            }
            other => panic!("unexpected verdict {other:?}"),
        }
        assert_eq!(reported.requeue_after, Some(Duration::from_secs(15)));
        assert_eq!(
            condition(&reported, RECONCILING).status,
            ConditionStatus::True
        );
    }

    #[test]
    fn rejected_credentials_stall_and_name_the_platform_while_the_others_stay_synced() {
        let spec = spec();
        let mut render = sync_of(
            Platform::Render,
            vec![object("render", "service", "api", true)],
        );
        render.failure = Some(Failure {
            platform: Platform::Render,
            reason: "CredentialsRejected",
            message: "render rejected the token in Secret \"tokens\" key \"render\"".into(),
            permanent: true,
            retry_after: None,
        });
        let syncs = vec![
            render,
            sync_of(
                Platform::Supabase,
                vec![object("supabase", "project", "proj", true)],
            ),
        ];
        let reported = report(&input(&spec, &[]), syncs).report;
        assert!(reported.verdict.is_stalled());
        assert_eq!(reported.requeue_after, None);
        let synced = condition(&reported, "RenderSynced");
        assert_eq!(synced.status, ConditionStatus::False);
        assert_eq!(synced.reason, "CredentialsRejected");
        assert_eq!(
            condition(&reported, "SupabaseSynced").status,
            ConditionStatus::True
        );
        // The objects already known are still listed.
        assert_eq!(reported.status["summary"], "2/2");
    }

    #[test]
    fn drift_is_counted_and_announced_once_and_stays_in_status_until_corrected() {
        use crate::sync::{Action, ObjectPlan, SyncEvent};
        let spec = spec();
        let plan = ObjectPlan {
            platform: Platform::Render,
            kind: "service".into(),
            name: "api".into(),
            id: Some("srv-1".into()),
            action: Action::InSync,
            changes: Vec::new(),
            drift: vec!["plan".into()],
            writes: 0,
        };
        let mut drifted = object("render", "service", "api", true);
        drifted.drift = vec!["plan".into()];
        let mut sync = sync_of(Platform::Render, vec![drifted.clone()]);
        sync.plans = vec![plan.clone()];
        let first = report(&input(&spec, &[]), vec![sync]);
        assert_eq!(
            first.drift_detected,
            [(Platform::Render, "service".to_string())]
        );
        let event = &first.report.events[0];
        assert!(event.warning && event.always);
        assert_eq!(event.reason, "DriftDetected");
        assert!(event.note.contains("plan"), "{}", event.note);
        let drift = condition(&first.report, DRIFT_DETECTED);
        assert_eq!(drift.status, ConditionStatus::True);
        assert!(
            drift.message.contains("render service \"api\" (plan)"),
            "{}",
            drift.message
        );

        // The same drift seen again (Report policy): no second count or event.
        let mut again = sync_of(Platform::Render, vec![drifted.clone()]);
        again.plans = vec![plan.clone()];
        let second = report(&input(&spec, std::slice::from_ref(&drifted)), vec![again]);
        assert!(second.drift_detected.is_empty());
        assert!(second.report.events.is_empty());

        // Corrected: counted as corrected, the event published, the condition clears.
        let mut corrected = sync_of(
            Platform::Render,
            vec![object("render", "service", "api", true)],
        );
        corrected.plans = vec![plan];
        corrected.events = vec![SyncEvent {
            reason: "DriftCorrected",
            platform: Platform::Render,
            kind: "service".into(),
            name: "api".into(),
            note: "reverted plan".into(),
        }];
        let third = report(&input(&spec, &[]), vec![corrected]);
        assert_eq!(
            third.drift_corrected,
            [(Platform::Render, "service".to_string())]
        );
        assert_eq!(
            condition(&third.report, DRIFT_DETECTED).status,
            ConditionStatus::False
        );
    }

    #[test]
    fn synced_condition_types_are_named_after_the_platform() {
        assert_eq!(synced_condition(Platform::Render), "RenderSynced");
        assert_eq!(synced_condition(Platform::Fly), "FlySynced");
        assert_eq!(synced_condition(Platform::Supabase), "SupabaseSynced");
    }

    #[test]
    fn an_unparseable_interval_is_an_invalid_spec() {
        let mut spec = spec();
        spec.interval = "soon".into();
        let err = validate(&spec).unwrap_err();
        assert!(err.is_permanent());
        assert_eq!(err.kind(), "InvalidInterval");
    }

    #[test]
    fn secret_changes_map_to_the_environments_that_name_them() {
        let env = Environment::new("web", spec());
        assert!(references_secret(&env, "supa"));
        assert!(!references_secret(&env, "unrelated"));
    }

    #[test]
    fn drift_is_possible_on_each_platform_whose_part_of_the_spec_did_not_change() {
        let spec = |build: &str, render_secret: &str| -> EnvironmentSpec {
            serde_json::from_value(serde_json::json!({
                "credentials": {
                    "render": {"name": render_secret, "key": "token"},
                    "vercel": {"name": "vercel", "key": "token"},
                },
                "render": {"ownerId": "tea-1", "services": [
                    {"name": "api", "type": "web", "image": "ghcr.io/acme/api:1"}]},
                "vercel": {"projects": [{"name": "site", "buildCommand": build}]},
            }))
            .unwrap()
        };
        let applied = spec("pnpm build", "render");
        let status = |digests: bool, stalled: bool| EnvironmentStatus {
            observed_generation: Some(1),
            conditions: vec![Condition {
                type_: crate::api::common::condition_types::STALLED.into(),
                status: if stalled {
                    ConditionStatus::True
                } else {
                    ConditionStatus::False
                },
                observed_generation: Some(1),
                last_transition_time: "2026-12-07T08:00:00Z".into(),
                reason: "Test".into(),
                message: String::new(),
            }],
            spec_digests: if digests {
                Platform::ALL
                    .into_iter()
                    .filter_map(|p| spec_digest(&applied, p).map(|d| (p.as_str().into(), d)))
                    .collect()
            } else {
                Default::default()
            },
            ..EnvironmentStatus::default()
        };
        let recorded = status(true, false);
        assert_eq!(recorded.spec_digests.len(), 2, "only the platforms in use");
        // Unchanged: both platforms; the generation alone does not matter any more.
        assert_eq!(
            drift_possible(&applied, Some(&recorded), Some(2)),
            [Platform::Render, Platform::Vercel]
        );
        // A Vercel change leaves Render's drift drift.
        let vercel_changed = spec("pnpm build:prod", "render");
        assert_eq!(
            drift_possible(&vercel_changed, Some(&recorded), Some(2)),
            [Platform::Render]
        );
        // Other credentials may be another account: nothing there is known.
        let render_token = spec("pnpm build", "render-2");
        assert_eq!(
            drift_possible(&render_token, Some(&recorded), Some(2)),
            [Platform::Vercel]
        );
        // A stalled reconcile applied nothing; no status, nothing applied.
        assert!(drift_possible(&applied, Some(&status(true, true)), Some(1)).is_empty());
        assert!(drift_possible(&applied, None, Some(1)).is_empty());
        // A status from before the digests: the whole generation decides.
        let old = status(false, false);
        assert_eq!(drift_possible(&applied, Some(&old), Some(1)), Platform::ALL);
        assert!(drift_possible(&applied, Some(&old), Some(2)).is_empty());
    }
}
