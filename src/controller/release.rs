//! The Release reconciler: observe (the Environment, the promotion source Environment and
//! the Migrations the Release names) → validate what the schema cannot (each artifact names
//! a component of the referenced Environment on its platform) → plan (the ordered rollout
//! steps, a pure value) → act (deploying comes in a later issue; nothing is deployed today)
//! → report (phase `Pending`, one step entry per component).

use std::fmt;
use std::time::Duration;

use kube::ResourceExt;

use crate::api::Environment;
use crate::api::Release;
use crate::api::release::{ComponentPlatform, ReleasePhase, ReleaseSpec, StepStatus};
use crate::controller::conditions::Verdict;
use crate::controller::error::ReconcileError;
use crate::controller::reconcile::{Context, Reconciled, Report};
use crate::controller::references::{RefKind, Reference, Snapshot};

/// How often a resolved Release is checked again (a Release has no `interval` field).
pub const RESYNC: Duration = Duration::from_secs(600);
/// Reason of a resolved and planned Release, which this version does not deploy.
pub const REASON_NOT_DEPLOYED: &str = "DeploymentNotImplemented";

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

/// The status fields of a resolved Release (pure).
pub fn report(plan: &ReleasePlan) -> Report {
    let steps: Vec<StepStatus> = plan
        .steps
        .iter()
        .flatten()
        .map(|(platform, component)| StepStatus {
            component: component.clone(),
            platform: *platform,
            state: Some("Pending".into()),
            ..StepStatus::default()
        })
        .collect();
    let mut status = serde_json::Map::new();
    status.insert("phase".into(), serde_json::json!(ReleasePhase::Pending));
    status.insert("steps".into(), serde_json::json!(steps));
    // Ready would claim the version is live: it is not, since this Tether does not deploy.
    // Stalled says so (nothing the user changes will make progress) without a false success.
    Report {
        verdict: Verdict::Stalled {
            reason: REASON_NOT_DEPLOYED.into(),
            message: format!(
                "All references resolved and {} artifact(s) planned in {} step(s), but this version of Tether does not deploy Releases yet: nothing was deployed",
                steps.len(),
                plan.steps.len()
            ),
        },
        status,
        requeue_after: Some(RESYNC),
        conditions: Vec::new(),
        events: Vec::new(),
    }
}

impl Reconciled for Release {
    const CONTROLLER: &'static str = "release";

    async fn apply(&self, ctx: &Context) -> Result<Report, ReconcileError> {
        let namespace = self.namespace().ok_or(ReconcileError::Unidentified)?;
        let refs = references(&self.spec);
        let snapshot = Snapshot::read(&ctx.client, &namespace, &refs).await?;
        let missing = snapshot.missing(&refs);
        if !missing.is_empty() {
            return Err(ReconcileError::ResolveReferences(missing));
        }
        if let Some(environment) = snapshot.environment(&self.spec.environment_ref.name) {
            validate_components(&self.spec, environment)?;
        }
        // Plan (pure). Act: the rollout (gates, deploys, checks) plugs in here.
        let plan = plan(&self.spec);
        tracing::debug!(%plan, "planned");
        Ok(report(&plan))
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
    fn without_steps_each_artifact_is_its_own_step_after_the_migrations() {
        let plan = plan(&spec(serde_json::json!([])));
        assert_eq!(plan.steps.len(), 3);
        assert_eq!(
            plan.to_string(),
            "wait for migrations: init\nstep 1: deploy render/api\nstep 2: deploy vercel/web\nstep 3: deploy fly/edge\n"
        );
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
        let report = report(&plan);
        assert_eq!(report.status["phase"], "Pending");
        assert_eq!(report.status["steps"].as_array().unwrap().len(), 3);
    }

    #[test]
    fn a_planned_release_is_never_ready_since_nothing_is_deployed() {
        let report = report(&plan(&spec(serde_json::json!([]))));
        match &report.verdict {
            Verdict::Stalled { reason, message } => {
                assert_eq!(reason, REASON_NOT_DEPLOYED);
                assert!(message.contains("nothing was deployed"), "{message}");
            }
            other => panic!("a Release that deployed nothing must not be Ready: {other:?}"),
        }
    }
}
