//! Reading and typing manifest files for the folder source, on worker threads.
//!
//! Files are parsed a round of [`ROUND`] at a time, each round split between up to [`THREADS`]
//! threads, while the caller takes in the round before (so at most two rounds of typed objects
//! are held). Results come back in the order of the paths given, and the first failure in that
//! order is the error returned, as a read file by file would. The threads do the parsing work
//! (YAML events, JSON values, typed objects) and hand over only the typed objects: with glibc
//! each thread allocates from an arena of its own, so the parser's short-lived allocations do not
//! fragment the heap the caller's long-lived store grows in, and they are given back whole.
//!
//! A YAML file of more than [`DOC_ROUND`] documents (a whole folder in one file) is handed over
//! the same way, a round of documents at a time (several [`Parsed`] of the same file, all but the
//! last with `more` set): its typed objects are never all held at once.
use super::docs::{self, Digest, Piece};
use super::record::DocRecord;
use crate::manifests::{self, Manifests, SourceError};
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Files per round.
const ROUND: usize = 256;
/// Documents of one file per round.
pub(super) const DOC_ROUND: usize = 512;
/// Worker threads at most (fewer when the machine has fewer cores).
const THREADS: usize = 4;

/// What tells a file changed: its inode, and a hash of its modification time, size, inode and
/// device (16 bytes a file instead of 40: the record of each of 20,000 files counts).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct FileStamp {
    pub ino: u64,
    digest: u64,
}

/// One file read and typed (or, with `more`, a round of its documents), not yet applied.
pub(super) struct Parsed {
    pub path: PathBuf,
    pub stamp: FileStamp,
    /// The objects of the documents parsed (all of them, or those that changed).
    pub manifests: Manifests,
    /// A YAML file of several documents: its documents (none for other files, and in every round
    /// of a file but the last).
    pub docs: Docs,
    /// More documents of this file follow, in the next `Parsed` handed over.
    pub more: bool,
}

/// One document of a file read.
pub(super) struct NewDoc {
    pub digest: Digest,
    /// 1-based line where it starts.
    pub line: u32,
    /// The document of the earlier read it is the same text as (then it was not parsed).
    pub kept: Option<u32>,
}

/// The documents of a file read.
pub(super) enum Docs {
    /// Each document in order (none for a file not read by document).
    All(Vec<NewDoc>),
    /// As many documents as the file's record, each at its place, the text of most the same:
    /// those that differ (parsed again), in order, with their index; and the documents kept
    /// that now start at another line (index, line).
    Edited {
        changed: Vec<(u32, NewDoc)>,
        moved: Vec<(u32, u32)>,
    },
}

impl Docs {
    /// How many documents were parsed.
    pub fn parsed(&self) -> usize {
        match self {
            Docs::All(d) => d.iter().filter(|d| d.kept.is_none()).count(),
            Docs::Edited { changed, .. } => changed.len(),
        }
    }

    /// Whether no document was kept (true for a file not read by document).
    pub fn none_kept(&self) -> bool {
        match self {
            Docs::All(d) => d.iter().all(|d| d.kept.is_none()),
            Docs::Edited { .. } => false,
        }
    }
}

/// A YAML file of several documents read and cut, its changed documents not yet parsed.
struct Cut {
    path: PathBuf,
    stamp: FileStamp,
    text: String,
    docs: Vec<NewDoc>,
    /// The documents to parse, in order.
    todo: Vec<Piece>,
}

/// A file read: parsed whole, or cut into documents.
enum Read {
    Whole(Parsed),
    Cut(Cut),
}

/// What a worker gives back: a file parsed, or a big file cut, to be parsed by rounds.
enum Item {
    Parsed(Parsed),
    Big(Cut),
}

/// Parses `paths` and hands each file to `take`, in order; stops at the first file that fails
/// (or the first error `take` returns) and returns that error. On a failure, `take` has been
/// given exactly the files (and rounds of documents) before it.
pub(super) fn parse_each<E: From<SourceError>>(
    paths: &[PathBuf],
    mut take: impl FnMut(Parsed) -> Result<(), E>,
) -> Result<(), E> {
    let threads = threads();
    let rounds: Vec<&[PathBuf]> = paths.chunks(ROUND).collect();
    pipelined(&rounds, threads, parse_all, |_, parts| {
        parts.into_iter().flatten().try_for_each(|p| match p? {
            Item::Parsed(p) => take(p),
            Item::Big(cut) => by_rounds(cut, threads, &mut take),
        })
    })
}

/// Parses `rounds` in order, each round split over up to `threads` threads, while this thread
/// hands the round before to `take` (its index and its parts' results, in order): the next
/// round is parsed meanwhile, and at most two rounds' results are held at once. The first error
/// `take` returns ends it (the round being parsed then is dropped); a worker's panic is resumed.
fn pipelined<T: Sync, R: Send, E>(
    rounds: &[&[T]],
    threads: usize,
    parse: impl Fn(&[T]) -> R + Sync,
    mut take: impl FnMut(usize, Vec<R>) -> Result<(), E>,
) -> Result<(), E> {
    let parse = &parse;
    let mut ready: Option<Vec<R>> = None;
    for i in 0..=rounds.len() {
        let next = std::thread::scope(|s| {
            let workers: Vec<_> = rounds
                .get(i)
                .map(|round| {
                    round
                        .chunks(round.len().div_ceil(threads.max(1)).max(1))
                        .map(|part| s.spawn(move || parse(part)))
                        .collect()
                })
                .unwrap_or_default();
            let taken = match ready.take() {
                Some(parts) => take(i - 1, parts),
                None => Ok(()),
            };
            let next: Vec<R> = workers
                .into_iter()
                .map(|w| w.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                .collect();
            taken.map(|()| next)
        })?;
        if i < rounds.len() {
            ready = Some(next);
        }
    }
    Ok(())
}

fn threads() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, THREADS)
}

/// Reads `paths` in order, parsing all but big files of documents; the first failure ends it.
fn parse_all(paths: &[PathBuf]) -> Vec<Result<Item, SourceError>> {
    let mut out = Vec::with_capacity(paths.len());
    for p in paths {
        let r = read(p.clone(), &[]).and_then(|r| match r {
            Read::Whole(p) => Ok(Item::Parsed(p)),
            Read::Cut(cut) if cut.todo.len() > DOC_ROUND => Ok(Item::Big(cut)),
            Read::Cut(cut) => parse_cut(cut, 1).map(Item::Parsed),
        });
        let failed = r.is_err();
        out.push(r);
        if failed {
            break;
        }
    }
    out
}

/// Reads and types one file, every document of it.
pub(super) fn parse(path: PathBuf) -> Result<Parsed, SourceError> {
    parse_matched(path, &[])
}

/// Reads one file and types the documents whose text is not that of a document of `old` (its
/// documents as last read): when the file has as many documents as `old`, most of the same text
/// at the same place, it is read through a small buffer and only the documents that differ are
/// kept (an edit, [`Docs::Edited`]); else it is read whole and the documents matched by digest
/// wherever they moved ([`Docs::All`], those kept named by their index in `old`).
pub(super) fn parse_changed(path: PathBuf, old: &[DocRecord]) -> Result<Parsed, SourceError> {
    if !old.is_empty()
        && let Some(p) = edited(&path, old)?
    {
        return Ok(p);
    }
    let digests: Vec<Digest> = old.iter().map(DocRecord::digest).collect();
    parse_matched(path, &digests)
}

/// Reads an edited file against its documents as last read, one document at a time; None when
/// its documents are not those of `old` at the same places (one added, taken out or moved, a
/// directive) or more than a round of them differ.
fn edited(path: &Path, old: &[DocRecord]) -> Result<Option<Parsed>, SourceError> {
    let io = |source| SourceError::Io {
        path: path.to_path_buf(),
        source,
    };
    let stamp = stamp_of(path).ok_or_else(|| {
        io(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "not a file",
        ))
    })?;
    let file = std::fs::File::open(path).map_err(io)?;
    let mut r = docs::Reader::new(file, 64 * 1024);
    let (mut changed, mut moved, mut texts) = (Vec::new(), Vec::new(), Vec::new());
    let mut i = 0;
    while let Some(next) = r.next().map_err(io)? {
        let (docs::Next::Doc(line, range), Some(was)) = (next, old.get(i)) else {
            return Ok(None);
        };
        let bytes = r.bytes(range);
        let digest = Digest::of(bytes);
        if digest == was.digest() {
            if line != was.line() {
                moved.push((i as u32, line));
            }
        } else {
            if changed.len() == DOC_ROUND {
                return Ok(None);
            }
            let text = std::str::from_utf8(bytes).map_err(|_| {
                io(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "stream did not contain valid UTF-8",
                ))
            })?;
            texts.push(text.to_string());
            let kept = None;
            changed.push((i as u32, NewDoc { digest, line, kept }));
        }
        i += 1;
    }
    if i != old.len() {
        return Ok(None);
    }
    let mut manifests = Manifests::default();
    for ((_, d), text) in changed.iter().zip(&texts) {
        let piece = Piece {
            range: 0..text.len(),
            line: d.line,
        };
        docs::parse_piece(path, text, &piece, &mut manifests)?;
    }
    Ok(Some(Parsed {
        path: path.to_path_buf(),
        stamp,
        manifests,
        docs: Docs::Edited { changed, moved },
        more: false,
    }))
}

/// Reads one file and types the documents whose text is not among `old` (the digests of its
/// documents as last read, in order); the others are named by the index in `old` they match.
fn parse_matched(path: PathBuf, old: &[Digest]) -> Result<Parsed, SourceError> {
    match read(path, old)? {
        Read::Whole(p) => Ok(p),
        Read::Cut(cut) => parse_cut(cut, threads()),
    }
}

/// Reads a file; a YAML file of several documents is cut and matched with `old`, not parsed.
fn read(path: PathBuf, old: &[Digest]) -> Result<Read, SourceError> {
    let stamp = stamp_of(&path).ok_or_else(|| SourceError::Io {
        path: path.clone(),
        source: std::io::Error::new(std::io::ErrorKind::NotFound, "not a file"),
    })?;
    let text = std::fs::read_to_string(&path).map_err(|source| SourceError::Io {
        path: path.clone(),
        source,
    })?;
    let json = path.extension().is_some_and(|e| e == "json");
    let pieces = if json { Vec::new() } else { docs::split(&text) };
    if pieces.len() <= 1 {
        let mut manifests = Manifests::default();
        manifests::parse_file(&path, &text, &mut manifests)?;
        return Ok(Read::Whole(Parsed {
            path,
            stamp,
            manifests,
            docs: Docs::All(Vec::new()),
            more: false,
        }));
    }
    let mut matcher = Matcher::new(old);
    let mut docs = Vec::with_capacity(pieces.len());
    let mut todo = Vec::new();
    for (i, piece) in pieces.into_iter().enumerate() {
        let digest = piece.digest(&text);
        let kept = matcher.take(i, digest);
        docs.push(NewDoc {
            digest,
            line: piece.line,
            kept,
        });
        if kept.is_none() {
            todo.push(piece);
        }
    }
    Ok(Read::Cut(Cut {
        path,
        stamp,
        text,
        docs,
        todo,
    }))
}

/// Parses a cut file's documents into one [`Parsed`] (a big file, a whole one changed, on up
/// to `threads` threads).
fn parse_cut(cut: Cut, threads: usize) -> Result<Parsed, SourceError> {
    let mut all: Option<Parsed> = None;
    by_rounds::<SourceError>(cut, threads, &mut |p| {
        match &mut all {
            None => all = Some(p),
            Some(a) => {
                append(&mut a.manifests, p.manifests);
                a.docs = p.docs;
                a.more = p.more;
            }
        }
        Ok(())
    })?;
    Ok(all.expect("the last round is always handed over"))
}

/// Parses a cut file's documents a round of [`DOC_ROUND`] at a time, each round on up to
/// `threads` threads while `take` takes the round before; the last round carries the file's
/// documents (`docs`) and has `more` unset. The first bad document in order ends it: `take` has
/// then been given the rounds before the one it is in.
fn by_rounds<E: From<SourceError>>(
    cut: Cut,
    threads: usize,
    take: &mut impl FnMut(Parsed) -> Result<(), E>,
) -> Result<(), E> {
    let Cut {
        path,
        stamp,
        text,
        mut docs,
        todo,
    } = cut;
    let parse_part = |part: &[Piece]| -> Result<Manifests, SourceError> {
        let mut m = Manifests::default();
        for piece in part {
            docs::parse_piece(&path, &text, piece, &mut m)?;
        }
        Ok(m)
    };
    let rounds: Vec<&[Piece]> = todo.chunks(DOC_ROUND).collect();
    let hand = |m: Manifests, last: bool, docs: &mut Vec<NewDoc>| Parsed {
        path: path.clone(),
        stamp,
        manifests: m,
        docs: Docs::All(if last {
            std::mem::take(docs)
        } else {
            Vec::new()
        }),
        more: !last,
    };
    if rounds.len() <= 1 {
        // An edit: a few documents, parsed here.
        let m = parse_part(rounds.first().copied().unwrap_or_default())?;
        return take(hand(m, true, &mut docs));
    }
    let n = rounds.len();
    pipelined(&rounds, threads, parse_part, |i, parts| {
        let mut m = Manifests::default();
        for part in parts {
            append(&mut m, part?);
        }
        take(hand(m, i + 1 == n, &mut docs))
    })
}

fn append(m: &mut Manifests, part: Manifests) {
    m.services.extend(part.services);
    m.endpoint_slices.extend(part.endpoint_slices);
    m.nodes.extend(part.nodes);
    m.pods.extend(part.pods);
    m.rejected.extend(part.rejected);
}

/// Pairs documents with earlier ones of the same text, each earlier one at most once: the one
/// at the same place when it matches (an edit leaves the others where they were), else any.
struct Matcher<'a> {
    old: &'a [Digest],
    used: Vec<bool>,
    /// Built on the first miss: the earlier documents of each digest, the last one first.
    by_digest: Option<HashMap<Digest, Vec<u32>>>,
}

impl<'a> Matcher<'a> {
    fn new(old: &'a [Digest]) -> Self {
        Matcher {
            old,
            used: vec![false; old.len()],
            by_digest: None,
        }
    }

    fn take(&mut self, at: usize, digest: Digest) -> Option<u32> {
        if self.old.get(at) == Some(&digest) && !self.used[at] {
            self.used[at] = true;
            return Some(at as u32);
        }
        let old = self.old;
        let map = self.by_digest.get_or_insert_with(|| {
            let mut m: HashMap<Digest, Vec<u32>> = HashMap::new();
            for (i, d) in old.iter().enumerate().rev() {
                m.entry(*d).or_default().push(i as u32);
            }
            m
        });
        let list = map.get_mut(&digest)?;
        while let Some(i) = list.pop() {
            if !std::mem::replace(&mut self.used[i as usize], true) {
                return Some(i);
            }
        }
        None
    }
}

pub(super) fn stamp_of(path: &Path) -> Option<FileStamp> {
    let m = std::fs::metadata(path).ok()?;
    if !m.is_file() {
        return None;
    }
    let state = foldhash::quality::FixedState::with_seed(0x0073_7461_6d70);
    let digest = state.hash_one((m.modified().ok()?, m.len(), m.ino(), m.dev()));
    Some(FileStamp {
        ino: m.ino(),
        digest,
    })
}

#[cfg(test)]
#[path = "files_tests.rs"]
mod tests;
