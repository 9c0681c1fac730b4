//! Render adapter: services of every kind (web, private, worker, cron job, static site) with
//! their settings, instance count, environment variables, custom domains and deploys, plus
//! key-value stores and Postgres databases, spoken exactly as Render's public API v1 defines
//! them (`render/openapi.json`). Lists follow `cursor` pagination; creates look the object
//! up by name first, because Render has no idempotency keys. Region, kind and (for Postgres)
//! version, database name and user are fixed at creation: the patches cannot express them.

use http::Method;
use serde::Deserialize;
use serde_json::{Value, json};

use super::http::{ApiRequest, PlatformHttp, decode};
use super::{
    DeploySource, Deployment, DeploymentState, Deployments, Domain, Ensured, EnvVar, Platform,
    PlatformError, PlatformResult,
};
use std::future::Future;

const READ: &[&str] = &["read"];
const WRITE: &[&str] = &["write"];
const SERVICE_ACTION: &[&str] = &["write", "service_action"];
const SERVICE_CREATE: &[&str] = &["write", "service_create"];

/// Which kind of Render service.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum RenderServiceKind {
    /// Public HTTP service (`web_service`).
    #[default]
    WebService,
    /// Internal service (`private_service`).
    PrivateService,
    /// Worker without a port (`background_worker`).
    BackgroundWorker,
    /// Scheduled job (`cron_job`); needs a schedule.
    CronJob,
    /// Static site built from a repository (`static_site`).
    StaticSite,
}

impl RenderServiceKind {
    /// Render's name for the kind (`web_service`, …).
    pub fn as_api(self) -> &'static str {
        match self {
            RenderServiceKind::WebService => "web_service",
            RenderServiceKind::PrivateService => "private_service",
            RenderServiceKind::BackgroundWorker => "background_worker",
            RenderServiceKind::CronJob => "cron_job",
            RenderServiceKind::StaticSite => "static_site",
        }
    }

    fn from_api(value: &str) -> Option<Self> {
        match value {
            "web_service" => Some(RenderServiceKind::WebService),
            "private_service" => Some(RenderServiceKind::PrivateService),
            "background_worker" => Some(RenderServiceKind::BackgroundWorker),
            "cron_job" => Some(RenderServiceKind::CronJob),
            "static_site" => Some(RenderServiceKind::StaticSite),
            _ => None,
        }
    }

    /// Whether the kind runs a number of instances (everything but cron jobs and static
    /// sites).
    pub fn has_instances(self) -> bool {
        !matches!(
            self,
            RenderServiceKind::CronJob | RenderServiceKind::StaticSite
        )
    }
}

/// Whether `runtime` builds natively (build and start commands) rather than from a
/// Dockerfile or an image (a docker command).
fn is_native(runtime: &str) -> bool {
    !matches!(runtime, "docker" | "image")
}

/// What Tether wants a Render service to be. `None` leaves a field to Render's default.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RenderServiceSpec {
    /// Service name (the stable identity within the workspace).
    pub name: String,
    /// Workspace id (`tea-…`).
    pub owner_id: String,
    /// Kind of service.
    pub kind: RenderServiceKind,
    /// Container image to run (image-backed service); exclusive with `repo`.
    pub image: Option<String>,
    /// Git repository URL to build from.
    pub repo: Option<String>,
    /// Branch of `repo`.
    pub branch: Option<String>,
    /// Region (`oregon`, `frankfurt`, …); fixed once created.
    pub region: Option<String>,
    /// Instance plan (`starter`, `standard`, …); not for static sites.
    pub plan: Option<String>,
    /// Number of instances (not for cron jobs and static sites).
    pub instances: Option<i32>,
    /// Runtime (`node`, `python`, `docker`, `image`, …); `image` for image-backed
    /// services and `docker` for repositories when `None`. Not for static sites.
    pub runtime: Option<String>,
    /// Build command (native runtimes and static sites).
    pub build_command: Option<String>,
    /// Start command (`startCommand` for native runtimes, `dockerCommand` otherwise).
    pub start_command: Option<String>,
    /// Health check path (web services).
    pub health_check_path: Option<String>,
    /// Cron schedule (cron jobs).
    pub schedule: Option<String>,
    /// Build output directory (static sites).
    pub publish_path: Option<String>,
    /// Environment variables set with the creation (values are secrets: `Debug` hides them).
    pub env_vars: Vec<EnvVar>,
}

impl RenderServiceSpec {
    /// The runtime the service is created with (`None` for static sites).
    pub fn effective_runtime(&self) -> Option<&str> {
        if self.kind == RenderServiceKind::StaticSite {
            return None;
        }
        Some(match (&self.runtime, &self.image) {
            (Some(runtime), _) => runtime.as_str(),
            (None, Some(_)) => "image",
            (None, None) => "docker",
        })
    }
}

/// A Render service as observed. Empty strings Render uses for "unset" read as `None`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RenderService {
    /// Service id (`srv-…`).
    pub id: String,
    /// Name.
    pub name: String,
    /// Workspace id.
    pub owner_id: String,
    /// Kind, `None` for kinds this adapter does not know.
    pub kind: Option<RenderServiceKind>,
    /// Image path for image-backed services.
    pub image: Option<String>,
    /// Repository URL.
    pub repo: Option<String>,
    /// Branch.
    pub branch: Option<String>,
    /// Region.
    pub region: Option<String>,
    /// Plan.
    pub plan: Option<String>,
    /// Public URL (web services, static sites) or internal address (private services).
    pub url: Option<String>,
    /// Whether the service is suspended.
    pub suspended: bool,
    /// Whether Render deploys on every push (`autoDeploy: yes`).
    pub auto_deploy: bool,
    /// Number of instances (kinds with instances).
    pub num_instances: Option<i32>,
    /// Runtime (`docker`, `image`, `node`, …).
    pub runtime: Option<String>,
    /// Build command (native runtimes and static sites).
    pub build_command: Option<String>,
    /// Start command (`startCommand` of native runtimes, `dockerCommand` otherwise).
    pub start_command: Option<String>,
    /// Health check path (web services).
    pub health_check_path: Option<String>,
    /// Cron schedule (cron jobs).
    pub schedule: Option<String>,
    /// Build output directory (static sites).
    pub publish_path: Option<String>,
    /// When Render last changed the service (`updatedAt`), as sent: the change signal its
    /// sub-lists are re-read on.
    pub updated_at: Option<String>,
}

/// Fields to change on a service; `None` leaves a field alone, `Some("")` clears a
/// command or path. Region, kind and instance count are not patchable (see
/// [`RenderServices::scale_service`] for instances).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RenderServicePatch {
    /// New name.
    pub name: Option<String>,
    /// New image path (image-backed services).
    pub image: Option<String>,
    /// New repository.
    pub repo: Option<String>,
    /// New branch.
    pub branch: Option<String>,
    /// New plan.
    pub plan: Option<String>,
    /// New runtime.
    pub runtime: Option<String>,
    /// New build command.
    pub build_command: Option<String>,
    /// New start command.
    pub start_command: Option<String>,
    /// New health check path.
    pub health_check_path: Option<String>,
    /// New cron schedule.
    pub schedule: Option<String>,
    /// New publish path.
    pub publish_path: Option<String>,
    /// Turn auto-deploy on or off.
    pub auto_deploy: Option<bool>,
}

impl RenderServicePatch {
    /// Whether the patch changes nothing.
    pub fn is_empty(&self) -> bool {
        *self == RenderServicePatch::default()
    }
}

/// Render services and what hangs off them.
pub trait RenderServices: Deployments {
    /// Every service of the workspace, optionally only those called `name` (all pages).
    fn list_services(
        &self,
        owner_id: &str,
        name: Option<&str>,
    ) -> impl Future<Output = PlatformResult<Vec<RenderService>>> + Send;
    /// The workspace's services created or updated after `since` (all pages; Render's
    /// `updatedAfter` filter): what changed since an earlier [`RenderServices::list_services`],
    /// deletions aside.
    fn list_services_updated_after(
        &self,
        owner_id: &str,
        since: std::time::SystemTime,
    ) -> impl Future<Output = PlatformResult<Vec<RenderService>>> + Send;
    /// Reads one service.
    fn get_service(&self, id: &str) -> impl Future<Output = PlatformResult<RenderService>> + Send;
    /// Finds the service by name, or creates it (with its environment variables).
    fn ensure_service(
        &self,
        spec: &RenderServiceSpec,
    ) -> impl Future<Output = PlatformResult<Ensured<RenderService>>> + Send;
    /// Changes the given fields of `current` (as last observed: its owner, kind and
    /// runtime decide where Render wants each field).
    fn update_service(
        &self,
        current: &RenderService,
        patch: &RenderServicePatch,
    ) -> impl Future<Output = PlatformResult<RenderService>> + Send;
    /// Sets the number of instances (`POST /services/{id}/scale`, applied asynchronously).
    fn scale_service(
        &self,
        id: &str,
        instances: i32,
    ) -> impl Future<Output = PlatformResult<()>> + Send;
    /// Deletes the service; `Ok(false)` when it was already gone.
    fn delete_service(&self, id: &str) -> impl Future<Output = PlatformResult<bool>> + Send;
    /// The service's environment variables (all pages).
    fn list_env_vars(
        &self,
        service_id: &str,
    ) -> impl Future<Output = PlatformResult<Vec<EnvVar>>> + Send;
    /// Creates or replaces one variable.
    fn set_env_var(
        &self,
        service_id: &str,
        key: &str,
        value: &str,
    ) -> impl Future<Output = PlatformResult<()>> + Send;
    /// Removes one variable; `Ok(false)` when it was not there.
    fn delete_env_var(
        &self,
        service_id: &str,
        key: &str,
    ) -> impl Future<Output = PlatformResult<bool>> + Send;
    /// The service's custom domains (all pages).
    fn list_domains(
        &self,
        service_id: &str,
    ) -> impl Future<Output = PlatformResult<Vec<Domain>>> + Send;
    /// Adds a custom domain, or returns it when already attached.
    fn ensure_domain(
        &self,
        service_id: &str,
        name: &str,
    ) -> impl Future<Output = PlatformResult<Ensured<Domain>>> + Send;
    /// Adds a custom domain known not to be attached (one request; a conflict means it
    /// is attached after all and counts as done).
    fn add_domain(
        &self,
        service_id: &str,
        name: &str,
    ) -> impl Future<Output = PlatformResult<()>> + Send;
    /// Removes a custom domain; `Ok(false)` when it was not there.
    fn delete_domain(
        &self,
        service_id: &str,
        name: &str,
    ) -> impl Future<Output = PlatformResult<bool>> + Send;
}

/// A CIDR block allowed to reach a datastore from outside Render.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RenderCidr {
    /// The block (`203.0.113.0/24`).
    pub cidr_block: String,
    /// What it is for.
    pub description: String,
}

/// The provisioning state of a key-value store or Postgres database (`databaseStatus`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DatastoreStatus {
    /// Being created (`creating`).
    Creating,
    /// Serving (`available`).
    Available,
    /// Anything else (`suspended`, `updating_instance`, `maintenance_in_progress`, …),
    /// with Render's name.
    Other(String),
}

impl DatastoreStatus {
    fn from_api(status: &str) -> Self {
        match status {
            "creating" => DatastoreStatus::Creating,
            "available" => DatastoreStatus::Available,
            other => DatastoreStatus::Other(other.to_owned()),
        }
    }

    /// Render's name for the status.
    pub fn as_str(&self) -> &str {
        match self {
            DatastoreStatus::Creating => "creating",
            DatastoreStatus::Available => "available",
            DatastoreStatus::Other(other) => other,
        }
    }
}

/// What Tether wants a Render key-value store to be.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RenderKeyValueSpec {
    /// Name (the stable identity within the workspace).
    pub name: String,
    /// Workspace id.
    pub owner_id: String,
    /// Plan (`free`, `starter`, …).
    pub plan: String,
    /// Region; fixed once created. Render's default when `None`.
    pub region: Option<String>,
    /// Eviction policy (`allkeys_lru`, `noeviction`, …); Render's default when `None`.
    pub maxmemory_policy: Option<String>,
    /// Outside access; empty allows none.
    pub ip_allow_list: Vec<RenderCidr>,
}

/// A Render key-value store as observed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RenderKeyValue {
    /// Id (`red-…`).
    pub id: String,
    /// Name.
    pub name: String,
    /// Workspace id.
    pub owner_id: String,
    /// Plan.
    pub plan: String,
    /// Region.
    pub region: String,
    /// Provisioning status.
    pub status: DatastoreStatus,
    /// Eviction policy, in the underscore spelling of Render's `maxmemoryPolicy` enum.
    pub maxmemory_policy: Option<String>,
    /// Outside access.
    pub ip_allow_list: Vec<RenderCidr>,
    /// Dashboard page (list responses carry it).
    pub dashboard_url: Option<String>,
}

/// Fields to change on a key-value store; `None` leaves a field alone.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RenderKeyValuePatch {
    /// New plan.
    pub plan: Option<String>,
    /// New eviction policy.
    pub maxmemory_policy: Option<String>,
    /// New allow list (replaces the whole list).
    pub ip_allow_list: Option<Vec<RenderCidr>>,
}

/// What Tether wants a Render Postgres database to be.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RenderPostgresSpec {
    /// Name (the stable identity within the workspace).
    pub name: String,
    /// Workspace id.
    pub owner_id: String,
    /// Plan (`free`, `basic_256mb`, `pro_4gb`, …).
    pub plan: String,
    /// Region; fixed once created. Render's default when `None`.
    pub region: Option<String>,
    /// Major version (`16`); fixed once created.
    pub version: String,
    /// Disk size in GB; the plan's default when `None`.
    pub disk_size_gb: Option<i32>,
    /// Database created inside the instance; fixed once created, random when `None`.
    pub database_name: Option<String>,
    /// Database user; fixed once created, random when `None`.
    pub database_user: Option<String>,
    /// Keep a standby in another zone.
    pub high_availability: bool,
    /// Outside access; empty allows none.
    pub ip_allow_list: Vec<RenderCidr>,
}

/// A Render Postgres database as observed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RenderPostgres {
    /// Id (`dpg-…`).
    pub id: String,
    /// Name.
    pub name: String,
    /// Workspace id.
    pub owner_id: String,
    /// Plan.
    pub plan: String,
    /// Region.
    pub region: String,
    /// Major version.
    pub version: String,
    /// Provisioning status.
    pub status: DatastoreStatus,
    /// Disk size in GB, when Render reports it.
    pub disk_size_gb: Option<i32>,
    /// Database name.
    pub database_name: String,
    /// Database user.
    pub database_user: String,
    /// Whether a standby runs in another zone.
    pub high_availability: bool,
    /// Outside access.
    pub ip_allow_list: Vec<RenderCidr>,
    /// Whether the database is suspended.
    pub suspended: bool,
    /// Dashboard page.
    pub dashboard_url: String,
}

/// Fields to change on a Postgres database; `None` leaves a field alone.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RenderPostgresPatch {
    /// New plan.
    pub plan: Option<String>,
    /// New disk size (Render only grows disks).
    pub disk_size_gb: Option<i32>,
    /// Turn high availability on or off.
    pub high_availability: Option<bool>,
    /// New allow list (replaces the whole list).
    pub ip_allow_list: Option<Vec<RenderCidr>>,
}

/// Render key-value stores and Postgres databases.
pub trait RenderDatastores: Send + Sync {
    /// Every key-value store of the workspace, optionally only those called `name` (all
    /// pages).
    fn list_key_values(
        &self,
        owner_id: &str,
        name: Option<&str>,
    ) -> impl Future<Output = PlatformResult<Vec<RenderKeyValue>>> + Send;
    /// Reads one key-value store.
    fn get_key_value(
        &self,
        id: &str,
    ) -> impl Future<Output = PlatformResult<RenderKeyValue>> + Send;
    /// Finds the store by name, or creates it (it starts `creating`).
    fn ensure_key_value(
        &self,
        spec: &RenderKeyValueSpec,
    ) -> impl Future<Output = PlatformResult<Ensured<RenderKeyValue>>> + Send;
    /// Changes the given fields.
    fn update_key_value(
        &self,
        id: &str,
        patch: &RenderKeyValuePatch,
    ) -> impl Future<Output = PlatformResult<RenderKeyValue>> + Send;
    /// Deletes the store; `Ok(false)` when it was already gone.
    fn delete_key_value(&self, id: &str) -> impl Future<Output = PlatformResult<bool>> + Send;
    /// Every Postgres database of the workspace, optionally only those called `name` (all
    /// pages).
    fn list_postgres(
        &self,
        owner_id: &str,
        name: Option<&str>,
    ) -> impl Future<Output = PlatformResult<Vec<RenderPostgres>>> + Send;
    /// Reads one Postgres database.
    fn get_postgres(&self, id: &str)
    -> impl Future<Output = PlatformResult<RenderPostgres>> + Send;
    /// Finds the database by name, or creates it (it starts `creating`).
    fn ensure_postgres(
        &self,
        spec: &RenderPostgresSpec,
    ) -> impl Future<Output = PlatformResult<Ensured<RenderPostgres>>> + Send;
    /// Changes the given fields.
    fn update_postgres(
        &self,
        id: &str,
        patch: &RenderPostgresPatch,
    ) -> impl Future<Output = PlatformResult<RenderPostgres>> + Send;
    /// Deletes the database; `Ok(false)` when it was already gone.
    fn delete_postgres(&self, id: &str) -> impl Future<Output = PlatformResult<bool>> + Send;
}

/// The Render client.
#[derive(Clone)]
pub struct RenderClient {
    http: PlatformHttp,
    page_limit: u32,
}

impl RenderClient {
    /// A client sending through `http` (built for [`Platform::Render`]).
    pub fn new(http: PlatformHttp) -> Self {
        RenderClient {
            http,
            page_limit: 100,
        }
    }

    /// Sets the page size of list calls (1–100; Render's maximum is the default).
    pub fn with_page_limit(mut self, limit: u32) -> Self {
        self.page_limit = limit.clamp(1, 100);
        self
    }

    /// Follows `cursor` pagination, extracting `field` from each `{<field>, cursor}` wrapper.
    /// Every object at `path` in workspace `owner_id` (all pages), or only the one named
    /// `name`; `field` is the list wrapper's key.
    async fn list_owned<A: serde::de::DeserializeOwned, T: From<A>>(
        &self,
        operation: &'static str,
        path: &str,
        field: &'static str,
        owner_id: &str,
        name: Option<&str>,
    ) -> PlatformResult<Vec<T>> {
        let mut request = ApiRequest::get(operation, &[path])
            .query("ownerId", owner_id)
            .limited(READ, "");
        if let Some(name) = name {
            request = request.query("name", name);
        }
        let found: Vec<A> = self.list_all(request, field).await?;
        Ok(found.into_iter().map(T::from).collect())
    }

    async fn list_all<T: serde::de::DeserializeOwned>(
        &self,
        request: ApiRequest,
        field: &'static str,
    ) -> PlatformResult<Vec<T>> {
        let operation = request.operation();
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut page_request = request.clone().query("limit", self.page_limit.to_string());
            if let Some(cursor) = &cursor {
                page_request = page_request.query("cursor", cursor.clone());
            }
            let page: Vec<Value> = self.http.json(&page_request).await?;
            let count = page.len();
            for mut wrapper in page {
                let next = wrapper
                    .get("cursor")
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                let item = wrapper
                    .get_mut(field)
                    .map(Value::take)
                    .ok_or_else(|| malformed(operation, format!("list item without `{field}`")))?;
                let item: T = decode(Platform::Render, operation, item.to_string().as_bytes())?;
                out.push(item);
                cursor = next;
            }
            // A short page is the last one; Render returns an empty page after the end too.
            if count < self.page_limit as usize || cursor.is_none() {
                return Ok(out);
            }
        }
    }

    async fn find_service(
        &self,
        owner_id: &str,
        name: &str,
    ) -> PlatformResult<Option<RenderService>> {
        let services = self.list_services(owner_id, Some(name)).await?;
        Ok(services.into_iter().find(|s| s.name == name))
    }
}

fn malformed(operation: &'static str, reason: String) -> PlatformError {
    PlatformError::Malformed {
        platform: Platform::Render,
        operation,
        reason,
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ApiService {
    id: String,
    name: String,
    owner_id: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    image_path: Option<String>,
    #[serde(default)]
    repo: Option<String>,
    #[serde(default)]
    branch: Option<String>,
    suspended: String,
    #[serde(default)]
    auto_deploy: Option<String>,
    #[serde(default)]
    service_details: Option<ApiServiceDetails>,
    #[serde(default)]
    updated_at: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ApiServiceDetails {
    #[serde(default)]
    region: Option<String>,
    #[serde(default)]
    plan: Option<String>,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    runtime: Option<String>,
    #[serde(default)]
    num_instances: Option<i32>,
    #[serde(default)]
    health_check_path: Option<String>,
    #[serde(default)]
    schedule: Option<String>,
    #[serde(default)]
    publish_path: Option<String>,
    /// Static sites keep their build command here.
    #[serde(default)]
    build_command: Option<String>,
    #[serde(default)]
    env_specific_details: Option<ApiEnvSpecificDetails>,
}

/// `dockerDetails` or `nativeEnvironmentDetails`.
#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ApiEnvSpecificDetails {
    #[serde(default)]
    docker_command: Option<String>,
    #[serde(default)]
    build_command: Option<String>,
    #[serde(default)]
    start_command: Option<String>,
}

/// Render writes "unset" as an empty string.
fn non_empty(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.is_empty())
}

impl From<ApiService> for RenderService {
    fn from(s: ApiService) -> Self {
        let details = s.service_details.unwrap_or_default();
        let env = details.env_specific_details.unwrap_or_default();
        RenderService {
            kind: RenderServiceKind::from_api(&s.kind),
            id: s.id,
            name: s.name,
            owner_id: s.owner_id,
            image: non_empty(s.image_path),
            repo: non_empty(s.repo),
            branch: non_empty(s.branch),
            region: details.region,
            plan: details.plan,
            url: non_empty(details.url),
            suspended: s.suspended == "suspended",
            auto_deploy: s.auto_deploy.as_deref() != Some("no"),
            num_instances: details.num_instances,
            runtime: details.runtime,
            build_command: non_empty(details.build_command.or(env.build_command)),
            start_command: non_empty(env.start_command.or(env.docker_command)),
            health_check_path: non_empty(details.health_check_path),
            schedule: non_empty(details.schedule),
            publish_path: non_empty(details.publish_path),
            updated_at: s.updated_at,
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ApiServiceAndDeploy {
    service: ApiService,
}

#[derive(Deserialize)]
struct ApiEnvVar {
    key: String,
    value: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ApiCustomDomain {
    id: String,
    name: String,
    verification_status: String,
}

impl From<ApiCustomDomain> for Domain {
    fn from(d: ApiCustomDomain) -> Self {
        Domain {
            id: d.id,
            name: d.name,
            verified: d.verification_status == "verified",
        }
    }
}

#[derive(Deserialize)]
struct ApiDeploy {
    id: String,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    commit: Option<ApiCommit>,
    #[serde(default)]
    image: Option<ApiImage>,
}

#[derive(Deserialize)]
struct ApiCommit {
    #[serde(default)]
    id: Option<String>,
}

#[derive(Deserialize)]
struct ApiImage {
    #[serde(default, rename = "ref")]
    reference: Option<String>,
}

fn deploy_state(status: &str) -> Option<DeploymentState> {
    Some(match status {
        "created" | "queued" => DeploymentState::Queued,
        "build_in_progress" => DeploymentState::Building,
        "update_in_progress" | "pre_deploy_in_progress" => DeploymentState::Deploying,
        "live" => DeploymentState::Live,
        "deactivated" => DeploymentState::Superseded,
        "build_failed" | "update_failed" | "pre_deploy_failed" => DeploymentState::Failed,
        "canceled" => DeploymentState::Canceled,
        _ => return None,
    })
}

fn to_deployment(operation: &'static str, d: ApiDeploy) -> PlatformResult<Deployment> {
    let status = d
        .status
        .ok_or_else(|| malformed(operation, "deploy without `status`".into()))?;
    let state = deploy_state(&status)
        .ok_or_else(|| malformed(operation, format!("unknown deploy status {status:?}")))?;
    let source = d
        .image
        .and_then(|i| i.reference)
        .or_else(|| d.commit.and_then(|c| c.id));
    Ok(Deployment {
        id: d.id,
        state,
        platform_state: status,
        source,
    })
}

fn invalid(operation: &'static str, reason: impl Into<String>) -> PlatformError {
    PlatformError::Invalid {
        platform: Platform::Render,
        operation,
        status: None,
        reason: reason.into(),
    }
}

/// `envSpecificDetails` for `runtime`: build and start commands for native runtimes, the
/// docker command otherwise (a build command has no place there). `None` when there is
/// nothing to send.
fn env_specific_details(
    operation: &'static str,
    runtime: &str,
    build: Option<&str>,
    start: Option<&str>,
    creating: bool,
) -> PlatformResult<Option<Value>> {
    if is_native(runtime) {
        // Render requires both commands when creating a native service.
        let mut out = json!({});
        if let Some(build) = build.or(creating.then_some("")) {
            out["buildCommand"] = json!(build);
        }
        if let Some(start) = start.or(creating.then_some("")) {
            out["startCommand"] = json!(start);
        }
        return Ok((out != json!({})).then_some(out));
    }
    if build.is_some_and(|b| !b.is_empty()) {
        return Err(invalid(
            operation,
            format!("buildCommand needs a native runtime, not {runtime:?}"),
        ));
    }
    Ok(start.map(|start| json!({ "dockerCommand": start })))
}

fn service_body(spec: &RenderServiceSpec) -> PlatformResult<Value> {
    const OP: &str = "create_service";
    let kind = spec.kind;
    let mut details = json!({});
    if kind == RenderServiceKind::StaticSite {
        if spec.repo.is_none() {
            return Err(invalid(OP, "a static site needs repo"));
        }
        if let Some(build) = &spec.build_command {
            details["buildCommand"] = json!(build);
        }
        if let Some(path) = &spec.publish_path {
            details["publishPath"] = json!(path);
        }
        if spec.start_command.is_some() || spec.instances.is_some() {
            return Err(invalid(
                OP,
                "static sites take no startCommand and no instances",
            ));
        }
    } else {
        let runtime = spec.effective_runtime().unwrap_or("docker");
        details["runtime"] = json!(runtime);
        if let Some(region) = &spec.region {
            details["region"] = json!(region);
        }
        if let Some(plan) = &spec.plan {
            details["plan"] = json!(plan);
        }
        if let Some(env) = env_specific_details(
            OP,
            runtime,
            spec.build_command.as_deref(),
            spec.start_command.as_deref(),
            true,
        )? {
            details["envSpecificDetails"] = env;
        }
        match (kind, &spec.schedule) {
            (RenderServiceKind::CronJob, Some(schedule)) => details["schedule"] = json!(schedule),
            (RenderServiceKind::CronJob, None) => {
                return Err(invalid(OP, "a cron job needs schedule"));
            }
            (_, Some(_)) => return Err(invalid(OP, "schedule is only for cron jobs")),
            (_, None) => {}
        }
        if let Some(instances) = spec.instances {
            if !kind.has_instances() {
                return Err(invalid(OP, "cron jobs take no instances"));
            }
            details["numInstances"] = json!(instances);
        }
    }
    if let Some(path) = &spec.health_check_path {
        if kind != RenderServiceKind::WebService {
            return Err(invalid(OP, "healthCheckPath is only for web services"));
        }
        details["healthCheckPath"] = json!(path);
    }
    if spec.publish_path.is_some() && kind != RenderServiceKind::StaticSite {
        return Err(invalid(OP, "publishPath is only for static sites"));
    }
    let mut body = json!({
        "type": kind.as_api(),
        "name": spec.name,
        "ownerId": spec.owner_id,
        // Tether decides when to deploy; an auto-deploy could undo a rollback.
        "autoDeploy": "no",
        "serviceDetails": details,
    });
    if let Some(image) = &spec.image {
        body["image"] = json!({ "ownerId": spec.owner_id, "imagePath": image });
    }
    if let Some(repo) = &spec.repo {
        body["repo"] = json!(repo);
    }
    if let Some(branch) = &spec.branch {
        body["branch"] = json!(branch);
    }
    let vars: Vec<Value> = spec
        .env_vars
        .iter()
        .filter_map(|v| {
            v.value
                .as_ref()
                .map(|value| json!({ "key": v.key, "value": value }))
        })
        .collect();
    if !vars.is_empty() {
        body["envVars"] = json!(vars);
    }
    Ok(body)
}

/// The PATCH body for `patch` on `current`: top-level fields, and the `serviceDetails`
/// fields the service's kind accepts (`…DetailsPATCH`).
fn patch_body(current: &RenderService, patch: &RenderServicePatch) -> PlatformResult<Value> {
    const OP: &str = "update_service";
    let kind = current.kind.ok_or_else(|| {
        invalid(
            OP,
            "the service is of a kind this version of Tether does not manage",
        )
    })?;
    let mut body = json!({});
    if let Some(name) = &patch.name {
        body["name"] = json!(name);
    }
    if let Some(repo) = &patch.repo {
        body["repo"] = json!(repo);
    }
    if let Some(branch) = &patch.branch {
        body["branch"] = json!(branch);
    }
    if let Some(image) = &patch.image {
        body["image"] = json!({ "ownerId": current.owner_id, "imagePath": image });
    }
    if let Some(auto) = patch.auto_deploy {
        body["autoDeploy"] = json!(if auto { "yes" } else { "no" });
    }
    let mut details = json!({});
    let only = |field: &str, allowed: bool| -> PlatformResult<()> {
        if allowed {
            Ok(())
        } else {
            Err(invalid(
                OP,
                format!("{field} cannot be set on a {}", kind.as_api()),
            ))
        }
    };
    if let Some(plan) = &patch.plan {
        only("plan", kind != RenderServiceKind::StaticSite)?;
        details["plan"] = json!(plan);
    }
    if let Some(path) = &patch.health_check_path {
        only("healthCheckPath", kind == RenderServiceKind::WebService)?;
        details["healthCheckPath"] = json!(path);
    }
    if let Some(schedule) = &patch.schedule {
        only("schedule", kind == RenderServiceKind::CronJob)?;
        details["schedule"] = json!(schedule);
    }
    if kind == RenderServiceKind::StaticSite {
        if let Some(path) = &patch.publish_path {
            details["publishPath"] = json!(path);
        }
        if let Some(build) = &patch.build_command {
            details["buildCommand"] = json!(build);
        }
        only(
            "startCommand",
            patch.start_command.is_none() && patch.runtime.is_none(),
        )?;
    } else {
        only("publishPath", patch.publish_path.is_none())?;
        if let Some(runtime) = &patch.runtime {
            details["runtime"] = json!(runtime);
        }
        let runtime = patch
            .runtime
            .as_deref()
            .or(current.runtime.as_deref())
            .unwrap_or("docker");
        // Switching between a native runtime and docker/image replaces the whole
        // `envSpecificDetails` shape, so send both commands then.
        let switching = patch.runtime.is_some()
            && current.runtime.as_deref().map(is_native) != Some(is_native(runtime));
        if let Some(env) = env_specific_details(
            OP,
            runtime,
            patch.build_command.as_deref(),
            patch.start_command.as_deref(),
            switching,
        )? {
            details["envSpecificDetails"] = env;
        }
    }
    if details != json!({}) {
        body["serviceDetails"] = details;
    }
    Ok(body)
}

impl RenderServices for RenderClient {
    async fn list_services(
        &self,
        owner_id: &str,
        name: Option<&str>,
    ) -> PlatformResult<Vec<RenderService>> {
        self.list_owned::<ApiService, _>("list_services", "services", "service", owner_id, name)
            .await
    }

    async fn list_services_updated_after(
        &self,
        owner_id: &str,
        since: std::time::SystemTime,
    ) -> PlatformResult<Vec<RenderService>> {
        let since = jiff::Timestamp::try_from(since).map_err(|error| {
            invalid(
                "list_services",
                format!("updatedAfter out of range: {error}"),
            )
        })?;
        let request = ApiRequest::get("list_services", &["services"])
            .query("ownerId", owner_id)
            .query("updatedAfter", since.to_string())
            .limited(READ, "");
        let found: Vec<ApiService> = self.list_all(request, "service").await?;
        Ok(found.into_iter().map(RenderService::from).collect())
    }

    async fn get_service(&self, id: &str) -> PlatformResult<RenderService> {
        let request = ApiRequest::get("get_service", &["services", id]).limited(READ, "");
        let service: ApiService = self.http.json(&request).await?;
        Ok(service.into())
    }

    async fn ensure_service(
        &self,
        spec: &RenderServiceSpec,
    ) -> PlatformResult<Ensured<RenderService>> {
        let body = service_body(spec)?;
        if let Some(existing) = self.find_service(&spec.owner_id, &spec.name).await? {
            return Ok(Ensured {
                object: existing,
                created: false,
            });
        }
        let request = ApiRequest::post("create_service", &["services"])
            .json(body)
            .limited(SERVICE_CREATE, "");
        match self.http.json::<ApiServiceAndDeploy>(&request).await {
            Ok(created) => Ok(Ensured {
                object: created.service.into(),
                created: true,
            }),
            // Someone (or an earlier attempt of ours) created it meanwhile: adopt it.
            Err(PlatformError::Conflict { .. }) => {
                match self.find_service(&spec.owner_id, &spec.name).await? {
                    Some(existing) => Ok(Ensured {
                        object: existing,
                        created: false,
                    }),
                    None => Err(PlatformError::Conflict {
                        platform: Platform::Render,
                        operation: "create_service",
                        reason: "name conflict but no service of that name is visible".into(),
                    }),
                }
            }
            Err(e) => Err(e),
        }
    }

    async fn update_service(
        &self,
        current: &RenderService,
        patch: &RenderServicePatch,
    ) -> PlatformResult<RenderService> {
        let body = patch_body(current, patch)?;
        // PATCH with the same body twice has the same effect: safe to retry.
        let request = ApiRequest::new(Method::PATCH, "update_service", &["services", &current.id])
            .json(body)
            .idempotent()
            .limited(SERVICE_ACTION, current.id.as_str());
        let service: ApiService = self.http.json(&request).await?;
        Ok(service.into())
    }

    async fn scale_service(&self, id: &str, instances: i32) -> PlatformResult<()> {
        // Scaling to a number is the same however often it is sent: safe to retry. Render
        // counts it among the "other writes", not the per-service actions.
        let request = ApiRequest::post("scale_service", &["services", id, "scale"])
            .json(json!({ "numInstances": instances }))
            .idempotent()
            .limited(WRITE, "");
        self.http.send(&request).await.map(|_| ())
    }

    async fn delete_service(&self, id: &str) -> PlatformResult<bool> {
        let request =
            ApiRequest::new(Method::DELETE, "delete_service", &["services", id]).limited(WRITE, "");
        gone_is_ok(self.http.send(&request).await)
    }

    async fn list_env_vars(&self, service_id: &str) -> PlatformResult<Vec<EnvVar>> {
        let request = ApiRequest::get("list_env_vars", &["services", service_id, "env-vars"])
            .limited(READ, "");
        let vars: Vec<ApiEnvVar> = self.list_all(request, "envVar").await?;
        Ok(vars
            .into_iter()
            .map(|v| EnvVar {
                key: v.key,
                value: Some(v.value),
                secret: false,
            })
            .collect())
    }

    async fn set_env_var(&self, service_id: &str, key: &str, value: &str) -> PlatformResult<()> {
        let request = ApiRequest::new(
            Method::PUT,
            "set_env_var",
            &["services", service_id, "env-vars", key],
        )
        .json(json!({ "value": value }))
        .limited(WRITE, "");
        let set: ApiEnvVar = self.http.json(&request).await?;
        if set.key != key {
            return Err(malformed(
                "set_env_var",
                "response names a different key".into(),
            ));
        }
        Ok(())
    }

    async fn delete_env_var(&self, service_id: &str, key: &str) -> PlatformResult<bool> {
        let request = ApiRequest::new(
            Method::DELETE,
            "delete_env_var",
            &["services", service_id, "env-vars", key],
        )
        .limited(WRITE, "");
        gone_is_ok(self.http.send(&request).await)
    }

    async fn list_domains(&self, service_id: &str) -> PlatformResult<Vec<Domain>> {
        let request = ApiRequest::get("list_domains", &["services", service_id, "custom-domains"])
            .limited(READ, "");
        let domains: Vec<ApiCustomDomain> = self.list_all(request, "customDomain").await?;
        Ok(domains.into_iter().map(Domain::from).collect())
    }

    async fn ensure_domain(&self, service_id: &str, name: &str) -> PlatformResult<Ensured<Domain>> {
        let existing = self.list_domains(service_id).await?;
        if let Some(domain) = existing.into_iter().find(|d| d.name == name) {
            return Ok(Ensured {
                object: domain,
                created: false,
            });
        }
        let domain = self.post_domain(service_id, name).await?;
        Ok(Ensured {
            object: domain,
            created: true,
        })
    }

    async fn add_domain(&self, service_id: &str, name: &str) -> PlatformResult<()> {
        match self.post_domain(service_id, name).await {
            Ok(_) | Err(PlatformError::Conflict { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn delete_domain(&self, service_id: &str, name: &str) -> PlatformResult<bool> {
        let request = ApiRequest::new(
            Method::DELETE,
            "delete_domain",
            &["services", service_id, "custom-domains", name],
        )
        .limited(WRITE, "");
        gone_is_ok(self.http.send(&request).await)
    }
}

impl RenderClient {
    async fn post_domain(&self, service_id: &str, name: &str) -> PlatformResult<Domain> {
        let request = ApiRequest::post("add_domain", &["services", service_id, "custom-domains"])
            .json(json!({ "name": name }))
            .limited(WRITE, "");
        let created: Vec<ApiCustomDomain> = self.http.json(&request).await?;
        created
            .into_iter()
            .map(Domain::from)
            .find(|d| d.name == name)
            .ok_or_else(|| malformed("add_domain", "created domain missing from response".into()))
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ApiCidr {
    cidr_block: String,
    #[serde(default)]
    description: String,
}

fn cidrs_from_api(list: Vec<ApiCidr>) -> Vec<RenderCidr> {
    list.into_iter()
        .map(|c| RenderCidr {
            cidr_block: c.cidr_block,
            description: c.description,
        })
        .collect()
}

fn cidrs_to_api(list: &[RenderCidr]) -> Value {
    json!(
        list.iter()
            .map(|c| json!({ "cidrBlock": c.cidr_block, "description": c.description }))
            .collect::<Vec<_>>()
    )
}

#[derive(Deserialize)]
struct ApiOwner {
    id: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ApiKeyValue {
    id: String,
    name: String,
    owner: ApiOwner,
    plan: String,
    region: String,
    status: String,
    #[serde(default)]
    options: ApiKeyValueOptions,
    #[serde(default)]
    ip_allow_list: Vec<ApiCidr>,
    #[serde(default)]
    dashboard_url: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ApiKeyValueOptions {
    #[serde(default)]
    maxmemory_policy: Option<String>,
}

impl From<ApiKeyValue> for RenderKeyValue {
    fn from(k: ApiKeyValue) -> Self {
        RenderKeyValue {
            id: k.id,
            name: k.name,
            owner_id: k.owner.id,
            plan: k.plan,
            region: k.region,
            status: DatastoreStatus::from_api(&k.status),
            // The read side is a free string (`allkeys-lru` in Redis's own spelling is
            // possible); the write side is the underscore enum. Read it as the enum.
            maxmemory_policy: non_empty(k.options.maxmemory_policy).map(|p| p.replace('-', "_")),
            ip_allow_list: cidrs_from_api(k.ip_allow_list),
            dashboard_url: k.dashboard_url,
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ApiPostgres {
    id: String,
    name: String,
    owner: ApiOwner,
    plan: String,
    region: String,
    version: String,
    status: String,
    #[serde(default, rename = "diskSizeGB")]
    disk_size_gb: Option<i32>,
    database_name: String,
    database_user: String,
    high_availability_enabled: bool,
    #[serde(default)]
    ip_allow_list: Vec<ApiCidr>,
    suspended: String,
    dashboard_url: String,
}

impl From<ApiPostgres> for RenderPostgres {
    fn from(p: ApiPostgres) -> Self {
        RenderPostgres {
            id: p.id,
            name: p.name,
            owner_id: p.owner.id,
            plan: p.plan,
            region: p.region,
            version: p.version,
            status: DatastoreStatus::from_api(&p.status),
            disk_size_gb: p.disk_size_gb,
            database_name: p.database_name,
            database_user: p.database_user,
            high_availability: p.high_availability_enabled,
            ip_allow_list: cidrs_from_api(p.ip_allow_list),
            suspended: p.suspended == "suspended",
            dashboard_url: p.dashboard_url,
        }
    }
}

fn key_value_body(spec: &RenderKeyValueSpec) -> Value {
    let mut body = json!({
        "name": spec.name,
        "ownerId": spec.owner_id,
        "plan": spec.plan,
        "ipAllowList": cidrs_to_api(&spec.ip_allow_list),
    });
    if let Some(region) = &spec.region {
        body["region"] = json!(region);
    }
    if let Some(policy) = &spec.maxmemory_policy {
        body["maxmemoryPolicy"] = json!(policy);
    }
    body
}

fn postgres_body(spec: &RenderPostgresSpec) -> Value {
    let mut body = json!({
        "name": spec.name,
        "ownerId": spec.owner_id,
        "plan": spec.plan,
        "version": spec.version,
        // Create-side name; reads call it `highAvailabilityEnabled`.
        "enableHighAvailability": spec.high_availability,
        "ipAllowList": cidrs_to_api(&spec.ip_allow_list),
    });
    if let Some(region) = &spec.region {
        body["region"] = json!(region);
    }
    if let Some(size) = spec.disk_size_gb {
        body["diskSizeGB"] = json!(size);
    }
    if let Some(name) = &spec.database_name {
        body["databaseName"] = json!(name);
    }
    if let Some(user) = &spec.database_user {
        body["databaseUser"] = json!(user);
    }
    body
}

impl RenderDatastores for RenderClient {
    async fn list_key_values(
        &self,
        owner_id: &str,
        name: Option<&str>,
    ) -> PlatformResult<Vec<RenderKeyValue>> {
        self.list_owned::<ApiKeyValue, _>(
            "list_key_values",
            "key-value",
            "keyValue",
            owner_id,
            name,
        )
        .await
    }

    async fn get_key_value(&self, id: &str) -> PlatformResult<RenderKeyValue> {
        let request = ApiRequest::get("get_key_value", &["key-value", id]).limited(READ, "");
        let store: ApiKeyValue = self.http.json(&request).await?;
        Ok(store.into())
    }

    async fn ensure_key_value(
        &self,
        spec: &RenderKeyValueSpec,
    ) -> PlatformResult<Ensured<RenderKeyValue>> {
        let find = || async {
            let found = self
                .list_key_values(&spec.owner_id, Some(&spec.name))
                .await?;
            Ok(found.into_iter().find(|k| k.name == spec.name))
        };
        if let Some(existing) = find().await? {
            return Ok(Ensured {
                object: existing,
                created: false,
            });
        }
        let request = ApiRequest::post("create_key_value", &["key-value"])
            .json(key_value_body(spec))
            .limited(WRITE, "");
        match self.http.json::<ApiKeyValue>(&request).await {
            Ok(created) => Ok(Ensured {
                object: created.into(),
                created: true,
            }),
            // Created meanwhile (or by an earlier attempt whose answer was lost): adopt it.
            Err(PlatformError::Conflict { .. }) => match find().await? {
                Some(existing) => Ok(Ensured {
                    object: existing,
                    created: false,
                }),
                None => Err(PlatformError::Conflict {
                    platform: Platform::Render,
                    operation: "create_key_value",
                    reason: "name conflict but no key-value store of that name is visible".into(),
                }),
            },
            Err(e) => Err(e),
        }
    }

    async fn update_key_value(
        &self,
        id: &str,
        patch: &RenderKeyValuePatch,
    ) -> PlatformResult<RenderKeyValue> {
        let mut body = json!({});
        if let Some(plan) = &patch.plan {
            body["plan"] = json!(plan);
        }
        if let Some(policy) = &patch.maxmemory_policy {
            body["maxmemoryPolicy"] = json!(policy);
        }
        if let Some(list) = &patch.ip_allow_list {
            body["ipAllowList"] = cidrs_to_api(list);
        }
        let request = ApiRequest::new(Method::PATCH, "update_key_value", &["key-value", id])
            .json(body)
            .idempotent()
            .limited(WRITE, "");
        let store: ApiKeyValue = self.http.json(&request).await?;
        Ok(store.into())
    }

    async fn delete_key_value(&self, id: &str) -> PlatformResult<bool> {
        let request = ApiRequest::new(Method::DELETE, "delete_key_value", &["key-value", id])
            .limited(WRITE, "");
        gone_is_ok(self.http.send(&request).await)
    }

    async fn list_postgres(
        &self,
        owner_id: &str,
        name: Option<&str>,
    ) -> PlatformResult<Vec<RenderPostgres>> {
        self.list_owned::<ApiPostgres, _>("list_postgres", "postgres", "postgres", owner_id, name)
            .await
    }

    async fn get_postgres(&self, id: &str) -> PlatformResult<RenderPostgres> {
        let request = ApiRequest::get("get_postgres", &["postgres", id]).limited(READ, "");
        let database: ApiPostgres = self.http.json(&request).await?;
        Ok(database.into())
    }

    async fn ensure_postgres(
        &self,
        spec: &RenderPostgresSpec,
    ) -> PlatformResult<Ensured<RenderPostgres>> {
        let find = || async {
            let found = self.list_postgres(&spec.owner_id, Some(&spec.name)).await?;
            Ok(found.into_iter().find(|p| p.name == spec.name))
        };
        if let Some(existing) = find().await? {
            return Ok(Ensured {
                object: existing,
                created: false,
            });
        }
        let request = ApiRequest::post("create_postgres", &["postgres"])
            .json(postgres_body(spec))
            .limited(WRITE, "");
        match self.http.json::<ApiPostgres>(&request).await {
            Ok(created) => Ok(Ensured {
                object: created.into(),
                created: true,
            }),
            Err(PlatformError::Conflict { .. }) => match find().await? {
                Some(existing) => Ok(Ensured {
                    object: existing,
                    created: false,
                }),
                None => Err(PlatformError::Conflict {
                    platform: Platform::Render,
                    operation: "create_postgres",
                    reason: "name conflict but no database of that name is visible".into(),
                }),
            },
            Err(e) => Err(e),
        }
    }

    async fn update_postgres(
        &self,
        id: &str,
        patch: &RenderPostgresPatch,
    ) -> PlatformResult<RenderPostgres> {
        let mut body = json!({});
        if let Some(plan) = &patch.plan {
            body["plan"] = json!(plan);
        }
        if let Some(size) = patch.disk_size_gb {
            body["diskSizeGB"] = json!(size);
        }
        if let Some(ha) = patch.high_availability {
            body["enableHighAvailability"] = json!(ha);
        }
        if let Some(list) = &patch.ip_allow_list {
            body["ipAllowList"] = cidrs_to_api(list);
        }
        let request = ApiRequest::new(Method::PATCH, "update_postgres", &["postgres", id])
            .json(body)
            .idempotent()
            .limited(WRITE, "");
        let database: ApiPostgres = self.http.json(&request).await?;
        Ok(database.into())
    }

    async fn delete_postgres(&self, id: &str) -> PlatformResult<bool> {
        let request = ApiRequest::new(Method::DELETE, "delete_postgres", &["postgres", id])
            .limited(WRITE, "");
        gone_is_ok(self.http.send(&request).await)
    }
}

impl Deployments for RenderClient {
    async fn deploy(&self, target: &str, source: &DeploySource) -> PlatformResult<Deployment> {
        let body = match source {
            DeploySource::Image(image) => json!({ "imageUrl": image }),
            DeploySource::Git(commit) => json!({ "commitId": commit }),
            DeploySource::Current => json!({}),
        };
        let request = ApiRequest::post("trigger_deploy", &["services", target, "deploys"])
            .json(body)
            .limited(SERVICE_ACTION, target);
        let response = self.http.send(&request).await?;
        if response.status == 202 {
            // Queued behind a running deploy, no body: the newest queued deploy is ours.
            // The deploy is sent, so this read waits out its rate limit instead of parking
            // (a parked read says nothing was sent, and the deploy would be sent again).
            let request = ApiRequest::get("list_deploys", &["services", target, "deploys"])
                .query("status", "queued")
                .query("limit", "1")
                .limited(READ, "");
            let page: Vec<Value> =
                crate::sync::progress::in_place(self.http.json(&request)).await?;
            let deploy = page
                .into_iter()
                .next()
                .and_then(|mut w| w.get_mut("deploy").map(Value::take))
                .ok_or_else(|| {
                    malformed("trigger_deploy", "202 but no queued deploy listed".into())
                })?;
            let deploy: ApiDeploy = decode(
                Platform::Render,
                "list_deploys",
                deploy.to_string().as_bytes(),
            )?;
            return to_deployment("trigger_deploy", deploy);
        }
        let deploy: ApiDeploy = decode(Platform::Render, "trigger_deploy", &response.body)?;
        to_deployment("trigger_deploy", deploy)
    }

    async fn deployment(&self, target: &str, deployment_id: &str) -> PlatformResult<Deployment> {
        let request = ApiRequest::get(
            "get_deploy",
            &["services", target, "deploys", deployment_id],
        )
        .limited(READ, "");
        let deploy: ApiDeploy = self.http.json(&request).await?;
        to_deployment("get_deploy", deploy)
    }

    async fn list_deployments(&self, target: &str) -> PlatformResult<Vec<Deployment>> {
        let request =
            ApiRequest::get("list_deploys", &["services", target, "deploys"]).limited(READ, "");
        let deploys: Vec<ApiDeploy> = self.list_all(request, "deploy").await?;
        deploys
            .into_iter()
            .map(|d| to_deployment("list_deploys", d))
            .collect()
    }

    async fn rollback(&self, target: &str, deployment_id: &str) -> PlatformResult<Deployment> {
        let request = ApiRequest::post("rollback", &["services", target, "rollback"])
            .json(json!({ "deployId": deployment_id }))
            .limited(SERVICE_ACTION, target);
        let deploy: ApiDeploy = self.http.json(&request).await?;
        to_deployment("rollback", deploy)
    }
}

/// Deletes treat "already gone" as done.
fn gone_is_ok<T>(result: PlatformResult<T>) -> PlatformResult<bool> {
    match result {
        Ok(_) => Ok(true),
        Err(PlatformError::NotFound { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_documented_deploy_status_has_a_state() {
        for status in [
            "created",
            "queued",
            "build_in_progress",
            "update_in_progress",
            "live",
            "deactivated",
            "build_failed",
            "update_failed",
            "canceled",
            "pre_deploy_in_progress",
            "pre_deploy_failed",
        ] {
            assert!(deploy_state(status).is_some(), "{status}");
        }
        assert_eq!(deploy_state("exploded"), None);
    }

    #[test]
    fn an_image_service_is_created_with_the_image_runtime_and_auto_deploy_off() {
        let body = service_body(&RenderServiceSpec {
            name: "web".into(),
            owner_id: "tea-1".into(),
            image: Some("ghcr.io/acme/web:1".into()),
            region: Some("frankfurt".into()),
            start_command: Some("./serve".into()),
            instances: Some(2),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(body["serviceDetails"]["runtime"], "image");
        assert_eq!(body["autoDeploy"], "no");
        assert_eq!(body["image"]["imagePath"], "ghcr.io/acme/web:1");
        assert_eq!(
            body["serviceDetails"]["envSpecificDetails"]["dockerCommand"],
            "./serve"
        );
        assert_eq!(body["serviceDetails"]["numInstances"], 2);
    }

    #[test]
    fn a_native_service_sends_both_commands_and_a_static_site_its_build_and_publish_path() {
        let node = service_body(&RenderServiceSpec {
            name: "api".into(),
            owner_id: "tea-1".into(),
            repo: Some("https://github.com/acme/api".into()),
            runtime: Some("node".into()),
            start_command: Some("npm start".into()),
            ..Default::default()
        })
        .unwrap();
        let env = &node["serviceDetails"]["envSpecificDetails"];
        assert_eq!(env["startCommand"], "npm start");
        assert_eq!(env["buildCommand"], "", "Render requires both on create");

        let site = service_body(&RenderServiceSpec {
            name: "docs".into(),
            owner_id: "tea-1".into(),
            kind: RenderServiceKind::StaticSite,
            repo: Some("https://github.com/acme/docs".into()),
            build_command: Some("make".into()),
            publish_path: Some("public".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(site["type"], "static_site");
        assert_eq!(site["serviceDetails"]["publishPath"], "public");
        assert_eq!(site["serviceDetails"]["buildCommand"], "make");
        assert!(site["serviceDetails"].get("runtime").is_none());
    }

    #[test]
    fn fields_a_kind_does_not_have_are_refused_before_sending() {
        let cron_without_schedule = service_body(&RenderServiceSpec {
            name: "nightly".into(),
            kind: RenderServiceKind::CronJob,
            image: Some("acme/job:1".into()),
            ..Default::default()
        });
        let err = cron_without_schedule.unwrap_err().to_string();
        assert!(
            err.contains("create_service") && err.contains("schedule"),
            "{err}"
        );
        let docker_build = service_body(&RenderServiceSpec {
            name: "web".into(),
            image: Some("acme/web:1".into()),
            build_command: Some("make".into()),
            ..Default::default()
        });
        assert!(
            docker_build
                .unwrap_err()
                .to_string()
                .contains("buildCommand needs a native runtime")
        );
    }

    fn observed(kind: RenderServiceKind, runtime: &str) -> RenderService {
        RenderService {
            id: "srv-1".into(),
            name: "web".into(),
            owner_id: "tea-1".into(),
            kind: Some(kind),
            image: None,
            repo: None,
            branch: None,
            region: Some("oregon".into()),
            plan: Some("starter".into()),
            url: None,
            suspended: false,
            auto_deploy: false,
            num_instances: Some(1),
            runtime: Some(runtime.into()),
            build_command: None,
            start_command: None,
            health_check_path: None,
            schedule: None,
            publish_path: None,
            updated_at: None,
        }
    }

    #[test]
    fn a_patch_puts_each_field_where_the_kind_and_runtime_want_it() {
        let body = patch_body(
            &observed(RenderServiceKind::WebService, "image"),
            &RenderServicePatch {
                start_command: Some("./serve --fast".into()),
                health_check_path: Some("/healthz".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(
            body,
            json!({"serviceDetails": {
                "healthCheckPath": "/healthz",
                "envSpecificDetails": {"dockerCommand": "./serve --fast"},
            }})
        );
        let native = patch_body(
            &observed(RenderServiceKind::CronJob, "python"),
            &RenderServicePatch {
                schedule: Some("0 * * * *".into()),
                build_command: Some("pip install .".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(native["serviceDetails"]["schedule"], "0 * * * *");
        assert_eq!(
            native["serviceDetails"]["envSpecificDetails"],
            json!({"buildCommand": "pip install ."}),
            "only the changed command is sent"
        );
        let err = patch_body(
            &observed(RenderServiceKind::BackgroundWorker, "docker"),
            &RenderServicePatch {
                schedule: Some("0 * * * *".into()),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("schedule cannot be set on a background_worker"),
            "{err}"
        );
    }

    #[test]
    fn postgres_is_created_with_the_create_side_high_availability_name() {
        let body = postgres_body(&RenderPostgresSpec {
            name: "db".into(),
            owner_id: "tea-1".into(),
            plan: "pro_4gb".into(),
            version: "16".into(),
            high_availability: true,
            disk_size_gb: Some(20),
            ..Default::default()
        });
        assert_eq!(body["enableHighAvailability"], true);
        assert_eq!(body["diskSizeGB"], 20);
        assert!(body.get("databaseName").is_none(), "Render picks one");
    }
}
