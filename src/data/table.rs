//! Numeric CSV files as datasets: rows of numbers, a first line that is not all numbers being
//! a header, and optionally a label column, whose distinct values are the classes. The rows are
//! split by a fixed seeded shuffle, 80% training, 10% validation and 10% test, so every run of
//! a file sees the same three parts; or the test rows, or the validation and test rows, come
//! in files of their own, as the tabular benchmarks ship them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::{DataError, Examples, Split, Values};

/// A CSV file as a dataset: `csv:PATH`, followed by any of `,label=COLUMN` (a label column: a
/// header name, or a column number from 1), `,test=PATH` and `,validation=PATH` (the test rows,
/// or the validation rows too, in files of their own, of the same columns).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CsvFile {
    /// The file: all the rows, or the training rows where `test` is given.
    pub path: PathBuf,
    /// The label column, left out of the values.
    pub label: Option<String>,
    /// The validation rows' file; `test` must be given with it.
    pub validation: Option<PathBuf>,
    /// The test rows' file; without `validation`, a tenth of `path` validates.
    pub test: Option<PathBuf>,
}

/// Rows of numbers, row-major, and each row's label where the file has a label column.
pub(super) struct Table {
    pub values: Vec<f32>,
    pub rows: usize,
    pub width: usize,
    /// Each row's value in the label column (none without one).
    pub names: Vec<String>,
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
    Ok(Table {
        values,
        rows,
        width,
        names,
    })
}

/// Each label's class, the rank of its value among the distinct values (in numeric order when
/// all are numbers, so 2 comes before 10; else in text order).
fn classes_of<'a>(names: impl Iterator<Item = &'a str>) -> Result<HashMap<&'a str, u8>, String> {
    let mut distinct: Vec<&str> = names.collect();
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
    Ok(distinct
        .into_iter()
        .enumerate()
        .map(|(i, name)| (name, i as u8))
        .collect())
}

fn bad(path: &Path, message: String) -> DataError {
    DataError::BadInput {
        path: path.to_path_buf(),
        message,
    }
}

/// The tables of `file`: the training file first, then the validation and test files given,
/// all of the training file's width; and the classes their label column names together.
fn tables(file: &CsvFile) -> Result<(Vec<Table>, HashMap<String, u8>), DataError> {
    if file.validation.is_some() && file.test.is_none() {
        return Err(bad(
            &file.path,
            "validation= given without test=: give both files, or test= alone".into(),
        ));
    }
    let label = file.label.as_deref();
    let first = read(&file.path, None, label).map_err(|e| bad(&file.path, e))?;
    let mut tables = vec![];
    for path in [&file.validation, &file.test].into_iter().flatten() {
        tables.push(read(path, Some(first.width), label).map_err(|e| bad(path, e))?);
    }
    tables.insert(0, first);
    let classes = match label {
        Some(label) => {
            let names = tables
                .iter()
                .flat_map(|t| t.names.iter().map(String::as_str));
            let classes = classes_of(names).map_err(|e| {
                let column = match label.parse::<usize>() {
                    Ok(_) => format!("label column {label}"),
                    Err(_) => format!("label column \"{label}\""),
                };
                bad(&file.path, format!("{column}: {e}"))
            })?;
            classes
                .into_iter()
                .map(|(n, c)| (n.to_string(), c))
                .collect()
        }
        None => HashMap::new(),
    };
    Ok((tables, classes))
}

/// The number of value columns (the label column left out) of the CSV file `file`, and the
/// classes of its label column (0 without one).
pub(super) fn columns(file: &CsvFile) -> Result<(usize, usize), DataError> {
    tables(file).map(|(tables, classes)| (tables[0].width, classes.len()))
}

/// The part `split` of the CSV file `file`, each row an example of shape `(columns, 1, 1)`.
pub(super) fn load(file: &CsvFile, split: Split) -> Result<Examples, DataError> {
    let (tables, classes) = tables(file)?;
    // Which table, and which of its rows: shares of a shuffle of the training file where no
    // file of its own holds the part.
    let index = match split {
        Split::Train => 0,
        Split::Validation => 1,
        Split::Test => 2,
    };
    let every = |table: &Table| (0..table.rows).collect();
    let (table, rows) = match (file.validation.is_some(), file.test.is_some()) {
        (false, false) => (
            &tables[0],
            shuffled(file, tables[0].rows, &[8, 1, 1], index)?,
        ),
        (false, true) if split == Split::Test => (&tables[1], every(&tables[1])),
        (false, true) => (&tables[0], shuffled(file, tables[0].rows, &[9, 1], index)?),
        (true, _) => (&tables[index], every(&tables[index])),
    };
    let w = table.width;
    let values = rows
        .iter()
        .flat_map(|&r| table.values[r * w..(r + 1) * w].iter().copied())
        .collect();
    let labels = match table.names.is_empty() {
        true => vec![0; rows.len()],
        false => rows.iter().map(|&r| classes[&table.names[r]]).collect(),
    };
    Ok(Examples {
        values: Values::Real(values),
        labels,
        len: rows.len(),
        channels: w,
        height: 1,
        width: 1,
    })
}

/// Part `which` of the `rows` rows of `file`'s training file in a fixed shuffle, the parts
/// taking `tenths` tenths of them each, the last what is left.
fn shuffled(
    file: &CsvFile,
    rows: usize,
    tenths: &[usize],
    which: usize,
) -> Result<Vec<usize>, DataError> {
    if rows < 10 {
        return Err(bad(
            &file.path,
            format!(
                "holds {rows} rows, expected at least 10 to split into {}",
                match tenths.len() {
                    3 => "training, validation and test",
                    _ => "training and validation",
                }
            ),
        ));
    }
    let mut order: Vec<usize> = (0..rows).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(0x7AB1E));
    let ends: Vec<usize> = tenths
        .iter()
        .scan(0, |end, &t| {
            *end += rows * t / 10;
            Some(*end)
        })
        .collect();
    let start = if which == 0 { 0 } else { ends[which - 1] };
    let end = if which + 1 == tenths.len() {
        rows
    } else {
        ends[which]
    };
    Ok(order[start..end].to_vec())
}
