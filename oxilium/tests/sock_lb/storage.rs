//! Connected sockets' reverse entries: a TCP connect writes its cookie's slot of
//! `OXI_SOCK_REVNAT_RING` and the first getpeername() moves it into the socket's own storage
//! (`OXI_SOCK_REVNAT_SK`, BPF_MAP_TYPE_SK_STORAGE, bpf_sk_storage_get from the sock_addr hooks); a
//! connected UDP socket's connect writes its storage directly. getpeername() and recvfrom() give
//! the service address back at volume, each socket holds its own entry, and nothing lands in the
//! shared LRU. Kernel features: those of the file, plus BPF_OBJ_GET and BPF_MAP_LOOKUP_ELEM by
//! socket descriptor on an sk-storage map.
use super::*;
use abi::sock::names as sock_names;
use support::cgroup::python;

/// Connects `n` TCP sockets to host:port in batches of `batch` (held open together); for each:
/// no storage entry before getpeername() (looked up by descriptor in the pinned map: the connect
/// wrote the ring), then getpeername() must be the service and the socket's storage entry must
/// name the service and a backend on `backend_port`. After each batch is
/// closed, new sockets on the same descriptors must have no entry. Then `udp` connected UDP
/// sockets: recvfrom() must give the service as the source, and each has its entry too.
/// Prints `OK <tcp> <udp>` or `ERR ...`.
const CLIENT: &str = r#"
import socket, sys, ctypes, struct
host, port, n, batch, udp, backend_port, pin = sys.argv[1:8]
port, n, batch, udp, backend_port = int(port), int(n), int(batch), int(udp), int(backend_port)
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def bpf(cmd, attr):
    b = ctypes.create_string_buffer(attr, 128)
    r = libc.syscall(ctypes.c_long(321), ctypes.c_long(cmd), b, ctypes.c_long(128))
    return r, ctypes.get_errno()
def fail(*what):
    print('ERR', *what, flush=True); sys.exit(1)
path = ctypes.create_string_buffer(pin.encode())
mfd, e = bpf(7, struct.pack('=QII', ctypes.addressof(path), 0, 0))  # BPF_OBJ_GET
if mfd < 0: fail('BPF_OBJ_GET', e)
val = ctypes.create_string_buffer(40)
def entry(fd):
    key = ctypes.c_int(fd)
    r, e = bpf(1, struct.pack('=IIQQQ', mfd, 0, ctypes.addressof(key), ctypes.addressof(val), 0))
    if r == 0: return val.raw
    if e == 2: return None  # ENOENT
    fail('BPF_MAP_LOOKUP_ELEM', e)
mapped = b'\0' * 10 + b'\xff\xff' + socket.inet_aton(host)
def check(s):
    v = entry(s.fileno())
    if v is None: fail('no entry')
    if v[16:32] != mapped or v[34:36] != struct.pack('!H', port): fail('service', v.hex())
    if v[0:12] != b'\0' * 10 + b'\xff\xff' or v[32:34] != struct.pack('!H', backend_port):
        fail('backend', v.hex())
done = 0
while done < n:
    socks = []
    for _ in range(min(batch, n - done)):
        s = socket.socket(); s.settimeout(5); s.connect((host, port)); socks.append(s)
    for s in socks:
        if entry(s.fileno()) is not None: fail('storage before getpeername')
        if s.getpeername() != (host, port): fail('peer', s.getpeername())
        check(s)
        if s.getpeername() != (host, port): fail('second peer', s.getpeername())
    for s in socks: s.close()
    fresh = [socket.socket() for _ in socks]
    if any(entry(f.fileno()) is not None for f in fresh): fail('entry on a new socket')
    for f in fresh: f.close()
    done += len(socks)
for _ in range(udp):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)
    s.connect((host, port)); s.send(b'hello')
    data, src = s.recvfrom(512)
    if src != (host, port): fail('udp source', src)
    check(s); s.close()
print('OK', done, udp, flush=True)
"#;

#[test]
fn connected_sockets_keep_the_reverse_entry_in_their_own_storage_at_volume() {
    let bed = Bed::new("sk");
    let n: usize = 3000;
    let udp: usize = 50;
    let pin = bed.pins.path().join(sock_names::REVNAT_SK);
    let out = support::cgroup::run_script(
        Some(&bed.cg.path),
        &bed.node,
        &python(),
        CLIENT,
        &[
            CIP4,
            &SVC_PORT.to_string(),
            &n.to_string(),
            "200",
            &udp.to_string(),
            &BE_PORT.to_string(),
            &pin.display().to_string(),
        ],
    );
    assert_eq!(out.trim(), format!("OK {n} {udp}"), "client: {out}");
    assert!(bed.sock.maps.counter(reason::CONNECT) >= (n + udp) as u64);
    assert!(bed.sock.maps.counter(reason::GETPEERNAME) >= n as u64);
    assert!(bed.sock.maps.counter(reason::RECVMSG) >= udp as u64);
    assert!(
        bed.sock.maps.revnat_entries().is_empty(),
        "connected sockets wrote to the LRU"
    );
}
