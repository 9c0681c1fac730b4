//! The kube-rs runtime pieces Tether's controllers use, against the in-process API: a
//! `Controller` reconciling a test CRD, events from kube's `Recorder` read back the way
//! `kubectl describe` reads them (core/v1 with `involvedObject.*` field selectors), and
//! leader election with kube-lease-manager.

use std::sync::Arc;
use std::time::Duration;

use crate::support::widget::{Widget, widget};
use crate::support::{TestCluster, eventually};
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Event as CoreEvent;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::watcher;
use kube::{CustomResourceExt, Resource, ResourceExt};
use serde_json::json;

#[derive(Debug, thiserror::Error)]
#[error("failed to write widget status: {0}")]
struct ReconcileError(#[source] kube::Error);

async fn reconcile(obj: Arc<Widget>, client: Arc<kube::Client>) -> Result<Action, ReconcileError> {
    let api: Api<Widget> = Api::namespaced((*client).clone(), &obj.namespace().unwrap());
    let phase = if obj.spec.size > 10 { "Large" } else { "Small" };
    api.patch_status(
        &obj.name_any(),
        &PatchParams::apply("widget-controller").force(),
        &Patch::Apply(json!({
            "apiVersion": "test.tether.dev/v1", "kind": "Widget",
            "status": {"phase": phase, "observedGeneration": obj.metadata.generation},
        })),
    )
    .await
    .map_err(ReconcileError)?;
    Ok(Action::await_change())
}

fn error_policy(_: Arc<Widget>, _: &ReconcileError, _: Arc<kube::Client>) -> Action {
    Action::requeue(Duration::from_millis(100))
}

#[tokio::test]
async fn a_kube_runtime_controller_reconciles_test_widgets() {
    let cluster = TestCluster::builder().crd(Widget::crd()).start().await;
    let client = cluster.client();
    let api: Api<Widget> = Api::default_namespaced(client.clone());
    api.create(&PostParams::default(), &widget("small", 1))
        .await
        .unwrap();
    let controller = Controller::new(api.clone(), watcher::Config::default())
        .run(reconcile, error_policy, Arc::new(client.clone()))
        .for_each(|_| async {});
    let running = tokio::spawn(controller);

    api.create(&PostParams::default(), &widget("big", 20))
        .await
        .unwrap();
    for (name, phase) in [("small", "Small"), ("big", "Large")] {
        eventually(Duration::from_secs(10), || {
            let api = api.clone();
            async move {
                let w = api.get(name).await.ok()?;
                let status = w.status?;
                (status.phase.as_deref() == Some(phase)).then_some(())
            }
        })
        .await;
    }
    // A spec change is observed with the new generation.
    api.patch(
        "small",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"size": 50}})),
    )
    .await
    .unwrap();
    let status = eventually(Duration::from_secs(10), || {
        let api = api.clone();
        async move {
            let w = api.get("small").await.ok()?;
            let status = w.status?;
            (status.observed_generation == Some(2)).then_some(status)
        }
    })
    .await;
    assert_eq!(status.phase.as_deref(), Some("Large"));
    running.abort();
}

#[tokio::test]
async fn recorder_events_are_listed_with_core_v1_involved_object_field_selectors() {
    let cluster = TestCluster::builder().crd(Widget::crd()).start().await;
    let client = cluster.client();
    let widgets: Api<Widget> = Api::default_namespaced(client.clone());
    let w = widgets
        .create(&PostParams::default(), &widget("ev", 1))
        .await
        .unwrap();
    widgets
        .create(&PostParams::default(), &widget("other", 1))
        .await
        .unwrap();
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "tether-test".into(),
            instance: None,
        },
    );
    let event = Event {
        type_: EventType::Normal,
        reason: "Tested".into(),
        note: Some("hello from the recorder".into()),
        action: "Test".into(),
        secondary: None,
    };
    let reference = w.object_ref(&());
    recorder.publish(&event, &reference).await.unwrap();
    // The same event again becomes a series (a merge patch of the stored event).
    recorder.publish(&event, &reference).await.unwrap();
    let other = widgets.get("other").await.unwrap();
    recorder
        .publish(&event, &other.object_ref(&()))
        .await
        .unwrap();

    let core: Api<CoreEvent> = Api::default_namespaced(client);
    let selector = format!(
        "involvedObject.name=ev,involvedObject.namespace=default,involvedObject.kind=Widget,\
         involvedObject.uid={}",
        w.uid().unwrap()
    );
    let listed = core
        .list(&ListParams::default().fields(&selector))
        .await
        .unwrap();
    assert_eq!(listed.items.len(), 1, "{:?}", listed.items);
    let ev = &listed.items[0];
    assert_eq!(ev.message.as_deref(), Some("hello from the recorder"));
    assert_eq!(ev.reason.as_deref(), Some("Tested"));
    assert_eq!(ev.reporting_component.as_deref(), Some("tether-test"));
    assert_eq!(ev.series.as_ref().and_then(|s| s.count), Some(2));
    let all = core.list(&ListParams::default()).await.unwrap();
    assert_eq!(all.items.len(), 2);

    // The same events read back through events.k8s.io/v1, selected by `regarding.*`.
    let v1: Api<k8s_openapi::api::events::v1::Event> = Api::default_namespaced(cluster.client());
    let listed = v1
        .list(&ListParams::default().fields("regarding.name=ev"))
        .await
        .unwrap();
    assert_eq!(listed.items.len(), 1);
    assert_eq!(
        listed.items[0].note.as_deref(),
        Some("hello from the recorder")
    );
    assert_eq!(
        listed.items[0].reporting_controller.as_deref(),
        Some("tether-test")
    );
}

#[tokio::test]
async fn a_kube_lease_manager_lease_is_acquired_renewed_and_exclusive() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let leader = kube_lease_manager::LeaseManagerBuilder::new(client.clone(), "tether-test")
        .with_identity("replica-a")
        .with_duration(2)
        .with_grace(1)
        .build()
        .await
        .unwrap();
    let (mut is_leader, task) = leader.watch().await;
    tokio::time::timeout(Duration::from_secs(10), async {
        while !*is_leader.borrow_and_update() {
            is_leader.changed().await.unwrap();
        }
    })
    .await
    .expect("replica-a becomes leader");

    let leases: Api<Lease> = Api::default_namespaced(client.clone());
    let lease = leases.get("tether-test").await.unwrap();
    let spec = lease.spec.clone().unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some("replica-a"));
    let first_renew = spec.renew_time.clone().unwrap();
    let renewed = eventually(Duration::from_secs(10), || {
        let leases = leases.clone();
        let first = first_renew.clone();
        async move {
            let spec = leases.get("tether-test").await.ok()?.spec?;
            let renew = spec.renew_time?;
            (renew != first).then_some(spec.holder_identity)
        }
    })
    .await;
    assert_eq!(renewed.as_deref(), Some("replica-a"));

    let follower = kube_lease_manager::LeaseManagerBuilder::new(client, "tether-test")
        .with_identity("replica-b")
        .with_duration(2)
        .with_grace(1)
        .build()
        .await
        .unwrap();
    let attempt = tokio::time::timeout(Duration::from_millis(1500), follower.changed()).await;
    assert!(
        attempt.is_err(),
        "replica-b must not acquire a lease that replica-a keeps renewing"
    );
    drop(is_leader);
    task.await.unwrap().unwrap();
}
