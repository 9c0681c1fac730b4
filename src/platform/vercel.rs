//! Vercel adapter: projects, their environment variables and domains, deployments and
//! rollback (promotion of an earlier deployment), as `vercel/openapi.json` defines them.
//! Every call carries `teamId` when the client is scoped to a team; lists follow the
//! time-based pagination (`pagination.next` fed back as `until`, or `from` for projects).

use http::Method;
use serde::Deserialize;
use serde_json::{Value, json};

use super::http::{ApiRequest, PlatformHttp};
use super::{
    DeploySource, Deployment, DeploymentState, Deployments, Domain, Ensured, EnvVar, Platform,
    PlatformError, PlatformResult,
};
use std::future::Future;

const API: &[&str] = &["api"];

/// What Tether wants a Vercel project to be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VercelProjectSpec {
    /// Project name (the stable identity within the team).
    pub name: String,
    /// Framework preset (`nextjs`, `vite`, …), `None` for Vercel's detection.
    pub framework: Option<String>,
    /// Linked GitHub repository as `org/repo`.
    pub git_repository: Option<String>,
    /// Build command override.
    pub build_command: Option<String>,
    /// Directory of the app inside the repository.
    pub root_directory: Option<String>,
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
    /// Build command override.
    pub build_command: Option<String>,
    /// Root directory.
    pub root_directory: Option<String>,
    /// Linked repository as `org/repo`.
    pub git_repository: Option<String>,
}

/// Fields to change on a project; `None` leaves a field alone.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VercelProjectPatch {
    /// New framework preset.
    pub framework: Option<String>,
    /// New build command.
    pub build_command: Option<String>,
    /// New root directory.
    pub root_directory: Option<String>,
}

/// Vercel projects and what hangs off them.
pub trait VercelProjects: Deployments {
    /// Every project of the team (all pages).
    fn list_projects(&self) -> impl Future<Output = PlatformResult<Vec<VercelProject>>> + Send;
    /// Reads a project by id or name.
    fn get_project(
        &self,
        id_or_name: &str,
    ) -> impl Future<Output = PlatformResult<VercelProject>> + Send;
    /// Finds the project by name, or creates it.
    fn ensure_project(
        &self,
        spec: &VercelProjectSpec,
    ) -> impl Future<Output = PlatformResult<Ensured<VercelProject>>> + Send;
    /// Changes the given fields.
    fn update_project(
        &self,
        id: &str,
        patch: &VercelProjectPatch,
    ) -> impl Future<Output = PlatformResult<VercelProject>> + Send;
    /// Deletes the project; `Ok(false)` when it was already gone.
    fn delete_project(&self, id: &str) -> impl Future<Output = PlatformResult<bool>> + Send;
    /// The project's environment variables (secret values come back as `None`).
    fn list_env_vars(
        &self,
        project: &str,
    ) -> impl Future<Output = PlatformResult<Vec<EnvVar>>> + Send;
    /// Creates or overwrites a variable for production and preview (`upsert=true`).
    fn set_env_var(
        &self,
        project: &str,
        var: &EnvVar,
    ) -> impl Future<Output = PlatformResult<()>> + Send;
    /// Removes a variable by key; `Ok(false)` when it was not there.
    fn delete_env_var(
        &self,
        project: &str,
        key: &str,
    ) -> impl Future<Output = PlatformResult<bool>> + Send;
    /// The project's domains (all pages).
    fn list_domains(
        &self,
        project: &str,
    ) -> impl Future<Output = PlatformResult<Vec<Domain>>> + Send;
    /// Adds a domain, or returns it when already attached.
    fn ensure_domain(
        &self,
        project: &str,
        name: &str,
    ) -> impl Future<Output = PlatformResult<Ensured<Domain>>> + Send;
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

    async fn find_env(&self, project: &str, key: &str) -> PlatformResult<Option<String>> {
        let envs = self.list_envs(project).await?;
        Ok(envs.into_iter().find(|e| e.key == key).map(|e| e.id))
    }

    async fn list_envs(&self, project: &str) -> PlatformResult<Vec<ApiEnv>> {
        let request = self.request(
            Method::GET,
            "list_env_vars",
            &["v10", "projects", project, "env"],
        );
        let list: ApiEnvList = self.http.json(&request).await?;
        Ok(list.envs)
    }
}

fn malformed(operation: &'static str, reason: String) -> PlatformError {
    PlatformError::Malformed {
        platform: Platform::Vercel,
        operation,
        reason,
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ApiProject {
    id: String,
    name: String,
    #[serde(default)]
    framework: Option<String>,
    #[serde(default)]
    build_command: Option<String>,
    #[serde(default)]
    root_directory: Option<String>,
    #[serde(default)]
    link: Option<ApiLink>,
}

#[derive(Deserialize)]
struct ApiLink {
    #[serde(default)]
    org: Option<String>,
    #[serde(default)]
    repo: Option<String>,
}

impl From<ApiProject> for VercelProject {
    fn from(p: ApiProject) -> Self {
        VercelProject {
            id: p.id,
            name: p.name,
            framework: p.framework,
            build_command: p.build_command,
            root_directory: p.root_directory,
            git_repository: p.link.and_then(|l| match (l.org, l.repo) {
                (Some(org), Some(repo)) => Some(format!("{org}/{repo}")),
                _ => None,
            }),
        }
    }
}

#[derive(Deserialize)]
struct ApiEnvList {
    envs: Vec<ApiEnv>,
}

#[derive(Deserialize)]
struct ApiEnv {
    id: String,
    key: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    value: Option<String>,
}

#[derive(Deserialize)]
struct ApiDomain {
    name: String,
    verified: bool,
}

impl From<ApiDomain> for Domain {
    fn from(d: ApiDomain) -> Self {
        Domain {
            id: d.name.clone(),
            name: d.name,
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
        Ok(projects.into_iter().map(VercelProject::from).collect())
    }

    async fn get_project(&self, id_or_name: &str) -> PlatformResult<VercelProject> {
        let request = self.request(Method::GET, "get_project", &["v9", "projects", id_or_name]);
        let project: ApiProject = self.http.json(&request).await?;
        Ok(project.into())
    }

    async fn ensure_project(
        &self,
        spec: &VercelProjectSpec,
    ) -> PlatformResult<Ensured<VercelProject>> {
        match self.get_project(&spec.name).await {
            Ok(project) => {
                return Ok(Ensured {
                    object: project,
                    created: false,
                });
            }
            Err(PlatformError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
        let mut body = json!({ "name": spec.name });
        if let Some(framework) = &spec.framework {
            body["framework"] = json!(framework);
        }
        if let Some(command) = &spec.build_command {
            body["buildCommand"] = json!(command);
        }
        if let Some(dir) = &spec.root_directory {
            body["rootDirectory"] = json!(dir);
        }
        if let Some(repo) = &spec.git_repository {
            body["gitRepository"] = json!({ "type": "github", "repo": repo });
        }
        let request = self
            .request(Method::POST, "create_project", &["v11", "projects"])
            .json(body);
        match self.http.json::<ApiProject>(&request).await {
            Ok(project) => Ok(Ensured {
                object: project.into(),
                created: true,
            }),
            Err(PlatformError::Conflict { .. }) => Ok(Ensured {
                object: self.get_project(&spec.name).await?,
                created: false,
            }),
            Err(e) => Err(e),
        }
    }

    async fn update_project(
        &self,
        id: &str,
        patch: &VercelProjectPatch,
    ) -> PlatformResult<VercelProject> {
        let mut body = json!({});
        if let Some(framework) = &patch.framework {
            body["framework"] = json!(framework);
        }
        if let Some(command) = &patch.build_command {
            body["buildCommand"] = json!(command);
        }
        if let Some(dir) = &patch.root_directory {
            body["rootDirectory"] = json!(dir);
        }
        let request = self
            .request(Method::PATCH, "update_project", &["v9", "projects", id])
            .json(body)
            .idempotent();
        let project: ApiProject = self.http.json(&request).await?;
        Ok(project.into())
    }

    async fn delete_project(&self, id: &str) -> PlatformResult<bool> {
        let request = self.request(Method::DELETE, "delete_project", &["v9", "projects", id]);
        gone_is_ok(self.http.send(&request).await)
    }

    async fn list_env_vars(&self, project: &str) -> PlatformResult<Vec<EnvVar>> {
        Ok(self
            .list_envs(project)
            .await?
            .into_iter()
            .map(|e| {
                let secret = matches!(e.kind.as_str(), "secret" | "sensitive" | "encrypted");
                EnvVar {
                    key: e.key,
                    value: if secret { None } else { e.value },
                    secret,
                }
            })
            .collect())
    }

    async fn set_env_var(&self, project: &str, var: &EnvVar) -> PlatformResult<()> {
        let Some(value) = &var.value else {
            return Err(PlatformError::Invalid {
                platform: Platform::Vercel,
                operation: "set_env_var",
                status: None,
                reason: "a value is required to set a variable".into(),
            });
        };
        let body = json!({
            "key": var.key,
            "value": value,
            "type": if var.secret { "sensitive" } else { "plain" },
            "target": ["production", "preview"],
        });
        // upsert=true makes a repeat overwrite instead of failing: safe to retry.
        let request = self
            .request(
                Method::POST,
                "set_env_var",
                &["v10", "projects", project, "env"],
            )
            .query("upsert", "true")
            .json(body)
            .idempotent();
        let response: Value = self.http.json(&request).await?;
        if response
            .get("failed")
            .and_then(Value::as_array)
            .is_some_and(|f| !f.is_empty())
        {
            return Err(PlatformError::Invalid {
                platform: Platform::Vercel,
                operation: "set_env_var",
                status: Some(201),
                reason: "the variable was listed as failed".into(),
            });
        }
        Ok(())
    }

    async fn delete_env_var(&self, project: &str, key: &str) -> PlatformResult<bool> {
        let Some(id) = self.find_env(project, key).await? else {
            return Ok(false);
        };
        let request = self.request(
            Method::DELETE,
            "delete_env_var",
            &["v9", "projects", project, "env", &id],
        );
        gone_is_ok(self.http.send(&request).await)
    }

    async fn list_domains(&self, project: &str) -> PlatformResult<Vec<Domain>> {
        let request = self.request(
            Method::GET,
            "list_domains",
            &["v9", "projects", project, "domains"],
        );
        let domains: Vec<ApiDomain> = self.list_all(request, "domains", "until").await?;
        Ok(domains.into_iter().map(Domain::from).collect())
    }

    async fn ensure_domain(&self, project: &str, name: &str) -> PlatformResult<Ensured<Domain>> {
        if let Some(domain) = self
            .list_domains(project)
            .await?
            .into_iter()
            .find(|d| d.name == name)
        {
            return Ok(Ensured {
                object: domain,
                created: false,
            });
        }
        let request = self
            .request(
                Method::POST,
                "add_domain",
                &["v10", "projects", project, "domains"],
            )
            .json(json!({ "name": name }));
        let domain: ApiDomain = self.http.json(&request).await?;
        Ok(Ensured {
            object: domain.into(),
            created: true,
        })
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
                let Some((org, repo)) = project
                    .git_repository
                    .as_deref()
                    .and_then(|r| r.split_once('/'))
                else {
                    return Err(PlatformError::Invalid {
                        platform: Platform::Vercel,
                        operation: "create_deployment",
                        status: None,
                        reason: "the project has no linked git repository".into(),
                    });
                };
                body["gitSource"] =
                    json!({ "type": "github", "ref": reference, "org": org, "repo": repo });
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
        let request = self
            .request(Method::POST, "create_deployment", &["v13", "deployments"])
            .json(body);
        let deployment: ApiDeployment = self.http.json(&request).await?;
        to_deployment("create_deployment", deployment)
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
        self.deployment(target, deployment_id).await
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
