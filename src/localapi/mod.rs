//! A small Kubernetes-compatible API server that runs in process on loopback, so the
//! unchanged kube-rs controllers and kubectl work without a cluster (`tether run` and every
//! end-to-end test). `tether run` serves it over HTTPS and requires a bearer token
//! ([`security`]); the test harness serves it over plain HTTP without one.
//!
//! Request flow: [`routes`] parses the REST path and query → [`storage`] runs the verb under
//! one lock (optimistic concurrency, generation, status subresource, [`managedfields`] for
//! server-side apply, finalizers, [`admission`]) → the [`store`] persists the change (redb for
//! files) → the [`watch`] hub fans the change out to watchers. [`discovery`] documents are
//! rendered from the same [`resources`] table that routing uses; errors are [`status`] bodies.
//! [`serve`] accepts the connections.

pub mod access;
pub mod admission;
pub mod discovery;
pub mod events;
pub mod managedfields;
pub mod meta;
pub mod patch;
pub mod protobuf;
pub mod resources;
pub mod routes;
pub mod security;
pub mod selector;
pub mod serve;
pub mod status;
pub mod storage;
pub mod store;
pub mod watch;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::config::{
    AuthInfo, Cluster, Context, Kubeconfig, NamedAuthInfo, NamedCluster, NamedContext,
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use self::admission::Admission;
use self::resources::ResourceTable;
use self::security::{ApiSecurity, SecurityError};
use self::storage::Storage;
use self::store::{FileStore, MemoryStore, Store};

/// Where the server keeps its objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreConfig {
    /// In memory only (tests).
    Memory,
    /// A redb file (created when missing); every write is durable before it is acknowledged.
    File(PathBuf),
}

/// What to serve and where.
#[derive(Debug, Clone)]
pub struct LocalApiConfig {
    /// Listen address, normally `127.0.0.1:0` (a random port).
    pub addr: SocketAddr,
    /// Object persistence.
    pub store: StoreConfig,
    /// The CustomResourceDefinitions whose kinds are served.
    pub crds: Vec<CustomResourceDefinition>,
    /// HTTPS and a required bearer token; `None` serves plain HTTP to anyone (tests).
    pub security: Option<ApiSecurity>,
}

/// Tuning knobs with defaults that suit both tests and `tether run`.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Changes kept per resource for watches resuming from a resourceVersion; older ones
    /// get 410 Gone.
    pub watch_history: usize,
    /// How often watches with `allowWatchBookmarks=true` receive a BOOKMARK.
    pub bookmark_interval: Duration,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            watch_history: 4096,
            bookmark_interval: Duration::from_secs(1),
        }
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum LocalApiError {
    /// A CRD cannot be served.
    #[error(transparent)]
    Crd(#[from] resources::CrdError),
    /// The store could not be opened or loaded.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// The listen address could not be bound.
    #[error("failed to listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The kube client for the server could not be built.
    #[error("failed to build a kube client for the local API: {0}")]
    Client(#[source] Box<kube::Error>),
    /// The server's own URL does not parse.
    #[error("failed to parse the local API URL: {0}")]
    Url(#[source] http::uri::InvalidUri),
    /// The serving certificate cannot be used.
    #[error("failed to set up TLS for the local API: {0}")]
    Tls(#[source] SecurityError),
    /// A CRD's schema or CEL rules do not compile.
    #[error(transparent)]
    Schema(#[from] crate::schema::SchemaError),
    /// The OpenAPI documents could not be built.
    #[error(transparent)]
    OpenApi(#[from] crate::schema::openapi::OpenApiError),
    /// A CRD does not serialize.
    #[error("failed to serialize a CRD: {0}")]
    Serialize(#[source] serde_json::Error),
}

/// A running local API server.
pub struct LocalApiHandle {
    addr: SocketAddr,
    security: Option<ApiSecurity>,
    client: kube::Client,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for LocalApiHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalApiHandle")
            .field("addr", &self.addr)
            .field("secured", &self.security.is_some())
            .finish_non_exhaustive()
    }
}

impl LocalApiHandle {
    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `https://127.0.0.1:<port>` when secured, else `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        url_for(self.addr, self.security.is_some())
    }

    /// A client for the server: trusting its CA and sending its token when secured.
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// A kubeconfig whose current context `tether` points at the server; when secured, it
    /// holds the CA certificate and the token (never the serving key).
    pub fn kubeconfig(&self) -> Kubeconfig {
        kubeconfig_for(&self.url(), self.security.as_ref())
    }

    /// Resolves once the server has shut down (after the shutdown token fired).
    pub async fn stopped(self) {
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "local API server task failed");
        }
    }
}

fn url_for(addr: SocketAddr, secured: bool) -> String {
    let scheme = if secured { "https" } else { "http" };
    format!("{scheme}://{addr}")
}

fn kubeconfig_for(url: &str, security: Option<&ApiSecurity>) -> Kubeconfig {
    use base64::Engine as _;
    Kubeconfig {
        clusters: vec![NamedCluster {
            name: "tether".into(),
            cluster: Some(Cluster {
                server: Some(url.to_owned()),
                certificate_authority_data: security
                    .map(|s| base64::engine::general_purpose::STANDARD.encode(s.tls.ca_pem())),
                ..Cluster::default()
            }),
            other: Default::default(),
        }],
        auth_infos: vec![NamedAuthInfo {
            name: "tether".into(),
            auth_info: Some(AuthInfo {
                token: security.map(|s| s.token.clone()),
                ..AuthInfo::default()
            }),
            other: Default::default(),
        }],
        contexts: vec![NamedContext {
            name: "tether".into(),
            context: Some(Context {
                cluster: "tether".into(),
                user: Some("tether".into()),
                namespace: Some("default".into()),
                ..Context::default()
            }),
            other: Default::default(),
        }],
        current_context: Some("tether".into()),
        ..Kubeconfig::default()
    }
}

/// The status a real API server gives a CRD it serves: its names accepted (no conflicts)
/// and established, with the texts of apiextensions-apiserver's naming and establishing
/// controllers, so `kubectl wait --for=condition=Established` works as on a cluster.
fn crd_status(crd: &CustomResourceDefinition) -> serde_json::Value {
    let now = meta::now();
    let stored: Vec<&str> = crd
        .spec
        .versions
        .iter()
        .filter(|v| v.storage)
        .map(|v| v.name.as_str())
        .collect();
    serde_json::json!({
        "acceptedNames": crd.spec.names,
        "conditions": [
            {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts",
             "message": "no conflicts found", "lastTransitionTime": now},
            {"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
             "message": "the initial names have been accepted", "lastTransitionTime": now},
        ],
        "storedVersions": stored,
    })
}

/// Starts the server with default [`ServerOptions`]; it runs until `shutdown` fires.
pub async fn start(
    config: LocalApiConfig,
    shutdown: CancellationToken,
) -> Result<LocalApiHandle, LocalApiError> {
    start_with(config, ServerOptions::default(), shutdown).await
}

/// Starts the server with explicit [`ServerOptions`].
pub async fn start_with(
    config: LocalApiConfig,
    options: ServerOptions,
    shutdown: CancellationToken,
) -> Result<LocalApiHandle, LocalApiError> {
    let table = Arc::new(ResourceTable::new(&config.crds)?);
    let crds: Vec<serde_json::Value> = config
        .crds
        .iter()
        .map(|crd| {
            let mut v = serde_json::to_value(crd)?;
            v["apiVersion"] = "apiextensions.k8s.io/v1".into();
            v["kind"] = "CustomResourceDefinition".into();
            v["status"] = crd_status(crd);
            Ok(v)
        })
        .collect::<Result<_, serde_json::Error>>()
        .map_err(LocalApiError::Serialize)?;
    let store: Box<dyn Store> = match &config.store {
        StoreConfig::Memory => Box::new(MemoryStore),
        StoreConfig::File(path) => {
            let path = path.clone();
            Box::new(
                tokio::task::spawn_blocking(move || FileStore::open(&path))
                    .await
                    .map_err(|e| {
                        LocalApiError::Store(store::StoreError::Load(Box::new(redb::Error::Io(
                            std::io::Error::other(e),
                        ))))
                    })??,
            )
        }
    };
    let storage = Arc::new(Storage::open(
        store,
        table,
        Admission::new(&config.crds)?,
        &crds,
        options.watch_history,
    )?);
    let listener = tokio::net::TcpListener::bind(config.addr)
        .await
        .map_err(|source| LocalApiError::Bind {
            addr: config.addr,
            source,
        })?;
    let addr = listener
        .local_addr()
        .map_err(|source| LocalApiError::Bind {
            addr: config.addr,
            source,
        })?;
    let tls = config
        .security
        .as_ref()
        .map(|s| s.tls.server_config())
        .transpose()
        .map_err(LocalApiError::Tls)?
        .map(|c| tokio_rustls::TlsAcceptor::from(Arc::new(c)));
    let app = Arc::new(routes::App {
        security: config.security.clone(),
        storage,
        shutdown: shutdown.clone(),
        address: addr.to_string(),
        bookmark_interval: options.bookmark_interval,
        openapi: crate::schema::openapi::OpenApi::new(&config.crds)?,
    });
    let router = axum::Router::new().fallback(routes::handle).with_state(app);
    let url = url_for(addr, config.security.is_some());
    let client = client_for(&url, config.security.as_ref())?;
    let task = tokio::spawn(serve::serve(listener, tls, router, shutdown));
    tracing::info!(%url, "local Kubernetes API listening");
    Ok(LocalApiHandle {
        addr,
        security: config.security,
        client,
        task,
    })
}

fn client_for(url: &str, security: Option<&ApiSecurity>) -> Result<kube::Client, LocalApiError> {
    let uri: http::Uri = url.parse().map_err(LocalApiError::Url)?;
    let mut config = kube::Config::new(uri);
    config.default_namespace = "default".into();
    if let Some(security) = security {
        let ca = security.tls.ca_der().map_err(LocalApiError::Tls)?;
        config.root_cert = Some(vec![ca.to_vec()]);
        config.auth_info.token = Some(security.token.clone());
    }
    crate::client::named(config, "run").map_err(|e| LocalApiError::Client(Box::new(e)))
}
