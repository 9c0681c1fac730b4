//! The API as `tether run` serves it: HTTPS with a certificate signed by its own CA, and a
//! bearer token on every request but the health checks (401 with the real server's
//! `Status` otherwise). The client and the kubeconfig the handle gives out work with it.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, ListParams, PostParams};
use rustls::pki_types::ServerName;
use secrecy::ExposeSecret as _;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::TestCluster;

/// One HTTP/1.1 GET over TLS (trusting only the cluster's CA) with exactly these headers
/// besides `Host`; returns the status code and the body.
async fn get(cluster: &TestCluster, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let security = cluster.security().expect("a secured cluster");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(security.tls.ca_der().unwrap()).unwrap();
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(cluster.addr())
        .await
        .unwrap();
    let name = ServerName::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST).into());
    let mut stream = connector.connect(name, tcp).await.unwrap();
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n",
        cluster.addr()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    // The server may close without a TLS close_notify: what was read is kept.
    let _ = stream.read_to_end(&mut response).await;
    let response = String::from_utf8(response).unwrap();
    let code = response[9..12].parse().unwrap();
    let (_, body) = response.split_once("\r\n\r\n").unwrap();
    (code, body.to_owned())
}

fn bearer(cluster: &TestCluster) -> String {
    let token = &cluster.security().unwrap().token;
    format!("Bearer {}", token.expose_secret())
}

/// What a real API server answers a request it cannot authenticate.
fn unauthorized() -> Value {
    json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",
           "message":"Unauthorized","reason":"Unauthorized","code":401})
}

#[tokio::test]
async fn requests_without_the_token_get_401_and_with_it_200() {
    let cluster = TestCluster::builder().secured().start().await;
    let path = "/api/v1/namespaces/default/secrets";
    let (code, body) = get(&cluster, path, &[]).await;
    assert_eq!(code, 401, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        unauthorized()
    );

    let right = bearer(&cluster);
    let wrong = format!("{}x", right);
    let other = format!(
        "Bearer {}",
        tether::localapi::security::ApiSecurity::generate()
            .unwrap()
            .token
            .expose_secret()
    );
    let basic = right.replacen("Bearer", "Basic", 1);
    for refused in [&wrong, &other, &basic, &"Bearer ".to_owned()] {
        let (code, body) = get(&cluster, path, &[("Authorization", refused)]).await;
        assert_eq!(code, 401, "{refused}: {body}");
        assert_eq!(
            serde_json::from_str::<Value>(&body).unwrap(),
            unauthorized()
        );
    }
    let (code, body) = get(&cluster, path, &[("Authorization", &right)]).await;
    assert_eq!(code, 200, "{body}");
    let (code, _) = get(&cluster, "/version", &[]).await;
    assert_eq!(code, 401, "only the health checks are public");

    // The other checks still apply to an authenticated request.
    let (code, body) = get(
        &cluster,
        path,
        &[
            ("Authorization", &right),
            ("Origin", "https://evil.example"),
        ],
    )
    .await;
    assert_eq!(code, 403, "{body}");
}

#[tokio::test]
async fn the_health_checks_answer_without_a_token() {
    let cluster = TestCluster::builder().secured().start().await;
    for path in ["/readyz", "/livez", "/healthz"] {
        let (code, body) = get(&cluster, path, &[]).await;
        assert_eq!((code, body.as_str()), (200, "ok"), "{path}");
    }
}

#[tokio::test]
async fn plain_http_to_the_https_port_gets_no_answer() {
    let cluster = TestCluster::builder().secured().start().await;
    assert!(cluster.url().starts_with("https://127.0.0.1:"));
    let mut stream = tokio::net::TcpStream::connect(cluster.addr())
        .await
        .unwrap();
    let request = format!(
        "GET /api/v1/secrets HTTP/1.1\r\nHost: {}\r\nAuthorization: {}\r\nConnection: close\r\n\r\n",
        cluster.addr(),
        bearer(&cluster)
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    assert!(
        !response.starts_with(b"HTTP/"),
        "an HTTP answer over plain TCP: {}",
        String::from_utf8_lossy(&response)
    );

    // A kube client speaking plain HTTP to it fails too, token or not.
    let mut config = kube::Config::new(
        format!("http://{}", cluster.addr())
            .parse::<http::Uri>()
            .unwrap(),
    );
    config.auth_info.token = Some(cluster.security().unwrap().token.clone());
    let client = kube::Client::try_from(config).unwrap();
    let namespaces = Api::<Namespace>::all(client);
    assert!(namespaces.list(&ListParams::default()).await.is_err());
}

#[tokio::test]
async fn the_handles_client_trusts_the_ca_and_sends_the_token() {
    let cluster = TestCluster::builder().secured().start().await;
    let api = Api::<ConfigMap>::default_namespaced(cluster.client());
    let mut config_map = ConfigMap::default();
    config_map.metadata.name = Some("over-tls".into());
    api.create(&PostParams::default(), &config_map)
        .await
        .unwrap();
    assert!(api.get_opt("over-tls").await.unwrap().is_some());

    // A client trusting another CA refuses the server's certificate.
    let mut config = kube::Config::new(cluster.url().parse::<http::Uri>().unwrap());
    let other = tether::localapi::security::ApiSecurity::generate().unwrap();
    config.root_cert = Some(vec![other.tls.ca_der().unwrap().to_vec()]);
    config.auth_info.token = Some(cluster.security().unwrap().token.clone());
    let client = kube::Client::try_from(config).unwrap();
    let refused = Api::<ConfigMap>::namespaced(client, "default")
        .get_opt("over-tls")
        .await;
    assert!(refused.is_err(), "{refused:?}");
}

#[tokio::test]
async fn kubectl_works_with_the_kubeconfig_which_holds_no_key() {
    let cluster = TestCluster::builder().secured().start().await;
    let kubeconfig = std::fs::read_to_string(cluster.kubeconfig_path()).unwrap();
    let token = cluster.security().unwrap().token.expose_secret().to_owned();
    assert!(
        kubeconfig.contains("certificate-authority-data"),
        "{kubeconfig}"
    );
    assert!(kubeconfig.contains(&token));
    assert!(!kubeconfig.contains("PRIVATE KEY") && !kubeconfig.contains("client-key"));

    let out = cluster.kubectl(&["get", "env", "-A"]).await;
    assert!(out.success, "{}", out.stderr);
    let out = cluster.kubectl(&["get", "namespaces", "-o", "name"]).await;
    assert!(
        out.success && out.stdout.contains("namespace/default"),
        "{out:?}"
    );

    // The same kubeconfig with another token is refused by the server.
    let out = cluster
        .kubectl(&["get", "namespaces", "--token", "not-the-token"])
        .await;
    assert!(!out.success);
    assert!(out.stderr.contains("Unauthorized"), "{}", out.stderr);
}
