//! End-to-end flows as `kubectl` drives them against the API server.

use serde_json::{Value, json};
use skiff_patch::{GroupKind, apply, strategic_merge_patch, update_managed_fields};

const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// `kubectl apply` (client-side) on a Deployment: change the image, drop an env var and a
/// label, switch the rollout strategy, add a volume — the patch kubectl 1.33 computes.
#[test]
fn client_side_apply_on_a_deployment() {
    let deploy = GroupKind::new("apps", "Deployment");
    let live = json!({
        "apiVersion":"apps/v1","kind":"Deployment",
        "metadata":{"name":"web","namespace":"default","generation":3,"labels":{"app":"web","old":"x"},
            "annotations":{LAST_APPLIED:"{}","deployment.kubernetes.io/revision":"3"}},
        "spec":{"replicas":2,"selector":{"matchLabels":{"app":"web"}},
            "strategy":{"type":"RollingUpdate","rollingUpdate":{"maxSurge":"25%","maxUnavailable":"25%"}},
            "template":{"metadata":{"labels":{"app":"web"}},"spec":{
                "containers":[{"name":"web","image":"nginx:1.7.9","env":[{"name":"A","value":"1"},{"name":"B","value":"2"}],
                    "ports":[{"containerPort":80,"protocol":"TCP"}],"terminationMessagePath":"/dev/termination-log"}],
                "restartPolicy":"Always","dnsPolicy":"ClusterFirst"}}},
        "status":{"replicas":2,"conditions":[{"type":"Available","status":"True"}]}
    });
    let patch = json!({
        "metadata":{"annotations":{LAST_APPLIED:"{\"new\":true}"},"labels":{"old":null}},
        "spec":{
            "strategy":{"$retainKeys":["type"],"type":"Recreate","rollingUpdate":null},
            "template":{"spec":{
                "$setElementOrder/containers":[{"name":"web"}],
                "$setElementOrder/volumes":[{"name":"cache"}],
                "containers":[{"$setElementOrder/env":[{"name":"A"}],"env":[{"$patch":"delete","name":"B"}],
                    "image":"nginx:1.9","name":"web",
                    "$setElementOrder/volumeMounts":[{"mountPath":"/cache"}],
                    "volumeMounts":[{"mountPath":"/cache","name":"cache"}]}],
                "volumes":[{"emptyDir":{},"name":"cache"}]}}}
    });
    let got = strategic_merge_patch(&live, &patch, &deploy).unwrap();
    assert_eq!(got["metadata"]["labels"], json!({"app":"web"}));
    assert_eq!(got["metadata"]["annotations"]["deployment.kubernetes.io/revision"], "3");
    assert_eq!(got["metadata"]["annotations"][LAST_APPLIED], "{\"new\":true}");
    assert_eq!(got["spec"]["strategy"], json!({"type":"Recreate"}));
    let c = &got["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["image"], "nginx:1.9");
    assert_eq!(c["env"], json!([{"name":"A","value":"1"}]));
    assert_eq!(c["ports"], json!([{"containerPort":80,"protocol":"TCP"}]));
    assert_eq!(c["volumeMounts"], json!([{"mountPath":"/cache","name":"cache"}]));
    assert_eq!(c["terminationMessagePath"], "/dev/termination-log");
    assert_eq!(got["spec"]["template"]["spec"]["volumes"], json!([{"name":"cache","emptyDir":{}}]));
    assert_eq!(got["status"], live["status"]);
}

/// `kubectl label` / `kubectl patch --type strategic` adding a finalizer and a toleration.
#[test]
fn kubectl_patch_strategic() {
    let pod = GroupKind::new("", "Pod");
    let live = json!({"metadata":{"name":"p","finalizers":["a"]},
        "spec":{"tolerations":[{"key":"x","operator":"Exists"}],"containers":[{"name":"c","image":"i"}]}});
    let got = strategic_merge_patch(
        &live,
        &json!({"metadata":{"finalizers":["b"]},"spec":{"tolerations":[{"key":"y","operator":"Exists"}]}}),
        &pod,
    )
    .unwrap();
    let mut fin: Vec<&str> =
        got["metadata"]["finalizers"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    fin.sort();
    assert_eq!(fin, ["a", "b"]);
    assert_eq!(got["spec"]["tolerations"], json!([{"key":"y","operator":"Exists"}]));
    assert_eq!(got["spec"]["containers"], live["spec"]["containers"]);
}

fn managers(obj: &Value) -> Vec<(String, String)> {
    obj["metadata"]["managedFields"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| (e["manager"].as_str().unwrap().to_string(), e["operation"].as_str().unwrap().to_string()))
                .collect()
        })
        .unwrap_or_default()
}

/// `kubectl create`, then `kubectl apply --server-side` twice, the second time without a label
/// and a container.
#[test]
fn server_side_apply_lifecycle() {
    let deploy = GroupKind::new("apps", "Deployment");
    let manifest = |labels: Value, containers: Value| {
        json!({"apiVersion":"apps/v1","kind":"Deployment",
            "metadata":{"name":"web","labels":labels},
            "spec":{"replicas":1,"selector":{"matchLabels":{"app":"web"}},
                "template":{"metadata":{"labels":{"app":"web"}},"spec":{"containers":containers}}}})
    };
    let two = json!([{"name":"web","image":"nginx:1"},{"name":"log","image":"busybox"}]);
    let created =
        update_managed_fields(None, &manifest(json!({"app":"web","team":"a"}), two.clone()), "kubectl-create", &deploy)
            .unwrap();
    assert_eq!(managers(&created), [("kubectl-create".to_string(), "Update".to_string())]);

    // First server-side apply: same content, ownership becomes shared.
    let applied =
        apply(Some(&created), &manifest(json!({"app":"web","team":"a"}), two), "kubectl", &deploy, false).unwrap();
    assert_eq!(managers(&applied).len(), 2);

    // Second apply drops the label and the sidecar: kubectl-create still co-owns them, so they
    // stay (this is what Kubernetes does too).
    let one = json!([{"name":"web","image":"nginx:2"}]);
    // The image change collides with kubectl-create's ownership: a 409 unless forced
    // (`kubectl apply --server-side --force-conflicts`).
    let cfg2 = manifest(json!({"app":"web"}), one.clone());
    let err = apply(Some(&applied), &cfg2, "kubectl", &deploy, false).unwrap_err();
    assert_eq!(err.status_code(), 409);
    assert_eq!(
        err.message(),
        "Apply failed with 1 conflict: conflict with \"kubectl-create\" using apps/v1: \
         .spec.template.spec.containers[name=\"web\"].image"
    );
    let applied2 = apply(Some(&applied), &cfg2, "kubectl", &deploy, true).unwrap();
    assert_eq!(applied2["metadata"]["labels"], json!({"app":"web","team":"a"}));
    assert_eq!(applied2["spec"]["template"]["spec"]["containers"].as_array().unwrap().len(), 2);
    assert_eq!(applied2["spec"]["template"]["spec"]["containers"][0]["image"], "nginx:2");

    // Once the fields are only the applier's, dropping them removes them.
    let solo = apply(
        None,
        &manifest(
            json!({"app":"web","team":"a"}),
            json!([{"name":"web","image":"nginx:1"},{"name":"log","image":"busybox"}]),
        ),
        "kubectl",
        &deploy,
        false,
    )
    .unwrap();
    let pruned = apply(Some(&solo), &manifest(json!({"app":"web"}), one), "kubectl", &deploy, false).unwrap();
    assert_eq!(pruned["metadata"]["labels"], json!({"app":"web"}));
    assert_eq!(pruned["spec"]["template"]["spec"]["containers"], json!([{"name":"web","image":"nginx:2"}]));
    let fields = &pruned["metadata"]["managedFields"][0]["fieldsV1"];
    assert_eq!(
        fields["f:spec"]["f:template"]["f:spec"]["f:containers"],
        json!({"k:{\"name\":\"web\"}":{".":{},"f:image":{},"f:name":{}}})
    );
    assert!(fields["f:metadata"].get("f:name").is_none(), "identity fields are not owned");
}
