//! Secrets and ConfigMaps as kube-apiserver decodes and validates them, for the embedded API
//! and `tether validate`.
//!
//! Decoding comes first: a body whose fields do not fit the Go types (`data: {a: 5}` in a
//! ConfigMap, `type: 5` or a value that is not base64 in a Secret) is a 400 with
//! `encoding/json`'s text, wrapped as the API server wraps decoding errors
//! (`<Kind> in version "v1" cannot be handled as a <Kind>: …`). Then validation
//! (`k8s.io/kubernetes/pkg/apis/core/validation`): keys must be config keys, a ConfigMap key
//! may not be in both `data` and `binaryData`. Secret values never appear in a message.

use std::collections::BTreeSet;

use serde_json::Value;

use super::errors::{BadValue, Cause};

/// `validation.DNS1123SubdomainMaxLength`: the longest config key.
const MAX_KEY_LENGTH: usize = 253;

/// What `encoding/json` decodes a field into.
#[derive(Clone, Copy)]
enum GoType {
    /// A string-kinded type (`string`, `v1.SecretType`).
    Str(&'static str),
    /// `bool`.
    Bool,
    /// `[]uint8`: a base64 string.
    Bytes,
    /// `map[string]<elem>`.
    Map(&'static GoType),
}

impl GoType {
    fn name(self) -> String {
        match self {
            GoType::Str(name) => name.to_owned(),
            GoType::Bool => "bool".to_owned(),
            GoType::Bytes => "[]uint8".to_owned(),
            GoType::Map(elem) => format!("map[string]{}", elem.name()),
        }
    }
}

const STRING: GoType = GoType::Str("string");
const STRING_MAP: GoType = GoType::Map(&STRING);
const BYTES_MAP: GoType = GoType::Map(&GoType::Bytes);

/// The top-level fields of the kinds checked here that are not `metadata`, in the order
/// their errors are reported (the object's keys are visited sorted).
fn fields(kind: &str) -> &'static [(&'static str, GoType)] {
    match kind {
        "Secret" => &[
            ("data", BYTES_MAP),
            ("immutable", GoType::Bool),
            ("stringData", STRING_MAP),
            ("type", GoType::Str("v1.SecretType")),
        ],
        "ConfigMap" => &[
            ("binaryData", BYTES_MAP),
            ("data", STRING_MAP),
            ("immutable", GoType::Bool),
        ],
        _ => &[],
    }
}

/// The 400 message of a real API server when a `v1` `kind` object does not decode, `None`
/// when it does (or the kind is not one of those checked here). Like `encoding/json`, the
/// first problem found is reported.
pub fn decode_error(kind: &str, obj: &Value) -> Option<String> {
    fields(kind).iter().find_map(|(field, ty)| {
        let value = obj.get(*field)?;
        decode_value(kind, field, *ty, value)
            .map(|e| format!("{kind} in version \"v1\" cannot be handled as a {kind}: {e}"))
    })
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// `encoding/json`'s error for `value` in field `field` of type `ty`.
fn decode_value(kind: &str, field: &str, ty: GoType, value: &Value) -> Option<String> {
    let mismatch = || {
        Some(format!(
            "json: cannot unmarshal {} into Go struct field {kind}.{field} of type {}",
            json_kind(value),
            ty.name()
        ))
    };
    match (ty, value) {
        // A JSON null leaves the Go value as it is.
        (_, Value::Null) | (GoType::Str(_), Value::String(_)) | (GoType::Bool, Value::Bool(_)) => {
            None
        }
        (GoType::Bytes, Value::String(s)) => go_base64_error(s.as_bytes())
            .map(|at| format!("illegal base64 data at input byte {at}")),
        (GoType::Map(elem), Value::Object(map)) => map
            .values()
            .find_map(|v| decode_value(kind, field, *elem, v)),
        _ => mismatch(),
    }
}

/// Where Go's `base64.StdEncoding` stops decoding `src` (the offset its
/// `CorruptInputError` reports: `illegal base64 data at input byte N`), `None` when it
/// decodes. Padding is required, `\r` and `\n` are skipped, trailing bits are ignored.
fn go_base64_error(src: &[u8]) -> Option<usize> {
    let mut si = 0;
    while si < src.len() {
        match go_base64_quantum(src, si) {
            Ok(next) => si = next,
            Err(at) => return Some(at),
        }
    }
    None
}

/// One 4-character quantum from `si`, as `decodeQuantum`: the next offset, or the error's.
fn go_base64_quantum(src: &[u8], mut si: usize) -> Result<usize, usize> {
    let is_newline = |b: u8| b == b'\n' || b == b'\r';
    let mut j = 0;
    while j < 4 {
        if si == src.len() {
            return if j == 0 { Ok(si) } else { Err(si - j) };
        }
        let c = src[si];
        si += 1;
        if c.is_ascii_alphanumeric() || c == b'+' || c == b'/' {
            j += 1;
            continue;
        }
        if is_newline(c) {
            continue;
        }
        if c != b'=' || j < 2 {
            return Err(si - 1);
        }
        if j == 2 {
            // "==" is expected, the first "=" is consumed.
            while si < src.len() && is_newline(src[si]) {
                si += 1;
            }
            if si == src.len() {
                return Err(src.len());
            }
            if src[si] != b'=' {
                return Err(si - 1);
            }
            si += 1;
        }
        while si < src.len() && is_newline(src[si]) {
            si += 1;
        }
        // Anything after the padding is trailing garbage.
        return if si < src.len() { Err(si) } else { Ok(si) };
    }
    Ok(si)
}

/// The 422 causes of a decoded `v1` `kind` object (its `metadata` is validated elsewhere):
/// config keys, for ConfigMaps keys in both `data` and `binaryData`, for Secrets the keys
/// their `type` requires; on an update of `old`, the `type` of a Secret and the contents of
/// an `immutable` object may not change.
pub fn validate(kind: &str, obj: &Value, old: Option<&Value>) -> Vec<Cause> {
    let mut causes = validate_keys(kind, obj);
    if kind == "Secret" {
        secret_type_keys(obj, &mut causes);
    }
    if let Some(old) = old {
        update_rules(kind, obj, old, &mut causes);
    }
    causes
}

/// The keys a Secret of a well-known `type` must have (`ValidateSecret`).
fn secret_type_keys(obj: &Value, causes: &mut Vec<Cause>) {
    let data = obj.get("data").and_then(Value::as_object);
    let has = |key: &str| data.is_some_and(|d| d.contains_key(key));
    let mut require = |key: &str| causes.push(Cause::required(&format!("data[{key}]"), ""));
    match obj.get("type").and_then(Value::as_str).unwrap_or_default() {
        "kubernetes.io/service-account-token" => {
            let named = obj
                .pointer("/metadata/annotations/kubernetes.io~1service-account.name")
                .and_then(Value::as_str)
                .is_some_and(|n| !n.is_empty());
            if !named {
                causes.push(Cause::required(
                    "metadata.annotations[kubernetes.io/service-account.name]",
                    "",
                ));
            }
        }
        "kubernetes.io/dockercfg" if !has(".dockercfg") => require(".dockercfg"),
        "kubernetes.io/dockerconfigjson" if !has(".dockerconfigjson") => {
            require(".dockerconfigjson");
        }
        "kubernetes.io/basic-auth" if !has("username") && !has("password") => {
            require("username");
            require("password");
        }
        "kubernetes.io/ssh-auth"
            if data
                .and_then(|d| d.get("ssh-privatekey"))
                .and_then(Value::as_str)
                .is_none_or(str::is_empty) =>
        {
            require("ssh-privatekey");
        }
        "kubernetes.io/tls" => {
            for key in ["tls.crt", "tls.key"] {
                if !has(key) {
                    require(key);
                }
            }
        }
        _ => {}
    }
}

/// `ValidateSecretUpdate` and `ValidateConfigMapUpdate`: a Secret's `type` is immutable;
/// an object marked `immutable: true` keeps its mark and its contents.
fn update_rules(kind: &str, obj: &Value, old: &Value, causes: &mut Vec<Cause>) {
    let contents: &[&str] = match kind {
        "Secret" => &["data"],
        "ConfigMap" => &["data", "binaryData"],
        _ => return,
    };
    if kind == "Secret" {
        let type_of = |o: &Value| o.get("type").cloned().unwrap_or(Value::Null);
        let new_type = type_of(obj);
        if new_type != type_of(old) {
            causes.push(Cause::invalid(
                "type",
                BadValue::Json(&new_type),
                "field is immutable",
            ));
        }
    }
    let immutable = |o: &Value| o.get("immutable").and_then(Value::as_bool) == Some(true);
    if !immutable(old) {
        return;
    }
    const DETAIL: &str = "field is immutable when `immutable` is set";
    if !immutable(obj) {
        causes.push(Cause::forbidden("immutable", DETAIL));
    }
    let empty = Value::Object(serde_json::Map::new());
    for field in contents {
        // An empty map and no map are the same Go value.
        let of = |o: &Value| match o.get(*field) {
            None | Some(Value::Null) => empty.clone(),
            Some(v) => v.clone(),
        };
        if of(obj) != of(old) {
            causes.push(Cause::forbidden(field, DETAIL));
        }
    }
}

/// Config keys, and ConfigMap keys in both maps.
fn validate_keys(kind: &str, obj: &Value) -> Vec<Cause> {
    let keys = |field: &str| -> BTreeSet<&str> {
        obj.get(field)
            .and_then(Value::as_object)
            .map(|m| m.keys().map(String::as_str).collect())
            .unwrap_or_default()
    };
    let mut causes = Vec::new();
    match kind {
        "Secret" => {
            // stringData is merged into data before validation.
            let mut data = keys("data");
            data.extend(keys("stringData"));
            for key in data {
                config_key(&format!("data[{key}]"), key, &mut causes);
            }
        }
        "ConfigMap" => {
            let data = keys("data");
            let binary = keys("binaryData");
            for (field, these, others, other_name) in [
                ("data", &data, &binary, "binaryData"),
                ("binaryData", &binary, &data, "data"),
            ] {
                for key in these {
                    let path = format!("{field}[{key}]");
                    config_key(&path, key, &mut causes);
                    if others.contains(key) {
                        causes.push(Cause::invalid(
                            &path,
                            BadValue::Str(key),
                            &format!("duplicate of key present in {other_name}"),
                        ));
                    }
                }
            }
        }
        _ => {}
    }
    causes
}

/// `validation.IsConfigMapKey`.
fn config_key(path: &str, key: &str, causes: &mut Vec<Cause>) {
    let mut invalid = |detail: &str| causes.push(Cause::invalid(path, BadValue::Str(key), detail));
    if key.len() > MAX_KEY_LENGTH {
        invalid(&format!("must be no more than {MAX_KEY_LENGTH} characters"));
    }
    if key.is_empty()
        || !key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        invalid(
            "a valid config key must consist of alphanumeric characters, '-', '_' or '.' \
             (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is \
             '[-._a-zA-Z0-9]+')",
        );
    }
    match key {
        "." => invalid("must not be '.'"),
        ".." => invalid("must not be '..'"),
        k if k.starts_with("..") => invalid("must not start with '..'"),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn base64_errors_are_reported_at_the_byte_go_reports() {
        for ok in [
            "",
            "YQ==",
            "YWI=",
            "YWJj",
            "YWJj\nZGVm",
            "YQ==\n",
            "YW\r\nI=",
        ] {
            assert_eq!(go_base64_error(ok.as_bytes()), None, "{ok:?}");
        }
        for (bad, at) in [
            ("YQ", 0),
            ("YWJjZA", 4),
            ("abc!", 3),
            ("not base64!", 3),
            ("Y===", 1),
            ("YQ=", 3),
            ("YQ=x", 2),
            ("YQ==YQ==", 4),
            ("YWJj ZGVm", 4),
            ("c2VjcmV0-", 8),
        ] {
            assert_eq!(go_base64_error(bad.as_bytes()), Some(at), "{bad:?}");
        }
    }

    #[test]
    fn values_that_do_not_fit_the_go_types_are_decoding_errors() {
        let cases = [
            (
                "ConfigMap",
                json!({"data": {"a": 5}}),
                "json: cannot unmarshal number into Go struct field ConfigMap.data of type string",
            ),
            (
                "ConfigMap",
                json!({"data": ["x"]}),
                "json: cannot unmarshal array into Go struct field ConfigMap.data of type map[string]string",
            ),
            (
                "ConfigMap",
                json!({"binaryData": {"b": "%%"}}),
                "illegal base64 data at input byte 0",
            ),
            (
                "Secret",
                json!({"type": 5}),
                "json: cannot unmarshal number into Go struct field Secret.type of type v1.SecretType",
            ),
            (
                "Secret",
                json!({"data": {"k": true}}),
                "json: cannot unmarshal bool into Go struct field Secret.data of type []uint8",
            ),
            (
                "Secret",
                json!({"stringData": {"k": {}}}),
                "json: cannot unmarshal object into Go struct field Secret.stringData of type string",
            ),
            (
                "Secret",
                json!({"immutable": "yes"}),
                "json: cannot unmarshal string into Go struct field Secret.immutable of type bool",
            ),
        ];
        for (kind, obj, error) in cases {
            assert_eq!(
                decode_error(kind, &obj),
                Some(format!(
                    "{kind} in version \"v1\" cannot be handled as a {kind}: {error}"
                )),
                "{obj}"
            );
        }
        for (kind, obj) in [
            (
                "Secret",
                json!({"data": {"k": "c2VjcmV0", "n": null}, "type": "Opaque"}),
            ),
            ("ConfigMap", json!({"data": {"a": "5"}, "binaryData": null})),
            ("Namespace", json!({"data": 5})),
        ] {
            assert_eq!(decode_error(kind, &obj), None, "{obj}");
        }
    }

    #[test]
    fn secrets_of_well_known_types_need_their_keys_and_keep_their_type() {
        let messages = |obj: Value, old: Option<Value>| -> Vec<String> {
            validate("Secret", &obj, old.as_ref())
                .iter()
                .map(ToString::to_string)
                .collect()
        };
        assert_eq!(
            messages(
                json!({"type": "kubernetes.io/tls", "data": {"tls.crt": "eA=="}}),
                None
            ),
            vec!["data[tls.key]: Required value"]
        );
        assert_eq!(
            messages(json!({"type": "kubernetes.io/basic-auth"}), None),
            vec![
                "data[username]: Required value",
                "data[password]: Required value"
            ]
        );
        assert!(
            messages(
                json!({"type": "kubernetes.io/basic-auth", "data": {"password": ""}}),
                None
            )
            .is_empty()
        );
        assert_eq!(
            messages(json!({"type": "kubernetes.io/service-account-token"}), None),
            vec!["metadata.annotations[kubernetes.io/service-account.name]: Required value"]
        );
        assert_eq!(
            messages(
                json!({"type": "example.com/x"}),
                Some(json!({"type": "Opaque"}))
            ),
            vec![r#"type: Invalid value: "example.com/x": field is immutable"#]
        );
        let old = json!({"type": "Opaque", "immutable": true, "data": {"k": "eA=="}});
        assert_eq!(
            messages(
                json!({"type": "Opaque", "data": {"k": "eQ=="}}),
                Some(old.clone())
            ),
            vec![
                "immutable: Forbidden: field is immutable when `immutable` is set",
                "data: Forbidden: field is immutable when `immutable` is set",
            ]
        );
        assert!(messages(old.clone(), Some(old)).is_empty());
    }

    #[test]
    fn keys_must_be_config_keys_and_not_in_both_maps() {
        let messages = |kind: &str, obj: Value| -> Vec<String> {
            validate(kind, &obj, None)
                .iter()
                .map(ToString::to_string)
                .collect()
        };
        assert_eq!(
            messages(
                "Secret",
                json!({"data": {"a/b": "eA=="}, "stringData": {"ok": "x"}})
            ),
            vec![
                "data[a/b]: Invalid value: \"a/b\": a valid config key must consist of \
                 alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  \
                 or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')"
            ]
        );
        assert_eq!(
            messages("Secret", json!({"stringData": {"..x": "v"}})),
            vec!["data[..x]: Invalid value: \"..x\": must not start with '..'"]
        );
        assert_eq!(
            messages(
                "ConfigMap",
                json!({"data": {"k": "v"}, "binaryData": {"k": "eA=="}})
            ),
            vec![
                "data[k]: Invalid value: \"k\": duplicate of key present in binaryData",
                "binaryData[k]: Invalid value: \"k\": duplicate of key present in data",
            ]
        );
        let long = "k".repeat(254);
        assert_eq!(
            messages("ConfigMap", json!({"data": {long.clone(): "v"}})),
            vec![format!(
                "data[{long}]: Invalid value: \"{long}\": must be no more than 253 characters"
            )]
        );
        assert!(
            messages(
                "ConfigMap",
                json!({"data": {"key.name": "v", "KEY_NAME-2": "w"}})
            )
            .is_empty()
        );
    }
}
