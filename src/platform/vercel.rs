//! Vercel adapter: projects (settings, linked git repository), their environment variables
//! and domains, deployments and rollback (promotion of an earlier deployment), as
//! `vercel/openapi.json` defines them. Every call carries `teamId` when the client is scoped
//! to a team; lists follow the time-based pagination (`pagination.next` fed back as `until`,
//! or `from` for projects).
//!
//! Observing is cheap by design: the project list (`GET /v10/projects`) carries every
//! project's settings, link and `env` array, so one paged list observes all projects and
//! their variables; only domains need a per-project list.
//!
//! Limitations of the public API, surfaced to callers rather than papered over:
//! - the git repository can only be linked when the project is created (`gitRepository` in
//!   the create body); no request body accepts a new repository or a `productionBranch`;
//! - `nodeVersion` is not accepted by the create body, so [`VercelProjects::ensure_project`]
//!   sets it with a follow-up `PATCH` when it is asked for.

use std::fmt;

use http::Method;
use serde::Deserialize;
use serde_json::{Value, json};

use super::http::{ApiRequest, PlatformHttp};
use super::{
    DeploySource, Deployment, DeploymentState, Deployments, Ensured, Platform, PlatformError,
    PlatformResult,
};
use crate::api::environment::VercelTarget;
use std::future::Future;

const API: &[&str] = &["api"];

/// How Vercel stores an environment variable's value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum VercelEnvType {
    /// Readable back through the API (`plain`): literal values, so drift is visible.
    Plain,
    /// Encrypted at rest (`encrypted`); the list returns ciphertext, never the value.
    Encrypted,
    /// Write-only (`sensitive`): not readable back at all.
    Sensitive,
    /// Legacy secret reference (`secret`).
    Secret,
    /// Provided by Vercel (`system`).
    System,
}

impl VercelEnvType {
    /// Vercel's name for the type.
    pub fn as_str(self) -> &'static str {
        match self {
            VercelEnvType::Plain => "plain",
            VercelEnvType::Encrypted => "encrypted",
            VercelEnvType::Sensitive => "sensitive",
            VercelEnvType::Secret => "secret",
            VercelEnvType::System => "system",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "plain" => VercelEnvType::Plain,
            "encrypted" => VercelEnvType::Encrypted,
            "sensitive" => VercelEnvType::Sensitive,
            "secret" => VercelEnvType::Secret,
            "system" => VercelEnvType::System,
            _ => return None,
        })
    }

    /// Whether Vercel returns the value as written.
    pub fn readable(self) -> bool {
        matches!(self, VercelEnvType::Plain | VercelEnvType::System)
    }
}

/// An environment variable to write. Its identity on Vercel is (key, targets, gitBranch).
#[derive(Clone, PartialEq, Eq)]
pub struct VercelEnvVarSpec {
    /// Variable name.
    pub key: String,
    /// The value (may be a secret: never printed).
    pub value: String,
    /// Storage type: `Plain` for literal values, `Encrypted` for values from Secrets.
    pub kind: VercelEnvType,
    /// Deployment targets, sorted.
    pub targets: Vec<VercelTarget>,
    /// Git branch (preview-only variables).
    pub git_branch: Option<String>,
}

impl fmt::Debug for VercelEnvVarSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The value may be a secret: never print it.
        f.debug_struct("VercelEnvVarSpec")
            .field("key", &self.key)
            .field("value", &"***")
            .field("kind", &self.kind)
            .field("targets", &self.targets)
            .field("git_branch", &self.git_branch)
            .finish()
    }
}

/// An environment variable as observed.
#[derive(Clone, PartialEq, Eq)]
pub struct VercelEnvVar {
    /// Vercel's id of the variable (`env_…`, or an opaque id).
    pub id: String,
    /// Variable name.
    pub key: String,
    /// Storage type.
    pub kind: VercelEnvType,
    /// The value when the type is readable (`plain`, `system`); `None` otherwise.
    pub value: Option<String>,
    /// Deployment targets, sorted and deduplicated.
    pub targets: Vec<VercelTarget>,
    /// Git branch, when the variable is limited to one.
    pub git_branch: Option<String>,
}

impl fmt::Debug for VercelEnvVar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VercelEnvVar")
            .field("id", &self.id)
            .field("key", &self.key)
            .field("kind", &self.kind)
            .field("value", &self.value.as_ref().map(|_| "***"))
            .field("targets", &self.targets)
            .field("git_branch", &self.git_branch)
            .finish()
    }
}

/// The git repository linked to a project.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VercelGitLink {
    /// Provider as Vercel names it (`github`, `gitlab`, `bitbucket`, `github-limited`, …).
    pub provider: String,
    /// `owner/name` of the repository.
    pub repo: String,
    /// Branch deployed to production (`None` when the link does not say).
    pub production_branch: Option<String>,
}

/// What Tether wants a Vercel project to be when it creates one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VercelProjectSpec {
    /// Project name (the stable identity within the team).
    pub name: String,
    /// Framework preset (`nextjs`, `vite`, …), `None` for Vercel's detection.
    pub framework: Option<String>,
    /// Repository to link, as (provider, `owner/name`); only possible at creation.
    pub git_repository: Option<(String, String)>,
    /// Directory of the app inside the repository.
    pub root_directory: Option<String>,
    /// Install command override.
    pub install_command: Option<String>,
    /// Build command override.
    pub build_command: Option<String>,
    /// Output directory override.
    pub output_directory: Option<String>,
    /// Node.js version (`22.x`); set by a follow-up PATCH (the create body has no field).
    pub node_version: Option<String>,
    /// Environment variables created with the project (one request).
    pub env_vars: Vec<VercelEnvVarSpec>,
}

/// A Vercel project as observed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VercelProject {
    /// Project id (`prj_…`).
    pub id: String,
    /// Name.
    pub name: String,
    /// Framework preset.
    pub framework: Option<String>,
    /// Linked repository.
    pub git_repository: Option<VercelGitLink>,
    /// Root directory.
    pub root_directory: Option<String>,
    /// Install command override.
    pub install_command: Option<String>,
    /// Build command override.
    pub build_command: Option<String>,
    /// Output directory override.
    pub output_directory: Option<String>,
    /// Node.js version.
    pub node_version: String,
    /// Environment variables, as the project list and project reads return them.
    pub env_vars: Vec<VercelEnvVar>,
    /// When Vercel last changed the project (`updatedAt`, epoch milliseconds, as sent): the
    /// change signal its domains are re-read on.
    pub updated_at: Option<String>,
}

/// Settings to change on a project. The outer `None` leaves a field alone; `Some(None)`
/// resets it to Vercel's detection (`null`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VercelProjectPatch {
    /// Framework preset.
    pub framework: Option<Option<String>>,
    /// Root directory.
    pub root_directory: Option<Option<String>>,
    /// Install command.
    pub install_command: Option<Option<String>>,
    /// Build command.
    pub build_command: Option<Option<String>>,
    /// Output directory.
    pub output_directory: Option<Option<String>>,
    /// Node.js version (not nullable on Vercel).
    pub node_version: Option<String>,
}

impl VercelProjectPatch {
    /// Whether the patch changes nothing.
    pub fn is_empty(&self) -> bool {
        *self == VercelProjectPatch::default()
    }

    fn body(&self) -> Value {
        let mut body = json!({});
        for (field, value) in [
            ("framework", &self.framework),
            ("rootDirectory", &self.root_directory),
            ("installCommand", &self.install_command),
            ("buildCommand", &self.build_command),
            ("outputDirectory", &self.output_directory),
        ] {
            if let Some(value) = value {
                body[field] = json!(value);
            }
        }
        if let Some(version) = &self.node_version {
            body["nodeVersion"] = json!(version);
        }
        body
    }
}

/// A domain of a project, as written.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VercelDomainSpec {
    /// The hostname.
    pub name: String,
    /// Another domain of the project this one redirects to.
    pub redirect: Option<String>,
    /// Git branch whose latest preview the domain serves.
    pub git_branch: Option<String>,
}

/// A domain of a project, as observed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VercelDomain {
    /// The hostname.
    pub name: String,
    /// Redirect target, if any.
    pub redirect: Option<String>,
    /// Git branch, if any.
    pub git_branch: Option<String>,
    /// Whether Vercel verified the domain.
    pub verified: bool,
}

/// Vercel projects and what hangs off them.
pub trait VercelProjects: Deployments {
    /// Every project of the team (all pages), each with its environment variables.
    fn list_projects(&self) -> impl Future<Output = PlatformResult<Vec<VercelProject>>> + Send;
    /// Reads a project by id or name.
    fn get_project(
        &self,
        id_or_name: &str,
    ) -> impl Future<Output = PlatformResult<VercelProject>> + Send;
    /// Creates the project (with its repository, settings and variables); when the name is
    /// already taken, returns the existing project instead (`created: false`, adopted as it
    /// is).
    fn ensure_project(
        &self,
        spec: &VercelProjectSpec,
    ) -> impl Future<Output = PlatformResult<Ensured<VercelProject>>> + Send;
    /// Changes the given settings.
    fn update_project(
        &self,
        id: &str,
        patch: &VercelProjectPatch,
    ) -> impl Future<Output = PlatformResult<VercelProject>> + Send;
    /// Deletes the project; `Ok(false)` when it was already gone.
    fn delete_project(&self, id: &str) -> impl Future<Output = PlatformResult<bool>> + Send;
    /// The project's environment variables (values of non-plain types come back as `None`).
    fn list_env_vars(
        &self,
        project: &str,
    ) -> impl Future<Output = PlatformResult<Vec<VercelEnvVar>>> + Send;
    /// Creates or overwrites (`upsert=true`) variables in one request: a variable with the
    /// same key, targets and git branch is replaced.
    fn upsert_env_vars(
        &self,
        project: &str,
        vars: &[VercelEnvVarSpec],
    ) -> impl Future<Output = PlatformResult<Vec<VercelEnvVar>>> + Send;
    /// Removes a variable by its id; `Ok(false)` when it was not there.
    fn delete_env_var(
        &self,
        project: &str,
        env_id: &str,
    ) -> impl Future<Output = PlatformResult<bool>> + Send;
    /// The project's domains (all pages).
    fn list_domains(
        &self,
        project: &str,
    ) -> impl Future<Output = PlatformResult<Vec<VercelDomain>>> + Send;
    /// Adds a domain, or returns it when it is already attached to this project.
    fn ensure_domain(
        &self,
        project: &str,
        domain: &VercelDomainSpec,
    ) -> impl Future<Output = PlatformResult<Ensured<VercelDomain>>> + Send;
    /// Sets a domain's redirect and git branch (`None` clears them).
    fn update_domain(
        &self,
        project: &str,
        domain: &VercelDomainSpec,
    ) -> impl Future<Output = PlatformResult<VercelDomain>> + Send;
    /// Removes a domain; `Ok(false)` when it was not there.
    fn delete_domain(
        &self,
        project: &str,
        name: &str,
    ) -> impl Future<Output = PlatformResult<bool>> + Send;
}

/// The Vercel client.
#[derive(Clone)]
pub struct VercelClient {
    http: PlatformHttp,
    team_id: Option<String>,
    page_limit: u32,
}

impl VercelClient {
    /// A client sending through `http`, scoped to `team_id` when given.
    pub fn new(http: PlatformHttp, team_id: Option<String>) -> Self {
        VercelClient {
            http,
            team_id,
            page_limit: 100,
        }
    }

    /// Sets the page size of list calls (1–100).
    pub fn with_page_limit(mut self, limit: u32) -> Self {
        self.page_limit = limit.clamp(1, 100);
        self
    }

    fn request(&self, method: Method, operation: &'static str, segments: &[&str]) -> ApiRequest {
        let mut request = ApiRequest::new(method, operation, segments).limited(API, "");
        if let Some(team) = &self.team_id {
            request = request.query("teamId", team.clone());
        }
        request
    }

    /// Follows `pagination.next`, passed back as `cursor_param`.
    async fn list_all<T: serde::de::DeserializeOwned>(
        &self,
        request: ApiRequest,
        field: &'static str,
        cursor_param: &'static str,
    ) -> PlatformResult<Vec<T>> {
        let operation = request.operation();
        let mut out = Vec::new();
        let mut next: Option<String> = None;
        loop {
            let mut page_request = request.clone().query("limit", self.page_limit.to_string());
            if let Some(next) = &next {
                page_request = page_request.query(cursor_param, next.clone());
            }
            let mut page: Value = self.http.json(&page_request).await?;
            let items = page
                .get_mut(field)
                .map(Value::take)
                .ok_or_else(|| malformed(operation, format!("list without `{field}`")))?;
            let items: Vec<T> =
                super::http::decode(Platform::Vercel, operation, items.to_string().as_bytes())?;
            out.extend(items);
            next = match page.pointer("/pagination/next") {
                Some(Value::Number(n)) => Some(n.to_string()),
                Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
                _ => None,
            };
            if next.is_none() {
                return Ok(out);
            }
        }
    }

    async fn create_project(&self, spec: &VercelProjectSpec) -> PlatformResult<ApiProject> {
        let mut body = json!({ "name": spec.name });
        for (field, value) in [
            ("framework", &spec.framework),
            ("rootDirectory", &spec.root_directory),
            ("installCommand", &spec.install_command),
            ("buildCommand", &spec.build_command),
            ("outputDirectory", &spec.output_directory),
        ] {
            if let Some(value) = value {
                body[field] = json!(value);
            }
        }
        if let Some((provider, repo)) = &spec.git_repository {
            body["gitRepository"] = json!({ "type": provider, "repo": repo });
        }
        if !spec.env_vars.is_empty() {
            body["environmentVariables"] =
                Value::Array(spec.env_vars.iter().map(env_body).collect());
        }
        let request = self
            .request(Method::POST, "create_project", &["v11", "projects"])
            .json(body);
        self.http.json(&request).await
    }
}

fn malformed(operation: &'static str, reason: String) -> PlatformError {
    PlatformError::Malformed {
        platform: Platform::Vercel,
        operation,
        reason,
    }
}

fn env_body(var: &VercelEnvVarSpec) -> Value {
    let mut body = json!({
        "key": var.key,
        "value": var.value,
        "type": var.kind.as_str(),
        "target": var.targets,
    });
    if let Some(branch) = &var.git_branch {
        body["gitBranch"] = json!(branch);
    }
    body
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ApiProject {
    id: String,
    name: String,
    #[serde(default)]
    framework: Option<String>,
    #[serde(default)]
    root_directory: Option<String>,
    #[serde(default)]
    install_command: Option<String>,
    #[serde(default)]
    build_command: Option<String>,
    #[serde(default)]
    output_directory: Option<String>,
    node_version: String,
    #[serde(default)]
    link: Option<Value>,
    #[serde(default)]
    env: Vec<ApiEnv>,
    #[serde(default)]
    updated_at: Option<serde_json::Number>,
}

/// Reads the `link` variants of the spec (GitHub, GitLab, Bitbucket) into `owner/name`.
fn git_link(link: &Value) -> Option<VercelGitLink> {
    let provider = link.get("type")?.as_str()?.to_owned();
    let text = |field: &str| link.get(field).and_then(Value::as_str);
    let repo = match provider.as_str() {
        "gitlab" => text("projectUrl")
            .and_then(|u| u.split_once("://"))
            .and_then(|(_, rest)| rest.split_once('/'))
            .map(|(_, path)| path.trim_end_matches('/').to_owned())
            .or_else(|| {
                Some(format!(
                    "{}/{}",
                    text("projectNamespace")?,
                    text("projectName")?
                ))
            }),
        "bitbucket" => Some(format!("{}/{}", text("owner")?, text("slug")?)),
        _ => Some(format!("{}/{}", text("org")?, text("repo")?)),
    }?;
    Some(VercelGitLink {
        provider,
        repo,
        production_branch: text("productionBranch").map(str::to_owned),
    })
}

impl ApiProject {
    fn into_project(self, operation: &'static str) -> PlatformResult<VercelProject> {
        let env_vars = self
            .env
            .into_iter()
            .map(|e| e.into_env(operation))
            .collect::<PlatformResult<Vec<_>>>()?;
        Ok(VercelProject {
            id: self.id,
            name: self.name,
            framework: self.framework,
            git_repository: self.link.as_ref().and_then(git_link),
            root_directory: self.root_directory,
            install_command: self.install_command,
            build_command: self.build_command,
            output_directory: self.output_directory,
            node_version: self.node_version,
            env_vars,
            updated_at: self.updated_at.map(|n| n.to_string()),
        })
    }
}

#[derive(Deserialize)]
struct ApiEnvList {
    envs: Vec<ApiEnv>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ApiEnv {
    #[serde(default)]
    id: Option<String>,
    key: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    value: Option<String>,
    #[serde(default)]
    target: Option<Value>,
    #[serde(default)]
    git_branch: Option<String>,
}

impl ApiEnv {
    fn into_env(self, operation: &'static str) -> PlatformResult<VercelEnvVar> {
        let kind = VercelEnvType::parse(&self.kind).ok_or_else(|| {
            malformed(
                operation,
                format!("unknown environment variable type {:?}", self.kind),
            )
        })?;
        let id = self
            .id
            .ok_or_else(|| malformed(operation, "environment variable without `id`".into()))?;
        let mut targets: Vec<VercelTarget> = match self.target {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(s)) => vec![parse_target(operation, &s)?],
            Some(Value::Array(items)) => items
                .iter()
                .map(|t| parse_target(operation, t.as_str().unwrap_or_default()))
                .collect::<PlatformResult<_>>()?,
            Some(_) => {
                return Err(malformed(
                    operation,
                    "environment variable `target` is neither a string nor a list".into(),
                ));
            }
        };
        targets.sort();
        targets.dedup();
        Ok(VercelEnvVar {
            id,
            key: self.key,
            value: if kind.readable() { self.value } else { None },
            kind,
            targets,
            git_branch: self.git_branch.filter(|b| !b.is_empty()),
        })
    }
}

fn parse_target(operation: &'static str, text: &str) -> PlatformResult<VercelTarget> {
    Ok(match text {
        "production" => VercelTarget::Production,
        "preview" => VercelTarget::Preview,
        "development" => VercelTarget::Development,
        other => {
            return Err(malformed(
                operation,
                format!("unknown environment variable target {other:?}"),
            ));
        }
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ApiDomain {
    name: String,
    verified: bool,
    #[serde(default)]
    redirect: Option<String>,
    #[serde(default)]
    git_branch: Option<String>,
}

impl From<ApiDomain> for VercelDomain {
    fn from(d: ApiDomain) -> Self {
        VercelDomain {
            name: d.name,
            redirect: d.redirect.filter(|r| !r.is_empty()),
            git_branch: d.git_branch.filter(|b| !b.is_empty()),
            verified: d.verified,
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ApiDeployment {
    /// `id` on single deployments, `uid` in lists.
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    uid: Option<String>,
    #[serde(default)]
    ready_state: Option<String>,
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    meta: Option<Value>,
}

fn deployment_state(state: &str) -> Option<DeploymentState> {
    Some(match state {
        "QUEUED" | "INITIALIZING" => DeploymentState::Queued,
        "BUILDING" => DeploymentState::Building,
        "READY" => DeploymentState::Live,
        "ERROR" => DeploymentState::Failed,
        "CANCELED" => DeploymentState::Canceled,
        "DELETED" => DeploymentState::Superseded,
        _ => return None,
    })
}

fn to_deployment(operation: &'static str, d: ApiDeployment) -> PlatformResult<Deployment> {
    let id =
        d.id.or(d.uid)
            .ok_or_else(|| malformed(operation, "deployment without `id`".into()))?;
    let state = d
        .ready_state
        .or(d.state)
        .ok_or_else(|| malformed(operation, "deployment without `readyState`".into()))?;
    let mapped = deployment_state(&state)
        .ok_or_else(|| malformed(operation, format!("unknown readyState {state:?}")))?;
    let source = d
        .meta
        .as_ref()
        .and_then(|m| m.get("githubCommitRef").or_else(|| m.get("gitRef")))
        .and_then(Value::as_str)
        .map(str::to_owned);
    Ok(Deployment {
        id,
        state: mapped,
        platform_state: state,
        source,
    })
}

fn gone_is_ok<T>(result: PlatformResult<T>) -> PlatformResult<bool> {
    match result {
        Ok(_) => Ok(true),
        Err(PlatformError::NotFound { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

impl VercelProjects for VercelClient {
    async fn list_projects(&self) -> PlatformResult<Vec<VercelProject>> {
        let request = self.request(Method::GET, "list_projects", &["v10", "projects"]);
        let projects: Vec<ApiProject> = self.list_all(request, "projects", "from").await?;
        projects
            .into_iter()
            .map(|p| p.into_project("list_projects"))
            .collect()
    }

    async fn get_project(&self, id_or_name: &str) -> PlatformResult<VercelProject> {
        let request = self.request(Method::GET, "get_project", &["v9", "projects", id_or_name]);
        let project: ApiProject = self.http.json(&request).await?;
        project.into_project("get_project")
    }

    async fn ensure_project(
        &self,
        spec: &VercelProjectSpec,
    ) -> PlatformResult<Ensured<VercelProject>> {
        let project = match self.create_project(spec).await {
            Ok(project) => project.into_project("create_project")?,
            // The name is taken: adopt the project as it is; the caller plans the rest.
            Err(PlatformError::Conflict { .. }) => {
                return Ok(Ensured {
                    object: self.get_project(&spec.name).await?,
                    created: false,
                });
            }
            Err(e) => return Err(e),
        };
        let object = match &spec.node_version {
            Some(version) if *version != project.node_version => {
                let patch = VercelProjectPatch {
                    node_version: Some(version.clone()),
                    ..VercelProjectPatch::default()
                };
                self.update_project(&project.id, &patch).await?
            }
            _ => project,
        };
        Ok(Ensured {
            object,
            created: true,
        })
    }

    async fn update_project(
        &self,
        id: &str,
        patch: &VercelProjectPatch,
    ) -> PlatformResult<VercelProject> {
        let request = self
            .request(Method::PATCH, "update_project", &["v9", "projects", id])
            .json(patch.body())
            .idempotent();
        let project: ApiProject = self.http.json(&request).await?;
        project.into_project("update_project")
    }

    async fn delete_project(&self, id: &str) -> PlatformResult<bool> {
        let request = self.request(Method::DELETE, "delete_project", &["v9", "projects", id]);
        gone_is_ok(self.http.send(&request).await)
    }

    async fn list_env_vars(&self, project: &str) -> PlatformResult<Vec<VercelEnvVar>> {
        let request = self.request(
            Method::GET,
            "list_env_vars",
            &["v10", "projects", project, "env"],
        );
        let list: ApiEnvList = self.http.json(&request).await?;
        list.envs
            .into_iter()
            .map(|e| e.into_env("list_env_vars"))
            .collect()
    }

    async fn upsert_env_vars(
        &self,
        project: &str,
        vars: &[VercelEnvVarSpec],
    ) -> PlatformResult<Vec<VercelEnvVar>> {
        if vars.is_empty() {
            return Ok(Vec::new());
        }
        let body = Value::Array(vars.iter().map(env_body).collect());
        // upsert=true makes a repeat overwrite instead of failing: safe to retry.
        let request = self
            .request(
                Method::POST,
                "upsert_env_vars",
                &["v10", "projects", project, "env"],
            )
            .query("upsert", "true")
            .json(body)
            .idempotent();
        let mut response: Value = self.http.json(&request).await?;
        let failed = response
            .get("failed")
            .and_then(Value::as_array)
            .map(|failed| {
                failed
                    .iter()
                    .filter_map(|f| f.pointer("/error/code").and_then(Value::as_str))
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        if !failed.is_empty() {
            return Err(PlatformError::Invalid {
                platform: Platform::Vercel,
                operation: "upsert_env_vars",
                status: Some(201),
                reason: format!("variables listed as failed ({})", failed.join(", ")),
            });
        }
        let created = match response.get_mut("created").map(Value::take) {
            Some(Value::Array(items)) => items,
            Some(item @ Value::Object(_)) => vec![item],
            _ => {
                return Err(malformed(
                    "upsert_env_vars",
                    "response without `created`".into(),
                ));
            }
        };
        created
            .into_iter()
            .map(|item| {
                let env: ApiEnv = super::http::decode(
                    Platform::Vercel,
                    "upsert_env_vars",
                    item.to_string().as_bytes(),
                )?;
                env.into_env("upsert_env_vars")
            })
            .collect()
    }

    async fn delete_env_var(&self, project: &str, env_id: &str) -> PlatformResult<bool> {
        let request = self.request(
            Method::DELETE,
            "delete_env_var",
            &["v9", "projects", project, "env", env_id],
        );
        gone_is_ok(self.http.send(&request).await)
    }

    async fn list_domains(&self, project: &str) -> PlatformResult<Vec<VercelDomain>> {
        let request = self.request(
            Method::GET,
            "list_domains",
            &["v9", "projects", project, "domains"],
        );
        let domains: Vec<ApiDomain> = self.list_all(request, "domains", "until").await?;
        Ok(domains.into_iter().map(VercelDomain::from).collect())
    }

    async fn ensure_domain(
        &self,
        project: &str,
        domain: &VercelDomainSpec,
    ) -> PlatformResult<Ensured<VercelDomain>> {
        let mut body = json!({ "name": domain.name });
        if let Some(redirect) = &domain.redirect {
            body["redirect"] = json!(redirect);
        }
        if let Some(branch) = &domain.git_branch {
            body["gitBranch"] = json!(branch);
        }
        let request = self
            .request(
                Method::POST,
                "add_domain",
                &["v10", "projects", project, "domains"],
            )
            .json(body);
        match self.http.json::<ApiDomain>(&request).await {
            Ok(added) => Ok(Ensured {
                object: added.into(),
                created: true,
            }),
            // Already attached here (a retry, or added out of band): adopt it. Attached to
            // another project: the conflict stands.
            Err(conflict @ PlatformError::Conflict { .. }) => {
                match self
                    .list_domains(project)
                    .await?
                    .into_iter()
                    .find(|d| d.name == domain.name)
                {
                    Some(existing) => Ok(Ensured {
                        object: existing,
                        created: false,
                    }),
                    None => Err(conflict),
                }
            }
            Err(e) => Err(e),
        }
    }

    async fn update_domain(
        &self,
        project: &str,
        domain: &VercelDomainSpec,
    ) -> PlatformResult<VercelDomain> {
        let request = self
            .request(
                Method::PATCH,
                "update_domain",
                &["v9", "projects", project, "domains", &domain.name],
            )
            .json(json!({ "redirect": domain.redirect, "gitBranch": domain.git_branch }))
            .idempotent();
        let updated: ApiDomain = self.http.json(&request).await?;
        Ok(updated.into())
    }

    async fn delete_domain(&self, project: &str, name: &str) -> PlatformResult<bool> {
        let request = self.request(
            Method::DELETE,
            "delete_domain",
            &["v9", "projects", project, "domains", name],
        );
        gone_is_ok(self.http.send(&request).await)
    }
}

impl VercelClient {
    /// A production deployment of `reference` from the GitHub repository `repo`
    /// (`owner/name`) the project `id` (called `name`) is linked to, with no read of the
    /// project first.
    pub async fn deploy_git(
        &self,
        id: &str,
        name: &str,
        repo: &str,
        reference: &str,
    ) -> PlatformResult<Deployment> {
        let Some((org, repo)) = repo.split_once('/') else {
            return Err(PlatformError::Invalid {
                platform: Platform::Vercel,
                operation: "create_deployment",
                status: None,
                reason: format!("{repo:?} is not owner/name"),
            });
        };
        self.create_deployment(json!({
            "name": name,
            "project": id,
            "target": "production",
            "gitSource": { "type": "github", "ref": reference, "org": org, "repo": repo },
        }))
        .await
    }

    async fn create_deployment(&self, body: Value) -> PlatformResult<Deployment> {
        let request = self
            .request(Method::POST, "create_deployment", &["v13", "deployments"])
            .json(body);
        let deployment: ApiDeployment = self.http.json(&request).await?;
        to_deployment("create_deployment", deployment)
    }
}

impl Deployments for VercelClient {
    async fn deploy(&self, target: &str, source: &DeploySource) -> PlatformResult<Deployment> {
        let project = self.get_project(target).await?;
        let mut body = json!({
            "name": project.name,
            "project": project.id,
            "target": "production",
        });
        match source {
            DeploySource::Git(reference) => {
                let Some(link) = project
                    .git_repository
                    .as_ref()
                    .filter(|link| link.provider.starts_with("github"))
                else {
                    return Err(PlatformError::Invalid {
                        platform: Platform::Vercel,
                        operation: "create_deployment",
                        status: None,
                        reason: "the project has no linked GitHub repository".into(),
                    });
                };
                return self
                    .deploy_git(&project.id, &project.name, &link.repo, reference)
                    .await;
            }
            DeploySource::Current => {
                let latest = self.list_deployments(target).await?;
                let Some(latest) = latest.first() else {
                    return Err(PlatformError::Invalid {
                        platform: Platform::Vercel,
                        operation: "create_deployment",
                        status: None,
                        reason: "nothing to redeploy yet".into(),
                    });
                };
                body["deploymentId"] = json!(latest.id);
            }
            DeploySource::Image(_) => {
                return Err(PlatformError::Invalid {
                    platform: Platform::Vercel,
                    operation: "create_deployment",
                    status: None,
                    reason: "Vercel deploys git refs, not container images".into(),
                });
            }
        }
        self.create_deployment(body).await
    }

    async fn deployment(&self, _target: &str, deployment_id: &str) -> PlatformResult<Deployment> {
        let request = self.request(
            Method::GET,
            "get_deployment",
            &["v13", "deployments", deployment_id],
        );
        let deployment: ApiDeployment = self.http.json(&request).await?;
        to_deployment("get_deployment", deployment)
    }

    async fn list_deployments(&self, target: &str) -> PlatformResult<Vec<Deployment>> {
        let request = self
            .request(Method::GET, "list_deployments", &["v6", "deployments"])
            .query("projectId", target);
        let deployments: Vec<ApiDeployment> =
            self.list_all(request, "deployments", "until").await?;
        deployments
            .into_iter()
            .map(|d| to_deployment("list_deployments", d))
            .collect()
    }

    async fn rollback(&self, target: &str, deployment_id: &str) -> PlatformResult<Deployment> {
        // The public spec has no rollback route: promoting an earlier READY production
        // deployment points the production domains back at it without a rebuild.
        let request = self
            .request(
                Method::POST,
                "promote",
                &["v10", "projects", target, "promote", deployment_id],
            )
            .idempotent();
        self.http.send(&request).await?;
        // The promotion is sent: its read-back waits out a rate limit instead of parking.
        crate::sync::progress::in_place(self.deployment(target, deployment_id)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_documented_ready_state_has_a_state() {
        for state in [
            "QUEUED",
            "INITIALIZING",
            "BUILDING",
            "READY",
            "ERROR",
            "CANCELED",
            "DELETED",
        ] {
            assert!(deployment_state(state).is_some(), "{state}");
        }
        assert_eq!(deployment_state("LOST"), None);
    }
}
