//! A YAML tree that remembers where every node came from.
//!
//! serde_yaml reports a position only for the first syntax or type error, and none at all for a value
//! that deserialises fine but breaks a rule. To name the line of *every* problem we build our own small
//! tree from `yaml-rust2`'s marked events: each node keeps the 1-based line it starts on, and each
//! mapping key keeps its own line. The decoder in `decode.rs` then walks this tree.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// One YAML node with the line it starts on.
#[derive(Clone, Debug)]
pub struct Node {
    pub line: usize,
    pub kind: Kind,
}

#[derive(Clone, Debug)]
pub enum Kind {
    /// A scalar's text; `quoted` is true for '…', "…", | and > scalars (never null).
    Scalar {
        text: String,
        quoted: bool,
    },
    Seq(Vec<Node>),
    /// Entries in file order: (key text, key line, value).
    Map(Vec<Entry>),
}

#[derive(Clone, Debug)]
pub struct Entry {
    pub key: String,
    pub key_line: usize,
    pub value: Node,
}

impl Node {
    /// YAML's null: an empty plain scalar, `~` or `null`.
    pub fn is_null(&self) -> bool {
        matches!(&self.kind, Kind::Scalar { text, quoted: false }
            if matches!(text.as_str(), "" | "~" | "null" | "Null" | "NULL"))
    }

    /// What the node is, for error messages.
    pub fn describe(&self) -> &'static str {
        match &self.kind {
            _ if self.is_null() => "null",
            Kind::Scalar { .. } => "a scalar",
            Kind::Seq(_) => "a list",
            Kind::Map(_) => "a mapping",
        }
    }
}

/// A syntax error: line (1-based) and message.
#[derive(Debug)]
pub struct SyntaxError {
    pub line: usize,
    pub message: String,
}

/// Parse one YAML document. An empty document is `None`.
pub fn parse(text: &str) -> Result<Option<Node>, SyntaxError> {
    let mut b = Builder {
        parser: Parser::new_from_str(text),
        anchors: HashMap::new(),
    };
    b.document()
}

struct Builder<'a> {
    parser: Parser<std::str::Chars<'a>>,
    anchors: HashMap<usize, Node>,
}

fn line_of(m: &Marker) -> usize {
    m.line().max(1)
}

impl Builder<'_> {
    fn next(&mut self) -> Result<(Event, Marker), SyntaxError> {
        self.parser.next_token().map_err(|e| SyntaxError {
            line: line_of(e.marker()),
            message: e.info().to_string(),
        })
    }

    fn document(&mut self) -> Result<Option<Node>, SyntaxError> {
        let mut root = None;
        loop {
            let (ev, mark) = self.next()?;
            match ev {
                Event::StreamStart | Event::DocumentEnd | Event::Nothing => {}
                Event::StreamEnd => return Ok(root),
                Event::DocumentStart if root.is_some() => {
                    return Err(SyntaxError {
                        line: line_of(&mark),
                        message: "only one YAML document is allowed".into(),
                    });
                }
                Event::DocumentStart => {}
                other => root = Some(self.node(other, mark)?),
            }
        }
    }

    fn node(&mut self, ev: Event, mark: Marker) -> Result<Node, SyntaxError> {
        let line = line_of(&mark);
        let (node, anchor) = match ev {
            Event::Scalar(text, style, anchor, _tag) => {
                let quoted = style != TScalarStyle::Plain;
                (
                    Node {
                        line,
                        kind: Kind::Scalar { text, quoted },
                    },
                    anchor,
                )
            }
            Event::SequenceStart(anchor, _) => {
                let mut items = Vec::new();
                loop {
                    let (ev, mark) = self.next()?;
                    if ev == Event::SequenceEnd {
                        break;
                    }
                    items.push(self.node(ev, mark)?);
                }
                (
                    Node {
                        line,
                        kind: Kind::Seq(items),
                    },
                    anchor,
                )
            }
            Event::MappingStart(anchor, _) => {
                let mut entries = Vec::new();
                loop {
                    let (ev, mark) = self.next()?;
                    if ev == Event::MappingEnd {
                        break;
                    }
                    let key = self.node(ev, mark)?;
                    let key_line = key.line;
                    let key = match key.kind {
                        Kind::Scalar { text, .. } => text,
                        _ => {
                            return Err(SyntaxError {
                                line: key_line,
                                message: "mapping keys must be plain strings".into(),
                            });
                        }
                    };
                    if let Some(prev) = entries.iter().find(|e: &&Entry| e.key == key) {
                        return Err(SyntaxError {
                            line: key_line,
                            message: format!(
                                "duplicate key `{key}` (first on line {})",
                                prev.key_line
                            ),
                        });
                    }
                    let (ev, mark) = self.next()?;
                    let value = self.node(ev, mark)?;
                    entries.push(Entry {
                        key,
                        key_line,
                        value,
                    });
                }
                (
                    Node {
                        line,
                        kind: Kind::Map(entries),
                    },
                    anchor,
                )
            }
            Event::Alias(id) => match self.anchors.get(&id) {
                Some(n) => return Ok(n.clone()),
                None => {
                    return Err(SyntaxError {
                        line,
                        message: "alias to an unknown anchor".into(),
                    });
                }
            },
            other => {
                return Err(SyntaxError {
                    line,
                    message: format!("unexpected YAML event {other:?}"),
                });
            }
        };
        if anchor != 0 {
            self.anchors.insert(anchor, node.clone());
        }
        Ok(node)
    }
}
