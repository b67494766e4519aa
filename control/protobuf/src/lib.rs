//! Kubernetes protobuf (application/vnd.kubernetes.protobuf) request bodies decoded to JSON.
#[cfg(test)]
mod extract;
mod table;
