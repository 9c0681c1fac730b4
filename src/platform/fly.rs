//! Fly.io Machines adapter: apps (created with an `idempotency_key`), machines (their full
//! managed config: image, env, guest, services, checks, mounts; updated under a lease with
//! `current_version` and, after a secrets change, `min_secrets_version`), volumes, app
//! secrets and ACME certificates, as `fly/openapi.json` defines them. The base URL is the spec's server,
//! `https://api.machines.dev` (paths carry `/v1`). Machine lists follow the
//! `fly-next-cursor` response header (volume lists too); app lists the body's `next_cursor`.
//!
//! A machine update is a read-modify-write of the vendor config: the fields Tether manages
//! ([`FlyMachineConfig`]) replace their counterparts and every other field (metadata,
//! restart policy, …) is sent back as read, so nothing set outside Tether is lost.
//!
//! Fly has no deployment object: a deployment here is "every machine of the app runs image
//! X". Its id is the image reference; its state is read from the machines (all `started` →
//! live, any `failed` → failed), and rolling back is deploying the earlier image again.
//! A `bluegreen` rollout ([`FlyClient::bluegreen`]) replaces the machines instead of
//! updating them: each green twin names the machine it replaces in its config's metadata, so
//! the machines alone say where the rollout is.

use std::collections::BTreeMap;
use std::time::Duration;

use http::Method;
use serde::Deserialize;
use serde_json::{Value, json};

use super::http::{ApiRequest, PlatformHttp};
use super::{
    DeploySource, Deployment, DeploymentState, Deployments, Domain, Ensured, EnvVar, Platform,
    PlatformError, PlatformResult,
};
use std::future::Future;

const ACTION: &[&str] = &["action"];
const GET_MACHINE: &[&str] = &["get_machine"];
const LEASE_HEADER: &str = "fly-machine-lease-nonce";

/// What Tether wants a Fly app to be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlyAppSpec {
    /// App name (globally unique at Fly).
    pub name: String,
    /// Organization slug.
    pub org_slug: String,
}

/// A Fly app as observed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlyApp {
    /// App id.
    pub id: String,
    /// App name.
    pub name: String,
    /// Machines in the app, when reported.
    pub machine_count: Option<u64>,
    /// Slug of the organization owning the app, when reported.
    pub org: Option<String>,
    /// Fly's app status (`deployed`, `pending`, `suspended`), when reported.
    pub status: Option<String>,
}

/// What Tether wants one machine to be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlyMachineSpec {
    /// Machine name (the stable identity within the app).
    pub name: String,
    /// Region code (`ams`, `iad`, …); Fly picks when `None`.
    pub region: Option<String>,
    /// The managed part of the machine config.
    pub config: FlyMachineConfig,
    /// The app secrets version the machine must see (returned by
    /// [`FlyApps::set_secrets`]); sent as `min_secrets_version`.
    pub min_secrets_version: Option<u64>,
}

/// The part of a machine's config Tether manages. Read back from machine lists with Fly's
/// defaults filled in (a service without `autostart` autostarts, without `autostop` never
/// stops), so a config written from this type reads back equal.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlyMachineConfig {
    /// Image to run.
    pub image: String,
    /// Plain environment variables (secrets go through [`FlyApps::set_secrets`]).
    pub env: BTreeMap<String, String>,
    /// Machine size.
    pub guest: MachineGuest,
    /// Services exposed through the Fly proxy.
    pub services: Vec<MachineService>,
    /// Named health checks.
    pub checks: BTreeMap<String, MachineCheck>,
    /// Volumes mounted into the machine.
    pub mounts: Vec<MachineMount>,
}

/// A machine's size (`guest`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MachineGuest {
    /// `shared` or `performance`.
    pub cpu_kind: String,
    /// Number of CPUs.
    pub cpus: u32,
    /// Memory in MB.
    pub memory_mb: u32,
}

impl Default for MachineGuest {
    /// Fly's smallest machine, what it runs when `guest` is left out.
    fn default() -> Self {
        MachineGuest {
            cpu_kind: "shared".into(),
            cpus: 1,
            memory_mb: 256,
        }
    }
}

/// When the Fly proxy stops idle machines (`autostop`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Autostop {
    /// Never (`off`, or `false` in older responses).
    #[default]
    Off,
    /// Stop idle machines (`stop`, or `true`).
    Stop,
    /// Suspend idle machines, falling back to stopping (`suspend`).
    Suspend,
}

impl Autostop {
    fn as_str(self) -> &'static str {
        match self {
            Autostop::Off => "off",
            Autostop::Stop => "stop",
            Autostop::Suspend => "suspend",
        }
    }
}

/// A service exposed through the Fly proxy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MachineService {
    /// `tcp` or `udp`.
    pub protocol: String,
    /// Port the app listens on inside the machine.
    pub internal_port: u16,
    /// Public ports.
    pub ports: Vec<MachinePort>,
    /// Whether idle machines are stopped.
    pub autostop: Autostop,
    /// Whether stopped machines start on incoming requests (Fly's default: yes).
    pub autostart: bool,
    /// Machines kept running while `autostop` is on.
    pub min_machines_running: u32,
}

/// A public port of a service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MachinePort {
    /// Port number.
    pub port: u16,
    /// Connection handlers (`http`, `tls`, …).
    pub handlers: Vec<String>,
    /// Redirect plain HTTP to HTTPS.
    pub force_https: bool,
}

/// A machine health check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MachineCheck {
    /// `http` or `tcp`.
    pub kind: String,
    /// Port checked.
    pub port: u16,
    /// HTTP path (http checks).
    pub path: Option<String>,
    /// Time between checks, as Fly writes durations (`15s`).
    pub interval: Option<String>,
    /// Time before a check fails (`2s`).
    pub timeout: Option<String>,
}

/// A volume mounted into a machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MachineMount {
    /// Volume id.
    pub volume: String,
    /// Mount path.
    pub path: String,
}

/// A machine as observed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlyMachine {
    /// Machine id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Fly's state name (`created`, `starting`, `started`, `stopping`, `stopped`, `failed`, …).
    pub state: String,
    /// Region.
    pub region: Option<String>,
    /// The managed part of its config.
    pub config: FlyMachineConfig,
    /// Current version, the `current_version` of the next update.
    pub version: String,
    /// Health check results by check name (`passing`, `warning`, `critical`).
    pub checks: BTreeMap<String, String>,
    /// The config's `metadata` (string values only); a `bluegreen` rollout marks its green
    /// machines here ([`GREEN_OF`], [`GREEN_FOR`]).
    pub metadata: BTreeMap<String, String>,
}

impl FlyMachine {
    /// The id of the machine this one is the green twin of, when a `bluegreen` rollout
    /// created it.
    pub fn green_of(&self) -> Option<&str> {
        self.metadata.get(GREEN_OF).map(String::as_str)
    }

    /// Started, with every configured check passing.
    pub fn is_healthy(&self) -> bool {
        self.state == "started"
            && self
                .config
                .checks
                .keys()
                .all(|name| self.checks.get(name).is_some_and(|s| s == "passing"))
    }
}

/// What Tether wants a volume to be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlyVolumeSpec {
    /// Volume name (several volumes of an app may share it; Tether tells them apart by
    /// region).
    pub name: String,
    /// Region; a volume only attaches to machines in its region.
    pub region: String,
    /// Size in GB.
    pub size_gb: u32,
}

/// A volume as observed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlyVolume {
    /// Volume id (`vol_…`).
    pub id: String,
    /// Name.
    pub name: String,
    /// Region.
    pub region: String,
    /// Size in GB.
    pub size_gb: u32,
    /// Fly's state name (`created`, `extending`, …).
    pub state: String,
    /// The machine it is attached to.
    pub attached_machine_id: Option<String>,
}

/// Fly apps and what runs in them.
pub trait FlyApps: Deployments {
    /// Every app of the organization (all pages).
    fn list_apps(&self, org_slug: &str)
    -> impl Future<Output = PlatformResult<Vec<FlyApp>>> + Send;
    /// Reads one app.
    fn get_app(&self, name: &str) -> impl Future<Output = PlatformResult<FlyApp>> + Send;
    /// Finds the app by name, or creates it with an idempotency key derived from the name.
    fn ensure_app(
        &self,
        spec: &FlyAppSpec,
    ) -> impl Future<Output = PlatformResult<Ensured<FlyApp>>> + Send;
    /// Deletes the app; `Ok(false)` when it was already gone.
    fn delete_app(&self, name: &str) -> impl Future<Output = PlatformResult<bool>> + Send;
    /// Every machine of the app (all pages).
    fn list_machines(
        &self,
        app: &str,
    ) -> impl Future<Output = PlatformResult<Vec<FlyMachine>>> + Send;
    /// Reads one machine.
    fn get_machine(
        &self,
        app: &str,
        id: &str,
    ) -> impl Future<Output = PlatformResult<FlyMachine>> + Send;
    /// Finds the machine by name, or creates (and launches) it.
    fn ensure_machine(
        &self,
        app: &str,
        spec: &FlyMachineSpec,
    ) -> impl Future<Output = PlatformResult<Ensured<FlyMachine>>> + Send;
    /// Replaces the machine's managed config under a lease, guarded by its current version
    /// (the config fields Tether does not manage are kept as read).
    fn update_machine(
        &self,
        app: &str,
        id: &str,
        spec: &FlyMachineSpec,
    ) -> impl Future<Output = PlatformResult<FlyMachine>> + Send;
    /// Stops a machine.
    fn stop_machine(&self, app: &str, id: &str) -> impl Future<Output = PlatformResult<()>> + Send;
    /// Starts a stopped machine.
    fn start_machine(&self, app: &str, id: &str)
    -> impl Future<Output = PlatformResult<()>> + Send;
    /// Destroys a machine; `Ok(false)` when it was already gone.
    fn delete_machine(
        &self,
        app: &str,
        id: &str,
    ) -> impl Future<Output = PlatformResult<bool>> + Send;
    /// Every volume of the app (all pages).
    fn list_volumes(
        &self,
        app: &str,
    ) -> impl Future<Output = PlatformResult<Vec<FlyVolume>>> + Send;
    /// Creates a volume. Not idempotent at Fly (names may repeat), so callers look the
    /// volume up in [`FlyApps::list_volumes`] first and a failed create is not retried.
    fn create_volume(
        &self,
        app: &str,
        spec: &FlyVolumeSpec,
    ) -> impl Future<Output = PlatformResult<FlyVolume>> + Send;
    /// Grows a volume to `size_gb` (volumes cannot shrink); returns it and whether its
    /// machine must restart to see the new size.
    fn extend_volume(
        &self,
        app: &str,
        id: &str,
        size_gb: u32,
    ) -> impl Future<Output = PlatformResult<(FlyVolume, bool)>> + Send;
    /// Destroys a volume; `Ok(false)` when it was already gone.
    fn delete_volume(
        &self,
        app: &str,
        id: &str,
    ) -> impl Future<Output = PlatformResult<bool>> + Send;
    /// The app's secret names (values are never read back).
    fn list_secrets(&self, app: &str) -> impl Future<Output = PlatformResult<Vec<EnvVar>>> + Send;
    /// Sets secrets in one call; returns the new secrets version, which machines must be
    /// updated with to see the values. (The spec types values as strings, so unsetting goes
    /// through [`FlyApps::delete_secret`].)
    fn set_secrets(
        &self,
        app: &str,
        values: &BTreeMap<String, String>,
    ) -> impl Future<Output = PlatformResult<u64>> + Send;
    /// Removes one secret; returns the new secrets version (which machines must be updated
    /// with to lose the value), or `Ok(None)` when it was not there.
    fn delete_secret(
        &self,
        app: &str,
        name: &str,
    ) -> impl Future<Output = PlatformResult<Option<u64>>> + Send;
    /// The app's certificates (custom domains).
    fn list_certificates(
        &self,
        app: &str,
    ) -> impl Future<Output = PlatformResult<Vec<Domain>>> + Send;
    /// Requests an ACME certificate for `hostname`, or returns the existing one.
    fn ensure_certificate(
        &self,
        app: &str,
        hostname: &str,
    ) -> impl Future<Output = PlatformResult<Ensured<Domain>>> + Send;
    /// Removes a certificate; `Ok(false)` when it was not there.
    fn delete_certificate(
        &self,
        app: &str,
        hostname: &str,
    ) -> impl Future<Output = PlatformResult<bool>> + Send;
}

/// The Fly Machines client.
#[derive(Clone)]
pub struct FlyClient {
    http: PlatformHttp,
    page_limit: u32,
    lease_ttl_secs: u64,
}

impl FlyClient {
    /// A client sending through `http` (built for [`Platform::Fly`]).
    pub fn new(http: PlatformHttp) -> Self {
        FlyClient {
            http,
            page_limit: 1000,
            lease_ttl_secs: 30,
        }
    }

    /// Sets the page size of list calls (advisory at Fly).
    pub fn with_page_limit(mut self, limit: u32) -> Self {
        self.page_limit = limit.clamp(1, 1000);
        self
    }

    /// One machine in the vendor's shape (its config kept raw for read-modify-write).
    async fn get_raw_machine(&self, app: &str, id: &str) -> PlatformResult<ApiMachine> {
        let request = ApiRequest::get("get_machine", &["v1", "apps", app, "machines", id])
            .limited(GET_MACHINE, format!("{app}/{id}"));
        self.http.json(&request).await
    }

    /// Runs `update` under a machine lease, releasing it afterwards.
    async fn leased_update(&self, app: &str, id: &str, body: Value) -> PlatformResult<ApiMachine> {
        let key = format!("{app}/{id}");
        let lease = ApiRequest::post(
            "acquire_lease",
            &["v1", "apps", app, "machines", id, "lease"],
        )
        .json(json!({ "ttl": self.lease_ttl_secs }))
        .limited(ACTION, format!("lease:{key}"));
        let lease: ApiLease = self.http.json(&lease).await?;
        let nonce = lease
            .nonce
            .ok_or_else(|| malformed("acquire_lease", "lease without `nonce`".into()))?;
        // Guarded by current_version: a repeat after an applied update gets 409 instead of
        // applying twice, so the request may be retried.
        let update = ApiRequest::post("update_machine", &["v1", "apps", app, "machines", id])
            .header(LEASE_HEADER, nonce.clone())
            .json(body)
            .idempotent()
            .limited(ACTION, format!("update:{key}"));
        let result = self.http.json::<ApiMachine>(&update).await;
        let release = ApiRequest::new(
            Method::DELETE,
            "release_lease",
            &["v1", "apps", app, "machines", id, "lease"],
        )
        .header(LEASE_HEADER, nonce)
        .limited(ACTION, format!("release:{key}"));
        // A lease that cannot be released expires after its TTL; the update's outcome is
        // what matters to the caller.
        if let Err(e) = self.http.send(&release).await {
            tracing::warn!(error = %e, "failed to release a Fly machine lease");
        }
        result
    }
}

fn malformed(operation: &'static str, reason: String) -> PlatformError {
    PlatformError::Malformed {
        platform: Platform::Fly,
        operation,
        reason,
    }
}

fn gone_is_ok<T>(result: PlatformResult<T>) -> PlatformResult<bool> {
    match result {
        Ok(_) => Ok(true),
        Err(PlatformError::NotFound { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

#[derive(Deserialize)]
struct ApiApp {
    #[serde(default)]
    id: Option<String>,
    name: String,
    #[serde(default)]
    machine_count: Option<u64>,
    #[serde(default)]
    organization: Option<ApiOrganization>,
    #[serde(default)]
    status: Option<String>,
}

#[derive(Deserialize)]
struct ApiOrganization {
    #[serde(default)]
    slug: Option<String>,
}

impl From<ApiApp> for FlyApp {
    fn from(a: ApiApp) -> Self {
        FlyApp {
            id: a.id.unwrap_or_else(|| a.name.clone()),
            name: a.name,
            machine_count: a.machine_count,
            org: a.organization.and_then(|o| o.slug),
            status: a.status,
        }
    }
}

#[derive(Deserialize)]
struct ApiAppList {
    apps: Vec<ApiApp>,
    #[serde(default)]
    next_cursor: Option<String>,
}

#[derive(Deserialize)]
struct ApiMachine {
    id: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    region: Option<String>,
    #[serde(default)]
    version: Option<String>,
    #[serde(default)]
    instance_id: Option<String>,
    /// Kept raw: an update sends back the fields Tether does not manage as read.
    #[serde(default)]
    config: Option<Value>,
    #[serde(default)]
    checks: Vec<ApiCheckStatus>,
}

#[derive(Deserialize)]
struct ApiCheckStatus {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    status: Option<String>,
}

#[derive(Deserialize)]
struct ApiMachineConfig {
    #[serde(default)]
    image: Option<String>,
    #[serde(default)]
    env: Option<BTreeMap<String, String>>,
    #[serde(default)]
    guest: Option<ApiGuest>,
    #[serde(default)]
    services: Option<Vec<ApiService>>,
    #[serde(default)]
    checks: Option<BTreeMap<String, ApiCheck>>,
    #[serde(default)]
    mounts: Option<Vec<ApiMount>>,
}

#[derive(Deserialize)]
struct ApiGuest {
    #[serde(default)]
    cpu_kind: Option<String>,
    #[serde(default)]
    cpus: Option<u32>,
    #[serde(default)]
    memory_mb: Option<u32>,
}

#[derive(Deserialize)]
struct ApiService {
    #[serde(default)]
    protocol: Option<String>,
    #[serde(default)]
    internal_port: Option<u16>,
    #[serde(default)]
    ports: Option<Vec<ApiPort>>,
    /// A string (`off`, `stop`, `suspend`) or, in older responses, a boolean.
    #[serde(default)]
    autostop: Option<Value>,
    #[serde(default)]
    autostart: Option<bool>,
    #[serde(default)]
    min_machines_running: Option<u32>,
}

#[derive(Deserialize)]
struct ApiPort {
    #[serde(default)]
    port: Option<u16>,
    #[serde(default)]
    handlers: Option<Vec<String>>,
    #[serde(default)]
    force_https: Option<bool>,
}

#[derive(Deserialize)]
struct ApiCheck {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    port: Option<u16>,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    interval: Option<String>,
    #[serde(default)]
    timeout: Option<String>,
}

#[derive(Deserialize)]
struct ApiMount {
    #[serde(default)]
    volume: Option<String>,
    #[serde(default)]
    path: Option<String>,
}

fn autostop(operation: &'static str, value: Option<&Value>) -> PlatformResult<Autostop> {
    match value {
        None | Some(Value::Null) | Some(Value::Bool(false)) => Ok(Autostop::Off),
        Some(Value::Bool(true)) => Ok(Autostop::Stop),
        Some(Value::String(s)) => match s.as_str() {
            "off" => Ok(Autostop::Off),
            "stop" => Ok(Autostop::Stop),
            "suspend" => Ok(Autostop::Suspend),
            _ => Err(malformed(
                operation,
                "service with an unknown `autostop`".into(),
            )),
        },
        Some(_) => Err(malformed(
            operation,
            "service with an unknown `autostop`".into(),
        )),
    }
}

/// The managed part of a vendor machine config, with Fly's defaults filled in.
fn to_config(operation: &'static str, config: Value) -> PlatformResult<FlyMachineConfig> {
    let c: ApiMachineConfig = serde_json::from_value(config)
        .map_err(|e| malformed(operation, format!("machine config: {e}")))?;
    let image = c
        .image
        .ok_or_else(|| malformed(operation, "machine config without `image`".into()))?;
    let defaults = MachineGuest::default();
    let guest = c.guest.map_or(defaults.clone(), |g| MachineGuest {
        cpu_kind: g.cpu_kind.unwrap_or(defaults.cpu_kind),
        cpus: g.cpus.unwrap_or(defaults.cpus),
        memory_mb: g.memory_mb.unwrap_or(defaults.memory_mb),
    });
    let mut services = Vec::new();
    for s in c.services.unwrap_or_default() {
        services.push(MachineService {
            protocol: s.protocol.unwrap_or_else(|| "tcp".into()),
            internal_port: s
                .internal_port
                .ok_or_else(|| malformed(operation, "service without `internal_port`".into()))?,
            ports: s
                .ports
                .unwrap_or_default()
                .into_iter()
                .filter_map(|p| {
                    Some(MachinePort {
                        port: p.port?,
                        handlers: p.handlers.unwrap_or_default(),
                        force_https: p.force_https.unwrap_or(false),
                    })
                })
                .collect(),
            autostop: autostop(operation, s.autostop.as_ref())?,
            autostart: s.autostart.unwrap_or(true),
            min_machines_running: s.min_machines_running.unwrap_or(0),
        });
    }
    let mut checks = BTreeMap::new();
    for (name, check) in c.checks.unwrap_or_default() {
        let port = check
            .port
            .ok_or_else(|| malformed(operation, "check without `port`".into()))?;
        checks.insert(
            name,
            MachineCheck {
                kind: check.kind.unwrap_or_else(|| "tcp".into()),
                port,
                path: check.path,
                interval: check.interval,
                timeout: check.timeout,
            },
        );
    }
    let mounts = c
        .mounts
        .unwrap_or_default()
        .into_iter()
        .filter_map(|m| {
            Some(MachineMount {
                volume: m.volume?,
                path: m.path?,
            })
        })
        .collect();
    Ok(FlyMachineConfig {
        image,
        env: c.env.unwrap_or_default(),
        guest,
        services,
        checks,
        mounts,
    })
}

fn to_machine(operation: &'static str, m: ApiMachine) -> PlatformResult<FlyMachine> {
    let state = m
        .state
        .ok_or_else(|| malformed(operation, "machine without `state`".into()))?;
    let version = m
        .version
        .or(m.instance_id)
        .ok_or_else(|| malformed(operation, "machine without `version`".into()))?;
    let config = m
        .config
        .ok_or_else(|| malformed(operation, "machine without `config`".into()))?;
    let metadata = config["metadata"]
        .as_object()
        .map(|map| {
            map.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default();
    Ok(FlyMachine {
        name: m.name.unwrap_or_else(|| m.id.clone()),
        id: m.id,
        state,
        region: m.region,
        config: to_config(operation, config)?,
        version,
        checks: m
            .checks
            .into_iter()
            .filter_map(|c| Some((c.name?, c.status?)))
            .collect(),
        metadata,
    })
}

/// The vendor form of the managed config, written over `base` (the config as read, or an
/// empty object): managed keys are replaced, every other key is kept.
fn config_json(config: &FlyMachineConfig, base: Value) -> Value {
    let mut out = match base {
        Value::Object(map) => map,
        _ => serde_json::Map::new(),
    };
    let mut guest = match out.remove("guest") {
        Some(Value::Object(map)) => map,
        _ => serde_json::Map::new(),
    };
    guest.insert("cpu_kind".into(), json!(config.guest.cpu_kind));
    guest.insert("cpus".into(), json!(config.guest.cpus));
    guest.insert("memory_mb".into(), json!(config.guest.memory_mb));
    out.insert("image".into(), json!(config.image));
    out.insert("env".into(), json!(config.env));
    out.insert("guest".into(), Value::Object(guest));
    let services: Vec<Value> = config
        .services
        .iter()
        .map(|s| {
            json!({
                "protocol": s.protocol,
                "internal_port": s.internal_port,
                "ports": s.ports.iter().map(|p| json!({
                    "port": p.port,
                    "handlers": p.handlers,
                    "force_https": p.force_https,
                })).collect::<Vec<_>>(),
                "autostop": s.autostop.as_str(),
                "autostart": s.autostart,
                "min_machines_running": s.min_machines_running,
            })
        })
        .collect();
    out.insert("services".into(), Value::Array(services));
    let checks: serde_json::Map<String, Value> = config
        .checks
        .iter()
        .map(|(name, c)| {
            let mut check = json!({ "type": c.kind, "port": c.port });
            for (key, value) in [
                ("path", &c.path),
                ("interval", &c.interval),
                ("timeout", &c.timeout),
            ] {
                if let Some(value) = value {
                    check[key] = json!(value);
                }
            }
            (name.clone(), check)
        })
        .collect();
    out.insert("checks".into(), Value::Object(checks));
    let mounts: Vec<Value> = config
        .mounts
        .iter()
        .map(|m| json!({ "volume": m.volume, "path": m.path }))
        .collect();
    out.insert("mounts".into(), Value::Array(mounts));
    Value::Object(out)
}

#[derive(Deserialize)]
struct ApiVolume {
    id: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    region: Option<String>,
    #[serde(default)]
    size_gb: Option<u32>,
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    attached_machine_id: Option<String>,
}

fn to_volume(operation: &'static str, v: ApiVolume) -> PlatformResult<FlyVolume> {
    Ok(FlyVolume {
        name: v.name.unwrap_or_else(|| v.id.clone()),
        region: v
            .region
            .ok_or_else(|| malformed(operation, "volume without `region`".into()))?,
        size_gb: v
            .size_gb
            .ok_or_else(|| malformed(operation, "volume without `size_gb`".into()))?,
        state: v.state.unwrap_or_else(|| "created".into()),
        attached_machine_id: v.attached_machine_id.filter(|m| !m.is_empty()),
        id: v.id,
    })
}

#[derive(Deserialize)]
struct ApiExtendVolume {
    #[serde(default)]
    needs_restart: bool,
    volume: Option<ApiVolume>,
}

#[derive(Deserialize)]
struct ApiLease {
    #[serde(default)]
    nonce: Option<String>,
}

#[derive(Deserialize)]
struct ApiSecrets {
    #[serde(default)]
    secrets: Vec<ApiSecret>,
}

#[derive(Deserialize)]
struct ApiSecret {
    name: String,
}

#[derive(Deserialize)]
struct ApiSecretsVersion {
    #[serde(default)]
    version: Option<u64>,
    #[serde(default, rename = "Version")]
    legacy_version: Option<u64>,
}

#[derive(Deserialize)]
struct ApiCertificates {
    #[serde(default)]
    certificates: Vec<ApiCertificate>,
    #[serde(default)]
    next_cursor: Option<String>,
}

#[derive(Deserialize)]
struct ApiCertificate {
    hostname: String,
    #[serde(default)]
    configured: Option<bool>,
}

impl From<ApiCertificate> for Domain {
    fn from(c: ApiCertificate) -> Self {
        Domain {
            id: c.hostname.clone(),
            name: c.hostname,
            verified: c.configured.unwrap_or(false),
        }
    }
}

/// The create/update body: name, region, `min_secrets_version` and the config written
/// over `base`.
fn machine_body(spec: &FlyMachineSpec, base: Value) -> Value {
    let mut body = json!({
        "name": spec.name,
        "config": config_json(&spec.config, base),
    });
    if let Some(region) = &spec.region {
        body["region"] = json!(region);
    }
    if let Some(version) = spec.min_secrets_version {
        body["min_secrets_version"] = json!(version);
    }
    body
}

/// Why a machine on the new image will not come up: it failed to launch, or it stopped
/// with a check critical (its process does not start).
fn machine_failure(m: &FlyMachine) -> Option<String> {
    if m.state == "failed" {
        return Some(format!("machine {} failed to launch", m.name));
    }
    let critical: Vec<&str> = m
        .checks
        .iter()
        .filter(|(_, status)| *status == "critical")
        .map(|(name, _)| name.as_str())
        .collect();
    (m.state == "stopped" && !critical.is_empty()).then(|| {
        format!(
            "machine {} stopped with check(s) {} critical",
            m.name,
            critical.join(", ")
        )
    })
}

/// Tether's reading of the machines running (or meant to run) `image`: live once every
/// machine runs it started with every check passing.
fn rollout_state(machines: &[FlyMachine], image: &str) -> (DeploymentState, String) {
    let on_image: Vec<&FlyMachine> = machines
        .iter()
        .filter(|m| m.config.image == image)
        .collect();
    if on_image.is_empty() {
        return (DeploymentState::Superseded, "replaced".into());
    }
    if let Some(failure) = on_image.iter().find_map(|m| machine_failure(m)) {
        return (DeploymentState::Failed, failure);
    }
    if on_image.len() == machines.len() && on_image.iter().all(|m| m.is_healthy()) {
        return (DeploymentState::Live, "started, checks passing".into());
    }
    let pending = on_image
        .iter()
        .find(|m| !m.is_healthy())
        .map(|m| {
            if m.state == "started" {
                format!("machine {} waits for its checks", m.name)
            } else {
                format!("machine {} {}", m.name, m.state)
            }
        })
        .unwrap_or_else(|| "replacing".into());
    (DeploymentState::Deploying, pending)
}

/// How a new image reaches an app's machines, as `fly deploy --strategy` does it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlyStrategy {
    /// Machines are updated in batches of at most `max_unavailable` not yet healthy.
    Rolling {
        /// Machines updating (not yet healthy on the new image) at once.
        max_unavailable: usize,
    },
    /// Every machine is updated at once.
    Immediate,
    /// One machine first; once it is healthy, the rest as `Rolling`.
    Canary {
        /// Machines updating at once after the canary.
        max_unavailable: usize,
        /// Once the canary is healthy the rest waits (while the canary is analysed): the
        /// rollout reports [`CANARY_HELD`].
        hold: bool,
    },
    /// A green twin of every machine, started beside it out of the proxy; once every green
    /// passes its checks the greens take the traffic and the blue machines are destroyed
    /// ([`FlyClient::bluegreen`]).
    BlueGreen,
}

/// The end of a held canary's state (`canary 1/3 healthy, held for analysis`).
pub const CANARY_HELD: &str = "held for analysis";

impl FlyClient {
    /// Moves the rollout of `image` over `app`'s machines one step (resumable: the machines
    /// are the state): updates the next machines `strategy` allows — each under its lease
    /// and with its `current_version` — and reports where the rollout stands (`canary 1/3`,
    /// `rolling 2/5`). A machine of the new image that fails to launch, or stops with a
    /// critical check, fails it. `BlueGreen` goes through [`FlyClient::bluegreen`] (with no
    /// time budget and no owner); the others first end what a blue-green rollout stopped
    /// half-way left behind (see [`green_twins`]).
    pub async fn roll(
        &self,
        app: &str,
        image: &str,
        strategy: FlyStrategy,
    ) -> PlatformResult<Deployment> {
        if strategy == FlyStrategy::BlueGreen {
            let run = BlueGreenRun::default();
            return Ok(self.bluegreen(app, image, &run).await?.deployment);
        }
        let mut machines = self.list_machines(app).await?;
        if machines.is_empty() {
            return Err(PlatformError::Invalid {
                platform: Platform::Fly,
                operation: "deploy",
                status: None,
                reason: "the app has no machines to deploy to".into(),
            });
        }
        // A blue-green rollout that stopped half-way (superseded, timed out, rolled back)
        // left green twins beside their blue machines: the blue ones still serve, so the
        // twins go and this rollout updates the machines the app had.
        let twins: Vec<(String, String)> = green_twins(&machines)
            .into_iter()
            .map(|(green, blue)| (green.to_owned(), blue.to_owned()))
            .collect();
        for (green, blue) in &twins {
            self.uncordon_machine(app, blue).await?;
            self.delete_machine(app, green).await?;
        }
        machines.retain(|m| !twins.iter().any(|(green, _)| *green == m.id));
        machines.sort_by(|a, b| a.id.cmp(&b.id));
        let total = machines.len();
        let on: Vec<&FlyMachine> = machines
            .iter()
            .filter(|m| m.config.image == image)
            .collect();
        let failure = on.iter().find_map(|m| machine_failure(m));
        let healthy = on.iter().filter(|m| m.is_healthy()).count();
        let updating = on.len() - healthy;
        let rest: Vec<&FlyMachine> = machines
            .iter()
            .filter(|m| m.config.image != image)
            .collect();
        let deployment = |state, platform_state: String| Deployment {
            id: image.to_owned(),
            state,
            platform_state,
            source: Some(image.to_owned()),
        };
        if let Some(failure) = failure {
            return Ok(deployment(DeploymentState::Failed, failure));
        }
        if rest.is_empty() && updating == 0 {
            return Ok(deployment(
                DeploymentState::Live,
                format!("{total}/{total} machines started, checks passing"),
            ));
        }
        let (allowed, label) = match strategy {
            // Taken through `bluegreen` above: it creates machines, it updates none.
            FlyStrategy::BlueGreen => (0, "bluegreen"),
            FlyStrategy::Immediate => (rest.len(), "immediate"),
            FlyStrategy::Rolling { max_unavailable } => {
                (max_unavailable.max(1).saturating_sub(updating), "rolling")
            }
            FlyStrategy::Canary { .. } if on.is_empty() => (1, "canary"),
            FlyStrategy::Canary { .. } if healthy == 0 => (0, "canary"),
            FlyStrategy::Canary { hold: true, .. } => {
                return Ok(deployment(
                    DeploymentState::Deploying,
                    format!("canary {healthy}/{total} healthy, {CANARY_HELD}"),
                ));
            }
            FlyStrategy::Canary {
                max_unavailable, ..
            } => (max_unavailable.max(1).saturating_sub(updating), "rolling"),
        };
        let mut started = 0;
        for machine in rest.iter().take(allowed) {
            let spec = FlyMachineSpec {
                name: machine.name.clone(),
                region: machine.region.clone(),
                config: FlyMachineConfig {
                    image: image.to_owned(),
                    ..machine.config.clone()
                },
                min_secrets_version: None,
            };
            self.update_machine(app, &machine.id, &spec).await?;
            started += 1;
        }
        let on_image = on.len() + started;
        Ok(deployment(
            DeploymentState::Deploying,
            format!("{label} {on_image}/{total}"),
        ))
    }
}

/// Metadata key of a green machine: the id of the (blue) machine it is the twin of.
pub const GREEN_OF: &str = "tether_bluegreen_of";
/// Metadata key of a green machine: who created it (`release:<namespace>/<name>`).
pub const GREEN_FOR: &str = "tether_bluegreen_for";
/// How long the green machines of a `bluegreen` rollout may take to pass their checks
/// (flyctl's `--wait-timeout` default) before the rollout fails.
pub const BLUEGREEN_WAIT: Duration = Duration::from_secs(5 * 60);

/// The name of the green twin of machine `name`: the `-g` twin of a blue machine, the `-b`
/// twin of a green one, so that an app's machines alternate between the two names of their
/// slot (`web-ams-0` → `web-ams-0-g` → `web-ams-0-b` → `web-ams-0-g` …) and a twin is
/// never named like the machine beside it.
pub fn twin_name(name: &str) -> String {
    match name.strip_suffix("-g") {
        Some(base) => format!("{base}-b"),
        None => format!("{}-g", name.strip_suffix("-b").unwrap_or(name)),
    }
}

/// The green twins among `machines` whose blue machine is still there (a blue-green rollout
/// in progress, or one stopped half-way): green id → blue id. A green whose blue is gone
/// has taken its place and is no twin any more.
pub fn green_twins(machines: &[FlyMachine]) -> BTreeMap<&str, &str> {
    machines
        .iter()
        .filter_map(|m| {
            let blue = m.green_of()?;
            machines
                .iter()
                .find(|b| b.id == blue && b.id != m.id)
                .map(|b| (m.id.as_str(), b.id.as_str()))
        })
        .collect()
}

/// What a blue-green rollout knows beyond the app's machines.
#[derive(Clone, Debug, Default)]
pub struct BlueGreenRun {
    /// Who rolls out (`release:<namespace>/<name>`), written into the greens' metadata.
    pub owner: String,
    /// The green machines this rollout created and recorded earlier (ids): one that is gone
    /// while blue machines still wait for their twin fails the rollout, rather than a
    /// second set being made.
    pub recorded: Vec<String>,
    /// How long the rollout has run: greens not all passing their checks after
    /// [`BLUEGREEN_WAIT`] fail it.
    pub waited: Duration,
}

/// Where a blue-green rollout stands after one move.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlueGreen {
    /// The rollout, read as a deployment of the image.
    pub deployment: Deployment,
    /// This rollout's green machines (ids), created now or before.
    pub green: Vec<String>,
}

/// The next move of a blue-green rollout, planned from the app's machines (pure).
#[derive(Clone, Debug, PartialEq, Eq)]
enum BlueGreenMove {
    /// The app cannot roll out this way: the step fails, no machine touched.
    Refuse(String),
    /// Green twins of these (blue) machines are created.
    Create(Vec<usize>),
    /// The greens are on their way.
    Wait(String),
    /// A green failed (or timed out): the blue machines keep the traffic, the greens go.
    Abort(String),
    /// Every green passes its checks: they take the traffic and the blue machines go.
    Switch,
    /// Nothing paired: every machine runs the image (or one that runs it failed).
    Settled(DeploymentState, String),
}

/// A green twin and its blue machine (indexes into the machines planned from).
type Pair = (usize, usize);

/// A blue-green rollout's plan: indexes into the machines it was planned from.
#[derive(Clone, Debug, PartialEq, Eq)]
struct BlueGreenPlan {
    /// Twins of another image beside their blue machine: a rollout stopped half-way, ended
    /// first.
    stale: Vec<Pair>,
    /// This rollout's twins.
    pairs: Vec<Pair>,
    next: BlueGreenMove,
}

/// Plans the next move of the blue-green rollout of `image` over `machines`: every machine
/// not running the image gets a green twin (same config and region, the image, marked in
/// its metadata); once every green passes its checks they serve and the blue machines go.
/// A green that fails to launch or stops with a critical check, or greens not all healthy
/// after [`BLUEGREEN_WAIT`], abort the rollout.
fn plan_bluegreen(machines: &[FlyMachine], image: &str, run: &BlueGreenRun) -> BlueGreenPlan {
    let index = |id: &str| machines.iter().position(|m| m.id == id);
    let twins: Vec<Pair> = green_twins(machines)
        .into_iter()
        .filter_map(|(green, blue)| Some((index(green)?, index(blue)?)))
        .collect();
    let (pairs, stale): (Vec<Pair>, Vec<Pair>) = twins
        .iter()
        .partition(|(green, _)| machines[*green].config.image == image);
    let blues: Vec<usize> = (0..machines.len())
        .filter(|i| !twins.iter().any(|(green, _)| green == i))
        .filter(|i| !pairs.iter().any(|(_, blue)| blue == i))
        .filter(|i| machines[*i].config.image != image)
        .collect();
    let next = 'next: {
        if machines.is_empty() {
            break 'next BlueGreenMove::Refuse("the app has no machines to deploy to".into());
        }
        for &blue in &blues {
            let m = &machines[blue];
            if let Some(mount) = m.config.mounts.first() {
                break 'next BlueGreenMove::Refuse(format!(
                    "machine {} mounts volume {}: a volume attaches to one machine, so no green \
                     twin can start beside it (deploy this app with `rolling`)",
                    m.name, mount.volume
                ));
            }
            let twin = twin_name(&m.name);
            let taken = machines.iter().enumerate().any(|(i, other)| {
                other.name == twin && !stale.iter().any(|(green, _)| *green == i)
            });
            if taken {
                break 'next BlueGreenMove::Refuse(format!(
                    "machine {twin} exists and is not the green twin of {}: remove it, or \
                     deploy with another strategy",
                    m.name
                ));
            }
        }
        if let Some(failure) = pairs
            .iter()
            .find_map(|(green, _)| machine_failure(&machines[*green]))
        {
            break 'next BlueGreenMove::Abort(format!("green {failure}"));
        }
        if !blues.is_empty() {
            if let Some(gone) = run.recorded.iter().find(|id| index(id).is_none()) {
                break 'next BlueGreenMove::Abort(format!(
                    "green machine {gone} is gone before its blue machine was replaced"
                ));
            }
            break 'next BlueGreenMove::Create(blues);
        }
        if pairs.is_empty() {
            // (The stale twins are destroyed before this is reported.)
            let kept: Vec<FlyMachine> = (0..machines.len())
                .filter(|i| !stale.iter().any(|(green, _)| green == i))
                .map(|i| machines[i].clone())
                .collect();
            let (state, text) = rollout_state(&kept, image);
            let text = match state {
                DeploymentState::Live => {
                    format!("{n}/{n} machines started, checks passing", n = kept.len())
                }
                _ => text,
            };
            break 'next BlueGreenMove::Settled(state, text);
        }
        let waiting: Vec<&FlyMachine> = pairs
            .iter()
            .map(|(green, _)| &machines[*green])
            .filter(|m| !m.is_healthy())
            .collect();
        let Some(first) = waiting.first() else {
            break 'next BlueGreenMove::Switch;
        };
        let critical: Vec<&str> = first
            .checks
            .iter()
            .filter(|(_, status)| *status == "critical")
            .map(|(name, _)| name.as_str())
            .collect();
        let why = match (first.state.as_str(), critical.is_empty()) {
            ("started", true) => format!("machine {} waits for its checks", first.name),
            ("started", false) => format!(
                "machine {} has check(s) {} critical",
                first.name,
                critical.join(", ")
            ),
            (state, _) => format!("machine {} {state}", first.name),
        };
        if run.waited > BLUEGREEN_WAIT {
            break 'next BlueGreenMove::Abort(format!(
                "green machines did not pass their checks within {}s ({why})",
                BLUEGREEN_WAIT.as_secs()
            ));
        }
        BlueGreenMove::Wait(format!(
            "bluegreen {}/{} green healthy, {why}",
            pairs.len() - waiting.len(),
            pairs.len()
        ))
    };
    BlueGreenPlan { stale, pairs, next }
}

impl FlyClient {
    /// Moves the blue-green rollout of `image` over `app`'s machines one step, as
    /// `fly deploy --strategy bluegreen` does (resumable: the machines are the state, each
    /// green names its blue machine in its metadata): creates a green twin of every machine
    /// ([`twin_name`], same config and region, the image, out of the proxy with
    /// `skip_service_registration`); waits, one call at a time, until every green passes
    /// its own checks; then uncordons the greens, cordons the blue machines and destroys
    /// them. A green that does not come up within [`BLUEGREEN_WAIT`] fails the rollout: the
    /// greens are destroyed and the blue machines, untouched, keep serving. Apps whose
    /// machines mount volumes are refused (a volume attaches to one machine).
    pub async fn bluegreen(
        &self,
        app: &str,
        image: &str,
        run: &BlueGreenRun,
    ) -> PlatformResult<BlueGreen> {
        let mut machines = self.list_machines(app).await?;
        machines.sort_by(|a, b| a.id.cmp(&b.id));
        let plan = plan_bluegreen(&machines, image, run);
        for &(green, blue) in &plan.stale {
            self.uncordon_machine(app, &machines[blue].id).await?;
            self.delete_machine(app, &machines[green].id).await?;
        }
        let id = |i: &usize| machines[*i].id.clone();
        let mut green: Vec<String> = plan.pairs.iter().map(|(g, _)| id(g)).collect();
        let deployment = |state, platform_state: String| Deployment {
            id: image.to_owned(),
            state,
            platform_state,
            source: Some(image.to_owned()),
        };
        let deployment = match plan.next {
            BlueGreenMove::Refuse(reason) => deployment(DeploymentState::Failed, reason),
            BlueGreenMove::Create(blues) => {
                for blue in &blues {
                    green.push(self.create_green(app, &machines[*blue], image, run).await?);
                }
                deployment(
                    DeploymentState::Deploying,
                    format!(
                        "bluegreen 0/{} green healthy, {} green machine(s) created",
                        green.len(),
                        blues.len()
                    ),
                )
            }
            BlueGreenMove::Wait(text) => deployment(DeploymentState::Deploying, text),
            BlueGreenMove::Abort(reason) => {
                // The blue machines take (keep) the traffic before the greens go.
                for (_, blue) in &plan.pairs {
                    self.uncordon_machine(app, &id(blue)).await?;
                }
                for (g, _) in &plan.pairs {
                    self.delete_machine(app, &id(g)).await?;
                }
                deployment(
                    DeploymentState::Failed,
                    format!("{reason}; the green machines were destroyed, the blue ones serve"),
                )
            }
            BlueGreenMove::Switch => {
                for (g, _) in &plan.pairs {
                    self.uncordon_machine(app, &id(g)).await?;
                }
                for (_, blue) in &plan.pairs {
                    self.cordon_machine(app, &id(blue)).await?;
                }
                for (_, blue) in &plan.pairs {
                    self.delete_machine(app, &id(blue)).await?;
                }
                let n = machines.len() - plan.pairs.len() - plan.stale.len();
                deployment(
                    DeploymentState::Live,
                    format!(
                        "{n}/{n} machines started, checks passing (bluegreen: the blue ones destroyed)"
                    ),
                )
            }
            BlueGreenMove::Settled(state, text) => deployment(state, text),
        };
        Ok(BlueGreen { deployment, green })
    }

    /// Creates the green twin of `blue` running `image`: the blue machine's whole config as
    /// Fly holds it (what Tether does not manage included), the image replaced, marked
    /// green in its metadata, and left out of the proxy until it is uncordoned.
    async fn create_green(
        &self,
        app: &str,
        blue: &FlyMachine,
        image: &str,
        run: &BlueGreenRun,
    ) -> PlatformResult<String> {
        let raw = self.get_raw_machine(app, &blue.id).await?;
        let mut config = match raw.config {
            Some(Value::Object(map)) => map,
            _ => serde_json::Map::new(),
        };
        config.insert("image".into(), json!(image));
        let mut metadata = match config.remove("metadata") {
            Some(Value::Object(map)) => map,
            _ => serde_json::Map::new(),
        };
        metadata.insert(GREEN_OF.into(), json!(blue.id));
        match run.owner.as_str() {
            "" => metadata.remove(GREEN_FOR),
            owner => metadata.insert(GREEN_FOR.into(), json!(owner)),
        };
        config.insert("metadata".into(), Value::Object(metadata));
        let mut body = json!({
            "name": twin_name(&blue.name),
            "config": Value::Object(config),
            "skip_service_registration": true,
        });
        if let Some(region) = &blue.region {
            body["region"] = json!(region);
        }
        let request = ApiRequest::post("create_machine", &["v1", "apps", app, "machines"])
            .json(body)
            .limited(ACTION, format!("create_machine:{app}"));
        let machine: ApiMachine = self.http.json(&request).await?;
        Ok(machine.id)
    }

    /// Sends a machine action without a body (`cordon`, `uncordon`); a machine already gone
    /// needs neither.
    async fn machine_action(
        &self,
        app: &str,
        id: &str,
        action: &'static str,
    ) -> PlatformResult<()> {
        let operation = match action {
            "cordon" => "cordon_machine",
            _ => "uncordon_machine",
        };
        let request = ApiRequest::post(operation, &["v1", "apps", app, "machines", id, action])
            .idempotent()
            .limited(ACTION, format!("{action}:{app}/{id}"));
        gone_is_ok(self.http.send(&request).await).map(|_| ())
    }

    /// Disables a machine's services: the Fly proxy stops routing to it.
    pub async fn cordon_machine(&self, app: &str, id: &str) -> PlatformResult<()> {
        self.machine_action(app, id, "cordon").await
    }

    /// Enables a machine's services again (or for the first time, after a create with
    /// `skip_service_registration`).
    pub async fn uncordon_machine(&self, app: &str, id: &str) -> PlatformResult<()> {
        self.machine_action(app, id, "uncordon").await
    }
}

impl FlyApps for FlyClient {
    async fn list_apps(&self, org_slug: &str) -> PlatformResult<Vec<FlyApp>> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut request = ApiRequest::get("list_apps", &["v1", "apps"])
                .query("org_slug", org_slug)
                .query("limit", self.page_limit.to_string())
                .limited(ACTION, format!("list_apps:{org_slug}"));
            if let Some(cursor) = &cursor {
                request = request.query("cursor", cursor.clone());
            }
            let page: ApiAppList = self.http.json(&request).await?;
            let count = page.apps.len();
            out.extend(page.apps.into_iter().map(FlyApp::from));
            cursor = page.next_cursor.filter(|c| !c.is_empty());
            if cursor.is_none() || count == 0 {
                return Ok(out);
            }
        }
    }

    async fn get_app(&self, name: &str) -> PlatformResult<FlyApp> {
        let request = ApiRequest::get("get_app", &["v1", "apps", name])
            .limited(ACTION, format!("get_app:{name}"));
        let app: ApiApp = self.http.json(&request).await?;
        Ok(app.into())
    }

    async fn ensure_app(&self, spec: &FlyAppSpec) -> PlatformResult<Ensured<FlyApp>> {
        match self.get_app(&spec.name).await {
            Ok(app) => {
                return Ok(Ensured {
                    object: app,
                    created: false,
                });
            }
            Err(PlatformError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
        // The key is derived from the name, so a retry (or a second controller after a
        // crash) gets the first app back instead of an error or a twin.
        let request = ApiRequest::post("create_app", &["v1", "apps"])
            .json(json!({
                "name": spec.name,
                "org_slug": spec.org_slug,
                "idempotency_key": format!("tether:{}:{}", spec.org_slug, spec.name),
            }))
            .idempotent()
            .limited(ACTION, format!("create_app:{}", spec.org_slug));
        self.http.send(&request).await?;
        Ok(Ensured {
            object: self.get_app(&spec.name).await?,
            created: true,
        })
    }

    async fn delete_app(&self, name: &str) -> PlatformResult<bool> {
        let request = ApiRequest::new(Method::DELETE, "delete_app", &["v1", "apps", name])
            .limited(ACTION, format!("delete_app:{name}"));
        gone_is_ok(self.http.send(&request).await)
    }

    async fn list_machines(&self, app: &str) -> PlatformResult<Vec<FlyMachine>> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut request = ApiRequest::get("list_machines", &["v1", "apps", app, "machines"])
                .query("limit", self.page_limit.to_string())
                .limited(ACTION, format!("list_machines:{app}"));
            if let Some(cursor) = &cursor {
                request = request.query("cursor", cursor.clone());
            }
            let response = self.http.send(&request).await?;
            let page: Vec<ApiMachine> =
                super::http::decode(Platform::Fly, "list_machines", &response.body)?;
            for machine in page {
                out.push(to_machine("list_machines", machine)?);
            }
            // Pages may be short or empty; only the header says whether more follow.
            cursor = response
                .header("fly-next-cursor")
                .filter(|c| !c.is_empty())
                .map(str::to_owned);
            if cursor.is_none() {
                return Ok(out);
            }
        }
    }

    async fn get_machine(&self, app: &str, id: &str) -> PlatformResult<FlyMachine> {
        to_machine("get_machine", self.get_raw_machine(app, id).await?)
    }

    async fn ensure_machine(
        &self,
        app: &str,
        spec: &FlyMachineSpec,
    ) -> PlatformResult<Ensured<FlyMachine>> {
        if let Some(existing) = self
            .list_machines(app)
            .await?
            .into_iter()
            .find(|m| m.name == spec.name)
        {
            return Ok(Ensured {
                object: existing,
                created: false,
            });
        }
        let request = ApiRequest::post("create_machine", &["v1", "apps", app, "machines"])
            .json(machine_body(spec, json!({})))
            .limited(ACTION, format!("create_machine:{app}"));
        let machine: ApiMachine = self.http.json(&request).await?;
        Ok(Ensured {
            object: to_machine("create_machine", machine)?,
            created: true,
        })
    }

    async fn update_machine(
        &self,
        app: &str,
        id: &str,
        spec: &FlyMachineSpec,
    ) -> PlatformResult<FlyMachine> {
        let mut current = self.get_raw_machine(app, id).await?;
        let version = current
            .version
            .clone()
            .or_else(|| current.instance_id.clone())
            .ok_or_else(|| malformed("get_machine", "machine without `version`".into()))?;
        let base = current.config.take().unwrap_or_else(|| json!({}));
        let mut body = machine_body(spec, base);
        body["current_version"] = json!(version);
        match self.leased_update(app, id, body).await {
            Ok(machine) => to_machine("update_machine", machine),
            // A retried update that had already been applied: the machine now is what we
            // asked for.
            Err(PlatformError::Conflict { .. }) => match self.get_machine(app, id).await {
                Ok(now) if now.config == spec.config => Ok(now),
                _ => Err(PlatformError::Conflict {
                    platform: Platform::Fly,
                    operation: "update_machine",
                    reason: "the machine changed since it was read".into(),
                }),
            },
            Err(e) => Err(e),
        }
    }

    async fn stop_machine(&self, app: &str, id: &str) -> PlatformResult<()> {
        let request =
            ApiRequest::post("stop_machine", &["v1", "apps", app, "machines", id, "stop"])
                .json(json!({}))
                .idempotent()
                .limited(ACTION, format!("stop:{app}/{id}"));
        self.http.send(&request).await.map(|_| ())
    }

    async fn start_machine(&self, app: &str, id: &str) -> PlatformResult<()> {
        let request = ApiRequest::post(
            "start_machine",
            &["v1", "apps", app, "machines", id, "start"],
        )
        .idempotent()
        .limited(ACTION, format!("start:{app}/{id}"));
        self.http.send(&request).await.map(|_| ())
    }

    async fn delete_machine(&self, app: &str, id: &str) -> PlatformResult<bool> {
        let request = ApiRequest::new(
            Method::DELETE,
            "delete_machine",
            &["v1", "apps", app, "machines", id],
        )
        .query("force", "true")
        .limited(ACTION, format!("delete:{app}/{id}"));
        gone_is_ok(self.http.send(&request).await)
    }

    async fn list_volumes(&self, app: &str) -> PlatformResult<Vec<FlyVolume>> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut request = ApiRequest::get("list_volumes", &["v1", "apps", app, "volumes"])
                .query("limit", self.page_limit.to_string())
                .limited(ACTION, format!("list_volumes:{app}"));
            if let Some(cursor) = &cursor {
                request = request.query("cursor", cursor.clone());
            }
            let response = self.http.send(&request).await?;
            let page: Vec<ApiVolume> =
                super::http::decode(Platform::Fly, "list_volumes", &response.body)?;
            for volume in page {
                out.push(to_volume("list_volumes", volume)?);
            }
            cursor = response
                .header("fly-next-cursor")
                .filter(|c| !c.is_empty())
                .map(str::to_owned);
            if cursor.is_none() {
                return Ok(out);
            }
        }
    }

    async fn create_volume(&self, app: &str, spec: &FlyVolumeSpec) -> PlatformResult<FlyVolume> {
        let request = ApiRequest::post("create_volume", &["v1", "apps", app, "volumes"])
            .json(json!({
                "name": spec.name,
                "region": spec.region,
                "size_gb": spec.size_gb,
            }))
            .limited(ACTION, format!("create_volume:{app}"));
        let volume: ApiVolume = self.http.json(&request).await?;
        to_volume("create_volume", volume)
    }

    async fn extend_volume(
        &self,
        app: &str,
        id: &str,
        size_gb: u32,
    ) -> PlatformResult<(FlyVolume, bool)> {
        // Extending to the same size again is a no-op: safe to retry.
        let request = ApiRequest::new(
            Method::PUT,
            "extend_volume",
            &["v1", "apps", app, "volumes", id, "extend"],
        )
        .json(json!({ "size_gb": size_gb }))
        .idempotent()
        .limited(ACTION, format!("extend_volume:{app}/{id}"));
        let extended: ApiExtendVolume = self.http.json(&request).await?;
        let volume = extended
            .volume
            .ok_or_else(|| malformed("extend_volume", "response without `volume`".into()))?;
        Ok((to_volume("extend_volume", volume)?, extended.needs_restart))
    }

    async fn delete_volume(&self, app: &str, id: &str) -> PlatformResult<bool> {
        let request = ApiRequest::new(
            Method::DELETE,
            "delete_volume",
            &["v1", "apps", app, "volumes", id],
        )
        .limited(ACTION, format!("delete_volume:{app}/{id}"));
        gone_is_ok(self.http.send(&request).await)
    }

    async fn list_secrets(&self, app: &str) -> PlatformResult<Vec<EnvVar>> {
        let request = ApiRequest::get("list_secrets", &["v1", "apps", app, "secrets"])
            .limited(ACTION, format!("list_secrets:{app}"));
        let secrets: ApiSecrets = self.http.json(&request).await?;
        Ok(secrets
            .secrets
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
        app: &str,
        values: &BTreeMap<String, String>,
    ) -> PlatformResult<u64> {
        // Setting the same values again yields the same state: safe to retry.
        let request = ApiRequest::post("set_secrets", &["v1", "apps", app, "secrets"])
            .json(json!({ "values": values }))
            .idempotent()
            .limited(ACTION, format!("set_secrets:{app}"));
        let version: ApiSecretsVersion = self.http.json(&request).await?;
        version
            .version
            .or(version.legacy_version)
            .ok_or_else(|| malformed("set_secrets", "response without `version`".into()))
    }

    async fn delete_secret(&self, app: &str, name: &str) -> PlatformResult<Option<u64>> {
        let request = ApiRequest::new(
            Method::DELETE,
            "delete_secret",
            &["v1", "apps", app, "secrets", name],
        )
        .limited(ACTION, format!("delete_secret:{app}"));
        match self.http.json::<ApiSecretsVersion>(&request).await {
            Ok(version) => version
                .version
                .or(version.legacy_version)
                .map(Some)
                .ok_or_else(|| malformed("delete_secret", "response without `version`".into())),
            Err(PlatformError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn list_certificates(&self, app: &str) -> PlatformResult<Vec<Domain>> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut request =
                ApiRequest::get("list_certificates", &["v1", "apps", app, "certificates"])
                    .query("limit", self.page_limit.to_string())
                    .limited(ACTION, format!("list_certificates:{app}"));
            if let Some(cursor) = &cursor {
                request = request.query("cursor", cursor.clone());
            }
            let page: ApiCertificates = self.http.json(&request).await?;
            let count = page.certificates.len();
            out.extend(page.certificates.into_iter().map(Domain::from));
            cursor = page.next_cursor.filter(|c| !c.is_empty());
            if cursor.is_none() || count == 0 {
                return Ok(out);
            }
        }
    }

    async fn ensure_certificate(
        &self,
        app: &str,
        hostname: &str,
    ) -> PlatformResult<Ensured<Domain>> {
        if let Some(existing) = self
            .list_certificates(app)
            .await?
            .into_iter()
            .find(|d| d.name == hostname)
        {
            return Ok(Ensured {
                object: existing,
                created: false,
            });
        }
        let request = ApiRequest::post(
            "add_certificate",
            &["v1", "apps", app, "certificates", "acme"],
        )
        .json(json!({ "hostname": hostname }))
        .limited(ACTION, format!("add_certificate:{app}"));
        let certificate: ApiCertificate = self.http.json(&request).await?;
        Ok(Ensured {
            object: certificate.into(),
            created: true,
        })
    }

    async fn delete_certificate(&self, app: &str, hostname: &str) -> PlatformResult<bool> {
        let request = ApiRequest::new(
            Method::DELETE,
            "delete_certificate",
            &["v1", "apps", app, "certificates", hostname],
        )
        .limited(ACTION, format!("delete_certificate:{app}"));
        gone_is_ok(self.http.send(&request).await)
    }
}

impl Deployments for FlyClient {
    async fn deploy(&self, target: &str, source: &DeploySource) -> PlatformResult<Deployment> {
        let DeploySource::Image(image) = source else {
            return Err(PlatformError::Invalid {
                platform: Platform::Fly,
                operation: "deploy",
                status: None,
                reason: "Fly machines deploy container images".into(),
            });
        };
        // Every machine at once: `fly deploy --strategy immediate`.
        self.roll(target, image, FlyStrategy::Immediate).await
    }

    async fn deployment(&self, target: &str, deployment_id: &str) -> PlatformResult<Deployment> {
        let machines = self.list_machines(target).await?;
        let (state, platform_state) = rollout_state(&machines, deployment_id);
        Ok(Deployment {
            id: deployment_id.to_owned(),
            state,
            platform_state,
            source: Some(deployment_id.to_owned()),
        })
    }

    async fn list_deployments(&self, target: &str) -> PlatformResult<Vec<Deployment>> {
        let machines = self.list_machines(target).await?;
        let mut images: Vec<String> = machines.iter().map(|m| m.config.image.clone()).collect();
        images.dedup();
        Ok(images
            .into_iter()
            .map(|image| {
                let (state, platform_state) = rollout_state(&machines, &image);
                Deployment {
                    id: image.clone(),
                    state,
                    platform_state,
                    source: Some(image),
                }
            })
            .collect())
    }

    async fn rollback(&self, target: &str, deployment_id: &str) -> PlatformResult<Deployment> {
        self.deploy(target, &DeploySource::Image(deployment_id.to_owned()))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine(image: &str, state: &str) -> FlyMachine {
        FlyMachine {
            id: "m".into(),
            name: "m".into(),
            state: state.into(),
            region: None,
            config: FlyMachineConfig {
                image: image.into(),
                ..FlyMachineConfig::default()
            },
            version: "v".into(),
            checks: BTreeMap::new(),
            metadata: BTreeMap::new(),
        }
    }

    #[test]
    fn a_rollout_is_live_only_when_every_machine_runs_the_image_started() {
        let both = [machine("a:2", "started"), machine("a:2", "started")];
        assert_eq!(rollout_state(&both, "a:2").0, DeploymentState::Live);
        let half = [machine("a:2", "started"), machine("a:1", "started")];
        assert_eq!(rollout_state(&half, "a:2").0, DeploymentState::Deploying);
        let failed = [machine("a:2", "failed"), machine("a:2", "started")];
        assert_eq!(rollout_state(&failed, "a:2").0, DeploymentState::Failed);
        assert_eq!(rollout_state(&half, "a:0").0, DeploymentState::Superseded);
    }

    #[test]
    fn a_machine_waits_for_its_checks_and_one_stopped_with_a_critical_check_fails() {
        let mut checked = machine("a:2", "started");
        checked.config.checks.insert(
            "alive".into(),
            MachineCheck {
                kind: "http".into(),
                port: 8080,
                path: Some("/healthz".into()),
                interval: None,
                timeout: None,
            },
        );
        checked.checks.insert("alive".into(), "critical".into());
        let (state, why) = rollout_state(std::slice::from_ref(&checked), "a:2");
        assert_eq!(state, DeploymentState::Deploying);
        assert_eq!(why, "machine m waits for its checks");
        checked.state = "stopped".into();
        let (state, why) = rollout_state(std::slice::from_ref(&checked), "a:2");
        assert_eq!(state, DeploymentState::Failed);
        assert_eq!(why, "machine m stopped with check(s) alive critical");
        checked.state = "started".into();
        checked.checks.insert("alive".into(), "passing".into());
        assert_eq!(rollout_state(&[checked], "a:2").0, DeploymentState::Live);
    }

    /// Machine `id` (named `web-ams-<id>`) on `image`, started with its check passing.
    fn up(id: &str, image: &str) -> FlyMachine {
        let mut m = machine(image, "started");
        m.id = id.into();
        m.name = format!("web-ams-{id}");
        m.config.checks.insert(
            "alive".into(),
            MachineCheck {
                kind: "tcp".into(),
                port: 8080,
                path: None,
                interval: None,
                timeout: None,
            },
        );
        m.checks.insert("alive".into(), "passing".into());
        m
    }

    /// The green twin `id` of `blue` on `image`, in `state` with its check `check`.
    fn green(id: &str, blue: &FlyMachine, image: &str, state: &str, check: &str) -> FlyMachine {
        let mut m = up(id, image);
        m.name = twin_name(&blue.name);
        m.state = state.into();
        m.checks.insert("alive".into(), check.into());
        m.metadata.insert(GREEN_OF.into(), blue.id.clone());
        m
    }

    fn run(waited_secs: u64, recorded: &[&str]) -> BlueGreenRun {
        BlueGreenRun {
            owner: "release:default/web-2".into(),
            recorded: recorded.iter().map(|r| r.to_string()).collect(),
            waited: Duration::from_secs(waited_secs),
        }
    }

    #[test]
    fn twin_names_alternate_between_the_g_and_the_b_name_of_a_slot() {
        assert_eq!(twin_name("web-ams-0"), "web-ams-0-g");
        assert_eq!(twin_name("web-ams-0-g"), "web-ams-0-b");
        assert_eq!(twin_name("web-ams-0-b"), "web-ams-0-g");
    }

    #[test]
    fn a_green_is_a_twin_only_while_the_machine_it_replaces_is_there() {
        let blue = up("1", "web:1");
        let g = green("2", &blue, "web:2", "started", "passing");
        let both = [blue.clone(), g.clone()];
        assert_eq!(green_twins(&both), BTreeMap::from([("2", "1")]));
        // Alone, the green has taken the blue machine's place.
        assert!(green_twins(std::slice::from_ref(&g)).is_empty());
    }

    #[test]
    fn bluegreen_creates_one_green_per_machine_waits_for_their_checks_then_switches() {
        let blues = [up("1", "web:1"), up("2", "web:1")];
        let plan = plan_bluegreen(&blues, "web:2", &run(0, &[]));
        assert_eq!(plan.next, BlueGreenMove::Create(vec![0, 1]));
        // Created, not yet passing.
        let mut all = blues.to_vec();
        all.push(green("3", &blues[0], "web:2", "started", "passing"));
        all.push(green("4", &blues[1], "web:2", "starting", "critical"));
        let plan = plan_bluegreen(&all, "web:2", &run(30, &["3", "4"]));
        assert_eq!(plan.pairs, [(2, 0), (3, 1)]);
        assert_eq!(
            plan.next,
            BlueGreenMove::Wait("bluegreen 1/2 green healthy, machine web-ams-2-g starting".into())
        );
        // Every green passes: they take over.
        all[3].state = "started".into();
        all[3].checks.insert("alive".into(), "passing".into());
        assert_eq!(
            plan_bluegreen(&all, "web:2", &run(40, &["3", "4"])).next,
            BlueGreenMove::Switch
        );
        // The blue machines are gone: the greens hold the app, live.
        let after = &all[2..];
        assert_eq!(
            plan_bluegreen(after, "web:2", &run(50, &["3", "4"])).next,
            BlueGreenMove::Settled(
                DeploymentState::Live,
                "2/2 machines started, checks passing".into()
            )
        );
    }

    #[test]
    fn a_controller_that_crashed_mid_creation_makes_only_the_missing_greens() {
        let blues = [up("1", "web:1"), up("2", "web:1")];
        let mut all = blues.to_vec();
        // The first green was created, the crash lost its id.
        all.push(green("3", &blues[0], "web:2", "starting", "critical"));
        let plan = plan_bluegreen(&all, "web:2", &run(1, &[]));
        assert_eq!(plan.pairs, [(2, 0)]);
        assert_eq!(plan.next, BlueGreenMove::Create(vec![1]));
        // Half switched (one blue machine destroyed) when the crash came: the switch goes on.
        let half = [
            green("3", &blues[0], "web:2", "started", "passing"),
            blues[1].clone(),
            green("4", &blues[1], "web:2", "started", "passing"),
        ];
        assert_eq!(
            plan_bluegreen(&half, "web:2", &run(9, &["3", "4"])).next,
            BlueGreenMove::Switch
        );
    }

    #[test]
    fn a_green_that_stops_critical_or_outlasts_the_wait_aborts_and_a_lost_one_is_not_made_again() {
        let blue = up("1", "web:1");
        let crashed = green("2", &blue, "web:3", "stopped", "critical");
        let plan = plan_bluegreen(&[blue.clone(), crashed], "web:3", &run(5, &["2"]));
        assert_eq!(
            plan.next,
            BlueGreenMove::Abort(
                "green machine web-ams-1-g stopped with check(s) alive critical".into()
            )
        );
        let slow = green("2", &blue, "web:3", "started", "critical");
        let all = [blue.clone(), slow];
        assert!(matches!(
            plan_bluegreen(&all, "web:3", &run(60, &["2"])).next,
            BlueGreenMove::Wait(_)
        ));
        assert_eq!(
            plan_bluegreen(&all, "web:3", &run(BLUEGREEN_WAIT.as_secs() + 1, &["2"])).next,
            BlueGreenMove::Abort(
                "green machines did not pass their checks within 300s (machine web-ams-1-g has check(s) alive critical)".into()
            )
        );
        // Its green destroyed (a crash before the failure was written): not made again.
        assert_eq!(
            plan_bluegreen(&[blue], "web:3", &run(61, &["2"])).next,
            BlueGreenMove::Abort(
                "green machine 2 is gone before its blue machine was replaced".into()
            )
        );
    }

    #[test]
    fn machines_with_a_volume_or_a_taken_twin_name_are_refused_untouched() {
        let mut blue = up("1", "web:1");
        blue.config.mounts.push(MachineMount {
            volume: "vol_1".into(),
            path: "/data".into(),
        });
        let BlueGreenMove::Refuse(why) = plan_bluegreen(&[blue], "web:2", &run(0, &[])).next else {
            panic!("not refused");
        };
        assert!(why.contains("mounts volume vol_1"), "{why}");
        let blue = up("1", "web:1");
        let mut squatter = up("9", "other:1");
        squatter.name = "web-ams-1-g".into();
        let BlueGreenMove::Refuse(why) =
            plan_bluegreen(&[blue, squatter], "web:2", &run(0, &[])).next
        else {
            panic!("not refused");
        };
        assert!(why.starts_with("machine web-ams-1-g exists"), "{why}");
    }

    #[test]
    fn the_greens_of_a_rollout_stopped_half_way_are_ended_before_another_image() {
        let blue = up("1", "web:1");
        let stale = green("2", &blue, "web:2", "started", "passing");
        let plan = plan_bluegreen(&[blue, stale], "web:3", &run(0, &[]));
        assert_eq!(plan.stale, [(1, 0)]);
        assert!(plan.pairs.is_empty());
        // Its blue machine gets a green of the new image (the stale twin's name is freed).
        assert_eq!(plan.next, BlueGreenMove::Create(vec![0]));
    }
}
