//! Inputs given on the command line to score or encode (`flowify encode`): CSV rows of numbers
//! (one input per row, `C·H·W` values in `(C, H, W)` order) or an IDX image file (MNIST's
//! format, gzipped or not) of `1×H×W` images.

use std::path::Path;

use super::{idx, DataError};

/// The inputs in `path` as one `(N, C, H, W)` row-major buffer of `N` inputs of shape `shape`.
pub fn read_inputs(path: &Path, [c, h, w]: [usize; 3]) -> Result<(Vec<f32>, usize), DataError> {
    let bad = |message: String| DataError::BadInput {
        path: path.to_path_buf(),
        message,
    };
    if path.extension().is_some_and(|e| e == "csv") {
        return read_csv(path, c * h * w).map_err(bad);
    }
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("png"))
    {
        return read_png(path, [c, h, w]).map_err(bad);
    }
    if c != 1 {
        return Err(bad(format!(
            "expected CSV rows (*.csv) of {c}×{h}×{w} = {} values; IDX images are 1×H×W",
            c * h * w
        )));
    }
    let hint = || format!("expected an IDX file of 1×{h}×{w} images or CSV rows");
    let images = idx::read_images(path, (h, w), &hint)?;
    Ok((
        images.pixels.iter().map(|&p| f32::from(p)).collect(),
        images.count,
    ))
}

/// One image of `C×H×W` (grey for `C = 1`, RGB for `C = 3`), as channel planes of pixel values.
fn read_png(path: &Path, [c, h, w]: [usize; 3]) -> Result<(Vec<f32>, usize), String> {
    let image = image::open(path).map_err(|e| e.to_string())?;
    let (width, height) = (image.width() as usize, image.height() as usize);
    if (height, width) != (h, w) {
        return Err(format!("expected a {h}×{w} image, got {height}×{width}"));
    }
    let planes: Vec<f32> = match c {
        1 => image
            .to_luma8()
            .into_raw()
            .into_iter()
            .map(f32::from)
            .collect(),
        3 => {
            let rgb = image.to_rgb8().into_raw();
            (0..3)
                .flat_map(|ch| {
                    rgb.iter()
                        .skip(ch)
                        .step_by(3)
                        .map(|&p| f32::from(p))
                        .collect::<Vec<_>>()
                })
                .collect()
        }
        _ => return Err(format!("a PNG holds 1 or 3 channels, the model reads {c}")),
    };
    Ok((planes, 1))
}

/// Rows of `width` numbers; a first row that is not all numbers is a header.
fn read_csv(path: &Path, width: usize) -> Result<(Vec<f32>, usize), String> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_path(path)
        .map_err(|e| e.to_string())?;
    let mut values = Vec::new();
    let mut rows = 0;
    for (i, record) in reader.records().enumerate() {
        let record = record.map_err(|e| e.to_string())?;
        let line = record.position().map_or(i as u64 + 1, |p| p.line());
        let parsed: Vec<Result<f32, _>> = record.iter().map(str::parse::<f32>).collect();
        if i == 0 && parsed.iter().any(Result::is_err) {
            continue;
        }
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
    if rows == 0 {
        return Err("holds no rows of numbers, expected at least one".into());
    }
    Ok((values, rows))
}
