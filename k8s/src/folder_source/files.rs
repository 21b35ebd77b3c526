//! Reading and typing manifest files for the folder source, on worker threads.
//!
//! Files are parsed a round of [`ROUND`] at a time, each round split between up to [`THREADS`]
//! threads, while the caller takes in the round before (so at most two rounds of typed objects
//! are held). Results come back in the order of the paths given, and the first failure in that
//! order is the error returned, as a read file by file would. The threads do the parsing work
//! (YAML events, JSON values, typed objects) and hand over only the typed objects: with glibc
//! each thread allocates from an arena of its own, so the parser's short-lived allocations do not
//! fragment the heap the caller's long-lived store grows in, and they are given back whole.
use crate::manifests::{self, Manifests, SourceError};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// Files per round.
const ROUND: usize = 256;
/// Worker threads at most (fewer when the machine has fewer cores).
const THREADS: usize = 4;

/// Modification time, size, inode and device of a file as read.
pub(super) type FileStamp = (SystemTime, u64, u64, u64);

/// One file read and typed, not yet applied.
pub(super) struct Parsed {
    pub path: PathBuf,
    pub stamp: FileStamp,
    pub manifests: Manifests,
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
pub(super) fn parse_all(paths: &[PathBuf]) -> Vec<Result<Parsed, SourceError>> {
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

/// Reads and types one file.
pub(super) fn parse(path: PathBuf) -> Result<Parsed, SourceError> {
    let stamp = stamp_of(&path).ok_or_else(|| SourceError::Io {
        path: path.clone(),
        source: std::io::Error::new(std::io::ErrorKind::NotFound, "not a file"),
    })?;
    let text = std::fs::read_to_string(&path).map_err(|source| SourceError::Io {
        path: path.clone(),
        source,
    })?;
    let mut manifests = Manifests::default();
    manifests::parse_file(&path, &text, &mut manifests)?;
    Ok(Parsed {
        path,
        stamp,
        manifests,
    })
}

pub(super) fn stamp_of(path: &Path) -> Option<FileStamp> {
    let m = std::fs::metadata(path).ok()?;
    if !m.is_file() {
        return None;
    }
    Some((m.modified().ok()?, m.len(), m.ino(), m.dev()))
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
