//! Platform clients: the small traits the reconcilers call, in Tether's own words, and one
//! adapter per vendor behind them.
//!
//! Flow: a reconciler observes with the `list_*` calls (one paged list covers many objects),
//! plans, then acts with `ensure_*` / `update_*` / `delete_*` and the deployment calls. Every
//! adapter is built from a base URL and a [`Token`], so tests and `tether sandbox` are just
//! another URL. The adapters share one HTTP layer ([`http`]) that handles auth, timeouts,
//! rate limits, retries, errors and request metrics; vendor request/response types stay
//! private to their adapter module.

pub mod credentials;
pub mod fly;
pub mod http;
pub mod render;
pub mod supabase;
pub mod vercel;

use std::fmt;
use std::future::Future;
use std::time::Duration;

pub use http::{HttpConfig, PlatformHttp, PlatformMetrics, Token};

/// The four platforms Tether manages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Platform {
    /// Render (render.com).
    Render,
    /// Vercel.
    Vercel,
    /// Fly.io Machines.
    Fly,
    /// Supabase Management API.
    Supabase,
}

impl Platform {
    /// Every platform, in a fixed order.
    pub const ALL: [Platform; 4] = [
        Platform::Render,
        Platform::Vercel,
        Platform::Fly,
        Platform::Supabase,
    ];

    /// The lower-case name used in metric labels, CLI output and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Render => "render",
            Platform::Vercel => "vercel",
            Platform::Fly => "fly",
            Platform::Supabase => "supabase",
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a platform call failed. Every message names the platform and the operation and never
/// carries a token or a secret value (vendor messages are not echoed for that reason).
#[derive(Debug, thiserror::Error)]
pub enum PlatformError {
    /// The object does not exist (404/410).
    #[error("failed to {operation} on {platform}: not found")]
    NotFound {
        /// Platform called.
        platform: Platform,
        /// Operation name (bounded, e.g. `get_service`).
        operation: &'static str,
    },
    /// The request conflicts with the object's current state (409/412, name taken).
    #[error("failed to {operation} on {platform}: conflict ({reason})")]
    Conflict {
        /// Platform called.
        platform: Platform,
        /// Operation name.
        operation: &'static str,
        /// A short reason (vendor error code or status), never a secret.
        reason: String,
    },
    /// The platform rejected the request for its rate limit and retries ran out.
    #[error("failed to {operation} on {platform}: rate limited, retry after {retry_after:?}")]
    RateLimited {
        /// Platform called.
        platform: Platform,
        /// Operation name.
        operation: &'static str,
        /// How long the platform asked us to wait.
        retry_after: Duration,
    },
    /// The token was missing, wrong or lacks permission (401/403).
    #[error("failed to {operation} on {platform}: credentials rejected (HTTP {status})")]
    Unauthorized {
        /// Platform called.
        platform: Platform,
        /// Operation name.
        operation: &'static str,
        /// 401 or 403.
        status: u16,
    },
    /// The request is invalid: the platform rejected it (400/422 and other 4xx, `status`
    /// set) or the adapter refused to send it (`status` is `None`).
    #[error(
        "failed to {operation} on {platform}: invalid request ({}{reason})",
        status.map(|s| format!("HTTP {s}: ")).unwrap_or_default()
    )]
    Invalid {
        /// Platform called.
        platform: Platform,
        /// Operation name.
        operation: &'static str,
        /// HTTP status, when the platform answered.
        status: Option<u16>,
        /// A short reason (vendor error code), never a secret.
        reason: String,
    },
    /// A temporary failure (5xx, timeout, connection error) that outlasted the retries.
    #[error("failed to {operation} on {platform}: temporary failure ({reason})")]
    Transient {
        /// Platform called.
        platform: Platform,
        /// Operation name.
        operation: &'static str,
        /// What happened (status code or transport error kind).
        reason: String,
    },
    /// The platform answered with something that does not match its API (bad JSON, missing
    /// fields, an unexpected status).
    #[error("failed to {operation} on {platform}: unexpected response ({reason})")]
    Malformed {
        /// Platform called.
        platform: Platform,
        /// Operation name.
        operation: &'static str,
        /// What was wrong with it.
        reason: String,
    },
}

impl PlatformError {
    /// A bounded name for metric labels and event reasons.
    pub fn kind(&self) -> &'static str {
        match self {
            PlatformError::NotFound { .. } => "NotFound",
            PlatformError::Conflict { .. } => "Conflict",
            PlatformError::RateLimited { .. } => "RateLimited",
            PlatformError::Unauthorized { .. } => "Unauthorized",
            PlatformError::Invalid { .. } => "Invalid",
            PlatformError::Transient { .. } => "Transient",
            PlatformError::Malformed { .. } => "Malformed",
        }
    }

    /// The platform the failed call went to.
    pub fn platform(&self) -> Platform {
        match self {
            PlatformError::NotFound { platform, .. }
            | PlatformError::Conflict { platform, .. }
            | PlatformError::RateLimited { platform, .. }
            | PlatformError::Unauthorized { platform, .. }
            | PlatformError::Invalid { platform, .. }
            | PlatformError::Transient { platform, .. }
            | PlatformError::Malformed { platform, .. } => *platform,
        }
    }

    /// Whether waiting for a change of spec or credentials is the only way out (Stalled),
    /// as opposed to retrying later.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            PlatformError::Unauthorized { .. } | PlatformError::Invalid { .. }
        )
    }
}

/// Result of a platform call.
pub type PlatformResult<T> = Result<T, PlatformError>;

/// What an `ensure_*` call did: found the object by its stable name (adopted) or created it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ensured<T> {
    /// The object as the platform now has it.
    pub object: T,
    /// True when this call created it.
    pub created: bool,
}

/// An environment variable as Tether manages it. Secret values are write-only on some
/// platforms: `value` is `None` when the platform does not return it.
#[derive(Clone, PartialEq, Eq)]
pub struct EnvVar {
    /// Variable name.
    pub key: String,
    /// Value, when the platform returns it.
    pub value: Option<String>,
    /// Whether the value is a secret (stored encrypted/write-only where the platform can).
    pub secret: bool,
}

impl fmt::Debug for EnvVar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Values may be secrets: never print them.
        f.debug_struct("EnvVar")
            .field("key", &self.key)
            .field("value", &self.value.as_ref().map(|_| "***"))
            .field("secret", &self.secret)
            .finish()
    }
}

/// A custom domain attached to a service/project/app.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Domain {
    /// Platform id (or the hostname where the platform has no separate id).
    pub id: String,
    /// Hostname.
    pub name: String,
    /// Whether DNS verification has passed.
    pub verified: bool,
}

/// Where a deployment's code comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeploySource {
    /// A container image reference (`registry/repo:tag`).
    Image(String),
    /// A git commit or ref.
    Git(String),
    /// Whatever the service is configured with (rebuild the current source).
    Current,
}

/// A deployment's progress in Tether's words; [`Deployment::platform_state`] keeps the
/// vendor's own state name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeploymentState {
    /// Accepted, not started.
    Queued,
    /// Building the code or image.
    Building,
    /// Rolling the build out.
    Deploying,
    /// Serving traffic.
    Live,
    /// Failed to build or start.
    Failed,
    /// Cancelled before it went live.
    Canceled,
    /// Was live, since replaced by a newer deployment.
    Superseded,
}

impl DeploymentState {
    /// Whether the state will not change any more (except Live → Superseded).
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            DeploymentState::Live
                | DeploymentState::Failed
                | DeploymentState::Canceled
                | DeploymentState::Superseded
        )
    }
}

/// One deployment of a service/project/app.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deployment {
    /// Platform id.
    pub id: String,
    /// Tether's reading of the state.
    pub state: DeploymentState,
    /// The vendor's state name, verbatim.
    pub platform_state: String,
    /// Image or git ref that was deployed, when the platform reports it.
    pub source: Option<String>,
}

/// Deployment operations every platform offers for its deployable object (Render service,
/// Vercel project, Fly app). `target` is the platform id of that object.
pub trait Deployments: Send + Sync {
    /// Starts a deployment of `source`.
    fn deploy(
        &self,
        target: &str,
        source: &DeploySource,
    ) -> impl Future<Output = PlatformResult<Deployment>> + Send;
    /// Reads a deployment's current state.
    fn deployment(
        &self,
        target: &str,
        deployment_id: &str,
    ) -> impl Future<Output = PlatformResult<Deployment>> + Send;
    /// Lists the target's deployments, newest first (all pages).
    fn list_deployments(
        &self,
        target: &str,
    ) -> impl Future<Output = PlatformResult<Vec<Deployment>>> + Send;
    /// Makes an earlier deployment live again.
    fn rollback(
        &self,
        target: &str,
        deployment_id: &str,
    ) -> impl Future<Output = PlatformResult<Deployment>> + Send;
}

pub use fly::{
    Autostop, FlyApp, FlyAppSpec, FlyApps, FlyClient, FlyMachine, FlyMachineConfig, FlyMachineSpec,
    FlyStrategy, FlyVolume, FlyVolumeSpec, MachineCheck, MachineGuest, MachineMount, MachinePort,
    MachineService,
};
pub use render::{
    DatastoreStatus, RenderCidr, RenderClient, RenderDatastores, RenderKeyValue,
    RenderKeyValuePatch, RenderKeyValueSpec, RenderPostgres, RenderPostgresPatch,
    RenderPostgresSpec, RenderService, RenderServiceKind, RenderServicePatch, RenderServiceSpec,
    RenderServices,
};
pub use supabase::{
    ProjectState, ServiceHealth, SupabaseApiSettings, SupabaseAuthSettings, SupabaseClient,
    SupabaseProject, SupabaseProjectSpec, SupabaseProjects,
};
pub use vercel::{
    VercelClient, VercelDomain, VercelDomainSpec, VercelEnvType, VercelEnvVar, VercelEnvVarSpec,
    VercelGitLink, VercelProject, VercelProjectPatch, VercelProjectSpec, VercelProjects,
};
