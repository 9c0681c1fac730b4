//! The Environment controller's sync, platform-independent parts, end to end (embedded API
//! + sandbox + controllers): conditions and status of an Environment, credentials errors,
//!   and no secret value anywhere visible.

pub mod support;

use serde_json::{Value, json};
use support::sync::{SyncHarness, condition, condition_is};

fn manifest(name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "tether.dev/v1alpha1",
        "kind": "Environment",
        "metadata": {"name": name, "namespace": "default"},
        "spec": spec,
    })
}

#[tokio::test]
async fn an_environment_without_platform_objects_is_ready_with_nothing_to_manage() {
    let h = SyncHarness::start().await;
    h.apply(manifest("empty", json!({}))).await;
    let env = h.wait_ready("empty").await;
    assert_eq!(env["status"]["summary"], "0/0");
    assert_eq!(
        condition(&env, "Ready").unwrap()["message"],
        "0/0 platform objects ready"
    );
    assert!(condition_is(&env, "DriftDetected", "False"));
    h.stop().await;
}
