//! Reading a platform token from the Kubernetes Secret an Environment names. The value goes
//! straight into a [`Token`]; errors name the Secret and key, never the value.

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

/// Reads `key` of Secret `name` through `secrets` (a namespaced `Api<Secret>`) as a token.
/// Surrounding whitespace (a trailing newline from `kubectl create secret --from-file`) is
/// trimmed.
pub async fn token_from_secret(
    secrets: &kube::Api<Secret>,
    namespace: &str,
    name: &str,
    key: &str,
) -> Result<Token, CredentialsError> {
    let secret = secrets
        .get_opt(name)
        .await
        .map_err(|source| CredentialsError::Api {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            source,
        })?
        .ok_or_else(|| CredentialsError::SecretNotFound {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        })?;
    token_from_secret_object(&secret, namespace, name, key)
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
