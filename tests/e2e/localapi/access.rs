//! Which requests the embedded API answers: only those addressed to loopback `Host` names
//! (DNS rebinding), no browser requests from other origins, and no write in a media type the
//! API does not decode (a cross-origin form post), refused before anything happens.

use crate::support::TestCluster;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::Api;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One HTTP/1.1 request with exactly these headers (no client adds or rewrites any);
/// returns the status code and the body.
async fn send(
    cluster: &TestCluster,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(cluster.addr())
        .await
        .unwrap();
    let mut request = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let code = response[9..12].parse().unwrap();
    let (_, body) = response.split_once("\r\n\r\n").unwrap();
    (code, body.to_owned())
}

fn status(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

#[tokio::test]
async fn only_loopback_host_names_are_answered() {
    let cluster = TestCluster::start().await;
    let port = cluster.addr().port();
    for host in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        format!("[::1]:{port}"),
        "localhost".to_owned(),
    ] {
        let headers = [("Host", host.as_str())];
        let (code, body) = send(&cluster, "GET", "/api/v1/namespaces", &headers, "").await;
        assert_eq!(code, 200, "{host}: {body}");
    }
    for host in [
        format!("evil.example:{port}"),
        format!("127.0.0.1.nip.io:{port}"),
        format!("localhost.evil.example:{port}"),
    ] {
        let headers = [("Host", host.as_str())];
        let (code, body) = send(&cluster, "GET", "/api/v1/secrets", &headers, "").await;
        assert_eq!(code, 403, "{host}: {body}");
        let s = status(&body);
        assert_eq!(s["reason"], "Forbidden");
        let message = s["message"].as_str().unwrap();
        assert!(
            message.contains(&format!("host {host:?} is not allowed"))
                && message.contains("DNS rebinding"),
            "{message}"
        );
    }
    let (code, _) = send(&cluster, "GET", "/api/v1/secrets", &[], "").await;
    assert_eq!(code, 403, "no Host at all");
}

#[tokio::test]
async fn browser_requests_from_other_origins_are_refused() {
    let cluster = TestCluster::start().await;
    let host = cluster.addr().to_string();
    let path = "/api/v1/namespaces/default/configmaps";
    for origin in ["https://evil.example", "null", "http://127.0.0.1.nip.io"] {
        let headers = [("Host", host.as_str()), ("Origin", origin)];
        let (code, body) = send(&cluster, "GET", path, &headers, "").await;
        assert_eq!(code, 403, "{origin}: {body}");
        let message = status(&body)["message"].as_str().unwrap().to_owned();
        assert!(
            message.contains(&format!("origin {origin:?} is not allowed")),
            "{message}"
        );
    }
    let headers = [("Host", host.as_str()), ("Origin", "http://localhost:3000")];
    let (code, body) = send(&cluster, "GET", path, &headers, "").await;
    assert_eq!(code, 200, "{body}");
}

#[tokio::test]
async fn writes_in_a_media_type_the_api_does_not_decode_get_415_and_change_nothing() {
    let cluster = TestCluster::start().await;
    let host = cluster.addr().to_string();
    let path = "/api/v1/namespaces/default/configmaps";
    let body = r#"{"metadata":{"name":"posted"},"data":{"a":"b"}}"#;
    // What a page can send cross-origin without a preflight, and no media type at all.
    for content_type in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
        Some(""),
        None,
    ] {
        for method in ["POST", "PUT", "PATCH", "DELETE"] {
            let target = if method == "POST" {
                path.to_owned()
            } else {
                format!("{path}/posted")
            };
            let mut headers = vec![("Host", host.as_str())];
            headers.extend(content_type.map(|c| ("Content-Type", c)));
            let (code, answer) = send(&cluster, method, &target, &headers, body).await;
            assert_eq!(code, 415, "{method} {content_type:?}: {answer}");
            assert_eq!(status(&answer)["reason"], "UnsupportedMediaType");
        }
    }
    let api = Api::<ConfigMap>::default_namespaced(cluster.client());
    assert!(api.get_opt("posted").await.unwrap().is_none());
    // JSON is written; a DELETE without a body needs no media type.
    let headers = [
        ("Host", host.as_str()),
        ("Content-Type", "application/json"),
    ];
    let (code, answer) = send(&cluster, "POST", path, &headers, body).await;
    assert_eq!(code, 201, "{answer}");
    let headers = [("Host", host.as_str())];
    let (code, answer) = send(&cluster, "DELETE", &format!("{path}/posted"), &headers, "").await;
    assert_eq!(code, 200, "{answer}");
    assert!(api.get_opt("posted").await.unwrap().is_none());
}
