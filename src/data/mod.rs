//! Datasets: MNIST (IDX files) and CIFAR-10 (binary batches), loaded into memory as `u8` pixels
//! in (N, C, H, W) order, plus a verified download of the CIFAR-10 archive; the 2-D toy
//! densities ([`Toy`]); numeric CSV files.
//!
//! Expected layout under a data directory `DIR`:
//! - `DIR/mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz` (or the same names without `.gz`);
//! - `DIR/cifar-10-batches-bin/data_batch_{1..5}.bin` and `test_batch.bin`.

mod cifar;
mod download;
mod idx;
mod inputs;
mod table;
mod toy;

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;

pub use cifar::DIR as CIFAR10_DIR;
pub use download::{download_archive, download_cifar10, Checksum, CIFAR10_MD5, CIFAR10_URL};
pub use inputs::read_inputs;
pub use table::CsvFile;
pub use toy::Toy;

/// One split of a dataset in memory: `len` examples of shape `(C, H, W)`, row-major, and a
/// class label each.
///
/// Images keep their pixels as `u8` (a quarter of the memory of floats); the toy sets and CSV
/// files hold real numbers. A flat example of `D` numbers has shape `(D, 1, 1)`.
#[derive(Debug, Clone)]
pub struct Examples {
    /// The values of all examples, (N, C, H, W) row-major.
    pub values: Values,
    /// One class label per example, (N,): `0..=9` for MNIST and CIFAR-10, the mixture component
    /// for a toy set, the class of its label column for a CSV file (0 without one).
    pub labels: Vec<u8>,
    /// Number of examples N.
    pub len: usize,
    /// Channels C (1 for MNIST, 3 = R, G, B planes for CIFAR-10, the features of flat data).
    pub channels: usize,
    /// Height H (1 for flat data).
    pub height: usize,
    /// Width W (1 for flat data).
    pub width: usize,
}

/// The numbers of a split.
#[derive(Debug, Clone, PartialEq)]
pub enum Values {
    /// Pixel values, 0 = black.
    Pixels(Vec<u8>),
    /// Real numbers.
    Real(Vec<f32>),
}

impl Examples {
    /// Values per example, C * H * W.
    pub fn dim(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// `[C, H, W]`.
    pub fn shape(&self) -> [usize; 3] {
        [self.channels, self.height, self.width]
    }

    /// Pixels of image `i`, (C, H, W) row-major, `dim()` values.
    ///
    /// # Panics
    /// If `i >= self.len`, like slice indexing, or if the set holds real numbers.
    pub fn image(&self, i: usize) -> &[u8] {
        let dim = self.dim();
        match &self.values {
            Values::Pixels(pixels) => &pixels[i * dim..(i + 1) * dim],
            Values::Real(_) => panic!("image({i}) of a set of real numbers"),
        }
    }

    /// Appends example `i`'s values as floats (pixel values `0..=255` for images) to `out`.
    pub fn extend_with(&self, i: usize, out: &mut Vec<f32>) {
        let range = i * self.dim()..(i + 1) * self.dim();
        match &self.values {
            Values::Pixels(pixels) => out.extend(pixels[range].iter().map(|&p| f32::from(p))),
            Values::Real(reals) => out.extend_from_slice(&reals[range]),
        }
    }

    /// The first `n` examples (all of them if there are fewer).
    pub fn truncated(mut self, n: usize) -> Self {
        self.len = self.len.min(n);
        let kept = self.len * self.dim();
        match &mut self.values {
            Values::Pixels(v) => v.truncate(kept),
            Values::Real(v) => v.truncate(kept),
        }
        self.labels.truncate(self.len);
        self
    }
}

/// A supported dataset.
///
/// Written as its name everywhere (`--dataset`, `config.json`): `mnist`, `cifar10`, a toy set's
/// name, or `csv:PATH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dataset {
    /// MNIST handwritten digits, 1×28×28 grey levels.
    Mnist,
    /// CIFAR-10 natural images, 3×32×32 RGB.
    Cifar10,
    /// A 2-D toy density, drawn in-process.
    Toy(Toy),
    /// Numeric columns of a CSV file, and perhaps a label column.
    Csv(CsvFile),
}

impl Dataset {
    /// A short name for run folders and messages: the name [`FromStr`] takes, or a CSV file's
    /// stem.
    pub fn name(&self) -> String {
        match self {
            Dataset::Mnist => "mnist".into(),
            Dataset::Cifar10 => "cifar10".into(),
            Dataset::Toy(toy) => toy.name().into(),
            Dataset::Csv(file) => file
                .path
                .file_stem()
                .map_or("csv".into(), |s| s.to_string_lossy().into_owned()),
        }
    }

    /// Whether examples are pixel values `0..=255` (images) rather than real numbers.
    pub fn is_images(&self) -> bool {
        matches!(self, Dataset::Mnist | Dataset::Cifar10)
    }

    /// The folder of `presets/` whose architectures fit this dataset.
    pub fn preset_family(&self) -> &'static str {
        match self {
            Dataset::Mnist => "mnist",
            Dataset::Cifar10 => "cifar10",
            Dataset::Toy(_) | Dataset::Csv(_) => "flat",
        }
    }

    /// The shape `[C, H, W]` of one example: `[1, 28, 28]` for MNIST, `[3, 32, 32]` for
    /// CIFAR-10, `[2, 1, 1]` for a toy set, `[columns, 1, 1]` for a CSV file (read from its
    /// first line).
    pub fn shape(&self) -> Result<[usize; 3], DataError> {
        Ok(match self {
            Dataset::Mnist => [1, 28, 28],
            Dataset::Cifar10 => [3, 32, 32],
            Dataset::Toy(_) => [2, 1, 1],
            Dataset::Csv(file) => [table::columns(file)?.0, 1, 1],
        })
    }
}

impl Dataset {
    /// The number of classes its labels name (`0..classes`), for a class-conditional model;
    /// `None` for a dataset without labels (a CSV file without a label column).
    pub fn classes(&self) -> Result<Option<usize>, DataError> {
        Ok(match self {
            Dataset::Mnist | Dataset::Cifar10 => Some(10),
            Dataset::Toy(toy) => Some(toy.classes()),
            Dataset::Csv(file) => Some(table::columns(file)?.1).filter(|&n| n > 0),
        })
    }
}

impl fmt::Display for Dataset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dataset::Csv(file) => {
                write!(f, "csv:{}", file.path.display())?;
                if let Some(label) = &file.label {
                    write!(f, ",{LABEL}={label}")?;
                }
                for (key, path) in [(VALIDATION, &file.validation), (TEST, &file.test)] {
                    if let Some(path) = path {
                        write!(f, ",{key}={}", path.display())?;
                    }
                }
                Ok(())
            }
            other => f.write_str(&other.name()),
        }
    }
}

/// Error from parsing a [`Dataset`] name; its message lists the valid names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown dataset {name:?}, expected one of: {}", valid_names())]
pub struct ParseDatasetError {
    /// The name that was not recognised.
    pub name: String,
}

/// The options that may follow a CSV file's path, each after a comma: its label column, and
/// files of its own for the validation and test rows.
const LABEL: &str = "label";
const VALIDATION: &str = "validation";
const TEST: &str = "test";

fn valid_names() -> String {
    let toys = Toy::ALL.map(Toy::name).join(", ");
    format!("mnist, cifar10, {toys}, csv:PATH[,{LABEL}=COLUMN][,{TEST}=PATH][,{VALIDATION}=PATH]")
}

impl FromStr for Dataset {
    type Err = ParseDatasetError;

    /// Parses a name, ignoring ASCII case, or `csv:PATH`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let unknown = || ParseDatasetError { name: s.to_owned() };
        if let Some(rest) = s.strip_prefix("csv:") {
            // The options are the trailing comma-separated `key=value` parts with a known key;
            // what comes before them, commas and all, is the path.
            let mut file = CsvFile::default();
            let mut parts: Vec<&str> = rest.split(',').collect();
            while let [_, .., last] = parts[..] {
                let Some((key, value)) = last
                    .split_once('=')
                    .filter(|(key, _)| [LABEL, VALIDATION, TEST].contains(key))
                else {
                    break;
                };
                let given_twice = match key {
                    LABEL => file.label.replace(value.into()).is_some(),
                    VALIDATION => file.validation.replace(value.into()).is_some(),
                    _ => file.test.replace(value.into()).is_some(),
                };
                if value.is_empty() || given_twice {
                    return Err(unknown());
                }
                parts.pop();
            }
            file.path = parts.join(",").into();
            return match file.path.as_os_str().is_empty() {
                true => Err(unknown()),
                false => Ok(Dataset::Csv(file)),
            };
        }
        match s.to_ascii_lowercase().as_str() {
            "mnist" => Ok(Dataset::Mnist),
            "cifar10" => Ok(Dataset::Cifar10),
            name => name.parse().map(Dataset::Toy).map_err(|()| unknown()),
        }
    }
}

impl serde::Serialize for Dataset {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Dataset {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

/// Which part of a dataset to load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// Training set (MNIST 60000 images, CIFAR-10 50000).
    Train,
    /// Validation set, held out of training to pick the best checkpoint: the toy sets and CSV
    /// files have one; the image datasets do not.
    Validation,
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
    /// The dataset has no validation split (images: MNIST and CIFAR-10 come as training and
    /// test sets).
    #[error("{dataset}: has no validation split")]
    NoValidation {
        /// The dataset's name.
        dataset: String,
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
pub fn load(dataset: &Dataset, data_dir: &Path, split: Split) -> Result<Examples, DataError> {
    if split == Split::Validation && dataset.is_images() {
        return Err(DataError::NoValidation {
            dataset: dataset.name(),
        });
    }
    match dataset {
        Dataset::Mnist => load_mnist(data_dir, split),
        Dataset::Cifar10 => cifar::load(data_dir, split),
        Dataset::Toy(toy) => {
            let (points, labels) = toy.draw(split);
            Ok(Examples {
                len: labels.len(),
                values: Values::Real(points),
                labels,
                channels: 2,
                height: 1,
                width: 1,
            })
        }
        Dataset::Csv(file) => table::load(file, split),
    }
}

fn load_mnist(data_dir: &Path, split: Split) -> Result<Examples, DataError> {
    let [channels, height, width] = [1, 28, 28];
    let dir = data_dir.join("mnist");
    let hint = || {
        format!(
            "expected MNIST in {}/ as train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, \
             t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz, or the same without .gz",
            dir.display()
        )
    };
    let prefix = match split {
        Split::Test => "t10k",
        _ => "train",
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
    Ok(Examples {
        values: Values::Pixels(images.pixels),
        labels: labels.values,
        len: images.count,
        channels,
        height,
        width,
    })
}
