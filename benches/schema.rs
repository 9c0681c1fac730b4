//! Admission and Table throughput of `crate::schema` with the real Tether CRDs.
//!
//! Prints, measured in the same run: the time to compile the registry (every schema,
//! pattern and CEL program), admissions per second of the staging Environment sample with
//! the registry compiled once, the same with a registry compiled per admission (what
//! compiling "on demand" would cost) and their ratio, and Table rows per second.

use std::hint::black_box;
use std::time::{Duration, Instant};

use serde_json::Value;
use tether::schema::table::TableOptions;
use tether::schema::{FieldValidation, SchemaRegistry};

fn sample() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/samples/10-environment-staging.yaml"
    );
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    tether::schema::validate::parse_stream(&text)
        .unwrap_or_else(|e| panic!("{e}"))
        .into_iter()
        .find(|d| d["kind"] == "Environment")
        .unwrap_or_else(|| panic!("no Environment in {path}"))
}

/// Runs `f` repeatedly for about `budget`, returning operations per second.
fn rate(budget: Duration, mut f: impl FnMut()) -> (f64, u64) {
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < budget {
        f();
        n += 1;
    }
    (n as f64 / start.elapsed().as_secs_f64(), n)
}

fn main() {
    tether::install_crypto_provider();
    let crds = tether::api::crds();
    let object = sample();

    let start = Instant::now();
    let registry = SchemaRegistry::new(&crds).unwrap_or_else(|e| panic!("{e}"));
    let compile = start.elapsed();
    println!(
        "compile registry ({} CRDs): {:.1} ms",
        crds.len(),
        compile.as_secs_f64() * 1e3
    );

    let admit = |registry: &SchemaRegistry| {
        let mut obj = object.clone();
        let result = registry.admit(
            "tether.dev",
            "v1alpha1",
            "Environment",
            None,
            &mut obj,
            FieldValidation::Strict,
        );
        assert!(result.is_ok(), "{result:?}");
        black_box(obj);
    };
    let old = object.clone();
    let (compiled_rate, n1) = rate(Duration::from_secs(2), || admit(&registry));
    let (update_rate, n2) = rate(Duration::from_secs(2), || {
        let mut obj = object.clone();
        let result = registry.admit(
            "tether.dev",
            "v1alpha1",
            "Environment",
            Some(&old),
            &mut obj,
            FieldValidation::Strict,
        );
        assert!(result.is_ok(), "{result:?}");
        black_box(obj);
    });
    let (per_call_rate, n3) = rate(Duration::from_secs(2), || {
        let fresh = SchemaRegistry::new(&crds).unwrap_or_else(|e| panic!("{e}"));
        admit(&fresh);
    });
    println!("admit create, compiled once:      {compiled_rate:>10.0} objects/s ({n1} runs)");
    println!("admit update (transition rules):  {update_rate:>10.0} objects/s ({n2} runs)");
    println!("admit, compiling per admission:   {per_call_rate:>10.0} objects/s ({n3} runs)");
    println!(
        "ratio compiled-once / per-call:   {:>10.1}x",
        compiled_rate / per_call_rate
    );

    let mut items = Vec::with_capacity(1000);
    for i in 0..1000 {
        let mut obj = object.clone();
        obj["metadata"]["name"] = Value::String(format!("env-{i}"));
        obj["metadata"]["creationTimestamp"] = Value::String("2026-11-22T00:00:00Z".into());
        obj["status"] = serde_json::json!({"conditions": [{"type": "Ready", "status": "True", "message": "synced"}]});
        items.push(obj);
    }
    let conv = registry
        .table("tether.dev", "v1alpha1", "environments")
        .unwrap_or_else(|| panic!("no table convertor"));
    let now = jiff::Timestamp::now();
    let (tables, _) = rate(Duration::from_secs(2), || {
        black_box(conv.table(&items, Some("1"), None, TableOptions::default(), now));
    });
    println!(
        "table of 1000 Environments:       {:>10.0} rows/s",
        tables * 1000.0
    );
}
