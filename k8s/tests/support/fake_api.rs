//! A tiny Kubernetes API server for tests: plain HTTP/1.1 on 127.0.0.1, no auth, eight resources
//! (Services, EndpointSlices, Nodes, Pods; Namespaces, NetworkPolicies, CiliumNetworkPolicies,
//! CiliumClusterwideNetworkPolicies), list and watch with resourceVersions, bookmarks, a
//! history that can be "compacted" so that an old watch gets 410 Gone, and changes that no watch
//! sees (as if the client were disconnected). Every response closes its connection.
//!
//! One copy, two users: the kube source tests (lb/k8s/tests) and the agent's end-to-end tests
//! (lb/tests/support includes this file by path), so it names no crate of the workspace.
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Res {
    Services,
    EndpointSlices,
    Nodes,
    Pods,
    /// The policy objects.
    Namespaces,
    NetworkPolicies,
    CiliumNetworkPolicies,
    CiliumClusterwideNetworkPolicies,
}

impl Res {
    /// The service source's resources.
    pub const ALL: [Res; 4] = [Res::Services, Res::EndpointSlices, Res::Nodes, Res::Pods];
    pub const POLICY: [Res; 4] = [
        Res::Namespaces,
        Res::NetworkPolicies,
        Res::CiliumNetworkPolicies,
        Res::CiliumClusterwideNetworkPolicies,
    ];

    pub fn path(self) -> &'static str {
        match self {
            Res::Services => "/api/v1/services",
            Res::EndpointSlices => "/apis/discovery.k8s.io/v1/endpointslices",
            Res::Nodes => "/api/v1/nodes",
            Res::Pods => "/api/v1/pods",
            Res::Namespaces => "/api/v1/namespaces",
            Res::NetworkPolicies => "/apis/networking.k8s.io/v1/networkpolicies",
            Res::CiliumNetworkPolicies => "/apis/cilium.io/v2/ciliumnetworkpolicies",
            Res::CiliumClusterwideNetworkPolicies => {
                "/apis/cilium.io/v2/ciliumclusterwidenetworkpolicies"
            }
        }
    }

    fn type_meta(self) -> (&'static str, &'static str) {
        match self {
            Res::Services => ("v1", "Service"),
            Res::EndpointSlices => ("discovery.k8s.io/v1", "EndpointSlice"),
            Res::Nodes => ("v1", "Node"),
            Res::Pods => ("v1", "Pod"),
            Res::Namespaces => ("v1", "Namespace"),
            Res::NetworkPolicies => ("networking.k8s.io/v1", "NetworkPolicy"),
            Res::CiliumNetworkPolicies => ("cilium.io/v2", "CiliumNetworkPolicy"),
            Res::CiliumClusterwideNetworkPolicies => {
                ("cilium.io/v2", "CiliumClusterwideNetworkPolicy")
            }
        }
    }
}

/// One request as the server saw it.
#[derive(Clone, Debug)]
pub struct Request {
    pub res: Option<Res>,
    pub watch: bool,
    pub query: HashMap<String, String>,
}

type Key = (String, String);
/// A field selector `path=value` (one term, `=` only).
type Selector = Option<(String, String)>;

#[derive(Default)]
struct Collection {
    objects: BTreeMap<Key, Value>,
    /// (resourceVersion, event line) of every change since `oldest`.
    history: Vec<(u64, Value)>,
    /// Watches from a version older than this get 410 Gone.
    oldest: u64,
    watches: Vec<(Selector, mpsc::UnboundedSender<Value>)>,
}

#[derive(Default)]
struct ApiState {
    rv: u64,
    collections: HashMap<Res, Collection>,
    requests: Vec<Request>,
    /// Every request is answered 503 (an API server outage).
    down: bool,
}

pub struct FakeApi {
    state: Arc<Mutex<ApiState>>,
    server: JoinHandle<()>,
    kubeconfig: PathBuf,
}

fn key_of(obj: &Value) -> Key {
    let s = |p: &str| {
        obj.pointer(p)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    (s("/metadata/namespace"), s("/metadata/name"))
}

/// `spec.nodeName=a` → does `obj` match it.
fn selected(obj: &Value, sel: &Selector) -> bool {
    let Some((path, want)) = sel else { return true };
    let pointer = format!("/{}", path.replace('.', "/"));
    obj.pointer(&pointer).and_then(Value::as_str).unwrap_or("") == want
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
                out.push(u8::from_str_radix(hex, 16).unwrap_or(b'?'));
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

impl FakeApi {
    /// Starts the server on 127.0.0.1 (a free port) and writes a kubeconfig pointing at it.
    pub async fn start() -> FakeApi {
        FakeApi::serve(std::net::TcpListener::bind("127.0.0.1:0").unwrap())
    }

    /// Serves on `listener` and writes a kubeconfig pointing at its address. The caller binds it
    /// where the client will look: a socket bound on a thread inside a network namespace stays
    /// in that namespace, so an agent run there reaches the server on that namespace's loopback.
    /// Needs a Tokio runtime context.
    pub fn serve(listener: std::net::TcpListener) -> FakeApi {
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let listener = TcpListener::from_std(listener).unwrap();
        let state = Arc::new(Mutex::new(ApiState::default()));
        let st = state.clone();
        let server = tokio::spawn(async move {
            let mut conns = JoinSet::new(); // dropped (connections aborted) with this task
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    continue;
                };
                conns.spawn(serve(sock, st.clone()));
                while conns.try_join_next().is_some() {}
            }
        });
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let kubeconfig = std::env::temp_dir().join(format!(
            "oxilium-fake-api-{}-{n}.kubeconfig",
            std::process::id()
        ));
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\ncurrent-context: fake\n\
                 clusters:\n- name: fake\n  cluster: {{server: \"http://{addr}\"}}\n\
                 users:\n- name: nobody\n  user: {{}}\n\
                 contexts:\n- name: fake\n  context: {{cluster: fake, user: nobody}}\n"
            ),
        )
        .unwrap();
        FakeApi {
            state,
            server,
            kubeconfig,
        }
    }

    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    fn lock(&self) -> MutexGuard<'_, ApiState> {
        self.state.lock().unwrap()
    }

    /// Creates or replaces an object; watches see ADDED or MODIFIED. Returns its resourceVersion.
    pub fn put(&self, res: Res, obj: Value) -> u64 {
        self.change(res, Some(obj), None, true)
    }

    /// Deletes an object; watches see DELETED.
    pub fn delete(&self, res: Res, namespace: &str, name: &str) -> u64 {
        self.change(res, None, Some((namespace.into(), name.into())), true)
    }

    /// Like [`put`](Self::put), but no watch (current or resumed) ever sees it.
    pub fn put_unseen(&self, res: Res, obj: Value) -> u64 {
        self.change(res, Some(obj), None, false)
    }

    pub fn delete_unseen(&self, res: Res, namespace: &str, name: &str) -> u64 {
        self.change(res, None, Some((namespace.into(), name.into())), false)
    }

    fn change(&self, res: Res, obj: Option<Value>, del: Option<Key>, seen: bool) -> u64 {
        let mut st = self.lock();
        st.rv += 1;
        let rv = st.rv;
        let (api_version, kind) = res.type_meta();
        let c = st.collections.entry(res).or_default();
        let (typ, obj) = match (obj, del) {
            (Some(mut obj), _) => {
                obj["apiVersion"] = json!(api_version);
                obj["kind"] = json!(kind);
                obj["metadata"]["resourceVersion"] = json!(rv.to_string());
                let typ = match c.objects.insert(key_of(&obj), obj.clone()) {
                    Some(_) => "MODIFIED",
                    None => "ADDED",
                };
                (typ, obj)
            }
            (None, Some(key)) => {
                let Some(mut obj) = c.objects.remove(&key) else {
                    panic!("fake api: delete of a missing {kind} {key:?}")
                };
                obj["metadata"]["resourceVersion"] = json!(rv.to_string());
                ("DELETED", obj)
            }
            (None, None) => unreachable!(),
        };
        if seen {
            let line = json!({"type": typ, "object": obj});
            c.history.push((rv, line.clone()));
            c.watches
                .retain(|(sel, tx)| !selected(&obj, sel) || tx.send(line.clone()).is_ok());
        }
        rv
    }

    /// Sends a BOOKMARK with a new resourceVersion (something changed elsewhere) to the watches
    /// of `res`; returns that version.
    pub fn bookmark(&self, res: Res) -> u64 {
        let mut st = self.lock();
        st.rv += 1;
        let rv = st.rv;
        let (api_version, kind) = res.type_meta();
        let line = json!({"type": "BOOKMARK", "object": {"apiVersion": api_version, "kind": kind,
            "metadata": {"resourceVersion": rv.to_string()}}});
        let c = st.collections.entry(res).or_default();
        c.watches.retain(|(_, tx)| tx.send(line.clone()).is_ok());
        rv
    }

    /// Ends the current watches of `res` (the client resumes from its last version).
    pub fn close_watches(&self, res: Res) {
        self.lock()
            .collections
            .entry(res)
            .or_default()
            .watches
            .clear();
    }

    /// Compacts the history of `res`: its current watches get a 410 Gone ERROR event and end, and
    /// so does any watch from a version before now. The client must list again.
    pub fn expire(&self, res: Res) {
        let mut st = self.lock();
        let rv = st.rv;
        let c = st.collections.entry(res).or_default();
        c.oldest = rv + 1;
        c.history.clear();
        for (_, tx) in c.watches.drain(..) {
            let _ = tx.send(gone(rv));
        }
    }

    /// An outage: while `down`, every request is answered 503 Service Unavailable; going down
    /// ends the open watches.
    pub fn set_down(&self, down: bool) {
        let mut st = self.lock();
        st.down = down;
        if down {
            for c in st.collections.values_mut() {
                c.watches.clear();
            }
        }
    }

    /// How many watches of `res` are open.
    pub fn watching(&self, res: Res) -> usize {
        let mut st = self.lock();
        let c = st.collections.entry(res).or_default();
        c.watches.retain(|(_, tx)| !tx.is_closed());
        c.watches.len()
    }

    pub fn requests(&self) -> Vec<Request> {
        self.lock().requests.clone()
    }

    /// The (list or watch) requests on `res` so far.
    pub fn count(&self, res: Res, watch: bool) -> usize {
        let st = self.lock();
        let n = st.requests.iter();
        n.filter(|r| r.res == Some(res) && r.watch == watch).count()
    }

    /// Every object of `res` as the server holds it now.
    pub fn objects(&self, res: Res) -> Vec<Value> {
        let mut st = self.lock();
        st.collections
            .entry(res)
            .or_default()
            .objects
            .values()
            .cloned()
            .collect()
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.server.abort();
        let _ = std::fs::remove_file(&self.kubeconfig);
    }
}

fn gone(rv: u64) -> Value {
    json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "reason": "Expired", "code": 410,
        "message": format!("too old resource version (current {rv})")}})
}

async fn serve(sock: TcpStream, state: Arc<Mutex<ApiState>>) {
    let mut sock = BufReader::new(sock);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        match sock.read_line(&mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) if line == "\r\n" => break,
            Ok(_) => head.push_str(&line),
        }
    }
    let target = head.split_whitespace().nth(1).unwrap_or("/").to_string();
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let query: HashMap<String, String> = query
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect();
    let res = Res::ALL
        .into_iter()
        .chain(Res::POLICY)
        .find(|r| r.path() == path);
    let watch = query.get("watch").is_some_and(|w| w == "true" || w == "1");
    let selector = query
        .get("fieldSelector")
        .and_then(|s| s.split_once('='))
        .map(|(a, b)| (a.to_string(), b.to_string()));
    let mut sock = sock.into_inner();
    let request = Request { res, watch, query };
    let reply = route(&mut state.lock().unwrap(), request, path, selector);
    let mut rx = match reply {
        Reply::Json(status, body) => return respond(&mut sock, status, &body).await,
        Reply::Watch(rx) => rx,
    };
    let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
    if sock.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    while let Some(line) = rx.recv().await {
        let text = format!("{line}\n");
        let chunk = format!("{:x}\r\n{text}\r\n", text.len());
        if sock.write_all(chunk.as_bytes()).await.is_err() {
            return;
        }
        if line["type"] == "ERROR" {
            break;
        }
    }
    let _ = sock.write_all(b"0\r\n\r\n").await;
    let _ = sock.shutdown().await;
}

enum Reply {
    Json(&'static str, Value),
    Watch(mpsc::UnboundedReceiver<Value>),
}

/// Answers one request from the state (under its lock).
fn route(st: &mut ApiState, req: Request, path: &str, selector: Selector) -> Reply {
    st.requests.push(req.clone());
    if st.down {
        let body = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
            "reason": "ServiceUnavailable", "code": 503, "message": "down"});
        return Reply::Json("503 Service Unavailable", body);
    }
    let Some(res) = req.res else {
        let body = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
            "reason": "NotFound", "code": 404, "message": format!("no route {path}")});
        return Reply::Json("404 Not Found", body);
    };
    let rv = st.rv;
    let (api_version, kind) = res.type_meta();
    let c = st.collections.entry(res).or_default();
    if !req.watch {
        let items: Vec<Value> = c
            .objects
            .values()
            .filter(|o| selected(o, &selector))
            .cloned()
            .collect();
        let body = json!({"apiVersion": api_version, "kind": format!("{kind}List"),
            "metadata": {"resourceVersion": rv.to_string()}, "items": items});
        return Reply::Json("200 OK", body);
    }
    let from: u64 = req
        .query
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(rv);
    let (tx, rx) = mpsc::unbounded_channel();
    if from + 1 < c.oldest {
        let _ = tx.send(gone(rv));
    } else {
        for (v, line) in &c.history {
            if *v > from && selected(&line["object"], &selector) {
                let _ = tx.send(line.clone());
            }
        }
        c.watches.push((selector, tx));
    }
    Reply::Watch(rx)
}

async fn respond(sock: &mut TcpStream, status: &str, body: &Value) {
    let body = body.to_string();
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    );
    let _ = sock.write_all(head.as_bytes()).await;
    let _ = sock.write_all(body.as_bytes()).await;
    let _ = sock.shutdown().await;
}
