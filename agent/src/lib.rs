//! The node agent. Today it is the eBPF service proxy (the dataplane issue): the [`dataplane`]
//! (programs, pinned maps, service table), the [`proxy`] that fills it from watched Services and
//! EndpointSlices, and the service range's blackhole [`route`]. Pods on Docker and the pod
//! network (the node-agent issue) are still to come; `skiff agent` says so when it starts.

pub mod dataplane;
pub mod proxy;
pub mod route;
