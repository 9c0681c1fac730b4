//! Explicit `null`s as a real API server treats them: the nulls of fields that are neither
//! `nullable` nor defaulted are pruned before validation (upstream
//! `PruneNonNullableNullsWithoutDefaults`), in properties, map values and list items alike,
//! by the embedded API and by `tether validate`. A required field sent as `null` is then
//! missing; a map value sent as `null` is dropped, not refused.

use kube::api::{Api, DynamicObject, GroupVersionKind, PostParams};
use kube::discovery::ApiResource;
use serde_json::{Value, json};
use tether::schema::SchemaRegistry;
use tether::schema::validate::{admit_document, parse_stream};

use crate::support::TestCluster;

/// The sample Environment (`config/samples/10-environment-staging.yaml`).
fn sample() -> Value {
    let path = format!(
        "{}/config/samples/10-environment-staging.yaml",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    parse_stream(&text).unwrap().remove(0)
}

fn validate(doc: &Value) -> Result<Value, Vec<String>> {
    let registry = SchemaRegistry::new(&tether::api::crds()).unwrap();
    let mut doc = doc.clone();
    let (_, result) = admit_document(&registry, &mut doc);
    result
        .map(|_| doc)
        .map_err(|causes| causes.iter().map(ToString::to_string).collect())
}

fn environments(client: kube::Client) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("tether.dev", "v1alpha1", "Environment");
    Api::namespaced_with(
        client,
        "default",
        &ApiResource::from_gvk_with_plural(&gvk, "environments"),
    )
}

#[tokio::test]
async fn a_required_field_sent_as_null_is_missing() {
    let mut env = sample();
    env["spec"]["render"]["services"][0]["name"] = Value::Null;
    const REQUIRED: &str = "spec.render.services[0].name: Required value";
    let causes = validate(&env).unwrap_err();
    assert!(causes.iter().any(|c| c == REQUIRED), "{causes:#?}");

    let cluster = TestCluster::start().await;
    let object: DynamicObject = serde_json::from_value(env).unwrap();
    match environments(cluster.client())
        .create(&PostParams::default(), &object)
        .await
    {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 422);
            assert!(status.message.contains(REQUIRED), "{}", status.message);
        }
        other => panic!("expected 422, got {other:?}"),
    }
}

#[tokio::test]
async fn a_map_value_sent_as_null_is_dropped_not_refused() {
    let mut env = sample();
    env["spec"]["fly"]["apps"][0]["env"] = json!({"REGION": "ams", "UNSET": null});
    let admitted = validate(&env).unwrap_or_else(|c| panic!("{c:#?}"));
    assert_eq!(
        admitted["spec"]["fly"]["apps"][0]["env"],
        json!({"REGION": "ams"})
    );

    let cluster = TestCluster::start().await;
    let object: DynamicObject = serde_json::from_value(env).unwrap();
    let created = environments(cluster.client())
        .create(&PostParams::default(), &object)
        .await
        .unwrap();
    assert_eq!(
        created.data["spec"]["fly"]["apps"][0]["env"],
        json!({"REGION": "ams"})
    );
}
