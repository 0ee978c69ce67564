//! Finds model folders under a scan root. A model folder is a directory that directly holds at least one
//! `*.safetensors` file; its id is its path relative to the root with `/` separators (`org/name`).

use std::{
    fs,
    path::{Path, PathBuf},
    time::UNIX_EPOCH,
};

/// Directory trees deeper than this are not walked: Hub repos are `org/name[/subfolder]`, and the bound keeps a
/// symlink loop or a hostile tree from sending the walk on forever.
const MAX_DEPTH: usize = 8;

/// A model folder found under a root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    pub id: String,
    pub dir: PathBuf,
}

/// Lists model folders under `root`, sorted by id. Hidden directories (`.git`, `.cache`) are skipped and
/// symlinks are not followed.
pub fn model_dirs(root: &Path) -> std::io::Result<Vec<Found>> {
    let mut out = Vec::new();
    walk(root, root, 0, &mut out)?;
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

fn walk(root: &Path, dir: &Path, depth: usize, out: &mut Vec<Found>) -> std::io::Result<()> {
    let mut has_weights = false;
    let mut subdirs = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') {
            continue;
        }
        let kind = entry.file_type()?;
        if kind.is_dir() {
            subdirs.push(entry.path());
        } else if kind.is_file() && name.ends_with(".safetensors") {
            has_weights = true;
        }
    }
    if has_weights && let Ok(rel) = dir.strip_prefix(root) {
        let id = rel.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/");
        let id = if id.is_empty() { ".".to_owned() } else { id };
        out.push(Found { id, dir: dir.to_path_buf() });
    }
    if depth < MAX_DEPTH {
        for sub in subdirs {
            walk(root, &sub, depth + 1, out)?;
        }
    }
    Ok(())
}

/// A cheap fingerprint of a folder's files (names, sizes, modification times): when it is unchanged, the folder
/// is not read again. It is a change detector, not an integrity check; signatures carry content hashes.
pub fn folder_revision(dir: &Path) -> std::io::Result<String> {
    let mut entries = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        if !meta.is_file() {
            continue;
        }
        let mtime = meta.modified().ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map_or(0, |d| d.as_nanos());
        entries.push((entry.file_name().to_string_lossy().into_owned(), meta.len(), mtime));
    }
    entries.sort();
    let mut hasher = blake3::Hasher::new();
    for (name, len, mtime) in &entries {
        hasher.update(name.as_bytes());
        hasher.update(&[0]);
        hasher.update(&len.to_le_bytes());
        hasher.update(&mtime.to_le_bytes());
    }
    Ok(format!("local:{}", &hasher.finalize().to_hex()[..32]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_model_folders_by_safetensors() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path();
        for dir in ["a/one", "a/two/sub", "b/none", ".hidden/x"] {
            fs::create_dir_all(root.join(dir)).expect("mkdir");
        }
        fs::write(root.join("a/one/model.safetensors"), b"x").expect("write");
        fs::write(root.join("a/two/sub/adapter_model.safetensors"), b"x").expect("write");
        fs::write(root.join("b/none/config.json"), b"{}").expect("write");
        fs::write(root.join(".hidden/x/model.safetensors"), b"x").expect("write");
        let ids: Vec<String> = model_dirs(root).expect("walk").into_iter().map(|f| f.id).collect();
        assert_eq!(ids, ["a/one", "a/two/sub"]);
    }

    #[test]
    fn revision_changes_with_files() {
        let tmp = tempfile::tempdir().expect("tempdir");
        fs::write(tmp.path().join("model.safetensors"), b"x").expect("write");
        let a = folder_revision(tmp.path()).expect("rev");
        assert_eq!(a, folder_revision(tmp.path()).expect("rev"));
        fs::write(tmp.path().join("config.json"), b"{}").expect("write");
        assert_ne!(a, folder_revision(tmp.path()).expect("rev"));
    }
}
