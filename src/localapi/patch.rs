//! Request bodies that change an existing object: JSON merge patch (RFC 7386), JSON patch
//! (RFC 6902), strategic merge patch (treated as a merge patch: none of the kinds served here
//! have strategic list semantics; `$`-directives are dropped), and the body of a server-side
//! apply (YAML or JSON).

use serde_json::Value;

use super::status::ApiError;

/// The patch flavours, from the request's `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    /// `application/merge-patch+json`.
    Merge,
    /// `application/json-patch+json`.
    Json,
    /// `application/strategic-merge-patch+json`.
    Strategic,
    /// `application/apply-patch+yaml`.
    Apply,
}

impl PatchType {
    /// Parses a `Content-Type` header value.
    pub fn from_content_type(content_type: &str) -> Result<Self, ApiError> {
        let media = content_type
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        match media.as_str() {
            "application/merge-patch+json" => Ok(PatchType::Merge),
            "application/json-patch+json" => Ok(PatchType::Json),
            "application/strategic-merge-patch+json" => Ok(PatchType::Strategic),
            "application/apply-patch+yaml" | "application/apply-patch+json" => Ok(PatchType::Apply),
            _ => Err(ApiError::unsupported_media_type(content_type)),
        }
    }
}

/// Decodes a JSON body into a value, with a clear 400 on malformed input.
pub fn decode_json(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("failed to decode request body as JSON: {e}")))
}

/// Decodes a server-side apply body (YAML, of which JSON is a subset).
pub fn decode_apply(body: &[u8]) -> Result<Value, ApiError> {
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        return Ok(v);
    }
    let text = std::str::from_utf8(body)
        .map_err(|_| ApiError::bad_request("failed to decode apply body: not UTF-8"))?;
    serde_saphyr::from_str::<Value>(text)
        .map_err(|e| ApiError::bad_request(format!("failed to decode apply body as YAML: {e}")))
}

/// Applies a merge, strategic or JSON patch to `target`.
pub fn apply_patch(target: &mut Value, patch_type: PatchType, body: &[u8]) -> Result<(), ApiError> {
    match patch_type {
        PatchType::Merge => {
            let patch = decode_json(body)?;
            require_object(&patch)?;
            merge_patch(target, &patch);
            Ok(())
        }
        PatchType::Strategic => {
            let mut patch = decode_json(body)?;
            require_object(&patch)?;
            strip_directives(&mut patch);
            merge_patch(target, &patch);
            Ok(())
        }
        PatchType::Json => {
            let patch: json_patch::Patch = serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("failed to decode JSON patch: {e}")))?;
            json_patch::patch(target, &patch)
                .map_err(|e| ApiError::bad_request(format!("failed to apply JSON patch: {e}")))
        }
        PatchType::Apply => Err(ApiError::internal(
            "server-side apply is not a patch (handled by the apply path)",
        )),
    }
}

fn require_object(patch: &Value) -> Result<(), ApiError> {
    if patch.is_object() {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "failed to apply patch: a merge patch must be a JSON object",
        ))
    }
}

/// RFC 7386: objects merge recursively, `null` deletes, anything else replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch_map) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(serde_json::Map::new());
    }
    if let Value::Object(target_map) = target {
        for (k, v) in patch_map {
            if v.is_null() {
                target_map.remove(k);
            } else {
                merge_patch(target_map.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

/// Drops strategic-merge directives (`$patch`, `$setElementOrder/…`, `$retainKeys`, …).
fn strip_directives(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.retain(|k, _| !k.starts_with('$'));
            map.values_mut().for_each(strip_directives);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_directives),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_merges_objects_deletes_nulls_and_replaces_lists() {
        let mut target = json!({"a": {"b": 1, "c": 2}, "l": [1, 2], "x": 1});
        let patch = json!({"a": {"b": null, "d": 3}, "l": [3], "x": null});
        apply_patch(&mut target, PatchType::Merge, patch.to_string().as_bytes()).unwrap();
        assert_eq!(target, json!({"a": {"c": 2, "d": 3}, "l": [3]}));
    }

    #[test]
    fn strategic_patches_merge_and_drop_directives() {
        let mut target = json!({"data": {"a": "1"}});
        let patch = json!({"$setElementOrder/x": [], "data": {"b": "2", "$retainKeys": ["b"]}});
        apply_patch(
            &mut target,
            PatchType::Strategic,
            patch.to_string().as_bytes(),
        )
        .unwrap();
        assert_eq!(target, json!({"data": {"a": "1", "b": "2"}}));
    }

    #[test]
    fn json_patch_operations_apply_in_order_and_failed_tests_are_bad_requests() {
        let mut target = json!({"spec": {"n": 1}});
        let ops = json!([{"op": "replace", "path": "/spec/n", "value": 2},
                         {"op": "add", "path": "/spec/m", "value": 3}]);
        apply_patch(&mut target, PatchType::Json, ops.to_string().as_bytes()).unwrap();
        assert_eq!(target, json!({"spec": {"n": 2, "m": 3}}));
        let failing = json!([{"op": "test", "path": "/spec/n", "value": 7}]);
        let err =
            apply_patch(&mut target, PatchType::Json, failing.to_string().as_bytes()).unwrap_err();
        assert_eq!(err.code, 400);
    }

    #[test]
    fn unknown_patch_content_types_are_unsupported_media_types() {
        let err = PatchType::from_content_type("text/plain").unwrap_err();
        assert_eq!(err.code, 415);
        assert_eq!(
            PatchType::from_content_type("application/apply-patch+yaml; charset=utf-8").unwrap(),
            PatchType::Apply
        );
    }

    #[test]
    fn apply_bodies_may_be_yaml_and_malformed_ones_are_rejected_clearly() {
        let v = decode_apply(b"apiVersion: v1\nkind: ConfigMap\ndata:\n  a: b\n").unwrap();
        assert_eq!(v["data"]["a"], "b");
        let err = decode_apply(b"a: [unclosed").unwrap_err();
        assert_eq!(err.code, 400);
        assert!(err.message.contains("YAML"), "{}", err.message);
    }
}
