//! Verified download and unpacking of dataset archives (.tar.gz over HTTP or HTTPS).
//!
//! Nothing half-written is ever left under a name a later run would trust: the body goes to a
//! hidden `.partial` file, is checked against the expected digest, unpacked into a hidden
//! `.partial` directory, and only the verified directory is renamed into place. The temporary
//! file and directory are removed whether the download succeeds or fails.

use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use flate2::read::GzDecoder;
use md5::Md5;
use sha2::{Digest, Sha256};

use super::{cifar, load, DataError, Dataset, Split};

/// Official URL of the CIFAR-10 binary version.
pub const CIFAR10_URL: &str = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz";

/// MD5 of [`CIFAR10_URL`] as published on <https://www.cs.toronto.edu/~kriz/cifar.html>
/// (the only digest published there).
pub const CIFAR10_MD5: &str = "c32a1d4ab5d03f1284b67883e8d87530";

/// Expected digest of a download, as hex (either case).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checksum<'a> {
    /// MD5, 32 hex digits. Only guards against corruption, not tampering; use it where it is
    /// the only digest published.
    Md5(&'a str),
    /// SHA-256, 64 hex digits.
    Sha256(&'a str),
}

impl Checksum<'_> {
    fn algorithm(self) -> &'static str {
        match self {
            Checksum::Md5(_) => "md5",
            Checksum::Sha256(_) => "sha256",
        }
    }

    /// The expected digest in lowercase, or why it is malformed. Checked before downloading so
    /// that a typo does not cost a full download.
    fn normalized(self) -> Result<String, String> {
        let (hex, digits) = match self {
            Checksum::Md5(hex) => (hex, 32),
            Checksum::Sha256(hex) => (hex, 64),
        };
        if hex.len() == digits && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(hex.to_ascii_lowercase())
        } else {
            Err(format!(
                "expected {} checksum {hex:?} is not {digits} hex digits",
                self.algorithm()
            ))
        }
    }
}

/// Downloads and unpacks CIFAR-10 into `data_dir/cifar-10-batches-bin/`, verifying the
/// published MD5 before unpacking.
///
/// Does nothing if that directory already exists and both splits load from it; if it exists but
/// does not load, returns [`DataError::Unusable`] rather than deleting it.
///
/// # Errors
/// As [`download_archive`], plus [`DataError::Unusable`].
pub fn download_cifar10(data_dir: &Path) -> Result<(), DataError> {
    let target = data_dir.join(cifar::DIR);
    if target.exists() {
        return match load(&Dataset::Cifar10, data_dir, Split::Train)
            .and_then(|_| load(&Dataset::Cifar10, data_dir, Split::Test))
        {
            Ok(_) => Ok(()),
            Err(e) => Err(DataError::Unusable {
                path: target,
                reason: e.to_string(),
            }),
        };
    }
    download_archive(
        CIFAR10_URL,
        Checksum::Md5(CIFAR10_MD5),
        data_dir,
        cifar::DIR,
    )
}

/// Downloads the gzip-compressed tar archive at `url` (http or https), checks its digest
/// against `checksum`, unpacks it and moves its top-level directory `expect_dir` to
/// `data_dir/expect_dir`, creating `data_dir` if needed. Other archive entries are discarded.
///
/// Fails with [`DataError::AlreadyExists`] if `data_dir/expect_dir` exists. On any failure,
/// nothing is left behind in `data_dir` except `data_dir` itself.
///
/// # Errors
/// [`DataError::Download`] for a malformed checksum or `expect_dir`, an HTTP error status or a
/// broken connection; [`DataError::ChecksumMismatch`]; [`DataError::BadArchive`] if the archive
/// does not unpack or lacks `expect_dir`; [`DataError::AlreadyExists`];
/// [`DataError::Io`] for local file system errors.
pub fn download_archive(
    url: &str,
    checksum: Checksum<'_>,
    data_dir: &Path,
    expect_dir: &str,
) -> Result<(), DataError> {
    let download_err = |source: Box<dyn std::error::Error + Send + Sync>| DataError::Download {
        url: url.to_owned(),
        source,
    };
    let expected = checksum.normalized().map_err(|e| download_err(e.into()))?;
    if !is_plain_name(expect_dir) {
        return Err(download_err(
            format!("expected directory {expect_dir:?} is not a plain directory name").into(),
        ));
    }
    let target = data_dir.join(expect_dir);
    if target.exists() {
        return Err(DataError::AlreadyExists { path: target });
    }
    fs::create_dir_all(data_dir).map_err(|source| DataError::Io {
        path: data_dir.to_owned(),
        source,
    })?;

    let archive = Removed(data_dir.join(format!(".{}.partial", archive_name(url))));
    let found = fetch(url, &archive.0, checksum)?;
    if found != expected {
        return Err(DataError::ChecksumMismatch {
            url: url.to_owned(),
            algorithm: checksum.algorithm(),
            found,
            expected,
        });
    }

    let unpacked = Removed(data_dir.join(format!(".{expect_dir}.partial")));
    unpack(url, &archive.0, &unpacked.0)?;
    let extracted = unpacked.0.join(expect_dir);
    if !extracted.is_dir() {
        return Err(DataError::BadArchive {
            url: url.to_owned(),
            reason: format!("no top-level directory {expect_dir}/"),
        });
    }
    fs::rename(&extracted, &target).map_err(|source| DataError::Io {
        path: target,
        source,
    })
}

/// Streams the body at `url` into `dest`, returning its lowercase hex digest.
fn fetch(url: &str, dest: &Path, checksum: Checksum<'_>) -> Result<String, DataError> {
    let download_err = |source: Box<dyn std::error::Error + Send + Sync>| DataError::Download {
        url: url.to_owned(),
        source,
    };
    // No overall limit, since the archive is large and links may be slow; a stalled connection
    // still fails through the per-read timeout.
    let agent = ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_per_read(Some(Duration::from_secs(60)))
        .build()
        .new_agent();
    let response = agent.get(url).call().map_err(|e| download_err(e.into()))?;
    let mut body = response.into_body().into_reader();
    let mut file = File::create(dest).map_err(|source| DataError::Io {
        path: dest.to_owned(),
        source,
    })?;
    let mut hasher = Hasher::new(checksum);
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = match body.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(download_err(e.into())),
        };
        hasher.update(&buf[..n]);
        file.write_all(&buf[..n]).map_err(|source| DataError::Io {
            path: dest.to_owned(),
            source,
        })?;
    }
    file.sync_all().map_err(|source| DataError::Io {
        path: dest.to_owned(),
        source,
    })?;
    Ok(hasher.finish())
}

/// Unpacks the .tar.gz `archive` into a fresh directory `dest`.
fn unpack(url: &str, archive: &Path, dest: &Path) -> Result<(), DataError> {
    // A leftover from an interrupted run is ours (hidden `.partial` name) and untrusted.
    match fs::remove_dir_all(dest) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(DataError::Io {
                path: dest.to_owned(),
                source,
            })
        }
    }
    fs::create_dir(dest).map_err(|source| DataError::Io {
        path: dest.to_owned(),
        source,
    })?;
    let file = File::open(archive).map_err(|source| DataError::Io {
        path: archive.to_owned(),
        source,
    })?;
    // `tar` refuses entries that would land outside `dest` (absolute paths, `..`).
    tar::Archive::new(GzDecoder::new(io::BufReader::new(file)))
        .unpack(dest)
        .map_err(|e| DataError::BadArchive {
            url: url.to_owned(),
            reason: e.to_string(),
        })
}

/// Whether `name` is a single normal path component, so that joining it stays inside a directory.
fn is_plain_name(name: &str) -> bool {
    let mut components = Path::new(name).components();
    matches!(
        (components.next(), components.next()),
        (Some(Component::Normal(_)), None)
    )
}

/// File name for the partial download: the URL's last path segment, restricted to characters
/// that are safe in a file name everywhere.
fn archive_name(url: &str) -> String {
    let path = url.split(['?', '#']).next().unwrap_or_default();
    let last = path.rsplit('/').next().unwrap_or_default();
    let name: String = last
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    if name.trim_matches('.').is_empty() {
        "download".to_owned()
    } else {
        name
    }
}

/// Deletes the file or directory at its path when dropped, so every exit path cleans up.
struct Removed(PathBuf);

impl Drop for Removed {
    fn drop(&mut self) {
        // Best effort: a failure here must not hide the error being returned, and the hidden
        // `.partial` names are never trusted by a later run anyway.
        if self.0.is_dir() {
            let _ = fs::remove_dir_all(&self.0);
        } else {
            let _ = fs::remove_file(&self.0);
        }
    }
}

/// Incremental digest for either algorithm of [`Checksum`].
enum Hasher {
    Md5(Md5),
    Sha256(Sha256),
}

impl Hasher {
    fn new(checksum: Checksum<'_>) -> Self {
        match checksum {
            Checksum::Md5(_) => Hasher::Md5(Md5::new()),
            Checksum::Sha256(_) => Hasher::Sha256(Sha256::new()),
        }
    }

    fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Md5(h) => h.update(data),
            Hasher::Sha256(h) => h.update(data),
        }
    }

    /// Lowercase hex digest.
    fn finish(self) -> String {
        let bytes = match self {
            Hasher::Md5(h) => h.finalize().to_vec(),
            Hasher::Sha256(h) => h.finalize().to_vec(),
        };
        bytes
            .iter()
            .fold(String::with_capacity(2 * bytes.len()), |mut hex, b| {
                // Writing to a String cannot fail.
                let _ = write!(hex, "{b:02x}");
                hex
            })
    }
}
