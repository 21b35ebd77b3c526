//! What the BPF_PROG_TEST_RUN benches share (benches/xdp.rs, benches/tc.rs): the namespace the
//! bench thread runs in, raw programs loaded with BPF_PROG_LOAD (the pass-through and FIB-only
//! baselines), the test-run call itself, medians, and the single-shot harness ([`single`]).
#![allow(dead_code)]

pub mod single;

use std::{fs::File, os::fd::AsRawFd, process::Command};

pub fn sh(args: &[&str]) {
    let st = Command::new(args[0])
        .args(&args[1..])
        .status()
        .expect(args[0]);
    assert!(st.success(), "{args:?}");
}

/// The namespace the benchmark thread runs in; deleted on drop.
pub struct Netns(pub String);

impl Netns {
    /// Makes the namespace `<prefix>-<pid>`, runs each of `setup` (an `ip` / `sysctl` command
    /// line, split on spaces) inside it, then moves the calling thread into it.
    pub fn enter(prefix: &str, setup: &[&str]) -> Netns {
        let name = format!("{prefix}-{}", std::process::id());
        sh(&["ip", "netns", "add", &name]);
        let ns = Netns(name.clone());
        for cmd in setup {
            ns.exec(cmd);
        }
        let f = File::open(format!("/run/netns/{name}")).unwrap();
        // SAFETY: setns of the calling thread only.
        assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
        ns
    }

    /// Runs one command line (split on spaces) inside the namespace.
    pub fn exec(&self, cmd: &str) {
        let mut a = vec!["ip", "netns", "exec", &self.0];
        a.extend(cmd.split_whitespace());
        sh(&a);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

pub const PROG_TYPE_SCHED_CLS: u32 = 3;
pub const PROG_TYPE_XDP: u32 = 6;

#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    rest: [u64; 8],
}

#[repr(C)]
#[derive(Default)]
pub struct TestRunAttr {
    pub prog_fd: u32,
    pub retval: u32,
    pub data_size_in: u32,
    pub data_size_out: u32,
    pub data_in: u64,
    pub data_out: u64,
    pub repeat: u32,
    pub duration: u32,
    pub ctx_size_in: u32,
    pub ctx_size_out: u32,
    pub ctx_in: u64,
    pub ctx_out: u64,
    pub rest: [u64; 8],
}

pub fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> i64 {
    // SAFETY: `attr` is a zero-padded bpf_attr prefix of the right layout for `cmd`.
    unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, size_of::<T>()) }
}

/// One BPF instruction: opcode, registers (dst in the low nibble, src in the high), offset, imm.
pub fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
    let o = off.to_le_bytes();
    let i = imm.to_le_bytes();
    u64::from_le_bytes([code, dst | (src << 4), o[0], o[1], i[0], i[1], i[2], i[3]])
}

pub const EXIT: u64 = 0x95; // BPF_JMP | BPF_EXIT

/// Loads a raw program of `prog_type` with BPF_PROG_LOAD; its descriptor.
pub fn load_raw(prog_type: u32, name: &[u8], insns: &[u64]) -> i32 {
    let mut a = ProgLoadAttr {
        prog_type,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: c"GPL".as_ptr() as u64,
        ..Default::default()
    };
    a.prog_name[..name.len()].copy_from_slice(name);
    let fd = bpf(5, &mut a); // BPF_PROG_LOAD
    assert!(
        fd >= 0,
        "BPF_PROG_LOAD: {}",
        std::io::Error::last_os_error()
    );
    fd as i32
}

/// `r0 = ret; exit`: the pass-through baseline (XDP_PASS, TC_ACT_OK or TCX_NEXT).
pub fn load_return(prog_type: u32, name: &[u8], ret: i32) -> i32 {
    // BPF_ALU64 | BPF_MOV | BPF_K (0xb7): r0 = ret.
    load_raw(prog_type, name, &[insn(0xb7, 0, 0, 0, ret), EXIT])
}

/// The second baseline: one `bpf_fib_lookup` (IPv4, `src` → `dst`, the interface whose index
/// the context holds at `ifindex_off`), then `found` when it found the next hop (else 0): what a
/// FIB lookup per packet costs by itself.
pub fn load_fib_only(
    prog_type: u32,
    ifindex_off: i16,
    src: [u8; 4],
    dst: [u8; 4],
    found: i32,
) -> i32 {
    let ip = |a: [u8; 4]| i32::from_le_bytes(a);
    let mut p = Vec::new();
    p.push(insn(0xbf, 6, 1, 0, 0)); // r6 = r1 (ctx)
    for off in (-64..0).step_by(8) {
        p.push(insn(0x7a, 10, 0, off, 0)); // *(u64 *)(r10 + off) = 0: struct bpf_fib_lookup
    }
    p.push(insn(0x72, 10, 0, -64, 2)); // family = AF_INET
    p.push(insn(0x61, 2, 6, ifindex_off, 0)); // r2 = the context's ingress ifindex
    p.push(insn(0x63, 10, 2, -64 + 8, 0)); // ifindex = r2
    p.push(insn(0x62, 10, 0, -64 + 16, ip(src))); // ipv4_src
    p.push(insn(0x62, 10, 0, -64 + 32, ip(dst))); // ipv4_dst
    p.push(insn(0xbf, 1, 6, 0, 0)); // r1 = ctx
    p.push(insn(0xbf, 2, 10, 0, 0)); // r2 = r10
    p.push(insn(0x07, 2, 0, 0, -64)); // r2 += -64
    p.push(insn(0xb7, 3, 0, 0, 64)); // r3 = sizeof(struct bpf_fib_lookup)
    p.push(insn(0xb7, 4, 0, 0, 0)); // r4 = flags
    p.push(insn(0x85, 0, 0, 0, 69)); // call bpf_fib_lookup
    p.push(insn(0x55, 0, 0, 2, 0)); // if r0 != BPF_FIB_LKUP_RET_SUCCESS goto +2
    p.push(insn(0xb7, 0, 0, 0, found)); // r0 = found
    p.push(EXIT);
    p.push(insn(0xb7, 0, 0, 0, 0)); // r0 = 0
    p.push(EXIT);
    load_raw(prog_type, b"fib_only", &p)
}

/// (return value, ns per run) of program `fd` on `pkt` with context `ctx`.
pub fn run_raw(fd: i32, pkt: &[u8], ctx: &[u8], repeat: u32) -> (u32, u32) {
    let mut a = TestRunAttr {
        prog_fd: fd as u32,
        data_size_in: pkt.len() as u32,
        data_in: pkt.as_ptr() as u64,
        repeat,
        ctx_size_in: ctx.len() as u32,
        ctx_in: ctx.as_ptr() as u64,
        ..Default::default()
    };
    assert_eq!(bpf(10, &mut a), 0, "{}", std::io::Error::last_os_error()); // BPF_PROG_TEST_RUN
    (a.retval, a.duration)
}

/// [`run_raw`] once, with the packet the program left: (return value, ns, packet out).
pub fn run_out(fd: i32, pkt: &[u8], ctx: &[u8]) -> (u32, u32, Vec<u8>) {
    let mut out = vec![0u8; pkt.len() + 256];
    let mut a = TestRunAttr {
        prog_fd: fd as u32,
        data_size_in: pkt.len() as u32,
        data_in: pkt.as_ptr() as u64,
        data_size_out: out.len() as u32,
        data_out: out.as_mut_ptr() as u64,
        repeat: 1,
        ctx_size_in: ctx.len() as u32,
        ctx_in: ctx.as_ptr() as u64,
        ..Default::default()
    };
    assert_eq!(bpf(10, &mut a), 0, "{}", std::io::Error::last_os_error());
    out.truncate(a.data_size_out as usize);
    (a.retval, a.duration, out)
}

/// Median of three measurements.
pub fn median3(mut f: impl FnMut() -> u32) -> f64 {
    let mut v = [f(), f(), f()];
    v.sort_unstable();
    f64::from(v[1])
}

/// The `q` quantile (0..=1) of a sample.
pub fn quantile(mut v: Vec<u32>, q: f64) -> f64 {
    v.sort_unstable();
    f64::from(v[((v.len() - 1) as f64 * q).round() as usize])
}

/// Median of a sample.
pub fn median(v: Vec<u32>) -> f64 {
    quantile(v, 0.5)
}

/// The descriptor of a loaded aya program, for [`run_raw`].
pub fn fd_of(fd: &aya::programs::ProgramFd) -> i32 {
    use std::os::fd::AsFd;
    fd.as_fd().as_raw_fd()
}

/// Switches the datapath events of the maps pinned under `pins` off (no drop and no translation
/// records): the single-shot figures are the programs' own; the events' cost is measured apart.
pub fn events_off(pins: &std::path::Path) {
    oxilium::events::Hub::new(pins)
        .set_config(&abi::event::EventConfig {
            flags: abi::event::CFG_NO_DROPS | abi::event::CFG_NO_TRANSLATIONS,
            flow_rate: 0,
            flow_burst: 0,
            _pad: 0,
        })
        .unwrap();
}
