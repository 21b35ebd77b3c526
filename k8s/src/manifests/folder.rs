//! Which files of a manifests folder are read, and in which order (the rules are listed on
//! [`super`]).
use super::SourceError;
use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The manifest files under `dir`, in the order they are read.
pub fn files(dir: &Path) -> Result<Vec<PathBuf>, SourceError> {
    let mut walk = Walk::default();
    let meta = std::fs::metadata(dir).map_err(|source| io(dir, source))?;
    if !meta.is_dir() {
        return Err(io(
            dir,
            std::io::Error::new(std::io::ErrorKind::NotADirectory, "not a folder"),
        ));
    }
    walk.seen.insert((meta.dev(), meta.ino()));
    walk.folder(dir)?;
    Ok(walk.files)
}

/// Whether a file name is one of a manifest (`*.yaml`, `*.yml`, `*.json`, not hidden).
pub fn is_manifest_name(name: &str) -> bool {
    !name.starts_with('.')
        && matches!(
            Path::new(name).extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml" | "json")
        )
}

#[derive(Default)]
struct Walk {
    files: Vec<PathBuf>,
    /// Folders and files already taken, by device and inode: a symlink loop ends, and a file
    /// reached twice (through a link) is read once.
    seen: HashSet<(u64, u64)>,
}

impl Walk {
    fn folder(&mut self, dir: &Path) -> Result<(), SourceError> {
        let err = |source| io(dir, source);
        let mut entries = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(err)? {
            let name = entry.map_err(err)?.file_name();
            // Hidden entries (editor swap files, `..data` of a mounted ConfigMap) are not read.
            if !name.as_encoded_bytes().starts_with(b".") {
                entries.push(name);
            }
        }
        entries.sort();
        for name in entries {
            let path = dir.join(&name);
            // Follows symlinks; a dangling link named like a manifest is an error when read.
            let meta = match std::fs::metadata(&path) {
                Ok(m) => m,
                Err(_) if !is_manifest_name(&name.to_string_lossy()) => continue,
                Err(source) => return Err(io(&path, source)),
            };
            if meta.is_dir() {
                if self.seen.insert((meta.dev(), meta.ino())) {
                    self.folder(&path)?;
                }
            } else if meta.is_file()
                && is_manifest_name(&name.to_string_lossy())
                && self.seen.insert((meta.dev(), meta.ino()))
            {
                self.files.push(path);
            }
        }
        Ok(())
    }
}

fn io(path: &Path, source: std::io::Error) -> SourceError {
    SourceError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifests::tests::TempDir;
    use std::os::unix::fs::symlink;

    fn names(t: &TempDir) -> Vec<String> {
        files(&t.0)
            .unwrap()
            .iter()
            .map(|p| p.strip_prefix(&t.0).unwrap().display().to_string())
            .collect()
    }

    #[test]
    fn extensions_order_hidden_and_subfolders() {
        let t = TempDir::new("walk");
        for f in [
            "b.yaml",
            "a.yml",
            "c.json",
            "notes.txt",
            "b.yaml~",
            ".b.yaml.swp",
            ".hidden.yaml",
            "a/z.yaml",
            "a/deeper/x.json",
            ".git/config.yaml",
        ] {
            t.write(f, "");
        }
        assert_eq!(
            names(&t),
            ["a/deeper/x.json", "a/z.yaml", "a.yml", "b.yaml", "c.json"]
        );
    }

    #[test]
    fn symlinks_are_followed_once_and_loops_end() {
        let t = TempDir::new("links");
        let outside = TempDir::new("links-target");
        outside.write("o.yaml", "");
        outside.write("sub/p.yaml", "");
        t.write("real/r.yaml", "");
        symlink(&outside.0, t.0.join("linked")).unwrap();
        symlink(t.0.join("real/r.yaml"), t.0.join("alias.yaml")).unwrap();
        symlink(&t.0, t.0.join("real/loop")).unwrap();
        // A ConfigMap mount: the files are links through the hidden `..data`.
        t.write("..2024_01_01/cm.yaml", "");
        symlink("..2024_01_01", t.0.join("..data")).unwrap();
        symlink("..data/cm.yaml", t.0.join("cm.yaml")).unwrap();
        assert_eq!(
            names(&t),
            [
                "alias.yaml",
                "cm.yaml",
                "linked/o.yaml",
                "linked/sub/p.yaml"
            ],
            "real/r.yaml is alias.yaml, read once at its first path"
        );
        symlink(t.0.join("missing.yaml"), t.0.join("dangling.yaml")).unwrap();
        assert!(
            files(&t.0)
                .unwrap_err()
                .to_string()
                .contains("dangling.yaml")
        );
    }

    #[test]
    fn the_root_must_be_a_folder() {
        let t = TempDir::new("root");
        t.write("f.yaml", "");
        assert!(files(&t.0.join("f.yaml")).is_err());
        assert!(files(&t.0.join("none")).is_err());
    }
}
