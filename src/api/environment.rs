//! `Environment`: how one environment of an application is hosted across Render, Vercel,
//! Fly.io and Supabase. The Environment controller makes the platforms match it.

use std::collections::BTreeMap;

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{
    Condition, DeletionPolicy, DriftPolicy, EnvVar, LocalObjectRef, SecretKeyRef, TokenSecretRef,
};
use super::release::Notifications;

/// The desired shape of one environment (for example `staging` or `production`).
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "tether.dev",
    version = "v1alpha1",
    kind = "Environment",
    plural = "environments",
    shortname = "env",
    category = "tether",
    namespaced,
    doc = "An Environment: how one environment of an application is hosted across Render, Vercel, Fly.io and Supabase. Tether creates, updates, adopts and deletes the platform objects to match it, and detects drift.",
    status = "EnvironmentStatus",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Objects","type":"string","description":"Ready objects out of managed objects","jsonPath":".status.summary"}"#,
    printcolumn = r#"{"name":"Status","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].message"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.render) || has(self.credentials.render)").message("spec.credentials.render is required when spec.render is set"))]
#[x_kube(validation = Rule::new("!has(self.vercel) || has(self.credentials.vercel)").message("spec.credentials.vercel is required when spec.vercel is set"))]
#[x_kube(validation = Rule::new("!has(self.fly) || has(self.credentials.fly)").message("spec.credentials.fly is required when spec.fly is set"))]
#[x_kube(validation = Rule::new("!has(self.supabase) || has(self.credentials.supabase)").message("spec.credentials.supabase is required when spec.supabase is set"))]
pub struct EnvironmentSpec {
    /// The Secrets holding each platform's API token. Only the platforms the spec uses
    /// need one.
    #[serde(default)]
    pub credentials: Credentials,
    /// Render services, key-value stores and Postgres databases.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub render: Option<RenderSpec>,
    /// Vercel projects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vercel: Option<VercelSpec>,
    /// Fly.io apps and their machines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fly: Option<FlySpec>,
    /// The Supabase project.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supabase: Option<SupabaseProject>,
    /// What to do with out-of-band changes: `Correct` reverts them, `Report` only reports.
    #[serde(default)]
    pub drift_policy: DriftPolicy,
    /// What happens to platform objects when this Environment is deleted or an object is
    /// removed from the spec. Unset: stateless objects (services, projects, apps) are
    /// deleted and stateful ones (databases, key-value stores, volumes, the Supabase
    /// project) are left in place. `Delete` deletes everything, `Orphan` leaves everything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_policy: Option<DeletionPolicy>,
    /// How often the platforms are re-read to detect drift, as a duration (`10m`). Between 1s and 168h.
    #[serde(default = "default_interval")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"), length(max = 32))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1s') && duration(self) <= duration('168h')").message("must be between 1s and 168h"))]
    pub interval: String,
    /// Stop reconciling (nothing is created, changed or deleted) while true.
    #[serde(default)]
    pub suspend: bool,
    /// Webhooks told of every phase change of the Releases to this Environment that have no
    /// `notifications` of their own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notifications: Option<Notifications>,
}

pub(crate) fn default_interval() -> String {
    "10m".to_string()
}

/// The Secret holding each platform's API token.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Credentials {
    /// Render API key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub render: Option<TokenSecretRef>,
    /// Vercel access token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vercel: Option<TokenSecretRef>,
    /// Fly.io API token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fly: Option<TokenSecretRef>,
    /// Supabase management API access token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supabase: Option<TokenSecretRef>,
}

// ---------------------------------------------------------------------------------------
// Render
// ---------------------------------------------------------------------------------------

/// Render objects of this environment, all in one Render workspace.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RenderSpec {
    /// The Render workspace (owner) id, `tea-…` or `usr-…`.
    #[schemars(length(min = 1))]
    pub owner_id: String,
    /// Web services, private services, workers, cron jobs and static sites (at most 50), a
    /// list keyed by `name`: names are unique, and server-side apply merges entries by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 50))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub services: Vec<RenderService>,
    /// Key-value stores (Redis-compatible; at most 20), keyed by `name`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub key_values: Vec<RenderKeyValue>,
    /// Postgres databases (at most 20), keyed by `name`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub postgres: Vec<RenderPostgres>,
}

/// The kind of a Render service.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RenderServiceType {
    /// A public web service (`web_service`).
    #[default]
    Web,
    /// A service reachable only inside the private network (`private_service`).
    Private,
    /// A background worker (`background_worker`).
    Worker,
    /// A cron job (`cron_job`); needs `schedule`.
    Cron,
    /// A static site (`static_site`); builds from a repo.
    Static,
}

/// A Render region.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RenderRegion {
    /// Oregon, USA.
    #[default]
    Oregon,
    /// Ohio, USA.
    Ohio,
    /// Virginia, USA.
    Virginia,
    /// Frankfurt, Germany.
    Frankfurt,
    /// Singapore.
    Singapore,
}

/// One Render service.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.type == 'static' ? (has(self.repo) && !has(self.image)) : (has(self.image) != has(self.repo))").message("set exactly one of image or repo (static sites build from repo)"))]
#[x_kube(validation = Rule::new("!has(self.branch) || has(self.repo)").message("branch is only allowed with repo"))]
#[x_kube(validation = Rule::new("(self.type == 'cron') == has(self.schedule)").message("schedule is required for cron services and not allowed for other types"))]
#[x_kube(validation = Rule::new("!has(self.healthCheckPath) || self.type == 'web'").message("healthCheckPath is only allowed for web services"))]
#[x_kube(validation = Rule::new("!has(self.customDomains) || size(self.customDomains) == 0 || self.type == 'web' || self.type == 'static'").message("customDomains are only allowed for web services and static sites"))]
#[x_kube(validation = Rule::new("!has(self.instances) || (self.type != 'cron' && self.type != 'static')").message("instances is not allowed for cron services and static sites"))]
#[x_kube(validation = Rule::new("!has(self.publishPath) || self.type == 'static'").message("publishPath is only allowed for static sites"))]
#[x_kube(validation = Rule::new("!has(self.startCommand) || self.type != 'static'").message("startCommand is not allowed for static sites"))]
pub struct RenderService {
    /// Service name, unique in the workspace; Tether finds the service by this name.
    #[schemars(
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"),
        length(min = 1, max = 63)
    )]
    pub name: String,
    /// The kind of service.
    #[serde(rename = "type")]
    pub type_: RenderServiceType,
    /// Instance plan (`starter`, `standard`, `pro`, …). Ignored for static sites.
    #[serde(default = "default_render_plan")]
    pub plan: String,
    /// Region the service runs in.
    #[serde(default)]
    pub region: RenderRegion,
    /// Number of instances (1–100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub instances: Option<i32>,
    /// Container image to run (`registry/repo:tag`); exclusive with `repo`. Changing it
    /// deploys the new image. Only a change of this field is rolled out: an image a Release
    /// deployed since is not reverted (it is not drift).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub image: Option<String>,
    /// Git repository URL to build from; exclusive with `image`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^https://"))]
    pub repo: Option<String>,
    /// Branch of `repo` to build (the repository's default branch when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    /// Runtime for builds from a repo (`node`, `python`, `go`, `rust`, `docker`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
    /// Build command for builds from a repo.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_command: Option<String>,
    /// Command that starts the service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_command: Option<String>,
    /// HTTP path Render polls to decide a web service is healthy (`/healthz`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^/"))]
    pub health_check_path: Option<String>,
    /// Cron schedule (five fields, UTC) for cron services.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^(\S+\s+){4}\S+$"))]
    pub schedule: Option<String>,
    /// Directory of a static site's build output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish_path: Option<String>,
    /// Environment variables, owned as a whole set: variables not listed are removed. Leave
    /// the field out to leave the service's variables alone (and unread); `[]` removes them
    /// all.
    /// At most 200, keyed by `name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 200))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub env_vars: Option<Vec<EnvVar>>,
    /// Custom domains served by this service (web services and static sites), owned as a
    /// whole set. Leave the field out to leave the service's domains alone (and unread);
    /// `[]` detaches them all. At most 50, each listed once, each at most 253 characters
    /// (the longest DNS name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 50), inner(length(max = 253)))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub custom_domains: Option<Vec<Domain>>,
}

fn default_render_plan() -> String {
    "starter".to_string()
}

/// A DNS name (a custom domain).
pub type Domain = String;

/// A Render key-value store (Redis-compatible).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RenderKeyValue {
    /// Name, unique in the workspace.
    #[schemars(
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"),
        length(min = 1, max = 63)
    )]
    pub name: String,
    /// Plan (`free`, `starter`, `standard`, `pro`, …).
    #[serde(default = "default_render_plan")]
    pub plan: String,
    /// Region.
    #[serde(default)]
    pub region: RenderRegion,
    /// Eviction policy when memory is full (`allkeys_lru`, `noeviction`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maxmemory_policy: Option<String>,
    /// CIDR blocks allowed to connect from outside Render. Empty: no outside access.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_allow_list: Vec<CidrBlock>,
}

/// A CIDR block allowed to connect.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CidrBlock {
    /// The block, e.g. `203.0.113.0/24`.
    #[schemars(regex(pattern = r"^[0-9a-fA-F.:]+/[0-9]{1,3}$"))]
    pub cidr_block: String,
    /// What the block is for.
    #[serde(default)]
    pub description: String,
}

/// A Render Postgres database.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RenderPostgres {
    /// Name, unique in the workspace.
    #[schemars(
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"),
        length(min = 1, max = 63)
    )]
    pub name: String,
    /// Plan (`free`, `basic_256mb`, `pro_4gb`, …).
    pub plan: String,
    /// Region.
    #[serde(default)]
    pub region: RenderRegion,
    /// Major Postgres version.
    #[serde(default = "default_postgres_version")]
    #[schemars(regex(pattern = r"^1[1-8]$"))]
    pub version: String,
    /// Disk size in GB (plans with flexible storage).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 16384))]
    pub disk_size_gb: Option<i32>,
    /// Name of the database created inside the instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database_name: Option<String>,
    /// Name of the database user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database_user: Option<String>,
    /// Keep a standby in another zone.
    #[serde(default)]
    pub high_availability: bool,
    /// CIDR blocks allowed to connect from outside Render.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_allow_list: Vec<CidrBlock>,
}

fn default_postgres_version() -> String {
    "16".to_string()
}

// ---------------------------------------------------------------------------------------
// Vercel
// ---------------------------------------------------------------------------------------

/// Vercel projects of this environment.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct VercelSpec {
    /// The team id (`team_…`) the projects belong to; unset for a personal account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team_id: Option<String>,
    /// The projects (at most 10, so that admission can check their environment variables
    /// within a real API server's CEL cost budget), a list keyed by `name`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub projects: Vec<VercelProject>,
}

/// A Vercel project.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct VercelProject {
    /// Project name, unique in the team; Tether finds the project by this name.
    #[schemars(
        regex(pattern = r"^[a-z0-9]([-a-z0-9._]*[a-z0-9])?$"),
        length(min = 1, max = 100)
    )]
    pub name: String,
    /// Framework preset (`nextjs`, `vite`, `remix`, `astro`, …). Unset: detected by Vercel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub framework: Option<String>,
    /// The git repository deployments build from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git_repository: Option<GitRepository>,
    /// Directory of the app inside the repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_directory: Option<String>,
    /// Install command override.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub install_command: Option<String>,
    /// Build command override.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_command: Option<String>,
    /// Output directory override.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_directory: Option<String>,
    /// Node.js major version for builds and functions (`20.x`, `22.x`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+\.x$"))]
    pub node_version: Option<String>,
    /// Environment variables with the deployment targets they apply to, owned as a whole
    /// set. Leave the field out to leave the project's variables alone; `[]` removes them
    /// all. A name may be set once per target (and git branch), as Vercel requires. At most
    /// 60: admission compares every pair, and a real API server's CEL cost budget allows
    /// no more across 10 projects (split larger setups over several Environments).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 60))]
    #[x_kube(validation = Rule::new("self.all(e, self.exists_one(f, f.name == e.name && (has(f.gitBranch) ? f.gitBranch : '') == (has(e.gitBranch) ? e.gitBranch : '') && f.targets.exists(t, t in e.targets)))").message("a Vercel environment variable may be set once per name, target and gitBranch"))]
    pub env_vars: Option<Vec<VercelEnvVar>>,
    /// Domains assigned to the project, owned as a whole set (Vercel's own `*.vercel.app`
    /// domains aside). Leave the field out to leave the project's domains alone (and
    /// unread); `[]` removes them all. At most 50, keyed by `name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 50))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub domains: Option<Vec<VercelDomain>>,
}

/// A git repository connected to a Vercel project.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GitRepository {
    /// The git provider.
    #[serde(rename = "type")]
    pub type_: GitProvider,
    /// `owner/name` of the repository.
    #[schemars(regex(pattern = r"^[^/\s]+/[^/\s]+$"))]
    pub repo: String,
    /// Branch deployed to production.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub production_branch: Option<String>,
}

/// A git provider Vercel integrates with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum GitProvider {
    /// GitHub.
    #[default]
    Github,
    /// GitLab.
    Gitlab,
    /// Bitbucket.
    Bitbucket,
}

/// A Vercel deployment target.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum VercelTarget {
    /// Production deployments.
    Production,
    /// Preview deployments.
    Preview,
    /// `vercel dev` and `vercel env pull`.
    Development,
}

/// A Vercel environment variable.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.value) != has(self.valueFrom)").message("exactly one of value or valueFrom must be set"))]
#[x_kube(validation = Rule::new("!has(self.gitBranch) || self.targets == ['preview']").message("gitBranch is only allowed when targets is exactly [preview]"))]
pub struct VercelEnvVar {
    /// Variable name.
    #[schemars(regex(pattern = r"^[A-Za-z_][A-Za-z0-9_]*$"), length(max = 256))]
    pub name: String,
    /// Literal value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Value read from a Secret; stored on Vercel as an encrypted variable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_from: Option<super::common::EnvVarSource>,
    /// Deployment targets the variable applies to, each listed once.
    #[schemars(length(min = 1, max = 3))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub targets: Vec<VercelTarget>,
    /// Limit a preview variable to one git branch (at most 250 characters, as Vercel
    /// allows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 250))]
    pub git_branch: Option<String>,
}

/// A domain of a Vercel project.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.redirect) || self.redirect != self.name").message("a domain cannot redirect to itself"))]
pub struct VercelDomain {
    /// The domain name (at most 253 characters, the longest DNS name).
    #[schemars(
        regex(pattern = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?\.)+[a-z]{2,}$"),
        length(max = 253)
    )]
    pub name: String,
    /// Redirect this domain to another domain of the project.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub redirect: Option<String>,
    /// Serve this git branch's latest preview on the domain instead of production (at most
    /// 250 characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 250))]
    pub git_branch: Option<String>,
}

// ---------------------------------------------------------------------------------------
// Fly.io
// ---------------------------------------------------------------------------------------

/// Fly.io apps of this environment.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct FlySpec {
    /// Organization slug the apps belong to.
    #[schemars(length(min = 1))]
    pub org: String,
    /// The apps (at most 50), a list keyed by `name`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 50))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub apps: Vec<FlyApp>,
}

/// A Fly app and the machines that run it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.volumes) || self.regions.all(r, r.count <= 1) || self.volumes.size() == 0").message("a Fly volume attaches to one machine: with volumes, each region can run at most one machine"))]
pub struct FlyApp {
    /// App name, globally unique on Fly.io; Tether finds the app by this name.
    #[schemars(
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"),
        length(min = 1, max = 63)
    )]
    pub name: String,
    /// The image the machines run. Changing it updates every machine to it; only a change of
    /// this field is rolled out: an image a Release deployed since is not reverted (it is
    /// not drift).
    #[schemars(length(min = 1))]
    pub image: String,
    /// Machines per region (Fly has 35 regions), a list keyed by `region`.
    #[schemars(length(min = 1, max = 35))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["region".into()]))]
    pub regions: Vec<FlyRegion>,
    /// Machine size.
    #[serde(default)]
    pub guest: FlyGuest,
    /// Services exposed through the Fly proxy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20))]
    pub services: Vec<FlyService>,
    /// Health checks run by Fly on every machine (at most 20), keyed by `name`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub checks: Vec<FlyCheck>,
    /// Plain environment variables of the machines (literal values only; use `secrets`
    /// for values from Kubernetes Secrets).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// App secrets, set through Fly's secrets API and exposed to machines as env vars (at
    /// most 200), keyed by `name`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 200))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub secrets: Vec<FlySecret>,
    /// Volumes: one per machine, created in the machine's region.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1))]
    pub volumes: Vec<FlyVolume>,
}

/// How many machines run in a region.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FlyRegion {
    /// Fly region code (`iad`, `ams`, `sin`, …).
    #[schemars(regex(pattern = r"^[a-z]{3}$"), length(max = 3))]
    pub region: String,
    /// Number of machines (0–20).
    #[schemars(range(min = 0, max = 20))]
    pub count: i32,
}

/// The size of a Fly machine.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.memoryMb % 256 == 0").message("memoryMb must be a multiple of 256"))]
#[x_kube(validation = Rule::new("self.cpuKind != 'shared' || self.memoryMb <= self.cpus * 2048").message("shared CPUs allow at most 2048 MB of memory per CPU"))]
#[x_kube(validation = Rule::new("self.cpuKind != 'performance' || (self.memoryMb >= self.cpus * 2048 && self.memoryMb <= self.cpus * 8192)").message("performance CPUs need 2048 to 8192 MB of memory per CPU"))]
pub struct FlyGuest {
    /// `shared` or `performance`.
    #[serde(default)]
    pub cpu_kind: FlyCpuKind,
    /// Number of CPUs.
    #[serde(default = "default_cpus")]
    #[schemars(range(min = 1, max = 16))]
    pub cpus: i32,
    /// Memory in MB.
    #[serde(default = "default_memory_mb")]
    #[schemars(range(min = 256, max = 131072))]
    pub memory_mb: i32,
}

impl Default for FlyGuest {
    fn default() -> Self {
        Self {
            cpu_kind: FlyCpuKind::Shared,
            cpus: default_cpus(),
            memory_mb: default_memory_mb(),
        }
    }
}

fn default_cpus() -> i32 {
    1
}

fn default_memory_mb() -> i32 {
    256
}

/// Fly CPU kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum FlyCpuKind {
    /// Shared vCPUs.
    #[default]
    Shared,
    /// Dedicated vCPUs.
    Performance,
}

/// A service exposed through the Fly proxy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FlyService {
    /// `tcp` or `udp`.
    #[serde(default)]
    pub protocol: FlyProtocol,
    /// Port the app listens on inside the machine.
    #[schemars(range(min = 1, max = 65535))]
    pub internal_port: i32,
    /// Public ports.
    #[schemars(length(min = 1, max = 10))]
    pub ports: Vec<FlyPort>,
    /// Stop idle machines automatically.
    #[serde(default)]
    pub autostop: bool,
    /// Start stopped machines on incoming requests.
    #[serde(default = "default_true")]
    pub autostart: bool,
    /// Machines kept running when `autostop` is on.
    #[serde(default)]
    #[schemars(range(min = 0, max = 100))]
    pub min_machines_running: i32,
}

fn default_true() -> bool {
    true
}

/// Fly service protocol.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum FlyProtocol {
    /// TCP.
    #[default]
    Tcp,
    /// UDP.
    Udp,
}

/// A public port of a Fly service.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FlyPort {
    /// Public port number.
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Connection handlers (`http`, `tls`, `proxy_proto`, `pg_tls`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub handlers: Vec<String>,
    /// Redirect plain HTTP to HTTPS.
    #[serde(default)]
    pub force_https: bool,
}

/// A Fly machine health check.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.type == 'http' ? has(self.path) : !has(self.path)").message("path is required for http checks and not allowed for tcp checks"))]
pub struct FlyCheck {
    /// Check name (at most 63 characters).
    #[schemars(regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"), length(max = 63))]
    pub name: String,
    /// `http` or `tcp`.
    #[serde(rename = "type")]
    pub type_: FlyCheckType,
    /// Port checked inside the machine.
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// HTTP path (http checks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^/"))]
    pub path: Option<String>,
    /// Time between checks. Between 1s and 1h.
    #[serde(default = "default_check_interval")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"), length(max = 32))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1s') && duration(self) <= duration('1h')").message("must be between 1s and 1h"))]
    pub interval: String,
    /// Time before a check counts as failed. Between 1s and 1h.
    #[serde(default = "default_check_timeout")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"), length(max = 32))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1s') && duration(self) <= duration('1h')").message("must be between 1s and 1h"))]
    pub timeout: String,
}

fn default_check_interval() -> String {
    "15s".to_string()
}

fn default_check_timeout() -> String {
    "2s".to_string()
}

/// Fly check type.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum FlyCheckType {
    /// An HTTP GET that must answer 2xx.
    #[default]
    Http,
    /// A TCP connect.
    Tcp,
}

/// A Fly app secret from a Kubernetes Secret.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FlySecret {
    /// Name of the secret (the env var the machines see; at most 256 characters).
    #[schemars(regex(pattern = r"^[A-Za-z_][A-Za-z0-9_]*$"), length(max = 256))]
    pub name: String,
    /// Where the value comes from.
    pub secret_key_ref: SecretKeyRef,
}

/// A volume mounted into each machine.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FlyVolume {
    /// Volume name.
    #[schemars(regex(pattern = r"^[a-z0-9_]{1,30}$"))]
    pub name: String,
    /// Size in GB.
    #[schemars(range(min = 1, max = 500))]
    pub size_gb: i32,
    /// Where the volume is mounted in the machine.
    #[schemars(regex(pattern = r"^/"))]
    pub mount_path: String,
}

// ---------------------------------------------------------------------------------------
// Supabase
// ---------------------------------------------------------------------------------------

/// The Supabase project of this environment.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SupabaseProject {
    /// Project name, unique in the organization; Tether finds the project by this name.
    #[schemars(length(min = 1, max = 256))]
    pub name: String,
    /// Organization id (slug) the project belongs to.
    #[schemars(length(min = 1))]
    pub organization_id: String,
    /// Region (`us-east-1`, `eu-central-1`, …). Changing it needs a new project.
    #[schemars(regex(pattern = r"^[a-z]{2}-[a-z]+-[0-9]$"))]
    pub region: String,
    /// Compute size (`micro`, `small`, `medium`, `large`, …). Unset: the plan's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_size: Option<String>,
    /// The database password, from a Secret. Used on creation and to build the database
    /// connection for Migrations.
    pub database_password_secret_ref: SecretKeyRef,
    /// Auth settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<SupabaseAuth>,
    /// Data API (PostgREST) settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<SupabaseApi>,
}

/// Supabase Auth settings Tether manages.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SupabaseAuth {
    /// The site URL used in emails and redirects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^https?://"))]
    pub site_url: Option<String>,
    /// Other allowed redirect URLs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub additional_redirect_urls: Vec<String>,
    /// Refuse new sign-ups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disable_signup: Option<bool>,
    /// Lifetime of access tokens in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 30, max = 604800))]
    pub jwt_expiry_seconds: Option<i32>,
    /// Auto-confirm email sign-ups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mailer_autoconfirm: Option<bool>,
}

/// Supabase Data API settings Tether manages.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SupabaseApi {
    /// Schemas exposed through the API.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub schemas: Vec<String>,
    /// Extra schemas on the search path.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_search_path: Vec<String>,
    /// Maximum rows returned by one request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub max_rows: Option<i32>,
}

// ---------------------------------------------------------------------------------------
// Status
// ---------------------------------------------------------------------------------------

/// Observed state of an Environment.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnvironmentStatus {
    /// The generation the status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Reconciling`, `Stalled`, `Synced` and `DriftDetected`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Ready objects out of managed objects, e.g. `4/5`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    /// One entry per managed platform object.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub objects: Vec<ManagedObject>,
    /// Secrets this Environment read (name only), so a change to them triggers a reconcile.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secret_refs: Vec<LocalObjectRef>,
    /// Per platform, a digest of its part of the spec and its credentials reference as the
    /// last reconcile saw them: a difference on a platform whose part did not change since is
    /// drift, even when another platform's part changed.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub spec_digests: BTreeMap<String, String>,
}

/// A platform object managed by an Environment.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ManagedObject {
    /// `render`, `vercel`, `fly` or `supabase`.
    pub platform: String,
    /// Kind on the platform (`service`, `keyValue`, `postgres`, `project`, `app`, …).
    pub kind: String,
    /// Name in the spec.
    pub name: String,
    /// The platform's id of the object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Public URL, when the object has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The platform's state name (`live`, `ACTIVE_HEALTHY`, `started`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// Whether the object is ready.
    #[serde(default)]
    pub ready: bool,
    /// When the object was last read from the platform (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync: Option<String>,
    /// Fields that differ from the spec on the platform (names only, never values).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drift: Vec<String>,
    /// Keyed fingerprints (HMAC-SHA256) of the secret values last applied, by variable
    /// name. They reveal nothing of the value but change when it changes.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secret_fingerprints: BTreeMap<String, String>,
    /// The image this Environment last rolled out (Render services, Fly machines): the spec's
    /// image is rolled out again only when it differs from this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Fly secrets versions: on an app, the version its last secret change produced; on a
    /// machine, the version it was last launched with. A machine older than its app is
    /// updated, also when the controller restarted between the two writes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets_version: Option<u64>,
}
