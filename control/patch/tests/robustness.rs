//! Fuzz-ish robustness checks: odd shapes must yield `Ok` or a `PatchError`, never a panic or a
//! stack overflow, and a successful strategic merge patch never leaks a directive.

use serde_json::{Map, Value, json};
use skiff_patch::{
    GroupKind, MAX_DEPTH, PatchError, apply, json_patch, merge_patch, strategic_merge_patch, update_managed_fields,
};

/// xorshift64*: deterministic, dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

const KEYS: &[&str] = &[
    "metadata",
    "spec",
    "status",
    "name",
    "image",
    "containers",
    "initContainers",
    "volumes",
    "ports",
    "containerPort",
    "env",
    "finalizers",
    "labels",
    "conditions",
    "type",
    "tolerations",
    "template",
    "strategy",
    "a",
    "$patch",
    "$retainKeys",
    "$setElementOrder/containers",
    "$setElementOrder/finalizers",
    "$deleteFromPrimitiveList/finalizers",
    "$setElementOrder",
    "$deleteFromPrimitiveList/",
    "$patch",
];

const STRINGS: &[&str] = &["delete", "replace", "merge", "a", "b", "nginx", "", "name", "x/y"];

fn scalar(r: &mut Rng) -> Value {
    match r.below(6) {
        0 => Value::Null,
        1 => Value::Bool(r.below(2) == 0),
        2 => json!(r.below(5)),
        3 => json!(r.below(5) as f64 + 0.5),
        _ => json!(*r.pick(STRINGS)),
    }
}

fn value(r: &mut Rng, depth: usize) -> Value {
    if depth == 0 {
        return scalar(r);
    }
    match r.below(7) {
        0 | 1 => scalar(r),
        2 | 3 => {
            let n = r.below(4);
            Value::Array((0..n).map(|_| value(r, depth - 1)).collect())
        }
        _ => {
            let mut m = Map::new();
            for _ in 0..r.below(5) {
                m.insert(r.pick(KEYS).to_string(), value(r, depth - 1));
            }
            Value::Object(m)
        }
    }
}

/// Objects that look a bit like Pods, so that the schema-driven paths are exercised.
fn podish(r: &mut Rng) -> Value {
    let mut containers = Vec::new();
    for _ in 0..r.below(4) {
        let mut c = json!({"name": *r.pick(STRINGS), "image": value(r, 1)});
        if r.below(2) == 0 {
            c["ports"] = json!([{"containerPort": r.below(3)}, value(r, 2)]);
        }
        if r.below(3) == 0 {
            c[*r.pick(KEYS)] = value(r, 3);
        }
        containers.push(c);
    }
    let mut obj = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "p", "finalizers": [*r.pick(STRINGS), value(r, 1)]},
        "spec": {"containers": containers}
    });
    if r.below(2) == 0 {
        obj["spec"][*r.pick(KEYS)] = value(r, 3);
    }
    if r.below(2) == 0 {
        obj[*r.pick(KEYS)] = value(r, 4);
    }
    obj
}

fn assert_no_directives(v: &Value) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                assert!(!is_directive(k), "directive {k} leaked");
                assert_no_directives(v);
            }
        }
        Value::Array(a) => a.iter().for_each(assert_no_directives),
        _ => {}
    }
}

fn is_directive(k: &str) -> bool {
    k == "$patch"
        || k == "$retainKeys"
        || k.starts_with("$setElementOrder")
        || k.starts_with("$deleteFromPrimitiveList")
}

/// Stored objects never contain directive keys (they are patch syntax); keys in the target are
/// data and are rightly kept, so fuzz targets are scrubbed of them.
fn scrub(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|k, _| !is_directive(k));
            m.values_mut().for_each(scrub);
        }
        Value::Array(a) => a.iter_mut().for_each(scrub),
        _ => {}
    }
}

fn kinds() -> Vec<GroupKind> {
    vec![
        GroupKind::new("", "Pod"),
        GroupKind::new("apps", "Deployment"),
        GroupKind::new("batch", "CronJob"),
        GroupKind::new("example.com", "Widget"),
    ]
}

#[test]
fn random_strategic_merge_patches_never_panic_or_leak_directives() {
    let mut r = Rng(0x5eed_1234_abcd_0001);
    let kinds = kinds();
    let (mut ok, mut err) = (0, 0);
    for _ in 0..4000 {
        let mut target = if r.below(2) == 0 { podish(&mut r) } else { value(&mut r, 5) };
        scrub(&mut target);
        let patch = if r.below(2) == 0 { podish(&mut r) } else { value(&mut r, 5) };
        let kind = r.pick(&kinds);
        match strategic_merge_patch(&target, &patch, kind) {
            Ok(v) => {
                assert!(v.is_object());
                assert_no_directives(&v);
                ok += 1;
            }
            Err(e) => {
                assert!(matches!(e.status_code(), 400 | 422), "{e:?}");
                err += 1;
            }
        }
    }
    // Both outcomes must actually be exercised.
    assert!(ok > 100 && err > 100, "ok={ok} err={err}");
}

#[test]
fn random_merge_and_json_patches_never_panic() {
    let mut r = Rng(0xfeed_beef_0000_0002);
    const PATHS: &[&str] = &[
        "",
        "/",
        "/a",
        "/a/0",
        "/a/-",
        "/a/-1",
        "/a/01",
        "/a/+1",
        "/spec",
        "/spec/containers/0/name",
        "/metadata/finalizers/-",
        "/~1",
        "/~0",
        "/a/99999999999999999999999",
        "/a/-9223372036854775808",
        "nope",
        "/spec/containers/-1/ports/0",
    ];
    const OPS: &[&str] = &["add", "remove", "replace", "move", "copy", "test", "bogus"];
    for _ in 0..4000 {
        let target = if r.below(2) == 0 { podish(&mut r) } else { value(&mut r, 4) };
        let patch = value(&mut r, 5);
        let _ = merge_patch(&target, &patch);

        let mut ops = Vec::new();
        for _ in 0..r.below(5) {
            let mut op = Map::new();
            if r.below(8) != 0 {
                op.insert("op".into(), json!(*r.pick(OPS)));
            }
            if r.below(8) != 0 {
                op.insert("path".into(), json!(*r.pick(PATHS)));
            }
            if r.below(2) == 0 {
                op.insert("from".into(), json!(*r.pick(PATHS)));
            }
            if r.below(3) != 0 {
                op.insert("value".into(), value(&mut r, 2));
            }
            ops.push(if r.below(20) == 0 { value(&mut r, 1) } else { Value::Object(op) });
        }
        match json_patch(&target, &Value::Array(ops)) {
            Ok(_) => {}
            Err(e) => assert!(matches!(e, PatchError::Invalid(_) | PatchError::Unprocessable(_))),
        }
        let _ = json_patch(&target, &patch);
    }
}

#[test]
fn random_applies_never_panic() {
    let mut r = Rng(0x0dd_5eed_0000_0003);
    let kinds = kinds();
    for i in 0..2000 {
        let kind = r.pick(&kinds);
        let live = if r.below(3) == 0 { None } else { Some(podish(&mut r)) };
        let cfg = if r.below(2) == 0 { podish(&mut r) } else { value(&mut r, 4) };
        let manager = if i % 50 == 0 { "" } else { *r.pick(&["a", "b"]) };
        let force = r.below(2) == 0;
        if let Ok(out) = apply(live.as_ref(), &cfg, manager, kind, force) {
            // Chain: apply again with the result as live, and record an update.
            let cfg2 = podish(&mut r);
            match apply(Some(&out), &cfg2, "b", kind, false) {
                Ok(_) | Err(PatchError::Invalid(_) | PatchError::Conflict(..)) => {}
                Err(e) => panic!("unexpected error {e:?}"),
            }
            let _ = apply(Some(&out), &cfg2, "b", kind, true);
            let _ = update_managed_fields(Some(&out), &cfg2, "c", kind);
        }
        let _ = update_managed_fields(live.as_ref(), &cfg, "c", kind);
    }
}

fn nested(depth: usize) -> Value {
    let mut v = json!({"leaf": 1});
    for i in 0..depth.saturating_sub(1) {
        v = if i % 2 == 0 { json!({"spec": v}) } else { json!([v]) };
    }
    v
}

#[test]
fn deep_nesting_is_bounded() {
    let kind = GroupKind::new("", "Pod");
    // At the limit everything works.
    let ok = nested(MAX_DEPTH);
    strategic_merge_patch(&ok, &ok, &kind).unwrap();
    merge_patch(&ok, &ok).unwrap();
    apply(None, &ok, "m", &kind, false).unwrap();
    apply(Some(&ok), &ok, "m", &kind, false).unwrap();
    update_managed_fields(Some(&ok), &ok, "m", &kind).unwrap();

    // Beyond it, Invalid — and no stack overflow even far beyond it.
    for depth in [MAX_DEPTH + 1, 1000] {
        let deep = nested(depth);
        let small = json!({});
        assert!(matches!(strategic_merge_patch(&small, &deep, &kind), Err(PatchError::Invalid(_))));
        assert!(matches!(strategic_merge_patch(&deep, &small, &kind), Err(PatchError::Invalid(_))));
        assert!(matches!(merge_patch(&small, &deep), Err(PatchError::Invalid(_))));
        assert!(matches!(json_patch(&deep, &json!([])), Err(PatchError::Invalid(_))));
        assert!(matches!(apply(None, &deep, "m", &kind, false), Err(PatchError::Invalid(_))));
        assert!(matches!(update_managed_fields(None, &deep, "m", &kind), Err(PatchError::Invalid(_))));
    }
}

#[test]
fn directives_with_wrong_types_are_invalid() {
    let kind = GroupKind::new("", "Pod");
    let target = json!({"metadata":{"finalizers":["a"]},"spec":{"containers":[{"name":"c"}]}});
    for patch in [
        json!({"$patch": ["delete"]}),
        json!({"$patch": {"x": 1}}),
        json!({"spec": {"$retainKeys": {"a": 1}}}),
        json!({"spec": {"$retainKeys": null}}),
        json!({"spec": {"$setElementOrder/containers": null}}),
        json!({"spec": {"$setElementOrder/containers": "c"}}),
        json!({"metadata": {"$deleteFromPrimitiveList/finalizers": {"a": 1}}}),
        json!({"metadata": {"$deleteFromPrimitiveList/finalizers": null}}),
        json!({"spec": {"containers": [{"name": "c", "$patch": true}]}}),
        json!({"spec": {"containers": [{"name": "c", "ports": [{"$patch": "delete"}]}]}}),
    ] {
        let e = strategic_merge_patch(&target, &patch, &kind).unwrap_err();
        assert_eq!(e.status_code(), 400, "{patch}: {e}");
    }
}
