//! The few kernel settings the LB datapath relies on, set in the agent's network namespace.
use anyhow::{Context, Result};

fn write(path: &str, value: &str) -> Result<()> {
    std::fs::write(path, value).with_context(|| format!("setting {path} = {value}"))
}

/// Forwarding on (bpf_fib_lookup refuses to route otherwise), and local source addresses accepted
/// on the LB interfaces: a translated packet whose neighbour is not resolved yet goes up the stack
/// with the LB's own address as source, and the kernel must forward it rather than drop it.
pub fn prepare_lb(ifaces: &[String]) -> Result<()> {
    write("/proc/sys/net/ipv4/ip_forward", "1")?;
    write("/proc/sys/net/ipv6/conf/all/forwarding", "1")?;
    for i in ifaces {
        write(&format!("/proc/sys/net/ipv4/conf/{i}/accept_local"), "1")?;
    }
    Ok(())
}
