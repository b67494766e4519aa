//! Validation with Kubernetes' field paths and messages (`metadata.name: Invalid value: ...`).

use crate::status::Cause;
use serde_json::{Value, json};
use skiff_apimachinery::validation as lv;

/// Which names a kind accepts, as Kubernetes' `ValidateObjectMeta` name functions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameRule {
    /// Namespaces, services: an RFC 1123 label.
    Dns1123Label,
    /// Services additionally must start with a letter (RFC 1035).
    Dns1035Label,
    /// Most kinds: an RFC 1123 subdomain.
    Dns1123Subdomain,
    /// Events, endpoints of arbitrary names: any path segment.
    PathSegment,
}

pub fn validate_name(rule: NameRule, name: &str, field: &str) -> Vec<Cause> {
    let errs: Vec<String> = match rule {
        NameRule::Dns1123Label => lv::validate_dns1123_label(name),
        NameRule::Dns1035Label => dns1035_label(name),
        NameRule::Dns1123Subdomain => lv::validate_dns1123_subdomain(name),
        NameRule::PathSegment => path_segment(name),
    };
    errs.into_iter().map(|e| Cause::invalid(field, &json!(name), e)).collect()
}

fn dns1035_label(name: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if name.len() > 63 {
        errs.push("must be no more than 63 characters".to_string());
    }
    let b = name.as_bytes();
    let ok = !b.is_empty()
        && b[0].is_ascii_lowercase()
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[b.len() - 1] != b'-';
    if !ok {
        errs.push("a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')".to_string());
    }
    errs
}

fn path_segment(name: &str) -> Vec<String> {
    if name == "." || name == ".." {
        return vec![format!("may not be '{name}'")];
    }
    for bad in ["/", "%"] {
        if name.contains(bad) {
            return vec![format!("may not contain '{bad}'")];
        }
    }
    Vec::new()
}

/// `ValidateObjectMeta`: name (or generateName), namespace presence, labels, annotations.
pub fn validate_object_meta(obj: &Value, rule: NameRule, namespaced: bool) -> Vec<Cause> {
    let mut causes = Vec::new();
    let meta = &obj["metadata"];
    let name = meta["name"].as_str().unwrap_or("");
    if name.is_empty() {
        causes.push(Cause {
            reason: "FieldValueRequired",
            field: "metadata.name".into(),
            message: "Required value: name or generateName is required".into(),
        });
    } else {
        causes.extend(validate_name(rule, name, "metadata.name"));
    }
    let ns = meta["namespace"].as_str().unwrap_or("");
    if namespaced && ns.is_empty() {
        causes.push(Cause::required("metadata.namespace"));
    }
    if !namespaced && !ns.is_empty() {
        causes.push(Cause::forbidden("metadata.namespace", "not allowed on this type"));
    }
    if let Some(labels) = meta.get("labels") {
        causes.extend(validate_labels(labels, "metadata.labels"));
    }
    if let Some(ann) = meta.get("annotations").and_then(Value::as_object) {
        let mut total = 0;
        for (k, v) in ann {
            for e in lv::validate_label_key(k) {
                causes.push(Cause::invalid("metadata.annotations", &json!(k), e));
            }
            total += k.len() + v.as_str().map_or(0, str::len);
        }
        if total > 256 * 1024 {
            causes.push(Cause {
                reason: "FieldValueTooLong",
                field: "metadata.annotations".into(),
                message: "Too long: must have at most 262144 bytes".into(),
            });
        }
    }
    causes
}

pub fn validate_labels(labels: &Value, field: &str) -> Vec<Cause> {
    let mut causes = Vec::new();
    if let Some(m) = labels.as_object() {
        for (k, v) in m {
            for e in lv::validate_label_key(k) {
                causes.push(Cause::invalid(field, &json!(k), e));
            }
            let vs = v.as_str().unwrap_or("");
            for e in lv::validate_label_value(vs) {
                causes.push(Cause::invalid(format!("{field}[{k}]"), v, e));
            }
        }
    }
    causes
}

/// Pod spec rules that users meet first: containers present, named uniquely, with images, ports
/// in range.
pub fn validate_pod_spec(spec: &Value, field: &str) -> Vec<Cause> {
    let mut causes = Vec::new();
    if !spec.is_object() {
        causes.push(Cause::required(field.to_string()));
        return causes;
    }
    let containers = spec["containers"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    if containers.is_empty() {
        causes.push(Cause::required(format!("{field}.containers")));
    }
    let mut names = std::collections::HashSet::new();
    for (list, items) in [
        ("initContainers", spec["initContainers"].as_array().map(Vec::as_slice).unwrap_or(&[])),
        ("containers", containers),
    ] {
        for (i, c) in items.iter().enumerate() {
            let f = format!("{field}.{list}[{i}]");
            let name = c["name"].as_str().unwrap_or("");
            if name.is_empty() {
                causes.push(Cause::required(format!("{f}.name")));
            } else {
                causes.extend(validate_name(NameRule::Dns1123Label, name, &format!("{f}.name")));
                if !names.insert(name.to_string()) {
                    causes.push(Cause::duplicate(format!("{f}.name"), &json!(name)));
                }
            }
            if c["image"].as_str().unwrap_or("").trim().is_empty() {
                causes.push(Cause::required(format!("{f}.image")));
            }
            if let Some(pp) = c["imagePullPolicy"].as_str() {
                if !["Always", "IfNotPresent", "Never"].contains(&pp) {
                    causes.push(Cause::not_supported(
                        format!("{f}.imagePullPolicy"),
                        &json!(pp),
                        &["Always", "IfNotPresent", "Never"],
                    ));
                }
            }
            for (j, p) in c["ports"].as_array().map(Vec::as_slice).unwrap_or(&[]).iter().enumerate() {
                let pf = format!("{f}.ports[{j}]");
                causes.extend(validate_port_number(&p["containerPort"], &format!("{pf}.containerPort"), true));
                if !p["hostPort"].is_null() {
                    causes.extend(validate_port_number(&p["hostPort"], &format!("{pf}.hostPort"), false));
                }
                causes.extend(validate_protocol(&p["protocol"], &format!("{pf}.protocol")));
            }
        }
    }
    let mut vol_names = std::collections::HashSet::new();
    for (i, v) in spec["volumes"].as_array().map(Vec::as_slice).unwrap_or(&[]).iter().enumerate() {
        let name = v["name"].as_str().unwrap_or("");
        let f = format!("{field}.volumes[{i}].name");
        if name.is_empty() {
            causes.push(Cause::required(f));
        } else if !vol_names.insert(name.to_string()) {
            causes.push(Cause::duplicate(f, &json!(name)));
        }
    }
    for (list, items) in
        [("initContainers", spec["initContainers"].as_array()), ("containers", spec["containers"].as_array())]
    {
        for (i, c) in items.map(Vec::as_slice).unwrap_or(&[]).iter().enumerate() {
            for (j, m) in c["volumeMounts"].as_array().map(Vec::as_slice).unwrap_or(&[]).iter().enumerate() {
                let name = m["name"].as_str().unwrap_or("");
                if !vol_names.contains(name) {
                    causes.push(Cause {
                        reason: "FieldValueNotFound",
                        field: format!("{field}.{list}[{i}].volumeMounts[{j}].name"),
                        message: format!("Not found: \"{name}\""),
                    });
                }
                if m["mountPath"].as_str().unwrap_or("").is_empty() {
                    causes.push(Cause::required(format!("{field}.{list}[{i}].volumeMounts[{j}].mountPath")));
                }
            }
        }
    }
    if let Some(rp) = spec["restartPolicy"].as_str() {
        if !["Always", "OnFailure", "Never"].contains(&rp) {
            causes.push(Cause::not_supported(
                format!("{field}.restartPolicy"),
                &json!(rp),
                &["Always", "OnFailure", "Never"],
            ));
        }
    }
    if let Some(dp) = spec["dnsPolicy"].as_str() {
        let ok = ["ClusterFirstWithHostNet", "ClusterFirst", "Default", "None"];
        if !ok.contains(&dp) {
            causes.push(Cause::not_supported(format!("{field}.dnsPolicy"), &json!(dp), &ok));
        }
    }
    causes
}

pub fn validate_port_number(v: &Value, field: &str, required: bool) -> Vec<Cause> {
    match v.as_i64() {
        None if required && v.is_null() => vec![Cause::required(field.to_string())],
        Some(p) if (1..=65535).contains(&p) => Vec::new(),
        _ if v.is_null() => Vec::new(),
        _ => vec![Cause::invalid(field, v, "must be between 1 and 65535, inclusive")],
    }
}

pub fn validate_protocol(v: &Value, field: &str) -> Vec<Cause> {
    match v.as_str() {
        None | Some("TCP") | Some("UDP") | Some("SCTP") => Vec::new(),
        Some(p) => vec![Cause::not_supported(field, &json!(p), &["SCTP", "TCP", "UDP"])],
    }
}

/// The selector of a controller must select its template's labels, or it would never see the
/// pods it creates.
pub fn validate_selector_matches_template(selector: &Value, template_labels: &Value, set_based: bool) -> Vec<Cause> {
    let labels: std::collections::BTreeMap<String, String> = template_labels
        .as_object()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string())).collect())
        .unwrap_or_default();
    let matches = if set_based {
        match skiff_apimachinery::labels::LabelSelector::from_label_selector_json(selector) {
            Ok(sel) => sel.matches(&labels),
            Err(e) => return vec![Cause::invalid("spec.selector", selector, e.to_string())],
        }
    } else {
        selector
            .as_object()
            .map(|m| m.iter().all(|(k, v)| labels.get(k).map(String::as_str) == v.as_str()))
            .unwrap_or(true)
    };
    if matches {
        Vec::new()
    } else {
        vec![Cause::invalid(
            "spec.template.metadata.labels",
            template_labels,
            "`selector` does not match template `labels`",
        )]
    }
}
