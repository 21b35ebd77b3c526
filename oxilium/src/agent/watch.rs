//! Change notification for the agent's sources: the edge LB's config file and the node's manifests
//! folder. inotify (the `notify` crate's recommended watcher; its polling watcher if inotify cannot
//! be had, e.g. out of watches), events debounced, and a [`Stamp`] to tell a real change from
//! noise.
//!
//! - A folder is watched recursively: an edit anywhere under it, a file created in a new
//!   subfolder, a file renamed over another, all count.
//! - A file is watched through its folder (not recursively), so that replacing it by a rename
//!   (write a temporary file, `mv` it over: what editors and `ci/demo` do) is seen; only events
//!   naming the file count (other files in the folder, such as a log, do not).
//! - Debounce (`--watch-ms`): [`Watch::changed`] returns once no further event came for the
//!   interval, and at the latest [`MAX_WAIT`] intervals after the first event of the burst.
//! - Reads are not changes (the reader's own opens would wake it up again).
//! - A watched folder replaced or removed is watched again where it is found after a burst (while
//!   it is missing, its path is looked at every interval).
//!
//! The caller compares a [`Stamp`] (sizes, modification times and inodes of the files it reads,
//! symlinks followed) before and after, so that a burst from an editor's swap file or a `touch` of an
//! unrelated file reloads nothing.
use anyhow::{Context, Result};
pub use k8s::folder_source::Hint;
use notify::event::{AccessKind, AccessMode};
use notify::{Event, EventKind, RecursiveMode, Watcher};
use std::ffi::{OsStr, OsString};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::warn;

/// A burst is cut after this many debounce intervals, so that a file written without pause still
/// gets applied now and then.
pub const MAX_WAIT: u32 = 4;

pub struct Watch {
    watcher: Box<dyn Watcher + Send>,
    /// The paths each relevant event named; None: look at everything (an error, an overflow).
    events: mpsc::UnboundedReceiver<Option<Vec<PathBuf>>>,
    debounce: Duration,
    /// The folder holding the watch, its device and inode when last watched (None: missing).
    folder: PathBuf,
    mode: RecursiveMode,
    id: Option<(u64, u64)>,
    /// The burst being debounced: when its first and its last event came.
    burst: Option<(Instant, Instant)>,
    /// What the burst's events named.
    hint: Hint,
}

impl Watch {
    /// Everything under `dir`, subfolders included (also those created later).
    pub fn folder(dir: &Path, debounce: Duration) -> Result<Watch> {
        Watch::new(dir.to_path_buf(), RecursiveMode::Recursive, None, debounce)
    }

    /// The file `file`, through its folder.
    pub fn file(file: &Path, debounce: Duration) -> Result<Watch> {
        let folder = match file.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = file
            .file_name()
            .with_context(|| format!("{}: not a file name", file.display()))?;
        Watch::new(
            folder,
            RecursiveMode::NonRecursive,
            Some(name.into()),
            debounce,
        )
    }

    fn new(
        folder: PathBuf,
        mode: RecursiveMode,
        name: Option<OsString>,
        debounce: Duration,
    ) -> Result<Watch> {
        let (watcher, events) = match start(false, &folder, mode, &name, debounce) {
            Ok(w) => w,
            Err(e) if matches!(e.kind, notify::ErrorKind::PathNotFound) => {
                return Err(e).with_context(|| format!("watching {}", folder.display()));
            }
            Err(e) => {
                warn!(
                    "watching {} with inotify: {e}; polling every {debounce:?} instead",
                    folder.display()
                );
                start(true, &folder, mode, &name, debounce)
                    .with_context(|| format!("watching {}", folder.display()))?
            }
        };
        Ok(Watch {
            watcher,
            events,
            debounce,
            id: folder_id(&folder),
            folder,
            mode,
            burst: None,
            hint: Hint::Paths(Default::default()),
        })
    }

    /// Waits for a change: the end of a burst of events; returns the paths they named (or
    /// [`Hint::Rescan`]). Cancel-safe (a burst under way is kept when the future is dropped,
    /// e.g. in a `select!`).
    pub async fn changed(&mut self) -> Hint {
        loop {
            match self.burst {
                None if self.id.is_none() => {
                    // The folder was gone: look for it again every interval.
                    match tokio::time::timeout(self.debounce, self.events.recv()).await {
                        Err(_) => {
                            if self.rewatch() {
                                return Hint::Rescan;
                            }
                            continue;
                        }
                        Ok(ev) => self.take(ev),
                    }
                    let now = Instant::now();
                    self.burst = Some((now, now));
                }
                None => {
                    let ev = self.events.recv().await;
                    if ev.is_none() {
                        std::future::pending::<()>().await;
                    }
                    self.take(ev);
                    let now = Instant::now();
                    self.burst = Some((now, now));
                }
                Some((first, last)) => {
                    let deadline = (last + self.debounce).min(first + self.debounce * MAX_WAIT);
                    match tokio::time::timeout_at(deadline, self.events.recv()).await {
                        Ok(Some(ev)) => {
                            self.take(Some(ev));
                            self.burst = Some((first, Instant::now()));
                        }
                        _ => {
                            self.burst = None;
                            let hint =
                                std::mem::replace(&mut self.hint, Hint::Paths(Default::default()));
                            return match self.rewatch() {
                                true => Hint::Rescan,
                                false => hint,
                            };
                        }
                    }
                }
            }
        }
    }

    /// Adds an event's paths to the burst's.
    fn take(&mut self, ev: Option<Option<Vec<PathBuf>>>) {
        match (&mut self.hint, ev.flatten()) {
            (Hint::Paths(set), Some(paths)) => set.extend(paths),
            (h, None) => *h = Hint::Rescan,
            (Hint::Rescan, Some(_)) => {}
        }
    }

    /// Watches the folder again if it was replaced (or is back); true if it did.
    fn rewatch(&mut self) -> bool {
        let id = folder_id(&self.folder);
        if id == self.id || id.is_none() {
            self.id = id;
            return false;
        }
        let _ = self.watcher.unwatch(&self.folder);
        match self.watcher.watch(&self.folder, self.mode) {
            Ok(()) => {
                self.id = id;
                true
            }
            Err(e) => {
                warn!("watching {}: {e}", self.folder.display());
                self.id = None;
                false
            }
        }
    }
}

type Started = (
    Box<dyn Watcher + Send>,
    mpsc::UnboundedReceiver<Option<Vec<PathBuf>>>,
);

/// A watcher on `folder` (inotify, or polling) that sends the paths of every relevant event
/// (None: an error or overflow, look at everything).
fn start(
    poll: bool,
    folder: &Path,
    mode: RecursiveMode,
    name: &Option<OsString>,
    debounce: Duration,
) -> notify::Result<Started> {
    let (tx, events) = mpsc::unbounded_channel();
    let (root, name) = (folder.to_path_buf(), name.clone());
    let handler = move |ev: notify::Result<Event>| {
        if relevant(&ev, &root, name.as_deref()) {
            let _ = tx.send(match ev {
                Ok(e) if !e.need_rescan() && !e.paths.is_empty() => Some(e.paths),
                _ => None,
            });
        }
    };
    let config = notify::Config::default();
    let mut watcher: Box<dyn Watcher + Send> = if poll {
        Box::new(notify::PollWatcher::new(
            handler,
            config.with_poll_interval(debounce),
        )?)
    } else {
        Box::new(notify::RecommendedWatcher::new(handler, config)?)
    };
    watcher.watch(folder, mode)?;
    Ok((watcher, events))
}

fn folder_id(p: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()))
}

/// Whether an event may be a change: not a read, and (watching a file) naming the file or the
/// folder itself. Errors (e.g. a queue overflow) count: the caller looks again.
fn relevant(ev: &notify::Result<Event>, folder: &Path, name: Option<&OsStr>) -> bool {
    let Ok(ev) = ev else { return true };
    if ev.need_rescan() {
        return true;
    }
    if let EventKind::Access(a) = ev.kind
        && a != AccessKind::Close(AccessMode::Write)
    {
        return false;
    }
    match name {
        None => true,
        Some(n) => ev
            .paths
            .iter()
            .any(|p| p.file_name() == Some(n) || p == folder),
    }
}

/// What the files read look like: a change of any of them (or of which files there are) shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stamp(Result<Vec<(PathBuf, Option<FileStamp>)>, String>);

/// Modification time, size and inode.
type FileStamp = (SystemTime, u64, u64);

impl Stamp {
    /// One file (followed if a symlink); a missing file is a state of its own.
    pub fn file(path: &Path) -> Stamp {
        Stamp(Ok(vec![(path.to_path_buf(), file_stamp(path))]))
    }

    /// The files of a manifests folder, as `k8s::manifests` reads them.
    pub fn folder(dir: &Path) -> Stamp {
        Stamp(
            k8s::manifests::files(dir)
                .map(|files| {
                    files
                        .into_iter()
                        .map(|f| {
                            let s = file_stamp(&f);
                            (f, s)
                        })
                        .collect()
                })
                .map_err(|e| e.to_string()),
        )
    }
}

fn file_stamp(path: &Path) -> Option<FileStamp> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len(), m.ino()))
}

#[cfg(test)]
#[path = "watch_tests.rs"]
mod tests;
