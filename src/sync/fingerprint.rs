//! Keyed fingerprints of secret values, kept in status so that a changed Kubernetes Secret is
//! re-applied (and a rotation is visible) without storing the value anywhere.
//!
//! The key is the platform's API token: it is already secret, stable while the token is,
//! and needs no extra configuration. Rotating the token changes every fingerprint once, so
//! every secret value of that platform is written again (harmless and visible).

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::platform::Token;

/// Computes `hmac-sha256:<hex>` fingerprints keyed by one platform token.
#[derive(Clone)]
pub struct Fingerprinter {
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for Fingerprinter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Fingerprinter(***)")
    }
}

impl Fingerprinter {
    /// A fingerprinter keyed by `key`.
    pub fn new(key: &Token) -> Self {
        // HMAC accepts keys of any length.
        let mac = Hmac::<Sha256>::new_from_slice(key.expose().as_bytes())
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        Self { mac }
    }

    /// The fingerprint of `value` stored under `name` (the name is mixed in so the same value
    /// under two names gives two fingerprints).
    pub fn fingerprint(&self, name: &str, value: &Token) -> String {
        let mut mac = self.mac.clone();
        mac.update(name.as_bytes());
        mac.update(&[0]);
        mac.update(value.expose().as_bytes());
        let digest = mac.finalize().into_bytes();
        let mut hex = String::with_capacity(16 + digest.len() * 2);
        hex.push_str("hmac-sha256:");
        for byte in digest {
            hex.push_str(&format!("{byte:02x}"));
        }
        hex
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_change_with_the_value_the_name_and_the_key_and_reveal_nothing() {
        let fp = Fingerprinter::new(&Token::new("platform-token"));
        let a = fp.fingerprint("DB_URL", &Token::new("postgres://secret"));
        assert!(a.starts_with("hmac-sha256:") && a.len() == 12 + 64, "{a}");
        assert!(!a.contains("secret"));
        assert_eq!(
            a,
            fp.fingerprint("DB_URL", &Token::new("postgres://secret"))
        );
        assert_ne!(
            a,
            fp.fingerprint("DB_URL", &Token::new("postgres://rotated"))
        );
        assert_ne!(a, fp.fingerprint("OTHER", &Token::new("postgres://secret")));
        let other_key = Fingerprinter::new(&Token::new("another-token"));
        assert_ne!(
            a,
            other_key.fingerprint("DB_URL", &Token::new("postgres://secret"))
        );
        assert_eq!(format!("{fp:?}"), "Fingerprinter(***)");
    }
}
