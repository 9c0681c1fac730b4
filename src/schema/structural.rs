//! The structural schema of one CRD version, compiled, and the admission pipeline over it:
//! prune → default → validate metadata → validate the schema → validate list types → CEL.
//!
//! Wording follows kube-openapi's validation errors as the API server converts them to
//! field errors (`kubeOpenAPIResultToFieldErrors`): e.g. `spec.replicas: Invalid value:
//! "string": spec.replicas in body must be of type integer: "string"`.

use std::collections::BTreeMap;

use regex::Regex;
use serde_json::{Map, Value};

use super::cel::{NodeRules, has_rules};
use super::errors::{BadValue, Cause, Invalid, go_float, go_quote};
use super::meta::{self, json_type};
use super::{FieldValidation, SchemaError};

/// Why a schema node could not be compiled.
#[derive(Debug)]
pub(crate) enum CompileError {
    Pattern {
        path: String,
        pattern: String,
        message: String,
    },
    Rule {
        path: String,
        message: String,
    },
}

impl CompileError {
    pub(crate) fn into_schema_error(self, crd: &str, version: &str) -> SchemaError {
        let (crd, version) = (crd.to_string(), version.to_string());
        match self {
            CompileError::Pattern {
                path,
                pattern,
                message,
            } => SchemaError::Pattern {
                crd,
                version,
                path: display_path(&path),
                pattern,
                message,
            },
            CompileError::Rule { path, message } => SchemaError::Rule {
                crd,
                version,
                path: display_path(&path),
                message,
            },
        }
    }
}

fn display_path(path: &str) -> String {
    if path.is_empty() {
        "<root>".into()
    } else {
        path.into()
    }
}

/// `additionalProperties` of an object node.
#[derive(Debug)]
enum Additional {
    /// Absent or `false`: only declared properties.
    None,
    /// `true`: any value.
    Any,
    /// A schema every extra value must match.
    Schema(Box<Node>),
}

/// One compiled node of a structural schema.
#[derive(Debug)]
pub(crate) struct Node {
    ty: Option<String>,
    nullable: bool,
    int_or_string: bool,
    preserve_unknown: bool,
    embedded: bool,
    /// The root of a custom resource (apiVersion/kind/metadata are implicit).
    resource_root: bool,
    properties: BTreeMap<String, Node>,
    required: Vec<String>,
    additional: Additional,
    items: Option<Box<Node>>,
    default: Option<Value>,
    enumeration: Vec<Value>,
    maximum: Option<f64>,
    exclusive_maximum: bool,
    minimum: Option<f64>,
    exclusive_minimum: bool,
    multiple_of: Option<f64>,
    max_length: Option<u64>,
    min_length: Option<u64>,
    pattern: Option<(String, Regex)>,
    format: Option<String>,
    max_items: Option<u64>,
    min_items: Option<u64>,
    unique_items: bool,
    max_properties: Option<u64>,
    min_properties: Option<u64>,
    list_type: Option<String>,
    list_map_keys: Vec<String>,
    rules: Option<NodeRules>,
}

fn child_path(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn index_path(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

fn key_path(path: &str, key: &str) -> String {
    format!("{path}[{key}]")
}

impl Node {
    /// Compiles `schema` (an `openAPIV3Schema` as JSON). `resource_root` marks the root of
    /// a custom resource.
    pub(crate) fn compile(
        schema: &Value,
        resource_root: bool,
        path: &str,
    ) -> Result<Self, CompileError> {
        let str_of = |k: &str| schema.get(k).and_then(Value::as_str).map(str::to_string);
        let u64_of = |k: &str| schema.get(k).and_then(Value::as_u64);
        let f64_of = |k: &str| schema.get(k).and_then(Value::as_f64);
        let bool_of = |k: &str| schema.get(k).and_then(Value::as_bool).unwrap_or(false);

        let mut properties = BTreeMap::new();
        if let Some(props) = schema.get("properties").and_then(Value::as_object) {
            for (name, prop) in props {
                properties.insert(
                    name.clone(),
                    Node::compile(prop, false, &child_path(path, name))?,
                );
            }
        }
        let additional = match schema.get("additionalProperties") {
            Some(Value::Bool(true)) => Additional::Any,
            Some(s @ Value::Object(_)) => {
                Additional::Schema(Box::new(Node::compile(s, false, &key_path(path, "*"))?))
            }
            _ => Additional::None,
        };
        let items = match schema.get("items") {
            Some(s @ Value::Object(_)) => {
                Some(Box::new(Node::compile(s, false, &format!("{path}[*]"))?))
            }
            _ => None,
        };
        let pattern = match str_of("pattern") {
            Some(p) => {
                let re = Regex::new(&p).map_err(|e| CompileError::Pattern {
                    path: path.to_string(),
                    pattern: p.clone(),
                    message: e.to_string(),
                })?;
                Some((p, re))
            }
            None => None,
        };
        let rules = if has_rules(schema) {
            Some(
                NodeRules::compile(schema).map_err(|message| CompileError::Rule {
                    path: path.to_string(),
                    message,
                })?,
            )
        } else {
            None
        };
        Ok(Node {
            ty: str_of("type"),
            nullable: bool_of("nullable"),
            int_or_string: bool_of("x-kubernetes-int-or-string"),
            preserve_unknown: bool_of("x-kubernetes-preserve-unknown-fields"),
            embedded: bool_of("x-kubernetes-embedded-resource"),
            resource_root,
            properties,
            required: schema
                .get("required")
                .and_then(Value::as_array)
                .map(|r| {
                    r.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default(),
            additional,
            items,
            default: schema.get("default").cloned(),
            enumeration: schema
                .get("enum")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default(),
            maximum: f64_of("maximum"),
            exclusive_maximum: bool_of("exclusiveMaximum"),
            minimum: f64_of("minimum"),
            exclusive_minimum: bool_of("exclusiveMinimum"),
            multiple_of: f64_of("multipleOf"),
            max_length: u64_of("maxLength"),
            min_length: u64_of("minLength"),
            pattern,
            format: str_of("format"),
            max_items: u64_of("maxItems"),
            min_items: u64_of("minItems"),
            unique_items: bool_of("uniqueItems"),
            max_properties: u64_of("maxProperties"),
            min_properties: u64_of("minProperties"),
            list_type: str_of("x-kubernetes-list-type"),
            list_map_keys: schema
                .get("x-kubernetes-list-map-keys")
                .and_then(Value::as_array)
                .map(|r| {
                    r.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default(),
            rules,
        })
    }

    /// apiVersion, kind and metadata are implicit on resource roots and embedded resources.
    fn has_object_meta(&self) -> bool {
        self.resource_root || self.embedded
    }
}

/// The admission pipeline for one object (see the module docs).
pub(crate) fn admit(
    root: &Node,
    old: Option<&Value>,
    obj: &mut Value,
    validation: FieldValidation,
    version: &str,
) -> Result<Vec<String>, Invalid> {
    if !obj.is_object() {
        return Err(Invalid::single(
            Cause::type_invalid(
                "<nil>",
                BadValue::Str(json_type(obj)),
                &format!("must be of type object: {}", go_quote(json_type(obj))),
            ),
            version,
        ));
    }
    let mut unknown = Vec::new();
    prune(root, obj, "", &mut unknown);
    unknown.sort();
    unknown.dedup();
    let mut warnings = Vec::new();
    match validation {
        FieldValidation::Strict if !unknown.is_empty() => {
            return Err(Invalid {
                causes: unknown.iter().map(|f| Cause::unknown(f)).collect(),
                version: version.to_string(),
            });
        }
        FieldValidation::Warn => {
            warnings.extend(
                unknown
                    .iter()
                    .map(|f| format!("unknown field {}", go_quote(f))),
            );
        }
        _ => {}
    }
    prune_nulls(Some(root), obj);
    default(root, obj);

    let mut errs = Vec::new();
    meta::validate(obj.get("metadata"), "metadata", true, &mut errs);
    validate(root, obj, old, "", &mut errs);
    list_types(root, obj, "", &mut errs);
    if errs.iter().any(Cause::blocks_cel) {
        errs.push(Cause::cel_skipped());
    } else {
        run_cel(root, obj, old, "", &mut errs, &mut warnings);
    }
    if errs.is_empty() {
        Ok(warnings)
    } else {
        Err(Invalid {
            causes: errs,
            version: version.to_string(),
        })
    }
}

/// Removes fields the schema does not declare (unless preserved), recording their paths.
fn prune(node: &Node, value: &mut Value, path: &str, unknown: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            let keys: Vec<String> = map.keys().cloned().collect();
            for key in keys {
                let child = child_path(path, &key);
                if node.has_object_meta() && (key == "apiVersion" || key == "kind") {
                    continue;
                }
                if node.has_object_meta() && key == "metadata" {
                    if let Some(m) = map.get_mut("metadata") {
                        meta::prune(m, &child, unknown);
                    }
                    continue;
                }
                if let Some(prop) = node.properties.get(&key) {
                    if let Some(v) = map.get_mut(&key) {
                        prune(prop, v, &child, unknown);
                    }
                    continue;
                }
                match &node.additional {
                    Additional::Schema(schema) => {
                        if let Some(v) = map.get_mut(&key) {
                            prune(schema, v, &key_path(path, &key), unknown);
                        }
                    }
                    Additional::Any => {}
                    Additional::None if node.preserve_unknown => {}
                    Additional::None => {
                        map.remove(&key);
                        unknown.push(child);
                    }
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_node) = &node.items {
                for (i, item) in items.iter_mut().enumerate() {
                    prune(item_node, item, &index_path(path, i), unknown);
                }
            }
        }
        _ => {}
    }
}

/// The schema of `key` in an object of `node`: its property, else `additionalProperties`
/// (upstream `getSchemaForField`).
fn field_schema<'a>(node: Option<&'a Node>, key: &str) -> Option<&'a Node> {
    let node = node?;
    node.properties.get(key).or(match &node.additional {
        Additional::Schema(schema) => Some(schema),
        Additional::None | Additional::Any => None,
    })
}

/// Drops the `null`s of fields whose schema is not `nullable` and has no `default`, in
/// properties, `additionalProperties` values and nested in lists (upstream
/// `PruneNonNullableNullsWithoutDefaults`): a real API server does this before defaulting
/// and validation, so `required` fields and CEL rules see such a field as absent. Nulls
/// with a default are left for [`default`]; list items are not removed.
fn prune_nulls(node: Option<&Node>, value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.retain(|key, v| {
                !(v.is_null()
                    && field_schema(node, key).is_some_and(|s| !s.nullable && s.default.is_none()))
            });
            for (key, v) in map.iter_mut() {
                prune_nulls(field_schema(node, key), v);
            }
        }
        Value::Array(items) => {
            let item_node = node.and_then(|n| n.items.as_deref());
            for item in items {
                prune_nulls(item_node, item);
            }
        }
        _ => {}
    }
}

/// Applies `default`s: a missing (or non-nullable null) property with a default gets it,
/// and defaults nest into what exists (upstream `Default`).
fn default(node: &Node, value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, prop) in &node.properties {
                if node.has_object_meta() && key == "metadata" {
                    continue;
                }
                let is_null = map.get(key).is_some_and(Value::is_null);
                if ((is_null && !prop.nullable) || !map.contains_key(key))
                    && let Some(d) = &prop.default
                {
                    map.insert(key.clone(), d.clone());
                }
                if let Some(v) = map.get_mut(key) {
                    default(prop, v);
                }
            }
            if let Additional::Schema(schema) = &node.additional {
                for (key, v) in map.iter_mut() {
                    if !node.properties.contains_key(key) {
                        default(schema, v);
                    }
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_node) = &node.items {
                for item in items.iter_mut() {
                    if item.is_null()
                        && !item_node.nullable
                        && let Some(d) = &item_node.default
                    {
                        *item = d.clone();
                    }
                    default(item_node, item);
                }
            }
        }
        _ => {}
    }
}

/// The structural (OpenAPI) validation of one node and its descendants. Unchanged values
/// (equal to the correlated old value) are not re-validated: the API server ratchets them.
fn validate(node: &Node, value: &Value, old: Option<&Value>, path: &str, errs: &mut Vec<Cause>) {
    if old.is_some_and(|o| o == value) && !path.is_empty() {
        return;
    }
    let name = if path.is_empty() {
        "body".to_string()
    } else {
        path.to_string()
    };
    let field = if path.is_empty() { "<nil>" } else { path };
    let body = |msg: &str| format!("{name} in body {msg}");

    if value.is_null() {
        if !node.nullable && (node.ty.is_some() || node.int_or_string) {
            let ty = expected_type(node);
            errs.push(Cause::type_invalid(
                field,
                BadValue::Str("null"),
                &body(&format!("must be of type {ty}: \"null\"")),
            ));
        }
        return;
    }
    if !type_matches(node, value) {
        let ty = expected_type(node);
        let actual = json_type(value);
        errs.push(Cause::type_invalid(
            field,
            BadValue::Str(actual),
            &body(&format!("must be of type {ty}: {}", go_quote(actual))),
        ));
        return;
    }
    if !node.enumeration.is_empty() && !node.enumeration.contains(value) {
        let supported: Vec<String> = node
            .enumeration
            .iter()
            .map(|v| match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect();
        errs.push(Cause::not_supported(field, value, &supported));
    }
    match value {
        Value::String(s) => validate_string(node, s, value, field, &body, errs),
        Value::Number(n) => validate_number(node, n, value, field, &body, errs),
        Value::Array(items) => {
            let len = items.len();
            if let Some(max) = node.max_items
                && len as u64 > max
            {
                errs.push(Cause::too_many(field, len, max));
            }
            if let Some(min) = node.min_items
                && (len as u64) < min
            {
                errs.push(Cause::invalid(
                    field,
                    BadValue::Int(len as i64),
                    &body(&format!("should have at least {min} items")),
                ));
            }
            if node.unique_items && (1..len).any(|i| items[..i].contains(&items[i])) {
                errs.push(Cause::invalid(
                    field,
                    BadValue::Str(""),
                    &body("shouldn't contain duplicates"),
                ));
            }
            if let Some(item_node) = &node.items {
                let olds = correlate_list(node, items, old);
                for (i, item) in items.iter().enumerate() {
                    validate(item_node, item, olds[i], &index_path(path, i), errs);
                }
            }
        }
        Value::Object(map) => {
            for req in &node.required {
                if !map.contains_key(req) {
                    errs.push(Cause::required(&child_path(path, req), ""));
                }
            }
            let count = map.len() as u64;
            if let Some(max) = node.max_properties
                && count > max
            {
                errs.push(Cause::too_many(field, map.len(), max));
            }
            if let Some(min) = node.min_properties
                && count < min
            {
                errs.push(Cause::invalid(
                    field,
                    BadValue::Int(count as i64),
                    &body(&format!("should have at least {min} properties")),
                ));
            }
            for (key, v) in map {
                if node.has_object_meta()
                    && (key == "metadata" || key == "apiVersion" || key == "kind")
                {
                    continue;
                }
                let child_old = old.and_then(|o| o.get(key));
                if let Some(prop) = node.properties.get(key) {
                    validate(prop, v, child_old, &child_path(path, key), errs);
                } else if let Additional::Schema(schema) = &node.additional {
                    validate(schema, v, child_old, &key_path(path, key), errs);
                }
            }
        }
        Value::Bool(_) | Value::Null => {}
    }
}

fn validate_string(
    node: &Node,
    s: &str,
    value: &Value,
    field: &str,
    body: &dyn Fn(&str) -> String,
    errs: &mut Vec<Cause>,
) {
    let chars = s.chars().count() as u64;
    if let Some(max) = node.max_length
        && chars > max
    {
        errs.push(Cause::too_long(field, max));
    }
    if let Some(min) = node.min_length
        && chars < min
    {
        errs.push(Cause::invalid(
            field,
            BadValue::Json(value),
            &body(&format!("should be at least {min} chars long")),
        ));
    }
    if let Some((pattern, re)) = &node.pattern
        && !re.is_match(s)
    {
        errs.push(Cause::invalid(
            field,
            BadValue::Json(value),
            &body(&format!("should match '{pattern}'")),
        ));
    }
    if let Some(format) = &node.format
        && !format_matches(format, s)
    {
        errs.push(Cause::type_invalid(
            field,
            BadValue::Json(value),
            &body(&format!("must be of type {format}: {}", go_quote(s))),
        ));
    }
}

fn validate_number(
    node: &Node,
    n: &serde_json::Number,
    value: &Value,
    field: &str,
    body: &dyn Fn(&str) -> String,
    errs: &mut Vec<Cause>,
) {
    let Some(x) = n.as_f64() else { return };
    if let Some(max) = node.maximum {
        let fails = if node.exclusive_maximum {
            x >= max
        } else {
            x > max
        };
        if fails {
            let op = if node.exclusive_maximum {
                "less than"
            } else {
                "less than or equal to"
            };
            errs.push(Cause::invalid(
                field,
                BadValue::Json(value),
                &body(&format!("should be {op} {}", go_float(max))),
            ));
        }
    }
    if let Some(min) = node.minimum {
        let fails = if node.exclusive_minimum {
            x <= min
        } else {
            x < min
        };
        if fails {
            let op = if node.exclusive_minimum {
                "greater than"
            } else {
                "greater than or equal to"
            };
            errs.push(Cause::invalid(
                field,
                BadValue::Json(value),
                &body(&format!("should be {op} {}", go_float(min))),
            ));
        }
    }
    if let Some(m) = node.multiple_of
        && m > 0.0
        && (x / m).fract() != 0.0
    {
        errs.push(Cause::invalid(
            field,
            BadValue::Json(value),
            &body(&format!("should be a multiple of {}", go_float(m))),
        ));
    }
}

fn expected_type(node: &Node) -> String {
    if node.int_or_string {
        "integer or string".to_string()
    } else {
        node.ty.clone().unwrap_or_default()
    }
}

fn type_matches(node: &Node, value: &Value) -> bool {
    let is_integer = |v: &Value| match v {
        Value::Number(n) => {
            n.is_i64() || n.is_u64() || n.as_f64().is_some_and(|f| f.fract() == 0.0)
        }
        _ => false,
    };
    if node.int_or_string {
        return value.is_string() || is_integer(value);
    }
    match node.ty.as_deref() {
        None | Some("") => true,
        Some("string") => value.is_string(),
        Some("integer") => is_integer(value),
        Some("number") => value.is_number(),
        Some("boolean") => value.is_boolean(),
        Some("object") => value.is_object(),
        Some("array") => value.is_array(),
        Some(_) => true,
    }
}

/// The formats the API server checks (`strfmt` registry); unknown formats pass.
fn format_matches(format: &str, s: &str) -> bool {
    match format {
        "date-time" => s.parse::<jiff::Timestamp>().is_ok(),
        "date" => s.parse::<jiff::civil::Date>().is_ok() && s.len() == 10,
        "duration" => is_go_duration(s),
        "int-or-string" => true,
        "uuid" => uuid::Uuid::parse_str(s).is_ok() && s.len() == 36,
        "byte" => is_base64(s),
        _ => true,
    }
}

/// A Go `time.ParseDuration` string (`1h30m`, `5s`, `-1.5h`, `0`), which is what strfmt's
/// `duration` accepts in practice for Kubernetes manifests.
pub(crate) fn is_go_duration(s: &str) -> bool {
    let s = s.strip_prefix(['-', '+']).unwrap_or(s);
    if s == "0" {
        return true;
    }
    if s.is_empty() {
        return false;
    }
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 || rest[..num_len] == *"." {
            return false;
        }
        rest = &rest[num_len..];
        let unit = ["ns", "us", "µs", "μs", "ms", "s", "m", "h"]
            .iter()
            .filter(|u| rest.starts_with(*u))
            .max_by_key(|u| u.len());
        match unit {
            Some(u) => rest = &rest[u.len()..],
            None => return false,
        }
    }
    true
}

fn is_base64(s: &str) -> bool {
    let bytes = s.as_bytes();
    bytes.len().is_multiple_of(4)
        && bytes.iter().enumerate().all(|(i, b)| {
            b.is_ascii_alphanumeric()
                || *b == b'+'
                || *b == b'/'
                || (*b == b'=' && i + 2 >= bytes.len())
        })
}

/// For each new item of a list, the old item it correlates with: by key for
/// `x-kubernetes-list-type: map`, none for other lists.
fn correlate_list<'a>(
    node: &Node,
    items: &[Value],
    old: Option<&'a Value>,
) -> Vec<Option<&'a Value>> {
    let old_items = match (node.list_type.as_deref(), old.and_then(Value::as_array)) {
        (Some("map"), Some(old_items)) => old_items,
        _ => return vec![None; items.len()],
    };
    items
        .iter()
        .map(|item| {
            let key = map_key(node, item)?;
            old_items
                .iter()
                .find(|o| map_key(node, o).as_ref() == Some(&key))
        })
        .collect()
}

fn map_key(node: &Node, item: &Value) -> Option<Map<String, Value>> {
    let obj = item.as_object()?;
    Some(
        node.list_map_keys
            .iter()
            .filter_map(|k| obj.get(k).map(|v| (k.clone(), v.clone())))
            .collect(),
    )
}

/// `x-kubernetes-list-type: set` and `map` uniqueness (`ValidateListSetsAndMaps`).
fn list_types(node: &Node, value: &Value, path: &str, errs: &mut Vec<Cause>) {
    match value {
        Value::Array(items) => {
            match node.list_type.as_deref() {
                Some("set") => {
                    for i in 1..items.len() {
                        if items[..i].contains(&items[i]) {
                            errs.push(Cause::duplicate(
                                &index_path(path, i),
                                BadValue::Json(&items[i]),
                            ));
                        }
                    }
                }
                Some("map") => {
                    let keys: Vec<Option<Map<String, Value>>> =
                        items.iter().map(|it| map_key(node, it)).collect();
                    for i in 1..keys.len() {
                        if let Some(key) = &keys[i]
                            && keys[..i].iter().any(|k| k.as_ref() == Some(key))
                        {
                            errs.push(Cause::duplicate(
                                &index_path(path, i),
                                BadValue::Json(&Value::Object(key.clone())),
                            ));
                        }
                    }
                }
                _ => {}
            }
            if let Some(item_node) = &node.items {
                for (i, item) in items.iter().enumerate() {
                    list_types(item_node, item, &index_path(path, i), errs);
                }
            }
        }
        Value::Object(map) => {
            for (key, v) in map {
                if let Some(prop) = node.properties.get(key) {
                    list_types(prop, v, &child_path(path, key), errs);
                } else if let Additional::Schema(schema) = &node.additional {
                    list_types(schema, v, &key_path(path, key), errs);
                }
            }
        }
        _ => {}
    }
}

/// Evaluates every node's CEL rules, pairing each value with its correlated old value.
fn run_cel(
    node: &Node,
    value: &Value,
    old: Option<&Value>,
    path: &str,
    errs: &mut Vec<Cause>,
    warnings: &mut Vec<String>,
) {
    if let Some(rules) = &node.rules {
        rules.evaluate(path, value, old, errs, warnings);
    }
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                let child_old = old.and_then(|o| o.get(key));
                if let Some(prop) = node.properties.get(key) {
                    run_cel(prop, v, child_old, &child_path(path, key), errs, warnings);
                } else if let Additional::Schema(schema) = &node.additional {
                    run_cel(schema, v, child_old, &key_path(path, key), errs, warnings);
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_node) = &node.items {
                let olds = correlate_list(node, items, old);
                for (i, item) in items.iter().enumerate() {
                    run_cel(
                        item_node,
                        item,
                        olds[i],
                        &index_path(path, i),
                        errs,
                        warnings,
                    );
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn root(spec: Value) -> Node {
        let schema = json!({
            "type": "object",
            "properties": {
                "apiVersion": {"type": "string"},
                "kind": {"type": "string"},
                "metadata": {"type": "object"},
                "spec": spec,
            }
        });
        Node::compile(&schema, true, "").unwrap_or_else(|e| panic!("{e:?}"))
    }

    fn obj(spec: Value) -> Value {
        json!({"apiVersion": "tether.dev/v1alpha1", "kind": "Environment", "metadata": {"name": "web"}, "spec": spec})
    }

    fn admit_with(
        node: &Node,
        old: Option<&Value>,
        value: &mut Value,
        v: FieldValidation,
    ) -> Result<Vec<String>, Vec<String>> {
        admit(node, old, value, v, "v1alpha1")
            .map_err(|e| e.causes.iter().map(ToString::to_string).collect())
    }

    fn errors(node: &Node, mut value: Value) -> Vec<String> {
        admit_with(node, None, &mut value, FieldValidation::Ignore)
            .err()
            .unwrap_or_default()
    }

    #[test]
    fn unknown_fields_are_pruned_and_warned_about() {
        let node = root(json!({"type": "object", "properties": {"a": {"type": "string"}}}));
        let mut value = obj(json!({"a": "x", "foo": 1, "nested": {"b": 2}}));
        let warnings =
            admit_with(&node, None, &mut value, FieldValidation::Warn).unwrap_or_default();
        assert_eq!(value["spec"], json!({"a": "x"}));
        assert_eq!(
            warnings,
            vec![
                r#"unknown field "spec.foo""#,
                r#"unknown field "spec.nested""#
            ]
        );
    }

    #[test]
    fn unknown_fields_are_an_error_under_strict() {
        let node = root(json!({"type": "object", "properties": {"a": {"type": "string"}}}));
        let mut value = obj(json!({"a": "x", "foo": 1}));
        let err = admit(&node, None, &mut value, FieldValidation::Strict, "v1alpha1").err();
        let err = err.unwrap_or_else(|| panic!("strict must fail"));
        assert!(err.is_strict_decoding());
        assert_eq!(err.causes[0].message, r#"unknown field "spec.foo""#);
    }

    #[test]
    fn ignore_prunes_silently() {
        let node = root(json!({"type": "object", "properties": {"a": {"type": "string"}}}));
        let mut value = obj(json!({"foo": 1}));
        assert_eq!(
            admit_with(&node, None, &mut value, FieldValidation::Ignore),
            Ok(vec![])
        );
        assert_eq!(value["spec"], json!({}));
    }

    #[test]
    fn preserved_and_embedded_fields_survive_pruning() {
        let node = root(json!({"type": "object", "properties": {
            "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
            "template": {"type": "object", "x-kubernetes-embedded-resource": true, "properties": {"data": {"type": "object", "additionalProperties": {"type": "string"}}}},
            "items": {"type": "array", "items": {"type": "object", "properties": {"n": {"type": "string"}}}}
        }}));
        let mut value = obj(json!({
            "free": {"anything": {"goes": 1}},
            "template": {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "bogus": 1}, "data": {"k": "v"}, "extra": 1},
            "items": [{"n": "a", "x": 1}]
        }));
        let warnings =
            admit_with(&node, None, &mut value, FieldValidation::Warn).unwrap_or_default();
        assert_eq!(value["spec"]["free"], json!({"anything": {"goes": 1}}));
        assert_eq!(value["spec"]["template"]["kind"], "ConfigMap");
        assert_eq!(value["spec"]["template"]["data"], json!({"k": "v"}));
        assert_eq!(
            warnings,
            vec![
                r#"unknown field "spec.items[0].x""#,
                r#"unknown field "spec.template.extra""#,
                r#"unknown field "spec.template.metadata.bogus""#
            ]
        );
    }

    #[test]
    fn defaults_fill_missing_fields_including_nested_objects_that_exist() {
        let node = root(json!({"type": "object", "properties": {
            "driftPolicy": {"type": "string", "default": "Correct"},
            "render": {"type": "object", "properties": {"region": {"type": "string", "default": "oregon"}}},
            "fly": {"type": "object", "properties": {"org": {"type": "string", "default": "personal"}}},
            "interval": {"type": "string", "default": "5m"},
            "services": {"type": "array", "items": {"type": "object", "properties": {"plan": {"type": "string", "default": "starter"}}}}
        }}));
        let mut value =
            obj(json!({"render": {}, "interval": null, "services": [{}, {"plan": "pro"}]}));
        assert!(admit_with(&node, None, &mut value, FieldValidation::Strict).is_ok());
        assert_eq!(
            value["spec"],
            json!({"driftPolicy": "Correct", "render": {"region": "oregon"}, "interval": "5m", "services": [{"plan": "starter"}, {"plan": "pro"}]})
        );
    }

    #[test]
    fn a_defaulted_object_gets_its_own_nested_defaults() {
        let node = root(json!({"type": "object", "properties": {
            "policy": {"type": "object", "default": {}, "properties": {"lockTimeout": {"type": "string", "default": "5s"}}}
        }}));
        let mut value = obj(json!({}));
        assert!(admit_with(&node, None, &mut value, FieldValidation::Strict).is_ok());
        assert_eq!(value["spec"], json!({"policy": {"lockTimeout": "5s"}}));
    }

    #[test]
    fn wrong_types_are_reported_with_kube_openapi_wording() {
        let node = root(
            json!({"type": "object", "properties": {"instances": {"type": "integer"}, "tags": {"type": "array", "items": {"type": "string"}}}}),
        );
        let errs = errors(&node, obj(json!({"instances": "two", "tags": ["a", 1]})));
        assert_eq!(
            errs,
            vec![
                r#"spec.instances: Invalid value: "string": spec.instances in body must be of type integer: "string""#,
                r#"spec.tags[1]: Invalid value: "integer": spec.tags[1] in body must be of type string: "integer""#,
                r#"<nil>: Invalid value: null: some validation rules were not checked because the object was invalid; correct the existing errors to complete validation"#,
            ]
        );
    }

    #[test]
    fn nullable_fields_accept_null_and_int_or_string_accepts_both() {
        let node = root(json!({"type": "object", "properties": {
            "n": {"type": "string", "nullable": true},
            "port": {"x-kubernetes-int-or-string": true}
        }}));
        let mut value = obj(json!({"n": null, "port": "http"}));
        assert!(admit_with(&node, None, &mut value, FieldValidation::Strict).is_ok());
        assert_eq!(value["spec"]["n"], Value::Null);
        assert!(errors(&node, obj(json!({"port": 8080}))).is_empty());
        assert_eq!(
            errors(&node, obj(json!({"port": true})))[0],
            r#"spec.port: Invalid value: "boolean": spec.port in body must be of type integer or string: "boolean""#
        );
    }

    #[test]
    fn nulls_of_non_nullable_fields_without_defaults_are_pruned_before_validation() {
        let node = root(
            json!({"type": "object", "required": ["name"], "properties": {
                "name": {"type": "string"},
                "port": {"type": "integer", "default": 80},
                "note": {"type": "string", "nullable": true},
                "env": {"type": "object", "additionalProperties": {"type": "string"}},
                "items": {"type": "array", "items": {
                    "type": "object", "required": ["id"], "properties": {"id": {"type": "string"}}
                }},
            }}),
        );
        let mut value = obj(json!({"name": "n", "port": null, "note": null,
                                   "env": {"A": "1", "B": null}, "items": [{"id": "x"}]}));
        assert!(admit_with(&node, None, &mut value, FieldValidation::Strict).is_ok());
        assert_eq!(
            value["spec"],
            json!({"name": "n", "port": 80, "note": null, "env": {"A": "1"}, "items": [{"id": "x"}]})
        );
        assert_eq!(
            errors(&node, obj(json!({"name": null, "items": [{"id": null}]}))),
            vec![
                "spec.name: Required value",
                "spec.items[0].id: Required value",
                "<nil>: Invalid value: null: some validation rules were not checked because the \
                 object was invalid; correct the existing errors to complete validation",
            ]
        );
    }

    #[test]
    fn cel_rules_see_a_pruned_null_as_absent() {
        let node = root(json!({"type": "object", "properties": {
            "mode": {"type": "string"},
            "tags": {"type": "object", "additionalProperties": {"type": "string"}},
        }, "x-kubernetes-validations": [
            {"rule": "has(self.mode)", "message": "mode must be set"},
            {"rule": "!has(self.tags) || !('b' in self.tags)", "message": "tag b is reserved"},
        ]}));
        assert_eq!(
            errors(
                &node,
                obj(json!({"mode": null, "tags": {"a": "1", "b": null}}))
            ),
            vec!["spec: Invalid value: mode must be set"]
        );
    }

    #[test]
    fn enums_required_and_bounds_are_checked() {
        let node = root(
            json!({"type": "object", "required": ["region"], "properties": {
                "region": {"type": "string"},
                "driftPolicy": {"type": "string", "enum": ["Correct", "Report"]},
                "instances": {"type": "integer", "minimum": 1, "maximum": 10},
                "name": {"type": "string", "minLength": 2, "maxLength": 5, "pattern": "^[a-z]+$"},
                "regions": {"type": "array", "minItems": 1, "maxItems": 2, "items": {"type": "string"}}
            }}),
        );
        let errs = errors(
            &node,
            obj(
                json!({"driftPolicy": "Fix", "instances": 11, "name": "ABCDEFG", "regions": ["a", "b", "c"]}),
            ),
        );
        assert_eq!(
            errs,
            vec![
                "spec.region: Required value",
                r#"spec.driftPolicy: Unsupported value: "Fix": supported values: "Correct", "Report""#,
                "spec.instances: Invalid value: 11: spec.instances in body should be less than or equal to 10",
                "spec.name: Too long: may not be longer than 5",
                r#"spec.name: Invalid value: "ABCDEFG": spec.name in body should match '^[a-z]+$'"#,
                "spec.regions: Too many: 3: must have at most 2 items",
                r#"<nil>: Invalid value: null: some validation rules were not checked because the object was invalid; correct the existing errors to complete validation"#,
            ]
        );
        let errs = errors(
            &node,
            obj(json!({"region": "x", "instances": 0, "name": "a", "regions": []})),
        );
        assert_eq!(
            errs,
            vec![
                "spec.instances: Invalid value: 0: spec.instances in body should be greater than or equal to 1",
                r#"spec.name: Invalid value: "a": spec.name in body should be at least 2 chars long"#,
                "spec.regions: Invalid value: 0: spec.regions in body should have at least 1 items",
            ]
        );
    }

    #[test]
    fn formats_date_time_and_duration_are_checked() {
        let node = root(json!({"type": "object", "properties": {
            "at": {"type": "string", "format": "date-time"},
            "every": {"type": "string", "format": "duration"}
        }}));
        assert!(
            errors(
                &node,
                obj(json!({"at": "2026-11-22T04:00:00Z", "every": "1h30m"}))
            )
            .is_empty()
        );
        let errs = errors(&node, obj(json!({"at": "yesterday", "every": "often"})));
        assert_eq!(
            errs[0],
            r#"spec.at: Invalid value: "yesterday": spec.at in body must be of type date-time: "yesterday""#
        );
        assert_eq!(
            errs[1],
            r#"spec.every: Invalid value: "often": spec.every in body must be of type duration: "often""#
        );
    }

    #[test]
    fn go_durations_parse_like_time_parse_duration() {
        for ok in ["0", "5s", "1h30m", "1.5h", "-2m", "300ms", "10us"] {
            assert!(is_go_duration(ok), "{ok}");
        }
        for bad in ["", "5", "h", "1d", "5 s", "."] {
            assert!(!is_go_duration(bad), "{bad}");
        }
    }

    #[test]
    fn list_type_set_and_map_reject_duplicates() {
        let node = root(json!({"type": "object", "properties": {
            "domains": {"type": "array", "x-kubernetes-list-type": "set", "items": {"type": "string"}},
            "ports": {"type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["port"],
                      "items": {"type": "object", "required": ["port"], "properties": {"port": {"type": "integer"}, "name": {"type": "string"}}}}
        }}));
        let errs = errors(
            &node,
            obj(
                json!({"domains": ["a.com", "b.com", "a.com"], "ports": [{"port": 80}, {"port": 80, "name": "x"}]}),
            ),
        );
        assert_eq!(
            errs,
            vec![
                r#"spec.domains[2]: Duplicate value: "a.com""#,
                r#"spec.ports[1]: Duplicate value: map[string]interface {}{"port":80}"#,
            ]
        );
    }

    #[test]
    fn metadata_is_validated_as_object_meta() {
        let node = root(json!({"type": "object"}));
        let errs = errors(
            &node,
            json!({"apiVersion": "tether.dev/v1alpha1", "kind": "Environment", "metadata": {}, "spec": {}}),
        );
        assert_eq!(
            errs[0],
            "metadata.name: Required value: name or generateName is required"
        );
    }

    #[test]
    fn cel_rules_run_after_schema_checks_with_correlated_old_values() {
        let node = root(json!({"type": "object", "properties": {
            "environmentRef": {"type": "string", "x-kubernetes-validations": [{"rule": "self == oldSelf", "message": "environmentRef is immutable"}]},
            "services": {"type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"], "items": {
                "type": "object", "required": ["name"],
                "properties": {"name": {"type": "string"}, "plan": {"type": "string", "x-kubernetes-validations": [{"rule": "self == oldSelf", "message": "plan is immutable"}]}}
            }}
        }}));
        let old = obj(
            json!({"environmentRef": "prod", "services": [{"name": "a", "plan": "x"}, {"name": "b", "plan": "y"}]}),
        );
        // Reordered list: correlated by key, so no immutability failure.
        let mut same = obj(
            json!({"environmentRef": "prod", "services": [{"name": "b", "plan": "y"}, {"name": "a", "plan": "x"}, {"name": "c", "plan": "z"}]}),
        );
        assert_eq!(
            admit_with(&node, Some(&old), &mut same, FieldValidation::Strict),
            Ok(vec![])
        );
        let mut changed = obj(
            json!({"environmentRef": "staging", "services": [{"name": "b", "plan": "changed"}]}),
        );
        assert_eq!(
            admit_with(&node, Some(&old), &mut changed, FieldValidation::Strict),
            Err(vec![
                r#"spec.environmentRef: Invalid value: "staging": environmentRef is immutable"#
                    .to_string(),
                r#"spec.services[0].plan: Invalid value: "changed": plan is immutable"#.to_string(),
            ])
        );
        let mut created = obj(json!({"environmentRef": "staging"}));
        assert_eq!(
            admit_with(&node, None, &mut created, FieldValidation::Strict),
            Ok(vec![])
        );
    }

    #[test]
    fn unchanged_invalid_fields_ratchet_on_update() {
        let node = root(
            json!({"type": "object", "properties": {"name": {"type": "string", "maxLength": 3}, "other": {"type": "string"}}}),
        );
        let old = obj(json!({"name": "toolong", "other": "a"}));
        let mut value = obj(json!({"name": "toolong", "other": "b"}));
        assert_eq!(
            admit_with(&node, Some(&old), &mut value, FieldValidation::Strict),
            Ok(vec![])
        );
        let mut changed = obj(json!({"name": "stilltoolong", "other": "b"}));
        assert!(admit_with(&node, Some(&old), &mut changed, FieldValidation::Strict).is_err());
    }

    #[test]
    fn a_bad_pattern_fails_compilation() {
        let schema =
            json!({"type": "object", "properties": {"a": {"type": "string", "pattern": "("}}});
        assert!(matches!(
            Node::compile(&schema, true, ""),
            Err(CompileError::Pattern { .. })
        ));
    }
}
