//! Patch semantics of the Kubernetes API server.
