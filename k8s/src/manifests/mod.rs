//! The manifests-folder reader, the one used by the node agent (`--manifests`), the offline
//! `service list` and the offline `policy` commands (which hand the objects to the policy crate).
//!
//! Rules (docs/kube-proxy-replacement.md says the same for users):
//! - **Files**: every `*.yaml`, `*.yml` and `*.json` under the folder, in subfolders at any depth.
//!   Other names (`*.yaml~`, `*.tmp`, `notes.txt`) are not read.
//! - **Hidden entries** (a name starting with `.`: editor swap files, `.git`, the `..data` of a
//!   mounted ConfigMap) are skipped, files and folders alike. The folder given may itself be hidden.
//! - **Symlinks** to files and to folders are followed. Each folder and each file (by device and
//!   inode) is taken once, at its first path in the order below: a link back to a parent ends
//!   there, and a file reached through a link and directly is read once. A dangling link with a
//!   manifest name is an error; only regular files are read.
//! - **Order**: path order, component by component (`a/x.yaml` before `a.yaml` before `b.yaml`);
//!   a folder's entries in byte order of their names.
//! - **Documents**: a `*.json` file is one JSON value; any other file is a YAML stream of documents
//!   (`---`), parsed with [`yaml_options`]. Empty and null documents are skipped. Every document
//!   must be a mapping with string `apiVersion` and `kind`; a `kind: List` (any apiVersion) stands
//!   for its `items`, each of which must be such a mapping (no List inside a List).
//! - **Origins**: each object comes with its file and the line where it starts (for an item of a
//!   List in YAML, the item's own line; in JSON, the List's), see [`Origin`].
//! - **Duplicates**: the reader keeps every object, in order. Two objects with the same kind,
//!   namespace and name are resolved by the consumer as they are today: [`crate::Cluster::from_manifests`]
//!   keeps the later one with a note; the policy engine's upserts keep the later one silently.
//!
//! The typed view of the node agent (Services, EndpointSlices, Nodes, Pods) is [`Manifests`];
//! other kinds are ignored there. Errors name the file, the line and the field. A field its type
//! does not know (a typo) rejects that object, as `kubectl --validate=strict` would: it is kept in
//! [`Manifests::rejected`] (file, kind, namespace/name, field paths) and the rest is used.
mod folder;
mod parse;
pub mod strict;

pub use folder::{files, is_manifest_name};
pub use parse::{parse_text, yaml_options};

use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;
use std::fmt;
use std::path::{Path, PathBuf};

/// Where an object was read from.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Origin {
    pub file: PathBuf,
    /// 1-based line where the object starts.
    pub line: u64,
    /// 0-based index inside a `kind: List` document.
    pub item: Option<usize>,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)?;
        if let Some(i) = self.item {
            write!(f, " items[{i}]")?;
        }
        Ok(())
    }
}

/// One object of a manifests folder: a JSON mapping with string `apiVersion` and `kind`.
#[derive(Clone, Debug, PartialEq)]
pub struct Object {
    pub origin: Origin,
    pub value: serde_json::Value,
}

impl Object {
    pub fn kind(&self) -> &str {
        self.value["kind"].as_str().unwrap_or_default()
    }

    pub fn api_version(&self) -> &str {
        self.value["apiVersion"].as_str().unwrap_or_default()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}:{line}:{column}: {message}", file.display())]
    Syntax {
        file: PathBuf,
        line: u64,
        column: u64,
        message: String,
    },
    #[error("{origin}: field `{field}`: {message}")]
    Field {
        origin: Origin,
        field: String,
        message: String,
    },
    /// An error in one document of a file of several (the folder source parses them one by one).
    #[error("{source} (in the document at line {line}{})", object.as_deref().map(|o| format!(", {o}")).unwrap_or_default())]
    Document {
        /// 1-based line where the document starts.
        line: u64,
        /// `Kind namespace/name` when the document parsed.
        object: Option<String>,
        source: Box<SourceError>,
    },
}

/// Every object of the manifest files under `dir` (see the rules above), in order.
pub fn read_folder(dir: &Path) -> Result<Vec<Object>, SourceError> {
    let mut out = Vec::new();
    for file in files(dir)? {
        let text = std::fs::read_to_string(&file).map_err(|source| SourceError::Io {
            path: file.clone(),
            source,
        })?;
        out.extend(parse_text(&file, &text)?);
    }
    Ok(out)
}

/// The objects of a manifests folder the node agent uses, each with where it came from.
#[derive(Debug, Default)]
pub struct Manifests {
    pub services: Vec<(Origin, Service)>,
    pub endpoint_slices: Vec<(Origin, EndpointSlice)>,
    pub nodes: Vec<(Origin, Node)>,
    pub pods: Vec<(Origin, Pod)>,
    /// Objects left out because of fields their type does not know, in input order.
    pub rejected: Vec<Rejected>,
}

/// An object rejected by strict field validation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejected {
    pub origin: Origin,
    pub kind: String,
    /// `namespace/name`, or `name` for cluster-scoped objects.
    pub name: String,
    /// The unknown fields, as paths (`spec.ports[0].prot`).
    pub fields: Vec<String>,
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let fields: Vec<String> = self.fields.iter().map(|p| format!("`{p}`")).collect();
        write!(
            f,
            "unknown field{} {} (strict validation, as kubectl --validate=strict): object rejected",
            if fields.len() == 1 { "" } else { "s" },
            fields.join(", ")
        )
    }
}

impl Manifests {
    /// Keeps Services (v1), EndpointSlices (discovery.k8s.io/v1), Nodes (v1) and Pods (v1);
    /// other kinds and versions are not ours.
    pub fn add(&mut self, o: Object) -> Result<(), SourceError> {
        match (o.api_version(), o.kind()) {
            ("v1", "Service") => push(&mut self.services, &mut self.rejected, o),
            ("discovery.k8s.io/v1", "EndpointSlice") => {
                push(&mut self.endpoint_slices, &mut self.rejected, o)
            }
            ("v1", "Node") => push(&mut self.nodes, &mut self.rejected, o),
            ("v1", "Pod") => push(&mut self.pods, &mut self.rejected, o),
            _ => Ok(()),
        }
    }

    pub fn from_objects(objects: Vec<Object>) -> Result<Manifests, SourceError> {
        let mut m = Manifests::default();
        for o in objects {
            m.add(o)?;
        }
        Ok(m)
    }
}

/// Reads every manifest file under `dir` into the node agent's typed view.
pub fn read_dir(dir: &Path) -> Result<Manifests, SourceError> {
    Manifests::from_objects(read_folder(dir)?)
}

/// Parses one file's text (YAML, possibly multi-document, or JSON) into `out`.
pub fn parse_file(file: &Path, text: &str, out: &mut Manifests) -> Result<(), SourceError> {
    for o in parse_text(file, text)? {
        out.add(o)?;
    }
    Ok(())
}

/// Adds the typed object to `list`, or to `rejected` when it has fields its type does not know.
fn push<T: DeserializeOwned + Serialize>(
    list: &mut Vec<(Origin, T)>,
    rejected: &mut Vec<Rejected>,
    o: Object,
) -> Result<(), SourceError> {
    let kind = o.kind().to_string();
    let meta = &o.value["metadata"];
    let name = match (meta["namespace"].as_str(), meta["name"].as_str()) {
        (Some(ns), Some(n)) => format!("{ns}/{n}"),
        (None, Some(n)) => n.to_string(),
        (_, None) => "(no name)".to_string(),
    };
    let input = o.value.clone();
    let (origin, t) = typed::<T>(o)?;
    let back = serde_json::to_value(&t).unwrap_or(Value::Null);
    let fields = strict::unknown_fields(&input, &back);
    if fields.is_empty() {
        list.push((origin, t));
    } else {
        rejected.push(Rejected {
            origin,
            kind,
            name,
            fields,
        });
    }
    Ok(())
}

fn typed<T: DeserializeOwned>(o: Object) -> Result<(Origin, T), SourceError> {
    match serde_path_to_error::deserialize::<_, T>(o.value) {
        Ok(t) => Ok((o.origin, t)),
        Err(e) => Err(SourceError::Field {
            origin: o.origin,
            field: e.path().to_string(),
            message: e.into_inner().to_string(),
        }),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::path::PathBuf;

    /// A fresh folder under the system temp folder, removed on drop.
    pub(crate) struct TempDir(pub PathBuf);

    impl TempDir {
        pub(crate) fn new(tag: &str) -> TempDir {
            use std::sync::atomic::{AtomicUsize, Ordering};
            static N: AtomicUsize = AtomicUsize::new(0);
            let n = N.fetch_add(1, Ordering::Relaxed);
            let p =
                std::env::temp_dir().join(format!("oxilium-k8s-{tag}-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }

        pub(crate) fn write(&self, rel: &str, text: &str) {
            let p = self.0.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn parse(name: &str, text: &str) -> Result<Manifests, SourceError> {
        let mut m = Manifests::default();
        parse_file(Path::new(name), text, &mut m).map(|_| m)
    }

    #[test]
    fn multi_document_and_list_with_lines() {
        let m = parse(
            "a.yaml",
            "apiVersion: v1\nkind: Service\nmetadata: {name: a}\n---\n\
             apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n---\n---\n\
             apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Node\n  metadata: {name: n}\n\
             - apiVersion: v1\n  kind: Pod\n  metadata: {name: p}\n---\n",
        )
        .unwrap();
        assert_eq!(m.services.len(), 1);
        assert_eq!(m.services[0].0.to_string(), "a.yaml:1");
        assert_eq!(m.nodes.len(), 1);
        assert_eq!(m.nodes[0].0.line, 13);
        assert_eq!(m.pods.len(), 1);
        assert_eq!(m.pods[0].0.to_string(), "a.yaml:16 items[1]");
    }

    #[test]
    fn json_file() {
        let m = parse(
            "a.json",
            r#"{"apiVersion":"discovery.k8s.io/v1","kind":"EndpointSlice","metadata":{"name":"s"},"addressType":"IPv4","endpoints":[]}"#,
        )
        .unwrap();
        assert_eq!(m.endpoint_slices.len(), 1);
        let o = parse_text(
            Path::new("l.json"),
            "\n\n{\"apiVersion\": \"v1\", \"kind\": \"List\", \"items\": [\n\
             {\"apiVersion\": \"v1\", \"kind\": \"Node\"}]}",
        )
        .unwrap();
        assert_eq!(o[0].origin.to_string(), "l.json:3 items[0]");
        assert_eq!(o[0].kind(), "Node");
    }

    #[test]
    fn field_errors_name_file_line_and_field() {
        let e = parse(
            "svc.yaml",
            "apiVersion: v1\nkind: Node\nmetadata: {name: n}\n---\n\
             apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec:\n  ports:\n  - port: eighty\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("svc.yaml:5: "), "{e}");
        assert!(e.contains("spec.ports[0].port"), "{e}");
    }

    #[test]
    fn missing_kind_and_syntax_errors() {
        let e = parse("x.yaml", "apiVersion: v1\nmetadata: {}\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("x.yaml:1: ") && e.contains("`kind`"), "{e}");
        let e = parse("y.yaml", "a: 1\n---\nb: [\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("y.yaml:"), "{e}");
        let e = parse("z.json", "{").unwrap_err().to_string();
        assert!(e.starts_with("z.json:1:1: EOF"), "{e}");
        let e = parse("s.yaml", "- a\n- b\n").unwrap_err().to_string();
        assert!(e.contains("must be a mapping"), "{e}");
        let e = parse("l.yaml", "apiVersion: v1\nkind: List\nitems: [3]\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("l.yaml:3 items[0]") && e.contains("mapping"),
            "{e}"
        );
    }

    #[test]
    fn yes_stays_a_string_and_null_documents_are_skipped() {
        let o = parse_text(
            Path::new("p.yaml"),
            "~\n---\napiVersion: v1\nkind: Pod\nmetadata:\n  labels: {a: yes, b: off, c: true}\n",
        )
        .unwrap();
        assert_eq!(o.len(), 1);
        assert_eq!(o[0].origin.line, 3);
        let labels = &o[0].value["metadata"]["labels"];
        assert_eq!(labels["a"], "yes");
        assert_eq!(labels["b"], "off");
        assert_eq!(labels["c"], true);
    }

    #[test]
    fn alias_bombs_and_foreign_tags_are_refused_with_file_and_line() {
        let mut bomb = String::from("apiVersion: v1\nkind: ConfigMap\n");
        bomb += "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n";
        for i in 1..=9 {
            let p = format!("*a{}", i - 1);
            bomb += &format!("a{i}: &a{i} [{}]\n", [p.as_str(); 10].join(", "));
        }
        let t = std::time::Instant::now();
        let e = parse_text(Path::new("bomb.yaml"), &bomb)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("bomb.yaml:7:") && e.contains("replayed"),
            "{e}"
        );
        assert!(t.elapsed() < std::time::Duration::from_secs(5));
        let e = parse_text(
            Path::new("t.yaml"),
            "apiVersion: v1\nkind: Pod\nmetadata: !Ref x\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("t.yaml:3:"), "{e}");
        // A few aliases, as people write them, are fine.
        let o = parse_text(
            Path::new("ok.yaml"),
            "apiVersion: v1\nkind: Pod\nmetadata: {labels: &l {a: b}, annotations: *l}\n",
        )
        .unwrap();
        assert_eq!(o[0].value["metadata"]["annotations"]["a"], "b");
    }

    #[test]
    fn a_folder_reads_in_order_with_origins() {
        let t = TempDir::new("read");
        t.write(
            "b.yaml",
            "apiVersion: v1\nkind: Node\nmetadata: {name: b}\n",
        );
        t.write(
            "a/deep/c.yaml",
            "---\napiVersion: v1\nkind: Node\nmetadata: {name: c}\n",
        );
        t.write(".hidden.yaml", "not: [yaml");
        t.write("notes.txt", "not: [yaml");
        let objs = read_folder(&t.0).unwrap();
        let got: Vec<String> = objs.iter().map(|o| o.origin.to_string()).collect();
        let root = t.0.display();
        assert_eq!(
            got,
            [
                format!("{root}/a/deep/c.yaml:2"),
                format!("{root}/b.yaml:1")
            ]
        );
        let m = read_dir(&t.0).unwrap();
        assert_eq!(m.nodes.len(), 2);
    }
}
