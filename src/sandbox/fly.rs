//! Fly.io Machines imitation: apps (with `idempotency_key`), machines (`created → starting →
//! started`, `stopping → stopped`, `failed` for a failing image; leases with nonces;
//! updates guarded by `current_version`; the full config kept as given, `guest` defaulted;
//! check results `passing` once started — `critical` for a version that does not start
//! (`Faults::crashing_sources`), whose machines then stop; `min_secrets_version` refused while the app's
//! secrets are older; `cordon`/`uncordon`, and `skip_service_registration` on create, which
//! leaves the machine cordoned: the app edge sends requests to started machines that are not
//! cordoned), volumes (created in a region, attached through a machine's
//! `mounts` to one machine of that region, extended, destroyed once detached), app secrets
//! with versions, ACME certificates, and `fly-next-cursor` paging of machine and volume
//! lists, with the shapes of `fly/openapi.json`. Rate limits are per action and object
//! (token buckets, no headers), as Fly documents.
//!
//! Dashboard edits (`POST /_sandbox/edit`): `machine` (by name or id) with any dotted field,
//! e.g. `config.guest.memory_mb` or `config.env.LOG_LEVEL` (a `config.*` edit makes a new
//! version, as a dashboard change does); `app` with `secrets.<NAME>` (a string sets the
//! secret, `null` unsets it; the secrets version moves on) or any app field; `volume` (by
//! id, or `<app>/<name>`) with any field, e.g. `size_gb`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use serde_json::{Value, json};

use super::{Common, Imitation, set_field, timestamp};

/// Simulated length of a transition (`starting`, `stopping`, …).
const STEP: Duration = Duration::from_secs(2);
/// A machine update, from the update to `started`.
pub(crate) const MACHINE_START: Duration = STEP;
/// How long (simulated) the machine of a crashing version runs, its checks critical, before
/// it stops for good.
const CRASHED_AFTER: Duration = Duration::from_secs(20);

#[derive(Clone)]
struct Fly {
    common: Arc<Common>,
    state: Arc<Mutex<FlyState>>,
}

#[derive(Default)]
struct FlyState {
    seq: u64,
    apps: BTreeMap<String, App>,
    /// Requests the app edge sent to Fly apps: each goes to the next started machine, as
    /// Fly's proxy balances them.
    served: usize,
}

struct App {
    json: Value,
    idempotency_key: Option<String>,
    machines: BTreeMap<String, Machine>,
    secrets: BTreeMap<String, (String, u64)>,
    secrets_version: u64,
    certificates: BTreeMap<String, Value>,
    volumes: BTreeMap<String, Value>,
}

struct Machine {
    json: Value,
    /// The transition in progress: (transient state, settled state, started at).
    phase: (&'static str, &'static str, Instant),
    lease: Option<(String, Instant)>,
}

pub(crate) fn router(common: Arc<Common>) -> (Router, Arc<dyn Imitation>) {
    let fly = Fly {
        common,
        state: Arc::new(Mutex::new(FlyState::default())),
    };
    let router = Router::new()
        .route("/v1/apps", get(list_apps).post(create_app))
        .route("/v1/apps/{app}", get(get_app).delete(delete_app))
        .route(
            "/v1/apps/{app}/machines",
            get(list_machines).post(create_machine),
        )
        .route(
            "/v1/apps/{app}/machines/{id}",
            get(get_machine).post(update_machine).delete(delete_machine),
        )
        .route(
            "/v1/apps/{app}/machines/{id}/lease",
            post(acquire_lease).delete(release_lease),
        )
        .route("/v1/apps/{app}/machines/{id}/stop", post(stop_machine))
        .route("/v1/apps/{app}/machines/{id}/start", post(start_machine))
        .route("/v1/apps/{app}/machines/{id}/cordon", post(cordon_machine))
        .route(
            "/v1/apps/{app}/machines/{id}/uncordon",
            post(uncordon_machine),
        )
        .route(
            "/v1/apps/{app}/secrets",
            get(list_secrets).post(set_secrets),
        )
        .route("/v1/apps/{app}/secrets/{name}", delete(delete_secret))
        .route(
            "/v1/apps/{app}/volumes",
            get(list_volumes).post(create_volume),
        )
        .route(
            "/v1/apps/{app}/volumes/{id}",
            get(get_volume).delete(delete_volume),
        )
        .route("/v1/apps/{app}/volumes/{id}/extend", put(extend_volume))
        .route("/v1/apps/{app}/certificates", get(list_certificates))
        .route("/v1/apps/{app}/certificates/acme", post(add_certificate))
        .route(
            "/v1/apps/{app}/certificates/{hostname}",
            delete(delete_certificate),
        )
        .with_state(fly.clone());
    (router, Arc::new(fly))
}

impl Fly {
    fn lock(&self) -> std::sync::MutexGuard<'_, FlyState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn error(&self, status: StatusCode, code: &str, message: &str) -> Response {
        let mut body = self.common.error_body(code, message);
        if matches!(code, "name_taken" | "insufficient_capacity" | "unknown") {
            body["status"] = json!(code);
        }
        (status, axum::Json(body)).into_response()
    }

    fn not_found(&self) -> Response {
        self.error(StatusCode::NOT_FOUND, "not_found", "not found")
    }

    fn bad_request(&self, message: &str) -> Response {
        self.error(StatusCode::BAD_REQUEST, "unknown", message)
    }

    fn machine_state(&self, m: &Machine) -> &'static str {
        let (transient, settled, at) = m.phase;
        let elapsed = self.common.sim_elapsed(at);
        if elapsed < STEP {
            transient
        } else if settled == "started" && self.crashes(m) && elapsed >= CRASHED_AFTER {
            // Its restarts exhausted, the machine of a version that does not start stops.
            "stopped"
        } else {
            settled
        }
    }

    /// Whether the machine runs a version that starts but never passes its checks.
    fn crashes(&self, m: &Machine) -> bool {
        m.json["config"]["image"]
            .as_str()
            .is_some_and(|image| self.common.source_crashes(image))
    }

    fn machine_json(&self, m: &Machine) -> Value {
        let mut json = m.json.clone();
        let state = self.machine_state(m);
        json["state"] = json!(state);
        // Checks report once the machine runs; Fly fills `checks` with their results.
        let running = state == "started" || (state == "stopped" && self.crashes(m));
        let checks: Vec<Value> = match (running, m.json["config"]["checks"].as_object()) {
            (true, Some(checks)) => {
                let (status, output) = if self.crashes(m) {
                    ("critical", "dial tcp: connection refused")
                } else {
                    ("passing", "Success")
                };
                checks
                    .keys()
                    .map(|name| {
                        json!({
                            "name": name,
                            "status": status,
                            "output": output,
                            "updated_at": m.json["updated_at"],
                        })
                    })
                    .collect()
            }
            _ => Vec::new(),
        };
        json["checks"] = json!(checks);
        json
    }

    /// Starts a launch of the configured image: `starting → started`, or `failed`.
    fn launch(&self, m: &mut Machine) {
        let image = m.json["config"]["image"].as_str().unwrap_or_default();
        let settled = if self.common.source_fails(image) {
            "failed"
        } else {
            "started"
        };
        m.phase = ("starting", settled, Instant::now());
    }

    fn next_id(state: &mut FlyState) -> String {
        state.seq += 1;
        format!("{:014x}", state.seq * 7919)
    }
}

/// A fresh machine version (ULID-like, as Fly's are).
fn new_version(state: &mut FlyState) -> String {
    format!("01H{}", Fly::next_id(state).to_uppercase())
}

/// Sets a machine's version (`version`, and the deprecated `instance_id` Fly mirrors it in).
fn set_version(machine: &mut Value, version: &str) {
    machine["version"] = json!(version);
    machine["instance_id"] = json!(version);
}

impl Imitation for Fly {
    fn classify(&self, method: &str, path: &str) -> Vec<(&'static str, String)> {
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        match (method, segments.as_slice()) {
            ("GET", ["v1", "apps", app, "machines", id]) => {
                vec![("get_machine", format!("{app}/{id}"))]
            }
            // Per action and per object: the method and concrete path name both.
            _ => vec![("action", format!("{method} {path}"))],
        }
    }

    fn edit(&self, object: &str, name: &str, field: &str, value: Value) -> bool {
        let mut state = self.lock();
        let version = new_version(&mut state);
        match object {
            "app" => {
                let Some(a) = state.apps.get_mut(name) else {
                    return false;
                };
                if let Some(secret) = field.strip_prefix("secrets.") {
                    a.secrets_version += 1;
                    match value.as_str() {
                        Some(v) => {
                            a.secrets
                                .insert(secret.to_owned(), (v.to_owned(), a.secrets_version));
                        }
                        None => {
                            a.secrets.remove(secret);
                        }
                    }
                    return true;
                }
                set_field(&mut a.json, field, value)
            }
            "machine" => state.apps.values_mut().any(|a| {
                a.machines
                    .values_mut()
                    .find(|m| m.json["name"] == name || m.json["id"] == name)
                    .is_some_and(|m| {
                        let changed = set_field(&mut m.json, field, value.clone());
                        if changed && field.starts_with("config.") {
                            set_version(&mut m.json, &version);
                        }
                        changed
                    })
            }),
            "volume" => state.apps.iter_mut().any(|(app, a)| {
                a.volumes
                    .values_mut()
                    .find(|v| {
                        v["id"] == name
                            || format!("{app}/{}", v["name"].as_str().unwrap_or("")) == name
                    })
                    .is_some_and(|v| set_field(v, field, value.clone()))
            }),
            _ => false,
        }
    }

    fn app_for_host(&self, host: &str) -> Option<String> {
        let state = self.lock();
        if let Some(app) = host.strip_suffix(".fly.dev")
            && state.apps.contains_key(app)
        {
            return Some(app.to_owned());
        }
        state
            .apps
            .iter()
            .find(|(_, a)| a.certificates.contains_key(host))
            .map(|(name, _)| name.clone())
    }

    fn live_source(&self, name: &str) -> Option<String> {
        let mut state = self.lock();
        let images: Vec<String> = state
            .apps
            .get(name)?
            .machines
            .values()
            .filter(|m| self.machine_state(m) == "started" && m.json["cordoned"] != true)
            .filter_map(|m| m.json["config"]["image"].as_str().map(str::to_owned))
            .collect();
        if images.is_empty() {
            return None;
        }
        state.served = state.served.wrapping_add(1);
        images.get(state.served % images.len()).cloned()
    }
}

type Params = Query<Vec<(String, String)>>;

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn body_json(bytes: &[u8]) -> Option<Value> {
    if bytes.is_empty() {
        return Some(json!({}));
    }
    serde_json::from_slice(bytes).ok()
}

/// A page of `items` after `cursor` (an item key) of at most `limit`; the next cursor when
/// more follow.
fn paged<T: Clone>(
    items: Vec<(String, T)>,
    cursor: Option<&str>,
    limit: Option<usize>,
) -> Result<(Vec<T>, Option<String>), ()> {
    let start = match cursor {
        Some(c) => items.iter().position(|(k, _)| k == c).ok_or(())? + 1,
        None => 0,
    };
    let limit = limit.unwrap_or(usize::MAX);
    let rest = &items[start.min(items.len())..];
    let page: Vec<(String, T)> = rest.iter().take(limit).cloned().collect();
    let next = (rest.len() > page.len())
        .then(|| page.last().map(|(k, _)| k.clone()))
        .flatten();
    Ok((page.into_iter().map(|(_, v)| v).collect(), next))
}

fn limit(params: &[(String, String)], max: usize) -> Result<Option<usize>, ()> {
    match param(params, "limit").map(str::parse::<usize>) {
        None => Ok(None),
        Some(Ok(n)) if (1..=max).contains(&n) => Ok(Some(n)),
        Some(_) => Err(()),
    }
}

async fn list_apps(State(f): State<Fly>, Query(params): Params) -> Response {
    let Some(org) = param(&params, "org_slug") else {
        return f.bad_request("org_slug is required");
    };
    let Ok(limit) = limit(&params, 5000) else {
        return f.bad_request("invalid limit");
    };
    let state = f.lock();
    let items: Vec<(String, Value)> = state
        .apps
        .iter()
        .filter(|(_, a)| a.json["organization"]["slug"] == org)
        .map(|(k, a)| {
            let mut json = a.json.clone();
            json["machine_count"] = json!(a.machines.len());
            json["volume_count"] = json!(a.volumes.len());
            (k.clone(), json)
        })
        .collect();
    let total = items.len();
    let Ok((page, next)) = paged(items, param(&params, "cursor"), limit) else {
        return f.bad_request("invalid cursor");
    };
    let mut body = json!({ "apps": page, "total_apps": total });
    if let Some(next) = next {
        body["next_cursor"] = json!(next);
    }
    axum::Json(body).into_response()
}

async fn create_app(State(f): State<Fly>, body: axum::body::Bytes) -> Response {
    let Some(body) = body_json(&body) else {
        return f.bad_request("invalid JSON body");
    };
    let (Some(name), Some(org)) = (body["name"].as_str(), body["org_slug"].as_str()) else {
        return f.bad_request("name and org_slug are required");
    };
    let key = body["idempotency_key"].as_str().map(str::to_owned);
    let mut state = f.lock();
    if let Some(key) = &key
        && let Some((existing_name, app)) = state
            .apps
            .iter()
            .find(|(_, a)| a.idempotency_key.as_deref() == Some(key.as_str()))
    {
        if existing_name != name {
            return f.error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "unknown",
                "idempotency key already used for another app",
            );
        }
        return (
            StatusCode::CREATED,
            axum::Json(json!({ "id": app.json["id"], "created_at": app.json["created_at_ms"] })),
        )
            .into_response();
    }
    if state.apps.contains_key(name) {
        return f.error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "name_taken",
            "app name taken",
        );
    }
    let id = Fly::next_id(&mut state);
    let created = 1_700_000_000_000u64 + state.seq;
    state.apps.insert(
        name.to_owned(),
        App {
            json: json!({
                "id": id,
                "name": name,
                "status": "deployed",
                "network": body["network"].as_str().unwrap_or("default"),
                "organization": { "slug": org, "name": org },
                "machine_count": 0,
                "volume_count": 0,
                "created_at_ms": created,
            }),
            idempotency_key: key,
            machines: BTreeMap::new(),
            secrets: BTreeMap::new(),
            secrets_version: 0,
            certificates: BTreeMap::new(),
            volumes: BTreeMap::new(),
        },
    );
    (
        StatusCode::CREATED,
        axum::Json(json!({ "id": id, "created_at": created })),
    )
        .into_response()
}

fn public_app(app: &App) -> Value {
    let mut json = app.json.clone();
    if let Some(map) = json.as_object_mut() {
        map.remove("created_at_ms");
    }
    json["machine_count"] = json!(app.machines.len());
    json["volume_count"] = json!(app.volumes.len());
    json
}

async fn get_app(State(f): State<Fly>, Path(app): Path<String>) -> Response {
    match f.lock().apps.get(&app) {
        Some(a) => axum::Json(public_app(a)).into_response(),
        None => f.not_found(),
    }
}

async fn delete_app(State(f): State<Fly>, Path(app): Path<String>) -> Response {
    match f.lock().apps.remove(&app) {
        Some(_) => StatusCode::ACCEPTED.into_response(),
        None => f.not_found(),
    }
}

async fn list_machines(
    State(f): State<Fly>,
    Path(app): Path<String>,
    Query(params): Params,
) -> Response {
    let Ok(limit) = limit(&params, 1000) else {
        return f.bad_request("invalid limit");
    };
    let state = f.lock();
    let Some(a) = state.apps.get(&app) else {
        return f.not_found();
    };
    let items: Vec<(String, Value)> = a
        .machines
        .iter()
        .map(|(k, m)| (k.clone(), f.machine_json(m)))
        .collect();
    let Ok((page, next)) = paged(items, param(&params, "cursor"), limit) else {
        return f.bad_request("invalid cursor");
    };
    let mut response = axum::Json(page).into_response();
    if let Some(next) = next.and_then(|n| HeaderValue::from_str(&n).ok()) {
        response.headers_mut().insert("fly-next-cursor", next);
    }
    response
}

/// The config of a create or update, kept as given (Fly stores what it is sent), with
/// `guest` defaulted to the smallest machine; `Err` names what is wrong.
fn machine_config(body: &Value) -> Result<Value, &'static str> {
    let Some(config) = body.get("config").filter(|c| c.is_object()) else {
        return Err("config is required");
    };
    if !config["image"].is_string() {
        return Err("config.image is required");
    }
    let mut config = config.clone();
    let guest = config["guest"].as_object().cloned().unwrap_or_default();
    let mut defaulted = json!({ "cpu_kind": "shared", "cpus": 1, "memory_mb": 256 });
    for (key, value) in guest {
        defaulted[key] = value;
    }
    if !(defaulted["cpus"].is_u64() && defaulted["memory_mb"].is_u64()) {
        return Err("config.guest.cpus and memory_mb must be integers");
    }
    if !defaulted["memory_mb"]
        .as_u64()
        .unwrap_or(0)
        .is_multiple_of(256)
    {
        return Err("config.guest.memory_mb must be a multiple of 256");
    }
    config["guest"] = defaulted;
    Ok(config)
}

/// Checks `min_secrets_version` against the app's secrets: Fly cannot launch a machine
/// with secrets newer than the app holds.
fn secrets_ready(app: &App, body: &Value) -> bool {
    body["min_secrets_version"]
        .as_u64()
        .is_none_or(|v| v <= app.secrets_version)
}

/// Attaches the volumes named in `config.mounts` to machine `id` in `region`, detaching the
/// ones it no longer mounts. Each volume must exist in the app, be in the machine's region
/// and not be attached to another machine.
fn attach_mounts(app: &mut App, id: &str, region: &str, config: &Value) -> Result<(), String> {
    let wanted: Vec<&str> = config["mounts"]
        .as_array()
        .map(|m| m.iter().filter_map(|m| m["volume"].as_str()).collect())
        .unwrap_or_default();
    for volume in &wanted {
        let Some(v) = app.volumes.get(*volume) else {
            return Err(format!("volume {volume} not found"));
        };
        if v["region"] != region {
            return Err(format!("volume {volume} is in another region"));
        }
        if v["attached_machine_id"]
            .as_str()
            .is_some_and(|m| !m.is_empty() && m != id)
        {
            return Err(format!("volume {volume} is attached to another machine"));
        }
    }
    for (vid, v) in app.volumes.iter_mut() {
        if wanted.contains(&vid.as_str()) {
            v["attached_machine_id"] = json!(id);
            v["attached_alloc_id"] = json!(id);
        } else if v["attached_machine_id"] == id {
            detach(v);
        }
    }
    Ok(())
}

fn detach(volume: &mut Value) {
    if let Some(map) = volume.as_object_mut() {
        map.remove("attached_machine_id");
        map.remove("attached_alloc_id");
    }
}

async fn create_machine(
    State(f): State<Fly>,
    Path(app): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let Some(body) = body_json(&body) else {
        return f.bad_request("invalid JSON body");
    };
    let config = match machine_config(&body) {
        Ok(config) => config,
        Err(message) => return f.bad_request(message),
    };
    let mut state = f.lock();
    let id = Fly::next_id(&mut state);
    let version = new_version(&mut state);
    let Some(a) = state.apps.get_mut(&app) else {
        return f.not_found();
    };
    let name = body["name"].as_str().unwrap_or(&id).to_owned();
    if a.machines.values().any(|m| m.json["name"] == name.as_str()) {
        return f.error(
            StatusCode::CONFLICT,
            "unknown",
            "a machine with this name already exists",
        );
    }
    if !secrets_ready(a, &body) {
        return f.bad_request("min_secrets_version is newer than the app's secrets");
    }
    let region = body["region"].as_str().unwrap_or("ams").to_owned();
    if let Err(message) = attach_mounts(a, &id, &region, &config) {
        return f.bad_request(&message);
    }
    let now = timestamp();
    let mut machine = Machine {
        json: json!({
            "id": id,
            "name": name,
            "region": region,
            "private_ip": "fdaa:0:1::2",
            "config": config,
            "host_status": "ok",
            // Left out of the proxy until uncordoned (flyctl's blue-green machines).
            "cordoned": body["skip_service_registration"] == true,
            "created_at": now,
            "updated_at": now,
            "events": [],
        }),
        phase: ("created", "created", Instant::now()),
        lease: None,
    };
    set_version(&mut machine.json, &version);
    if body["skip_launch"] != true {
        f.launch(&mut machine);
    }
    let json = f.machine_json(&machine);
    a.machines.insert(id, machine);
    axum::Json(json).into_response()
}

async fn get_machine(State(f): State<Fly>, Path((app, id)): Path<(String, String)>) -> Response {
    let state = f.lock();
    match state.apps.get(&app).and_then(|a| a.machines.get(&id)) {
        Some(m) => axum::Json(f.machine_json(m)).into_response(),
        None => f.not_found(),
    }
}

/// Whether a mutating call may touch a leased machine: only with the lease's nonce.
fn lease_allows(m: &Machine, headers: &HeaderMap) -> bool {
    match &m.lease {
        Some((nonce, expires)) if *expires > Instant::now() => {
            headers
                .get("fly-machine-lease-nonce")
                .and_then(|v| v.to_str().ok())
                == Some(nonce.as_str())
        }
        _ => true,
    }
}

async fn update_machine(
    State(f): State<Fly>,
    Path((app, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let Some(body) = body_json(&body) else {
        return f.bad_request("invalid JSON body");
    };
    let config = match machine_config(&body) {
        Ok(config) => config,
        Err(message) => return f.bad_request(message),
    };
    let mut state = f.lock();
    let version = new_version(&mut state);
    let Some(a) = state.apps.get_mut(&app) else {
        return f.not_found();
    };
    let Some(m) = a.machines.get(&id) else {
        return f.not_found();
    };
    if !lease_allows(m, &headers) {
        return f.error(
            StatusCode::CONFLICT,
            "unknown",
            "machine is leased by someone else",
        );
    }
    if let Some(expected) = body["current_version"].as_str()
        && m.json["version"] != expected
    {
        return f.error(
            StatusCode::CONFLICT,
            "unknown",
            "machine version changed since current_version",
        );
    }
    if !secrets_ready(a, &body) {
        return f.bad_request("min_secrets_version is newer than the app's secrets");
    }
    let region = m.json["region"].as_str().unwrap_or_default().to_owned();
    if let Err(message) = attach_mounts(a, &id, &region, &config) {
        return f.bad_request(&message);
    }
    let Some(m) = a.machines.get_mut(&id) else {
        return f.not_found();
    };
    m.json["config"] = config;
    set_version(&mut m.json, &version);
    m.json["updated_at"] = json!(timestamp());
    if body["skip_launch"] != true {
        f.launch(m);
    }
    axum::Json(f.machine_json(m)).into_response()
}

async fn delete_machine(
    State(f): State<Fly>,
    Path((app, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let mut state = f.lock();
    let Some(a) = state.apps.get_mut(&app) else {
        return f.not_found();
    };
    match a.machines.get(&id) {
        None => f.not_found(),
        Some(m) if !lease_allows(m, &headers) => {
            f.error(StatusCode::CONFLICT, "unknown", "machine is leased")
        }
        Some(_) => {
            a.machines.remove(&id);
            for volume in a.volumes.values_mut() {
                if volume["attached_machine_id"] == id.as_str() {
                    detach(volume);
                }
            }
            StatusCode::OK.into_response()
        }
    }
}

async fn acquire_lease(
    State(f): State<Fly>,
    Path((app, id)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Response {
    let ttl = body_json(&body)
        .and_then(|b| b["ttl"].as_u64())
        .unwrap_or(30);
    let mut state = f.lock();
    let nonce = format!("{:032x}", rand::random::<u128>());
    let Some(m) = state
        .apps
        .get_mut(&app)
        .and_then(|a| a.machines.get_mut(&id))
    else {
        return f.not_found();
    };
    if m.lease
        .as_ref()
        .is_some_and(|(_, exp)| *exp > Instant::now())
    {
        return f.error(StatusCode::CONFLICT, "unknown", "machine already leased");
    }
    let expires = Instant::now() + f.common.wall(Duration::from_secs(ttl));
    m.lease = Some((nonce.clone(), expires));
    let expires_at = jiff::Timestamp::now().as_second() + ttl as i64;
    (
        StatusCode::CREATED,
        axum::Json(json!({
            "nonce": nonce,
            "expires_at": expires_at,
            "owner": "tether@sandbox",
            "version": m.json["version"],
        })),
    )
        .into_response()
}

async fn release_lease(
    State(f): State<Fly>,
    Path((app, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let mut state = f.lock();
    let Some(m) = state
        .apps
        .get_mut(&app)
        .and_then(|a| a.machines.get_mut(&id))
    else {
        return f.not_found();
    };
    let presented = headers
        .get("fly-machine-lease-nonce")
        .and_then(|v| v.to_str().ok());
    match &m.lease {
        Some((nonce, _)) if Some(nonce.as_str()) == presented => {
            m.lease = None;
            StatusCode::OK.into_response()
        }
        Some(_) => f.error(StatusCode::CONFLICT, "unknown", "wrong lease nonce"),
        None => f.not_found(),
    }
}

async fn stop_machine(
    State(f): State<Fly>,
    Path((app, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let mut state = f.lock();
    let Some(m) = state
        .apps
        .get_mut(&app)
        .and_then(|a| a.machines.get_mut(&id))
    else {
        return f.not_found();
    };
    if !lease_allows(m, &headers) {
        return f.error(StatusCode::CONFLICT, "unknown", "machine is leased");
    }
    if f.machine_state(m) != "stopped" {
        m.phase = ("stopping", "stopped", Instant::now());
    }
    StatusCode::OK.into_response()
}

async fn start_machine(
    State(f): State<Fly>,
    Path((app, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let mut state = f.lock();
    let Some(m) = state
        .apps
        .get_mut(&app)
        .and_then(|a| a.machines.get_mut(&id))
    else {
        return f.not_found();
    };
    if !lease_allows(m, &headers) {
        return f.error(StatusCode::CONFLICT, "unknown", "machine is leased");
    }
    if !matches!(f.machine_state(m), "started" | "starting") {
        f.launch(m);
    }
    StatusCode::OK.into_response()
}

/// `cordon` (the proxy stops routing to the machine) or `uncordon`.
fn set_cordoned(f: &Fly, app: &str, id: &str, headers: &HeaderMap, cordoned: bool) -> Response {
    let mut state = f.lock();
    let Some(m) = state.apps.get_mut(app).and_then(|a| a.machines.get_mut(id)) else {
        return f.not_found();
    };
    if !lease_allows(m, headers) {
        return f.error(StatusCode::CONFLICT, "unknown", "machine is leased");
    }
    m.json["cordoned"] = json!(cordoned);
    StatusCode::OK.into_response()
}

async fn cordon_machine(
    State(f): State<Fly>,
    Path((app, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    set_cordoned(&f, &app, &id, &headers, true)
}

async fn uncordon_machine(
    State(f): State<Fly>,
    Path((app, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    set_cordoned(&f, &app, &id, &headers, false)
}

async fn list_volumes(
    State(f): State<Fly>,
    Path(app): Path<String>,
    Query(params): Params,
) -> Response {
    let Ok(limit) = limit(&params, 1000) else {
        return f.bad_request("invalid limit");
    };
    let state = f.lock();
    let Some(a) = state.apps.get(&app) else {
        return f.not_found();
    };
    let items: Vec<(String, Value)> = a
        .volumes
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let Ok((page, next)) = paged(items, param(&params, "cursor"), limit) else {
        return f.bad_request("invalid cursor");
    };
    let mut response = axum::Json(page).into_response();
    if let Some(next) = next.and_then(|n| HeaderValue::from_str(&n).ok()) {
        response.headers_mut().insert("fly-next-cursor", next);
    }
    response
}

async fn create_volume(
    State(f): State<Fly>,
    Path(app): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let Some(body) = body_json(&body) else {
        return f.bad_request("invalid JSON body");
    };
    let (Some(name), Some(region), Some(size_gb)) = (
        body["name"].as_str(),
        body["region"].as_str(),
        body["size_gb"].as_u64(),
    ) else {
        return f.bad_request("name, region and size_gb are required");
    };
    if !(1..=500).contains(&size_gb) {
        return f.bad_request("size_gb must be between 1 and 500");
    }
    let mut state = f.lock();
    let id = format!("vol_{}", Fly::next_id(&mut state));
    let Some(a) = state.apps.get_mut(&app) else {
        return f.not_found();
    };
    let volume = json!({
        "id": id,
        "name": name,
        "region": region,
        "zone": format!("{region}-1"),
        "size_gb": size_gb,
        "state": "created",
        "encrypted": body["encrypted"].as_bool().unwrap_or(true),
        "fstype": "ext4",
        "type": "local",
        "host_status": "ok",
        "auto_backup_enabled": body["auto_backup_enabled"].as_bool().unwrap_or(true),
        "snapshot_retention": body["snapshot_retention"].as_u64().unwrap_or(5),
        "block_size": 4096,
        "blocks": size_gb * 262_144,
        "blocks_free": size_gb * 262_144,
        "blocks_avail": size_gb * 262_144,
        "bytes_total": size_gb << 30,
        "bytes_used": 0,
        "created_at": timestamp(),
    });
    a.volumes.insert(id, volume.clone());
    axum::Json(volume).into_response()
}

async fn get_volume(State(f): State<Fly>, Path((app, id)): Path<(String, String)>) -> Response {
    let state = f.lock();
    match state.apps.get(&app).and_then(|a| a.volumes.get(&id)) {
        Some(v) => axum::Json(v.clone()).into_response(),
        None => f.not_found(),
    }
}

async fn extend_volume(
    State(f): State<Fly>,
    Path((app, id)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Response {
    let Some(size_gb) = body_json(&body).and_then(|b| b["size_gb"].as_u64()) else {
        return f.bad_request("size_gb is required");
    };
    let mut state = f.lock();
    let Some(v) = state
        .apps
        .get_mut(&app)
        .and_then(|a| a.volumes.get_mut(&id))
    else {
        return f.not_found();
    };
    let current = v["size_gb"].as_u64().unwrap_or(0);
    if size_gb < current || size_gb > 500 {
        return f.bad_request("volumes can only grow, up to 500 GB");
    }
    let grew = size_gb > current;
    v["size_gb"] = json!(size_gb);
    v["blocks"] = json!(size_gb * 262_144);
    v["bytes_total"] = json!(size_gb << 30);
    // The attached machine sees the new size after a restart.
    let needs_restart = grew && v["attached_machine_id"].is_string();
    axum::Json(json!({ "volume": v.clone(), "needs_restart": needs_restart })).into_response()
}

async fn delete_volume(State(f): State<Fly>, Path((app, id)): Path<(String, String)>) -> Response {
    let mut state = f.lock();
    let Some(a) = state.apps.get_mut(&app) else {
        return f.not_found();
    };
    match a.volumes.get(&id) {
        None => f.not_found(),
        Some(v) if v["attached_machine_id"].is_string() => {
            f.bad_request("volume is attached to a machine; destroy the machine first")
        }
        Some(_) => {
            let mut volume = a.volumes.remove(&id).unwrap_or_default();
            volume["state"] = json!("destroyed");
            axum::Json(volume).into_response()
        }
    }
}

async fn list_secrets(State(f): State<Fly>, Path(app): Path<String>) -> Response {
    let state = f.lock();
    let Some(a) = state.apps.get(&app) else {
        return f.not_found();
    };
    let secrets: Vec<Value> = a
        .secrets
        .iter()
        .map(|(name, (value, _))| {
            json!({ "name": name, "digest": format!("{:016x}", super::digest(value)) })
        })
        .collect();
    axum::Json(json!({ "secrets": secrets })).into_response()
}

async fn set_secrets(
    State(f): State<Fly>,
    Path(app): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let Some(values) = body_json(&body).and_then(|b| b["values"].as_object().cloned()) else {
        return f.bad_request("values is required");
    };
    let mut state = f.lock();
    let Some(a) = state.apps.get_mut(&app) else {
        return f.not_found();
    };
    a.secrets_version += 1;
    let version = a.secrets_version;
    for (name, value) in values {
        match value.as_str() {
            Some(v) => {
                a.secrets.insert(name, (v.to_owned(), version));
            }
            None => {
                a.secrets.remove(&name);
            }
        }
    }
    let secrets: Vec<Value> = a.secrets.keys().map(|n| json!({ "name": n })).collect();
    axum::Json(json!({ "version": version, "secrets": secrets })).into_response()
}

async fn delete_secret(
    State(f): State<Fly>,
    Path((app, name)): Path<(String, String)>,
) -> Response {
    let mut state = f.lock();
    let Some(a) = state.apps.get_mut(&app) else {
        return f.not_found();
    };
    if a.secrets.remove(&name).is_none() {
        return f.not_found();
    }
    a.secrets_version += 1;
    axum::Json(json!({ "version": a.secrets_version })).into_response()
}

async fn list_certificates(
    State(f): State<Fly>,
    Path(app): Path<String>,
    Query(params): Params,
) -> Response {
    let Ok(limit) = limit(&params, 1000) else {
        return f.bad_request("invalid limit");
    };
    let state = f.lock();
    let Some(a) = state.apps.get(&app) else {
        return f.not_found();
    };
    let items: Vec<(String, Value)> = a
        .certificates
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let total = items.len();
    let Ok((page, next)) = paged(items, param(&params, "cursor"), limit) else {
        return f.bad_request("invalid cursor");
    };
    let mut body = json!({ "certificates": page, "total_count": total });
    if let Some(next) = next {
        body["next_cursor"] = json!(next);
    }
    axum::Json(body).into_response()
}

async fn add_certificate(
    State(f): State<Fly>,
    Path(app): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let Some(hostname) = body_json(&body).and_then(|b| b["hostname"].as_str().map(str::to_owned))
    else {
        return f.bad_request("hostname is required");
    };
    let mut state = f.lock();
    let Some(a) = state.apps.get_mut(&app) else {
        return f.not_found();
    };
    if a.certificates.contains_key(&hostname) {
        return f.error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown",
            "certificate already exists",
        );
    }
    let now = timestamp();
    let certificate = json!({
        "hostname": hostname,
        "configured": false,
        "acme_requested": true,
        "status": "pending_ownership",
        "dns_provider": "unknown",
        "created_at": now,
        "updated_at": now,
    });
    a.certificates.insert(hostname, certificate.clone());
    (StatusCode::CREATED, axum::Json(certificate)).into_response()
}

async fn delete_certificate(
    State(f): State<Fly>,
    Path((app, hostname)): Path<(String, String)>,
) -> Response {
    let mut state = f.lock();
    let Some(a) = state.apps.get_mut(&app) else {
        return f.not_found();
    };
    match a.certificates.remove(&hostname) {
        Some(_) => StatusCode::NO_CONTENT.into_response(),
        None => f.not_found(),
    }
}
