//! Render adapter: services (web, private, background worker), their environment variables,
//! custom domains and deploys, spoken exactly as Render's public API v1 defines them
//! (`render/openapi.json`). Lists follow `cursor` pagination; creates look the service up
//! by name first, because Render has no idempotency keys.

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
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RenderServiceKind {
    /// Public HTTP service (`web_service`).
    WebService,
    /// Internal service (`private_service`).
    PrivateService,
    /// Worker without a port (`background_worker`).
    BackgroundWorker,
}

impl RenderServiceKind {
    fn as_api(self) -> &'static str {
        match self {
            RenderServiceKind::WebService => "web_service",
            RenderServiceKind::PrivateService => "private_service",
            RenderServiceKind::BackgroundWorker => "background_worker",
        }
    }

    fn from_api(value: &str) -> Option<Self> {
        match value {
            "web_service" => Some(RenderServiceKind::WebService),
            "private_service" => Some(RenderServiceKind::PrivateService),
            "background_worker" => Some(RenderServiceKind::BackgroundWorker),
            _ => None,
        }
    }
}

/// What Tether wants a Render service to be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RenderServiceSpec {
    /// Service name (the stable identity within the workspace).
    pub name: String,
    /// Workspace id (`tea-…`).
    pub owner_id: String,
    /// Kind of service.
    pub kind: RenderServiceKind,
    /// Container image to run (image-backed service); exclusive with `repo`.
    pub image: Option<String>,
    /// Git repository URL (Docker build from source).
    pub repo: Option<String>,
    /// Branch of `repo`.
    pub branch: Option<String>,
    /// Region (`oregon`, `frankfurt`, …); Render's default when `None`.
    pub region: Option<String>,
    /// Instance plan (`starter`, `standard`, …); Render's default when `None`.
    pub plan: Option<String>,
}

/// A Render service as observed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RenderService {
    /// Service id (`srv-…`).
    pub id: String,
    /// Name.
    pub name: String,
    /// Workspace id.
    pub owner_id: String,
    /// Kind, `None` for kinds Tether does not manage (static sites, cron jobs).
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
    /// Public URL (web services).
    pub url: Option<String>,
    /// Whether the service is suspended.
    pub suspended: bool,
}

/// Fields to change on a service; `None` leaves a field alone.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RenderServicePatch {
    /// New name.
    pub name: Option<String>,
    /// New image path (image-backed services).
    pub image: Option<String>,
    /// New branch.
    pub branch: Option<String>,
    /// New plan.
    pub plan: Option<String>,
}

/// Render services and what hangs off them.
pub trait RenderServices: Deployments {
    /// Every service of the workspace, optionally only those called `name` (all pages).
    fn list_services(
        &self,
        owner_id: &str,
        name: Option<&str>,
    ) -> impl Future<Output = PlatformResult<Vec<RenderService>>> + Send;
    /// Reads one service.
    fn get_service(&self, id: &str) -> impl Future<Output = PlatformResult<RenderService>> + Send;
    /// Finds the service by name, or creates it.
    fn ensure_service(
        &self,
        spec: &RenderServiceSpec,
    ) -> impl Future<Output = PlatformResult<Ensured<RenderService>>> + Send;
    /// Changes the given fields.
    fn update_service(
        &self,
        id: &str,
        patch: &RenderServicePatch,
    ) -> impl Future<Output = PlatformResult<RenderService>> + Send;
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
    /// Removes a custom domain; `Ok(false)` when it was not there.
    fn delete_domain(
        &self,
        service_id: &str,
        name: &str,
    ) -> impl Future<Output = PlatformResult<bool>> + Send;
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
    service_details: Option<ApiServiceDetails>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ApiServiceDetails {
    #[serde(default)]
    region: Option<String>,
    #[serde(default)]
    plan: Option<String>,
    #[serde(default)]
    url: Option<String>,
}

impl From<ApiService> for RenderService {
    fn from(s: ApiService) -> Self {
        let details = s.service_details;
        RenderService {
            kind: RenderServiceKind::from_api(&s.kind),
            id: s.id,
            name: s.name,
            owner_id: s.owner_id,
            image: s.image_path,
            repo: s.repo,
            branch: s.branch,
            region: details.as_ref().and_then(|d| d.region.clone()),
            plan: details.as_ref().and_then(|d| d.plan.clone()),
            url: details.and_then(|d| d.url),
            suspended: s.suspended == "suspended",
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

fn service_body(spec: &RenderServiceSpec) -> Value {
    let runtime = if spec.image.is_some() {
        "image"
    } else {
        "docker"
    };
    let mut details = json!({ "runtime": runtime });
    if let Some(region) = &spec.region {
        details["region"] = json!(region);
    }
    if let Some(plan) = &spec.plan {
        details["plan"] = json!(plan);
    }
    let mut body = json!({
        "type": spec.kind.as_api(),
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
    body
}

impl RenderServices for RenderClient {
    async fn list_services(
        &self,
        owner_id: &str,
        name: Option<&str>,
    ) -> PlatformResult<Vec<RenderService>> {
        let mut request = ApiRequest::get("list_services", &["services"])
            .query("ownerId", owner_id)
            .limited(READ, "");
        if let Some(name) = name {
            request = request.query("name", name);
        }
        let services: Vec<ApiService> = self.list_all(request, "service").await?;
        Ok(services.into_iter().map(RenderService::from).collect())
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
        if let Some(existing) = self.find_service(&spec.owner_id, &spec.name).await? {
            return Ok(Ensured {
                object: existing,
                created: false,
            });
        }
        let request = ApiRequest::post("create_service", &["services"])
            .json(service_body(spec))
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
        id: &str,
        patch: &RenderServicePatch,
    ) -> PlatformResult<RenderService> {
        let mut body = json!({});
        if let Some(name) = &patch.name {
            body["name"] = json!(name);
        }
        if let Some(branch) = &patch.branch {
            body["branch"] = json!(branch);
        }
        if let Some(image) = &patch.image {
            let service = self.get_service(id).await?;
            body["image"] = json!({ "ownerId": service.owner_id, "imagePath": image });
        }
        if let Some(plan) = &patch.plan {
            body["serviceDetails"] = json!({ "plan": plan });
        }
        // PATCH with the same body twice has the same effect: safe to retry.
        let request = ApiRequest::new(Method::PATCH, "update_service", &["services", id])
            .json(body)
            .idempotent()
            .limited(SERVICE_ACTION, id);
        let service: ApiService = self.http.json(&request).await?;
        Ok(service.into())
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
        let request = ApiRequest::post("add_domain", &["services", service_id, "custom-domains"])
            .json(json!({ "name": name }))
            .limited(WRITE, "");
        let created: Vec<ApiCustomDomain> = self.http.json(&request).await?;
        let domain = created
            .into_iter()
            .map(Domain::from)
            .find(|d| d.name == name)
            .ok_or_else(|| {
                malformed("add_domain", "created domain missing from response".into())
            })?;
        Ok(Ensured {
            object: domain,
            created: true,
        })
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
            let request = ApiRequest::get("list_deploys", &["services", target, "deploys"])
                .query("status", "queued")
                .query("limit", "1")
                .limited(READ, "");
            let page: Vec<Value> = self.http.json(&request).await?;
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
            kind: RenderServiceKind::WebService,
            image: Some("ghcr.io/acme/web:1".into()),
            repo: None,
            branch: None,
            region: Some("frankfurt".into()),
            plan: None,
        });
        assert_eq!(body["serviceDetails"]["runtime"], "image");
        assert_eq!(body["autoDeploy"], "no");
        assert_eq!(body["image"]["imagePath"], "ghcr.io/acme/web:1");
    }
}
