//! Numeric CSV files as datasets: rows of numbers, a first line that is not all numbers being
//! a header, and optionally a label column, whose distinct values are the classes. The rows are
//! split by a fixed seeded shuffle, 80% training, 10% validation and 10% test, so every run of
//! a file sees the same three parts.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::{DataError, Examples, Split, Values};

/// A CSV file as a dataset: `csv:PATH`, or `csv:PATH,label=COLUMN` with a label column (a
/// header name, or a column number from 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsvFile {
    /// The file.
    pub path: PathBuf,
    /// The label column, left out of the values.
    pub label: Option<String>,
}

/// Rows of numbers, row-major, and each row's class where the file has a label column.
pub(super) struct Table {
    pub values: Vec<f32>,
    pub rows: usize,
    pub width: usize,
    /// Each row's class: the rank of its label among the column's distinct values (all 0
    /// without a label column).
    pub labels: Vec<u8>,
    /// The label column's distinct values (none without one).
    pub classes: usize,
}

/// The most classes a label column may name (labels are bytes).
const MAX_CLASSES: usize = 256;

/// Reads `path`: rows of `width` numbers each (or of the first row's width), besides the label
/// column `label` (a header name, or a column number from 1) where one is given. Errors name the
/// line and column.
pub(super) fn read(
    path: &Path,
    width: Option<usize>,
    label: Option<&str>,
) -> Result<Table, String> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_path(path)
        .map_err(|e| e.to_string())?;
    let mut values = Vec::new();
    let mut names = Vec::new();
    let (mut rows, mut width) = (0, width);
    let mut label_column = match label.map(str::parse::<usize>) {
        Some(Ok(number)) if number >= 1 => Some(number - 1),
        Some(Ok(_)) => return Err("label column 0: columns count from 1".into()),
        _ => None,
    };
    for (i, record) in reader.records().enumerate() {
        let record = record.map_err(|e| e.to_string())?;
        let line = record.position().map_or(i as u64 + 1, |p| p.line());
        let is_value = |(column, field): (usize, &str)| {
            Some(column) == label_column || field.parse::<f32>().is_ok()
        };
        if i == 0 && !record.iter().enumerate().all(is_value) {
            if let (Some(name), None) = (label, label_column) {
                label_column = record.iter().position(|field| field == name);
                if label_column.is_none() {
                    let header: Vec<&str> = record.iter().collect();
                    return Err(format!(
                        "label column \"{name}\": not in the header ({})",
                        header.join(", ")
                    ));
                }
            }
            continue;
        }
        if let (Some(name), None) = (label, label_column) {
            return Err(format!(
                "label column \"{name}\": the file has no header to find it in; name it by number"
            ));
        }
        if let Some(column) = label_column.filter(|&c| c >= record.len()) {
            return Err(format!(
                "line {line}: label column {}: the row has {} values",
                column + 1,
                record.len()
            ));
        }
        let count = record.len() - usize::from(label_column.is_some());
        let width = *width.get_or_insert(count);
        if count != width {
            return Err(format!(
                "line {line}: expected {} values, found {}",
                width + usize::from(label_column.is_some()),
                record.len()
            ));
        }
        for (column, field) in record.iter().enumerate() {
            if Some(column) == label_column {
                names.push(field.to_string());
                continue;
            }
            match field.parse::<f32>() {
                Ok(v) if v.is_finite() => values.push(v),
                _ => {
                    return Err(format!(
                        "line {line}, column {}: expected a number, found \"{field}\"",
                        column + 1,
                    ))
                }
            }
        }
        rows += 1;
    }
    let Some(width) = width.filter(|_| rows > 0) else {
        return Err("holds no rows of numbers, expected at least one".into());
    };
    let (labels, classes) = match label_column {
        Some(column) => {
            classes_of(&names).map_err(|e| format!("label column {}: {e}", column + 1))?
        }
        None => (vec![0; rows], 0),
    };
    Ok(Table {
        values,
        rows,
        width,
        labels,
        classes,
    })
}

/// Each label's class, the rank of its value among the distinct values (in numeric order when
/// all are numbers, so 2 comes before 10; else in text order), and the number of classes.
fn classes_of(names: &[String]) -> Result<(Vec<u8>, usize), String> {
    let mut distinct: Vec<&str> = names.iter().map(String::as_str).collect();
    distinct.sort_unstable();
    distinct.dedup();
    let numbers: Option<Vec<f64>> = distinct.iter().map(|n| n.parse().ok()).collect();
    if let Some(numbers) = numbers {
        let mut paired: Vec<(f64, &str)> = numbers.into_iter().zip(distinct).collect();
        paired.sort_by(|a, b| a.0.total_cmp(&b.0));
        distinct = paired.into_iter().map(|(_, name)| name).collect();
    }
    if !(2..=MAX_CLASSES).contains(&distinct.len()) {
        return Err(format!(
            "{} distinct values, expected 2 to {MAX_CLASSES} classes",
            distinct.len()
        ));
    }
    let class: HashMap<&str, u8> = distinct
        .iter()
        .enumerate()
        .map(|(i, &name)| (name, i as u8))
        .collect();
    let labels = names.iter().map(|name| class[name.as_str()]).collect();
    Ok((labels, distinct.len()))
}

fn bad(path: &Path, message: String) -> DataError {
    DataError::BadInput {
        path: path.to_path_buf(),
        message,
    }
}

/// The number of value columns (the label column left out) of the CSV file `file`, and the
/// classes of its label column (0 without one).
pub(super) fn columns(file: &CsvFile) -> Result<(usize, usize), DataError> {
    let path = &file.path;
    read(path, None, file.label.as_deref())
        .map(|t| (t.width, t.classes))
        .map_err(|e| bad(path, e))
}

/// The part `split` of the CSV file `file`, each row an example of shape `(columns, 1, 1)`.
pub(super) fn load(file: &CsvFile, split: Split) -> Result<Examples, DataError> {
    let path = &file.path;
    let table = read(path, None, file.label.as_deref()).map_err(|e| bad(path, e))?;
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
        labels: rows.iter().map(|&r| table.labels[r]).collect(),
        len: rows.len(),
        channels: w,
        height: 1,
        width: 1,
    })
}
