//! Reading the marked YAML tree: a sink for problems, mappings that report unknown keys, and typed
//! scalar readers. Each reader reports its own problem (with path and line) and returns `None`.

use std::str::FromStr;
use std::time::Duration;

use crate::config::Issue;
use crate::config::yaml::{Entry, Kind, Node};

/// Collected problems.
#[derive(Default)]
pub(crate) struct Ctx {
    pub(crate) issues: Vec<Issue>,
}

impl Ctx {
    pub(crate) fn err(&mut self, line: usize, path: &str, message: impl Into<String>) {
        self.issues.push(Issue {
            line,
            path: path.to_string(),
            message: message.into(),
        });
    }
}

/// A mapping being read: remembers which keys were consumed so the rest can be reported as unknown.
pub(crate) struct Fields<'a> {
    path: String,
    pub(crate) line: usize,
    entries: &'a [Entry],
    used: Vec<bool>,
}

impl<'a> Fields<'a> {
    /// `node` as a mapping, or an error (and `None`).
    pub(crate) fn of(ctx: &mut Ctx, node: &'a Node, path: &str) -> Option<Fields<'a>> {
        match &node.kind {
            Kind::Map(entries) => Some(Fields {
                path: path.to_string(),
                line: node.line,
                entries,
                used: vec![false; entries.len()],
            }),
            _ => {
                ctx.err(
                    node.line,
                    path,
                    format!("expected a mapping, got {}", node.describe()),
                );
                None
            }
        }
    }

    pub(crate) fn path(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    /// The value under `key`; null counts as absent.
    pub(crate) fn take(&mut self, key: &str) -> Option<&'a Node> {
        let i = self.entries.iter().position(|e| e.key == key)?;
        self.used[i] = true;
        let v = &self.entries[i].value;
        (!v.is_null()).then_some(v)
    }

    /// Like `take`, but a missing value is an error.
    pub(crate) fn require(&mut self, ctx: &mut Ctx, key: &str) -> Option<&'a Node> {
        let line = self
            .entries
            .iter()
            .find(|e| e.key == key)
            .map(|e| e.key_line)
            .unwrap_or(self.line);
        let v = self.take(key);
        if v.is_none() {
            ctx.err(line, &self.path(key), "required field is missing");
        }
        v
    }

    /// Report every key not consumed.
    pub(crate) fn finish(self, ctx: &mut Ctx, known: &[&str]) {
        for (e, used) in self.entries.iter().zip(&self.used) {
            if !*used {
                let msg = format!(
                    "unknown field `{}`; expected one of: {}",
                    e.key,
                    known.join(", ")
                );
                ctx.err(e.key_line, &self.path(&e.key), msg);
            }
        }
    }
}

/// A value together with the line it was read from.
#[derive(Clone, Copy)]
pub(crate) struct At<T> {
    pub(crate) v: T,
    pub(crate) line: usize,
}

pub(crate) fn scalar<'a>(ctx: &mut Ctx, node: &'a Node, path: &str) -> Option<&'a str> {
    match &node.kind {
        Kind::Scalar { text, .. } => Some(text),
        _ => {
            ctx.err(
                node.line,
                path,
                format!("expected a single value, got {}", node.describe()),
            );
            None
        }
    }
}

/// An unquoted integer in `lo..=hi`.
pub(crate) fn int(ctx: &mut Ctx, node: &Node, path: &str, lo: u64, hi: u64) -> Option<At<u64>> {
    let text = scalar(ctx, node, path)?;
    let quoted = matches!(node.kind, Kind::Scalar { quoted: true, .. });
    match text.parse::<u64>() {
        Ok(v) if !quoted && (lo..=hi).contains(&v) => Some(At { v, line: node.line }),
        Ok(_) if !quoted => {
            ctx.err(node.line, path, format!("must be {lo}..={hi}, got {text}"));
            None
        }
        _ => {
            ctx.err(
                node.line,
                path,
                format!("expected an integer in {lo}..={hi}, got `{text}`"),
            );
            None
        }
    }
}

pub(crate) fn parsed<T: FromStr>(
    ctx: &mut Ctx,
    node: &Node,
    path: &str,
    what: &str,
) -> Option<At<T>> {
    let text = scalar(ctx, node, path)?;
    match text.parse() {
        Ok(v) => Some(At { v, line: node.line }),
        Err(_) => {
            ctx.err(node.line, path, format!("expected {what}, got `{text}`"));
            None
        }
    }
}

pub(crate) fn choice<T: Copy>(
    ctx: &mut Ctx,
    node: &Node,
    path: &str,
    opts: &[(&str, T)],
) -> Option<T> {
    let text = scalar(ctx, node, path)?;
    if let Some((_, v)) = opts.iter().find(|(name, _)| *name == text) {
        return Some(*v);
    }
    let names: Vec<&str> = opts.iter().map(|(n, _)| *n).collect();
    ctx.err(
        node.line,
        path,
        format!("expected one of {}, got `{text}`", names.join(", ")),
    );
    None
}

pub(crate) fn duration(ctx: &mut Ctx, node: &Node, path: &str) -> Option<At<Duration>> {
    let text = scalar(ctx, node, path)?;
    match crate::config::duration::parse(text) {
        Ok(v) => Some(At { v, line: node.line }),
        Err(e) => {
            ctx.err(node.line, path, e);
            None
        }
    }
}
