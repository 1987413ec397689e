//! Reading the files capgate is told to read (capability files, imports, bind files, the
//! gateway config, plugins), so that no file can stall or exhaust the process.
//!
//! Only regular files are read, after following links: a FIFO would block the reading thread
//! until someone writes to it, a device (`/dev/zero`) never ends, and a link loop fails at open
//! (`ELOOP`) rather than spinning. Opening is non-blocking, so even opening a FIFO returns at
//! once, and what is read is bounded: a file larger than its limit is refused with an error that
//! names the limit, never read to the end.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

/// The largest capability file, import, bind file or gateway config read: the largest real
/// Stripe capability is under 100 KB.
pub const SPEC_LIMIT: u64 = 4 * 1024 * 1024;

/// The largest plugin (WebAssembly component) read.
pub const PLUGIN_LIMIT: u64 = 64 * 1024 * 1024;

/// Reads the regular file at `path` (links followed), refusing anything else and anything
/// larger than `limit` bytes.
pub fn bytes(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    let file = open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} is {}, not a regular file",
                path.display(),
                kind_of(&meta)
            ),
        ));
    }
    if meta.len() > limit {
        return Err(too_large(path, limit));
    }
    let mut out = Vec::with_capacity(meta.len() as usize);
    // The file may grow while it is read: read one byte past the limit to tell.
    file.take(limit + 1).read_to_end(&mut out)?;
    if out.len() as u64 > limit {
        return Err(too_large(path, limit));
    }
    Ok(out)
}

/// [`bytes`], as UTF-8 text.
pub fn text(path: &Path, limit: u64) -> io::Result<String> {
    String::from_utf8(bytes(path, limit)?).map_err(|error| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{} is not UTF-8 text (invalid byte at offset {})",
                path.display(),
                error.utf8_error().valid_up_to()
            ),
        )
    })
}

#[cfg(unix)]
fn open(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
}

#[cfg(not(unix))]
fn open(path: &Path) -> io::Result<File> {
    File::open(path)
}

fn too_large(path: &Path, limit: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "{} is larger than the {} MiB limit for files of its kind",
            path.display(),
            limit / (1024 * 1024)
        ),
    )
}

#[cfg(unix)]
fn kind_of(meta: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let kind = meta.file_type();
    if kind.is_dir() {
        "a directory"
    } else if kind.is_fifo() {
        "a FIFO (named pipe)"
    } else if kind.is_char_device() {
        "a character device"
    } else if kind.is_block_device() {
        "a block device"
    } else if kind.is_socket() {
        "a socket"
    } else {
        "a special file"
    }
}

#[cfg(not(unix))]
fn kind_of(meta: &std::fs::Metadata) -> &'static str {
    if meta.is_dir() {
        "a directory"
    } else {
        "a special file"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_regular_file_within_the_limit_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.yaml");
        std::fs::write(&path, "naftiko: x\n").unwrap();
        assert_eq!(text(&path, 100).unwrap(), "naftiko: x\n");
    }

    #[test]
    fn a_file_over_the_limit_is_refused_naming_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.yaml");
        std::fs::write(&path, vec![b'a'; 3 * 1024 * 1024]).unwrap();
        let error = bytes(&path, 2 * 1024 * 1024).unwrap_err().to_string();
        assert!(error.contains("2 MiB limit"), "{error}");
    }

    #[cfg(unix)]
    #[test]
    fn devices_fifos_directories_and_link_loops_are_refused_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("pipe.yaml");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        assert!(made.unwrap().success());
        let error = text(&fifo, SPEC_LIMIT).unwrap_err().to_string();
        assert!(error.contains("a FIFO"), "{error}");
        let error = bytes(Path::new("/dev/zero"), SPEC_LIMIT)
            .unwrap_err()
            .to_string();
        assert!(error.contains("a character device"), "{error}");
        let error = bytes(dir.path(), SPEC_LIMIT).unwrap_err().to_string();
        assert!(error.contains("a directory"), "{error}");
        let (a, b) = (dir.path().join("a.yaml"), dir.path().join("b.yaml"));
        std::os::unix::fs::symlink(&b, &a).unwrap();
        std::os::unix::fs::symlink(&a, &b).unwrap();
        let error = bytes(&a, SPEC_LIMIT).unwrap_err();
        assert_eq!(error.raw_os_error(), Some(libc::ELOOP), "{error}");
    }
}
