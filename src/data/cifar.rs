//! Reader for the CIFAR-10 binary version: each batch file is a sequence of records of one label
//! byte followed by 3072 pixel bytes (the R, G and B planes of 1024 bytes each, each plane 32×32
//! row-major), which is already (C, H, W) order.

use std::fs;
use std::path::Path;

use super::{DataError, Examples, Split, Values};

/// The folder of the official binary version inside a data folder.
pub const DIR: &str = "cifar-10-batches-bin";

const TRAIN_FILES: [&str; 5] = [
    "data_batch_1.bin",
    "data_batch_2.bin",
    "data_batch_3.bin",
    "data_batch_4.bin",
    "data_batch_5.bin",
];
const TEST_FILES: [&str; 1] = ["test_batch.bin"];

/// Loads a split from `data_dir/cifar-10-batches-bin/`, concatenating the batch files in order.
pub(super) fn load(data_dir: &Path, split: Split) -> Result<Examples, DataError> {
    let [channels, height, width] = [3, 32, 32];
    let dim = channels * height * width;
    let record = 1 + dim;
    let dir = data_dir.join(DIR);
    let files: &[&str] = match split {
        Split::Test => &TEST_FILES,
        _ => &TRAIN_FILES,
    };
    let (mut pixels, mut labels) = (Vec::new(), Vec::new());
    let mut len = 0;
    for name in files {
        let path = dir.join(name);
        let bytes = fs::read(&path).map_err(|e| {
            DataError::io(&path, e, || {
                format!(
                    "expected the CIFAR-10 binary version (cifar-10-binary.tar.gz from \
                     https://www.cs.toronto.edu/~kriz/cifar.html) unpacked in {}/",
                    dir.display()
                )
            })
        })?;
        if bytes.is_empty() || bytes.len() % record != 0 {
            return Err(DataError::BadRecordLength {
                path,
                len: bytes.len() as u64,
                record,
            });
        }
        let count = bytes.len() / record;
        pixels.reserve(count * dim);
        labels.reserve(count);
        for (i, rec) in bytes.chunks_exact(record).enumerate() {
            let label = rec[0];
            if label > 9 {
                return Err(DataError::BadLabel {
                    path,
                    record: i,
                    label,
                });
            }
            labels.push(label);
            pixels.extend_from_slice(&rec[1..]);
        }
        len += count;
    }
    Ok(Examples {
        values: Values::Pixels(pixels),
        labels,
        len,
        channels,
        height,
        width,
    })
}
