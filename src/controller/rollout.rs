//! A Release's rollout and rollback through the platforms, one reconcile at a time and
//! resumable from status: the targets of each component (its platform object and client),
//! each through its platform's [`Deployments`] client. A deployment's start is recorded
//! ([`STARTING`]) and its id is in status before Tether waits on it: a restart polls the same
//! deployment, never starts a second one (a deploy whose id was lost in a crash is found
//! again by its source). Gates, health checks and analysis are the Release reconciler's.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::future::join_all;

use crate::api::common::SecretKeyRef;
use crate::api::release::{Artifact, ComponentPlatform, ReleaseSpec, StepStatus};
use crate::api::{Environment, Release};
use crate::platform::fly::BlueGreenRun;
use crate::platform::{
    DeploySource, Deployment, DeploymentState, Deployments, FlyClient, FlyStrategy, Platform,
    PlatformError, PlatformResult, RenderClient, Token, VercelClient,
};
use crate::sync::{Platforms, SecretValues};

/// Where one component is deployed: its platform object and the client to reach it.
pub struct Target {
    /// Platform.
    pub platform: ComponentPlatform,
    /// How the platform addresses the deployable object: the id of the Render service or
    /// Vercel project, the name of the Fly app.
    pub id: String,
    /// What to deploy.
    pub source: DeploySource,
    /// How: a new deployment, a Vercel deployment promoted, or Fly machines updated.
    how: How,
    client: Client,
}

/// How a component's deployment is made.
enum How {
    /// A deployment of the source (Render, Vercel), found again by its source after a crash.
    Deploy,
    /// An existing Vercel deployment (the artifact's `deploymentId`) promoted to production.
    Promote(String),
    /// The Fly app's machines updated to the image, as the strategy says.
    Roll(FlyStrategy),
    /// Render's rollback to this earlier deploy (no rebuild).
    Rollback(String),
    /// A Vercel production deployment of the git ref from the repository the Environment
    /// links the project to (`owner/name`), with the project's name.
    Build { name: String, repo: String },
}

/// The end of the message of an entry whose request waits for the platform's rate limit
/// (not sent).
pub const PARKED: &str = "rate limit";

/// The state of a step entry whose deployment is about to start: recorded in status before
/// the platform is asked, so that after a crash the deployment is looked for (by its source)
/// before another is started.
pub const STARTING: &str = "Starting";

impl Target {
    /// Whether advancing a component without a deployment id starts a new deployment of
    /// its source (a Render deploy or rollback, a Vercel build): one to record as
    /// [`STARTING`] first. Fly rollouts (the machines are their state; a `bluegreen` one's
    /// green machines name in their metadata the machine they replace, so they are found
    /// again) and Vercel promotions (keyed by the promoted id) need no record.
    pub fn starts_deployment(&self) -> bool {
        matches!(self.how, How::Deploy | How::Build { .. } | How::Rollback(_))
    }

    /// Holds a Fly canary once it is healthy (the rest of the machines wait); whether the
    /// target is one.
    pub fn hold_canary(&mut self) -> bool {
        match &mut self.how {
            How::Roll(FlyStrategy::Canary { hold, .. }) => {
                *hold = true;
                true
            }
            _ => false,
        }
    }
}

enum Client {
    Render(RenderClient),
    Vercel(VercelClient),
    Fly(FlyClient),
}

impl Client {
    async fn deploy(&self, target: &str, source: &DeploySource) -> PlatformResult<Deployment> {
        match self {
            Client::Render(c) => c.deploy(target, source).await,
            Client::Vercel(c) => c.deploy(target, source).await,
            Client::Fly(c) => c.deploy(target, source).await,
        }
    }

    async fn deployment(&self, target: &str, id: &str) -> PlatformResult<Deployment> {
        match self {
            Client::Render(c) => c.deployment(target, id).await,
            Client::Vercel(c) => c.deployment(target, id).await,
            Client::Fly(c) => c.deployment(target, id).await,
        }
    }

    async fn rollback(&self, target: &str, id: &str) -> PlatformResult<Deployment> {
        match self {
            Client::Render(c) => c.rollback(target, id).await,
            Client::Vercel(c) => c.rollback(target, id).await,
            Client::Fly(c) => c.rollback(target, id).await,
        }
    }

    async fn list(&self, target: &str) -> PlatformResult<Vec<Deployment>> {
        match self {
            Client::Render(c) => c.list_deployments(target).await,
            Client::Vercel(c) => c.list_deployments(target).await,
            Client::Fly(c) => c.list_deployments(target).await,
        }
    }
}

/// The platform of a component platform.
pub fn platform_of(platform: ComponentPlatform) -> Platform {
    match platform {
        ComponentPlatform::Render => Platform::Render,
        ComponentPlatform::Vercel => Platform::Vercel,
        ComponentPlatform::Fly => Platform::Fly,
    }
}

/// The status kind of a component's object in the Environment.
fn object_kind(platform: ComponentPlatform) -> &'static str {
    match platform {
        ComponentPlatform::Render => "service",
        ComponentPlatform::Vercel => "project",
        ComponentPlatform::Fly => "app",
    }
}

/// The credentials Secret key the Environment names for `platform`.
fn credential(platform: ComponentPlatform, environment: &Environment) -> Option<SecretKeyRef> {
    let c = &environment.spec.credentials;
    let reference = match platform {
        ComponentPlatform::Render => c.render.as_ref(),
        ComponentPlatform::Vercel => c.vercel.as_ref(),
        ComponentPlatform::Fly => c.fly.as_ref(),
    }?;
    Some(SecretKeyRef {
        name: reference.name.clone(),
        key: reference.key.clone(),
    })
}

/// The credentials Secret keys the Environment names for the Release's platforms.
pub fn credentials(spec: &ReleaseSpec, environment: &Environment) -> Vec<SecretKeyRef> {
    let mut refs: Vec<SecretKeyRef> = Vec::new();
    for artifact in &spec.artifacts {
        if let Some(key) = credential(artifact.platform, environment)
            && !refs.contains(&key)
        {
            refs.push(key);
        }
    }
    refs
}

/// Why a component cannot be deployed yet, or at all.
#[derive(Debug, PartialEq, Eq)]
pub enum Unready {
    /// The Environment has not created (or recorded) the component's object yet.
    NotCreated(String),
    /// Nothing Tether can deploy (no image, no git ref) or a source it cannot deploy yet.
    Unsupported(String),
    /// The Environment names no credentials for the platform, or the Secret lacks the key.
    NoCredentials(String),
}

/// The deployment target of every artifact: its object's id from the Environment's status,
/// its source, and a client with the Environment's token.
pub fn targets(
    spec: &ReleaseSpec,
    environment: &Environment,
    secrets: &SecretValues,
    platforms: &Platforms,
) -> Result<BTreeMap<String, Target>, Unready> {
    let mut targets = BTreeMap::new();
    for artifact in &spec.artifacts {
        let (source, how) = match (&artifact.image, &artifact.git_ref, &artifact.deployment_id) {
            (Some(image), _, _) => (DeploySource::Image(image.clone()), How::Deploy),
            (None, Some(git), _) => (DeploySource::Git(git.clone()), How::Deploy),
            (None, None, Some(id)) => (DeploySource::Current, How::Promote(id.clone())),
            (None, None, None) => {
                return Err(Unready::Unsupported(format!(
                    "component {:?}: nothing to deploy (give an image, a gitRef or a deploymentId)",
                    artifact.component
                )));
            }
        };
        let linked = environment
            .spec
            .vercel
            .as_ref()
            .and_then(|v| v.projects.iter().find(|p| p.name == artifact.component))
            .and_then(|p| p.git_repository.as_ref())
            .filter(|g| g.type_ == crate::api::environment::GitProvider::Github);
        let how = match (artifact.platform, how, linked) {
            (ComponentPlatform::Fly, _, _) => How::Roll(fly_strategy(artifact, environment)),
            (ComponentPlatform::Vercel, How::Deploy, Some(link)) => How::Build {
                name: artifact.component.clone(),
                repo: link.repo.clone(),
            },
            (_, how, _) => how,
        };
        let target = target(
            artifact.platform,
            &artifact.component,
            source,
            how,
            environment,
            secrets,
            platforms,
        )?;
        targets.insert(artifact.component.clone(), target);
    }
    Ok(targets)
}

/// Where each component a failed Release changed goes back to: what the previous
/// Succeeded Release deployed there (`previous`: its artifacts and step entries). Render
/// rolls back to that deploy (no rebuild), Vercel promotes that deployment, Fly machines
/// take that image again, all at once. A component the previous Release did not deploy goes
/// back to its Environment's image (Render, Fly); `Err` names one with nothing to go back to.
pub fn rollback_targets(
    changed: &[StepStatus],
    previous: &Release,
    environment: &Environment,
    secrets: &SecretValues,
    platforms: &Platforms,
) -> Result<BTreeMap<String, Target>, Unready> {
    let before = previous
        .status
        .as_ref()
        .map_or(&[][..], |s| s.steps.as_slice());
    let mut targets = BTreeMap::new();
    for entry in changed {
        let component = &entry.component;
        let artifact = previous
            .spec
            .artifacts
            .iter()
            .find(|a| &a.component == component);
        let deployed = before
            .iter()
            .find(|s| &s.component == component)
            .and_then(|s| s.deployment_id.clone());
        let image = artifact
            .and_then(|a| a.image.clone())
            .or_else(|| environment_image(environment, entry.platform, component));
        let nothing = || {
            Unready::Unsupported(format!(
                "{} {component:?} has no earlier deployment to go back to",
                platform_of(entry.platform)
            ))
        };
        let (source, how) = match entry.platform {
            ComponentPlatform::Render => {
                let image = image.ok_or_else(nothing)?;
                match deployed.filter(|_| artifact.is_some()) {
                    Some(id) => (DeploySource::Image(image), How::Rollback(id)),
                    None => (DeploySource::Image(image), How::Deploy),
                }
            }
            ComponentPlatform::Vercel => {
                let id = deployed.ok_or_else(nothing)?;
                (DeploySource::Current, How::Promote(id))
            }
            ComponentPlatform::Fly => (
                DeploySource::Image(image.ok_or_else(nothing)?),
                How::Roll(FlyStrategy::Immediate),
            ),
        };
        let target = target(
            entry.platform,
            component,
            source,
            how,
            environment,
            secrets,
            platforms,
        )?;
        targets.insert(component.clone(), target);
    }
    Ok(targets)
}

/// The image the Environment declares for a Render service or Fly app.
fn environment_image(
    environment: &Environment,
    platform: ComponentPlatform,
    component: &str,
) -> Option<String> {
    let spec = &environment.spec;
    match platform {
        ComponentPlatform::Render => spec
            .render
            .as_ref()?
            .services
            .iter()
            .find(|s| s.name == component)?
            .image
            .clone(),
        ComponentPlatform::Fly => spec
            .fly
            .as_ref()?
            .apps
            .iter()
            .find(|a| a.name == component)
            .map(|a| a.image.clone()),
        ComponentPlatform::Vercel => None,
    }
}

/// One component's target: its object's id from the Environment's status and a client
/// with the Environment's token.
fn target(
    platform: ComponentPlatform,
    component: &str,
    source: DeploySource,
    how: How,
    environment: &Environment,
    secrets: &SecretValues,
    platforms: &Platforms,
) -> Result<Target, Unready> {
    let objects = environment
        .status
        .as_ref()
        .map(|s| s.objects.as_slice())
        .unwrap_or_default();
    let vendor = platform_of(platform);
    let id = objects
        .iter()
        .find(|o| {
            o.platform == vendor.as_str() && o.kind == object_kind(platform) && o.name == component
        })
        .and_then(|o| o.id.clone())
        // Fly's Machines API addresses an app by its name.
        .map(|id| match platform {
            ComponentPlatform::Fly => component.to_string(),
            _ => id,
        })
        .ok_or_else(|| {
            Unready::NotCreated(format!(
                "{vendor} {} {component:?} is not created by its Environment yet",
                object_kind(platform),
            ))
        })?;
    let reference = credential(platform, environment).ok_or_else(|| {
        Unready::NoCredentials(format!(
            "Environment names no {vendor} credentials (spec.credentials.{vendor})"
        ))
    })?;
    let token = secrets.get(&reference).ok_or_else(|| {
        Unready::NoCredentials(format!(
            "Secret {:?} has no key {:?} (the Environment's spec.credentials.{vendor})",
            reference.name, reference.key
        ))
    })?;
    let token = Token::new(token.expose().trim());
    let (http, _) = platforms
        .client(vendor, &token)
        .map_err(|e| Unready::NoCredentials(e.to_string()))?;
    let client = match platform {
        ComponentPlatform::Render => Client::Render(RenderClient::new(http)),
        ComponentPlatform::Vercel => {
            let team = environment
                .spec
                .vercel
                .as_ref()
                .and_then(|v| v.team_id.clone());
            Client::Vercel(VercelClient::new(http, team))
        }
        ComponentPlatform::Fly => Client::Fly(FlyClient::new(http)),
    };
    Ok(Target {
        platform,
        id,
        source,
        how,
        client,
    })
}

fn source_text(source: &DeploySource) -> Option<&str> {
    match source {
        DeploySource::Image(s) | DeploySource::Git(s) => Some(s),
        DeploySource::Current => None,
    }
}

/// The state name a step entry shows.
pub fn state_name(state: DeploymentState) -> &'static str {
    match state {
        DeploymentState::Queued => "Queued",
        DeploymentState::Building => "Building",
        DeploymentState::Deploying => "Deploying",
        DeploymentState::Live => "Live",
        DeploymentState::Failed => "Failed",
        DeploymentState::Canceled => "Canceled",
        DeploymentState::Superseded => "Superseded",
    }
}

/// The Fly strategy of `artifact`: its own, with `maxUnavailable` or a third of the
/// machines the Environment declares for the app (at least one).
fn fly_strategy(artifact: &Artifact, environment: &Environment) -> FlyStrategy {
    let machines: usize = environment
        .spec
        .fly
        .as_ref()
        .and_then(|f| f.apps.iter().find(|a| a.name == artifact.component))
        .map(|a| a.regions.iter().map(|r| r.count.max(0) as usize).sum())
        .unwrap_or(1);
    let max_unavailable = artifact
        .max_unavailable
        .map(|n| n.max(1) as usize)
        .unwrap_or_else(|| machines.div_ceil(3).max(1));
    match artifact.strategy.unwrap_or_default() {
        crate::api::release::FlyStrategy::Rolling => FlyStrategy::Rolling { max_unavailable },
        crate::api::release::FlyStrategy::Immediate => FlyStrategy::Immediate,
        crate::api::release::FlyStrategy::Canary => FlyStrategy::Canary {
            max_unavailable,
            hold: false,
        },
        crate::api::release::FlyStrategy::BlueGreen => FlyStrategy::BlueGreen,
    }
}

/// Moves one component's deployment forward: starts it (recording its id) when it has none
/// — when an earlier reconcile recorded it [`STARTING`], first adopting a deployment of the
/// same source already on the platform, which a crash right after the deploy call leaves
/// behind — or reads its state. A Fly rollout moves its
/// machines one batch further each time (a `bluegreen` one records its green machines in the
/// entry, for `who`); a Vercel promotion is recorded under the promoted deployment's id.
/// Returns the updated entry.
///
/// Run inside a rollout's scope ([`advance_step`]), a request that would wait a second or
/// more for the platform's rate limit is not sent: the entry is returned as it was (saying
/// so) with the time to come back, and the worker is free meanwhile.
pub async fn advance(
    target: &Target,
    mut entry: StepStatus,
    now: &str,
    who: &str,
) -> (StepStatus, Option<Duration>) {
    let result = match (&target.how, &target.client, &entry.deployment_id) {
        (How::Roll(FlyStrategy::BlueGreen), Client::Fly(c), _) => {
            let DeploySource::Image(image) = &target.source else {
                return (entry, None);
            };
            let started = entry.started_at.get_or_insert_with(|| now.to_string());
            let run = BlueGreenRun {
                owner: who.to_owned(),
                recorded: entry.green_machines.clone(),
                waited: elapsed(started, now),
            };
            c.bluegreen(&target.id, image, &run).await.map(|moved| {
                // Every green this rollout made stays recorded, the destroyed ones too.
                for id in moved.green {
                    if !entry.green_machines.contains(&id) {
                        entry.green_machines.push(id);
                    }
                }
                moved.deployment
            })
        }
        (How::Roll(strategy), Client::Fly(c), _) => {
            let DeploySource::Image(image) = &target.source else {
                return (entry, None);
            };
            entry.started_at.get_or_insert_with(|| now.to_string());
            c.roll(&target.id, image, *strategy).await
        }
        (How::Promote(id), Client::Vercel(c), None) => {
            entry.started_at = Some(now.to_string());
            c.rollback(&target.id, id).await
        }
        (_, _, Some(id)) => target.client.deployment(&target.id, id).await,
        (_, _, None) => {
            let recorded = entry.state.as_deref() == Some(STARTING);
            let listed = match recorded {
                true => Some(target.client.list(&target.id).await),
                false => None,
            };
            // A list that failed (or waits for the rate limit) says nothing about what the
            // crash left behind: nothing is sent until it can be read.
            let adopted = match listed {
                Some(Ok(list)) => Ok(list.into_iter().find(|d| {
                    d.source.as_deref() == source_text(&target.source)
                        && !matches!(
                            d.state,
                            DeploymentState::Failed
                                | DeploymentState::Canceled
                                | DeploymentState::Superseded
                        )
                })),
                Some(Err(error)) => Err(error),
                None => Ok(None),
            };
            match adopted {
                Err(error) => Err(error),
                Ok(Some(deployment)) => Ok(deployment),
                Ok(None) => {
                    entry.started_at = Some(now.to_string());
                    match (&target.how, &target.client, &target.source) {
                        (How::Build { name, repo }, Client::Vercel(c), DeploySource::Git(git)) => {
                            c.deploy_git(&target.id, name, repo, git).await
                        }
                        (How::Rollback(id), client, _) => client.rollback(&target.id, id).await,
                        _ => target.client.deploy(&target.id, &target.source).await,
                    }
                }
            }
        }
    };
    match result {
        Ok(deployment) => {
            entry.deployment_id = Some(deployment.id.clone());
            entry.started_at.get_or_insert_with(|| now.to_string());
            entry.state = Some(state_name(deployment.state).to_string());
            match deployment.state {
                DeploymentState::Live => {
                    entry.finished_at.get_or_insert_with(|| now.to_string());
                    entry.message = Some(format!("live ({})", deployment.platform_state));
                }
                DeploymentState::Failed | DeploymentState::Canceled => {
                    entry.finished_at.get_or_insert_with(|| now.to_string());
                    entry.message = Some(format!(
                        "deployment {} ended {}",
                        deployment.id, deployment.platform_state
                    ));
                }
                _ => entry.message = Some(deployment.platform_state.clone()),
            }
        }
        // A wait for the platform's rate limit: nothing was sent; the rollout comes back
        // at its turn.
        Err(PlatformError::RateLimited {
            platform,
            retry_after,
            ..
        }) => {
            entry.message = Some(format!(
                "waiting {:.1}s for the {platform} API {PARKED}",
                retry_after.as_secs_f64()
            ));
            return (entry, Some(retry_after));
        }
        // A transient failure leaves the entry as it was; the next reconcile tries again.
        Err(error) => entry.message = Some(error.to_string()),
    }
    (entry, None)
}

/// The time from `started` to `now` (RFC 3339; zero when either does not parse).
fn elapsed(started: &str, now: &str) -> Duration {
    match (
        started.parse::<jiff::Timestamp>(),
        now.parse::<jiff::Timestamp>(),
    ) {
        (Ok(started), Ok(now)) => now
            .duration_since(started)
            .try_into()
            .unwrap_or(Duration::ZERO),
        _ => Duration::ZERO,
    }
}

/// Advances every component of one step in parallel, as the rollout of `who` (its
/// rate-limit waits park: see [`advance`]): the entries, and the soonest time a parked one
/// may go on.
pub async fn advance_step(
    targets: &BTreeMap<String, Target>,
    entries: Vec<StepStatus>,
    now: &str,
    who: &str,
) -> (Vec<StepStatus>, Option<Duration>) {
    // Nobody listens to a rollout's progress reports: the scope only parks its waits.
    let (sink, _) = tokio::sync::mpsc::unbounded_channel();
    let advanced = crate::sync::progress::scoped(
        sink,
        who,
        join_all(entries.into_iter().map(|entry| async move {
            match targets.get(&entry.component) {
                Some(target) => advance(target, entry, now, who).await,
                None => (entry, None),
            }
        })),
    )
    .await;
    let parked = advanced.iter().filter_map(|(_, parked)| *parked).min();
    (
        advanced.into_iter().map(|(entry, _)| entry).collect(),
        parked,
    )
}
