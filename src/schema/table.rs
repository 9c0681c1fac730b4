//! The `meta.k8s.io/v1` `Table` the API server returns for
//! `Accept: application/json;as=Table;g=meta.k8s.io;v=v1` (what `kubectl get` asks for).
//!
//! For a CRD version: `Name` plus its `additionalPrinterColumns`, each JSONPath evaluated as
//! the apiextensions table convertor does (first match; `string` columns printed as
//! client-go's JSONPath printer prints, `integer`/`number`/`boolean` typed, `date` columns
//! turned into a human age like `5m` by the server itself). For the built-in kinds Tether
//! serves, the columns of the server's own printers (Namespace, Secret, ConfigMap, Event,
//! Lease), with every column including the `-o wide` ones, as the server sends them.

use std::sync::Arc;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::{Value, json};

use super::jsonpath::{JsonPath, JsonPathError, print_value};

const NAME_DESCRIPTION: &str = "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically. Name is primarily intended for creation idempotence and configuration definition. Cannot be updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names";
const CREATION_DESCRIPTION: &str = "CreationTimestamp is a timestamp representing the server time when this object was created. It is not guaranteed to be set in happens-before order across separate operations. Clients may not set this value. It is represented in RFC3339 form and is in UTC.\n\nPopulated by the system. Read-only. Null for lists. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata";

/// `?includeObject=`: what each row carries besides its cells.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IncludeObject {
    /// No object (`"object": null`).
    None,
    /// The object's metadata as a `PartialObjectMetadata` (the server's default).
    #[default]
    Metadata,
    /// The whole object.
    Object,
}

impl IncludeObject {
    /// Parses the `includeObject` query parameter (`None`, `Metadata`, `Object`).
    pub fn from_query(value: &str) -> Option<Self> {
        match value {
            "None" => Some(Self::None),
            "Metadata" => Some(Self::Metadata),
            "Object" => Some(Self::Object),
            _ => None,
        }
    }
}

/// Options of one table request (`TableOptions`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableOptions {
    /// What each row carries.
    pub include_object: IncludeObject,
    /// Omit `columnDefinitions` (kubectl sends this for watch events after the first).
    pub no_headers: bool,
}

/// A built-in printer's cell function: the object and the current time to the cell.
type CellFn = Arc<dyn Fn(&Value, jiff::Timestamp) -> Value + Send + Sync>;

/// How the cell of one column is computed.
#[derive(Clone)]
enum Source {
    /// `metadata.name`.
    Name,
    /// A CRD printer column: JSONPath plus the column's type.
    Path(JsonPath),
    /// A built-in printer's cell function.
    Builtin(CellFn),
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Name => f.write_str("Name"),
            Source::Path(p) => write!(f, "Path({})", p.as_str()),
            Source::Builtin(_) => f.write_str("Builtin"),
        }
    }
}

/// One column of a table.
#[derive(Clone, Debug)]
struct Column {
    name: String,
    ty: String,
    format: String,
    description: String,
    priority: i32,
    source: Source,
}

impl Column {
    fn builtin(
        name: &str,
        ty: &str,
        priority: i32,
        description: &str,
        cell: impl Fn(&Value, jiff::Timestamp) -> Value + Send + Sync + 'static,
    ) -> Self {
        Self {
            name: name.into(),
            ty: ty.into(),
            format: String::new(),
            description: description.into(),
            priority,
            source: Source::Builtin(Arc::new(cell)),
        }
    }

    fn name_column() -> Self {
        Self {
            name: "Name".into(),
            ty: "string".into(),
            format: "name".into(),
            description: NAME_DESCRIPTION.into(),
            priority: 0,
            source: Source::Name,
        }
    }

    fn age_column() -> Self {
        Self::builtin("Age", "string", 0, CREATION_DESCRIPTION, |obj, now| {
            json!(translate_timestamp_since(
                str_at(obj, "/metadata/creationTimestamp"),
                now
            ))
        })
    }

    fn definition(&self) -> Value {
        json!({
            "name": self.name,
            "type": self.ty,
            "format": self.format,
            "description": self.description,
            "priority": self.priority,
        })
    }

    fn cell(&self, obj: &Value, now: jiff::Timestamp) -> Value {
        match &self.source {
            Source::Name => json!(str_at(obj, "/metadata/name").unwrap_or_default()),
            Source::Builtin(f) => f(obj, now),
            Source::Path(path) => match path.find(obj).first() {
                None => Value::Null,
                Some(value) => cell_for_json_value(&self.ty, value, now),
            },
        }
    }
}

/// Turns objects of one kind into `Table`s.
#[derive(Clone, Debug)]
pub struct TableConvertor {
    columns: Vec<Column>,
}

impl TableConvertor {
    /// The convertor for `version` of `crd`: `Name` plus its additionalPrinterColumns.
    /// `Ok(None)` when the CRD has no such version.
    pub fn for_crd(
        crd: &CustomResourceDefinition,
        version: &str,
    ) -> Result<Option<Self>, JsonPathError> {
        let Some(v) = crd.spec.versions.iter().find(|v| v.name == version) else {
            return Ok(None);
        };
        let mut columns = vec![Column::name_column()];
        match &v.additional_printer_columns {
            // The API server defaults a CRD version without printer columns to an Age column.
            None => columns.push(Column {
                name: "Age".into(),
                ty: "date".into(),
                format: String::new(),
                description: CREATION_DESCRIPTION.into(),
                priority: 0,
                source: Source::Path(JsonPath::parse(".metadata.creationTimestamp")?),
            }),
            Some(printer_columns) => {
                for col in printer_columns {
                    columns.push(Column {
                        name: col.name.clone(),
                        ty: col.type_.clone(),
                        format: col.format.clone().unwrap_or_default(),
                        description: col.description.clone().unwrap_or_else(|| {
                            format!(
                                "Custom resource definition column (in JSONPath format): {}",
                                col.json_path
                            )
                        }),
                        priority: col.priority.unwrap_or(0),
                        source: Source::Path(JsonPath::parse(&col.json_path)?),
                    });
                }
            }
        }
        Ok(Some(Self { columns }))
    }

    /// The server's printer for a built-in kind Tether serves (`""`/Namespace, Secret,
    /// ConfigMap, Event; `events.k8s.io`/Event; `coordination.k8s.io`/Lease).
    pub fn for_builtin(group: &str, kind: &str) -> Option<Self> {
        let columns = match (group, kind) {
            ("", "Namespace") => vec![
                Column::name_column(),
                Column::builtin(
                    "Status",
                    "string",
                    0,
                    "The status of the namespace",
                    |obj, _| json!(str_at(obj, "/status/phase").unwrap_or_default()),
                ),
                Column::age_column(),
            ],
            ("", "Secret") => vec![
                Column::name_column(),
                Column::builtin(
                    "Type",
                    "string",
                    0,
                    "Used to facilitate programmatic handling of secret data.",
                    |obj, _| json!(str_at(obj, "/type").unwrap_or_default()),
                ),
                Column::builtin(
                    "Data",
                    "string",
                    0,
                    "Data contains the secret data.",
                    |obj, _| {
                        // stringData is merged into data on write; count both for objects that
                        // were not written through a server.
                        let mut keys: Vec<&String> = Vec::new();
                        for field in ["data", "stringData"] {
                            if let Some(map) = obj.get(field).and_then(Value::as_object) {
                                keys.extend(map.keys());
                            }
                        }
                        keys.sort();
                        keys.dedup();
                        json!(keys.len())
                    },
                ),
                Column::age_column(),
            ],
            ("", "ConfigMap") => vec![
                Column::name_column(),
                Column::builtin(
                    "Data",
                    "string",
                    0,
                    "Data contains the configuration data.",
                    |obj, _| {
                        let count =
                            |f: &str| obj.get(f).and_then(Value::as_object).map_or(0, |m| m.len());
                        json!(count("data") + count("binaryData"))
                    },
                ),
                Column::age_column(),
            ],
            ("", "Event") | ("events.k8s.io", "Event") => event_columns(),
            ("coordination.k8s.io", "Lease") => vec![
                Column::name_column(),
                Column::builtin(
                    "Holder",
                    "string",
                    0,
                    "holderIdentity contains the identity of the holder of a current lease.",
                    |obj, _| json!(str_at(obj, "/spec/holderIdentity").unwrap_or_default()),
                ),
                Column::age_column(),
            ],
            _ => return None,
        };
        Some(Self { columns })
    }

    /// The `columnDefinitions` of the table.
    pub fn column_definitions(&self) -> Vec<Value> {
        self.columns.iter().map(Column::definition).collect()
    }

    /// The cells of one object's row.
    pub fn cells(&self, obj: &Value, now: jiff::Timestamp) -> Vec<Value> {
        self.columns.iter().map(|c| c.cell(obj, now)).collect()
    }

    /// The whole `Table` for `objects` (one for a GET, all items for a LIST), with the list's
    /// `resourceVersion` and `continue` token when given.
    pub fn table(
        &self,
        objects: &[Value],
        resource_version: Option<&str>,
        continue_token: Option<&str>,
        options: TableOptions,
        now: jiff::Timestamp,
    ) -> Value {
        let rows: Vec<Value> = objects
            .iter()
            .map(|obj| {
                let object = match options.include_object {
                    IncludeObject::None => Value::Null,
                    IncludeObject::Object => obj.clone(),
                    IncludeObject::Metadata => json!({
                        "kind": "PartialObjectMetadata",
                        "apiVersion": "meta.k8s.io/v1",
                        "metadata": obj.get("metadata").cloned().unwrap_or_else(|| json!({})),
                    }),
                };
                json!({"cells": self.cells(obj, now), "object": object})
            })
            .collect();
        let mut metadata = serde_json::Map::new();
        if let Some(rv) = resource_version.filter(|rv| !rv.is_empty()) {
            metadata.insert("resourceVersion".into(), json!(rv));
        }
        if let Some(c) = continue_token.filter(|c| !c.is_empty()) {
            metadata.insert("continue".into(), json!(c));
        }
        let mut table = json!({
            "kind": "Table",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": metadata,
            "rows": rows,
        });
        if !options.no_headers {
            table["columnDefinitions"] = Value::Array(self.column_definitions());
        }
        table
    }
}

fn event_columns() -> Vec<Column> {
    vec![
        Column::builtin(
            "Last Seen",
            "string",
            0,
            "The time at which the most recent occurrence of this event was recorded.",
            |obj, now| json!(event_last_seen(obj, now)),
        ),
        Column::builtin(
            "Type",
            "string",
            0,
            "Type of this event (Normal, Warning), new types could be added in the future",
            |obj, _| json!(str_at(obj, "/type").unwrap_or_default()),
        ),
        Column::builtin(
            "Reason",
            "string",
            0,
            "This should be a short, machine understandable string that gives the reason for the transition into the object's current status.",
            |obj, _| json!(str_at(obj, "/reason").unwrap_or_default()),
        ),
        Column::builtin(
            "Object",
            "string",
            0,
            "The object that this event is about.",
            |obj, _| {
                let involved = involved_object(obj);
                let kind = involved
                    .and_then(|o| o.get("kind"))
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_lowercase();
                let name = involved
                    .and_then(|o| o.get("name"))
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                json!(if name.is_empty() {
                    kind
                } else {
                    format!("{kind}/{name}")
                })
            },
        ),
        Column::builtin(
            "Subobject",
            "string",
            1,
            "If referring to a piece of an object instead of an entire object, this string should contain a valid JSON/Go field access statement.",
            |obj, _| {
                json!(
                    involved_object(obj)
                        .and_then(|o| o.get("fieldPath"))
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                )
            },
        ),
        Column::builtin(
            "Source",
            "string",
            1,
            "The component reporting this event. Should be a short machine understandable string.",
            |obj, _| {
                let source = obj.get("source").or_else(|| obj.get("deprecatedSource"));
                let first =
                    |a: Option<&str>, b: &str| a.filter(|s| !s.is_empty()).unwrap_or(b).to_string();
                let component = first(
                    source
                        .and_then(|s| s.get("component"))
                        .and_then(Value::as_str),
                    str_at(obj, "/reportingController").unwrap_or_default(),
                );
                let instance = first(
                    source.and_then(|s| s.get("host")).and_then(Value::as_str),
                    str_at(obj, "/reportingInstance").unwrap_or_default(),
                );
                json!(match (component.is_empty(), instance.is_empty()) {
                    (true, _) => String::new(),
                    (false, true) => component,
                    (false, false) => format!("{component}, {instance}"),
                })
            },
        ),
        Column::builtin(
            "Message",
            "string",
            0,
            "A human-readable description of the status of this operation.",
            |obj, _| {
                json!(
                    str_at(obj, "/message")
                        .or_else(|| str_at(obj, "/note"))
                        .unwrap_or_default()
                        .trim()
                )
            },
        ),
        Column::builtin(
            "First Seen",
            "string",
            1,
            "The time at which the event was first recorded. (Time of server receipt is in TypeMeta.)",
            |obj, now| json!(event_first_seen(obj, now)),
        ),
        Column::builtin(
            "Count",
            "string",
            1,
            "The number of times this event has occurred.",
            |obj, _| {
                let series_count = obj.pointer("/series/count").and_then(Value::as_i64);
                let count = series_count
                    .or_else(|| obj.get("count").and_then(Value::as_i64))
                    .or_else(|| obj.get("deprecatedCount").and_then(Value::as_i64))
                    .filter(|c| *c != 0)
                    .unwrap_or(1);
                json!(count)
            },
        ),
        Column {
            priority: 1,
            ..Column::name_column()
        },
    ]
}

fn involved_object(obj: &Value) -> Option<&Value> {
    obj.get("involvedObject").or_else(|| obj.get("regarding"))
}

fn event_first_seen(obj: &Value, now: jiff::Timestamp) -> String {
    match str_at(obj, "/firstTimestamp").or_else(|| str_at(obj, "/deprecatedFirstTimestamp")) {
        Some(t) => translate_timestamp_since(Some(t), now),
        None => translate_timestamp_since(str_at(obj, "/eventTime"), now),
    }
}

fn event_last_seen(obj: &Value, now: jiff::Timestamp) -> String {
    if let Some(t) = str_at(obj, "/series/lastObservedTime") {
        return translate_timestamp_since(Some(t), now);
    }
    match str_at(obj, "/lastTimestamp").or_else(|| str_at(obj, "/deprecatedLastTimestamp")) {
        Some(t) => translate_timestamp_since(Some(t), now),
        None => event_first_seen(obj, now),
    }
}

fn str_at<'a>(obj: &'a Value, pointer: &str) -> Option<&'a str> {
    obj.pointer(pointer)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// The apiextensions table convertor's `cellForJSONValue`.
fn cell_for_json_value(ty: &str, value: &Value, now: jiff::Timestamp) -> Value {
    match (ty, value) {
        (_, Value::Null) => Value::Null,
        ("string", v) => json!(print_value(v)),
        ("integer", Value::Number(n)) => n
            .as_i64()
            .map(Value::from)
            .or_else(|| n.as_f64().map(|f| Value::from(f.trunc() as i64)))
            .unwrap_or(Value::Null),
        ("number", Value::Number(n)) => n.as_f64().map(Value::from).unwrap_or(Value::Null),
        ("boolean", Value::Bool(b)) => Value::Bool(*b),
        ("date", Value::String(s)) => match s.parse::<jiff::Timestamp>() {
            Ok(t) => json!(human_duration(now.duration_since(t))),
            Err(_) => json!("<invalid>"),
        },
        _ => Value::Null,
    }
}

/// `translateTimestampSince`: `<unknown>` for a missing time, else its human age.
fn translate_timestamp_since(timestamp: Option<&str>, now: jiff::Timestamp) -> String {
    match timestamp.map(str::parse::<jiff::Timestamp>) {
        Some(Ok(t)) => human_duration(now.duration_since(t)),
        _ => "<unknown>".into(),
    }
}

/// `k8s.io/apimachinery/pkg/util/duration.HumanDuration`: `45s`, `3m20s`, `5h`, `2d3h`, `1y`.
pub fn human_duration(d: jiff::SignedDuration) -> String {
    let secs = d.as_secs();
    if secs < -1 {
        return "<invalid>".into();
    }
    if secs < 0 {
        return "0s".into();
    }
    if secs < 60 * 2 {
        return format!("{secs}s");
    }
    let minutes = secs / 60;
    if minutes < 10 {
        let s = secs % 60;
        return if s == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{s}s")
        };
    }
    if minutes < 60 * 3 {
        return format!("{minutes}m");
    }
    let hours = minutes / 60;
    if hours < 8 {
        let m = minutes % 60;
        return if m == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{m}m")
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        let h = hours % 24;
        return if h == 0 {
            format!("{}d", hours / 24)
        } else {
            format!("{}d{h}h", hours / 24)
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    if hours < 24 * 365 * 8 {
        let days = (hours / 24) % 365;
        return if days == 0 {
            format!("{}y", hours / 24 / 365)
        } else {
            format!("{}y{days}d", hours / 24 / 365)
        };
    }
    format!("{}y", hours / 24 / 365)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> jiff::Timestamp {
        "2026-11-22T12:00:00Z"
            .parse()
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn crd() -> CustomResourceDefinition {
        let mut crd = crate::schema::tests::test_crd();
        crd.spec.versions[0].additional_printer_columns = Some(
            serde_json::from_value(json!([
                {"name": "Ready", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Ready\")].status"},
                {"name": "Status", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Ready\")].message", "priority": 1},
                {"name": "Instances", "type": "integer", "jsonPath": ".spec.instances"},
                {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}
            ]))
            .unwrap_or_else(|e| panic!("{e}")),
        );
        crd
    }

    fn env() -> Value {
        json!({
            "apiVersion": "tether.dev/v1alpha1", "kind": "Environment",
            "metadata": {"name": "web", "namespace": "default", "creationTimestamp": "2026-11-22T11:55:00Z", "resourceVersion": "7"},
            "spec": {"instances": 2.0},
            "status": {"conditions": [{"type": "Ready", "status": "True", "message": "synced"}]}
        })
    }

    #[test]
    fn crd_tables_have_name_plus_printer_columns() {
        let conv = TableConvertor::for_crd(&crd(), "v1alpha1")
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("convertor"));
        let table = conv.table(&[env()], Some("12"), None, TableOptions::default(), now());
        assert_eq!(table["kind"], "Table");
        assert_eq!(table["apiVersion"], "meta.k8s.io/v1");
        assert_eq!(table["metadata"]["resourceVersion"], "12");
        let names: Vec<&str> = table["columnDefinitions"]
            .as_array()
            .map(|c| c.iter().filter_map(|c| c["name"].as_str()).collect())
            .unwrap_or_default();
        assert_eq!(names, vec!["Name", "Ready", "Status", "Instances", "Age"]);
        assert_eq!(table["columnDefinitions"][0]["format"], "name");
        assert_eq!(table["columnDefinitions"][2]["priority"], 1);
        assert_eq!(
            table["rows"][0]["cells"],
            json!(["web", "True", "synced", 2, "5m"])
        );
    }

    #[test]
    fn rows_carry_the_object_per_include_object() {
        let conv = TableConvertor::for_crd(&crd(), "v1alpha1")
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("convertor"));
        let meta = conv.table(&[env()], None, None, TableOptions::default(), now());
        assert_eq!(meta["rows"][0]["object"]["kind"], "PartialObjectMetadata");
        assert_eq!(meta["rows"][0]["object"]["metadata"]["name"], "web");
        assert!(meta["rows"][0]["object"].get("spec").is_none());
        let full = conv.table(
            &[env()],
            None,
            None,
            TableOptions {
                include_object: IncludeObject::Object,
                no_headers: true,
            },
            now(),
        );
        assert_eq!(full["rows"][0]["object"], env());
        assert!(full.get("columnDefinitions").is_none());
        let none = conv.table(
            &[env()],
            None,
            None,
            TableOptions {
                include_object: IncludeObject::None,
                no_headers: false,
            },
            now(),
        );
        assert_eq!(none["rows"][0]["object"], Value::Null);
    }

    #[test]
    fn missing_values_are_null_cells_and_bad_dates_are_invalid() {
        let conv = TableConvertor::for_crd(&crd(), "v1alpha1")
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("convertor"));
        let cells = conv.cells(
            &json!({"metadata": {"name": "x", "creationTimestamp": "soon"}}),
            now(),
        );
        assert_eq!(
            cells,
            vec![
                json!("x"),
                Value::Null,
                Value::Null,
                Value::Null,
                json!("<invalid>")
            ]
        );
    }

    #[test]
    fn a_crd_version_without_columns_gets_age() {
        let crd = crate::schema::tests::test_crd();
        let conv = TableConvertor::for_crd(&crd, "v1alpha1")
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("convertor"));
        let defs = conv.column_definitions();
        assert_eq!(defs.len(), 2);
        assert_eq!(defs[1]["name"], "Age");
        assert_eq!(defs[1]["type"], "date");
        assert_eq!(conv.cells(&env(), now())[1], json!("5m"));
        assert!(TableConvertor::for_crd(&crd, "v2").ok().flatten().is_none());
    }

    #[test]
    fn built_in_kinds_have_kubectls_columns() {
        let headers = |g: &str, k: &str| -> Vec<String> {
            TableConvertor::for_builtin(g, k)
                .map(|c| {
                    c.columns
                        .iter()
                        .filter(|c| c.priority == 0)
                        .map(|c| c.name.clone())
                        .collect()
                })
                .unwrap_or_default()
        };
        assert_eq!(headers("", "Namespace"), ["Name", "Status", "Age"]);
        assert_eq!(headers("", "Secret"), ["Name", "Type", "Data", "Age"]);
        assert_eq!(headers("", "ConfigMap"), ["Name", "Data", "Age"]);
        assert_eq!(
            headers("", "Event"),
            ["Last Seen", "Type", "Reason", "Object", "Message"]
        );
        assert_eq!(
            headers("events.k8s.io", "Event"),
            ["Last Seen", "Type", "Reason", "Object", "Message"]
        );
        assert_eq!(
            headers("coordination.k8s.io", "Lease"),
            ["Name", "Holder", "Age"]
        );
        assert!(TableConvertor::for_builtin("apps", "Deployment").is_none());
    }

    #[test]
    fn built_in_cells_match_the_server_printers() {
        let created = json!({"name": "x", "creationTimestamp": "2026-11-22T10:00:00Z"});
        let cells = |g: &str, k: &str, obj: Value| {
            TableConvertor::for_builtin(g, k)
                .map(|c| c.cells(&obj, now()))
                .unwrap_or_default()
        };
        assert_eq!(
            cells(
                "",
                "Secret",
                json!({"metadata": created, "type": "Opaque", "data": {"a": "eA==", "b": "eQ=="}})
            ),
            vec![json!("x"), json!("Opaque"), json!(2), json!("120m")]
        );
        assert_eq!(
            cells(
                "",
                "ConfigMap",
                json!({"metadata": created, "data": {"a": "1"}, "binaryData": {"b": ""}})
            ),
            vec![json!("x"), json!(2), json!("120m")]
        );
        assert_eq!(
            cells(
                "",
                "Namespace",
                json!({"metadata": created, "status": {"phase": "Active"}})
            ),
            vec![json!("x"), json!("Active"), json!("120m")]
        );
        assert_eq!(
            cells(
                "coordination.k8s.io",
                "Lease",
                json!({"metadata": created, "spec": {"holderIdentity": "pod-1"}})
            ),
            vec![json!("x"), json!("pod-1"), json!("120m")]
        );
        let core_event = json!({
            "metadata": {"name": "web.1"}, "type": "Warning", "reason": "Stalled", "message": " missing Secret \n",
            "involvedObject": {"kind": "Environment", "name": "web", "fieldPath": "spec"},
            "source": {"component": "tether"}, "count": 3,
            "firstTimestamp": "2026-11-22T11:00:00Z", "lastTimestamp": "2026-11-22T11:59:30Z"
        });
        assert_eq!(
            cells("", "Event", core_event),
            vec![
                json!("30s"),
                json!("Warning"),
                json!("Stalled"),
                json!("environment/web"),
                json!("spec"),
                json!("tether"),
                json!("missing Secret"),
                json!("60m"),
                json!(3),
                json!("web.1")
            ]
        );
        let new_event = json!({
            "metadata": {"name": "web.2"}, "type": "Normal", "reason": "Ready", "note": "synced",
            "regarding": {"kind": "Release", "name": "r1"}, "reportingController": "tether", "reportingInstance": "pod-1",
            "eventTime": "2026-11-22T11:58:00.000000Z"
        });
        assert_eq!(
            cells("events.k8s.io", "Event", new_event),
            vec![
                json!("2m"),
                json!("Normal"),
                json!("Ready"),
                json!("release/r1"),
                json!(""),
                json!("tether, pod-1"),
                json!("synced"),
                json!("2m"),
                json!(1),
                json!("web.2")
            ]
        );
    }

    #[test]
    fn human_durations_match_apimachinery() {
        let h = |secs: i64| human_duration(jiff::SignedDuration::from_secs(secs));
        assert_eq!(h(-5), "<invalid>");
        assert_eq!(h(0), "0s");
        assert_eq!(h(119), "119s");
        assert_eq!(h(200), "3m20s");
        assert_eq!(h(600), "10m");
        assert_eq!(h(3 * 3600 + 60), "3h1m");
        assert_eq!(h(10 * 3600), "10h");
        assert_eq!(h(3 * 86400 + 3600), "3d1h");
        assert_eq!(h(30 * 86400), "30d");
        assert_eq!(h(3 * 365 * 86400), "3y");
        assert_eq!(h(9 * 365 * 86400), "9y");
    }
}
