//! Kubernetes protobuf (`application/vnd.kubernetes.protobuf`) request bodies decoded to JSON.
//!
//! kubectl 1.33 sends the objects its generators build (`create configmap|secret|deployment|
//! service|job|…`, `autoscale`, `create token`) as Kubernetes protobuf and does not retry as JSON
//! on a 415, so the API server turns such bodies into the JSON form the rest of Skiff works on:
//!
//! ```
//! let body = b"k8s\0\n\x0f\n\x02v1\x12\tConfigMap\x12\x0e\n\x03\n\x01x\x12\x07\n\x01a\x12\x02bc";
//! let obj = skiff_protobuf::decode(body).unwrap();
//! assert_eq!(obj, serde_json::json!({
//!     "apiVersion": "v1", "kind": "ConfigMap",
//!     "metadata": {"name": "x", "creationTimestamp": null},
//!     "data": {"a": "bc"},
//! }));
//! ```
//!
//! The result is exactly what Go's `encoding/json` writes for the decoded Go object, which is what
//! a real API server would store and what `kubectl create … --dry-run=client -o json` prints.
//! Decoding is generic: a table of every API struct kubectl 1.33 knows (`data/`, extracted from
//! the kubectl binary's Go type metadata by `extract.rs`) drives one wire-format walker
//! (`decode.rs`); only the handful of types with hand-written Go marshalling (Time, MicroTime,
//! Duration, Quantity, IntOrString, RawExtension, FieldsV1) have code of their own.
//!
//! Limits: kinds outside kubectl's own types (CustomResourceDefinition, APIService, custom
//! resources) are `UnknownKind`; Kubernetes itself accepts only JSON for custom resources, and
//! kubectl sends those two as JSON. Quantities are passed through as written: a Go client writes
//! the canonical form already.

mod decode;
#[cfg(test)]
mod extract;
mod gofmt;
mod table;
mod wire;

use serde_json::Value;

/// The media type of Kubernetes protobuf bodies.
pub const CONTENT_TYPE: &str = "application/vnd.kubernetes.protobuf";

/// Every Kubernetes protobuf body starts with these four bytes.
pub const MAGIC: &[u8] = b"k8s\0";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("not a Kubernetes protobuf body (missing the k8s\\0 prefix)")]
    MissingMagic,
    /// The envelope names a kind that is not a built-in Kubernetes kind (custom resources cannot
    /// be sent as protobuf).
    #[error("no kind {kind:?} is registered in version {api_version:?}")]
    UnknownKind { api_version: String, kind: String },
    /// The envelope asks for something the decoder does not do (a `contentEncoding` such as gzip).
    #[error("unsupported protobuf envelope: {0}")]
    Unsupported(String),
    /// The bytes are not a valid encoding of the named kind. `path` is the JSON field path, empty
    /// at the top level.
    #[error("malformed protobuf{}: {reason}", if path.is_empty() { String::new() } else { format!(" at {path}") })]
    Malformed { path: String, reason: String },
}

impl DecodeError {
    /// Prefixes a field name to the path of a `Malformed` error as it propagates outwards.
    pub(crate) fn in_field(self, name: &str) -> Self {
        match self {
            DecodeError::Malformed { path, reason } => DecodeError::Malformed {
                path: if path.is_empty() { name.to_string() } else { format!("{name}.{path}") },
                reason,
            },
            other => other,
        }
    }
}

/// Decodes a `k8s\0`-prefixed protobuf body to the object's Kubernetes JSON, with `apiVersion` and
/// `kind` taken from the envelope.
pub fn decode(body: &[u8]) -> Result<Value, DecodeError> {
    decode_envelope(body, &mut decode::Ctx::new(body.len()))
}

/// The `runtime.Unknown` envelope: `{1: TypeMeta{1: apiVersion, 2: kind}, 2: raw, 3:
/// contentEncoding, 4: contentType}`, where `raw` is the object's own message.
pub(crate) fn decode_envelope(body: &[u8], ctx: &mut decode::Ctx) -> Result<Value, DecodeError> {
    let Some(rest) = body.strip_prefix(MAGIC) else {
        return Err(DecodeError::MissingMagic);
    };
    let (mut api_version, mut kind, mut raw, mut encoding, mut content_type) =
        (String::new(), String::new(), &[][..], String::new(), String::new());
    let text = |v: wire::Value| match v {
        wire::Value::Bytes(b) => Ok(String::from_utf8_lossy(b).into_owned()),
        _ => Err(wire::malformed("envelope field is not length-delimited")),
    };
    let mut r = wire::Reader::new(rest);
    while let Some((num, v)) = r.field()? {
        match num {
            1 => {
                let wire::Value::Bytes(tm) = v else { return Err(wire::malformed("envelope typeMeta")) };
                let mut t = wire::Reader::new(tm);
                while let Some((n, v)) = t.field()? {
                    match n {
                        1 => api_version = text(v)?,
                        2 => kind = text(v)?,
                        _ => {}
                    }
                }
            }
            2 => match v {
                wire::Value::Bytes(b) => raw = b,
                _ => return Err(wire::malformed("envelope raw")),
            },
            3 => encoding = text(v)?,
            4 => content_type = text(v)?,
            _ => {}
        }
    }
    if !encoding.is_empty() {
        return Err(DecodeError::Unsupported(format!("contentEncoding {encoding:?}")));
    }
    // Go's protobuf serializer leaves contentType empty; anything but protobuf inside is refused.
    if !content_type.is_empty() && content_type != CONTENT_TYPE {
        return Err(DecodeError::Unsupported(format!("contentType {content_type:?}")));
    }
    let Some(idx) = table::kind_struct(&api_version, &kind) else {
        return Err(DecodeError::UnknownKind { api_version, kind });
    };
    let fields = decode::message(idx, raw, ctx)?;
    // apiVersion and kind first, as Go writes them (visible where serde_json keeps order).
    let mut obj = serde_json::Map::new();
    obj.insert("apiVersion".to_string(), Value::String(api_version));
    obj.insert("kind".to_string(), Value::String(kind));
    for (k, v) in fields {
        obj.entry(k).or_insert(v);
    }
    Ok(Value::Object(obj))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The body DESIGN.md §3 quotes from `kubectl autoscale rc x --min=1 --max=10 --cpu-percent=50`.
    const AUTOSCALE: &[u8] = b"k8s\x00\n)\n\x0eautoscaling/v1\x12\x17HorizontalPodAutoscaler\x12A\n\x11\n\x01x\x12\x00\x1a\x00\"\x00*\x002\x008\x00B\x00\x12&\n\x1e\n\x15ReplicationController\x12\x01x\x1a\x02v1\x10\x01\x18\n 2\x1a\x04\x18\x00 \x00\x1a\x00\"\x00";

    #[test]
    fn autoscale_body() {
        assert_eq!(
            decode(AUTOSCALE).unwrap(),
            json!({
                "apiVersion": "autoscaling/v1",
                "kind": "HorizontalPodAutoscaler",
                "metadata": {"name": "x", "creationTimestamp": null},
                "spec": {
                    "scaleTargetRef": {"kind": "ReplicationController", "name": "x", "apiVersion": "v1"},
                    "minReplicas": 1,
                    "maxReplicas": 10,
                    "targetCPUUtilizationPercentage": 50
                },
                "status": {"currentReplicas": 0, "desiredReplicas": 0}
            })
        );
    }

    #[test]
    fn table_is_well_formed() {
        let t = table::Table::get();
        assert!(t.structs.len() > 1000);
        for kind in ["v1/Pod", "apps/v1/Deployment", "batch/v1/CronJob", "autoscaling/v2/HorizontalPodAutoscaler"] {
            let (av, k) = kind.rsplit_once('/').unwrap();
            assert!(table::kind_struct(av, k).is_some(), "{kind}");
        }
    }
}
