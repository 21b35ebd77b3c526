//! The watcher on real folders: edits deep in subfolders, new subfolders, rename-over, bursts,
//! unrelated files next to a watched file, editor temp files.
use super::*;
use std::time::Duration;

const DEBOUNCE: Duration = Duration::from_millis(100);
/// Long enough for any event of the test to have arrived.
const QUIET: Duration = Duration::from_millis(1500);

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let p =
            std::env::temp_dir().join(format!("oxilium-watch-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    fn write(&self, rel: &str, text: &str) {
        let p = self.0.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn changes_within(w: &mut Watch, d: Duration) -> bool {
    tokio::time::timeout(d, w.changed()).await.is_ok()
}

const NODE: &str = "apiVersion: v1\nkind: Node\nmetadata: {name: a}\n";

#[tokio::test]
async fn an_edit_two_subfolders_deep_is_seen() {
    let t = TempDir::new("deep");
    t.write("a/b/n.yaml", NODE);
    let mut w = Watch::folder(&t.0, DEBOUNCE).unwrap();
    let before = Stamp::folder(&t.0);
    // In place: the same file opened, truncated and written.
    t.write("a/b/n.yaml", &NODE.replace("name: a", "name: bb"));
    assert!(changes_within(&mut w, QUIET).await, "no change seen");
    assert_ne!(Stamp::folder(&t.0), before);
    let objs = k8s::manifests::read_folder(&t.0).unwrap();
    assert_eq!(objs[0].value["metadata"]["name"], "bb");
    // Reading the folder (opening every file) is not a change.
    assert!(!changes_within(&mut w, QUIET).await);
}

#[tokio::test]
async fn files_in_new_subfolders_and_renames_over_are_seen() {
    let t = TempDir::new("new");
    let mut w = Watch::folder(&t.0, DEBOUNCE).unwrap();
    let before = Stamp::folder(&t.0);
    t.write("x/y/n.yaml", NODE);
    assert!(changes_within(&mut w, QUIET).await);
    // Anything written into the new subfolder later is seen too.
    tokio::time::sleep(DEBOUNCE).await;
    let mid = Stamp::folder(&t.0);
    assert_ne!(mid, before);
    t.write("x/y/z/m.yaml", NODE);
    assert!(changes_within(&mut w, QUIET).await);
    // Atomic replacement: write a temporary file elsewhere, rename it over the manifest.
    let tmp = t.0.join("m.yaml.tmp");
    let mid = Stamp::folder(&t.0);
    std::fs::write(&tmp, NODE.replace("name: a", "name: c")).unwrap();
    std::fs::rename(&tmp, t.0.join("x/y/z/m.yaml")).unwrap();
    assert!(changes_within(&mut w, QUIET).await);
    assert_ne!(Stamp::folder(&t.0), mid);
}

#[tokio::test]
async fn a_burst_is_one_change_and_temp_files_change_no_stamp() {
    let t = TempDir::new("burst");
    let mut w = Watch::folder(&t.0, DEBOUNCE).unwrap();
    for i in 0..30 {
        t.write(&format!("s/{i}.yaml"), NODE);
    }
    assert!(changes_within(&mut w, QUIET).await);
    assert!(
        !changes_within(&mut w, QUIET).await,
        "a second change for one burst"
    );
    let before = Stamp::folder(&t.0);
    // An editor's swap file and backup: events, but nothing read changed.
    t.write("s/.0.yaml.swp", "x");
    t.write("s/0.yaml~", "x");
    assert!(changes_within(&mut w, QUIET).await);
    assert_eq!(Stamp::folder(&t.0), before);
}

#[tokio::test]
async fn a_file_is_watched_through_its_folder() {
    let t = TempDir::new("file");
    t.write("lb.yaml", "a: 1\n");
    let path = t.0.join("lb.yaml");
    let mut w = Watch::file(&path, DEBOUNCE).unwrap();
    // Other files in the folder (a log, a socket, the temporary file) do not count.
    t.write("agent.log", "x");
    assert!(!changes_within(&mut w, QUIET).await);
    let before = Stamp::file(&path);
    t.write("lb.yaml.tmp", "a: 2\n");
    std::fs::rename(t.0.join("lb.yaml.tmp"), &path).unwrap();
    assert!(changes_within(&mut w, QUIET).await);
    let mid = Stamp::file(&path);
    assert_ne!(mid, before);
    t.write("lb.yaml", "a: 33\n");
    assert!(changes_within(&mut w, QUIET).await);
    assert_ne!(Stamp::file(&path), mid);
}

#[tokio::test]
async fn a_replaced_folder_is_watched_again() {
    let t = TempDir::new("replaced");
    let dir = t.0.join("m");
    std::fs::create_dir(&dir).unwrap();
    let mut w = Watch::folder(&dir, DEBOUNCE).unwrap();
    std::fs::remove_dir(&dir).unwrap();
    assert!(changes_within(&mut w, QUIET).await);
    t.write("m/n.yaml", NODE);
    assert!(
        changes_within(&mut w, QUIET).await,
        "the new folder is not watched"
    );
    t.write("m/n.yaml", &NODE.replace("name: a", "name: z"));
    assert!(changes_within(&mut w, QUIET).await);
}

/// A burst names the paths its events named (the manifests folder re-reads only those files).
#[tokio::test]
async fn a_burst_names_its_paths() {
    let t = TempDir::new("paths");
    t.write("a/n.yaml", NODE);
    t.write("m.yaml", NODE);
    let mut w = Watch::folder(&t.0, DEBOUNCE).unwrap();
    t.write("a/n.yaml.tmp", NODE);
    std::fs::rename(t.0.join("a/n.yaml.tmp"), t.0.join("a/n.yaml")).unwrap();
    let hint = tokio::time::timeout(QUIET, w.changed()).await.unwrap();
    let Hint::Paths(paths) = hint else {
        panic!("{hint:?}")
    };
    assert!(paths.contains(&t.0.join("a/n.yaml")), "{paths:?}");
    assert!(!paths.contains(&t.0.join("m.yaml")), "{paths:?}");
}
