//! Which requests the embedded API answers, checked before a request is read: the `Host`
//! must be a loopback name (a DNS-rebinding page cannot reach the server under its own name),
//! a browser `Origin` must be a loopback one, and a write must carry a media type the API
//! decodes (a cross-origin form post has none of them, so it is refused with 415 before
//! anything happens).

use std::path::Path;

use http::{HeaderMap, Method, Uri, header};

use super::status::ApiError;

/// The media types a write may carry: what the API decodes (or answers with a precise 415).
const WRITE_MEDIA_TYPES: &[&str] = &[
    "application/json",
    "application/yaml",
    "application/vnd.kubernetes.protobuf",
    "application/json-patch+json",
    "application/merge-patch+json",
    "application/strategic-merge-patch+json",
    "application/apply-patch+yaml",
];

/// Sets the permission bits of `path` to `mode` (Unix; elsewhere nothing to do).
pub fn restrict_to_owner(path: &Path, mode: u32) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
    }
    #[cfg(not(unix))]
    {
        let _ = (path, mode);
        Ok(())
    }
}

/// Writes `contents` to `path` readable only by its owner (mode 0600 from creation on,
/// never briefly readable by others), replacing any older file atomically: written to
/// `<path>.tmp`, then renamed.
pub fn write_owner_only(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&tmp)?;
    file.write_all(contents)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)
}

/// Checks a request's `Host`, `Origin` and (for writes) media type, in that order, before
/// its body is read (a bodiless DELETE needs no media type). The host is the `Host` header
/// and the authority of the request target (HTTP/2's `:authority`, or an absolute URI):
/// at least one must be present, and every one present must be a loopback name.
pub fn check(method: &Method, uri: &Uri, headers: &HeaderMap) -> Result<(), ApiError> {
    let header_host = headers
        .get(header::HOST)
        .map(|h| h.to_str().unwrap_or("<not text>"));
    let hosts: Vec<&str> = uri
        .authority()
        .map(|a| a.as_str())
        .into_iter()
        .chain(header_host)
        .collect();
    let refused = if hosts.is_empty() {
        Some("")
    } else {
        hosts.into_iter().find(|h| !is_loopback_authority(h))
    };
    if let Some(host) = refused {
        return Err(ApiError::forbidden(format!(
            "host {host:?} is not allowed: the embedded API answers only requests addressed to \
             localhost, 127.0.0.1 or [::1] (protection against DNS rebinding)"
        )));
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("<not text>");
        if !is_loopback_origin(origin) {
            return Err(ApiError::forbidden(format!(
                "origin {origin:?} is not allowed: the embedded API refuses cross-origin \
                 requests from browsers"
            )));
        }
    }
    let write = matches!(
        *method,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    );
    if write {
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap_or("<not text>"));
        let media = content_type.map(|c| {
            c.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        });
        let understood = match media.as_deref() {
            None | Some("") => *method == Method::DELETE && !has_body(headers),
            Some(m) => WRITE_MEDIA_TYPES.contains(&m),
        };
        if !understood {
            return Err(ApiError::unsupported_media_type(
                content_type.unwrap_or_default(),
            ));
        }
    }
    Ok(())
}

/// Whether the request announces a body (a length above 0, or a chunked one).
fn has_body(headers: &HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|l| l.to_str().ok().is_none_or(|l| l.trim() != "0"))
}

/// `localhost`, `127.0.0.1` or `[::1]`, with or without a port.
fn is_loopback_authority(authority: &str) -> bool {
    let host = match authority.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((ip, "")) => return ip == "::1",
            Some((ip, port)) => return ip == "::1" && port.strip_prefix(':').is_some_and(is_port),
            None => return false,
        },
        None => match authority.split_once(':') {
            Some((host, port)) if is_port(port) => host,
            Some(_) => return false,
            None => authority,
        },
    };
    host.eq_ignore_ascii_case("localhost") || host == "127.0.0.1"
}

/// Digits of a port number.
fn is_port(port: &str) -> bool {
    !port.is_empty() && port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit())
}

/// `http(s)://` followed by a loopback authority.
fn is_loopback_origin(origin: &str) -> bool {
    origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .is_some_and(is_loopback_authority)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_names_are_loopback_authorities() {
        for ok in [
            "localhost",
            "LOCALHOST:8080",
            "127.0.0.1",
            "127.0.0.1:41234",
            "[::1]",
            "[::1]:6443",
        ] {
            assert!(is_loopback_authority(ok), "{ok}");
        }
        for bad in [
            "",
            "evil.example",
            "evil.example:80",
            "localhost.evil.example",
            "127.0.0.1.nip.io",
            "127.0.0.2",
            "[::2]:80",
            "[::1]x",
            "localhost:",
            "localhost:80:80",
            "0.0.0.0:80",
        ] {
            assert!(!is_loopback_authority(bad), "{bad}");
        }
        assert!(is_loopback_origin("http://localhost:3000"));
        assert!(is_loopback_origin("https://[::1]"));
        assert!(!is_loopback_origin("null"));
        assert!(!is_loopback_origin("https://evil.example"));
        assert!(!is_loopback_origin("file://localhost"));
    }

    #[test]
    fn the_authority_of_the_request_target_is_checked_like_the_host_header() {
        let code = |uri: &str, host: Option<&str>| {
            let mut headers = HeaderMap::new();
            if let Some(host) = host {
                headers.insert(header::HOST, host.parse().unwrap());
            }
            let uri: Uri = uri.parse().unwrap();
            check(&Method::GET, &uri, &headers).map_or_else(|e| e.code, |()| 200)
        };
        // HTTP/2 carries the host as `:authority`, in the URI, with no Host header.
        assert_eq!(code("https://127.0.0.1:6443/api", None), 200);
        assert_eq!(code("https://evil.example/api", None), 403);
        assert_eq!(code("/api", Some("localhost:6443")), 200);
        // Both present: both must be loopback.
        assert_eq!(code("https://evil.example/api", Some("localhost")), 403);
        assert_eq!(code("https://localhost/api", Some("evil.example")), 403);
        assert_eq!(code("/api", None), 403);
    }
}
