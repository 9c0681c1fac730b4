//! A property of admission: the sample Environment, Release and Migration, mutated at
//! random (fields dropped or added, types swapped, huge and negative numbers, odd strings,
//! nulls, duplicated list items), through the embedded API's admission in every
//! `fieldValidation` mode and through `tether validate`: no input panics, and every object
//! admitted round-trips (its serialization admitted again gives the same object) and
//! deserializes into its Rust type. `make fuzz` explores the same paths for longer.

use proptest::collection::vec;
use proptest::prelude::*;
use serde_json::{Map, Value};
use tether::schema::validate::parse_stream;

use super::fuzz_targets::admit_every_way;

/// The sample objects of the three Tether kinds.
fn samples() -> Vec<Value> {
    [
        "10-environment-staging.yaml",
        "20-migration.yaml",
        "30-release.yaml",
    ]
    .iter()
    .flat_map(|file| {
        let path = format!("{}/config/samples/{file}", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        parse_stream(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
    })
    .filter(|doc| doc["apiVersion"] == "tether.dev/v1alpha1")
    .collect()
}

/// One change at the value a path leads to (each step picks a field or an item modulo
/// their count; the walk stops at a scalar).
#[derive(Debug, Clone)]
enum Mutation {
    Remove(Vec<usize>),
    Replace(Vec<usize>, Value),
    Insert(Vec<usize>, String, Value),
    Duplicate(Vec<usize>),
    SwapType(Vec<usize>),
}

fn odd_string() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "",
            " ",
            "-",
            "0",
            "-1",
            "1e400",
            "null",
            "true",
            "a\nb",
            "é\u{0}😀",
            "0s",
            "-1s",
            "1ms",
            "5m",
            "9999999999h",
            "1.5h",
            "web",
            "cron",
            "worker",
            "static",
            "render",
            "fly",
            "vercel",
            "supabase",
            "Correct",
            "Report",
            "v1.4.2",
            "staging",
            "2024-01-01T00:00:00Z",
            "0 3 * * *",
            "https://api.example.com",
            "/healthz",
        ])
        .prop_map(str::to_string),
        any::<String>(),
        (any::<char>(), 0..400usize).prop_map(|(c, n)| c.to_string().repeat(n)),
    ]
}

fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        prop::sample::select(vec![i64::MIN, i64::MAX, -1, 0, 1 << 31, 1 << 53])
            .prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        odd_string().prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::Array),
            vec((odd_string(), inner), 0..4)
                .prop_map(|entries| Value::Object(entries.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let path = || vec(any::<usize>(), 1..7);
    prop_oneof![
        path().prop_map(Mutation::Remove),
        (path(), json()).prop_map(|(p, v)| Mutation::Replace(p, v)),
        (path(), odd_string(), json()).prop_map(|(p, k, v)| Mutation::Insert(p, k, v)),
        path().prop_map(Mutation::Duplicate),
        path().prop_map(Mutation::SwapType),
    ]
}

impl Mutation {
    fn path(&self) -> &[usize] {
        match self {
            Mutation::Remove(p)
            | Mutation::Replace(p, _)
            | Mutation::Insert(p, _, _)
            | Mutation::Duplicate(p)
            | Mutation::SwapType(p) => p,
        }
    }

    fn apply(&self, doc: &mut Value) {
        self.apply_at(doc, self.path());
    }

    fn apply_at(&self, value: &mut Value, path: &[usize]) {
        let remove_here = path.len() == 1 && matches!(self, Mutation::Remove(_));
        match (path.split_first(), value) {
            (Some((step, rest)), Value::Object(map)) if !map.is_empty() => {
                let key = map
                    .keys()
                    .nth(step % map.len())
                    .cloned()
                    .unwrap_or_default();
                if remove_here {
                    map.remove(&key);
                } else if let Some(child) = map.get_mut(&key) {
                    self.apply_at(child, rest);
                }
            }
            (Some((step, rest)), Value::Array(items)) if !items.is_empty() => {
                let i = step % items.len();
                if remove_here {
                    items.remove(i);
                } else {
                    self.apply_at(&mut items[i], rest);
                }
            }
            (_, value) => self.apply_here(value),
        }
    }

    fn apply_here(&self, value: &mut Value) {
        match self {
            Mutation::Remove(_) => *value = Value::Null,
            Mutation::Replace(_, new) => *value = new.clone(),
            Mutation::Insert(_, key, new) => match value {
                Value::Object(map) => {
                    map.insert(key.clone(), new.clone());
                }
                Value::Array(items) => items.push(new.clone()),
                other => *other = new.clone(),
            },
            Mutation::Duplicate(_) => {
                if let Value::Array(items) = value
                    && let Some(first) = items.first().cloned()
                {
                    items.push(first);
                }
            }
            Mutation::SwapType(_) => {
                *value = match &*value {
                    Value::String(s) => s
                        .parse::<i64>()
                        .map_or_else(|_| Value::Array(vec![value.clone()]), Value::from),
                    Value::Number(n) => Value::from(n.to_string()),
                    Value::Bool(b) => Value::from(b.to_string()),
                    Value::Null => Value::from(""),
                    Value::Array(items) => items.first().cloned().unwrap_or(Value::Null),
                    Value::Object(map) => Value::Array(map.values().cloned().collect()),
                }
            }
        }
    }
}

proptest! {
    // 1000 cases: a second or two in the debug build `make test` runs (`PROPTEST_CASES` overrides).
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn admitted_objects_round_trip_and_deserialize(
        sample in 0..3usize,
        mutations in vec(mutation(), 1..6),
    ) {
        thread_local!(static SAMPLES: Vec<Value> = samples());
        SAMPLES.with(|samples| {
            let mut doc = samples[sample].clone();
            for m in &mutations {
                m.apply(&mut doc);
            }
            // The same paths and checks as the fuzz targets: round trip, typed decoding.
            admit_every_way(&doc, None);
        });
    }
}
