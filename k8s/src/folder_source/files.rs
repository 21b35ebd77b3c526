//! Reading and typing manifest files for the folder source, on worker threads.
//!
//! Files are parsed a round of [`ROUND`] at a time, each round split between up to [`THREADS`]
//! threads, while the caller takes in the round before (so at most two rounds of typed objects
//! are held). Results come back in the order of the paths given, and the first failure in that
//! order is the error returned, as a read file by file would. The threads do the parsing work
//! (YAML events, JSON values, typed objects) and hand over only the typed objects: with glibc
//! each thread allocates from an arena of its own, so the parser's short-lived allocations do not
//! fragment the heap the caller's long-lived store grows in, and they are given back whole.
use super::docs::{self, Digest};
use crate::manifests::{self, Manifests, SourceError};
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Files per round.
const ROUND: usize = 256;
/// Worker threads at most (fewer when the machine has fewer cores).
const THREADS: usize = 4;

/// What tells a file changed: its inode, and a hash of its modification time, size, inode and
/// device (16 bytes a file instead of 40: the record of each of 20,000 files counts).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct FileStamp {
    pub ino: u64,
    digest: u64,
}

/// One file read and typed, not yet applied.
pub(super) struct Parsed {
    pub path: PathBuf,
    pub stamp: FileStamp,
    /// The objects of the documents parsed (all of them, or those that changed).
    pub manifests: Manifests,
    /// A YAML file of several documents: each document in order (empty for other files).
    pub docs: Vec<NewDoc>,
}

/// One document of a file read.
pub(super) struct NewDoc {
    pub digest: Digest,
    /// 1-based line where it starts.
    pub line: u32,
    /// The document of the earlier read it is the same text as (then it was not parsed).
    pub kept: Option<u32>,
}

/// Parses `paths` and hands each file to `take`, in order; stops at the first file that fails
/// (or the first error `take` returns) and returns that error. On a failure, `take` has been
/// given exactly the files before it.
pub(super) fn parse_each<E: From<SourceError>>(
    paths: &[PathBuf],
    mut take: impl FnMut(Parsed) -> Result<(), E>,
) -> Result<(), E> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, THREADS);
    let rounds: Vec<&[PathBuf]> = paths.chunks(ROUND).collect();
    let mut ready: Vec<Result<Parsed, SourceError>> = Vec::new();
    for i in 0..=rounds.len() {
        let next = std::thread::scope(|s| -> Result<_, E> {
            // The next round is parsed while this thread takes in the one before.
            let workers: Vec<_> = rounds
                .get(i)
                .map(|round| {
                    round
                        .chunks(round.len().div_ceil(threads))
                        .map(|part| s.spawn(move || parse_all(part)))
                        .collect()
                })
                .unwrap_or_default();
            let taken = std::mem::take(&mut ready)
                .into_iter()
                .try_for_each(|p| take(p?));
            let mut next = Vec::new();
            for w in workers {
                match w.join() {
                    Ok(parsed) => next.extend(parsed),
                    Err(panic) => std::panic::resume_unwind(panic),
                }
            }
            taken.map(|()| next)
        })?;
        ready = next;
    }
    Ok(())
}

/// Parses `paths` in order; the first failure ends it.
fn parse_all(paths: &[PathBuf]) -> Vec<Result<Parsed, SourceError>> {
    let mut out = Vec::with_capacity(paths.len());
    for p in paths {
        let r = parse(p.clone());
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
    parse_changed(path, &[])
}

/// Reads one file and types the documents whose text is not among `old` (the digests of its
/// documents as last read, in order); the others are named by the index in `old` they match.
pub(super) fn parse_changed(path: PathBuf, old: &[Digest]) -> Result<Parsed, SourceError> {
    let stamp = stamp_of(&path).ok_or_else(|| SourceError::Io {
        path: path.clone(),
        source: std::io::Error::new(std::io::ErrorKind::NotFound, "not a file"),
    })?;
    let text = std::fs::read_to_string(&path).map_err(|source| SourceError::Io {
        path: path.clone(),
        source,
    })?;
    let mut manifests = Manifests::default();
    let json = path.extension().is_some_and(|e| e == "json");
    let pieces = if json { Vec::new() } else { docs::split(&text) };
    if pieces.len() <= 1 {
        manifests::parse_file(&path, &text, &mut manifests)?;
        return Ok(Parsed {
            path,
            stamp,
            manifests,
            docs: Vec::new(),
        });
    }
    let mut matcher = Matcher::new(old);
    let mut docs = Vec::with_capacity(pieces.len());
    let mut todo = Vec::new();
    for (i, piece) in pieces.iter().enumerate() {
        let digest = piece.digest(&text);
        let kept = matcher.take(i, digest);
        if kept.is_none() {
            todo.push(piece);
        }
        docs.push(NewDoc {
            digest,
            line: piece.line,
            kept,
        });
    }
    // A big file (a whole folder in one file, read at start) is parsed on several threads.
    let threads = match todo.len() >= 2 * ROUND {
        true => std::thread::available_parallelism().map_or(1, |n| n.get().min(THREADS)),
        false => 1,
    };
    let parse_part = |part: &[&docs::Piece]| -> Result<Manifests, SourceError> {
        let mut m = Manifests::default();
        for piece in part {
            docs::parse_piece(&path, &text, piece, &mut m)?;
        }
        Ok(m)
    };
    if threads <= 1 {
        manifests = parse_part(&todo)?;
    } else {
        let parts: Vec<Result<Manifests, SourceError>> = std::thread::scope(|s| {
            let workers: Vec<_> = todo
                .chunks(todo.len().div_ceil(threads))
                .map(|part| s.spawn(move || parse_part(part)))
                .collect();
            workers
                .into_iter()
                .map(|w| w.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                .collect()
        });
        for part in parts {
            let part = part?;
            manifests.services.extend(part.services);
            manifests.endpoint_slices.extend(part.endpoint_slices);
            manifests.nodes.extend(part.nodes);
            manifests.pods.extend(part.pods);
            manifests.rejected.extend(part.rejected);
        }
    }
    Ok(Parsed {
        path,
        stamp,
        manifests,
        docs,
    })
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
mod tests {
    use super::*;
    use crate::manifests::tests::TempDir;

    fn service(name: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\n\
             spec: {{clusterIP: 10.96.0.1, ports: [{{port: 80}}]}}\n"
        )
    }

    /// More files than a round, across several threads: every file comes back once, in the
    /// order given.
    #[test]
    fn files_come_back_in_order_across_rounds_and_threads() {
        let dir = TempDir::new("files");
        let n = ROUND * 2 + 17;
        let paths: Vec<PathBuf> = (0..n)
            .map(|i| {
                let p = dir.0.join(format!("s{i:04}.yaml"));
                std::fs::write(&p, service(&format!("s{i}"))).unwrap();
                p
            })
            .collect();
        let mut seen = Vec::new();
        parse_each::<SourceError>(&paths, |p| {
            assert_eq!(p.manifests.services.len(), 1);
            let name = p.manifests.services[0].1.metadata.name.clone().unwrap();
            seen.push((p.path, name));
            Ok(())
        })
        .unwrap();
        let want: Vec<(PathBuf, String)> = (0..n)
            .map(|i| (paths[i].clone(), format!("s{i}")))
            .collect();
        assert_eq!(seen, want);
    }

    /// A bad file in the second round: the files before it are taken, then its error is
    /// returned (the one named first in path order, though a later file is bad too).
    #[test]
    fn the_first_bad_file_in_order_ends_it() {
        let dir = TempDir::new("files");
        let paths: Vec<PathBuf> = (0..ROUND + 40)
            .map(|i| {
                let p = dir.0.join(format!("s{i:04}.yaml"));
                let text = match i {
                    i if i == ROUND + 3 || i == ROUND + 30 => "kind: [unclosed\n".to_string(),
                    _ => service(&format!("s{i}")),
                };
                std::fs::write(&p, text).unwrap();
                p
            })
            .collect();
        let mut taken = 0;
        let err = parse_each::<SourceError>(&paths, |_| {
            taken += 1;
            Ok(())
        })
        .unwrap_err();
        assert_eq!(taken, ROUND + 3);
        let msg = err.to_string();
        assert!(msg.contains(&format!("s{:04}.yaml", ROUND + 3)), "{msg}");
    }

    /// A file of more documents than a round is parsed on several threads: the objects come
    /// back in the file's order with its lines, and the first bad document in order is the one
    /// the error names.
    #[test]
    fn a_big_file_of_documents_comes_back_in_order() {
        let dir = TempDir::new("files");
        let n = ROUND * 2 + 17;
        let text: String = (0..n)
            .map(|i| format!("---\n{}", service(&format!("s{i}"))))
            .collect();
        let p = dir.0.join("all.yaml");
        std::fs::write(&p, &text).unwrap();
        let parsed = parse(p.clone()).unwrap();
        assert_eq!(parsed.docs.len(), n);
        assert!(parsed.docs.iter().all(|d| d.kept.is_none()));
        let got: Vec<(u64, String)> = parsed
            .manifests
            .services
            .iter()
            .map(|(o, s)| (o.line, s.metadata.name.clone().unwrap()))
            .collect();
        let want: Vec<(u64, String)> = (0..n)
            .map(|i| (5 * i as u64 + 2, format!("s{i}")))
            .collect();
        assert_eq!(got, want);
        // Parsed again against its own digests: nothing to parse.
        let digests: Vec<Digest> = parsed.docs.iter().map(|d| d.digest).collect();
        let again = parse_changed(p.clone(), &digests).unwrap();
        assert!(again.manifests.services.is_empty());
        assert!(
            again
                .docs
                .iter()
                .enumerate()
                .all(|(i, d)| d.kept == Some(i as u32))
        );
        let bad = text.replacen("name: s400,", "name: [s400,", 1).replacen(
            "name: s30,",
            "name: [s30,",
            1,
        );
        std::fs::write(&p, bad).unwrap();
        let e = parse(p).err().expect("an error").to_string();
        assert!(e.contains("(in the document at line 151)"), "{e}");
    }

    /// An error from the caller stops the reading too.
    #[test]
    fn an_error_from_the_caller_ends_it() {
        let dir = TempDir::new("files");
        let paths: Vec<PathBuf> = (0..10)
            .map(|i| {
                let p = dir.0.join(format!("s{i}.yaml"));
                std::fs::write(&p, service(&format!("s{i}"))).unwrap();
                p
            })
            .collect();
        let mut taken = 0;
        let r = parse_each(&paths, |_| {
            taken += 1;
            if taken == 4 {
                return Err(SourceError::Io {
                    path: "x".into(),
                    source: std::io::Error::other("stop"),
                });
            }
            Ok(())
        });
        assert!(r.is_err());
        assert_eq!(taken, 4);
    }
}
