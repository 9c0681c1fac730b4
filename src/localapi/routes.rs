//! The HTTP surface: one fallback handler that parses Kubernetes REST paths
//! (`/api/v1/namespaces/<ns>/<plural>/<name>/status`, `/apis/<g>/<v>/…`), maps the method and
//! query to a verb, calls `storage`, and renders objects, lists, watch streams and `Status`
//! errors the way the real server does.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Query, Request, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use serde_json::{Value, json};
use tokio::sync::broadcast;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::access;
use super::admission::parse_field_validation;
use super::discovery;
use super::events;
use super::patch::{self, PatchType};
use super::protobuf;
use super::resources::{Representation, ResourceDef};
use super::security::ApiSecurity;
use super::selector::{FieldSelector, LabelSelector};
use super::status::ApiError;
use super::storage::{
    self, DeleteOpts, Input, ListOpts, Storage, WatchFrom, WriteCtx, WriteOutcome,
};
use super::watch::{EventType, WatchEvent, event_line};
use crate::schema::openapi::OpenApi;
use crate::schema::table::{IncludeObject, TableConvertor, TableOptions};

/// Largest request body accepted (the real server's limit is 3 MiB per object).
const MAX_BODY: usize = 3 * 1024 * 1024;

/// Shared state of the HTTP handlers.
pub struct App {
    /// The token required of every request but the health checks (`None`: no token).
    pub security: Option<ApiSecurity>,
    /// The objects.
    pub storage: Arc<Storage>,
    /// Ends watch streams on shutdown.
    pub shutdown: CancellationToken,
    /// `host:port` the server listens on (for `/api`).
    pub address: String,
    /// How often watch streams with `allowWatchBookmarks` get a BOOKMARK.
    pub bookmark_interval: Duration,
    /// The `/openapi/v3` documents (`kubectl explain`, kubectl's field-validation check).
    pub openapi: OpenApi,
}

type Query_ = HashMap<String, String>;

/// The fallback handler for every request.
pub async fn handle(State(app): State<Arc<App>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    // Authentication first, as on a real API server; the token is never logged.
    if let Some(security) = &app.security
        && !ApiSecurity::is_public(parts.uri.path())
        && !security.authenticates(&parts.headers)
    {
        tracing::debug!(method = %parts.method, path = %parts.uri.path(), "local API request without a valid token");
        return ApiError::unauthorized().into_response();
    }
    if let Err(refused) = access::check(&parts.method, &parts.uri, &parts.headers) {
        tracing::debug!(method = %parts.method, path = %parts.uri.path(), code = refused.code, "local API request refused");
        return refused.into_response();
    }
    let query: Query_ = Query::<Query_>::try_from_uri(&parts.uri)
        .map(|q| q.0)
        .unwrap_or_default();
    let path = parts.uri.path().to_owned();
    tracing::debug!(method = %parts.method, %path, accept = ?parts.headers.get(header::ACCEPT), "local API request");
    let body = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(e) => {
            return ApiError::bad_request(format!("failed to read request body: {e}"))
                .into_response();
        }
    };
    match route(&app, &parts.method, &path, &query, &parts.headers, body).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    }
}

fn json_response(code: StatusCode, value: &Value) -> Response {
    let body = serde_json::to_vec(value).unwrap_or_default();
    (code, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn route(
    app: &Arc<App>,
    method: &Method,
    path: &str,
    query: &Query_,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let table = app.storage.table().clone();
    let get_only = |v: Value| -> Result<Response, ApiError> {
        if method == Method::GET {
            Ok(json_response(StatusCode::OK, &v))
        } else {
            Err(ApiError::method_not_allowed(format!(
                "{method} is not supported on {path}"
            )))
        }
    };
    match segments.as_slice() {
        ["version"] => get_only(discovery::version()),
        ["healthz" | "readyz" | "livez", ..] => {
            Ok((StatusCode::OK, [(header::CONTENT_TYPE, "text/plain")], "ok").into_response())
        }
        ["api"] => get_only(discovery::core_versions(&app.address)),
        ["openapi", "v3"] => get_only(app.openapi.index()),
        ["openapi", "v3", rest @ ..] => get_only(
            app.openapi
                .document(&rest.join("/"))
                .cloned()
                .ok_or_else(|| ApiError::path_not_found(path))?,
        ),
        ["apis"] => get_only(discovery::group_list(&table)),
        ["api", version] => get_only(
            discovery::resource_list(&table, "", version)
                .ok_or_else(|| ApiError::path_not_found(path))?,
        ),
        ["apis", group] => {
            get_only(discovery::group(&table, group).ok_or_else(|| ApiError::path_not_found(path))?)
        }
        ["apis", group, version] => get_only(
            discovery::resource_list(&table, group, version)
                .ok_or_else(|| ApiError::path_not_found(path))?,
        ),
        ["api", version, rest @ ..] => {
            let target = parse_target(&table, "", version, rest, path)?;
            resource_request(app, method, target, query, headers, body).await
        }
        ["apis", group, version, rest @ ..] => {
            let target = parse_target(&table, group, version, rest, path)?;
            resource_request(app, method, target, query, headers, body).await
        }
        _ => Err(ApiError::path_not_found(path)),
    }
}

/// What a resource path addresses.
struct Target {
    def: Arc<ResourceDef>,
    namespace: Option<String>,
    name: Option<String>,
    status: bool,
}

fn parse_target(
    table: &super::resources::ResourceTable,
    group: &str,
    version: &str,
    rest: &[&str],
    path: &str,
) -> Result<Target, ApiError> {
    let not_found = || ApiError::path_not_found(path);
    let (namespace, rest) = match rest {
        ["namespaces", ns, plural, tail @ ..]
            if table
                .get(group, version, plural)
                .is_some_and(|d| d.namespaced) =>
        {
            (Some((*ns).to_owned()), {
                let mut v = vec![*plural];
                v.extend_from_slice(tail);
                v
            })
        }
        _ => (None, rest.to_vec()),
    };
    let (plural, tail) = rest.split_first().ok_or_else(not_found)?;
    let def = table.get(group, version, plural).ok_or_else(not_found)?;
    let (name, status) = match tail {
        [] => (None, false),
        [name] => (Some((*name).to_owned()), false),
        [name, "status"] if def.status_subresource => (Some((*name).to_owned()), true),
        _ => return Err(not_found()),
    };
    if def.namespaced && name.is_some() && namespace.is_none() {
        return Err(not_found());
    }
    Ok(Target {
        def,
        namespace,
        name,
        status,
    })
}

/// The representation the client asked for in `Accept`.
#[derive(Clone)]
enum Format {
    /// The objects themselves.
    Object,
    /// `as=Table` (kubectl get).
    Table(TableConvertor, TableOptions),
    /// `as=PartialObjectMetadata[List]` (metadata-only clients and watchers).
    Metadata,
}

impl Format {
    /// The object as this format renders one item (Tables wrap their rows elsewhere).
    fn item(&self, wire: Value) -> Value {
        match self {
            Format::Metadata => json!({
                "kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": wire.get("metadata").cloned().unwrap_or_else(|| json!({})),
            }),
            _ => wire,
        }
    }

    /// One object (a GET or a watch event).
    fn single(&self, wire: Value) -> Value {
        match self {
            Format::Table(convertor, options) => {
                let rv = wire
                    .pointer("/metadata/resourceVersion")
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                convertor.table(
                    std::slice::from_ref(&wire),
                    rv.as_deref(),
                    None,
                    *options,
                    jiff::Timestamp::now(),
                )
            }
            other => other.item(wire),
        }
    }
}

fn accepts(headers: &HeaderMap, wanted: &str, group: &str) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|media| {
            let params: Vec<&str> = media.split(';').map(str::trim).collect();
            params.contains(&wanted) && params.contains(&group)
        })
}

/// The format of the response from the request's `Accept` and `includeObject`.
fn response_format(
    app: &App,
    def: &ResourceDef,
    headers: &HeaderMap,
    query: &Query_,
) -> Result<Format, ApiError> {
    if accepts(headers, "as=Table", "g=meta.k8s.io") {
        let include_object = match query.get("includeObject").map(String::as_str) {
            None | Some("") => IncludeObject::default(),
            Some(v) => IncludeObject::from_query(v).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "includeObject must be one of None, Metadata or Object, got {v:?}"
                ))
            })?,
        };
        let convertor = if def.custom {
            app.storage
                .admission()
                .registry()
                .table(&def.group, &def.version, &def.plural)
                .cloned()
        } else {
            TableConvertor::for_builtin(&def.group, &def.kind)
        };
        if let Some(c) = convertor {
            return Ok(Format::Table(
                c,
                TableOptions {
                    include_object,
                    no_headers: false,
                },
            ));
        }
    }
    if accepts(headers, "as=PartialObjectMetadataList", "g=meta.k8s.io")
        || accepts(headers, "as=PartialObjectMetadata", "g=meta.k8s.io")
    {
        return Ok(Format::Metadata);
    }
    Ok(Format::Object)
}

fn table_response(value: &Value) -> Response {
    let body = serde_json::to_vec(value).unwrap_or_default();
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "application/json;as=Table;v=v1;g=meta.k8s.io",
        )],
        body,
    )
        .into_response()
}

/// Decodes a POST/PUT body: JSON, or the protobuf kubectl's typed clients send for
/// ConfigMaps, Secrets and Namespaces; anything else gets 415.
fn decode_body(headers: &HeaderMap, body: &[u8]) -> Result<Value, ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    match content_type.split(';').next().unwrap_or_default().trim() {
        "" | "application/json" | "*/*" => patch::decode_json(body),
        "application/vnd.kubernetes.protobuf" => protobuf::decode(body)
            .map_err(|e| ApiError::unsupported_media_type_because(content_type, &e.to_string())),
        _ => Err(ApiError::unsupported_media_type(content_type)),
    }
}

fn flag(query: &Query_, key: &str) -> bool {
    matches!(query.get(key).map(String::as_str), Some("true" | "1"))
}

fn write_ctx(query: &Query_, headers: &HeaderMap, apply: bool) -> Result<WriteCtx, ApiError> {
    let manager = match query.get("fieldManager").filter(|m| !m.is_empty()) {
        Some(m) => m.clone(),
        None if apply => {
            return Err(ApiError::bad_request(
                "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is \
                 required for apply requests",
            ));
        }
        None => headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .and_then(|ua| ua.split('/').next())
            .filter(|m| !m.is_empty())
            .unwrap_or("unknown")
            .to_owned(),
    };
    let dry_run = match query.get("dryRun").map(String::as_str) {
        None | Some("") => false,
        Some("All") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "dryRun may only be All, got {other:?}"
            )));
        }
    };
    Ok(WriteCtx {
        manager,
        dry_run,
        force: flag(query, "force"),
        validation: parse_field_validation(query.get("fieldValidation").map(String::as_str))?,
    })
}

fn list_opts(def: &ResourceDef, query: &Query_) -> Result<ListOpts, ApiError> {
    let bad = |e: super::selector::SelectorError| ApiError::bad_request(e.to_string());
    let labels =
        LabelSelector::parse(query.get("labelSelector").map_or("", String::as_str)).map_err(bad)?;
    let raw_fields = query.get("fieldSelector").map_or("", String::as_str);
    let raw_fields = if def.representation == Representation::EventsV1 {
        raw_fields
            .split(',')
            .map(|req| match req.split_once('=') {
                Some((f, v)) => format!("{}={v}", events::v1_field_to_core(f)),
                None => req.to_owned(),
            })
            .collect::<Vec<_>>()
            .join(",")
    } else {
        raw_fields.to_owned()
    };
    let is_events = def.storage.as_ref() == super::resources::EVENTS_STORAGE;
    let is_secrets = def.group.is_empty() && def.plural == "secrets";
    let supported = move |f: &str| {
        matches!(f, "metadata.name" | "metadata.namespace")
            || (is_events && events::supported_field(f))
            || (is_secrets && f == "type")
    };
    let fields = FieldSelector::parse(&raw_fields, &supported).map_err(bad)?;
    let limit = match query.get("limit") {
        Some(l) => Some(
            l.parse::<usize>()
                .map_err(|_| ApiError::bad_request(format!("invalid limit {l:?}")))?,
        ),
        None => None,
    };
    let resource_version = parse_rv(query)?;
    let exact = query.get("resourceVersionMatch").map(String::as_str) == Some("Exact");
    Ok(ListOpts {
        labels,
        fields,
        limit,
        continue_token: query.get("continue").filter(|c| !c.is_empty()).cloned(),
        resource_version,
        exact,
    })
}

fn parse_rv(query: &Query_) -> Result<Option<u64>, ApiError> {
    match query.get("resourceVersion").map(String::as_str) {
        None | Some("") => Ok(None),
        Some(rv) => rv.parse::<u64>().map(Some).map_err(|_| {
            ApiError::bad_request(format!("invalid resourceVersion {rv:?}: not a number"))
        }),
    }
}

async fn run_write<T: Send + 'static>(
    storage: &Arc<Storage>,
    f: impl FnOnce(&Storage) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    if storage.is_durable() {
        let storage = storage.clone();
        tokio::task::spawn_blocking(move || f(&storage))
            .await
            .map_err(|e| ApiError::internal(format!("write task failed: {e}")))?
    } else {
        f(storage)
    }
}

fn object_response(def: &ResourceDef, outcome: WriteOutcome) -> Response {
    let code = if outcome.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let mut response = json_response(code, &storage::present(def, &outcome.object));
    for warning in outcome.warnings {
        let text = format!("299 - {:?}", warning.replace('"', "'"));
        if let Ok(value) = HeaderValue::from_str(&text) {
            response.headers_mut().append(header::WARNING, value);
        }
    }
    response
}

async fn resource_request(
    app: &Arc<App>,
    method: &Method,
    target: Target,
    query: &Query_,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let Target {
        def,
        namespace,
        name,
        status,
    } = target;
    let storage = &app.storage;
    match (method.clone(), name) {
        (Method::GET, None) => {
            let opts = list_opts(&def, query)?;
            let format = response_format(app, &def, headers, query)?;
            if flag(query, "watch") {
                return watch(app, def, namespace, opts, query, format);
            }
            let page = storage.list(&def, namespace.as_deref(), &opts)?;
            let items: Vec<Value> = page
                .items
                .iter()
                .map(|o| format.item(storage::present(&def, o)))
                .collect();
            if let Format::Table(convertor, options) = &format {
                return Ok(table_response(&convertor.table(
                    &items,
                    Some(&page.resource_version.to_string()),
                    page.continue_token.as_deref(),
                    *options,
                    jiff::Timestamp::now(),
                )));
            }
            let (kind, api_version) = match format {
                Format::Metadata => (
                    "PartialObjectMetadataList".to_owned(),
                    "meta.k8s.io/v1".to_owned(),
                ),
                _ => (def.list_kind.clone(), def.api_version()),
            };
            Ok(json_response(
                StatusCode::OK,
                &json!({
                    "kind": kind,
                    "apiVersion": api_version,
                    "metadata": storage::list_metadata(
                        page.resource_version,
                        page.continue_token.as_deref(),
                        page.remaining,
                    ),
                    "items": items,
                }),
            ))
        }
        (Method::GET, Some(name)) => {
            let obj = storage::present(&def, &*storage.get(&def, namespace.as_deref(), &name)?);
            let format = response_format(app, &def, headers, query)?;
            let body = format.single(obj);
            match format {
                Format::Table(..) => Ok(table_response(&body)),
                _ => Ok(json_response(StatusCode::OK, &body)),
            }
        }
        (Method::POST, None) => {
            if def.namespaced && namespace.is_none() {
                return Err(ApiError::method_not_allowed(format!(
                    "{} must be created in a namespace (POST /…/namespaces/<ns>/{})",
                    def.qualified(),
                    def.plural
                )));
            }
            let ctx = write_ctx(query, headers, false)?;
            let obj = decode_body(headers, &body)?;
            let d = def.clone();
            let outcome = run_write(storage, move |s| {
                s.create(&d, namespace.as_deref(), obj, &ctx)
            })
            .await?;
            Ok(object_response(&def, outcome))
        }
        (Method::PUT, Some(name)) => {
            let ctx = write_ctx(query, headers, false)?;
            let obj = decode_body(headers, &body)?;
            let d = def.clone();
            let outcome = run_write(storage, move |s| {
                s.modify(
                    &d,
                    namespace.as_deref(),
                    &name,
                    status,
                    Input::Replace(obj),
                    &ctx,
                )
            })
            .await?;
            Ok(object_response(&def, outcome))
        }
        (Method::PATCH, Some(name)) => {
            let content_type = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            let patch_type = PatchType::from_content_type(content_type)?;
            let input = match patch_type {
                PatchType::Apply => Input::Apply(patch::decode_apply(&body)?),
                other => Input::Patch(other, body),
            };
            let ctx = write_ctx(query, headers, patch_type == PatchType::Apply)?;
            let d = def.clone();
            let outcome = run_write(storage, move |s| {
                s.modify(&d, namespace.as_deref(), &name, status, input, &ctx)
            })
            .await?;
            Ok(object_response(&def, outcome))
        }
        (Method::DELETE, Some(name)) if !status => {
            let (ctx, opts) = delete_params(query, headers, &body)?;
            let d = def.clone();
            let outcome = run_write(storage, move |s| {
                s.delete(&d, namespace.as_deref(), &name, &opts, &ctx)
            })
            .await?;
            Ok(object_response(&def, outcome))
        }
        (Method::DELETE, None) => {
            let (ctx, _) = delete_params(query, headers, &body)?;
            let opts = list_opts(&def, query)?;
            let d = def.clone();
            let deleted = run_write(storage, move |s| {
                s.delete_collection(&d, namespace.as_deref(), &opts, &ctx)
            })
            .await?;
            let items: Vec<Value> = deleted.iter().map(|o| storage::present(&def, o)).collect();
            Ok(json_response(
                StatusCode::OK,
                &json!({
                    "kind": def.list_kind,
                    "apiVersion": def.api_version(),
                    "metadata": storage::list_metadata(storage.resource_version(), None, None),
                    "items": items,
                }),
            ))
        }
        (m, _) => Err(ApiError::method_not_allowed(format!(
            "{m} is not supported on {}",
            def.qualified()
        ))),
    }
}

fn delete_params(
    query: &Query_,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<(WriteCtx, DeleteOpts), ApiError> {
    let mut ctx = write_ctx(query, headers, false)?;
    let mut opts = DeleteOpts::default();
    if !body.is_empty() {
        let options = patch::decode_json(body)?;
        if let Some(pre) = options.get("preconditions") {
            opts.uid = pre.get("uid").and_then(Value::as_str).map(str::to_owned);
            opts.resource_version = pre
                .get("resourceVersion")
                .and_then(Value::as_str)
                .map(str::to_owned);
        }
        if let Some(dry) = options.get("dryRun").and_then(Value::as_array) {
            ctx.dry_run |= dry.iter().any(|d| d == "All");
        }
        if let Some(policy) = options.get("propagationPolicy").and_then(Value::as_str)
            && !matches!(policy, "Orphan" | "Background" | "Foreground")
        {
            return Err(ApiError::bad_request(format!(
                "propagationPolicy must be Orphan, Background or Foreground, got {policy:?}"
            )));
        }
    }
    Ok((ctx, opts))
}

/// Per-watch filtering and rendering.
struct Filter {
    def: Arc<ResourceDef>,
    prefix: Option<String>,
    opts: ListOpts,
    format: Format,
}

impl Filter {
    fn matches(&self, key: &str, obj: &Value) -> bool {
        self.prefix
            .as_ref()
            .is_none_or(|p| key.starts_with(p.as_str()))
            && self.opts.labels.matches_object(obj)
            && self.opts.fields.matches_object(obj)
    }

    fn render_object(&self, event_type: &str, obj: &Value) -> Bytes {
        let wire = storage::present(&self.def, obj);
        event_line(event_type, &self.format.single(wire))
    }

    /// The line for an event as this watcher sees it (selector transitions included).
    fn render(&self, event: &WatchEvent) -> Option<Bytes> {
        let now = self.matches(&event.key, &event.object);
        let before = event
            .old
            .as_ref()
            .is_some_and(|o| self.matches(&event.key, o));
        let event_type = match (event.event_type, before, now) {
            (EventType::Deleted, true, _) => EventType::Deleted,
            (EventType::Deleted, false, _) => return None,
            (_, false, true) => EventType::Added,
            (_, true, true) => event.event_type,
            (_, true, false) => EventType::Deleted,
            (_, false, false) => return None,
        };
        let same_form = matches!(self.format, Format::Object)
            && self.def.representation == Representation::Plain
            && event.object.get("apiVersion").and_then(Value::as_str)
                == Some(self.def.api_version().as_str());
        if event_type == event.event_type && same_form {
            Some(event.json_line())
        } else {
            Some(self.render_object(event_type.as_str(), &event.object))
        }
    }

    fn bookmark(&self, rv: u64, initial_events_end: bool) -> Bytes {
        let mut metadata = json!({"resourceVersion": rv.to_string()});
        if initial_events_end {
            metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        event_line(
            "BOOKMARK",
            &json!({"kind": self.def.kind, "apiVersion": self.def.api_version(), "metadata": metadata}),
        )
    }
}

struct WatchState {
    pending: VecDeque<Bytes>,
    receiver: broadcast::Receiver<Arc<WatchEvent>>,
    filter: Filter,
    last_rv: u64,
    deadline: Instant,
    bookmarks: bool,
    interval: tokio::time::Interval,
    shutdown: CancellationToken,
    done: bool,
}

fn watch_response(
    stream: impl futures::Stream<Item = Result<Bytes, Infallible>> + Send + 'static,
) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(stream),
    )
        .into_response()
}

fn watch(
    app: &Arc<App>,
    def: Arc<ResourceDef>,
    namespace: Option<String>,
    opts: ListOpts,
    query: &Query_,
    format: Format,
) -> Result<Response, ApiError> {
    let send_initial = query.get("sendInitialEvents").map(String::as_str);
    let bookmarks = flag(query, "allowWatchBookmarks");
    let from = match (send_initial, opts.resource_version) {
        (Some("true"), _) => WatchFrom::Current,
        (Some("false"), None) => WatchFrom::Now,
        (_, None | Some(0)) => WatchFrom::Current,
        (_, Some(rv)) => WatchFrom::After(rv),
    };
    if send_initial == Some("true") && !bookmarks {
        return Err(ApiError::bad_request(
            "sendInitialEvents requires allowWatchBookmarks=true",
        ));
    }
    let timeout = match query.get("timeoutSeconds") {
        Some(t) => Duration::from_secs(
            t.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("invalid timeoutSeconds {t:?}")))?,
        ),
        // The real server picks a random timeout around 30 minutes.
        None => Duration::from_secs(1800),
    };
    let filter = Filter {
        def: def.clone(),
        prefix: namespace.as_ref().map(|ns| format!("{ns}/")),
        opts,
        format,
    };
    let start = match app.storage.watch(&def, namespace.as_deref(), from) {
        Ok(start) => start,
        Err(e) if e.code == 410 => {
            // The real server answers 200 and sends the error as the only event.
            let line = event_line("ERROR", &e.to_status());
            return Ok(watch_response(futures::stream::iter([Ok(line)])));
        }
        Err(e) => return Err(e),
    };
    let mut pending = VecDeque::new();
    for obj in &start.initial {
        let key = storage_key_of(obj);
        if filter.matches(&key, obj) {
            pending.push_back(filter.render_object("ADDED", obj));
        }
    }
    if send_initial == Some("true") {
        pending.push_back(filter.bookmark(start.resource_version, true));
    }
    let mut last_rv = start.resource_version;
    for event in &start.replay {
        last_rv = last_rv.max(event.rv);
        if let Some(line) = filter.render(event) {
            pending.push_back(line);
        }
    }
    let mut interval = tokio::time::interval(app.bookmark_interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    interval.reset();
    let state = WatchState {
        pending,
        receiver: start.receiver,
        filter,
        last_rv,
        deadline: Instant::now() + timeout,
        bookmarks,
        interval,
        shutdown: app.shutdown.clone(),
        done: false,
    };
    let stream = futures::stream::unfold(state, |mut st| async move {
        loop {
            if let Some(line) = st.pending.pop_front() {
                return Some((Ok::<_, Infallible>(line), st));
            }
            if st.done {
                return None;
            }
            tokio::select! {
                biased;
                () = st.shutdown.cancelled() => st.done = true,
                () = tokio::time::sleep_until(st.deadline) => st.done = true,
                received = st.receiver.recv() => match received {
                    Ok(event) => {
                        // Replayed events are also in the live channel when they were
                        // published between subscribe and the history read: skip them.
                        if event.rv > st.last_rv {
                            st.last_rv = event.rv;
                            if let Some(line) = st.filter.render(&event) {
                                st.pending.push_back(line);
                            }
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let gone = ApiError::expired(st.last_rv, st.last_rv);
                        st.pending.push_back(event_line("ERROR", &gone.to_status()));
                        st.done = true;
                    }
                    Err(broadcast::error::RecvError::Closed) => st.done = true,
                },
                _ = st.interval.tick(), if st.bookmarks => {
                    let line = st.filter.bookmark(st.last_rv, false);
                    st.pending.push_back(line);
                }
            }
        }
    });
    Ok(watch_response(stream))
}

fn storage_key_of(obj: &Value) -> String {
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    match obj.pointer("/metadata/namespace").and_then(Value::as_str) {
        Some(ns) => format!("{ns}/{name}"),
        None => name.to_owned(),
    }
}
