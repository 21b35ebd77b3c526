//! Throughput with BPF_F_TEST_XDP_LIVE_FRAMES: the kernel runs the program on `repeat` frames in
//! batches and really sends what it returns XDP_TX for, out of `va` to its peer `vb` (both in the
//! bench namespace; GRO on `vb` so that veth takes XDP frames). The figure is the kernel's time
//! per frame, program and transmit; the baseline, a raw `r0 = XDP_TX; exit` on the same frames.
use super::*;
use std::os::fd::{AsFd, AsRawFd};

const BPF_F_TEST_XDP_LIVE_FRAMES: u32 = 1 << 1;

/// `TestRunAttr` with the live-frames fields.
#[repr(C)]
#[derive(Default)]
struct LiveAttr {
    run: TestRunAttr0,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

/// The test-run prefix of `union bpf_attr` (as `TestRunAttr`, without its padding).
#[repr(C)]
#[derive(Default)]
struct TestRunAttr0 {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
}

/// ns per frame of `repeat` live frames of `pkt` through program `fd`.
fn run_live(fd: i32, pkt: &[u8], md: &[u8], repeat: u32) -> u32 {
    let mut a = LiveAttr {
        run: TestRunAttr0 {
            prog_fd: fd as u32,
            data_size_in: pkt.len() as u32,
            data_in: pkt.as_ptr() as u64,
            repeat,
            ctx_size_in: md.len() as u32,
            ctx_in: md.as_ptr() as u64,
            ..Default::default()
        },
        flags: BPF_F_TEST_XDP_LIVE_FRAMES,
        ..Default::default()
    };
    assert_eq!(
        bpf(10, &mut a),
        0,
        "BPF_PROG_TEST_RUN (live frames): {}",
        std::io::Error::last_os_error()
    );
    a.run.duration
}

/// Prints the live-frames rows: the established SNAT fixed point `est` through `prog`, and the
/// baseline. `ns`: the bench namespace's name.
pub fn bench(ns: &str, prog: &Xdp, est: &[u8], md: &[u8], repeat: u32) {
    sh(&[
        "ip", "netns", "exec", ns, "ethtool", "-K", "vb", "gro", "on",
    ]);
    // BPF_ALU64 | BPF_MOV | BPF_K, r0 = 3 (XDP_TX).
    let tx = load_tx_xdp();
    let fd = prog.fd().unwrap().as_fd().as_raw_fd();
    println!("\nlive frames (BPF_F_TEST_XDP_LIVE_FRAMES, XDP_TX sent out of va), repeat {repeat}");
    let base = median3(|| run_live(tx, est, md, repeat));
    let ours = median3(|| run_live(fd, est, md, repeat));
    println!(
        "{:<44} {base:>7.1} ns/frame   1.00x",
        "baseline: r0 = XDP_TX; exit (raw)"
    );
    println!(
        "{:<44} {ours:>7.1} ns/frame  {:>5.2}x  ({:.2} Mpps against {:.2})",
        "oxilium, established SNAT flow",
        ours / base,
        1e3 / ours,
        1e3 / base
    );
    // SAFETY: our own descriptor.
    unsafe { libc::close(tx) };
}
