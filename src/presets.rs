//! The paper's ten architectures (docs/method.md §3), and models of our own, shipped as spec
//! files in `presets/` and built into the binary: `--arch conv2_nsf` is shorthand for
//! `presets/<dataset>/conv2_nsf.toml`.

use crate::data::Dataset;
use crate::spec::ModelSpec;

/// The architectures of the paper, in its order (each for MNIST and CIFAR-10).
pub const NAMES: [&str; 5] = ["mlp", "conv1", "conv1_nsf", "conv2", "conv2_nsf"];

/// Each preset's file, by dataset and name: the paper's, then ours.
const FILES: [(&str, &str, &str); 14] = [
    ("mnist", "mlp", include_str!("../presets/mnist/mlp.toml")),
    (
        "mnist",
        "conv1",
        include_str!("../presets/mnist/conv1.toml"),
    ),
    (
        "mnist",
        "conv1_nsf",
        include_str!("../presets/mnist/conv1_nsf.toml"),
    ),
    (
        "mnist",
        "conv2",
        include_str!("../presets/mnist/conv2.toml"),
    ),
    (
        "mnist",
        "conv2_nsf",
        include_str!("../presets/mnist/conv2_nsf.toml"),
    ),
    (
        "cifar10",
        "mlp",
        include_str!("../presets/cifar10/mlp.toml"),
    ),
    (
        "cifar10",
        "conv1",
        include_str!("../presets/cifar10/conv1.toml"),
    ),
    (
        "cifar10",
        "conv1_nsf",
        include_str!("../presets/cifar10/conv1_nsf.toml"),
    ),
    (
        "cifar10",
        "conv2",
        include_str!("../presets/cifar10/conv2.toml"),
    ),
    (
        "cifar10",
        "conv2_nsf",
        include_str!("../presets/cifar10/conv2_nsf.toml"),
    ),
    (
        "mnist",
        "multiscale",
        include_str!("../presets/mnist/multiscale.toml"),
    ),
    ("mnist", "fast", include_str!("../presets/mnist/fast.toml")),
    (
        "cifar10",
        "fast",
        include_str!("../presets/cifar10/fast.toml"),
    ),
    ("flat", "dense", include_str!("../presets/flat/dense.toml")),
];

/// The text of the preset `name` for `dataset`, as shipped (a flat preset's widths still
/// written `{d}`).
pub fn text(dataset: &Dataset, name: &str) -> Result<&'static str, String> {
    let family = dataset.preset_family();
    FILES
        .iter()
        .find(|(f, n, _)| *f == family && *n == name)
        .map(|(_, _, text)| *text)
        .ok_or_else(|| {
            let known: Vec<&str> = FILES
                .iter()
                .filter(|(f, _, _)| *f == family)
                .map(|(_, n, _)| *n)
                .collect();
            format!(
                "--arch: unknown architecture '{name}' for {}: expected one of {} (or --model FILE)",
                dataset.name(),
                known.join(", ")
            )
        })
}

/// The preset a dataset trains with when `--arch` names none: `conv2_nsf` for images, `dense`
/// for flat data.
pub fn default_name(dataset: &Dataset) -> &'static str {
    if dataset.is_images() {
        "conv2_nsf"
    } else {
        "dense"
    }
}

/// The preset `name` for `dataset`, resolved (every default written out). A flat preset is
/// written for `d` features, `{d}` in its file: here `d` is the dataset's.
pub fn spec(dataset: &Dataset, name: &str) -> Result<ModelSpec, String> {
    let path = format!("presets/{}/{name}.toml", dataset.preset_family());
    let text = text(dataset, name)?;
    let text = if dataset.is_images() {
        text.to_string()
    } else {
        let [d, _, _] = dataset.shape().map_err(|e| e.to_string())?;
        text.replace("{d}", &d.to_string())
    };
    ModelSpec::parse(&text, false)
        .and_then(|spec| spec.resolved())
        .map_err(|e| format!("{path}: {e}"))
}
