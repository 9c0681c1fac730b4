//! Authentication and TLS of the embedded API as `tether run` serves it: every request but
//! the health checks must carry a bearer token (compared in constant time), and the API is
//! served over HTTPS with a certificate for the loopback names, signed by a CA of its own.
//!
//! [`ApiSecurity::load_or_create`] keeps the token, the serving certificate with its key and
//! the CA certificate in the state directory (the token and the key with mode 0600) and
//! reuses them on restart, so a kubeconfig written earlier keeps working. The CA's key is
//! never written: it signs the serving certificate once and is dropped, so nothing on disk
//! can issue another certificate the CA vouches for. A certificate that is missing, does not
//! parse, does not match its key or the CA, or expires within 30 days is replaced (CA
//! included) at start; a token file that is missing or holds no valid token gets a new one.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use http::{HeaderMap, header};
use rand::TryRngCore as _;
use rustls::client::danger::ServerCertVerifier as _;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use secrecy::{ExposeSecret as _, SecretString};
use subtle::ConstantTimeEq as _;

use super::access::{restrict_to_owner, write_owner_only};

/// The token file in the state directory.
pub const TOKEN_FILE: &str = "api-token";
/// The CA certificate (PEM) in the state directory.
pub const CA_FILE: &str = "api-ca.crt";
/// The serving certificate (PEM) in the state directory.
pub const CERT_FILE: &str = "api-tls.crt";
/// The serving certificate's private key (PEM, mode 0600) in the state directory.
pub const KEY_FILE: &str = "api-tls.key";

/// Random bytes in a token: 256 bits.
const TOKEN_BYTES: usize = 32;
/// Characters of a token: 256 bits in base64url without padding.
const TOKEN_CHARS: usize = 43;
/// How long a generated certificate is valid.
const VALIDITY_DAYS: i64 = 365;
/// A certificate expiring sooner than this is replaced at start.
const RENEW_BEFORE_DAYS: u64 = 30;
/// The names the serving certificate is valid for: every loopback address `tether run`
/// accepts, and `localhost`.
const SERVED_NAMES: [&str; 3] = ["127.0.0.1", "localhost", "::1"];
/// The paths a real API server answers without authentication (the liveness and readiness
/// checks of `system:public-info-viewer`).
const PUBLIC_PATHS: [&str; 3] = ["/healthz", "/livez", "/readyz"];

/// Why the token or the certificate could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    /// A file in the state directory exists but cannot be read.
    #[error("failed to read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A file in the state directory cannot be written.
    #[error("failed to write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The operating system's random number generator failed.
    #[error("failed to draw a random API token: {0}")]
    Random(#[source] rand::rand_core::OsError),
    /// The CA or the serving certificate could not be generated.
    #[error("failed to generate the API's TLS certificate: {0}")]
    Generate(#[source] rcgen::Error),
    /// The certificate or its key is not PEM.
    #[error("the API's TLS certificate or key is not valid PEM: {0}")]
    Pem(#[source] rustls::pki_types::pem::Error),
    /// The certificate or its key cannot be used for TLS.
    #[error("the API's TLS certificate or key is unusable: {0}")]
    Tls(#[source] rustls::Error),
    /// The certificate cannot be checked against its CA.
    #[error("failed to check the API's TLS certificate against its CA: {0}")]
    Verifier(#[source] rustls::client::VerifierBuilderError),
    /// A name the certificate is for is no valid server name.
    #[error("failed to check the API's TLS certificate for its names: {0}")]
    Name(#[source] rustls::pki_types::InvalidDnsNameError),
}

/// What a secured API requires: the bearer token and the serving certificate.
#[derive(Clone)]
pub struct ApiSecurity {
    /// The bearer token every request but the health checks must carry.
    pub token: SecretString,
    /// The serving certificate, its key and the CA that signed it.
    pub tls: ServingCert,
}

impl std::fmt::Debug for ApiSecurity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiSecurity")
            .field("token", &"[redacted]")
            .field("tls", &self.tls)
            .finish()
    }
}

impl ApiSecurity {
    /// A new random token and a new certificate, kept in memory only.
    pub fn generate() -> Result<Self, SecurityError> {
        Ok(ApiSecurity {
            token: new_token()?,
            tls: ServingCert::generate()?,
        })
    }

    /// The token and certificate kept in `dir` ([`TOKEN_FILE`], [`CA_FILE`], [`CERT_FILE`],
    /// [`KEY_FILE`]), created when missing or unusable; existing token and key files are
    /// tightened to mode 0600.
    pub fn load_or_create(dir: &Path) -> Result<Self, SecurityError> {
        Ok(ApiSecurity {
            token: load_or_create_token(&dir.join(TOKEN_FILE))?,
            tls: ServingCert::load_or_create(dir)?,
        })
    }

    /// Whether `path` is answered without a token (the health checks).
    pub fn is_public(path: &str) -> bool {
        PUBLIC_PATHS.contains(&path)
    }

    /// Whether `headers` carry `Authorization: Bearer <token>` with this token; the
    /// comparison takes the same time wherever the tokens differ.
    pub fn authenticates(&self, headers: &HeaderMap) -> bool {
        let Some(presented) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_token)
        else {
            return false;
        };
        presented
            .as_bytes()
            .ct_eq(self.token.expose_secret().as_bytes())
            .into()
    }
}

/// The token of an `Authorization` value `Bearer <token>` (scheme in any case, as the real
/// API server reads it).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// 256 random bits from the operating system, base64url without padding (43 characters).
fn new_token() -> Result<SecretString, SecurityError> {
    let mut bytes = [0u8; TOKEN_BYTES];
    rand::rngs::OsRng
        .try_fill_bytes(&mut bytes)
        .map_err(SecurityError::Random)?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(bytes)
        .into())
}

/// A token as [`new_token`] writes it: at least 256 bits of base64url.
fn is_valid_token(token: &str) -> bool {
    token.len() >= TOKEN_CHARS
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The token kept in `path`, or a new one written there.
fn load_or_create_token(path: &Path) -> Result<SecretString, SecurityError> {
    match read_optional(path)? {
        Some(text) if is_valid_token(text.trim()) => {
            restrict_to_owner(path, 0o600).map_err(|source| SecurityError::Write {
                path: path.to_owned(),
                source,
            })?;
            return Ok(text.trim().to_owned().into());
        }
        // Never the contents: they may be a token.
        Some(_) => tracing::warn!(
            path = %path.display(),
            "the API token file does not hold a valid token; writing a new one"
        ),
        None => {}
    }
    let token = new_token()?;
    let mut text = token.expose_secret().to_owned();
    text.push('\n');
    write_file(path, text.as_bytes())?;
    Ok(token)
}

/// A serving certificate for the loopback names, its private key and the CA certificate
/// that signed it (all PEM).
#[derive(Clone)]
pub struct ServingCert {
    ca_pem: String,
    cert_pem: String,
    key_pem: SecretString,
}

impl std::fmt::Debug for ServingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServingCert").finish_non_exhaustive()
    }
}

impl ServingCert {
    /// A new CA (ECDSA P-256, its key dropped after use) and a certificate it signs for
    /// `127.0.0.1`, `localhost` and `::1`, valid from yesterday for a year.
    pub fn generate() -> Result<Self, SecurityError> {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
            KeyPair, KeyUsagePurpose,
        };
        let today = jiff::Timestamp::now()
            .to_zoned(jiff::tz::TimeZone::UTC)
            .date();
        let date = |days: i64| {
            let d = today.saturating_add(jiff::Span::new().days(days));
            rcgen::date_time_ymd(
                i32::from(d.year()),
                d.month().unsigned_abs(),
                d.day().unsigned_abs(),
            )
        };
        let (not_before, not_after) = (date(-1), date(VALIDITY_DAYS));

        let ca_key = KeyPair::generate().map_err(SecurityError::Generate)?;
        let mut ca = CertificateParams::default();
        ca.distinguished_name
            .push(DnType::CommonName, "tether run local API CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        ca.not_before = not_before;
        ca.not_after = not_after;
        let ca_cert = ca.self_signed(&ca_key).map_err(SecurityError::Generate)?;

        let key = KeyPair::generate().map_err(SecurityError::Generate)?;
        let mut leaf = CertificateParams::new(SERVED_NAMES.map(String::from).to_vec())
            .map_err(SecurityError::Generate)?;
        leaf.distinguished_name
            .push(DnType::CommonName, "tether run local API");
        leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        leaf.use_authority_key_identifier_extension = true;
        leaf.not_before = not_before;
        leaf.not_after = not_after;
        let cert = leaf
            .signed_by(&key, &Issuer::new(ca, ca_key))
            .map_err(SecurityError::Generate)?;
        Ok(ServingCert {
            ca_pem: ca_cert.pem(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem().into(),
        })
    }

    /// The certificate kept in `dir`, or a new one written there when it is missing or
    /// unusable (see the module documentation).
    fn load_or_create(dir: &Path) -> Result<Self, SecurityError> {
        let (ca, cert, key) = (dir.join(CA_FILE), dir.join(CERT_FILE), dir.join(KEY_FILE));
        let renew_at = days_from_now(RENEW_BEFORE_DAYS);
        match (
            read_optional(&ca)?,
            read_optional(&cert)?,
            read_optional(&key)?,
        ) {
            (Some(ca_pem), Some(cert_pem), Some(key_pem)) => {
                let kept = ServingCert {
                    ca_pem,
                    cert_pem,
                    key_pem: key_pem.into(),
                };
                match kept.verify(renew_at) {
                    Ok(()) => {
                        restrict_to_owner(&key, 0o600).map_err(|source| SecurityError::Write {
                            path: key.clone(),
                            source,
                        })?;
                        return Ok(kept);
                    }
                    Err(e) => tracing::warn!(
                        dir = %dir.display(),
                        reason = %e,
                        "the API's TLS certificate cannot be reused; generating a new one"
                    ),
                }
            }
            (None, None, None) => {}
            _ => tracing::warn!(
                dir = %dir.display(),
                "the API's TLS files are incomplete; generating a new certificate"
            ),
        }
        let fresh = ServingCert::generate()?;
        // The key first: a crash in between leaves a pair that does not match, replaced at
        // the next start.
        write_file(&key, fresh.key_pem.expose_secret().as_bytes())?;
        write_file(&cert, fresh.cert_pem.as_bytes())?;
        write_file(&ca, fresh.ca_pem.as_bytes())?;
        Ok(fresh)
    }

    /// The CA certificate (PEM), what clients trust.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The CA certificate (DER).
    pub fn ca_der(&self) -> Result<CertificateDer<'static>, SecurityError> {
        CertificateDer::from_pem_slice(self.ca_pem.as_bytes()).map_err(SecurityError::Pem)
    }

    /// A rustls server configuration (ring) serving the certificate, offering HTTP/2 and
    /// HTTP/1.1; fails when the key does not match the certificate.
    pub fn server_config(&self) -> Result<rustls::ServerConfig, SecurityError> {
        let cert =
            CertificateDer::from_pem_slice(self.cert_pem.as_bytes()).map_err(SecurityError::Pem)?;
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.expose_secret().as_bytes())
            .map_err(SecurityError::Pem)?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(SecurityError::Tls)?
            .with_no_client_auth()
            .with_single_cert(vec![cert], key)
            .map_err(SecurityError::Tls)?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }

    /// Checks that the key matches the certificate, and that the certificate chains to the
    /// CA and is valid for every served name at `at`.
    fn verify(&self, at: UnixTime) -> Result<(), SecurityError> {
        self.server_config()?;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der()?).map_err(SecurityError::Tls)?;
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            provider(),
        )
        .build()
        .map_err(SecurityError::Verifier)?;
        let cert =
            CertificateDer::from_pem_slice(self.cert_pem.as_bytes()).map_err(SecurityError::Pem)?;
        for name in SERVED_NAMES {
            let name = ServerName::try_from(name).map_err(SecurityError::Name)?;
            verifier
                .verify_server_cert(&cert, &[], &name, &[], at)
                .map_err(SecurityError::Tls)?;
        }
        Ok(())
    }
}

/// The time `days` days from now.
fn days_from_now(days: u64) -> UnixTime {
    UnixTime::since_unix_epoch(Duration::from_secs(
        UnixTime::now().as_secs() + days * 86_400,
    ))
}

/// The ring provider, whatever the process default is.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The text of `path`, or `None` when it does not exist.
fn read_optional(path: &Path) -> Result<Option<String>, SecurityError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        // Not text: unusable, like a certificate that does not parse.
        Err(e) if e.kind() == ErrorKind::InvalidData => Ok(Some(String::new())),
        Err(source) => Err(SecurityError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Writes `contents` to `path`, mode 0600.
fn write_file(path: &Path, contents: &[u8]) -> Result<(), SecurityError> {
    write_owner_only(path, contents).map_err(|source| SecurityError::Write {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    fn headers(authorization: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, authorization.parse().unwrap());
        headers
    }

    #[test]
    fn only_the_bearer_token_authenticates() {
        let security = ApiSecurity::generate().unwrap();
        let token = security.token.expose_secret().to_owned();
        assert_eq!(token.len(), 43);
        assert!(security.authenticates(&headers(&format!("Bearer {token}"))));
        assert!(security.authenticates(&headers(&format!("bearer {token}"))));
        for wrong in [
            String::new(),
            "Bearer".to_owned(),
            "Bearer ".to_owned(),
            format!("Basic {token}"),
            format!("Bearer {}", &token[..42]),
            format!("Bearer {token}x"),
            format!(
                "Bearer {}",
                ApiSecurity::generate().unwrap().token.expose_secret()
            ),
        ] {
            assert!(!security.authenticates(&headers(&wrong)), "{wrong}");
        }
        assert!(!security.authenticates(&HeaderMap::new()));
        assert!(!format!("{security:?}").contains(&token));
    }

    #[test]
    fn only_the_health_checks_are_public() {
        for public in ["/healthz", "/livez", "/readyz"] {
            assert!(ApiSecurity::is_public(public));
        }
        for private in [
            "/",
            "/version",
            "/api",
            "/readyz/x",
            "/healthzz",
            "/api/v1/secrets",
        ] {
            assert!(!ApiSecurity::is_public(private), "{private}");
        }
    }

    #[test]
    fn the_token_and_certificate_are_kept_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let first = ApiSecurity::load_or_create(dir.path()).unwrap();
        for file in [TOKEN_FILE, KEY_FILE] {
            assert_eq!(mode(&dir.path().join(file)), 0o600, "{file}");
        }
        let files = |d: &Path| {
            [TOKEN_FILE, CA_FILE, CERT_FILE, KEY_FILE].map(|f| std::fs::read(d.join(f)).unwrap())
        };
        let written = files(dir.path());
        // Loosened by someone: tightened again, contents unchanged.
        std::fs::set_permissions(
            dir.path().join(KEY_FILE),
            std::os::unix::fs::PermissionsExt::from_mode(0o644),
        )
        .unwrap();
        let second = ApiSecurity::load_or_create(dir.path()).unwrap();
        assert_eq!(files(dir.path()), written);
        assert_eq!(mode(&dir.path().join(KEY_FILE)), 0o600);
        assert_eq!(first.token.expose_secret(), second.token.expose_secret());
        assert_eq!(first.tls.ca_pem(), second.tls.ca_pem());
        assert!(written[0].ends_with(b"\n"));
    }

    #[test]
    fn an_unusable_certificate_is_replaced_and_the_token_kept() {
        let dir = tempfile::tempdir().unwrap();
        let first = ApiSecurity::load_or_create(dir.path()).unwrap();
        // A certificate from another CA: it does not chain to the CA file.
        let other = ServingCert::generate().unwrap();
        std::fs::write(dir.path().join(CERT_FILE), &other.cert_pem).unwrap();
        let second = ApiSecurity::load_or_create(dir.path()).unwrap();
        assert_ne!(second.tls.ca_pem(), first.tls.ca_pem());
        assert!(second.tls.verify(UnixTime::now()).is_ok());
        assert_eq!(first.token.expose_secret(), second.token.expose_secret());
        // Garbage, and a missing key.
        std::fs::write(dir.path().join(CERT_FILE), "not a certificate").unwrap();
        let third = ApiSecurity::load_or_create(dir.path()).unwrap();
        assert_ne!(third.tls.ca_pem(), second.tls.ca_pem());
        std::fs::remove_file(dir.path().join(KEY_FILE)).unwrap();
        let fourth = ApiSecurity::load_or_create(dir.path()).unwrap();
        assert_ne!(fourth.tls.ca_pem(), third.tls.ca_pem());
        // An invalid token is replaced.
        std::fs::write(dir.path().join(TOKEN_FILE), "short\n").unwrap();
        let fifth = ApiSecurity::load_or_create(dir.path()).unwrap();
        assert_ne!(fifth.token.expose_secret(), "short");
        assert!(is_valid_token(fifth.token.expose_secret()));
    }

    #[test]
    fn a_certificate_expiring_soon_is_not_reused() {
        let cert = ServingCert::generate().unwrap();
        assert!(cert.verify(days_from_now(RENEW_BEFORE_DAYS)).is_ok());
        assert!(
            cert.verify(days_from_now(VALIDITY_DAYS.unsigned_abs() + 1))
                .is_err()
        );
    }
}
