//! Reading files we do not trust: a model version's files (model, golden set,
//! manifest with its card), a model's labels.toml, a segments rules file.
//! Whoever can write a version directory must not be able to make the server
//! read anything else (another version's model, `/etc/passwd`), block on a
//! FIFO, or buffer `/dev/zero` until the kernel kills it.
//!
//! The rules, in order: a name from a manifest is a relative path without
//! `..`; after resolving symlinks it lies inside its directory; it is a
//! regular file (devices, FIFOs, sockets and directories are refused by kind
//! before anything is opened); it is opened once, non-blocking and without
//! following a final symlink, and the opened handle is checked again (regular
//! file, the same inode that was checked, and — where /proc is mounted — the
//! path the kernel actually opened is still inside the directory); it is read
//! in bounded chunks, hashing as it goes, and abandoned as soon as it passes
//! its size cap. A refusal names the file and why, never its content or hash.

use std::{
    fs::{File, Metadata},
    io::Read,
    os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt},
    path::{Component, Path, PathBuf},
};

use sha2::{Digest, Sha256};

/// `--max-model-bytes`' default: 16 MiB. The largest shipped model file is
/// 110,090 bytes (models/propensity/2/model.onnx, `du -b models/*/*/*`); ×100
/// for retrained or imported models is 11 MB, rounded up to a power of two.
pub const DEFAULT_MAX_MODEL_BYTES: u64 = 16 * 1024 * 1024;
/// A golden set: the largest shipped one is 20,132 bytes; ×100 is 2 MB.
pub const MAX_GOLDEN_BYTES: u64 = 4 * 1024 * 1024;
/// A manifest, card included: the largest shipped one is 5,841 bytes; ×100
/// is 584 KB.
pub const MAX_MANIFEST_BYTES: u64 = 1024 * 1024;
/// A sample CSV for `models import`: it is read whole to infer the schema;
/// a few thousand rows are plenty, 64 MiB leaves room for wide tables.
pub const MAX_SAMPLE_BYTES: u64 = 64 * 1024 * 1024;
/// A labels.toml: a few lines (`stable = 2`, a canary table) in practice.
pub const MAX_LABELS_BYTES: u64 = 64 * 1024;
/// A segments rules file: the shipped one is 3,126 bytes; ×100 is 312 KB.
pub const MAX_RULES_FILE_BYTES: u64 = 1024 * 1024;

/// How much of a file may be read, and the setting that says so (for the
/// message: the operator needs to know what to raise).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cap {
    pub bytes: u64,
    pub limit: &'static str,
}

impl Cap {
    pub const fn new(bytes: u64, limit: &'static str) -> Self {
        Self { bytes, limit }
    }
}

/// Chunk size of the bounded read: the most read past the cap before it trips.
const CHUNK: usize = 64 * 1024;

/// Why an untrusted file was refused. The messages name no path a caller
/// did not already name, except where a symlink led (an operator needs it).
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("must be a relative path inside the directory (no absolute path, no `..`)")]
    NotRelative,
    #[error("resolves to {resolved}, outside {dir}")]
    Outside { resolved: PathBuf, dir: PathBuf },
    #[error("is a {kind}, not a regular file")]
    NotRegular { kind: &'static str },
    #[error("is larger than {limit} allows ({cap} bytes)")]
    TooLarge { cap: u64, limit: &'static str },
    #[error("was replaced while it was being opened")]
    Replaced,
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl ReadError {
    /// The file (or a directory on its way) does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, ReadError::Io(e) if e.kind() == std::io::ErrorKind::NotFound)
    }
}

/// What a file is, for a refusal.
fn kind(meta: &Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_dir() {
        "directory"
    } else if t.is_fifo() {
        "FIFO (named pipe)"
    } else if t.is_char_device() {
        "character device"
    } else if t.is_block_device() {
        "block device"
    } else if t.is_socket() {
        "socket"
    } else if t.is_symlink() {
        "symbolic link"
    } else {
        "special file"
    }
}

/// Reads `name` (as written in a manifest: relative, no `..`) from inside
/// `dir`. See the module documentation for every check.
pub fn read_in(dir: &Path, name: &str, cap: Cap) -> Result<Vec<u8>, ReadError> {
    read_contained(dir, name, cap, None)
}

/// Like [`read_in`], returning the hex sha256 of the bytes too, computed
/// while reading.
pub fn read_in_hashed(dir: &Path, name: &str, cap: Cap) -> Result<(Vec<u8>, String), ReadError> {
    let mut hasher = Sha256::new();
    let bytes = read_contained(dir, name, cap, Some(&mut hasher))?;
    Ok((bytes, hex::encode(hasher.finalize())))
}

/// Reads `path` as UTF-8 text from inside its own directory (a manifest, a
/// labels file): the same checks as [`read_in`].
pub fn read_text_in_parent(path: &Path, cap: Cap) -> Result<String, ReadError> {
    let (dir, name) = split(path)?;
    let bytes = read_contained(dir, name, cap, None)?;
    String::from_utf8(bytes)
        .map_err(|e| ReadError::Io(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))
}

/// Reads a file an operator named (the rules file): symlinks are followed
/// wherever they lead (a Kubernetes ConfigMap mount is a chain of them), but
/// the target must be a regular file within `cap`.
pub fn read_text(path: &Path, cap: Cap) -> Result<String, ReadError> {
    let resolved = path.canonicalize()?;
    let bytes = read_resolved(&resolved, None, cap, None)?;
    String::from_utf8(bytes)
        .map_err(|e| ReadError::Io(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))
}

/// Reads a binary file an operator named on the command line (`models
/// import --onnx/--sample`), following symlinks like [`read_text`], with the
/// same kind and size checks, and returns its hex sha256 too.
pub fn read_named_hashed(path: &Path, cap: Cap) -> Result<(Vec<u8>, String), ReadError> {
    let resolved = path.canonicalize()?;
    let mut hasher = Sha256::new();
    let bytes = read_resolved(&resolved, None, cap, Some(&mut hasher))?;
    Ok((bytes, hex::encode(hasher.finalize())))
}

fn split(path: &Path) -> Result<(&Path, &str), ReadError> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or(ReadError::NotRelative)?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    Ok((dir, name))
}

/// True for `model.onnx`, `sub/model.onnx`, `./model.onnx`; false for
/// absolute paths, `..` anywhere, and names with no file in them.
fn is_plain_relative(name: &str) -> bool {
    let path = Path::new(name);
    let mut normal = 0;
    for component in path.components() {
        match component {
            Component::Normal(_) => normal += 1,
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    normal > 0
}

fn read_contained(
    dir: &Path,
    name: &str,
    cap: Cap,
    hasher: Option<&mut Sha256>,
) -> Result<Vec<u8>, ReadError> {
    if !is_plain_relative(name) {
        return Err(ReadError::NotRelative);
    }
    let dir = dir.canonicalize()?;
    let resolved = dir.join(name).canonicalize()?;
    if resolved == dir || !resolved.starts_with(&dir) {
        return Err(ReadError::Outside { resolved, dir });
    }
    read_resolved(&resolved, Some(&dir), cap, hasher)
}

/// Opens and reads `resolved` (a canonical path), which must stay inside
/// `within` when given.
fn read_resolved(
    resolved: &Path,
    within: Option<&Path>,
    cap: Cap,
    hasher: Option<&mut Sha256>,
) -> Result<Vec<u8>, ReadError> {
    // Refuse special files by kind before opening anything: opening a FIFO
    // for reading would wait for a writer.
    let checked = std::fs::symlink_metadata(resolved)?;
    if !checked.file_type().is_file() {
        return Err(ReadError::NotRegular {
            kind: kind(&checked),
        });
    }
    let too_large = ReadError::TooLarge {
        cap: cap.bytes,
        limit: cap.limit,
    };
    if checked.len() > cap.bytes {
        return Err(too_large);
    }
    // What was checked may have been swapped since: non-blocking (a FIFO
    // put in its place cannot hang us), no final symlink, then the handle
    // itself is checked.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
        .open(resolved)?;
    let opened = file.metadata()?;
    if !opened.file_type().is_file() {
        return Err(ReadError::NotRegular {
            kind: kind(&opened),
        });
    }
    if (opened.dev(), opened.ino()) != (checked.dev(), checked.ino()) {
        return Err(ReadError::Replaced);
    }
    if let Some(dir) = within {
        check_opened_path(&file, dir)?;
    }
    if opened.len() > cap.bytes {
        return Err(too_large);
    }
    read_bounded(file, opened.len(), cap, hasher).map_err(|e| match e {
        Bounded::Io(e) => ReadError::Io(e),
        Bounded::OverCap => too_large,
    })
}

/// A directory on the way to the file could have been swapped for a symlink
/// between the checks and the open; the kernel knows what it really opened.
/// Without /proc (not Linux, or not mounted) the dev/ino check stands alone.
fn check_opened_path(file: &File, dir: &Path) -> Result<(), ReadError> {
    use std::os::fd::AsRawFd;
    let Ok(real) = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())) else {
        return Ok(());
    };
    if real.starts_with(dir) {
        Ok(())
    } else {
        Err(ReadError::Outside {
            resolved: real,
            dir: dir.to_path_buf(),
        })
    }
}

enum Bounded {
    Io(std::io::Error),
    OverCap,
}

/// Reads at most `cap` bytes in chunks, hashing each; a file that grew past
/// the cap since it was measured stops at the first chunk over it.
fn read_bounded(
    file: File,
    expected_len: u64,
    cap: Cap,
    mut hasher: Option<&mut Sha256>,
) -> Result<Vec<u8>, Bounded> {
    let mut bytes = Vec::with_capacity(expected_len.min(cap.bytes) as usize);
    let mut chunk = vec![0u8; CHUNK];
    let mut reader = file.take(cap.bytes + 1);
    loop {
        let n = match reader.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Bounded::Io(e)),
        };
        if bytes.len() as u64 + n as u64 > cap.bytes {
            return Err(Bounded::OverCap);
        }
        if let Some(h) = hasher.as_deref_mut() {
            h.update(&chunk[..n]);
        }
        bytes.extend_from_slice(&chunk[..n]);
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAP: Cap = Cap::new(1024, "the test cap");

    fn version_dir() -> (tempfile::TempDir, PathBuf) {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("churn").join("3");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::create_dir_all(root.path().join("churn").join("2")).unwrap();
        std::fs::write(root.path().join("churn/2/model.onnx"), b"v2").unwrap();
        (root, dir)
    }

    #[test]
    fn reads_a_regular_file_inside_and_hashes_it() {
        let (_root, dir) = version_dir();
        std::fs::create_dir(dir.join("sub")).unwrap();
        std::fs::write(dir.join("sub/model.onnx"), b"abc").unwrap();
        std::os::unix::fs::symlink("sub/model.onnx", dir.join("link.onnx")).unwrap();
        let (bytes, sha) = read_in_hashed(&dir, "sub/model.onnx", CAP).unwrap();
        assert_eq!(bytes, b"abc");
        assert_eq!(
            sha,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(read_in(&dir, "./link.onnx", CAP).unwrap(), b"abc");
    }

    #[test]
    fn names_that_leave_the_directory_are_refused_before_any_open() {
        let (_root, dir) = version_dir();
        for name in [
            "../2/model.onnx",
            "/etc/passwd",
            "sub/../../2/model.onnx",
            "",
            ".",
        ] {
            let err = read_in(&dir, name, CAP).unwrap_err();
            assert!(matches!(err, ReadError::NotRelative), "{name}: {err}");
        }
    }

    #[test]
    fn symlinks_out_of_the_directory_are_refused() {
        let (_root, dir) = version_dir();
        std::os::unix::fs::symlink("../2/model.onnx", dir.join("model.onnx")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.join("passwd")).unwrap();
        std::os::unix::fs::symlink("/dev/zero", dir.join("zero")).unwrap();
        for name in ["model.onnx", "passwd", "zero"] {
            let err = read_in(&dir, name, CAP).unwrap_err();
            assert!(matches!(err, ReadError::Outside { .. }), "{name}: {err}");
            assert!(err.to_string().contains("outside"), "{err}");
        }
    }

    #[test]
    fn special_files_are_refused_by_kind_without_blocking() {
        let (_root, dir) = version_dir();
        let fifo =
            std::ffi::CString::new(dir.join("fifo").into_os_string().into_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path; mkfifo only creates a node.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        let _socket = std::os::unix::net::UnixListener::bind(dir.join("socket")).unwrap();
        std::fs::create_dir(dir.join("subdir")).unwrap();
        for (name, kind) in [
            ("fifo", "FIFO"),
            ("socket", "socket"),
            ("subdir", "directory"),
        ] {
            let err = read_in(&dir, name, CAP).unwrap_err();
            assert!(
                err.to_string().contains(kind) && err.to_string().contains("not a regular file"),
                "{name}: {err}"
            );
        }
        // The operator's rules file may live anywhere, but not be a device.
        let err = read_text(Path::new("/dev/zero"), CAP).unwrap_err();
        assert!(err.to_string().contains("character device"), "{err}");
    }

    #[test]
    fn the_cap_trips_on_the_size_and_on_the_read() {
        let (_root, dir) = version_dir();
        std::fs::write(dir.join("big"), vec![7u8; 1025]).unwrap();
        std::fs::write(dir.join("exact"), vec![7u8; 1024]).unwrap();
        let err = read_in(&dir, "big", CAP).unwrap_err();
        assert!(err.to_string().contains("the test cap"), "{err}");
        assert_eq!(read_in(&dir, "exact", CAP).unwrap().len(), 1024);
        // A file that grows after it was measured still stops at the cap.
        let file = File::open(dir.join("big")).unwrap();
        assert!(matches!(
            read_bounded(file, 10, CAP, None),
            Err(Bounded::OverCap)
        ));
    }

    #[test]
    fn missing_files_say_so() {
        let (_root, dir) = version_dir();
        assert!(read_in(&dir, "nope.onnx", CAP).unwrap_err().is_not_found());
        assert!(read_text_in_parent(&dir.join("labels.toml"), CAP)
            .unwrap_err()
            .is_not_found());
    }
}
