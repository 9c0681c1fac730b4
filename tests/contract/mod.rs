//! Contract checks: every exchange the sandbox recorded (the clients' requests and the
//! sandbox's responses) is validated against the committed subset of the vendor's OpenAPI
//! spec (`tests/contract/<platform>.json`, cut by `subset.py`) with the `jsonschema` crate:
//! method and path template, path and query parameters, request and response bodies.
//! A mismatch names the spec path and the offending field.

pub mod harness;

use std::collections::HashMap;
use std::sync::Mutex;

use serde_json::{Value, json};
use tether::platform::Platform;
use tether::sandbox::Exchange;

/// One platform's spec subset, with compiled validators cached per schema location.
pub struct Contract {
    platform: Platform,
    doc: Value,
    cache: Mutex<HashMap<String, std::sync::Arc<jsonschema::Validator>>>,
}

struct Matched<'a> {
    template: &'a str,
    method: &'a str,
    op: &'a Value,
    path_params: Vec<(String, String)>,
}

impl Contract {
    /// Loads `tests/contract/<platform>.json`.
    pub fn load(platform: Platform) -> Contract {
        let path = format!(
            "{}/tests/contract/{}.json",
            env!("CARGO_MANIFEST_DIR"),
            platform.as_str()
        );
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
        let doc: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
        Contract {
            platform,
            doc,
            cache: Mutex::new(HashMap::new()),
        }
    }

    fn find(&self, method: &str, path: &str) -> Option<Matched<'_>> {
        let method = method.to_lowercase();
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let mut best: Option<(usize, Matched<'_>)> = None;
        for (template, item) in self.doc["paths"].as_object()? {
            let Some((m, op)) = item.as_object()?.get_key_value(method.as_str()) else {
                continue;
            };
            let parts: Vec<&str> = template.trim_matches('/').split('/').collect();
            if parts.len() != segments.len() {
                continue;
            }
            let mut literal = 0;
            let mut params = Vec::new();
            let mut ok = true;
            for (part, seg) in parts.iter().zip(&segments) {
                if part.starts_with('{') && part.ends_with('}') {
                    if seg.is_empty() {
                        ok = false;
                        break;
                    }
                    let decoded = url_decode(seg);
                    params.push((part[1..part.len() - 1].to_owned(), decoded));
                } else if part == seg {
                    literal += 1;
                } else {
                    ok = false;
                    break;
                }
            }
            if ok && best.as_ref().is_none_or(|(l, _)| literal > *l) {
                best = Some((
                    literal,
                    Matched {
                        template,
                        method: m,
                        op,
                        path_params: params,
                    },
                ));
            }
        }
        best.map(|(_, m)| m)
    }

    fn validator(&self, key: &str, schema: &Value) -> std::sync::Arc<jsonschema::Validator> {
        let mut cache = self.cache.lock().unwrap();
        if let Some(v) = cache.get(key) {
            return v.clone();
        }
        let mut root = match schema {
            Value::Object(map) => Value::Object(map.clone()),
            other => json!({ "allOf": [other] }),
        };
        root["components"] = self.doc["components"].clone();
        let validator = std::sync::Arc::new(
            jsonschema::validator_for(&root)
                .unwrap_or_else(|e| panic!("schema at {key} does not compile: {e}")),
        );
        cache.insert(key.to_owned(), validator.clone());
        validator
    }

    fn validate(&self, key: &str, schema: &Value, instance: &Value, what: &str) -> Vec<String> {
        let validator = self.validator(key, schema);
        validator
            .iter_errors(instance)
            .take(20)
            .map(|e| {
                let field = e.instance_path().to_string();
                let field = if field.is_empty() {
                    "(root)".into()
                } else {
                    field
                };
                format!("{what}: field {field}: {e}")
            })
            .collect()
    }

    /// Checks one exchange; returns the mismatches.
    pub fn check(&self, ex: &Exchange) -> Vec<String> {
        let Some(m) = self.find(&ex.method, &ex.path) else {
            return vec![format!(
                "{} {} {}: no such operation in the spec subset",
                self.platform, ex.method, ex.path
            )];
        };
        let at = format!("{} {} {}", self.platform, ex.method, m.template);
        let spec_at = format!("paths.{}.{}", m.template, m.method);
        let mut errors = Vec::new();
        let params = m.op["parameters"].as_array().cloned().unwrap_or_default();
        // Path parameters.
        for (name, value) in &m.path_params {
            if let Some(p) = params
                .iter()
                .find(|p| p["in"] == "path" && p["name"] == name.as_str())
            {
                let key = format!("{spec_at}.path.{name}");
                let instance = typed(value, &p["schema"], p);
                errors.extend(self.validate(
                    &key,
                    &p["schema"],
                    &instance,
                    &format!("path parameter {name}"),
                ));
            }
        }
        // Query parameters: declared, typed, required present.
        for (name, value) in &ex.query {
            match params
                .iter()
                .find(|p| p["in"] == "query" && p["name"] == name.as_str())
            {
                None => errors.push(format!("query parameter {name}: not declared by the spec")),
                Some(p) => {
                    let key = format!("{spec_at}.query.{name}");
                    let instance = typed(value, &p["schema"], p);
                    errors.extend(self.validate(
                        &key,
                        &p["schema"],
                        &instance,
                        &format!("query parameter {name}"),
                    ));
                }
            }
        }
        for p in &params {
            if p["in"] == "query"
                && p["required"] == true
                && !ex.query.iter().any(|(n, _)| p["name"] == n.as_str())
            {
                errors.push(format!(
                    "query parameter {}: required but missing",
                    p["name"]
                ));
            }
        }
        // Request body.
        match (&m.op["requestBody"], &ex.request_body) {
            (Value::Null, Some(_)) => {
                errors.push("request body: sent but the operation takes none".into())
            }
            (Value::Null, None) => {}
            (body, None) => {
                if body["required"] == true {
                    errors.push("request body: required but missing".into());
                }
            }
            (body, Some(instance)) => {
                if !body["schema"].is_null() {
                    errors.extend(self.validate(
                        &format!("{spec_at}.requestBody"),
                        &body["schema"],
                        instance,
                        "request body",
                    ));
                }
            }
        }
        // Response.
        let code = ex.status.to_string();
        let range = format!("{}XX", ex.status / 100);
        let responses = &m.op["responses"];
        let declared = [code.as_str(), range.as_str(), "default"]
            .into_iter()
            .find_map(|c| responses.get(c).map(|r| (c, r)));
        let declared_schema =
            declared.and_then(|(c, r)| (!r["schema"].is_null()).then_some((c, &r["schema"])));
        let error_schema = (ex.status >= 400)
            .then(|| {
                let errors = &self.doc["errors"];
                errors
                    .get(code.as_str())
                    .map(|s| (format!("errors.{code}"), s))
                    .or_else(|| {
                        errors
                            .get("default")
                            .map(|s| ("errors.default".to_owned(), s))
                    })
            })
            .flatten();
        match (declared, declared_schema, error_schema) {
            (_, Some((c, schema)), _) => match &ex.response_body {
                Some(body) => errors.extend(self.validate(
                    &format!("{spec_at}.responses.{c}"),
                    schema,
                    body,
                    &format!("response {code} body"),
                )),
                None => errors.push(format!("response {code} body: missing or not JSON")),
            },
            // Error statuses the operation leaves without a body schema (or undeclared):
            // the platform's common error shape.
            (_, None, Some((key, schema))) => match &ex.response_body {
                Some(body) => errors.extend(self.validate(
                    &key,
                    schema,
                    body,
                    &format!("response {code} body ({key})"),
                )),
                None => errors.push(format!("response {code} body: missing or not JSON")),
            },
            (None, None, None) => errors.push(format!("response: status {code} is not declared")),
            (Some(_), None, None) => {
                if ex.response_body.is_some() || ex.response_text.is_some() {
                    errors.push(format!("response {code} body: the spec declares none"));
                }
            }
        }
        errors
            .into_iter()
            .map(|e| format!("{at} (spec {spec_at}): {e}"))
            .collect()
    }

    /// Checks every exchange of this platform and panics listing all mismatches.
    pub fn assert_all(&self, exchanges: &[Exchange]) {
        let mine: Vec<&Exchange> = exchanges
            .iter()
            .filter(|e| e.platform == self.platform)
            .collect();
        assert!(
            !mine.is_empty(),
            "no {} exchanges were recorded",
            self.platform
        );
        let errors: Vec<String> = mine.iter().flat_map(|e| self.check(e)).collect();
        assert!(
            errors.is_empty(),
            "{} contract violations in {} exchanges:\n{}",
            errors.len(),
            mine.len(),
            errors.join("\n")
        );
    }
}

fn url_decode(segment: &str) -> String {
    url::form_urlencoded::parse(format!("x={segment}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| segment.to_owned())
}

/// Turns a parameter's text into the JSON value its schema describes (OpenAPI `form`
/// style: arrays comma-separated when `explode: false`).
fn typed(value: &str, schema: &Value, param: &Value) -> Value {
    let ty = match &schema["type"] {
        Value::String(t) => t.as_str(),
        Value::Array(ts) => ts.iter().find_map(|t| t.as_str()).unwrap_or("string"),
        _ => "string",
    };
    match ty {
        "integer" => value
            .parse::<i64>()
            .map(Value::from)
            .unwrap_or_else(|_| json!(value)),
        "number" => value
            .parse::<f64>()
            .map(Value::from)
            .unwrap_or_else(|_| json!(value)),
        "boolean" => match value {
            "true" => json!(true),
            "false" => json!(false),
            other => json!(other),
        },
        "array" => {
            let items = if param["explode"] == false {
                value.split(',').map(str::to_owned).collect()
            } else {
                vec![value.to_owned()]
            };
            Value::Array(
                items
                    .iter()
                    .map(|v| typed(v, &schema["items"], &Value::Null))
                    .collect(),
            )
        }
        _ => json!(value),
    }
}
