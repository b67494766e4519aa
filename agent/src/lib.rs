//! The node agent. Pods on Docker and the pod network are issue 4; the eBPF service proxy is
//! issue 5: the [`dataplane`] (programs, pinned maps, service table), the [`proxy`] that fills it
//! from watched Services and EndpointSlices, and the service range's blackhole [`route`].
//! `skiff agent` still says it is not implemented rather than pretending to run.

pub mod dataplane;
pub mod proxy;
pub mod route;

pub fn run() -> anyhow::Result<()> {
    anyhow::bail!("the node agent is not implemented yet (tracked by the node-agent issue)")
}
