//! The manifests folder followed per file, for the node agent: the folder is read once into a
//! [`Cluster`]; after that a change re-reads only the files that changed and reports what they
//! changed as [`Changes`], the same per-change report the API source gives (so that the consumer
//! recompiles only the Services touched).
//!
//! - **Which files changed**: from the paths the watcher names ([`Hint::Paths`]) when each is a
//!   file already read, a file that cannot matter (a temporary or swap file: not a manifest name,
//!   not a file read under another name, not holding files read) or one removed; anything else (a
//!   new manifest file, a folder or symlink, an event queue overflow: [`Hint::Rescan`]) walks the
//!   folder again and compares each file's modification time, size, inode and device with those
//!   of the read. Either way only the files that differ are read.
//! - **Validation**: every changed file is parsed and typed before anything is applied; a file
//!   that fails (syntax, a field of the wrong type) refuses the whole change with an error naming
//!   the file, the line and the field, and the source stays as it was (the next change tries the
//!   file again). Objects with unknown fields are left out with a note, as in a whole read.
//! - **Duplicates**: an object defined in more than one file is resolved as a whole read does (the
//!   later file in path order wins, with a note); a change touching such an object re-reads the
//!   whole folder and reports [`Update::whole`].
use crate::NodeInfo;
use crate::api_source::{Changes, Kind};
use crate::cluster::Cluster;
use crate::frontend::{Note, ObjectKey};
use crate::manifests::{self, Manifests, Origin, SourceError};
use files::{Docs, FileStamp, Parsed, stamp_of};
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use record::{FileMap, FileRecord, Record};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

mod docs;
mod files;
mod record;

/// Which kind an object is, in a file's record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Which {
    Service,
    EndpointSlice,
    Node,
    Pod,
}

type Id = (Which, ObjectKey);

/// What the watcher says about a burst of events.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Hint {
    /// The paths its events named.
    Paths(BTreeSet<PathBuf>),
    /// Look at every file (an overflow, an error, the folder replaced).
    Rescan,
}

/// What a change did to the store.
#[derive(Debug, Default)]
pub struct Update {
    /// The Services, nodes and host-port nodes touched (see [`Changes`]).
    pub changes: Changes,
    /// The folder was read whole again: compile everything.
    pub whole: bool,
    /// The files read (changed or new) and taken out (removed).
    pub read: usize,
    pub removed: usize,
    /// Of the files of several YAML documents read, the documents parsed (those whose text
    /// changed, or all of them when the file is parsed whole).
    pub documents: usize,
}

/// A manifests folder as a [`Cluster`], followed per file.
pub struct FolderSource {
    dir: PathBuf,
    cluster: Cluster,
    files: FileMap,
    /// The objects defined in more than one file, and in how many (the others are in one).
    dups: HashMap<Id, u32>,
    /// The Pods defined (the store keeps only those with host ports).
    pods: HashSet<ObjectKey>,
    /// Files whose last read was refused: read again with every change until one is applied
    /// (as a whole read would, nothing else is applied while a file is refused).
    refused: BTreeSet<PathBuf>,
    /// The last walk failed (a dangling link): the next change walks again.
    must_scan: bool,
}

impl FolderSource {
    /// Reads every manifest file under `dir` (the rules of [`manifests`]).
    pub fn read(dir: &Path) -> Result<FolderSource, SourceError> {
        let mut s = FolderSource {
            dir: dir.to_path_buf(),
            cluster: Cluster::new(),
            files: FileMap::default(),
            dups: HashMap::new(),
            pods: HashSet::new(),
            refused: BTreeSet::new(),
            must_scan: false,
        };
        let mut ignored = Changes::default();
        let mut seen = HashMap::new();
        let mut open = Taking::default();
        // A round of files (or of a big file's documents) at a time (see `files`).
        files::parse_each::<SourceError>(&manifests::files(dir)?, |p| {
            s.put(&mut open, &p.manifests, &mut ignored, Some(&mut seen));
            if !p.more {
                let t = std::mem::take(&mut open);
                s.finish(t, &p.path, p.stamp, &p.docs, None);
            }
            Ok(())
        })?;
        s.files.shrink_to_fit();
        s.refresh_notes();
        Ok(s)
    }

    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// The notes about the input as a whole: rejected objects and duplicates, in path order.
    pub fn notes(&self) -> &[Note] {
        &self.cluster.notes
    }

    /// How many files were read.
    pub fn file_count(&self) -> usize {
        self.files.len()
    }

    /// Applies what changed since the last read or update; `None` when no file read differs
    /// and no earlier change was refused (a refused file deleted gives an empty update). On
    /// error nothing was applied.
    pub fn update(&mut self, hint: &Hint) -> Result<Option<Update>, SourceError> {
        let targeted = match hint {
            Hint::Paths(p) if !self.must_scan => self.targeted(p),
            _ => None,
        };
        let (mut changed, mut removed) = match targeted {
            Some(found) => found,
            None => {
                self.must_scan = true;
                let found = self.scan()?;
                self.must_scan = false;
                found
            }
        };
        // Files refused last time: read again, or gone (then the folder is whole again).
        let had_refused = !self.refused.is_empty();
        for p in std::mem::take(&mut self.refused) {
            if changed.contains(&p) || removed.contains(&p) {
                continue;
            }
            match stamp_of(&p) {
                Some(_) => changed.push(p),
                None if self.files.contains_key(&p) => removed.push(p),
                None => {}
            }
        }
        if changed.is_empty() && removed.is_empty() {
            // A refused file deleted (it had put nothing in): no object changes, but the
            // change that was refused is over, which the caller must hear about.
            return Ok(had_refused.then(Update::default));
        }
        let mut parsed = Vec::with_capacity(changed.len());
        for (i, path) in changed.iter().enumerate() {
            match self.read_changed(path) {
                Ok(p) => parsed.push(p),
                Err(e) => {
                    // This file and the others of the change are looked at again next time.
                    self.refused.extend(changed[i..].iter().cloned());
                    self.refused.extend(parsed.into_iter().map(|p| p.path));
                    self.refused.extend(removed);
                    return Err(e);
                }
            }
        }
        let mut up = Update {
            read: parsed.len(),
            removed: removed.len(),
            documents: parsed.iter().map(|p| p.docs.parsed()).sum(),
            ..Default::default()
        };
        if self.touches_duplicates(&parsed, &removed) {
            *self = FolderSource::read(&self.dir).inspect_err(|_| {
                self.refused.extend(parsed.iter().map(|p| p.path.clone()));
                self.refused.extend(removed.iter().cloned());
            })?;
            up.whole = true;
            return Ok(Some(up));
        }
        let nodes_before = self.nodes_of(&parsed, &removed);
        let mut old = Vec::with_capacity(parsed.len());
        for p in &parsed {
            old.push(self.remove(&p.path, &p.docs, &mut up.changes));
        }
        for path in &removed {
            self.remove(path, &Docs::All(Vec::new()), &mut up.changes);
        }
        for (p, old) in parsed.into_iter().zip(old) {
            self.insert(p, &mut up.changes, old);
        }
        // A Node taken out and put back unchanged is no change.
        up.changes
            .nodes
            .retain(|n| nodes_before.get(n) != Some(&self.cluster.node(n).cloned()));
        self.refresh_notes();
        Ok(Some(up))
    }

    /// Reads a changed file: only the documents whose text changed when the record lists its
    /// documents; the whole file when one of them defines an object a document kept defines, or
    /// two define the same (the later one wins, as in a whole read: a whole file's record knows).
    fn read_changed(&self, path: &Path) -> Result<Parsed, SourceError> {
        let Some(rec) = self.files.get(path).filter(|r| !r.docs().is_empty()) else {
            return files::parse(path.to_path_buf());
        };
        let p = files::parse_changed(path.to_path_buf(), rec.docs())?;
        if p.docs.none_kept() {
            return Ok(p);
        }
        // The documents parsed are few (an edit): compared with the kept objects one by one,
        // without hashing the file's thousands of objects.
        let mut new = HashSet::new();
        if ids_of(&p.manifests).any(|id| !new.insert(id)) {
            return files::parse(path.to_path_buf());
        }
        // Each object of the file is in the store and in one of its documents: a kept document
        // can define only an object the store holds that no document parsed again defined.
        let dropped: HashSet<&Id> = rec.dropped(&p.docs).into_iter().collect();
        new.retain(|id| !dropped.contains(id) && exists(&self.cluster, &self.pods, id));
        let clash = match new.len() {
            0 => false,
            1..=16 => {
                let new: Vec<&Id> = new.iter().collect();
                rec.kept(&p.docs).any(|id| new.contains(&id))
            }
            _ => rec.kept(&p.docs).any(|id| new.contains(id)),
        };
        if clash {
            return files::parse(path.to_path_buf());
        }
        Ok(p)
    }

    /// The changed and removed files among `paths`, or None when the folder must be walked.
    fn targeted(&self, paths: &BTreeSet<PathBuf>) -> Option<(Vec<PathBuf>, Vec<PathBuf>)> {
        let (mut changed, mut removed) = (Vec::new(), Vec::new());
        for p in paths {
            if p == &self.dir {
                return None;
            }
            let link = std::fs::symlink_metadata(p);
            if let Some(rec) = self.files.get(p) {
                match link {
                    Ok(l) if l.file_type().is_symlink() => return None,
                    Ok(_) => match stamp_of(p) {
                        Some(s) if s == rec.stamp => {}
                        Some(_) => changed.push(p.clone()),
                        None => return None,
                    },
                    Err(_) => removed.push(p.clone()),
                }
                continue;
            }
            let name = p.file_name().map(|n| n.to_string_lossy());
            let manifest_name = name.as_deref().is_some_and(manifests::is_manifest_name);
            match link {
                // A temporary or swap file, unless it is a file read under another name.
                Ok(l) if l.is_file() && !manifest_name => {
                    if self.has_inode(l.ino()) {
                        return None;
                    }
                }
                // Gone and never read: harmless unless files read were under it (a folder).
                Err(_) if !manifest_name => {
                    if self.holds_files_under(p) {
                        return None;
                    }
                }
                _ => return None,
            }
        }
        Some((changed, removed))
    }

    /// Walks the folder: the files new or differing, and those no longer there.
    fn scan(&self) -> Result<(Vec<PathBuf>, Vec<PathBuf>), SourceError> {
        let now = manifests::files(&self.dir)?;
        let seen: HashSet<&Path> = now.iter().map(PathBuf::as_path).collect();
        let removed = self
            .files
            .keys()
            .filter(|p| !seen.contains(p))
            .map(Path::to_path_buf)
            .collect();
        let changed = now
            .iter()
            .filter(|p| match self.files.get(p) {
                Some(rec) => stamp_of(p) != Some(rec.stamp),
                None => true,
            })
            .cloned()
            .collect();
        Ok((changed, removed))
    }

    /// Whether a file read has this inode (on any device: a false match only walks the folder).
    fn has_inode(&self, ino: u64) -> bool {
        self.files.values().any(|r| r.stamp.ino == ino)
    }

    /// Whether some file read lies under `dir` (paths sort component by component).
    fn holds_files_under(&self, dir: &Path) -> bool {
        self.files
            .first_from(dir)
            .is_some_and(|p| p.starts_with(dir))
    }

    /// Whether the change touches an object defined, before or after it, in more than one file.
    fn touches_duplicates(&self, parsed: &[Parsed], removed: &[PathBuf]) -> bool {
        let mut old: HashSet<&Id> = HashSet::new();
        for id in self.old_objects(parsed, removed) {
            {
                if self.dups.contains_key(id) {
                    return true;
                }
                old.insert(id);
            }
        }
        let mut new: HashSet<Id> = HashSet::new();
        for p in parsed {
            // Each file's objects once (a file may define one twice: the later wins, no walk).
            let mine: HashSet<Id> = ids_of(&p.manifests).collect();
            for id in mine {
                if (!old.contains(&id) && exists(&self.cluster, &self.pods, &id)) || !new.insert(id)
                {
                    return true;
                }
            }
        }
        false
    }

    /// The objects the change takes out or replaces: those of the files removed, and of the
    /// documents of the files read that were parsed again or are gone.
    fn old_objects(&self, parsed: &[Parsed], removed: &[PathBuf]) -> Vec<&Id> {
        let mut out = Vec::new();
        for p in parsed {
            out.extend(
                self.files
                    .get(&p.path)
                    .map(|r| r.dropped(&p.docs))
                    .unwrap_or_default(),
            );
        }
        for r in removed.iter().filter_map(|p| self.files.get(p)) {
            out.extend(r.objects.as_slice());
        }
        out
    }

    /// The Nodes the change may touch, as they are now.
    fn nodes_of(
        &self,
        parsed: &[Parsed],
        removed: &[PathBuf],
    ) -> HashMap<String, Option<NodeInfo>> {
        let old = self.old_objects(parsed, removed).into_iter().cloned();
        let new = parsed.iter().flat_map(|p| ids_of(&p.manifests));
        old.chain(new)
            .filter(|(w, _)| *w == Which::Node)
            .map(|(_, k)| {
                let now = self.cluster.node(&k.name).cloned();
                (k.name.to_string(), now)
            })
            .collect()
    }

    /// Takes a file's record out and its objects out of the store, but those of the documents
    /// `docs` keeps; returns the record.
    fn remove(&mut self, path: &Path, docs: &Docs, ch: &mut Changes) -> Option<FileRecord> {
        let rec = self.files.remove(path)?;
        for id in rec.dropped(docs) {
            let c = &mut self.cluster;
            match id.0 {
                Which::Service => Service::delete(&id.1, c, ch),
                Which::EndpointSlice => EndpointSlice::delete(&id.1, c, ch),
                Which::Node => Node::delete(&id.1, c, ch),
                Which::Pod => Pod::delete(&id.1, c, ch),
            }
            if id.0 == Which::Pod {
                self.pods.remove(&id.1);
            }
        }
        Some(rec)
    }

    /// Puts a file's objects into the store, in order, and its record (built from `old` for
    /// the documents kept). An update has no `seen` (see `put`).
    fn insert(&mut self, p: Parsed, ch: &mut Changes, old: Option<FileRecord>) {
        let mut t = Taking::default();
        self.put(&mut t, &p.manifests, ch, None);
        self.finish(t, &p.path, p.stamp, &p.docs, old);
    }

    /// Puts objects of the file being taken in into the store, in order. `seen` (a whole read)
    /// holds where each object read so far was defined, to note duplicates across files; an
    /// update has none (see `touches_duplicates`).
    fn put(
        &mut self,
        t: &mut Taking,
        m: &Manifests,
        ch: &mut Changes,
        seen: Option<&mut HashMap<Id, String>>,
    ) {
        let mut put = Put {
            rec: &mut t.rec,
            dups: &mut self.dups,
            pods: &mut self.pods,
            seen: seen.unwrap_or(&mut t.local),
            mine: &mut t.mine,
            cluster: &mut self.cluster,
            ch,
        };
        put.all(Which::Service, &m.services);
        put.all(Which::EndpointSlice, &m.endpoint_slices);
        put.all(Which::Node, &m.nodes);
        put.all(Which::Pod, &m.pods);
        t.rejected
            .extend(m.rejected.iter().map(|r| (rejected_note(r), r.origin.line)));
    }

    /// Puts the record of the file taken in, built from `old` for the documents kept.
    fn finish(
        &mut self,
        t: Taking,
        path: &Path,
        stamp: FileStamp,
        docs: &Docs,
        old: Option<FileRecord>,
    ) {
        let rec = record::build(path, stamp, t.rec, t.rejected, docs, old, &mut self.cluster);
        self.files.insert(path, rec);
    }

    /// The store's notes: those of every file, in path order.
    fn refresh_notes(&mut self) {
        self.cluster.notes = self
            .files
            .values()
            .flat_map(|r| r.notes.iter().cloned())
            .collect();
    }
}

/// A file being taken into the store (a big file comes a round of documents at a time).
#[derive(Default)]
struct Taking {
    rec: Record,
    /// Rejected objects' notes, with their lines.
    rejected: Vec<(Note, u64)>,
    /// The objects of this file so far.
    mine: HashSet<Id>,
    /// Where each of its objects was first defined, when there is no whole read's `seen`.
    local: HashMap<Id, String>,
}

/// One file's objects going into the store.
struct Put<'a> {
    rec: &'a mut Record,
    dups: &'a mut HashMap<Id, u32>,
    pods: &'a mut HashSet<ObjectKey>,
    /// Where each object was first defined (this file's, or the whole read's so far).
    seen: &'a mut HashMap<Id, String>,
    /// The objects of this file so far.
    mine: &'a mut HashSet<Id>,
    cluster: &'a mut Cluster,
    ch: &'a mut Changes,
}

impl Put<'_> {
    fn all<K: Kind>(&mut self, which: Which, list: &[(Origin, K)]) {
        for (o, obj) in list {
            let id = (which, obj.key());
            if let Some(prev) = self.seen.get(&id) {
                self.rec.dup = true;
                self.rec.notes.push(Note {
                    object: format!("{} {}", kind_name(which), id.1),
                    origin: Some(o.to_string()),
                    message: format!("defined again (first in {prev}); the later one is used"),
                    error: false,
                });
            } else {
                self.seen.insert(id.clone(), o.to_string());
            }
            if self.mine.insert(id.clone()) {
                if exists(self.cluster, self.pods, &id) {
                    *self.dups.entry(id.clone()).or_insert(1) += 1;
                }
                if which == Which::Pod {
                    self.pods.insert(id.1.clone());
                }
                self.rec.objects.push((id, o.line));
            } else {
                self.rec.dup = true;
            }
            obj.apply(self.cluster, self.ch, Some(o));
        }
    }
}

/// Whether the store holds the object (a Pod: whether a file defines it).
fn exists(c: &Cluster, pods: &HashSet<ObjectKey>, (which, key): &Id) -> bool {
    match which {
        Which::Service => c.services.contains_key(key),
        Which::EndpointSlice => c.slices.contains_key(key),
        Which::Node => c.node(&key.name).is_some(),
        Which::Pod => pods.contains(key),
    }
}

fn ids_of(m: &Manifests) -> impl Iterator<Item = Id> + '_ {
    let svc = m.services.iter().map(|(_, s)| (Which::Service, s.key()));
    let eps = m
        .endpoint_slices
        .iter()
        .map(|(_, s)| (Which::EndpointSlice, s.key()));
    let nodes = m.nodes.iter().map(|(_, n)| (Which::Node, n.key()));
    let pods = m.pods.iter().map(|(_, p)| (Which::Pod, p.key()));
    svc.chain(eps).chain(nodes).chain(pods)
}

fn kind_name(w: Which) -> &'static str {
    match w {
        Which::Service => "Service",
        Which::EndpointSlice => "EndpointSlice",
        Which::Node => "Node",
        Which::Pod => "Pod",
    }
}

fn rejected_note(r: &manifests::Rejected) -> Note {
    Note {
        object: format!("{} {}", r.kind, r.name),
        origin: Some(r.origin.to_string()),
        message: r.to_string(),
        error: true,
    }
}

#[cfg(test)]
#[path = "folder_source_tests.rs"]
mod tests;
