//! CEL `x-kubernetes-validations` of one schema node, evaluated with `kube-cel`.
//!
//! kube-cel compiles and evaluates the rules (its function library, value conversion,
//! `oldSelf`, `messageExpression`, `fieldPath`, `reason`). What this file adds around it is
//! what the API server does and kube-cel's whole-tree walk does not:
//! - each node's rules are compiled as a node-only schema (descendants' rules stripped), so
//!   the structural walk in `structural.rs` decides which old value correlates with which
//!   new value: object fields by name, `x-kubernetes-list-type: map` items by their keys,
//!   nothing for atomic and set lists (kube-cel pairs list items by index);
//! - errors are worded as a current API server (v1.36) words them: `Invalid value: msg`
//!   for an object or a list, `Invalid value: "2.0.0": msg` with the value for a scalar,
//!   `Forbidden: msg`, ...;
//! - ratcheting: when a node equals its old value, failures of rules that do not use
//!   `oldSelf` become warnings, as with the `CRDValidationRatcheting` feature.

use std::collections::HashSet;

use kube::core::cel::{
    CompilationError, CompiledSchema, ErrorKind, compile_schema, validate_compiled,
};
use serde_json::Value;

use super::errors::{BadValue, Cause};

/// The compiled rules of one schema node.
pub(crate) struct NodeRules {
    compiled: CompiledSchema,
    /// The node's `type` (what the API server prints as the bad value).
    type_name: String,
    /// Rules that reference `oldSelf` (never ratcheted).
    transition_rules: HashSet<String>,
}

impl std::fmt::Debug for NodeRules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeRules")
            .field("type_name", &self.type_name)
            .finish_non_exhaustive()
    }
}

/// Whether a schema node carries rules of its own (or in its allOf/anyOf/oneOf branches).
pub(crate) fn has_rules(schema: &Value) -> bool {
    let own = |s: &Value| {
        s.get("x-kubernetes-validations")
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty())
    };
    own(schema)
        || ["allOf", "anyOf", "oneOf"].iter().any(|k| {
            schema
                .get(*k)
                .and_then(Value::as_array)
                .is_some_and(|branches| branches.iter().any(own))
        })
}

/// Removes `x-kubernetes-validations` from every descendant reached through properties,
/// items and additionalProperties, so a node's compiled schema evaluates only its own rules.
fn strip_descendant_rules(schema: &mut Value) {
    fn strip(schema: &mut Value) {
        if let Value::Object(map) = schema {
            map.remove("x-kubernetes-validations");
            for key in ["allOf", "anyOf", "oneOf"] {
                if let Some(Value::Array(branches)) = map.get_mut(key) {
                    branches.iter_mut().for_each(strip);
                }
            }
        }
        descend(schema);
    }
    fn descend(schema: &mut Value) {
        if let Value::Object(map) = schema {
            if let Some(Value::Object(props)) = map.get_mut("properties") {
                props.values_mut().for_each(strip);
            }
            if let Some(items) = map.get_mut("items") {
                strip(items);
            }
            if let Some(additional @ Value::Object(_)) = map.get_mut("additionalProperties") {
                strip(additional);
            }
        }
    }
    descend(schema);
}

/// Whether kube-cel converts values of this subtree exactly as it converts schema-less JSON:
/// no format it turns into a CEL type (date-time, duration, byte), no map whose keys it
/// must leave unescaped, no embedded resource. Such subtrees are dropped from a node's
/// compiled schema: kube-cel's walk re-converts every descendant it has a schema for, at
/// every level, so plain subtrees would only cost time.
fn is_plain(schema: &Value) -> bool {
    let format_matters = matches!(
        schema.get("format").and_then(Value::as_str),
        Some("date-time" | "duration" | "byte")
    );
    let is_map = matches!(
        schema.get("additionalProperties"),
        Some(Value::Object(_) | Value::Bool(true))
    );
    let embedded = schema
        .get("x-kubernetes-embedded-resource")
        .and_then(Value::as_bool)
        == Some(true);
    let branches_plain = ["allOf", "anyOf", "oneOf"].iter().all(|k| {
        schema
            .get(*k)
            .and_then(Value::as_array)
            .is_none_or(|b| b.iter().all(is_plain))
    });
    !format_matters
        && !is_map
        && !embedded
        && branches_plain
        && schema
            .get("properties")
            .and_then(Value::as_object)
            .is_none_or(|p| p.values().all(is_plain))
        && schema.get("items").is_none_or(is_plain)
}

/// Removes the plain descendants (see [`is_plain`]) of a node's schema.
fn drop_plain_descendants(schema: &mut Value) {
    if let Value::Object(map) = schema {
        if let Some(Value::Object(props)) = map.get_mut("properties") {
            props.retain(|_, p| !is_plain(p));
            props.values_mut().for_each(drop_plain_descendants);
        }
        if map.get("items").is_some_and(is_plain) {
            map.remove("items");
        } else if let Some(items) = map.get_mut("items") {
            drop_plain_descendants(items);
        }
        if let Some(additional @ Value::Object(_)) = map.get_mut("additionalProperties") {
            drop_plain_descendants(additional);
        }
    }
}

impl NodeRules {
    /// Compiles the rules of `schema` (a node of the structural schema). `Err` carries the
    /// compiler's message for the first rule that does not compile.
    pub(crate) fn compile(schema: &Value) -> Result<Self, String> {
        let mut node_only = schema.clone();
        strip_descendant_rules(&mut node_only);
        drop_plain_descendants(&mut node_only);
        let compiled = compile_schema(&node_only);
        let mut problems = compiled.compilation_errors().into_iter().chain(
            compiled
                .all_of
                .iter()
                .chain(&compiled.any_of)
                .chain(&compiled.one_of)
                .flat_map(|b| b.compilation_errors()),
        );
        if let Some(err) = problems.next() {
            return Err(describe(err));
        }
        let transition_rules = compiled
            .validations
            .iter()
            .chain(
                compiled
                    .all_of
                    .iter()
                    .chain(&compiled.any_of)
                    .chain(&compiled.one_of)
                    .flat_map(|b| b.validations.iter()),
            )
            .filter_map(|r| r.as_ref().ok())
            .filter(|r| r.is_transition_rule)
            .map(|r| r.rule.rule.clone())
            .collect();
        let type_name = schema
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        Ok(Self {
            compiled,
            type_name,
            transition_rules,
        })
    }

    /// Evaluates the node's rules against `value` (with `old`, the correlated old value,
    /// when there is one). Failures go to `errs`, ratcheted ones to `warnings`.
    pub(crate) fn evaluate(
        &self,
        path: &str,
        value: &Value,
        old: Option<&Value>,
        errs: &mut Vec<Cause>,
        warnings: &mut Vec<String>,
    ) {
        // The API server only validates non-null values.
        if value.is_null() {
            return;
        }
        let old = old.filter(|o| !o.is_null());
        let Err(failures) = validate_compiled(&self.compiled, value, old) else {
            return;
        };
        let unchanged = old.is_some_and(|o| o == value);
        for failure in failures.iter() {
            let field = join(path, failure.field_path.trim_start_matches('.'));
            let cause = self.cause(&field, failure, value);
            if unchanged && !self.transition_rules.contains(&failure.rule) {
                warnings.push(cause.to_string());
            } else {
                errs.push(cause);
            }
        }
    }

    /// The cause of one failure, as `fieldErrorForReason` words it: a rule that returned
    /// false shows the node's value when it is a scalar and no value for an object or a
    /// list; an evaluation error shows the node's type.
    fn cause(
        &self,
        field: &str,
        failure: &kube::core::cel::ValidationError,
        value: &Value,
    ) -> Cause {
        let type_value = BadValue::Str(&self.type_name);
        match failure.kind {
            ErrorKind::ValidationFailure => {
                let detail = failure.message.trim();
                let shown = if matches!(self.type_name.as_str(), "object" | "array") {
                    BadValue::Omit
                } else {
                    BadValue::Json(value)
                };
                match failure.reason.as_deref() {
                    Some("FieldValueForbidden") => Cause::forbidden(field, detail),
                    Some("FieldValueRequired") => Cause::required(field, detail),
                    Some("FieldValueDuplicate") => Cause::duplicate(field, shown),
                    _ => Cause::invalid(field, shown, detail),
                }
            }
            ErrorKind::EvaluationError => {
                let err = failure
                    .message
                    .strip_prefix("rule evaluation error: ")
                    .unwrap_or(&failure.message);
                Cause::invalid(
                    field,
                    type_value,
                    &format!("{err} evaluating rule: {}", failure.rule.trim()),
                )
            }
            _ => Cause::invalid(field, type_value, failure.message.trim()),
        }
    }
}

fn describe(err: &CompilationError) -> String {
    err.to_string()
}

fn join(base: &str, child: &str) -> String {
    match (base.is_empty(), child.is_empty()) {
        (_, true) => base.to_string(),
        (true, false) => child.to_string(),
        (false, false) => format!("{base}.{child}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rules(schema: Value) -> NodeRules {
        NodeRules::compile(&schema).unwrap_or_else(|e| panic!("compile: {e}"))
    }

    fn run(r: &NodeRules, value: Value, old: Option<Value>) -> (Vec<String>, Vec<String>) {
        let mut errs = Vec::new();
        let mut warnings = Vec::new();
        r.evaluate("spec", &value, old.as_ref(), &mut errs, &mut warnings);
        (errs.iter().map(ToString::to_string).collect(), warnings)
    }

    #[test]
    fn a_failing_rule_reads_like_the_api_server() {
        let r = rules(json!({
            "type": "object",
            "properties": {"min": {"type": "integer"}, "max": {"type": "integer"}},
            "x-kubernetes-validations": [{"rule": "self.min <= self.max", "message": "min must not exceed max"}]
        }));
        let (errs, _) = run(&r, json!({"min": 3, "max": 1}), None);
        assert_eq!(
            errs,
            vec![r#"spec: Invalid value: min must not exceed max"#]
        );
        assert!(run(&r, json!({"min": 1, "max": 3}), None).0.is_empty());
    }

    #[test]
    fn a_rule_without_message_reports_the_rule() {
        let r =
            rules(json!({"type": "string", "x-kubernetes-validations": [{"rule": "self != 'x'"}]}));
        let (errs, _) = run(&r, json!("x"), None);
        assert_eq!(
            errs,
            vec![r#"spec: Invalid value: "x": failed rule: self != 'x'"#]
        );
    }

    #[test]
    fn reason_field_path_and_message_expression_are_honoured() {
        let r = rules(json!({
            "type": "object",
            "properties": {"a": {"type": "string"}},
            "x-kubernetes-validations": [{
                "rule": "self.a != 'bad'",
                "messageExpression": "'a may not be ' + self.a",
                "fieldPath": ".a",
                "reason": "FieldValueForbidden"
            }]
        }));
        let (errs, _) = run(&r, json!({"a": "bad"}), None);
        assert_eq!(errs, vec!["spec.a: Forbidden: a may not be bad"]);
    }

    #[test]
    fn transition_rules_run_only_with_an_old_value() {
        let r = rules(json!({
            "type": "string",
            "x-kubernetes-validations": [{"rule": "self == oldSelf", "message": "environmentRef is immutable"}]
        }));
        assert!(run(&r, json!("b"), None).0.is_empty());
        let (errs, _) = run(&r, json!("b"), Some(json!("a")));
        assert_eq!(
            errs,
            vec![r#"spec: Invalid value: "b": environmentRef is immutable"#]
        );
        assert!(run(&r, json!("a"), Some(json!("a"))).0.is_empty());
    }

    #[test]
    fn unchanged_values_ratchet_failures_into_warnings() {
        let r = rules(
            json!({"type": "integer", "x-kubernetes-validations": [{"rule": "self > 1", "message": "too small"}]}),
        );
        let (errs, warnings) = run(&r, json!(0), Some(json!(0)));
        assert!(errs.is_empty());
        assert_eq!(warnings, vec![r#"spec: Invalid value: 0: too small"#]);
    }

    #[test]
    fn formats_inside_a_subtree_still_reach_cel_as_typed_values() {
        let r = rules(json!({
            "type": "object",
            "properties": {
                "plain": {"type": "object", "properties": {"my-name": {"type": "string"}}},
                "window": {"type": "object", "properties": {"every": {"type": "string", "format": "duration"}}},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}}
            },
            "x-kubernetes-validations": [
                {"rule": "self.window.every > duration('1m')", "message": "at least a minute"},
                {"rule": "self.plain.my__dash__name == 'x'", "message": "escaped name"},
                {"rule": "'app.kubernetes.io/name' in self.labels", "message": "map keys are not escaped"}
            ]
        }));
        let ok = json!({"plain": {"my-name": "x"}, "window": {"every": "5m"}, "labels": {"app.kubernetes.io/name": "a"}});
        assert!(run(&r, ok, None).0.is_empty());
        let (errs, _) = run(
            &r,
            json!({"plain": {"my-name": "y"}, "window": {"every": "30s"}, "labels": {}}),
            None,
        );
        assert_eq!(errs.len(), 3, "{errs:?}");
    }

    #[test]
    fn plain_subtrees_are_dropped_but_typed_ones_kept() {
        let mut schema = json!({
            "type": "object",
            "properties": {
                "a": {"type": "object", "properties": {"b": {"type": "string"}}},
                "t": {"type": "string", "format": "date-time"},
                "l": {"type": "array", "items": {"type": "object", "properties": {"x": {"type": "integer"}}}}
            }
        });
        drop_plain_descendants(&mut schema);
        assert_eq!(
            schema,
            json!({"type": "object", "properties": {"t": {"type": "string", "format": "date-time"}}})
        );
    }

    #[test]
    fn descendant_rules_are_not_evaluated_by_the_parent() {
        let r = rules(json!({
            "type": "object",
            "properties": {"a": {"type": "string", "x-kubernetes-validations": [{"rule": "false", "message": "child"}]}},
            "x-kubernetes-validations": [{"rule": "true"}]
        }));
        assert!(run(&r, json!({"a": "x"}), None).0.is_empty());
    }

    #[test]
    fn an_undeclared_variable_fails_admission_with_a_clear_cause() {
        let r = rules(
            json!({"type": "string", "x-kubernetes-validations": [{"rule": "object.x == 1"}]}),
        );
        let (errs, _) = run(&r, json!("a"), None);
        assert_eq!(errs.len(), 1);
        assert!(
            errs[0].starts_with(r#"spec: Invalid value: "string": "#) && errs[0].contains("object"),
            "{errs:?}"
        );
    }

    #[test]
    fn a_rule_that_does_not_compile_is_rejected() {
        let err = NodeRules::compile(
            &json!({"type": "string", "x-kubernetes-validations": [{"rule": "self ==="}]}),
        );
        assert!(err.is_err());
    }
}
