//! Supabase Management API adapter: projects (create, read, rename, resize, database
//! password, pause/restore, delete, per-service health), the Auth and Data API (PostgREST)
//! settings, and Edge Function secrets, as `supabase/openapi.json` defines them.
//! Organization project lists use `offset`/`limit` paging and carry each project's region
//! and compute size, so one list observes every project of an organization; creates look
//! the project up by name first, because project creation has no idempotency key.
//!
//! What the API cannot change: a project's region (a new project is needed). The compute
//! size changes through the billing add-ons (`compute_instance`, variants `ci_<size>`), which
//! have no variant for the smallest sizes (`nano`, `pico`): resizing down to them is refused
//! here with a clear error. The database password changes through
//! `PATCH /v1/projects/{ref}/database/password`.

use http::Method;
use serde::Deserialize;
use serde_json::json;

use super::http::{ApiRequest, PlatformHttp};
use super::{Ensured, EnvVar, Platform, PlatformError, PlatformResult, Token};
use std::future::Future;

const API: &[&str] = &["api"];

/// What Tether wants a Supabase project to be.
#[derive(Clone, Debug)]
pub struct SupabaseProjectSpec {
    /// Project name (the stable identity within the organization).
    pub name: String,
    /// Organization slug.
    pub organization_slug: String,
    /// Specific region code (`eu-central-1`, …); Supabase picks when `None`.
    pub region: Option<String>,
    /// Instance size (`micro`, `small`, …); the plan default when `None`.
    pub instance_size: Option<String>,
    /// Database password, used only at creation.
    pub db_pass: Token,
}

/// A project's lifecycle in Tether's words; [`SupabaseProject::status`] keeps Supabase's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProjectState {
    /// Being created, restored, resized, upgraded or restarted.
    Provisioning,
    /// Up and healthy.
    Healthy,
    /// Up but unhealthy.
    Unhealthy,
    /// Paused (or pausing).
    Paused,
    /// Creation, restore or pause failed.
    Failed,
    /// Removed, or a status Tether does not know.
    Gone,
}

/// A Supabase project as observed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SupabaseProject {
    /// Project ref (20 lower-case letters).
    pub id: String,
    /// Name.
    pub name: String,
    /// Organization slug.
    pub organization_slug: Option<String>,
    /// Region.
    pub region: String,
    /// Supabase's status name, verbatim.
    pub status: String,
    /// Tether's reading of it.
    pub state: ProjectState,
    /// Compute size of the primary database (`micro`, `small`, …), when the response
    /// carries it (organization lists do, single-project reads do not).
    pub instance_size: Option<String>,
}

/// The Auth settings Tether manages (`GET|PATCH /v1/projects/{ref}/config/auth`). Read:
/// what the project has (`None` where Supabase answers `null`). Update: only the fields
/// that are `Some` are sent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SupabaseAuthSettings {
    /// `site_url`.
    pub site_url: Option<String>,
    /// Additional redirect URLs (`uri_allow_list`, comma-separated in the API).
    pub additional_redirect_urls: Option<Vec<String>>,
    /// `disable_signup`.
    pub disable_signup: Option<bool>,
    /// Access token lifetime in seconds (`jwt_exp`).
    pub jwt_expiry_seconds: Option<i64>,
    /// `mailer_autoconfirm`.
    pub mailer_autoconfirm: Option<bool>,
}

/// The Data API (PostgREST) settings Tether manages (`GET|PATCH /v1/projects/{ref}/postgrest`).
/// Read: all set. Update: only the fields that are `Some` are sent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SupabaseApiSettings {
    /// Exposed schemas (`db_schema`, comma-separated in the API).
    pub schemas: Option<Vec<String>>,
    /// Extra search path (`db_extra_search_path`, comma-separated in the API).
    pub extra_search_path: Option<Vec<String>>,
    /// `max_rows`.
    pub max_rows: Option<i64>,
}

/// Splits one of Supabase's comma-separated lists, dropping blanks.
pub fn split_list(text: &str) -> Vec<String> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Health of one project service (`db`, `auth`, `rest`, …).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceHealth {
    /// Service name.
    pub name: String,
    /// `COMING_UP`, `ACTIVE_HEALTHY` or `UNHEALTHY`.
    pub status: String,
}

/// Supabase projects and their secrets.
pub trait SupabaseProjects: Send + Sync {
    /// Every project of the organization (all pages).
    fn list_projects(
        &self,
        organization: &str,
    ) -> impl Future<Output = PlatformResult<Vec<SupabaseProject>>> + Send;
    /// Reads one project.
    fn get_project(
        &self,
        project_ref: &str,
    ) -> impl Future<Output = PlatformResult<SupabaseProject>> + Send;
    /// Finds the project by name, or creates it (it then comes up asynchronously).
    fn ensure_project(
        &self,
        spec: &SupabaseProjectSpec,
    ) -> impl Future<Output = PlatformResult<Ensured<SupabaseProject>>> + Send;
    /// Renames the project.
    fn rename_project(
        &self,
        project_ref: &str,
        name: &str,
    ) -> impl Future<Output = PlatformResult<()>> + Send;
    /// Deletes the project; `Ok(false)` when it was already gone.
    fn delete_project(
        &self,
        project_ref: &str,
    ) -> impl Future<Output = PlatformResult<bool>> + Send;
    /// Changes the compute size (`micro`, `small`, …) through the `compute_instance` add-on.
    fn resize_project(
        &self,
        project_ref: &str,
        instance_size: &str,
    ) -> impl Future<Output = PlatformResult<()>> + Send;
    /// Sets a new database password.
    fn update_database_password(
        &self,
        project_ref: &str,
        password: &Token,
    ) -> impl Future<Output = PlatformResult<()>> + Send;
    /// Reads the Auth settings (the project must be healthy).
    fn get_auth_config(
        &self,
        project_ref: &str,
    ) -> impl Future<Output = PlatformResult<SupabaseAuthSettings>> + Send;
    /// Changes the Auth settings that are `Some`; returns the settings as they now are.
    fn update_auth_config(
        &self,
        project_ref: &str,
        settings: &SupabaseAuthSettings,
    ) -> impl Future<Output = PlatformResult<SupabaseAuthSettings>> + Send;
    /// Reads the Data API settings (the project must be healthy).
    fn get_api_config(
        &self,
        project_ref: &str,
    ) -> impl Future<Output = PlatformResult<SupabaseApiSettings>> + Send;
    /// Changes the Data API settings that are `Some`; returns them as they now are.
    fn update_api_config(
        &self,
        project_ref: &str,
        settings: &SupabaseApiSettings,
    ) -> impl Future<Output = PlatformResult<SupabaseApiSettings>> + Send;
    /// Pauses the project.
    fn pause_project(&self, project_ref: &str) -> impl Future<Output = PlatformResult<()>> + Send;
    /// Restores (unpauses) the project.
    fn restore_project(&self, project_ref: &str)
    -> impl Future<Output = PlatformResult<()>> + Send;
    /// Health of the core services (`db`, `auth`, `rest`, `storage`).
    fn project_health(
        &self,
        project_ref: &str,
    ) -> impl Future<Output = PlatformResult<Vec<ServiceHealth>>> + Send;
    /// The project's Edge Function secret names (values are digests, not returned).
    fn list_secrets(
        &self,
        project_ref: &str,
    ) -> impl Future<Output = PlatformResult<Vec<EnvVar>>> + Send;
    /// Creates or overwrites secrets in one call.
    fn set_secrets(
        &self,
        project_ref: &str,
        secrets: &[(String, String)],
    ) -> impl Future<Output = PlatformResult<()>> + Send;
    /// Deletes secrets by name in one call.
    fn delete_secrets(
        &self,
        project_ref: &str,
        names: &[String],
    ) -> impl Future<Output = PlatformResult<()>> + Send;
}

/// The Supabase Management API client.
#[derive(Clone)]
pub struct SupabaseClient {
    http: PlatformHttp,
    page_limit: u32,
}

impl SupabaseClient {
    /// A client sending through `http` (built for [`Platform::Supabase`]).
    pub fn new(http: PlatformHttp) -> Self {
        SupabaseClient {
            http,
            page_limit: 100,
        }
    }

    /// Sets the page size of list calls (1–100).
    pub fn with_page_limit(mut self, limit: u32) -> Self {
        self.page_limit = limit.clamp(1, 100);
        self
    }

    async fn find_project(
        &self,
        organization: &str,
        name: &str,
    ) -> PlatformResult<Option<SupabaseProject>> {
        let projects = self.list_paged(organization, Some(name)).await?;
        Ok(projects.into_iter().find(|p| p.name == name))
    }

    async fn list_paged(
        &self,
        organization: &str,
        search: Option<&str>,
    ) -> PlatformResult<Vec<SupabaseProject>> {
        let mut out = Vec::new();
        let mut offset = 0u64;
        loop {
            let mut request = ApiRequest::get(
                "list_projects",
                &["v1", "organizations", organization, "projects"],
            )
            .query("offset", offset.to_string())
            .query("limit", self.page_limit.to_string())
            .query("sort", "created_asc")
            .limited(API, "");
            if let Some(search) = search {
                request = request.query("search", search);
            }
            let page: ApiOrgProjects = self.http.json(&request).await?;
            let count = page.projects.len() as u64;
            for project in page.projects {
                let instance_size = project
                    .databases
                    .iter()
                    .find(|d| d.kind == "PRIMARY")
                    .and_then(|d| d.infra_compute_size.clone());
                out.push(SupabaseProject {
                    state: project_state(&project.status),
                    id: project.reference,
                    name: project.name,
                    organization_slug: Some(organization.to_owned()),
                    region: project.region,
                    status: project.status,
                    instance_size,
                });
            }
            offset += count;
            if count == 0 || offset >= page.pagination.count {
                return Ok(out);
            }
        }
    }
}

/// A request the adapter refuses to send.
fn invalid(operation: &'static str, reason: &str) -> PlatformError {
    PlatformError::Invalid {
        platform: Platform::Supabase,
        operation,
        status: None,
        reason: reason.to_owned(),
    }
}

fn project_state(status: &str) -> ProjectState {
    match status {
        "ACTIVE_HEALTHY" => ProjectState::Healthy,
        "ACTIVE_UNHEALTHY" => ProjectState::Unhealthy,
        "COMING_UP" | "RESTORING" | "UPGRADING" | "RESTARTING" | "RESIZING" | "UNKNOWN" => {
            ProjectState::Provisioning
        }
        "INACTIVE" | "PAUSING" | "GOING_DOWN" => ProjectState::Paused,
        "INIT_FAILED" | "RESTORE_FAILED" | "PAUSE_FAILED" => ProjectState::Failed,
        _ => ProjectState::Gone,
    }
}

#[derive(Deserialize)]
struct ApiProject {
    #[serde(rename = "ref")]
    reference: String,
    name: String,
    #[serde(default)]
    organization_slug: Option<String>,
    region: String,
    status: String,
}

impl From<ApiProject> for SupabaseProject {
    fn from(p: ApiProject) -> Self {
        SupabaseProject {
            state: project_state(&p.status),
            id: p.reference,
            name: p.name,
            organization_slug: p.organization_slug,
            region: p.region,
            status: p.status,
            instance_size: None,
        }
    }
}

#[derive(Deserialize)]
struct ApiOrgProjects {
    projects: Vec<ApiOrgProject>,
    pagination: ApiPagination,
}

#[derive(Deserialize)]
struct ApiOrgProject {
    #[serde(rename = "ref")]
    reference: String,
    name: String,
    region: String,
    status: String,
    #[serde(default)]
    databases: Vec<ApiOrgDatabase>,
}

#[derive(Deserialize)]
struct ApiOrgDatabase {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    infra_compute_size: Option<String>,
}

/// The managed part of `AuthConfigResponse` (≈240 fields, all others ignored).
#[derive(Deserialize)]
struct ApiAuthConfig {
    site_url: Option<String>,
    uri_allow_list: Option<String>,
    disable_signup: Option<bool>,
    jwt_exp: Option<i64>,
    mailer_autoconfirm: Option<bool>,
}

impl From<ApiAuthConfig> for SupabaseAuthSettings {
    fn from(c: ApiAuthConfig) -> Self {
        SupabaseAuthSettings {
            site_url: c.site_url,
            additional_redirect_urls: c.uri_allow_list.as_deref().map(split_list),
            disable_signup: c.disable_signup,
            jwt_expiry_seconds: c.jwt_exp,
            mailer_autoconfirm: c.mailer_autoconfirm,
        }
    }
}

/// The managed part of the PostgREST config (`jwt_secret`, when sent, is never read).
#[derive(Deserialize)]
struct ApiPostgrestConfig {
    db_schema: String,
    max_rows: i64,
    db_extra_search_path: String,
}

impl From<ApiPostgrestConfig> for SupabaseApiSettings {
    fn from(c: ApiPostgrestConfig) -> Self {
        SupabaseApiSettings {
            schemas: Some(split_list(&c.db_schema)),
            extra_search_path: Some(split_list(&c.db_extra_search_path)),
            max_rows: Some(c.max_rows),
        }
    }
}

/// Compute sizes that have a `compute_instance` add-on variant (`ci_<size>`).
const ADDON_SIZES: &[&str] = &[
    "micro",
    "small",
    "medium",
    "large",
    "xlarge",
    "2xlarge",
    "4xlarge",
    "8xlarge",
    "12xlarge",
    "16xlarge",
    "24xlarge",
    "24xlarge_optimized_cpu",
    "24xlarge_optimized_memory",
    "24xlarge_high_memory",
    "48xlarge",
    "48xlarge_optimized_cpu",
    "48xlarge_optimized_memory",
    "48xlarge_high_memory",
];

#[derive(Deserialize)]
struct ApiPagination {
    count: u64,
}

#[derive(Deserialize)]
struct ApiHealth {
    name: String,
    status: String,
}

#[derive(Deserialize)]
struct ApiSecret {
    name: String,
}

impl SupabaseProjects for SupabaseClient {
    async fn list_projects(&self, organization: &str) -> PlatformResult<Vec<SupabaseProject>> {
        self.list_paged(organization, None).await
    }

    async fn get_project(&self, project_ref: &str) -> PlatformResult<SupabaseProject> {
        let request =
            ApiRequest::get("get_project", &["v1", "projects", project_ref]).limited(API, "");
        let project: ApiProject = self.http.json(&request).await?;
        Ok(project.into())
    }

    async fn ensure_project(
        &self,
        spec: &SupabaseProjectSpec,
    ) -> PlatformResult<Ensured<SupabaseProject>> {
        if let Some(existing) = self
            .find_project(&spec.organization_slug, &spec.name)
            .await?
        {
            return Ok(Ensured {
                object: existing,
                created: false,
            });
        }
        let mut body = json!({
            "name": spec.name,
            "organization_slug": spec.organization_slug,
            "db_pass": spec.db_pass.expose(),
        });
        if let Some(region) = &spec.region {
            body["region_selection"] = json!({ "type": "specific", "code": region });
        }
        if let Some(size) = &spec.instance_size {
            body["desired_instance_size"] = json!(size);
        }
        let request = ApiRequest::post("create_project", &["v1", "projects"])
            .json(body)
            .limited(API, "");
        let project: ApiProject = self.http.json(&request).await?;
        Ok(Ensured {
            object: project.into(),
            created: true,
        })
    }

    async fn rename_project(&self, project_ref: &str, name: &str) -> PlatformResult<()> {
        let request = ApiRequest::new(
            Method::PATCH,
            "rename_project",
            &["v1", "projects", project_ref],
        )
        .json(json!({ "name": name }))
        .idempotent()
        .limited(API, "");
        self.http.send(&request).await.map(|_| ())
    }

    async fn delete_project(&self, project_ref: &str) -> PlatformResult<bool> {
        let request = ApiRequest::new(
            Method::DELETE,
            "delete_project",
            &["v1", "projects", project_ref],
        )
        .limited(API, "");
        match self.http.send(&request).await {
            Ok(_) => Ok(true),
            Err(PlatformError::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn resize_project(&self, project_ref: &str, instance_size: &str) -> PlatformResult<()> {
        if !ADDON_SIZES.contains(&instance_size) {
            return Err(invalid(
                "resize_project",
                &format!(
                    "instanceSize {instance_size} has no compute add-on; it can only be chosen \
                     when the project is created"
                ),
            ));
        }
        let request = ApiRequest::new(
            Method::PATCH,
            "resize_project",
            &["v1", "projects", project_ref, "billing", "addons"],
        )
        .json(json!({
            "addon_type": "compute_instance",
            "addon_variant": format!("ci_{instance_size}"),
        }))
        .idempotent()
        .limited(API, "");
        self.http.send(&request).await.map(|_| ())
    }

    async fn update_database_password(
        &self,
        project_ref: &str,
        password: &Token,
    ) -> PlatformResult<()> {
        if password.expose().chars().count() < 4 {
            return Err(invalid(
                "update_database_password",
                "the database password must have at least 4 characters",
            ));
        }
        let request = ApiRequest::new(
            Method::PATCH,
            "update_database_password",
            &["v1", "projects", project_ref, "database", "password"],
        )
        .json(json!({ "password": password.expose() }))
        .idempotent()
        .limited(API, "");
        self.http.send(&request).await.map(|_| ())
    }

    async fn get_auth_config(&self, project_ref: &str) -> PlatformResult<SupabaseAuthSettings> {
        let request = ApiRequest::get(
            "get_auth_config",
            &["v1", "projects", project_ref, "config", "auth"],
        )
        .limited(API, "");
        let config: ApiAuthConfig = self.http.json(&request).await?;
        Ok(config.into())
    }

    async fn update_auth_config(
        &self,
        project_ref: &str,
        settings: &SupabaseAuthSettings,
    ) -> PlatformResult<SupabaseAuthSettings> {
        let mut body = serde_json::Map::new();
        if let Some(url) = &settings.site_url {
            body.insert("site_url".into(), json!(url));
        }
        if let Some(urls) = &settings.additional_redirect_urls {
            body.insert("uri_allow_list".into(), json!(urls.join(",")));
        }
        if let Some(v) = settings.disable_signup {
            body.insert("disable_signup".into(), json!(v));
        }
        if let Some(v) = settings.jwt_expiry_seconds {
            if !(0..=604_800).contains(&v) {
                return Err(invalid(
                    "update_auth_config",
                    "jwt_exp must be between 0 and 604800 seconds",
                ));
            }
            body.insert("jwt_exp".into(), json!(v));
        }
        if let Some(v) = settings.mailer_autoconfirm {
            body.insert("mailer_autoconfirm".into(), json!(v));
        }
        let request = ApiRequest::new(
            Method::PATCH,
            "update_auth_config",
            &["v1", "projects", project_ref, "config", "auth"],
        )
        .json(serde_json::Value::Object(body))
        .idempotent()
        .limited(API, "");
        let config: ApiAuthConfig = self.http.json(&request).await?;
        Ok(config.into())
    }

    async fn get_api_config(&self, project_ref: &str) -> PlatformResult<SupabaseApiSettings> {
        let request = ApiRequest::get(
            "get_api_config",
            &["v1", "projects", project_ref, "postgrest"],
        )
        .limited(API, "");
        let config: ApiPostgrestConfig = self.http.json(&request).await?;
        Ok(config.into())
    }

    async fn update_api_config(
        &self,
        project_ref: &str,
        settings: &SupabaseApiSettings,
    ) -> PlatformResult<SupabaseApiSettings> {
        let mut body = serde_json::Map::new();
        if let Some(schemas) = &settings.schemas {
            body.insert("db_schema".into(), json!(schemas.join(",")));
        }
        if let Some(path) = &settings.extra_search_path {
            body.insert("db_extra_search_path".into(), json!(path.join(",")));
        }
        if let Some(rows) = settings.max_rows {
            if !(0..=1_000_000).contains(&rows) {
                return Err(invalid(
                    "update_api_config",
                    "max_rows must be between 0 and 1000000",
                ));
            }
            body.insert("max_rows".into(), json!(rows));
        }
        let request = ApiRequest::new(
            Method::PATCH,
            "update_api_config",
            &["v1", "projects", project_ref, "postgrest"],
        )
        .json(serde_json::Value::Object(body))
        .idempotent()
        .limited(API, "");
        let config: ApiPostgrestConfig = self.http.json(&request).await?;
        Ok(config.into())
    }

    async fn pause_project(&self, project_ref: &str) -> PlatformResult<()> {
        let request = ApiRequest::post("pause_project", &["v1", "projects", project_ref, "pause"])
            .idempotent()
            .limited(API, "");
        self.http.send(&request).await.map(|_| ())
    }

    async fn restore_project(&self, project_ref: &str) -> PlatformResult<()> {
        let request = ApiRequest::post(
            "restore_project",
            &["v1", "projects", project_ref, "restore"],
        )
        .idempotent()
        .limited(API, "");
        self.http.send(&request).await.map(|_| ())
    }

    async fn project_health(&self, project_ref: &str) -> PlatformResult<Vec<ServiceHealth>> {
        let mut request =
            ApiRequest::get("project_health", &["v1", "projects", project_ref, "health"])
                .limited(API, "");
        for service in ["db", "auth", "rest", "storage"] {
            request = request.query("services", service);
        }
        let health: Vec<ApiHealth> = self.http.json(&request).await?;
        Ok(health
            .into_iter()
            .map(|h| ServiceHealth {
                name: h.name,
                status: h.status,
            })
            .collect())
    }

    async fn list_secrets(&self, project_ref: &str) -> PlatformResult<Vec<EnvVar>> {
        let request = ApiRequest::get("list_secrets", &["v1", "projects", project_ref, "secrets"])
            .limited(API, "");
        let secrets: Vec<ApiSecret> = self.http.json(&request).await?;
        Ok(secrets
            .into_iter()
            .map(|s| EnvVar {
                key: s.name,
                value: None,
                secret: true,
            })
            .collect())
    }

    async fn set_secrets(
        &self,
        project_ref: &str,
        secrets: &[(String, String)],
    ) -> PlatformResult<()> {
        if let Some((name, _)) = secrets.iter().find(|(n, _)| n.starts_with("SUPABASE_")) {
            return Err(PlatformError::Invalid {
                platform: Platform::Supabase,
                operation: "set_secrets",
                status: None,
                reason: format!("secret names must not start with SUPABASE_ ({name})"),
            });
        }
        let body: Vec<_> = secrets
            .iter()
            .map(|(name, value)| json!({ "name": name, "value": value }))
            .collect();
        // Writing the same values again gives the same state: safe to retry.
        let request = ApiRequest::post("set_secrets", &["v1", "projects", project_ref, "secrets"])
            .json(json!(body))
            .idempotent()
            .limited(API, "");
        self.http.send(&request).await.map(|_| ())
    }

    async fn delete_secrets(&self, project_ref: &str, names: &[String]) -> PlatformResult<()> {
        let request = ApiRequest::new(
            Method::DELETE,
            "delete_secrets",
            &["v1", "projects", project_ref, "secrets"],
        )
        .json(json!(names))
        .limited(API, "");
        self.http.send(&request).await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_documented_project_status_has_a_state() {
        for (status, state) in [
            ("COMING_UP", ProjectState::Provisioning),
            ("ACTIVE_HEALTHY", ProjectState::Healthy),
            ("INIT_FAILED", ProjectState::Failed),
            ("INACTIVE", ProjectState::Paused),
            ("REMOVED", ProjectState::Gone),
        ] {
            assert_eq!(project_state(status), state, "{status}");
        }
    }

    #[test]
    fn comma_separated_lists_are_split_and_trimmed() {
        assert_eq!(
            split_list("public, graphql_public,,"),
            ["public", "graphql_public"]
        );
        assert!(split_list("").is_empty());
    }
}
