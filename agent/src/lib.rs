//! The node agent. Pods on Docker and the pod network are issue 4; the eBPF service proxy is
//! issue 5, of which the [`dataplane`] (programs, pinned maps, service table) is here. `skiff
//! agent` still says it is not implemented rather than pretending to run.

pub mod dataplane;

pub fn run() -> anyhow::Result<()> {
    anyhow::bail!("the node agent is not implemented yet (tracked by the node-agent issue)")
}
