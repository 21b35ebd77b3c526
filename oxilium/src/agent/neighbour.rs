//! Neighbour warm-up: bpf_fib_lookup only forwards to next hops whose MAC the kernel already
//! knows. For every new backend the agent sends one empty datagram to its discard port (9), which
//! makes the kernel resolve the neighbour before the first client packet needs it. (Packets that
//! still find no neighbour go up the stack, which resolves and forwards them; see docs/edge-lb.md.)
use std::{
    collections::HashSet,
    net::{IpAddr, SocketAddr, UdpSocket},
};

#[derive(Default)]
pub struct Warmer {
    done: HashSet<IpAddr>,
}

impl Warmer {
    pub fn warm(&mut self, addrs: impl IntoIterator<Item = IpAddr>) {
        for a in addrs {
            if self.done.contains(&a) {
                continue;
            }
            let bind: SocketAddr = if a.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }
                .parse()
                .expect("literal");
            if let Ok(s) = UdpSocket::bind(bind)
                && s.send_to(&[], SocketAddr::new(a, 9)).is_ok()
            {
                self.done.insert(a);
            }
        }
    }
}
