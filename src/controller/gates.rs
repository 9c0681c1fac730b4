//! A Release's gates, checked before its rollout changes anything, in this order:
//! promotion (the same version, with the same artifacts, must have succeeded in
//! `promotion.fromEnvironment`, and the migrations of the Migrations it names must have been
//! applied, with the same content, in that Environment's database), approval (the `tether.dev/approved-by` annotation), and one
//! rollout at a time per Environment (a newer Release waits for the one in progress and
//! for older ones waiting their turn).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use kube::ResourceExt;
use kube::api::{Api, ListParams};

use crate::api::common::{Condition, ConditionStatus};
use crate::api::release::{Artifact, ConcurrencyPolicy, ReleasePhase, ReleaseStatus};
use crate::api::{Migration, Release};
use crate::controller::conditions::Verdict;
use crate::controller::error::ReconcileError;
use crate::controller::reconcile::{Context, Report, ReportEvent};
use crate::migrate::source::MigrationSet;
use k8s_openapi::api::core::v1::ConfigMap;

/// The annotation that approves a Release: its value says who approved.
pub const APPROVED_BY: &str = "tether.dev/approved-by";
/// The annotation a newer Release (`concurrencyPolicy: Supersede`) puts on an older one of
/// its Environment to stop it: its value names the newer Release.
pub const SUPERSEDED_BY: &str = "tether.dev/superseded-by";
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

/// Whether a Release in `phase` may be superseded: it has not finished its rollout (a
/// rollback is never stopped).
pub fn supersedable(phase: Option<ReleasePhase>) -> bool {
    matches!(
        phase,
        None | Some(
            ReleasePhase::Pending
                | ReleasePhase::AwaitingApproval
                | ReleasePhase::Migrating
                | ReleasePhase::Deploying
                | ReleasePhase::Verifying
        )
    )
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

/// The migrations of `migration`'s source (its ConfigMap read when it has one); `None` when
/// the source cannot be read or parsed.
pub async fn migration_files(
    ctx: &Context,
    namespace: &str,
    migration: &Migration,
) -> Result<Option<MigrationSet>, ReconcileError> {
    let data = match &migration.spec.source.config_map_ref {
        Some(r) => {
            let config_maps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), namespace);
            config_maps
                .get_opt(&r.name)
                .await
                .map_err(|source| ReconcileError::ReadReference {
                    what: format!("ConfigMap {:?}", r.name),
                    source,
                })?
                .and_then(|cm| cm.data)
        }
        None => None,
    };
    Ok(crate::migrate::reconcile::resolve_source(&migration.spec.source, data.as_ref()).ok())
}

/// Why the Migrations `release` names were not tested in the promotion source, if they were
/// not: every file of their sources must have been applied, with the same content, in the
/// source Environment's database (by the Migrations the `tested` Release named, or a
/// Migration of the source Environment's Supabase database).
async fn untested_migrations(
    ctx: &Context,
    namespace: &str,
    release: &Release,
    tested: &Release,
) -> Result<Option<String>, ReconcileError> {
    if release.spec.migrations.is_empty() {
        return Ok(None);
    }
    let from = &tested.spec.environment_ref.name;
    let api: Api<Migration> = Api::namespaced(ctx.client.clone(), namespace);
    let all = api
        .list(&ListParams::default())
        .await
        .map_err(|source| ReconcileError::ReadReference {
            what: "the Migrations of the namespace".into(),
            source,
        })?
        .items;
    // (version → checksum) of every migration applied in the source Environment's database.
    let mut applied: BTreeMap<String, String> = BTreeMap::new();
    let in_source = all.iter().filter(|m| {
        tested.spec.migrations.contains(&m.name_any())
            || m.spec
                .database
                .environment_ref
                .as_ref()
                .is_some_and(|e| &e.name == from)
    });
    let mut source_names = Vec::new();
    for migration in in_source {
        source_names.push(migration.name_any());
        let Some(files) = migration_files(ctx, namespace, migration).await? else {
            continue;
        };
        for row in migration.status.iter().flat_map(|s| &s.applied) {
            if row.checksum_mismatch {
                continue;
            }
            if let Some(file) = files.get(&row.version) {
                applied.insert(row.version.clone(), file.checksum.clone());
            }
        }
    }
    let tested_in = if source_names.is_empty() {
        format!("no Migration targets Environment {from}'s database")
    } else {
        format!("applied there by Migration(s) {}", source_names.join(", "))
    };
    for name in &release.spec.migrations {
        let Some(migration) = all.iter().find(|m| &m.name_any() == name) else {
            continue;
        };
        let Some(files) = migration_files(ctx, namespace, migration).await? else {
            return Ok(Some(format!(
                "the source of Migration {name:?} cannot be read, so whether its migrations were tested in Environment {from} is unknown"
            )));
        };
        for file in files.migrations() {
            match applied.get(file.version.as_str()) {
                None => {
                    return Ok(Some(format!(
                        "migration {} of Migration {name:?} was never applied in Environment {from}'s database ({tested_in}): apply it there first",
                        file.file
                    )));
                }
                Some(checksum) if checksum != &file.checksum => {
                    return Ok(Some(format!(
                        "migration {} of Migration {name:?} differs from the one applied in Environment {from}'s database ({tested_in}): promote exactly what was tested",
                        file.file
                    )));
                }
                Some(_) => {}
            }
        }
    }
    Ok(None)
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
            if let Some(why) = untested_migrations(ctx, namespace, release, tested).await? {
                return Ok(refuse("MigrationsUntested", why));
            }
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
                Some(
                    ReleasePhase::Failed
                        | ReleasePhase::RollingBack
                        | ReleasePhase::RolledBack
                        | ReleasePhase::Superseded
                )
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
    let same_environment = |other: &&Release| {
        other.name_any() != release.name_any()
            && other.spec.environment_ref.name == spec.environment_ref.name
    };
    if spec.concurrency_policy == ConcurrencyPolicy::Supersede {
        // Every older Release still to finish its rollout stops where it is (told by an
        // annotation, which wakes it); a rollback is never stopped.
        let api: Api<Release> = Api::namespaced(ctx.client.clone(), namespace);
        for other in all.iter().filter(same_environment).filter(|other| {
            older(other, release)
                && supersedable(phase(other))
                && !other.annotations().contains_key(SUPERSEDED_BY)
        }) {
            let patch = serde_json::json!({"metadata": {"annotations": {SUPERSEDED_BY: release.name_any()}}});
            api.patch(
                &other.name_any(),
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(&patch),
            )
            .await
            .map_err(|source| ReconcileError::ReadReference {
                what: format!("Release {:?} (marking it superseded)", other.name_any()),
                source,
            })?;
            events.push(event(
                false,
                "Superseding",
                format!(
                    "superseding Release {} ({:?}): it stops where it is",
                    other.name_any(),
                    phase(other).unwrap_or_default()
                ),
            ));
        }
    }
    let ahead = all
        .iter()
        .filter(same_environment)
        .find(|other| match phase(other) {
            Some(
                ReleasePhase::Migrating
                | ReleasePhase::Deploying
                | ReleasePhase::Verifying
                | ReleasePhase::RollingBack,
            ) => true,
            None | Some(ReleasePhase::Pending) => older(other, release) && !stalled(other),
            _ => false,
        });
    if let Some(ahead) = ahead {
        let message = format!(
            "waiting for Release {} ({:?}) to {}: one Release rolls out to an Environment at a time",
            ahead.name_any(),
            phase(ahead).unwrap_or_default(),
            if ahead.annotations().contains_key(SUPERSEDED_BY)
                && phase(ahead) != Some(ReleasePhase::RollingBack)
            {
                "stop (superseded)"
            } else {
                "finish"
            }
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
