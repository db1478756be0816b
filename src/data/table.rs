//! Numeric CSV files as datasets: rows of numbers, a first line that is not all numbers being
//! a header. The rows are split by a fixed seeded shuffle, 80% training, 10% validation and 10%
//! test, so every run of a file sees the same three parts.

use std::path::Path;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::{DataError, Examples, Split, Values};

/// Rows of numbers, row-major.
pub(super) struct Table {
    pub values: Vec<f32>,
    pub rows: usize,
    pub width: usize,
}

/// Reads `path`: rows of `width` numbers each (or of the first row's width). Errors name the
/// line and column.
pub(super) fn read(path: &Path, width: Option<usize>) -> Result<Table, String> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_path(path)
        .map_err(|e| e.to_string())?;
    let mut values = Vec::new();
    let (mut rows, mut width) = (0, width);
    for (i, record) in reader.records().enumerate() {
        let record = record.map_err(|e| e.to_string())?;
        let line = record.position().map_or(i as u64 + 1, |p| p.line());
        let parsed: Vec<Result<f32, _>> = record.iter().map(str::parse::<f32>).collect();
        if i == 0 && parsed.iter().any(Result::is_err) {
            continue;
        }
        let width = *width.get_or_insert(parsed.len());
        if parsed.len() != width {
            return Err(format!(
                "line {line}: expected {width} values, found {}",
                parsed.len()
            ));
        }
        for (column, value) in parsed.into_iter().enumerate() {
            match value {
                Ok(v) if v.is_finite() => values.push(v),
                _ => {
                    return Err(format!(
                        "line {line}, column {}: expected a number, found \"{}\"",
                        column + 1,
                        &record[column]
                    ))
                }
            }
        }
        rows += 1;
    }
    match width {
        Some(width) if rows > 0 => Ok(Table {
            values,
            rows,
            width,
        }),
        _ => Err("holds no rows of numbers, expected at least one".into()),
    }
}

fn bad(path: &Path, message: String) -> DataError {
    DataError::BadInput {
        path: path.to_path_buf(),
        message,
    }
}

/// The number of columns of the CSV file at `path`.
pub(super) fn columns(path: &Path) -> Result<usize, DataError> {
    read(path, None).map(|t| t.width).map_err(|e| bad(path, e))
}

/// The part `split` of the CSV file at `path`, each row an example of shape `(columns, 1, 1)`.
pub(super) fn load(path: &Path, split: Split) -> Result<Examples, DataError> {
    let table = read(path, None).map_err(|e| bad(path, e))?;
    if table.rows < 10 {
        return Err(bad(
            path,
            format!(
                "holds {} rows, expected at least 10 to split into training, validation and test",
                table.rows
            ),
        ));
    }
    let mut order: Vec<usize> = (0..table.rows).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(0x7AB1E));
    let (train, validation) = (table.rows * 8 / 10, table.rows / 10);
    let rows = match split {
        Split::Train => &order[..train],
        Split::Validation => &order[train..train + validation],
        Split::Test => &order[train + validation..],
    };
    let w = table.width;
    let values = rows
        .iter()
        .flat_map(|&r| table.values[r * w..(r + 1) * w].iter().copied())
        .collect();
    Ok(Examples {
        values: Values::Real(values),
        labels: vec![0; rows.len()],
        len: rows.len(),
        channels: w,
        height: 1,
        width: 1,
    })
}
