//! The single-instance lock: an exclusive advisory lock (`flock`) on `<db>.lock`, held for the daemon's life.
//!
//! Two daemons on one database would both crawl and, worse, each would take the other's `running` run for a
//! dead one. The lock is released by the kernel when the process dies, SIGKILL included, so a stale lock file
//! never blocks a restart; that is why it is a lock and not a pid file (the pid written inside is only for
//! people). Like SQLite's own locks it does not work across a network file system.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// Held while alive; dropping it releases the lock.
#[derive(Debug)]
pub struct InstanceLock {
    _file: File,
    path: PathBuf,
}

impl InstanceLock {
    /// Takes the lock beside `db`, without waiting.
    ///
    /// # Errors
    /// When another process holds it (the message names the file and the holder's pid), or it cannot be created.
    pub fn acquire(db: &Path) -> anyhow::Result<InstanceLock> {
        let mut name = db.as_os_str().to_owned();
        name.push(".lock");
        let path = PathBuf::from(name);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("cannot open the lock file {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(&path).unwrap_or_default();
                bail!(
                    "another modeltree daemon is using {} (lock {} held by pid {})",
                    db.display(),
                    path.display(),
                    holder.trim()
                );
            }
            Err(TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("cannot lock {}", path.display()));
            }
        }
        file.set_len(0)
            .and_then(|()| writeln!(file, "{}", std::process::id()))
            .context("cannot write the lock file")?;
        Ok(InstanceLock { _file: file, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_until_the_first_lets_go() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("m.db");
        let first = InstanceLock::acquire(&db).expect("first");
        assert_eq!(first.path(), dir.path().join("m.db.lock"));
        let err = InstanceLock::acquire(&db).expect_err("second");
        let text = err.to_string();
        assert!(text.contains("another modeltree daemon") && text.contains(&std::process::id().to_string()), "{text}");
        drop(first);
        InstanceLock::acquire(&db).expect("free again");
    }
}
