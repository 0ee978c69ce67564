//! The one place where files are memory-mapped, and the only `unsafe` code in the project.
//!
//! A [`MappedFile`] keeps the open file and its length, read once at open time; [`MappedFile::window`] maps a
//! byte range of it read-only. Readers map the header once and then each piece of tensor data in turn, and
//! drop the window when the piece is consumed: unmapping returns those pages to the kernel, so the resident set
//! stays near `threads × window` instead of growing to the size of the checkpoint.

use std::fs::File;
use std::io;
use std::ops::Deref;
use std::path::Path;

use memmap2::{Mmap, MmapOptions};

/// An open file whose ranges can be mapped.
#[derive(Debug)]
pub struct MappedFile {
    file: File,
    len: u64,
}

/// A read-only mapping of part of a [`MappedFile`]; derefs to its bytes.
#[derive(Debug)]
pub struct Window {
    /// `None` for an empty range: mapping zero bytes is an error on Linux, and there is nothing to read.
    map: Option<Mmap>,
}

impl Deref for Window {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }
}

impl MappedFile {
    /// Opens `path` read-only and records its length.
    ///
    /// # Errors
    /// The IO error of `open` or `fstat`.
    pub fn open(path: &Path) -> io::Result<MappedFile> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        Ok(MappedFile { file, len })
    }

    /// The length read when the file was opened. Every window is checked against it, never against a fresh
    /// `fstat`, so one reader works on one consistent idea of the file.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Maps `offset .. offset + len` read-only; `populate` pre-faults the pages in one system call, for ranges
    /// that are about to be read in full.
    ///
    /// # Safety
    ///
    /// This function is safe to call; this section records why the `unsafe` block inside is sound enough.
    /// `Mmap` hands out `&[u8]` to the mapped pages, which Rust assumes nobody changes while borrowed.
    /// - The file is opened read-only and mapped shared read-only: nothing in this process can write it.
    /// - Another process still can, and we do not assume it won't. A concurrent write is, strictly, a data race
    ///   the Rust memory model leaves undefined; in practice each byte is loaded once, by decoders that accept
    ///   any bit pattern, and every bound comes from the header parsed before the data is read and from the
    ///   length read once at open, so the worst outcome is a signature of inconsistent bytes. modeltree's own
    ///   downloads are written under a temporary name and renamed into place, as the Hugging Face cache's are,
    ///   so the files it signs are not rewritten in place.
    /// - If the file is truncated while mapped, touching a page past the new end raises SIGBUS and the process
    ///   dies: no Rust code can recover from that signal. Our bounds never follow a shrinking file (the length
    ///   is read once) and windows are small and short-lived, but a file that another process may truncate (a
    ///   partial download) must not be signed.
    ///
    /// # Errors
    /// `InvalidInput` when the range is not inside the length read at open; the IO error of `mmap` otherwise.
    #[allow(unsafe_code)]
    pub fn window(&self, offset: u64, len: u64, populate: bool) -> io::Result<Window> {
        let inside = offset.checked_add(len).is_some_and(|end| end <= self.len);
        let (Ok(len), true) = (usize::try_from(len), inside) else {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "window outside the file"));
        };
        if len == 0 {
            return Ok(Window { map: None });
        }
        let mut options = MmapOptions::new();
        options.offset(offset).len(len);
        if populate {
            options.populate();
        }
        // SAFETY: read-only shared mapping of a file opened read-only, bounded by the length read at open; see
        // the `# Safety` section above for concurrent writers and truncation.
        let map = unsafe { options.map(&self.file)? };
        Ok(Window { map: Some(map) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn windows_see_the_file_and_stay_inside_it() {
        let mut f = tempfile::NamedTempFile::new().expect("temp file");
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        f.write_all(&data).expect("write");
        f.flush().expect("flush");
        let m = MappedFile::open(f.path()).expect("open");
        assert_eq!(m.len(), 10_000);
        assert_eq!(&*m.window(0, 10_000, false).expect("whole"), &data[..]);
        // Unaligned offsets are fine: memmap2 aligns the mapping and offsets the slice.
        assert_eq!(&*m.window(4097, 100, true).expect("middle"), &data[4097..4197]);
        assert!(m.window(9_999, 1, false).is_ok());
        assert!(m.window(9_999, 2, false).is_err());
        assert!(m.window(u64::MAX, 2, false).is_err());
        assert!(m.window(10_000, 0, false).expect("empty").is_empty());
    }

    #[test]
    fn empty_files_open() {
        let f = tempfile::NamedTempFile::new().expect("temp file");
        let m = MappedFile::open(f.path()).expect("open");
        assert!(m.is_empty());
        assert!(m.window(0, 0, false).expect("empty").is_empty());
    }
}
