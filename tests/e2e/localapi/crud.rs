//! End to end through `kube::Client`: CRUD, optimistic concurrency, generation, the status
//! subresource, patches, server-side apply with field ownership, finalizers, selectors and
//! paging against the in-process API.

use crate::support::TestCluster;
use crate::support::widget::{Widget, widget};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{CustomResourceExt, ResourceExt};
use serde_json::json;

async fn cluster() -> TestCluster {
    TestCluster::builder().crd(Widget::crd()).start().await
}

fn api_error(err: kube::Error) -> kube::core::Status {
    match err {
        kube::Error::Api(status) => *status,
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn config_map(name: &str, data: serde_json::Value) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name}, "data": data})).unwrap()
}

#[tokio::test]
async fn objects_are_created_read_updated_and_deleted_with_server_set_metadata() {
    let cluster = cluster().await;
    let api: Api<ConfigMap> = Api::default_namespaced(cluster.client());
    let created = api
        .create(&PostParams::default(), &config_map("a", json!({"k": "v"})))
        .await
        .unwrap();
    assert!(created.metadata.uid.is_some());
    assert!(created.metadata.creation_timestamp.is_some());
    let rv1: u64 = created.resource_version().unwrap().parse().unwrap();
    let managed = created.metadata.managed_fields.clone().unwrap();
    assert_eq!(managed[0].operation.as_deref(), Some("Update"));

    let mut fetched = api.get("a").await.unwrap();
    assert_eq!(fetched.data.as_ref().unwrap()["k"], "v");
    fetched.data = Some([("k".to_owned(), "w".to_owned())].into());
    let updated = api
        .replace("a", &PostParams::default(), &fetched)
        .await
        .unwrap();
    let rv2: u64 = updated.resource_version().unwrap().parse().unwrap();
    assert!(rv2 > rv1, "resourceVersion grows on every write");

    let err = api_error(
        api.create(&PostParams::default(), &config_map("a", json!({})))
            .await
            .unwrap_err(),
    );
    assert_eq!((err.code, err.reason.as_str()), (409, "AlreadyExists"));
    assert_eq!(err.message, "configmaps \"a\" already exists");

    api.delete("a", &DeleteParams::default()).await.unwrap();
    let err = api_error(api.get("a").await.unwrap_err());
    assert_eq!((err.code, err.reason.as_str()), (404, "NotFound"));
    assert_eq!(err.message, "configmaps \"a\" not found");
}

#[tokio::test]
async fn an_update_with_a_stale_resource_version_gets_409_conflict() {
    let cluster = cluster().await;
    let api: Api<Widget> = Api::default_namespaced(cluster.client());
    let first = api
        .create(&PostParams::default(), &widget("x", 1))
        .await
        .unwrap();
    let mut newer = first.clone();
    newer.spec.size = 2;
    api.replace("x", &PostParams::default(), &newer)
        .await
        .unwrap();
    let mut stale = first;
    stale.spec.size = 3;
    let err = api_error(
        api.replace("x", &PostParams::default(), &stale)
            .await
            .unwrap_err(),
    );
    assert_eq!((err.code, err.reason.as_str()), (409, "Conflict"));
    assert_eq!(
        err.message,
        "Operation cannot be fulfilled on widgets.test.tether.dev \"x\": the object has been \
         modified; please apply your changes to the latest version and try again"
    );
    assert_eq!(api.get("x").await.unwrap().spec.size, 2);
}

#[tokio::test]
async fn generation_moves_only_when_the_spec_changes() {
    let cluster = cluster().await;
    let api: Api<Widget> = Api::default_namespaced(cluster.client());
    let w = api
        .create(&PostParams::default(), &widget("g", 1))
        .await
        .unwrap();
    assert_eq!(w.metadata.generation, Some(1));
    let labelled = api
        .patch(
            "g",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"a": "b"}}})),
        )
        .await
        .unwrap();
    assert_eq!(labelled.metadata.generation, Some(1));
    let status = api
        .patch_status(
            "g",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Ready"}})),
        )
        .await
        .unwrap();
    assert_eq!(status.metadata.generation, Some(1));
    let spec = api
        .patch(
            "g",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"size": 5}})),
        )
        .await
        .unwrap();
    assert_eq!(spec.metadata.generation, Some(2));
}

#[tokio::test]
async fn the_status_subresource_and_the_main_endpoint_ignore_each_others_fields() {
    let cluster = cluster().await;
    let api: Api<Widget> = Api::default_namespaced(cluster.client());
    api.create(&PostParams::default(), &widget("s", 1))
        .await
        .unwrap();
    // Main endpoint: the status part is dropped, the spec part kept.
    let main = api
        .patch(
            "s",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"size": 2}, "status": {"phase": "Hacked"}})),
        )
        .await
        .unwrap();
    assert_eq!(main.spec.size, 2);
    assert_eq!(main.status, None);
    // Status endpoint: the spec part is dropped, the status part kept.
    let status = api
        .patch_status(
            "s",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"size": 99}, "status": {"phase": "Ready"}})),
        )
        .await
        .unwrap();
    assert_eq!(status.spec.size, 2);
    assert_eq!(status.status.unwrap().phase.as_deref(), Some("Ready"));
    let managed = status.metadata.managed_fields.unwrap();
    assert!(
        managed
            .iter()
            .any(|m| m.subresource.as_deref() == Some("status")),
        "status writes are recorded with subresource status: {managed:?}"
    );
}

#[tokio::test]
async fn merge_and_json_patches_change_objects_and_bad_patches_are_rejected_clearly() {
    let cluster = cluster().await;
    let api: Api<ConfigMap> = Api::default_namespaced(cluster.client());
    api.create(
        &PostParams::default(),
        &config_map("p", json!({"a": "1", "b": "2"})),
    )
    .await
    .unwrap();
    let merged = api
        .patch(
            "p",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"a": null, "c": "3"}})),
        )
        .await
        .unwrap();
    assert_eq!(
        merged.data.unwrap(),
        [
            ("b".to_owned(), "2".to_owned()),
            ("c".to_owned(), "3".to_owned())
        ]
        .into()
    );
    let ops: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": "/data/b", "value": "2"},
        {"op": "replace", "path": "/data/b", "value": "22"}
    ]))
    .unwrap();
    let patched = api
        .patch("p", &PatchParams::default(), &Patch::<()>::Json(ops))
        .await
        .unwrap();
    assert_eq!(patched.data.unwrap()["b"], "22");
    let failing: json_patch::Patch =
        serde_json::from_value(json!([{"op": "test", "path": "/data/b", "value": "nope"}]))
            .unwrap();
    let err = api_error(
        api.patch("p", &PatchParams::default(), &Patch::<()>::Json(failing))
            .await
            .unwrap_err(),
    );
    assert_eq!(err.code, 400);
    let err = api_error(
        api.patch(
            "missing",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {}})),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(err.code, 404);
}

#[tokio::test]
async fn server_side_apply_tracks_owners_reports_conflicts_and_removes_dropped_fields() {
    let cluster = cluster().await;
    let api: Api<ConfigMap> = Api::default_namespaced(cluster.client());
    let alice = PatchParams::apply("alice");
    let applied = api
        .patch(
            "ssa",
            &alice,
            &Patch::Apply(json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "ssa"}, "data": {"a": "1", "b": "1"}})),
        )
        .await
        .unwrap();
    let managed = applied.metadata.managed_fields.unwrap();
    assert_eq!(managed.len(), 1);
    assert_eq!(managed[0].manager.as_deref(), Some("alice"));
    assert_eq!(managed[0].operation.as_deref(), Some("Apply"));
    assert_eq!(
        managed[0].fields_v1.as_ref().unwrap().0,
        json!({"f:data": {"f:a": {}, "f:b": {}}})
    );

    // bob applies a different value for alice's field: 409 naming field and manager.
    let bob_config = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "ssa"}, "data": {"a": "2"}});
    let err = api_error(
        api.patch(
            "ssa",
            &PatchParams::apply("bob"),
            &Patch::Apply(&bob_config),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!((err.code, err.reason.as_str()), (409, "Conflict"));
    assert_eq!(
        err.message,
        "Apply failed with 1 conflict: conflict with \"alice\" using v1: .data.a"
    );
    // With force, bob takes the field.
    let forced = api
        .patch(
            "ssa",
            &PatchParams::apply("bob").force(),
            &Patch::Apply(&bob_config),
        )
        .await
        .unwrap();
    assert_eq!(forced.data.as_ref().unwrap()["a"], "2");

    // alice stops applying `b` (she no longer owns `a`): `b` goes, `a` stays with bob.
    let after = api
        .patch(
            "ssa",
            &alice,
            &Patch::Apply(json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "ssa"}, "data": {}})),
        )
        .await
        .unwrap();
    assert_eq!(
        after.data.unwrap(),
        [("a".to_owned(), "2".to_owned())].into()
    );

    // A non-apply write takes ownership without conflict.
    let edited = api
        .patch(
            "ssa",
            &PatchParams {
                field_manager: Some("editor".into()),
                ..PatchParams::default()
            },
            &Patch::Merge(json!({"data": {"a": "3"}})),
        )
        .await
        .unwrap();
    let owners: Vec<String> = edited
        .metadata
        .managed_fields
        .unwrap()
        .iter()
        .filter_map(|m| m.manager.clone())
        .collect();
    assert!(owners.contains(&"editor".to_owned()));
    assert!(
        !owners.contains(&"bob".to_owned()),
        "bob lost .data.a: {owners:?}"
    );
}

#[tokio::test]
async fn applying_an_unchanged_configuration_writes_nothing() {
    let cluster = cluster().await;
    let api: Api<Widget> = Api::default_namespaced(cluster.client());
    let config = json!({"apiVersion": "test.tether.dev/v1", "kind": "Widget",
        "metadata": {"name": "same"}, "spec": {"size": 1}});
    let first = api
        .patch("same", &PatchParams::apply("m"), &Patch::Apply(&config))
        .await
        .unwrap();
    let second = api
        .patch("same", &PatchParams::apply("m"), &Patch::Apply(&config))
        .await
        .unwrap();
    assert_eq!(first.resource_version(), second.resource_version());
}

#[tokio::test]
async fn delete_with_finalizers_marks_the_object_and_removing_the_last_one_deletes_it() {
    let cluster = cluster().await;
    let api: Api<Widget> = Api::default_namespaced(cluster.client());
    let mut w = widget("f", 1);
    w.metadata.finalizers = Some(vec!["test.tether.dev/cleanup".into()]);
    api.create(&PostParams::default(), &w).await.unwrap();
    let deleting = api
        .delete("f", &DeleteParams::default())
        .await
        .unwrap()
        .left()
        .expect("the object is returned while finalizers remain");
    assert!(deleting.metadata.deletion_timestamp.is_some());
    assert_eq!(deleting.metadata.deletion_grace_period_seconds, Some(0));
    assert!(api.get("f").await.is_ok());

    let err = api_error(
        api.patch(
            "f",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": ["test.tether.dev/cleanup", "new"]}})),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(err.code, 422);
    assert!(
        err.message
            .contains("no new finalizers can be added if the object is being deleted"),
        "{}",
        err.message
    );

    api.patch(
        "f",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    assert_eq!(api_error(api.get("f").await.unwrap_err()).code, 404);
}

#[tokio::test]
async fn delete_preconditions_and_dry_run_are_honoured() {
    let cluster = cluster().await;
    let api: Api<ConfigMap> = Api::default_namespaced(cluster.client());
    api.create(&PostParams::default(), &config_map("d", json!({})))
        .await
        .unwrap();
    let dp = DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            uid: Some("wrong".into()),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    let err = api_error(api.delete("d", &dp).await.unwrap_err());
    assert_eq!((err.code, err.reason.as_str()), (409, "Conflict"));
    api.delete("d", &DeleteParams::default().dry_run())
        .await
        .unwrap();
    assert!(api.get("d").await.is_ok(), "dry run deletes nothing");
    let pp = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    api.create(&pp, &config_map("dry", json!({})))
        .await
        .unwrap();
    assert_eq!(api_error(api.get("dry").await.unwrap_err()).code, 404);
}

#[tokio::test]
async fn writes_into_a_missing_namespace_get_404_and_generate_name_makes_unique_names() {
    let cluster = cluster().await;
    let api: Api<ConfigMap> = Api::namespaced(cluster.client(), "nowhere");
    let err = api_error(
        api.create(&PostParams::default(), &config_map("a", json!({})))
            .await
            .unwrap_err(),
    );
    assert_eq!(err.code, 404);
    assert_eq!(err.message, "namespaces \"nowhere\" not found");

    let namespaces: Api<Namespace> = Api::all(cluster.client());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": "team"}})).unwrap();
    namespaces
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
    let api: Api<ConfigMap> = Api::namespaced(cluster.client(), "team");
    let generated: ConfigMap =
        serde_json::from_value(json!({"metadata": {"generateName": "job-"}})).unwrap();
    let a = api
        .create(&PostParams::default(), &generated)
        .await
        .unwrap();
    let b = api
        .create(&PostParams::default(), &generated)
        .await
        .unwrap();
    assert!(a.name_any().starts_with("job-"));
    assert_ne!(a.name_any(), b.name_any());
}

#[tokio::test]
async fn secrets_fold_string_data_into_data() {
    let cluster = cluster().await;
    let api: Api<Secret> = Api::default_namespaced(cluster.client());
    let secret: Secret = serde_json::from_value(
        json!({"metadata": {"name": "tok"}, "stringData": {"render": "abc"}}),
    )
    .unwrap();
    let stored = api.create(&PostParams::default(), &secret).await.unwrap();
    assert_eq!(stored.data.unwrap()["render"].0, b"abc".to_vec());
    assert_eq!(stored.type_.as_deref(), Some("Opaque"));
}

#[tokio::test]
async fn label_and_field_selectors_filter_lists() {
    let cluster = cluster().await;
    let api: Api<ConfigMap> = Api::default_namespaced(cluster.client());
    for (name, env) in [("a", "prod"), ("b", "staging"), ("c", "dev")] {
        let cm: ConfigMap =
            serde_json::from_value(json!({"metadata": {"name": name, "labels": {"env": env}}}))
                .unwrap();
        api.create(&PostParams::default(), &cm).await.unwrap();
    }
    let names = |list: kube::core::ObjectList<ConfigMap>| -> Vec<String> {
        list.items.iter().map(ResourceExt::name_any).collect()
    };
    let selected = api
        .list(&ListParams::default().labels("env in (prod,staging)"))
        .await
        .unwrap();
    assert_eq!(names(selected), vec!["a", "b"]);
    let selected = api
        .list(&ListParams::default().labels("env!=prod"))
        .await
        .unwrap();
    assert_eq!(names(selected), vec!["b", "c"]);
    let selected = api
        .list(&ListParams::default().labels("!env"))
        .await
        .unwrap();
    assert!(selected.items.is_empty());
    let selected = api
        .list(&ListParams::default().fields("metadata.name=c"))
        .await
        .unwrap();
    assert_eq!(names(selected), vec!["c"]);
    let err = api_error(
        api.list(&ListParams::default().fields("data.x=1"))
            .await
            .unwrap_err(),
    );
    assert_eq!(err.code, 400);
    assert!(err.message.contains("field label not supported: data.x"));
}

#[tokio::test]
async fn lists_page_with_limit_and_continue() {
    let cluster = cluster().await;
    let api: Api<ConfigMap> = Api::default_namespaced(cluster.client());
    for i in 0..7 {
        api.create(
            &PostParams::default(),
            &config_map(&format!("cm-{i}"), json!({})),
        )
        .await
        .unwrap();
    }
    let mut seen = Vec::new();
    let mut params = ListParams::default().limit(3);
    let mut pages = 0;
    loop {
        let page = api.list(&params).await.unwrap();
        pages += 1;
        seen.extend(page.items.iter().map(ResourceExt::name_any));
        // A write between pages does not disturb the snapshot being paged.
        if pages == 1 {
            api.create(&PostParams::default(), &config_map("cm-00", json!({})))
                .await
                .unwrap();
        }
        match page.metadata.continue_ {
            Some(token) if !token.is_empty() => params = params.continue_token(&token),
            _ => break,
        }
    }
    assert_eq!(pages, 3);
    let expected: Vec<String> = (0..7).map(|i| format!("cm-{i}")).collect();
    assert_eq!(seen, expected);
}

#[tokio::test]
async fn custom_resources_are_admitted_against_the_crd_schema_and_cel_rules() {
    let cluster = cluster().await;
    let client = cluster.client();
    let gvk = kube::api::GroupVersionKind::gvk("tether.dev", "v1alpha1", "Environment");
    let resource = kube::api::ApiResource::from_gvk(&gvk);
    let api: Api<kube::api::DynamicObject> =
        Api::namespaced_with(client.clone(), "default", &resource);
    let text =
        std::fs::read_to_string("tests/fixtures/invalid/env-fly-without-credentials.yaml").unwrap();
    let bad: kube::api::DynamicObject = serde_saphyr::from_str(&text).unwrap();
    let err = api_error(api.create(&PostParams::default(), &bad).await.unwrap_err());
    assert_eq!((err.code, err.reason.as_str()), (422, "Invalid"));
    assert!(
        err.message
            .starts_with("Environment.tether.dev \"bad\" is invalid: ")
            && err
                .message
                .contains("spec.credentials.fly is required when spec.fly is set"),
        "{}",
        err.message
    );
    assert_eq!(api_error(api.get("bad").await.unwrap_err()).code, 404);

    // Unknown fields are pruned (the default fieldValidation is Warn).
    let gvk = kube::api::GroupVersionKind::gvk("test.tether.dev", "v1", "Widget");
    let widgets: Api<kube::api::DynamicObject> =
        Api::namespaced_with(client, "default", &kube::api::ApiResource::from_gvk(&gvk));
    let mut w = serde_json::to_value(widget("pruned", 1)).unwrap();
    w["spec"]["unknownField"] = json!("x");
    let dynamic: kube::api::DynamicObject = serde_json::from_value(w).unwrap();
    assert_eq!(dynamic.data["spec"]["unknownField"], "x");
    let stored = widgets
        .create(&PostParams::default(), &dynamic)
        .await
        .unwrap();
    assert_eq!(stored.data["spec"]["size"], 1);
    assert!(
        stored.data["spec"].get("unknownField").is_none(),
        "{:?}",
        stored.data
    );
}
