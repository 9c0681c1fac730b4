//! The Fly driver: makes a Fly organization's apps, their machines, volumes and secrets
//! match `spec.fly`.
//!
//! Pipeline: **observe** (through the [`super::ObserveCache`]: one app list per organization
//! shared by every Environment, then per app one machine list, and a volume and a secret list
//! only for apps that use them) → **plan** ([`plan_objects`], pure: desired [`Fields`] per
//! object against observed ones) → **act** (in dependency order: apps, secrets, volumes,
//! machines, then removals: machines, volumes, apps).
//!
//! Objects and identity:
//! - `app`, named as in the spec; its fields are its secrets (`secrets.NAME`, write-only at
//!   Fly: compared by the keyed fingerprint last applied).
//! - `machine`, named `<app>-<region>-<index>` (the Fly machine name), `count` per region:
//!   scaling up creates the next indexes, scaling down deletes the highest. Fields are the
//!   managed machine config (`image`, `guest.*`, `env.*`, `services.<i>.*`, `checks.<name>.*`,
//!   `mounts.<path>`). The image is compared only until the spec's image is rolled out (the
//!   image last rolled out is kept in status): an image a Release deployed since is neither
//!   drift nor reverted. Updates go through a lease with `current_version`; after a secrets
//!   change every machine is updated with `min_secrets_version` so it sees the new values.
//!   A slot is held by one machine, named for it or for a blue-green twin (the slot's name
//!   and `-g` or `-b`; a Release's `bluegreen` rollout alternates them, see
//!   [`crate::platform::fly::twin_name`]); status keeps the slot's name and the holder's
//!   id. While a green twin (its metadata names the machine it replaces) stands beside the
//!   holder, the slot waits: neither machine is updated or deleted. Once the rollout has
//!   destroyed the blue machine the twin holds the slot, and nothing is created in its place.
//! - `volume`, named `<app>/<region>/<volume>`: one per region that runs a machine, mounted
//!   into that region's first machine. Volumes are stateful: removed from the spec they are
//!   orphaned unless `deletionPolicy: Delete`. An app whose volumes are kept is kept too
//!   (deleting a Fly app destroys its volumes); only its machines go.

use std::collections::{BTreeMap, BTreeSet};

use super::{
    ActOutcome, Action, Driver, Field, FieldChange, Fields, ObjectPlan, Planned, SyncEvent,
    SyncInput, diff, progress,
};
use crate::api::common::{DriftPolicy, SecretKeyRef};
use crate::api::environment::{
    FlyApp as SpecApp, FlyCheckType, FlyCpuKind, FlyProtocol, ManagedObject,
};
use crate::platform::fly::green_twins;
use crate::platform::{
    Autostop, FlyApp, FlyAppSpec, FlyApps, FlyClient, FlyMachine, FlyMachineConfig, FlyMachineSpec,
    FlyVolume, FlyVolumeSpec, MachineCheck, MachineGuest, MachineMount, MachinePort,
    MachineService, Platform, PlatformError, PlatformResult,
};

const APP: &str = "app";
const MACHINE: &str = "machine";
const VOLUME: &str = "volume";
/// Acquire lease, update, release lease.
const MACHINE_UPDATE_WRITES: u32 = 3;

/// Syncs Fly objects.
#[derive(Clone, Copy, Debug, Default)]
pub struct FlyDriver;

/// The steps `act` runs, in order, and what is known of each planned object.
#[derive(Debug, Default)]
pub struct FlyWork {
    steps: Vec<Step>,
    /// One per planned object (same index as `Planned::objects`).
    records: Vec<Record>,
}

#[derive(Debug)]
enum Step {
    CreateApp {
        plan: usize,
        app: String,
        org: String,
    },
    SetSecrets {
        plan: usize,
        app: String,
        set: Vec<(String, SecretKeyRef)>,
        unset: Vec<String>,
        fingerprints: BTreeMap<String, String>,
    },
    CreateVolume {
        plan: usize,
        app: String,
        spec: FlyVolumeSpec,
    },
    ExtendVolume {
        plan: usize,
        app: String,
        id: String,
        from: u32,
        to: u32,
    },
    /// Creates or updates (`id` set) a machine.
    PutMachine {
        plan: usize,
        app: String,
        id: Option<String>,
        spec: FlyMachineSpec,
        mount: Option<PlannedMount>,
    },
    DeleteMachine {
        plan: usize,
        app: String,
        id: String,
    },
    DeleteVolume {
        plan: usize,
        app: String,
        id: String,
    },
    /// Deletes the app, and with it the objects `with` (its machines and volumes).
    DeleteApp {
        plan: usize,
        app: String,
        with: Vec<usize>,
    },
}

impl Step {
    /// The plan (object) this step acts on.
    fn plan(&self) -> usize {
        match self {
            Step::CreateApp { plan, .. }
            | Step::SetSecrets { plan, .. }
            | Step::CreateVolume { plan, .. }
            | Step::ExtendVolume { plan, .. }
            | Step::PutMachine { plan, .. }
            | Step::DeleteMachine { plan, .. }
            | Step::DeleteVolume { plan, .. }
            | Step::DeleteApp { plan, .. } => *plan,
        }
    }
}

/// A mount whose volume id is only known once the volume (plan `volume`) exists.
#[derive(Debug)]
struct PlannedMount {
    volume: usize,
    path: String,
}

#[derive(Clone, Debug, Default)]
struct Record {
    id: Option<String>,
    state: Option<String>,
    ready: bool,
    url: Option<String>,
    fingerprints: BTreeMap<String, String>,
    /// The image this Environment has rolled out to it once its step is done (machines).
    image: Option<String>,
    /// Fly's secrets version: what the app's secrets are at, or what a machine runs with.
    secrets_version: Option<u64>,
    /// Existed before Tether managed it.
    adopted: bool,
    /// The step acting on it finished (objects with nothing to do start done).
    done: bool,
}

/// What the planner needs from the input, resolved (pure data, so plans are unit-tested).
struct Context<'a> {
    org: Option<&'a str>,
    apps: &'a [SpecApp],
    /// App → secret name → (fingerprint, where the value comes from).
    secrets: BTreeMap<&'a str, BTreeMap<String, (String, SecretKeyRef)>>,
    previous: Vec<&'a ManagedObject>,
    drift_possible: bool,
    report_drift: bool,
    remove_stateless: Action,
    remove_stateful: Action,
}

impl Context<'_> {
    fn previous(&self, kind: &str, name: &str) -> Option<&ManagedObject> {
        self.previous
            .iter()
            .copied()
            .find(|o| o.kind == kind && o.name == name)
    }

    fn applies(&self, change: &FieldChange) -> bool {
        !(change.drift && self.report_drift)
    }
}

/// What observing found, for the apps of the spec that exist.
#[derive(Clone, Debug, Default)]
struct Observed {
    apps: BTreeMap<String, ObservedApp>,
}

#[derive(Clone, Debug)]
struct ObservedApp {
    app: FlyApp,
    machines: Vec<FlyMachine>,
    /// Listed only when the app has (or had) volumes.
    volumes: Option<Vec<FlyVolume>>,
    /// Secret names; listed only when the app has (or had) secrets.
    secrets: Option<Vec<String>>,
}

fn machine_name(app: &str, region: &str, index: u32) -> String {
    format!("{app}-{region}-{index}")
}

fn volume_name(app: &str, region: &str, volume: &str) -> String {
    format!("{app}/{region}/{volume}")
}

/// `(app, region, index)` of a machine name Tether gave: a slot's name, or a blue-green
/// twin's (the slot's name and `-g` or `-b`, see [`crate::platform::fly::twin_name`]).
fn parse_machine_name(name: &str) -> Option<(&str, &str, u32)> {
    let slot = name
        .strip_suffix("-g")
        .or_else(|| name.strip_suffix("-b"))
        .unwrap_or(name);
    parse_slot_name(slot).or_else(|| parse_slot_name(name))
}

fn parse_slot_name(name: &str) -> Option<(&str, &str, u32)> {
    let mut parts = name.rsplitn(3, '-');
    let index = parts.next()?.parse().ok()?;
    let region = parts.next()?;
    let app = parts.next()?;
    (region.len() == 3 && region.bytes().all(|b| b.is_ascii_lowercase()) && !app.is_empty())
        .then_some((app, region, index))
}

/// The machines of one slot (`<app>-<region>-<index>`) as observed.
#[derive(Debug, Default)]
struct Slot<'a> {
    /// The machine that holds the slot: named for it (under the slot's name or a twin's),
    /// and not the green twin of another machine still there.
    holder: Option<&'a FlyMachine>,
    /// The holder's green twin, while a blue-green rollout replaces it: left alone, and it
    /// holds the slot once the holder is destroyed.
    twin: Option<&'a FlyMachine>,
    /// Other machines named for the slot (surplus).
    extra: Vec<&'a FlyMachine>,
}

/// Slot `region`/`index` of `app` among `machines` (`twins`: green id → blue id, see
/// [`green_twins`]). Of several machines named for it the holder is the one status knows
/// (`known`), else one being replaced by a twin, else the one with the slot's own name.
fn slot<'a>(
    machines: &'a [FlyMachine],
    twins: &BTreeMap<&str, &str>,
    app: &str,
    region: &str,
    index: u32,
    known: Option<&str>,
) -> Slot<'a> {
    let mut named: Vec<&FlyMachine> = machines
        .iter()
        .filter(|m| !twins.contains_key(m.id.as_str()))
        .filter(|m| parse_machine_name(&m.name) == Some((app, region, index)))
        .collect();
    let own = machine_name(app, region, index);
    let rank = |m: &FlyMachine| {
        (
            Some(m.id.as_str()) != known,
            !twins.values().any(|blue| *blue == m.id),
            m.name != own,
            m.name.clone(),
        )
    };
    named.sort_by_key(|m| rank(m));
    let mut named = named.into_iter();
    let holder = named.next();
    let twin = holder.and_then(|h| {
        machines
            .iter()
            .find(|m| twins.get(m.id.as_str()) == Some(&h.id.as_str()))
    });
    Slot {
        holder,
        twin,
        extra: named.collect(),
    }
}

/// The app of a volume's status name.
fn volume_app(name: &str) -> Option<&str> {
    name.split('/').next().filter(|a| !a.is_empty())
}

/// A duration as milliseconds (`1m30s`, `1500ms`, `2.5s`).
fn duration_ms(text: &str) -> Option<u64> {
    let mut total = 0f64;
    let mut rest = text;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (1.0, 2)
        } else if rest.starts_with('s') {
            (1_000.0, 1)
        } else if rest.starts_with('m') {
            (60_000.0, 1)
        } else if rest.starts_with('h') {
            (3_600_000.0, 1)
        } else {
            return None;
        };
        total += number * unit;
        rest = &rest[len..];
    }
    Some(total.round() as u64)
}

/// A duration written one way (`1m` and `60s` and `60000ms` are equal).
fn normal_duration(text: &str) -> String {
    match duration_ms(text) {
        Some(ms) if ms % 1000 == 0 => format!("{}s", ms / 1000),
        Some(ms) => format!("{ms}ms"),
        None => text.to_owned(),
    }
}

/// The machine config an app's spec asks for (mounts are added per machine).
fn desired_config(app: &SpecApp) -> FlyMachineConfig {
    FlyMachineConfig {
        image: app.image.clone(),
        env: app.env.clone(),
        guest: MachineGuest {
            cpu_kind: match app.guest.cpu_kind {
                FlyCpuKind::Shared => "shared",
                FlyCpuKind::Performance => "performance",
            }
            .into(),
            cpus: app.guest.cpus.max(1) as u32,
            memory_mb: app.guest.memory_mb.max(0) as u32,
        },
        services: app
            .services
            .iter()
            .map(|s| MachineService {
                protocol: match s.protocol {
                    FlyProtocol::Tcp => "tcp",
                    FlyProtocol::Udp => "udp",
                }
                .into(),
                internal_port: s.internal_port.clamp(0, 65535) as u16,
                ports: s
                    .ports
                    .iter()
                    .map(|p| MachinePort {
                        port: p.port.clamp(0, 65535) as u16,
                        handlers: p.handlers.clone(),
                        force_https: p.force_https,
                    })
                    .collect(),
                autostop: if s.autostop {
                    Autostop::Stop
                } else {
                    Autostop::Off
                },
                autostart: s.autostart,
                min_machines_running: s.min_machines_running.max(0) as u32,
            })
            .collect(),
        checks: app
            .checks
            .iter()
            .map(|c| {
                (
                    c.name.clone(),
                    MachineCheck {
                        kind: match c.type_ {
                            FlyCheckType::Http => "http",
                            FlyCheckType::Tcp => "tcp",
                        }
                        .into(),
                        port: c.port.clamp(0, 65535) as u16,
                        path: c.path.clone(),
                        interval: Some(c.interval.clone()),
                        timeout: Some(c.timeout.clone()),
                    },
                )
            })
            .collect(),
        mounts: Vec::new(),
    }
}

/// The managed fields of a machine config; `mounts` maps mount path → volume name.
fn machine_fields(config: &FlyMachineConfig, mounts: &BTreeMap<String, String>) -> Fields {
    let mut f = Fields::new();
    let mut put = |name: String, value: String| {
        f.insert(name, Field::Value(value));
    };
    put("image".into(), config.image.clone());
    put("guest.cpuKind".into(), config.guest.cpu_kind.clone());
    put("guest.cpus".into(), config.guest.cpus.to_string());
    put("guest.memoryMb".into(), config.guest.memory_mb.to_string());
    for (key, value) in &config.env {
        put(format!("env.{key}"), value.clone());
    }
    for (i, s) in config.services.iter().enumerate() {
        let at = format!("services.{i}");
        put(format!("{at}.protocol"), s.protocol.clone());
        put(format!("{at}.internalPort"), s.internal_port.to_string());
        put(
            format!("{at}.autostop"),
            match s.autostop {
                Autostop::Off => "off",
                Autostop::Stop => "stop",
                Autostop::Suspend => "suspend",
            }
            .into(),
        );
        put(format!("{at}.autostart"), s.autostart.to_string());
        put(
            format!("{at}.minMachinesRunning"),
            s.min_machines_running.to_string(),
        );
        for p in &s.ports {
            put(
                format!("{at}.ports.{}.handlers", p.port),
                p.handlers.join(","),
            );
            put(
                format!("{at}.ports.{}.forceHttps", p.port),
                p.force_https.to_string(),
            );
        }
    }
    for (name, c) in &config.checks {
        let at = format!("checks.{name}");
        put(format!("{at}.type"), c.kind.clone());
        put(format!("{at}.port"), c.port.to_string());
        if let Some(path) = &c.path {
            put(format!("{at}.path"), path.clone());
        }
        if let Some(interval) = &c.interval {
            put(format!("{at}.interval"), normal_duration(interval));
        }
        if let Some(timeout) = &c.timeout {
            put(format!("{at}.timeout"), normal_duration(timeout));
        }
    }
    for (path, volume) in mounts {
        put(format!("mounts.{path}"), volume.clone());
    }
    f
}

/// The config sent by an update: each section (`image`, `guest`, `env`, `services`,
/// `checks`, `mounts`) with a change to apply comes from the spec, every other one stays as
/// observed, so drift that is only reported is not reverted along the way.
fn merged_config(
    desired: &FlyMachineConfig,
    observed: &FlyMachineConfig,
    sections: &BTreeSet<String>,
) -> FlyMachineConfig {
    let take = |s: &str| sections.contains(s);
    FlyMachineConfig {
        image: if take("image") {
            desired.image.clone()
        } else {
            observed.image.clone()
        },
        env: if take("env") {
            desired.env.clone()
        } else {
            observed.env.clone()
        },
        guest: if take("guest") {
            desired.guest.clone()
        } else {
            observed.guest.clone()
        },
        services: if take("services") {
            desired.services.clone()
        } else {
            observed.services.clone()
        },
        checks: if take("checks") {
            desired.checks.clone()
        } else {
            observed.checks.clone()
        },
        // Kept as observed; a mount change is resolved to volume ids when acting.
        mounts: observed.mounts.clone(),
    }
}

fn section(field: &str) -> String {
    field.split('.').next().unwrap_or(field).to_owned()
}

/// Ready: started with its checks passing, or parked by the proxy's autostop.
fn machine_ready(m: &FlyMachine) -> bool {
    m.is_healthy()
        || (matches!(m.state.as_str(), "stopped" | "suspended")
            && m.config
                .services
                .iter()
                .any(|s| s.autostop != Autostop::Off))
}

fn transient(state: &str) -> bool {
    matches!(
        state,
        "creating" | "starting" | "updating" | "replacing" | "restarting" | "launching"
    )
}

struct Plans {
    objects: Vec<ObjectPlan>,
    records: Vec<Record>,
    steps: Vec<Step>,
}

impl Plans {
    fn push(&mut self, plan: ObjectPlan, record: Record) -> usize {
        self.objects.push(plan);
        self.records.push(record);
        self.objects.len() - 1
    }
}

fn object(
    kind: &str,
    name: String,
    id: Option<String>,
    action: Action,
    changes: Vec<FieldChange>,
    writes: u32,
) -> ObjectPlan {
    let drift = changes
        .iter()
        .filter(|c| c.drift)
        .map(|c| c.field.clone())
        .collect();
    ObjectPlan {
        platform: Platform::Fly,
        kind: kind.into(),
        name,
        id,
        action,
        changes,
        drift,
        writes,
    }
}

/// Every managed field as a change from nothing (what a create sets).
fn created(desired: &Fields) -> Vec<FieldChange> {
    diff(desired, &Fields::new(), None, false)
}

/// Plans every Fly object (pure).
fn plan_objects(ctx: &Context<'_>, observed: &Observed) -> Planned<FlyWork> {
    let mut p = Plans {
        objects: Vec::new(),
        records: Vec::new(),
        steps: Vec::new(),
    };
    let mut removals = Plans {
        objects: Vec::new(),
        records: Vec::new(),
        steps: Vec::new(),
    };
    for app in ctx.apps {
        plan_app(
            ctx,
            app,
            observed.apps.get(&app.name),
            &mut p,
            &mut removals,
        );
    }
    plan_removed_apps(ctx, &mut removals);
    // Removals run after every create and update (a machine lets go of a volume before the
    // volume goes); their plan indexes shift by the objects planned before them.
    let offset = p.objects.len();
    p.objects.extend(removals.objects);
    p.records.extend(removals.records);
    p.steps
        .extend(removals.steps.into_iter().map(|step| match step {
            Step::DeleteMachine { plan, app, id } => Step::DeleteMachine {
                plan: plan + offset,
                app,
                id,
            },
            Step::DeleteVolume { plan, app, id } => Step::DeleteVolume {
                plan: plan + offset,
                app,
                id,
            },
            Step::DeleteApp { plan, app, with } => Step::DeleteApp {
                plan: plan + offset,
                app,
                with: with.into_iter().map(|w| w + offset).collect(),
            },
            other => other,
        }));
    Planned {
        objects: p.objects,
        work: FlyWork {
            steps: p.steps,
            records: p.records,
        },
    }
}

fn plan_app(
    ctx: &Context<'_>,
    app: &SpecApp,
    observed: Option<&ObservedApp>,
    p: &mut Plans,
    removals: &mut Plans,
) {
    let name = app.name.as_str();
    let secrets = ctx.secrets.get(name).cloned().unwrap_or_default();
    let desired_secrets: Fields = secrets
        .iter()
        .map(|(k, (fp, _))| {
            (
                format!("secrets.{k}"),
                Field::Secret {
                    fingerprint: fp.clone(),
                },
            )
        })
        .collect();
    let fingerprints: BTreeMap<String, String> = secrets
        .iter()
        .map(|(k, (fp, _))| (format!("secrets.{k}"), fp.clone()))
        .collect();
    let url = (!app.services.is_empty()).then(|| format!("https://{name}.fly.dev"));
    let previous_app = ctx.previous(APP, name);

    // The app and its secrets.
    let secrets_change;
    // The secrets could not be compared (write-only, nothing recorded): writing them is a
    // precaution, and so is relaunching the machines.
    let mut secrets_unknown = false;
    match observed {
        None => {
            let org = ctx.org.unwrap_or_default().to_owned();
            let writes = 1 + u32::from(!secrets.is_empty());
            let plan = p.push(
                object(
                    APP,
                    name.into(),
                    None,
                    Action::Create,
                    created(&desired_secrets),
                    writes,
                ),
                Record {
                    url: url.clone(),
                    ..Record::default()
                },
            );
            p.steps.push(Step::CreateApp {
                plan,
                app: name.into(),
                org,
            });
            secrets_change = !secrets.is_empty();
            if secrets_change {
                p.steps.push(Step::SetSecrets {
                    plan,
                    app: name.into(),
                    set: secrets
                        .iter()
                        .map(|(k, (_, r))| (k.clone(), r.clone()))
                        .collect(),
                    unset: Vec::new(),
                    fingerprints,
                });
            }
        }
        Some(o) => {
            let observed_secrets: Fields = o
                .secrets
                .iter()
                .flatten()
                .map(|k| (format!("secrets.{k}"), Field::Present))
                .collect();
            let changes = diff(
                &desired_secrets,
                &observed_secrets,
                previous_app,
                ctx.drift_possible,
            );
            let applied: Vec<&FieldChange> = changes.iter().filter(|c| ctx.applies(c)).collect();
            let set: Vec<(String, SecretKeyRef)> = applied
                .iter()
                .filter(|c| c.to.is_some())
                .filter_map(|c| {
                    let key = c.field.strip_prefix("secrets.")?;
                    secrets.get(key).map(|(_, r)| (key.to_owned(), r.clone()))
                })
                .collect();
            let unset: Vec<String> = applied
                .iter()
                .filter(|c| c.to.is_none())
                .filter_map(|c| c.field.strip_prefix("secrets.").map(str::to_owned))
                .collect();
            secrets_change = !set.is_empty() || !unset.is_empty();
            secrets_unknown = secrets_change && applied.iter().all(|c| c.unknown);
            let writes = u32::from(!set.is_empty()) + unset.len() as u32;
            let action = if secrets_change {
                Action::Update
            } else {
                Action::InSync
            };
            let previous_fps = previous_app
                .map(|o| o.secret_fingerprints.clone())
                .unwrap_or_default();
            let plan = p.push(
                object(
                    APP,
                    name.into(),
                    Some(o.app.id.clone()),
                    action,
                    changes,
                    writes,
                ),
                Record {
                    id: Some(o.app.id.clone()),
                    state: o.app.status.clone(),
                    ready: true,
                    url: url.clone(),
                    fingerprints: if secrets_change {
                        previous_fps
                    } else {
                        fingerprints.clone()
                    },
                    image: None,
                    secrets_version: previous_app.and_then(|a| a.secrets_version),
                    adopted: previous_app.is_none(),
                    done: !secrets_change,
                },
            );
            if secrets_change {
                p.steps.push(Step::SetSecrets {
                    plan,
                    app: name.into(),
                    set,
                    unset,
                    fingerprints,
                });
            }
        }
    }

    // Volumes: one per region that runs machines.
    let observed_volumes: Vec<FlyVolume> =
        observed.and_then(|o| o.volumes.clone()).unwrap_or_default();
    let observed_machines: Vec<FlyMachine> =
        observed.map(|o| o.machines.clone()).unwrap_or_default();
    let twins = green_twins(&observed_machines);
    let slot_of = |region: &str, index: u32| {
        let known = ctx
            .previous(MACHINE, &machine_name(name, region, index))
            .and_then(|o| o.id.as_deref());
        slot(&observed_machines, &twins, name, region, index, known)
    };
    let regions: Vec<(&str, u32)> = app
        .regions
        .iter()
        .map(|r| (r.region.as_str(), r.count.max(0) as u32))
        .collect();
    // (region) → (volume plan index, mount path, volume name)
    let mut mounts_by_region: BTreeMap<&str, (usize, String, String)> = BTreeMap::new();
    let mut desired_volume_ids: BTreeSet<String> = BTreeSet::new();
    for volume in &app.volumes {
        for (region, count) in &regions {
            if *count == 0 {
                continue;
            }
            let status_name = volume_name(name, region, &volume.name);
            let first = slot_of(region, 0).holder.map(|m| m.id.clone());
            let candidates: Vec<&FlyVolume> = observed_volumes
                .iter()
                .filter(|v| v.name == volume.name && v.region == *region)
                .collect();
            let found = candidates
                .iter()
                .find(|v| first.is_some() && v.attached_machine_id == first)
                .or_else(|| candidates.iter().find(|v| v.attached_machine_id.is_none()))
                .or_else(|| candidates.first())
                .copied();
            let desired: Fields = Fields::from([(
                "sizeGb".to_owned(),
                Field::Value(volume.size_gb.to_string()),
            )]);
            let previous = ctx.previous(VOLUME, &status_name);
            let plan = match found {
                None => {
                    let plan = p.push(
                        object(
                            VOLUME,
                            status_name,
                            None,
                            Action::Create,
                            created(&desired),
                            1,
                        ),
                        Record::default(),
                    );
                    p.steps.push(Step::CreateVolume {
                        plan,
                        app: name.into(),
                        spec: FlyVolumeSpec {
                            name: volume.name.clone(),
                            region: (*region).to_owned(),
                            size_gb: volume.size_gb.max(1) as u32,
                        },
                    });
                    plan
                }
                Some(v) => {
                    desired_volume_ids.insert(v.id.clone());
                    let observed_fields =
                        Fields::from([("sizeGb".to_owned(), Field::Value(v.size_gb.to_string()))]);
                    let changes = diff(&desired, &observed_fields, previous, ctx.drift_possible);
                    let apply = changes.iter().any(|c| ctx.applies(c));
                    let plan = p.push(
                        object(
                            VOLUME,
                            status_name,
                            Some(v.id.clone()),
                            if apply {
                                Action::Update
                            } else {
                                Action::InSync
                            },
                            changes,
                            u32::from(apply),
                        ),
                        Record {
                            id: Some(v.id.clone()),
                            state: Some(v.state.clone()),
                            ready: v.state == "created",
                            adopted: previous.is_none(),
                            done: !apply,
                            ..Record::default()
                        },
                    );
                    if apply {
                        p.steps.push(Step::ExtendVolume {
                            plan,
                            app: name.into(),
                            id: v.id.clone(),
                            from: v.size_gb,
                            to: volume.size_gb.max(1) as u32,
                        });
                    }
                    plan
                }
            };
            // One volume per machine (CEL keeps `volumes` to one entry).
            mounts_by_region.entry(region).or_insert((
                plan,
                volume.mount_path.clone(),
                volume.name.clone(),
            ));
        }
    }

    // Machines.
    let config = desired_config(app);
    let volume_names: BTreeMap<&str, &str> = observed_volumes
        .iter()
        .map(|v| (v.id.as_str(), v.name.as_str()))
        .collect();
    let mut desired_slots: BTreeSet<(&str, u32)> = BTreeSet::new();
    let mut extras: Vec<&FlyMachine> = Vec::new();
    for (region, count) in &regions {
        for index in 0..*count {
            let mname = machine_name(name, region, index);
            desired_slots.insert((region, index));
            let slot = slot_of(region, index);
            extras.extend(slot.extra.iter().copied());
            let mount = (index == 0).then(|| mounts_by_region.get(region)).flatten();
            let desired_mounts: BTreeMap<String, String> = mount
                .map(|(_, path, vol)| BTreeMap::from([(path.clone(), vol.clone())]))
                .unwrap_or_default();
            let mut desired = machine_fields(&config, &desired_mounts);
            let planned_mount = mount.map(|(plan, path, _)| PlannedMount {
                volume: *plan,
                path: path.clone(),
            });
            let previous = ctx.previous(MACHINE, &mname);
            match (slot.holder, slot.twin) {
                (Some(blue), Some(green)) => {
                    // A blue-green rollout replaces the machine: neither it nor its twin
                    // is touched meanwhile (the twin holds the slot once it is alone).
                    p.push(
                        object(
                            MACHINE,
                            mname.clone(),
                            Some(blue.id.clone()),
                            Action::Wait(format!(
                                "bluegreen: {} replaces {}",
                                green.name, blue.name
                            )),
                            Vec::new(),
                            0,
                        ),
                        Record {
                            id: Some(blue.id.clone()),
                            state: Some(blue.state.clone()),
                            ready: machine_ready(blue),
                            secrets_version: previous.and_then(|m| m.secrets_version),
                            adopted: previous.is_none(),
                            done: true,
                            image: previous.and_then(|p| p.image.clone()),
                            ..Record::default()
                        },
                    );
                }
                (None, _) => {
                    let plan = p.push(
                        object(
                            MACHINE,
                            mname.clone(),
                            None,
                            Action::Create,
                            created(&desired),
                            1,
                        ),
                        Record {
                            image: Some(config.image.clone()),
                            ..Record::default()
                        },
                    );
                    p.steps.push(Step::PutMachine {
                        plan,
                        app: name.into(),
                        id: None,
                        spec: FlyMachineSpec {
                            name: mname,
                            region: Some((*region).to_owned()),
                            config: config.clone(),
                            min_secrets_version: None,
                        },
                        mount: planned_mount,
                    });
                }
                (Some(m), None) => {
                    let observed_mounts: BTreeMap<String, String> = m
                        .config
                        .mounts
                        .iter()
                        .map(|mt| {
                            let volume = volume_names
                                .get(mt.volume.as_str())
                                .copied()
                                .unwrap_or(mt.volume.as_str());
                            (mt.path.clone(), volume.to_owned())
                        })
                        .collect();
                    let mut observed_fields = machine_fields(&m.config, &observed_mounts);
                    let rolled_out = previous.and_then(|p| p.image.as_deref());
                    if rolled_out == Some(config.image.as_str()) {
                        // The spec's image is rolled out; what runs now (a Release's deploy)
                        // is not compared with it.
                        desired.remove("image");
                        observed_fields.remove("image");
                    }
                    let mut changes =
                        diff(&desired, &observed_fields, previous, ctx.drift_possible);
                    for change in changes.iter_mut().filter(|c| c.field == "image") {
                        // The spec's own image, not yet rolled out: never drift.
                        change.drift = false;
                    }
                    let sections: BTreeSet<String> = changes
                        .iter()
                        .filter(|c| ctx.applies(c))
                        .map(|c| section(&c.field))
                        .collect();
                    // Launched before the app's last secret change (the run that changed them
                    // stopped before updating this machine).
                    let launched = previous.and_then(|m| m.secrets_version);
                    let stale = match (previous_app.and_then(|a| a.secrets_version), launched) {
                        (Some(app), Some(machine)) => machine < app,
                        _ => false,
                    };
                    if secrets_change || stale {
                        changes.push(FieldChange {
                            field: "secretsVersion".into(),
                            from: Some(launched.map_or("current".into(), |v| v.to_string())),
                            to: Some("after the app's secrets change".into()),
                            drift: false,
                            unknown: secrets_unknown && !stale,
                        });
                    }
                    let update = !sections.is_empty() || secrets_change || stale;
                    let action = if update {
                        Action::Update
                    } else if transient(&m.state) {
                        Action::Wait(format!("machine is {}", m.state))
                    } else {
                        Action::InSync
                    };
                    let plan = p.push(
                        object(
                            MACHINE,
                            mname.clone(),
                            Some(m.id.clone()),
                            action,
                            changes,
                            if update { MACHINE_UPDATE_WRITES } else { 0 },
                        ),
                        Record {
                            id: Some(m.id.clone()),
                            state: Some(m.state.clone()),
                            ready: machine_ready(m),
                            secrets_version: launched,
                            adopted: previous.is_none(),
                            done: !update,
                            image: if sections.contains("image") || m.config.image == config.image {
                                Some(config.image.clone())
                            } else {
                                rolled_out.map(str::to_owned)
                            },
                            ..Record::default()
                        },
                    );
                    if update {
                        let mut merged = merged_config(&config, &m.config, &sections);
                        let remount = sections.contains("mounts");
                        if remount {
                            // The spec's mount (resolved to its volume id when acting), or
                            // none.
                            merged.mounts.clear();
                        }
                        p.steps.push(Step::PutMachine {
                            plan,
                            app: name.into(),
                            id: Some(m.id.clone()),
                            spec: FlyMachineSpec {
                                // The machine's own name (a blue-green twin's may differ
                                // from the slot's).
                                name: m.name.clone(),
                                region: m.region.clone(),
                                config: merged,
                                min_secrets_version: None,
                            },
                            mount: if remount { planned_mount } else { None },
                        });
                    }
                }
            }
        }
    }

    // Scaled down or removed regions: machines Tether named that the spec no longer has,
    // highest indexes first, and second machines named for a slot. A green twin goes only
    // once it is alone (its blue machine destroyed), as what holds its slot.
    let mut surplus: Vec<&FlyMachine> = observed_machines
        .iter()
        .filter(|m| !twins.contains_key(m.id.as_str()))
        .filter(|m| match parse_machine_name(&m.name) {
            Some((a, region, index)) if a == name => {
                !desired_slots.contains(&(region, index)) || extras.iter().any(|e| e.id == m.id)
            }
            _ => false,
        })
        .collect();
    surplus.sort_by_key(|m| std::cmp::Reverse(parse_machine_name(&m.name).map(|(_, _, i)| i)));
    for m in surplus {
        let action = ctx.remove_stateless.clone();
        let delete = action == Action::Delete;
        let plan = removals.push(
            object(
                MACHINE,
                m.name.clone(),
                Some(m.id.clone()),
                action,
                Vec::new(),
                u32::from(delete),
            ),
            Record {
                id: Some(m.id.clone()),
                done: !delete,
                ..Record::default()
            },
        );
        if delete {
            removals.steps.push(Step::DeleteMachine {
                plan,
                app: name.into(),
                id: m.id.clone(),
            });
        }
    }
    // Volumes Tether created or adopted that the spec no longer has.
    for previous in ctx.previous.iter().filter(|o| {
        o.kind == VOLUME
            && volume_app(&o.name) == Some(name)
            && o.id
                .as_ref()
                .is_some_and(|id| !desired_volume_ids.contains(id))
    }) {
        let Some(v) = observed_volumes
            .iter()
            .find(|v| Some(&v.id) == previous.id.as_ref())
        else {
            // Already gone.
            continue;
        };
        if p.objects
            .iter()
            .any(|o| o.kind == VOLUME && o.name == previous.name)
        {
            // The spec still has this volume, as a new one (this one was replaced).
            continue;
        }
        let action = ctx.remove_stateful.clone();
        let delete = action == Action::Delete;
        let plan = removals.push(
            object(
                VOLUME,
                previous.name.clone(),
                Some(v.id.clone()),
                action,
                Vec::new(),
                u32::from(delete),
            ),
            Record {
                id: Some(v.id.clone()),
                done: !delete,
                ..Record::default()
            },
        );
        if delete {
            removals.steps.push(Step::DeleteVolume {
                plan,
                app: name.into(),
                id: v.id.clone(),
            });
        }
    }
}

/// Apps in the last status that the spec no longer has (all of them while the Environment
/// is being deleted), with their machines and volumes.
fn plan_removed_apps(ctx: &Context<'_>, removals: &mut Plans) {
    let kept: BTreeSet<&str> = ctx.apps.iter().map(|a| a.name.as_str()).collect();
    let app_of = |o: &ManagedObject| -> Option<String> {
        match o.kind.as_str() {
            APP => Some(o.name.clone()),
            MACHINE => parse_machine_name(&o.name).map(|(a, _, _)| a.to_owned()),
            VOLUME => volume_app(&o.name).map(str::to_owned),
            _ => None,
        }
    };
    let mut removed: BTreeMap<String, Vec<&ManagedObject>> = BTreeMap::new();
    for o in &ctx.previous {
        if let Some(app) = app_of(o)
            && !kept.contains(app.as_str())
        {
            removed.entry(app).or_default().push(o);
        }
    }
    for (app, objects) in removed {
        let volumes: Vec<&&ManagedObject> = objects.iter().filter(|o| o.kind == VOLUME).collect();
        let machines: Vec<&&ManagedObject> = objects.iter().filter(|o| o.kind == MACHINE).collect();
        let app_entry = objects.iter().find(|o| o.kind == APP);
        let volume_action = ctx.remove_stateful.clone();
        let mut app_action = ctx.remove_stateless.clone();
        // Deleting a Fly app destroys its volumes: keep the app while volumes are kept.
        if !volumes.is_empty() && volume_action != Action::Delete {
            app_action = Action::Orphan;
        }
        let machine_action = ctx.remove_stateless.clone();
        let with_app = app_action == Action::Delete && app_entry.is_some();
        let mut with = Vec::new();
        for m in &machines {
            let delete = machine_action == Action::Delete;
            let separately = delete && !with_app;
            let plan = removals.push(
                object(
                    MACHINE,
                    m.name.clone(),
                    m.id.clone(),
                    machine_action.clone(),
                    Vec::new(),
                    u32::from(separately),
                ),
                Record {
                    id: m.id.clone(),
                    done: !delete,
                    ..Record::default()
                },
            );
            if separately && let Some(id) = &m.id {
                removals.steps.push(Step::DeleteMachine {
                    plan,
                    app: app.clone(),
                    id: id.clone(),
                });
            } else if delete {
                with.push(plan);
            }
        }
        for v in &volumes {
            let delete = volume_action == Action::Delete;
            let separately = delete && !with_app;
            let plan = removals.push(
                object(
                    VOLUME,
                    v.name.clone(),
                    v.id.clone(),
                    volume_action.clone(),
                    Vec::new(),
                    u32::from(separately),
                ),
                Record {
                    id: v.id.clone(),
                    done: !delete,
                    ..Record::default()
                },
            );
            if separately && let Some(id) = &v.id {
                removals.steps.push(Step::DeleteVolume {
                    plan,
                    app: app.clone(),
                    id: id.clone(),
                });
            } else if delete {
                with.push(plan);
            }
        }
        if let Some(entry) = app_entry {
            let delete = app_action == Action::Delete;
            let plan = removals.push(
                object(
                    APP,
                    app.clone(),
                    entry.id.clone(),
                    app_action,
                    Vec::new(),
                    u32::from(delete),
                ),
                Record {
                    id: entry.id.clone(),
                    done: !delete,
                    ..Record::default()
                },
            );
            if delete {
                removals.steps.push(Step::DeleteApp {
                    plan,
                    app: app.clone(),
                    with,
                });
            }
        }
    }
}

impl Driver for FlyDriver {
    const PLATFORM: Platform = Platform::Fly;
    type Work = FlyWork;

    async fn plan(&self, input: &SyncInput<'_>) -> PlatformResult<Planned<FlyWork>> {
        let fly = input.spec.fly.as_ref();
        let apps: &[SpecApp] = match fly {
            Some(fly) if !input.deleting => &fly.apps,
            _ => &[],
        };
        let previous: Vec<&ManagedObject> = input.previous_objects().collect();
        let mut secrets = BTreeMap::new();
        for app in apps {
            let mut values = BTreeMap::new();
            for s in &app.secrets {
                let field = format!("secrets.{}", s.name);
                let Some(Field::Secret { fingerprint }) =
                    input.secret_field(&field, &s.secret_key_ref)
                else {
                    return Err(PlatformError::Invalid {
                        platform: Platform::Fly,
                        operation: "plan",
                        status: None,
                        reason: format!(
                            "app {}: secret {} has no value (Secret {:?} key {:?})",
                            app.name, s.name, s.secret_key_ref.name, s.secret_key_ref.key
                        ),
                    });
                };
                values.insert(s.name.clone(), (fingerprint, s.secret_key_ref.clone()));
            }
            secrets.insert(app.name.as_str(), values);
        }
        let observed = observe(input, fly.map(|f| f.org.as_str()), apps, &previous).await?;
        let ctx = Context {
            org: fly.map(|f| f.org.as_str()),
            apps,
            secrets,
            previous,
            drift_possible: input.drift_possible,
            report_drift: input.spec.drift_policy == DriftPolicy::Report,
            remove_stateless: input.removal(false),
            remove_stateful: input.removal(true),
        };
        Ok(plan_objects(&ctx, &observed))
    }

    async fn act(&self, input: &SyncInput<'_>, planned: Planned<FlyWork>) -> ActOutcome {
        act(input, planned).await
    }
}

/// Reads what the plan needs, through the shared cache.
async fn observe(
    input: &SyncInput<'_>,
    org: Option<&str>,
    apps: &[SpecApp],
    previous: &[&ManagedObject],
) -> PlatformResult<Observed> {
    let mut observed = Observed::default();
    let (Some(org), false) = (org, apps.is_empty()) else {
        return Ok(observed);
    };
    let client = FlyClient::new(input.http.clone());
    let listed = input
        .cache
        .get_or_fetch(&input.key(org, "apps"), || client.list_apps(org))
        .await?;
    for app in apps {
        let Some(found) = listed.iter().find(|a| a.name == app.name) else {
            continue;
        };
        let name = app.name.as_str();
        // The app's machines and secrets are re-read when its list entry's machine count or
        // status moves (Fly's apps list carries no update time), else at least every
        // SUBLIST_RECHECK_INTERVALS intervals while the app and its machines were ready and
        // in sync (see `SyncInput::sub_list_keep`).
        let signal = format!(
            "{}/{}",
            found.machine_count.unwrap_or_default(),
            found.status.as_deref().unwrap_or_default()
        );
        let keep = input.sub_list_keep(|o| {
            let of_app = match o.kind.as_str() {
                APP => o.name == name,
                MACHINE => o.name.starts_with(&format!("{name}-")),
                _ => false,
            };
            of_app.then_some(o.ready && o.drift.is_empty())
        });
        let machines = input
            .cache
            .get_or_fetch_unless_changed(&input.key(name, "machines"), &signal, keep, || {
                client.list_machines(name)
            })
            .await?;
        let had = |kind: &str| {
            previous.iter().any(|o| {
                o.kind == kind
                    && match kind {
                        VOLUME => volume_app(&o.name) == Some(name),
                        _ => o.name == name && !o.secret_fingerprints.is_empty(),
                    }
            })
        };
        let volumes = if !app.volumes.is_empty() || had(VOLUME) {
            Some(
                input
                    .cache
                    .get_or_fetch(&input.key(name, "volumes"), || client.list_volumes(name))
                    .await?
                    .as_ref()
                    .clone(),
            )
        } else {
            None
        };
        let secrets = if !app.secrets.is_empty() || had(APP) {
            let listed = input
                .cache
                .get_or_fetch_unless_changed(&input.key(name, "secrets"), &signal, keep, || async {
                    Ok(client
                        .list_secrets(name)
                        .await?
                        .into_iter()
                        .map(|s| s.key)
                        .collect::<Vec<String>>())
                })
                .await?;
            Some(listed.as_ref().clone())
        } else {
            None
        };
        observed.apps.insert(
            app.name.clone(),
            ObservedApp {
                app: found.clone(),
                machines: machines.as_ref().clone(),
                volumes,
                secrets,
            },
        );
    }
    Ok(observed)
}

/// Runs the steps in order, stopping at the first error, and reports every object.
async fn act(input: &SyncInput<'_>, planned: Planned<FlyWork>) -> ActOutcome {
    let client = FlyClient::new(input.http.clone());
    let Planned { objects, work } = planned;
    let FlyWork { steps, mut records } = work;
    let mut events = Vec::new();
    let mut error = None;
    let mut secrets_versions: BTreeMap<String, u64> = BTreeMap::new();
    for step in steps {
        let plan = step.plan();
        if let Err(e) = run(
            input,
            &client,
            &objects,
            &mut records,
            &mut secrets_versions,
            &mut events,
            step,
        )
        .await
        {
            error = Some(e);
            break;
        }
        // Status learns each object as soon as its step is done. An app's new secrets
        // version is recorded with its fingerprints, and each machine's with the machine:
        // after a restart between the two, the machines still older than the app are
        // updated, and no secret is written again.
        report(input, &objects[plan], &records[plan]).await;
    }
    let mut managed = Vec::new();
    for (plan, record) in objects.iter().zip(records) {
        let removed = matches!(plan.action, Action::Delete | Action::Orphan);
        if removed && record.done {
            if plan.action == Action::Orphan {
                events.push(event(
                    "Orphaned",
                    plan,
                    format!(
                        "Fly {} {} left in place and no longer managed",
                        plan.kind, plan.name
                    ),
                ));
            }
            continue;
        }
        if removed {
            // Not deleted yet: still managed, retried next time.
            managed.push(
                input
                    .previous(&plan.kind, &plan.name)
                    .cloned()
                    .unwrap_or_else(|| input.managed(plan)),
            );
            continue;
        }
        if record.adopted {
            events.push(event(
                "Adopted",
                plan,
                format!("Fly {} {} existed and is now managed", plan.kind, plan.name),
            ));
        }
        managed.push(managed_object(input, plan, record));
    }
    ActOutcome {
        objects: managed,
        events,
        error,
    }
}

/// The status entry of a kept object from its plan and what acting on it recorded.
fn managed_object(input: &SyncInput<'_>, plan: &ObjectPlan, record: Record) -> ManagedObject {
    let mut object = input.managed(plan);
    object.id = record.id.or(object.id);
    object.state = record.state;
    object.ready = record.ready && record.done;
    object.url = record.url;
    object.secret_fingerprints = record.fingerprints;
    object.secrets_version = record.secrets_version;
    object.image = if record.done {
        record.image
    } else {
        input
            .previous(&plan.kind, &plan.name)
            .and_then(|p| p.image.clone())
    };
    if record.done {
        // Drift that was reverted is gone; drift only reported stays listed.
        object.drift.retain(|f| {
            plan.changes
                .iter()
                .any(|c| &c.field == f && !input.applies(c))
        });
    }
    object
}

/// The secrets version of `app` as this run knows it (set now, or recorded before).
fn app_secrets_version(plans: &[ObjectPlan], records: &[Record], app: &str) -> Option<u64> {
    plans
        .iter()
        .position(|p| p.kind == APP && p.name == app)
        .and_then(|i| records[i].secrets_version)
}

/// Reports the object of a finished step to the sync in progress.
async fn report(input: &SyncInput<'_>, plan: &ObjectPlan, record: &Record) {
    match plan.action {
        Action::Delete | Action::Orphan if record.done => progress::removed(plan).await,
        Action::Delete | Action::Orphan => {}
        _ if record.done => {
            progress::written(&managed_object(input, plan, record.clone())).await;
        }
        _ => {}
    }
}

fn event(reason: &'static str, plan: &ObjectPlan, note: String) -> SyncEvent {
    SyncEvent {
        reason,
        platform: Platform::Fly,
        kind: plan.kind.clone(),
        name: plan.name.clone(),
        note,
    }
}

/// The events of an applied update: `DriftCorrected` for out-of-band changes reverted,
/// `Updated` for spec changes (field names only).
fn update_events(input: &SyncInput<'_>, plan: &ObjectPlan, events: &mut Vec<SyncEvent>) {
    let applied: Vec<&FieldChange> = plan.changes.iter().filter(|c| input.applies(c)).collect();
    let drift: Vec<&str> = applied
        .iter()
        .filter(|c| c.drift)
        .map(|c| c.field.as_str())
        .collect();
    let spec: Vec<&str> = applied
        .iter()
        .filter(|c| !c.drift)
        .map(|c| c.field.as_str())
        .collect();
    if !drift.is_empty() {
        events.push(event(
            "DriftCorrected",
            plan,
            format!(
                "Fly {} {}: reverted out-of-band changes to {}",
                plan.kind,
                plan.name,
                drift.join(", ")
            ),
        ));
    }
    if !spec.is_empty() {
        events.push(event(
            "Updated",
            plan,
            format!(
                "Fly {} {}: updated {}",
                plan.kind,
                plan.name,
                spec.join(", ")
            ),
        ));
    }
}

async fn run(
    input: &SyncInput<'_>,
    client: &FlyClient,
    plans: &[ObjectPlan],
    records: &mut [Record],
    secrets_versions: &mut BTreeMap<String, u64>,
    events: &mut Vec<SyncEvent>,
    step: Step,
) -> PlatformResult<()> {
    match step {
        Step::CreateApp { plan, app, org } => {
            let ensured = client
                .ensure_app(&FlyAppSpec {
                    name: app.clone(),
                    org_slug: org.clone(),
                })
                .await?;
            if ensured.object.org.as_deref().is_some_and(|o| o != org) {
                return Err(PlatformError::Conflict {
                    platform: Platform::Fly,
                    operation: "create_app",
                    reason: format!("app name {app} is taken by another organization"),
                });
            }
            let r = &mut records[plan];
            r.id = Some(ensured.object.id.clone());
            r.state = ensured.object.status.clone();
            r.ready = true;
            r.done = true;
            if ensured.created {
                events.push(event(
                    "Created",
                    &plans[plan],
                    format!("Fly app {app} created in {org}"),
                ));
            } else {
                r.adopted = true;
            }
            let object = ensured.object;
            input
                .cache
                .update::<Vec<FlyApp>, _>(&input.key(&org, "apps"), |apps| {
                    if !apps.iter().any(|a| a.name == object.name) {
                        apps.push(object);
                    }
                });
        }
        Step::SetSecrets {
            plan,
            app,
            set,
            unset,
            fingerprints,
        } => {
            if !set.is_empty() {
                let mut values = BTreeMap::new();
                for (name, reference) in &set {
                    let Some(value) = input.secrets.get(reference) else {
                        return Err(PlatformError::Invalid {
                            platform: Platform::Fly,
                            operation: "set_secrets",
                            status: None,
                            reason: format!("app {app}: secret {name} has no value"),
                        });
                    };
                    values.insert(name.clone(), value.expose().to_owned());
                }
                let version = client.set_secrets(&app, &values).await?;
                secrets_versions.insert(app.clone(), version);
            }
            for name in &unset {
                // Machines updated after this must not start with the deleted value.
                if let Some(version) = client.delete_secret(&app, name).await? {
                    secrets_versions.insert(app.clone(), version);
                }
            }
            input
                .cache
                .update::<Vec<String>, _>(&input.key(&app, "secrets"), |names| {
                    names.retain(|n| !unset.contains(n));
                    for (name, _) in &set {
                        if !names.contains(name) {
                            names.push(name.clone());
                        }
                    }
                });
            let r = &mut records[plan];
            r.fingerprints = fingerprints;
            if let Some(version) = secrets_versions.get(&app) {
                r.secrets_version = Some(*version);
            }
            if plans[plan].action == Action::Update {
                r.done = true;
                update_events(input, &plans[plan], events);
            }
        }
        Step::CreateVolume { plan, app, spec } => {
            let volume = client.create_volume(&app, &spec).await?;
            let r = &mut records[plan];
            r.id = Some(volume.id.clone());
            r.state = Some(volume.state.clone());
            r.ready = volume.state == "created";
            r.done = true;
            events.push(event(
                "Created",
                &plans[plan],
                format!(
                    "Fly volume {} created in {} ({} GB)",
                    spec.name, spec.region, spec.size_gb
                ),
            ));
            input
                .cache
                .update::<Vec<FlyVolume>, _>(&input.key(&app, "volumes"), |v| v.push(volume));
        }
        Step::ExtendVolume {
            plan,
            app,
            id,
            from,
            to,
        } => {
            if to < from {
                return Err(PlatformError::Invalid {
                    platform: Platform::Fly,
                    operation: "extend_volume",
                    status: None,
                    reason: format!(
                        "volume {} cannot shrink from {from} GB to {to} GB (field sizeGb)",
                        plans[plan].name
                    ),
                });
            }
            let (volume, _needs_restart) = client.extend_volume(&app, &id, to).await?;
            let r = &mut records[plan];
            r.state = Some(volume.state.clone());
            r.ready = volume.state == "created";
            r.done = true;
            update_events(input, &plans[plan], events);
            input
                .cache
                .update::<Vec<FlyVolume>, _>(&input.key(&app, "volumes"), |vs| {
                    vs.retain(|v| v.id != volume.id);
                    vs.push(volume);
                });
        }
        Step::PutMachine {
            plan,
            app,
            id,
            mut spec,
            mount,
        } => {
            if let Some(mount) = mount {
                let Some(volume) = records[mount.volume].id.clone() else {
                    return Err(PlatformError::Invalid {
                        platform: Platform::Fly,
                        operation: "create_machine",
                        status: None,
                        reason: format!("machine {}: its volume does not exist", spec.name),
                    });
                };
                spec.config.mounts = vec![MachineMount {
                    volume,
                    path: mount.path,
                }];
            }
            // The version set in this run, else the one status recorded for the app (set
            // by a run that stopped before updating this machine).
            spec.min_secrets_version = secrets_versions
                .get(&app)
                .copied()
                .or_else(|| app_secrets_version(plans, records, &app));
            records[plan].secrets_version = spec.min_secrets_version;
            let machine = match &id {
                None => {
                    let ensured = client.ensure_machine(&app, &spec).await?;
                    if ensured.created {
                        events.push(event(
                            "Created",
                            &plans[plan],
                            format!("Fly machine {} created", spec.name),
                        ));
                    } else {
                        records[plan].adopted = true;
                    }
                    ensured.object
                }
                Some(id) => {
                    let machine = client.update_machine(&app, id, &spec).await?;
                    update_events(input, &plans[plan], events);
                    machine
                }
            };
            let r = &mut records[plan];
            r.id = Some(machine.id.clone());
            r.state = Some(machine.state.clone());
            r.ready = machine_ready(&machine);
            r.done = true;
            input
                .cache
                .update::<Vec<FlyMachine>, _>(&input.key(&app, "machines"), |ms| {
                    ms.retain(|m| m.id != machine.id);
                    ms.push(machine);
                });
        }
        Step::DeleteMachine { plan, app, id } => {
            client.delete_machine(&app, &id).await?;
            records[plan].done = true;
            events.push(event(
                "Deleted",
                &plans[plan],
                format!("Fly machine {} deleted", plans[plan].name),
            ));
            input
                .cache
                .update::<Vec<FlyMachine>, _>(&input.key(&app, "machines"), |ms| {
                    ms.retain(|m| m.id != id)
                });
        }
        Step::DeleteVolume { plan, app, id } => {
            client.delete_volume(&app, &id).await?;
            records[plan].done = true;
            events.push(event(
                "Deleted",
                &plans[plan],
                format!("Fly volume {} deleted", plans[plan].name),
            ));
            input
                .cache
                .update::<Vec<FlyVolume>, _>(&input.key(&app, "volumes"), |vs| {
                    vs.retain(|v| v.id != id)
                });
        }
        Step::DeleteApp { plan, app, with } => {
            client.delete_app(&app).await?;
            for i in with.iter().copied().chain([plan]) {
                records[i].done = true;
                events.push(event(
                    "Deleted",
                    &plans[i],
                    if i == plan {
                        format!("Fly app {app} deleted")
                    } else {
                        format!(
                            "Fly {} {} deleted with its app",
                            plans[i].kind, plans[i].name
                        )
                    },
                ));
            }
            if let Some(org) = input.spec.fly.as_ref().map(|f| f.org.as_str()) {
                input
                    .cache
                    .update::<Vec<FlyApp>, _>(&input.key(org, "apps"), |apps| {
                        apps.retain(|a| a.name != app)
                    });
            }
            for what in ["machines", "volumes", "secrets"] {
                input.cache.invalidate(&input.key(&app, what));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An app `web` in `ams` (2 machines) and `iad` (1), with services, a check, env, one
    /// secret and (optionally) a volume.
    fn spec_app(volume: bool) -> SpecApp {
        let mut app: SpecApp = serde_json::from_value(serde_json::json!({
            "name": "web",
            "image": "acme/web:1",
            "regions": [{"region": "ams", "count": 2}, {"region": "iad", "count": 1}],
            "guest": {"cpuKind": "shared", "cpus": 1, "memoryMb": 512},
            "services": [{"internalPort": 8080, "ports": [{"port": 443, "handlers": ["tls", "http"]}]}],
            "checks": [{"name": "alive", "type": "http", "port": 8080, "path": "/healthz"}],
            "env": {"LOG_LEVEL": "info"},
            "secrets": [{"name": "API_KEY", "secretKeyRef": {"name": "web", "key": "api"}}]
        }))
        .expect("valid app");
        if volume {
            app.regions = serde_json::from_value(serde_json::json!([
                {"region": "ams", "count": 1}, {"region": "iad", "count": 1}
            ]))
            .unwrap();
            app.volumes = serde_json::from_value(serde_json::json!([
                {"name": "data", "sizeGb": 1, "mountPath": "/data"}
            ]))
            .unwrap();
        }
        app
    }

    struct Fixture {
        apps: Vec<SpecApp>,
        fingerprint: String,
        previous: Vec<ManagedObject>,
        drift_possible: bool,
        report_drift: bool,
        remove_stateless: Action,
        remove_stateful: Action,
    }

    impl Fixture {
        fn new(apps: Vec<SpecApp>) -> Self {
            Fixture {
                apps,
                fingerprint: "fp-1".into(),
                previous: Vec::new(),
                drift_possible: false,
                report_drift: false,
                remove_stateless: Action::Delete,
                remove_stateful: Action::Orphan,
            }
        }

        fn plan(&self, observed: &Observed) -> Planned<FlyWork> {
            let secrets = self
                .apps
                .iter()
                .map(|a| {
                    let values = a
                        .secrets
                        .iter()
                        .map(|s| {
                            (
                                s.name.clone(),
                                (self.fingerprint.clone(), s.secret_key_ref.clone()),
                            )
                        })
                        .collect();
                    (a.name.as_str(), values)
                })
                .collect();
            let ctx = Context {
                org: Some("acme"),
                apps: &self.apps,
                secrets,
                previous: self.previous.iter().collect(),
                drift_possible: self.drift_possible,
                report_drift: self.report_drift,
                remove_stateless: self.remove_stateless.clone(),
                remove_stateful: self.remove_stateful.clone(),
            };
            plan_objects(&ctx, observed)
        }
    }

    /// What Tether leaves behind after creating `apps`: the platform state and the status.
    fn converged(apps: &[SpecApp]) -> (Observed, Vec<ManagedObject>) {
        let mut observed = Observed::default();
        let mut status = Vec::new();
        let entry = |kind: &str, name: &str, id: &str| ManagedObject {
            platform: "fly".into(),
            kind: kind.into(),
            name: name.into(),
            id: Some(id.into()),
            ..ManagedObject::default()
        };
        for app in apps {
            let mut volumes = Vec::new();
            let mut machines = Vec::new();
            for r in &app.regions {
                for i in 0..r.count as u32 {
                    let name = machine_name(&app.name, &r.region, i);
                    let id = format!("m-{name}");
                    let mut config = desired_config(app);
                    for v in app.volumes.iter().filter(|_| i == 0) {
                        let vid = format!("vol-{}-{}", r.region, v.name);
                        volumes.push(FlyVolume {
                            id: vid.clone(),
                            name: v.name.clone(),
                            region: r.region.clone(),
                            size_gb: v.size_gb as u32,
                            state: "created".into(),
                            attached_machine_id: Some(id.clone()),
                        });
                        status.push(entry(
                            VOLUME,
                            &volume_name(&app.name, &r.region, &v.name),
                            &vid,
                        ));
                        config.mounts.push(MachineMount {
                            volume: vid,
                            path: v.mount_path.clone(),
                        });
                    }
                    machines.push(FlyMachine {
                        id: id.clone(),
                        name: name.clone(),
                        state: "started".into(),
                        region: Some(r.region.clone()),
                        checks: config
                            .checks
                            .keys()
                            .map(|k| (k.clone(), "passing".to_owned()))
                            .collect(),
                        config,
                        version: "v1".into(),
                        metadata: BTreeMap::new(),
                    });
                    status.push(entry(MACHINE, &name, &id));
                }
            }
            let mut app_entry = entry(APP, &app.name, &format!("app-{}", app.name));
            app_entry.secret_fingerprints = app
                .secrets
                .iter()
                .map(|s| (format!("secrets.{}", s.name), "fp-1".to_owned()))
                .collect();
            status.push(app_entry);
            observed.apps.insert(
                app.name.clone(),
                ObservedApp {
                    app: FlyApp {
                        id: format!("app-{}", app.name),
                        name: app.name.clone(),
                        machine_count: None,
                        org: Some("acme".into()),
                        status: Some("deployed".into()),
                    },
                    machines,
                    volumes: Some(volumes),
                    secrets: Some(app.secrets.iter().map(|s| s.name.clone()).collect()),
                },
            );
        }
        (observed, status)
    }

    fn summary(planned: &Planned<FlyWork>) -> Vec<(String, String, &'static str, u32)> {
        planned
            .objects
            .iter()
            .map(|o| (o.kind.clone(), o.name.clone(), o.action.verb(), o.writes))
            .collect()
    }

    fn s(
        kind: &str,
        name: &str,
        verb: &'static str,
        writes: u32,
    ) -> (String, String, &'static str, u32) {
        (kind.into(), name.into(), verb, writes)
    }

    #[test]
    fn a_new_app_plans_the_app_with_its_secrets_then_volumes_then_machines() {
        let planned = Fixture::new(vec![spec_app(true)]).plan(&Observed::default());
        assert_eq!(
            summary(&planned),
            [
                s(APP, "web", "create", 2),
                s(VOLUME, "web/ams/data", "create", 1),
                s(VOLUME, "web/iad/data", "create", 1),
                s(MACHINE, "web-ams-0", "create", 1),
                s(MACHINE, "web-iad-0", "create", 1),
            ]
        );
        let machine = &planned.objects[3];
        let fields: Vec<&str> = machine.changes.iter().map(|c| c.field.as_str()).collect();
        for f in [
            "image",
            "guest.memoryMb",
            "env.LOG_LEVEL",
            "services.0.ports.443.handlers",
            "checks.alive.interval",
            "mounts./data",
        ] {
            assert!(fields.contains(&f), "{f} in {fields:?}");
        }
        let secret = &planned.objects[0].changes[0];
        assert_eq!(
            (secret.field.as_str(), secret.to.as_deref()),
            ("secrets.API_KEY", Some("(secret)"))
        );
        assert!(matches!(
            &planned.work.steps[..],
            [
                Step::CreateApp { .. },
                Step::SetSecrets { .. },
                Step::CreateVolume { .. },
                Step::CreateVolume { .. },
                Step::PutMachine {
                    id: None,
                    mount: Some(_),
                    ..
                },
                Step::PutMachine {
                    id: None,
                    mount: Some(_),
                    ..
                }
            ]
        ));
    }

    #[test]
    fn an_unchanged_spec_against_what_it_created_plans_no_steps_and_no_writes() {
        for volume in [false, true] {
            let mut f = Fixture::new(vec![spec_app(volume)]);
            let (observed, status) = converged(&f.apps);
            f.previous = status;
            f.drift_possible = true;
            let planned = f.plan(&observed);
            assert!(planned.work.steps.is_empty(), "{:?}", planned.work.steps);
            assert!(
                planned
                    .objects
                    .iter()
                    .all(|o| o.action == Action::InSync && o.writes == 0 && o.changes.is_empty()),
                "{:#?}",
                planned.objects
            );
        }
    }

    #[test]
    fn changing_the_guest_memory_updates_exactly_that_field_on_every_machine() {
        let mut f = Fixture::new(vec![spec_app(false)]);
        let (observed, status) = converged(&f.apps);
        f.previous = status;
        f.apps[0].guest.memory_mb = 1024;
        let planned = f.plan(&observed);
        let machines: Vec<&ObjectPlan> = planned
            .objects
            .iter()
            .filter(|o| o.kind == MACHINE)
            .collect();
        assert_eq!(machines.len(), 3);
        for m in machines {
            assert_eq!(m.action, Action::Update);
            assert_eq!(m.writes, MACHINE_UPDATE_WRITES);
            assert_eq!(
                m.changes,
                [FieldChange {
                    field: "guest.memoryMb".into(),
                    from: Some("512".into()),
                    to: Some("1024".into()),
                    drift: false,
                    unknown: false,
                }]
            );
        }
        let Some(Step::PutMachine {
            spec, id: Some(_), ..
        }) = planned.work.steps.first()
        else {
            panic!("{:?}", planned.work.steps);
        };
        assert_eq!(spec.config.guest.memory_mb, 1024);
        assert_eq!(spec.config.image, "acme/web:1");
        assert_eq!(
            planned.objects[0].action,
            Action::InSync,
            "the app is untouched"
        );
    }

    #[test]
    fn a_new_image_in_the_spec_is_rolled_out_and_a_releases_image_is_not_reverted() {
        let mut f = Fixture::new(vec![spec_app(false)]);
        let (mut observed, mut status) = converged(&f.apps);
        for o in status.iter_mut().filter(|o| o.kind == MACHINE) {
            o.image = Some("acme/web:1".into());
        }
        f.previous = status;
        f.drift_possible = true;
        // A Release deployed acme/web:9 since: with the spec unchanged, nothing to do.
        for app in observed.apps.values_mut() {
            for m in &mut app.machines {
                m.config.image = "acme/web:9".into();
            }
        }
        let planned = f.plan(&observed);
        for m in planned.objects.iter().filter(|o| o.kind == MACHINE) {
            assert_eq!(m.action, Action::InSync, "{m:?}");
            assert!(m.drift.is_empty());
        }
        assert!(
            planned
                .work
                .records
                .iter()
                .zip(&planned.objects)
                .filter(|(_, o)| o.kind == MACHINE)
                .all(|(r, _)| r.image.as_deref() == Some("acme/web:1")),
            "the record of what the Environment rolled out stays"
        );

        // The spec's image changes: every machine is updated to it, not as drift.
        f.apps[0].image = "acme/web:2".into();
        let planned = f.plan(&observed);
        for m in planned.objects.iter().filter(|o| o.kind == MACHINE) {
            assert_eq!(m.action, Action::Update);
            assert_eq!(m.changes.len(), 1);
            assert_eq!(m.changes[0].to_string(), "image: acme/web:9 → acme/web:2");
        }
        let Some(Step::PutMachine { spec, .. }) = planned.work.steps.first() else {
            panic!("{:?}", planned.work.steps);
        };
        assert_eq!(spec.config.image, "acme/web:2");
    }

    #[test]
    fn existing_objects_with_our_names_are_adopted_not_created() {
        let f = Fixture::new(vec![spec_app(true)]);
        let (observed, _) = converged(&f.apps);
        // No status at all (lost, or created by hand): the secrets are set once, as their
        // last applied value is unknown; everything else is found by name and in sync.
        let planned = f.plan(&observed);
        assert_eq!(
            summary(&planned),
            [
                s(APP, "web", "update", 1),
                s(VOLUME, "web/ams/data", "in sync", 0),
                s(VOLUME, "web/iad/data", "in sync", 0),
                s(MACHINE, "web-ams-0", "update", MACHINE_UPDATE_WRITES),
                s(MACHINE, "web-iad-0", "update", MACHINE_UPDATE_WRITES),
            ]
        );
        assert!(
            planned.objects.iter().all(|o| o.drift.is_empty()),
            "adoption is not drift"
        );
        assert!(planned.work.records.iter().all(|r| r.adopted));
        let machine = &planned.objects[3];
        assert_eq!(machine.changes.len(), 1);
        assert_eq!(machine.changes[0].field, "secretsVersion");
    }

    #[test]
    fn drift_is_corrected_under_correct_and_only_listed_under_report() {
        let mut f = Fixture::new(vec![spec_app(false)]);
        let (mut observed, status) = converged(&f.apps);
        f.previous = status;
        f.drift_possible = true;
        let app = observed.apps.get_mut("web").unwrap();
        app.machines[0]
            .config
            .env
            .insert("LOG_LEVEL".into(), "debug".into());
        app.machines[0].config.guest.memory_mb = 256;

        let correct = f.plan(&observed);
        let m = &correct.objects[1];
        assert_eq!((m.name.as_str(), &m.action), ("web-ams-0", &Action::Update));
        assert_eq!(m.drift, ["env.LOG_LEVEL", "guest.memoryMb"]);
        let Some(Step::PutMachine { spec, .. }) = correct.work.steps.first() else {
            panic!()
        };
        assert_eq!(spec.config.env["LOG_LEVEL"], "info");
        assert_eq!(spec.config.guest.memory_mb, 512);

        f.report_drift = true;
        let report = f.plan(&observed);
        let m = &report.objects[1];
        assert_eq!((&m.action, m.writes), (&Action::InSync, 0));
        assert_eq!(m.drift, ["env.LOG_LEVEL", "guest.memoryMb"]);
        assert!(report.work.steps.is_empty());

        // A secret rotation relaunches the machines; under Report the drifted env and
        // guest go back as they are.
        f.fingerprint = "fp-2".into();
        let rotated = f.plan(&observed);
        let Some(Step::PutMachine { spec, .. }) = rotated
            .work
            .steps
            .iter()
            .find(|s| matches!(s, Step::PutMachine { spec, .. } if spec.name == "web-ams-0"))
        else {
            panic!("{:?}", rotated.work.steps)
        };
        assert_eq!(spec.config.env["LOG_LEVEL"], "debug");
        assert_eq!(spec.config.guest.memory_mb, 256);
        assert_eq!(
            rotated.objects[1].drift,
            ["env.LOG_LEVEL", "guest.memoryMb"]
        );
    }

    #[test]
    fn a_rotated_secret_is_set_again_and_every_machine_relaunches_with_it() {
        let mut f = Fixture::new(vec![spec_app(false)]);
        let (observed, status) = converged(&f.apps);
        f.previous = status;
        f.drift_possible = true;
        f.fingerprint = "fp-2".into();
        let planned = f.plan(&observed);
        let app = &planned.objects[0];
        assert_eq!((&app.action, app.writes), (&Action::Update, 1));
        assert!(app.drift.is_empty(), "a rotation is not drift");
        assert_eq!(app.changes[0].to.as_deref(), Some("(secret)"));
        let Step::SetSecrets {
            set,
            unset,
            fingerprints,
            ..
        } = &planned.work.steps[0]
        else {
            panic!("{:?}", planned.work.steps)
        };
        assert_eq!(set.len(), 1);
        assert!(unset.is_empty());
        assert_eq!(fingerprints["secrets.API_KEY"], "fp-2");
        assert_eq!(
            planned
                .objects
                .iter()
                .filter(|o| o.kind == MACHINE && o.action == Action::Update)
                .count(),
            3
        );
    }

    #[test]
    fn machines_launched_before_the_apps_last_secret_change_are_updated_and_no_secret_is_set() {
        // A run set the secrets (version 7, recorded on the app) and stopped after updating
        // one machine: the next run updates the other two, and writes no secret.
        let mut f = Fixture::new(vec![spec_app(false)]);
        let (observed, mut status) = converged(&f.apps);
        for entry in &mut status {
            entry.secrets_version = match (entry.kind.as_str(), entry.name.as_str()) {
                (APP, _) => Some(7),
                (MACHINE, "web-ams-0") => Some(7),
                (MACHINE, _) => Some(6),
                _ => None,
            };
        }
        f.previous = status;
        f.drift_possible = true;
        let planned = f.plan(&observed);
        assert_eq!(
            planned.objects[0].action,
            Action::InSync,
            "the app's secrets are set"
        );
        let updated: Vec<&str> = planned
            .objects
            .iter()
            .filter(|o| o.kind == MACHINE && o.action == Action::Update)
            .map(|o| o.name.as_str())
            .collect();
        assert_eq!(updated, ["web-ams-1", "web-iad-0"]);
        assert!(
            planned
                .work
                .steps
                .iter()
                .all(|s| !matches!(s, Step::SetSecrets { .. }))
        );
        let Some(Step::PutMachine { spec, .. }) = planned.work.steps.first() else {
            panic!("{:?}", planned.work.steps)
        };
        assert_eq!(
            spec.min_secrets_version, None,
            "set when acting, from the app"
        );
        // Unknown versions (status from before they were recorded) force nothing.
        let (observed, status) = converged(&f.apps);
        f.previous = status;
        assert!(
            f.plan(&observed)
                .objects
                .iter()
                .all(|o| o.action == Action::InSync)
        );
    }

    #[test]
    fn scaling_down_deletes_the_highest_index_and_removing_a_region_its_machines() {
        let mut f = Fixture::new(vec![spec_app(false)]);
        let (observed, status) = converged(&f.apps);
        f.previous = status;
        f.apps[0].regions.truncate(1);
        f.apps[0].regions[0].count = 1;
        let planned = f.plan(&observed);
        let removed: Vec<_> = summary(&planned)
            .into_iter()
            .filter(|(_, _, verb, _)| *verb == "delete")
            .collect();
        assert_eq!(
            removed,
            [
                s(MACHINE, "web-ams-1", "delete", 1),
                s(MACHINE, "web-iad-0", "delete", 1)
            ]
        );
        f.remove_stateless = Action::Orphan;
        let orphaned = f.plan(&observed);
        assert!(orphaned.work.steps.is_empty());
        assert_eq!(
            orphaned
                .objects
                .iter()
                .filter(|o| o.action == Action::Orphan)
                .count(),
            2
        );
    }

    #[test]
    fn a_removed_region_keeps_its_volume_unless_the_policy_is_delete() {
        let mut f = Fixture::new(vec![spec_app(true)]);
        let (observed, status) = converged(&f.apps);
        f.previous = status;
        f.apps[0].regions.truncate(1);
        let kept = f.plan(&observed);
        let tail: Vec<_> = summary(&kept).into_iter().skip(3).collect();
        assert_eq!(
            tail,
            [
                s(MACHINE, "web-iad-0", "delete", 1),
                s(VOLUME, "web/iad/data", "orphan", 0)
            ]
        );
        f.remove_stateful = Action::Delete;
        let deleted = f.plan(&observed);
        let tail: Vec<_> = summary(&deleted).into_iter().skip(3).collect();
        assert_eq!(
            tail,
            [
                s(MACHINE, "web-iad-0", "delete", 1),
                s(VOLUME, "web/iad/data", "delete", 1)
            ]
        );
        assert!(
            matches!(
                &deleted.work.steps[..],
                [Step::DeleteMachine { .. }, Step::DeleteVolume { .. }]
            ),
            "the machine lets go of the volume first"
        );
    }

    #[test]
    fn a_removed_app_is_deleted_with_its_machines_but_kept_while_its_volumes_are() {
        let (_, status) = converged(&[spec_app(false)]);
        let mut f = Fixture::new(Vec::new());
        f.previous = status;
        let planned = f.plan(&Observed::default());
        assert_eq!(
            summary(&planned),
            [
                s(MACHINE, "web-ams-0", "delete", 0),
                s(MACHINE, "web-ams-1", "delete", 0),
                s(MACHINE, "web-iad-0", "delete", 0),
                s(APP, "web", "delete", 1),
            ]
        );
        let [Step::DeleteApp { with, .. }] = &planned.work.steps[..] else {
            panic!("{:?}", planned.work.steps)
        };
        assert_eq!(with, &[0, 1, 2]);

        let (_, status) = converged(&[spec_app(true)]);
        f.previous = status;
        let kept = f.plan(&Observed::default());
        assert_eq!(
            summary(&kept),
            [
                s(MACHINE, "web-ams-0", "delete", 1),
                s(MACHINE, "web-iad-0", "delete", 1),
                s(VOLUME, "web/ams/data", "orphan", 0),
                s(VOLUME, "web/iad/data", "orphan", 0),
                s(APP, "web", "orphan", 0),
            ],
            "deleting the app would destroy the kept volumes"
        );
        f.remove_stateful = Action::Delete;
        let all = f.plan(&Observed::default());
        assert_eq!(
            all.objects.last().map(|o| (&o.action, o.writes)),
            Some((&Action::Delete, 1))
        );
        assert_eq!(all.work.steps.len(), 1);
    }

    #[test]
    fn a_bigger_volume_is_extended_in_place_with_one_write() {
        let mut f = Fixture::new(vec![spec_app(true)]);
        let (observed, status) = converged(&f.apps);
        f.previous = status;
        f.apps[0].volumes[0].size_gb = 3;
        let planned = f.plan(&observed);
        let volumes: Vec<_> = summary(&planned)
            .into_iter()
            .filter(|(kind, ..)| kind == VOLUME)
            .collect();
        assert_eq!(
            volumes,
            [
                s(VOLUME, "web/ams/data", "update", 1),
                s(VOLUME, "web/iad/data", "update", 1)
            ]
        );
        assert!(matches!(
            &planned.work.steps[..],
            [
                Step::ExtendVolume { from: 1, to: 3, .. },
                Step::ExtendVolume { from: 1, to: 3, .. }
            ]
        ));
        assert!(
            planned
                .objects
                .iter()
                .filter(|o| o.kind == MACHINE)
                .all(|o| o.action == Action::InSync),
            "the machines keep their mounts"
        );
    }

    #[test]
    fn volumes_dropped_from_the_spec_are_unmounted_then_kept() {
        let mut f = Fixture::new(vec![spec_app(true)]);
        let (observed, status) = converged(&f.apps);
        f.previous = status;
        f.apps[0].volumes.clear();
        let planned = f.plan(&observed);
        assert_eq!(
            summary(&planned),
            [
                s(APP, "web", "in sync", 0),
                s(MACHINE, "web-ams-0", "update", MACHINE_UPDATE_WRITES),
                s(MACHINE, "web-iad-0", "update", MACHINE_UPDATE_WRITES),
                s(VOLUME, "web/ams/data", "orphan", 0),
                s(VOLUME, "web/iad/data", "orphan", 0),
            ]
        );
        assert_eq!(planned.objects[1].changes[0].field, "mounts./data");
        assert_eq!(planned.objects[1].changes[0].to, None);
        let Some(Step::PutMachine { spec, mount, .. }) = planned.work.steps.first() else {
            panic!("{:?}", planned.work.steps)
        };
        assert!(spec.config.mounts.is_empty() && mount.is_none());
    }

    #[test]
    fn durations_and_names_normalise() {
        assert_eq!(normal_duration("1m"), "60s");
        assert_eq!(normal_duration("60000ms"), "60s");
        assert_eq!(normal_duration("1.5s"), "1500ms");
        assert_eq!(normal_duration("1m30s"), "90s");
        assert_eq!(normal_duration("soon"), "soon");
        assert_eq!(
            parse_machine_name("my-web-ams-12"),
            Some(("my-web", "ams", 12))
        );
        assert_eq!(parse_machine_name("web-amsx-1"), None);
        assert_eq!(parse_machine_name("web-ams-1-g"), Some(("web", "ams", 1)));
        assert_eq!(parse_machine_name("web-ams-1-b"), Some(("web", "ams", 1)));
        assert_eq!(parse_machine_name("web-ams-g"), None);
        assert_eq!(volume_app("web/ams/data"), Some("web"));
    }

    #[test]
    fn a_starting_machine_in_sync_waits_and_is_not_ready() {
        let mut f = Fixture::new(vec![spec_app(false)]);
        let (mut observed, status) = converged(&f.apps);
        f.previous = status;
        let m = &mut observed.apps.get_mut("web").unwrap().machines[0];
        m.state = "starting".into();
        m.checks.clear();
        let planned = f.plan(&observed);
        assert_eq!(
            planned.objects[1].action,
            Action::Wait("machine is starting".into())
        );
        assert!(!planned.work.records[1].ready);
        assert!(planned.work.records[2].ready);
    }

    /// The green twin (`-g`, on `image`) of observed machine `name`, started and passing.
    fn twin_of(observed: &mut Observed, name: &str, image: &str) -> FlyMachine {
        let app = observed.apps.get_mut("web").expect("app web");
        let blue = app
            .machines
            .iter()
            .find(|m| m.name == name)
            .expect("machine")
            .clone();
        let mut green = blue.clone();
        green.id = format!("{}-green", blue.id);
        green.name = crate::platform::fly::twin_name(&blue.name);
        green.config.image = image.into();
        green
            .metadata
            .insert(crate::platform::fly::GREEN_OF.into(), blue.id.clone());
        app.machines.push(green.clone());
        green
    }

    #[test]
    fn a_machine_a_bluegreen_rollout_replaces_waits_ready_and_neither_it_nor_its_twin_is_touched() {
        let mut f = Fixture::new(vec![spec_app(false)]);
        let (mut observed, status) = converged(&f.apps);
        f.previous = status;
        f.drift_possible = true;
        let green = twin_of(&mut observed, "web-ams-1", "acme/web:2");
        let planned = f.plan(&observed);
        assert!(planned.work.steps.is_empty(), "{:?}", planned.work.steps);
        let slot = planned
            .objects
            .iter()
            .position(|o| o.name == "web-ams-1")
            .expect("slot planned");
        assert_eq!(
            planned.objects[slot].action,
            Action::Wait("bluegreen: web-ams-1-g replaces web-ams-1".into())
        );
        assert_eq!(planned.objects[slot].id.as_deref(), Some("m-web-ams-1"));
        assert!(planned.work.records[slot].ready);
        assert!(planned.objects.iter().all(|o| o.name != green.name));
        // Scaled down meanwhile: the machine being replaced goes (its twin, once alone).
        f.apps[0].regions[0].count = 1;
        let planned = f.plan(&observed);
        assert_eq!(
            summary(&planned)
                .into_iter()
                .filter(|(_, _, verb, _)| *verb == "delete")
                .collect::<Vec<_>>(),
            [s(MACHINE, "web-ams-1", "delete", 1)]
        );
    }

    #[test]
    fn a_twin_alone_holds_its_slot_and_nothing_is_created_in_its_place() {
        let mut f = Fixture::new(vec![spec_app(false)]);
        let (mut observed, mut status) = converged(&f.apps);
        for o in status.iter_mut().filter(|o| o.kind == MACHINE) {
            o.image = Some("acme/web:1".into());
        }
        f.previous = status;
        f.drift_possible = true;
        let green = twin_of(&mut observed, "web-ams-1", "acme/web:2");
        // The rollout destroyed the blue machine.
        let app = observed.apps.get_mut("web").unwrap();
        app.machines.retain(|m| m.name != "web-ams-1");
        let planned = f.plan(&observed);
        assert!(planned.work.steps.is_empty(), "{:?}", planned.work.steps);
        let slot = planned
            .objects
            .iter()
            .position(|o| o.name == "web-ams-1")
            .expect("slot planned");
        assert_eq!(planned.objects[slot].action, Action::InSync);
        assert_eq!(planned.objects[slot].id.as_deref(), Some(green.id.as_str()));
        assert!(!planned.work.records[slot].adopted);
        // A spec change updates the twin, under its own name.
        f.apps[0].env.insert("LOG_LEVEL".into(), "debug".into());
        let planned = f.plan(&observed);
        let updated: Vec<(&str, &str)> = planned
            .work
            .steps
            .iter()
            .filter_map(|step| match step {
                Step::PutMachine {
                    id: Some(id), spec, ..
                } => Some((id.as_str(), spec.name.as_str())),
                _ => None,
            })
            .collect();
        assert!(
            updated.contains(&(green.id.as_str(), "web-ams-1-g")),
            "{updated:?}"
        );
        assert_eq!(updated.len(), 3, "{updated:?}");
    }
}
