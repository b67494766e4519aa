//! Label and field selectors and `meta.k8s.io/v1` Table rendering, on `serde_json::Value` objects.
