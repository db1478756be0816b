//! Multi-scale factor-out (RealNVP, Glow; docs/method.md §2.9): the last half of the channels
//! leaves the flow here, scored under a Gaussian whose mean and log-std a 3×3 convolutional
//! network predicts from the first half. As a layer it is a surjection (a slice, which SurVAE
//! flows call a slicing surjection): `V` is the exact log-density of what it drops, and the
//! inverse draws the dropped half (or takes its mean), so sampling draws every split's part of
//! the latent in turn.

use burn::module::Module;
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::convnet::ConvNet;
use super::{at_least, LayerConfig};
use crate::flow::{DroppedDensity, Kind, Mode, Transform};
use crate::kernels::columns::columns;
use crate::kernels::{from_rows, to_rows};

/// `layer = "split"`: `[C, H, W] → [C − ⌊C/2⌋, H, W]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitSpec {
    /// Channels of the prior network's hidden convolutions.
    #[serde(default = "default_hidden")]
    pub hidden: usize,
    /// Hidden convolutions of the prior network; 0 (Glow's) is one convolution from the kept
    /// half to the dropped half's mean and log-std.
    #[serde(default)]
    pub depth: usize,
}

fn default_hidden() -> usize {
    32
}

impl SplitSpec {
    /// The prior network's widths `[kept, hidden…, 2·dropped]` for `c` channels.
    fn widths(&self, c: usize) -> Vec<usize> {
        let dropped = c / 2;
        [
            vec![c - dropped],
            vec![self.hidden; self.depth],
            vec![2 * dropped],
        ]
        .concat()
    }
}

impl LayerConfig for SplitSpec {
    type Layer = Split;

    fn output_shape(&self, [c, h, w]: [usize; 3]) -> Result<[usize; 3], String> {
        at_least("hidden", self.hidden, 1)?;
        if c < 2 {
            return Err(format!(
                "expects at least 2 channels to split, got {c}×{h}×{w}"
            ));
        }
        Ok([c - c / 2, h, w])
    }

    fn kind(&self, _input: [usize; 3]) -> Kind {
        Kind::Surjection
    }

    fn name(&self) -> String {
        "Split".into()
    }

    fn params(&self, [c, _, _]: [usize; 3]) -> usize {
        ConvNet::params(&self.widths(c))
    }

    /// The prior starts as the standard normal (its last convolution at zero), as Glow's.
    fn init(&self, [c, _, _]: [usize; 3], device: &Device) -> Split {
        Split {
            prior: ConvNet::new(&self.widths(c), device).zero_last(),
            dropped: c / 2,
        }
    }
}

/// The factor-out: keeps the first `C − dropped` channels.
#[derive(Module, Debug)]
pub struct Split {
    /// Kept rows → the dropped half's `(μ, log σ)`.
    pub prior: ConvNet,
    dropped: usize,
}

impl Split {
    /// The density of the dropped channels given the kept rows `[batch·H·W, kept]`.
    fn density(&self, kept: Tensor<2>, hw: [usize; 2]) -> DroppedDensity<2> {
        let out = self.prior.forward(kept, hw);
        DroppedDensity {
            mean: columns(out.clone(), 0, self.dropped),
            log_std: columns(out, self.dropped, self.dropped),
        }
    }
}

impl Transform<4> for Split {
    fn forward(&self, x: Tensor<4>, _mode: Mode) -> (Tensor<4>, Tensor<1>) {
        let [batch, c, h, w] = x.dims();
        let rows = to_rows(x);
        let kept = columns(rows.clone(), 0, c - self.dropped);
        let dropped = columns(rows, c - self.dropped, self.dropped);
        let per_row = self.density(kept.clone(), [h, w]).log_prob(dropped);
        let v = per_row.reshape([batch, h * w]).sum_dim(1).reshape([batch]);
        (from_rows(kept, [batch, h, w]), v)
    }

    fn inverse(&self, z: Tensor<4>, mode: Mode) -> Tensor<4> {
        let [batch, _, h, w] = z.dims();
        let kept = to_rows(z);
        let dropped = self.density(kept.clone(), [h, w]).draw(mode);
        from_rows(Tensor::cat(vec![kept, dropped], 1), [batch, h, w])
    }
}
