//! API errors as the real server reports them: a `meta.k8s.io/v1` `Status` body with the
//! HTTP code, reason and message text that clients (kube-rs, kubectl) key their behaviour on.

use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde_json::{Value, json};

/// One cause inside a `Status` (field errors, SSA conflicts).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusCause {
    /// Machine-readable reason, e.g. `FieldManagerConflict`, `FieldValueInvalid`.
    pub reason: String,
    /// Human-readable message.
    pub message: String,
    /// The field path, e.g. `.spec.replicas`.
    pub field: String,
}

/// An error answer of the API: everything needed to render its `Status`.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    /// HTTP status code.
    pub code: u16,
    /// `Status.reason` (`NotFound`, `Conflict`, …).
    pub reason: &'static str,
    /// `Status.message`.
    pub message: String,
    /// `Status.details`, when the error concerns one object.
    pub details: Option<Value>,
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    fn with_details(mut self, name: &str, group: &str, kind: &str) -> Self {
        self.details = Some(json!({"name": name, "group": group, "kind": kind}));
        self
    }

    /// 404 for an object: `configmaps "x" not found`.
    pub fn not_found(qualified: &str, name: &str, group: &str, plural: &str) -> Self {
        Self::new(404, "NotFound", format!("{qualified} \"{name}\" not found"))
            .with_details(name, group, plural)
    }

    /// 404 for a path the server does not serve.
    pub fn path_not_found(path: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("the server could not find the requested resource ({path})"),
        )
    }

    /// 409 on create of an existing name.
    pub fn already_exists(qualified: &str, name: &str, group: &str, plural: &str) -> Self {
        Self::new(
            409,
            "AlreadyExists",
            format!("{qualified} \"{name}\" already exists"),
        )
        .with_details(name, group, plural)
    }

    /// 409 on a stale resourceVersion (optimistic concurrency).
    pub fn conflict(qualified: &str, name: &str, group: &str, plural: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {qualified} \"{name}\": the object has been \
                 modified; please apply your changes to the latest version and try again"
            ),
        )
        .with_details(name, group, plural)
    }

    /// 409 with a free-form message (delete preconditions).
    pub fn conflict_message(
        qualified: &str,
        name: &str,
        group: &str,
        plural: &str,
        why: &str,
    ) -> Self {
        Self::new(
            409,
            "Conflict",
            format!("Operation cannot be fulfilled on {qualified} \"{name}\": {why}"),
        )
        .with_details(name, group, plural)
    }

    /// 409 for server-side apply conflicts, listing fields and managers.
    pub fn apply_conflict(
        name: &str,
        group: &str,
        plural: &str,
        conflicts: &[(String, String, String)],
    ) -> Self {
        // conflicts: (manager, apiVersion, field)
        let n = conflicts.len();
        let mut message = format!(
            "Apply failed with {n} conflict{}: ",
            if n == 1 { "" } else { "s" }
        );
        let mut causes = Vec::new();
        let mut by_manager: Vec<(&str, &str, Vec<&str>)> = Vec::new();
        for (manager, api_version, field) in conflicts {
            causes.push(json!({
                "reason": "FieldManagerConflict",
                "message": format!("conflict with \"{manager}\" using {api_version}"),
                "field": field,
            }));
            match by_manager.iter_mut().find(|(m, _, _)| m == manager) {
                Some((_, _, fields)) => fields.push(field),
                None => by_manager.push((manager, api_version, vec![field])),
            }
        }
        let parts: Vec<String> = by_manager
            .iter()
            .map(|(manager, api_version, fields)| {
                if fields.len() == 1 {
                    format!(
                        "conflict with \"{manager}\" using {api_version}: {}",
                        fields[0]
                    )
                } else {
                    let list: Vec<String> = fields.iter().map(|f| format!("- {f}")).collect();
                    format!(
                        "conflicts with \"{manager}\" using {api_version}:\n{}",
                        list.join("\n")
                    )
                }
            })
            .collect();
        message.push_str(&parts.join("\n"));
        let mut err = Self::new(409, "Conflict", message);
        err.details = Some(json!({"name": name, "group": group, "kind": plural, "causes": causes}));
        err
    }

    /// 410 for a resourceVersion older than the retained history.
    pub fn expired(requested: u64, oldest: u64) -> Self {
        Self::new(
            410,
            "Expired",
            format!("too old resource version: {requested} ({oldest})"),
        )
    }

    /// 422 with field causes: `Kind.group "name" is invalid: field: reason`.
    pub fn invalid(kind: &str, group: &str, name: &str, causes: &[StatusCause]) -> Self {
        let kind_group = if group.is_empty() {
            kind.to_owned()
        } else {
            format!("{kind}.{group}")
        };
        let text: Vec<String> = causes
            .iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect();
        // As an aggregate of field errors prints: one alone, several in brackets.
        let joined = match text.as_slice() {
            [one] => one.clone(),
            several => format!("[{}]", several.join(", ")),
        };
        let message = format!("{kind_group} \"{name}\" is invalid: {joined}");
        let causes_json: Vec<Value> = causes
            .iter()
            .map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field}))
            .collect();
        let mut err = Self::new(422, "Invalid", message);
        err.details =
            Some(json!({"name": name, "group": group, "kind": kind, "causes": causes_json}));
        err
    }

    /// 400 for a malformed request.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    /// 403 for a request refused before authorization (Host, Origin).
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(403, "Forbidden", message)
    }

    /// 401 for a request without a valid token, with the real server's text.
    pub fn unauthorized() -> Self {
        Self::new(401, "Unauthorized", "Unauthorized")
    }

    /// 405 for a verb the resource does not support.
    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(405, "MethodNotAllowed", message)
    }

    /// 415 for an unsupported patch content type.
    pub fn unsupported_media_type(content_type: &str) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format ({content_type:?}) - accepted \
                 media types include: application/json-patch+json, \
                 application/merge-patch+json, application/apply-patch+yaml"
            ),
        )
    }

    /// 415 for a body in a media type that is accepted only for some kinds.
    pub fn unsupported_media_type_because(content_type: &str, why: &str) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request in {content_type:?} cannot be handled: {why}; send application/json"
            ),
        )
    }

    /// 500 for a storage failure (never carries object contents).
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "InternalError", message)
    }

    /// The `Status` object.
    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(details) = &self.details {
            status["details"] = details.clone();
        }
        status
    }

    /// Wraps a `Status` body produced elsewhere (schema admission) with its code.
    pub fn from_status(status: Value) -> Self {
        let code = status
            .get("code")
            .and_then(Value::as_u64)
            .and_then(|c| u16::try_from(c).ok())
            .unwrap_or(422);
        let message = status
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("invalid object")
            .to_owned();
        let reason = match status.get("reason").and_then(Value::as_str) {
            Some("BadRequest") => "BadRequest",
            _ => "Invalid",
        };
        ApiError {
            code,
            reason,
            message,
            details: status.get("details").cloned(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = self.to_status().to_string();
        (
            code,
            [(http::header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response()
    }
}
