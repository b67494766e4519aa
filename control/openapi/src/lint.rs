//! A checker for the OpenAPI 3.0 constructs kubectl's parser (kube-openapi `spec3`) accepts.
//!
//! schemars speaks JSON Schema 2020-12; its `openapi3` settings translate most of it, and this
//! makes sure nothing slipped through: `$defs`, type arrays, `const`, boolean schemas, numeric
//! `exclusiveMinimum`, `$ref`s with siblings or pointing outside the document. It is
//! schema-aware: keys of `properties` are field names (JSONSchemaProps has fields literally named
//! `$ref` and `$schema`), not keywords.

use crate::schemas::ref_name;
use serde_json::Value;

/// JSON Schema keywords that OpenAPI 3.0's schema object does not have.
const NOT_IN_OPENAPI_30: &[&str] = &[
    "$defs",
    "definitions",
    "$schema",
    "$id",
    "$anchor",
    "$dynamicRef",
    "$dynamicAnchor",
    "$comment",
    "const",
    "examples",
    "prefixItems",
    "unevaluatedProperties",
    "unevaluatedItems",
    "dependentSchemas",
    "dependentRequired",
    "patternProperties",
    "propertyNames",
    "contains",
    "if",
    "then",
    "else",
    "contentMediaType",
    "contentEncoding",
];

const TYPES: &[&str] = &["object", "array", "string", "integer", "number", "boolean"];

/// Problems found in one document (empty = fine). Each entry names the JSON location.
pub fn lint_openapi30(doc: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    let schemas = doc.pointer("/components/schemas").and_then(Value::as_object);
    match doc.get("openapi").and_then(Value::as_str) {
        Some(v) if v.starts_with("3.0") => {}
        other => errors.push(format!("/openapi: expected 3.0.x, got {other:?}")),
    }
    let Some(schemas) = schemas else {
        errors.push("/components/schemas: missing".into());
        return errors;
    };
    let mut check = Check { schemas, errors };
    for (name, schema) in schemas {
        check.schema(schema, &format!("/components/schemas/{name}"));
        match schema.get("x-kubernetes-group-version-kind") {
            None | Some(Value::Array(_)) => {}
            Some(_) => check.errors.push(format!("/components/schemas/{name}: GVK extension must be an array")),
        }
    }
    match doc.get("paths").and_then(Value::as_object) {
        None => check.errors.push("/paths: missing".into()),
        Some(paths) => {
            for (path, item) in paths {
                let at = format!("/paths/{path}");
                check.parameters(item.get("parameters"), &at);
                let Some(item) = item.as_object() else {
                    continue;
                };
                for (method, op) in item {
                    if method == "parameters" {
                        continue;
                    }
                    let at = format!("{at}/{method}");
                    check.operation(op, &at);
                }
            }
        }
    }
    check.errors
}

struct Check<'a> {
    schemas: &'a serde_json::Map<String, Value>,
    errors: Vec<String>,
}

impl Check<'_> {
    fn operation(&mut self, op: &Value, at: &str) {
        match op.get("x-kubernetes-group-version-kind") {
            None | Some(Value::Object(_)) => {}
            Some(_) => self.errors.push(format!("{at}: operation GVK extension must be an object")),
        }
        self.parameters(op.get("parameters"), at);
        if let Some(content) = op.pointer("/requestBody/content").and_then(Value::as_object) {
            for (ty, media) in content {
                self.media(media, &format!("{at}/requestBody/{ty}"));
            }
        }
        if let Some(responses) = op.get("responses").and_then(Value::as_object) {
            for (code, response) in responses {
                if let Some(content) = response.get("content").and_then(Value::as_object) {
                    for (ty, media) in content {
                        self.media(media, &format!("{at}/responses/{code}/{ty}"));
                    }
                }
            }
        }
    }

    fn parameters(&mut self, params: Option<&Value>, at: &str) {
        let Some(params) = params else { return };
        let Some(params) = params.as_array() else {
            self.errors.push(format!("{at}/parameters: not an array"));
            return;
        };
        for p in params {
            let name = p.get("name").and_then(Value::as_str).unwrap_or("?");
            let at = format!("{at}/parameters/{name}");
            match p.get("in").and_then(Value::as_str) {
                Some("query" | "path" | "header" | "cookie") => {}
                other => self.errors.push(format!("{at}: bad `in` {other:?}")),
            }
            match p.get("schema") {
                Some(s) => self.schema(s, &at),
                None => self.errors.push(format!("{at}: no schema")),
            }
        }
    }

    fn media(&mut self, media: &Value, at: &str) {
        match media.get("schema") {
            Some(s) => self.schema(s, at),
            None => self.errors.push(format!("{at}: no schema")),
        }
    }

    fn schema(&mut self, schema: &Value, at: &str) {
        let Some(obj) = schema.as_object() else {
            self.errors.push(format!("{at}: schema is not an object ({schema})"));
            return;
        };
        if let Some(r) = obj.get("$ref") {
            match r.as_str().and_then(ref_name) {
                Some(target) if self.schemas.contains_key(target) => {}
                _ => self.errors.push(format!("{at}: unresolvable $ref {r}")),
            }
            // OpenAPI 3.0 ignores everything next to a $ref; Kubernetes uses allOf instead.
            if obj.len() > 1 {
                self.errors.push(format!("{at}: $ref with siblings"));
            }
        }
        for k in NOT_IN_OPENAPI_30 {
            if obj.contains_key(*k) {
                self.errors.push(format!("{at}: `{k}` is not OpenAPI 3.0"));
            }
        }
        match obj.get("type") {
            None => {}
            Some(Value::String(t)) if TYPES.contains(&t.as_str()) => {}
            Some(t) => self.errors.push(format!("{at}: type {t} is not OpenAPI 3.0")),
        }
        for k in ["exclusiveMinimum", "exclusiveMaximum", "nullable", "uniqueItems", "readOnly", "writeOnly"] {
            if let Some(v) = obj.get(k) {
                if !v.is_boolean() {
                    self.errors.push(format!("{at}: `{k}` must be a boolean in OpenAPI 3.0"));
                }
            }
        }
        if let Some(props) = obj.get("properties") {
            match props.as_object() {
                Some(props) => {
                    for (name, s) in props {
                        self.schema(s, &format!("{at}/properties/{name}"));
                    }
                }
                None => self.errors.push(format!("{at}/properties: not an object")),
            }
        }
        match obj.get("items") {
            None => {}
            Some(items @ Value::Object(_)) => self.schema(items, &format!("{at}/items")),
            Some(_) => self.errors.push(format!("{at}/items: must be a single schema in OpenAPI 3.0")),
        }
        match obj.get("additionalProperties") {
            None | Some(Value::Bool(_)) => {}
            Some(s) => self.schema(s, &format!("{at}/additionalProperties")),
        }
        if let Some(s) = obj.get("not") {
            self.schema(s, &format!("{at}/not"));
        }
        for k in ["allOf", "anyOf", "oneOf"] {
            if let Some(list) = obj.get(k) {
                match list.as_array() {
                    Some(list) => {
                        for (i, s) in list.iter().enumerate() {
                            self.schema(s, &format!("{at}/{k}/{i}"));
                        }
                    }
                    None => self.errors.push(format!("{at}/{k}: not an array")),
                }
            }
        }
    }
}
