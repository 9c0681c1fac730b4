//! A Release's gates, checked before its rollout changes anything, in this order:
//! promotion (the same version, with the same artifacts, must have succeeded in
//! `promotion.fromEnvironment`), approval (the `tether.dev/approved-by` annotation), and one
//! rollout at a time per Environment (a newer Release waits for the one in progress and
//! for older ones waiting their turn).

use std::collections::BTreeSet;
use std::time::Duration;

use kube::ResourceExt;
use kube::api::{Api, ListParams};

use crate::api::Release;
use crate::api::common::{Condition, ConditionStatus};
use crate::api::release::{Artifact, ReleasePhase, ReleaseStatus};
use crate::controller::conditions::Verdict;
use crate::controller::error::ReconcileError;
use crate::controller::reconcile::{Context, Report, ReportEvent};

/// The annotation that approves a Release: its value says who approved.
pub const APPROVED_BY: &str = "tether.dev/approved-by";
/// The condition type of the approval gate.
pub const APPROVED: &str = "Approved";
/// The condition type of the promotion gate.
pub const PROMOTABLE: &str = "Promotable";

/// How often a Release waiting at a gate that no watch reports on (another Release
/// finishing) looks again.
const GATE_POLL: Duration = Duration::from_secs(5);
/// How often a refused promotion looks again (the version may succeed there later).
const REFUSED_POLL: Duration = Duration::from_secs(30);

/// What the gates say.
pub enum Gates {
    /// Every gate is open: the status fields and conditions recording it.
    Open {
        /// `approvedBy`, `approvedAt`, `promotedFrom`.
        status: serde_json::Map<String, serde_json::Value>,
        /// `Approved`, `Promotable`.
        conditions: Vec<Condition>,
        /// `Approved` when the approval is new.
        events: Vec<ReportEvent>,
    },
    /// A gate is closed: the report saying which, and why.
    Closed(Report),
}

/// The sources a Release deploys, per platform (component names differ between
/// Environments; what is deployed does not).
fn sources(artifacts: &[Artifact]) -> BTreeSet<(String, String)> {
    artifacts
        .iter()
        .filter_map(|a| {
            let source = a
                .image
                .clone()
                .or_else(|| a.git_ref.clone())
                .or_else(|| a.deployment_id.clone())?;
            Some((format!("{:?}", a.platform).to_lowercase(), source))
        })
        .collect()
}

fn phase(release: &Release) -> Option<ReleasePhase> {
    release.status.as_ref().and_then(|s| s.phase)
}

fn stalled(release: &Release) -> bool {
    release.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == "Stalled" && c.status == ConditionStatus::True)
    })
}

/// Whether `a` was created before `b` (by name when at the same second).
fn older(a: &Release, b: &Release) -> bool {
    let key = |r: &Release| {
        (
            r.metadata.creation_timestamp.as_ref().map(|t| t.0),
            r.name_any(),
        )
    };
    key(a) < key(b)
}

struct Gate<'a> {
    release: &'a Release,
    previous: &'a ReleaseStatus,
    now: String,
}

impl Gate<'_> {
    fn condition(
        &self,
        type_: &str,
        status: ConditionStatus,
        reason: &str,
        message: String,
    ) -> Condition {
        let last_transition_time = self
            .previous
            .conditions
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .map(|c| c.last_transition_time.clone())
            .unwrap_or_else(|| self.now.clone());
        Condition {
            type_: type_.into(),
            status,
            observed_generation: self.release.metadata.generation,
            last_transition_time,
            reason: reason.into(),
            message,
        }
    }

    fn closed(
        &self,
        phase: ReleasePhase,
        verdict: Verdict,
        requeue_after: Option<Duration>,
        conditions: Vec<Condition>,
        events: Vec<ReportEvent>,
    ) -> Gates {
        let mut status = serde_json::Map::new();
        status.insert("phase".into(), serde_json::json!(phase));
        Gates::Closed(Report {
            verdict,
            status,
            requeue_after,
            conditions,
            events,
        })
    }
}

fn event(warning: bool, reason: &str, note: String) -> ReportEvent {
    ReportEvent {
        warning,
        reason: reason.into(),
        note,
        always: true,
        action: reason.into(),
    }
}

/// Every Release of `namespace`.
pub async fn releases(ctx: &Context, namespace: &str) -> Result<Vec<Release>, ReconcileError> {
    let api: Api<Release> = Api::namespaced(ctx.client.clone(), namespace);
    Ok(api
        .list(&ListParams::default())
        .await
        .map_err(|source| ReconcileError::ReadReference {
            what: "the Releases of the namespace".into(),
            source,
        })?
        .items)
}

/// Checks the gates of `release` (its status so far: `previous`).
pub async fn check(
    release: &Release,
    ctx: &Context,
    namespace: &str,
    previous: &ReleaseStatus,
) -> Result<Gates, ReconcileError> {
    let spec = &release.spec;
    let gate = Gate {
        release,
        previous,
        now: jiff::Timestamp::now()
            .round(jiff::Unit::Second)
            .unwrap_or_else(|_| jiff::Timestamp::now())
            .to_string(),
    };
    let all = releases(ctx, namespace).await?;
    let mut status = serde_json::Map::new();
    let mut conditions = Vec::new();
    let mut events = Vec::new();

    // Promotion: only what was tested in the source Environment.
    if let Some(promotion) = &spec.promotion {
        let from = &promotion.from_environment;
        let tried: Vec<&Release> = all
            .iter()
            .filter(|r| r.spec.environment_ref.name == *from && r.spec.version == spec.version)
            .collect();
        let wanted = sources(&spec.artifacts);
        let succeeded = |r: &&&Release| phase(r) == Some(ReleasePhase::Succeeded);
        let refuse = |reason: &str, message: String| {
            let condition =
                gate.condition(PROMOTABLE, ConditionStatus::False, reason, message.clone());
            gate.closed(
                ReleasePhase::Pending,
                Verdict::Stalled {
                    reason: reason.into(),
                    message: message.clone(),
                },
                Some(REFUSED_POLL),
                vec![condition],
                vec![event(true, reason, message)],
            )
        };
        if let Some(tested) = tried
            .iter()
            .filter(succeeded)
            .find(|r| sources(&r.spec.artifacts) == wanted)
        {
            let message = format!(
                "Release {} of version {} succeeded in Environment {from} with the same artifacts",
                tested.name_any(),
                spec.version
            );
            status.insert("promotedFrom".into(), serde_json::json!(tested.name_any()));
            conditions.push(gate.condition(PROMOTABLE, ConditionStatus::True, "Tested", message));
        } else if let Some(other) = tried.iter().find(succeeded) {
            let differ: Vec<String> = wanted
                .symmetric_difference(&sources(&other.spec.artifacts))
                .map(|(p, s)| format!("{p} {s}"))
                .collect();
            return Ok(refuse(
                "ArtifactsDiffer",
                format!(
                    "Release {} of version {} succeeded in Environment {from} with other artifacts (differing: {}): promote exactly what was tested",
                    other.name_any(),
                    spec.version,
                    differ.join(", ")
                ),
            ));
        } else if let Some(running) = tried.iter().find(|r| {
            !matches!(
                phase(r),
                Some(ReleasePhase::Failed | ReleasePhase::RollingBack | ReleasePhase::RolledBack)
            )
        }) {
            let message = format!(
                "waiting for Release {} of version {} to succeed in Environment {from} (phase {:?})",
                running.name_any(),
                spec.version,
                phase(running).unwrap_or_default()
            );
            let condition = gate.condition(
                PROMOTABLE,
                ConditionStatus::False,
                "SourceInProgress",
                message.clone(),
            );
            return Ok(gate.closed(
                ReleasePhase::Pending,
                Verdict::Progressing {
                    reason: "WaitingForPromotionSource".into(),
                    message,
                },
                Some(GATE_POLL),
                vec![condition],
                Vec::new(),
            ));
        } else {
            return Ok(refuse(
                "UntestedVersion",
                format!(
                    "version {} has no Succeeded Release in Environment {from}: only a version tested there is promoted",
                    spec.version
                ),
            ));
        }
    }

    // Approval.
    if spec.approval.as_ref().is_some_and(|a| a.required) {
        let who = release
            .annotations()
            .get(APPROVED_BY)
            .map(|w| w.trim())
            .filter(|w| !w.is_empty());
        match who {
            Some(who) => {
                let at = previous
                    .approved_at
                    .clone()
                    .filter(|_| previous.approved_by.as_deref() == Some(who))
                    .unwrap_or_else(|| gate.now.clone());
                if previous.approved_by.as_deref() != Some(who) {
                    events.push(event(false, "Approved", format!("approved by {who}")));
                }
                status.insert("approvedBy".into(), serde_json::json!(who));
                status.insert("approvedAt".into(), serde_json::json!(at));
                conditions.push(gate.condition(
                    APPROVED,
                    ConditionStatus::True,
                    "Approved",
                    format!("approved by {who} at {at}"),
                ));
            }
            None => {
                let message = format!(
                    "waiting for approval: kubectl annotate release {} {APPROVED_BY}=<your name>",
                    release.name_any()
                );
                conditions.push(gate.condition(
                    APPROVED,
                    ConditionStatus::False,
                    "AwaitingApproval",
                    message.clone(),
                ));
                if previous.phase != Some(ReleasePhase::AwaitingApproval) {
                    events.push(event(false, "AwaitingApproval", message.clone()));
                }
                return Ok(gate.closed(
                    ReleasePhase::AwaitingApproval,
                    Verdict::Progressing {
                        reason: "AwaitingApproval".into(),
                        message,
                    },
                    None,
                    conditions,
                    events,
                ));
            }
        }
    }

    // One rollout at a time per Environment.
    let ahead = all.iter().find(|other| {
        other.name_any() != release.name_any()
            && other.spec.environment_ref.name == spec.environment_ref.name
            && match phase(other) {
                Some(
                    ReleasePhase::Migrating | ReleasePhase::Deploying | ReleasePhase::Verifying,
                ) => true,
                None | Some(ReleasePhase::Pending) => older(other, release) && !stalled(other),
                _ => false,
            }
    });
    if let Some(ahead) = ahead {
        let message = format!(
            "waiting for Release {} ({:?}) to finish: one Release rolls out to an Environment at a time",
            ahead.name_any(),
            phase(ahead).unwrap_or_default()
        );
        return Ok(gate.closed(
            ReleasePhase::Pending,
            Verdict::Progressing {
                reason: "WaitingForRelease".into(),
                message,
            },
            Some(GATE_POLL),
            conditions,
            events,
        ));
    }
    Ok(Gates::Open {
        status,
        conditions,
        events,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::release::ComponentPlatform;

    fn artifact(component: &str, platform: ComponentPlatform, source: &str) -> Artifact {
        let mut a = Artifact {
            component: component.into(),
            platform,
            ..Artifact::default()
        };
        match platform {
            ComponentPlatform::Vercel => a.git_ref = Some(source.into()),
            _ => a.image = Some(source.into()),
        }
        a
    }

    #[test]
    fn the_same_artifacts_under_other_component_names_are_the_same_sources() {
        let staging = [
            artifact("staging-api", ComponentPlatform::Render, "api:2"),
            artifact("staging-web", ComponentPlatform::Vercel, "v2"),
        ];
        let production = [
            artifact("prod-web", ComponentPlatform::Vercel, "v2"),
            artifact("prod-api", ComponentPlatform::Render, "api:2"),
        ];
        assert_eq!(sources(&staging), sources(&production));
        let hotfix = [
            artifact("prod-api", ComponentPlatform::Render, "api:2-hotfix"),
            artifact("prod-web", ComponentPlatform::Vercel, "v2"),
        ];
        assert_ne!(sources(&staging), sources(&hotfix));
        // The same image on another platform is another artifact.
        let on_fly = [
            artifact("api", ComponentPlatform::Fly, "api:2"),
            artifact("web", ComponentPlatform::Vercel, "v2"),
        ];
        assert_ne!(sources(&staging), sources(&on_fly));
    }
}
