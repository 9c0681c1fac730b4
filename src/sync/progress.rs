//! What a sync in progress tells its caller before it returns: each object as soon as it
//! was written (its id and the fingerprints of the secrets just written, so a restart right
//! after does not write them again), what each platform is about to change, and when a
//! request waits for a platform's rate limit.
//!
//! A write is reported and then awaited until status holds it ([`written`], [`removed`]), so
//! the sync sends its next platform request only once the last one is recorded.
//!
//! The reporter is scoped to the sync's task ([`scoped`]): the platform clients are shared
//! by every Environment of an account, so a rate-limit wait deep in a client reaches the
//! Environment whose sync is waiting without threading a handle through every call. Outside
//! a scope (`tether plan`, tests of a driver) reports go nowhere.

use std::future::Future;
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::oneshot;

use super::ObjectPlan;
use crate::api::environment::ManagedObject;
use crate::platform::Platform;

/// Rate-limit waits shorter than this are not reported (they are over before a status
/// write would land).
pub const REPORTED_WAIT: Duration = Duration::from_secs(1);

/// One report of a sync in progress, and for a write, who waits until status records it.
#[derive(Debug)]
pub struct Report {
    /// What happened.
    pub progress: Progress,
    /// Answered once status holds it (or writing it failed).
    pub recorded: Option<oneshot::Sender<()>>,
}

/// What a sync in progress reports.
#[derive(Clone, Debug)]
pub enum Progress {
    /// A platform was observed and planned: the objects it will change.
    Planned {
        /// Platform.
        platform: Platform,
        /// The plans that change something (create, update, delete).
        changes: Vec<ObjectPlan>,
    },
    /// An object was written; its status entry as it is now.
    Written(Box<ManagedObject>),
    /// An object was deleted or orphaned: it leaves status.
    Removed {
        /// Platform.
        platform: Platform,
        /// Kind on the platform.
        kind: String,
        /// Name.
        name: String,
    },
    /// A request waits for the platform's rate limit.
    Waiting {
        /// Platform.
        platform: Platform,
        /// The operation waiting (`create_service`).
        operation: &'static str,
        /// When it is sent.
        until: SystemTime,
    },
}

tokio::task_local! {
    static SINK: UnboundedSender<Report>;
    static WHO: std::sync::Arc<str>;
    static IN_PLACE: ();
}

/// Runs `work` (the sync of `who`, e.g. `namespace/name` of an Environment) with its
/// progress reported to `sink`.
pub async fn scoped<F: Future>(sink: UnboundedSender<Report>, who: &str, work: F) -> F::Output {
    SINK.scope(sink, WHO.scope(std::sync::Arc::from(who), work))
        .await
}

/// Whose sync runs in the current scope, if any: a parked request keeps its place in a
/// rate limit's line under this name.
pub fn who() -> Option<std::sync::Arc<str>> {
    WHO.try_with(|who| who.clone()).ok()
}

/// Rate-limit waits at least this long are not waited out inside a controller's sync: the
/// request fails with `RateLimited`, the sync stops there (what it did is recorded), and the
/// Environment is reconciled again when the limit allows, so no worker is held by a wait
/// longer than this. (A wait counts every sync ahead in the limit's line, see
/// `platform::http`; shorter ones are over before a reconcile would come back.)
pub const PARK_AFTER: Duration = Duration::from_millis(100);

/// Whether a wait of `wait` is parked instead of waited out: only inside a scope (a
/// controller's sync), outside [`in_place`]; `tether plan` and direct client calls wait.
pub fn parks(wait: Duration) -> bool {
    wait >= PARK_AFTER && SINK.try_with(|_| ()).is_ok() && IN_PLACE.try_with(|_| ()).is_err()
}

/// Runs `work` with its rate-limit waits waited out, not parked: for the requests that
/// complete a write already sent (reading back the id of what it started), since a parked
/// request fails as if nothing was sent and the caller would send the write again.
pub async fn in_place<F: Future>(work: F) -> F::Output {
    IN_PLACE.scope((), work).await
}

/// Reports `progress` to the current scope, if any.
pub fn report(progress: Progress) {
    let _ = SINK.try_with(|sink| {
        // The receiver is gone only when the caller stopped listening: nothing to tell.
        let _ = sink.send(Report {
            progress,
            recorded: None,
        });
    });
}

/// Reports `progress` and waits until status records it (at once outside a scope).
async fn record(progress: Progress) {
    let (recorded, done) = oneshot::channel();
    let sent = SINK.try_with(|sink| {
        sink.send(Report {
            progress,
            recorded: Some(recorded),
        })
        .is_ok()
    });
    if sent == Ok(true) {
        // A dropped sender (the writer stopped) also ends the wait.
        let _ = done.await;
    }
}

/// Reports that `object` was written, and waits until status holds it.
pub async fn written(object: &ManagedObject) {
    record(Progress::Written(Box::new(object.clone()))).await;
}

/// Reports that `plan`'s object left management (deleted or orphaned), and waits until
/// status no longer lists it.
pub async fn removed(plan: &ObjectPlan) {
    record(Progress::Removed {
        platform: plan.platform,
        kind: plan.kind.clone(),
        name: plan.name.clone(),
    })
    .await;
}

/// Reports a rate-limit wait of `wait` before `operation` (only waits of at least
/// [`REPORTED_WAIT`]).
pub fn waiting(platform: Platform, operation: &'static str, wait: Duration) {
    if wait >= REPORTED_WAIT {
        report(Progress::Waiting {
            platform,
            operation,
            until: SystemTime::now() + wait,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reports_reach_the_scope_of_the_task_and_a_write_waits_until_it_is_recorded() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        // Outside a scope: dropped without a panic, and a write is not waited for.
        waiting(Platform::Render, "create_service", Duration::from_secs(5));
        written(&ManagedObject::default()).await;
        let sync = scoped(tx, "default/web", async {
            waiting(
                Platform::Render,
                "create_service",
                Duration::from_millis(10),
            );
            waiting(Platform::Fly, "create_app", Duration::from_secs(3));
            written(&ManagedObject {
                name: "api".into(),
                ..ManagedObject::default()
            })
            .await;
            "written and recorded"
        });
        let writer = async {
            match rx.recv().await.map(|r| r.progress) {
                Some(Progress::Waiting {
                    platform,
                    operation,
                    ..
                }) => assert_eq!((platform, operation), (Platform::Fly, "create_app")),
                other => panic!("expected the 3 s wait (the 10 ms one is not reported): {other:?}"),
            }
            let report = rx.recv().await.expect("the write");
            assert!(matches!(&report.progress, Progress::Written(o) if o.name == "api"));
            // The sync waits until the write is recorded.
            tokio::time::sleep(Duration::from_millis(50)).await;
            report.recorded.expect("awaited").send(()).unwrap();
            assert!(rx.recv().await.is_none(), "the sender ends with the scope");
        };
        let (outcome, ()) = tokio::join!(sync, writer);
        assert_eq!(outcome, "written and recorded");
    }
}
