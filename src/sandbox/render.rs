//! Render imitation: services, env vars, custom domains, deploys (with their state machine
//! `created → build_in_progress → update_in_progress → live`, or `build_failed`; a deploy
//! triggered while another runs answers 202 and waits `queued`), rollback, and `cursor`
//! pagination, with the shapes of `render/openapi.json`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde_json::{Value, json};

use super::{Common, Imitation, set_field, timestamp};

/// Simulated phase lengths of a deploy.
const CREATED: Duration = Duration::from_secs(1);
const BUILD: Duration = Duration::from_secs(9);
const UPDATE: Duration = Duration::from_secs(5);

#[derive(Clone)]
struct Render {
    common: Arc<Common>,
    state: Arc<Mutex<RenderState>>,
}

#[derive(Default)]
struct RenderState {
    seq: u64,
    services: BTreeMap<String, Service>,
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
    fails: bool,
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
        let superseded = later
            .iter()
            .any(|d| !d.fails && now >= d.start + self.wall(CREATED + BUILD + UPDATE));
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
        if matches!(status, "live" | "deactivated" | "build_failed") {
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
        let fails = [image.as_deref(), commit.as_deref()]
            .into_iter()
            .flatten()
            .any(|s| self.common.source_fails(s));
        let service = state.services.get_mut(id)?;
        service.deploys.push(Deploy {
            id: deploy_id,
            image,
            commit,
            trigger,
            created_at: timestamp(),
            start: busy_until.unwrap_or(now),
            fails,
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
        let Some(service) = state
            .services
            .values_mut()
            .find(|s| s.json["name"] == name || s.json["id"] == name)
        else {
            return false;
        };
        match object {
            "service" => set_field(&mut service.json, field, value),
            "envVar" => match value.as_str() {
                Some(v) => {
                    service.env.insert(field.to_owned(), v.to_owned());
                    true
                }
                None => service.env.remove(field).is_some(),
            },
            _ => false,
        }
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

/// One page of `items` (ordered by key) after `cursor`, as `[{<field>: item, cursor}]`.
fn page(
    render: &Render,
    params: &[(String, String)],
    field: &str,
    items: Vec<(String, Value)>,
) -> Response {
    let limit = match param(params, "limit").map(str::parse::<usize>) {
        None => 20,
        Some(Ok(n)) if (1..=100).contains(&n) => n,
        Some(_) => return render.bad_request("limit must be between 1 and 100"),
    };
    let start = match param(params, "cursor") {
        Some(cursor) => match items.iter().position(|(k, _)| k == cursor) {
            Some(i) => i + 1,
            None => return render.bad_request("invalid cursor"),
        },
        None => 0,
    };
    let out: Vec<Value> = items
        .into_iter()
        .skip(start)
        .take(limit)
        .map(|(cursor, item)| json!({ field: item, "cursor": cursor }))
        .collect();
    axum::Json(out).into_response()
}

fn csv(params: &[(String, String)], name: &str) -> Option<Vec<String>> {
    param(params, name).map(|v| v.split(',').map(str::to_owned).collect())
}

async fn list_services(State(r): State<Render>, Query(params): Params) -> Response {
    let names = csv(&params, "name");
    let owners = csv(&params, "ownerId");
    let items: Vec<(String, Value)> = {
        let state = r.lock();
        state
            .services
            .iter()
            .filter(|(_, s)| {
                names
                    .as_ref()
                    .is_none_or(|n| n.iter().any(|n| s.json["name"] == n.as_str()))
                    && owners
                        .as_ref()
                        .is_none_or(|o| o.iter().any(|o| s.json["ownerId"] == o.as_str()))
            })
            .map(|(id, s)| (id.clone(), s.json.clone()))
            .collect()
    };
    page(&r, &params, "service", items)
}

fn details(kind: &str, runtime: &str, region: &str, plan: &str, slug: &str) -> Value {
    let mut details = json!({
        "env": runtime,
        "runtime": runtime,
        "envSpecificDetails": {
            "dockerCommand": "",
            "dockerContext": ".",
            "dockerfilePath": "./Dockerfile",
        },
        "plan": plan,
        "region": region,
        "numInstances": 1,
        "buildPlan": "starter",
    });
    if kind != "background_worker" {
        details["openPorts"] = json!([{ "port": 10000, "protocol": "TCP" }]);
        details["url"] = json!(if kind == "web_service" {
            format!("https://{slug}.onrender.com")
        } else {
            format!("{slug}:10000")
        });
    }
    if kind == "web_service" {
        details["healthCheckPath"] = json!("");
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
    let sd = &body["serviceDetails"];
    let runtime = sd["runtime"].as_str().unwrap_or("docker");
    let region = sd["region"].as_str().unwrap_or("oregon");
    let plan = sd["plan"].as_str().unwrap_or("starter");
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
        "serviceDetails": details(kind, runtime, region, plan, &slug),
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
        for (k, v) in sd {
            service.json["serviceDetails"][k] = v.clone();
        }
    }
    service.json["updatedAt"] = json!(timestamp());
    axum::Json(service.json.clone()).into_response()
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
    let items: Vec<(String, Value)> = {
        let state = r.lock();
        let Some(service) = state.services.get(&id) else {
            return r.not_found();
        };
        service
            .env
            .iter()
            .map(|(k, v)| (k.clone(), json!({ "key": k, "value": v })))
            .collect()
    };
    page(&r, &params, "envVar", items)
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
    let items: Vec<(String, Value)> = {
        let state = r.lock();
        let Some(service) = state.services.get(&id) else {
            return r.not_found();
        };
        service
            .domains
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    page(&r, &params, "customDomain", items)
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
    let apex = name.matches('.').count() == 1;
    let domain = json!({
        "id": domain_id,
        "name": name,
        "domainType": if apex { "apex" } else { "subdomain" },
        "publicSuffix": name.rsplit('.').next().unwrap_or(""),
        "redirectForName": "",
        "verificationStatus": "unverified",
        "createdAt": timestamp(),
        "server": { "id": id, "name": service.json["name"] },
    });
    service.domains.insert(domain_id, domain.clone());
    (StatusCode::CREATED, axum::Json(json!([domain]))).into_response()
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
    page(&r, &params, "deploy", items)
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
    if old.fails {
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
