//! What the two pooling layers share: their entry in an architecture file. Each pools
//! non-overlapping `k × k` patches of every channel, keeps one number per patch (the mean in
//! [`avg_pool`](super::avg_pool), the maximum in [`max_pool`](super::max_pool)) and scores the
//! rest with a [`ContextNet`](super::context::ContextNet) reading the output map.

use std::marker::PhantomData;

use serde::{Deserialize, Serialize};

use super::at_least;
use super::context::{default_context_convs, default_context_depth, ContextNetConfig};

/// `layer = "avg_pool"` or `"max_pool"`: `[C, H, W] → [C, H/k, W/k]` (rounded up where the layer
/// pads). `P` is the pooling, a marker type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolSpec<P> {
    /// Patch size and stride `k ≥ 2`.
    pub kernel: usize,
    /// The context network's width. Default: `3·C`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_width: Option<usize>,
    /// Hidden layers of the context network's two per-position MLPs.
    #[serde(default = "default_context_depth")]
    pub context_depth: usize,
    /// 3×3 convolutions of the context network.
    #[serde(default = "default_context_convs")]
    pub context_convs: usize,
    #[serde(skip)]
    pooling: PhantomData<P>,
}

impl<P> PoolSpec<P> {
    /// Pooling over `kernel × kernel` patches with the default context network.
    pub fn new(kernel: usize) -> Self {
        Self {
            kernel,
            context_width: None,
            context_depth: default_context_depth(),
            context_convs: default_context_convs(),
            pooling: PhantomData,
        }
    }

    /// The context network for `c` channels: from the output map to two numbers per input value.
    pub fn context(&self, c: usize) -> ContextNetConfig {
        ContextNetConfig {
            c_out: c,
            c_in: c,
            width: self.context_width.unwrap_or(3 * c),
            depth: self.context_depth,
            convs: self.context_convs,
            kernel: self.kernel,
            stride: self.kernel,
        }
    }

    /// The checks both poolings make of their fields and input.
    pub fn check(&self, [c, h, w]: [usize; 3]) -> Result<(), String> {
        let k = self.kernel;
        at_least("kernel", k, 2)?;
        if let Some(width) = self.context_width {
            at_least("context_width", width, 1)?;
        }
        if h < k || w < k {
            return Err(format!(
                "kernel: expected at most the input's height and width, got {k} for {c}×{h}×{w}"
            ));
        }
        Ok(())
    }

    /// This entry with the context network's width written out, for `c` channels.
    pub fn with_width(&self, c: usize) -> Self
    where
        P: Clone,
    {
        Self {
            context_width: Some(self.context(c).width),
            ..self.clone()
        }
    }
}
