//! Inputs given on the command line to score or encode (`flowify encode`): CSV rows of numbers
//! (one input per row, `C·H·W` values in `(C, H, W)` order) or an IDX image file (MNIST's
//! format, gzipped or not) of `1×H×W` images.

use std::path::Path;

use super::{idx, table, DataError};

/// The inputs in `path` as one `(N, C, H, W)` row-major buffer of `N` inputs of shape `shape`.
pub fn read_inputs(path: &Path, [c, h, w]: [usize; 3]) -> Result<(Vec<f32>, usize), DataError> {
    let bad = |message: String| DataError::BadInput {
        path: path.to_path_buf(),
        message,
    };
    if path.extension().is_some_and(|e| e == "csv") {
        return table::read(path, Some(c * h * w), None)
            .map(|t| (t.values, t.rows))
            .map_err(bad);
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
