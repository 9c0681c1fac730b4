//! The Release reconciler: observe (the Environment, the promotion source Environment and
//! the Migrations the Release names) → validate what the schema cannot (each artifact names
//! a component of the referenced Environment on its platform) → plan (the ordered rollout
//! steps, a pure value) → act (one reconcile of the rollout, [`crate::controller::rollout`])
//! → report (phase, one step entry per component, progress).

use std::fmt;
use std::time::Duration;

use kube::ResourceExt;

use crate::api::Environment;
use crate::api::Release;
use crate::api::common::{ConditionStatus, parse_duration};
use crate::api::release::{
    AnalysisStatus, CheckStatus, ComponentPlatform, HealthCheck, ReleasePhase, ReleaseSpec,
    RollbackStatus, StepStatus,
};
use crate::controller::conditions::Verdict;
use crate::controller::error::ReconcileError;
use crate::controller::reconcile::{Context, Reconciled, Report, ReportEvent};
use crate::controller::references::{RefKind, Reference, Snapshot};
use crate::controller::{analysis, gates, health, notify, rollout};
use futures::future::join_all;

/// Every object a Release names.
pub fn references(spec: &ReleaseSpec) -> Vec<Reference> {
    let mut refs = vec![Reference::object(
        RefKind::Environment,
        &spec.environment_ref.name,
        "spec.environmentRef",
    )];
    if let Some(promotion) = &spec.promotion {
        refs.push(Reference::object(
            RefKind::Environment,
            &promotion.from_environment,
            "spec.promotion.fromEnvironment",
        ));
    }
    for (i, migration) in spec.migrations.iter().enumerate() {
        refs.push(Reference::object(
            RefKind::Migration,
            migration,
            format!("spec.migrations[{i}]"),
        ));
    }
    refs
}

fn platform_name(platform: ComponentPlatform) -> &'static str {
    match platform {
        ComponentPlatform::Render => "render",
        ComponentPlatform::Vercel => "vercel",
        ComponentPlatform::Fly => "fly",
    }
}

/// Checks that every artifact names a component of `environment` on its platform: a Render
/// service, a Vercel project or a Fly app.
pub fn validate_components(
    spec: &ReleaseSpec,
    environment: &Environment,
) -> Result<(), ReconcileError> {
    let env = &environment.spec;
    for (i, artifact) in spec.artifacts.iter().enumerate() {
        let exists = match artifact.platform {
            ComponentPlatform::Render => env
                .render
                .as_ref()
                .is_some_and(|r| r.services.iter().any(|s| s.name == artifact.component)),
            ComponentPlatform::Vercel => env
                .vercel
                .as_ref()
                .is_some_and(|v| v.projects.iter().any(|p| p.name == artifact.component)),
            ComponentPlatform::Fly => env
                .fly
                .as_ref()
                .is_some_and(|f| f.apps.iter().any(|a| a.name == artifact.component)),
        };
        if !exists {
            return Err(ReconcileError::ValidateSpec {
                reason: "UnknownComponent",
                message: format!(
                    "spec.artifacts[{i}].component {:?}: Environment {:?} declares no {} component of that name",
                    artifact.component,
                    environment.name_any(),
                    platform_name(artifact.platform),
                ),
            });
        }
    }
    for (i, check) in spec.health_checks.iter().enumerate() {
        let Some(component) = check.component.as_deref() else {
            continue;
        };
        let exists = env
            .render
            .as_ref()
            .is_some_and(|r| r.services.iter().any(|s| s.name == component))
            || env
                .vercel
                .as_ref()
                .is_some_and(|v| v.projects.iter().any(|p| p.name == component))
            || env
                .fly
                .as_ref()
                .is_some_and(|f| f.apps.iter().any(|a| a.name == component));
        if !exists {
            return Err(ReconcileError::ValidateSpec {
                reason: "UnknownComponent",
                message: format!(
                    "spec.healthChecks[{i}].component {component:?}: Environment {:?} declares no Render service, Vercel project or Fly app of that name",
                    environment.name_any(),
                ),
            });
        }
    }
    Ok(())
}

/// The rollout order: each step is a set of components deployed together.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReleasePlan {
    /// Migrations that must be applied before the first step.
    pub migrations: Vec<String>,
    /// Steps in order; each holds `(platform, component)` pairs.
    pub steps: Vec<Vec<(ComponentPlatform, String)>>,
}

impl fmt::Display for ReleasePlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.migrations.is_empty() {
            writeln!(f, "wait for migrations: {}", self.migrations.join(", "))?;
        }
        for (i, step) in self.steps.iter().enumerate() {
            let parts: Vec<String> = step
                .iter()
                .map(|(p, c)| format!("{}/{c}", platform_name(*p)))
                .collect();
            writeln!(f, "step {}: deploy {}", i + 1, parts.join(", "))?;
        }
        Ok(())
    }
}

/// Plans the rollout (pure): the spec's steps, or one step per artifact in spec order.
pub fn plan(spec: &ReleaseSpec) -> ReleasePlan {
    let platform_of = |component: &str| {
        spec.artifacts
            .iter()
            .find(|a| a.component == component)
            .map(|a| a.platform)
            .unwrap_or_default()
    };
    let steps = if spec.steps.is_empty() {
        spec.artifacts
            .iter()
            .map(|a| vec![(a.platform, a.component.clone())])
            .collect()
    } else {
        spec.steps
            .iter()
            .map(|s| {
                s.components
                    .iter()
                    .map(|c| (platform_of(c), c.clone()))
                    .collect()
            })
            .collect()
    };
    ReleasePlan {
        migrations: spec.migrations.clone(),
        steps,
    }
}

/// One `Pending` step entry per component, in rollout order (pure).
pub fn planned_steps(plan: &ReleasePlan) -> Vec<StepStatus> {
    plan.steps
        .iter()
        .flatten()
        .map(|(platform, component)| StepStatus {
            component: component.clone(),
            platform: *platform,
            state: Some("Pending".into()),
            ..StepStatus::default()
        })
        .collect()
}

/// The annotation asking for the rollback of a `Failed` Release (its value: who asks), e.g.
/// one left live by an inconclusive analysis, one without automatic rollback, or one whose
/// rollback a migration stopped (the person asking has decided).
pub const ROLLBACK_ANNOTATION: &str = "tether.dev/rollback";

/// How often a rollout in progress is looked at again, at most (sooner with a shorter
/// `--pending-interval`).
const ROLLOUT_POLL: Duration = Duration::from_secs(2);

/// Now, to the millisecond (the poll cadence is computed from these times).
fn now() -> String {
    jiff::Timestamp::now()
        .round(jiff::Unit::Millisecond)
        .unwrap_or_else(|_| jiff::Timestamp::now())
        .to_string()
}

/// How soon a step still deploying is looked at again: a fifth of the time its oldest
/// deployment has been running, between `min` and fifteen times `min`, so a long deploy
/// costs a few reads instead of one every `min` and is seen live at most a fifth late —
/// except that a Render or Vercel deployment is first looked at [`FIRST_LOOK`] times `min`
/// after its start (see [`not_yet`]).
fn poll_after(min: Duration, deploying: &[&StepStatus], now: &str) -> Duration {
    let oldest = deploying
        .iter()
        .map(|s| between(s.started_at.as_deref(), Some(now)))
        .max()
        .unwrap_or(Duration::ZERO);
    let paced = (oldest / 5).clamp(min, min * 15);
    deploying
        .iter()
        .map(|s| not_yet(min, s, now).unwrap_or(paced))
        .min()
        .unwrap_or(paced)
}

/// How long until a Render or Vercel deployment under way is first looked at, while that
/// is still ahead: [`FIRST_LOOK`] times `min` after its start. `None`: look now (a Fly
/// rollout moves a batch each time it is looked at, so it always is).
fn not_yet(min: Duration, entry: &StepStatus, now: &str) -> Option<Duration> {
    if entry.platform == ComponentPlatform::Fly || entry.deployment_id.is_none() {
        return None;
    }
    let due = min * FIRST_LOOK;
    let running = between(entry.started_at.as_deref(), Some(now));
    (running < due).then(|| (due - running).max(min))
}

/// A Render or Vercel deployment (a build, a rollout) is first looked at this many times the
/// poll minimum after its start (12 s in production): builds and rollouts take longer than
/// that, so the reads before it would only see them under way.
const FIRST_LOOK: u32 = 6;

/// A report of the rollout as it stands: `phase`, the step entries and the times.
fn rollout_report(
    phase: ReleasePhase,
    steps: &[StepStatus],
    started: Option<&str>,
    finished: Option<&str>,
    verdict: Verdict,
    requeue_after: Option<Duration>,
    events: Vec<ReportEvent>,
) -> Report {
    let mut status = serde_json::Map::new();
    status.insert("phase".into(), serde_json::json!(phase));
    status.insert("steps".into(), serde_json::json!(steps));
    if let Some(started) = started {
        status.insert("startedAt".into(), serde_json::json!(started));
    }
    if let Some(finished) = finished {
        status.insert("finishedAt".into(), serde_json::json!(finished));
    }
    Report {
        verdict,
        status,
        requeue_after,
        conditions: Vec::new(),
        events,
    }
}

/// The time between two RFC 3339 instants (zero when either is missing or unreadable).
fn between(start: Option<&str>, end: Option<&str>) -> Duration {
    let parse = |t: Option<&str>| t.and_then(|t| t.parse::<jiff::Timestamp>().ok());
    match (parse(start), parse(end)) {
        (Some(start), Some(end)) => end
            .duration_since(start)
            .try_into()
            .unwrap_or(Duration::ZERO),
        _ => Duration::ZERO,
    }
}

/// `live/total` steps of `plan`, from the step entries.
pub fn progress(plan: &ReleasePlan, steps: &[StepStatus]) -> String {
    let live = plan
        .steps
        .iter()
        .filter(|step| {
            step.iter().all(|(_, component)| {
                steps
                    .iter()
                    .any(|s| &s.component == component && s.state.as_deref() == Some("Live"))
            })
        })
        .count();
    format!("{live}/{}", plan.steps.len())
}

impl Release {
    /// Moves the rollout one reconcile forward, from what status recorded, and reports the
    /// step progress (`kubectl get rel` shows it).
    async fn roll_out(
        &self,
        ctx: &Context,
        namespace: &str,
        plan: &ReleasePlan,
        environment: &Environment,
    ) -> Result<Report, ReconcileError> {
        let previous = self.status.clone().unwrap_or_default();
        let superseded = self.superseded(&previous, plan);
        // Gates, checked before anything changes (and only then: a rollout under way is
        // not stopped by a gate closing behind it).
        let mut passed = serde_json::Map::new();
        for (field, value) in [
            ("approvedBy", &previous.approved_by),
            ("approvedAt", &previous.approved_at),
            ("promotedFrom", &previous.promoted_from),
        ] {
            if let Some(value) = value {
                passed.insert(field.into(), serde_json::json!(value));
            }
        }
        let mut gate_conditions = Vec::new();
        let mut gate_events = Vec::new();
        if superseded.is_none() && previous.started_at.is_none() {
            match gates::check(self, ctx, namespace, &previous).await? {
                gates::Gates::Open {
                    status,
                    conditions,
                    events,
                } => {
                    passed.extend(status);
                    gate_conditions = conditions;
                    gate_events = events;
                }
                gates::Gates::Closed(mut report) => {
                    let steps = planned_steps(plan);
                    report
                        .status
                        .insert("progress".into(), serde_json::json!(progress(plan, &steps)));
                    report
                        .status
                        .insert("steps".into(), serde_json::json!(steps));
                    return Ok(report);
                }
            }
        }
        let mut checks = previous.checks.clone();
        let mut report = match superseded {
            Some(report) => report,
            None => {
                self.advance(ctx, namespace, plan, environment, &mut checks)
                    .await?
            }
        };
        if let Some(rollback) = &previous.rollback
            && !report.status.contains_key("rollback")
        {
            report
                .status
                .insert("rollback".into(), serde_json::json!(rollback));
        }
        for (field, kept) in [
            ("analysis", &previous.analysis),
            ("canaryAnalysis", &previous.canary_analysis),
        ] {
            if let Some(kept) = kept
                && !report.status.contains_key(field)
            {
                report.status.insert(field.into(), serde_json::json!(kept));
            }
        }
        let failed_now =
            report.status.get("phase") == Some(&serde_json::json!(ReleasePhase::Failed));
        // No data is no evidence the version is broken: a person decides.
        let inconclusive = matches!(&report.verdict, Verdict::Stalled { reason, .. } if reason == "AnalysisInconclusive");
        let requested_by = self
            .annotations()
            .get(ROLLBACK_ANNOTATION)
            .map(|who| who.trim())
            .filter(|who| !who.is_empty());
        if failed_now
            && !matches!(
                previous.phase,
                Some(ReleasePhase::Failed | ReleasePhase::RollingBack | ReleasePhase::RolledBack)
            )
            && self.spec.rollback.automatic
            && !inconclusive
        {
            report = self.start_rollback(ctx, namespace, report, None).await?;
        } else if failed_now
            && previous.phase == Some(ReleasePhase::Failed)
            && previous.rollback.is_none()
            && let Some(who) = requested_by
        {
            report = self
                .start_rollback(ctx, namespace, report, Some(who))
                .await?;
        }
        report.status.extend(passed);
        report.conditions.extend(gate_conditions);
        gate_events.append(&mut report.events);
        report.events = gate_events;
        if !checks.is_empty() {
            report
                .status
                .insert("checks".into(), serde_json::json!(checks));
        }
        let steps: Vec<StepStatus> = report
            .status
            .get("steps")
            .and_then(|s| serde_json::from_value(s.clone()).ok())
            .unwrap_or_default();
        report
            .status
            .insert("progress".into(), serde_json::json!(progress(plan, &steps)));
        // Delivery metrics: counted once, by the reconcile that ends the rollout.
        let was = self.status.as_ref().and_then(|s| s.phase);
        let now = report
            .status
            .get("phase")
            .and_then(|p| serde_json::from_value::<ReleasePhase>(p.clone()).ok());
        let ended = |phase: Option<ReleasePhase>| {
            matches!(
                phase,
                Some(
                    ReleasePhase::Succeeded
                        | ReleasePhase::Failed
                        | ReleasePhase::RolledBack
                        | ReleasePhase::Superseded
                )
            )
        };
        if !ended(was) && ended(now) {
            let field = |name: &str| report.status.get(name).and_then(|v| v.as_str());
            let took = between(field("startedAt"), field("finishedAt"));
            let result = match now {
                Some(ReleasePhase::Succeeded) => "succeeded",
                Some(ReleasePhase::RolledBack) => "rolled_back",
                Some(ReleasePhase::Superseded) => "superseded",
                _ => "failed",
            };
            let environment = &self.spec.environment_ref.name;
            ctx.metrics
                .release_finished(namespace, environment, result, took);
            if now == Some(ReleasePhase::Succeeded)
                && let Some(finished) = field("finishedAt")
            {
                self.observe_restore(ctx, namespace, finished).await;
            }
        }
        let before = self.status.as_ref().map_or(&[][..], |s| s.steps.as_slice());
        for step in &steps {
            let was_live = before
                .iter()
                .any(|b| b.component == step.component && b.state.as_deref() == Some("Live"));
            if !was_live && step.state.as_deref() == Some("Live") {
                ctx.metrics.release_step_live(
                    platform_name(step.platform),
                    between(step.started_at.as_deref(), step.finished_at.as_deref()),
                );
            }
        }
        Ok(report)
    }

    /// The report of a Release a newer one superseded (the `tether.dev/superseded-by`
    /// annotation) while it had not finished its rollout: it stops where it is.
    fn superseded(
        &self,
        previous: &crate::api::release::ReleaseStatus,
        plan: &ReleasePlan,
    ) -> Option<Report> {
        let by = self.annotations().get(gates::SUPERSEDED_BY)?;
        if !gates::supersedable(previous.phase) {
            return None;
        }
        let steps: Vec<StepStatus> = planned_steps(plan)
            .into_iter()
            .map(|planned| {
                previous
                    .steps
                    .iter()
                    .find(|s| s.component == planned.component)
                    .cloned()
                    .unwrap_or(planned)
            })
            .collect();
        let message = format!(
            "superseded by Release {by} while {:?}: it stopped where it was ({} of its steps live) and Release {by} deploys over it",
            previous.phase.unwrap_or_default(),
            progress(plan, &steps)
        );
        let now = now();
        Some(rollout_report(
            ReleasePhase::Superseded,
            &steps,
            Some(previous.started_at.as_deref().unwrap_or(&now)),
            Some(&now),
            Verdict::Stalled {
                reason: "Superseded".into(),
                message: message.clone(),
            },
            None,
            vec![ReportEvent {
                warning: false,
                reason: "Superseded".into(),
                note: message,
                always: true,
                action: "Superseded".into(),
            }],
        ))
    }

    async fn advance(
        &self,
        ctx: &Context,
        namespace: &str,
        plan: &ReleasePlan,
        environment: &Environment,
        checks: &mut Vec<CheckStatus>,
    ) -> Result<Report, ReconcileError> {
        let previous = self.status.clone().unwrap_or_default();
        let mut steps: Vec<StepStatus> = planned_steps(plan)
            .into_iter()
            .map(|planned| {
                previous
                    .steps
                    .iter()
                    .find(|s| s.component == planned.component)
                    .cloned()
                    .unwrap_or(planned)
            })
            .collect();
        let now = now();
        let started = previous.started_at.clone().unwrap_or_else(|| now.clone());
        let stalled = |reason: &str, message: String, phase: ReleasePhase, steps: &[StepStatus]| {
            rollout_report(
                phase,
                steps,
                Some(&started),
                None,
                Verdict::Stalled {
                    reason: reason.into(),
                    message,
                },
                None,
                Vec::new(),
            )
        };
        // A finished rollout stays as it ended.
        match previous.phase {
            Some(ReleasePhase::Succeeded) => {
                return Ok(rollout_report(
                    ReleasePhase::Succeeded,
                    &steps,
                    Some(&started),
                    previous.finished_at.as_deref(),
                    succeeded(&steps),
                    None,
                    Vec::new(),
                ));
            }
            Some(ReleasePhase::RollingBack) => {
                return self
                    .roll_back(ctx, namespace, environment, &previous, &steps, &now)
                    .await;
            }
            Some(ReleasePhase::Failed | ReleasePhase::RolledBack | ReleasePhase::Superseded) => {
                // It stays as it ended, for the reason it ended with.
                let (reason, message) = previous
                    .conditions
                    .iter()
                    .find(|c| c.type_ == crate::api::common::condition_types::READY)
                    .filter(|c| c.status == crate::api::common::ConditionStatus::False)
                    .map(|c| (c.reason.clone(), c.message.clone()))
                    .unwrap_or_else(|| ("DeployFailed".into(), failed_message(&steps)));
                let phase = previous.phase.unwrap_or(ReleasePhase::Failed);
                let mut report = stalled(&reason, message, phase, &steps);
                if let Some(finished) = &previous.finished_at {
                    report
                        .status
                        .insert("finishedAt".into(), serde_json::json!(finished));
                }
                return Ok(report);
            }
            _ => {}
        }
        // The whole rollout has `spec.timeout`.
        let timeout = parse_duration(&self.spec.timeout).unwrap_or(Duration::from_secs(1800));
        if previous.started_at.is_some() && between(Some(&started), Some(&now)) > timeout {
            let phase = previous.phase.unwrap_or_default();
            let mut report = stalled(
                "TimedOut",
                format!(
                    "the rollout did not finish within its timeout of {} (it was {phase:?})",
                    self.spec.timeout
                ),
                ReleasePhase::Failed,
                &steps,
            );
            report
                .status
                .insert("finishedAt".into(), serde_json::json!(now));
            report.events.push(ReportEvent {
                warning: true,
                reason: "TimedOut".into(),
                note: format!("the rollout did not finish within {}", self.spec.timeout),
                always: true,
                action: "TimedOut".into(),
            });
            return Ok(report);
        }
        // Migrations first.
        let migrations: kube::Api<crate::api::Migration> =
            kube::Api::namespaced(ctx.client.clone(), namespace);
        for name in &plan.migrations {
            let migration =
                migrations
                    .get_opt(name)
                    .await
                    .map_err(|source| ReconcileError::ReadReference {
                        what: format!("Migration {name:?}"),
                        source,
                    })?;
            let phase = migration
                .and_then(|m| m.status)
                .and_then(|s| s.phase)
                .unwrap_or_default();
            if phase != crate::api::migration::MigrationPhase::Applied {
                return Ok(rollout_report(
                    ReleasePhase::Migrating,
                    &steps,
                    Some(&started),
                    None,
                    Verdict::Progressing {
                        reason: "WaitingForMigrations".into(),
                        message: format!(
                            "waiting for Migration {name:?} to be Applied (phase {phase:?}) before deploying"
                        ),
                    },
                    Some(ctx.pending_interval.min(ROLLOUT_POLL)),
                    Vec::new(),
                ));
            }
        }
        // The Environment's objects, and its credentials.
        let secrets = credentials(ctx, namespace, &self.spec, environment).await?;
        let mut targets =
            match rollout::targets(&self.spec, environment, &secrets.values, &ctx.platforms) {
                Ok(targets) => targets,
                Err(rollout::Unready::NotCreated(message)) => {
                    return Ok(rollout_report(
                        ReleasePhase::Pending,
                        &steps,
                        Some(&started),
                        None,
                        Verdict::Progressing {
                            reason: "WaitingForEnvironment".into(),
                            message,
                        },
                        Some(ctx.pending_interval.min(ROLLOUT_POLL)),
                        Vec::new(),
                    ));
                }
                Err(
                    rollout::Unready::Unsupported(message)
                    | rollout::Unready::NoCredentials(message),
                ) => {
                    return Ok(stalled(
                        "CannotDeploy",
                        message,
                        ReleasePhase::Pending,
                        &steps,
                    ));
                }
            };
        // With an analysis, a Fly canary waits once healthy until the analysis of the
        // canary passed.
        let canary_passed = previous
            .canary_analysis
            .as_ref()
            .is_some_and(|c| c.state == analysis::PASSED);
        if self.spec.analysis.is_some() && !canary_passed {
            for target in targets.values_mut() {
                target.hold_canary();
            }
        }
        // The first step not yet live moves forward; the ones after it wait.
        let mut events = Vec::new();
        for (index, step) in plan.steps.iter().enumerate() {
            let names: Vec<&str> = step.iter().map(|(_, c)| c.as_str()).collect();
            let entries: Vec<StepStatus> = steps
                .iter()
                .filter(|s| names.contains(&s.component.as_str()))
                .cloned()
                .collect();
            if !entries.iter().all(|e| e.state.as_deref() == Some("Live")) {
                let fresh = self
                    .record_starting(ctx, namespace, &targets, &mut steps, &names, &now, None)
                    .await?;
                // A deployment live, or not yet due for a look, is left as it is.
                let min = ctx.pending_interval.min(ROLLOUT_POLL);
                let (due, later): (Vec<StepStatus>, Vec<StepStatus>) =
                    entries.iter().cloned().partition(|e| {
                        e.state.as_deref() != Some("Live") && not_yet(min, e, &now).is_none()
                    });
                let (mut advanced, parked) =
                    rollout::advance_step(&targets, due, &now, &self.who()).await;
                keep_starting(&mut advanced, &fresh, &now);
                advanced.extend(later);
                let advanced: Vec<StepStatus> = entries
                    .iter()
                    .filter_map(|e| {
                        advanced
                            .iter()
                            .find(|a| a.component == e.component)
                            .cloned()
                    })
                    .collect();
                for (before, after) in entries.iter().zip(&advanced) {
                    if before.deployment_id.is_none() && after.deployment_id.is_some() {
                        events.push(step_event(false, "DeployStarted", after, index, plan));
                    }
                    if before.state.as_deref() != Some("Live")
                        && after.state.as_deref() == Some("Live")
                    {
                        events.push(step_event(false, "DeploySucceeded", after, index, plan));
                    }
                    if matches!(after.state.as_deref(), Some("Failed" | "Canceled")) {
                        events.push(step_event(true, "DeployFailed", after, index, plan));
                    }
                }
                for entry in advanced {
                    if let Some(slot) = steps.iter_mut().find(|s| s.component == entry.component) {
                        *slot = entry;
                    }
                }
                if steps
                    .iter()
                    .any(|s| matches!(s.state.as_deref(), Some("Failed" | "Canceled")))
                {
                    let mut report = stalled(
                        "DeployFailed",
                        failed_message(&steps),
                        ReleasePhase::Failed,
                        &steps,
                    );
                    report
                        .status
                        .insert("finishedAt".into(), serde_json::json!(now));
                    report.events = events;
                    return Ok(report);
                }
                // A held canary is analysed before the rest of its machines move.
                let held = steps.iter().any(|s| {
                    names.contains(&s.component.as_str())
                        && s.message
                            .as_deref()
                            .is_some_and(|m| m.ends_with(crate::platform::fly::CANARY_HELD))
                });
                let mut canary_now = None;
                if held && let Some(analysis) = &self.spec.analysis {
                    let at = format!("step {}/{}: canary analysis", index + 1, plan.steps.len());
                    let stage = Stage {
                        label: &at,
                        phase: ReleasePhase::Deploying,
                        field: "canaryAnalysis",
                        prior: previous.canary_analysis.clone(),
                    };
                    let (state, report) = self
                        .analyze(ctx, analysis, stage, &steps, &started, &now, &mut events)
                        .await;
                    if let Some(report) = report {
                        return Ok(report);
                    }
                    canary_now = Some(state);
                }
                let live = steps
                    .iter()
                    .filter(|s| names.contains(&s.component.as_str()))
                    .all(|s| s.state.as_deref() == Some("Live"));
                if !live {
                    let pending: Vec<&StepStatus> = steps
                        .iter()
                        .filter(|s| names.contains(&s.component.as_str()))
                        .filter(|s| s.state.as_deref() != Some("Live"))
                        .collect();
                    let poll = poll_after(min, &pending, &now);
                    let deploying: Vec<String> = pending
                        .iter()
                        .map(|s| {
                            format!(
                                "{} ({}, {})",
                                s.component,
                                platform_name(s.platform),
                                s.message
                                    .as_deref()
                                    .or(s.state.as_deref())
                                    .unwrap_or("starting")
                            )
                        })
                        .collect();
                    let mut report = rollout_report(
                        ReleasePhase::Deploying,
                        &steps,
                        Some(&started),
                        None,
                        Verdict::Progressing {
                            reason: "Deploying".into(),
                            message: format!(
                                "step {}/{}: deploying {}",
                                index + 1,
                                plan.steps.len(),
                                deploying.join(", ")
                            ),
                        },
                        // A canary that just passed its analysis lets the rest go at once; a
                        // parked request goes at its turn.
                        Some(if canary_now.is_some() {
                            Duration::ZERO
                        } else {
                            parked.unwrap_or(poll)
                        }),
                        events,
                    );
                    if let Some(state) = canary_now {
                        report
                            .status
                            .insert("canaryAnalysis".into(), serde_json::json!(state));
                    }
                    return Ok(report);
                }
            }
            // The step is live: its components' health checks, before the next step.
            let due: Vec<&HealthCheck> = self
                .spec
                .health_checks
                .iter()
                .filter(|c| c.component.as_deref().is_some_and(|c| names.contains(&c)))
                .collect();
            let at = format!("step {}/{}", index + 1, plan.steps.len());
            let checked = self
                .verify(ctx, environment, &due, checks, &mut events, &at)
                .await;
            if let Some(report) = checked.report(&steps, &started, &now, &mut events) {
                return Ok(report);
            }
        }
        // Every step is live: the checks of no step (absolute URLs, components this Release
        // does not deploy) run now.
        let in_steps = |c: &HealthCheck| {
            c.component
                .as_deref()
                .is_some_and(|c| plan.steps.iter().flatten().any(|(_, n)| n == c))
        };
        let last: Vec<&HealthCheck> = self
            .spec
            .health_checks
            .iter()
            .filter(|c| !in_steps(c))
            .collect();
        let checked = self
            .verify(ctx, environment, &last, checks, &mut events, "verifying")
            .await;
        if let Some(report) = checked.report(&steps, &started, &now, &mut events) {
            return Ok(report);
        }
        // Every check passed: the metric analysis, when the Release declares one.
        if let Some(analysis) = &self.spec.analysis {
            let stage = Stage {
                label: "analysis",
                phase: ReleasePhase::Verifying,
                field: "analysis",
                prior: previous.analysis.clone(),
            };
            let (state, report) = self
                .analyze(ctx, analysis, stage, &steps, &started, &now, &mut events)
                .await;
            if let Some(report) = report {
                return Ok(report);
            }
            let mut report = rollout_report(
                ReleasePhase::Succeeded,
                &steps,
                Some(&started),
                Some(&now),
                succeeded(&steps),
                None,
                events,
            );
            report
                .status
                .insert("analysis".into(), serde_json::json!(state));
            return Ok(report);
        }
        Ok(rollout_report(
            ReleasePhase::Succeeded,
            &steps,
            Some(&started),
            Some(&now),
            succeeded(&steps),
            None,
            events,
        ))
    }
}

/// Entries of `fresh` components whose deployment did not start (the platform call failed)
/// stay [`rollout::STARTING`]: the call may have started one, so the next reconcile looks
/// for it before starting another.
fn keep_starting(advanced: &mut [StepStatus], fresh: &[String], now: &str) {
    for entry in advanced.iter_mut() {
        let parked = entry
            .message
            .as_deref()
            .is_some_and(|m| m.ends_with(rollout::PARKED));
        if entry.deployment_id.is_none() && fresh.contains(&entry.component) && !parked {
            entry.state = Some(rollout::STARTING.into());
            entry.started_at.get_or_insert_with(|| now.to_string());
        }
    }
}

/// The `RollbackSafe` condition.
fn rollback_safe(
    status: ConditionStatus,
    reason: &str,
    message: String,
    generation: Option<i64>,
) -> crate::api::common::Condition {
    crate::api::common::Condition {
        type_: "RollbackSafe".into(),
        status,
        observed_generation: generation,
        last_transition_time: jiff::Timestamp::now()
            .round(jiff::Unit::Second)
            .unwrap_or_else(|_| jiff::Timestamp::now())
            .to_string(),
        reason: reason.into(),
        message,
    }
}

/// The Environment's credentials Secrets for the Release's platforms, all present.
async fn credentials(
    ctx: &Context,
    namespace: &str,
    spec: &ReleaseSpec,
    environment: &Environment,
) -> Result<Snapshot, ReconcileError> {
    let refs: Vec<Reference> = rollout::credentials(spec, environment)
        .iter()
        .map(|r| Reference::secret(&r.name, &r.key, "the Environment's spec.credentials"))
        .collect();
    let secrets = Snapshot::read(&ctx.client, namespace, &refs).await?;
    let missing = secrets.missing(&refs);
    if !missing.is_empty() {
        return Err(ReconcileError::ResolveReferences(missing));
    }
    Ok(secrets)
}

/// How long Environment `environment` went without a good Release before Release `name`
/// succeeded at `finished`: from the first of the run of failed Releases (`Failed`,
/// `RolledBack`) that finished just before, by `finishedAt`, to `finished`. `None` when the
/// Release that finished before it succeeded (or there is none): nothing was restored.
pub fn time_to_restore(
    environment: &str,
    name: &str,
    finished: &str,
    releases: &[Release],
) -> Option<Duration> {
    let end = finished.parse::<jiff::Timestamp>().ok()?;
    let mut before: Vec<(jiff::Timestamp, ReleasePhase)> = releases
        .iter()
        .filter(|r| r.name_any() != name && r.spec.environment_ref.name == environment)
        .filter_map(|r| {
            let status = r.status.as_ref()?;
            let phase = status.phase?;
            let at = status.finished_at.as_deref()?.parse().ok()?;
            let ended = matches!(
                phase,
                ReleasePhase::Succeeded | ReleasePhase::Failed | ReleasePhase::RolledBack
            );
            (ended && at <= end).then_some((at, phase))
        })
        .collect();
    before.sort_by_key(|(at, _)| std::cmp::Reverse(*at));
    let first_failure = before
        .iter()
        .take_while(|(_, phase)| *phase != ReleasePhase::Succeeded)
        .last()?;
    end.duration_since(first_failure.0).try_into().ok()
}

impl Release {
    /// Observes the time to restore when this Release, succeeded at `finished`, ends a run
    /// of failed Releases of its Environment. A metric: a failure to list the Releases is
    /// logged, and does not fail the rollout.
    async fn observe_restore(&self, ctx: &Context, namespace: &str, finished: &str) {
        let environment = &self.spec.environment_ref.name;
        match gates::releases(ctx, namespace).await {
            Ok(all) => {
                if let Some(took) = time_to_restore(environment, &self.name_any(), finished, &all) {
                    ctx.metrics.release_restored(namespace, environment, took);
                }
            }
            Err(error) => {
                tracing::warn!(%error, "time to restore not observed: cannot list the Releases");
            }
        }
    }

    /// Sends the phase change `report` makes, if any, to the webhooks of the Release (else
    /// of `environment`) subscribed to it, and records the phase in `status.notifiedPhase`
    /// (a change that was not delivered is a Warning event `NotificationFailed`).
    async fn notify(
        &self,
        ctx: &Context,
        namespace: &str,
        environment: &Environment,
        mut report: Report,
    ) -> Report {
        let status = self.status.as_ref();
        let phase = report
            .status
            .get("phase")
            .and_then(|p| serde_json::from_value::<ReleasePhase>(p.clone()).ok());
        let Some(due) = notify::due(status, phase) else {
            return report;
        };
        report
            .status
            .insert("notifiedPhase".into(), serde_json::json!(due.phase));
        if !due.send {
            return report;
        }
        let phase = due.phase;
        let webhooks = notify::webhooks(
            self.spec.notifications.as_ref(),
            environment.spec.notifications.as_ref(),
            phase,
        );
        if webhooks.is_empty() {
            return report;
        }
        let (reason, message) = notify::Notice::verdict(&report.verdict);
        let notice = notify::Notice {
            kind: "Release",
            namespace: namespace.to_string(),
            name: self.name_any(),
            environment: self.spec.environment_ref.name.clone(),
            version: self.spec.version.clone(),
            phase,
            previous_phase: status.and_then(|s| s.phase),
            reason,
            message,
            at: now(),
        };
        let from = notice
            .previous_phase
            .map_or_else(|| "new".to_string(), |p| format!("{p:?}"));
        for delivery in ctx
            .notifier
            .deliver(&ctx.client, namespace, &webhooks, &notice)
            .await
        {
            ctx.metrics
                .notification(delivery.result.is_ok(), delivery.format_label());
            match delivery.result {
                Ok(()) => {
                    tracing::debug!(webhook = %delivery.webhook, ?phase, "notification sent");
                }
                Err(why) => {
                    tracing::warn!(webhook = %delivery.webhook, ?phase, %why, "notification not delivered");
                    report.events.push(ReportEvent {
                        warning: true,
                        reason: "NotificationFailed".into(),
                        note: format!(
                            "webhook {}: the change {from} → {phase:?} was not delivered: {why}",
                            delivery.webhook
                        ),
                        always: true,
                        action: format!("Notify {}", delivery.webhook),
                    });
                }
            }
        }
        report
    }

    /// Records in status, before the platforms are asked, that the deployments of the
    /// components `names` of `entries` that start one now are starting (state
    /// [`rollout::STARTING`]); in `status.rollback.steps` when `rollback` is given, else in
    /// `status.steps`. Returns those components (an entry already recorded so, by an earlier
    /// reconcile, is not among them: its deployment is looked for first), or
    /// [`ReconcileError::Outdated`] when the Release changed since this reconcile read it
    /// (checked by the write, or, when an entry is already recorded starting, by a read).
    #[allow(clippy::too_many_arguments)]
    async fn record_starting(
        &self,
        ctx: &Context,
        namespace: &str,
        targets: &std::collections::BTreeMap<String, rollout::Target>,
        entries: &mut [StepStatus],
        names: &[&str],
        now: &str,
        rollback: Option<&RollbackStatus>,
    ) -> Result<Vec<String>, ReconcileError> {
        let starts = |entry: &StepStatus| {
            names.contains(&entry.component.as_str())
                && entry.deployment_id.is_none()
                && targets
                    .get(&entry.component)
                    .is_some_and(rollout::Target::starts_deployment)
        };
        let api: kube::Api<Release> = kube::Api::namespaced(ctx.client.clone(), namespace);
        // An entry recorded starting has its deployment looked for on the platform (a list
        // the rate limit counts), unless this version is outdated: the cache can trail the
        // API by the write that recorded its id. One read of the metadata tells.
        if entries
            .iter()
            .any(|e| starts(e) && e.state.as_deref() == Some(rollout::STARTING))
        {
            let current = api.get_metadata(&self.name_any()).await.map_err(|source| {
                ReconcileError::ReadReference {
                    what: format!("Release {:?}", self.name_any()),
                    source,
                }
            })?;
            if current.resource_version() != self.resource_version() {
                return Err(ReconcileError::Outdated);
            }
        }
        let mut fresh = Vec::new();
        for entry in entries.iter_mut() {
            if starts(entry) && entry.state.as_deref() != Some(rollout::STARTING) {
                entry.state = Some(rollout::STARTING.into());
                entry.started_at = Some(now.to_string());
                fresh.push(entry.component.clone());
            }
        }
        if fresh.is_empty() {
            return Ok(fresh);
        }
        let status = match rollback {
            Some(rollback) => {
                let mut rollback = rollback.clone();
                rollback.steps = entries.to_vec();
                serde_json::json!({ "rollback": rollback })
            }
            None => serde_json::json!({ "steps": entries }),
        };
        // Conditional on the version this reconcile read: the controller's cache can trail
        // the API by a write or two (a reconcile woken by another object's event right after
        // this one's last), and a step an older version shows as not started may have
        // started since. The API refuses the write then (409), and nothing is sent.
        let patch = serde_json::json!({
            "metadata": { "resourceVersion": self.resource_version() },
            "status": status,
        });
        match api
            .patch_status(
                &self.name_any(),
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(&patch),
            )
            .await
        {
            Ok(written) => {
                ctx.wrote(self, written.resource_version());
                Ok(fresh)
            }
            Err(kube::Error::Api(e)) if e.code == 409 => Err(ReconcileError::Outdated),
            Err(error) => Err(ReconcileError::PatchStatus(error)),
        }
    }

    /// Whose rollout this is, for the platforms' rate-limit lines.
    fn who(&self) -> String {
        format!(
            "release:{}/{}",
            self.namespace().unwrap_or_default(),
            self.name_any()
        )
    }

    /// The Release's Environment's previous Succeeded Release (the last to finish).
    async fn previous_succeeded(
        &self,
        ctx: &Context,
        namespace: &str,
    ) -> Result<Option<Release>, ReconcileError> {
        let all = gates::releases(ctx, namespace).await?;
        let finished = |r: &Release| {
            r.status
                .as_ref()
                .and_then(|s| s.finished_at.clone())
                .unwrap_or_default()
        };
        Ok(all
            .into_iter()
            .filter(|r| {
                r.name_any() != self.name_any()
                    && r.spec.environment_ref.name == self.spec.environment_ref.name
                    && r.status.as_ref().and_then(|s| s.phase) == Some(ReleasePhase::Succeeded)
            })
            .max_by_key(finished))
    }

    /// Why rolling the code back to `to` is unsafe, if it is: a migration of the Migrations
    /// this Release names, applied after `to` finished, that old code may not work with
    /// (by the lint's classification: drops, renames, type changes, truncation, and new
    /// NOT NULL columns without a default).
    async fn unsafe_migrations(
        &self,
        ctx: &Context,
        namespace: &str,
        to: &Release,
    ) -> Result<Option<String>, ReconcileError> {
        let since = to
            .status
            .as_ref()
            .and_then(|s| s.finished_at.as_deref())
            .and_then(|t| t.parse::<jiff::Timestamp>().ok());
        let migrations: kube::Api<crate::api::Migration> =
            kube::Api::namespaced(ctx.client.clone(), namespace);
        let read = |what: String| move |source| ReconcileError::ReadReference { what, source };
        for name in &self.spec.migrations {
            let Some(migration) = migrations
                .get_opt(name)
                .await
                .map_err(read(format!("Migration {name:?}")))?
            else {
                continue;
            };
            let applied: Vec<&str> = migration
                .status
                .as_ref()
                .map(|s| s.applied.as_slice())
                .unwrap_or_default()
                .iter()
                .filter(|a| {
                    let at = a
                        .applied_at
                        .as_deref()
                        .and_then(|t| t.parse::<jiff::Timestamp>().ok());
                    matches!((at, since), (Some(at), Some(since)) if at > since)
                })
                .map(|a| a.version.as_str())
                .collect();
            if applied.is_empty() {
                continue;
            }
            let Some(set) = gates::migration_files(ctx, namespace, &migration).await? else {
                return Ok(Some(format!(
                    "the source of Migration {name:?} cannot be read, so whether its migrations applied since Release {} are backward compatible is unknown",
                    to.name_any()
                )));
            };
            for version in applied {
                let Some(file) = set.get(version) else {
                    continue;
                };
                let policy = crate::migrate::lint::LintPolicy::default();
                if let Some(finding) = crate::migrate::lint::lint_migration(file, &policy)
                    .into_iter()
                    .find(|f| {
                        f.destructive
                            || matches!(
                                f.rule.as_str(),
                                "adding-not-nullable-field" | "adding-required-field"
                            )
                    })
                {
                    return Ok(Some(format!(
                        "migration {} of Migration {name:?}, applied after Release {} succeeded, is not backward compatible ({}: {}); the old code may not work with the new schema, so a person decides",
                        file.file,
                        to.name_any(),
                        finding.rule,
                        finding.message
                    )));
                }
            }
        }
        Ok(None)
    }

    /// Turns the report of a rollout that just failed into the start of its rollback:
    /// every component it changed goes back to the previous Succeeded Release. Without one
    /// (or with nothing changed) it stays `Failed`, saying so.
    async fn start_rollback(
        &self,
        ctx: &Context,
        namespace: &str,
        mut failed: Report,
        requested_by: Option<&str>,
    ) -> Result<Report, ReconcileError> {
        let Verdict::Stalled { reason, message } = failed.verdict.clone() else {
            return Ok(failed);
        };
        let steps: Vec<StepStatus> = failed
            .status
            .get("steps")
            .and_then(|s| serde_json::from_value(s.clone()).ok())
            .unwrap_or_default();
        if !steps.iter().any(|s| s.deployment_id.is_some()) {
            return Ok(failed);
        }
        let Some(to) = self.previous_succeeded(ctx, namespace).await? else {
            failed.verdict = Verdict::Stalled {
                reason,
                message: format!(
                    "{message} (not rolled back: no earlier Succeeded Release of Environment {:?})",
                    self.spec.environment_ref.name
                ),
            };
            return Ok(failed);
        };
        // A person who asks for the rollback has decided: the migration check is theirs.
        let unsafe_migrations = match requested_by {
            Some(_) => None,
            None => self.unsafe_migrations(ctx, namespace, &to).await?,
        };
        if let Some(why) = unsafe_migrations {
            failed.verdict = Verdict::Stalled {
                reason,
                message: format!("{message} (not rolled back: {why})"),
            };
            failed.conditions.push(rollback_safe(
                ConditionStatus::False,
                "MigrationNotBackwardCompatible",
                why.clone(),
                self.metadata.generation,
            ));
            failed.events.push(ReportEvent {
                warning: true,
                reason: "RollbackUnsafe".into(),
                note: format!("not rolled back to Release {}: {why}", to.name_any()),
                always: true,
                action: "RollbackUnsafe".into(),
            });
            return Ok(failed);
        }
        if requested_by.is_none() {
            failed.conditions.push(rollback_safe(
                ConditionStatus::True,
                "BackwardCompatible",
                format!(
                    "no migration applied since Release {} is destructive or adds a required column",
                    to.name_any()
                ),
                self.metadata.generation,
            ));
        }
        let rollback = RollbackStatus {
            to: to.name_any(),
            reason,
            message: message.clone(),
            requested_by: requested_by.map(str::to_string),
            steps: Vec::new(),
        };
        failed.status.remove("finishedAt");
        failed
            .status
            .insert("phase".into(), serde_json::json!(ReleasePhase::RollingBack));
        failed
            .status
            .insert("rollback".into(), serde_json::json!(rollback));
        failed.requeue_after = Some(Duration::ZERO);
        let why = match requested_by {
            Some(who) => format!("as {who} asked ({ROLLBACK_ANNOTATION})"),
            None => format!("after: {message}"),
        };
        failed.verdict = Verdict::Progressing {
            reason: "RollingBack".into(),
            message: format!("rolling back to Release {} {why}", to.name_any()),
        };
        failed.events.push(ReportEvent {
            warning: true,
            reason: "RollbackStarted".into(),
            note: format!(
                "rolling every changed component back to Release {} {why}",
                to.name_any()
            ),
            always: true,
            action: "RollbackStarted".into(),
        });
        Ok(failed)
    }

    /// Moves the rollback one reconcile forward (resumable from `status.rollback.steps`).
    async fn roll_back(
        &self,
        ctx: &Context,
        namespace: &str,
        environment: &Environment,
        previous: &crate::api::release::ReleaseStatus,
        steps: &[StepStatus],
        now: &str,
    ) -> Result<Report, ReconcileError> {
        let mut rollback = previous.rollback.clone().unwrap_or_default();
        let started = previous.started_at.as_deref();
        let api: kube::Api<Release> = kube::Api::namespaced(ctx.client.clone(), namespace);
        let to =
            api.get_opt(&rollback.to)
                .await
                .map_err(|source| ReconcileError::ReadReference {
                    what: format!("Release {:?}", rollback.to),
                    source,
                })?;
        let fail = |reason: &str, message: String, rollback: &RollbackStatus| {
            let mut report = rollout_report(
                ReleasePhase::Failed,
                steps,
                started,
                Some(now),
                Verdict::Stalled {
                    reason: reason.into(),
                    message: message.clone(),
                },
                None,
                vec![ReportEvent {
                    warning: true,
                    reason: reason.into(),
                    note: message,
                    always: true,
                    action: reason.into(),
                }],
            );
            report
                .status
                .insert("rollback".into(), serde_json::json!(rollback));
            report
        };
        let Some(to) = to else {
            let message = format!(
                "{} (rollback impossible: Release {} is gone)",
                rollback.message, rollback.to
            );
            return Ok(fail("RollbackFailed", message, &rollback));
        };
        let changed: Vec<StepStatus> = steps
            .iter()
            .filter(|s| s.deployment_id.is_some())
            .cloned()
            .collect();
        let secrets = credentials(ctx, namespace, &self.spec, environment).await?;
        let targets = match rollout::rollback_targets(
            &changed,
            &to,
            environment,
            &secrets.values,
            &ctx.platforms,
        ) {
            Ok(targets) => targets,
            Err(
                rollout::Unready::NotCreated(why)
                | rollout::Unready::Unsupported(why)
                | rollout::Unready::NoCredentials(why),
            ) => {
                let message = format!("{} (rollback impossible: {why})", rollback.message);
                return Ok(fail("RollbackFailed", message, &rollback));
            }
        };
        let entries: Vec<StepStatus> = changed
            .iter()
            .map(|c| {
                rollback
                    .steps
                    .iter()
                    .find(|s| s.component == c.component)
                    .cloned()
                    .unwrap_or_else(|| StepStatus {
                        component: c.component.clone(),
                        platform: c.platform,
                        state: Some("Pending".into()),
                        ..StepStatus::default()
                    })
            })
            .collect();
        let pending: Vec<StepStatus> = entries
            .iter()
            .filter(|e| e.state.as_deref() != Some("Live"))
            .cloned()
            .collect();
        let names: Vec<&str> = pending.iter().map(|e| e.component.as_str()).collect();
        let mut recorded = entries.clone();
        let fresh = self
            .record_starting(
                ctx,
                namespace,
                &targets,
                &mut recorded,
                &names,
                now,
                Some(&rollback),
            )
            .await?;
        let (mut advanced, parked) =
            rollout::advance_step(&targets, pending, now, &self.who()).await;
        keep_starting(&mut advanced, &fresh, now);
        rollback.steps = entries
            .into_iter()
            .map(|e| {
                advanced
                    .iter()
                    .position(|a| a.component == e.component)
                    .map(|i| advanced.remove(i))
                    .unwrap_or(e)
            })
            .collect();
        if let Some(broken) = rollback
            .steps
            .iter()
            .find(|s| matches!(s.state.as_deref(), Some("Failed" | "Canceled")))
        {
            let message = format!(
                "{} (rollback to Release {} failed: {} ({}): {})",
                rollback.message,
                rollback.to,
                broken.component,
                platform_name(broken.platform),
                broken.message.as_deref().unwrap_or("failed")
            );
            return Ok(fail("RollbackFailed", message, &rollback));
        }
        let back: Vec<String> = rollback
            .steps
            .iter()
            .filter(|s| s.state.as_deref() != Some("Live"))
            .map(|s| {
                format!(
                    "{} ({}, {})",
                    s.component,
                    platform_name(s.platform),
                    s.message.as_deref().unwrap_or("starting")
                )
            })
            .collect();
        let (phase, verdict, requeue, finished, events) = if back.is_empty() {
            let message = format!(
                "rolled back to Release {} ({} component(s)) after: {}",
                rollback.to,
                rollback.steps.len(),
                rollback.message
            );
            (
                ReleasePhase::RolledBack,
                Verdict::Stalled {
                    reason: "RolledBack".into(),
                    message: message.clone(),
                },
                None,
                Some(now),
                vec![ReportEvent {
                    warning: true,
                    reason: "RolledBack".into(),
                    note: message,
                    always: true,
                    action: "RolledBack".into(),
                }],
            )
        } else {
            (
                ReleasePhase::RollingBack,
                Verdict::Progressing {
                    reason: "RollingBack".into(),
                    message: format!(
                        "rolling back to Release {}: {}",
                        rollback.to,
                        back.join(", ")
                    ),
                },
                Some(parked.unwrap_or(ctx.pending_interval.min(ROLLOUT_POLL))),
                None,
                Vec::new(),
            )
        };
        let mut report = rollout_report(phase, steps, started, finished, verdict, requeue, events);
        report
            .status
            .insert("rollback".into(), serde_json::json!(rollback));
        Ok(report)
    }
}

/// Which analysis runs: of a held Fly canary (phase `Deploying`) or after the last step
/// (phase `Verifying`).
struct Stage<'a> {
    /// How messages and events name it (`analysis`, `step 2/2: canary analysis`).
    label: &'a str,
    /// The phase while it runs.
    phase: ReleasePhase,
    /// The status field holding it (`analysis`, `canaryAnalysis`).
    field: &'static str,
    /// Its status so far.
    prior: Option<AnalysisStatus>,
}

impl Release {
    /// Makes the analysis' measurement when one is due, and says where it stands: the
    /// analysis status, and the report of a rollout stopped at it, holding that status in
    /// the stage's field (`None` once it passed).
    #[allow(clippy::too_many_arguments)]
    async fn analyze(
        &self,
        ctx: &Context,
        analysis: &crate::api::release::Analysis,
        stage: Stage<'_>,
        steps: &[StepStatus],
        started: &str,
        now: &str,
        events: &mut Vec<ReportEvent>,
    ) -> (AnalysisStatus, Option<Report>) {
        let label = stage.label;
        let mut state = stage.prior.unwrap_or_else(|| AnalysisStatus {
            state: analysis::RUNNING.into(),
            ..AnalysisStatus::default()
        });
        let at = now
            .parse::<jiff::Timestamp>()
            .unwrap_or_else(|_| jiff::Timestamp::now());
        if state.state == analysis::RUNNING && analysis::due_in(analysis, &state, at).is_zero() {
            let samples = join_all(
                analysis
                    .metrics
                    .iter()
                    .map(|m| ctx.prometheus.query(&analysis.prometheus_url, &m.query)),
            )
            .await;
            if state.measurements == 0 {
                events.push(ReportEvent {
                    warning: false,
                    reason: "AnalysisStarted".into(),
                    note: format!(
                        "{label} of {} metric(s): {} measurement(s), one every {}",
                        analysis.metrics.len(),
                        analysis.count,
                        analysis.interval
                    ),
                    always: true,
                    action: "AnalysisStarted".into(),
                });
            }
            state = analysis::record(analysis, state, &samples, now);
        }
        let summary = analysis::summary(analysis, &state);
        let count = analysis.count.max(1);
        let stop = |reason: &str, message: String, events: &mut Vec<ReportEvent>| {
            events.push(ReportEvent {
                warning: true,
                reason: reason.into(),
                note: message.clone(),
                always: true,
                action: reason.into(),
            });
            rollout_report(
                ReleasePhase::Failed,
                steps,
                Some(started),
                Some(now),
                Verdict::Stalled {
                    reason: reason.into(),
                    message,
                },
                None,
                std::mem::take(events),
            )
        };
        let report = match state.state.as_str() {
            analysis::PASSED => {
                events.push(ReportEvent {
                    warning: false,
                    reason: "AnalysisPassed".into(),
                    note: format!("{label} passed: {summary}"),
                    always: true,
                    action: "AnalysisPassed".into(),
                });
                None
            }
            analysis::FAILED => Some(stop(
                "AnalysisFailed",
                format!(
                    "{label} failed after {} measurement(s): {summary}",
                    state.measurements
                ),
                events,
            )),
            analysis::INCONCLUSIVE => Some(stop(
                "AnalysisInconclusive",
                format!(
                    "{label} inconclusive after {} measurement(s): {summary}; what is deployed stays (annotate the Release {ROLLBACK_ANNOTATION}=<who> to roll it back)",
                    state.measurements
                ),
                events,
            )),
            _ => {
                let wait = analysis::due_in(analysis, &state, jiff::Timestamp::now())
                    .max(Duration::from_millis(100));
                Some(rollout_report(
                    stage.phase,
                    steps,
                    Some(started),
                    None,
                    Verdict::Progressing {
                        reason: "Analyzing".into(),
                        message: format!(
                            "{label} {}/{count}: {}",
                            state.measurements,
                            if summary.is_empty() {
                                "first measurement due".to_string()
                            } else {
                                summary
                            }
                        ),
                    },
                    Some(wait),
                    std::mem::take(events),
                ))
            }
        };
        let report = report.map(|mut report| {
            report
                .status
                .insert(stage.field.into(), serde_json::json!(state));
            report
        });
        (state, report)
    }
}

/// Where the health checks of one point of the rollout stand.
enum Checked {
    /// Every check passed (or there are none).
    Passed,
    /// Attempts go on: what to show, and when the next one is due.
    Running { message: String, wait: Duration },
    /// A check failed: why.
    Failed(String),
}

impl Checked {
    /// The report of a rollout stopped at its health checks: still `Verifying`, or
    /// `Failed`; `None` once they passed.
    fn report(
        self,
        steps: &[StepStatus],
        started: &str,
        now: &str,
        events: &mut Vec<ReportEvent>,
    ) -> Option<Report> {
        match self {
            Checked::Passed => None,
            Checked::Running { message, wait } => Some(rollout_report(
                ReleasePhase::Verifying,
                steps,
                Some(started),
                None,
                Verdict::Progressing {
                    reason: "HealthChecking".into(),
                    message,
                },
                Some(wait),
                std::mem::take(events),
            )),
            Checked::Failed(message) => Some(rollout_report(
                ReleasePhase::Failed,
                steps,
                Some(started),
                Some(now),
                Verdict::Stalled {
                    reason: "HealthCheckFailed".into(),
                    message,
                },
                None,
                std::mem::take(events),
            )),
        }
    }
}

impl Release {
    /// Makes the attempts of `due` checks that are due now (in parallel), records them in
    /// `checks`, and says where they stand.
    async fn verify(
        &self,
        ctx: &Context,
        environment: &Environment,
        due: &[&HealthCheck],
        checks: &mut Vec<CheckStatus>,
        events: &mut Vec<ReportEvent>,
        at: &str,
    ) -> Checked {
        if due.is_empty() {
            return Checked::Passed;
        }
        let now = jiff::Timestamp::now();
        let stamp = now
            .round(jiff::Unit::Millisecond)
            .unwrap_or(now)
            .to_string();
        let attempts = due.iter().map(|check| {
            let status = checks
                .iter()
                .find(|s| s.name == check.name)
                .cloned()
                .unwrap_or_else(|| CheckStatus {
                    name: check.name.clone(),
                    state: health::RUNNING.into(),
                    ..CheckStatus::default()
                });
            let stamp = stamp.clone();
            async move {
                if status.state != health::RUNNING || !health::due_in(check, &status, now).is_zero()
                {
                    return status;
                }
                let url = match health::url_of(check, environment) {
                    Ok(url) => url,
                    Err(message) => {
                        return CheckStatus {
                            state: health::FAILED.into(),
                            message: Some(message),
                            last_probe_at: Some(stamp),
                            ..status
                        };
                    }
                };
                let (budget, _) = health::timings(check);
                let probe = ctx.prober.probe(&url, budget).await;
                let mut status = health::record(check, status, &probe, &stamp);
                status.url = Some(url);
                status
            }
        });
        let results = join_all(attempts).await;
        for result in results {
            let was = checks.iter().position(|s| s.name == result.name);
            let before = was.map(|i| checks[i].state.clone());
            if before.as_deref() != Some(result.state.as_str()) {
                let note = format!(
                    "{at}: health check {} {}: {}",
                    result.name,
                    result.url.as_deref().unwrap_or_default(),
                    result.message.as_deref().unwrap_or_default()
                );
                match result.state.as_str() {
                    health::PASSED => {
                        events.push(check_event(false, "HealthCheckPassed", &result.name, note))
                    }
                    health::FAILED => {
                        events.push(check_event(true, "HealthCheckFailed", &result.name, note))
                    }
                    _ => {}
                }
            }
            match was {
                Some(i) => checks[i] = result,
                None => checks.push(result),
            }
        }
        let states: Vec<&CheckStatus> = due
            .iter()
            .filter_map(|c| checks.iter().find(|s| s.name == c.name))
            .collect();
        if let Some(failed) = states.iter().find(|s| s.state == health::FAILED) {
            return Checked::Failed(format!(
                "{at}: health check {} failed after {} unhealthy answer(s): {}",
                failed.name,
                failed.failures,
                failed.message.as_deref().unwrap_or("failed")
            ));
        }
        if states.iter().all(|s| s.state == health::PASSED) {
            return Checked::Passed;
        }
        let running: Vec<String> = due
            .iter()
            .filter_map(|c| checks.iter().find(|s| s.name == c.name).map(|s| (c, s)))
            .filter(|(_, s)| s.state == health::RUNNING)
            .map(|(c, s)| {
                format!(
                    "{} {}/{} healthy ({})",
                    c.name,
                    s.successes,
                    c.success_threshold.max(1),
                    s.message.as_deref().unwrap_or("waiting")
                )
            })
            .collect();
        let wait = due
            .iter()
            .filter_map(|c| {
                checks
                    .iter()
                    .find(|s| s.name == c.name && s.state == health::RUNNING)
                    .map(|s| health::due_in(c, s, jiff::Timestamp::now()))
            })
            .min()
            .unwrap_or(ROLLOUT_POLL)
            .max(Duration::from_millis(100));
        Checked::Running {
            message: format!("{at}: health checks: {}", running.join(", ")),
            wait,
        }
    }
}

fn check_event(warning: bool, reason: &str, name: &str, note: String) -> ReportEvent {
    ReportEvent {
        warning,
        reason: reason.into(),
        note,
        always: true,
        action: format!("{reason} {name}"),
    }
}

fn succeeded(steps: &[StepStatus]) -> Verdict {
    Verdict::Ready {
        reason: "Succeeded".into(),
        message: format!("{} component(s) deployed and live", steps.len()),
    }
}

fn failed_message(steps: &[StepStatus]) -> String {
    let failed: Vec<String> = steps
        .iter()
        .filter(|s| matches!(s.state.as_deref(), Some("Failed" | "Canceled")))
        .map(|s| {
            format!(
                "{} ({}): {}",
                s.component,
                platform_name(s.platform),
                s.message.as_deref().unwrap_or("failed")
            )
        })
        .collect();
    format!("deployment failed: {}", failed.join("; "))
}

fn step_event(
    warning: bool,
    reason: &str,
    entry: &StepStatus,
    index: usize,
    plan: &ReleasePlan,
) -> ReportEvent {
    ReportEvent {
        warning,
        reason: reason.into(),
        note: format!(
            "step {}/{}: {} ({}) deployment {}: {}",
            index + 1,
            plan.steps.len(),
            entry.component,
            platform_name(entry.platform),
            entry.deployment_id.as_deref().unwrap_or("?"),
            entry.message.as_deref().unwrap_or_default()
        ),
        always: true,
        action: format!("{reason} {}", entry.component),
    }
}

impl Reconciled for Release {
    const CONTROLLER: &'static str = "release";
    const CONDITIONAL_STATUS: bool = true;

    async fn apply(&self, ctx: &Context) -> Result<Report, ReconcileError> {
        let namespace = self.namespace().ok_or(ReconcileError::Unidentified)?;
        let refs = references(&self.spec);
        let snapshot = Snapshot::read(&ctx.client, &namespace, &refs).await?;
        let missing = snapshot.missing(&refs);
        if !missing.is_empty() {
            return Err(ReconcileError::ResolveReferences(missing));
        }
        let Some(environment) = snapshot.environment(&self.spec.environment_ref.name) else {
            // Checked just above: a missing Environment is a missing reference.
            return Err(ReconcileError::ResolveReferences(snapshot.missing(&refs)));
        };
        validate_components(&self.spec, environment)?;
        let plan = plan(&self.spec);
        tracing::debug!(%plan, "planned");
        let report = self.roll_out(ctx, &namespace, &plan, environment).await?;
        Ok(self.notify(ctx, &namespace, environment, report).await)
    }

    async fn cleanup(&self, _ctx: &Context) -> Result<(), ReconcileError> {
        // A Release owns no platform object of its own: deleting it never undeploys.
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::EnvironmentSpec;

    fn spec(steps: serde_json::Value) -> ReleaseSpec {
        serde_json::from_value(serde_json::json!({
            "environmentRef": {"name": "prod"},
            "version": "1.2.3",
            "artifacts": [
                {"component": "api", "platform": "render", "image": "api:1"},
                {"component": "web", "platform": "vercel", "gitRef": "abc"},
                {"component": "edge", "platform": "fly", "image": "edge:1"}],
            "steps": steps,
            "migrations": ["init"],
            "promotion": {"fromEnvironment": "staging"}
        }))
        .unwrap()
    }

    fn environment() -> Environment {
        let spec: EnvironmentSpec = serde_json::from_value(serde_json::json!({
            "render": {"ownerId": "o", "services": [{"name": "api", "type": "web", "image": "i"}]},
            "vercel": {"projects": [{"name": "web"}]},
            "fly": {"org": "o", "apps": [{"name": "edge", "image": "i", "regions": [{"region": "ams", "count": 1}]}]}
        }))
        .unwrap();
        Environment::new("prod", spec)
    }

    #[test]
    fn the_environment_promotion_source_and_migrations_are_references() {
        let refs = references(&spec(serde_json::json!([])));
        let fields: Vec<_> = refs.iter().map(|r| r.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.environmentRef",
                "spec.promotion.fromEnvironment",
                "spec.migrations[0]"
            ]
        );
    }

    #[test]
    fn artifacts_naming_components_of_the_environment_are_valid() {
        assert!(validate_components(&spec(serde_json::json!([])), &environment()).is_ok());
    }

    #[test]
    fn an_artifact_naming_an_unknown_component_is_an_invalid_spec() {
        let mut spec = spec(serde_json::json!([]));
        spec.artifacts[2].component = "worker".into();
        let err = validate_components(&spec, &environment()).unwrap_err();
        assert_eq!(err.kind(), "UnknownComponent");
        assert!(err.is_permanent());
        assert!(err.stall_message().contains("\"worker\""));
    }

    #[test]
    fn a_component_on_the_wrong_platform_is_unknown() {
        let mut spec = spec(serde_json::json!([]));
        spec.artifacts[0].platform = ComponentPlatform::Fly;
        assert!(validate_components(&spec, &environment()).is_err());
    }

    #[test]
    fn a_long_deploy_is_polled_less_often_and_never_more_than_a_fifth_late() {
        let min = Duration::from_secs(2);
        let started = |at: &str| StepStatus {
            started_at: Some(at.into()),
            deployment_id: Some("dep-1".into()),
            ..StepStatus::default()
        };
        let young = started("2026-12-06T10:00:00Z");
        let now = "2026-12-06T10:00:04Z";
        // The first look is at 6 times the minimum.
        assert_eq!(poll_after(min, &[&young], now), Duration::from_secs(8));
        let old = started("2026-12-06T09:58:00Z");
        assert_eq!(poll_after(min, &[&old], now), Duration::from_millis(24_800));
        // Each deployment is looked at when it is due: the step, at the soonest.
        assert_eq!(
            poll_after(min, &[&young, &old], now),
            Duration::from_secs(8)
        );
        assert_eq!(not_yet(min, &old, now), None);
        let ancient = started("2026-12-06T08:00:00Z");
        assert_eq!(poll_after(min, &[&ancient], now), min * 15);
        // Fly rollouts move a batch every time they are looked at: never left alone.
        let fly = StepStatus {
            platform: ComponentPlatform::Fly,
            ..young.clone()
        };
        assert_eq!(poll_after(min, &[&fly], now), min);
    }

    #[test]
    fn without_steps_each_artifact_is_its_own_step_after_the_migrations() {
        let plan = plan(&spec(serde_json::json!([])));
        assert_eq!(plan.steps.len(), 3);
        assert_eq!(
            plan.to_string(),
            "wait for migrations: init\nstep 1: deploy render/api\nstep 2: deploy vercel/web\nstep 3: deploy fly/edge\n"
        );
    }

    fn finished(name: &str, environment: &str, phase: ReleasePhase, at: &str) -> Release {
        let mut spec = spec(serde_json::json!([]));
        spec.environment_ref.name = environment.into();
        let mut release = Release::new(name, spec);
        release.status = Some(crate::api::release::ReleaseStatus {
            phase: Some(phase),
            finished_at: Some(at.into()),
            ..Default::default()
        });
        release
    }

    #[test]
    fn the_time_to_restore_runs_from_the_first_failure_since_the_last_success() {
        use ReleasePhase::{Failed, RolledBack, Succeeded};
        let restored =
            |releases: &[Release]| time_to_restore("prod", "fix", "2026-12-06T11:00:00Z", releases);
        let history = [
            finished("good", "prod", Succeeded, "2026-12-06T10:00:00Z"),
            finished("bad-1", "prod", Failed, "2026-12-06T10:10:00Z"),
            finished("bad-2", "prod", RolledBack, "2026-12-06T10:30:00Z"),
            // Another Environment's failure, and a Release that finished later, do not count.
            finished("staging", "staging", Failed, "2026-12-06T09:00:00Z"),
            finished("later", "prod", Failed, "2026-12-06T12:00:00Z"),
        ];
        assert_eq!(restored(&history), Some(Duration::from_secs(50 * 60)));
        assert_eq!(
            restored(&history[1..2]),
            Some(Duration::from_secs(50 * 60)),
            "a failure with no success before it"
        );
        // After a success nothing was broken; with no history either.
        assert_eq!(restored(&history[..1]), None);
        assert_eq!(restored(&[]), None);
        let mut fixed_again = history.to_vec();
        fixed_again.push(finished(
            "hotfix",
            "prod",
            Succeeded,
            "2026-12-06T10:40:00Z",
        ));
        assert_eq!(restored(&fixed_again), None);
        // The Release itself is not its own history.
        let itself = [finished("fix", "prod", Failed, "2026-12-06T10:50:00Z")];
        assert_eq!(restored(&itself), None);
    }

    #[test]
    fn explicit_steps_group_components_in_order() {
        let plan = plan(&spec(serde_json::json!([
            {"components": ["edge", "api"]}, {"components": ["web"]}])));
        assert_eq!(
            plan.steps[0],
            vec![
                (ComponentPlatform::Fly, "edge".to_string()),
                (ComponentPlatform::Render, "api".to_string()),
            ]
        );
        let mut steps = planned_steps(&plan);
        let order: Vec<&str> = steps.iter().map(|s| s.component.as_str()).collect();
        assert_eq!(order, ["edge", "api", "web"]);
        assert!(steps.iter().all(|s| s.state.as_deref() == Some("Pending")));
        assert_eq!(progress(&plan, &steps), "0/2");
        steps[0].state = Some("Live".into());
        assert_eq!(
            progress(&plan, &steps),
            "0/2",
            "a step is done when all of it is live"
        );
        steps[1].state = Some("Live".into());
        assert_eq!(progress(&plan, &steps), "1/2");
    }
}
