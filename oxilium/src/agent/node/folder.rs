//! The manifests folder as the node agent's source: read whole once ([`k8s::folder_source`]), then
//! followed per change through the same path as the API source: the files that changed are read
//! again (of a YAML file of several documents, only the documents whose text changed are parsed),
//! the Services they touch recompiled ([`ClusterTracker::changed`]) and only the map
//! entries that differ written (`Reconciler::apply_services`). A Node change, a HostPort pod, an
//! object defined in two files, a change naming most Services, or the first change after a
//! failed apply is compiled whole.
use super::tracker::ClusterTracker;
use super::{Follower, NodeArgs, NodeView, Shared};
use crate::agent::watch::{Hint, Watch};
use anyhow::{Context, Result};
use k8s::folder_source::FolderSource;
use std::path::Path;
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// The folder as last read and this node's frontends as last compiled from it.
pub struct FolderFollow {
    source: FolderSource,
    tracker: ClusterTracker,
}

impl FolderFollow {
    /// Reads the whole folder; returns the follower and this node's whole view.
    pub fn read(na: &NodeArgs, dir: &Path) -> Result<(FolderFollow, NodeView)> {
        let started = Instant::now();
        let source = FolderSource::read(dir)
            .map_err(k8s::Error::from)
            .with_context(|| format!("--manifests {}", dir.display()))?;
        log_notes(&source);
        let mut f = FolderFollow {
            source,
            tracker: na.cluster_tracker()?,
        };
        let view = f.tracker.full(f.source.cluster())?;
        info!(
            files = f.source.file_count(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "manifests read"
        );
        Ok((f, view))
    }

    /// The view of what changed since the last read; None when no file read differs. A file
    /// refused (its error names it, the line and the field) changes nothing.
    pub fn update(&mut self, dir: &Path, hint: &Hint) -> Result<Option<NodeView>> {
        let started = Instant::now();
        let up = match self.source.update(hint) {
            Ok(Some(up)) => up,
            Ok(None) => return Ok(None),
            Err(e) => {
                return Err(k8s::Error::from(e))
                    .with_context(|| format!("--manifests {}", dir.display()));
            }
        };
        if !self.source.notes().is_empty() {
            log_notes(&self.source);
        }
        let cluster = self.source.cluster();
        // A change naming most Services (a big file rewritten) is cheaper compiled whole than
        // as a delta of every Service.
        let most = up.changes.services.len() > 64
            && up.changes.services.len() * 2 > cluster.service_keys().count();
        let view = match up.whole || most {
            true => self.tracker.full(cluster)?,
            false => self.tracker.changed(cluster, &up.changes)?,
        };
        info!(
            read = up.read,
            removed = up.removed,
            documents = up.documents,
            services = up.changes.services.len(),
            whole = up.whole,
            elapsed_us = started.elapsed().as_micros() as u64,
            "manifests change compiled"
        );
        Ok(Some(view))
    }

    /// The datapath may hold less than the tracker: the next change is compiled whole.
    pub fn invalidate(&mut self) {
        self.tracker.invalidate();
    }
}

/// Hands the heap memory freed by a whole read or compile (the parsed objects, the loaders' BTF)
/// back to the kernel: glibc keeps freed memory in its arenas otherwise, and the agent's resident
/// size would stay at its peak.
pub(super) fn return_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks the allocator's own free lists; no pointer is handed over.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Makes every thread allocate from one heap (glibc's main arena), and every block of 128 KiB or
/// more from a mapping of its own. By default glibc gives threads heaps of their own (up to eight
/// per core): the runtime's workers and the folder's parsing threads then each keep a partly used
/// heap, which costs the node agent a few MiB of resident memory at 10,000 Services for no gain
/// (it allocates little once it runs). And it raises its mapping threshold each time such a block
/// is freed, after which the large short-lived buffers of a whole compile (tens of thousands of
/// entries) are carved from the heap among long-lived objects, and the peak stays resident (at
/// 10,000 Services: a peak of 72 MiB instead of 67 MiB).
pub(crate) fn one_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets allocator parameters; it is called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

fn log_notes(source: &FolderSource) {
    for n in source.notes() {
        warn!("{n}");
    }
}

/// Follows the folder: the first view's endpoints, then every change.
pub(super) async fn run(args: &crate::agent::AgentArgs, dir: &Path, state: &Shared) -> Result<()> {
    let mut follower = Follower::new(state);
    // The watch is set before the folder is compared with the first read: a change from now on
    // is seen, one made since `start` read it is found by the walk below.
    let every = Duration::from_millis(args.watch_ms.max(50));
    let mut watch = Watch::folder(dir, every)?;
    let first = state.lock().unwrap().first_view.take();
    let (mut folder, view) = match first {
        Some(f) => f,
        None => FolderFollow::read(&args.node_args, dir)?,
    };
    follower.apply(state, Ok(view), "manifests").await;
    return_freed_memory();
    let mut hint = Some(Hint::Rescan);
    let mut tick = tokio::time::interval(every);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        if let Some(h) = hint.take() {
            let started = Instant::now();
            match folder.update(dir, &h) {
                Ok(None) => {}
                Ok(Some(view)) => {
                    let whole = matches!(view.model, super::ModelUpdate::Whole(_));
                    follower.apply(state, Ok(view), "manifests").await;
                    if whole {
                        return_freed_memory();
                    }
                    if state.lock().unwrap().last_error.is_some() {
                        folder.invalidate();
                    }
                    // From the end of the burst to the datapath written (ci/bench-restart reads it).
                    let us = started.elapsed().as_micros() as u64;
                    info!(elapsed_us = us, "manifests change handled");
                }
                // Refused before anything was written.
                Err(e) => follower.apply(state, Err(e), "manifests").await,
            }
        }
        tokio::select! {
            h = watch.changed() => hint = Some(h),
            _ = tick.tick() => follower.tick(state).await,
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
        }
    }
    Ok(())
}
