//! Local weights files, read with positioned reads (`pread`) into owned buffers.
//!
//! Signing used to map files. A mapped file that another process truncates (a partial download, a `git lfs`
//! checkout, a user's `truncate`) kills the reader with SIGBUS at the first touch of a page past the new end,
//! and no Rust code can recover from that signal. A positioned read of a file that shrank just returns fewer
//! bytes, so here a truncation is an error value: [`LocalFile::read`] fails with
//! [`io::ErrorKind::UnexpectedEof`] and the reader reports it as `SignError::Truncated` for that model.
//!
//! A [`LocalFile`] keeps the open file and its length, read once at open; every read is checked against that
//! length. Reads are at most one signing window (`reader::WINDOW_BYTES`) or one whole small piece (a row, a
//! scale tensor, a LoRA factor, a packed module). [`LocalFile::read_pooled`] reads into a buffer of a
//! [`Buffers`] pool that goes back to the pool when its bytes are consumed, so a window costs the copy from the
//! page cache and no allocation, page faults or zeroing. The pool lives as long as one signing, so the resident
//! set stays near `threads × window`. No `unsafe` is needed.

use std::fs::File;
use std::io;
use std::ops::Deref;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

/// Buffers kept for reuse by one pool; one per signing thread is all a signing needs, the rest are freed.
const MAX_POOLED: usize = 64;

/// Read buffers shared by the reads of one signing. Cloning shares the pool.
#[derive(Debug, Default, Clone)]
pub struct Buffers(Arc<Mutex<Vec<Vec<u8>>>>);

/// The bytes of one read; derefs to them and returns its buffer to the pool when dropped.
#[derive(Debug)]
pub struct Buffer {
    /// Initialised up to its length, which may exceed `len` (a buffer is never shrunk or re-zeroed).
    bytes: Vec<u8>,
    len: usize,
    pool: Buffers,
}

impl Deref for Buffer {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        self.bytes.get(..self.len).unwrap_or_default()
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        let bytes = std::mem::take(&mut self.bytes);
        let mut free = self.pool.0.lock().unwrap_or_else(PoisonError::into_inner);
        if free.len() < MAX_POOLED {
            free.push(bytes);
        }
    }
}

/// An open file and its length at open.
#[derive(Debug)]
pub struct LocalFile {
    file: File,
    len: u64,
}

impl LocalFile {
    /// Opens `path` read-only and records its length.
    ///
    /// # Errors
    /// The IO error of `open` or `fstat`.
    pub fn open(path: &Path) -> io::Result<LocalFile> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        Ok(LocalFile { file, len })
    }

    /// The length read when the file was opened. Every read is checked against it, never against a fresh
    /// `fstat`, so one reader works on one consistent idea of the file.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Exactly the bytes `offset .. offset + len`, in a new buffer.
    ///
    /// # Errors
    /// `InvalidInput` when the range is not inside the length read at open or does not fit in memory;
    /// `UnexpectedEof` when the file is now shorter than the range (it was truncated after it was opened); the
    /// IO error of `pread` otherwise.
    pub fn read(&self, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        let inside = offset.checked_add(len).is_some_and(|end| end <= self.len);
        let (Ok(len), true) = (usize::try_from(len), inside) else {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "read outside the file"));
        };
        let mut buf = vec![0u8; len];
        self.file.read_exact_at(&mut buf, offset)?;
        Ok(buf)
    }

    /// As [`LocalFile::read`], into a buffer taken from `pool` (grown if it is too small).
    ///
    /// # Errors
    /// As [`LocalFile::read`].
    pub fn read_pooled(&self, offset: u64, len: u64, pool: &Buffers) -> io::Result<Buffer> {
        let inside = offset.checked_add(len).is_some_and(|end| end <= self.len);
        let (Ok(len), true) = (usize::try_from(len), inside) else {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "read outside the file"));
        };
        let bytes = pool.0.lock().unwrap_or_else(PoisonError::into_inner).pop().unwrap_or_default();
        // The buffer goes back to the pool even when the read fails.
        let mut buffer = Buffer { bytes, len, pool: pool.clone() };
        if buffer.bytes.len() < len {
            buffer.bytes.resize(len, 0);
        }
        let target = buffer.bytes.get_mut(..len).unwrap_or_default();
        self.file.read_exact_at(target, offset)?;
        Ok(buffer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn reads_see_the_file_and_stay_inside_it() {
        let mut f = tempfile::NamedTempFile::new().expect("temp file");
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        f.write_all(&data).expect("write");
        f.flush().expect("flush");
        let file = LocalFile::open(f.path()).expect("open");
        assert_eq!(file.len(), 10_000);
        assert_eq!(file.read(0, 10_000).expect("whole"), data);
        assert_eq!(file.read(4097, 100).expect("middle"), &data[4097..4197]);
        assert!(file.read(9_999, 1).is_ok());
        assert_eq!(file.read(9_999, 2).expect_err("past the end").kind(), io::ErrorKind::InvalidInput);
        assert_eq!(file.read(u64::MAX, 2).expect_err("overflow").kind(), io::ErrorKind::InvalidInput);
        assert!(file.read(10_000, 0).expect("empty").is_empty());
        // Pooled reads give the same bytes, reusing a larger buffer for a smaller read.
        let pool = Buffers::default();
        assert_eq!(&*file.read_pooled(0, 10_000, &pool).expect("whole"), &data[..]);
        assert_eq!(&*file.read_pooled(4097, 100, &pool).expect("middle"), &data[4097..4197]);
        assert_eq!(pool.0.lock().expect("pool").len(), 1, "one buffer, reused");
        assert_eq!(file.read_pooled(9_999, 2, &pool).expect_err("past the end").kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn a_truncated_file_is_an_error_not_a_signal() {
        let mut f = tempfile::NamedTempFile::new().expect("temp file");
        f.write_all(&[7u8; 64 << 10]).expect("write");
        f.flush().expect("flush");
        let file = LocalFile::open(f.path()).expect("open");
        f.as_file().set_len(1000).expect("truncate");
        assert_eq!(file.read(0, 1000).expect("still there"), vec![7u8; 1000]);
        assert_eq!(file.read(32 << 10, 4096).expect_err("gone").kind(), io::ErrorKind::UnexpectedEof);
        assert_eq!(file.read(500, 1000).expect_err("partly gone").kind(), io::ErrorKind::UnexpectedEof);
        let pool = Buffers::default();
        assert_eq!(file.read_pooled(500, 1000, &pool).expect_err("pooled").kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn empty_files_open() {
        let f = tempfile::NamedTempFile::new().expect("temp file");
        let file = LocalFile::open(f.path()).expect("open");
        assert!(file.is_empty());
        assert!(file.read(0, 0).expect("empty").is_empty());
    }
}
