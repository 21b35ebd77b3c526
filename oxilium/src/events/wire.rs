//! The event stream's wire form (`GET /events`): newline-delimited JSON. The agent's side
//! encodes flow records straight from their structs ([`encode`]) into chunks of up to
//! [`CHUNK_BYTES`] (what is queued when the stream's task wakes goes out in one write);
//! `oxilium monitor` splits what it reads into lines and prints them ([`Printer`]): with `-o json`
//! a record's line is copied through as it came, without parsing it; only the stream's control
//! lines (subscribed, lost) are parsed. The output is flushed once per chunk read, not per line.
use super::record::{self, FlowRecord};
use anyhow::{Context, Result};
use std::io::Write;

/// The most bytes of records the agent puts in one chunk of the stream.
pub const CHUNK_BYTES: usize = 64 * 1024;

/// How a record's line starts (the first field of [`FlowRecord`]).
const RECORD_PREFIX: &[u8] = b"{\"flow\":";

/// Appends `r` as one JSON line to `out`.
pub fn encode(r: &FlowRecord, out: &mut Vec<u8>) {
    let len = out.len();
    if serde_json::to_writer(&mut *out, r).is_ok() {
        out.push(b'\n');
    } else {
        out.truncate(len);
    }
}

/// The writer `monitor` prints through, over `w` (its standard output): buffered, flushed by
/// [`Printer::feed`] once per chunk.
pub fn sink<W: Write>(w: W) -> impl Write {
    std::io::BufWriter::with_capacity(CHUNK_BYTES, w)
}

/// How `monitor` prints records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// The records as the agent sent them.
    Json,
    /// One human line each ([`record::human`]).
    Text,
}

/// `monitor`'s reading side: the stream's bytes in, the records printed, the control lines
/// (subscribed, lost) told on `notes`.
pub struct Printer {
    format: Format,
    /// Stop after this many records.
    count: Option<u64>,
    pub seen: u64,
    /// The part of a line the previous chunk ended with.
    buf: Vec<u8>,
    /// Where the stream comes from, for the "Listening" note.
    source: String,
}

impl Printer {
    pub fn new(format: Format, count: Option<u64>, source: &str) -> Printer {
        Printer {
            format,
            count,
            seen: 0,
            buf: Vec::new(),
            source: source.to_string(),
        }
    }

    /// Prints the whole lines of `data` (after what was left of the previous call) and flushes
    /// `out`; true once `count` records were printed.
    pub fn feed(
        &mut self,
        data: &[u8],
        out: &mut impl Write,
        notes: &mut impl Write,
    ) -> Result<bool> {
        let mut rest = std::mem::take(&mut self.buf);
        let done = if rest.is_empty() {
            self.lines(data, &mut rest, out, notes)?
        } else {
            rest.extend_from_slice(data);
            let joined = std::mem::take(&mut rest);
            self.lines(&joined, &mut rest, out, notes)?
        };
        self.buf = rest;
        out.flush()?;
        Ok(done)
    }

    /// Prints the whole lines of `data`; the unfinished last one goes to `rest`.
    fn lines(
        &mut self,
        data: &[u8],
        rest: &mut Vec<u8>,
        out: &mut impl Write,
        notes: &mut impl Write,
    ) -> Result<bool> {
        let mut at = 0;
        while let Some(nl) = data[at..].iter().position(|&b| b == b'\n') {
            let line = &data[at..at + nl];
            at += nl + 1;
            if !line.is_empty() && self.line(line, out, notes)? {
                return Ok(true);
            }
        }
        rest.extend_from_slice(&data[at..]);
        Ok(false)
    }

    /// Prints one line; true once `count` records were printed.
    fn line(&mut self, line: &[u8], out: &mut impl Write, notes: &mut impl Write) -> Result<bool> {
        let record = line.starts_with(RECORD_PREFIX);
        if !record {
            let v: serde_json::Value =
                serde_json::from_slice(line).context("agent sent invalid JSON")?;
            if v.get("subscribed").is_some() {
                writeln!(notes, "Listening for events ({})", self.source)?;
                return Ok(false);
            }
            if let Some(l) = v.get("lost_events") {
                writeln!(
                    notes,
                    "lost {} events (reading too slowly)",
                    l["num_events_lost"]
                )?;
            }
        }
        match self.format {
            Format::Json => {
                out.write_all(line)?;
                out.write_all(b"\n")?;
            }
            Format::Text if !record => return Ok(false),
            Format::Text => match serde_json::from_slice::<FlowRecord>(line) {
                Ok(r) => writeln!(out, "{}", record::human(&r))?,
                Err(e) => {
                    writeln!(
                        notes,
                        "a record monitor cannot read ({e}): {}",
                        String::from_utf8_lossy(line)
                    )?;
                    return Ok(false);
                }
            },
        }
        self.seen += 1;
        Ok(self.count.is_some_and(|n| self.seen >= n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(port: u16) -> FlowRecord {
        let mut r = FlowRecord::default();
        r.flow.verdict = "DROPPED".into();
        r.flow.event_type.kind = "drop".into();
        r.flow.source.ip = "10.0.0.1".into();
        r.flow.destination.ip = "10.0.0.2".into();
        r.flow.destination.port = Some(port);
        r
    }

    #[test]
    fn records_pass_through_whatever_the_chunking() {
        let mut wire = b"{\"subscribed\":{\"filter\":\"\"}}\n\n".to_vec();
        for p in 1..=3 {
            encode(&record(p), &mut wire);
        }
        wire.extend_from_slice(b"{\"lost_events\":{\"source\":\"agent\",\"num_events_lost\":7}}\n");
        let want: Vec<&[u8]> = wire
            .split(|b| *b == b'\n')
            .filter(|l| l.starts_with(RECORD_PREFIX) || l.starts_with(b"{\"lost"))
            .collect();
        for size in [1, 7, 64, wire.len()] {
            let mut p = Printer::new(Format::Json, None, "test");
            let (mut out, mut notes) = (Vec::new(), Vec::new());
            for c in wire.chunks(size) {
                assert!(!p.feed(c, &mut out, &mut notes).unwrap());
            }
            let got: Vec<&[u8]> = out
                .split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
                .collect();
            assert_eq!(got, want, "chunks of {size}");
            let notes = String::from_utf8(notes).unwrap();
            assert!(
                notes.starts_with("Listening for events (test)\n"),
                "{notes}"
            );
            assert!(notes.contains("lost 7 events"), "{notes}");
            assert_eq!(p.seen, 4);
        }
        // Human lines: the records only; a count stops the printer.
        let mut p = Printer::new(Format::Text, Some(2), "test");
        let (mut out, mut notes) = (Vec::new(), Vec::new());
        assert!(p.feed(&wire, &mut out, &mut notes).unwrap());
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.lines().count(), 2, "{text}");
        assert!(text.contains("-> 10.0.0.2:2"), "{text}");
        // A line that is not JSON is an error.
        let mut p = Printer::new(Format::Json, None, "test");
        assert!(p.feed(b"nope\n", &mut Vec::new(), &mut Vec::new()).is_err());
    }
}
