//! Supabase Management API imitation: projects (`COMING_UP → ACTIVE_HEALTHY`, or
//! `INIT_FAILED` when the project name is a failing source; pause `PAUSING → INACTIVE`;
//! restore `RESTORING → ACTIVE_HEALTHY`; a compute resize `RESIZING → ACTIVE_HEALTHY`),
//! per-service health, the Auth and PostgREST configs, the database password, Edge Function
//! secrets and the offset paging of organization project lists, with the shapes of
//! `supabase/openapi.json`.
//!
//! Config calls (auth, postgrest, compute add-on) on a project that is not `ACTIVE_HEALTHY`
//! answer 409 with `{"message"}`: the real API refuses them while a project is coming up,
//! with a status the spec does not model (inferred).
//!
//! Dashboard edits (`POST /_sandbox/edit`, object `project`, name = project name or ref):
//! `auth.<field>` sets an Auth config field (`auth.site_url`, `auth.uri_allow_list`, …),
//! `postgrest.<field>` a PostgREST one (`postgrest.max_rows`, `postgrest.db_schema`, …),
//! `instance_size` the compute size, any other field the project's JSON (`name`, `region`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use super::{Common, Imitation, digest, set_field, timestamp};

/// Simulated time a project takes to come up (or pause, or restore, or resize).
const TRANSITION: Duration = Duration::from_secs(30);

/// Every field of `AuthConfigResponse` with the value a new project has (generated from the
/// spec once: `null` where the spec allows it, Supabase's documented defaults for the rest).
const AUTH_DEFAULTS: &str = include_str!("supabase_auth_defaults.json");

/// The compute size a project gets when the create request names none ("the smallest
/// possible size").
const DEFAULT_SIZE: &str = "nano";

#[derive(Clone)]
struct Supabase {
    common: Arc<Common>,
    state: Arc<Mutex<SupabaseState>>,
}

#[derive(Default)]
struct SupabaseState {
    seq: u64,
    /// Keyed by creation order so lists are stable.
    projects: BTreeMap<u64, Project>,
}

struct Project {
    json: Value,
    /// (transient status, settled status, started at).
    phase: (&'static str, &'static str, Instant),
    secrets: BTreeMap<String, String>,
    /// The full Auth config (`AuthConfigResponse`).
    auth: Value,
    /// The PostgREST config (`V1PostgrestConfigResponse`).
    postgrest: Value,
    /// Compute size of the primary database.
    instance_size: String,
}

fn default_auth() -> Value {
    serde_json::from_str(AUTH_DEFAULTS).unwrap_or_else(|_| json!({}))
}

fn default_postgrest() -> Value {
    json!({
        "db_schema": "public,graphql_public",
        "max_rows": 1000,
        "db_extra_search_path": "public,extensions",
        "db_pool": null,
    })
}

pub(crate) fn router(common: Arc<Common>) -> (Router, Arc<dyn Imitation>) {
    let supabase = Supabase {
        common,
        state: Arc::new(Mutex::new(SupabaseState::default())),
    };
    let router = Router::new()
        .route("/v1/projects", post(create_project))
        .route(
            "/v1/projects/{reference}",
            get(get_project)
                .patch(rename_project)
                .delete(delete_project),
        )
        .route("/v1/organizations/{slug}/projects", get(list_projects))
        .route(
            "/v1/projects/{reference}/secrets",
            get(list_secrets).post(set_secrets).delete(delete_secrets),
        )
        .route("/v1/projects/{reference}/health", get(health))
        .route(
            "/v1/projects/{reference}/config/auth",
            get(get_auth_config).patch(update_auth_config),
        )
        .route(
            "/v1/projects/{reference}/postgrest",
            get(get_postgrest_config).patch(update_postgrest_config),
        )
        .route(
            "/v1/projects/{reference}/billing/addons",
            axum::routing::patch(apply_addon),
        )
        .route(
            "/v1/projects/{reference}/database/password",
            axum::routing::patch(update_password),
        )
        .route("/v1/projects/{reference}/pause", post(pause))
        .route("/v1/projects/{reference}/restore", post(restore))
        .with_state(supabase.clone());
    (router, Arc::new(supabase))
}

/// A project ref: 20 lower-case letters, derived from the sequence number.
fn project_ref(seq: u64) -> String {
    let mut n = seq.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (0..20)
        .map(|_| {
            let c = (b'a' + (n % 26) as u8) as char;
            n /= 26;
            if n == 0 {
                n = seq.wrapping_add(0x2545_F491_4F6C_DD1D);
            }
            c
        })
        .collect()
}

impl Supabase {
    fn lock(&self) -> std::sync::MutexGuard<'_, SupabaseState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn not_found(&self) -> Response {
        self.common
            .error(StatusCode::NOT_FOUND, "not_found", "Project not found")
    }

    fn not_active(&self) -> Response {
        self.common.error(
            StatusCode::CONFLICT,
            "not_active",
            "Project is not active; wait until it is ACTIVE_HEALTHY",
        )
    }

    fn bad_request(&self, message: &str) -> Response {
        self.common
            .error(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    fn status(&self, p: &Project) -> &'static str {
        let (transient, settled, at) = p.phase;
        if self.common.sim_elapsed(at) < TRANSITION {
            transient
        } else {
            settled
        }
    }

    fn project_json(&self, p: &Project) -> Value {
        let mut json = p.json.clone();
        json["status"] = json!(self.status(p));
        json
    }

    fn find<'a>(state: &'a mut SupabaseState, reference: &str) -> Option<&'a mut Project> {
        state
            .projects
            .values_mut()
            .find(|p| p.json["ref"] == reference)
    }
}

impl Imitation for Supabase {
    fn classify(&self, _method: &str, _path: &str) -> Vec<(&'static str, String)> {
        vec![("api", String::new())]
    }

    fn edit(&self, object: &str, name: &str, field: &str, value: Value) -> bool {
        if object != "project" {
            return false;
        }
        let mut state = self.lock();
        let Some(p) = state
            .projects
            .values_mut()
            .find(|p| p.json["name"] == name || p.json["ref"] == name)
        else {
            return false;
        };
        if let Some(key) = field.strip_prefix("auth.") {
            return set_known(&mut p.auth, key, value);
        }
        if let Some(key) = field.strip_prefix("postgrest.") {
            return set_known(&mut p.postgrest, key, value);
        }
        if field == "instance_size" {
            return match value.as_str() {
                Some(size) => {
                    p.instance_size = size.to_owned();
                    true
                }
                None => false,
            };
        }
        set_field(&mut p.json, field, value)
    }

    fn live_source(&self, name: &str) -> Option<String> {
        let state = self.lock();
        state
            .projects
            .values()
            .find(|p| p.json["name"] == name && self.status(p) == "ACTIVE_HEALTHY")
            .map(|p| p.json["name"].as_str().unwrap_or_default().to_owned())
    }
}

/// Sets `key` of a config object when the config has that field.
fn set_known(config: &mut Value, key: &str, value: Value) -> bool {
    match config.as_object_mut().and_then(|m| m.get_mut(key)) {
        Some(slot) => {
            *slot = value;
            true
        }
        None => false,
    }
}

type Params = Query<Vec<(String, String)>>;

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

async fn create_project(State(s): State<Supabase>, body: axum::body::Bytes) -> Response {
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return s.bad_request("invalid JSON body");
    };
    let (Some(name), Some(org), Some(_)) = (
        body["name"].as_str(),
        body["organization_slug"].as_str(),
        body["db_pass"].as_str(),
    ) else {
        return s.bad_request("name, organization_slug and db_pass are required");
    };
    let region = body["region_selection"]["code"]
        .as_str()
        .or(body["region"].as_str())
        .unwrap_or("us-east-1")
        .to_owned();
    let instance_size = body["desired_instance_size"]
        .as_str()
        .unwrap_or(DEFAULT_SIZE)
        .to_owned();
    let settled = if s.common.source_fails(name) {
        "INIT_FAILED"
    } else {
        "ACTIVE_HEALTHY"
    };
    let mut state = s.lock();
    state.seq += 1;
    let seq = state.seq;
    let reference = project_ref(seq);
    let json = json!({
        "id": reference,
        "ref": reference,
        "organization_id": org,
        "organization_slug": org,
        "name": name,
        "region": region,
        "created_at": timestamp(),
        "status": "COMING_UP",
        "database": {
            "host": format!("db.{reference}.supabase.co"),
            "version": "15.8.1",
            "postgres_engine": "15",
            "release_channel": "ga",
        },
    });
    state.projects.insert(
        seq,
        Project {
            json: json.clone(),
            phase: ("COMING_UP", settled, Instant::now()),
            secrets: BTreeMap::new(),
            auth: default_auth(),
            postgrest: default_postgrest(),
            instance_size,
        },
    );
    let mut created = json;
    if let Some(map) = created.as_object_mut() {
        map.remove("database");
    }
    (StatusCode::CREATED, axum::Json(created)).into_response()
}

async fn get_project(State(s): State<Supabase>, Path(reference): Path<String>) -> Response {
    let mut state = s.lock();
    match Supabase::find(&mut state, &reference) {
        Some(p) => {
            let json = s.project_json(p);
            axum::Json(json).into_response()
        }
        None => s.not_found(),
    }
}

async fn rename_project(
    State(s): State<Supabase>,
    Path(reference): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let Some(name) = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|b| b["name"].as_str().map(str::to_owned))
    else {
        return s.bad_request("name is required");
    };
    let mut state = s.lock();
    let Some((seq, p)) = state
        .projects
        .iter_mut()
        .find(|(_, p)| p.json["ref"] == reference.as_str())
    else {
        return s.not_found();
    };
    p.json["name"] = json!(name);
    axum::Json(json!({ "id": seq, "ref": reference, "name": name })).into_response()
}

async fn delete_project(State(s): State<Supabase>, Path(reference): Path<String>) -> Response {
    let mut state = s.lock();
    let Some(seq) = state
        .projects
        .iter()
        .find(|(_, p)| p.json["ref"] == reference.as_str())
        .map(|(k, _)| *k)
    else {
        return s.not_found();
    };
    let Some(p) = state.projects.remove(&seq) else {
        return s.not_found();
    };
    axum::Json(json!({ "id": seq, "ref": reference, "name": p.json["name"] })).into_response()
}

async fn list_projects(
    State(s): State<Supabase>,
    Path(slug): Path<String>,
    Query(params): Params,
) -> Response {
    let offset = match param(&params, "offset").map(str::parse::<usize>) {
        None => 0,
        Some(Ok(n)) => n,
        Some(Err(_)) => return s.bad_request("invalid offset"),
    };
    let limit = match param(&params, "limit").map(str::parse::<usize>) {
        None => 100,
        Some(Ok(n)) if (1..=100).contains(&n) => n,
        Some(_) => return s.bad_request("invalid limit"),
    };
    let search = param(&params, "search");
    let state = s.lock();
    let matching: Vec<&Project> = state
        .projects
        .values()
        .filter(|p| p.json["organization_slug"] == slug.as_str())
        .filter(|p| search.is_none_or(|q| p.json["name"].as_str().is_some_and(|n| n.contains(q))))
        .collect();
    let count = matching.len();
    let page: Vec<Value> = matching
        .into_iter()
        .skip(offset)
        .take(limit)
        .map(|p| {
            let status = s.status(p);
            json!({
                "ref": p.json["ref"],
                "name": p.json["name"],
                "cloud_provider": "AWS",
                "region": p.json["region"],
                "is_branch": false,
                "status": status,
                "inserted_at": p.json["created_at"],
                "databases": [{
                    "infra_compute_size": p.instance_size,
                    "region": p.json["region"],
                    "status": if status == "ACTIVE_HEALTHY" { "ACTIVE_HEALTHY" } else { "COMING_UP" },
                    "cloud_provider": "AWS",
                    "identifier": p.json["ref"],
                    "type": "PRIMARY",
                }],
            })
        })
        .collect();
    axum::Json(json!({
        "projects": page,
        "pagination": { "count": count, "limit": limit, "offset": offset },
    }))
    .into_response()
}

async fn list_secrets(State(s): State<Supabase>, Path(reference): Path<String>) -> Response {
    let mut state = s.lock();
    let Some(p) = Supabase::find(&mut state, &reference) else {
        return s.not_found();
    };
    let secrets: Vec<Value> = p
        .secrets
        .iter()
        .map(|(name, value)| json!({ "name": name, "value": format!("{:016x}", digest(value)) }))
        .collect();
    axum::Json(secrets).into_response()
}

async fn set_secrets(
    State(s): State<Supabase>,
    Path(reference): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let Some(items) = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|b| b.as_array().cloned())
    else {
        return s.bad_request("an array of secrets is required");
    };
    let mut pairs = Vec::new();
    for item in &items {
        match (item["name"].as_str(), item["value"].as_str()) {
            (Some(n), Some(_)) if n.starts_with("SUPABASE_") => {
                return s.bad_request("secret names must not start with SUPABASE_");
            }
            (Some(n), Some(v)) => pairs.push((n.to_owned(), v.to_owned())),
            _ => return s.bad_request("each secret needs name and value"),
        }
    }
    let mut state = s.lock();
    let Some(p) = Supabase::find(&mut state, &reference) else {
        return s.not_found();
    };
    p.secrets.extend(pairs);
    StatusCode::CREATED.into_response()
}

async fn delete_secrets(
    State(s): State<Supabase>,
    Path(reference): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let Some(names) = serde_json::from_slice::<Vec<String>>(&body).ok() else {
        return s.bad_request("an array of names is required");
    };
    let mut state = s.lock();
    let Some(p) = Supabase::find(&mut state, &reference) else {
        return s.not_found();
    };
    for name in names {
        p.secrets.remove(&name);
    }
    StatusCode::OK.into_response()
}

async fn health(
    State(s): State<Supabase>,
    Path(reference): Path<String>,
    Query(params): Params,
) -> Response {
    let services: Vec<String> = params
        .iter()
        .filter(|(k, _)| k == "services")
        .flat_map(|(_, v)| v.split(',').map(str::to_owned).collect::<Vec<_>>())
        .collect();
    if services.is_empty() {
        return s.bad_request("services is required");
    }
    let mut state = s.lock();
    let Some(p) = Supabase::find(&mut state, &reference) else {
        return s.not_found();
    };
    let status = match s.status(p) {
        "ACTIVE_HEALTHY" => "ACTIVE_HEALTHY",
        "COMING_UP" | "RESTORING" => "COMING_UP",
        _ => "UNHEALTHY",
    };
    let out: Vec<Value> = services
        .iter()
        .map(
            |name| json!({ "name": name, "healthy": status == "ACTIVE_HEALTHY", "status": status }),
        )
        .collect();
    axum::Json(out).into_response()
}

/// Runs `f` on a healthy project, answering 404 or 409 otherwise.
fn with_active(
    s: &Supabase,
    reference: &str,
    f: impl FnOnce(&mut Project) -> Response,
) -> Response {
    let mut state = s.lock();
    let Some(p) = Supabase::find(&mut state, reference) else {
        return s.not_found();
    };
    if s.status(p) != "ACTIVE_HEALTHY" {
        return s.not_active();
    }
    f(p)
}

/// Merges a PATCH body into a config object: every key must be a field of the config and
/// pass `check`; nothing is changed when one does not (the error is the 400 message).
fn merge_config(
    config: &mut Value,
    body: &[u8],
    check: impl Fn(&str, &Value) -> Result<(), String>,
) -> Result<(), String> {
    let patch = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|b| b.as_object().cloned())
        .ok_or("a JSON object is required")?;
    for (key, value) in &patch {
        if config.get(key).is_none() {
            return Err(format!("unknown field {key}"));
        }
        check(key, value)?;
    }
    for (key, value) in patch {
        config[key.as_str()] = value;
    }
    Ok(())
}

fn check_auth(key: &str, value: &Value) -> Result<(), String> {
    match key {
        "site_url" if value.as_str().is_some_and(|v| v.contains(',')) => {
            Err("site_url must not contain a comma".into())
        }
        "jwt_exp"
            if !value.is_null() && !value.as_i64().is_some_and(|v| (0..=604_800).contains(&v)) =>
        {
            Err("jwt_exp must be an integer between 0 and 604800".into())
        }
        "disable_signup" | "mailer_autoconfirm" if !value.is_null() && !value.is_boolean() => {
            Err(format!("{key} must be a boolean"))
        }
        _ => Ok(()),
    }
}

fn check_postgrest(key: &str, value: &Value) -> Result<(), String> {
    match key {
        "db_schema" | "db_extra_search_path" if !value.is_string() => {
            Err(format!("{key} must be a string"))
        }
        "max_rows" if !value.as_i64().is_some_and(|v| (0..=1_000_000).contains(&v)) => {
            Err("max_rows must be an integer between 0 and 1000000".into())
        }
        "db_pool" if !value.as_i64().is_some_and(|v| (0..=1000).contains(&v)) => {
            Err("db_pool must be an integer between 0 and 1000".into())
        }
        _ => Ok(()),
    }
}

async fn get_auth_config(State(s): State<Supabase>, Path(reference): Path<String>) -> Response {
    with_active(&s, &reference, |p| {
        axum::Json(p.auth.clone()).into_response()
    })
}

async fn update_auth_config(
    State(s): State<Supabase>,
    Path(reference): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    with_active(&s, &reference, |p| {
        match merge_config(&mut p.auth, &body, check_auth) {
            Ok(()) => axum::Json(p.auth.clone()).into_response(),
            Err(message) => s.bad_request(&message),
        }
    })
}

async fn get_postgrest_config(
    State(s): State<Supabase>,
    Path(reference): Path<String>,
) -> Response {
    with_active(&s, &reference, |p| {
        axum::Json(p.postgrest.clone()).into_response()
    })
}

async fn update_postgrest_config(
    State(s): State<Supabase>,
    Path(reference): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    with_active(&s, &reference, |p| {
        match merge_config(&mut p.postgrest, &body, check_postgrest) {
            Ok(()) => axum::Json(p.postgrest.clone()).into_response(),
            Err(message) => s.bad_request(&message),
        }
    })
}

/// `PATCH …/billing/addons`: only the `compute_instance` add-on is imitated; it resizes the
/// project (`RESIZING → ACTIVE_HEALTHY`). 200 with no body, as the spec declares.
async fn apply_addon(
    State(s): State<Supabase>,
    Path(reference): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return s.bad_request("invalid JSON body");
    };
    let (Some("compute_instance"), Some(variant)) =
        (body["addon_type"].as_str(), body["addon_variant"].as_str())
    else {
        return s.bad_request("the sandbox imitates only the compute_instance add-on");
    };
    let Some(size) = variant.strip_prefix("ci_") else {
        return s.bad_request("compute_instance variants are ci_<size>");
    };
    let size = size.to_owned();
    with_active(&s, &reference, |p| {
        if p.instance_size != size {
            p.instance_size = size;
            p.phase = ("RESIZING", "ACTIVE_HEALTHY", Instant::now());
        }
        StatusCode::OK.into_response()
    })
}

async fn update_password(
    State(s): State<Supabase>,
    Path(reference): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let valid = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|b| b["password"].as_str().map(|p| p.chars().count() >= 4));
    if valid != Some(true) {
        return s.bad_request("password (at least 4 characters) is required");
    }
    let mut state = s.lock();
    if Supabase::find(&mut state, &reference).is_none() {
        return s.not_found();
    }
    axum::Json(json!({ "message": "ok" })).into_response()
}

async fn pause(State(s): State<Supabase>, Path(reference): Path<String>) -> Response {
    let mut state = s.lock();
    let Some(p) = Supabase::find(&mut state, &reference) else {
        return s.not_found();
    };
    let current = s.status(p);
    if current != "INACTIVE" && current != "PAUSING" {
        p.phase = ("PAUSING", "INACTIVE", Instant::now());
    }
    StatusCode::OK.into_response()
}

async fn restore(State(s): State<Supabase>, Path(reference): Path<String>) -> Response {
    let mut state = s.lock();
    let Some(p) = Supabase::find(&mut state, &reference) else {
        return s.not_found();
    };
    if matches!(s.status(p), "INACTIVE" | "PAUSE_FAILED") {
        p.phase = ("RESTORING", "ACTIVE_HEALTHY", Instant::now());
    }
    StatusCode::OK.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn project_refs_are_twenty_lower_case_letters_and_distinct() {
        let refs: Vec<String> = (1..200).map(project_ref).collect();
        assert!(
            refs.iter()
                .all(|r| r.len() == 20 && r.chars().all(|c| c.is_ascii_lowercase()))
        );
        let mut unique = refs.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), refs.len());
    }

    #[test]
    fn a_new_project_has_the_documented_auth_and_postgrest_defaults() {
        let auth = default_auth();
        assert!(auth.as_object().is_some_and(|m| m.len() > 200));
        assert_eq!(auth["jwt_exp"], 3600);
        assert_eq!(auth["uri_allow_list"], "");
        assert_eq!(auth["disable_signup"], false);
        assert_eq!(default_postgrest()["max_rows"], 1000);
    }

    #[test]
    fn config_checks_reject_out_of_range_values_and_edits_reject_unknown_fields() {
        let mut auth = default_auth();
        assert!(check_auth("jwt_exp", &json!(700_000)).is_err());
        assert!(check_auth("site_url", &json!("https://a,https://b")).is_err());
        assert!(check_postgrest("max_rows", &json!(-1)).is_err());
        assert!(set_known(&mut auth, "site_url", json!("https://x.dev")));
        assert!(!set_known(&mut auth, "no_such_field", json!(1)));
        assert_eq!(auth["site_url"], "https://x.dev");
    }
}
