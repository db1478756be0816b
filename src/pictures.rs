//! PNG output: grids of sample images and loss curves.
//!
//! Files are written to a hidden temporary file next to the target and renamed into place, so a
//! reader (or a crash) never sees a half-written PNG.

use std::fs::{self, File};
use std::io::{self, BufWriter};
use std::ops::Range;
use std::path::{Path, PathBuf};

use image::codecs::png::PngEncoder;
use image::{ExtendedColorType, ImageEncoder};
use plotters::prelude::*;

/// Gap between grid cells in output pixels (independent of `scale`).
const GAP: usize = 2;
/// Grey level of the gap, white so that it stands out from MNIST's black background.
const GAP_VALUE: u8 = 255;
/// Largest grid accepted, in bytes: far above any useful sample grid, so that a wrong `scale`
/// fails cleanly instead of exhausting memory.
const MAX_GRID_BYTES: usize = 1 << 30;
/// Size of the loss curve picture in pixels.
const CURVE_SIZE: (u32, u32) = (800, 500);

/// Failure to write a picture. Every message is one line that starts with the target path.
#[derive(Debug, thiserror::Error)]
pub enum PictureError {
    /// `pixels.len()` is not `n * c * h * w`.
    #[error("{}: {found} pixel values, expected {expected} (n*c*h*w)", path.display())]
    LengthMismatch {
        /// The picture that was to be written.
        path: PathBuf,
        /// `n * c * h * w`.
        expected: usize,
        /// `pixels.len()`.
        found: usize,
    },
    /// The channel count is neither 1 nor 3.
    #[error("{}: {channels} channels, expected 1 (grey) or 3 (RGB)", path.display())]
    Channels {
        /// The picture that was to be written.
        path: PathBuf,
        /// The channel count given.
        channels: usize,
    },
    /// A size argument is zero, or the picture would be too large to encode.
    #[error("{}: {reason}", path.display())]
    Size {
        /// The picture that was to be written.
        path: PathBuf,
        /// Which size is wrong.
        reason: String,
    },
    /// Plotting the curve failed.
    #[error("{}: plotting failed: {source}", path.display())]
    Plot {
        /// The picture that was to be written.
        path: PathBuf,
        /// The plotting error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Encoding the PNG failed.
    #[error("{}: PNG encoding failed: {source}", path.display())]
    Encode {
        /// The picture that was to be written.
        path: PathBuf,
        /// The encoder's error.
        source: image::ImageError,
    },
    /// Creating, writing or renaming the file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file the caller asked for.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
}

/// Writes a grid of images as a PNG. `pixels`: (n, c, h, w) row-major f32 in `[0, 1]` (values are
/// clamped, NaN becomes 0), c = 1 (grey) or 3 (RGB). `cols` images per row (at most `n` columns
/// are used), 2-pixel white gap between images, written to a temp file then renamed.
///
/// Each image is upscaled by the integer `scale` (nearest neighbour), so the PNG is
/// `cols' * w * scale + 2 * (cols' - 1)` wide and `rows * h * scale + 2 * (rows - 1)` high with
/// `cols' = min(cols, n)` and `rows = ceil(n / cols')`; unused cells of the last row are
/// white. Grey for c = 1, RGB for c = 3.
///
/// # Errors
/// [`PictureError::Channels`], [`PictureError::LengthMismatch`] or [`PictureError::Size`] for
/// bad arguments (a zero size, or a grid over 1 GiB), [`PictureError::Io`] or
/// [`PictureError::Encode`] if the file cannot be written.
#[allow(clippy::too_many_arguments)] // mirrors the (n, c, h, w) tensor layout callers hold
pub fn save_grid(
    path: &Path,
    pixels: &[f32],
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    cols: usize,
    scale: u32,
) -> Result<(), PictureError> {
    let size_err = |reason: &str| PictureError::Size {
        path: path.to_owned(),
        reason: reason.into(),
    };
    if c != 1 && c != 3 {
        return Err(PictureError::Channels {
            path: path.to_owned(),
            channels: c,
        });
    }
    if n == 0 || h == 0 || w == 0 || cols == 0 || scale == 0 {
        return Err(size_err("n, h, w, cols and scale must all be positive"));
    }
    let expected = [n, c, h, w]
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d));
    if expected != Some(pixels.len()) {
        return match expected {
            Some(expected) => Err(PictureError::LengthMismatch {
                path: path.to_owned(),
                expected,
                found: pixels.len(),
            }),
            None => Err(size_err("n*c*h*w overflows")),
        };
    }

    let cols = cols.min(n);
    let rows = n.div_ceil(cols);
    let too_large = || size_err("grid too large (over 1 GiB or 2^32 pixels a side)");
    let scale = usize::try_from(scale).map_err(|_| too_large())?;
    let cell_h = h.checked_mul(scale).ok_or_else(too_large)?;
    let cell_w = w.checked_mul(scale).ok_or_else(too_large)?;
    let extent =
        |count: usize, cell: usize| count.checked_mul(cell)?.checked_add((count - 1) * GAP);
    let height = extent(rows, cell_h).ok_or_else(too_large)?;
    let width = extent(cols, cell_w).ok_or_else(too_large)?;
    let (Ok(png_w), Ok(png_h)) = (u32::try_from(width), u32::try_from(height)) else {
        return Err(too_large());
    };
    let len = width
        .checked_mul(height)
        .and_then(|a| a.checked_mul(c))
        .filter(|&len| len <= MAX_GRID_BYTES)
        .ok_or_else(too_large)?;

    // Interleaved output (H, W, C); the input is planar (C, H, W) per image.
    let mut out = vec![GAP_VALUE; len];
    for (i, image) in pixels.chunks_exact(c * h * w).enumerate() {
        let top = (i / cols) * (cell_h + GAP);
        let left = (i % cols) * (cell_w + GAP);
        for y in 0..cell_h {
            let row = ((top + y) * width + left) * c;
            for x in 0..cell_w {
                for ch in 0..c {
                    let v = image[(ch * h + y / scale) * w + x / scale];
                    out[row + x * c + ch] = to_u8(v);
                }
            }
        }
    }
    let color = if c == 1 {
        ExtendedColorType::L8
    } else {
        ExtendedColorType::Rgb8
    };
    write_png(path, &out, png_w, png_h, color)
}

/// Writes a run's loss curves as a PNG: train (blue) and test (red, with a dot per evaluation)
/// bits/dim against the optimizer step. Non-finite points are left out.
///
/// # Errors
/// [`PictureError::Plot`] if plotting fails, [`PictureError::Io`] or [`PictureError::Encode`] if
/// the file cannot be written.
pub fn save_loss_curve(
    path: &Path,
    train: &[(f64, f64)],
    test: &[(f64, f64)],
) -> Result<(), PictureError> {
    let chart = Chart {
        caption: "bits/dim: train (blue), test (red)",
        x_desc: "optimizer step",
        y_desc: "bits/dim",
    };
    let curves = [
        Curve::new("", train, BLUE, false),
        Curve::new("", test, RED, true),
    ];
    save_chart(path, &chart, &curves)
}

/// A chart's texts.
pub struct Chart<'a> {
    /// The title above the plot.
    pub caption: &'a str,
    /// The horizontal axis's description.
    pub x_desc: &'a str,
    /// The vertical axis's description.
    pub y_desc: &'a str,
}

/// One line of a chart: `(x, y)` points joined in order.
pub struct Curve<'a> {
    /// Its legend entry; empty for none.
    pub label: &'a str,
    /// The points, in drawing order.
    pub points: &'a [(f64, f64)],
    /// Its colour.
    pub color: RGBColor,
    /// A dot on each point as well as the line.
    pub dots: bool,
}

impl<'a> Curve<'a> {
    /// A curve of `points` in `color`.
    pub fn new(label: &'a str, points: &'a [(f64, f64)], color: RGBColor, dots: bool) -> Self {
        Self {
            label,
            points,
            color,
            dots,
        }
    }
}

/// Colours for curves drawn side by side, in turn.
pub const PALETTE: [RGBColor; 6] = [
    RGBColor(214, 39, 40),
    RGBColor(31, 119, 180),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(0, 0, 0),
];

/// Writes `curves` on one pair of axes as a PNG, with a legend of the labelled ones; the axes
/// span every finite point. Non-finite points are left out.
///
/// # Errors
/// [`PictureError::Plot`] if plotting fails, [`PictureError::Io`] or [`PictureError::Encode`] if
/// the file cannot be written.
pub fn save_chart(path: &Path, chart: &Chart, curves: &[Curve]) -> Result<(), PictureError> {
    let finite: Vec<Vec<(f64, f64)>> = curves
        .iter()
        .map(|c| {
            c.points
                .iter()
                .copied()
                .filter(|(x, y)| x.is_finite() && y.is_finite())
                .collect()
        })
        .collect();
    let all = || finite.iter().flatten();
    let x_range = span(all().map(|p| p.0), 0.0);
    let y_range = span(all().map(|p| p.1), 0.05);

    let (w, h) = CURVE_SIZE;
    let mut buf = vec![0u8; w as usize * h as usize * 3];
    draw_chart(&mut buf, x_range, y_range, chart, curves, &finite).map_err(|source| {
        PictureError::Plot {
            path: path.to_owned(),
            source,
        }
    })?;
    write_png(path, &buf, w, h, ExtendedColorType::Rgb8)
}

/// The font of the curve's text, shipped with the crate so that no system font is needed.
const FONT: &str = "flowify-sans";

fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let bytes: &'static [u8] = include_bytes!("../assets/DejaVuSans.ttf");
        plotters::style::register_font(FONT, FontStyle::Normal, bytes)
            .unwrap_or_else(|_| unreachable!("the shipped font parses"));
    });
}

/// Draws `curves` (with their finite points `finite`) into `buf`, an RGB buffer of
/// [`CURVE_SIZE`].
fn draw_chart(
    buf: &mut [u8],
    x_range: Range<f64>,
    y_range: Range<f64>,
    texts: &Chart,
    curves: &[Curve],
    finite: &[Vec<(f64, f64)>],
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    register_font();
    let root = BitMapBackend::with_buffer(buf, CURVE_SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .margin(20)
        .caption(texts.caption, (FONT, 22))
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(x_range.clone(), y_range.clone())?;
    chart
        .configure_mesh()
        .x_desc(texts.x_desc)
        .y_desc(texts.y_desc)
        .label_style((FONT, 14))
        .draw()?;
    chart.draw_series(std::iter::once(Rectangle::new(
        [(x_range.start, y_range.start), (x_range.end, y_range.end)],
        BLACK.stroke_width(1),
    )))?;
    for (curve, points) in curves.iter().zip(finite) {
        let color = curve.color;
        let line = chart.draw_series(LineSeries::new(
            points.iter().copied(),
            color.stroke_width(2),
        ))?;
        if !curve.label.is_empty() {
            line.label(curve.label).legend(move |(x, y)| {
                PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2))
            });
        }
        if curve.dots {
            chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
        }
    }
    if curves.iter().any(|c| !c.label.is_empty()) {
        chart
            .configure_series_labels()
            .label_font((FONT, 16))
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperRight)
            .draw()?;
    }
    root.present()?;
    Ok(())
}

/// Range covering `values`, widened by `margin` times its width on each side; a degenerate or
/// empty set still gets a non-empty range so plotting can map it.
fn span(values: impl Iterator<Item = f64>, margin: f64) -> Range<f64> {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if lo > hi {
        0.0..1.0
    } else if lo == hi {
        lo - 0.5..hi + 0.5
    } else {
        let pad = (hi - lo) * margin;
        lo - pad..hi + pad
    }
}

fn to_u8(v: f32) -> u8 {
    // `as` saturates and maps NaN to 0.
    (v.clamp(0.0, 1.0) * 255.0).round() as u8
}

/// Encodes `data` (interleaved, `color` layout) as a PNG at `path` via a temporary file.
fn write_png(
    path: &Path,
    data: &[u8],
    width: u32,
    height: u32,
    color: ExtendedColorType,
) -> Result<(), PictureError> {
    let tmp = temp_path(path).ok_or_else(|| PictureError::Io {
        path: path.to_owned(),
        source: io::Error::new(io::ErrorKind::InvalidInput, "not a file path"),
    })?;
    // A failure on the temporary file is reported against the file the user asked for.
    let result = encode_file(&tmp, data, width, height, color)
        .map_err(|e| match e {
            PictureError::Io { source, .. } => PictureError::Io {
                path: path.to_owned(),
                source,
            },
            other => other,
        })
        .and_then(|()| {
            fs::rename(&tmp, path).map_err(|source| PictureError::Io {
                path: path.to_owned(),
                source,
            })
        });
    if result.is_err() {
        // Best effort; the original error is the one worth reporting.
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Encodes `data` as a PNG into a new file at `path`.
fn encode_file(
    path: &Path,
    data: &[u8],
    width: u32,
    height: u32,
    color: ExtendedColorType,
) -> Result<(), PictureError> {
    let io_err = |source| PictureError::Io {
        path: path.to_owned(),
        source,
    };
    let mut file = BufWriter::new(File::create(path).map_err(io_err)?);
    PngEncoder::new(&mut file)
        .write_image(data, width, height, color)
        .map_err(|source| PictureError::Encode {
            path: path.to_owned(),
            source,
        })?;
    file.into_inner()
        .map_err(|e| io_err(e.into_error()))?
        .sync_all()
        .map_err(io_err)
}

/// Hidden sibling of `path` for writing before the rename: `dir/.name.tmp`.
fn temp_path(path: &Path) -> Option<PathBuf> {
    let name = path.file_name()?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(".tmp");
    Some(path.with_file_name(tmp_name))
}

/// Side of one panel of [`save_panels`] in pixels.
const PANEL: u32 = 320;
/// Height of a panel's title above it.
const TITLE: u32 = 30;

/// Writes a PNG of heat maps side by side, one per `(title, values)`, each `values` an `n × n`
/// grid row by row from the top, shaded from white (0) to dark blue (the panel's largest value).
///
/// # Errors
/// [`PictureError::LengthMismatch`] if a panel is not `n × n` values, [`PictureError::Plot`] if
/// drawing fails, [`PictureError::Io`] or [`PictureError::Encode`] if the file cannot be
/// written.
pub fn save_panels(path: &Path, panels: &[(&str, &[f64])], n: usize) -> Result<(), PictureError> {
    if let Some((_, values)) = panels.iter().find(|(_, v)| v.len() != n * n) {
        return Err(PictureError::LengthMismatch {
            path: path.to_owned(),
            expected: n * n,
            found: values.len(),
        });
    }
    let size = (PANEL * panels.len() as u32, PANEL + TITLE);
    let mut buf = vec![0u8; size.0 as usize * size.1 as usize * 3];
    draw_panels(&mut buf, size, panels, n).map_err(|source| PictureError::Plot {
        path: path.to_owned(),
        source,
    })?;
    write_png(path, &buf, size.0, size.1, ExtendedColorType::Rgb8)
}

fn draw_panels(
    buf: &mut [u8],
    size: (u32, u32),
    panels: &[(&str, &[f64])],
    n: usize,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    register_font();
    let root = BitMapBackend::with_buffer(buf, size).into_drawing_area();
    root.fill(&WHITE)?;
    for (area, (title, values)) in root.split_evenly((1, panels.len())).iter().zip(panels) {
        let (head, body) = area.split_vertically(TITLE);
        head.titled(title, (FONT, 18))?;
        let top = values
            .iter()
            .copied()
            .filter(|v| v.is_finite())
            .fold(0.0, f64::max);
        let cell = (PANEL - 20) as f64 / n as f64;
        for (i, &v) in values.iter().enumerate() {
            let share = if top > 0.0 && v.is_finite() {
                (v / top).clamp(0.0, 1.0)
            } else {
                0.0
            };
            let shade = |white: f64, dark: f64| (white + (dark - white) * share).round() as u8;
            let colour = RGBColor(shade(255.0, 8.0), shade(255.0, 48.0), shade(255.0, 107.0));
            let (row, col) = ((i / n) as f64, (i % n) as f64);
            let corner = |r: f64, c: f64| (10 + (c * cell) as i32, (r * cell) as i32);
            body.draw(&Rectangle::new(
                [corner(row, col), corner(row + 1.0, col + 1.0)],
                colour.filled(),
            ))?;
        }
    }
    root.present()?;
    Ok(())
}
