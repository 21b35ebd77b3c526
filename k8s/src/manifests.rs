//! The manifests-folder source: every *.yaml, *.yml and *.json file under a folder (recursively,
//! hidden entries skipped, in path order), multi-document YAML and `kind: List` included. Keeps
//! Services (v1), EndpointSlices (discovery.k8s.io/v1), Nodes (v1) and Pods (v1); other kinds are
//! ignored. Errors name the file, the document and the field.
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde::de::DeserializeOwned;
use std::fmt;
use std::path::{Path, PathBuf};

/// Where an object was read from.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Origin {
    pub file: PathBuf,
    /// 1-based document number in the file.
    pub document: usize,
    /// 0-based index inside a `kind: List` document.
    pub item: Option<usize>,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} document {}", self.file.display(), self.document)?;
        if let Some(i) = self.item {
            write!(f, " items[{i}]")?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} document {document}: {message}", file.display())]
    Syntax {
        file: PathBuf,
        document: usize,
        message: String,
    },
    #[error("{origin}: field `{field}`: {message}")]
    Field {
        origin: Origin,
        field: String,
        message: String,
    },
}

/// The objects of a manifests folder, each with where it came from.
#[derive(Debug, Default)]
pub struct Manifests {
    pub services: Vec<(Origin, Service)>,
    pub endpoint_slices: Vec<(Origin, EndpointSlice)>,
    pub nodes: Vec<(Origin, Node)>,
    pub pods: Vec<(Origin, Pod)>,
}

/// Reads every manifest file under `dir`.
pub fn read_dir(dir: &Path) -> Result<Manifests, SourceError> {
    let mut files = Vec::new();
    collect_files(dir, &mut files)?;
    files.sort();
    let mut out = Manifests::default();
    for file in files {
        let text = std::fs::read_to_string(&file).map_err(|source| SourceError::Io {
            path: file.clone(),
            source,
        })?;
        parse_file(&file, &text, &mut out)?;
    }
    Ok(out)
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), SourceError> {
    let io = |source| SourceError::Io {
        path: dir.to_path_buf(),
        source,
    };
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let path = entry.path();
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        if entry.file_type().map_err(io)?.is_dir() {
            collect_files(&path, out)?;
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml" | "json")
        ) {
            out.push(path);
        }
    }
    Ok(())
}

/// Parses one file's text (YAML, possibly multi-document, or JSON) into `out`.
pub fn parse_file(file: &Path, text: &str, out: &mut Manifests) -> Result<(), SourceError> {
    let is_json = file.extension().and_then(|e| e.to_str()) == Some("json");
    let docs: Vec<serde_json::Value> = if is_json {
        let v = serde_json::from_str(text).map_err(|e| SourceError::Syntax {
            file: file.to_path_buf(),
            document: 1,
            message: e.to_string(),
        })?;
        vec![v]
    } else {
        let mut docs = Vec::new();
        for (i, de) in serde_yaml::Deserializer::from_str(text).enumerate() {
            let syntax = |message: String| SourceError::Syntax {
                file: file.to_path_buf(),
                document: i + 1,
                message,
            };
            let y = <serde_yaml::Value as serde::Deserialize>::deserialize(de)
                .map_err(|e| syntax(e.to_string()))?;
            // Through serde_json::Value: one typed path for YAML and JSON (keys must be strings).
            let v = serde_json::to_value(&y).map_err(|e| syntax(e.to_string()))?;
            docs.push(v);
        }
        docs
    };
    for (i, doc) in docs.into_iter().enumerate() {
        let origin = Origin {
            file: file.to_path_buf(),
            document: i + 1,
            item: None,
        };
        add_document(origin, doc, out)?;
    }
    Ok(())
}

fn field_error(origin: &Origin, field: &str, message: impl Into<String>) -> SourceError {
    SourceError::Field {
        origin: origin.clone(),
        field: field.to_string(),
        message: message.into(),
    }
}

fn add_document(
    origin: Origin,
    doc: serde_json::Value,
    out: &mut Manifests,
) -> Result<(), SourceError> {
    let obj = match &doc {
        serde_json::Value::Null => return Ok(()), // an empty document (`---` at the end)
        serde_json::Value::Object(o) => o,
        _ => return Err(field_error(&origin, ".", "a document must be a mapping")),
    };
    let text = |k: &str| -> Result<&str, SourceError> {
        match obj.get(k) {
            Some(serde_json::Value::String(s)) => Ok(s.as_str()),
            Some(_) => Err(field_error(&origin, k, "must be a string")),
            None => Err(field_error(&origin, k, "missing")),
        }
    };
    let kind = text("kind")?;
    let api_version = text("apiVersion")?;
    match (api_version, kind) {
        (_, "List") => {
            if origin.item.is_some() {
                return Err(field_error(&origin, "kind", "a List inside a List"));
            }
            let items = match obj.get("items") {
                None | Some(serde_json::Value::Null) => return Ok(()),
                Some(serde_json::Value::Array(a)) => a.clone(),
                Some(_) => return Err(field_error(&origin, "items", "must be a list")),
            };
            for (i, item) in items.into_iter().enumerate() {
                let o = Origin {
                    item: Some(i),
                    ..origin.clone()
                };
                add_document(o, item, out)?;
            }
        }
        ("v1", "Service") => out.services.push(typed(&origin, doc)?),
        ("discovery.k8s.io/v1", "EndpointSlice") => out.endpoint_slices.push(typed(&origin, doc)?),
        ("v1", "Node") => out.nodes.push(typed(&origin, doc)?),
        ("v1", "Pod") => out.pods.push(typed(&origin, doc)?),
        _ => {} // other kinds and versions are not ours
    }
    Ok(())
}

fn typed<T: DeserializeOwned>(
    origin: &Origin,
    doc: serde_json::Value,
) -> Result<(Origin, T), SourceError> {
    match serde_path_to_error::deserialize::<_, T>(doc) {
        Ok(t) => Ok((origin.clone(), t)),
        Err(e) => {
            let field = e.path().to_string();
            let message = e.into_inner().to_string();
            Err(field_error(origin, &field, message))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(name: &str, text: &str) -> Result<Manifests, SourceError> {
        let mut m = Manifests::default();
        parse_file(Path::new(name), text, &mut m).map(|_| m)
    }

    #[test]
    fn multi_document_and_list() {
        let m = parse(
            "a.yaml",
            "apiVersion: v1\nkind: Service\nmetadata: {name: a}\n---\n\
             apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n---\n\
             apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Node\n  metadata: {name: n}\n\
             - apiVersion: v1\n  kind: Pod\n  metadata: {name: p}\n---\n",
        )
        .unwrap();
        assert_eq!(m.services.len(), 1);
        assert_eq!(m.nodes.len(), 1);
        assert_eq!(m.pods.len(), 1);
        assert_eq!(m.pods[0].0.document, 3);
        assert_eq!(m.pods[0].0.item, Some(1));
    }

    #[test]
    fn json_file() {
        let m = parse(
            "a.json",
            r#"{"apiVersion":"discovery.k8s.io/v1","kind":"EndpointSlice","metadata":{"name":"s"},"addressType":"IPv4","endpoints":[]}"#,
        )
        .unwrap();
        assert_eq!(m.endpoint_slices.len(), 1);
    }

    #[test]
    fn field_errors_name_file_document_and_field() {
        let e = parse(
            "svc.yaml",
            "apiVersion: v1\nkind: Node\nmetadata: {name: n}\n---\n\
             apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec:\n  ports:\n  - port: eighty\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("svc.yaml document 2"), "{e}");
        assert!(e.contains("spec.ports[0].port"), "{e}");
    }

    #[test]
    fn missing_kind_and_syntax_errors() {
        let e = parse("x.yaml", "apiVersion: v1\nmetadata: {}\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("x.yaml document 1") && e.contains("`kind`"),
            "{e}"
        );
        let e = parse("y.yaml", "a: 1\n---\nb: [\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("y.yaml document 2"), "{e}");
        let e = parse("z.json", "{").unwrap_err().to_string();
        assert!(e.starts_with("z.json document 1"), "{e}");
    }
}
