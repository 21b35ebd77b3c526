//! The manifests folder followed per file: edits, deletes, renames and refused edits.
use super::record::Objects;
use super::*;
use crate::manifests::tests::TempDir;

fn svc(name: &str, ip: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\n\
         spec: {{clusterIP: {ip}, ports: [{{name: http, port: 80, targetPort: 8080}}]}}\n"
    )
}

fn eps(svc: &str, addrs: &[&str]) -> String {
    let list: Vec<String> = addrs
        .iter()
        .map(|a| format!("{{addresses: [{a}]}}"))
        .collect();
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{name: {svc}-1, namespace: default, labels: {{kubernetes.io/service-name: {svc}}}}}\n\
         addressType: IPv4\nports: [{{name: http, port: 8080, protocol: TCP}}]\nendpoints: [{}]\n",
        list.join(", ")
    )
}

const NODE: &str = "apiVersion: v1\nkind: Node\nmetadata: {name: node-a}\n\
    status: {addresses: [{type: InternalIP, address: 192.168.0.10}]}\n";

fn key(name: &str) -> ObjectKey {
    ObjectKey::new("default", name)
}

fn paths(t: &TempDir, rel: &[&str]) -> Hint {
    Hint::Paths(rel.iter().map(|r| t.0.join(r)).collect())
}

/// Endpoint addresses of Service `name` in the store.
fn endpoints_of(s: &FolderSource, name: &str) -> Vec<String> {
    let mut v: Vec<String> = s
        .cluster()
        .slices_of(&key(name))
        .flat_map(|sl| sl.endpoints.iter())
        .map(|e| e.address.to_string())
        .collect();
    v.sort();
    v
}

/// A folder of three Services, each in its own file with its slice in another, and the Node.
fn folder() -> TempDir {
    let t = TempDir::new("incr");
    t.write("node.yaml", NODE);
    for (i, n) in ["a", "b", "c"].iter().enumerate() {
        t.write(
            &format!("svc/{n}.yaml"),
            &svc(n, &format!("10.96.0.{}", i + 1)),
        );
        t.write(
            &format!("eps/{n}.yaml"),
            &eps(n, &[&format!("10.1.0.{}", i + 1)]),
        );
    }
    t
}

#[test]
fn an_edit_reads_that_file_only_and_names_its_service() {
    let t = folder();
    let mut s = FolderSource::read(&t.0).unwrap();
    assert_eq!(s.file_count(), 7);
    t.write("eps/b.yaml", &eps("b", &["10.1.0.2", "10.1.0.9"]));
    let up = s.update(&paths(&t, &["eps/b.yaml"])).unwrap().unwrap();
    assert_eq!((up.read, up.removed, up.whole), (1, 0, false));
    assert_eq!(up.changes.services, BTreeSet::from([key("b")]));
    assert!(up.changes.nodes.is_empty());
    assert_eq!(endpoints_of(&s, "b"), ["10.1.0.2", "10.1.0.9"]);
    assert_eq!(endpoints_of(&s, "a"), ["10.1.0.1"]);
    // The same paths again, nothing changed on disk: nothing to apply.
    assert!(s.update(&paths(&t, &["eps/b.yaml"])).unwrap().is_none());
    // A walk finds the same file changed as the targeted path does.
    t.write("eps/c.yaml", &eps("c", &[]));
    let up = s.update(&Hint::Rescan).unwrap().unwrap();
    assert_eq!((up.read, up.removed), (1, 0));
    assert_eq!(up.changes.services, BTreeSet::from([key("c")]));
    assert!(endpoints_of(&s, "c").is_empty());
}

#[test]
fn a_delete_takes_the_files_objects_out() {
    let t = folder();
    let mut s = FolderSource::read(&t.0).unwrap();
    std::fs::remove_file(t.0.join("svc/a.yaml")).unwrap();
    let up = s.update(&paths(&t, &["svc/a.yaml"])).unwrap().unwrap();
    assert_eq!((up.read, up.removed), (0, 1));
    assert_eq!(up.changes.services, BTreeSet::from([key("a")]));
    let keys: Vec<_> = s.cluster().service_keys().cloned().collect();
    assert_eq!(keys, [key("b"), key("c")]);
    // A whole folder removed (one event naming it) is found by a walk.
    std::fs::remove_dir_all(t.0.join("eps")).unwrap();
    let up = s.update(&paths(&t, &["eps"])).unwrap().unwrap();
    assert_eq!(up.removed, 3);
    assert!(endpoints_of(&s, "b").is_empty());
    // The Node deleted is a node change.
    std::fs::remove_file(t.0.join("node.yaml")).unwrap();
    let up = s.update(&paths(&t, &["node.yaml"])).unwrap().unwrap();
    assert_eq!(up.changes.nodes, BTreeSet::from(["node-a".to_string()]));
    assert!(s.cluster().node("node-a").is_none());
}

#[test]
fn a_rename_over_and_a_move_between_files() {
    let t = folder();
    let mut s = FolderSource::read(&t.0).unwrap();
    // An editor's save: a temporary file renamed over the file.
    t.write("svc/b.yaml.tmp", &svc("b", "10.96.1.2"));
    std::fs::rename(t.0.join("svc/b.yaml.tmp"), t.0.join("svc/b.yaml")).unwrap();
    let up = s
        .update(&paths(&t, &["svc/b.yaml.tmp", "svc/b.yaml"]))
        .unwrap()
        .unwrap();
    assert_eq!((up.read, up.removed, up.whole), (1, 0, false));
    assert_eq!(up.changes.services, BTreeSet::from([key("b")]));
    let b = &s.cluster().services[&key("b")];
    assert_eq!(
        b.cluster_ips,
        ["10.96.1.2".parse::<std::net::IpAddr>().unwrap()]
    );
    // A file renamed to another manifest name: its objects move, nothing else is read.
    std::fs::rename(t.0.join("eps/c.yaml"), t.0.join("eps/z.yml")).unwrap();
    let up = s
        .update(&paths(&t, &["eps/c.yaml", "eps/z.yml"]))
        .unwrap()
        .unwrap();
    assert_eq!((up.read, up.removed, up.whole), (1, 1, false));
    assert_eq!(up.changes.services, BTreeSet::from([key("c")]));
    assert_eq!(endpoints_of(&s, "c"), ["10.1.0.3"]);
    // Renamed to a name that is not read: the objects are gone.
    std::fs::rename(t.0.join("eps/z.yml"), t.0.join("eps/z.yml.bak")).unwrap();
    let up = s
        .update(&paths(&t, &["eps/z.yml", "eps/z.yml.bak"]))
        .unwrap()
        .unwrap();
    assert_eq!((up.read, up.removed), (0, 1));
    assert!(endpoints_of(&s, "c").is_empty());
}

#[test]
fn a_bad_edit_is_refused_whole_with_file_and_field_and_nothing_applied() {
    let t = folder();
    let mut s = FolderSource::read(&t.0).unwrap();
    // Two files change in one burst: a good one and one with a port that is not a number.
    t.write("eps/a.yaml", &eps("a", &["10.1.0.7"]));
    t.write(
        "svc/b.yaml",
        &svc("b", "10.96.0.2").replace("port: 80,", "port: eighty,"),
    );
    let e = s
        .update(&paths(&t, &["eps/a.yaml", "svc/b.yaml"]))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("svc/b.yaml:1") && e.contains("spec.ports[0].port"),
        "{e}"
    );
    assert_eq!(
        endpoints_of(&s, "a"),
        ["10.1.0.1"],
        "the good file is not applied either"
    );
    // While the file is bad, another change is refused with the same error, as a whole read.
    t.write("eps/c.yaml", &eps("c", &["10.1.0.8"]));
    let again = s
        .update(&paths(&t, &["eps/c.yaml"]))
        .unwrap_err()
        .to_string();
    assert_eq!(again, e);
    assert_eq!(endpoints_of(&s, "c"), ["10.1.0.3"]);
    // Fixed: the refused files are read again with the fix.
    t.write("svc/b.yaml", &svc("b", "10.96.0.2"));
    let up = s.update(&paths(&t, &["svc/b.yaml"])).unwrap().unwrap();
    assert_eq!(up.read, 3);
    assert_eq!(endpoints_of(&s, "a"), ["10.1.0.7"]);
    assert_eq!(endpoints_of(&s, "c"), ["10.1.0.8"]);
    // A dangling link refuses the change (a walk names it) until it is gone.
    std::os::unix::fs::symlink(t.0.join("none.yaml"), t.0.join("dangling.yaml")).unwrap();
    let e = s
        .update(&paths(&t, &["dangling.yaml"]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("dangling.yaml"), "{e}");
    t.write("eps/a.yaml", &eps("a", &["10.1.0.6"]));
    assert!(s.update(&paths(&t, &["eps/a.yaml"])).is_err());
    std::fs::remove_file(t.0.join("dangling.yaml")).unwrap();
    let up = s.update(&paths(&t, &["dangling.yaml"])).unwrap().unwrap();
    assert_eq!(up.read, 1);
    assert_eq!(endpoints_of(&s, "a"), ["10.1.0.6"]);
    // A new file that does not parse, then deleted: nothing to read, but the refused change is
    // over: an empty update (the agent clears its error), once.
    t.write("broken.yaml", "kind: Service\nmetadata: {name: [\n");
    assert!(s.update(&paths(&t, &["broken.yaml"])).is_err());
    std::fs::remove_file(t.0.join("broken.yaml")).unwrap();
    let up = s
        .update(&paths(&t, &["broken.yaml"]))
        .unwrap()
        .expect("an update");
    assert_eq!((up.read, up.removed, up.whole), (0, 0, false));
    assert!(up.changes.services.is_empty());
    assert!(s.update(&paths(&t, &["broken.yaml"])).unwrap().is_none());
    // An unknown field rejects that object only, with a note naming file and field.
    t.write(
        "svc/c.yaml",
        &svc("c", "10.96.0.3").replace("targetPort", "targetPrt"),
    );
    let up = s.update(&paths(&t, &["svc/c.yaml"])).unwrap().unwrap();
    assert_eq!(up.changes.services, BTreeSet::from([key("c")]));
    assert!(!s.cluster().services.contains_key(&key("c")));
    let n = &s.cluster().notes;
    assert_eq!(n.len(), 1, "{n:?}");
    assert!(
        n[0].error && n[0].message.contains("spec.ports[0].targetPrt"),
        "{n:?}"
    );
}

#[test]
fn duplicates_across_files_resolve_as_a_whole_read() {
    let t = folder();
    t.write("svc/z.yaml", &svc("a", "10.96.9.9"));
    let mut s = FolderSource::read(&t.0).unwrap();
    let ip = |s: &FolderSource| s.cluster().services[&key("a")].cluster_ips[0].to_string();
    assert_eq!(ip(&s), "10.96.9.9", "the later file wins");
    assert!(s.cluster().notes[0].message.contains("defined again"));
    // Removing the later definition brings the earlier one back: the folder is read whole.
    std::fs::remove_file(t.0.join("svc/z.yaml")).unwrap();
    let up = s.update(&paths(&t, &["svc/z.yaml"])).unwrap().unwrap();
    assert!(up.whole);
    assert_eq!(ip(&s), "10.96.0.1");
    assert!(s.cluster().notes.is_empty());
    // A new file duplicating an object is found by a walk and read whole too.
    t.write("svc/y.yaml", &svc("b", "10.96.8.8"));
    let up = s.update(&paths(&t, &["svc/y.yaml"])).unwrap().unwrap();
    assert!(up.whole);
    assert_eq!(
        s.cluster().services[&key("b")].cluster_ips[0].to_string(),
        "10.96.8.8"
    );
}

#[test]
fn an_unchanged_node_put_back_is_no_node_change() {
    let t = folder();
    let mut s = FolderSource::read(&t.0).unwrap();
    t.write(
        "node.yaml",
        &format!("{NODE}---\n{}", svc("d", "10.96.0.4")),
    );
    let up = s.update(&paths(&t, &["node.yaml"])).unwrap().unwrap();
    assert!(up.changes.nodes.is_empty(), "{:?}", up.changes);
    assert_eq!(up.changes.services, BTreeSet::from([key("d")]));
}

/// A file's record keeps one object inline and several in a slice; either way it lists them in
/// the order given.
#[test]
fn a_record_lists_its_objects_in_order() {
    let ids = |n: usize| -> Vec<Id> {
        (0..n)
            .map(|i| (Which::Service, key(&format!("s{i}"))))
            .collect()
    };
    for n in [0, 1, 3] {
        let o = Objects::new(ids(n));
        assert_eq!(o.as_slice(), &ids(n)[..]);
        assert_eq!(matches!(o, Objects::One(_)), n == 1);
    }
}

/// The documents of a file: the Node, then each Service and its slice.
fn documents(slices: &[String]) -> Vec<String> {
    let mut docs = vec![NODE.to_string()];
    for (i, (n, e)) in ["a", "b", "c"].iter().zip(slices).enumerate() {
        docs.push(svc(n, &format!("10.96.0.{}", i + 1)));
        docs.push(e.clone());
    }
    docs
}

/// Documents as one file, each after a `---` line.
fn joined(docs: &[String]) -> String {
    docs.iter().map(|d| format!("---\n{d}")).collect()
}

fn one_file(slices: &[String]) -> String {
    joined(&documents(slices))
}

fn origin_of(s: &FolderSource, name: &str) -> String {
    s.cluster().services[&key(name)].origin.clone().unwrap()
}

#[test]
fn an_edit_in_a_file_of_documents_parses_that_document_only() {
    let t = TempDir::new("docs");
    let mut slices: Vec<String> = ["a", "b", "c"]
        .iter()
        .enumerate()
        .map(|(i, n)| eps(n, &[&format!("10.1.0.{}", i + 1)]))
        .collect();
    t.write("all.yaml", &one_file(&slices));
    let mut s = FolderSource::read(&t.0).unwrap();
    let file = t.0.join("all.yaml");
    // `---` on line 1, the Node on 2-5, each Service 4 lines and slice 6 after their `---`.
    assert_eq!(origin_of(&s, "c"), format!("{}:31", file.display()));
    // b's slice edited, and a document of comments put first: every document moves down two
    // lines; only b's slice is parsed again.
    slices[1] = eps("b", &["10.1.0.2", "10.1.0.9"]);
    t.write(
        "all.yaml",
        &format!("# two\n# lines\n{}", one_file(&slices)),
    );
    let up = s.update(&paths(&t, &["all.yaml"])).unwrap().unwrap();
    assert_eq!((up.read, up.documents, up.whole), (1, 2, false));
    assert_eq!(up.changes.services, BTreeSet::from([key("b")]));
    assert_eq!(endpoints_of(&s, "b"), ["10.1.0.2", "10.1.0.9"]);
    assert_eq!(endpoints_of(&s, "c"), ["10.1.0.3"]);
    // The documents kept say where they now are.
    assert_eq!(origin_of(&s, "c"), format!("{}:33", file.display()));
    // Documents reordered, nothing else: nothing is parsed, nothing changes.
    let mut docs = documents(&slices);
    docs.reverse();
    t.write("all.yaml", &joined(&docs));
    let up = s.update(&paths(&t, &["all.yaml"])).unwrap().unwrap();
    assert_eq!(up.documents, 0);
    assert!(up.changes.services.is_empty(), "{:?}", up.changes);
    assert!(up.changes.nodes.is_empty());
    assert_eq!(origin_of(&s, "c"), format!("{}:9", file.display()));
    assert_eq!(endpoints_of(&s, "b"), ["10.1.0.2", "10.1.0.9"]);
    // A document taken out: its object goes.
    docs.retain(|d| !d.contains("name: a-1"));
    t.write("all.yaml", &joined(&docs));
    let up = s.update(&paths(&t, &["all.yaml"])).unwrap().unwrap();
    assert_eq!((up.documents, up.changes.services.len()), (0, 1));
    assert!(endpoints_of(&s, "a").is_empty());
}

#[test]
fn a_bad_document_refuses_the_change_and_documents_move_between_files() {
    let t = TempDir::new("docs");
    let slices: Vec<String> = ["a", "b", "c"]
        .iter()
        .map(|n| eps(n, &["10.1.0.1"]))
        .collect();
    t.write("all.yaml", &one_file(&slices));
    let mut s = FolderSource::read(&t.0).unwrap();
    // An edit of a's slice and a bad port in c's, in one write: refused whole.
    let mut bad = slices.clone();
    bad[0] = eps("a", &["10.1.0.5"]);
    bad[2] = eps("c", &["10.1.0.1"]).replace("port: 8080", "port: eighty");
    t.write("all.yaml", &one_file(&bad));
    let e = s.update(&paths(&t, &["all.yaml"])).unwrap_err().to_string();
    let file = t.0.join("all.yaml");
    assert!(
        e.starts_with(&format!("{}:36: field `ports[0].port`", file.display())),
        "{e}"
    );
    assert!(
        e.ends_with("(in the document at line 35, EndpointSlice default/c-1)"),
        "{e}"
    );
    assert_eq!(endpoints_of(&s, "a"), ["10.1.0.1"]);
    // Fixed by moving c's slice to a file of its own in the same burst.
    let mut fixed = one_file(&bad[..2]);
    fixed.push_str(&format!("---\n{}", svc("c", "10.96.0.3")));
    t.write("all.yaml", &fixed);
    t.write("c.yaml", &eps("c", &["10.1.0.3"]));
    let up = s
        .update(&paths(&t, &["all.yaml", "c.yaml"]))
        .unwrap()
        .unwrap();
    assert!(!up.whole);
    assert_eq!(up.changes.services, BTreeSet::from([key("a"), key("c")]));
    assert_eq!(endpoints_of(&s, "a"), ["10.1.0.5"]);
    assert_eq!(endpoints_of(&s, "c"), ["10.1.0.3"]);
    // And back, in one burst: taken out of c.yaml, put into all.yaml.
    std::fs::remove_file(t.0.join("c.yaml")).unwrap();
    fixed.push_str(&format!("---\n{}", eps("c", &["10.1.0.4"])));
    t.write("all.yaml", &fixed);
    let up = s
        .update(&paths(&t, &["all.yaml", "c.yaml"]))
        .unwrap()
        .unwrap();
    assert_eq!((up.read, up.removed, up.documents), (1, 1, 1));
    assert_eq!(endpoints_of(&s, "c"), ["10.1.0.4"]);
}

#[test]
fn an_object_defined_twice_in_a_file_of_documents_reads_it_whole() {
    let t = TempDir::new("docs");
    let slices: Vec<String> = ["a", "b", "c"]
        .iter()
        .map(|n| eps(n, &["10.1.0.1"]))
        .collect();
    t.write("all.yaml", &one_file(&slices));
    let mut s = FolderSource::read(&t.0).unwrap();
    // A second definition of b's slice after the first: the later one wins.
    let two = format!("{}---\n{}", one_file(&slices), eps("b", &["10.1.0.8"]));
    t.write("all.yaml", &two);
    let up = s.update(&paths(&t, &["all.yaml"])).unwrap().unwrap();
    assert_eq!(up.documents, 8, "the whole file parsed");
    assert_eq!(endpoints_of(&s, "b"), ["10.1.0.8"]);
    assert!(
        s.notes()[0].message.contains("defined again"),
        "{:?}",
        s.notes()
    );
    // The first definition edited: the file is parsed whole again (its record has no
    // documents), the later one still wins.
    let two = two.replacen("10.1.0.1", "10.1.0.2", 2);
    t.write("all.yaml", &two);
    let up = s.update(&paths(&t, &["all.yaml"])).unwrap().unwrap();
    assert_eq!(up.documents, 8);
    assert_eq!(endpoints_of(&s, "a"), ["10.1.0.2"]);
    assert_eq!(endpoints_of(&s, "b"), ["10.1.0.8"]);
    // The duplicate gone: per document again.
    t.write("all.yaml", &one_file(&slices));
    s.update(&paths(&t, &["all.yaml"])).unwrap().unwrap();
    assert!(s.notes().is_empty());
    t.write(
        "all.yaml",
        &one_file(&slices).replacen("10.1.0.1", "10.1.0.3", 1),
    );
    let up = s.update(&paths(&t, &["all.yaml"])).unwrap().unwrap();
    assert_eq!(up.documents, 1);
    assert_eq!(endpoints_of(&s, "a"), ["10.1.0.3"]);
}

/// Services s0..s(n-1), each followed by its slice with address `addr(i)`, in one file: the
/// Service's document on lines 12i+1.., the slice's on 12i+6.. (its object from 12i+7).
fn big(n: usize, addr: impl Fn(usize) -> String) -> String {
    (0..n)
        .map(|i| {
            let name = format!("s{i}");
            let ip = format!("10.96.{}.{}", i / 250, i % 250 + 1);
            format!("---\n{}---\n{}", svc(&name, &ip), eps(&name, &[&addr(i)]))
        })
        .collect()
}

fn addr(i: usize) -> String {
    format!("10.1.{}.{}", i / 250, i % 250 + 1)
}

/// What the store holds of each Service: its origin, its slices' origins and endpoints.
type Summary = Vec<(String, Option<String>, Vec<(Option<String>, Vec<String>)>)>;

fn summary(s: &FolderSource) -> Summary {
    let c = s.cluster();
    (c.services.iter())
        .map(|(k, svc)| {
            let mut slices: Vec<_> = (c.slices_of(k))
                .map(|sl| {
                    let eps = sl.endpoints.iter().map(|e| e.address.to_string());
                    (sl.origin.clone(), eps.collect())
                })
                .collect();
            slices.sort();
            (k.to_string(), svc.origin.clone(), slices)
        })
        .collect()
}

/// A file of more documents than a round of the first read: every object goes in; edits keep
/// the record in place (an address changed, lines added, an object taken out), one that adds
/// a document matches the others by digest; after each the store is what a whole read gives.
#[test]
fn a_file_of_more_documents_than_a_round_is_read_and_edited_in_place() {
    let t = TempDir::new("big");
    let n = files::DOC_ROUND + 90;
    let mut text = big(n, addr);
    t.write("all.yaml", &text);
    let mut s = FolderSource::read(&t.0).unwrap();
    let whole = |t: &TempDir| summary(&FolderSource::read(&t.0).unwrap());
    assert_eq!(s.cluster().services.len(), n);
    assert_eq!(endpoints_of(&s, &format!("s{}", n - 1)), [addr(n - 1)]);
    let file = t.0.join("all.yaml");
    assert_eq!(s.files.get(&file).unwrap().docs().len(), 2 * n);
    let edit = |s: &mut FolderSource, text: &str| {
        t.write("all.yaml", text);
        let up = s.update(&paths(&t, &["all.yaml"])).unwrap().unwrap();
        assert!(!up.whole);
        assert_eq!(summary(s), whole(&t));
        assert!(matches!(
            s.files.get(&file).unwrap().objects,
            Objects::Docs(..)
        ));
        up
    };
    // One address: that document parsed.
    text = text.replacen(&format!("[{}]", addr(7)), "[10.2.0.7]", 1);
    let up = edit(&mut s, &text);
    assert_eq!(up.documents, 1);
    assert_eq!(up.changes.services, BTreeSet::from([key("s7")]));
    assert_eq!(endpoints_of(&s, "s7"), ["10.2.0.7"]);
    // s3's endpoints over two lines: the documents after it move down a line.
    let flow = format!("endpoints: [{{addresses: [{}]}}]\n", addr(3));
    text = text.replacen(&flow, "endpoints:\n- addresses: [10.2.0.3]\n", 1);
    let up = edit(&mut s, &text);
    assert_eq!((up.documents, up.changes.services.len()), (1, 1));
    let last = format!("s{}", n - 1);
    assert_eq!(
        origin_of(&s, &last),
        format!("{}:{}", file.display(), 12 * (n - 1) + 3)
    );
    // s5's slice made a comment (one object fewer) and s9's address changed, in one write.
    let slice5 = eps("s5", &[&addr(5)]);
    text = text.replacen(&slice5, "# none\n", 1);
    text = text.replacen(&format!("[{}]", addr(9)), "[10.2.0.9]", 1);
    let up = edit(&mut s, &text);
    assert_eq!(up.documents, 2);
    assert_eq!(up.changes.services, BTreeSet::from([key("s5"), key("s9")]));
    assert!(endpoints_of(&s, "s5").is_empty());
    // A document added: the others found by digest.
    text.push_str(&format!("---\n{}", svc("extra", "10.96.100.1")));
    let up = edit(&mut s, &text);
    assert_eq!(up.documents, 1);
    assert_eq!(up.changes.services, BTreeSet::from([key("extra")]));
    // And in place again.
    text = text.replacen("[10.2.0.9]", "[10.2.0.10]", 1);
    assert_eq!(edit(&mut s, &text).documents, 1);
    assert_eq!(endpoints_of(&s, "s9"), ["10.2.0.10"]);
}

/// A bad document late in a file larger than a round: the first read fails naming the file,
/// the line, the document and the object; a change with it (a few documents, or more than a
/// round of them) is refused whole and nothing of it applied.
#[test]
fn a_bad_late_document_fails_the_read_or_refuses_the_change_whole() {
    let t = TempDir::new("big");
    let n = files::DOC_ROUND + 90;
    let good = big(n, addr);
    let last = eps(&format!("s{}", n - 1), &[&addr(n - 1)]);
    let bad_last = last.replace("port: 8080", "port: eighty");
    let bad = good.replacen(&last, &bad_last, 1);
    let file = t.0.join("all.yaml");
    let at = 12 * (n - 1);
    let check = |e: String| {
        let head = format!("{}:{}: field `ports[0].port`", file.display(), at + 7);
        assert!(e.starts_with(&head), "{e}");
        let tail = format!(
            "(in the document at line {}, EndpointSlice default/s{}-1)",
            at + 6,
            n - 1
        );
        assert!(e.ends_with(&tail), "{e}");
    };
    t.write("all.yaml", &bad);
    check(FolderSource::read(&t.0).err().expect("refused").to_string());
    t.write("all.yaml", &good);
    let mut s = FolderSource::read(&t.0).unwrap();
    let before = summary(&s);
    // s0 edited with the bad document: two documents parsed, refused.
    let few = bad.replacen(&format!("[{}]", addr(0)), "[10.2.0.1]", 1);
    t.write("all.yaml", &few);
    check(s.update(&paths(&t, &["all.yaml"])).unwrap_err().to_string());
    assert_eq!(summary(&s), before);
    // Every address changed and the bad document: parsed by rounds, refused.
    let many = big(n, |i| format!("10.3.{}.{}", i / 250, i % 250 + 1)).replacen(
        &eps(
            &format!("s{}", n - 1),
            &[&format!("10.3.{}.{}", (n - 1) / 250, (n - 1) % 250 + 1)],
        ),
        &bad_last,
        1,
    );
    assert_ne!(
        many,
        big(n, |i| format!("10.3.{}.{}", i / 250, i % 250 + 1))
    );
    t.write("all.yaml", &many);
    check(s.update(&Hint::Rescan).unwrap_err().to_string());
    assert_eq!(summary(&s), before);
    // Fixed: all of it applied.
    t.write("all.yaml", &many.replace("port: eighty", "port: 8080"));
    let up = s.update(&paths(&t, &["all.yaml"])).unwrap().unwrap();
    // The slices but the last (back to its text as first read).
    assert_eq!(up.documents, n - 1);
    assert_eq!(summary(&s), summary(&FolderSource::read(&t.0).unwrap()));
    assert_eq!(endpoints_of(&s, "s0"), ["10.3.0.1"]);
}
