//! Object metadata rules shared by every write: names, timestamps, uids, the generation bump
//! rule and the finalizer rules of a deleting object.

use rand::Rng;
use serde_json::{Map, Value, json};

use super::status::StatusCause;

/// The current time as the API server writes `metav1.Time` (RFC 3339, seconds, UTC).
pub fn now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// A fresh object uid.
pub fn new_uid() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// `generateName` + 5 random characters from the alphabet the real server uses.
pub fn generate_name(prefix: &str) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    let suffix: String = (0..5)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    format!("{prefix}{suffix}")
}

/// Checks a name as a DNS-1123 subdomain (the rule for every kind served here).
pub fn validate_name(name: &str) -> Result<(), StatusCause> {
    let valid = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    if valid {
        Ok(())
    } else {
        Err(StatusCause {
            reason: "FieldValueInvalid".into(),
            field: "metadata.name".into(),
            message: format!(
                "Invalid value: \"{name}\": a lowercase RFC 1123 subdomain must consist of lower \
                 case alphanumeric characters, '-' or '.', and must start and end with an \
                 alphanumeric character (e.g. 'example.com', regex used for validation is \
                 '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
            ),
        })
    }
}

/// A string field of `metadata`.
pub fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj.get("metadata")?.get(field)?.as_str()
}

/// `metadata`, created when missing (and replaced when not an object).
pub fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.is_object() {
        *obj = Value::Object(Map::new());
    }
    let map = obj
        .as_object_mut()
        .unwrap_or_else(|| unreachable!("object ensured above"));
    let meta = map
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    if !meta.is_object() {
        *meta = Value::Object(Map::new());
    }
    meta.as_object_mut()
        .unwrap_or_else(|| unreachable!("object ensured above"))
}

/// The generation rule: it moves only when something outside `metadata` (and outside
/// `status`, when status is a subresource) changed.
pub fn spec_changed(old: &Value, new: &Value, status_subresource: bool) -> bool {
    let relevant = |v: &Value| -> Map<String, Value> {
        v.as_object()
            .map(|m| {
                m.iter()
                    .filter(|(k, _)| {
                        let ignored = matches!(k.as_str(), "metadata" | "apiVersion" | "kind")
                            || (status_subresource && k.as_str() == "status");
                        !ignored
                    })
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default()
    };
    relevant(old) != relevant(new)
}

/// The finalizers of an object.
pub fn finalizers(obj: &Value) -> Vec<String> {
    obj.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Finalizers present in `new` but not in `old`: forbidden once deletion has started.
pub fn added_finalizers(old: &Value, new: &Value) -> Vec<String> {
    let before = finalizers(old);
    finalizers(new)
        .into_iter()
        .filter(|f| !before.contains(f))
        .collect()
}

/// The `Forbidden` cause for finalizers added to a deleting object (the real message).
pub fn finalizers_forbidden(added: &[String]) -> StatusCause {
    let list: Vec<String> = added.iter().map(|f| format!("{f:?}")).collect();
    StatusCause {
        reason: "FieldValueForbidden".into(),
        field: "metadata.finalizers".into(),
        message: format!(
            "Forbidden: no new finalizers can be added if the object is being deleted, found \
             new finalizers []string{{{}}}",
            list.join(", ")
        ),
    }
}

/// Secrets: `stringData` is merged into `data` (base64) on write, as the real server does.
pub fn fold_string_data(obj: &mut Value) {
    use base64::Engine as _;
    let Some(map) = obj.as_object_mut() else {
        return;
    };
    let Some(Value::Object(string_data)) = map.remove("stringData") else {
        return;
    };
    let data = map.entry("data").or_insert_with(|| json!({}));
    if !data.is_object() {
        *data = json!({});
    }
    if let Some(data) = data.as_object_mut() {
        for (k, v) in string_data {
            if let Value::String(s) = v {
                data.insert(
                    k,
                    Value::String(base64::engine::general_purpose::STANDARD.encode(s)),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_moves_on_spec_changes_only() {
        let old = json!({"metadata": {"labels": {"a": "1"}}, "spec": {"n": 1}, "status": {"x": 1}});
        let labels =
            json!({"metadata": {"labels": {"a": "2"}}, "spec": {"n": 1}, "status": {"x": 1}});
        let status =
            json!({"metadata": {"labels": {"a": "1"}}, "spec": {"n": 1}, "status": {"x": 2}});
        let spec =
            json!({"metadata": {"labels": {"a": "1"}}, "spec": {"n": 2}, "status": {"x": 1}});
        assert!(!spec_changed(&old, &labels, true));
        assert!(!spec_changed(&old, &status, true));
        assert!(spec_changed(&old, &status, false));
        assert!(spec_changed(&old, &spec, true));
    }

    #[test]
    fn names_must_be_dns_subdomains() {
        assert!(validate_name("web-1.prod").is_ok());
        assert!(validate_name("Web").is_err());
        assert!(validate_name("-web").is_err());
        assert!(validate_name("").is_err());
    }

    #[test]
    fn generated_names_keep_the_prefix_and_add_five_characters() {
        let name = generate_name("job-");
        assert!(name.starts_with("job-"));
        assert_eq!(name.len(), 9);
        assert!(validate_name(&name).is_ok());
    }

    #[test]
    fn only_new_finalizers_count_as_added_and_the_message_matches_the_real_server() {
        let old = json!({"metadata": {"finalizers": ["a"]}});
        let new = json!({"metadata": {"finalizers": ["a", "b"]}});
        let added = added_finalizers(&old, &new);
        assert_eq!(added, vec!["b".to_owned()]);
        assert!(
            finalizers_forbidden(&added)
                .message
                .ends_with("found new finalizers []string{\"b\"}")
        );
        assert!(added_finalizers(&new, &old).is_empty());
    }

    #[test]
    fn secret_string_data_is_folded_into_base64_data() {
        let mut secret = json!({"stringData": {"token": "abc"}, "data": {"x": "eA=="}});
        fold_string_data(&mut secret);
        assert_eq!(secret, json!({"data": {"x": "eA==", "token": "YWJj"}}));
    }
}
