//! Conntrack as docs/edge-lb.md "Conntrack" and "SNAT ports" describe it, written for the model
//! (not abi::ct's functions, which the programs run): the state table, the per-state idle
//! timeouts, restart on a client SYN, and when a SNAT port may be taken over. The flag bits are
//! the map layout (abi::ct constants).
use abi::ct::{CLOSED, ESTABLISHED, FIN, FIN_FWD, FIN_REV, NEW, RST, STATE_MASK, Timeouts};

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const FINF: u8 = 0x01;
const RSTF: u8 = 0x04;
pub const NS: u64 = 1_000_000_000;

/// The documented defaults: syn_sent 60 s, established 24 h, fin 120 s, closed 10 s, UDP
/// unreplied 30 s, replied 120 s.
const DEFAULTS: [u32; 6] = [60, 86_400, 120, 10, 30, 120];

/// The flags after a packet of the flow (`reply`: backend → client direction).
pub fn step(flags: u16, proto: u8, tcp: u8, reply: bool) -> u16 {
    let st = flags & STATE_MASK;
    if proto != 6 {
        // UDP: unreplied until the first reply, then replied.
        return if reply && st == NEW {
            (flags & !STATE_MASK) | ESTABLISHED
        } else {
            flags
        };
    }
    if !reply && restarts(flags, proto, tcp) {
        return NEW;
    }
    let mut bits = flags & (FIN_FWD | FIN_REV | RST);
    if tcp & FINF != 0 {
        bits |= if reply { FIN_REV } else { FIN_FWD };
    }
    if tcp & RSTF != 0 {
        bits |= RST;
    }
    let both = FIN_FWD | FIN_REV;
    let st = if bits & RST != 0 || st == CLOSED || bits & both == both {
        CLOSED
    } else if bits & both != 0 {
        FIN
    } else if reply && st == NEW {
        ESTABLISHED
    } else {
        st
    };
    bits | st
}

/// "A client SYN on a fin or closed flow starts a new flow" (a SYN without ACK).
pub fn restarts(flags: u16, proto: u8, tcp: u8) -> bool {
    let st = flags & STATE_MASK;
    proto == 6 && tcp & (SYN | ACK) == SYN && (st == FIN || st == CLOSED)
}

/// The state's idle timeout in seconds; `svc_s` (a service's conntrack_timeout, 0: none)
/// overrides established / replied.
pub fn timeout_s(flags: u16, proto: u8, t: &Timeouts, svc_s: u32) -> u64 {
    let or = |v: u32, d: u32| if v == 0 { d } else { v };
    let st = flags & STATE_MASK;
    let s = if proto == 6 {
        match st {
            NEW => or(t.tcp_syn_s, DEFAULTS[0]),
            ESTABLISHED => or(svc_s, or(t.tcp_established_s, DEFAULTS[1])),
            FIN => or(t.tcp_fin_s, DEFAULTS[2]),
            _ => or(t.tcp_close_s, DEFAULTS[3]),
        }
    } else if st == NEW {
        or(t.udp_s, DEFAULTS[4])
    } else {
        or(svc_s, or(t.udp_replied_s, DEFAULTS[5]))
    };
    s as u64
}

pub fn expired(flags: u16, proto: u8, idle: u64, t: &Timeouts, svc_s: u32) -> bool {
    idle >= timeout_s(flags, proto, t, svc_s) * NS
}

/// A SNAT port may be taken over: its flow expired, was reset, or was closed by FINs both ways
/// at least 250 ms ago.
pub fn reusable(flags: u16, proto: u8, idle: u64, t: &Timeouts, svc_s: u32) -> bool {
    let closed = proto == 6 && flags & STATE_MASK == CLOSED;
    (closed && (flags & RST != 0 || idle >= NS / 4)) || expired(flags, proto, idle, t, svc_s)
}
