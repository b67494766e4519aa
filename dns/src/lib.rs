//! The cluster DNS server. Not implemented yet (the cluster DNS issue); `skiff dns` says so.

pub fn run() -> anyhow::Result<()> {
    anyhow::bail!("the cluster DNS server is not implemented yet (tracked by the cluster DNS issue)")
}
