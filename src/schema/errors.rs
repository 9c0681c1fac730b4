//! Field errors and the `Status` bodies built from them, in the API server's exact wording.
//!
//! The wording follows `k8s.io/apimachinery/pkg/util/validation/field` (`ErrorBody`: the
//! type's canonical text, the bad value printed as Go's `%q`/`%v`/`%#v` would, then the
//! detail) and `k8s.io/apimachinery/pkg/api/errors.NewInvalid` (the aggregated message).

use serde_json::{Value, json};

/// `reason` of a strict-decoding problem (an unknown field under `fieldValidation=Strict`).
pub(crate) const REASON_UNKNOWN: &str = "FieldValueUnknown";

/// `reason` of a body that does not decode (the whole message is the API server's 400 text).
const REASON_BAD_REQUEST: &str = "BadRequest";

/// One cause of an invalid object, as in `Status.details.causes`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cause {
    /// Machine-readable reason, e.g. `FieldValueRequired`, `FieldValueInvalid`.
    pub reason: String,
    /// The field path in the API server's form, e.g. `spec.render.services[0].schedule`.
    pub field: String,
    /// The message without the field, e.g. `Required value` or
    /// `Invalid value: "2.0.0": <rule message>`.
    pub message: String,
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.reason == REASON_UNKNOWN || self.reason == REASON_BAD_REQUEST {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

/// The value a field error shows, printed the way Go's field errors print it.
pub(crate) enum BadValue<'a> {
    /// A JSON value from the object.
    Json(&'a Value),
    /// A Go string (printed quoted).
    Str(&'a str),
    /// A Go integer (printed bare).
    Int(i64),
    /// `field.OmitValueType{}`: no value is printed (what a failed CEL rule on an object or
    /// a list reports in current API servers, v1.36).
    Omit,
}

impl BadValue<'_> {
    /// The value as `ErrorBody` prints it, `None` when it is omitted.
    fn render(&self) -> Option<String> {
        Some(match self {
            BadValue::Omit => return None,
            BadValue::Str(s) => go_quote(s),
            BadValue::Int(i) => i.to_string(),
            BadValue::Json(v) => match v {
                Value::Null => "null".to_string(),
                Value::String(s) => go_quote(s),
                Value::Bool(b) => b.to_string(),
                Value::Number(n) => go_number(n),
                other => go_sharp_v(other),
            },
        })
    }

    /// `<type text>: <value>`, or the type text alone when the value is omitted.
    fn after(&self, type_text: &str) -> String {
        match self.render() {
            Some(value) => format!("{type_text}: {value}"),
            None => type_text.to_string(),
        }
    }
}

impl Cause {
    fn new(reason: &str, field: &str, message: String) -> Self {
        Self {
            reason: reason.to_string(),
            field: field.to_string(),
            message,
        }
    }

    fn with_detail(mut body: String, detail: &str) -> String {
        if !detail.is_empty() {
            body.push_str(": ");
            body.push_str(detail);
        }
        body
    }

    /// A body that does not decode: the API server's 400 message, with no field.
    pub(crate) fn bad_request(message: &str) -> Self {
        Self::new(REASON_BAD_REQUEST, "", message.to_string())
    }

    /// `field.Required`: `Required value[: detail]`.
    pub(crate) fn required(field: &str, detail: &str) -> Self {
        Self::new(
            "FieldValueRequired",
            field,
            Self::with_detail("Required value".into(), detail),
        )
    }

    /// `field.Forbidden`: `Forbidden[: detail]`.
    pub(crate) fn forbidden(field: &str, detail: &str) -> Self {
        Self::new(
            "FieldValueForbidden",
            field,
            Self::with_detail("Forbidden".into(), detail),
        )
    }

    /// `field.Invalid`: `Invalid value: <value>[: detail]`.
    pub(crate) fn invalid(field: &str, value: BadValue<'_>, detail: &str) -> Self {
        Self::new(
            "FieldValueInvalid",
            field,
            Self::with_detail(value.after("Invalid value"), detail),
        )
    }

    /// `field.TypeInvalid`: `Invalid value: <value>: detail`.
    pub(crate) fn type_invalid(field: &str, value: BadValue<'_>, detail: &str) -> Self {
        Self::new(
            "FieldValueTypeInvalid",
            field,
            Self::with_detail(value.after("Invalid value"), detail),
        )
    }

    /// `field.NotSupported`: `Unsupported value: <value>: supported values: "a", "b"`.
    pub(crate) fn not_supported(field: &str, value: &Value, supported: &[String]) -> Self {
        let detail = if supported.is_empty() {
            String::new()
        } else {
            let quoted: Vec<String> = supported.iter().map(|s| go_quote(s)).collect();
            format!("supported values: {}", quoted.join(", "))
        };
        Self::new(
            "FieldValueNotSupported",
            field,
            Self::with_detail(BadValue::Json(value).after("Unsupported value"), &detail),
        )
    }

    /// `field.Duplicate`: `Duplicate value: <value>`.
    pub(crate) fn duplicate(field: &str, value: BadValue<'_>) -> Self {
        Self::new("FieldValueDuplicate", field, value.after("Duplicate value"))
    }

    /// `field.TooLongMaxLength` (what CRD `maxLength` failures use).
    pub(crate) fn too_long(field: &str, max: u64) -> Self {
        Self::new(
            "FieldValueTooLong",
            field,
            format!("Too long: may not be longer than {max}"),
        )
    }

    /// `field.TooLong` with a byte limit (annotations).
    pub(crate) fn too_long_bytes(field: &str, max: u64) -> Self {
        Self::new(
            "FieldValueTooLong",
            field,
            format!("Too long: must have at most {max} bytes"),
        )
    }

    /// `field.TooMany`: `Too many: <actual>: must have at most <max> items`.
    pub(crate) fn too_many(field: &str, actual: usize, max: u64) -> Self {
        Self::new(
            "FieldValueTooMany",
            field,
            format!("Too many: {actual}: must have at most {max} items"),
        )
    }

    /// A strict-decoding problem: `unknown field "spec.foo"`.
    pub(crate) fn unknown(field: &str) -> Self {
        Self::new(
            REASON_UNKNOWN,
            field,
            format!("unknown field {}", go_quote(field)),
        )
    }

    /// The error the API server adds when CEL rules were skipped because of earlier errors.
    pub(crate) fn cel_skipped() -> Self {
        Self::invalid(
            "<nil>",
            BadValue::Json(&Value::Null),
            "some validation rules were not checked because the object was invalid; correct the existing errors to complete validation",
        )
    }

    /// Whether the API server treats this error as blocking CEL evaluation (`hasBlockingErr`).
    pub(crate) fn blocks_cel(&self) -> bool {
        matches!(
            self.reason.as_str(),
            "FieldValueNotSupported"
                | "FieldValueRequired"
                | "FieldValueTooLong"
                | "FieldValueTooMany"
                | "FieldValueTypeInvalid"
        )
    }
}

/// An object the API server would refuse, with every cause found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invalid {
    /// Every problem, in the order the API server reports them.
    pub causes: Vec<Cause>,
    /// The API version the object was admitted as (used in strict-decoding messages).
    pub version: String,
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.aggregate())
    }
}

impl std::error::Error for Invalid {}

impl Invalid {
    pub(crate) fn single(cause: Cause, version: &str) -> Self {
        Self {
            causes: vec![cause],
            version: version.to_string(),
        }
    }

    /// Whether this is a strict-decoding failure (unknown fields under
    /// `fieldValidation=Strict`), which the API server answers with 400, not 422.
    pub fn is_strict_decoding(&self) -> bool {
        !self.causes.is_empty() && self.causes.iter().all(|c| c.reason == REASON_UNKNOWN)
    }

    /// The causes joined as `utilerrors.NewAggregate` prints them: one message alone,
    /// several as `[a, b]`, duplicates dropped.
    pub fn aggregate(&self) -> String {
        let mut seen: Vec<String> = Vec::new();
        for cause in &self.causes {
            let msg = cause.to_string();
            if !seen.contains(&msg) {
                seen.push(msg);
            }
        }
        if seen.len() == 1 {
            seen.remove(0)
        } else {
            format!("[{}]", seen.join(", "))
        }
    }

    /// The `Status` body the API server returns: 422 `Invalid` with every cause, e.g.
    /// message `Environment.tether.dev "web" is invalid: spec.render: Required value`; or,
    /// for unknown fields under `fieldValidation=Strict`, 400 `BadRequest`
    /// `Environment in version "v1alpha1" cannot be handled as a Environment: strict
    /// decoding error: unknown field "spec.foo"`.
    pub fn to_status(&self, kind: &str, group: &str, name: &str) -> Value {
        if self.is_strict_decoding() {
            let fields: Vec<String> = self.causes.iter().map(|c| c.message.clone()).collect();
            return json!({
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Failure",
                "message": format!(
                    "{kind} in version {} cannot be handled as a {kind}: strict decoding error: {}",
                    go_quote(&self.version),
                    fields.join(", ")
                ),
                "reason": "BadRequest",
                "code": 400,
            });
        }
        let qualified = if group.is_empty() {
            kind.to_string()
        } else {
            format!("{kind}.{group}")
        };
        let message = if self.causes.is_empty() {
            format!("{qualified} {} is invalid", go_quote(name))
        } else {
            format!(
                "{qualified} {} is invalid: {}",
                go_quote(name),
                self.aggregate()
            )
        };
        let causes: Vec<Value> = self
            .causes
            .iter()
            .map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field}))
            .collect();
        let mut details = json!({"name": name, "kind": kind, "causes": causes});
        if !group.is_empty() {
            details["group"] = json!(group);
        }
        json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": "Invalid",
            "details": details,
            "code": 422,
        })
    }
}

/// Go's `strconv.Quote` / `%q` for a string.
pub(crate) fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A JSON number as Go prints an `int64` or `float64` with `%v`.
pub(crate) fn go_number(n: &serde_json::Number) -> String {
    if let Some(i) = n.as_i64() {
        return i.to_string();
    }
    if let Some(u) = n.as_u64() {
        return u.to_string();
    }
    match n.as_f64() {
        Some(f) => go_float(f),
        None => n.to_string(),
    }
}

/// A float64 as Go's `%v` prints it (`%g` with the shortest representation).
pub(crate) fn go_float(f: f64) -> String {
    if f.is_finite() && f.fract() == 0.0 && f.abs() < 1e21 {
        format!("{f:.0}")
    } else if f.abs() >= 1e21 || (f != 0.0 && f.abs() < 1e-4) {
        let s = format!("{f:e}");
        // Rust prints 1e21 / 1e-5; Go prints 1e+21 / 1e-05.
        match s.split_once('e') {
            Some((mantissa, exp)) => {
                let (sign, digits) = match exp.strip_prefix('-') {
                    Some(d) => ('-', d),
                    None => ('+', exp),
                };
                format!("{mantissa}e{sign}{digits:0>2}")
            }
            None => s,
        }
    } else {
        f.to_string()
    }
}

/// A decoded JSON value as Go's `%#v` prints an `interface{}` holding it.
pub(crate) fn go_sharp_v(v: &Value) -> String {
    match v {
        Value::Null => "interface {}(nil)".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => match n.as_i64() {
            Some(i) => i.to_string(),
            None => go_number(n),
        },
        Value::String(s) => go_quote(s),
        Value::Array(items) => {
            let inner: Vec<String> = items.iter().map(go_sharp_v).collect();
            format!("[]interface {{}}{{{}}}", inner.join(", "))
        }
        Value::Object(map) => {
            // Go's fmt prints map keys sorted.
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            let inner: Vec<String> = keys
                .iter()
                .map(|k| format!("{}:{}", go_quote(k), go_sharp_v(&map[k.as_str()])))
                .collect();
            format!("map[string]interface {{}}{{{}}}", inner.join(", "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invalid(causes: Vec<Cause>) -> Invalid {
        Invalid {
            causes,
            version: "v1alpha1".into(),
        }
    }

    #[test]
    fn required_value_has_no_bad_value() {
        let c = Cause::required("spec.render", "");
        assert_eq!(c.reason, "FieldValueRequired");
        assert_eq!(c.to_string(), "spec.render: Required value");
    }

    #[test]
    fn unsupported_value_lists_quoted_choices() {
        let c = Cause::not_supported(
            "spec.driftPolicy",
            &json!("x"),
            &["Correct".into(), "Report".into()],
        );
        assert_eq!(
            c.message,
            r#"Unsupported value: "x": supported values: "Correct", "Report""#
        );
    }

    #[test]
    fn invalid_value_prints_numbers_bare_and_strings_quoted() {
        let n = Cause::invalid("spec.x", BadValue::Json(&json!(11)), "too big");
        assert_eq!(n.message, "Invalid value: 11: too big");
        let s = Cause::invalid("spec.x", BadValue::Str("object"), "rule");
        assert_eq!(s.message, r#"Invalid value: "object": rule"#);
        let omitted = Cause::invalid("spec.x", BadValue::Omit, "rule");
        assert_eq!(omitted.message, "Invalid value: rule");
        let null = Cause::invalid("<nil>", BadValue::Json(&Value::Null), "skipped");
        assert_eq!(null.to_string(), "<nil>: Invalid value: null: skipped");
        let q = Cause::invalid("spec.x", BadValue::Json(&json!("a\"b\n")), "");
        assert_eq!(q.message, r#"Invalid value: "a\"b\n""#);
    }

    #[test]
    fn duplicate_map_keys_print_like_go_maps() {
        let c = Cause::duplicate(
            "spec.ports[1]",
            BadValue::Json(&json!({"port": 80, "name": "a"})),
        );
        assert_eq!(
            c.message,
            r#"Duplicate value: map[string]interface {}{"name":"a", "port":80}"#
        );
    }

    #[test]
    fn floats_print_like_go() {
        assert_eq!(go_float(1.5), "1.5");
        assert_eq!(go_float(10.0), "10");
        assert_eq!(go_float(1e21), "1e+21");
        assert_eq!(go_float(0.00001), "1e-05");
    }

    #[test]
    fn one_cause_is_the_whole_message() {
        let status = invalid(vec![Cause::invalid(
            "spec.render.services[0]",
            BadValue::Omit,
            "cron services need a schedule",
        )])
        .to_status("Environment", "tether.dev", "web");
        assert_eq!(
            status["message"],
            r#"Environment.tether.dev "web" is invalid: spec.render.services[0]: Invalid value: cron services need a schedule"#
        );
        assert_eq!(status["code"], 422);
        assert_eq!(status["reason"], "Invalid");
        assert_eq!(status["status"], "Failure");
        assert_eq!(status["kind"], "Status");
        assert_eq!(status["details"]["group"], "tether.dev");
        assert_eq!(status["details"]["kind"], "Environment");
        assert_eq!(status["details"]["name"], "web");
        assert_eq!(
            status["details"]["causes"][0]["field"],
            "spec.render.services[0]"
        );
        assert_eq!(
            status["details"]["causes"][0]["reason"],
            "FieldValueInvalid"
        );
    }

    #[test]
    fn several_causes_are_bracketed_and_deduplicated() {
        let inv = invalid(vec![
            Cause::required("spec.a", ""),
            Cause::required("spec.a", ""),
            Cause::forbidden("spec.b", "not allowed"),
        ]);
        assert_eq!(
            inv.to_status("Release", "tether.dev", "r")["message"],
            r#"Release.tether.dev "r" is invalid: [spec.a: Required value, spec.b: Forbidden: not allowed]"#
        );
        assert_eq!(
            inv.to_status("Release", "tether.dev", "r")["details"]["causes"]
                .as_array()
                .map(Vec::len),
            Some(3)
        );
    }

    #[test]
    fn unknown_fields_under_strict_are_a_bad_request() {
        let inv = invalid(vec![Cause::unknown("spec.foo"), Cause::unknown("spec.bar")]);
        let status = inv.to_status("Environment", "tether.dev", "web");
        assert_eq!(status["code"], 400);
        assert_eq!(status["reason"], "BadRequest");
        assert_eq!(
            status["message"],
            r#"Environment in version "v1alpha1" cannot be handled as a Environment: strict decoding error: unknown field "spec.foo", unknown field "spec.bar""#
        );
    }

    #[test]
    fn core_kinds_have_no_group_in_the_message() {
        let inv = invalid(vec![Cause::required(
            "metadata.name",
            "name or generateName is required",
        )]);
        let status = inv.to_status("Secret", "", "");
        assert_eq!(
            status["message"],
            r#"Secret "" is invalid: metadata.name: Required value: name or generateName is required"#
        );
        assert!(status["details"].get("group").is_none());
    }
}
