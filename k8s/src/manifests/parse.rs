//! One manifest file's text → its objects: YAML (multi-document, through serde-saphyr) or JSON,
//! `kind: List` flattened, each object with its file and line.
use super::{Object, Origin, SourceError};
use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use serde_saphyr::Spanned;
use std::fmt;
use std::path::Path;

/// How manifests are parsed. Label values like `yes`, `on` or `off` stay strings (only `true` and
/// `false` are booleans, as in YAML 1.2 and the Kubernetes API); tags other than YAML's own are
/// refused; and an alias bomb (a few lines of anchors that expand into billions of nodes) stops
/// at the alias replay limit with an error naming the file and line. The budget is per file and
/// roomy enough for generated files with tens of thousands of objects.
pub fn yaml_options() -> serde_saphyr::Options {
    serde_saphyr::options! {
        strict_booleans: true,
        reject_unsupported_tags: true,
        with_snippet: false,
        alias_limits: serde_saphyr::alias_limits! { max_total_replayed_events: 100_000 },
        budget: serde_saphyr::budget! {
            max_documents: 1_000_000,
            max_nodes: 10_000_000,
            max_events: 40_000_000,
            max_aliases: 100_000,
            max_anchors: 100_000,
        },
    }
}

/// The objects of one file's text: `*.json` is one JSON value, anything else a YAML stream.
pub fn parse_text(file: &Path, text: &str) -> Result<Vec<Object>, SourceError> {
    let docs = if file.extension().and_then(|e| e.to_str()) == Some("json") {
        json_document(file, text)?
    } else {
        yaml_documents(file, text)?
    };
    let mut out = Vec::new();
    for (line, doc) in docs {
        let origin = Origin {
            file: file.to_path_buf(),
            line,
            item: None,
        };
        match doc {
            Doc::Null => {} // a document holding only `~` or `null`
            Doc::NotMapping => return Err(field(&origin, ".", "a document must be a mapping")),
            Doc::Mapping(value, item_lines) => add(&mut out, origin, value, &item_lines)?,
        }
    }
    Ok(out)
}

/// Checks one object (a mapping with string `apiVersion` and `kind`) and adds it, or the items
/// of a `kind: List` (any apiVersion, as kubectl writes `v1`).
fn add(
    out: &mut Vec<Object>,
    origin: Origin,
    value: Map<String, Value>,
    item_lines: &[u64],
) -> Result<(), SourceError> {
    for k in ["kind", "apiVersion"] {
        match value.get(k) {
            Some(Value::String(_)) => {}
            Some(_) => return Err(field(&origin, k, "must be a string")),
            None => return Err(field(&origin, k, "missing")),
        }
    }
    if value.get("kind").and_then(Value::as_str) != Some("List") {
        out.push(Object {
            origin,
            value: Value::Object(value),
        });
        return Ok(());
    }
    if origin.item.is_some() {
        return Err(field(&origin, "kind", "a List inside a List"));
    }
    let items = match value.get("items") {
        None | Some(Value::Null) => return Ok(()),
        Some(Value::Array(a)) => a,
        Some(_) => return Err(field(&origin, "items", "must be a list")),
    };
    for (i, item) in items.iter().enumerate() {
        let o = Origin {
            line: item_lines.get(i).copied().unwrap_or(origin.line),
            item: Some(i),
            ..origin.clone()
        };
        match item {
            Value::Object(m) => add(out, o, m.clone(), &[])?,
            _ => return Err(field(&o, ".", "a List item must be a mapping")),
        }
    }
    Ok(())
}

fn field(origin: &Origin, field: &str, message: &str) -> SourceError {
    SourceError::Field {
        origin: origin.clone(),
        field: field.to_string(),
        message: message.to_string(),
    }
}

fn yaml_documents(file: &Path, text: &str) -> Result<Vec<(u64, Doc)>, SourceError> {
    let docs: Vec<Spanned<Doc>> = serde_saphyr::from_multiple_with_options(text, yaml_options())
        .map_err(|e| {
            let (line, column) = e.location().map_or((0, 0), |l| (l.line(), l.column()));
            let message = serde_saphyr::MessageFormatter::format_message(
                &serde_saphyr::UserMessageFormatter,
                &e,
            );
            SourceError::Syntax {
                file: file.to_path_buf(),
                line,
                column,
                message: message
                    .chars()
                    .map(|c| if c.is_control() { ' ' } else { c })
                    .collect(),
            }
        })?;
    Ok(docs
        .into_iter()
        .map(|d| (d.referenced.line(), d.value))
        .collect())
}

fn json_document(file: &Path, text: &str) -> Result<Vec<(u64, Doc)>, SourceError> {
    let v: Value = serde_json::from_str(text).map_err(|e| {
        let message = e.to_string();
        let suffix = format!(" at line {} column {}", e.line(), e.column());
        SourceError::Syntax {
            file: file.to_path_buf(),
            line: e.line() as u64,
            column: e.column() as u64,
            message: message
                .strip_suffix(&suffix)
                .unwrap_or(&message)
                .to_string(),
        }
    })?;
    // The line where the value starts; the items of a List have no line of their own here.
    let lead = text.len() - text.trim_start().len();
    let line = 1 + text[..lead].matches('\n').count() as u64;
    let doc = match v {
        Value::Null => Doc::Null,
        Value::Object(m) => Doc::Mapping(m, Vec::new()),
        _ => Doc::NotMapping,
    };
    Ok(vec![(line, doc)])
}

/// One YAML document: a mapping (with the line of each element of a top-level `items`
/// sequence, for the objects of a `kind: List`), something else, or null.
enum Doc {
    Null,
    NotMapping,
    Mapping(Map<String, Value>, Vec<u64>),
}

impl<'de> Deserialize<'de> for Doc {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Doc, D::Error> {
        d.deserialize_any(DocVisitor)
    }
}

struct DocVisitor;

impl<'de> Visitor<'de> for DocVisitor {
    type Value = Doc;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a YAML document")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Doc, A::Error> {
        let mut out = Map::new();
        let mut lines = Vec::new();
        while let Some(k) = map.next_key::<String>()? {
            let v = if k == "items" {
                let items: Items = map.next_value()?;
                lines = items.1;
                items.0
            } else {
                map.next_value()?
            };
            out.insert(k, v);
        }
        Ok(Doc::Mapping(out, lines))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Doc, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Doc::NotMapping)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Doc, E> {
        Ok(Doc::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Doc, E> {
        Ok(Doc::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Doc, D::Error> {
        d.deserialize_any(self)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Doc, E> {
        Ok(Doc::NotMapping)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Doc, E> {
        Ok(Doc::NotMapping)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Doc, E> {
        Ok(Doc::NotMapping)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Doc, E> {
        Ok(Doc::NotMapping)
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Doc, E> {
        Ok(Doc::NotMapping)
    }
}

/// A top-level `items` value; a sequence also gives the line of each element.
struct Items(Value, Vec<u64>);

impl<'de> Deserialize<'de> for Items {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Items, D::Error> {
        d.deserialize_any(ItemsVisitor)
    }
}

struct ItemsVisitor;

impl<'de> Visitor<'de> for ItemsVisitor {
    type Value = Items;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any value")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Items, A::Error> {
        let (mut values, mut lines) = (Vec::new(), Vec::new());
        while let Some(s) = seq.next_element::<Spanned<Value>>()? {
            lines.push(s.referenced.line());
            values.push(s.value);
        }
        Ok(Items(Value::Array(values), lines))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Items, A::Error> {
        let v = Value::deserialize(de::value::MapAccessDeserializer::new(map))?;
        Ok(Items(v, Vec::new()))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Items, E> {
        Ok(Items(Value::Null, Vec::new()))
    }

    fn visit_none<E: de::Error>(self) -> Result<Items, E> {
        Ok(Items(Value::Null, Vec::new()))
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Items, D::Error> {
        d.deserialize_any(self)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Items, E> {
        Ok(Items(Value::Bool(v), Vec::new()))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Items, E> {
        Ok(Items(Value::from(v), Vec::new()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Items, E> {
        Ok(Items(Value::from(v), Vec::new()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Items, E> {
        Ok(Items(Value::from(v), Vec::new()))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Items, E> {
        Ok(Items(Value::from(v), Vec::new()))
    }
}
