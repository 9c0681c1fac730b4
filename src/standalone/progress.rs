//! What `tether run` tells the person at the terminal: one line per applied or pruned object,
//! per bad manifest, per condition transition of a Tether object (a rate-limit wait shows as
//! `Reconciling=True RateLimited`), per change made on a platform and per Warning event.
//!
//! Lines go to stdout (logs go to stderr), so `tether run | grep ...` works. Each line is a
//! [`Progress`] value whose `Display` is the line, so the wording is tested as data.
//! The watchers here run beside the sync loop: one per Tether kind (conditions) and one on
//! `events.k8s.io/v1` Events (platform changes and Warnings). Objects and events that already
//! exist when a
//! watcher starts are a silent baseline; only changes after that are printed.

use std::collections::HashMap;
use std::fmt;
use std::io::Write;
use std::sync::{Arc, Mutex};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::inventory::ObjectId;

/// One line of progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// The API server is up.
    Listening {
        /// Its URL.
        url: String,
        /// The store file.
        store: String,
    },
    /// How to point kubectl at it.
    KubectlHint {
        /// The kubeconfig path.
        kubeconfig: String,
    },
    /// An object was applied.
    Applied {
        /// The object.
        id: ObjectId,
        /// Its manifest file.
        source: String,
    },
    /// An object whose manifest was removed was deleted.
    Pruned {
        /// The object.
        id: ObjectId,
        /// The file it came from.
        source: String,
    },
    /// A manifest could not be applied (or a pruned object could not be deleted).
    Error {
        /// Where: `envs/web.yaml (document 2, line 14)`, or the file alone.
        place: String,
        /// What, when known: `environment staging/web`.
        object: Option<String>,
        /// Field and reason.
        reason: String,
    },
    /// A sync pass finished.
    Synced {
        /// Manifest files seen.
        files: usize,
        /// Objects applied in this pass.
        applied: usize,
        /// Objects pruned in this pass.
        pruned: usize,
        /// Errors in this pass.
        errors: usize,
    },
    /// The directory watch started.
    Watching {
        /// The manifest directory.
        dir: String,
    },
    /// A condition of a Tether object changed.
    Condition {
        /// The object.
        id: ObjectId,
        /// The condition.
        condition: Condition,
    },
    /// A Tether object is gone from the store (its finalizers are done).
    Deleted {
        /// The object.
        id: ObjectId,
    },
    /// Something was changed on a platform (a Normal event of the Environment controller).
    Changed {
        /// The object the event is about (`environment staging/web`).
        regarding: String,
        /// The event's reason (`Created`, `Updated`, `DriftCorrected`, …).
        reason: String,
        /// The event's note.
        note: String,
    },
    /// A Warning event was recorded.
    Warning {
        /// The object the event is about (`environment staging/web`).
        regarding: String,
        /// The event's reason.
        reason: String,
        /// The event's note.
        note: String,
    },
    /// A platform of the built-in sandbox is serving (`--sandbox`).
    Sandbox {
        /// `render`, `vercel`, `fly` or `supabase`.
        platform: String,
        /// Its base URL.
        url: String,
    },
    /// The sandbox's app edge: every app answers there by its host name.
    AppEdge {
        /// Its base URL.
        url: String,
    },
    /// Shutting down.
    Stopping,
}

impl fmt::Display for Progress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Progress::Listening { url, store } => {
                write!(
                    f,
                    "tether run: API server listening on {url} (store {store})"
                )
            }
            Progress::KubectlHint { kubeconfig } => write!(
                f,
                "tether run: use kubectl with: kubectl --kubeconfig {kubeconfig} get env,rel,mig"
            ),
            Progress::Applied { id, source } => write!(f, "applied  {id}  ({source})"),
            Progress::Pruned { id, source } => {
                write!(f, "pruned   {id}  (no longer in {source})")
            }
            Progress::Error {
                place,
                object,
                reason,
            } => match object {
                Some(object) => write!(f, "error    {place}: {object}: {reason}"),
                None => write!(f, "error    {place}: {reason}"),
            },
            Progress::Synced {
                files,
                applied,
                pruned,
                errors,
            } => write!(
                f,
                "synced   {files} files: {applied} applied, {pruned} pruned, {errors} errors"
            ),
            Progress::Watching { dir } => {
                write!(f, "watching {dir} for changes (Ctrl-C to stop)")
            }
            Progress::Condition { id, condition } => write!(f, "{id}  {condition}"),
            Progress::Deleted { id } => write!(f, "{id}  deleted"),
            Progress::Changed {
                regarding,
                reason,
                note,
            } => write!(f, "platform {regarding}  {reason}: {note}"),
            Progress::Warning {
                regarding,
                reason,
                note,
            } => write!(f, "warning  {regarding}  {reason}: {note}"),
            Progress::Sandbox { platform, url } => write!(
                f,
                "tether run: sandbox {platform} at {url} (token sandbox-{platform}-token)"
            ),
            Progress::AppEdge { url } => write!(
                f,
                "tether run: sandbox apps answer at {url} by host name (curl -H 'Host: <host of an app URL>' {url}/)"
            ),
            Progress::Stopping => write!(f, "tether run: shutting down"),
        }
    }
}

/// Prints progress lines; clones share one output.
#[derive(Clone)]
pub struct Reporter {
    out: Arc<Mutex<Box<dyn Write + Send>>>,
}

impl Reporter {
    /// A reporter printing to stdout.
    pub fn stdout() -> Self {
        Self::to(Box::new(std::io::stdout()))
    }

    /// A reporter printing to `out`.
    pub fn to(out: Box<dyn Write + Send>) -> Self {
        Self {
            out: Arc::new(Mutex::new(out)),
        }
    }

    /// Prints one line and flushes it, so a pipe reader sees it at once.
    pub fn print(&self, line: Progress) {
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        // A closed stdout (the reader went away) must not stop the server.
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}

/// The part of a status condition a person follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    /// `Ready`, `Reconciling`, `Stalled`, …
    pub type_: String,
    /// `True`, `False`, `Unknown`.
    pub status: String,
    /// CamelCase reason.
    pub reason: String,
    /// Human message.
    pub message: String,
}

impl fmt::Display for Condition {
    /// `Ready=False Reconciling: creating 3 objects`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.type_, self.status)?;
        if !self.reason.is_empty() {
            write!(f, " {}", self.reason)?;
        }
        if !self.message.is_empty() {
            write!(f, ": {}", self.message)?;
        }
        Ok(())
    }
}

/// The conditions in `status.conditions` of an object.
pub fn conditions(obj: &Value) -> Vec<Condition> {
    let field = |c: &Value, name: &str| {
        c.get(name)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    obj.pointer("/status/conditions")
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .filter(|c| c.get("type").and_then(Value::as_str).is_some())
                .map(|c| Condition {
                    type_: field(c, "type"),
                    status: field(c, "status"),
                    reason: field(c, "reason"),
                    message: field(c, "message"),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Conditions with "abnormal-true" polarity (kstatus): `False` is their normal state, so
/// they are only worth a line when they turn `True`; `Ready` already says all is well.
const ABNORMAL_TRUE: [&str; 2] = ["Reconciling", "Stalled"];

/// The conditions of `new` that are transitions from `old` worth a line: new types, and
/// types whose status or reason changed — except `Reconciling`/`Stalled` going back to
/// `False`. A message that changes under the same status and reason is not a transition
/// (controllers refresh messages; printing each would flood the terminal).
pub fn transitions(old: &[Condition], new: &[Condition]) -> Vec<Condition> {
    new.iter()
        .filter(|n| {
            !old.iter()
                .any(|o| o.type_ == n.type_ && o.status == n.status && o.reason == n.reason)
        })
        .filter(|n| !(ABNORMAL_TRUE.contains(&n.type_.as_str()) && n.status == "False"))
        .cloned()
        .collect()
}

/// Prints condition transitions of every object of the Tether kinds in `crds` until
/// `shutdown`. Sends one message on `listed` per kind once its first list is done (from
/// then on, every change of that kind is printed).
pub async fn watch_conditions(
    client: kube::Client,
    crds: Vec<CustomResourceDefinition>,
    reporter: Reporter,
    listed: mpsc::Sender<()>,
    shutdown: CancellationToken,
) {
    let watches = crds.iter().filter_map(|crd| {
        let version = crd
            .spec
            .versions
            .iter()
            .find(|v| v.storage)
            .or(crd.spec.versions.first())?;
        let gvk = GroupVersionKind::gvk(&crd.spec.group, &version.name, &crd.spec.names.kind);
        let resource = ApiResource::from_gvk_with_plural(&gvk, &crd.spec.names.plural);
        Some(watch_kind(
            Api::all_with(client.clone(), &resource),
            gvk,
            reporter.clone(),
            listed.clone(),
        ))
    });
    let all = futures::future::join_all(watches);
    tokio::select! {
        _ = all => {}
        _ = shutdown.cancelled() => {}
    }
}

async fn watch_kind(
    api: Api<DynamicObject>,
    gvk: GroupVersionKind,
    reporter: Reporter,
    listed: mpsc::Sender<()>,
) {
    let mut known: HashMap<ObjectId, Vec<Condition>> = HashMap::new();
    let mut baseline = true;
    let mut stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    loop {
        let event = match stream.try_next().await {
            Ok(Some(event)) => event,
            Ok(None) => return,
            Err(err) => {
                tracing::debug!(error = %err, kind = %gvk.kind, "condition watch failed; retrying");
                continue;
            }
        };
        match event {
            watcher::Event::Init => {}
            watcher::Event::InitDone => {
                if baseline {
                    let _ = listed.try_send(());
                }
                baseline = false;
            }
            watcher::Event::InitApply(obj) | watcher::Event::Apply(obj) => {
                let id = dynamic_id(&gvk, &obj);
                let now = conditions(&obj.data);
                let before = known.insert(id.clone(), now.clone());
                if baseline {
                    continue;
                }
                for condition in transitions(before.as_deref().unwrap_or_default(), &now) {
                    reporter.print(Progress::Condition {
                        id: id.clone(),
                        condition,
                    });
                }
            }
            watcher::Event::Delete(obj) => {
                let id = dynamic_id(&gvk, &obj);
                known.remove(&id);
                reporter.print(Progress::Deleted { id });
            }
        }
    }
}

fn dynamic_id(gvk: &GroupVersionKind, obj: &DynamicObject) -> ObjectId {
    ObjectId {
        group: gvk.group.clone(),
        kind: gvk.kind.clone(),
        namespace: obj.metadata.namespace.clone(),
        name: obj.metadata.name.clone().unwrap_or_default(),
    }
}

/// Reasons of the Normal events that record a change made on a platform.
const PLATFORM_CHANGES: [&str; 6] = [
    "Created",
    "Updated",
    "Deleted",
    "Orphaned",
    "Adopted",
    "DriftCorrected",
];

/// The line for a Warning event or a platform change, `None` for any other event.
pub fn event_line(event: &Event) -> Option<Progress> {
    let warning = event.type_.as_deref() == Some("Warning");
    let reason = event.reason.clone().unwrap_or_default();
    if !warning && !PLATFORM_CHANGES.contains(&reason.as_str()) {
        return None;
    }
    let regarding = event
        .regarding
        .as_ref()
        .map(|r| {
            let kind = r.kind.as_deref().unwrap_or("object").to_ascii_lowercase();
            let name = r.name.as_deref().unwrap_or_default();
            match r.namespace.as_deref() {
                Some(ns) if !ns.is_empty() => format!("{kind} {ns}/{name}"),
                _ => format!("{kind} {name}"),
            }
        })
        .unwrap_or_else(|| "object".into());
    let note = event.note.clone().unwrap_or_default();
    Some(if warning {
        Progress::Warning {
            regarding,
            reason,
            note,
        }
    } else {
        Progress::Changed {
            regarding,
            reason,
            note,
        }
    })
}

/// How often an event has happened (a repeated event is one object with a growing count).
fn occurrences(event: &Event) -> i32 {
    event
        .series
        .as_ref()
        .map(|s| s.count)
        .or(event.deprecated_count)
        .unwrap_or(1)
}

/// Prints every new Warning event and platform change (events.k8s.io/v1, what kube's
/// event recorder writes)
/// until `shutdown`. Sends one message on `listed` once the first list is done.
pub async fn watch_events(
    client: kube::Client,
    reporter: Reporter,
    listed: mpsc::Sender<()>,
    shutdown: CancellationToken,
) {
    let api: Api<Event> = Api::all(client);
    let mut seen: HashMap<String, i32> = HashMap::new();
    let mut baseline = true;
    let mut stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    loop {
        let event = tokio::select! {
            next = stream.try_next() => next,
            _ = shutdown.cancelled() => return,
        };
        let event = match event {
            Ok(Some(event)) => event,
            Ok(None) => return,
            Err(err) => {
                tracing::debug!(error = %err, "event watch failed; retrying");
                continue;
            }
        };
        match event {
            watcher::Event::Init | watcher::Event::Delete(_) => {}
            watcher::Event::InitDone => {
                if baseline {
                    let _ = listed.try_send(());
                }
                baseline = false;
            }
            watcher::Event::InitApply(ev) | watcher::Event::Apply(ev) => {
                let key = ev.metadata.uid.clone().unwrap_or_default();
                let count = occurrences(&ev);
                let before = seen.insert(key, count);
                if baseline || before.is_some_and(|b| b >= count) {
                    continue;
                }
                if let Some(line) = event_line(&ev) {
                    reporter.print(line);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ObjectReference;

    fn cond(type_: &str, status: &str, reason: &str, message: &str) -> Condition {
        Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message: message.into(),
        }
    }

    fn env_id() -> ObjectId {
        ObjectId {
            group: "tether.dev".into(),
            kind: "Environment".into(),
            namespace: Some("default".into()),
            name: "staging".into(),
        }
    }

    #[test]
    fn a_condition_line_reads_kind_name_type_status_reason_and_message() {
        let line = Progress::Condition {
            id: env_id(),
            condition: cond("Ready", "False", "Reconciling", "creating 3 objects"),
        };
        assert_eq!(
            line.to_string(),
            "environment default/staging  Ready=False Reconciling: creating 3 objects"
        );
    }

    #[test]
    fn conditions_are_read_from_status() {
        let obj = serde_json::json!({"status": {"conditions": [
            {"type": "Ready", "status": "True", "reason": "Synced", "message": "all good"},
            {"status": "True"}
        ]}});
        assert_eq!(
            conditions(&obj),
            vec![cond("Ready", "True", "Synced", "all good")]
        );
        assert!(conditions(&serde_json::json!({})).is_empty());
    }

    #[test]
    fn a_changed_status_or_reason_is_a_transition_and_a_changed_message_is_not() {
        let old = vec![
            cond("Ready", "False", "Reconciling", "creating 3 objects"),
            cond("Stalled", "False", "Ok", ""),
        ];
        let new = vec![
            cond("Ready", "False", "Reconciling", "creating 2 objects"),
            cond("Stalled", "True", "BadToken", "token rejected"),
            cond("Synced", "True", "Synced", ""),
        ];
        let types: Vec<String> = transitions(&old, &new)
            .into_iter()
            .map(|c| c.type_)
            .collect();
        assert_eq!(types, vec!["Stalled", "Synced"]);
    }

    #[test]
    fn reconciling_and_stalled_print_when_they_turn_true_not_when_they_clear() {
        let old = vec![cond("Stalled", "True", "BadToken", "token rejected")];
        let new = vec![
            cond("Stalled", "False", "NotStalled", ""),
            cond("Reconciling", "True", "Progressing", "creating 3 objects"),
            cond("Ready", "False", "Reconciling", "creating 3 objects"),
        ];
        let types: Vec<String> = transitions(&old, &new)
            .into_iter()
            .map(|c| c.type_)
            .collect();
        assert_eq!(types, vec!["Reconciling", "Ready"]);
    }

    #[test]
    fn warnings_and_platform_changes_print_and_name_the_object() {
        let mut event = Event {
            type_: Some("Warning".into()),
            reason: Some("DeployFailed".into()),
            note: Some("deployment dep-1 failed".into()),
            regarding: Some(ObjectReference {
                kind: Some("Environment".into()),
                namespace: Some("default".into()),
                name: Some("staging".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            event_line(&event).unwrap().to_string(),
            "warning  environment default/staging  DeployFailed: deployment dep-1 failed"
        );
        event.type_ = Some("Normal".into());
        assert!(
            event_line(&event).is_none(),
            "a Normal event of another kind"
        );
        event.reason = Some("Created".into());
        event.note = Some("Created Vercel project \"staging-web\"".into());
        assert_eq!(
            event_line(&event).unwrap().to_string(),
            "platform environment default/staging  Created: Created Vercel project \"staging-web\""
        );
    }

    #[test]
    fn an_error_line_names_the_place_the_object_and_the_reason() {
        let line = Progress::Error {
            place: "envs/web.yaml (document 2, line 14)".into(),
            object: Some("environment staging/web".into()),
            reason: "spec.replicas: Invalid value: -1: must be >= 0".into(),
        };
        assert_eq!(
            line.to_string(),
            "error    envs/web.yaml (document 2, line 14): environment staging/web: spec.replicas: Invalid value: -1: must be >= 0"
        );
    }

    #[test]
    fn the_reporter_writes_one_line_per_progress() {
        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl Write for Buf {
            fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(data);
                Ok(data.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let reporter = Reporter::to(Box::new(buf.clone()));
        reporter.print(Progress::Stopping);
        reporter.print(Progress::Deleted { id: env_id() });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert_eq!(
            text,
            "tether run: shutting down\nenvironment default/staging  deleted\n"
        );
    }
}
