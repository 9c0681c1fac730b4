//! The File store: objects, their status and the resourceVersion counter survive a restart
//! of the server on the same file, and a watch from before the restart resumes correctly.

use std::time::Duration;

use crate::support::TestCluster;
use crate::support::widget::{Widget, widget};
use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::{CustomResourceExt, ResourceExt};
use serde_json::json;

#[tokio::test]
async fn objects_status_and_the_resource_version_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(".tether/state.redb");
    let cluster = TestCluster::builder()
        .crd(Widget::crd())
        .file_store(&path)
        .start()
        .await;
    let api: Api<Widget> = Api::default_namespaced(cluster.client());
    api.create(&PostParams::default(), &widget("kept", 3))
        .await
        .unwrap();
    let with_status = api
        .patch_status(
            "kept",
            &PatchParams::apply("ctrl"),
            &Patch::Apply(json!({"apiVersion": "test.tether.dev/v1", "kind": "Widget",
                "status": {"phase": "Ready", "observedGeneration": 1}})),
        )
        .await
        .unwrap();
    let gone = api
        .create(&PostParams::default(), &widget("gone", 1))
        .await
        .unwrap();
    api.delete("gone", &Default::default()).await.unwrap();
    let cms: Api<ConfigMap> = Api::default_namespaced(cluster.client());
    let cm: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "c"}, "data": {"k": "v"}})).unwrap();
    let last = cms.create(&PostParams::default(), &cm).await.unwrap();
    let last_rv: u64 = last.resource_version().unwrap().parse().unwrap();
    let addr = cluster.addr();
    cluster.stop().await;

    let cluster = TestCluster::builder()
        .crd(Widget::crd())
        .file_store(&path)
        .addr(addr)
        .start()
        .await;
    let api: Api<Widget> = Api::default_namespaced(cluster.client());
    let kept = api.get("kept").await.unwrap();
    assert_eq!(kept.spec.size, 3);
    assert_eq!(kept.status, with_status.status);
    assert_eq!(kept.uid(), with_status.uid());
    assert_eq!(
        kept.metadata.managed_fields,
        with_status.metadata.managed_fields
    );
    assert!(
        api.get_opt("gone").await.unwrap().is_none(),
        "{gone:?} stays deleted"
    );
    let cms: Api<ConfigMap> = Api::default_namespaced(cluster.client());
    assert_eq!(cms.get("c").await.unwrap().data.unwrap()["k"], "v");

    // The counter continues where it stopped.
    let next = cms
        .patch(
            "c",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"k": "w"}})),
        )
        .await
        .unwrap();
    let next_rv: u64 = next.resource_version().unwrap().parse().unwrap();
    assert!(next_rv > last_rv, "{next_rv} > {last_rv}");

    // A watch from the last version seen before the restart resumes without a gap...
    let mut stream = cms
        .watch(&WatchParams::default(), &last_rv.to_string())
        .await
        .unwrap()
        .boxed();
    match tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
    {
        WatchEvent::Modified(o) => assert_eq!(o.resource_version(), next.resource_version()),
        other => panic!("unexpected {other:?}"),
    }
    // ...while one from further back cannot be served any more: 410.
    let mut stream = cms
        .watch(&WatchParams::default(), &(last_rv - 1).to_string())
        .await
        .unwrap()
        .boxed();
    match tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
    {
        WatchEvent::Error(status) => assert_eq!(status.code, 410),
        other => panic!("expected 410, got {other:?}"),
    }
    cluster.stop().await;
}
