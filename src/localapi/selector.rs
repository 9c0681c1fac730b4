//! Label and field selectors (`?labelSelector=`, `?fieldSelector=`), parsed once per request
//! into typed requirements and matched against objects.
//!
//! The grammar is the Kubernetes one: label requirements `k`, `!k`, `k=v`, `k==v`, `k!=v`,
//! `k in (a,b)`, `k notin (a,b)`; field requirements `f=v`, `f==v`, `f!=v`.

use std::collections::BTreeMap;

use serde_json::Value;

/// A malformed selector, with the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("failed to parse selector {selector:?}: {reason}")]
pub struct SelectorError {
    /// The selector as given.
    pub selector: String,
    /// What is wrong.
    pub reason: String,
}

/// One label requirement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabelRequirement {
    /// `k` — the label exists.
    Exists(String),
    /// `!k` — the label does not exist.
    NotExists(String),
    /// `k=v` / `k==v`.
    Equals(String, String),
    /// `k!=v` (true when the label is absent).
    NotEquals(String, String),
    /// `k in (a,b)`.
    In(String, Vec<String>),
    /// `k notin (a,b)` (true when the label is absent).
    NotIn(String, Vec<String>),
}

/// A parsed label selector: all requirements must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector {
    requirements: Vec<LabelRequirement>,
}

fn split_top_level(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
}

fn valid_value(value: &str) -> bool {
    value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl LabelSelector {
    /// Parses a label selector string; the empty string selects everything.
    pub fn parse(input: &str) -> Result<Self, SelectorError> {
        let err = |reason: &str| SelectorError {
            selector: input.to_owned(),
            reason: reason.to_owned(),
        };
        let mut requirements = Vec::new();
        if input.trim().is_empty() {
            return Ok(LabelSelector { requirements });
        }
        for part in split_top_level(input) {
            let part = part.trim();
            if part.is_empty() {
                return Err(err("empty requirement"));
            }
            let req = if let Some(key) = part.strip_prefix('!') {
                let key = key.trim();
                if !valid_key(key) {
                    return Err(err(&format!("invalid label key {key:?}")));
                }
                LabelRequirement::NotExists(key.to_owned())
            } else if let Some((key, value)) = part.split_once("!=") {
                LabelRequirement::NotEquals(key.trim().to_owned(), value.trim().to_owned())
            } else if let Some((key, value)) = part.split_once("==") {
                LabelRequirement::Equals(key.trim().to_owned(), value.trim().to_owned())
            } else if let Some((key, value)) = part.split_once('=') {
                LabelRequirement::Equals(key.trim().to_owned(), value.trim().to_owned())
            } else if let Some((key, rest)) = split_set_operator(part, " notin ") {
                LabelRequirement::NotIn(key, parse_set(rest).map_err(|r| err(&r))?)
            } else if let Some((key, rest)) = split_set_operator(part, " in ") {
                LabelRequirement::In(key, parse_set(rest).map_err(|r| err(&r))?)
            } else {
                LabelRequirement::Exists(part.to_owned())
            };
            let (key, values): (&str, Vec<&str>) = match &req {
                LabelRequirement::Exists(k) | LabelRequirement::NotExists(k) => (k, vec![]),
                LabelRequirement::Equals(k, v) | LabelRequirement::NotEquals(k, v) => {
                    (k, vec![v.as_str()])
                }
                LabelRequirement::In(k, vs) | LabelRequirement::NotIn(k, vs) => {
                    (k, vs.iter().map(String::as_str).collect())
                }
            };
            if !valid_key(key) {
                return Err(err(&format!("invalid label key {key:?}")));
            }
            if let Some(bad) = values.iter().find(|v| !valid_value(v)) {
                return Err(err(&format!("invalid label value {bad:?}")));
            }
            requirements.push(req);
        }
        Ok(LabelSelector { requirements })
    }

    /// Whether the selector selects everything.
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Whether `labels` satisfy every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| match r {
            LabelRequirement::Exists(k) => labels.contains_key(k),
            LabelRequirement::NotExists(k) => !labels.contains_key(k),
            LabelRequirement::Equals(k, v) => labels.get(k) == Some(v),
            LabelRequirement::NotEquals(k, v) => labels.get(k) != Some(v),
            LabelRequirement::In(k, vs) => labels.get(k).is_some_and(|l| vs.contains(l)),
            LabelRequirement::NotIn(k, vs) => labels.get(k).is_none_or(|l| !vs.contains(l)),
        })
    }

    /// Whether the labels of a JSON object satisfy the selector.
    pub fn matches_object(&self, obj: &Value) -> bool {
        if self.is_empty() {
            return true;
        }
        let labels: BTreeMap<String, String> = obj
            .pointer("/metadata/labels")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_owned())))
                    .collect()
            })
            .unwrap_or_default();
        self.matches(&labels)
    }
}

fn split_set_operator(part: &str, op: &str) -> Option<(String, String)> {
    let (key, rest) = part.split_once(op)?;
    Some((key.trim().to_owned(), rest.trim().to_owned()))
}

fn parse_set(rest: String) -> Result<Vec<String>, String> {
    let inner = rest
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| format!("expected a parenthesised value list, found {rest:?}"))?;
    let values: Vec<String> = inner
        .split(',')
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .collect();
    if values.is_empty() {
        return Err("a value list must not be empty".to_owned());
    }
    Ok(values)
}

/// One field requirement: `field=value` or `field!=value`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldRequirement {
    /// The field label, e.g. `involvedObject.name`.
    pub field: String,
    /// The value compared with.
    pub value: String,
    /// `!=` instead of `=`.
    pub negated: bool,
}

/// A parsed field selector: all requirements must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector {
    requirements: Vec<FieldRequirement>,
}

impl FieldSelector {
    /// Parses a field selector and checks each field label against `supported`.
    pub fn parse(input: &str, supported: &dyn Fn(&str) -> bool) -> Result<Self, SelectorError> {
        let mut requirements = Vec::new();
        if input.trim().is_empty() {
            return Ok(FieldSelector { requirements });
        }
        for part in input.split(',') {
            let part = part.trim();
            let (field, value, negated) = if let Some((f, v)) = part.split_once("!=") {
                (f, v, true)
            } else if let Some((f, v)) = part.split_once("==") {
                (f, v, false)
            } else if let Some((f, v)) = part.split_once('=') {
                (f, v, false)
            } else {
                return Err(SelectorError {
                    selector: input.to_owned(),
                    reason: format!("invalid field requirement {part:?}"),
                });
            };
            let field = field.trim();
            if !supported(field) {
                return Err(SelectorError {
                    selector: input.to_owned(),
                    reason: format!("field label not supported: {field}"),
                });
            }
            requirements.push(FieldRequirement {
                field: field.to_owned(),
                value: value.trim().to_owned(),
                negated,
            });
        }
        Ok(FieldSelector { requirements })
    }

    /// Whether the selector selects everything.
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// The value the selector requires for `field` with `=`, if any (used to narrow scans).
    pub fn required_value(&self, field: &str) -> Option<&str> {
        self.requirements
            .iter()
            .find(|r| r.field == field && !r.negated)
            .map(|r| r.value.as_str())
    }

    /// Whether `obj` satisfies every requirement; a field is read as its dotted JSON path and
    /// a missing field compares as the empty string (as the real server does).
    pub fn matches_object(&self, obj: &Value) -> bool {
        self.requirements.iter().all(|r| {
            let actual = field_value(obj, &r.field);
            (actual == r.value) != r.negated
        })
    }
}

/// The string value of a dotted field path of an object (`involvedObject.name`).
pub fn field_value(obj: &Value, field: &str) -> String {
    let mut cur = obj;
    for part in field.split('.') {
        match cur.get(part) {
            Some(next) => cur = next,
            None => return String::new(),
        }
    }
    match cur {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn equality_and_inequality_requirements_match_like_kubernetes() {
        let sel = LabelSelector::parse("app=web,tier!=db").unwrap();
        assert!(sel.matches(&labels(&[("app", "web")])));
        assert!(sel.matches(&labels(&[("app", "web"), ("tier", "front")])));
        assert!(!sel.matches(&labels(&[("app", "web"), ("tier", "db")])));
        assert!(!sel.matches(&labels(&[("app", "api")])));
    }

    #[test]
    fn set_requirements_match_membership_and_absence() {
        let sel = LabelSelector::parse("env in (prod, staging),team notin (x)").unwrap();
        assert!(sel.matches(&labels(&[("env", "prod")])));
        assert!(sel.matches(&labels(&[("env", "staging"), ("team", "y")])));
        assert!(!sel.matches(&labels(&[("env", "dev")])));
        assert!(!sel.matches(&labels(&[("env", "prod"), ("team", "x")])));
        assert!(!sel.matches(&labels(&[])));
    }

    #[test]
    fn existence_requirements_match_presence() {
        let sel = LabelSelector::parse("app,!legacy").unwrap();
        assert!(sel.matches(&labels(&[("app", "")])));
        assert!(!sel.matches(&labels(&[("app", "a"), ("legacy", "1")])));
        assert!(!sel.matches(&labels(&[])));
    }

    #[test]
    fn malformed_label_selectors_are_rejected_with_a_reason() {
        assert!(LabelSelector::parse("app in prod").is_err());
        assert!(LabelSelector::parse("app in ()").is_err());
        assert!(LabelSelector::parse("a=b,,c").is_err());
        assert!(LabelSelector::parse("bad key=1").is_err());
        let err = LabelSelector::parse("app=we b").unwrap_err();
        assert!(err.reason.contains("invalid label value"), "{err}");
    }

    #[test]
    fn field_selectors_compare_dotted_paths_and_reject_unknown_labels() {
        let supported = |f: &str| f.starts_with("involvedObject.") || f == "metadata.name";
        let sel = FieldSelector::parse(
            "involvedObject.name=web,involvedObject.kind!=Pod",
            &supported,
        )
        .unwrap();
        let ev = json!({"involvedObject": {"name": "web", "kind": "Environment"}});
        assert!(sel.matches_object(&ev));
        let other = json!({"involvedObject": {"name": "web", "kind": "Pod"}});
        assert!(!sel.matches_object(&other));
        assert_eq!(sel.required_value("involvedObject.name"), Some("web"));
        let err = FieldSelector::parse("spec.foo=1", &supported).unwrap_err();
        assert!(err.reason.contains("field label not supported: spec.foo"));
    }

    #[test]
    fn a_missing_field_compares_as_the_empty_string() {
        let sel = FieldSelector::parse("involvedObject.uid=", &|_| true).unwrap();
        assert!(sel.matches_object(&json!({})));
    }
}
