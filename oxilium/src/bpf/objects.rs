//! The eBPF objects, built by build.rs and embedded in the binary (8-byte aligned for the ELF parser).
#[repr(C, align(8))]
struct Aligned<T: ?Sized>(T);

static XDP: &Aligned<[u8]> = &Aligned(*include_bytes!(concat!(env!("OUT_DIR"), "/oxilium-xdp.o")));
static TC: &Aligned<[u8]> = &Aligned(*include_bytes!(concat!(env!("OUT_DIR"), "/oxilium-tc.o")));
static SOCK: &Aligned<[u8]> = &Aligned(*include_bytes!(concat!(
    env!("OUT_DIR"),
    "/oxilium-sock-lb.o"
)));

/// The XDP service-translation object (program `oxilium_lb`).
pub fn xdp() -> &'static [u8] {
    &XDP.0
}

/// The tc object (program `oxilium_decap`).
pub fn tc() -> &'static [u8] {
    &TC.0
}

/// The cgroup socket-LB object (connect / sendmsg / recvmsg / getpeername, IPv4 and IPv6).
pub fn sock_lb() -> &'static [u8] {
    &SOCK.0
}
