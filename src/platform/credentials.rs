//! Reading Secrets and the platform tokens in them. A value goes straight into a [`Token`];
//! errors name the Secret and key, never the value.

use k8s_openapi::api::core::v1::Secret;

use super::Token;

/// Why a token could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// The Secret does not exist.
    #[error("failed to read credentials: Secret {namespace}/{name} not found")]
    SecretNotFound {
        /// Namespace.
        namespace: String,
        /// Secret name.
        name: String,
    },
    /// The Secret exists but has no such key (or it is empty).
    #[error("failed to read credentials: Secret {namespace}/{name} has no non-empty key {key:?}")]
    KeyMissing {
        /// Namespace.
        namespace: String,
        /// Secret name.
        name: String,
        /// Key looked for.
        key: String,
    },
    /// The value is not UTF-8 text.
    #[error(
        "failed to read credentials: key {key:?} of Secret {namespace}/{name} is not UTF-8 text"
    )]
    NotText {
        /// Namespace.
        namespace: String,
        /// Secret name.
        name: String,
        /// Key.
        key: String,
    },
    /// The API call failed.
    #[error("failed to read credentials from Secret {namespace}/{name}")]
    Api {
        /// Namespace.
        namespace: String,
        /// Secret name.
        name: String,
        /// kube error.
        #[source]
        source: kube::Error,
    },
}

/// Why a Secret could not be read. Neither variant holds or prints any of its values.
#[derive(Debug, thiserror::Error)]
pub enum SecretReadError {
    /// The API call failed.
    #[error("{0}")]
    Api(#[source] kube::Error),
    /// The Secret exists but does not decode (a value that is not base64, a value that is
    /// not a string); names the key, never a value.
    #[error("Secret {namespace}/{name} cannot be decoded: {problem}")]
    Undecodable {
        /// Namespace.
        namespace: String,
        /// Secret name.
        name: String,
        /// What is wrong, naming the key.
        problem: String,
    },
}

/// Reads Secret `name` of `namespace`; `None` when it does not exist.
///
/// The response is decoded here, not by kube's `Api::get`: when a typed request fails to
/// decode, kube-client logs the whole response body at WARN, which for a Secret with one
/// value that is not valid base64 (an API server that skipped validation stores it) would
/// print every value of the Secret. Here a decoding failure names the key and nothing else.
pub async fn read_secret(
    client: &kube::Client,
    namespace: &str,
    name: &str,
) -> Result<Option<Secret>, SecretReadError> {
    use kube::Resource as _;
    let request = kube::core::Request::new(Secret::url_path(&(), Some(namespace)))
        .get(name, &kube::api::GetParams::default())
        .map_err(|e| SecretReadError::Api(kube::Error::BuildRequest(e)))?;
    let text = match client.request_text(request).await {
        Ok(text) => text,
        Err(kube::Error::Api(status)) if status.code == 404 => return Ok(None),
        Err(error) => return Err(SecretReadError::Api(error)),
    };
    decode_secret(&text, namespace, name).map(Some)
}

/// A Secret from the API's JSON; errors name the key at fault, never a value (serde's own
/// messages can quote the value, so none of them is passed on).
fn decode_secret(text: &str, namespace: &str, name: &str) -> Result<Secret, SecretReadError> {
    use base64::Engine as _;
    let undecodable = |problem: String| SecretReadError::Undecodable {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        problem,
    };
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|_| undecodable("the API server's answer is not JSON".into()))?;
    for (field, base64) in [("data", true), ("stringData", false)] {
        let Some(map) = value.get(field) else {
            continue;
        };
        let Some(map) = map.as_object() else {
            if map.is_null() {
                continue;
            }
            return Err(undecodable(format!("{field} is not a map")));
        };
        for (key, v) in map {
            match v.as_str() {
                None => {
                    return Err(undecodable(format!("{field}[{key:?}] is not a string")));
                }
                Some(encoded)
                    if base64
                        && base64::engine::general_purpose::STANDARD
                            .decode(encoded)
                            .is_err() =>
                {
                    return Err(undecodable(format!("{field}[{key:?}] is not valid base64")));
                }
                Some(_) => {}
            }
        }
    }
    serde_json::from_value(value).map_err(|_| undecodable("it is not a valid Secret".into()))
}

/// The token held under `key` of an already fetched Secret (`data`, or `stringData` as
/// the local API server may keep it).
pub fn token_from_secret_object(
    secret: &Secret,
    namespace: &str,
    name: &str,
    key: &str,
) -> Result<Token, CredentialsError> {
    let bytes = secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| b.0.clone())
        .or_else(|| {
            secret
                .string_data
                .as_ref()
                .and_then(|d| d.get(key))
                .map(|s| s.clone().into_bytes())
        });
    let missing = || CredentialsError::KeyMissing {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        key: key.to_owned(),
    };
    let bytes = bytes.ok_or_else(missing)?;
    let text = String::from_utf8(bytes).map_err(|_| CredentialsError::NotText {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        key: key.to_owned(),
    })?;
    let text = text.trim();
    if text.is_empty() {
        return Err(missing());
    }
    Ok(Token::new(text))
}

/// A Secret holding `token` under `key`, for pointing an Environment at the sandbox.
pub fn secret_for_token(namespace: &str, name: &str, key: &str, token: &Token) -> Secret {
    Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            ..Default::default()
        },
        data: Some(
            [(
                key.to_owned(),
                k8s_openapi::ByteString(token.expose().as_bytes().to_vec()),
            )]
            .into(),
        ),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_undecodable_secret_names_the_key_and_no_value() {
        let text = r#"{"apiVersion":"v1","kind":"Secret","metadata":{"name":"pay"},
            "data":{"ok":"c2tfbGl2ZV9vaw==","stripe-key":"sk_live_not*base64"}}"#;
        let error = decode_secret(text, "default", "pay")
            .unwrap_err()
            .to_string();
        assert_eq!(
            error,
            r#"Secret default/pay cannot be decoded: data["stripe-key"] is not valid base64"#
        );
        assert!(
            !error.contains("sk_live") && !error.contains("c2tf"),
            "{error}"
        );
        let text = r#"{"apiVersion":"v1","kind":"Secret","metadata":{"name":"pay"},
            "stringData":{"n":5}}"#;
        assert_eq!(
            decode_secret(text, "default", "pay")
                .unwrap_err()
                .to_string(),
            r#"Secret default/pay cannot be decoded: stringData["n"] is not a string"#
        );
        let text = r#"{"apiVersion":"v1","kind":"Secret","metadata":{"name":"pay"},
            "data":{"ok":"c2tfbGl2ZV9vaw=="}}"#;
        let secret = decode_secret(text, "default", "pay").unwrap();
        assert_eq!(secret.data.unwrap()["ok"].0, b"sk_live_ok");
    }

    #[test]
    fn a_token_round_trips_through_a_secret_and_is_trimmed() {
        let secret = secret_for_token("ns", "render", "token", &Token::new("rnd_abc\n"));
        let token = token_from_secret_object(&secret, "ns", "render", "token").unwrap();
        assert_eq!(token.expose(), "rnd_abc");
    }

    #[test]
    fn a_missing_key_names_the_secret_and_key_but_not_values() {
        let secret = secret_for_token("ns", "render", "token", &Token::new("rnd_abc"));
        let err = token_from_secret_object(&secret, "ns", "render", "apiKey").unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("ns/render") && text.contains("apiKey"),
            "{text}"
        );
        assert!(!text.contains("rnd_abc"));
    }
}
