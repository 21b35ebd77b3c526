//! The cost of datapath events per packet (BPF_PROG_TEST_RUN, the fixed points of the XDP
//! figures), each case with its events switched off as the baseline of the same run, and the
//! records per second the agent's drain reads from a full ring on one core (decode only, and
//! decode + flow record + JSON as for a `monitor` subscriber).
use super::*;
use abi::event::{CFG_NO_DROPS, CFG_NO_TRANSLATIONS, CFG_TRACE, Event, EventConfig, names};
use aya::maps::{Map, MapData, RingBuf};
use oxilium::events::{Hub, Names, record};
use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Instant,
};

const OFF: u32 = CFG_NO_DROPS | CFG_NO_TRANSLATIONS;

fn config(flags: u32, unlimited: bool) -> EventConfig {
    EventConfig {
        flags,
        flow_rate: if unlimited { u32::MAX } else { 0 },
        flow_burst: if unlimited { u32::MAX } else { 0 },
        _pad: 0,
    }
}

fn ring(pins: &std::path::Path) -> RingBuf<MapData> {
    let data = MapData::from_pin(pins.join(names::EVENTS)).unwrap();
    RingBuf::try_from(Map::RingBuf(data)).unwrap()
}

/// A thread that drains the ring while it runs (one core busy polling); returns the records.
struct Drainer {
    stop: Arc<AtomicBool>,
    seen: Arc<AtomicU64>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Drainer {
    fn start(pins: &std::path::Path) -> Drainer {
        let mut ring = ring(pins);
        let (stop, seen) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(0)),
        );
        let (s, n) = (stop.clone(), seen.clone());
        let handle = std::thread::spawn(move || {
            use std::os::fd::AsRawFd;
            let fd = ring.as_raw_fd();
            while !s.load(Ordering::Relaxed) {
                // Woken by the ring as the agent's AsyncFd is (epoll there, poll here).
                let mut p = libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd.
                unsafe { libc::poll(&mut p, 1, 10) };
                while let Some(item) = ring.next() {
                    // SAFETY: records are whole `Event`s.
                    let e = unsafe { std::ptr::read_unaligned(item.as_ptr() as *const Event) };
                    std::hint::black_box(e);
                    n.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        Drainer {
            stop,
            seen,
            handle: Some(handle),
        }
    }

    fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.take().unwrap().join().unwrap();
        self.seen.load(Ordering::Relaxed)
    }
}

pub fn bench(repeat: u32, md: &[u8], est: &[u8], raw: i32) {
    let (ebpf, mut rec, pins) = setup_in("events", PORT, PORT);
    let prog: &Xdp = ebpf.program("oxilium_lb").unwrap().try_into().unwrap();
    let hub = Hub::new(pins.path());
    let mut m = model(300);
    let mut empty = service("empty", "10.10.0.4:80", "10.10.0.1:80", 300);
    empty.backends.clear();
    m.services.push(empty);
    rec.apply(&compile::compile(&m).unwrap()).unwrap();
    let drop_frame = frame("10.10.5.5", 5555, "10.10.0.4", 80);
    assert_eq!(run(prog, &drop_frame, md, 1).0, 1, "XDP_DROP: no backend");

    let base = median3(|| run_raw(raw, est, md, repeat).1);
    println!("\nevents, repeat {repeat}, median of 3 (× the same case with events off)");
    let case = |name: &str, pkt: &[u8], off: EventConfig, on: &[(&str, EventConfig)]| {
        hub.set_config(&off).unwrap();
        let ns_off = median3(|| run(prog, pkt, md, repeat).1);
        println!(
            "{:<58} {ns_off:>7.1} ns/packet  {:>5.2}x raw",
            format!("{name}, events off"),
            ns_off / base
        );
        for (what, c) in on {
            let before = hub.datapath_counters().unwrap();
            let drainer = Drainer::start(pins.path());
            // Off and on alternately (the machine is shared: drift hits both alike).
            let (mut v_off, mut v_on) = (Vec::new(), Vec::new());
            for _ in 0..3 {
                hub.set_config(&off).unwrap();
                v_off.push(run(prog, pkt, md, repeat).1);
                hub.set_config(c).unwrap();
                v_on.push(run(prog, pkt, md, repeat).1);
            }
            v_off.sort_unstable();
            v_on.sort_unstable();
            let (ns_off, ns) = (f64::from(v_off[1]), f64::from(v_on[1]));
            let drained = drainer.stop();
            let after = hub.datapath_counters().unwrap();
            let d = |i: u32| after[i as usize] - before[i as usize];
            use abi::event::stat;
            println!(
                "{:<58} {ns:>7.1} ns/packet  {:>5.2}x off ({ns_off:.0})  (written {}, rate limited {}, ring full {}, drained {drained})",
                format!("{name}, {what}"),
                ns / ns_off,
                d(stat::WRITTEN),
                d(stat::RATE_LIMITED),
                d(stat::RING_FULL),
            );
        }
    };
    let limited = |flags| config(flags, false);
    let unlimited = |flags| config(flags, true);
    case(
        "established SNAT flow",
        est,
        config(OFF, false),
        &[
            ("default (no event on this path)", limited(0)),
            ("trace on, rate limited", limited(CFG_TRACE)),
            ("trace on, every point written", unlimited(CFG_TRACE)),
        ],
    );
    case(
        "no-backend drop",
        &drop_frame,
        config(OFF, false),
        &[
            ("drop events, rate limited", limited(0)),
            ("drop events, every drop written", unlimited(0)),
        ],
    );
    // New flows: one run per distinct packet (each a new flow, so never rate limited), events
    // off against a translation record per flow, drained concurrently; medians of `n` runs.
    drop((ebpf, rec, pins));
    let (ebpf, _rec, pins) = setup_in("events-new", 1024, 65535);
    let prog: &Xdp = ebpf.program("oxilium_lb").unwrap().try_into().unwrap();
    let hub = Hub::new(pins.path());
    let n = 20_000u32;
    let flow = |i: u32, round: u32| {
        let src = format!("172.{}.{}.{}", 16 + round, (i >> 8) & 0xff, i & 0xff);
        frame(&src, 1024 + (i >> 16) as u16, "10.10.0.1", 80)
    };
    let median = |mut v: Vec<u32>| {
        v.sort_unstable();
        f64::from(v[v.len() / 2])
    };
    let before = hub.datapath_counters().unwrap();
    let drainer = Drainer::start(pins.path());
    let (mut v_off, mut v_on) = (Vec::new(), Vec::new());
    for i in 0..n {
        hub.set_config(&config(OFF, false)).unwrap();
        v_off.push(run(prog, &flow(i, 0), md, 1).1);
        hub.set_config(&config(0, false)).unwrap();
        v_on.push(run(prog, &flow(i, 1), md, 1).1);
    }
    let drained = drainer.stop();
    let after = hub.datapath_counters().unwrap();
    let (off, on) = (median(v_off), median(v_on));
    println!(
        "{:<58} {off:>7.1} ns/packet  (repeat 1, median of {n})",
        "new SNAT flows, events off"
    );
    println!(
        "{:<58} {on:>7.1} ns/packet  {:>5.2}x off  (written {}, ring full {}, drained {drained})",
        "new SNAT flows, a translation record each",
        on / off,
        after[abi::event::stat::WRITTEN as usize] - before[abi::event::stat::WRITTEN as usize],
        after[abi::event::stat::RING_FULL as usize] - before[abi::event::stat::RING_FULL as usize],
    );

    // The drain: fill the ring (no reader), then time reading it whole; until 1M records.
    hub.set_config(&unlimited(CFG_TRACE | CFG_NO_TRANSLATIONS))
        .unwrap();
    let mut ring = ring(pins.path());
    let names = Names::default();
    let clock = record::Clock::now();
    let (mut n_raw, mut t_raw, mut n_json, mut t_json) = (0u64, 0f64, 0u64, 0f64);
    let mut bytes = 0usize;
    for pass in 0..200 {
        run(prog, &drop_frame, md, 20_000);
        let t = Instant::now();
        let mut n = 0u64;
        while let Some(item) = ring.next() {
            // SAFETY: records are whole `Event`s.
            let e = unsafe { std::ptr::read_unaligned(item.as_ptr() as *const Event) };
            if pass % 2 == 1 {
                let r = record::from_event(&e, &clock, &names);
                bytes += serde_json::to_vec(&r).unwrap().len();
            } else {
                std::hint::black_box(e);
            }
            n += 1;
        }
        let dt = t.elapsed().as_secs_f64();
        if pass % 2 == 1 {
            (n_json, t_json) = (n_json + n, t_json + dt);
        } else {
            (n_raw, t_raw) = (n_raw + n, t_raw + dt);
        }
        if n_raw + n_json >= 1_000_000 {
            break;
        }
    }
    println!(
        "drain on one core: {:.2} M records/s read and decoded, {:.2} M records/s as JSON flow records ({} B each)",
        n_raw as f64 / t_raw / 1e6,
        n_json as f64 / t_json / 1e6,
        bytes / n_json.max(1) as usize
    );
}
