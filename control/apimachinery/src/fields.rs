//! Field selectors (`k8s.io/apimachinery/pkg/fields`, plus the per-resource
//! field label conversions and `ToSelectableFields` of Kubernetes 1.33).
//!
//! Unlike label selectors, field selectors are not whitespace tolerant:
//! Kubernetes takes `a = b` to mean the field `"a "`, and so do we.

use std::fmt;

use serde_json::Value;

use crate::json::{arr, go_quote, int_of, str_of};
use crate::{SelectorError, builtin_resource};

/// How a field requirement compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FieldOperator {
    /// `field=value`.
    Equals,
    /// `field==value` (same meaning as `=`).
    DoubleEquals,
    /// `field!=value`.
    NotEquals,
}

/// One `field<op>value` clause; `value` is already unescaped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldRequirement {
    /// The field path, e.g. `status.phase`.
    pub field: String,
    /// The comparison.
    pub operator: FieldOperator,
    /// The unescaped value to compare against.
    pub value: String,
}

impl FieldRequirement {
    /// Whether `object`'s value for the field satisfies this clause.
    pub fn matches(&self, object: &Value) -> bool {
        let actual = field_value(object, &self.field);
        match self.operator {
            FieldOperator::Equals | FieldOperator::DoubleEquals => actual == self.value,
            FieldOperator::NotEquals => actual != self.value,
        }
    }
}

impl fmt::Display for FieldRequirement {
    /// `hasTerm`/`notHasTerm.String()`: `==` is normalised to `=`, values re-escaped.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let op = if self.operator == FieldOperator::NotEquals { "!=" } else { "=" };
        write!(f, "{}{}{}", self.field, op, escape_value(&self.value))
    }
}

/// A parsed field selector: the AND of its requirements. Empty matches everything.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FieldSelector {
    requirements: Vec<FieldRequirement>,
}

impl FieldSelector {
    /// The selector that matches everything.
    pub fn everything() -> Self {
        Self::default()
    }

    /// Parses `?fieldSelector=` / `kubectl --field-selector` (`fields.ParseSelector`):
    /// comma-separated `f=v`, `f==v`, `f!=v`; values may escape `\,` `\=` `\\`
    /// (`fields.EscapeValue`). Empty terms are ignored.
    pub fn parse(selector: &str) -> Result<Self, SelectorError> {
        let mut parts = split_terms(selector);
        // Kubernetes sorts the raw terms, which fixes both String() and the
        // order in which unsupported fields are reported.
        parts.sort_unstable();
        let mut requirements = Vec::with_capacity(parts.len());
        for part in parts {
            if part.is_empty() {
                continue;
            }
            let Some((field, operator, raw)) = split_term(part) else {
                return Err(SelectorError::InvalidFieldSelector(format!(
                    "invalid selector: '{selector}'; can't understand '{part}'"
                )));
            };
            let value = unescape_value(raw)?;
            requirements.push(FieldRequirement { field: field.to_string(), operator, value });
        }
        Ok(FieldSelector { requirements })
    }

    /// The requirements, in Kubernetes' (sorted) order.
    pub fn requirements(&self) -> &[FieldRequirement] {
        &self.requirements
    }

    /// True when the selector has no requirements.
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Checks every field against what `resource` (a plural such as `"pods"`,
    /// optionally `plural.group`) lets clients select on, with the error text
    /// the API server returns for that resource.
    pub fn validate_for(&self, resource: &str) -> Result<(), SelectorError> {
        for r in &self.requirements {
            validate_field(resource, &r.field)?;
        }
        Ok(())
    }

    /// Whether `object` satisfies every requirement.
    pub fn matches(&self, object: &Value) -> bool {
        self.requirements.iter().all(|r| r.matches(object))
    }

    /// If the selector pins `field` with `=`/`==`, the value (`RequiresExactMatch`),
    /// e.g. `metadata.name` for a single-object watch.
    pub fn requires_exact_match(&self, field: &str) -> Option<&str> {
        self.requirements
            .iter()
            .find(|r| r.field == field && r.operator != FieldOperator::NotEquals)
            .map(|r| r.value.as_str())
    }
}

impl fmt::Display for FieldSelector {
    /// The canonical form, terms joined by commas; empty for everything.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

/// `fields.EscapeValue`: escapes `\`, `,` and `=` so a value survives parsing.
pub fn escape_value(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '\\' | ',' | '=') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// `fields.UnescapeValue`: undoes [`escape_value`]; an unknown escape, a
/// trailing backslash or a bare `,`/`=` is an error.
pub fn unescape_value(s: &str) -> Result<String, SelectorError> {
    if !s.contains(['\\', ',', '=']) {
        return Ok(s.to_string());
    }
    let mut out = String::with_capacity(s.len());
    let mut in_slash = false;
    for c in s.chars() {
        if in_slash {
            if !matches!(c, '\\' | ',' | '=') {
                return Err(SelectorError::InvalidFieldSelector(format!(
                    "invalid field selector: invalid escape sequence: \\{c}"
                )));
            }
            out.push(c);
            in_slash = false;
            continue;
        }
        match c {
            '\\' => in_slash = true,
            // Go formats the rune with %v, i.e. as its code point number.
            ',' | '=' => {
                return Err(SelectorError::InvalidFieldSelector(format!(
                    "invalid field selector: unescaped character in value: {}",
                    c as u32
                )));
            }
            c => out.push(c),
        }
    }
    if in_slash {
        return Err(SelectorError::InvalidFieldSelector(
            "invalid field selector: invalid escape sequence: \\".to_string(),
        ));
    }
    Ok(out)
}

/// Splits on commas not preceded by a backslash (escapes are kept for
/// [`unescape_value`]).
fn split_terms(selector: &str) -> Vec<&str> {
    if selector.is_empty() {
        return Vec::new();
    }
    let mut terms = Vec::new();
    let mut start = 0;
    let mut in_slash = false;
    for (i, c) in selector.char_indices() {
        if in_slash {
            in_slash = false;
        } else if c == '\\' {
            in_slash = true;
        } else if c == ',' {
            terms.push(&selector[start..i]);
            start = i + 1;
        }
    }
    terms.push(&selector[start..]);
    terms
}

/// Splits at the first operator; `!=` and `==` are tried before `=` so the
/// value does not keep a stray `=`.
fn split_term(term: &str) -> Option<(&str, FieldOperator, &str)> {
    for (i, _) in term.char_indices() {
        let rest = &term[i..];
        for (op, kind) in
            [("!=", FieldOperator::NotEquals), ("==", FieldOperator::DoubleEquals), ("=", FieldOperator::Equals)]
        {
            if let Some(value) = rest.strip_prefix(op) {
                return Some((&term[..i], kind, value));
            }
        }
    }
    None
}

/// The field label conversion functions Kubernetes registers per kind. Note
/// that their error texts differ, and that kinds without one (ConfigMaps,
/// Deployments, custom resources…) answer with the default conversion's text.
fn validate_field(resource: &str, field: &str) -> Result<(), SelectorError> {
    let not_supported = || SelectorError::FieldNotSupported {
        field: field.to_string(),
        message: format!("field label not supported: {field}"),
    };
    let meta = matches!(field, "metadata.name" | "metadata.namespace");
    let ok = match builtin_resource(resource) {
        "pods" => {
            meta || matches!(
                field,
                "spec.nodeName"
                    | "spec.restartPolicy"
                    | "spec.schedulerName"
                    | "spec.serviceAccountName"
                    | "spec.hostNetwork"
                    | "status.phase"
                    | "status.podIP"
                    | "status.podIPs"
                    | "status.nominatedNodeName"
                    // Old v1 clients' name for spec.nodeName, still accepted.
                    | "spec.host"
            )
        }
        "events" => {
            meta || matches!(
                field,
                "involvedObject.kind"
                    | "involvedObject.namespace"
                    | "involvedObject.name"
                    | "involvedObject.uid"
                    | "involvedObject.apiVersion"
                    | "involvedObject.resourceVersion"
                    | "involvedObject.fieldPath"
                    | "reason"
                    | "reportingComponent"
                    | "source"
                    | "type"
            )
        }
        "nodes" => meta || field == "spec.unschedulable",
        "namespaces" => meta || field == "status.phase",
        "secrets" => meta || field == "type",
        "services" => meta || matches!(field, "spec.clusterIP" | "spec.type"),
        "replicationcontrollers" | "replicasets" => meta || field == "status.replicas",
        "jobs" => {
            if meta || field == "status.successful" {
                return Ok(());
            }
            return Err(SelectorError::FieldNotSupported {
                field: field.to_string(),
                message: format!("field label {} not supported for batchv1.Job", go_quote(field)),
            });
        }
        _ => {
            if meta {
                return Ok(());
            }
            return Err(SelectorError::FieldNotSupported {
                field: field.to_string(),
                message: format!(
                    "{} is not a known field selector: only \"metadata.name\", \"metadata.namespace\"",
                    go_quote(field)
                ),
            });
        }
    };
    if ok { Ok(()) } else { Err(not_supported()) }
}

/// The value Kubernetes compares a field selector against (the resource's
/// `ToSelectableFields`), read from the stored JSON object.
///
/// Go builds these from typed structs, so absent booleans read `"false"` and
/// absent counters `"0"`, never `""`; a few fields are not at their JSON path
/// (`status.successful` is `status.succeeded`; an Event's `source` is
/// `source.component`, falling back to `reportingComponent`). Any other field
/// is read by its dotted path: strings as-is, booleans and numbers as Go prints
/// them, and anything missing as `""`.
pub fn field_value(object: &Value, field: &str) -> String {
    match field {
        "spec.hostNetwork" | "spec.unschedulable" => {
            let v = lookup(object, field);
            v.as_bool().unwrap_or(false).to_string()
        }
        "status.replicas" => int_of(lookup(object, field)).unwrap_or(0).to_string(),
        "status.successful" => int_of(&object["status"]["succeeded"]).unwrap_or(0).to_string(),
        "spec.host" => str_of(&object["spec"]["nodeName"]).to_string(),
        "status.podIP" => {
            // Kubernetes keeps podIP and podIPs[0] in sync and prefers podIP when
            // both exist; either alone is the pod's primary address.
            let ip = str_of(&object["status"]["podIP"]);
            if ip.is_empty() {
                arr(&object["status"]["podIPs"]).first().map(|p| str_of(&p["ip"]).to_string()).unwrap_or_default()
            } else {
                ip.to_string()
            }
        }
        "source" if object.get("involvedObject").is_some() || object.get("reportingComponent").is_some() => {
            let component = str_of(&object["source"]["component"]);
            if component.is_empty() { str_of(&object["reportingComponent"]).to_string() } else { component.to_string() }
        }
        _ => scalar_string(lookup(object, field)),
    }
}

fn lookup<'a>(object: &'a Value, field: &str) -> &'a Value {
    field.split('.').fold(object, |v, part| &v[part])
}

fn scalar_string(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(s: &str) -> FieldSelector {
        FieldSelector::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn parses_operators_and_normalises() {
        assert_eq!(parse("status.phase=Running").to_string(), "status.phase=Running");
        assert_eq!(parse("status.phase==Running").to_string(), "status.phase=Running");
        assert_eq!(parse("spec.nodeName!=n1,metadata.name=a").to_string(), "metadata.name=a,spec.nodeName!=n1");
        assert_eq!(parse("a=b,,c=d").requirements().len(), 2);
        assert!(parse("").is_empty());
        // `!=` wins over `=` at the same position, and only the first operator splits.
        let sel = parse("a!=b\\=c");
        let r = &sel.requirements()[0];
        assert_eq!((r.field.as_str(), r.operator, r.value.as_str()), ("a", FieldOperator::NotEquals, "b=c"));
    }

    #[test]
    fn escaped_values() {
        let s = parse(r"metadata.name=a\,b\=c\\d");
        assert_eq!(s.requirements()[0].value, r"a,b=c\d");
        assert_eq!(s.to_string(), r"metadata.name=a\,b\=c\\d");
        assert_eq!(escape_value(r"x=y,z\"), r"x\=y\,z\\");
        assert_eq!(unescape_value(&escape_value("p=q,r\\s")).unwrap(), "p=q,r\\s");
    }

    #[test]
    fn parse_errors() {
        let e = |s: &str| FieldSelector::parse(s).unwrap_err().to_string();
        assert_eq!(e("status.phase"), "invalid selector: 'status.phase'; can't understand 'status.phase'");
        assert_eq!(e("a=b,c"), "invalid selector: 'a=b,c'; can't understand 'c'");
        assert_eq!(e(r"a=\x"), r"invalid field selector: invalid escape sequence: \x");
        assert_eq!(e(r"a=b\"), r"invalid field selector: invalid escape sequence: \");
        assert_eq!(e("a=b=c"), "invalid field selector: unescaped character in value: 61");
    }

    #[test]
    fn validate_for_uses_each_resources_wording() {
        let ok = |sel: &str, res: &str| parse(sel).validate_for(res).unwrap_or_else(|e| panic!("{sel} on {res}: {e}"));
        let bad = |sel: &str, res: &str| parse(sel).validate_for(res).unwrap_err().to_string();
        ok("metadata.name=a,metadata.namespace=b", "configmaps");
        ok("spec.nodeName=n1,status.phase=Running,spec.hostNetwork=true,spec.serviceAccountName=x", "pods");
        ok("involvedObject.name=p,reason=Started,type=Normal,source=kubelet,reportingComponent=k", "events");
        ok("spec.unschedulable=false", "nodes");
        ok("status.phase=Active", "namespaces");
        ok("type=Opaque", "secrets");
        ok("status.replicas=0", "replicationcontrollers");
        ok("status.replicas=0", "replicasets.apps");
        ok("status.successful=1", "jobs");
        ok("status.successful=1", "jobs.batch");
        ok("spec.type=NodePort", "services");
        assert_eq!(bad("spec.foo=1", "pods"), "field label not supported: spec.foo");
        assert_eq!(bad("status.phase=Active", "secrets"), "field label not supported: status.phase");
        assert_eq!(bad("spec.foo=1", "jobs"), "field label \"spec.foo\" not supported for batchv1.Job");
        assert_eq!(
            bad("data.x=1", "configmaps"),
            "\"data.x\" is not a known field selector: only \"metadata.name\", \"metadata.namespace\""
        );
        // Kubernetes does not trim: the field is "status.phase ".
        assert_eq!(bad("status.phase =Running", "pods"), "field label not supported: status.phase ");
        let err = parse("x=1").validate_for("pods").unwrap_err();
        assert!(matches!(err, SelectorError::FieldNotSupported { ref field, .. } if field == "x"));
    }

    #[test]
    fn matches_objects_like_go_typed_structs() {
        let pod = json!({
            "metadata": {"name": "web-1", "namespace": "default"},
            "spec": {"nodeName": "n1", "restartPolicy": "Always"},
            "status": {"phase": "Running", "podIPs": [{"ip": "10.0.0.5"}]}
        });
        assert!(parse("status.phase=Running,spec.nodeName=n1").matches(&pod));
        assert!(parse("metadata.name=web-1,metadata.namespace=default").matches(&pod));
        assert!(parse("status.phase!=Pending").matches(&pod));
        assert!(!parse("status.phase=Pending").matches(&pod));
        assert!(parse("spec.hostNetwork=false").matches(&pod), "absent bool reads false");
        assert!(parse("status.podIP=10.0.0.5").matches(&pod));
        assert!(parse("spec.host=n1").matches(&pod));
        assert!(parse("status.nominatedNodeName=").matches(&pod), "absent string reads empty");
        assert!(parse("").matches(&json!(null)));

        let node = json!({"metadata": {"name": "n1"}, "spec": {"unschedulable": true}});
        assert!(parse("spec.unschedulable=true").matches(&node));
        assert!(parse("spec.unschedulable=false").matches(&json!({"metadata": {"name": "n2"}})));

        let job = json!({"status": {"succeeded": 2}});
        assert!(parse("status.successful=2").matches(&job));
        assert!(parse("status.successful=0").matches(&json!({})));
        assert!(parse("status.replicas=0").matches(&json!({"status": {}})));
        assert!(parse("status.replicas=3").matches(&json!({"status": {"replicas": 3}})));

        let event =
            json!({"involvedObject": {"kind": "Pod", "name": "p"}, "reportingComponent": "kubelet", "source": {}});
        assert!(parse("source=kubelet,involvedObject.kind=Pod").matches(&event));
        let event2 = json!({"involvedObject": {}, "source": {"component": "scheduler"}});
        assert!(parse("source=scheduler").matches(&event2));

        // Wrong types never panic; they read as absent.
        assert!(parse("status.phase=").matches(&json!({"status": "weird"})));
        assert!(parse("metadata.name=").matches(&json!([1, 2])));
        assert_eq!(parse("metadata.name=a").requires_exact_match("metadata.name"), Some("a"));
        assert_eq!(parse("metadata.name!=a").requires_exact_match("metadata.name"), None);
    }
}
