//! The HTTP surface beyond CRUD: error `Status` bodies for bad requests, discovery,
//! metadata-only responses, read-only CRDs, cluster-scoped custom kinds, deletecollection,
//! namespace deletion, and watch streams ending on shutdown.

use std::time::Duration;

use crate::support::TestCluster;
use crate::support::widget::{Gadget, GadgetSpec, Widget, widget};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchParams};
use kube::core::PartialObjectMeta;
use kube::{CustomResourceExt, ResourceExt};
use serde_json::json;

async fn cluster() -> TestCluster {
    TestCluster::builder()
        .crd(Widget::crd())
        .crd(Gadget::crd())
        .start()
        .await
}

async fn raw(
    client: &kube::Client,
    method: &str,
    uri: &str,
    content_type: &str,
    body: &str,
) -> kube::core::Status {
    let request = http::Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", content_type)
        .body(body.as_bytes().to_vec())
        .unwrap();
    match client.request_text(request).await {
        Err(kube::Error::Api(status)) => *status,
        other => panic!("expected an error Status for {method} {uri}, got {other:?}"),
    }
}

#[tokio::test]
async fn bad_requests_get_status_bodies_with_the_right_code_and_a_clear_message() {
    let cluster = cluster().await;
    let client = cluster.client();
    let s = raw(&client, "GET", "/apis/nope.example.com/v1/things", "", "").await;
    assert_eq!((s.code, s.reason.as_str()), (404, "NotFound"));
    let s = raw(&client, "GET", "/api/v1/namespaces/default/pods", "", "").await;
    assert_eq!(s.code, 404);
    let s = raw(
        &client,
        "PUT",
        "/api/v1/namespaces/default/configmaps",
        "application/json",
        "{}",
    )
    .await;
    assert_eq!((s.code, s.reason.as_str()), (405, "MethodNotAllowed"));
    let s = raw(
        &client,
        "POST",
        "/api/v1/namespaces/default/configmaps",
        "application/json",
        "{not json",
    )
    .await;
    assert_eq!((s.code, s.reason.as_str()), (400, "BadRequest"));
    assert!(
        s.message.contains("failed to decode request body as JSON"),
        "{}",
        s.message
    );
    ConfigMapApi::new(&client).create("x").await;
    let s = raw(
        &client,
        "PATCH",
        "/api/v1/namespaces/default/configmaps/x",
        "text/plain",
        "{}",
    )
    .await;
    assert_eq!((s.code, s.reason.as_str()), (415, "UnsupportedMediaType"));
    let s = raw(
        &client,
        "PATCH",
        "/api/v1/namespaces/default/configmaps/x",
        "application/apply-patch+yaml",
        "data: {a: b}",
    )
    .await;
    assert_eq!(s.code, 400);
    assert!(
        s.message.contains("fieldManager: Required value"),
        "{}",
        s.message
    );
    let s = raw(
        &client,
        "GET",
        "/api/v1/namespaces/default/configmaps?labelSelector=a%20in%20b",
        "",
        "",
    )
    .await;
    assert_eq!(s.code, 400);
}

struct ConfigMapApi(Api<ConfigMap>);

impl ConfigMapApi {
    fn new(client: &kube::Client) -> Self {
        ConfigMapApi(Api::default_namespaced(client.clone()))
    }

    async fn create(&self, name: &str) -> ConfigMap {
        let cm: ConfigMap =
            serde_json::from_value(json!({"metadata": {"name": name, "labels": {"app": "x"}}}))
                .unwrap();
        self.0.create(&PostParams::default(), &cm).await.unwrap()
    }
}

#[tokio::test]
async fn discovery_lists_custom_kinds_with_their_names_scope_and_status_subresource() {
    let cluster = cluster().await;
    assert_eq!(cluster.url(), format!("http://{}", cluster.addr()));
    let kubeconfig = std::fs::read_to_string(cluster.kubeconfig_path()).unwrap();
    assert!(kubeconfig.contains(&cluster.url()), "{kubeconfig}");
    let client = cluster.client();
    let version = client.apiserver_version().await.unwrap();
    assert_eq!(
        (version.major.as_str(), version.minor.as_str()),
        ("1", "36")
    );
    for probe in ["/healthz", "/readyz", "/livez"] {
        let request = http::Request::get(probe).body(Vec::new()).unwrap();
        assert_eq!(client.request_text(request).await.unwrap(), "ok");
    }
    let discovery = kube::Discovery::new(client).run().await.unwrap();
    let (widget_res, caps) = discovery
        .groups()
        .flat_map(|g| g.recommended_resources())
        .find(|(r, _)| r.kind == "Widget")
        .expect("Widget is discovered");
    assert_eq!(widget_res.plural, "widgets");
    assert_eq!(caps.scope, kube::discovery::Scope::Namespaced);
    assert!(caps.subresources.iter().any(|(r, _)| r.plural == "status"));
    let (_, caps) = discovery
        .groups()
        .flat_map(|g| g.recommended_resources())
        .find(|(r, _)| r.kind == "Gadget")
        .expect("Gadget is discovered");
    assert_eq!(caps.scope, kube::discovery::Scope::Cluster);
    assert!(discovery.has_group("coordination.k8s.io"));
    assert!(discovery.has_group("events.k8s.io"));
}

#[tokio::test]
async fn metadata_only_clients_get_partial_object_metadata() {
    let cluster = cluster().await;
    ConfigMapApi::new(&cluster.client()).create("m").await;
    let api: Api<ConfigMap> = Api::default_namespaced(cluster.client());
    let list = api.list_metadata(&ListParams::default()).await.unwrap();
    assert_eq!(list.items.len(), 1);
    let one: PartialObjectMeta<ConfigMap> = api.get_metadata("m").await.unwrap();
    assert_eq!(one.name_any(), "m");
    assert_eq!(one.types.unwrap().kind, "PartialObjectMetadata");
}

#[tokio::test]
async fn crds_are_served_read_only() {
    let cluster = cluster().await;
    let api: Api<CustomResourceDefinition> = Api::all(cluster.client());
    let names: Vec<String> = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(ResourceExt::name_any)
        .collect();
    assert!(
        names.contains(&"environments.tether.dev".to_owned()),
        "{names:?}"
    );
    assert!(
        names.contains(&"widgets.test.tether.dev".to_owned()),
        "{names:?}"
    );
    let crd = api.get("widgets.test.tether.dev").await.unwrap();
    let err = api
        .delete(&crd.name_any(), &DeleteParams::default())
        .await
        .unwrap_err();
    assert!(matches!(err, kube::Error::Api(s) if s.code == 405));
}

#[tokio::test]
async fn cluster_scoped_custom_kinds_are_served_without_a_namespace() {
    let cluster = cluster().await;
    let api: Api<Gadget> = Api::all(cluster.client());
    let g = Gadget::new("g1", GadgetSpec { label: "a".into() });
    let created = api.create(&PostParams::default(), &g).await.unwrap();
    assert_eq!(created.metadata.namespace, None);
    assert_eq!(created.metadata.generation, Some(1));
    let patched = api
        .patch(
            "g1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"label": "b"}})),
        )
        .await
        .unwrap();
    assert_eq!(patched.spec.label, "b");
    assert_eq!(patched.metadata.generation, Some(2));
    assert_eq!(
        api.list(&ListParams::default()).await.unwrap().items.len(),
        1
    );
}

#[tokio::test]
async fn deletecollection_deletes_the_selected_objects_only() {
    let cluster = cluster().await;
    let client = cluster.client();
    let cms = ConfigMapApi::new(&client);
    cms.create("a").await;
    cms.create("b").await;
    let keep: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "keep"}})).unwrap();
    cms.0.create(&PostParams::default(), &keep).await.unwrap();
    let deleted = cms
        .0
        .delete_collection(
            &DeleteParams::default(),
            &ListParams::default().labels("app=x"),
        )
        .await
        .unwrap()
        .left()
        .expect("the deleted objects are returned");
    assert_eq!(deleted.items.len(), 2);
    let left: Vec<String> = cms
        .0
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(ResourceExt::name_any)
        .collect();
    assert_eq!(left, vec!["keep"]);
}

#[tokio::test]
async fn deleting_a_namespace_deletes_its_objects_and_waits_for_their_finalizers() {
    let cluster = cluster().await;
    let client = cluster.client();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": "gone"}})).unwrap();
    namespaces
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "gone");
    let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "c"}})).unwrap();
    cms.create(&PostParams::default(), &cm).await.unwrap();
    let widgets: Api<Widget> = Api::namespaced(client.clone(), "gone");
    let mut w = widget("w", 1);
    w.metadata.namespace = Some("gone".into());
    w.metadata.finalizers = Some(vec!["test.tether.dev/hold".into()]);
    widgets.create(&PostParams::default(), &w).await.unwrap();

    namespaces
        .delete("gone", &DeleteParams::default())
        .await
        .unwrap();
    assert!(cms.get_opt("c").await.unwrap().is_none());
    let terminating = namespaces.get("gone").await.unwrap();
    assert_eq!(
        terminating.status.unwrap().phase.as_deref(),
        Some("Terminating")
    );
    assert!(
        widgets
            .get("w")
            .await
            .unwrap()
            .metadata
            .deletion_timestamp
            .is_some()
    );

    widgets
        .patch(
            "w",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await
        .unwrap();
    assert!(namespaces.get_opt("gone").await.unwrap().is_none());
}

#[tokio::test]
async fn watch_streams_end_when_the_server_shuts_down() {
    let cluster = cluster().await;
    let api: Api<ConfigMap> = Api::default_namespaced(cluster.client());
    let mut stream = api
        .watch(&WatchParams::default().disable_bookmarks(), "0")
        .await
        .unwrap()
        .boxed();
    ConfigMapApi::new(&cluster.client()).create("before").await;
    let first = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .unwrap();
    assert!(matches!(first, Some(Ok(kube::api::WatchEvent::Added(_)))));
    let stopping = tokio::spawn(cluster.stop());
    let end = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match stream.next().await {
                None => return,
                Some(Err(_)) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(end.is_ok(), "the watch stream ended after shutdown");
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .expect("the server stops")
        .unwrap();
}
