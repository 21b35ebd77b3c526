//! A YAML tree that remembers where every node came from.
//!
//! A serde deserialiser stops at the first error and reports no position at all for a value that
//! deserialises fine but breaks a rule. To name the line of *every* problem we build our own small
//! tree from the marked events of `granit_parser` (serde-saphyr's YAML event parser): each node keeps
//! the 1-based line it starts on, and each mapping key keeps its own line. The decoder in `decode.rs`
//! then walks this tree.
//!
//! An alias is expanded by copying the anchored node, so a few lines of nested aliases ("billion
//! laughs") could ask for billions of nodes. The copies are counted: past [`MAX_ALIAS_NODES`] the
//! document is refused, at the line of the alias that went over.

use std::collections::HashMap;

use serde_saphyr::granit_parser::{Event, Marker, Parser, ScalarStyle, StrInput};

/// Nodes that alias expansions may add to a document, in all. Far above any real lb.yaml (a shared
/// health check is a dozen nodes); nodes written out in the file do not count, they cost file size.
pub const MAX_ALIAS_NODES: usize = 100_000;

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
        alias_nodes: 0,
    };
    b.document()
}

struct Builder<'a> {
    parser: Parser<'a, StrInput<'a>>,
    /// Anchored nodes by anchor id, with their size in nodes.
    anchors: HashMap<usize, (Node, usize)>,
    /// Nodes added by alias expansions so far.
    alias_nodes: usize,
}

/// Nodes in `n`, itself included; a mapping entry counts its key as one node.
fn size(n: &Node) -> usize {
    1 + match &n.kind {
        Kind::Scalar { .. } => 0,
        Kind::Seq(items) => items.iter().map(size).sum(),
        Kind::Map(entries) => entries.iter().map(|e| 1 + size(&e.value)).sum(),
    }
}

fn line_of(m: &Marker) -> usize {
    m.line().max(1)
}

impl<'a> Builder<'a> {
    fn next(&mut self) -> Result<(Event<'a>, Marker), SyntaxError> {
        match self.parser.next_event() {
            Some(Ok((ev, span))) => Ok((ev, span.start)),
            Some(Err(e)) => Err(SyntaxError {
                line: line_of(e.marker()),
                message: e.info(),
            }),
            // Only after StreamEnd, which `document` never reads past.
            None => Ok((Event::StreamEnd, Marker::default())),
        }
    }

    fn document(&mut self) -> Result<Option<Node>, SyntaxError> {
        let mut root = None;
        loop {
            let (ev, mark) = self.next()?;
            match ev {
                Event::StreamStart | Event::DocumentEnd => {}
                Event::StreamEnd => return Ok(root),
                Event::DocumentStart(..) if root.is_some() => {
                    return Err(SyntaxError {
                        line: line_of(&mark),
                        message: "only one YAML document is allowed".into(),
                    });
                }
                Event::DocumentStart(..) => {}
                other => root = Some(self.node(other, mark)?),
            }
        }
    }

    fn node(&mut self, ev: Event<'a>, mark: Marker) -> Result<Node, SyntaxError> {
        let line = line_of(&mark);
        let (node, anchor) = match ev {
            Event::Scalar(text, style, anchor, _tag) => {
                let quoted = style != ScalarStyle::Plain;
                let text = text.into_owned();
                (
                    Node {
                        line,
                        kind: Kind::Scalar { text, quoted },
                    },
                    anchor,
                )
            }
            Event::SequenceStart(_, anchor, _) => {
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
            Event::MappingStart(_, anchor, _) => {
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
                Some((n, size)) => {
                    self.alias_nodes = self.alias_nodes.saturating_add(*size);
                    if self.alias_nodes > MAX_ALIAS_NODES {
                        return Err(SyntaxError {
                            line,
                            message: format!(
                                "aliases expand to more than {MAX_ALIAS_NODES} nodes \
                                 (nested aliases such as a \"billion laughs\" document are refused)"
                            ),
                        });
                    }
                    return Ok(n.clone());
                }
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
            self.anchors.insert(anchor, (node.clone(), size(&node)));
        }
        Ok(node)
    }
}
