//! Loading and downloading datasets from small files made in temporary directories.

use std::fs;
use std::io::Write;
use std::path::Path;

use flate2::write::GzEncoder;
use flate2::Compression;
use flowify::data::{
    download_archive, download_cifar10, load, Checksum, CsvFile, DataError, Dataset, Examples,
    Split, Toy, Values,
};
use sha2::Digest;
use tempfile::TempDir;

mod fixtures;
use fixtures::*;

// ---------------------------------------------------------------- MNIST

fn idx(magic: u32, dims: &[u32], payload: &[u8]) -> Vec<u8> {
    let mut bytes: Vec<u8> = std::iter::once(magic)
        .chain(dims.iter().copied())
        .flat_map(u32::to_be_bytes)
        .collect();
    bytes.extend_from_slice(payload);
    bytes
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::new(), Compression::default());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

/// Three 28×28 images whose pixel k of image i is (i * 7 + k) % 256, labels 4, 0, 9.
fn mnist_images(count: u32) -> Vec<u8> {
    let pixels: Vec<u8> = (0..count as usize * 784)
        .map(|j| ((j / 784) * 7 + j % 784) as u8)
        .collect();
    idx(0x803, &[count, 28, 28], &pixels)
}

fn mnist_labels(labels: &[u8]) -> Vec<u8> {
    idx(0x801, &[labels.len() as u32], labels)
}

/// Writes `images` and `labels` (uncompressed IDX bytes) gzipped as the test split.
fn write_mnist(dir: &Path, images: &[u8], labels: &[u8]) {
    let mnist = dir.join("mnist");
    fs::create_dir_all(&mnist).unwrap();
    fs::write(mnist.join("t10k-images-idx3-ubyte.gz"), gzip(images)).unwrap();
    fs::write(mnist.join("t10k-labels-idx1-ubyte.gz"), gzip(labels)).unwrap();
}

fn load_err(dataset: Dataset, dir: &Path, split: Split) -> DataError {
    let err = load(&dataset, dir, split).expect_err("load should fail");
    let msg = err.to_string();
    assert!(!msg.contains('\n'), "multi-line message: {msg}");
    err
}

#[test]
fn mnist_round_trip() {
    let tmp = TempDir::new().unwrap();
    write_mnist(tmp.path(), &mnist_images(3), &mnist_labels(&[4, 0, 9]));
    let set = load(&Dataset::Mnist, tmp.path(), Split::Test).unwrap();
    assert_eq!(
        (set.len, set.channels, set.height, set.width),
        (3, 1, 28, 28)
    );
    assert_eq!(set.dim(), 784);
    assert_eq!(set.labels, [4, 0, 9]);
    assert_eq!(set.len * set.dim(), 3 * 784);
    assert_eq!(set.image(2)[0], 14);
    assert_eq!(set.image(2)[5], 19);
    assert_eq!(set.image(1)[783], (7 + 783) as u8);
}

#[test]
fn mnist_uncompressed_fallback() {
    let tmp = TempDir::new().unwrap();
    let mnist = tmp.path().join("mnist");
    fs::create_dir_all(&mnist).unwrap();
    fs::write(mnist.join("train-images-idx3-ubyte"), mnist_images(2)).unwrap();
    fs::write(
        mnist.join("train-labels-idx1-ubyte.gz"),
        gzip(&mnist_labels(&[1, 2])),
    )
    .unwrap();
    let set = load(&Dataset::Mnist, tmp.path(), Split::Train).unwrap();
    assert_eq!(set.labels, [1, 2]);
    assert_eq!(set.image(1)[0], 7);
}

#[test]
fn mnist_missing_file_names_path() {
    let tmp = TempDir::new().unwrap();
    let err = load_err(Dataset::Mnist, tmp.path(), Split::Train);
    assert!(matches!(err, DataError::NotFound { .. }), "{err:?}");
    let msg = err.to_string();
    let expected = tmp.path().join("mnist").join("train-images-idx3-ubyte.gz");
    assert!(
        msg.starts_with(&format!("{}: not found (", expected.display())),
        "{msg}"
    );
}

#[test]
fn mnist_bad_magic() {
    let tmp = TempDir::new().unwrap();
    let mut images = mnist_images(3);
    images[3] = 0x02;
    write_mnist(tmp.path(), &images, &mnist_labels(&[4, 0, 9]));
    let err = load_err(Dataset::Mnist, tmp.path(), Split::Test);
    let path = tmp.path().join("mnist/t10k-images-idx3-ubyte.gz");
    assert_eq!(
        err.to_string(),
        format!(
            "{}: bad magic number 0x00000802, expected 0x00000803 (IDX images)",
            path.display()
        )
    );
}

#[test]
fn mnist_without_images_is_an_error() {
    let tmp = TempDir::new().unwrap();
    write_mnist(tmp.path(), &mnist_images(0), &mnist_labels(&[]));
    let err = load_err(Dataset::Mnist, tmp.path(), Split::Test);
    assert!(
        err.to_string()
            .ends_with("t10k-images-idx3-ubyte.gz: holds no images, expected at least one"),
        "{err}"
    );
}

#[test]
fn mnist_wrong_image_size() {
    let tmp = TempDir::new().unwrap();
    write_mnist(
        tmp.path(),
        &idx(0x803, &[1, 28, 27], &[0; 28 * 27]),
        &mnist_labels(&[1]),
    );
    let err = load_err(Dataset::Mnist, tmp.path(), Split::Test);
    assert!(
        err.to_string()
            .ends_with("images are 28x27, expected 28x28"),
        "{err}"
    );
}

#[test]
fn mnist_truncated() {
    let tmp = TempDir::new().unwrap();
    let images = mnist_images(3);
    write_mnist(tmp.path(), &images[..1000], &mnist_labels(&[4, 0, 9]));
    let err = load_err(Dataset::Mnist, tmp.path(), Split::Test);
    let path = tmp.path().join("mnist/t10k-images-idx3-ubyte.gz");
    assert_eq!(
        err.to_string(),
        format!(
            "{}: truncated: expected 2368 bytes, found 1000",
            path.display()
        )
    );
}

#[test]
fn mnist_too_long() {
    let tmp = TempDir::new().unwrap();
    let mut labels = mnist_labels(&[4, 0, 9]);
    labels.extend([1, 2]);
    write_mnist(tmp.path(), &mnist_images(3), &labels);
    let err = load_err(Dataset::Mnist, tmp.path(), Split::Test);
    assert!(
        matches!(
            err,
            DataError::TooLong {
                expected: 11,
                found: 13,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("t10k-labels-idx1-ubyte.gz: too long"),
        "{err}"
    );
}

#[test]
fn mnist_count_mismatch() {
    let tmp = TempDir::new().unwrap();
    write_mnist(tmp.path(), &mnist_images(3), &mnist_labels(&[4, 0]));
    let err = load_err(Dataset::Mnist, tmp.path(), Split::Test);
    assert!(
        matches!(
            err,
            DataError::CountMismatch {
                labels: 2,
                images: 3,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("t10k-labels-idx1-ubyte.gz: 2 labels, but "),
        "{err}"
    );
}

#[test]
fn mnist_bad_label() {
    let tmp = TempDir::new().unwrap();
    write_mnist(tmp.path(), &mnist_images(3), &mnist_labels(&[4, 10, 9]));
    let err = load_err(Dataset::Mnist, tmp.path(), Split::Test);
    assert!(
        err.to_string()
            .ends_with("record 1: label 10 out of range 0..=9"),
        "{err}"
    );
}

#[test]
fn mnist_corrupt_gzip_is_an_error() {
    let tmp = TempDir::new().unwrap();
    write_mnist(tmp.path(), &mnist_images(1), &mnist_labels(&[1]));
    let path = tmp.path().join("mnist/t10k-images-idx3-ubyte.gz");
    let mut bytes = fs::read(&path).unwrap();
    bytes.truncate(bytes.len() / 2);
    fs::write(&path, bytes).unwrap();
    let err = load_err(Dataset::Mnist, tmp.path(), Split::Test);
    assert!(
        err.to_string().starts_with(&path.display().to_string()),
        "{err}"
    );
}

// ---------------------------------------------------------------- CIFAR-10

fn write_cifar(dir: &Path) -> std::path::PathBuf {
    let batches = dir.join("cifar-10-batches-bin");
    fs::create_dir_all(&batches).unwrap();
    for (name, bytes) in cifar_files() {
        fs::write(batches.join(name), bytes).unwrap();
    }
    batches
}

fn check_cifar(train: &Examples, test: &Examples) {
    assert_eq!(
        (train.len, train.channels, train.height, train.width),
        (10, 3, 32, 32)
    );
    assert_eq!(train.dim(), 3072);
    assert_eq!(train.labels, [1, 2, 2, 3, 3, 4, 4, 5, 5, 6]);
    assert_eq!(test.len, 2);
    assert_eq!(test.labels, [6, 7]);
    // Image 3 of train is record 1 of batch 2: base 21, planes R, G, B in that order.
    let img = train.image(3);
    assert_eq!((img[0], img[1024], img[2048]), (21, 121, 221));
    assert_eq!(
        (img[32 + 2], img[1024 + 32 + 2], img[2048 + 32 + 2]),
        (1, 2, 3)
    );
    assert_eq!(test.image(1)[0], 61);
}

#[test]
fn cifar_round_trip() {
    let tmp = TempDir::new().unwrap();
    write_cifar(tmp.path());
    let train = load(&Dataset::Cifar10, tmp.path(), Split::Train).unwrap();
    let test = load(&Dataset::Cifar10, tmp.path(), Split::Test).unwrap();
    check_cifar(&train, &test);
}

#[test]
fn cifar_bad_length() {
    let tmp = TempDir::new().unwrap();
    let batches = write_cifar(tmp.path());
    let path = batches.join("data_batch_4.bin");
    fs::write(&path, &cifar_batch(4, 2)[..RECORD + 5]).unwrap();
    let err = load_err(Dataset::Cifar10, tmp.path(), Split::Train);
    assert!(
        matches!(err, DataError::BadRecordLength { len: 3078, .. }),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .starts_with(&format!("{}: length 3078", path.display())),
        "{err}"
    );

    fs::write(&path, []).unwrap();
    let err = load_err(Dataset::Cifar10, tmp.path(), Split::Train);
    assert!(
        matches!(err, DataError::BadRecordLength { len: 0, .. }),
        "{err:?}"
    );
}

#[test]
fn cifar_bad_label() {
    let tmp = TempDir::new().unwrap();
    let batches = write_cifar(tmp.path());
    let path = batches.join("test_batch.bin");
    let mut bytes = cifar_batch(6, 2);
    bytes[RECORD] = 10;
    fs::write(&path, bytes).unwrap();
    let err = load_err(Dataset::Cifar10, tmp.path(), Split::Test);
    assert_eq!(
        err.to_string(),
        format!("{}: record 1: label 10 out of range 0..=9", path.display())
    );
}

#[test]
fn cifar_missing_file_names_path() {
    let tmp = TempDir::new().unwrap();
    let batches = write_cifar(tmp.path());
    fs::remove_file(batches.join("data_batch_5.bin")).unwrap();
    let err = load_err(Dataset::Cifar10, tmp.path(), Split::Train);
    let msg = err.to_string();
    let path = batches.join("data_batch_5.bin");
    assert!(
        msg.starts_with(&format!("{}: not found (", path.display())),
        "{msg}"
    );
}

// ---------------------------------------------------------------- Dataset names

#[test]
fn dataset_names() {
    for d in [Dataset::Mnist, Dataset::Cifar10] {
        assert_eq!(d.name().parse::<Dataset>().unwrap(), d);
    }
    assert_eq!("CIFAR10".parse::<Dataset>().unwrap(), Dataset::Cifar10);
    assert_eq!(Dataset::Mnist.shape().unwrap(), [1, 28, 28]);
    assert_eq!(Dataset::Cifar10.shape().unwrap(), [3, 32, 32]);
    let err = "svhn".parse::<Dataset>().unwrap_err().to_string();
    assert!(err.contains("mnist") && err.contains("cifar10"), "{err}");
    assert!(err.contains("moons") && err.contains("csv:PATH"), "{err}");
    for toy in Toy::ALL {
        let d = Dataset::Toy(toy);
        assert_eq!(d.to_string().parse::<Dataset>().unwrap(), d);
        assert_eq!(d.shape().unwrap(), [2, 1, 1]);
    }
    let csv = "csv:some/dir/power.csv".parse::<Dataset>().unwrap();
    assert_eq!(
        csv,
        Dataset::Csv(CsvFile {
            path: "some/dir/power.csv".into(),
            label: None,
            ..Default::default()
        })
    );
    assert_eq!(
        (csv.to_string().as_str(), csv.name().as_str()),
        ("csv:some/dir/power.csv", "power")
    );
    assert!("csv:".parse::<Dataset>().is_err());
    // As config.json writes it.
    let json = serde_json::to_string(&csv).unwrap();
    assert_eq!(json, "\"csv:some/dir/power.csv\"");
    assert_eq!(serde_json::from_str::<Dataset>(&json).unwrap(), csv);
    assert_eq!(
        serde_json::from_str::<Dataset>("\"cifar10\"").unwrap(),
        Dataset::Cifar10
    );
}

// ---------------------------------------------------------------- Toy sets and CSV files

#[test]
fn toy_sets_are_fixed_draws_of_their_density() {
    for toy in Toy::ALL {
        let set = |split| load(&Dataset::Toy(toy), Path::new("nowhere"), split).unwrap();
        let (train, test) = (set(Split::Train), set(Split::Test));
        assert_eq!(
            (train.len, test.len, train.shape()),
            (50_000, 10_000, [2, 1, 1])
        );
        // The same points on every load, different points in each split.
        assert_eq!(set(Split::Test).values, test.values);
        assert_ne!(set(Split::Validation).values, test.values);
        let Values::Real(points) = &test.values else {
            panic!("{toy}: real values expected");
        };
        assert!(
            points.iter().all(|v| v.is_finite() && v.abs() < 8.0),
            "{toy}"
        );
    }
    // Points of the checkerboard lie on its black squares: x and y's unit squares of
    // opposite parity (in units of 2).
    let board = load(&Dataset::Toy(Toy::Checkerboard), Path::new(""), Split::Test).unwrap();
    let mut v = vec![];
    (0..board.len).for_each(|i| board.extend_with(i, &mut v));
    for p in v.chunks(2) {
        let (x, y) = ((p[0] / 2.0).floor() as i64, (p[1] / 2.0).floor() as i64);
        assert_ne!((x + y).rem_euclid(2), 1, "{p:?}");
    }
}

#[test]
fn a_csv_file_splits_into_three_fixed_parts() {
    let tmp = TempDir::new().unwrap();
    let path = tmp.path().join("table.csv");
    let rows: String = (0..100)
        .map(|i| format!("{i}, {}, {}\n", 2 * i, -i))
        .collect();
    fs::write(&path, format!("a,b,c\n{rows}")).unwrap();
    let dataset = Dataset::Csv(CsvFile {
        path: path.clone(),
        label: None,
        ..Default::default()
    });
    assert_eq!(dataset.shape().unwrap(), [3, 1, 1]);
    let parts: Vec<Examples> = [Split::Train, Split::Validation, Split::Test]
        .map(|s| load(&dataset, Path::new(""), s).unwrap())
        .into();
    assert_eq!(
        parts.iter().map(|p| p.len).collect::<Vec<_>>(),
        [80, 10, 10]
    );
    // Every row in exactly one part, whole.
    let mut firsts: Vec<i64> = vec![];
    for part in &parts {
        let mut v = vec![];
        (0..part.len).for_each(|i| part.extend_with(i, &mut v));
        for row in v.chunks(3) {
            assert_eq!((row[1], row[2]), (2.0 * row[0], -row[0]));
            firsts.push(row[0] as i64);
        }
    }
    firsts.sort();
    assert_eq!(firsts, (0..100).collect::<Vec<_>>());
}

#[test]
fn a_bad_csv_file_gets_one_line_naming_line_and_column() {
    let tmp = TempDir::new().unwrap();
    for (text, expected) in [
        ("x,y\n1,2\n3\n", "line 3: expected 2 values, found 1"),
        (
            "1,2\n3,four\n",
            "line 2, column 2: expected a number, found \"four\"",
        ),
        ("x,y\n", "holds no rows of numbers"),
        ("", "holds no rows of numbers"),
        ("1,2\n3,4\n", "holds 2 rows, expected at least 10"),
    ] {
        let path = tmp.path().join("bad.csv");
        fs::write(&path, text).unwrap();
        let msg = load_err(
            Dataset::Csv(CsvFile {
                path: path.clone(),
                label: None,
                ..Default::default()
            }),
            Path::new(""),
            Split::Train,
        )
        .to_string();
        assert!(msg.starts_with(&format!("{}: ", path.display())), "{msg}");
        assert!(msg.contains(expected), "{text:?}: {msg}");
    }
    let msg = load_err(Dataset::Mnist, Path::new("data"), Split::Validation).to_string();
    assert_eq!(msg, "mnist: has no validation split");
}

#[test]
fn a_csv_label_column_names_the_classes() {
    let tmp = TempDir::new().unwrap();
    let path = tmp.path().join("flowers.csv");
    let species = ["virginica", "setosa", "versicolor"];
    // x is the row's class in text order (setosa 0, versicolor 1, virginica 2) plus a tenth of
    // the row number.
    let rows: String = (0..30)
        .map(|i| {
            let name = species[i % 3];
            let class = [2, 0, 1][i % 3];
            format!("{}.{},{name},{}\n", class, i, -(i as i32))
        })
        .collect();
    fs::write(&path, format!("x,species,y\n{rows}")).unwrap();
    for label in ["species", "2"] {
        let name = format!("csv:{},label={label}", path.display());
        let dataset: Dataset = name.parse().unwrap();
        assert_eq!(dataset.to_string(), name);
        assert_eq!(dataset.shape().unwrap(), [2, 1, 1]);
        assert_eq!(dataset.classes().unwrap(), Some(3));
        let train = load(&dataset, Path::new(""), Split::Train).unwrap();
        let mut v = vec![];
        (0..train.len).for_each(|i| train.extend_with(i, &mut v));
        for (row, &label) in v.chunks(2).zip(&train.labels) {
            assert_eq!(row[0].trunc() as u8, label, "{row:?}");
        }
    }
    let plain = Dataset::Csv(CsvFile {
        path: path.clone(),
        label: None,
        ..Default::default()
    });
    let error = plain.shape().unwrap_err().to_string();
    assert!(
        error.contains("line 2, column 2: expected a number, found \"virginica\""),
        "{error}"
    );

    // Numbers order numerically: 2 before 10.
    let numbered = tmp.path().join("numbered.csv");
    let rows: String = (0..20)
        .map(|i| format!("{i},{}\n", [10, 2, 1][i % 3]))
        .collect();
    fs::write(&numbered, rows).unwrap();
    let dataset: Dataset = format!("csv:{},label=2", numbered.display())
        .parse()
        .unwrap();
    let train = load(&dataset, Path::new(""), Split::Train).unwrap();
    let mut v = vec![];
    (0..train.len).for_each(|i| train.extend_with(i, &mut v));
    for (x, &label) in v.iter().zip(&train.labels) {
        assert_eq!(label, [2, 1, 0][*x as usize % 3], "row {x}");
    }

    for (label, text, expected) in [
        (
            "kind",
            "x,species,y\n1,a,2\n",
            "label column \"kind\": not in the header (x, species, y)",
        ),
        (
            "kind",
            "1,2\n3,4\n",
            "label column \"kind\": the file has no header",
        ),
        ("0", "1,2\n3,4\n", "label column 0: columns count from 1"),
        (
            "2",
            "1,2\n3,2\n",
            "label column 2: 1 distinct values, expected 2 to 256 classes",
        ),
        (
            "3",
            "1,2\n3,4\n",
            "line 1: label column 3: the row has 2 values",
        ),
    ] {
        let file = tmp.path().join("bad.csv");
        fs::write(&file, text).unwrap();
        let dataset: Dataset = format!("csv:{},label={label}", file.display())
            .parse()
            .unwrap();
        let error = dataset.shape().unwrap_err().to_string();
        assert!(error.contains(expected), "{label}: {error}");
    }
    assert!("csv:x.csv,label=".parse::<Dataset>().is_err());
}

/// Test rows, or validation and test rows, in files of their own: each part is its file, whole,
/// where one is given (a tenth of the training file validates where only the test file is), and
/// the classes are those of all the files' labels together.
#[test]
fn csv_parts_can_come_in_files_of_their_own() {
    let tmp = TempDir::new().unwrap();
    let write = |name: &str, rows: std::ops::Range<usize>, kinds: &[&str]| {
        let path = tmp.path().join(name);
        let body: String = rows
            .map(|i| format!("{i},{},{}\n", kinds[i % kinds.len()], -(i as i32)))
            .collect();
        fs::write(&path, format!("x,kind,y\n{body}")).unwrap();
        path
    };
    // "c" appears only in the test file: it is still a class, the third.
    let train = write("train,2024.csv", 0..40, &["b", "a"]);
    let validation = write("validation.csv", 100..105, &["a"]);
    let test = write("test.csv", 200..206, &["c", "b", "a"]);
    let parts = |dataset: &Dataset| {
        [Split::Train, Split::Validation, Split::Test].map(|split| {
            let set = load(dataset, Path::new(""), split).unwrap();
            let mut v = vec![];
            (0..set.len).for_each(|i| set.extend_with(i, &mut v));
            let xs: Vec<usize> = v.chunks(2).map(|row| row[0] as usize).collect();
            (xs, set.labels)
        })
    };

    let name = format!(
        "csv:{},label=kind,validation={},test={}",
        train.display(),
        validation.display(),
        test.display()
    );
    let dataset: Dataset = name.parse().unwrap();
    assert_eq!(dataset.to_string(), name, "the path keeps its comma");
    assert_eq!(dataset.classes().unwrap(), Some(3));
    let [(train_x, train_labels), (validation_x, _), (test_x, test_labels)] = parts(&dataset);
    assert_eq!(train_x, (0..40).collect::<Vec<_>>());
    assert_eq!(validation_x, (100..105).collect::<Vec<_>>());
    assert_eq!(test_x, (200..206).collect::<Vec<_>>());
    for (x, label) in train_x.iter().zip(&train_labels) {
        assert_eq!(*label, [1, 0][x % 2], "training row {x}");
    }
    for (x, label) in test_x.iter().zip(&test_labels) {
        assert_eq!(*label, [2, 1, 0][x % 3], "test row {x}");
    }

    // The test file alone: the training file's rows split 90/10, none lost or shared.
    let dataset: Dataset = format!("csv:{},label=kind,test={}", train.display(), test.display())
        .parse()
        .unwrap();
    let [(train_x, _), (validation_x, _), (test_x, _)] = parts(&dataset);
    assert_eq!((train_x.len(), validation_x.len()), (36, 4));
    let mut all: Vec<usize> = train_x.into_iter().chain(validation_x).collect();
    all.sort_unstable();
    assert_eq!(all, (0..40).collect::<Vec<_>>());
    assert_eq!(test_x, (200..206).collect::<Vec<_>>());

    let narrow = tmp.path().join("narrow.csv");
    fs::write(&narrow, "x,kind\n1,a\n").unwrap();
    for (options, expected) in [
        (
            format!(",test={}", narrow.display()),
            format!("{}: line 2: expected 3 values, found 2", narrow.display()),
        ),
        (
            format!(",validation={}", validation.display()),
            "validation= given without test=: give both files, or test= alone".into(),
        ),
    ] {
        let dataset: Dataset = format!("csv:{},label=kind{options}", train.display())
            .parse()
            .unwrap();
        let error = dataset.shape().unwrap_err().to_string();
        assert!(error.contains(&expected), "{error}");
    }
    assert!("csv:x.csv,test=".parse::<Dataset>().is_err());
    assert!("csv:x.csv,test=a.csv,test=b.csv"
        .parse::<Dataset>()
        .is_err());
}

// ---------------------------------------------------------------- Download

fn md5_hex(bytes: &[u8]) -> String {
    md5::Md5::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Names in `dir`, sorted.
fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn download_verify_unpack_then_load() {
    let archive = cifar_archive();
    let sha = sha256_hex(&archive);
    let md5 = md5_hex(&archive).to_uppercase();
    let (url, server) = serve(Reply::Ok(archive), 2);
    let tmp = TempDir::new().unwrap();

    let data_dir = tmp.path().join("data");
    download_archive(
        &url,
        Checksum::Sha256(&sha),
        &data_dir,
        "cifar-10-batches-bin",
    )
    .unwrap();
    assert_eq!(entries(&data_dir), ["cifar-10-batches-bin"]);
    let train = load(&Dataset::Cifar10, &data_dir, Split::Train).unwrap();
    let test = load(&Dataset::Cifar10, &data_dir, Split::Test).unwrap();
    check_cifar(&train, &test);

    // MD5 path, into a second directory; upper-case hex is accepted.
    let other = tmp.path().join("other");
    download_archive(&url, Checksum::Md5(&md5), &other, "cifar-10-batches-bin").unwrap();
    assert_eq!(entries(&other), ["cifar-10-batches-bin"]);
    server.join().unwrap();

    // An existing target is refused before any request is made.
    let err =
        download_archive(&url, Checksum::Md5(&md5), &other, "cifar-10-batches-bin").unwrap_err();
    assert!(matches!(err, DataError::AlreadyExists { .. }), "{err:?}");
}

#[test]
fn download_wrong_checksum_leaves_nothing() {
    let archive = cifar_archive();
    let wrong = sha256_hex(b"something else");
    let (url, server) = serve(Reply::Ok(archive.clone()), 1);
    let tmp = TempDir::new().unwrap();
    let err = download_archive(
        &url,
        Checksum::Sha256(&wrong),
        tmp.path(),
        "cifar-10-batches-bin",
    )
    .unwrap_err();
    server.join().unwrap();
    assert_eq!(
        err.to_string(),
        format!(
            "{url}: checksum mismatch: sha256 {}, expected {wrong}",
            sha256_hex(&archive)
        )
    );
    assert!(entries(tmp.path()).is_empty(), "{:?}", entries(tmp.path()));
}

#[test]
fn download_archive_without_expected_dir_leaves_nothing() {
    let archive = cifar_archive();
    let sha = sha256_hex(&archive);
    let (url, server) = serve(Reply::Ok(archive), 1);
    let tmp = TempDir::new().unwrap();
    let err = download_archive(&url, Checksum::Sha256(&sha), tmp.path(), "other-dir").unwrap_err();
    server.join().unwrap();
    assert!(matches!(err, DataError::BadArchive { .. }), "{err:?}");
    assert!(entries(tmp.path()).is_empty(), "{:?}", entries(tmp.path()));
}

#[test]
fn download_not_found_leaves_nothing() {
    let (url, server) = serve(Reply::NotFound, 1);
    let tmp = TempDir::new().unwrap();
    let sha = sha256_hex(b"");
    let err = download_archive(
        &url,
        Checksum::Sha256(&sha),
        tmp.path(),
        "cifar-10-batches-bin",
    )
    .unwrap_err();
    server.join().unwrap();
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!("download {url}: ")) && msg.contains("404"),
        "{msg}"
    );
    assert!(entries(tmp.path()).is_empty(), "{:?}", entries(tmp.path()));
}

#[test]
fn download_truncated_leaves_nothing() {
    let archive = cifar_archive();
    let sha = sha256_hex(&archive);
    let (url, server) = serve(Reply::Truncated(archive), 1);
    let tmp = TempDir::new().unwrap();
    let err = download_archive(
        &url,
        Checksum::Sha256(&sha),
        tmp.path(),
        "cifar-10-batches-bin",
    )
    .unwrap_err();
    server.join().unwrap();
    assert!(matches!(err, DataError::Download { .. }), "{err:?}");
    assert!(entries(tmp.path()).is_empty(), "{:?}", entries(tmp.path()));
}

#[test]
fn download_rejects_bad_arguments_without_requesting() {
    let tmp = TempDir::new().unwrap();
    // Nothing listens on this URL; validation must fail before any connection attempt.
    let url = "http://127.0.0.1:9/x.tar.gz";
    let err = download_archive(url, Checksum::Md5("abc"), tmp.path(), "d").unwrap_err();
    assert!(err.to_string().contains("is not 32 hex digits"), "{err}");
    let sha = sha256_hex(b"");
    let err = download_archive(url, Checksum::Sha256(&sha), tmp.path(), "../d").unwrap_err();
    assert!(
        err.to_string().contains("not a plain directory name"),
        "{err}"
    );
    assert!(entries(tmp.path()).is_empty());
}

#[test]
fn download_cifar10_keeps_a_loadable_dir_and_reports_a_broken_one() {
    // Both cases return before any network access, since the directory exists.
    let tmp = TempDir::new().unwrap();
    let batches = write_cifar(tmp.path());
    download_cifar10(tmp.path()).unwrap();
    assert_eq!(entries(&batches).len(), 6);

    fs::write(batches.join("test_batch.bin"), [1, 2, 3]).unwrap();
    let err = download_cifar10(tmp.path()).unwrap_err();
    assert!(matches!(err, DataError::Unusable { .. }), "{err:?}");
    assert!(
        err.to_string().ends_with("remove it to download again"),
        "{err}"
    );
    assert_eq!(entries(&batches).len(), 6, "nothing deleted");
}
