//! The paper's ten architectures (docs/method.md §3), and models of our own, shipped as spec
//! files in `presets/` and built into the binary: `--arch conv2_nsf` is shorthand for
//! `presets/<dataset>/conv2_nsf.toml`.

use crate::data::Dataset;
use crate::spec::ModelSpec;

/// The architectures of the paper, in its order (each for MNIST and CIFAR-10).
pub const NAMES: [&str; 5] = ["mlp", "conv1", "conv1_nsf", "conv2", "conv2_nsf"];

/// Each preset's file, by dataset and name: the paper's, then ours.
const FILES: [(Dataset, &str, &str); 11] = [
    (
        Dataset::Mnist,
        "mlp",
        include_str!("../presets/mnist/mlp.toml"),
    ),
    (
        Dataset::Mnist,
        "conv1",
        include_str!("../presets/mnist/conv1.toml"),
    ),
    (
        Dataset::Mnist,
        "conv1_nsf",
        include_str!("../presets/mnist/conv1_nsf.toml"),
    ),
    (
        Dataset::Mnist,
        "conv2",
        include_str!("../presets/mnist/conv2.toml"),
    ),
    (
        Dataset::Mnist,
        "conv2_nsf",
        include_str!("../presets/mnist/conv2_nsf.toml"),
    ),
    (
        Dataset::Cifar10,
        "mlp",
        include_str!("../presets/cifar10/mlp.toml"),
    ),
    (
        Dataset::Cifar10,
        "conv1",
        include_str!("../presets/cifar10/conv1.toml"),
    ),
    (
        Dataset::Cifar10,
        "conv1_nsf",
        include_str!("../presets/cifar10/conv1_nsf.toml"),
    ),
    (
        Dataset::Cifar10,
        "conv2",
        include_str!("../presets/cifar10/conv2.toml"),
    ),
    (
        Dataset::Cifar10,
        "conv2_nsf",
        include_str!("../presets/cifar10/conv2_nsf.toml"),
    ),
    (
        Dataset::Mnist,
        "multiscale",
        include_str!("../presets/mnist/multiscale.toml"),
    ),
];

/// The text of the preset `name` for `dataset`, as shipped.
pub fn text(dataset: Dataset, name: &str) -> Result<&'static str, String> {
    FILES
        .iter()
        .find(|(d, n, _)| *d == dataset && *n == name)
        .map(|(_, _, text)| *text)
        .ok_or_else(|| {
            let known: Vec<&str> = FILES
                .iter()
                .filter(|(d, _, _)| *d == dataset)
                .map(|(_, n, _)| *n)
                .collect();
            format!(
                "--arch: unknown architecture '{name}' for {}: expected one of {} (or --model FILE)",
                dataset.name(),
                known.join(", ")
            )
        })
}

/// The preset `name` for `dataset`, resolved (every default written out).
pub fn spec(dataset: Dataset, name: &str) -> Result<ModelSpec, String> {
    let path = format!("presets/{}/{name}.toml", dataset.name());
    ModelSpec::parse(text(dataset, name)?, false)
        .and_then(|spec| spec.resolved())
        .map_err(|e| format!("{path}: {e}"))
}
