//! Vercel imitation: projects (settings, a repository linked at creation in the shape of
//! its provider's `link` variant, variables created with the project), env vars identified
//! by (key, targets, gitBranch) with `upsert` and one-or-many create bodies (`encrypted`
//! values read back as ciphertext, `sensitive` ones as empty), project domains with
//! redirect and git branch (the spec's 400s for invalid combinations), deployments
//! (`QUEUED → BUILDING → READY`, or `ERROR` for a failing ref), promotion, and the
//! time-based pagination of `vercel/openapi.json` (`pagination.next` is a millisecond
//! timestamp fed back as `until`; projects use an opaque `from` token). The project list and
//! reads carry each project's `env` array, as the spec's response schema does.

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
/// A deployment from creation to `READY`.
pub(crate) const DEPLOY: Duration = QUEUED.saturating_add(BUILD);

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
            delete(delete_domain).patch(patch_domain),
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

    /// Dashboard edits, all on the project called `name`:
    /// - `project`: `field` is a dotted path in the project (`buildCommand`,
    ///   `link.productionBranch`);
    /// - `envVar`: `field` is `KEY`, or `KEY@target,target` / `KEY@preview#branch` to pick
    ///   one of several variables with that key; a string `value` replaces the value, an
    ///   object is merged (`{"target": ["preview"]}`), `null` removes the variable;
    /// - `domain`: `field` is the hostname; an object `value` is merged (`{"redirect":
    ///   "example.com"}`), `null` removes the domain.
    fn edit(&self, object: &str, name: &str, field: &str, value: Value) -> bool {
        let mut state = self.lock();
        let Some(project) = Vercel::find_project(&mut state, name) else {
            return false;
        };
        match object {
            "project" => set_field(&mut project.json, field, value),
            "envVar" => {
                let Some(index) = project.envs.iter().position(|e| env_selected(e, field)) else {
                    return false;
                };
                match value {
                    Value::Null => {
                        project.envs.remove(index);
                    }
                    Value::Object(fields) => {
                        for (k, v) in fields {
                            project.envs[index][k] = v;
                        }
                    }
                    other => project.envs[index]["value"] = other,
                }
                true
            }
            "domain" => {
                let Some(index) = project.domains.iter().position(|(_, d)| d["name"] == field)
                else {
                    return false;
                };
                match value {
                    Value::Null => {
                        project.domains.remove(index);
                    }
                    Value::Object(fields) => {
                        for (k, v) in fields {
                            project.domains[index].1[k] = v;
                        }
                    }
                    _ => return false,
                }
                true
            }
            _ => false,
        }
    }

    fn app_for_host(&self, host: &str) -> Option<String> {
        let state = self.lock();
        let default = host.strip_suffix(".vercel.app");
        state
            .projects
            .values()
            .find(|p| {
                default.is_some_and(|name| p.json["name"] == name)
                    || p.domains.iter().any(|(_, d)| d["name"] == host)
            })
            .and_then(|p| p.json["name"].as_str().map(str::to_owned))
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

const NODE_VERSIONS: &[&str] = &["22.x", "20.x", "18.x", "16.x", "14.x", "12.x", "10.x"];
const TARGETS: &[&str] = &["production", "preview", "development"];
const ENV_TYPES: &[&str] = &["system", "secret", "encrypted", "plain", "sensitive"];
/// Project settings `PATCH /v9/projects/{idOrName}` changes here (a subset of the spec's).
const SETTINGS: &[&str] = &[
    "framework",
    "rootDirectory",
    "installCommand",
    "buildCommand",
    "outputDirectory",
];

/// The `link` object the list returns for a repository linked at creation, in the shape
/// of the provider's variant in the spec.
fn link_json(provider: &str, repo: &str, seq: u64, created: u64) -> Option<Value> {
    let (owner, name) = repo.split_once('/')?;
    if owner.is_empty() || name.is_empty() || name.contains('/') {
        return None;
    }
    let mut link = match provider {
        "github" | "github-limited" => json!({
            "org": owner,
            "repo": name,
            "repoId": seq,
            "repoOwnerId": seq,
        }),
        "gitlab" => json!({
            "projectId": seq.to_string(),
            "projectName": name,
            "projectNameWithNamespace": format!("{owner} / {name}"),
            "projectNamespace": owner,
            "projectUrl": format!("https://gitlab.com/{owner}/{name}"),
        }),
        "bitbucket" => json!({
            "name": name,
            "slug": name,
            "owner": owner,
            "uuid": format!("{{{seq}}}"),
            "workspaceUuid": format!("{{w{seq}}}"),
        }),
        _ => return None,
    };
    link["type"] = json!(provider);
    link["gitCredentialId"] = json!("cred_sandbox");
    link["productionBranch"] = json!("main");
    link["deployHooks"] = json!([]);
    link["createdAt"] = json!(created);
    link["updatedAt"] = json!(created);
    Some(link)
}

/// The sorted target list of a stored or requested variable.
fn targets_of(env: &Value) -> Vec<String> {
    let mut targets: Vec<String> = match &env["target"] {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) => items
            .iter()
            .filter_map(|t| t.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    };
    targets.sort();
    targets.dedup();
    targets
}

fn branch_of(env: &Value) -> &str {
    env["gitBranch"].as_str().unwrap_or("")
}

/// Whether `field` (`KEY`, `KEY@t1,t2`, `KEY@preview#branch`) names the variable.
fn env_selected(env: &Value, field: &str) -> bool {
    let (key, selector) = match field.split_once('@') {
        Some((key, selector)) => (key, Some(selector)),
        None => (field, None),
    };
    if env["key"] != key {
        return false;
    }
    let Some(selector) = selector else {
        return true;
    };
    let (targets, branch) = selector.split_once('#').unwrap_or((selector, ""));
    let mut wanted: Vec<&str> = targets.split(',').collect();
    wanted.sort();
    targets_of(env) == wanted && branch_of(env) == branch
}

/// Validates one variable of a create request into its stored form.
fn new_env(item: &Value, id: String, now: u64) -> Result<Value, &'static str> {
    let (Some(key), Some(value), Some(kind)) = (
        item["key"].as_str(),
        item["value"].as_str(),
        item["type"].as_str(),
    ) else {
        return Err("key, value and type are required");
    };
    if !ENV_TYPES.contains(&kind) {
        return Err("invalid type");
    }
    let targets = targets_of(item);
    if targets.is_empty() || targets.iter().any(|t| !TARGETS.contains(&t.as_str())) {
        return Err("target must list production, preview or development");
    }
    let mut env = json!({
        "id": id,
        "key": key,
        "value": value,
        "type": kind,
        "target": targets,
        "createdAt": now,
        "updatedAt": now,
    });
    match &item["gitBranch"] {
        Value::Null => {}
        Value::String(branch) if targets == ["preview"] => env["gitBranch"] = json!(branch),
        _ => return Err("gitBranch requires target=preview"),
    }
    Ok(env)
}

fn public_env(env: &Value) -> Value {
    let mut env = env.clone();
    match env["type"].as_str() {
        // Encrypted values come back as ciphertext, sensitive ones not at all.
        Some("encrypted") => {
            env["value"] = json!(format!("enc:{}", env["id"].as_str().unwrap_or("")))
        }
        Some("sensitive") | Some("secret") => env["value"] = json!(""),
        _ => {}
    }
    env
}

impl Project {
    /// The project as the API returns it: settings, link and variables.
    fn view(&self) -> Value {
        let mut json = self.json.clone();
        json["env"] = Value::Array(self.envs.iter().map(public_env).collect());
        json
    }

    /// Adds or (with `upsert`, same key, targets and branch) replaces a variable.
    fn put_env(&mut self, env: Value, upsert: bool) -> Result<Value, (StatusCode, &'static str)> {
        let (targets, branch) = (targets_of(&env), branch_of(&env).to_owned());
        let same = |e: &Value| e["key"] == env["key"] && branch_of(e) == branch;
        if let Some(existing) = self
            .envs
            .iter_mut()
            .find(|e| same(e) && targets_of(e) == targets)
        {
            if !upsert {
                return Err((StatusCode::CONFLICT, "ENV_ALREADY_EXISTS"));
            }
            for field in ["value", "type", "updatedAt"] {
                existing[field] = env[field].clone();
            }
            return Ok(existing.clone());
        }
        if self
            .envs
            .iter()
            .any(|e| same(e) && targets_of(e).iter().any(|t| targets.contains(t)))
        {
            return Err((StatusCode::CONFLICT, "ENV_CONFLICT"));
        }
        self.envs.push(env.clone());
        Ok(env)
    }

    /// Checks a domain's redirect and branch the way the spec's 400s describe.
    fn domain_error(&self, name: &str, body: &Value) -> Option<&'static str> {
        let redirect = body["redirect"].as_str();
        let branch = body["gitBranch"].as_str();
        if redirect.is_some() && branch.is_some() {
            return Some("You can't set both a git branch and a redirect for the domain");
        }
        match redirect {
            Some(target) if target == name => Some("A domain cannot redirect to itself"),
            Some(target) if !self.domains.iter().any(|(_, d)| d["name"] == target) => {
                Some("The domain redirect is not valid")
            }
            _ => None,
        }
    }
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
    });
    for field in SETTINGS {
        json[*field] = body.get(*field).cloned().unwrap_or(Value::Null);
    }
    if let Some(repository) = body.get("gitRepository") {
        let provider = repository["type"].as_str().unwrap_or("");
        let repo = repository["repo"].as_str().unwrap_or("");
        match link_json(provider, repo, seq, created) {
            Some(link) => json["link"] = link,
            None => return v.bad_request("gitRepository is not valid"),
        }
    }
    let mut project = Project {
        json,
        created,
        envs: Vec::new(),
        domains: Vec::new(),
        promoted: None,
    };
    let items = match body.get("environmentVariables") {
        None => Vec::new(),
        Some(Value::Array(items)) => items.clone(),
        Some(_) => return v.bad_request("environmentVariables must be a list"),
    };
    for (i, item) in items.iter().enumerate() {
        let env = match new_env(item, format!("env_{seq:012}{i:04}"), created) {
            Ok(env) => env,
            Err(message) => return v.bad_request(message),
        };
        if let Err((status, code)) = project.put_env(env, false) {
            return v
                .common
                .error(status, code, "Conflicting environment variables");
        }
    }
    let view = project.view();
    state.projects.insert(id, project);
    axum::Json(view).into_response()
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
        "projects": page.iter().map(|p| p.view()).collect::<Vec<_>>(),
        "pagination": { "count": page.len(), "next": next },
    }))
    .into_response()
}

async fn get_project(State(v): State<Vercel>, Path(project): Path<String>) -> Response {
    let mut state = v.lock();
    match Vercel::find_project(&mut state, &project) {
        Some(p) => axum::Json(p.view()).into_response(),
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
    if let Some(version) = body.get("nodeVersion")
        && !version.as_str().is_some_and(|v| NODE_VERSIONS.contains(&v))
    {
        return v.bad_request("invalid nodeVersion");
    }
    let mut state = v.lock();
    state.seq += 1;
    let now = epoch_ms(state.seq);
    let Some(p) = Vercel::find_project(&mut state, &project) else {
        return v.not_found();
    };
    for field in SETTINGS.iter().chain(&["name", "nodeVersion"]) {
        if let Some(value) = body.get(*field) {
            p.json[*field] = value.clone();
        }
    }
    p.json["updatedAt"] = json!(now);
    axum::Json(p.view()).into_response()
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

async fn list_env(State(v): State<Vercel>, Path(project): Path<String>) -> Response {
    let mut state = v.lock();
    let Some(p) = Vercel::find_project(&mut state, &project) else {
        return v.not_found();
    };
    axum::Json(json!({ "envs": p.envs.iter().map(public_env).collect::<Vec<_>>() })).into_response()
}

/// `POST /v10/projects/{idOrName}/env`: one variable or a list; with `upsert=true` a
/// variable with the same key, targets and git branch is replaced.
async fn create_env(
    State(v): State<Vercel>,
    Path(project): Path<String>,
    Query(params): Params,
    body: axum::body::Bytes,
) -> Response {
    let Some(body) = body_json(&body) else {
        return v.bad_request("invalid JSON body");
    };
    let (items, single) = match &body {
        Value::Array(items) => (items.clone(), false),
        item @ Value::Object(_) => (vec![item.clone()], true),
        _ => return v.bad_request("body must be a variable or a list of variables"),
    };
    let upsert = param(&params, "upsert") == Some("true");
    let mut state = v.lock();
    state.seq += 1;
    let seq = state.seq;
    let now = epoch_ms(seq);
    let Some(p) = Vercel::find_project(&mut state, &project) else {
        return v.not_found();
    };
    let mut envs = Vec::new();
    for (i, item) in items.iter().enumerate() {
        match new_env(item, format!("env_{seq:012}{i:04}"), now) {
            Ok(env) => envs.push(env),
            Err(message) => return v.bad_request(message),
        }
    }
    let mut created = Vec::new();
    for env in envs {
        match p.put_env(env, upsert) {
            Ok(env) => created.push(public_env(&env)),
            Err((status, code)) => {
                return v
                    .common
                    .error(status, code, "A conflicting variable exists");
            }
        }
    }
    let created = if single {
        created.pop().unwrap_or(Value::Null)
    } else {
        Value::Array(created)
    };
    (
        StatusCode::CREATED,
        axum::Json(json!({ "created": created, "failed": [] })),
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
    let Some(body) = body_json(&body) else {
        return v.bad_request("invalid JSON body");
    };
    let Some(name) = body["name"].as_str().map(str::to_owned) else {
        return v.bad_request("name is required");
    };
    let mut state = v.lock();
    state.seq += 1;
    let created = epoch_ms(state.seq);
    let in_use = state
        .projects
        .values()
        .any(|p| p.domains.iter().any(|(_, d)| d["name"] == name.as_str()));
    let Some(p) = Vercel::find_project(&mut state, &project) else {
        return v.not_found();
    };
    if in_use {
        return v.common.error(
            StatusCode::CONFLICT,
            "domain_already_in_use",
            "The domain is already assigned",
        );
    }
    if let Some(message) = p.domain_error(&name, &body) {
        return v.bad_request(message);
    }
    let apex = name
        .rsplitn(3, '.')
        .take(2)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join(".");
    let redirect = body["redirect"].as_str();
    let domain = json!({
        "name": name,
        "apexName": apex,
        "projectId": p.json["id"],
        "redirect": redirect,
        "redirectStatusCode": redirect.map(|_| 308),
        "gitBranch": body["gitBranch"].as_str(),
        // The sandbox has no DNS: every domain counts as verified.
        "verified": true,
        "createdAt": created,
        "updatedAt": created,
    });
    p.domains.push((created, domain.clone()));
    axum::Json(domain).into_response()
}

async fn patch_domain(
    State(v): State<Vercel>,
    Path((project, domain)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Response {
    let Some(body) = body_json(&body) else {
        return v.bad_request("invalid JSON body");
    };
    let mut state = v.lock();
    state.seq += 1;
    let now = epoch_ms(state.seq);
    let Some(p) = Vercel::find_project(&mut state, &project) else {
        return v.not_found();
    };
    if let Some(message) = p.domain_error(&domain, &body) {
        return v.bad_request(message);
    }
    let Some((_, stored)) = p
        .domains
        .iter_mut()
        .find(|(_, d)| d["name"] == domain.as_str())
    else {
        return v.not_found();
    };
    for field in ["redirect", "gitBranch"] {
        if let Some(value) = body.get(field) {
            stored[field] = value.clone();
        }
    }
    if body.get("redirect").is_some() {
        stored["redirectStatusCode"] = if stored["redirect"].is_null() {
            Value::Null
        } else {
            body.get("redirectStatusCode")
                .cloned()
                .unwrap_or(json!(308))
        };
    }
    stored["updatedAt"] = json!(now);
    axum::Json(stored.clone()).into_response()
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
