//! Render imitation: services of every kind (with their `serviceDetails`, scaling), env vars,
//! custom domains, deploys (with their state machine `created → build_in_progress →
//! update_in_progress → live`, or `build_failed`, or `update_failed` for a version that
//! builds but does not start (`Faults::crashing_sources`); a deploy triggered while another runs
//! answers 202 and waits `queued`), rollback, key-value stores and Postgres databases (each
//! `creating → available`), and `cursor` pagination, with the shapes of
//! `render/openapi.json`. Dashboard edits (`/_sandbox/edit`) reach objects `service`,
//! `envVar`, `customDomain`, `keyValue` and `postgres`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde_json::{Value, json};

use super::{Common, Imitation, set_field, timestamp, url_host};

/// Simulated phase lengths of a deploy.
const CREATED: Duration = Duration::from_secs(1);
const BUILD: Duration = Duration::from_secs(9);
const UPDATE: Duration = Duration::from_secs(5);
/// A deploy from trigger to `live`.
pub(crate) const DEPLOY: Duration = CREATED.saturating_add(BUILD).saturating_add(UPDATE);
/// Simulated time a new key-value store stays `creating`.
const KEY_VALUE_CREATE: Duration = Duration::from_secs(20);
/// Simulated time a new Postgres database stays `creating`.
const POSTGRES_CREATE: Duration = Duration::from_secs(60);

#[derive(Clone)]
struct Render {
    common: Arc<Common>,
    state: Arc<Mutex<RenderState>>,
}

#[derive(Default)]
struct RenderState {
    seq: u64,
    services: BTreeMap<String, Service>,
    key_values: BTreeMap<String, Datastore>,
    postgres: BTreeMap<String, Datastore>,
}

/// A key-value store or Postgres database: its JSON (with the status it has once created)
/// and when it stops being `creating`.
struct Datastore {
    json: Value,
    available_at: Instant,
}

impl Datastore {
    fn view(&self) -> Value {
        let mut json = self.json.clone();
        if Instant::now() < self.available_at {
            json["status"] = json!("creating");
        }
        json
    }
}

struct Service {
    json: Value,
    env: BTreeMap<String, String>,
    domains: BTreeMap<String, Value>,
    deploys: Vec<Deploy>,
}

struct Deploy {
    id: String,
    image: Option<String>,
    commit: Option<String>,
    trigger: &'static str,
    created_at: String,
    /// Wall instant the build starts (later than creation when queued behind another).
    start: Instant,
    /// The build fails (`build_failed`).
    fails: bool,
    /// The build succeeds, the new instance never becomes healthy (`update_failed`).
    crashes: bool,
}

impl Deploy {
    /// Whether the deploy ends with something running.
    fn succeeds(&self) -> bool {
        !self.fails && !self.crashes
    }
}

impl RenderState {
    fn next_id(&mut self, prefix: &str) -> String {
        self.seq += 1;
        format!("{prefix}-{:020}", self.seq)
    }
}

pub(crate) fn router(common: Arc<Common>) -> (Router, Arc<dyn Imitation>) {
    let render = Render {
        common,
        state: Arc::new(Mutex::new(RenderState::default())),
    };
    let router = Router::new()
        .route("/services", get(list_services).post(create_service))
        .route(
            "/services/{id}",
            get(get_service).patch(patch_service).delete(delete_service),
        )
        .route("/services/{id}/env-vars", get(list_env_vars))
        .route(
            "/services/{id}/env-vars/{key}",
            put(put_env_var).delete(delete_env_var),
        )
        .route(
            "/services/{id}/custom-domains",
            get(list_domains).post(add_domain),
        )
        .route(
            "/services/{id}/custom-domains/{name}",
            axum::routing::delete(delete_domain),
        )
        .route(
            "/services/{id}/deploys",
            get(list_deploys).post(trigger_deploy),
        )
        .route("/services/{id}/deploys/{deploy}", get(get_deploy))
        .route("/services/{id}/rollback", post(rollback))
        .route("/services/{id}/scale", post(scale_service))
        .route("/key-value", get(list_key_values).post(create_key_value))
        .route(
            "/key-value/{id}",
            get(get_key_value)
                .patch(patch_key_value)
                .delete(delete_key_value),
        )
        .route("/postgres", get(list_postgres).post(create_postgres))
        .route(
            "/postgres/{id}",
            get(get_postgres)
                .patch(patch_postgres)
                .delete(delete_postgres),
        )
        .with_state(render.clone());
    (router, Arc::new(render))
}

impl Render {
    fn lock(&self) -> std::sync::MutexGuard<'_, RenderState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn not_found(&self) -> Response {
        self.common
            .error(StatusCode::NOT_FOUND, "not_found", "Not Found")
    }

    fn bad_request(&self, message: &str) -> Response {
        self.common
            .error(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    fn wall(&self, simulated: Duration) -> Duration {
        self.common.wall(simulated)
    }

    /// The status of `deploy` now, given the deploys after it.
    fn status(&self, deploy: &Deploy, later: &[Deploy]) -> &'static str {
        let now = Instant::now();
        if now < deploy.start {
            return "queued";
        }
        let t = self.common.sim_elapsed(deploy.start);
        if t < CREATED {
            return "created";
        }
        if t < CREATED + BUILD {
            return "build_in_progress";
        }
        if deploy.fails {
            return "build_failed";
        }
        if t < CREATED + BUILD + UPDATE {
            return "update_in_progress";
        }
        if deploy.crashes {
            return "update_failed";
        }
        let superseded = later
            .iter()
            .any(|d| d.succeeds() && now >= d.start + self.wall(CREATED + BUILD + UPDATE));
        if superseded { "deactivated" } else { "live" }
    }

    fn end(&self, deploy: &Deploy) -> Instant {
        let length = if deploy.fails {
            CREATED + BUILD
        } else {
            CREATED + BUILD + UPDATE
        };
        deploy.start + self.wall(length)
    }

    fn deploy_json(&self, service: &Service, index: usize) -> Value {
        let deploy = &service.deploys[index];
        let status = self.status(deploy, &service.deploys[index + 1..]);
        let mut out = json!({
            "id": deploy.id,
            "status": status,
            "trigger": deploy.trigger,
            "createdAt": deploy.created_at,
            "updatedAt": timestamp(),
        });
        if let Some(image) = &deploy.image {
            out["image"] =
                json!({ "ref": image, "sha": format!("sha256:{:x}", super::digest(image)) });
        }
        if let Some(commit) = &deploy.commit {
            out["commit"] = json!({ "id": commit, "message": "sandbox commit" });
        }
        if status != "queued" {
            out["startedAt"] = json!(deploy.created_at);
        }
        if matches!(
            status,
            "live" | "deactivated" | "build_failed" | "update_failed"
        ) {
            out["finishedAt"] = json!(timestamp());
        }
        out
    }

    fn new_deploy(
        &self,
        state: &mut RenderState,
        id: &str,
        image: Option<String>,
        commit: Option<String>,
        trigger: &'static str,
    ) -> Option<(usize, bool)> {
        let deploy_id = state.next_id("dep");
        let now = Instant::now();
        let service = state.services.get(id)?;
        let busy_until = service
            .deploys
            .iter()
            .map(|d| self.end(d))
            .max()
            .filter(|end| *end > now);
        let sources = [image.as_deref(), commit.as_deref()];
        let fails = sources
            .into_iter()
            .flatten()
            .any(|s| self.common.source_fails(s));
        let crashes = sources
            .into_iter()
            .flatten()
            .any(|s| self.common.source_crashes(s));
        let service = state.services.get_mut(id)?;
        service.deploys.push(Deploy {
            id: deploy_id,
            image,
            commit,
            trigger,
            created_at: timestamp(),
            start: busy_until.unwrap_or(now),
            fails,
            crashes,
        });
        Some((service.deploys.len() - 1, busy_until.is_some()))
    }
}

impl Imitation for Render {
    fn classify(&self, method: &str, path: &str) -> Vec<(&'static str, String)> {
        if method == "GET" {
            return vec![("read", String::new())];
        }
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        match (method, segments.as_slice()) {
            ("POST", ["services"]) => {
                vec![("write", String::new()), ("service_create", String::new())]
            }
            ("PATCH", ["services", id])
            | (
                "POST",
                [
                    "services",
                    id,
                    "deploys" | "rollback" | "suspend" | "resume",
                ],
            ) => vec![
                ("write", String::new()),
                ("service_action", (*id).to_owned()),
            ],
            _ => vec![("write", String::new())],
        }
    }

    fn edit(&self, object: &str, name: &str, field: &str, value: Value) -> bool {
        let mut state = self.lock();
        let named = |json: &Value| json["name"] == name || json["id"] == name;
        match object {
            "keyValue" => {
                return state
                    .key_values
                    .values_mut()
                    .find(|k| named(&k.json))
                    .is_some_and(|k| set_field(&mut k.json, field, value));
            }
            "postgres" => {
                return state
                    .postgres
                    .values_mut()
                    .find(|p| named(&p.json))
                    .is_some_and(|p| set_field(&mut p.json, field, value));
            }
            _ => {}
        }
        let domain_id = state.next_id("cdm");
        let Some(service) = state.services.values_mut().find(|s| named(&s.json)) else {
            return false;
        };
        match object {
            // A dashboard edit is an update: it moves `updatedAt` (unless that is the field).
            "service" => {
                let set = set_field(&mut service.json, field, value);
                if set && field != "updatedAt" {
                    service.json["updatedAt"] = json!(timestamp());
                }
                set
            }
            "envVar" => match value.as_str() {
                Some(v) => {
                    service.env.insert(field.to_owned(), v.to_owned());
                    true
                }
                None => service.env.remove(field).is_some(),
            },
            // `field` is the domain name; null detaches it, anything else attaches it.
            "customDomain" => {
                let key = service
                    .domains
                    .iter()
                    .find(|(_, d)| d["name"] == field)
                    .map(|(k, _)| k.clone());
                match (value.is_null(), key) {
                    (true, Some(key)) => service.domains.remove(&key).is_some(),
                    (true, None) => false,
                    (false, Some(_)) => true,
                    (false, None) => {
                        let domain = domain_json(&domain_id, field, &service.json);
                        service.domains.insert(domain_id, domain);
                        true
                    }
                }
            }
            _ => false,
        }
    }

    fn app_for_host(&self, host: &str) -> Option<String> {
        let state = self.lock();
        state
            .services
            .values()
            .find(|s| {
                s.json["serviceDetails"]["url"].as_str().and_then(url_host) == Some(host)
                    || s.domains.values().any(|d| d["name"] == host)
            })
            .and_then(|s| s.json["name"].as_str().map(str::to_owned))
    }

    fn live_source(&self, name: &str) -> Option<String> {
        let state = self.lock();
        let service = state.services.values().find(|s| s.json["name"] == name)?;
        (0..service.deploys.len()).find_map(|i| {
            let d = &service.deploys[i];
            (self.status(d, &service.deploys[i + 1..]) == "live")
                .then(|| d.image.clone().or_else(|| d.commit.clone()))
                .flatten()
        })
    }
}

type Params = Query<Vec<(String, String)>>;

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// One page of `items` (ordered by key) after `cursor`, as `[{<field>: item, cursor}]`;
/// only the page's items are turned into JSON (`view`), so a page costs the same however
/// long the list is. Call with the state locked; answer once it is unlocked.
fn page<K: AsRef<str>, T>(
    params: &[(String, String)],
    field: &str,
    items: Vec<(K, T)>,
    view: impl Fn(T) -> Value,
) -> Result<Vec<Value>, &'static str> {
    let limit = match param(params, "limit").map(str::parse::<usize>) {
        None => 20,
        Some(Ok(n)) if (1..=100).contains(&n) => n,
        Some(_) => return Err("limit must be between 1 and 100"),
    };
    let start = match param(params, "cursor") {
        Some(cursor) => match items.iter().position(|(k, _)| k.as_ref() == cursor) {
            Some(i) => i + 1,
            None => return Err("invalid cursor"),
        },
        None => 0,
    };
    Ok(items
        .into_iter()
        .skip(start)
        .take(limit)
        .map(|(cursor, item)| json!({ field: view(item), "cursor": cursor.as_ref() }))
        .collect())
}

impl Render {
    /// The answer to a list request: the page, or why the request is bad.
    fn paged(&self, page: Result<Vec<Value>, &'static str>) -> Response {
        match page {
            Ok(items) => axum::Json(items).into_response(),
            Err(message) => self.bad_request(message),
        }
    }
}

fn csv(params: &[(String, String)], name: &str) -> Option<Vec<String>> {
    param(params, name).map(|v| v.split(',').map(str::to_owned).collect())
}

/// The `createdBefore`/`createdAfter`/`updatedBefore`/`updatedAfter` filters of a list: the
/// field each compares, whether it keeps later times, and the bound.
type TimeFilters = Vec<(&'static str, bool, jiff::Timestamp)>;

fn time_filters(params: &[(String, String)]) -> Result<TimeFilters, String> {
    [
        ("createdBefore", "createdAt", false),
        ("createdAfter", "createdAt", true),
        ("updatedBefore", "updatedAt", false),
        ("updatedAfter", "updatedAt", true),
    ]
    .into_iter()
    .filter_map(|(name, field, after)| {
        param(params, name).map(|text| {
            text.parse::<jiff::Timestamp>()
                .map(|bound| (field, after, bound))
                .map_err(|_| format!("{name} must be an ISO 8601 timestamp"))
        })
    })
    .collect()
}

/// Whether `json` passes every time filter (an object without the field passes none).
fn in_time(json: &Value, filters: &TimeFilters) -> bool {
    filters.iter().all(|(field, after, bound)| {
        json[*field]
            .as_str()
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
            .is_some_and(|t| if *after { t > *bound } else { t < *bound })
    })
}

async fn list_services(State(r): State<Render>, Query(params): Params) -> Response {
    let names = csv(&params, "name");
    let owners = csv(&params, "ownerId");
    let times = match time_filters(&params) {
        Ok(times) => times,
        Err(message) => return r.bad_request(&message),
    };
    let page = {
        let state = r.lock();
        let items: Vec<(&String, &Service)> = state
            .services
            .iter()
            .filter(|(_, s)| {
                names
                    .as_ref()
                    .is_none_or(|n| n.iter().any(|n| s.json["name"] == n.as_str()))
                    && owners
                        .as_ref()
                        .is_none_or(|o| o.iter().any(|o| s.json["ownerId"] == o.as_str()))
                    && in_time(&s.json, &times)
            })
            .collect();
        page(&params, "service", items, |s| s.json.clone())
    };
    r.paged(page)
}

/// `serviceDetails` of a new service of `kind` from the request's `serviceDetails`
/// (`…DetailsPOST`), filled with Render's defaults, in the shape of `…Details`.
fn details(kind: &str, requested: &Value, slug: &str) -> Value {
    let text = |field: &str, default: &str| -> Value {
        json!(requested[field].as_str().unwrap_or(default))
    };
    if kind == "static_site" {
        return json!({
            "buildCommand": text("buildCommand", ""),
            "publishPath": text("publishPath", "public"),
            "url": format!("https://{slug}.onrender.com"),
            "buildPlan": "starter",
            "pullRequestPreviewsEnabled": "no",
            "ipAllowList": requested.get("ipAllowList").cloned().unwrap_or(json!([])),
        });
    }
    let runtime = requested["runtime"].as_str().unwrap_or("docker");
    let env = &requested["envSpecificDetails"];
    let env_specific = if matches!(runtime, "docker" | "image") {
        json!({
            "dockerCommand": env["dockerCommand"].as_str().unwrap_or(""),
            "dockerContext": env["dockerContext"].as_str().unwrap_or("."),
            "dockerfilePath": env["dockerfilePath"].as_str().unwrap_or("./Dockerfile"),
        })
    } else {
        json!({
            "buildCommand": env["buildCommand"].as_str().unwrap_or(""),
            "startCommand": env["startCommand"].as_str().unwrap_or(""),
        })
    };
    let mut details = json!({
        "env": runtime,
        "runtime": runtime,
        "envSpecificDetails": env_specific,
        "plan": text("plan", "starter"),
        "region": text("region", "oregon"),
        "buildPlan": "starter",
    });
    if kind == "cron_job" {
        details["schedule"] = text("schedule", "");
        return details;
    }
    details["numInstances"] = json!(requested["numInstances"].as_i64().unwrap_or(1));
    if kind != "background_worker" {
        details["openPorts"] = json!([{ "port": 10000, "protocol": "TCP" }]);
        details["url"] = json!(if kind == "web_service" {
            format!("https://{slug}.onrender.com")
        } else {
            format!("{slug}:10000")
        });
    }
    if kind == "web_service" {
        details["healthCheckPath"] = text("healthCheckPath", "");
    }
    details
}

async fn create_service(State(r): State<Render>, body: axum::body::Bytes) -> Response {
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return r.bad_request("invalid JSON body");
    };
    let (Some(kind), Some(name), Some(owner)) = (
        body["type"].as_str(),
        body["name"].as_str(),
        body["ownerId"].as_str(),
    ) else {
        return r.bad_request("type, name and ownerId are required");
    };
    if !matches!(
        kind,
        "web_service" | "private_service" | "background_worker" | "static_site" | "cron_job"
    ) {
        return r.bad_request("invalid service type");
    }
    let sd = &body["serviceDetails"];
    if kind == "cron_job" && sd["schedule"].as_str().is_none() {
        return r.bad_request("serviceDetails.schedule is required for cron jobs");
    }
    if kind == "static_site" && body["repo"].as_str().is_none() {
        return r.bad_request("repo is required for static sites");
    }
    if let Some(region) = sd["region"].as_str()
        && !REGIONS.contains(&region)
    {
        return r.bad_request("invalid region");
    }
    let mut state = r.lock();
    if state
        .services
        .values()
        .any(|s| s.json["name"] == name && s.json["ownerId"] == owner)
    {
        return r.common.error(
            StatusCode::CONFLICT,
            "conflict",
            "service name already in use",
        );
    }
    let id = state.next_id("srv");
    let slug = format!("{name}-{}", &id[id.len() - 4..]);
    let now = timestamp();
    let image = body["image"]["imagePath"].as_str().map(str::to_owned);
    let mut json = json!({
        "id": id,
        "name": name,
        "ownerId": owner,
        "type": kind,
        "createdAt": now,
        "updatedAt": now,
        "dashboardUrl": format!("https://dashboard.render.com/web/{id}"),
        "suspended": "not_suspended",
        "suspenders": [],
        "autoDeploy": body["autoDeploy"].as_str().unwrap_or("yes"),
        "notifyOnFail": "default",
        "slug": slug,
        "rootDir": body["rootDir"].as_str().unwrap_or(""),
        "serviceDetails": details(kind, sd, &slug),
    });
    if let Some(image) = &image {
        json["imagePath"] = json!(image);
    }
    for field in ["repo", "branch"] {
        if let Some(v) = body[field].as_str() {
            json[field] = json!(v);
        }
    }
    let mut env = BTreeMap::new();
    if let Some(vars) = body["envVars"].as_array() {
        for var in vars {
            if let (Some(k), Some(v)) = (var["key"].as_str(), var["value"].as_str()) {
                env.insert(k.to_owned(), v.to_owned());
            }
        }
    }
    state.services.insert(
        id.clone(),
        Service {
            json: json.clone(),
            env,
            domains: BTreeMap::new(),
            deploys: Vec::new(),
        },
    );
    let commit = body["branch"].as_str().map(|b| format!("{b}-head"));
    let deploy_id = r
        .new_deploy(&mut state, &id, image, commit, "api")
        .and_then(|(i, _)| state.services.get(&id).map(|s| s.deploys[i].id.clone()));
    (
        StatusCode::CREATED,
        axum::Json(json!({ "service": json, "deployId": deploy_id })),
    )
        .into_response()
}

async fn get_service(State(r): State<Render>, Path(id): Path<String>) -> Response {
    match r.lock().services.get(&id) {
        Some(s) => axum::Json(s.json.clone()).into_response(),
        None => r.not_found(),
    }
}

/// `serviceDetails` fields a PATCH may change (`…DetailsPATCH`); region and instance count
/// are not among them (Render ignores them there).
const PATCHABLE_DETAILS: &[&str] = &[
    "plan",
    "runtime",
    "healthCheckPath",
    "schedule",
    "publishPath",
    "buildCommand",
    "ipAllowList",
    "pullRequestPreviewsEnabled",
    "maxShutdownDelaySeconds",
    "preDeployCommand",
];

async fn patch_service(
    State(r): State<Render>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return r.bad_request("invalid JSON body");
    };
    let mut state = r.lock();
    let Some(service) = state.services.get_mut(&id) else {
        return r.not_found();
    };
    for field in ["name", "branch", "repo", "autoDeploy", "rootDir"] {
        if let Some(v) = body.get(field) {
            service.json[field] = v.clone();
        }
    }
    if let Some(path) = body["image"]["imagePath"].as_str() {
        service.json["imagePath"] = json!(path);
    }
    if let Some(sd) = body["serviceDetails"].as_object() {
        let current = &mut service.json["serviceDetails"];
        for (k, v) in sd {
            if PATCHABLE_DETAILS.contains(&k.as_str()) {
                current[k] = v.clone();
            }
        }
        if let Some(runtime) = sd.get("runtime").and_then(Value::as_str) {
            current["env"] = json!(runtime);
        }
        // A runtime switch between native and docker/image changes the details' shape.
        let docker = matches!(current["runtime"].as_str(), Some("docker" | "image"));
        let env = &mut current["envSpecificDetails"];
        let shaped_docker = env.get("dockerCommand").is_some();
        if env.is_object() && docker != shaped_docker {
            *env = if docker {
                json!({"dockerCommand": "", "dockerContext": ".", "dockerfilePath": "./Dockerfile"})
            } else {
                json!({"buildCommand": "", "startCommand": ""})
            };
        }
        if let (Some(changes), Some(env)) = (
            sd.get("envSpecificDetails").and_then(Value::as_object),
            current["envSpecificDetails"].as_object_mut(),
        ) {
            for (k, v) in changes {
                // Only the fields of the shape the runtime has.
                if env.contains_key(k) {
                    env.insert(k.clone(), v.clone());
                }
            }
        }
    }
    service.json["updatedAt"] = json!(timestamp());
    axum::Json(service.json.clone()).into_response()
}

async fn scale_service(
    State(r): State<Render>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let Some(count) = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|b| b["numInstances"].as_i64())
    else {
        return r.bad_request("numInstances is required");
    };
    if !(1..=100).contains(&count) {
        return r.bad_request("numInstances must be between 1 and 100");
    }
    let mut state = r.lock();
    let Some(service) = state.services.get_mut(&id) else {
        return r.not_found();
    };
    if matches!(
        service.json["type"].as_str(),
        Some("cron_job" | "static_site")
    ) {
        return r.bad_request("this service type cannot be scaled");
    }
    service.json["serviceDetails"]["numInstances"] = json!(count);
    StatusCode::ACCEPTED.into_response()
}

async fn delete_service(State(r): State<Render>, Path(id): Path<String>) -> Response {
    match r.lock().services.remove(&id) {
        Some(_) => StatusCode::NO_CONTENT.into_response(),
        None => r.not_found(),
    }
}

async fn list_env_vars(
    State(r): State<Render>,
    Path(id): Path<String>,
    Query(params): Params,
) -> Response {
    let page = {
        let state = r.lock();
        let Some(service) = state.services.get(&id) else {
            return r.not_found();
        };
        let items: Vec<(&String, (&String, &String))> =
            service.env.iter().map(|(k, v)| (k, (k, v))).collect();
        page(
            &params,
            "envVar",
            items,
            |(k, v)| json!({ "key": k, "value": v }),
        )
    };
    r.paged(page)
}

async fn put_env_var(
    State(r): State<Render>,
    Path((id, key)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Response {
    let value = match serde_json::from_slice::<Value>(&body) {
        Ok(body) => match (body["value"].as_str(), body["generateValue"].as_bool()) {
            (Some(v), _) => v.to_owned(),
            (None, Some(true)) => uuid::Uuid::new_v4().simple().to_string(),
            _ => return r.bad_request("value or generateValue is required"),
        },
        Err(_) => return r.bad_request("invalid JSON body"),
    };
    let mut state = r.lock();
    let Some(service) = state.services.get_mut(&id) else {
        return r.not_found();
    };
    service.env.insert(key.clone(), value.clone());
    axum::Json(json!({ "key": key, "value": value })).into_response()
}

async fn delete_env_var(
    State(r): State<Render>,
    Path((id, key)): Path<(String, String)>,
) -> Response {
    let mut state = r.lock();
    let Some(service) = state.services.get_mut(&id) else {
        return r.not_found();
    };
    match service.env.remove(&key) {
        Some(_) => StatusCode::NO_CONTENT.into_response(),
        None => r.not_found(),
    }
}

async fn list_domains(
    State(r): State<Render>,
    Path(id): Path<String>,
    Query(params): Params,
) -> Response {
    let page = {
        let state = r.lock();
        let Some(service) = state.services.get(&id) else {
            return r.not_found();
        };
        let items: Vec<(&String, &Value)> = service.domains.iter().collect();
        page(&params, "customDomain", items, Value::clone)
    };
    r.paged(page)
}

async fn add_domain(
    State(r): State<Render>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let Some(name) = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|b| b["name"].as_str().map(str::to_owned))
    else {
        return r.bad_request("name is required");
    };
    let mut state = r.lock();
    let domain_id = state.next_id("cdm");
    let Some(service) = state.services.get_mut(&id) else {
        return r.not_found();
    };
    if service.domains.values().any(|d| d["name"] == name.as_str()) {
        return r
            .common
            .error(StatusCode::CONFLICT, "conflict", "domain already added");
    }
    let domain = domain_json(&domain_id, &name, &service.json);
    service.domains.insert(domain_id, domain.clone());
    (StatusCode::CREATED, axum::Json(json!([domain]))).into_response()
}

fn domain_json(domain_id: &str, name: &str, service: &Value) -> Value {
    let apex = name.matches('.').count() == 1;
    json!({
        "id": domain_id,
        "name": name,
        "domainType": if apex { "apex" } else { "subdomain" },
        "publicSuffix": name.rsplit('.').next().unwrap_or(""),
        "redirectForName": "",
        "verificationStatus": "unverified",
        "createdAt": timestamp(),
        "server": { "id": service["id"], "name": service["name"] },
    })
}

async fn delete_domain(
    State(r): State<Render>,
    Path((id, name)): Path<(String, String)>,
) -> Response {
    let mut state = r.lock();
    let Some(service) = state.services.get_mut(&id) else {
        return r.not_found();
    };
    let key = service
        .domains
        .iter()
        .find(|(k, d)| **k == name || d["name"] == name.as_str())
        .map(|(k, _)| k.clone());
    match key.and_then(|k| service.domains.remove(&k)) {
        Some(_) => StatusCode::NO_CONTENT.into_response(),
        None => r.not_found(),
    }
}

async fn trigger_deploy(
    State(r): State<Render>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let body = if body.is_empty() {
        json!({})
    } else {
        match serde_json::from_slice::<Value>(&body) {
            Ok(b) => b,
            Err(_) => return r.bad_request("invalid JSON body"),
        }
    };
    let mut state = r.lock();
    let Some(service) = state.services.get(&id) else {
        return r.not_found();
    };
    let image = body["imageUrl"]
        .as_str()
        .map(str::to_owned)
        .or_else(|| service.json["imagePath"].as_str().map(str::to_owned));
    let commit = body["commitId"].as_str().map(str::to_owned).or_else(|| {
        service.json["branch"]
            .as_str()
            .filter(|_| image.is_none())
            .map(|b| format!("{b}-head"))
    });
    if let Some(image) = body["imageUrl"].as_str()
        && let Some(service) = state.services.get_mut(&id)
    {
        service.json["imagePath"] = json!(image);
    }
    let Some((index, queued)) = r.new_deploy(&mut state, &id, image, commit, "api") else {
        return r.not_found();
    };
    if queued {
        return StatusCode::ACCEPTED.into_response();
    }
    match state.services.get(&id) {
        Some(service) => (
            StatusCode::CREATED,
            axum::Json(r.deploy_json(service, index)),
        )
            .into_response(),
        None => r.not_found(),
    }
}

async fn list_deploys(
    State(r): State<Render>,
    Path(id): Path<String>,
    Query(params): Params,
) -> Response {
    let statuses = csv(&params, "status");
    let items: Vec<(String, Value)> = {
        let state = r.lock();
        let Some(service) = state.services.get(&id) else {
            return r.not_found();
        };
        (0..service.deploys.len())
            .rev()
            .map(|i| (service.deploys[i].id.clone(), r.deploy_json(service, i)))
            .filter(|(_, d)| {
                statuses
                    .as_ref()
                    .is_none_or(|s| s.iter().any(|s| d["status"] == s.as_str()))
            })
            .collect()
    };
    r.paged(page(&params, "deploy", items, |d| d))
}

async fn get_deploy(
    State(r): State<Render>,
    Path((id, deploy)): Path<(String, String)>,
) -> Response {
    let state = r.lock();
    let Some(service) = state.services.get(&id) else {
        return r.not_found();
    };
    match service.deploys.iter().position(|d| d.id == deploy) {
        Some(i) => axum::Json(r.deploy_json(service, i)).into_response(),
        None => r.not_found(),
    }
}

async fn rollback(
    State(r): State<Render>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let Some(target) = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|b| b["deployId"].as_str().map(str::to_owned))
    else {
        return r.bad_request("deployId is required");
    };
    let mut state = r.lock();
    let Some(service) = state.services.get(&id) else {
        return r.not_found();
    };
    let Some(old) = service.deploys.iter().find(|d| d.id == target) else {
        return r.not_found();
    };
    if !old.succeeds() {
        return r.bad_request("cannot roll back to a failed deploy");
    }
    let (image, commit) = (old.image.clone(), old.commit.clone());
    let Some((index, _)) = r.new_deploy(&mut state, &id, image, commit, "rollback") else {
        return r.not_found();
    };
    match state.services.get(&id) {
        Some(service) => (
            StatusCode::CREATED,
            axum::Json(r.deploy_json(service, index)),
        )
            .into_response(),
        None => r.not_found(),
    }
}

/// Render's regions (`region` enum).
const REGIONS: &[&str] = &["frankfurt", "oregon", "ohio", "singapore", "virginia"];
/// `keyValuePlan`.
const KEY_VALUE_PLANS: &[&str] = &["free", "starter", "standard", "pro", "pro_plus", "custom"];
/// `maxmemoryPolicy`.
const MAXMEMORY_POLICIES: &[&str] = &[
    "noeviction",
    "allkeys_lfu",
    "allkeys_lru",
    "allkeys_random",
    "volatile_lfu",
    "volatile_lru",
    "volatile_random",
    "volatile_ttl",
];
/// `postgresVersion`.
const POSTGRES_VERSIONS: &[&str] = &["11", "12", "13", "14", "15", "16", "17", "18"];

/// Which collection a datastore handler serves.
#[derive(Clone, Copy)]
enum Store {
    KeyValue,
    Postgres,
}

impl Store {
    fn map(self, state: &mut RenderState) -> &mut BTreeMap<String, Datastore> {
        match self {
            Store::KeyValue => &mut state.key_values,
            Store::Postgres => &mut state.postgres,
        }
    }

    /// The list wrapper's field (`keyValueWithCursor`, `postgresWithCursor`).
    fn field(self) -> &'static str {
        match self {
            Store::KeyValue => "keyValue",
            Store::Postgres => "postgres",
        }
    }
}

fn owner_json(id: &str) -> Value {
    json!({
        "id": id,
        "name": "Sandbox workspace",
        "email": "owner@sandbox.invalid",
        "type": if id.starts_with("usr-") { "user" } else { "team" },
    })
}

/// `ipAllowList` from a request: a list of `{cidrBlock, description}` (description
/// defaults to empty), or `None` when malformed.
fn allow_list(value: &Value) -> Option<Value> {
    let Some(items) = value.as_array() else {
        return value.is_null().then(|| json!([]));
    };
    items
        .iter()
        .map(|item| {
            let block = item["cidrBlock"].as_str()?;
            Some(json!({
                "cidrBlock": block,
                "description": item["description"].as_str().unwrap_or(""),
            }))
        })
        .collect::<Option<Vec<_>>>()
        .map(Value::from)
}

async fn list_datastores(r: Render, store: Store, params: Vec<(String, String)>) -> Response {
    let names = csv(&params, "name");
    let owners = csv(&params, "ownerId");
    let regions = csv(&params, "region");
    let page = {
        let mut state = r.lock();
        let items: Vec<_> = store
            .map(&mut state)
            .iter()
            .filter(|(_, d)| {
                let matches = |filter: &Option<Vec<String>>, value: &Value| {
                    filter
                        .as_ref()
                        .is_none_or(|f| f.iter().any(|f| value == f.as_str()))
                };
                matches(&names, &d.json["name"])
                    && matches(&owners, &d.json["owner"]["id"])
                    && matches(&regions, &d.json["region"])
            })
            .collect();
        page(&params, store.field(), items, |d| d.view())
    };
    r.paged(page)
}

fn get_datastore(r: &Render, store: Store, id: &str) -> Response {
    let mut state = r.lock();
    match store.map(&mut state).get(id) {
        Some(d) => {
            let mut view = d.view();
            // The detail schemas carry no dashboard URL for key-value stores.
            if let (Store::KeyValue, Some(map)) = (store, view.as_object_mut()) {
                map.remove("dashboardUrl");
            }
            axum::Json(view).into_response()
        }
        None => r.not_found(),
    }
}

fn delete_datastore(r: &Render, store: Store, id: &str) -> Response {
    let mut state = r.lock();
    match store.map(&mut state).remove(id) {
        Some(_) => StatusCode::NO_CONTENT.into_response(),
        None => r.not_found(),
    }
}

/// Common checks of a create body: what is wrong with it, if anything.
fn check_create(body: &Value) -> Option<&'static str> {
    if body["name"].as_str().is_none()
        || body["ownerId"].as_str().is_none()
        || body["plan"].as_str().is_none()
    {
        return Some("name, ownerId and plan are required");
    }
    if let Some(region) = body.get("region")
        && !region.as_str().is_some_and(|r| REGIONS.contains(&r))
    {
        return Some("invalid region");
    }
    None
}

/// Whether the workspace already has a datastore called like the create `body` asks (the
/// sandbox keeps names unique, so a create retried after a lost answer is a conflict).
fn name_taken(state: &mut RenderState, store: Store, body: &Value) -> bool {
    store
        .map(state)
        .values()
        .any(|d| d.json["name"] == body["name"] && d.json["owner"]["id"] == body["ownerId"])
}

fn name_conflict(r: &Render) -> Response {
    r.common
        .error(StatusCode::CONFLICT, "conflict", "name already in use")
}

async fn list_key_values(State(r): State<Render>, Query(params): Params) -> Response {
    list_datastores(r, Store::KeyValue, params).await
}

async fn get_key_value(State(r): State<Render>, Path(id): Path<String>) -> Response {
    get_datastore(&r, Store::KeyValue, &id)
}

async fn delete_key_value(State(r): State<Render>, Path(id): Path<String>) -> Response {
    delete_datastore(&r, Store::KeyValue, &id)
}

async fn create_key_value(State(r): State<Render>, body: axum::body::Bytes) -> Response {
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return r.bad_request("invalid JSON body");
    };
    if let Some(problem) = check_create(&body) {
        return r.bad_request(problem);
    }
    if !body["plan"]
        .as_str()
        .is_some_and(|p| KEY_VALUE_PLANS.contains(&p))
    {
        return r.bad_request("invalid plan");
    }
    let policy = body["maxmemoryPolicy"].as_str().unwrap_or("allkeys_lru");
    if !MAXMEMORY_POLICIES.contains(&policy) {
        return r.bad_request("invalid maxmemoryPolicy");
    }
    let Some(allowed) = allow_list(&body["ipAllowList"]) else {
        return r.bad_request("invalid ipAllowList");
    };
    let mut state = r.lock();
    if name_taken(&mut state, Store::KeyValue, &body) {
        return name_conflict(&r);
    }
    let id = state.next_id("red");
    let now = timestamp();
    let json = json!({
        "id": id,
        "name": body["name"],
        "owner": owner_json(body["ownerId"].as_str().unwrap_or_default()),
        "plan": body["plan"],
        "region": body["region"].as_str().unwrap_or("oregon"),
        "status": "available",
        "options": { "maxmemoryPolicy": policy },
        "ipAllowList": allowed,
        "version": "8.1.4",
        "createdAt": now,
        "updatedAt": now,
        "dashboardUrl": format!("https://dashboard.render.com/r/{id}"),
    });
    let store = Datastore {
        json,
        available_at: Instant::now() + r.wall(KEY_VALUE_CREATE),
    };
    let mut view = store.view();
    if let Some(map) = view.as_object_mut() {
        map.remove("dashboardUrl");
    }
    state.key_values.insert(id, store);
    (StatusCode::CREATED, axum::Json(view)).into_response()
}

async fn patch_key_value(
    State(r): State<Render>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return r.bad_request("invalid JSON body");
    };
    if let Some(plan) = body.get("plan")
        && !plan.as_str().is_some_and(|p| KEY_VALUE_PLANS.contains(&p))
    {
        return r.bad_request("invalid plan");
    }
    if let Some(policy) = body.get("maxmemoryPolicy")
        && !policy
            .as_str()
            .is_some_and(|p| MAXMEMORY_POLICIES.contains(&p))
    {
        return r.bad_request("invalid maxmemoryPolicy");
    }
    let allowed = match body.get("ipAllowList").map(allow_list) {
        Some(None) => return r.bad_request("invalid ipAllowList"),
        Some(Some(list)) => Some(list),
        None => None,
    };
    {
        let mut state = r.lock();
        let Some(store) = state.key_values.get_mut(&id) else {
            return r.not_found();
        };
        for field in ["name", "plan"] {
            if let Some(v) = body.get(field) {
                store.json[field] = v.clone();
            }
        }
        if let Some(policy) = body.get("maxmemoryPolicy") {
            store.json["options"]["maxmemoryPolicy"] = policy.clone();
        }
        if let Some(list) = allowed {
            store.json["ipAllowList"] = list;
        }
        store.json["updatedAt"] = json!(timestamp());
    }
    get_datastore(&r, Store::KeyValue, &id)
}

async fn list_postgres(State(r): State<Render>, Query(params): Params) -> Response {
    list_datastores(r, Store::Postgres, params).await
}

async fn get_postgres(State(r): State<Render>, Path(id): Path<String>) -> Response {
    get_datastore(&r, Store::Postgres, &id)
}

async fn delete_postgres(State(r): State<Render>, Path(id): Path<String>) -> Response {
    delete_datastore(&r, Store::Postgres, &id)
}

/// Default disk of a plan when the request names none.
fn default_disk_gb(plan: &str) -> i64 {
    if plan == "free" { 1 } else { 15 }
}

async fn create_postgres(State(r): State<Render>, body: axum::body::Bytes) -> Response {
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return r.bad_request("invalid JSON body");
    };
    if let Some(problem) = check_create(&body) {
        return r.bad_request(problem);
    }
    let Some(version) = body["version"]
        .as_str()
        .filter(|v| POSTGRES_VERSIONS.contains(v))
    else {
        return r.bad_request("version is required and must be a supported major version");
    };
    if body
        .get("diskSizeGB")
        .is_some_and(|d| d.as_i64().is_none_or(|d| d < 1))
    {
        return r.bad_request("diskSizeGB must be a positive integer");
    }
    let Some(allowed) = allow_list(&body["ipAllowList"]) else {
        return r.bad_request("invalid ipAllowList");
    };
    let plan = body["plan"].as_str().unwrap_or_default();
    let mut state = r.lock();
    if name_taken(&mut state, Store::Postgres, &body) {
        return name_conflict(&r);
    }
    let id = state.next_id("dpg");
    let now = timestamp();
    let random = &id[id.len() - 6..];
    let name = body["name"].as_str().unwrap_or_default();
    let json = json!({
        "id": id,
        "name": name,
        "owner": owner_json(body["ownerId"].as_str().unwrap_or_default()),
        "plan": plan,
        "region": body["region"].as_str().unwrap_or("oregon"),
        "version": version,
        "status": "available",
        "databaseName": body["databaseName"].as_str().map(str::to_owned).unwrap_or_else(|| format!("{}_{random}", name.replace('-', "_"))),
        "databaseUser": body["databaseUser"].as_str().map(str::to_owned).unwrap_or_else(|| format!("{}_user", name.replace('-', "_"))),
        "diskSizeGB": body["diskSizeGB"].as_i64().unwrap_or_else(|| default_disk_gb(plan)),
        "diskAutoscalingEnabled": body["enableDiskAutoscaling"].as_bool().unwrap_or(false),
        "highAvailabilityEnabled": body["enableHighAvailability"].as_bool().unwrap_or(false),
        "ipAllowList": allowed,
        "readReplicas": [],
        "role": "primary",
        "suspended": "not_suspended",
        "suspenders": [],
        // `postgresDetail` requires a `project` it never declares; a database created
        // outside any project has none.
        "project": null,
        "createdAt": now,
        "updatedAt": now,
        "dashboardUrl": format!("https://dashboard.render.com/d/{id}"),
    });
    let database = Datastore {
        json,
        available_at: Instant::now() + r.wall(POSTGRES_CREATE),
    };
    let view = database.view();
    state.postgres.insert(id, database);
    (StatusCode::CREATED, axum::Json(view)).into_response()
}

async fn patch_postgres(
    State(r): State<Render>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return r.bad_request("invalid JSON body");
    };
    let allowed = match body.get("ipAllowList").map(allow_list) {
        Some(None) => return r.bad_request("invalid ipAllowList"),
        Some(Some(list)) => Some(list),
        None => None,
    };
    {
        let mut state = r.lock();
        let Some(database) = state.postgres.get_mut(&id) else {
            return r.not_found();
        };
        if let Some(size) = body.get("diskSizeGB") {
            let current = database.json["diskSizeGB"].as_i64().unwrap_or(0);
            match size.as_i64() {
                Some(size) if size >= current => database.json["diskSizeGB"] = json!(size),
                _ => return r.bad_request("diskSizeGB can only grow"),
            }
        }
        for field in ["name", "plan"] {
            if let Some(v) = body.get(field) {
                database.json[field] = v.clone();
            }
        }
        if let Some(ha) = body.get("enableHighAvailability") {
            database.json["highAvailabilityEnabled"] = ha.clone();
        }
        if let Some(autoscale) = body.get("enableDiskAutoscaling") {
            database.json["diskAutoscalingEnabled"] = autoscale.clone();
        }
        if let Some(list) = allowed {
            database.json["ipAllowList"] = list;
        }
        database.json["updatedAt"] = json!(timestamp());
    }
    get_datastore(&r, Store::Postgres, &id)
}
