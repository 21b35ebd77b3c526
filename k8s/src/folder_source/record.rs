//! What the folder source keeps of each file: its stamp, its objects and notes, and for a YAML
//! file of several documents a digest of each document, so that a change parses only the
//! documents whose text differs (the file's text and parsed objects are not kept).
use super::docs::{self, Digest};
use super::files::{Docs, FileStamp, NewDoc};
use super::{Id, Which};
use crate::cluster::Cluster;
use crate::frontend::Note;
use std::path::Path;

/// What the source keeps of one file: enough to tell it changed and to take its objects out.
pub(super) struct FileRecord {
    pub stamp: FileStamp,
    /// The objects it defines (each once), and its documents (see [`Objects::Docs`]).
    pub objects: Objects,
    /// Its rejected objects and in-file duplicates, document after document with `Docs`.
    pub notes: Box<[Note]>,
}

/// One document of a file as last read (not its text: a digest of it).
pub(super) struct DocRecord {
    digest: Digest,
    /// 1-based line where it starts.
    line: u32,
    /// How many of the file's objects and notes are this document's.
    objects: u32,
    notes: u32,
}

impl DocRecord {
    pub(super) fn digest(&self) -> Digest {
        self.digest
    }

    pub(super) fn line(&self) -> u32 {
        self.line
    }
}

impl FileRecord {
    /// Each document's objects and notes, as ranges of `objects` and `notes`.
    fn spans(&self) -> Vec<(std::ops::Range<usize>, std::ops::Range<usize>)> {
        let (mut o, mut n) = (0, 0);
        let mut out = Vec::new();
        for d in self.docs() {
            let (o2, n2) = (o + d.objects as usize, n + d.notes as usize);
            out.push((o..o2, n..n2));
            (o, n) = (o2, n2);
        }
        out
    }

    /// The documents of a file read by document (empty otherwise).
    pub(super) fn docs(&self) -> &[DocRecord] {
        match &self.objects {
            Objects::Docs(_, d) => d,
            _ => &[],
        }
    }

    /// Which of its documents a read giving `docs` keeps.
    fn kept_docs(&self, docs: &Docs) -> Vec<bool> {
        match docs {
            Docs::All(docs) => {
                let mut kept = vec![false; self.docs().len()];
                for k in docs.iter().filter_map(|d| d.kept) {
                    kept[k as usize] = true;
                }
                kept
            }
            Docs::Edited { changed, .. } => {
                let mut kept = vec![true; self.docs().len()];
                for (i, _) in changed {
                    kept[*i as usize] = false;
                }
                kept
            }
        }
    }

    /// The objects of the documents a read giving `docs` keeps.
    pub(super) fn kept<'a>(&'a self, docs: &Docs) -> impl Iterator<Item = &'a Id> {
        let all = self.objects.as_slice();
        let kept = self.kept_docs(docs);
        let mut at = 0;
        self.docs().iter().zip(kept).flat_map(move |(d, k)| {
            let n = d.objects as usize;
            at += n;
            if k { &all[at - n..at] } else { &all[..0] }
        })
    }

    /// The objects that a read giving `docs` leaves out or parses again: those of the documents
    /// it does not keep (all of them when it kept none).
    pub(super) fn dropped(&self, docs: &Docs) -> Vec<&Id> {
        let all = self.objects.as_slice();
        if self.docs().is_empty() || docs.none_kept() {
            return all.iter().collect();
        }
        let (mut out, mut at) = (Vec::new(), 0);
        for (d, k) in self.docs().iter().zip(self.kept_docs(docs)) {
            let n = d.objects as usize;
            if !k {
                out.extend(&all[at..at + n]);
            }
            at += n;
        }
        out
    }
}

/// A file's objects: most files define one, kept in the record itself.
pub(super) enum Objects {
    One(Id),
    Many(Box<[Id]>),
    /// A YAML file of several documents, none defining an object another defines, and no note
    /// but rejected objects: its objects document after document, and its documents, so that a
    /// change parses only those whose text differs. Other files are parsed whole again.
    Docs(Box<[Id]>, Box<[DocRecord]>),
}

impl Objects {
    pub(super) fn new(mut ids: Vec<Id>) -> Objects {
        match ids.len() {
            1 => Objects::One(ids.pop().expect("one")),
            _ => Objects::Many(ids.into()),
        }
    }

    pub(super) fn as_slice(&self) -> &[Id] {
        match self {
            Objects::One(id) => std::slice::from_ref(id),
            Objects::Many(ids) | Objects::Docs(ids, _) => ids,
        }
    }
}

/// A file's objects as they are put into the store (with the line each starts at), and its
/// notes about duplicates.
#[derive(Default)]
pub(super) struct Record {
    pub objects: Vec<(Id, u64)>,
    pub notes: Vec<Note>,
    /// An object defined twice in the file or in another file read before.
    pub dup: bool,
}

/// The record of a file read: its objects and notes, by document when it has several (the
/// documents kept taken from `old`, with their objects' origins in the store moved to the lines
/// where they now start; an edit changes `old` in place).
pub(super) fn build(
    path: &Path,
    stamp: FileStamp,
    new: Record,
    rejected: Vec<(Note, u64)>,
    docs: &Docs,
    old: Option<FileRecord>,
    cluster: &mut Cluster,
) -> FileRecord {
    let old = old.filter(|o| !o.docs().is_empty());
    let docs = match (docs, old) {
        (Docs::All(docs), old) => return build_all(path, stamp, new, rejected, docs, old, cluster),
        (Docs::Edited { changed, moved }, Some(old)) if !new.dup => {
            return edit(path, stamp, new, rejected, changed, moved, old, cluster);
        }
        (Docs::Edited { changed, moved }, old) => {
            let listed = old.as_ref().map(|o| listed_docs(o, changed, moved));
            (listed.unwrap_or_default(), old)
        }
    };
    build_all(path, stamp, new, rejected, &docs.0, docs.1, cluster)
}

/// The documents of an edit as a list of every document (`Docs::All`).
fn listed_docs(old: &FileRecord, changed: &[(u32, NewDoc)], moved: &[(u32, u32)]) -> Vec<NewDoc> {
    let mut out: Vec<NewDoc> = (old.docs().iter().enumerate())
        .map(|(i, d)| NewDoc {
            digest: d.digest,
            line: d.line,
            kept: Some(i as u32),
        })
        .collect();
    for &(i, line) in moved {
        out[i as usize].line = line;
    }
    for (i, d) in changed {
        out[*i as usize] = NewDoc { ..*d };
    }
    out
}

/// The record of a file edited in place (`Docs::Edited`): the objects and notes of the
/// documents that changed replaced in the old record's, the others left where they are (moved
/// to their new lines when they moved).
#[allow(clippy::too_many_arguments)]
fn edit(
    path: &Path,
    stamp: FileStamp,
    new: Record,
    rejected: Vec<(Note, u64)>,
    changed: &[(u32, NewDoc)],
    moved: &[(u32, u32)],
    old: FileRecord,
    cluster: &mut Cluster,
) -> FileRecord {
    let Objects::Docs(ids, mut recs) = old.objects else {
        unreachable!("a record by document")
    };
    // Each new object and note goes to the changed document starting last at or before it.
    let starts: Vec<u64> = changed.iter().map(|(_, d)| u64::from(d.line)).collect();
    let doc_of = |line: u64| starts.partition_point(|&s| s <= line).saturating_sub(1);
    let mut new_ids: Vec<(usize, Vec<Id>)> = (changed.iter())
        .map(|(i, _)| (*i as usize, Vec::new()))
        .collect();
    let mut new_notes = new_ids
        .iter()
        .map(|(i, _)| (*i, Vec::new()))
        .collect::<Vec<_>>();
    for (id, line) in new.objects {
        new_ids[doc_of(line)].1.push(id);
    }
    for (n, line) in rejected {
        new_notes[doc_of(line)].1.push(n);
    }
    let counts =
        |d: &(usize, Vec<Id>), e: &(usize, Vec<Note>)| (d.1.len() as u32, e.1.len() as u32);
    let now: Vec<(u32, u32)> = new_ids
        .iter()
        .zip(&new_notes)
        .map(|(d, e)| counts(d, e))
        .collect();
    let ids = replace(ids, recs.len(), |i| recs[i].objects as usize, new_ids);
    let mut notes = replace(old.notes, recs.len(), |i| recs[i].notes as usize, new_notes);
    for ((k, d), (o, n)) in changed.iter().zip(now) {
        let r = &mut recs[*k as usize];
        (r.digest, r.line, r.objects, r.notes) = (d.digest, d.line, o, n);
    }
    // The documents kept that moved: their objects' origins follow them.
    let (mut o, mut n, mut moved) = (0, 0, moved.iter().peekable());
    for (i, r) in recs.iter_mut().enumerate() {
        let (o2, n2) = (o + r.objects as usize, n + r.notes as usize);
        if let Some((_, line)) = moved.next_if(|(m, _)| *m as usize == i) {
            let delta = i64::from(*line) - i64::from(r.line);
            r.line = *line;
            move_origins(cluster, path, &ids[o..o2], &mut notes[n..n2], delta);
        }
        (o, n) = (o2, n2);
    }
    FileRecord {
        stamp,
        objects: Objects::Docs(ids, recs),
        notes,
    }
}

/// `all` (the items of `docs` documents, `count(i)` of document `i`) with the items of the
/// documents `new` lists (by index, in order) replaced: in place when their number is the same.
fn replace<T>(
    all: Box<[T]>,
    docs: usize,
    count: impl Fn(usize) -> usize,
    new: Vec<(usize, Vec<T>)>,
) -> Box<[T]> {
    let mut all = all.into_vec();
    if new.iter().all(|(i, items)| count(*i) == items.len()) {
        let (mut at, mut doc) = (0, 0);
        for (i, items) in new {
            while doc < i {
                at += count(doc);
                doc += 1;
            }
            for (slot, item) in all[at..].iter_mut().zip(items) {
                *slot = item;
            }
        }
        return all.into_boxed_slice();
    }
    let mut out = Vec::with_capacity(all.len() + new.iter().map(|(_, v)| v.len()).sum::<usize>());
    let (mut old, mut new) = (all.into_iter(), new.into_iter().peekable());
    for doc in 0..docs {
        let n = count(doc);
        match new.next_if(|(i, _)| *i == doc) {
            Some((_, items)) => {
                old.by_ref().take(n).for_each(drop);
                out.extend(items);
            }
            None => out.extend(old.by_ref().take(n)),
        }
    }
    out.into_boxed_slice()
}

/// Moves the origins of a document's objects (in the store) and notes by `delta` lines.
fn move_origins(cluster: &mut Cluster, path: &Path, ids: &[Id], notes: &mut [Note], delta: i64) {
    for id in ids {
        if let Some(Some(t)) = origin_of(cluster, id) {
            *t = docs::moved_origin(t, path, delta).unwrap_or(std::mem::take(t));
        }
    }
    for n in notes {
        if let Some(t) = &mut n.origin {
            *t = docs::moved_origin(t, path, delta).unwrap_or(std::mem::take(t));
        }
    }
}

/// The record of a file read (see `build`).
fn build_all(
    path: &Path,
    stamp: FileStamp,
    new: Record,
    rejected: Vec<(Note, u64)>,
    docs: &[NewDoc],
    old: Option<FileRecord>,
    cluster: &mut Cluster,
) -> FileRecord {
    let old = old.as_ref();
    let any_kept = old.is_some() && docs.iter().any(|d| d.kept.is_some());
    if docs.is_empty() || (new.dup && !any_kept) {
        let mut notes: Vec<Note> = rejected.into_iter().map(|(n, _)| n).collect();
        notes.extend(new.notes);
        return FileRecord {
            stamp,
            objects: Objects::new(new.objects.into_iter().map(|(id, _)| id).collect()),
            notes: notes.into(),
        };
    }
    let starts: Vec<u64> = docs.iter().map(|d| u64::from(d.line)).collect();
    let doc_of = |line: u64| starts.partition_point(|&s| s <= line).saturating_sub(1);
    let mut objects: Vec<Vec<Id>> = (0..docs.len()).map(|_| Vec::new()).collect();
    let mut notes: Vec<Vec<Note>> = (0..docs.len()).map(|_| Vec::new()).collect();
    for (id, line) in new.objects {
        objects[doc_of(line)].push(id);
    }
    for (n, line) in rejected {
        notes[doc_of(line)].push(n);
    }
    let spans = old.map(FileRecord::spans).unwrap_or_default();
    let kept_ids = old.map_or(0, |o| o.objects.as_slice().len());
    let mut all_ids = Vec::with_capacity(kept_ids + objects.iter().map(Vec::len).sum::<usize>());
    let mut all_notes = Vec::new();
    let mut recs = Vec::with_capacity(docs.len());
    for (i, d) in docs.iter().enumerate() {
        let (ids_before, notes_before) = (all_ids.len(), all_notes.len());
        match (d.kept, old) {
            (Some(k), Some(old)) => {
                let k = k as usize;
                let (o, n) = spans[k].clone();
                let ids = &old.objects.as_slice()[o];
                let notes_at = all_notes.len();
                all_notes.extend_from_slice(&old.notes[n]);
                let was = old.docs()[k].line;
                let delta = i64::from(d.line) - i64::from(was);
                if delta != 0 {
                    move_origins(cluster, path, ids, &mut all_notes[notes_at..], delta);
                }
                all_ids.extend_from_slice(ids);
            }
            _ => {
                all_ids.append(&mut objects[i]);
                all_notes.append(&mut notes[i]);
            }
        }
        recs.push(DocRecord {
            digest: d.digest,
            line: d.line,
            objects: (all_ids.len() - ids_before) as u32,
            notes: (all_notes.len() - notes_before) as u32,
        });
    }
    // In-file duplicates (the whole file was parsed: see `FolderSource::read_changed`).
    all_notes.extend(new.notes);
    FileRecord {
        stamp,
        objects: match new.dup {
            true => Objects::new(all_ids),
            false => Objects::Docs(all_ids.into(), recs.into()),
        },
        notes: all_notes.into(),
    }
}

/// Where the store keeps the object's origin (a Node has none).
fn origin_of<'a>(c: &'a mut Cluster, (which, key): &Id) -> Option<&'a mut Option<String>> {
    match which {
        Which::Service => c.services.get_mut(key).map(|s| &mut s.origin),
        Which::EndpointSlice => c.slices.get_mut(key).map(|s| &mut s.origin),
        Which::Pod => c.pods.get_mut(key).map(|p| &mut p.origin),
        Which::Node => None,
    }
}

/// The records of the files read, by path: a vector sorted by path (the folder is read in path
/// order) instead of a B-tree, whose nodes, filled in order, stay about half empty: at 20,000
/// files that is about 2 MiB less.
#[derive(Default)]
pub(super) struct FileMap(Vec<(Box<Path>, FileRecord)>);

impl FileMap {
    fn find(&self, path: &Path) -> Result<usize, usize> {
        self.0.binary_search_by(|(p, _)| (**p).cmp(path))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn get(&self, path: &Path) -> Option<&FileRecord> {
        self.find(path).ok().map(|i| &self.0[i].1)
    }

    pub fn contains_key(&self, path: &Path) -> bool {
        self.find(path).is_ok()
    }

    pub fn remove(&mut self, path: &Path) -> Option<FileRecord> {
        self.find(path).ok().map(|i| self.0.remove(i).1)
    }

    pub fn insert(&mut self, path: &Path, rec: FileRecord) {
        match self.find(path) {
            Ok(i) => self.0[i].1 = rec,
            Err(i) => self.0.insert(i, (path.into(), rec)),
        }
    }

    /// The first path at or after `path`.
    pub fn first_from(&self, path: &Path) -> Option<&Path> {
        let i = self.find(path).unwrap_or_else(|i| i);
        self.0.get(i).map(|(p, _)| &**p)
    }

    pub fn keys(&self) -> impl Iterator<Item = &Path> {
        self.0.iter().map(|(p, _)| &**p)
    }

    pub fn values(&self) -> impl Iterator<Item = &FileRecord> {
        self.0.iter().map(|(_, r)| r)
    }

    /// Gives back the spare room (after the whole read).
    pub fn shrink_to_fit(&mut self) {
        self.0.shrink_to_fit();
    }
}
