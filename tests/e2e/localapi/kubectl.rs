//! The real kubectl (v1.32) against the in-process API: discovery, `get`, server-side and
//! client-side `apply`, `describe` with events, and `delete --wait` through a finalizer.

use std::time::Duration;

use crate::support::widget::Widget;
use crate::support::{KubectlOutput, TestCluster, eventually};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{CustomResourceExt, Resource, ResourceExt};
use serde_json::json;

async fn cluster() -> TestCluster {
    TestCluster::builder().crd(Widget::crd()).start().await
}

fn ok(out: KubectlOutput) -> String {
    assert!(
        out.success,
        "kubectl failed: {}\n{}",
        out.stderr, out.stdout
    );
    out.stdout
}

const WIDGET: &str = "apiVersion: test.tether.dev/v1
kind: Widget
metadata:
  name: w1
  labels:
    team: a
spec:
  size: 3
  color: red
";

#[tokio::test]
async fn kubectl_discovers_resources_and_gets_objects_by_short_name() {
    let cluster = cluster().await;
    let resources = ok(cluster.kubectl(&["api-resources"]).await);
    assert!(resources.contains("widgets"), "{resources}");
    assert!(resources.contains("environments"), "{resources}");
    let empty = cluster.kubectl(&["get", "wd"]).await;
    assert!(empty.success, "{}", empty.stderr);
    assert!(
        empty
            .stderr
            .contains("No resources found in default namespace."),
        "{}",
        empty.stderr
    );
    ok(cluster
        .kubectl_with_stdin(&["apply", "--server-side", "-f", "-"], Some(WIDGET))
        .await);
    let listed = ok(cluster.kubectl(&["get", "wd"]).await);
    assert!(listed.contains("w1"), "{listed}");
    let name = ok(cluster
        .kubectl(&["get", "widget", "w1", "-o", "jsonpath={.spec.color}"])
        .await);
    assert_eq!(name, "red");
    let version = ok(cluster.kubectl(&["version", "-o", "json"]).await);
    assert!(version.contains("\"minor\": \"36\""), "{version}");
}

/// CRDs carry the status a real API server gives them, so scripts written for a cluster
/// (`kubectl wait --for=condition=Established crd/...`) work against the embedded API.
#[tokio::test]
async fn kubectl_waits_for_the_crds_to_be_established() {
    let cluster = cluster().await;
    let out = ok(cluster
        .kubectl(&[
            "wait",
            "--for=condition=Established",
            "crd",
            "--all",
            "--timeout=10s",
        ])
        .await);
    for crd in [
        "environments.tether.dev",
        "releases.tether.dev",
        "migrations.tether.dev",
    ] {
        assert!(
            out.contains(&format!(
                "customresourcedefinition.apiextensions.k8s.io/{crd} condition met"
            )),
            "{out}"
        );
    }
    let names = ok(cluster
        .kubectl(&[
            "get",
            "crd",
            "environments.tether.dev",
            "-o",
            "jsonpath={.status.acceptedNames.shortNames[0]} {.status.storedVersions[0]} {.status.conditions[?(@.type==\"NamesAccepted\")].reason}",
        ])
        .await);
    assert_eq!(names, "env v1alpha1 NoConflicts");
}

#[tokio::test]
async fn kubectl_server_side_apply_owns_fields_and_conflicts_need_force() {
    let cluster = cluster().await;
    let out = ok(cluster
        .kubectl_with_stdin(&["apply", "--server-side", "-f", "-"], Some(WIDGET))
        .await);
    assert!(
        out.contains("widget.test.tether.dev/w1 serverside-applied"),
        "{out}"
    );
    let api: Api<Widget> = Api::default_namespaced(cluster.client());
    let w = api.get("w1").await.unwrap();
    let managers: Vec<_> = w
        .managed_fields()
        .iter()
        .map(|m| (m.manager.clone().unwrap(), m.operation.clone().unwrap()))
        .collect();
    assert_eq!(managers, vec![("kubectl".to_owned(), "Apply".to_owned())]);

    // Another manager changes a field kubectl owns; re-applying the old value conflicts.
    api.patch(
        "w1",
        &PatchParams::apply("other").force(),
        &Patch::Apply(json!({"apiVersion": "test.tether.dev/v1", "kind": "Widget",
            "spec": {"size": 4}})),
    )
    .await
    .unwrap();
    let conflict = cluster
        .kubectl_with_stdin(&["apply", "--server-side", "-f", "-"], Some(WIDGET))
        .await;
    assert!(!conflict.success);
    assert!(
        conflict.stderr.contains("conflict with \"other\"")
            && conflict.stderr.contains(".spec.size"),
        "{}",
        conflict.stderr
    );
    ok(cluster
        .kubectl_with_stdin(
            &["apply", "--server-side", "--force-conflicts", "-f", "-"],
            Some(WIDGET),
        )
        .await);
    assert_eq!(api.get("w1").await.unwrap().spec.size, 3);

    // Dropping a field from the manifest removes it.
    let without_color = WIDGET.replace("  color: red\n", "");
    ok(cluster
        .kubectl_with_stdin(&["apply", "--server-side", "-f", "-"], Some(&without_color))
        .await);
    assert_eq!(api.get("w1").await.unwrap().spec.color, None);
}

#[tokio::test]
async fn kubectl_client_side_apply_creates_then_patches_with_the_last_applied_annotation() {
    let cluster = cluster().await;
    let manifest =
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: csa\ndata:\n  a: \"1\"\n  b: \"2\"\n";
    let out = ok(cluster
        .kubectl_with_stdin(&["apply", "-f", "-"], Some(manifest))
        .await);
    assert!(out.contains("configmap/csa created"), "{out}");
    let api: Api<ConfigMap> = Api::default_namespaced(cluster.client());
    let cm = api.get("csa").await.unwrap();
    assert!(
        cm.annotations()
            .contains_key("kubectl.kubernetes.io/last-applied-configuration")
    );
    let changed = manifest.replace("  b: \"2\"\n", "  c: \"3\"\n");
    let out = ok(cluster
        .kubectl_with_stdin(&["apply", "-f", "-"], Some(&changed))
        .await);
    assert!(out.contains("configmap/csa configured"), "{out}");
    let data = api.get("csa").await.unwrap().data.unwrap();
    assert_eq!(
        data,
        [
            ("a".to_owned(), "1".to_owned()),
            ("c".to_owned(), "3".to_owned())
        ]
        .into()
    );
    let out = ok(cluster
        .kubectl_with_stdin(&["apply", "-f", "-"], Some(&changed))
        .await);
    assert!(out.contains("configmap/csa unchanged"), "{out}");

    let widget = WIDGET.to_owned();
    let out = ok(cluster
        .kubectl_with_stdin(&["apply", "-f", "-"], Some(&widget))
        .await);
    assert!(out.contains("widget.test.tether.dev/w1 created"), "{out}");
    let bigger = widget.replace("size: 3", "size: 5");
    let out = ok(cluster
        .kubectl_with_stdin(&["apply", "-f", "-"], Some(&bigger))
        .await);
    assert!(
        out.contains("widget.test.tether.dev/w1 configured"),
        "{out}"
    );
    let w: Api<Widget> = Api::default_namespaced(cluster.client());
    let w = w.get("w1").await.unwrap();
    assert_eq!(w.spec.size, 5);
    assert_eq!(w.metadata.generation, Some(2));
}

#[tokio::test]
async fn kubectl_describe_lists_the_events_of_an_object() {
    let cluster = cluster().await;
    ok(cluster
        .kubectl_with_stdin(&["apply", "--server-side", "-f", "-"], Some(WIDGET))
        .await);
    let api: Api<Widget> = Api::default_namespaced(cluster.client());
    let w = api.get("w1").await.unwrap();
    let recorder = Recorder::new(
        cluster.client(),
        Reporter {
            controller: "tether-test".into(),
            instance: None,
        },
    );
    recorder
        .publish(
            &Event {
                type_: EventType::Warning,
                reason: "SizeChecked".into(),
                note: Some("size 3 is fine".into()),
                action: "Check".into(),
                secondary: None,
            },
            &w.object_ref(&()),
        )
        .await
        .unwrap();
    let described = ok(cluster.kubectl(&["describe", "widget", "w1"]).await);
    assert!(described.contains("Events:"), "{described}");
    assert!(described.contains("SizeChecked"), "{described}");
    assert!(described.contains("size 3 is fine"), "{described}");
    let events = ok(cluster.kubectl(&["get", "events"]).await);
    assert!(events.contains("SizeChecked"), "{events}");
}

#[tokio::test]
async fn kubectl_delete_waits_for_the_finalizer_to_be_removed() {
    let cluster = cluster().await;
    let with_finalizer = WIDGET.replace(
        "  labels:\n",
        "  finalizers:\n  - test.tether.dev/cleanup\n  labels:\n",
    );
    ok(cluster
        .kubectl_with_stdin(
            &["apply", "--server-side", "-f", "-"],
            Some(&with_finalizer),
        )
        .await);
    let api: Api<Widget> = Api::default_namespaced(cluster.client());
    let finalizer = {
        let api = api.clone();
        tokio::spawn(async move {
            eventually(Duration::from_secs(20), || {
                let api = api.clone();
                async move {
                    let w = api.get("w1").await.ok()?;
                    w.metadata.deletion_timestamp.as_ref()?;
                    Some(())
                }
            })
            .await;
            api.patch(
                "w1",
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"finalizers": null}})),
            )
            .await
            .unwrap();
        })
    };
    let out = ok(cluster
        .kubectl(&["delete", "widget", "w1", "--wait=true", "--timeout=30s"])
        .await);
    assert!(
        out.contains("widget.test.tether.dev \"w1\" deleted"),
        "{out}"
    );
    finalizer.await.unwrap();
    assert!(api.get_opt("w1").await.unwrap().is_none());
}

#[tokio::test]
async fn kubectl_applies_the_samples_prints_printer_columns_explains_and_shows_cel_errors() {
    let cluster = TestCluster::start().await;
    let applied = ok(cluster.kubectl(&["apply", "-f", "config/samples/"]).await);
    assert!(
        applied.contains("environment.tether.dev/staging created"),
        "{applied}"
    );
    let listed = ok(cluster.kubectl(&["get", "env,rel,mig"]).await);
    let header = listed.lines().next().unwrap_or_default();
    assert!(
        header.split_whitespace().collect::<Vec<_>>()
            == ["NAME", "READY", "OBJECTS", "STATUS", "AGE"],
        "Environment printer columns: {listed}"
    );
    assert!(
        listed.contains("release.tether.dev/staging-1-4-2"),
        "{listed}"
    );
    let explained = ok(cluster.kubectl(&["explain", "environment.spec"]).await);
    assert!(explained.contains("KIND:       Environment"), "{explained}");
    assert!(explained.contains("driftPolicy"), "{explained}");
    let invalid =
        std::fs::read_to_string("tests/fixtures/invalid/env-fly-without-credentials.yaml").unwrap();
    let rejected = cluster
        .kubectl_with_stdin(&["apply", "-f", "-"], Some(&invalid))
        .await;
    assert!(!rejected.success);
    assert!(
        rejected
            .stderr
            .contains("spec.credentials.fly is required when spec.fly is set"),
        "{}",
        rejected.stderr
    );
}

#[tokio::test]
async fn kubectl_imperative_commands_create_label_patch_and_wait() {
    let cluster = cluster().await;
    // kubectl's typed clients send protobuf bodies for these.
    ok(cluster.kubectl(&["create", "namespace", "team"]).await);
    ok(cluster
        .kubectl(&[
            "create",
            "secret",
            "generic",
            "tokens",
            "--from-literal=render=abc",
            "-n",
            "team",
        ])
        .await);
    ok(cluster
        .kubectl(&[
            "create",
            "configmap",
            "settings",
            "--from-literal=mode=fast",
        ])
        .await);
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(cluster.client(), "team");
    assert_eq!(
        secrets.get("tokens").await.unwrap().data.unwrap()["render"].0,
        b"abc".to_vec()
    );
    ok(cluster
        .kubectl(&["label", "configmap", "settings", "app=web"])
        .await);
    ok(cluster
        .kubectl(&[
            "patch",
            "configmap",
            "settings",
            "--type=json",
            "-p",
            r#"[{"op":"add","path":"/data/level","value":"3"}]"#,
        ])
        .await);
    ok(cluster
        .kubectl(&[
            "wait",
            "--for=jsonpath={.data.level}=3",
            "configmap/settings",
            "--timeout=20s",
        ])
        .await);
    let listed = ok(cluster
        .kubectl(&["get", "configmaps", "-l", "app=web", "-o", "name"])
        .await);
    assert_eq!(listed.trim(), "configmap/settings");
    let namespaces = ok(cluster.kubectl(&["get", "namespaces"]).await);
    assert!(
        namespaces.contains("team") && namespaces.contains("Active"),
        "{namespaces}"
    );
}
