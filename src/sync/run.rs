//! Syncing one Environment: every platform it uses, concurrently (no spec field of one
//! platform depends on another's objects), each observe → plan → act through its driver.
//! Used by the Environment controller (apply and cleanup) and by `tether plan` (plan only).

use std::collections::BTreeSet;
use std::sync::Arc;

use futures::future::join_all;

use super::{
    ActOutcome, Driver, Fingerprinter, ObjectPlan, Platforms, SecretValues, SyncEvent, SyncInput,
};
use crate::api::common::{SecretKeyRef, TokenSecretRef};
use crate::api::environment::{EnvironmentSpec, ManagedObject};
use crate::platform::{Platform, PlatformError, Token};

/// Plan only, or plan and act.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Observe and plan; write nothing.
    Plan,
    /// Observe, plan and act.
    Apply,
}

/// What one Environment asks of the sync.
pub struct Request<'a> {
    /// `namespace/name`.
    pub environment: &'a str,
    /// The spec.
    pub spec: &'a EnvironmentSpec,
    /// Resolved values of every Secret key the spec references (tokens included).
    pub secrets: &'a SecretValues,
    /// `status.objects` of the last reconcile.
    pub previous: &'a [ManagedObject],
    /// The platforms whose part of the spec the last reconcile applied as it is now.
    pub drift_possible: &'a [Platform],
    /// The Environment is being deleted.
    pub deleting: bool,
    /// RFC 3339 time of this sync.
    pub now: String,
    /// Platform objects other Environments manage.
    pub owners: &'a Owners,
}

/// Platform objects other Environments manage: an object has one owner, so an Environment
/// whose plan finds one of them is refused instead of adopting it. Looked up on demand (only
/// a plan that would take over an object it did not manage yet asks), so a reconcile does not
/// index every Environment's objects.
#[derive(Clone, Default)]
pub struct Owners(Option<Arc<OwnerLookup>>);

/// `(platform, id)` → the Environment (`namespace/name`) managing that object, if another does.
type OwnerLookup = dyn Fn(Platform, &str) -> Option<String> + Send + Sync;

impl Owners {
    /// Owners found by `lookup`.
    pub fn new(lookup: impl Fn(Platform, &str) -> Option<String> + Send + Sync + 'static) -> Self {
        Self(Some(Arc::new(lookup)))
    }

    /// The objects recorded in the status of `environments` (`namespace/name` and
    /// `status.objects`), except those of `except`, as one Environment's lookup sees them.
    pub fn lookup<'o>(
        environments: impl IntoIterator<Item = (String, &'o [ManagedObject])>,
        except: &str,
        platform: Platform,
        id: &str,
    ) -> Option<String> {
        environments.into_iter().find_map(|(environment, objects)| {
            (environment != except
                && objects
                    .iter()
                    .any(|o| o.platform == platform.as_str() && o.id.as_deref() == Some(id)))
            .then_some(environment)
        })
    }

    /// The Environment managing the object `id` of `platform`, if another does.
    pub fn owner(&self, platform: Platform, id: &str) -> Option<String> {
        self.0.as_ref().and_then(|lookup| lookup(platform, id))
    }
}

/// Why one platform could not be synced; the message names the platform and, for
/// credentials, the Secret and key (never a value).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// Platform.
    pub platform: Platform,
    /// PascalCase reason (`CredentialsRejected`, `CredentialsMissing`, `PlatformUnavailable`, …).
    pub reason: &'static str,
    /// Human message.
    pub message: String,
    /// Retrying will not help until the spec or a Secret changes.
    pub permanent: bool,
    /// When to try again, when the platform's rate limit says (a parked wait).
    pub retry_after: Option<std::time::Duration>,
}

/// One platform's result.
#[derive(Debug)]
pub struct PlatformSync {
    /// Platform.
    pub platform: Platform,
    /// The plan (empty when observing failed).
    pub plans: Vec<ObjectPlan>,
    /// Objects as they are after acting (in `Plan` mode: as observed).
    pub objects: Vec<ManagedObject>,
    /// What was done.
    pub events: Vec<SyncEvent>,
    /// Why it stopped early.
    pub failure: Option<Failure>,
}

/// The platforms an Environment touches: the ones its spec uses and the ones its last
/// status still lists objects on (to remove them).
pub fn platforms_in_use(spec: &EnvironmentSpec, previous: &[ManagedObject]) -> Vec<Platform> {
    let listed: BTreeSet<&str> = previous.iter().map(|o| o.platform.as_str()).collect();
    Platform::ALL
        .into_iter()
        .filter(|p| {
            listed.contains(p.as_str())
                || match p {
                    Platform::Render => spec.render.is_some(),
                    Platform::Vercel => spec.vercel.is_some(),
                    Platform::Fly => spec.fly.is_some(),
                    Platform::Supabase => spec.supabase.is_some(),
                }
        })
        .collect()
}

/// The credentials reference of `platform` in `spec`.
pub fn credentials_ref(spec: &EnvironmentSpec, platform: Platform) -> Option<&TokenSecretRef> {
    let c = &spec.credentials;
    match platform {
        Platform::Render => c.render.as_ref(),
        Platform::Vercel => c.vercel.as_ref(),
        Platform::Fly => c.fly.as_ref(),
        Platform::Supabase => c.supabase.as_ref(),
    }
}

/// Syncs every platform of `request` concurrently.
pub async fn sync(platforms: &Platforms, request: &Request<'_>, mode: Mode) -> Vec<PlatformSync> {
    let runs = platforms_in_use(request.spec, request.previous)
        .into_iter()
        .map(|platform| sync_platform(platforms, request, platform, mode));
    join_all(runs).await
}

async fn sync_platform(
    platforms: &Platforms,
    request: &Request<'_>,
    platform: Platform,
    mode: Mode,
) -> PlatformSync {
    let kept = || {
        request
            .previous
            .iter()
            .filter(|o| o.platform == platform.as_str())
            .cloned()
            .collect::<Vec<_>>()
    };
    let failed = |failure: Failure| PlatformSync {
        platform,
        plans: Vec::new(),
        objects: kept(),
        events: Vec::new(),
        failure: Some(failure),
    };
    let Some(reference) = credentials_ref(request.spec, platform) else {
        return failed(Failure {
            platform,
            reason: "CredentialsMissing",
            message: format!(
                "spec.credentials.{platform} is not set, but {platform} objects are still managed"
            ),
            permanent: true,
            retry_after: None,
        });
    };
    let key_ref = SecretKeyRef {
        name: reference.name.clone(),
        key: reference.key.clone(),
    };
    let Some(token) = request.secrets.get(&key_ref) else {
        return failed(Failure {
            platform,
            reason: "CredentialsMissing",
            message: format!(
                "Secret {:?} has no key {:?} (spec.credentials.{platform})",
                reference.name, reference.key
            ),
            permanent: true,
            retry_after: None,
        });
    };
    // A trailing newline from `kubectl create secret --from-file` is not part of a token.
    let token = &Token::new(token.expose().trim());
    let (http, account) = match platforms.client(platform, token) {
        Ok(client) => client,
        Err(error) => {
            return failed(Failure {
                platform,
                reason: "PlatformClientInvalid",
                message: error.to_string(),
                permanent: true,
                retry_after: None,
            });
        }
    };
    let input = SyncInput {
        environment: request.environment,
        spec: request.spec,
        secrets: request.secrets,
        fingerprints: Fingerprinter::new(token),
        previous: request.previous,
        drift_possible: request.drift_possible.contains(&platform),
        deleting: request.deleting,
        http,
        account,
        cache: platforms.cache().clone(),
        now: request.now.clone(),
    };
    let owners = request.owners;
    let mut result = match platform {
        Platform::Render => drive(&super::render::RenderDriver, &input, mode, owners).await,
        Platform::Vercel => drive(&super::vercel::VercelDriver, &input, mode, owners).await,
        Platform::Fly => drive(&super::fly::FlyDriver, &input, mode, owners).await,
        Platform::Supabase => drive(&super::supabase::SupabaseDriver, &input, mode, owners).await,
    };
    if result.failure.is_some() && result.plans.is_empty() {
        result.objects = kept();
    }
    if let Some(failure) = &mut result.failure
        && failure.reason == "CredentialsRejected"
    {
        failure.message = format!(
            "{platform} rejected the token in Secret {:?} key {:?} (spec.credentials.{platform}): {}",
            reference.name, reference.key, failure.message
        );
    }
    result
}

async fn drive<D: Driver>(
    driver: &D,
    input: &SyncInput<'_>,
    mode: Mode,
    owners: &Owners,
) -> PlatformSync {
    let platform = D::PLATFORM;
    let planned = match driver.plan(input).await {
        Ok(planned) => planned,
        Err(error) => {
            return PlatformSync {
                platform,
                plans: Vec::new(),
                objects: Vec::new(),
                events: Vec::new(),
                failure: Some(failure(&error)),
            };
        }
    };
    // An object another Environment manages is never adopted: nothing is done on this
    // platform until one of the two lets it go.
    let taken = planned.objects.iter().find_map(|p| {
        let id = p.id.as_deref()?;
        if input.previous(&p.kind, &p.name).is_some() {
            return None;
        }
        let owner = owners.owner(platform, id)?;
        Some((p, id, owner))
    });
    if let Some((plan, id, owner)) = taken
        && !input.deleting
    {
        return PlatformSync {
            platform,
            plans: Vec::new(),
            objects: Vec::new(),
            events: Vec::new(),
            failure: Some(Failure {
                platform,
                reason: "ObjectManagedElsewhere",
                message: format!(
                    "{platform} {} {:?} ({id}) is managed by Environment {owner}: a platform object has one owner; remove it from one of the two (deleting this Environment leaves it in place)",
                    plan.kind, plan.name
                ),
                permanent: true,
                retry_after: None,
            }),
        };
    }
    let plans = planned.objects.clone();
    let outcome = match mode {
        Mode::Apply => {
            let changes: Vec<ObjectPlan> = plans
                .iter()
                .filter(|p| p.changes_anything())
                .cloned()
                .collect();
            if !changes.is_empty() {
                super::progress::report(super::progress::Progress::Planned { platform, changes });
            }
            driver.act(input, planned).await
        }
        Mode::Plan => ActOutcome {
            objects: plans
                .iter()
                .filter(|p| !matches!(p.action, super::Action::Create))
                .map(|p| input.managed(p))
                .collect(),
            ..ActOutcome::default()
        },
    };
    PlatformSync {
        platform,
        plans,
        objects: outcome.objects,
        events: outcome.events,
        failure: outcome.error.as_ref().map(failure),
    }
}

/// Classifies a platform error for conditions: credentials and invalid requests stall.
pub fn failure(error: &PlatformError) -> Failure {
    let reason = match error {
        PlatformError::Unauthorized { .. } => "CredentialsRejected",
        PlatformError::Invalid { .. } => "PlatformRequestInvalid",
        PlatformError::RateLimited { .. } => "PlatformRateLimited",
        PlatformError::Conflict { .. } => "PlatformConflict",
        PlatformError::NotFound { .. } => "PlatformObjectNotFound",
        PlatformError::Transient { .. } | PlatformError::Malformed { .. } => "PlatformUnavailable",
    };
    if let PlatformError::RateLimited {
        platform,
        operation,
        retry_after,
    } = error
    {
        // A wait for the platform's rate limit: the sync stopped there (parked) and goes on
        // when the limit allows, from what status recorded.
        let at = jiff::Timestamp::try_from(std::time::SystemTime::now() + *retry_after)
            .ok()
            .and_then(|t| t.round(jiff::Unit::Second).ok())
            .map(|t| t.to_string())
            .unwrap_or_default();
        return Failure {
            platform: *platform,
            reason: "RateLimited",
            message: format!(
                "{platform} is waiting for its API rate limit: {operation} is sent at {at} (in {}s)",
                // (A wait under a second says "in 1s", not "in 0s".)
                retry_after.as_secs_f64().ceil()
            ),
            permanent: false,
            retry_after: Some(*retry_after),
        };
    }
    Failure {
        platform: error.platform(),
        reason,
        message: error.to_string(),
        permanent: error.is_permanent(),
        retry_after: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platforms_in_use_are_the_spec_sections_and_those_still_holding_objects() {
        let spec: EnvironmentSpec = serde_json::from_value(serde_json::json!({
            "credentials": {"vercel": {"name": "t"}},
            "vercel": {"projects": []}
        }))
        .unwrap();
        let previous = [ManagedObject {
            platform: "fly".into(),
            kind: "app".into(),
            name: "old".into(),
            ..ManagedObject::default()
        }];
        assert_eq!(
            platforms_in_use(&spec, &previous),
            [Platform::Vercel, Platform::Fly]
        );
    }

    #[test]
    fn rejected_credentials_stall_and_outages_retry() {
        let rejected = failure(&PlatformError::Unauthorized {
            platform: Platform::Render,
            operation: "list_services",
            status: 401,
        });
        assert!(rejected.permanent);
        assert_eq!(rejected.reason, "CredentialsRejected");
        let outage = failure(&PlatformError::Transient {
            platform: Platform::Fly,
            operation: "list_apps",
            reason: "HTTP 503".into(),
        });
        assert!(!outage.permanent);
        assert_eq!(outage.reason, "PlatformUnavailable");
    }
}
