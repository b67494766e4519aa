//! The node agent. Not implemented yet: pods on Docker and the pod network are issue 4, the eBPF
//! service proxy is issue 5. `skiff agent` says so instead of pretending to run.

pub fn run() -> anyhow::Result<()> {
    anyhow::bail!("the node agent is not implemented yet (tracked by the node-agent issue)")
}
