//! `metadata` of a custom resource (or an embedded resource): pruned to the fields of
//! ObjectMeta and validated as the API server's `ValidateObjectMetaAccessor` does
//! (name required unless generateName, DNS-1123 subdomain names, label and annotation
//! keys and values).

use std::sync::LazyLock;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use regex::Regex;
use serde_json::{Map, Value};

use super::errors::{BadValue, Cause};

/// The fields of `ObjectMeta`; anything else in `metadata` is unknown and pruned.
const OBJECT_META_FIELDS: &[&str] = &[
    "name",
    "generateName",
    "namespace",
    "selfLink",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "labels",
    "annotations",
    "ownerReferences",
    "finalizers",
    "managedFields",
];

const DNS1123_SUBDOMAIN: &str = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*";
const QUALIFIED_NAME: &str = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]";
const LABEL_VALUE: &str = "(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?";
const TOTAL_ANNOTATION_SIZE_LIMIT: usize = 256 * 1024;

fn anchored(pattern: &str) -> Regex {
    // The patterns are constants of this file, tested below.
    Regex::new(&format!("^(?:{pattern})$")).unwrap_or_else(|e| panic!("bad constant regex: {e}"))
}

static DNS1123_SUBDOMAIN_RE: LazyLock<Regex> = LazyLock::new(|| anchored(DNS1123_SUBDOMAIN));
static QUALIFIED_NAME_RE: LazyLock<Regex> = LazyLock::new(|| anchored(QUALIFIED_NAME));
static LABEL_VALUE_RE: LazyLock<Regex> = LazyLock::new(|| anchored(LABEL_VALUE));

/// Removes the fields ObjectMeta does not have, recording their paths in `unknown`.
pub(crate) fn prune(meta: &mut Value, path: &str, unknown: &mut Vec<String>) {
    if let Value::Object(map) = meta {
        let extra: Vec<String> = map
            .keys()
            .filter(|k| !OBJECT_META_FIELDS.contains(&k.as_str()))
            .cloned()
            .collect();
        for key in extra {
            map.remove(&key);
            unknown.push(format!("{path}.{key}"));
        }
    }
}

/// Validates `metadata` at `path` as ObjectMeta of a resource whose names are DNS-1123
/// subdomains. `require_name` is false for embedded resources.
pub(crate) fn validate(
    meta: Option<&Value>,
    path: &str,
    require_name: bool,
    errs: &mut Vec<Cause>,
) {
    let empty = Map::new();
    let map = match meta {
        None | Some(Value::Null) => &empty,
        Some(Value::Object(map)) => map,
        Some(other) => {
            errs.push(Cause::type_invalid(
                path,
                BadValue::Str(json_type(other)),
                &format!(
                    "{path} in body must be of type object: {:?}",
                    json_type(other)
                ),
            ));
            return;
        }
    };
    let errors_before = errs.len();
    let name = string_field(map, "name", path, errs);
    let generate_name = string_field(map, "generateName", path, errs);
    let name_path = format!("{path}.name");
    match name {
        Some(name) if !name.is_empty() => {
            for msg in dns1123_subdomain_errors(name) {
                errs.push(Cause::invalid(&name_path, BadValue::Str(name), &msg));
            }
        }
        _ if require_name && generate_name.is_none_or(str::is_empty) => {
            errs.push(Cause::required(
                &name_path,
                "name or generateName is required",
            ));
        }
        _ => {}
    }
    if let Some(prefix) = generate_name.filter(|g| !g.is_empty()) {
        // The API server validates the prefix with a trailing '-' masked off.
        let trimmed = prefix.strip_suffix('-').unwrap_or(prefix);
        for msg in dns1123_subdomain_errors(trimmed) {
            errs.push(Cause::invalid(
                &format!("{path}.generateName"),
                BadValue::Str(prefix),
                &msg,
            ));
        }
    }
    let labels_path = format!("{path}.labels");
    if let Some(labels) = string_map(map.get("labels"), &labels_path, errs) {
        for (key, value) in labels {
            for msg in qualified_name_errors(key) {
                errs.push(Cause::invalid(&labels_path, BadValue::Str(key), &msg));
            }
            for msg in label_value_errors(value) {
                errs.push(Cause::invalid(&labels_path, BadValue::Str(value), &msg));
            }
        }
    }
    let annotations_path = format!("{path}.annotations");
    if let Some(annotations) = string_map(map.get("annotations"), &annotations_path, errs) {
        let mut total = 0;
        for (key, value) in annotations {
            for msg in qualified_name_errors(&key.to_ascii_lowercase()) {
                errs.push(Cause::invalid(&annotations_path, BadValue::Str(key), &msg));
            }
            total += key.len() + value.len();
        }
        if total > TOTAL_ANNOTATION_SIZE_LIMIT {
            errs.push(Cause::too_long_bytes(
                &annotations_path,
                TOTAL_ANNOTATION_SIZE_LIMIT as u64,
            ));
        }
    }
    // The API server decodes `metadata` into ObjectMeta (`objectmeta.Coerce`): a field of
    // the wrong type (`namespace: {}`, `finalizers: "x"`, a timestamp that is not one) is
    // `metadata: Invalid value`, never stored. Reported only when the checks above found
    // nothing, which already name the field.
    if errs.len() == errors_before
        && let Some(meta) = meta
        && let Err(e) = serde_json::from_value::<ObjectMeta>(meta.clone())
    {
        errs.push(Cause::invalid(path, BadValue::Json(meta), &e.to_string()));
    }
}

fn string_field<'a>(
    map: &'a Map<String, Value>,
    key: &str,
    path: &str,
    errs: &mut Vec<Cause>,
) -> Option<&'a str> {
    match map.get(key) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(other) => {
            let field = format!("{path}.{key}");
            errs.push(Cause::type_invalid(
                &field,
                BadValue::Str(json_type(other)),
                &format!(
                    "{field} in body must be of type string: {:?}",
                    json_type(other)
                ),
            ));
            None
        }
    }
}

/// A `map[string]string` field; reports entries that are not strings.
fn string_map<'a>(
    value: Option<&'a Value>,
    path: &str,
    errs: &mut Vec<Cause>,
) -> Option<Vec<(&'a str, &'a str)>> {
    match value {
        None | Some(Value::Null) => None,
        Some(Value::Object(map)) => {
            let mut out = Vec::with_capacity(map.len());
            for (k, v) in map {
                match v {
                    Value::String(s) => out.push((k.as_str(), s.as_str())),
                    other => {
                        let field = format!("{path}.{k}");
                        errs.push(Cause::type_invalid(
                            &field,
                            BadValue::Str(json_type(other)),
                            &format!(
                                "{field} in body must be of type string: {:?}",
                                json_type(other)
                            ),
                        ));
                    }
                }
            }
            Some(out)
        }
        Some(other) => {
            errs.push(Cause::type_invalid(
                path,
                BadValue::Str(json_type(other)),
                &format!(
                    "{path} in body must be of type object: {:?}",
                    json_type(other)
                ),
            ));
            None
        }
    }
}

/// The JSON type name kube-openapi reports for a value.
pub(crate) fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// `validation.IsDNS1123Subdomain`.
pub(crate) fn dns1123_subdomain_errors(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > 253 {
        errs.push("must be no more than 253 characters".to_string());
    }
    if !DNS1123_SUBDOMAIN_RE.is_match(value) {
        errs.push(format!(
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '{DNS1123_SUBDOMAIN}')"
        ));
    }
    errs
}

/// `validation.IsQualifiedName` (label and annotation keys).
fn qualified_name_errors(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    let (prefix, name) = match value.split_once('/') {
        None => (None, value),
        Some((p, n)) if !n.contains('/') => (Some(p), n),
        Some(_) => {
            return vec![format!(
                "a qualified name must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '{QUALIFIED_NAME}') with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"
            )];
        }
    };
    if let Some(prefix) = prefix {
        if prefix.is_empty() {
            errs.push("prefix part must be non-empty".to_string());
        } else {
            errs.extend(
                dns1123_subdomain_errors(prefix)
                    .into_iter()
                    .map(|m| format!("prefix part {m}")),
            );
        }
    }
    if name.is_empty() {
        errs.push("name part must be non-empty".to_string());
    } else if name.len() > 63 {
        errs.push("name part must be no more than 63 characters".to_string());
    }
    if !name.is_empty() && !QUALIFIED_NAME_RE.is_match(name) {
        errs.push(format!(
            "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '{QUALIFIED_NAME}')"
        ));
    }
    errs
}

/// `validation.IsValidLabelValue`.
fn label_value_errors(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > 63 {
        errs.push("must be no more than 63 characters".to_string());
    }
    if !LABEL_VALUE_RE.is_match(value) {
        errs.push(format!(
            "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '{LABEL_VALUE}')"
        ));
    }
    errs
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn errors_of(meta: Value) -> Vec<String> {
        let mut errs = Vec::new();
        validate(Some(&meta), "metadata", true, &mut errs);
        errs.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn a_missing_name_is_required_unless_generate_name_is_set() {
        assert_eq!(
            errors_of(json!({})),
            vec!["metadata.name: Required value: name or generateName is required"]
        );
        assert!(errors_of(json!({"generateName": "web-"})).is_empty());
    }

    #[test]
    fn names_must_be_dns_subdomains() {
        let errs = errors_of(json!({"name": "Web_1"}));
        assert_eq!(errs.len(), 1);
        assert!(errs[0].starts_with(
            r#"metadata.name: Invalid value: "Web_1": a lowercase RFC 1123 subdomain"#
        ));
        assert!(errors_of(json!({"name": "web.prod-1"})).is_empty());
        let long = "a".repeat(254);
        assert!(
            errors_of(json!({"name": long}))[0].ends_with("must be no more than 253 characters")
        );
    }

    #[test]
    fn label_keys_and_values_are_checked() {
        let errs = errors_of(
            json!({"name": "a", "labels": {"app.kubernetes.io/name": "ok", "bad key": "x", "k": "bad value!"}}),
        );
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(errs.iter().any(|e| {
            e.starts_with(r#"metadata.labels: Invalid value: "bad key": name part must consist"#)
        }));
        assert!(errs.iter().any(|e| e.starts_with(
            r#"metadata.labels: Invalid value: "bad value!": a valid label must be"#
        )));
    }

    #[test]
    fn labels_must_be_strings() {
        let errs = errors_of(json!({"name": "a", "labels": {"n": 1}}));
        assert_eq!(
            errs,
            vec![
                r#"metadata.labels.n: Invalid value: "integer": metadata.labels.n in body must be of type string: "integer""#
            ]
        );
    }

    #[test]
    fn fields_that_do_not_decode_as_object_meta_are_invalid() {
        for meta in [
            json!({"name": "a", "namespace": {"x": true}}),
            json!({"name": "a", "finalizers": "x"}),
            json!({"name": "a", "generation": "1"}),
            json!({"name": "a", "creationTimestamp": "yesterday"}),
            json!({"name": "a", "ownerReferences": [1]}),
        ] {
            let errs = errors_of(meta.clone());
            assert_eq!(errs.len(), 1, "{meta}: {errs:?}");
            assert!(errs[0].starts_with("metadata: Invalid value: "), "{errs:?}");
        }
        assert!(errors_of(json!({"name": "a", "namespace": "ns", "generation": 2})).is_empty());
    }

    #[test]
    fn unknown_metadata_fields_are_pruned() {
        let mut meta = json!({"name": "a", "colour": "red"});
        let mut unknown = Vec::new();
        prune(&mut meta, "metadata", &mut unknown);
        assert_eq!(meta, json!({"name": "a"}));
        assert_eq!(unknown, vec!["metadata.colour"]);
    }
}
