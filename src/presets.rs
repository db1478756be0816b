//! The architectures of spec §4, layer for layer.

use crate::data::Dataset;
use crate::layers::LayerSpec;
use crate::model::ModelSpec;

/// An architecture name from spec §4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Arch {
    /// Dense layers only.
    Mlp,
    /// Convolutions with kernels 3 and 2, then dense layers.
    Conv1,
    /// `conv1`'s convolutions with spline couplings between the dense layers.
    Conv1Nsf,
    /// Convolutions with kernel 2, stride 2, then dense layers.
    Conv2,
    /// `conv2` with convolutional and dense spline couplings.
    Conv2Nsf,
}

impl Arch {
    /// Every architecture, in the order of spec §4.
    pub const ALL: [Arch; 5] = [
        Arch::Mlp,
        Arch::Conv1,
        Arch::Conv1Nsf,
        Arch::Conv2,
        Arch::Conv2Nsf,
    ];

    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Arch::Mlp => "mlp",
            Arch::Conv1 => "conv1",
            Arch::Conv1Nsf => "conv1_nsf",
            Arch::Conv2 => "conv2",
            Arch::Conv2Nsf => "conv2_nsf",
        }
    }
}

impl std::str::FromStr for Arch {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Arch::ALL
            .into_iter()
            .find(|a| a.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Arch::ALL.iter().map(|a| a.name()).collect();
                format!(
                    "unknown architecture '{s}': expected one of {}",
                    names.join(", ")
                )
            })
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

// The notation of spec §4.
const S: LayerSpec = LayerSpec::Spline;

fn lin(d_input: usize, d_output: usize) -> LayerSpec {
    LayerSpec::Linear { d_input, d_output }
}

/// `Conv(a→b, k, t), S` for each `(a, b, k, t, n)`, followed by `RQ_NSF_Conv(b, n)` when `n > 0`.
fn conv_blocks(convs: &[(usize, usize, usize, usize, usize)]) -> Vec<LayerSpec> {
    let mut layers = vec![];
    for &(c_in, c_out, kernel, stride, couplings) in convs {
        layers.extend([
            LayerSpec::Conv {
                c_in,
                c_out,
                kernel,
                stride,
            },
            S,
        ]);
        if couplings > 0 {
            layers.push(LayerSpec::NsfConv {
                channels: c_out,
                couplings,
            });
        }
    }
    layers
}

fn nsf(features: usize, couplings: usize) -> LayerSpec {
    LayerSpec::Nsf {
        features,
        couplings,
    }
}

/// `n × [Lin(d, d), S]`.
fn square_blocks(n: usize, d: usize) -> Vec<LayerSpec> {
    (0..n).flat_map(|_| [lin(d, d), S]).collect()
}

/// `Lin(a,b), S` for each consecutive pair of `widths`, without the final `S`.
fn funnel_chain(widths: &[usize]) -> Vec<LayerSpec> {
    let mut layers: Vec<LayerSpec> = widths
        .windows(2)
        .flat_map(|w| [lin(w[0], w[1]), S])
        .collect();
    layers.pop();
    layers
}

/// The model of `arch` on `dataset`, exactly as listed in spec §4 (one row per table row).
#[rustfmt::skip]
pub fn spec(dataset: Dataset, arch: Arch) -> ModelSpec {
    use LayerSpec::{Dequantize as Deq, Flatten as Flat};
    let (c, h, w) = dataset.shape();
    let mnist_conv1 = [(1, 16, 3, 2, 0), (16, 24, 2, 2, 0), (24, 32, 3, 2, 0), (32, 48, 2, 1, 0), (48, 64, 2, 1, 0)];
    let mnist_conv2 = [(1, 4, 2, 2, 0), (4, 16, 2, 2, 0), (16, 32, 2, 2, 0), (32, 48, 2, 2, 0), (48, 64, 2, 2, 0)];
    let mnist_dense = [vec![Flat], square_blocks(6, 64), vec![lin(64, 32), S], square_blocks(6, 32), vec![lin(32, 8), S]].concat();
    let mnist_nsf = vec![Flat, nsf(64, 2), lin(64, 32), S, nsf(32, 2), lin(32, 8), S, nsf(8, 2)];
    let body: Vec<LayerSpec> = match (dataset, arch) {
        (Dataset::Mnist, Arch::Mlp) => [vec![Flat], funnel_chain(&[784, 512, 256, 128, 64, 32, 8])].concat(),
        (Dataset::Mnist, Arch::Conv1) => [conv_blocks(&mnist_conv1), mnist_dense].concat(),
        (Dataset::Mnist, Arch::Conv1Nsf) => [conv_blocks(&mnist_conv1), mnist_nsf].concat(),
        (Dataset::Mnist, Arch::Conv2) => [conv_blocks(&mnist_conv2), mnist_dense].concat(),
        (Dataset::Mnist, Arch::Conv2Nsf) => [
            conv_blocks(&[(1, 4, 2, 2, 2), (4, 16, 2, 2, 2), (16, 24, 2, 2, 2), (24, 32, 2, 2, 2), (32, 64, 2, 2, 0)]),
            mnist_nsf,
        ].concat(),
        (Dataset::Cifar10, Arch::Mlp) => [vec![Flat], funnel_chain(&[3072, 1024, 512, 512, 256, 128])].concat(),
        (Dataset::Cifar10, Arch::Conv1) => [
            conv_blocks(&[(3, 27, 3, 2, 0), (27, 64, 3, 2, 0), (64, 100, 3, 2, 0), (100, 112, 3, 2, 0), (112, 128, 2, 2, 0)]),
            vec![Flat],
            square_blocks(10, 128),
        ].concat(),
        (Dataset::Cifar10, Arch::Conv1Nsf) => [
            conv_blocks(&[(3, 27, 3, 2, 4), (27, 48, 3, 2, 4), (48, 72, 3, 2, 4), (72, 96, 3, 2, 0), (96, 128, 2, 2, 0)]),
            vec![Flat, nsf(128, 8)],
        ].concat(),
        (Dataset::Cifar10, Arch::Conv2) => [
            conv_blocks(&[(3, 12, 2, 2, 0), (12, 48, 2, 2, 0), (48, 100, 2, 2, 0), (100, 112, 2, 2, 0), (112, 128, 2, 2, 0)]),
            vec![Flat],
            square_blocks(12, 128),
        ].concat(),
        (Dataset::Cifar10, Arch::Conv2Nsf) => [
            conv_blocks(&[(3, 12, 2, 2, 4), (12, 48, 2, 2, 4), (48, 72, 2, 2, 4), (72, 96, 2, 2, 0), (96, 128, 2, 2, 0)]),
            vec![Flat, nsf(128, 6)],
        ].concat(),
    };
    ModelSpec { input: [c, h, w], layers: [vec![Deq], body].concat() }
}
