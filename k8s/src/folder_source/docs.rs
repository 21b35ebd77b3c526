//! A YAML file's documents told apart without parsing it, each with a digest of its text, and
//! one document parsed on its own.
//!
//! YAML ends a document at a line that starts (column 0) with `---` or `...` followed by a space,
//! a tab or the end of the line: no scalar may hold such a line (not a block scalar, which at the
//! top level is indented, nor a quoted or plain one spanning lines), so cutting the text at those
//! lines gives the parser's documents. A piece starts at its `---` line (the marker and what
//! follows it on the line belong to the document) and a `...` line ends the piece it is in. Text
//! before the first marker or after a `...` (comments, blank lines, or a bare document) is a piece
//! too. A line starting with `%` (a directive, which applies to the document after it) makes the
//! file one piece: it is then parsed whole, as before.
use crate::manifests::{self, Manifests, SourceError};
use std::hash::BuildHasher;
use std::ops::Range;
use std::path::Path;

/// A document's text as compared between reads: its length and a 64-bit hash of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) struct Digest(u64, u32);

/// One document's place in a file's text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Piece {
    /// Bytes of the text, from the start of its first line to the end of its last (newline
    /// included).
    pub range: Range<usize>,
    /// 1-based line where it starts.
    pub line: u32,
}

impl Piece {
    pub fn digest(&self, text: &str) -> Digest {
        Digest::of(&text.as_bytes()[self.range.clone()])
    }
}

impl Digest {
    pub fn of(bytes: &[u8]) -> Digest {
        // Fixed seed: digests are compared within one process only.
        let h = foldhash::quality::FixedState::with_seed(0x6f78_696c_6975_6d00).hash_one(bytes);
        Digest(h, bytes.len() as u32)
    }
}

enum Marker {
    Start,
    End,
    Directive,
}

/// The line's marker, if it is one (`line` without its line break).
fn marker(line: &[u8]) -> Option<Marker> {
    let ends = |rest: &[u8]| matches!(rest.first(), None | Some(b' ' | b'\t'));
    match line {
        [b'-', b'-', b'-', rest @ ..] if ends(rest) => Some(Marker::Start),
        [b'.', b'.', b'.', rest @ ..] if ends(rest) => Some(Marker::End),
        [b'%', ..] => Some(Marker::Directive),
        _ => None,
    }
}

/// The file's documents in order; one piece for a file with a directive; none for empty text.
pub(super) fn split(text: &str) -> Vec<Piece> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let (mut start, mut start_line) = (0, 1u32);
    let (mut pos, mut line) = (0, 1u32);
    while pos < bytes.len() {
        let end = text[pos..].find('\n').map_or(bytes.len(), |i| pos + i + 1);
        let mut l = &bytes[pos..end];
        if pos == 0 {
            l = l.strip_prefix("\u{feff}".as_bytes()).unwrap_or(l);
        }
        let l = l.strip_suffix(b"\n").unwrap_or(l);
        let l = l.strip_suffix(b"\r").unwrap_or(l);
        match marker(l) {
            Some(Marker::Start) => {
                if pos > start {
                    out.push(Piece {
                        range: start..pos,
                        line: start_line,
                    });
                }
                (start, start_line) = (pos, line);
            }
            Some(Marker::End) => {
                out.push(Piece {
                    range: start..end,
                    line: start_line,
                });
                (start, start_line) = (end, line + 1);
            }
            Some(Marker::Directive) => {
                return vec![Piece {
                    range: 0..bytes.len(),
                    line: 1,
                }];
            }
            None => {}
        }
        pos = end;
        line += 1;
    }
    if bytes.len() > start {
        out.push(Piece {
            range: start..bytes.len(),
            line: start_line,
        });
    }
    out
}

/// A file's documents read one at a time through a buffer, cut as [`split`] cuts them, without
/// holding the whole text (an edit of a big file reads it all to find what changed).
pub(super) struct Reader<R> {
    src: R,
    buf: Vec<u8>,
    /// The bytes read: `buf[..len]`; the current document starts at `lo`, the next line at `pos`.
    len: usize,
    lo: usize,
    pos: usize,
    /// The 1-based line at `pos`, and the one the current document starts at.
    line: u32,
    lo_line: u32,
    /// Bytes of the file before `buf[0]`.
    base: usize,
    eof: bool,
}

/// What [`Reader::next`] found.
pub(super) enum Next {
    /// A document: its first line and its place in [`Reader::bytes`] (until the next call).
    Doc(u32, Range<usize>),
    /// A directive: the file is one piece (see [`split`]).
    Directive,
}

impl<R: std::io::Read> Reader<R> {
    pub fn new(src: R, block: usize) -> Self {
        Reader {
            src,
            buf: vec![0; block.max(16)],
            len: 0,
            lo: 0,
            pos: 0,
            line: 1,
            lo_line: 1,
            base: 0,
            eof: false,
        }
    }

    pub fn bytes(&self, r: Range<usize>) -> &[u8] {
        &self.buf[r]
    }

    /// The next line's end (after its line break) in `buf`, reading more as needed; None at the
    /// end of the file.
    fn line_end(&mut self) -> std::io::Result<Option<usize>> {
        loop {
            if let Some(i) = memchr::memchr(b'\n', &self.buf[self.pos..self.len]) {
                return Ok(Some(self.pos + i + 1));
            }
            if self.eof {
                return Ok((self.len > self.pos).then_some(self.len));
            }
            // Keep the current document, read more after it.
            if self.lo > 0 {
                self.buf.copy_within(self.lo..self.len, 0);
                (self.base, self.len, self.pos) =
                    (self.base + self.lo, self.len - self.lo, self.pos - self.lo);
                self.lo = 0;
            }
            if self.len == self.buf.len() {
                self.buf.resize(self.buf.len() * 2, 0);
            }
            match self.src.read(&mut self.buf[self.len..]) {
                Ok(0) => self.eof = true,
                Ok(n) => self.len += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    pub fn next(&mut self) -> std::io::Result<Option<Next>> {
        loop {
            let Some(end) = self.line_end()? else {
                // The rest is a piece when not empty.
                let (lo, len) = (self.lo, self.len);
                self.lo = len;
                return Ok((len > lo).then_some(Next::Doc(self.lo_line, lo..len)));
            };
            let mut l = &self.buf[self.pos..end];
            if self.base + self.pos == 0 {
                l = l.strip_prefix("\u{feff}".as_bytes()).unwrap_or(l);
            } else if !matches!(l[0], b'-' | b'.' | b'%') {
                // Most lines: no marker.
                (self.pos, self.line) = (end, self.line + 1);
                continue;
            }
            let l = l.strip_suffix(b"\n").unwrap_or(l);
            let l = l.strip_suffix(b"\r").unwrap_or(l);
            let (pos, line) = (self.pos, self.line);
            (self.pos, self.line) = (end, line + 1);
            match marker(l) {
                Some(Marker::Start) if pos > self.lo => {
                    let doc = Next::Doc(self.lo_line, self.lo..pos);
                    (self.lo, self.lo_line) = (pos, line);
                    return Ok(Some(doc));
                }
                Some(Marker::Start) => self.lo_line = line,
                Some(Marker::End) => {
                    let doc = Next::Doc(self.lo_line, self.lo..end);
                    (self.lo, self.lo_line) = (end, line + 1);
                    return Ok(Some(doc));
                }
                Some(Marker::Directive) => return Ok(Some(Next::Directive)),
                None => {}
            }
        }
    }
}

/// Parses one piece of `file` into `out`, with the lines of the file. An error names the file,
/// the line and, when the document parsed, its object (kind, namespace/name).
pub(super) fn parse_piece(
    file: &Path,
    text: &str,
    piece: &Piece,
    out: &mut Manifests,
) -> Result<(), SourceError> {
    let shift = u64::from(piece.line - 1);
    let in_doc = |e: SourceError, object: Option<String>| SourceError::Document {
        line: u64::from(piece.line),
        object,
        source: Box::new(e),
    };
    let objects = manifests::parse_text(file, &text[piece.range.clone()])
        .map_err(|e| in_doc(shifted(e, shift), None))?;
    for mut o in objects {
        o.origin.line += shift;
        let label = label(&o);
        out.add(o).map_err(|e| in_doc(e, Some(label)))?;
    }
    Ok(())
}

/// `Kind namespace/name` of an object, as far as it has them.
fn label(o: &manifests::Object) -> String {
    let meta = &o.value["metadata"];
    let name = match (meta["namespace"].as_str(), meta["name"].as_str()) {
        (Some(ns), Some(n)) => format!("{ns}/{n}"),
        (None, Some(n)) => n.to_string(),
        (_, None) => "(no name)".to_string(),
    };
    format!("{} {name}", o.kind())
}

/// The error with its line counted from `shift` lines further.
fn shifted(e: SourceError, shift: u64) -> SourceError {
    match e {
        SourceError::Syntax {
            file,
            line,
            column,
            message,
        } if line > 0 => SourceError::Syntax {
            file,
            line: line + shift,
            column,
            message,
        },
        SourceError::Field {
            mut origin,
            field,
            message,
        } => {
            origin.line += shift;
            SourceError::Field {
                origin,
                field,
                message,
            }
        }
        e => e,
    }
}

/// An origin as the store keeps it (`file:line` or `file:line items[i]`, see
/// [`manifests::Origin`]) with its line moved by `delta`; None when it is not one of `file`.
pub(super) fn moved_origin(text: &str, file: &Path, delta: i64) -> Option<String> {
    let prefix = format!("{}:", file.display());
    let rest = text.strip_prefix(&prefix)?;
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    let line: i64 = rest[..digits].parse().ok()?;
    let mut s = format!("{prefix}{}{}", line + delta, &rest[digits..]);
    s.shrink_to_fit();
    Some(s)
}

#[cfg(test)]
#[path = "docs_tests.rs"]
mod tests;
