//! Image datasets: MNIST (IDX files) and CIFAR-10 (binary batches), loaded into memory as `u8`
//! pixels in (N, C, H, W) order, plus a verified download of the CIFAR-10 archive.
//!
//! Expected layout under a data directory `DIR`:
//! - `DIR/mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz` (or the same names without `.gz`);
//! - `DIR/cifar-10-batches-bin/data_batch_{1..5}.bin` and `test_batch.bin`.

mod cifar;
mod download;
mod idx;
mod inputs;

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;

pub use cifar::DIR as CIFAR10_DIR;
pub use download::{download_archive, download_cifar10, Checksum, CIFAR10_MD5, CIFAR10_URL};
pub use inputs::read_inputs;

/// One split of an image dataset, pixels as u8 in (N, C, H, W) order, row-major.
///
/// `images.len() == len * channels * height * width` and `labels.len() == len`; labels are
/// class indices `0..=9` for both supported datasets.
#[derive(Debug, Clone)]
pub struct ImageSet {
    /// Pixels of all images, (N, C, H, W) row-major, 0 = black.
    pub images: Vec<u8>,
    /// One class label per image, (N,).
    pub labels: Vec<u8>,
    /// Number of images N.
    pub len: usize,
    /// Channels per image C (1 for MNIST, 3 = R, G, B planes for CIFAR-10).
    pub channels: usize,
    /// Image height H in pixels.
    pub height: usize,
    /// Image width W in pixels.
    pub width: usize,
}

impl ImageSet {
    /// Values per image, C * H * W.
    pub fn dim(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// Pixels of image `i`, (C, H, W) row-major, `dim()` values.
    ///
    /// # Panics
    /// If `i >= self.len`, like slice indexing.
    pub fn image(&self, i: usize) -> &[u8] {
        let dim = self.dim();
        &self.images[i * dim..(i + 1) * dim]
    }

    /// The first `n` images (all of them if there are fewer).
    pub fn truncated(mut self, n: usize) -> Self {
        self.len = self.len.min(n);
        self.images.truncate(self.len * self.dim());
        self.labels.truncate(self.len);
        self
    }
}

/// A supported dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dataset {
    /// MNIST handwritten digits, 1×28×28 grey levels.
    Mnist,
    /// CIFAR-10 natural images, 3×32×32 RGB.
    Cifar10,
}

impl Dataset {
    /// Every dataset, in the order listed in messages.
    const ALL: [Dataset; 2] = [Dataset::Mnist, Dataset::Cifar10];

    /// Short lowercase name, as accepted by [`FromStr`]: `"mnist"` or `"cifar10"`.
    pub fn name(self) -> &'static str {
        match self {
            Dataset::Mnist => "mnist",
            Dataset::Cifar10 => "cifar10",
        }
    }

    /// Image shape (C, H, W): (1, 28, 28) for MNIST, (3, 32, 32) for CIFAR-10.
    pub fn shape(self) -> (usize, usize, usize) {
        match self {
            Dataset::Mnist => (1, 28, 28),
            Dataset::Cifar10 => (3, 32, 32),
        }
    }
}

impl fmt::Display for Dataset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Error from parsing a [`Dataset`] name; its message lists the valid names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown dataset {name:?}, expected one of: {}", valid_names())]
pub struct ParseDatasetError {
    /// The name that was not recognised.
    pub name: String,
}

fn valid_names() -> String {
    Dataset::ALL.map(Dataset::name).join(", ")
}

impl FromStr for Dataset {
    type Err = ParseDatasetError;

    /// Parses `"mnist"` or `"cifar10"`, ignoring ASCII case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Dataset::ALL
            .into_iter()
            .find(|d| d.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| ParseDatasetError { name: s.to_owned() })
    }
}

/// Which part of a dataset to load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// Training set (MNIST 60000 images, CIFAR-10 50000).
    Train,
    /// Test set (10000 images for both).
    Test,
}

/// Failure to load or download a dataset. Every message is one line that starts with the file
/// path (or URL) concerned.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A dataset file does not exist; `hint` says where the data was expected.
    #[error("{}: not found ({hint})", path.display())]
    NotFound {
        /// The missing file.
        path: PathBuf,
        /// Where the dataset was expected and how to get it.
        hint: String,
    },
    /// Reading, writing or renaming a file failed (includes corrupt gzip streams).
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// An IDX file starts with the wrong magic number.
    #[error("{}: bad magic number {found:#010x}, expected {expected:#010x} ({kind})", path.display())]
    BadMagic {
        /// The IDX file.
        path: PathBuf,
        /// Magic number read from the file.
        found: u32,
        /// Magic number required.
        expected: u32,
        /// What the file should contain, e.g. "IDX images".
        kind: &'static str,
    },
    /// Inputs given to score or encode that are not what the model takes.
    #[error("{}: {message}", path.display())]
    BadInput {
        /// The file.
        path: PathBuf,
        /// What is wrong, and where (line and column for CSV).
        message: String,
    },
    /// An IDX images file holds no images: nothing to train or evaluate on.
    #[error("{}: holds no images, expected at least one", path.display())]
    NoImages {
        /// The IDX images file.
        path: PathBuf,
    },
    /// IDX images have the wrong height or width for the dataset.
    #[error("{}: images are {found_rows}x{found_cols}, expected {rows}x{cols}", path.display())]
    BadImageSize {
        /// The IDX images file.
        path: PathBuf,
        /// Rows per image in the file.
        found_rows: usize,
        /// Columns per image in the file.
        found_cols: usize,
        /// Rows required.
        rows: usize,
        /// Columns required.
        cols: usize,
    },
    /// A file (uncompressed size for gzip) is shorter than its header says.
    #[error("{}: truncated: expected {expected} bytes, found {found}", path.display())]
    Truncated {
        /// The file.
        path: PathBuf,
        /// Bytes required by the header.
        expected: u64,
        /// Bytes present.
        found: u64,
    },
    /// A file (uncompressed size for gzip) is longer than its header says.
    #[error("{}: too long: expected {expected} bytes, found {found}", path.display())]
    TooLong {
        /// The file.
        path: PathBuf,
        /// Bytes required by the header.
        expected: u64,
        /// Bytes present.
        found: u64,
    },
    /// The labels file does not have one label per image.
    #[error("{}: {labels} labels, but {} has {images} images", path.display(), images_path.display())]
    CountMismatch {
        /// The labels file.
        path: PathBuf,
        /// The images file it was paired with.
        images_path: PathBuf,
        /// Number of labels.
        labels: usize,
        /// Number of images.
        images: usize,
    },
    /// A CIFAR-10 batch file is empty or not a whole number of records.
    #[error(
        "{}: length {len} is not a positive multiple of {record} (1 label byte + 3072 pixel bytes per record)",
        path.display()
    )]
    BadRecordLength {
        /// The batch file.
        path: PathBuf,
        /// Its length in bytes.
        len: u64,
        /// Record size in bytes.
        record: usize,
    },
    /// A label is not a class index 0..=9.
    #[error("{}: record {record}: label {label} out of range 0..=9", path.display())]
    BadLabel {
        /// The labels or batch file.
        path: PathBuf,
        /// Index of the record within that file.
        record: usize,
        /// The offending label.
        label: u8,
    },
    /// A downloaded archive does not match its published checksum.
    #[error("{url}: checksum mismatch: {algorithm} {found}, expected {expected}")]
    ChecksumMismatch {
        /// Where the archive was downloaded from.
        url: String,
        /// "md5" or "sha256".
        algorithm: &'static str,
        /// Lowercase hex digest of the downloaded bytes.
        found: String,
        /// Lowercase hex digest required.
        expected: String,
    },
    /// The HTTP request failed, the response body broke off, or the request was malformed.
    #[error("download {url}: {source}")]
    Download {
        /// The requested URL.
        url: String,
        /// What went wrong.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A downloaded archive could not be unpacked, or lacks the expected directory.
    #[error("{url}: bad archive: {reason}")]
    BadArchive {
        /// Where the archive was downloaded from.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The directory a download would create already exists.
    #[error("{}: already exists; remove it to download again", path.display())]
    AlreadyExists {
        /// The existing directory.
        path: PathBuf,
    },
    /// An existing dataset directory does not load (`reason` is the load error).
    #[error("{}: exists but does not load ({reason}); remove it to download again", path.display())]
    Unusable {
        /// The existing directory.
        path: PathBuf,
        /// Message of the load error.
        reason: String,
    },
}

impl DataError {
    /// Wraps an I/O error on `path`, turning "not found" into [`DataError::NotFound`] with `hint`.
    fn io(path: &Path, source: io::Error, hint: impl FnOnce() -> String) -> Self {
        if source.kind() == io::ErrorKind::NotFound {
            DataError::NotFound {
                path: path.to_owned(),
                hint: hint(),
            }
        } else {
            DataError::Io {
                path: path.to_owned(),
                source,
            }
        }
    }
}

/// Loads one split of `dataset` from under `data_dir` (see the module docs for the layout).
///
/// The result has `(channels, height, width) == dataset.shape()`. Files are validated fully
/// (magic numbers, sizes, image/label counts, label range) and any problem is an error naming
/// the file.
///
/// # Errors
/// [`DataError::NotFound`] for a missing file (the message says where the data is expected),
/// and the other [`DataError`] variants for unreadable or malformed files.
pub fn load(dataset: Dataset, data_dir: &Path, split: Split) -> Result<ImageSet, DataError> {
    match dataset {
        Dataset::Mnist => load_mnist(data_dir, split),
        Dataset::Cifar10 => cifar::load(data_dir, split),
    }
}

fn load_mnist(data_dir: &Path, split: Split) -> Result<ImageSet, DataError> {
    let (channels, height, width) = Dataset::Mnist.shape();
    let dir = data_dir.join("mnist");
    let hint = || {
        format!(
            "expected MNIST in {}/ as train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, \
             t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz, or the same without .gz",
            dir.display()
        )
    };
    let prefix = match split {
        Split::Train => "train",
        Split::Test => "t10k",
    };
    let images = idx::read_images(
        &dir.join(format!("{prefix}-images-idx3-ubyte.gz")),
        (height, width),
        &hint,
    )?;
    let labels = idx::read_labels(&dir.join(format!("{prefix}-labels-idx1-ubyte.gz")), &hint)?;
    if labels.values.len() != images.count {
        return Err(DataError::CountMismatch {
            path: labels.path,
            images_path: images.path,
            labels: labels.values.len(),
            images: images.count,
        });
    }
    if let Some((record, &label)) = labels.values.iter().enumerate().find(|(_, &l)| l > 9) {
        return Err(DataError::BadLabel {
            path: labels.path,
            record,
            label,
        });
    }
    Ok(ImageSet {
        images: images.pixels,
        labels: labels.values,
        len: images.count,
        channels,
        height,
        width,
    })
}
