//! Vercel imitation: projects, env vars, project domains, deployments (`QUEUED → BUILDING →
//! READY`, or `ERROR` for a failing ref), promotion, and the time-based pagination of
//! `vercel/openapi.json` (`pagination.next` is a millisecond timestamp fed back as `until`;
//! projects use an opaque `from` token).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use serde_json::{Value, json};

use super::{Common, Imitation, set_field};

const QUEUED: Duration = Duration::from_secs(1);
const BUILD: Duration = Duration::from_secs(9);

#[derive(Clone)]
struct Vercel {
    common: Arc<Common>,
    state: Arc<Mutex<VercelState>>,
}

#[derive(Default)]
struct VercelState {
    seq: u64,
    /// Keyed by id; the creation sequence orders them.
    projects: BTreeMap<String, Project>,
    deployments: Vec<Deployment>,
}

struct Project {
    json: Value,
    created: u64,
    envs: Vec<Value>,
    domains: Vec<(u64, Value)>,
    promoted: Option<(String, Instant)>,
}

struct Deployment {
    id: String,
    project_id: String,
    name: String,
    reference: Option<String>,
    created: u64,
    started: Instant,
    fails: bool,
}

/// Millisecond timestamps, strictly increasing so that time-based pages never tie.
fn epoch_ms(seq: u64) -> u64 {
    1_700_000_000_000 + seq * 1000
}

pub(crate) fn router(common: Arc<Common>) -> (Router, Arc<dyn Imitation>) {
    let vercel = Vercel {
        common,
        state: Arc::new(Mutex::new(VercelState::default())),
    };
    let router = Router::new()
        .route("/v11/projects", post(create_project))
        .route("/v10/projects", get(list_projects))
        .route(
            "/v9/projects/{project}",
            get(get_project).patch(patch_project).delete(delete_project),
        )
        .route(
            "/v10/projects/{project}/env",
            get(list_env).post(create_env),
        )
        .route("/v9/projects/{project}/env/{id}", delete(delete_env))
        .route("/v9/projects/{project}/domains", get(list_domains))
        .route("/v10/projects/{project}/domains", post(add_domain))
        .route(
            "/v9/projects/{project}/domains/{domain}",
            delete(delete_domain),
        )
        .route("/v13/deployments", post(create_deployment))
        .route("/v13/deployments/{id}", get(get_deployment))
        .route("/v6/deployments", get(list_deployments))
        .route(
            "/v10/projects/{project}/promote/{deployment}",
            post(promote),
        )
        .with_state(vercel.clone());
    (router, Arc::new(vercel))
}

impl Vercel {
    fn lock(&self) -> std::sync::MutexGuard<'_, VercelState> {
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

    fn ready_state(&self, d: &Deployment) -> &'static str {
        let t = self.common.sim_elapsed(d.started);
        if t < QUEUED {
            "QUEUED"
        } else if t < QUEUED + BUILD {
            "BUILDING"
        } else if d.fails {
            "ERROR"
        } else {
            "READY"
        }
    }

    fn ready_at(&self, d: &Deployment) -> Instant {
        d.started + self.common.wall(QUEUED + BUILD)
    }

    /// The deployment production traffic goes to: the latest promotion or the latest
    /// deployment to become READY, whichever happened last.
    fn production(
        &self,
        state: &VercelState,
        project_id: &str,
        promoted: &Option<(String, Instant)>,
    ) -> Option<String> {
        let now = Instant::now();
        let ready = state
            .deployments
            .iter()
            .filter(|d| d.project_id == project_id && !d.fails && self.ready_at(d) <= now)
            .max_by_key(|d| self.ready_at(d))
            .map(|d| (d.id.clone(), self.ready_at(d)));
        match (ready, promoted) {
            (Some((id, at)), Some((pid, pat))) => Some(if *pat >= at { pid.clone() } else { id }),
            (Some((id, _)), None) => Some(id),
            (None, Some((pid, _))) => Some(pid.clone()),
            (None, None) => None,
        }
    }

    fn deployment_json(&self, d: &Deployment) -> Value {
        let state = self.ready_state(d);
        let mut meta = json!({});
        if let Some(reference) = &d.reference {
            meta["githubCommitRef"] = json!(reference);
        }
        json!({
            "id": d.id,
            "name": d.name,
            "projectId": d.project_id,
            "url": format!("{}-{}.vercel.app", d.name, &d.id[4..]),
            "inspectorUrl": format!("https://vercel.com/sandbox/{}/{}", d.name, d.id),
            "readyState": state,
            "status": state,
            "createdAt": d.created,
            "bootedAt": d.created,
            "buildingAt": d.created,
            "type": "LAMBDAS",
            "target": "production",
            "meta": meta,
            "build": { "env": [] },
            "env": [],
            "isInConcurrentBuildsQueue": false,
            "isInSystemBuildsQueue": false,
            "projectSettings": {},
            "aliasAssigned": state == "READY",
            "buildSkipped": false,
            "creator": { "uid": "usr_sandbox" },
            "public": false,
            "regions": ["iad1"],
            "version": 2,
            "plan": "pro",
            "createdIn": "sfo1",
            "ownerId": "team_sandbox",
            "routes": [],
        })
    }

    fn list_item(&self, d: &Deployment) -> Value {
        let state = self.ready_state(d);
        let mut meta = json!({});
        if let Some(reference) = &d.reference {
            meta["githubCommitRef"] = json!(reference);
        }
        json!({
            "uid": d.id,
            "name": d.name,
            "projectId": d.project_id,
            "url": format!("{}-{}.vercel.app", d.name, &d.id[4..]),
            "created": d.created,
            "createdAt": d.created,
            "type": "LAMBDAS",
            "creator": { "uid": "usr_sandbox" },
            "inspectorUrl": format!("https://vercel.com/sandbox/{}/{}", d.name, d.id),
            "state": state,
            "readyState": state,
            "target": "production",
            "meta": meta,
        })
    }

    fn find_project<'a>(state: &'a mut VercelState, id_or_name: &str) -> Option<&'a mut Project> {
        state
            .projects
            .values_mut()
            .find(|p| p.json["id"] == id_or_name || p.json["name"] == id_or_name)
    }
}

impl Imitation for Vercel {
    fn classify(&self, _method: &str, _path: &str) -> Vec<(&'static str, String)> {
        vec![("api", String::new())]
    }

    fn edit(&self, object: &str, name: &str, field: &str, value: Value) -> bool {
        let mut state = self.lock();
        let Some(project) = Vercel::find_project(&mut state, name) else {
            return false;
        };
        match object {
            "project" => set_field(&mut project.json, field, value),
            "envVar" => match project.envs.iter_mut().find(|e| e["key"] == field) {
                Some(env) => {
                    env["value"] = value;
                    true
                }
                None => false,
            },
            _ => false,
        }
    }

    fn live_source(&self, name: &str) -> Option<String> {
        let mut state = self.lock();
        let project = Vercel::find_project(&mut state, name)?;
        let project_id = project.json["id"].as_str()?.to_owned();
        let promoted = project.promoted.clone();
        let id = self.production(&state, &project_id, &promoted)?;
        state
            .deployments
            .iter()
            .find(|d| d.id == id)
            .and_then(|d| d.reference.clone())
    }
}

type Params = Query<Vec<(String, String)>>;

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn limit(params: &[(String, String)], default: usize) -> Result<usize, ()> {
    match param(params, "limit").map(str::parse::<usize>) {
        None => Ok(default),
        Some(Ok(n)) if (1..=100).contains(&n) => Ok(n),
        Some(_) => Err(()),
    }
}

fn body_json(bytes: &[u8]) -> Option<Value> {
    serde_json::from_slice(bytes).ok()
}

async fn create_project(State(v): State<Vercel>, body: axum::body::Bytes) -> Response {
    let Some(body) = body_json(&body) else {
        return v.bad_request("invalid JSON body");
    };
    let Some(name) = body["name"].as_str() else {
        return v.bad_request("name is required");
    };
    let mut state = v.lock();
    if Vercel::find_project(&mut state, name).is_some() {
        return v.common.error(
            StatusCode::CONFLICT,
            "conflict",
            "A project with this name already exists",
        );
    }
    state.seq += 1;
    let seq = state.seq;
    let id = format!("prj_{seq:016}");
    let created = epoch_ms(seq);
    let mut json = json!({
        "id": id,
        "name": name,
        "accountId": "team_sandbox",
        "directoryListing": false,
        "nodeVersion": "22.x",
        "resourceConfig": { "functionDefaultRegions": ["iad1"] },
        "defaultResourceConfig": { "functionDefaultRegions": ["iad1"] },
        "createdAt": created,
        "updatedAt": created,
        "framework": body.get("framework").cloned().unwrap_or(Value::Null),
        "buildCommand": body.get("buildCommand").cloned().unwrap_or(Value::Null),
        "rootDirectory": body.get("rootDirectory").cloned().unwrap_or(Value::Null),
    });
    if let Some((org, repo)) = body["gitRepository"]["repo"]
        .as_str()
        .and_then(|r| r.split_once('/'))
    {
        json["link"] = json!({
            "type": "github",
            "org": org,
            "repo": repo,
            "repoId": seq,
            "gitCredentialId": "cred_sandbox",
            "productionBranch": "main",
            "deployHooks": [],
        });
    }
    state.projects.insert(
        id,
        Project {
            json: json.clone(),
            created,
            envs: Vec::new(),
            domains: Vec::new(),
            promoted: None,
        },
    );
    axum::Json(json).into_response()
}

async fn list_projects(State(v): State<Vercel>, Query(params): Params) -> Response {
    let Ok(limit) = limit(&params, 20) else {
        return v.bad_request("invalid limit");
    };
    let from = match param(&params, "from").map(str::parse::<u64>) {
        None => None,
        Some(Ok(from)) => Some(from),
        Some(Err(_)) => return v.bad_request("invalid from"),
    };
    let state = v.lock();
    let mut projects: Vec<&Project> = state
        .projects
        .values()
        .filter(|p| from.is_none_or(|from| p.created < from))
        .collect();
    projects.sort_by_key(|p| std::cmp::Reverse(p.created));
    let more = projects.len() > limit;
    let page: Vec<&Project> = projects.into_iter().take(limit).collect();
    let next = if more {
        page.last().map(|p| p.created.to_string())
    } else {
        None
    };
    axum::Json(json!({
        "projects": page.iter().map(|p| p.json.clone()).collect::<Vec<_>>(),
        "pagination": { "count": page.len(), "next": next },
    }))
    .into_response()
}

async fn get_project(State(v): State<Vercel>, Path(project): Path<String>) -> Response {
    let mut state = v.lock();
    match Vercel::find_project(&mut state, &project) {
        Some(p) => axum::Json(p.json.clone()).into_response(),
        None => v.not_found(),
    }
}

async fn patch_project(
    State(v): State<Vercel>,
    Path(project): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let Some(body) = body_json(&body) else {
        return v.bad_request("invalid JSON body");
    };
    let mut state = v.lock();
    let Some(p) = Vercel::find_project(&mut state, &project) else {
        return v.not_found();
    };
    for field in ["framework", "buildCommand", "rootDirectory", "name"] {
        if let Some(value) = body.get(field) {
            p.json[field] = value.clone();
        }
    }
    axum::Json(p.json.clone()).into_response()
}

async fn delete_project(State(v): State<Vercel>, Path(project): Path<String>) -> Response {
    let mut state = v.lock();
    let id = Vercel::find_project(&mut state, &project).map(|p| p.json["id"].clone());
    match id.and_then(|id| id.as_str().map(str::to_owned)) {
        Some(id) => {
            state.projects.remove(&id);
            state.deployments.retain(|d| d.project_id != id);
            StatusCode::NO_CONTENT.into_response()
        }
        None => v.not_found(),
    }
}

fn public_env(env: &Value) -> Value {
    let mut env = env.clone();
    if env["type"] == "sensitive" {
        // Sensitive values are never readable back.
        env["value"] = json!("");
    }
    env
}

async fn list_env(State(v): State<Vercel>, Path(project): Path<String>) -> Response {
    let mut state = v.lock();
    let Some(p) = Vercel::find_project(&mut state, &project) else {
        return v.not_found();
    };
    axum::Json(json!({ "envs": p.envs.iter().map(public_env).collect::<Vec<_>>() })).into_response()
}

async fn create_env(
    State(v): State<Vercel>,
    Path(project): Path<String>,
    Query(params): Params,
    body: axum::body::Bytes,
) -> Response {
    let Some(body) = body_json(&body) else {
        return v.bad_request("invalid JSON body");
    };
    let (Some(key), Some(value), Some(kind)) = (
        body["key"].as_str(),
        body["value"].as_str(),
        body["type"].as_str(),
    ) else {
        return v.bad_request("key, value and type are required");
    };
    let upsert = param(&params, "upsert") == Some("true");
    let mut state = v.lock();
    state.seq += 1;
    let seq = state.seq;
    let Some(p) = Vercel::find_project(&mut state, &project) else {
        return v.not_found();
    };
    let target = body.get("target").cloned().unwrap_or(json!(["production"]));
    let now = epoch_ms(seq);
    let existing = p.envs.iter_mut().find(|e| e["key"] == key);
    let env = match existing {
        Some(_) if !upsert => {
            return v.common.error(
                StatusCode::CONFLICT,
                "ENV_ALREADY_EXISTS",
                "A variable with this key already exists",
            );
        }
        Some(env) => {
            env["value"] = json!(value);
            env["type"] = json!(kind);
            env["target"] = target;
            env["updatedAt"] = json!(now);
            env.clone()
        }
        None => {
            let env = json!({
                "id": format!("env_{seq:016}"),
                "key": key,
                "value": value,
                "type": kind,
                "target": target,
                "createdAt": now,
                "updatedAt": now,
            });
            p.envs.push(env.clone());
            env
        }
    };
    (
        StatusCode::CREATED,
        axum::Json(json!({ "created": public_env(&env), "failed": [] })),
    )
        .into_response()
}

async fn delete_env(
    State(v): State<Vercel>,
    Path((project, id)): Path<(String, String)>,
) -> Response {
    let mut state = v.lock();
    let Some(p) = Vercel::find_project(&mut state, &project) else {
        return v.not_found();
    };
    match p.envs.iter().position(|e| e["id"] == id.as_str()) {
        Some(i) => {
            let env = p.envs.remove(i);
            axum::Json(public_env(&env)).into_response()
        }
        None => v.not_found(),
    }
}

async fn list_domains(
    State(v): State<Vercel>,
    Path(project): Path<String>,
    Query(params): Params,
) -> Response {
    let Ok(limit) = limit(&params, 20) else {
        return v.bad_request("invalid limit");
    };
    let until = match param(&params, "until").map(str::parse::<u64>) {
        None => None,
        Some(Ok(until)) => Some(until),
        Some(Err(_)) => return v.bad_request("invalid until"),
    };
    let mut state = v.lock();
    let Some(p) = Vercel::find_project(&mut state, &project) else {
        return v.not_found();
    };
    let mut domains: Vec<&(u64, Value)> = p
        .domains
        .iter()
        .filter(|(created, _)| until.is_none_or(|u| *created < u))
        .collect();
    domains.sort_by_key(|d| std::cmp::Reverse(d.0));
    let more = domains.len() > limit;
    let page: Vec<&(u64, Value)> = domains.into_iter().take(limit).collect();
    let next = if more { page.last().map(|d| d.0) } else { None };
    axum::Json(json!({
        "domains": page.iter().map(|d| d.1.clone()).collect::<Vec<_>>(),
        "pagination": { "count": page.len(), "next": next, "prev": Value::Null },
    }))
    .into_response()
}

async fn add_domain(
    State(v): State<Vercel>,
    Path(project): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let Some(name) = body_json(&body).and_then(|b| b["name"].as_str().map(str::to_owned)) else {
        return v.bad_request("name is required");
    };
    let mut state = v.lock();
    state.seq += 1;
    let created = epoch_ms(state.seq);
    let Some(p) = Vercel::find_project(&mut state, &project) else {
        return v.not_found();
    };
    if p.domains.iter().any(|(_, d)| d["name"] == name.as_str()) {
        return v.common.error(
            StatusCode::CONFLICT,
            "domain_already_in_use",
            "The domain is already assigned",
        );
    }
    let apex = name
        .rsplitn(3, '.')
        .take(2)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join(".");
    let domain = json!({
        "name": name,
        "apexName": apex,
        "projectId": p.json["id"],
        "verified": false,
        "createdAt": created,
        "updatedAt": created,
    });
    p.domains.push((created, domain.clone()));
    axum::Json(domain).into_response()
}

async fn delete_domain(
    State(v): State<Vercel>,
    Path((project, domain)): Path<(String, String)>,
) -> Response {
    let mut state = v.lock();
    let Some(p) = Vercel::find_project(&mut state, &project) else {
        return v.not_found();
    };
    let before = p.domains.len();
    p.domains.retain(|(_, d)| d["name"] != domain.as_str());
    if p.domains.len() == before {
        return v.not_found();
    }
    axum::Json(json!({})).into_response()
}

async fn create_deployment(State(v): State<Vercel>, body: axum::body::Bytes) -> Response {
    let Some(body) = body_json(&body) else {
        return v.bad_request("invalid JSON body");
    };
    let Some(name) = body["name"].as_str() else {
        return v.bad_request("name is required");
    };
    let project_key = body["project"].as_str().unwrap_or(name).to_owned();
    let mut state = v.lock();
    let Some(project_id) = Vercel::find_project(&mut state, &project_key)
        .and_then(|p| p.json["id"].as_str().map(str::to_owned))
    else {
        return v.not_found();
    };
    let reference = match (
        body["gitSource"]["ref"].as_str(),
        body["deploymentId"].as_str(),
    ) {
        (Some(reference), _) => Some(reference.to_owned()),
        (None, Some(previous)) => match state.deployments.iter().find(|d| d.id == previous) {
            Some(d) => d.reference.clone(),
            None => return v.not_found(),
        },
        (None, None) => None,
    };
    state.seq += 1;
    let seq = state.seq;
    let fails = reference
        .as_deref()
        .is_some_and(|r| v.common.source_fails(r));
    let deployment = Deployment {
        id: format!("dpl_{seq:016}"),
        project_id,
        name: name.to_owned(),
        reference,
        created: epoch_ms(seq),
        started: Instant::now(),
        fails,
    };
    let json = v.deployment_json(&deployment);
    state.deployments.push(deployment);
    axum::Json(json).into_response()
}

async fn get_deployment(State(v): State<Vercel>, Path(id): Path<String>) -> Response {
    let state = v.lock();
    match state.deployments.iter().find(|d| d.id == id) {
        Some(d) => axum::Json(v.deployment_json(d)).into_response(),
        None => v.not_found(),
    }
}

async fn list_deployments(State(v): State<Vercel>, Query(params): Params) -> Response {
    let Ok(limit) = limit(&params, 20) else {
        return v.bad_request("invalid limit");
    };
    let until = match param(&params, "until").map(str::parse::<u64>) {
        None => None,
        Some(Ok(until)) => Some(until),
        Some(Err(_)) => return v.bad_request("invalid until"),
    };
    let project = param(&params, "projectId");
    let state = v.lock();
    let mut items: Vec<&Deployment> = state
        .deployments
        .iter()
        .filter(|d| project.is_none_or(|p| d.project_id == p))
        .filter(|d| until.is_none_or(|u| d.created < u))
        .collect();
    items.sort_by_key(|d| std::cmp::Reverse(d.created));
    let more = items.len() > limit;
    let page: Vec<&Deployment> = items.into_iter().take(limit).collect();
    let next = if more {
        page.last().map(|d| d.created)
    } else {
        None
    };
    axum::Json(json!({
        "deployments": page.iter().map(|d| v.list_item(d)).collect::<Vec<_>>(),
        "pagination": { "count": page.len(), "next": next, "prev": Value::Null },
    }))
    .into_response()
}

async fn promote(
    State(v): State<Vercel>,
    Path((project, deployment)): Path<(String, String)>,
) -> Response {
    let mut state = v.lock();
    let ready = state
        .deployments
        .iter()
        .find(|d| d.id == deployment)
        .map(|d| v.ready_state(d) == "READY");
    match ready {
        None => return v.not_found(),
        Some(false) => {
            return v.common.error(
                StatusCode::CONFLICT,
                "deployment_not_ready",
                "Only READY deployments can be promoted",
            );
        }
        Some(true) => {}
    }
    let Some(p) = Vercel::find_project(&mut state, &project) else {
        return v.not_found();
    };
    p.promoted = Some((deployment, Instant::now()));
    StatusCode::CREATED.into_response()
}
