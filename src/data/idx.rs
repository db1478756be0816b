//! Reader for the IDX format of MNIST: a big-endian u32 magic number (`0x000008NN`: unsigned
//! bytes, NN dimensions), one big-endian u32 per dimension, then the values in row-major order.
//! Files may be gzip-compressed; sizes in errors are always uncompressed byte counts.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use flate2::read::GzDecoder;

use super::DataError;

const IMAGES_MAGIC: u32 = 0x0000_0803;
const LABELS_MAGIC: u32 = 0x0000_0801;

/// Images read from an IDX file: `count` images of the requested size, (N, H, W) row-major.
pub(super) struct IdxImages {
    /// The file actually read (with or without `.gz`).
    pub path: PathBuf,
    pub count: usize,
    pub pixels: Vec<u8>,
}

/// Labels read from an IDX file, (N,).
pub(super) struct IdxLabels {
    /// The file actually read (with or without `.gz`).
    pub path: PathBuf,
    pub values: Vec<u8>,
}

/// Reads an IDX images file whose images must be `rows`×`cols`.
///
/// `gz_path` names the gzip file; if it is missing, the same name without `.gz` is tried.
/// `hint` describes the expected layout for the "not found" error.
pub(super) fn read_images(
    gz_path: &Path,
    (rows, cols): (usize, usize),
    hint: &dyn Fn() -> String,
) -> Result<IdxImages, DataError> {
    let (path, mut reader) = open(gz_path, hint)?;
    let [count, found_rows, found_cols] =
        read_header::<3>(&path, &mut reader, IMAGES_MAGIC, "IDX images")?;
    if count == 0 {
        return Err(DataError::NoImages { path });
    }
    if (found_rows, found_cols) != (rows, cols) {
        return Err(DataError::BadImageSize {
            path,
            found_rows,
            found_cols,
            rows,
            cols,
        });
    }
    let pixels = read_payload(&path, &mut reader, header_len(3), &[count, rows, cols])?;
    Ok(IdxImages {
        path,
        count,
        pixels,
    })
}

/// Reads an IDX labels file; `gz_path` and `hint` as for [`read_images`].
pub(super) fn read_labels(
    gz_path: &Path,
    hint: &dyn Fn() -> String,
) -> Result<IdxLabels, DataError> {
    let (path, mut reader) = open(gz_path, hint)?;
    let [count] = read_header::<1>(&path, &mut reader, LABELS_MAGIC, "IDX labels")?;
    let values = read_payload(&path, &mut reader, header_len(1), &[count])?;
    Ok(IdxLabels { path, values })
}

/// Opens `gz_path` (through a gzip decoder when it starts with gzip's magic bytes), or else the
/// uncompressed file next to it.
fn open(gz_path: &Path, hint: &dyn Fn() -> String) -> Result<(PathBuf, Box<dyn Read>), DataError> {
    let err = match File::open(gz_path) {
        Ok(file) => {
            let mut reader = BufReader::new(file);
            let gzipped = reader
                .fill_buf()
                .map_err(|e| DataError::Io {
                    path: gz_path.to_owned(),
                    source: e,
                })?
                .starts_with(&[0x1f, 0x8b]);
            let reader: Box<dyn Read> = if gzipped {
                Box::new(GzDecoder::new(reader))
            } else {
                Box::new(reader)
            };
            return Ok((gz_path.to_owned(), reader));
        }
        Err(err) => err,
    };
    if err.kind() == io::ErrorKind::NotFound {
        let plain = gz_path.with_extension("");
        if plain != gz_path {
            match File::open(&plain) {
                Ok(file) => return Ok((plain, Box::new(BufReader::new(file)))),
                // Report the preferred .gz name when neither exists.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(DataError::Io {
                        path: plain,
                        source: e,
                    })
                }
            }
        }
    }
    Err(DataError::io(gz_path, err, hint))
}

fn header_len(ndims: usize) -> u64 {
    4 * (1 + ndims as u64)
}

/// Reads and checks the magic number, returning the `N` dimensions that follow it.
fn read_header<const N: usize>(
    path: &Path,
    reader: &mut dyn Read,
    magic: u32,
    kind: &'static str,
) -> Result<[usize; N], DataError> {
    let mut read_word = |offset: u64| -> Result<u32, DataError> {
        let mut word = [0u8; 4];
        let got = read_full(reader, &mut word).map_err(|e| io_err(path, e))?;
        if got < word.len() {
            return Err(DataError::Truncated {
                path: path.to_owned(),
                expected: header_len(N),
                found: offset + got as u64,
            });
        }
        Ok(u32::from_be_bytes(word))
    };
    let found = read_word(0)?;
    if found != magic {
        return Err(DataError::BadMagic {
            path: path.to_owned(),
            found,
            expected: magic,
            kind,
        });
    }
    let mut dims = [0usize; N];
    for (i, dim) in (1u64..).zip(dims.iter_mut()) {
        // u32 fits in usize on every target with std and 32 bits or more.
        *dim = read_word(4 * i)? as usize;
    }
    Ok(dims)
}

/// Reads exactly the product of `dims` bytes after a header of `header` bytes, and checks that
/// nothing follows them.
fn read_payload(
    path: &Path,
    reader: &mut dyn Read,
    header: u64,
    dims: &[usize],
) -> Result<Vec<u8>, DataError> {
    // Saturating so that a hostile header cannot wrap around; it then fails as truncated.
    let len = dims
        .iter()
        .fold(1u64, |acc, &d| acc.saturating_mul(d as u64));
    let expected = header.saturating_add(len);
    // Grow with the data rather than trusting the header for the allocation size.
    let mut data = Vec::with_capacity(len.min(64 << 20) as usize);
    reader
        .take(len)
        .read_to_end(&mut data)
        .map_err(|e| io_err(path, e))?;
    let found = header + data.len() as u64;
    if found < expected {
        return Err(DataError::Truncated {
            path: path.to_owned(),
            expected,
            found,
        });
    }
    let extra = io::copy(reader, &mut io::sink()).map_err(|e| io_err(path, e))?;
    if extra > 0 {
        return Err(DataError::TooLong {
            path: path.to_owned(),
            expected,
            found: found + extra,
        });
    }
    Ok(data)
}

/// Like `read_exact`, but returns how many bytes were read when the input ends early.
fn read_full(reader: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

fn io_err(path: &Path, source: io::Error) -> DataError {
    DataError::Io {
        path: path.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(magic: u32, dims: &[u32]) -> Vec<u8> {
        std::iter::once(magic)
            .chain(dims.iter().copied())
            .flat_map(u32::to_be_bytes)
            .collect()
    }

    #[test]
    fn header_and_payload_round_trip() {
        let mut bytes = header(IMAGES_MAGIC, &[2, 1, 3]);
        bytes.extend([1, 2, 3, 4, 5, 6]);
        let path = Path::new("x");
        let mut reader = &bytes[..];
        let dims = read_header::<3>(path, &mut reader, IMAGES_MAGIC, "IDX images").unwrap();
        assert_eq!(dims, [2, 1, 3]);
        let data = read_payload(path, &mut reader, header_len(3), &dims).unwrap();
        assert_eq!(data, [1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn short_header_reports_bytes_found() {
        let bytes = &header(LABELS_MAGIC, &[5])[..6];
        let err = read_header::<1>(Path::new("x"), &mut &bytes[..], LABELS_MAGIC, "IDX labels")
            .unwrap_err();
        assert!(
            matches!(
                err,
                DataError::Truncated {
                    expected: 8,
                    found: 6,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn huge_declared_count_is_truncated_not_allocated() {
        let mut bytes = header(LABELS_MAGIC, &[u32::MAX]);
        bytes.push(7);
        let mut reader = &bytes[..];
        let path = Path::new("x");
        let dims = read_header::<1>(path, &mut reader, LABELS_MAGIC, "IDX labels").unwrap();
        let err = read_payload(path, &mut reader, header_len(1), &dims).unwrap_err();
        assert!(
            matches!(err, DataError::Truncated { found: 9, .. }),
            "{err}"
        );
    }
}
