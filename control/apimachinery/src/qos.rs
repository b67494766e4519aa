//! A pod's QoS class from its containers' requests and limits (Kubernetes' `GetPodQOS`):
//! `Guaranteed` when every container has cpu and memory limits equal to its requests,
//! `BestEffort` when none has any, `Burstable` otherwise.

use crate::quantity::parse_scaled;
use serde_json::Value;

pub fn class(spec: &Value) -> &'static str {
    let containers = spec["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(spec["initContainers"].as_array().into_iter().flatten());
    let (mut any, mut guaranteed) = (false, true);
    for c in containers {
        let limits = &c["resources"]["limits"];
        let requests = &c["resources"]["requests"];
        let non_empty = |v: &Value| v.as_object().is_some_and(|m| !m.is_empty());
        if non_empty(limits) || non_empty(requests) {
            any = true;
        }
        for r in ["cpu", "memory"] {
            let scale = if r == "cpu" { 1000 } else { 1 };
            let l = limits[r].as_str().and_then(|q| parse_scaled(q, scale));
            // A missing request defaults to the limit.
            let q = requests[r].as_str().and_then(|q| parse_scaled(q, scale)).or(l);
            if l.is_none() || q != l {
                guaranteed = false;
            }
        }
    }
    if !any {
        "BestEffort"
    } else if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

#[cfg(test)]
mod tests {
    use super::class;
    use serde_json::json;

    #[test]
    fn classes() {
        assert_eq!(class(&json!({"containers": [{"name": "a"}]})), "BestEffort");
        let g = json!({"containers": [{"resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}]});
        assert_eq!(class(&g), "Guaranteed");
        let g2 = json!({"containers": [{"resources": {"limits": {"cpu": "1", "memory": "1Gi"}, "requests": {"cpu": "1000m", "memory": "1Gi"}}}]});
        assert_eq!(class(&g2), "Guaranteed");
        let b = json!({"containers": [{"resources": {"requests": {"cpu": "250m"}, "limits": {"cpu": "500m", "memory": "64Mi"}}}]});
        assert_eq!(class(&b), "Burstable");
        let mixed = json!({"containers": [{"resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}, {"name": "none"}]});
        assert_eq!(class(&mixed), "Burstable");
    }
}
