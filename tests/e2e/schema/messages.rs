//! The error texts of a current API server (v1.36), from the embedded API and from
//! `tether validate`: a failed CEL rule on an object or a list shows no value, a failed rule
//! on a scalar shows the value, and the line added when rules were skipped shows `null`
//! unquoted.

use kube::api::{Api, DynamicObject, GroupVersionKind, PostParams};
use kube::discovery::ApiResource;
use serde_json::Value;
use tether::schema::SchemaRegistry;
use tether::schema::validate::{admit_document, admit_document_with_old, parse_stream};

use crate::support::TestCluster;

const OBJECT_RULE: &str = "spec.render.services[0]: Invalid value: schedule is required for cron services and not allowed for other types";
const LIST_RULE: &str = "spec.vercel.projects[0].envVars: Invalid value: a Vercel environment variable may be set once per name, target and gitBranch";
const SCALAR_RULE: &str =
    r#"spec.version: Invalid value: "2.0.0": version is immutable; create a new Release"#;
const SKIPPED: &str = "<nil>: Invalid value: null: some validation rules were not checked because the object was invalid; correct the existing errors to complete validation";

fn fixture(name: &str) -> Value {
    let path = format!(
        "{}/tests/fixtures/invalid/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    parse_stream(&text).unwrap().remove(0)
}

/// An Environment whose `interval` has the wrong type: a schema error that stops the CEL
/// rules (the missing Render credentials would fail one).
fn skipped() -> Value {
    let mut env = fixture("render-cron-without-schedule.yaml");
    env["spec"]["interval"] = 5.into();
    env["spec"]["credentials"] = serde_json::json!({});
    env
}

fn causes(doc: &mut Value, old: Option<&Value>) -> Vec<String> {
    let registry = SchemaRegistry::new(&tether::api::crds()).unwrap();
    let (_, result) = match old {
        Some(old) => admit_document_with_old(&registry, Some(old), doc),
        None => admit_document(&registry, doc),
    };
    result
        .unwrap_err()
        .iter()
        .map(ToString::to_string)
        .collect()
}

#[test]
fn tether_validate_words_rule_failures_as_the_api_server() {
    let causes_of = |name: &str| causes(&mut fixture(name), None);
    assert_eq!(
        causes_of("render-cron-without-schedule.yaml"),
        [OBJECT_RULE]
    );
    assert_eq!(causes_of("vercel-duplicate-env-var.yaml"), [LIST_RULE]);
    let old = fixture("release-old.yaml.base");
    assert_eq!(
        causes(&mut fixture("release-version-changed.yaml"), Some(&old)),
        [SCALAR_RULE]
    );
    let skipped = causes(&mut skipped(), None);
    assert_eq!(
        skipped.last().map(String::as_str),
        Some(SKIPPED),
        "{skipped:#?}"
    );

    // The command prints the same causes, after the file, document and object.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tether"))
        .args([
            "validate",
            "tests/fixtures/invalid/render-cron-without-schedule.yaml",
            "tests/fixtures/invalid/vercel-duplicate-env-var.yaml",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("Environment/bad: {OBJECT_RULE}")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("Environment/bad: {LIST_RULE}")),
        "{stdout}"
    );
}

#[tokio::test]
async fn the_embedded_api_words_rule_failures_as_the_api_server() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let api = |kind: &str, plural: &str| -> Api<DynamicObject> {
        let gvk = GroupVersionKind::gvk("tether.dev", "v1alpha1", kind);
        Api::namespaced_with(
            client.clone(),
            "default",
            &ApiResource::from_gvk_with_plural(&gvk, plural),
        )
    };
    let create = |api: Api<DynamicObject>, doc: Value| async move {
        let object: DynamicObject = serde_json::from_value(doc).unwrap();
        api.create(&PostParams::default(), &object).await
    };
    let message = |result: kube::Result<DynamicObject>| match result {
        Err(kube::Error::Api(status)) => status.message,
        other => panic!("expected a refusal, got {other:?}"),
    };
    let envs = || api("Environment", "environments");
    let refused = message(create(envs(), fixture("render-cron-without-schedule.yaml")).await);
    assert_eq!(
        refused,
        format!(r#"Environment.tether.dev "bad" is invalid: {OBJECT_RULE}"#)
    );
    let refused = message(create(envs(), fixture("vercel-duplicate-env-var.yaml")).await);
    assert_eq!(
        refused,
        format!(r#"Environment.tether.dev "bad" is invalid: {LIST_RULE}"#)
    );
    let refused = message(create(envs(), skipped()).await);
    assert!(refused.ends_with(&format!("{SKIPPED}]")), "{refused}");

    let releases = api("Release", "releases");
    create(releases.clone(), fixture("release-old.yaml.base"))
        .await
        .unwrap();
    let mut changed: DynamicObject =
        serde_json::from_value(fixture("release-version-changed.yaml")).unwrap();
    changed.metadata.resource_version = releases
        .get("immutable")
        .await
        .unwrap()
        .metadata
        .resource_version;
    let refused = message(
        releases
            .replace("immutable", &PostParams::default(), &changed)
            .await,
    );
    assert_eq!(
        refused,
        format!(r#"Release.tether.dev "immutable" is invalid: {SCALAR_RULE}"#)
    );
    cluster.stop().await;
}
