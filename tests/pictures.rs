//! PNG grids and loss curves written to temporary directories and decoded back.

use std::fs;
use std::path::Path;

use flowify::pictures::{save_grid, save_loss_curve, PictureError};
use tempfile::TempDir;

fn decode(path: &Path) -> image::DynamicImage {
    image::ImageReader::open(path)
        .unwrap()
        .with_guessed_format()
        .unwrap()
        .decode()
        .unwrap()
}

fn assert_only_file(dir: &Path, name: &str) {
    let names: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, [name], "temporary file left behind");
}

#[test]
fn grey_grid_dims_and_pixels() {
    let tmp = TempDir::new().unwrap();
    let path = tmp.path().join("grid.png");
    let (n, h, w) = (5, 2, 3);
    // Image i is uniformly i / 5, except pixel (1, 2) of image 0, which is out of range.
    let mut pixels: Vec<f32> = (0..n * h * w).map(|j| (j / (h * w)) as f32 / 5.0).collect();
    pixels[w + 2] = 7.0;
    save_grid(&path, &pixels, n, 1, h, w, 2, 3).unwrap();
    assert_only_file(tmp.path(), "grid.png");

    let img = decode(&path);
    assert_eq!(img.color(), image::ColorType::L8);
    // 2 columns and 3 rows of 9×6 cells with 2-pixel gaps.
    assert_eq!((img.width(), img.height()), (2 * 9 + 2, 3 * 6 + 2 * 2));
    let img = img.to_luma8();
    let at = |x: u32, y: u32| img.get_pixel(x, y).0[0];
    assert_eq!(at(0, 0), 0);
    assert_eq!(at(8, 5), 255, "clamped and upscaled");
    assert_eq!(
        at(5, 2),
        0,
        "nearest neighbour keeps the next source pixel separate"
    );
    assert_eq!(at(9, 0), 255, "gap");
    // Image 1 is in row 0, column 1; image 4 in row 2, column 0.
    assert_eq!(at(11, 0), 51);
    assert_eq!(at(11 + 8, 5), 51);
    assert_eq!(at(0, 2 * 8), 204);
    assert_eq!(at(1, 2 * 8 + 1), 204);
    // The unused cell of the last row is background.
    assert_eq!(at(11, 2 * 8), 255);
}

#[test]
fn rgb_grid_keeps_channel_order() {
    let tmp = TempDir::new().unwrap();
    let path = tmp.path().join("rgb.png");
    // One 1×2 image: R plane [1, 0], G plane [0, 0.5], B plane [0, 1].
    let pixels = [1.0, 0.0, 0.0, 0.5, 0.0, 1.0];
    save_grid(&path, &pixels, 1, 3, 1, 2, 8, 1).unwrap();
    let img = decode(&path);
    assert_eq!(
        (img.width(), img.height()),
        (2, 1),
        "columns are capped at n"
    );
    let img = img.to_rgb8();
    assert_eq!(img.get_pixel(0, 0).0, [255, 0, 0]);
    assert_eq!(img.get_pixel(1, 0).0, [0, 128, 255]);
}

#[test]
fn grid_bad_inputs_are_errors() {
    let tmp = TempDir::new().unwrap();
    let path = tmp.path().join("bad.png");
    let err = save_grid(&path, &[0.0; 11], 3, 1, 2, 2, 2, 1).unwrap_err();
    assert!(
        matches!(
            err,
            PictureError::LengthMismatch {
                expected: 12,
                found: 11,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().starts_with(&path.display().to_string()));

    let err = save_grid(&path, &[0.0; 8], 1, 2, 2, 2, 1, 1).unwrap_err();
    assert!(
        matches!(err, PictureError::Channels { channels: 2, .. }),
        "{err:?}"
    );

    for (n, cols, scale) in [(0, 1, 1), (1, 0, 1), (1, 1, 0)] {
        let err = save_grid(&path, &vec![0.0; n * 4], n, 1, 2, 2, cols, scale).unwrap_err();
        assert!(matches!(err, PictureError::Size { .. }), "{err:?}");
    }
    let err = save_grid(&path, &[0.0; 4], 1, 1, 2, 2, 1, u32::MAX).unwrap_err();
    assert!(matches!(err, PictureError::Size { .. }), "{err:?}");

    let missing_dir = tmp.path().join("no/such/dir/grid.png");
    let err = save_grid(&missing_dir, &[0.0; 4], 1, 1, 2, 2, 1, 1).unwrap_err();
    assert!(matches!(err, PictureError::Io { .. }), "{err:?}");
    assert!(!err.to_string().contains('\n'));

    assert!(
        fs::read_dir(tmp.path()).unwrap().next().is_none(),
        "nothing written"
    );
}

#[test]
fn loss_curve_is_a_png() {
    let tmp = TempDir::new().unwrap();
    let path = tmp.path().join("loss.png");
    let train: Vec<(f64, f64)> = (0..200)
        .map(|s| (s as f64, 8.0 / (1.0 + s as f64 * 0.05)))
        .collect();
    let test = [(0.0, 7.5), (100.0, f64::NAN), (199.0, 1.6)];
    save_loss_curve(&path, &train, &test).unwrap();
    assert_only_file(tmp.path(), "loss.png");
    let img = decode(&path).to_rgb8();
    assert_eq!((img.width(), img.height()), (800, 500));
    assert!(
        img.pixels().any(|p| p.0 == [0, 0, 255]),
        "train line drawn in blue"
    );
    assert!(
        img.pixels().any(|p| p.0 == [255, 0, 0]),
        "test points drawn in red"
    );
}

#[test]
fn loss_curve_degenerate_inputs() {
    let tmp = TempDir::new().unwrap();
    for (i, train) in [vec![], vec![(3.0, 2.0)], vec![(f64::INFINITY, 1.0)]]
        .iter()
        .enumerate()
    {
        let path = tmp.path().join(format!("loss{i}.png"));
        save_loss_curve(&path, train, &[]).unwrap();
        assert_eq!(decode(&path).width(), 800);
    }
}

#[test]
fn loss_curve_unwritable_path_is_an_error() {
    let tmp = TempDir::new().unwrap();
    let path = tmp.path().join("missing").join("loss.png");
    let err = save_loss_curve(&path, &[(0.0, 1.0), (1.0, 0.5)], &[]).unwrap_err();
    assert!(matches!(err, PictureError::Io { .. }), "{err:?}");
    // A directory is not a file path either.
    let err = save_loss_curve(tmp.path(), &[(0.0, 1.0)], &[]).unwrap_err();
    assert!(matches!(err, PictureError::Io { .. }), "{err:?}");
}
