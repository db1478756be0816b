//! The layers of spec §3, one file each, and [`Layer`], the list element a model is built from.
//!
//! Every layer fulfils [`Transform`] at its natural rank; [`Layer`] lifts them all to image
//! batches `[batch, C, H, W]` (a flat vector is `[batch, D, 1, 1]`) so a model is a plain list.

pub mod activation;
pub mod conv;
pub mod coupling;
pub mod dense;
pub mod dequantize;
pub mod mlp;
pub mod orthogonal;
pub mod pad;
pub mod reshape;
pub mod spline;
pub mod tile;

use burn::module::Module;
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::flow::{Kind, Mode, Transform};
use activation::{LeakyRelu, LeakyReluConfig, RqSpline, RqSplineConfig};
use conv::{FlowConv2d, FlowConv2dConfig};
use coupling::{CouplingStack, CouplingStackConfig};
use dense::{FlowLinear, FlowLinearConfig};
use dequantize::Dequantize;
use reshape::Flatten;

/// A serializable description of one layer: what presets are written in, and what a run
/// folder's `model.json` lists for the reader (the model itself is rebuilt from the preset
/// `config.json` names).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "layer", rename_all = "snake_case")]
pub enum LayerSpec {
    /// §3.1.
    Dequantize,
    /// §3.2.
    Flatten,
    /// §3.3, `Lin(d_input, d_output)`.
    Linear { d_input: usize, d_output: usize },
    /// §3.4, the RqSpline activation `S`.
    Spline,
    /// §3.4, LeakyReLU with the given slope.
    LeakyRelu { slope: f64 },
    /// §3.5, `Conv(c_in→c_out, kernel, stride)`.
    Conv {
        c_in: usize,
        c_out: usize,
        kernel: usize,
        stride: usize,
    },
    /// §3.6, `RQ_NSF(features, couplings)` on a flat vector.
    Nsf { features: usize, couplings: usize },
    /// §3.6, `RQ_NSF_Conv(channels, couplings)` on an image.
    NsfConv { channels: usize, couplings: usize },
}

impl LayerSpec {
    /// The `[C, H, W]` this layer produces from `input`, or why it cannot take `input`.
    pub fn output_shape(&self, input: [usize; 3]) -> Result<[usize; 3], String> {
        let [c, h, w] = input;
        match self {
            LayerSpec::Dequantize | LayerSpec::Spline | LayerSpec::LeakyRelu { .. } => Ok(input),
            LayerSpec::Flatten => Ok([c * h * w, 1, 1]),
            LayerSpec::Linear { d_input, d_output } => {
                if (h, w) != (1, 1) || c != *d_input {
                    return Err(format!(
                        "Lin({d_input}, {d_output}) needs a flat input of {d_input} features, got {c}×{h}×{w}"
                    ));
                }
                Ok([*d_output, 1, 1])
            }
            LayerSpec::Conv { c_in, .. } if *c_in != c => {
                Err(format!("expects {c_in} input channels, got {c}×{h}×{w}"))
            }
            LayerSpec::Conv { .. } => self.conv_config(input).output_shape(),
            LayerSpec::Nsf { features, .. } if (h, w) != (1, 1) || c != *features => Err(format!(
                "needs a flat input of {features} features, got {c}×{h}×{w}"
            )),
            LayerSpec::NsfConv { channels, .. } if c != *channels => {
                Err(format!("expects {channels} channels, got {c}×{h}×{w}"))
            }
            LayerSpec::Nsf { features: d, .. } | LayerSpec::NsfConv { channels: d, .. }
                if *d < 2 =>
            {
                Err("a coupling needs at least 2 features".into())
            }
            LayerSpec::Nsf { .. } | LayerSpec::NsfConv { .. } => Ok(input),
        }
    }

    fn conv_config(&self, [_, h, w]: [usize; 3]) -> FlowConv2dConfig {
        match self {
            LayerSpec::Conv {
                c_in,
                c_out,
                kernel,
                stride,
            } => FlowConv2dConfig::new(*c_in, *c_out, *kernel, *stride, h, w),
            _ => unreachable!("only called for convolutions"),
        }
    }

    /// Builds the layer for inputs of shape `input` (`[C, H, W]`).
    pub fn init(&self, input: [usize; 3], device: &Device) -> Layer {
        match self {
            LayerSpec::Dequantize => Layer::Dequantize(Dequantize),
            LayerSpec::Flatten => Layer::Flatten(Flatten::new(input)),
            LayerSpec::Linear { d_input, d_output } => {
                Layer::Linear(FlowLinearConfig::new(*d_input, *d_output).init(device))
            }
            LayerSpec::Spline => Layer::Spline(RqSplineConfig::new().init(device)),
            LayerSpec::LeakyRelu { slope } => {
                Layer::LeakyRelu(LeakyReluConfig::new().with_slope(*slope).init())
            }
            LayerSpec::Conv { .. } => Layer::Conv(self.conv_config(input).init(device)),
            LayerSpec::Nsf {
                features,
                couplings,
            } => {
                Layer::Coupling(CouplingStackConfig::new(*features, *couplings, false).init(device))
            }
            LayerSpec::NsfConv {
                channels,
                couplings,
            } => {
                Layer::Coupling(CouplingStackConfig::new(*channels, *couplings, true).init(device))
            }
        }
    }

    /// A short name for listings, in the notation of spec §4.
    pub fn name(&self) -> String {
        match self {
            LayerSpec::Dequantize => "Deq".into(),
            LayerSpec::Flatten => "Flat".into(),
            LayerSpec::Linear { d_input, d_output } => format!("Lin({d_input},{d_output})"),
            LayerSpec::Spline => "S".into(),
            LayerSpec::LeakyRelu { slope } => format!("LeakyReLU({slope})"),
            LayerSpec::Conv {
                c_in,
                c_out,
                kernel,
                stride,
            } => format!("Conv({c_in}→{c_out},{kernel},{stride})"),
            LayerSpec::Nsf {
                features,
                couplings,
            } => format!("RQ_NSF({features},{couplings})"),
            LayerSpec::NsfConv {
                channels,
                couplings,
            } => format!("RQ_NSF_Conv({channels},{couplings})"),
        }
    }
}

/// One layer of a model, acting on `[batch, C, H, W]`.
#[derive(Module, Debug)]
pub enum Layer {
    /// §3.1.
    Dequantize(Dequantize),
    /// §3.2.
    Flatten(Flatten),
    /// §3.3.
    Linear(FlowLinear),
    /// §3.4.
    Spline(RqSpline),
    /// §3.4.
    LeakyRelu(LeakyRelu),
    /// §3.5.
    Conv(FlowConv2d),
    /// §3.6, dense or convolutional.
    Coupling(CouplingStack),
}

impl Layer {
    /// Whether the layer is a bijection, a surjection or an augmentation.
    pub fn kind(&self) -> Kind {
        match self {
            Layer::Dequantize(_) => Kind::Augmentation,
            Layer::Linear(l) => l.kind(),
            Layer::Conv(l) => l.kind(),
            Layer::Flatten(_) | Layer::Spline(_) | Layer::LeakyRelu(_) | Layer::Coupling(_) => {
                Kind::Bijection
            }
        }
    }

    /// Moves every orthogonal matrix's base point after an optimizer step
    /// (see [`orthogonal::Orthogonal::retract`]).
    pub fn retract(self, polish: bool) -> Self {
        match self {
            Layer::Linear(l) => Layer::Linear(l.retract(polish)),
            Layer::Conv(l) => Layer::Conv(l.retract(polish)),
            other => other,
        }
    }
}

/// Runs a layer written for `[batch, D]` on a `[batch, D, 1, 1]` carrier.
fn forward_vectors(layer: &impl Transform<2>, x: Tensor<4>, mode: Mode) -> (Tensor<4>, Tensor<1>) {
    let (z, v) = layer.forward(flat(x), mode);
    (unflat(z), v)
}

fn inverse_vectors(layer: &impl Transform<2>, z: Tensor<4>, mode: Mode) -> Tensor<4> {
    unflat(layer.inverse(flat(z), mode))
}

fn flat(x: Tensor<4>) -> Tensor<2> {
    let [batch, d, _, _] = x.dims();
    x.reshape([batch, d])
}

fn unflat(x: Tensor<2>) -> Tensor<4> {
    let [batch, d] = x.dims();
    x.reshape([batch, d, 1, 1])
}

impl Transform<4> for Layer {
    fn forward(&self, x: Tensor<4>, mode: Mode) -> (Tensor<4>, Tensor<1>) {
        match self {
            Layer::Dequantize(l) => l.forward(x, mode),
            Layer::Flatten(l) => l.forward(x, mode),
            Layer::Spline(l) => l.forward(x, mode),
            Layer::LeakyRelu(l) => l.forward(x, mode),
            Layer::Linear(l) => forward_vectors(l, x, mode),
            Layer::Conv(l) => l.forward(x, mode),
            Layer::Coupling(l) => l.forward(x, mode),
        }
    }

    fn inverse(&self, z: Tensor<4>, mode: Mode) -> Tensor<4> {
        match self {
            Layer::Dequantize(l) => l.inverse(z, mode),
            Layer::Flatten(l) => l.inverse(z, mode),
            Layer::Spline(l) => l.inverse(z, mode),
            Layer::LeakyRelu(l) => l.inverse(z, mode),
            Layer::Linear(l) => inverse_vectors(l, z, mode),
            Layer::Conv(l) => l.inverse(z, mode),
            Layer::Coupling(l) => l.inverse(z, mode),
        }
    }
}
