//! kubectl v1.32 against a tiny HTTP server that serves only what `crate::schema` provides
//! (OpenAPI v3 documents, admission, Table output) plus legacy discovery built from the
//! CRDs: `kubectl explain` prints the Tether field docs, `kubectl create` finds
//! `fieldValidation` in the OpenAPI and sends `fieldValidation=Strict`, invalid objects
//! print the API server's messages, and `kubectl get` prints the printer columns.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tether::schema::openapi::OpenApi;
use tether::schema::table::{TableConvertor, TableOptions};
use tether::schema::{FieldValidation, SchemaRegistry};

struct State {
    registry: SchemaRegistry,
    openapi: OpenApi,
    crds: Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>,
    objects: Mutex<Vec<Value>>,
    /// The query string of every write request.
    write_queries: Mutex<Vec<String>>,
}

fn json_response(status: StatusCode, body: Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn resource_list(state: &State, group: &str, version: &str) -> Option<Value> {
    let resources: Vec<Value> = if group.is_empty() {
        [("secrets", "Secret"), ("configmaps", "ConfigMap"), ("events", "Event")]
            .iter()
            .map(|(plural, kind)| json!({"name": plural, "singularName": "", "namespaced": true, "kind": kind, "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"]}))
            .chain(std::iter::once(json!({"name": "namespaces", "singularName": "", "namespaced": false, "kind": "Namespace", "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"]})))
            .collect()
    } else {
        state
            .crds
            .iter()
            .filter(|c| c.spec.group == group && c.spec.versions.iter().any(|v| v.name == version))
            .map(|c| {
                json!({
                    "name": c.spec.names.plural,
                    "singularName": c.spec.names.singular,
                    "namespaced": c.spec.scope == "Namespaced",
                    "kind": c.spec.names.kind,
                    "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
                    "shortNames": c.spec.names.short_names,
                    "categories": c.spec.names.categories,
                })
            })
            .collect()
    };
    if resources.is_empty() {
        return None;
    }
    let group_version = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources}),
    )
}

async fn handle(
    state: Arc<State>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().trim_end_matches('/').to_string();
    let query = uri.query().unwrap_or_default().to_string();
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let not_found = || {
        json_response(
            StatusCode::NOT_FOUND,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404}),
        )
    };
    match (method.as_str(), segments.as_slice()) {
        ("GET", ["version"]) => json_response(
            StatusCode::OK,
            json!({"major": "1", "minor": "32", "gitVersion": "v1.32.0", "platform": "linux/amd64"}),
        ),
        ("GET", ["api"]) => json_response(
            StatusCode::OK,
            json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}),
        ),
        ("GET", ["apis"]) => {
            let groups: Vec<Value> = state
                .crds
                .iter()
                .map(|c| {
                    let gv = json!({"groupVersion": format!("{}/{}", c.spec.group, c.spec.versions[0].name), "version": c.spec.versions[0].name});
                    json!({"name": c.spec.group, "versions": [gv], "preferredVersion": gv})
                })
                .fold(Vec::<Value>::new(), |mut acc, g| {
                    if !acc.iter().any(|a| a["name"] == g["name"]) {
                        acc.push(g);
                    }
                    acc
                });
            json_response(
                StatusCode::OK,
                json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}),
            )
        }
        ("GET", ["api", version]) => resource_list(&state, "", version)
            .map_or_else(not_found, |l| json_response(StatusCode::OK, l)),
        ("GET", ["apis", group, version]) => resource_list(&state, group, version)
            .map_or_else(not_found, |l| json_response(StatusCode::OK, l)),
        ("GET", ["openapi", "v3"]) => json_response(StatusCode::OK, state.openapi.index()),
        ("GET", ["openapi", "v3", ..]) => state
            .openapi
            .document(&path)
            .map_or_else(not_found, |d| json_response(StatusCode::OK, d.clone())),
        ("GET", [.., "namespaces", _ns, _plural, _name]) => not_found(),
        ("POST", [.., "namespaces", _ns, _plural])
        | ("PATCH", [.., "namespaces", _ns, _plural, _]) => {
            let content_type = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            state
                .write_queries
                .lock()
                .map(|mut q| q.push(format!("{method} {content_type} {query}")))
                .ok();
            if method == Method::PATCH && content_type != "application/apply-patch+yaml" {
                return json_response(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    json!({"kind": "Status", "code": 415}),
                );
            }
            let Ok(mut obj) = serde_json::from_slice::<Value>(&body) else {
                return json_response(
                    StatusCode::BAD_REQUEST,
                    json!({"kind": "Status", "code": 400}),
                );
            };
            let validation = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("fieldValidation="))
                .and_then(FieldValidation::from_query)
                .unwrap_or_default();
            let api_version = obj["apiVersion"].as_str().unwrap_or_default().to_string();
            let kind = obj["kind"].as_str().unwrap_or_default().to_string();
            let name = obj["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            if let Some((group, version)) = api_version.split_once('/')
                && let Err(invalid) = state
                    .registry
                    .admit(group, version, &kind, None, &mut obj, validation)
            {
                let status = invalid.to_status(&kind, group, &name);
                let code = StatusCode::from_u16(status["code"].as_u64().unwrap_or(422) as u16)
                    .unwrap_or(StatusCode::UNPROCESSABLE_ENTITY);
                return json_response(code, status);
            }
            obj["metadata"]["creationTimestamp"] = json!(jiff::Timestamp::now().to_string());
            obj["metadata"]["resourceVersion"] = json!("1");
            state.objects.lock().map(|mut o| o.push(obj.clone())).ok();
            json_response(StatusCode::CREATED, obj)
        }
        ("GET", ["apis", group, version, "namespaces", _ns, plural]) => {
            let wants_table = headers
                .get(header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|a| a.contains("as=Table"));
            let items: Vec<Value> = state
                .objects
                .lock()
                .map(|o| {
                    o.iter()
                        .filter(|o| o["apiVersion"] == format!("{group}/{version}"))
                        .cloned()
                        .collect()
                })
                .unwrap_or_default();
            if !wants_table {
                return json_response(
                    StatusCode::OK,
                    json!({"kind": "List", "apiVersion": "v1", "items": items}),
                );
            }
            let Some(conv) = state.registry.table(group, version, plural) else {
                return not_found();
            };
            json_response(
                StatusCode::OK,
                conv.table(
                    &items,
                    Some("1"),
                    None,
                    TableOptions::default(),
                    jiff::Timestamp::now(),
                ),
            )
        }
        _ => not_found(),
    }
}

struct Server {
    state: Arc<State>,
    dir: tempfile::TempDir,
    _shutdown: tokio::sync::oneshot::Sender<()>,
}

impl Server {
    async fn start() -> Self {
        tether::install_crypto_provider();
        let crds = tether::api::crds();
        let state = Arc::new(State {
            registry: SchemaRegistry::new(&crds).unwrap_or_else(|e| panic!("{e}")),
            openapi: OpenApi::new(&crds).unwrap_or_else(|e| panic!("{e}")),
            crds,
            objects: Mutex::new(Vec::new()),
            write_queries: Mutex::new(Vec::new()),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let handler_state = state.clone();
        let app = axum::Router::new().fallback(
            move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                let state = handler_state.clone();
                async move { handle(state, method, uri, headers, body).await }
            },
        );
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await;
        });
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let kubeconfig = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: t\n  cluster:\n    server: http://{addr}\ncontexts:\n- name: t\n  context:\n    cluster: t\n    user: t\n    namespace: default\nusers:\n- name: t\n  user: {{}}\ncurrent-context: t\n"
        );
        std::fs::write(dir.path().join("kubeconfig"), kubeconfig).unwrap_or_else(|e| panic!("{e}"));
        Self {
            state,
            dir,
            _shutdown: tx,
        }
    }

    async fn kubectl(&self, args: &[&str]) -> (bool, String, String) {
        let kubeconfig = self.dir.path().join("kubeconfig");
        let cache = self.dir.path().join("cache");
        let mut cmd = Command::new("kubectl");
        cmd.arg("--kubeconfig")
            .arg(&kubeconfig)
            .arg("--cache-dir")
            .arg(&cache)
            .args(args)
            .current_dir(repo());
        let output = tokio::task::spawn_blocking(move || cmd.output())
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|e| panic!("kubectl: {e}"));
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fixture(path: &str) -> String {
    let p: &Path = &repo().join(path);
    assert!(p.exists(), "{}", p.display());
    path.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_explain_prints_the_tether_field_docs() {
    let server = Server::start().await;
    let (ok, out, err) = server.kubectl(&["explain", "environment.spec"]).await;
    assert!(ok, "explain failed: {err}");
    assert!(out.contains("GROUP:      tether.dev"), "{out}");
    assert!(out.contains("KIND:       Environment"), "{out}");
    assert!(out.contains("FIELD: spec <Object>"), "{out}");
    for field in [
        "credentials",
        "driftPolicy",
        "render",
        "vercel",
        "fly",
        "supabase",
    ] {
        assert!(
            out.contains(&format!("  {field}\t")),
            "missing {field} in {out}"
        );
    }

    let (ok, out, err) = server
        .kubectl(&["explain", "environment.spec.render", "--recursive"])
        .await;
    assert!(ok, "explain --recursive failed: {err}");
    assert!(out.contains("services\t<[]Object>"), "{out}");
    assert!(out.contains("schedule\t<string>"), "{out}");

    let (ok, out, err) = server.kubectl(&["explain", "secrets.data"]).await;
    assert!(ok, "explain secrets failed: {err}");
    assert!(out.contains("KIND:       Secret"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_create_uses_server_side_field_validation_and_prints_api_errors() {
    let server = Server::start().await;
    let (ok, out, err) = server
        .kubectl(&[
            "create",
            "-f",
            &fixture("config/samples/10-environment-staging.yaml"),
        ])
        .await;
    assert!(ok, "create failed: {out} {err}");
    assert!(
        out.contains("environment.tether.dev/staging created"),
        "{out}"
    );
    let queries = server
        .state
        .write_queries
        .lock()
        .map(|q| q.clone())
        .unwrap_or_default();
    assert!(
        queries.iter().any(|q| q.contains("fieldValidation=Strict")),
        "kubectl did not find fieldValidation in the OpenAPI document: {queries:?}"
    );

    let (ok, _, err) = server
        .kubectl(&[
            "create",
            "-f",
            &fixture("tests/fixtures/invalid/render-cron-without-schedule.yaml"),
        ])
        .await;
    assert!(!ok);
    assert!(
        // kubectl rebuilds the message from `details` (kind, name, causes), as it does for
        // a real API server's 422.
        err.contains(r#"The Environment "bad" is invalid: spec.render.services[0]: Invalid value: schedule is required for cron services and not allowed for other types"#),
        "{err}"
    );

    let unknown = server.dir.path().join("unknown.yaml");
    std::fs::write(&unknown, "apiVersion: tether.dev/v1alpha1\nkind: Migration\nmetadata:\n  name: m\n  namespace: default\nspec:\n  colour: red\n")
        .unwrap_or_else(|e| panic!("{e}"));
    let (ok, _, err) = server
        .kubectl(&["create", "-f", &unknown.display().to_string()])
        .await;
    assert!(!ok);
    assert!(
        err.contains(r#"strict decoding error: unknown field "spec.colour""#),
        "{err}"
    );

    let (ok, out, err) = server
        .kubectl(&["create", "-f", &fixture("config/samples/00-secrets.yaml")])
        .await;
    assert!(ok, "create secrets failed: {out} {err}");
    let queries = server
        .state
        .write_queries
        .lock()
        .map(|q| q.clone())
        .unwrap_or_default();
    assert!(
        queries
            .iter()
            .filter(|q| q.contains("fieldValidation=Strict"))
            .count()
            >= 2,
        "{queries:?}"
    );

    let (ok, out, err) = server.kubectl(&["get", "environments"]).await;
    assert!(ok, "get failed: {err}");
    let header: Vec<&str> = out
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["NAME", "READY", "OBJECTS", "STATUS", "AGE"],
        "{out}"
    );
    assert!(
        out.lines().nth(1).is_some_and(|l| l.starts_with("staging")),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_apply_client_and_server_side_rely_on_server_validation() {
    let server = Server::start().await;
    let (ok, out, err) = server
        .kubectl(&["apply", "-f", &fixture("config/samples/30-release.yaml")])
        .await;
    assert!(ok, "apply failed: {out} {err}");
    assert!(out.contains("release.tether.dev/"), "{out}");
    let (ok, out, err) = server
        .kubectl(&[
            "apply",
            "--server-side",
            "-f",
            &fixture("config/samples/20-migration.yaml"),
        ])
        .await;
    assert!(ok, "server-side apply failed: {out} {err}");
    assert!(out.contains("serverside-applied"), "{out}");
    let (ok, _, err) = server
        .kubectl(&[
            "apply",
            "--server-side",
            "-f",
            &fixture("tests/fixtures/invalid/migration-two-sources.yaml"),
        ])
        .await;
    assert!(!ok);
    assert!(
        err.contains("set exactly one of inline or configMapRef"),
        "{err}"
    );
    let queries = server
        .state
        .write_queries
        .lock()
        .map(|q| q.clone())
        .unwrap_or_default();
    assert!(
        queries
            .iter()
            .any(|q| q.starts_with("POST ") && q.contains("fieldValidation=Strict")),
        "client-side apply must create with fieldValidation=Strict: {queries:?}"
    );
    assert!(
        queries
            .iter()
            .any(|q| q.starts_with("PATCH application/apply-patch+yaml")
                && q.contains("fieldValidation=Strict")),
        "server-side apply must send fieldValidation=Strict: {queries:?}"
    );
}

#[test]
fn the_table_convertor_is_available_for_every_tether_kind() {
    let crds = tether::api::crds();
    for crd in &crds {
        let conv = TableConvertor::for_crd(crd, &crd.spec.versions[0].name)
            .ok()
            .flatten();
        assert!(
            conv.is_some_and(|c| c.column_definitions().len() > 1),
            "{:?}",
            crd.metadata.name
        );
    }
}
