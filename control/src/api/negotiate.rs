//! Query parameters, request body formats and response formats.

use crate::status::{ApiError, ApiResult};
use serde_json::Value;
use std::collections::HashMap;

#[derive(Default, Debug)]
pub struct Query(HashMap<String, String>);

impl Query {
    pub fn parse(q: &str) -> Query {
        let mut m = HashMap::new();
        for pair in q.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let dec = |s: &str| {
                urlencoding::decode(&s.replace('+', " ")).map(|c| c.into_owned()).unwrap_or_else(|_| s.to_string())
            };
            m.insert(dec(k), dec(v));
        }
        Query(m)
    }
    pub fn get(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(String::as_str)
    }
    /// A boolean parameter, parsed like Go's `strconv.ParseBool` (clients send `true`, `True`, `1`).
    pub fn flag(&self, k: &str) -> bool {
        matches!(self.get(k), Some("1" | "t" | "T" | "true" | "True" | "TRUE" | ""))
    }
    pub fn int(&self, k: &str) -> ApiResult<Option<i64>> {
        match self.get(k) {
            None | Some("") => Ok(None),
            Some(v) => v.parse().map(Some).map_err(|_| {
                ApiError::bad_request(format!("invalid value {v:?} for query parameter {k}: not an integer"))
            }),
        }
    }
    pub fn dry_run(&self) -> ApiResult<bool> {
        match self.get("dryRun") {
            None | Some("") => Ok(false),
            Some("All") => Ok(true),
            Some(other) => {
                Err(ApiError::bad_request(format!("unsupported dry run option: {other:?} (supported: All)")))
            }
        }
    }
}

/// How the server treats unknown or duplicate fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldValidation {
    Ignore,
    Warn,
    Strict,
}

impl FieldValidation {
    pub fn from_query(q: &Query) -> ApiResult<Self> {
        match q.get("fieldValidation") {
            // Kubernetes' default since 1.27 is Warn.
            None | Some("") | Some("Warn") => Ok(Self::Warn),
            Some("Ignore") => Ok(Self::Ignore),
            Some("Strict") => Ok(Self::Strict),
            Some(other) => Err(ApiError::bad_request(format!(
                "fieldValidation must be one of \"Ignore\", \"Warn\", or \"Strict\", got {other:?}"
            ))),
        }
    }
}

/// The body formats accepted for create/update.
pub fn decode_object(content_type: &str, body: &[u8]) -> ApiResult<Value> {
    let ct = media_type(content_type);
    match ct.as_str() {
        "" | "application/json" | "*/*" => decode_json(body),
        "application/yaml" | "application/x-yaml" | "text/yaml" => decode_yaml(body),
        // kubectl's `create <generator>` and `autoscale` send built-in kinds as protobuf.
        skiff_protobuf::CONTENT_TYPE => skiff_protobuf::decode(body)
            .map_err(|e| ApiError::bad_request(format!("couldn't decode the protobuf request body: {e}"))),
        other => Err(ApiError::unsupported_media_type(other)),
    }
}

pub fn media_type(content_type: &str) -> String {
    content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase()
}

pub fn decode_json(body: &[u8]) -> ApiResult<Value> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request("the request body is empty"));
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("couldn't decode the request body as JSON: {e}")))
}

pub fn decode_yaml(body: &[u8]) -> ApiResult<Value> {
    let v: Value = serde_yaml::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("error converting YAML to JSON: {e}")))?;
    Ok(v)
}

/// What the client wants back for reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Json,
    Table,
}

pub fn output(accept: &str) -> Output {
    // kubectl sends `application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json`.
    for part in accept.split(',') {
        let p = part.replace(' ', "");
        if p.contains("as=Table") && p.contains("g=meta.k8s.io") {
            return Output::Table;
        }
    }
    Output::Json
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_decodes_selectors() {
        let q = Query::parse("labelSelector=kubernetes.io%2Fservice-name%3Dx&limit=500&watch=true");
        assert_eq!(q.get("labelSelector"), Some("kubernetes.io/service-name=x"));
        assert_eq!(q.int("limit").unwrap(), Some(500));
        assert!(q.flag("watch"));
    }

    #[test]
    fn table_accept_is_recognised() {
        assert_eq!(
            output(
                "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"
            ),
            Output::Table
        );
        assert_eq!(output("application/json, */*"), Output::Json);
    }
}
