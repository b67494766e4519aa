//! Decoding of hand-built bodies: the special Go types, Go's omitempty/pointer rules, envelope
//! handling and the errors. Field numbers are those of the Kubernetes Go types (data/ table).

use serde_json::{Value, json};
use skiff_protobuf::{DecodeError, decode};

// A minimal protobuf encoder, enough to write the bodies below.
fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}
/// A varint field.
fn vi(tag: u32, v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    varint(u64::from(tag) << 3, &mut out);
    varint(v, &mut out);
    out
}
/// A length-delimited field.
fn ld(tag: u32, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    varint((u64::from(tag) << 3) | 2, &mut out);
    varint(body.len() as u64, &mut out);
    out.extend_from_slice(body);
    out
}
fn s(tag: u32, text: &str) -> Vec<u8> {
    ld(tag, text.as_bytes())
}
fn m(tag: u32, parts: &[Vec<u8>]) -> Vec<u8> {
    ld(tag, &parts.concat())
}
fn entry(tag: u32, key: &str, value: Vec<u8>) -> Vec<u8> {
    m(tag, &[s(1, key), value])
}
fn envelope(api_version: &str, kind: &str, raw: &[Vec<u8>]) -> Vec<u8> {
    let mut out = b"k8s\0".to_vec();
    out.extend(m(1, &[s(1, api_version), s(2, kind)]));
    out.extend(m(2, raw));
    out
}

#[test]
fn pod_with_special_types_inlining_and_pointers() {
    let body = envelope(
        "v1",
        "Pod",
        &[
            m(
                1,
                &[
                    s(1, "p"),
                    s(2, ""),                      // generateName: non-pointer zero, omitempty → left out
                    vi(7, 0),                      // generation
                    m(8, &[vi(1, 1_767_323_045)]), // creationTimestamp
                    entry(11, "app", s(2, "web")),
                    entry(11, "empty", Vec::new()), // value missing → ""
                    m(13, &[s(5, "apps/v1"), s(1, "ReplicaSet"), s(3, "rs"), s(4, "u1"), vi(6, 1), vi(7, 0)]),
                    m(
                        17,
                        &[
                            s(1, "kubectl"),
                            s(2, "Apply"),
                            m(4, &[vi(1, 0)]),
                            s(6, "FieldsV1"),
                            m(7, &[s(1, r#"{"f:metadata":{}}"#)]),
                        ],
                    ),
                ],
            ),
            m(
                2,
                &[
                    m(1, &[s(1, "v"), m(2, &[m(2, &[m(2, &[s(1, "1Gi")])])])]), // volume with inline emptyDir
                    m(
                        2,
                        &[
                            s(1, "c"),
                            s(2, "nginx"),
                            m(6, &[vi(3, 80)]),
                            m(8, &[entry(1, "cpu", m(2, &[s(1, "500m")])), entry(2, "memory", Vec::new())]),
                            m(10, &[m(1, &[m(2, &[s(1, "/"), m(2, &[vi(1, 1), s(3, "http")])])]), vi(4, 5)]),
                            m(11, &[m(1, &[m(2, &[m(2, &[vi(1, 0), vi(2, 8080)])])])]),
                            vi(16, 0), // stdin false: omitted
                        ],
                    ),
                    vi(4, 0),  // terminationGracePeriodSeconds: a pointer set to 0 → kept
                    vi(11, 0), // hostNetwork false → omitted
                    m(14, &[vi(2, 0), vi(3, 0), ld(4, &[1, 2, 0x80, 0x01])]), // runAsUser 0, packed groups
                ],
            ),
        ],
    );
    assert_eq!(
        decode(&body).unwrap(),
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": "p",
                "creationTimestamp": "2026-01-02T03:04:05Z",
                "labels": {"app": "web", "empty": ""},
                "ownerReferences": [{
                    "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": "u1",
                    "controller": true, "blockOwnerDeletion": false
                }],
                "managedFields": [{
                    "manager": "kubectl", "operation": "Apply", "time": "1970-01-01T00:00:00Z",
                    "fieldsType": "FieldsV1", "fieldsV1": {"f:metadata": {}}
                }]
            },
            "spec": {
                "volumes": [{"name": "v", "emptyDir": {"sizeLimit": "1Gi"}}],
                "containers": [{
                    "name": "c",
                    "image": "nginx",
                    "ports": [{"containerPort": 80}],
                    "resources": {"limits": {"cpu": "500m"}, "requests": {"memory": "0"}},
                    "livenessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 5},
                    "readinessProbe": {"httpGet": {"port": 8080}}
                }],
                "terminationGracePeriodSeconds": 0,
                "securityContext": {"runAsUser": 0, "runAsNonRoot": false, "supplementalGroups": [1, 2, 128]}
            },
            "status": {}
        })
    );
}

#[test]
fn token_request_from_kubectl_create_token() {
    // `kubectl create token sa1 --duration=1h --audience=api --audience=vault` (kubectl 1.33); the
    // command has no --dry-run, so the expected JSON is Go's rules applied by hand: pointer
    // boundObjectRef without omitempty is null, the zero status is written out.
    let body = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/other/token.pb")).unwrap();
    assert_eq!(
        decode(&body).unwrap(),
        json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "metadata": {"creationTimestamp": null},
            "spec": {"audiences": ["api", "vault"], "expirationSeconds": 3600, "boundObjectRef": null},
            "status": {"token": "", "expirationTimestamp": null}
        })
    );
}

#[test]
fn event_times() {
    let body = envelope(
        "v1",
        "Event",
        &[
            m(1, &[s(1, "e")]),
            m(6, &[vi(1, 1_767_323_045), vi(2, 999)]), // Time drops nanos
            m(10, &[vi(1, 1_767_323_045), vi(2, 123_456_789)]), // MicroTime keeps micros
            m(11, &[vi(1, 2), m(2, &[])]),             // series: empty MicroTime → null
            s(14, "kubelet"),
        ],
    );
    let v = decode(&body).unwrap();
    assert_eq!(v["firstTimestamp"], "2026-01-02T03:04:05Z");
    assert_eq!(v["lastTimestamp"], Value::Null);
    assert_eq!(v["eventTime"], "2026-01-02T03:04:05.123456Z");
    assert_eq!(v["series"], json!({"count": 2, "lastObservedTime": null}));
    assert_eq!(v["involvedObject"], json!({}));
    assert_eq!(v["source"], json!({}));
    assert_eq!(v["reportingComponent"], "kubelet");
    assert_eq!(v["reportingInstance"], "");
}

#[test]
fn durations_raw_extensions_and_wrappers() {
    let nm = envelope(
        "metrics.k8s.io/v1beta1",
        "NodeMetrics",
        &[m(1, &[s(1, "n")]), m(3, &[vi(1, 90_000_000_000)]), entry(4, "cpu", m(2, &[s(1, "250m")]))],
    );
    let v = decode(&nm).unwrap();
    assert_eq!(v["window"], "1m30s");
    assert_eq!(v["usage"], json!({"cpu": "250m"}));

    // ControllerRevision.data holds JSON, or a nested protobuf object.
    let cr = envelope("apps/v1", "ControllerRevision", &[m(2, &[s(1, r#"{"spec":{"x":1}}"#)]), vi(3, 4)]);
    assert_eq!(decode(&cr).unwrap()["data"], json!({"spec": {"x": 1}}));
    let inner = envelope("v1", "ConfigMap", &[m(1, &[s(1, "cm")])]);
    let cr = envelope("apps/v1", "ControllerRevision", &[m(2, &[ld(1, &inner)])]);
    assert_eq!(
        decode(&cr).unwrap()["data"],
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm", "creationTimestamp": null}})
    );
    let cr = envelope("apps/v1", "ControllerRevision", &[m(2, &[s(1, "{not json")])]);
    assert!(matches!(decode(&cr), Err(DecodeError::Malformed { .. })));

    // metav1.Verbs and authorization ExtraValue are wrapper messages on the wire, arrays in JSON.
    let rl = envelope(
        "v1",
        "APIResourceList",
        &[s(1, "v1"), m(2, &[s(1, "pods"), vi(2, 1), s(3, "Pod"), m(4, &[s(1, "get"), s(1, "list")])])],
    );
    assert_eq!(
        decode(&rl).unwrap(),
        json!({"apiVersion": "v1", "kind": "APIResourceList", "groupVersion": "v1", "resources": [
            {"name": "pods", "singularName": "", "namespaced": true, "kind": "Pod", "verbs": ["get", "list"]}
        ]})
    );
    let sar = envelope(
        "authorization.k8s.io/v1",
        "SubjectAccessReview",
        &[m(2, &[s(3, "alice"), entry(5, "scopes", m(2, &[s(1, "a"), s(1, "b")]))])],
    );
    assert_eq!(decode(&sar).unwrap()["spec"], json!({"user": "alice", "extra": {"scopes": ["a", "b"]}}));
}

#[test]
fn int_or_string_and_bytes() {
    // policy/v1 PodDisruptionBudget: minAvailable is *IntOrString.
    let pdb = envelope("policy/v1", "PodDisruptionBudget", &[m(2, &[m(1, &[vi(1, 0), vi(2, 0)])])]);
    assert_eq!(decode(&pdb).unwrap()["spec"], json!({"minAvailable": 0}));
    let pdb = envelope("policy/v1", "PodDisruptionBudget", &[m(2, &[m(1, &[vi(1, 7)])])]);
    assert!(decode(&pdb).is_err(), "IntOrString type 7 is impossible, as in Go");
    // Secret data: base64, present-but-empty values kept.
    let secret = envelope("v1", "Secret", &[entry(2, "k", ld(2, &[0xff, 0x00])), entry(2, "e", ld(2, b""))]);
    assert_eq!(decode(&secret).unwrap()["data"], json!({"k": "/wA=", "e": ""}));
}

#[test]
fn unknown_fields_are_skipped_and_repeats_merge() {
    let body = envelope(
        "v1",
        "ConfigMap",
        &[
            m(1, &[s(1, "a")]),
            vi(99, 5),           // a field this table does not know
            m(1, &[s(3, "ns")]), // a second metadata occurrence merges
            entry(2, "k", s(2, "v1")),
            entry(2, "k", s(2, "v2")), // a repeated key: the last wins
        ],
    );
    assert_eq!(
        decode(&body).unwrap(),
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": "a", "namespace": "ns", "creationTimestamp": null},
               "data": {"k": "v2"}})
    );
}

#[test]
fn meta_kinds_are_served_in_every_group() {
    let body = envelope("policy/v1", "DeleteOptions", &[vi(1, 30), s(4, "Foreground")]);
    assert_eq!(
        decode(&body).unwrap(),
        json!({"apiVersion": "policy/v1", "kind": "DeleteOptions", "gracePeriodSeconds": 30, "propagationPolicy": "Foreground"})
    );
}

#[test]
fn unknown_kinds() {
    for (av, kind) in [
        ("v1", "Nope"),
        ("v1", "PodSpec"),                     // a struct, not a kind
        ("apps.example.com/v1", "Deployment"), // a custom resource group
        ("apps/v9", "Deployment"),
        ("", "Pod"),
        ("v1/x/y", "Pod"),
        ("v1", ""),
    ] {
        assert_eq!(
            decode(&envelope(av, kind, &[])),
            Err(DecodeError::UnknownKind { api_version: av.into(), kind: kind.into() }),
            "{av} {kind}"
        );
    }
}

#[test]
fn envelope_errors() {
    assert_eq!(decode(b"{\"kind\":\"Pod\"}"), Err(DecodeError::MissingMagic));
    assert_eq!(decode(b""), Err(DecodeError::MissingMagic));
    let mut gz = envelope("v1", "ConfigMap", &[]);
    gz.extend(s(3, "gzip"));
    assert!(matches!(decode(&gz), Err(DecodeError::Unsupported(_))));
    let mut json_inside = envelope("v1", "ConfigMap", &[]);
    json_inside.extend(s(4, "application/json"));
    assert!(matches!(decode(&json_inside), Err(DecodeError::Unsupported(_))));
    let mut pb = envelope("v1", "ConfigMap", &[]);
    pb.extend(s(4, "application/vnd.kubernetes.protobuf"));
    assert!(decode(&pb).is_ok());
    // Wrong wire type for a field, reported with its path.
    let bad = envelope("apps/v1", "Deployment", &[m(2, &[s(1, "three")])]);
    match decode(&bad) {
        Err(DecodeError::Malformed { path, .. }) => assert_eq!(path, "spec.replicas"),
        other => panic!("{other:?}"),
    }
}

/// Truncations, bit flips and random bytes never panic; a fixed-seed generator keeps it repeatable.
#[test]
fn malformed_input_never_panics() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut bodies: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "pb"))
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    assert!(!bodies.is_empty());
    bodies.sort();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut rand = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut decoded = 0;
    for body in &bodies {
        for cut in 0..body.len() {
            let _ = decode(&body[..cut]);
        }
        for _ in 0..300 {
            let mut b = body.clone();
            for _ in 0..1 + rand() % 4 {
                let i = (rand() % b.len() as u64) as usize;
                b[i] ^= 1 << (rand() % 8);
            }
            decoded += decode(&b).is_ok() as u32;
        }
    }
    for len in 0..2000 {
        let mut b = b"k8s\0".to_vec();
        b.extend((0..len % 200).map(|_| rand() as u8));
        let _ = decode(&b);
    }
    // Bit flips inside strings still decode: the walk is not just failing everything.
    assert!(decoded > 0);
}

#[test]
fn hostile_sizes_are_bounded() {
    // A length prefix far beyond the body.
    let mut b = b"k8s\0\x12\xff\xff\xff\xff\x0f".to_vec();
    b.extend([0; 8]);
    assert!(decode(&b).is_err());
    // Many empty repeated Containers expand to their zero JSON; the budget stays proportional.
    let containers: Vec<Vec<u8>> = (0..50_000).map(|_| ld(2, &[])).collect();
    let body = envelope("v1", "Pod", &[m(2, &containers)]);
    let v = decode(&body).unwrap();
    assert_eq!(v["spec"]["containers"].as_array().unwrap().len(), 50_000);
    assert_eq!(v["spec"]["containers"][0], json!({"name": "", "resources": {}}));
    // Deep nesting through RawExtension envelopes is cut off, not a stack overflow.
    let mut inner = envelope("v1", "ConfigMap", &[]);
    for _ in 0..500 {
        inner = envelope("apps/v1", "ControllerRevision", &[m(2, &[ld(1, &inner)])]);
    }
    assert!(decode(&inner).is_err());
}
