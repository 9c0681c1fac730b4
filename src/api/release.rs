//! `Release`: one version of the application rolled out to one Environment, step by step,
//! behind gates (migrations, approval, promotion), verified by health checks and metric
//! analysis, and rolled back automatically on failure.

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{Condition, LocalObjectRef, SecretKeyRef};

/// A version to roll out to an Environment.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "tether.dev",
    version = "v1alpha1",
    kind = "Release",
    plural = "releases",
    shortname = "rel",
    category = "tether",
    namespaced,
    doc = "A Release: one version of the application rolled out to an Environment, in ordered steps behind approval, promotion and migration gates, verified by health checks and analysis, rolled back on failure.",
    status = "ReleaseStatus",
    printcolumn = r#"{"name":"Environment","type":"string","jsonPath":".spec.environmentRef.name"}"#,
    printcolumn = r#"{"name":"Version","type":"string","jsonPath":".spec.version"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Steps","type":"string","jsonPath":".status.progress"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Status","type":"string","priority":1,"jsonPath":".status.conditions[?(@.type==\"Ready\")].message"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.steps) || self.steps.all(s, s.components.all(c, self.artifacts.exists(a, a.component == c)))").message("steps name a component that has no artifact"))]
#[x_kube(validation = Rule::new("!has(self.steps) || self.artifacts.all(a, self.steps.exists(s, a.component in s.components))").message("every artifact must appear in a step when steps are given"))]
#[x_kube(validation = Rule::new("!has(self.promotion) || self.promotion.fromEnvironment != self.environmentRef.name").message("promotion.fromEnvironment must differ from environmentRef"))]
pub struct ReleaseSpec {
    /// The Environment to roll out to (same namespace). Immutable.
    #[x_kube(validation = Rule::new("self == oldSelf").message("environmentRef is immutable"))]
    pub environment_ref: LocalObjectRef,
    /// The version being released (a tag, semver or commit). Immutable: a new version is a
    /// new Release.
    #[schemars(length(min = 1, max = 128))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("version is immutable; create a new Release"))]
    pub version: String,
    /// One artifact per component that changes in this release (at most 50), a list keyed
    /// by `component`.
    #[schemars(length(min = 1, max = 50))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["component".into()]))]
    pub artifacts: Vec<Artifact>,
    /// The order of the rollout: steps run one after another, the components of one step
    /// in parallel. Unset: all components in one step.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 50))]
    pub steps: Vec<ReleaseStep>,
    /// Migrations (names in the same namespace) that must be `Applied` before any component
    /// is deployed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 50), inner(length(min = 1, max = 253)))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub migrations: Vec<String>,
    /// HTTP checks of the deployed components (at most 20, a list keyed by `name`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub health_checks: Vec<HealthCheck>,
    /// A Prometheus query that must stay within its threshold after the rollout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<Analysis>,
    /// A manual approval gate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<Approval>,
    /// A promotion gate: the same version must have succeeded in another Environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promotion: Option<Promotion>,
    /// What to do when a step, a health check or the analysis fails.
    #[serde(default)]
    pub rollback: Rollback,
    /// What this Release does while an older one of the same Environment is rolling out or
    /// waiting: `Wait` for it (default), or `Supersede` it (the older one stops where it is,
    /// in phase `Superseded`, and this one deploys over it; a rollback in progress is never
    /// stopped).
    #[serde(default)]
    pub concurrency_policy: ConcurrencyPolicy,
    /// Webhooks told of every phase change of this Release. Unset: the Environment's
    /// `notifications`, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notifications: Option<Notifications>,
    /// The longest the whole rollout may take before it counts as failed. Between 1m and 24h.
    #[serde(default = "default_release_timeout")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"), length(max = 32))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1m') && duration(self) <= duration('24h')").message("must be between 1m and 24h"))]
    pub timeout: String,
}

fn default_release_timeout() -> String {
    "30m".to_string()
}

/// The platform a component lives on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ComponentPlatform {
    /// A Render service.
    #[default]
    Render,
    /// A Vercel project.
    Vercel,
    /// A Fly app.
    Fly,
}

/// What to deploy for one component.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.image), has(self.gitRef), has(self.deploymentId)].filter(x, x).size() == 1").message("set exactly one of image, gitRef or deploymentId"))]
#[x_kube(validation = Rule::new("!has(self.image) || self.platform != 'vercel'").message("Vercel components deploy a gitRef or a deploymentId, not an image"))]
#[x_kube(validation = Rule::new("self.platform == 'vercel' || !(has(self.gitRef) || has(self.deploymentId))").message("Render and Fly components deploy a container image"))]
#[x_kube(validation = Rule::new("self.platform == 'fly' || !(has(self.strategy) || has(self.maxUnavailable))").message("strategy and maxUnavailable are for Fly components"))]
pub struct Artifact {
    /// The component: the name of a Render service, Vercel project or Fly app in the
    /// Environment.
    #[schemars(length(min = 1, max = 63))]
    pub component: String,
    /// The platform of the component.
    pub platform: ComponentPlatform,
    /// Container image (`registry/repo:tag` or `@sha256:` digest) for Render and Fly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub image: Option<String>,
    /// Git ref (branch, tag or commit SHA) Vercel builds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub git_ref: Option<String>,
    /// An existing Vercel deployment to promote instead of building.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^dpl_[A-Za-z0-9]+$"))]
    pub deployment_id: Option<String>,
    /// How a Fly app's machines take the new image: `rolling` (default), `immediate`,
    /// `canary` or `bluegreen`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<FlyStrategy>,
    /// Fly machines updating (not yet healthy on the new image) at once, for `rolling` and
    /// after the canary (`bluegreen` starts every green machine at once). Default: a third
    /// of the app's machines, at least one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_unavailable: Option<i32>,
}

/// How a Fly app's machines take a new image, as `fly deploy --strategy` names it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum FlyStrategy {
    /// In batches of `maxUnavailable` machines, each batch healthy before the next.
    #[default]
    Rolling,
    /// Every machine at once.
    Immediate,
    /// One machine first; once it is healthy, the rest as `rolling`.
    Canary,
    /// A green twin of every machine (same config and region, the new image), started beside
    /// it out of the Fly proxy; once every green passes its checks (within 5 minutes) the
    /// greens take the traffic and the old machines are destroyed. A green that does not
    /// come up fails the step: the greens are destroyed, the old machines keep serving.
    /// Not for apps whose machines mount volumes.
    BlueGreen,
}

/// One step of a rollout.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReleaseStep {
    /// Components deployed together in this step (at most 50, each named once; names are
    /// at most 63 characters, as Render, Vercel and Fly allow).
    #[schemars(length(min = 1, max = 50), inner(length(min = 1, max = 63)))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub components: Vec<String>,
}

/// An HTTP health check: `GET` a component's URL (from its Environment's status) plus a
/// path, or an absolute URL. It runs once the step deploying its component is live (a check
/// with an absolute URL, or on a component this Release does not deploy, after the last
/// step) and passes after `successThreshold` healthy answers in a row; more than `retries`
/// unhealthy answers fail the Release.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.url) != has(self.component)").message("set exactly one of url or component"))]
#[x_kube(validation = Rule::new("!has(self.path) || has(self.component)").message("path is only for a component's URL; put it in url"))]
pub struct HealthCheck {
    /// Check name, unique in the Release, used in status and events.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// Absolute URL requested with GET.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048), regex(pattern = r"^https?://[^/?#\s]+"))]
    pub url: Option<String>,
    /// A component of the Environment whose public URL (its `status.objects[].url`) is
    /// requested, with `path` appended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub component: Option<String>,
    /// Path requested on the component's URL. Default `/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024), regex(pattern = r"^/"))]
    pub path: Option<String>,
    /// HTTP status that counts as healthy.
    #[serde(default = "default_expected_status")]
    #[schemars(range(min = 100, max = 599))]
    pub expected_status: i32,
    /// The slowest acceptable response: a slower one counts as unhealthy. Between 1ms and 1h.
    #[serde(default = "default_latency_budget")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"), length(max = 32))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1ms') && duration(self) <= duration('1h')").message("must be between 1ms and 1h"))]
    pub latency_budget: String,
    /// Unhealthy answers tolerated: one more fails the check.
    #[serde(default = "default_retries")]
    #[schemars(range(min = 0, max = 100))]
    pub retries: i32,
    /// Healthy answers in a row that pass the check.
    #[serde(default = "default_success_threshold")]
    #[schemars(range(min = 1, max = 100))]
    pub success_threshold: i32,
    /// Time between attempts. Between 1s and 1h.
    #[serde(default = "default_check_interval")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"), length(max = 32))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1s') && duration(self) <= duration('1h')").message("must be between 1s and 1h"))]
    pub interval: String,
}

fn default_success_threshold() -> i32 {
    1
}

fn default_expected_status() -> i32 {
    200
}

fn default_latency_budget() -> String {
    "1s".to_string()
}

fn default_retries() -> i32 {
    3
}

fn default_check_interval() -> String {
    "10s".to_string()
}

/// Metric analysis against a Prometheus HTTP API, after every step is live and every health
/// check passed (and, first, of a Fly `canary`: once its first machine is healthy, the
/// others wait for the same analysis to pass): every `interval`, each metric's query is measured once, until each has
/// `count` measurements with data. A measurement fails when its value is on the wrong side
/// of the threshold, and is inconclusive when the query returns no data (an empty result or
/// NaN) or Prometheus cannot be asked. More than `failureLimit` failed measurements of a metric fail the Release (and
/// roll it back); more than `inconclusiveLimit` inconclusive ones stop it as
/// `AnalysisInconclusive`, left live for a person to decide.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Analysis {
    /// Base URL of the Prometheus HTTP API (`/api/v1/query` is appended).
    #[schemars(length(max = 2048), regex(pattern = r"^https?://[^/?#\s]+"))]
    pub prometheus_url: String,
    /// The metrics measured (at most 10, a list keyed by `name`).
    #[schemars(length(min = 1, max = 10))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub metrics: Vec<AnalysisMetric>,
    /// Time between measurements. Between 1s and 1h.
    #[serde(default = "default_analysis_interval")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"), length(max = 32))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1s') && duration(self) <= duration('1h')").message("must be between 1s and 1h"))]
    pub interval: String,
    /// Measurements with data of each metric before the analysis passes (inconclusive ones
    /// come on top, up to `inconclusiveLimit`).
    #[serde(default = "default_analysis_count")]
    #[schemars(range(min = 1, max = 100))]
    pub count: i32,
    /// Failed measurements of a metric tolerated: one more fails the Release.
    #[serde(default)]
    #[schemars(range(min = 0, max = 100))]
    pub failure_limit: i32,
    /// Inconclusive measurements (no data) of a metric tolerated: one more stops the Release
    /// as `AnalysisInconclusive`.
    #[serde(default)]
    #[schemars(range(min = 0, max = 100))]
    pub inconclusive_limit: i32,
}

/// One metric of an analysis.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisMetric {
    /// Metric name, unique in the analysis, used in status and events.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// PromQL returning one number (a scalar, or a vector of one series), e.g. an error rate:
    /// `sum(rate(http_requests_total{code=~"5.."}[1m])) / sum(rate(http_requests_total[1m]))`.
    #[schemars(length(min = 1, max = 4096))]
    pub query: String,
    /// The value the result is compared with.
    pub threshold: f64,
    /// How the result must compare with the threshold to pass.
    #[serde(default)]
    pub operator: AnalysisOperator,
}

fn default_analysis_count() -> i32 {
    5
}

fn default_analysis_interval() -> String {
    "1m".to_string()
}

/// Comparison of an analysis result with its threshold.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum AnalysisOperator {
    /// Pass while the result is below the threshold.
    #[default]
    LessThan,
    /// Pass while the result is at most the threshold.
    LessThanOrEqual,
    /// Pass while the result is above the threshold.
    GreaterThan,
    /// Pass while the result is at least the threshold.
    GreaterThanOrEqual,
}

impl AnalysisOperator {
    /// Whether `value` passes against `threshold`.
    pub fn passes(self, value: f64, threshold: f64) -> bool {
        match self {
            AnalysisOperator::LessThan => value < threshold,
            AnalysisOperator::LessThanOrEqual => value <= threshold,
            AnalysisOperator::GreaterThan => value > threshold,
            AnalysisOperator::GreaterThanOrEqual => value >= threshold,
        }
    }

    /// The comparison, as a person writes it.
    pub fn symbol(self) -> &'static str {
        match self {
            AnalysisOperator::LessThan => "<",
            AnalysisOperator::LessThanOrEqual => "<=",
            AnalysisOperator::GreaterThan => ">",
            AnalysisOperator::GreaterThanOrEqual => ">=",
        }
    }
}

/// What a Release does while an older one of its Environment is in progress.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ConcurrencyPolicy {
    /// Wait for the older Release to finish.
    #[default]
    Wait,
    /// Stop the older Release (phase `Superseded`) and go ahead.
    Supersede,
}

/// Manual approval.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Approval {
    /// When true the release waits in `AwaitingApproval` until annotated with
    /// `tether.dev/approved-by: <who>`.
    #[serde(default)]
    pub required: bool,
}

/// Promotion gate.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Promotion {
    /// The Environment (same namespace) where a Release of the same version must have
    /// succeeded first.
    #[schemars(length(min = 1, max = 253))]
    pub from_environment: String,
}

/// Rollback behaviour.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Rollback {
    /// Roll every component already changed back to the previous release on failure.
    #[serde(default = "default_true")]
    pub automatic: bool,
}

impl Default for Rollback {
    fn default() -> Self {
        Self { automatic: true }
    }
}

fn default_true() -> bool {
    true
}

/// Where a Release's phase changes are sent. A change is sent once the reconcile that
/// reached the new phase has it (at least once: a controller stopped between the delivery
/// and the status write sends it again).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Notifications {
    /// HTTP webhooks (at most 10, a list keyed by `name`), each sent a POST with a JSON
    /// body per phase change it subscribes to.
    #[schemars(length(max = 10))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub webhooks: Vec<Webhook>,
}

/// One webhook: where to POST, in which body format, for which phases.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Webhook {
    /// Webhook name, unique in the list, used in events and logs.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// The Secret key (same namespace) holding the webhook's `http://` or `https://` URL. A
    /// Slack incoming-webhook URL is a credential: Tether reads it at each delivery and
    /// never writes it to status, events, logs or metrics.
    pub url_secret_ref: SecretKeyRef,
    /// The body: `generic` (a JSON object describing the change) or `slack` (a message for
    /// a Slack incoming webhook, or any service accepting Slack's format).
    #[serde(default)]
    pub format: WebhookFormat,
    /// The phases that are sent when the Release enters them, or `All` (the default).
    #[serde(default = "default_webhook_events")]
    #[schemars(length(min = 1, max = 10))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub events: Vec<WebhookEvent>,
}

fn default_webhook_events() -> Vec<WebhookEvent> {
    vec![WebhookEvent::All]
}

/// The body a webhook is sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum WebhookFormat {
    /// `{"kind": "Release", "namespace", "name", "environment", "version", "phase",
    /// "previousPhase", "reason", "message", "at"}`.
    #[default]
    Generic,
    /// `{"text": "…", "blocks": […]}`, as Slack's incoming webhooks take it.
    Slack,
}

/// A phase a webhook subscribes to, or every phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum WebhookEvent {
    /// Every phase change.
    All,
    /// Entering `Pending`.
    Pending,
    /// Entering `AwaitingApproval`.
    AwaitingApproval,
    /// Entering `Migrating`.
    Migrating,
    /// Entering `Deploying`.
    Deploying,
    /// Entering `Verifying`.
    Verifying,
    /// Entering `Succeeded`.
    Succeeded,
    /// Entering `RollingBack`.
    RollingBack,
    /// Entering `Failed`.
    Failed,
    /// Entering `RolledBack`.
    RolledBack,
    /// Entering `Superseded`.
    Superseded,
}

impl WebhookEvent {
    /// Whether entering `phase` is this event.
    pub fn matches(self, phase: ReleasePhase) -> bool {
        let event = match phase {
            ReleasePhase::Pending => WebhookEvent::Pending,
            ReleasePhase::AwaitingApproval => WebhookEvent::AwaitingApproval,
            ReleasePhase::Migrating => WebhookEvent::Migrating,
            ReleasePhase::Deploying => WebhookEvent::Deploying,
            ReleasePhase::Verifying => WebhookEvent::Verifying,
            ReleasePhase::Succeeded => WebhookEvent::Succeeded,
            ReleasePhase::RollingBack => WebhookEvent::RollingBack,
            ReleasePhase::Failed => WebhookEvent::Failed,
            ReleasePhase::RolledBack => WebhookEvent::RolledBack,
            ReleasePhase::Superseded => WebhookEvent::Superseded,
        };
        self == WebhookEvent::All || self == event
    }
}

/// The phases of a Release.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ReleasePhase {
    /// Waiting to start (gates not yet evaluated).
    #[default]
    Pending,
    /// Waiting for the approval annotation.
    AwaitingApproval,
    /// Waiting for the listed Migrations.
    Migrating,
    /// Deploying components.
    Deploying,
    /// Running health checks and analysis.
    Verifying,
    /// Done and verified.
    Succeeded,
    /// Failed; every component it changed is going back to the previous Succeeded Release.
    RollingBack,
    /// Failed without rollback.
    Failed,
    /// Failed and rolled back.
    RolledBack,
    /// Stopped where it was by a newer Release of the Environment (`concurrencyPolicy:
    /// Supersede`), which deploys over it.
    Superseded,
}

impl ReleasePhase {
    /// A phase the rollout never leaves by itself (only the Release's own change, such as a
    /// rollback asked for by annotation, moves it on).
    pub fn is_final(self) -> bool {
        matches!(
            self,
            ReleasePhase::Succeeded
                | ReleasePhase::Failed
                | ReleasePhase::RolledBack
                | ReleasePhase::Superseded
        )
    }
}

/// Observed state of a Release.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReleaseStatus {
    /// The generation the status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Reconciling`, `Stalled` and domain conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Where the rollout is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<ReleasePhase>,
    /// One entry per component deployment.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<StepStatus>,
    /// The version this release replaces, for rollback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_version: Option<String>,
    /// When the rollout started (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    /// When it finished (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// Steps whose every component is live, of all steps, e.g. `1/2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<String>,
    /// One entry per health check that has started.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<CheckStatus>,
    /// Who approved the Release (the `tether.dev/approved-by` annotation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved_by: Option<String>,
    /// When the approval was first seen (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved_at: Option<String>,
    /// The Release of the same version that succeeded in `promotion.fromEnvironment`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promoted_from: Option<String>,
    /// The rollback after a failure, when one was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback: Option<RollbackStatus>,
    /// The metric analysis after the last step, once it has started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<AnalysisStatus>,
    /// The metric analysis of a Fly canary (its first machine on the new image, healthy,
    /// while the others wait), once it has started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_analysis: Option<AnalysisStatus>,
    /// The last phase whose change was sent to the webhooks (or needed no notification), so
    /// a restarted controller does not send it again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notified_phase: Option<ReleasePhase>,
}

/// Where the metric analysis stands.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisStatus {
    /// `Running`, `Passed`, `Failed` or `Inconclusive`.
    pub state: String,
    /// Measurements made so far (each measures every metric once).
    #[serde(default)]
    pub measurements: i32,
    /// When the last measurement was made (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_measured_at: Option<String>,
    /// One entry per metric.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metrics: Vec<MetricStatus>,
}

/// The measurements of one analysis metric.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetricStatus {
    /// The metric's name.
    pub name: String,
    /// Measurements that passed.
    #[serde(default)]
    pub successful: i32,
    /// Measurements on the wrong side of the threshold.
    #[serde(default)]
    pub failed: i32,
    /// Measurements without data.
    #[serde(default)]
    pub inconclusive: i32,
    /// The last value measured, when there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_value: Option<f64>,
    /// What the last measurement saw, for a person.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// A rollback: why the rollout failed, and each component going back.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RollbackStatus {
    /// The previous Succeeded Release of the Environment whose artifacts are restored.
    pub to: String,
    /// The reason the rollout failed (`DeployFailed`, `HealthCheckFailed`, `TimedOut`).
    pub reason: String,
    /// What failed, for a person.
    pub message: String,
    /// Who asked for the rollback (the `tether.dev/rollback` annotation); unset when it was
    /// automatic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_by: Option<String>,
    /// One entry per component this Release changed, deployed back.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<StepStatus>,
}

/// Where one health check stands.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CheckStatus {
    /// The check's name.
    pub name: String,
    /// `Running`, `Passed` or `Failed`.
    pub state: String,
    /// The URL requested.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Healthy answers in a row so far.
    #[serde(default)]
    pub successes: i32,
    /// Unhealthy answers so far.
    #[serde(default)]
    pub failures: i32,
    /// When the last attempt was made (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_probe_at: Option<String>,
    /// What the last attempt saw, for a person (status code and latency, or the error).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// The deployment of one component.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StepStatus {
    /// The component.
    pub component: String,
    /// Its platform.
    pub platform: ComponentPlatform,
    /// The platform's deployment id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment_id: Option<String>,
    /// The platform's deployment state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// A Fly `bluegreen` deployment's green machines (ids), recorded as soon as they are
    /// created, before Tether waits on them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub green_machines: Vec<String>,
    /// When the deployment started (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    /// When it finished (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// What happened, for a person.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}
