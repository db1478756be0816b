//! The layers of docs/method.md §2, one file each, and the registry that makes them the
//! vocabulary of architecture files.
//!
//! Each layer file holds the layer (a burn `Module` fulfilling [`Transform`] on
//! `[batch, C, H, W]`, a flat vector being `[batch, D, 1, 1]`) and its spec entry: a
//! [`LayerConfig`], which knows everything about the layer before any weight exists — its shape
//! rule, its kind, its name, its parameter count, its defaults. Adding a layer is writing its
//! file and one line in `registry!` below.
//!
//! After an optimizer step, every rotation anywhere in a layer is retracted by
//! [`orthogonal::retract_all`], which finds them by type: no layer has to remember to.

pub mod act_norm;
pub mod activation;
pub mod avg_pool;
pub mod context;
pub mod conv;
pub mod convnet;
pub mod coupling;
pub mod dense;
pub mod dequantize;
pub mod max_pool;
pub mod mlp;
pub mod orthogonal;
pub mod pad;
pub mod pool;
pub mod reshape;
pub mod spline;
pub mod split;
pub mod standardize;
pub mod tile;
pub mod trained;

use burn::module::{Module, Param};
use burn::tensor::{Device, Tensor};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::flow::{Kind, Mode, Transform};
use trained::Trained;

/// A layer's entry in an architecture file: its hyperparameters (each with the paper's value as
/// its default), and the facts that follow from them and the input shape.
pub trait LayerConfig: Clone + std::fmt::Debug + PartialEq + Serialize + DeserializeOwned {
    /// The layer this entry builds.
    type Layer: Module + Transform<4>;

    /// The `[C, H, W]` this layer produces from `input`, or why it cannot take `input` or its
    /// own fields: a message naming the field and what was expected.
    fn output_shape(&self, input: [usize; 3]) -> Result<[usize; 3], String>;

    /// Bijection, surjection or augmentation, on inputs of shape `input`.
    fn kind(&self, input: [usize; 3]) -> Kind;

    /// A short name in the notation of docs/method.md §3.
    fn name(&self) -> String;

    /// Trainable numbers of the layer on inputs of shape `input` (rotations' base points are
    /// state, not parameters).
    fn params(&self, input: [usize; 3]) -> usize;

    /// This entry with every default that depends on the input shape written out.
    fn resolved(&self, _input: [usize; 3]) -> Self {
        self.clone()
    }

    /// The number of classes the layer is given in a class-conditional model (docs/method.md
    /// §1.4); 0 for a layer that does not read the class.
    fn classes(&self) -> usize {
        0
    }

    /// Builds the layer for inputs of shape `input`, which [`LayerConfig::output_shape`] accepted.
    fn init(&self, input: [usize; 3], device: &Device) -> Self::Layer;

    /// `layer` with the trained weights this entry names set so that its mean mode computes the
    /// trained layer, or why they do not fit (docs/method.md §2.12). Layers without weights, and
    /// entries that name none, keep `layer` as it is.
    fn import(
        &self,
        _input: [usize; 3],
        layer: Self::Layer,
        _trained: &Trained,
    ) -> Result<Self::Layer, String> {
        Ok(layer)
    }
}

/// Declares every layer kind once: `Variant(Config) = "tag"`. This generates [`LayerSpec`]
/// (what architecture files are written in) and [`Layer`] (a model's list element), and routes
/// each of [`LayerConfig`]'s facts and [`Transform`]'s passes to the layer's own file.
macro_rules! registry {
    ($($(#[doc = $doc:literal])* $variant:ident($config:ty) = $tag:literal,)*) => {
        /// One entry of an architecture file, tagged by `layer = "..."` (read by
        /// [`LayerSpec::from_value`], whose errors name the field).
        #[derive(Debug, Clone, PartialEq, Serialize)]
        #[serde(tag = "layer")]
        pub enum LayerSpec {
            $($(#[doc = $doc])* #[serde(rename = $tag)] $variant($config),)*
        }

        /// One layer of a model, acting on `[batch, C, H, W]`.
        #[derive(Module, Debug)]
        pub enum Layer {
            $($(#[doc = $doc])* $variant(<$config as LayerConfig>::Layer),)*
        }

        $(impl From<$config> for LayerSpec {
            fn from(config: $config) -> Self {
                LayerSpec::$variant(config)
            }
        })*

        impl LayerSpec {
            /// The tags of every layer kind, as architecture files write them.
            pub const TAGS: &'static [&'static str] = &[$($tag),*];

            /// This entry's tag.
            pub fn tag(&self) -> &'static str {
                match self { $(LayerSpec::$variant(_) => $tag,)* }
            }

            /// See [`LayerConfig::output_shape`].
            pub fn output_shape(&self, input: [usize; 3]) -> Result<[usize; 3], String> {
                match self { $(LayerSpec::$variant(c) => c.output_shape(input),)* }
            }

            /// See [`LayerConfig::kind`].
            pub fn kind(&self, input: [usize; 3]) -> Kind {
                match self { $(LayerSpec::$variant(c) => c.kind(input),)* }
            }

            /// See [`LayerConfig::name`].
            pub fn name(&self) -> String {
                match self { $(LayerSpec::$variant(c) => c.name(),)* }
            }

            /// See [`LayerConfig::params`].
            pub fn params(&self, input: [usize; 3]) -> usize {
                match self { $(LayerSpec::$variant(c) => c.params(input),)* }
            }

            /// See [`LayerConfig::classes`].
            pub fn classes(&self) -> usize {
                match self { $(LayerSpec::$variant(c) => c.classes(),)* }
            }

            /// See [`LayerConfig::resolved`].
            pub fn resolved(&self, input: [usize; 3]) -> Self {
                match self { $(LayerSpec::$variant(c) => LayerSpec::$variant(c.resolved(input)),)* }
            }

            /// See [`LayerConfig::init`].
            pub fn init(&self, input: [usize; 3], device: &Device) -> Layer {
                match self { $(LayerSpec::$variant(c) => Layer::$variant(c.init(input, device)),)* }
            }

            /// See [`LayerConfig::import`]; `layer` must be what this entry built.
            pub fn import(&self, input: [usize; 3], layer: Layer, trained: &Trained) -> Result<Layer, String> {
                match (self, layer) {
                    $((LayerSpec::$variant(c), Layer::$variant(l)) => c.import(input, l, trained).map(Layer::$variant),)*
                    _ => Err("the layer is not of the entry's kind".into()),
                }
            }

            /// Reads one entry whose tag is `tag` from `fields` (the entry without its tag).
            fn from_fields(tag: &str, fields: serde_json::Value) -> Option<Result<Self, String>> {
                match tag {
                    $($tag => Some(
                        serde_path_to_error::deserialize::<_, $config>(fields)
                            .map(LayerSpec::$variant)
                            .map_err(|e| field_error(e)),
                    ),)*
                    _ => None,
                }
            }
        }

        impl Transform<4> for Layer {
            fn forward(&self, x: Tensor<4>, mode: Mode) -> (Tensor<4>, Tensor<1>) {
                match self { $(Layer::$variant(l) => l.forward(x, mode),)* }
            }

            fn inverse(&self, z: Tensor<4>, mode: Mode) -> Tensor<4> {
                match self { $(Layer::$variant(l) => l.inverse(z, mode),)* }
            }

            fn forward_given(&self, x: Tensor<4>, classes: &Tensor<2>, mode: Mode) -> (Tensor<4>, Tensor<1>) {
                match self { $(Layer::$variant(l) => l.forward_given(x, classes, mode),)* }
            }

            fn inverse_given(&self, z: Tensor<4>, classes: &Tensor<2>, mode: Mode) -> Tensor<4> {
                match self { $(Layer::$variant(l) => l.inverse_given(z, classes, mode),)* }
            }

            fn initialize(self, x: &Tensor<4>) -> Self {
                match self { $(Layer::$variant(l) => Layer::$variant(l.initialize(x)),)* }
            }
        }
    };
}

registry! {
    /// §2.1, uniform dequantization of 8-bit pixels.
    Dequantize(dequantize::DequantizeSpec) = "dequantize",
    /// §2.2.
    Flatten(reshape::FlattenSpec) = "flatten",
    /// §2.3, `Lin(d_input, d_output)`.
    Linear(dense::LinearSpec) = "linear",
    /// §2.4, the rational-quadratic spline activation `S`.
    Spline(activation::SplineSpec) = "spline",
    /// §2.4, LeakyReLU.
    LeakyRelu(activation::LeakyReluSpec) = "leaky_relu",
    /// §2.5, `Conv(c_in→c_out, kernel, stride)`.
    Conv(conv::ConvSpec) = "conv",
    /// §2.6, `RQ_NSF(features, couplings)` on a flat vector.
    Nsf(coupling::NsfSpec) = "nsf",
    /// §2.6, `RQ_NSF_Conv(channels, couplings)` on an image.
    NsfConv(coupling::NsfConvSpec) = "nsf_conv",
    /// §2.8, a learned per-channel affine map, initialized from data.
    ActNorm(act_norm::ActNormSpec) = "act_norm",
    /// §2.9, multi-scale factor-out of half the channels.
    Split(split::SplitSpec) = "split",
    /// §2.10, average pooling over non-overlapping patches.
    AvgPool(avg_pool::AvgPoolSpec) = "avg_pool",
    /// §2.11, max pooling over non-overlapping patches.
    MaxPool(max_pool::MaxPoolSpec) = "max_pool",
    /// §2.13, a fixed per-value standardization, from the training split.
    Standardize(standardize::StandardizeSpec) = "standardize",
}

impl LayerSpec {
    /// Reads one entry of an architecture file (a table with a `layer` tag), with a message that
    /// names the kind and the field on failure.
    pub fn from_value(value: serde_json::Value) -> Result<Self, String> {
        let serde_json::Value::Object(mut fields) = value else {
            return Err(format!(
                "expected a table with a `layer` field, got {value}"
            ));
        };
        let tag = match fields.remove("layer") {
            Some(serde_json::Value::String(tag)) => tag,
            Some(other) => return Err(format!("layer: expected a string, got {other}")),
            None => return Err(format!("layer: missing; expected one of {}", tag_list())),
        };
        LayerSpec::from_fields(&tag, serde_json::Value::Object(fields)).unwrap_or_else(|| {
            Err(format!(
                "layer: unknown kind \"{tag}\"; expected one of {}",
                tag_list()
            ))
        })
    }
}

fn tag_list() -> String {
    LayerSpec::TAGS.join(", ")
}

/// serde's message with the field it is about in front.
fn field_error(e: serde_path_to_error::Error<serde_json::Error>) -> String {
    let path = e.path().to_string();
    let inner = e.into_inner().to_string();
    if path == "." || inner.starts_with("unknown field") {
        inner
    } else {
        format!("{path}: {inner}")
    }
}

/// `p` holding `value` instead, with its id and its part in training: a leaf that gradients
/// reach when `p` was one. (burn's `Param::map` keeps the flag but not the leaf: a value computed
/// there would stay out of training until a checkpoint reloads it.)
pub fn with_value<const D: usize>(p: Param<Tensor<D>>, value: Tensor<D>) -> Param<Tensor<D>> {
    p.map(|old| {
        let value = value.detach();
        if old.is_require_grad() {
            value.require_grad()
        } else {
            value
        }
    })
}

/// The `C×H×W` of a shape, as messages write it.
pub fn shape_text([c, h, w]: [usize; 3]) -> String {
    format!("{c}×{h}×{w}")
}

/// A flat input of exactly `d` features, or the message a layer that needs one gives.
pub fn expect_flat(input: [usize; 3], d: usize, field: &str) -> Result<(), String> {
    match input {
        [c, 1, 1] if c == d => Ok(()),
        [c, 1, 1] => Err(format!("{field}: expects {d} features, got {c}")),
        _ => Err(format!(
            "expects a flat input of {d} features, got {} (add a flatten layer first)",
            shape_text(input)
        )),
    }
}

/// `Ok` when `value ≥ least`, else a message naming `field`.
pub fn at_least(field: &str, value: usize, least: usize) -> Result<(), String> {
    if value >= least {
        Ok(())
    } else {
        Err(format!("{field}: expected at least {least}, got {value}"))
    }
}

/// `Ok` when `value` is finite and positive, else a message naming `field`.
pub fn positive(field: &str, value: f64) -> Result<(), String> {
    if value.is_finite() && value > 0.0 {
        Ok(())
    } else {
        Err(format!(
            "{field}: expected a finite number > 0, got {value}"
        ))
    }
}

/// Runs a layer written for `[batch, D]` on a `[batch, D, 1, 1]` carrier.
pub fn forward_vectors(
    layer: &impl Transform<2>,
    x: Tensor<4>,
    mode: Mode,
) -> (Tensor<4>, Tensor<1>) {
    let (z, v) = layer.forward(flat(x), mode);
    (unflat(z), v)
}

/// The inverse of [`forward_vectors`].
pub fn inverse_vectors(layer: &impl Transform<2>, z: Tensor<4>, mode: Mode) -> Tensor<4> {
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
