//! Objects a real API server refuses are refused by the embedded API too, with its texts:
//! Secrets and ConfigMaps whose fields do not decode into the Go types (400), keys that are
//! not config keys (422), and custom resources sent with another `apiVersion` or `kind` than
//! their URL's.

use crate::support::TestCluster;
use serde_json::{Value, json};

/// Sends `body` and returns the refusal's code and message.
async fn refused(
    client: &kube::Client,
    method: &str,
    uri: &str,
    content_type: &str,
    body: &Value,
) -> (u16, String) {
    let request = http::Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", content_type)
        .body(serde_json::to_vec(body).unwrap())
        .unwrap();
    match client.request_text(request).await {
        Err(kube::Error::Api(status)) => (status.code, status.message),
        other => panic!("expected {method} {uri} {body} to be refused, got {other:?}"),
    }
}

const SECRETS: &str = "/api/v1/namespaces/default/secrets";
const CONFIG_MAPS: &str = "/api/v1/namespaces/default/configmaps";
const KEY_RULE: &str = "a valid config key must consist of alphanumeric characters, '-', '_' or \
                        '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for \
                        validation is '[-._a-zA-Z0-9]+')";

#[tokio::test]
async fn secrets_are_decoded_and_validated_as_by_a_real_api_server() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let secret = |extra: Value| {
        let mut s = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}});
        s.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        s
    };
    let cases = [
        (
            json!({"type": 5}),
            400,
            "Secret in version \"v1\" cannot be handled as a Secret: json: cannot unmarshal \
             number into Go struct field Secret.type of type v1.SecretType"
                .to_owned(),
        ),
        (
            json!({"data": {"stripe-key": "c2tfbGl2ZV9zZWNyZXQ!"}}),
            400,
            "Secret in version \"v1\" cannot be handled as a Secret: illegal base64 data at \
             input byte 19"
                .to_owned(),
        ),
        (
            json!({"stringData": {"k": 5}}),
            400,
            "Secret in version \"v1\" cannot be handled as a Secret: json: cannot unmarshal \
             number into Go struct field Secret.stringData of type string"
                .to_owned(),
        ),
        (
            json!({"data": {"a/b": "eA=="}}),
            422,
            format!("Secret \"s\" is invalid: data[a/b]: Invalid value: \"a/b\": {KEY_RULE}"),
        ),
        (
            json!({"stringData": {"a/b": "x"}}),
            422,
            format!("Secret \"s\" is invalid: data[a/b]: Invalid value: \"a/b\": {KEY_RULE}"),
        ),
    ];
    for (extra, code, message) in cases {
        let body = secret(extra.clone());
        let (c, m) = refused(&client, "POST", SECRETS, "application/json", &body).await;
        assert_eq!((c, m.as_str()), (code, message.as_str()), "{extra}");
        assert!(!m.contains("c2tf"), "no secret value in the message: {m}");
    }
    // The same through server-side apply and a merge patch of an existing Secret.
    let apply = format!("{SECRETS}/s?fieldManager=test");
    let (code, message) = refused(
        &client,
        "PATCH",
        &apply,
        "application/apply-patch+yaml",
        &secret(json!({"type": 5})),
    )
    .await;
    assert_eq!(code, 400, "{message}");
    let ok = secret(json!({"data": {"k": "dg=="}}));
    let request = http::Request::post(SECRETS)
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&ok).unwrap())
        .unwrap();
    client.request_text(request).await.unwrap();
    let (code, message) = refused(
        &client,
        "PATCH",
        &format!("{SECRETS}/s"),
        "application/merge-patch+json",
        &json!({"data": {"k": "not base64"}}),
    )
    .await;
    assert_eq!(
        (code, message.as_str()),
        (
            400,
            "Secret in version \"v1\" cannot be handled as a Secret: illegal base64 data at \
             input byte 3"
        )
    );
}

#[tokio::test]
async fn config_maps_are_decoded_and_validated_as_by_a_real_api_server() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let cm = |extra: Value| {
        let mut c = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}});
        c.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        c
    };
    let decode =
        |e: &str| format!("ConfigMap in version \"v1\" cannot be handled as a ConfigMap: {e}");
    let cases = [
        (
            json!({"data": {"a": 5}}),
            400,
            decode(
                "json: cannot unmarshal number into Go struct field ConfigMap.data of type string",
            ),
        ),
        (
            json!({"data": ["x"]}),
            400,
            decode(
                "json: cannot unmarshal array into Go struct field ConfigMap.data of type \
                 map[string]string",
            ),
        ),
        (
            json!({"binaryData": {"b": "%%%%"}}),
            400,
            decode("illegal base64 data at input byte 0"),
        ),
        (
            json!({"data": {"a/b": "x"}}),
            422,
            format!("ConfigMap \"c\" is invalid: data[a/b]: Invalid value: \"a/b\": {KEY_RULE}"),
        ),
        (
            json!({"data": {"k": "x"}, "binaryData": {"k": "eA=="}}),
            422,
            "ConfigMap \"c\" is invalid: [data[k]: Invalid value: \"k\": duplicate of key \
             present in binaryData, binaryData[k]: Invalid value: \"k\": duplicate of key \
             present in data]"
                .to_owned(),
        ),
    ];
    for (extra, code, message) in cases {
        let (c, m) = refused(
            &client,
            "POST",
            CONFIG_MAPS,
            "application/json",
            &cm(extra.clone()),
        )
        .await;
        assert_eq!((c, m.as_str()), (code, message.as_str()), "{extra}");
    }
    // kubectl's server-side apply is refused too, and nothing was stored.
    let out = cluster
        .kubectl_with_stdin(
            &["apply", "--server-side", "-f", "-"],
            Some("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata: {a/b: x}\n"),
        )
        .await;
    assert!(!out.success);
    assert!(out.stderr.contains(KEY_RULE), "{}", out.stderr);
    let out = cluster.kubectl(&["get", "configmap", "c"]).await;
    assert!(!out.success, "{}", out.stdout);
}

#[tokio::test]
async fn custom_resources_with_another_api_version_or_kind_than_their_url_are_refused() {
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let envs = "/apis/tether.dev/v1alpha1/namespaces/default/environments";
    let env = |api_version: &str, kind: &str| {
        json!({"apiVersion": api_version, "kind": kind, "metadata": {"name": "web"},
               "spec": {"credentials": {}}})
    };
    let (code, message) = refused(
        &client,
        "POST",
        envs,
        "application/json",
        &env("v1", "Environment"),
    )
    .await;
    assert_eq!(
        (code, message.as_str()),
        (
            400,
            "the API version in the data (v1) does not match the expected API version \
             (tether.dev/v1alpha1)"
        )
    );
    let (code, message) = refused(
        &client,
        "POST",
        envs,
        "application/json",
        &env("tether.dev/v1alpha1", "Release"),
    )
    .await;
    assert_eq!(
        (code, message.as_str()),
        (
            422,
            "Release.tether.dev \"web\" is invalid: kind: Invalid value: \"Release\": must be \
             Environment"
        )
    );
    let apply = format!("{envs}/web?fieldManager=test");
    for (api_version, kind, gvk) in [
        ("v1", "Environment", "/v1, Kind=Environment"),
        (
            "tether.dev/v1alpha1",
            "environment",
            "tether.dev/v1alpha1, Kind=environment",
        ),
    ] {
        let (code, message) = refused(
            &client,
            "PATCH",
            &apply,
            "application/apply-patch+yaml",
            &env(api_version, kind),
        )
        .await;
        assert_eq!(
            (code, message.as_str()),
            (400, format!("invalid object type: {gvk}").as_str())
        );
    }
    // Created with the right ones, a PUT with the wrong apiVersion is refused as well.
    let request = http::Request::post(envs)
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&env("tether.dev/v1alpha1", "Environment")).unwrap())
        .unwrap();
    client.request_text(request).await.unwrap();
    let (code, _) = refused(
        &client,
        "PUT",
        &format!("{envs}/web"),
        "application/json",
        &env("v1", "Environment"),
    )
    .await;
    assert_eq!(code, 400);
}
