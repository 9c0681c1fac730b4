//! What the fuzz targets share: the admission paths of the embedded API and of
//! `tether validate`, the checks every admitted object must pass, and structure-aware
//! inputs (arbitrary JSON values, mutations of the sample manifests).

use std::path::Path;
use std::sync::{Arc, LazyLock};

use arbitrary::{Arbitrary, Unstructured};
use serde_json::{Map, Number, Value};
use tether::localapi::admission::{Admission, FieldValidation};
use tether::localapi::resources::{ResourceDef, ResourceTable};
use tether::schema::SchemaRegistry;
use tether::schema::validate::{Report, admit_document_with_old, parse_stream, validate_text};
use tether::standalone::manifests::SourceFile;

/// The `manifest_stream` target: any text through the YAML stream parsers of `tether
/// validate` and `tether run`, and each decoded document through `tether validate`'s
/// admission (input that is not UTF-8 is skipped, as libFuzzer's `&str` targets do).
pub fn manifest_stream(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = parse_stream(text);
    let _ = SourceFile::parse("fuzz.yaml".to_string(), text.to_string());
    let mut report = Report::default();
    validate_text(Path::new("fuzz.yaml"), text, &REGISTRY, &mut report);
}

/// The `admit_json` target: any JSON document through every admission path; two JSON
/// values separated by a NUL byte are an update (old, then new).
pub fn admit_json(data: &[u8]) {
    let (old, new) = match data.iter().position(|b| *b == 0) {
        Some(i) => (
            serde_json::from_slice::<Value>(&data[..i]).ok(),
            &data[i + 1..],
        ),
        None => (None, data),
    };
    if let Ok(doc) = serde_json::from_slice::<Value>(new) {
        admit_every_way(&doc, old.as_ref());
    }
}

/// An `admit_mutated` input: a sample, mutated, admitted one way, as a create or as an
/// update of the sample itself.
#[derive(Debug, Arbitrary)]
pub struct MutatedInput {
    sample: u8,
    update: bool,
    way: Way,
    mutations: Vec<Mutation>,
}

/// The `admit_mutated` target, from the raw bytes libFuzzer hands it (decoded as
/// `fuzz_target!` decodes a typed input).
pub fn admit_mutated(data: &[u8]) {
    if let Ok(input) = MutatedInput::arbitrary_take_rest(Unstructured::new(data)) {
        admit_mutated_input(&input);
    }
}

/// Admits one [`MutatedInput`].
pub fn admit_mutated_input(input: &MutatedInput) {
    let base = &SAMPLES[usize::from(input.sample) % SAMPLES.len()];
    let mut doc = base.clone();
    for mutation in &input.mutations {
        mutation.apply(&mut doc);
    }
    admit(&doc, input.update.then_some(base), input.way);
}

/// The generated CRDs, compiled as `tether validate` compiles them.
pub static REGISTRY: LazyLock<SchemaRegistry> = LazyLock::new(|| {
    SchemaRegistry::new(&tether::api::crds()).expect("the generated CRDs compile")
});

/// The embedded API server's admission of the generated CRDs, and its resource table.
static API: LazyLock<(Admission, ResourceTable)> = LazyLock::new(|| {
    let crds = tether::api::crds();
    (
        Admission::new(&crds).expect("the generated CRDs compile"),
        ResourceTable::new(&crds).expect("the generated CRDs are served"),
    )
});

const MODES: [FieldValidation; 3] = [
    FieldValidation::Ignore,
    FieldValidation::Warn,
    FieldValidation::Strict,
];

/// Every object of `config/samples` and of the transition-rule base fixture, the starting
/// points of [`Mutation`]s.
pub static SAMPLES: LazyLock<Vec<Value>> = LazyLock::new(|| {
    [
        include_str!("../../config/samples/00-secrets.yaml"),
        include_str!("../../config/samples/10-environment-staging.yaml"),
        include_str!("../../config/samples/20-migration.yaml"),
        include_str!("../../config/samples/21-migration-configmap.yaml"),
        include_str!("../../config/samples/30-release.yaml"),
        include_str!("../../tests/fixtures/invalid/release-old.yaml.base"),
    ]
    .iter()
    .flat_map(|text| parse_stream(text).expect("the samples parse"))
    .collect()
});

/// One way Tether admits objects.
#[derive(Clone, Copy, Debug, Arbitrary)]
pub enum Way {
    /// `tether validate`'s path, for any kind.
    Validate,
    /// The embedded API's custom-resource admission (Tether kinds only) in a
    /// `fieldValidation` mode (0 Ignore, 1 Warn, 2 Strict, modulo 3).
    Api(u8),
}

/// Admits `doc` (as an update of `old` when given) every [`Way`].
pub fn admit_every_way(doc: &Value, old: Option<&Value>) {
    admit(doc, old, Way::Validate);
    for mode in 0..3 {
        admit(doc, old, Way::Api(mode));
    }
}

/// Admits `doc` (as an update of `old` when given) one way. Panics when an admitted object
/// does not round-trip, or a Tether object does not deserialize into its Rust type.
pub fn admit(doc: &Value, old: Option<&Value>, way: Way) {
    let mode = match way {
        Way::Validate => {
            let mut admitted = doc.clone();
            if admit_document_with_old(&REGISTRY, old, &mut admitted)
                .1
                .is_ok()
            {
                check_admitted(&admitted, |again| {
                    admit_document_with_old(&REGISTRY, old, again).1.is_ok()
                });
            }
            return;
        }
        Way::Api(mode) => MODES[usize::from(mode) % MODES.len()],
    };
    let Some(def) = tether_def(doc) else {
        return;
    };
    let (admission, _) = &*API;
    let mut admitted = doc.clone();
    if admission
        .admit_custom_resource(&def, old, &mut admitted, mode)
        .is_ok()
    {
        check_admitted(&admitted, |again| {
            admission
                .admit_custom_resource(&def, old, again, mode)
                .is_ok()
        });
        check_typed(&def.kind, &admitted);
    }
}

/// The served resource of a document whose `kind` is a Tether kind (whatever its
/// `apiVersion`: the server picks the resource from the URL).
fn tether_def(doc: &Value) -> Option<Arc<ResourceDef>> {
    let kind = doc.get("kind")?.as_str()?;
    let (_, table) = &*API;
    table
        .all()
        .iter()
        .find(|d| d.custom && d.kind == kind)
        .cloned()
}

/// An admitted object round-trips: its JSON text, admitted again, is admitted unchanged.
fn check_admitted(admitted: &Value, admit: impl Fn(&mut Value) -> bool) {
    let text = serde_json::to_string(admitted).expect("an admitted object serializes");
    let mut again: Value = serde_json::from_str(&text).expect("its serialization parses");
    assert!(
        admit(&mut again),
        "an admitted object is refused when admitted again: {text}"
    );
    assert_eq!(
        &again, admitted,
        "admitting an admitted object again changed it"
    );
}

/// An admitted Tether object deserializes into its Rust type, as the controllers read it.
fn check_typed(kind: &str, admitted: &Value) {
    let typed = match kind {
        "Environment" => {
            serde_json::from_value::<tether::api::Environment>(admitted.clone()).map(|_| ())
        }
        "Release" => serde_json::from_value::<tether::api::Release>(admitted.clone()).map(|_| ()),
        "Migration" => {
            serde_json::from_value::<tether::api::Migration>(admitted.clone()).map(|_| ())
        }
        _ => Ok(()),
    };
    if let Err(e) = typed {
        panic!("an admitted {kind} does not deserialize into its Rust type: {e}: {admitted}");
    }
}

/// Strings that mean something somewhere in the schemas: enum values, durations, names.
const WORDS: &[&str] = &[
    "",
    " ",
    "-",
    "0",
    "-1",
    "1e400",
    "null",
    "true",
    "a\nb",
    "a/b",
    "é\u{0}😀",
    "${x}",
    "0s",
    "-1s",
    "1ms",
    "500ms",
    "5m",
    "1h",
    "24h",
    "9999999999h",
    "1.5h",
    "5",
    "P1D",
    "web",
    "worker",
    "cron",
    "static",
    "private",
    "render",
    "vercel",
    "fly",
    "supabase",
    "Correct",
    "Report",
    "Ignore",
    "Delete",
    "Orphan",
    "Opaque",
    "kubernetes.io/tls",
    "tether.dev/v1alpha1",
    "v1",
    "Environment",
    "Release",
    "Migration",
    "Secret",
    "ConfigMap",
    "name",
    "key",
    "value",
    "valueFrom",
    "spec",
    "status",
    "metadata",
    "generation",
    "staging",
    "default",
    "staging-api",
    "1.4.2",
    "v1.4.2",
    "ghcr.io/acme/api:1",
    "/healthz",
    "https://api.example.com",
    "0 3 * * *",
    "2024-01-01T00:00:00Z",
    "shared-cpu-1x",
    "performance-1x",
    "ams",
    "frankfurt",
    "starter",
    "production",
    "preview",
    "development",
];

/// A JSON value the fuzzer builds field by field.
#[derive(Debug, Arbitrary)]
pub enum Json {
    /// `null`.
    Null,
    /// A boolean.
    Bool(bool),
    /// A signed integer.
    Int(i64),
    /// An unsigned integer.
    Uint(u64),
    /// A float (`null` when not finite, as JSON has no such numbers).
    Float(f64),
    /// One of [`WORDS`].
    Word(u8),
    /// Any string.
    Str(String),
    /// A string of `n` times `c` (long names, big payloads).
    Repeat(char, u16),
    /// An array.
    Array(Vec<Json>),
    /// An object (later duplicate keys win).
    Object(Vec<(Key, Json)>),
}

/// An object key: one of [`WORDS`] or any string.
#[derive(Debug, Arbitrary)]
pub enum Key {
    /// One of [`WORDS`].
    Word(u8),
    /// Any string.
    Str(String),
}

fn word(i: u8) -> &'static str {
    WORDS[usize::from(i) % WORDS.len()]
}

impl Key {
    fn name(&self) -> String {
        match self {
            Key::Word(i) => word(*i).to_string(),
            Key::Str(s) => s.clone(),
        }
    }
}

impl Json {
    /// The value as `serde_json` holds it.
    pub fn to_value(&self) -> Value {
        match self {
            Json::Null => Value::Null,
            Json::Bool(b) => Value::Bool(*b),
            Json::Int(n) => Value::from(*n),
            Json::Uint(n) => Value::from(*n),
            Json::Float(f) => Number::from_f64(*f).map_or(Value::Null, Value::Number),
            Json::Word(i) => Value::from(word(*i)),
            Json::Str(s) => Value::from(s.as_str()),
            Json::Repeat(c, n) => Value::from(c.to_string().repeat(usize::from(*n))),
            Json::Array(items) => Value::Array(items.iter().map(Json::to_value).collect()),
            Json::Object(entries) => Value::Object(
                entries
                    .iter()
                    .map(|(k, v)| (k.name(), v.to_value()))
                    .collect::<Map<_, _>>(),
            ),
        }
    }
}

/// One change to a sample object, at the value `path` leads to: each step picks a field of
/// an object or an item of an array (modulo their count); the walk stops at a scalar.
#[derive(Debug, Arbitrary)]
pub struct Mutation {
    path: Vec<u8>,
    op: Op,
}

/// What a [`Mutation`] does at its place.
#[derive(Debug, Arbitrary)]
enum Op {
    /// Drops the field or item (the last step of the path).
    Remove,
    /// Replaces the value.
    Replace(Json),
    /// Adds a field to an object or an item to an array.
    Insert(Key, Json),
    /// Appends a copy of an array's first item (duplicates for list-map keys and sets).
    Duplicate,
    /// Turns the value into another type holding the same text (`"5"` ↔ `5`, `[x]`, ...).
    SwapType,
    /// Replaces the value with an extreme number.
    Extreme(u8),
}

const EXTREMES: &[fn() -> Value] = &[
    || Value::from(i64::MIN),
    || Value::from(i64::MAX),
    || Value::from(u64::MAX),
    || Value::from(-1),
    || Value::from(0),
    || Value::from(i64::from(i32::MAX) + 1),
    || Value::from(9_007_199_254_740_993_u64),
    || Value::from(1e308),
    || Value::from(-0.0),
    || Value::from(0.5),
];

impl Mutation {
    /// Applies the mutation to `value`.
    pub fn apply(&self, value: &mut Value) {
        apply(value, &self.path, &self.op);
    }
}

fn apply(value: &mut Value, path: &[u8], op: &Op) {
    let remove_here = path.len() == 1 && matches!(op, Op::Remove);
    match (path.split_first(), value) {
        (Some((&step, rest)), Value::Object(map)) if !map.is_empty() => {
            let Some(key) = map.keys().nth(usize::from(step) % map.len()).cloned() else {
                return;
            };
            if remove_here {
                map.remove(&key);
            } else if let Some(child) = map.get_mut(&key) {
                apply(child, rest, op);
            }
        }
        (Some((&step, rest)), Value::Array(items)) if !items.is_empty() => {
            let i = usize::from(step) % items.len();
            if remove_here {
                items.remove(i);
            } else {
                apply(&mut items[i], rest, op);
            }
        }
        (_, value) => op.apply_here(value),
    }
}

impl Op {
    fn apply_here(&self, value: &mut Value) {
        match self {
            Op::Remove => *value = Value::Null,
            Op::Replace(json) => *value = json.to_value(),
            Op::Insert(key, json) => match value {
                Value::Object(map) => {
                    map.insert(key.name(), json.to_value());
                }
                Value::Array(items) => items.push(json.to_value()),
                other => *other = json.to_value(),
            },
            Op::Duplicate => {
                if let Value::Array(items) = value
                    && let Some(first) = items.first().cloned()
                {
                    items.push(first);
                }
            }
            Op::SwapType => *value = swap_type(value),
            Op::Extreme(i) => *value = EXTREMES[usize::from(*i) % EXTREMES.len()](),
        }
    }
}

fn swap_type(value: &Value) -> Value {
    match value {
        Value::String(s) => s
            .parse::<i64>()
            .map(Value::from)
            .or_else(|_| s.parse::<bool>().map(Value::from))
            .unwrap_or_else(|_| Value::Array(vec![value.clone()])),
        Value::Number(n) => Value::from(n.to_string()),
        Value::Bool(b) => Value::from(b.to_string()),
        Value::Null => Value::from(""),
        Value::Array(items) => items.first().cloned().unwrap_or(Value::Null),
        Value::Object(map) => Value::Array(map.values().cloned().collect()),
    }
}
