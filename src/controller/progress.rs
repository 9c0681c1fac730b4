//! Status while an Environment's sync runs: a sync can take minutes (Render allows 20 service
//! creates an hour), and `kubectl get env` must say what is going on meanwhile. The sync
//! reports what it plans, each object once written and each long rate-limit wait
//! ([`crate::sync::progress`]); this writer turns the reports into status writes:
//! `Reconciling=True` naming the work left or the wait and its next attempt time, `Ready=Unknown`,
//! and `status.objects` with every object written so far. Secret fingerprints thus reach status
//! right after the write, so a controller restarted mid-sync neither creates an object twice
//! nor writes a secret again.
//!
//! A sync with nothing to change reports nothing, so steady state costs no status writes.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use kube::Api;
use kube::api::{Patch, PatchParams};
use tokio::sync::mpsc::UnboundedReceiver;
use tracing::warn;

use crate::api::environment::ManagedObject;
use crate::api::{Condition, Environment};
use crate::controller::conditions::{Verdict, next_conditions};
use crate::controller::decoded::Decoded;
use crate::controller::reconcile::FIELD_MANAGER;
use crate::platform::Platform;
use crate::sync::progress::{Progress, Report};

/// What the writer starts from: the object as the reconcile read it.
pub struct Start {
    /// The Environment's API (its namespace).
    pub api: Api<Decoded<Environment>>,
    /// Its name.
    pub name: String,
    /// `metadata.generation`.
    pub generation: Option<i64>,
    /// Its status fields besides conditions and `observedGeneration`, written back unchanged
    /// except `objects`.
    pub status: serde_json::Map<String, serde_json::Value>,
    /// `status.objects` before this sync.
    pub objects: Vec<ManagedObject>,
    /// Its conditions before this sync.
    pub conditions: Vec<Condition>,
}

/// The state of one sync in progress, folded from its reports.
#[derive(Debug, Default)]
pub struct Tracker {
    objects: Vec<ManagedObject>,
    /// Platform → (objects planned to change, of which done).
    work: BTreeMap<Platform, (Vec<(String, String)>, usize)>,
    /// Platform → (operation, when it is sent).
    waits: BTreeMap<Platform, (&'static str, SystemTime)>,
}

impl Tracker {
    /// A tracker starting from the status entries of the last reconcile.
    pub fn new(objects: Vec<ManagedObject>) -> Self {
        Self {
            objects,
            ..Self::default()
        }
    }

    /// Folds one report in; returns whether status should show it.
    pub fn fold(&mut self, progress: Progress) -> bool {
        match progress {
            Progress::Planned { platform, changes } => {
                let names = changes.into_iter().map(|p| (p.kind, p.name)).collect();
                self.work.insert(platform, (names, 0));
                true
            }
            Progress::Written(object) => {
                let Some(platform) = Platform::ALL
                    .into_iter()
                    .find(|p| p.as_str() == object.platform)
                else {
                    return false;
                };
                self.done(platform, &object.kind, &object.name);
                let slot = self.objects.iter_mut().find(|o| {
                    o.platform == object.platform && o.kind == object.kind && o.name == object.name
                });
                match slot {
                    Some(slot) if *slot == *object => {}
                    Some(slot) => *slot = *object,
                    None => self.objects.push(*object),
                }
                true
            }
            Progress::Removed {
                platform,
                kind,
                name,
            } => {
                self.done(platform, &kind, &name);
                self.objects.retain(|o| {
                    !(o.platform == platform.as_str() && o.kind == kind && o.name == name)
                });
                true
            }
            Progress::Waiting {
                platform,
                operation,
                until,
            } => {
                // Every request of a queue reports its own wait: only a new operation or
                // a next attempt time that moved by a second is worth a status write.
                let changed = self.waits.get(&platform).is_none_or(|(op, at)| {
                    *op != operation
                        || later_by(until, *at).max(later_by(*at, until)) >= Duration::from_secs(1)
                });
                self.waits.insert(platform, (operation, until));
                changed
            }
        }
    }

    fn done(&mut self, platform: Platform, kind: &str, name: &str) {
        if let Some((planned, done)) = self.work.get_mut(&platform)
            && planned.iter().any(|(k, n)| k == kind && n == name)
        {
            *done = (*done + 1).min(planned.len());
        }
        // A platform that moved on is not waiting any more.
        self.waits.remove(&platform);
    }

    /// The status entries as they are now.
    pub fn objects(&self) -> &[ManagedObject] {
        &self.objects
    }

    /// `Reconciling`'s reason and message at `now`.
    pub fn verdict(&self, now: SystemTime) -> Verdict {
        let mut parts: Vec<String> = self
            .work
            .iter()
            .map(|(platform, (planned, done))| {
                let next = planned
                    .get(*done)
                    .map(|(kind, name)| format!(", next {kind} {name:?}"))
                    .unwrap_or_default();
                format!(
                    "{platform}: {done} of {} changes applied{next}",
                    planned.len()
                )
            })
            .collect();
        let waits: Vec<String> = self
            .waits
            .iter()
            .filter(|(_, (_, until))| *until > now)
            .map(|(platform, (operation, until))| {
                let at = jiff::Timestamp::try_from(*until)
                    .ok()
                    .and_then(|t| t.round(jiff::Unit::Second).ok())
                    .map(|t| t.to_string())
                    .unwrap_or_default();
                let left = later_by(*until, now).as_secs();
                format!(
                    "{platform} is waiting for its API rate limit: {operation} is sent at {at} (in {left}s)"
                )
            })
            .collect();
        let reason = if waits.is_empty() {
            "Progressing"
        } else {
            "RateLimited"
        };
        parts.extend(waits);
        Verdict::Progressing {
            reason: reason.into(),
            message: format!("Applying the spec: {}", parts.join("; ")),
        }
    }
}

fn later_by(a: SystemTime, b: SystemTime) -> Duration {
    a.duration_since(b).unwrap_or_default()
}

/// News no write waits for (a plan, a rate-limit wait) is shown once it is this old, or
/// with the next write's record if one comes first; a sync that ends sooner leaves it to the
/// reconcile's own status write. A change that takes one platform write thus costs one
/// status write before it, not two, and a sync that parks at once costs none.
pub const SHOW_AFTER: Duration = crate::sync::progress::REPORTED_WAIT;

/// Writes status from the reports on `reports` until the sync drops its end; a write's
/// report is answered once status holds it.
pub async fn write(start: Start, mut reports: UnboundedReceiver<Report>) {
    let mut tracker = Tracker::new(start.objects.clone());
    let mut written: Option<serde_json::Value> = None;
    let mut waiting = Vec::new();
    let mut show = false;
    // When the news folded in so far is shown at the latest.
    let mut due: Option<tokio::time::Instant> = None;
    loop {
        let received = match due {
            None => reports.recv().await,
            Some(at) => tokio::select! {
                received = reports.recv() => received,
                () = tokio::time::sleep_until(at) => None,
            },
        };
        match received {
            Some(report) => {
                show |= fold(&mut tracker, report, &mut waiting);
                // Reports that arrived meanwhile go into the same write.
                while let Ok(next) = reports.try_recv() {
                    show |= fold(&mut tracker, next, &mut waiting);
                }
                if waiting.is_empty() {
                    if show && due.is_none() {
                        due = Some(tokio::time::Instant::now() + SHOW_AFTER);
                    }
                    continue;
                }
            }
            // The sync ended: what it did not wait for is the reconcile's to write.
            None if due.is_none_or(|at| at > tokio::time::Instant::now()) => break,
            None => {}
        }
        let status = status_of(&start, &tracker, SystemTime::now());
        if show && written.as_ref() != Some(&status) {
            patch(&start, &status).await;
            written = Some(status);
        }
        show = false;
        due = None;
        for recorded in waiting.drain(..) {
            let _ = recorded.send(());
        }
    }
}

fn fold(
    tracker: &mut Tracker,
    report: Report,
    waiting: &mut Vec<tokio::sync::oneshot::Sender<()>>,
) -> bool {
    waiting.extend(report.recorded);
    tracker.fold(report.progress)
}

async fn patch(start: &Start, status: &serde_json::Value) {
    let patch = serde_json::json!({
        "apiVersion": <Environment as kube::Resource>::api_version(&()),
        "kind": <Environment as kube::Resource>::kind(&()),
        "status": status,
    });
    let applied = start
        .api
        .patch_status(
            &start.name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await;
    if let Err(error) = applied {
        // The reconcile's own status write follows; until then a restart would redo
        // (idempotently) what this write would have recorded.
        warn!(error = %error, "failed to write progress to status");
    }
}

fn status_of(start: &Start, tracker: &Tracker, now: SystemTime) -> serde_json::Value {
    let now_text = jiff::Timestamp::try_from(now)
        .ok()
        .and_then(|t| t.round(jiff::Unit::Second).ok())
        .map(|t| t.to_string())
        .unwrap_or_default();
    let conditions = next_conditions(
        &start.conditions,
        &tracker.verdict(now),
        start.generation,
        &now_text,
    );
    let mut status = start.status.clone();
    status.insert("objects".into(), serde_json::json!(tracker.objects()));
    status.insert(
        "observedGeneration".into(),
        serde_json::json!(start.generation),
    );
    status.insert("conditions".into(), serde_json::json!(conditions));
    serde_json::Value::Object(status)
}
