//! JSONPath in the Kubernetes dialect (printer columns, `kubectl get -o jsonpath`), on top
//! of the maintained RFC 9535 implementation in `jsonpath-rust`.
//!
//! Kubernetes paths start at the object without `$` (`.status.conditions[?(@.type=="Ready")].status`)
//! and may be wrapped in `{...}`; both forms are normalised to RFC syntax once, at parse
//! time. Evaluation returns every match in document order, as client-go's `FindResults`.

use jsonpath_rust::parser::model::JpQuery;
use serde_json::Value;

/// A JSONPath expression that did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("failed to parse JSONPath {path:?}: {message}")]
pub struct JsonPathError {
    /// The expression as given.
    pub path: String,
    /// The parser's message.
    pub message: String,
}

/// A parsed JSONPath expression.
#[derive(Debug, Clone)]
pub struct JsonPath {
    source: String,
    query: JpQuery,
}

impl JsonPath {
    /// Parses a Kubernetes-style JSONPath (`.spec.x`, `{.spec.x}`, `$.spec.x`).
    pub fn parse(path: &str) -> Result<Self, JsonPathError> {
        let trimmed = path.trim();
        let inner = trimmed
            .strip_prefix('{')
            .and_then(|p| p.strip_suffix('}'))
            .unwrap_or(trimmed)
            .trim();
        let rfc = if inner.starts_with('$') {
            inner.to_string()
        } else if inner.starts_with('.') || inner.starts_with('[') {
            format!("${inner}")
        } else {
            format!("$.{inner}")
        };
        let query = jsonpath_rust::parser::parse_json_path(&rfc).map_err(|e| JsonPathError {
            path: path.to_string(),
            message: e.to_string(),
        })?;
        Ok(Self {
            source: path.to_string(),
            query,
        })
    }

    /// The expression as given to [`parse`](Self::parse).
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Every value the path selects in `value`, in document order; missing keys select
    /// nothing (client-go's `AllowMissingKeys(true)`).
    pub fn find<'a>(&self, value: &'a Value) -> Vec<&'a Value> {
        jsonpath_rust::query::js_path_process(&self.query, value)
            .map(|refs| refs.into_iter().map(|r| r.val()).collect())
            .unwrap_or_default()
    }
}

/// A value as client-go's JSONPath printer writes it (`fmt.Fprint` of the decoded value):
/// strings bare, numbers and booleans as Go prints them, maps as `map[k:v]`, lists as `[a b]`.
pub fn print_value(value: &Value) -> String {
    match value {
        Value::Null => "<nil>".into(),
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => super::errors::go_number(n),
        Value::Array(items) => format!(
            "[{}]",
            items.iter().map(print_value).collect::<Vec<_>>().join(" ")
        ),
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            let inner: Vec<String> = keys
                .iter()
                .map(|k| format!("{k}:{}", print_value(&map[k.as_str()])))
                .collect();
            format!("map[{}]", inner.join(" "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn find(path: &str, value: &Value) -> Vec<Value> {
        JsonPath::parse(path)
            .unwrap_or_else(|e| panic!("{e}"))
            .find(value)
            .into_iter()
            .cloned()
            .collect()
    }

    fn object() -> Value {
        json!({
            "metadata": {"name": "web", "labels": {"app.kubernetes.io/name": "web"}},
            "spec": {"version": "1.2.0", "replicas": 3},
            "status": {"conditions": [
                {"type": "Reconciling", "status": "False"},
                {"type": "Ready", "status": "True", "message": "all synced"}
            ]}
        })
    }

    #[test]
    fn kubernetes_style_paths_select_fields() {
        assert_eq!(find(".spec.version", &object()), vec![json!("1.2.0")]);
        assert_eq!(find("{.spec.replicas}", &object()), vec![json!(3)]);
        assert_eq!(find("$.metadata.name", &object()), vec![json!("web")]);
    }

    #[test]
    fn filters_select_the_matching_condition() {
        assert_eq!(
            find(
                r#".status.conditions[?(@.type=="Ready")].status"#,
                &object()
            ),
            vec![json!("True")]
        );
        assert_eq!(
            find(
                r#".status.conditions[?(@.type=="Ready")].message"#,
                &object()
            ),
            vec![json!("all synced")]
        );
        assert!(
            find(
                r#".status.conditions[?(@.type=="Stalled")].status"#,
                &object()
            )
            .is_empty()
        );
    }

    #[test]
    fn indexes_wildcards_and_quoted_keys_work() {
        assert_eq!(
            find(".status.conditions[0].type", &object()),
            vec![json!("Reconciling")]
        );
        assert_eq!(
            find(".status.conditions[-1].type", &object()),
            vec![json!("Ready")]
        );
        assert_eq!(
            find(".status.conditions[*].type", &object()),
            vec![json!("Reconciling"), json!("Ready")]
        );
        assert_eq!(
            find(".metadata.labels['app.kubernetes.io/name']", &object()),
            vec![json!("web")]
        );
    }

    #[test]
    fn missing_keys_select_nothing() {
        assert!(find(".status.phase", &object()).is_empty());
        assert!(find(".nope.deeper", &object()).is_empty());
    }

    #[test]
    fn bad_paths_are_errors() {
        assert!(JsonPath::parse(".status.conditions[?(@.type==").is_err());
    }

    #[test]
    fn values_print_like_client_go() {
        assert_eq!(print_value(&json!("x")), "x");
        assert_eq!(print_value(&json!(3)), "3");
        assert_eq!(print_value(&json!(["a", 1])), "[a 1]");
        assert_eq!(print_value(&json!({"b": 1, "a": "x"})), "map[a:x b:1]");
    }
}
