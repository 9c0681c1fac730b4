//! The few protobuf request bodies kubectl sends: its typed clients (`kubectl create
//! configmap|secret|namespace`) post `application/vnd.kubernetes.protobuf` and do not fall
//! back to JSON. This decodes the Kubernetes protobuf envelope (`k8s\0` + `runtime.Unknown`)
//! and the ConfigMap, Secret and Namespace messages (with the ObjectMeta fields a create
//! carries) into their JSON form; everything else is answered 415 by the caller.
//!
//! Field numbers are those of `k8s.io/api/core/v1/generated.proto` and
//! `k8s.io/apimachinery/pkg/apis/meta/v1/generated.proto`.

use base64::Engine as _;
use serde_json::{Map, Value, json};

/// A protobuf body that cannot be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("failed to decode protobuf body: {0}")]
pub struct ProtobufError(String);

fn err(message: impl Into<String>) -> ProtobufError {
    ProtobufError(message.into())
}

const MAGIC: &[u8] = b"k8s\0";

/// One field of a message: its number and value.
enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, ProtobufError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = self
                .buf
                .split_first()
                .ok_or_else(|| err("truncated varint"))?;
            self.buf = rest;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(err("varint too long"))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], ProtobufError> {
        if self.buf.len() < n {
            return Err(err("truncated field"));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    /// The next field, skipping fixed-width ones (none of the decoded messages use them).
    fn next(&mut self) -> Result<Option<(u64, Field<'a>)>, ProtobufError> {
        loop {
            if self.buf.is_empty() {
                return Ok(None);
            }
            let key = self.varint()?;
            let number = key >> 3;
            match key & 7 {
                0 => return Ok(Some((number, Field::Varint(self.varint()?)))),
                1 => {
                    self.take(8)?;
                }
                2 => {
                    let len =
                        usize::try_from(self.varint()?).map_err(|_| err("length out of range"))?;
                    return Ok(Some((number, Field::Bytes(self.take(len)?))));
                }
                5 => {
                    self.take(4)?;
                }
                other => return Err(err(format!("unsupported wire type {other}"))),
            }
        }
    }
}

fn fields(buf: &[u8]) -> Reader<'_> {
    Reader { buf }
}

fn string(bytes: &[u8]) -> Result<String, ProtobufError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| err("string field is not UTF-8"))
}

/// A `map<string, string>` or `map<string, bytes>` entry (key = 1, value = 2).
fn map_entry(bytes: &[u8], binary: bool) -> Result<(String, Value), ProtobufError> {
    let mut key = String::new();
    let mut value = Value::String(String::new());
    let mut r = fields(bytes);
    while let Some((number, field)) = r.next()? {
        match (number, field) {
            (1, Field::Bytes(b)) => key = string(b)?,
            (2, Field::Bytes(b)) if binary => {
                value = Value::String(base64::engine::general_purpose::STANDARD.encode(b));
            }
            (2, Field::Bytes(b)) => value = Value::String(string(b)?),
            _ => {}
        }
    }
    Ok((key, value))
}

fn insert_entry(
    target: &mut Map<String, Value>,
    field: &str,
    bytes: &[u8],
    binary: bool,
) -> Result<(), ProtobufError> {
    let (k, v) = map_entry(bytes, binary)?;
    target
        .entry(field)
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .ok_or_else(|| err("map field is not an object"))?
        .insert(k, v);
    Ok(())
}

fn object_meta(bytes: &[u8]) -> Result<Value, ProtobufError> {
    let mut meta = Map::new();
    let mut r = fields(bytes);
    while let Some((number, field)) = r.next()? {
        match (number, field) {
            (1, Field::Bytes(b)) => {
                meta.insert("name".into(), json!(string(b)?));
            }
            (2, Field::Bytes(b)) => {
                meta.insert("generateName".into(), json!(string(b)?));
            }
            (3, Field::Bytes(b)) => {
                meta.insert("namespace".into(), json!(string(b)?));
            }
            (6, Field::Bytes(b)) => {
                meta.insert("resourceVersion".into(), json!(string(b)?));
            }
            (11, Field::Bytes(b)) => insert_entry(&mut meta, "labels", b, false)?,
            (12, Field::Bytes(b)) => insert_entry(&mut meta, "annotations", b, false)?,
            (14, Field::Bytes(b)) => {
                meta.entry("finalizers")
                    .or_insert_with(|| json!([]))
                    .as_array_mut()
                    .ok_or_else(|| err("finalizers is not a list"))?
                    .push(json!(string(b)?));
            }
            // uid, timestamps, owner references, managed fields: set by the server.
            _ => {}
        }
    }
    Ok(Value::Object(meta))
}

fn config_map(bytes: &[u8]) -> Result<Map<String, Value>, ProtobufError> {
    let mut obj = Map::new();
    let mut r = fields(bytes);
    while let Some((number, field)) = r.next()? {
        match (number, field) {
            (1, Field::Bytes(b)) => {
                obj.insert("metadata".into(), object_meta(b)?);
            }
            (2, Field::Bytes(b)) => insert_entry(&mut obj, "data", b, false)?,
            (3, Field::Bytes(b)) => insert_entry(&mut obj, "binaryData", b, true)?,
            (4, Field::Varint(v)) => {
                obj.insert("immutable".into(), json!(v != 0));
            }
            _ => {}
        }
    }
    Ok(obj)
}

fn secret(bytes: &[u8]) -> Result<Map<String, Value>, ProtobufError> {
    let mut obj = Map::new();
    let mut r = fields(bytes);
    while let Some((number, field)) = r.next()? {
        match (number, field) {
            (1, Field::Bytes(b)) => {
                obj.insert("metadata".into(), object_meta(b)?);
            }
            (2, Field::Bytes(b)) => insert_entry(&mut obj, "data", b, true)?,
            (3, Field::Bytes(b)) => {
                obj.insert("type".into(), json!(string(b)?));
            }
            (4, Field::Bytes(b)) => insert_entry(&mut obj, "stringData", b, false)?,
            (5, Field::Varint(v)) => {
                obj.insert("immutable".into(), json!(v != 0));
            }
            _ => {}
        }
    }
    Ok(obj)
}

fn namespace(bytes: &[u8]) -> Result<Map<String, Value>, ProtobufError> {
    let mut obj = Map::new();
    let mut r = fields(bytes);
    while let Some((number, field)) = r.next()? {
        if let (1, Field::Bytes(b)) = (number, field) {
            obj.insert("metadata".into(), object_meta(b)?);
        }
    }
    Ok(obj)
}

/// Decodes a protobuf-encoded ConfigMap, Secret or Namespace into its JSON form.
pub fn decode(body: &[u8]) -> Result<Value, ProtobufError> {
    let envelope = body
        .strip_prefix(MAGIC)
        .ok_or_else(|| err("missing the k8s protobuf magic prefix"))?;
    let (mut api_version, mut kind, mut raw) = (String::new(), String::new(), None);
    let mut r = fields(envelope);
    while let Some((number, field)) = r.next()? {
        match (number, field) {
            (1, Field::Bytes(type_meta)) => {
                let mut t = fields(type_meta);
                while let Some((n, f)) = t.next()? {
                    match (n, f) {
                        (1, Field::Bytes(b)) => api_version = string(b)?,
                        (2, Field::Bytes(b)) => kind = string(b)?,
                        _ => {}
                    }
                }
            }
            (2, Field::Bytes(b)) => raw = Some(b),
            _ => {}
        }
    }
    let raw = raw.ok_or_else(|| err("the envelope carries no object"))?;
    let mut obj = match (api_version.as_str(), kind.as_str()) {
        ("v1", "ConfigMap") => config_map(raw)?,
        ("v1", "Secret") => secret(raw)?,
        ("v1", "Namespace") => namespace(raw)?,
        _ => {
            return Err(err(format!(
                "{api_version} {kind} is only accepted as JSON"
            )));
        }
    };
    obj.insert("apiVersion".into(), json!(api_version));
    obj.insert("kind".into(), json!(kind));
    Ok(Value::Object(obj))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        loop {
            let byte = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }

    fn bytes_field(number: u64, payload: &[u8], out: &mut Vec<u8>) {
        varint(number << 3 | 2, out);
        varint(payload.len() as u64, out);
        out.extend_from_slice(payload);
    }

    fn entry(k: &str, v: &[u8]) -> Vec<u8> {
        let mut e = Vec::new();
        bytes_field(1, k.as_bytes(), &mut e);
        bytes_field(2, v, &mut e);
        e
    }

    fn envelope(kind: &str, raw: &[u8]) -> Vec<u8> {
        let mut type_meta = Vec::new();
        bytes_field(1, b"v1", &mut type_meta);
        bytes_field(2, kind.as_bytes(), &mut type_meta);
        let mut unknown = Vec::new();
        bytes_field(1, &type_meta, &mut unknown);
        bytes_field(2, raw, &mut unknown);
        bytes_field(4, b"application/vnd.kubernetes.protobuf", &mut unknown);
        let mut body = MAGIC.to_vec();
        body.extend_from_slice(&unknown);
        body
    }

    fn meta(name: &str) -> Vec<u8> {
        let mut m = Vec::new();
        bytes_field(1, name.as_bytes(), &mut m);
        bytes_field(11, &entry("app", b"web"), &mut m);
        // An empty creationTimestamp message, as kubectl sends it.
        bytes_field(8, &[], &mut m);
        m
    }

    #[test]
    fn a_protobuf_config_map_decodes_to_its_json_form() {
        let mut cm = Vec::new();
        bytes_field(1, &meta("a"), &mut cm);
        bytes_field(2, &entry("x", b"1"), &mut cm);
        bytes_field(2, &entry("y", b"2"), &mut cm);
        varint(4 << 3, &mut cm);
        varint(1, &mut cm);
        let obj = decode(&envelope("ConfigMap", &cm)).unwrap();
        assert_eq!(
            obj,
            json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "a", "labels": {"app": "web"}},
                "data": {"x": "1", "y": "2"}, "immutable": true})
        );
    }

    #[test]
    fn a_protobuf_secret_keeps_binary_data_as_base64() {
        let mut s = Vec::new();
        bytes_field(1, &meta("s"), &mut s);
        bytes_field(2, &entry("token", &[0xff, 0x00]), &mut s);
        bytes_field(3, b"Opaque", &mut s);
        let obj = decode(&envelope("Secret", &s)).unwrap();
        assert_eq!(obj["data"]["token"], "/wA=");
        assert_eq!(obj["type"], "Opaque");
    }

    #[test]
    fn other_kinds_and_malformed_bodies_are_rejected() {
        let err = decode(&envelope("Pod", &[])).unwrap_err();
        assert!(err.0.contains("v1 Pod is only accepted as JSON"), "{err}");
        assert!(decode(b"{\"json\": true}").is_err());
        let mut truncated = envelope("ConfigMap", &meta("a"));
        truncated.truncate(truncated.len() - 3);
        assert!(decode(&truncated).is_err());
    }
}
