//! Architecture files (docs/method.md §3): a model written as data, its input shape and its
//! layers in order, in TOML or JSON.
//!
//! ```toml
//! input = [1, 28, 28]
//! layers = [
//!   { layer = "dequantize" },
//!   { layer = "conv", c_in = 1, c_out = 4, kernel = 2, stride = 2 },
//!   { layer = "spline" },
//! ]
//! ```
//!
//! A spec is checked whole before any weight is allocated: every error names the layer (index and
//! kind), the field and what was expected.

use std::path::Path;

use burn::module::{Module, Param};
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::data::Examples;
use crate::layers::standardize::StandardizeSpec;
use crate::layers::{shape_text, LayerSpec};
use crate::model::{FlowModel, Materialize};

/// What a model is made of: the input shape `[C, H, W]` (a flat input of `D` features is
/// `[D, 1, 1]`, written `[D]`) and its layers, first applied first.
///
/// A spec built from text, and the bits/dim of a batch under the untrained model:
///
/// ```
/// use burn::tensor::{Device, Tensor};
/// use flowify::flow::{host_values, Mode};
/// use flowify::spec::ModelSpec;
///
/// let spec = ModelSpec::parse(
///     r#"
///     input = [1, 4, 4]
///     layers = [
///       { layer = "dequantize" },
///       { layer = "conv", c_in = 1, c_out = 2, kernel = 2, stride = 2 },
///       { layer = "spline" },
///     ]"#,
///     false,
/// )?;
/// assert_eq!(spec.shapes()?.last(), Some(&[2, 2, 2]));
/// let model = spec.init(&Device::flex())?;
/// // Four images of pixel values 0..=255, `[batch, C, H, W]`.
/// let x = Tensor::<4>::full([4, 1, 4, 4], 128.0, &Device::flex());
/// let l = host_values(model.log_likelihood(x, Mode::Sample));
/// let bpd = model.bits_per_dim(f64::from(l[0]));
/// assert!(bpd.is_finite() && bpd > 0.0);
/// # Ok::<(), String>(())
/// ```
///
/// A spec that does not chain is refused before any weight exists, with the layer named:
///
/// ```
/// # use flowify::spec::ModelSpec;
/// let spec = ModelSpec::parse(
///     "input = [1, 4, 4]\nlayers = [{ layer = \"conv\", c_in = 3, c_out = 4, kernel = 2, stride = 2 }]",
///     false,
/// )
/// .unwrap();
/// let error = spec.shapes().unwrap_err();
/// assert!(error.starts_with("layer 0") && error.contains("3 channels"), "{error}");
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSpec {
    /// Shape of one input, `[C, H, W]`.
    pub input: [usize; 3],
    /// The layers, first applied first.
    pub layers: Vec<LayerSpec>,
    /// A class-conditional model of this many classes (docs/method.md §1.4): the base is
    /// `N(μ_c, I)` with a learned mean per class. `None`: the standard normal.
    pub classes: Option<usize>,
    /// The training settings the architecture was tuned with, which `train` takes where its
    /// flags do not say otherwise.
    pub train: Recipe,
}

/// `train = { lr = … }` in an architecture file: the settings it trains best with. Each is a
/// default that `flowify train`'s flag of the same name overrides.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// Peak learning rate of the cosine schedule (`--lr`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr: Option<f64>,
}

impl Recipe {
    fn is_empty(&self) -> bool {
        self == &Self::default()
    }

    fn from_value(value: serde_json::Value) -> Result<Self, String> {
        let recipe: Self =
            serde_path_to_error::deserialize(value).map_err(|e| match e.path().to_string() {
                path if path == "." => format!("train: {}", e.inner()),
                path => format!("train.{path}: {}", e.inner()),
            })?;
        if recipe.lr.is_some_and(|lr| !(lr > 0.0 && lr <= 1.0)) {
            return Err(format!(
                "train.lr: expected a learning rate in (0, 1], got {}",
                recipe.lr.unwrap_or_default()
            ));
        }
        Ok(recipe)
    }
}

impl ModelSpec {
    /// Reads a spec from `value`, the parsed file, with one message for the first problem.
    pub fn from_value(value: serde_json::Value) -> Result<Self, String> {
        let serde_json::Value::Object(mut top) = value else {
            return Err("expected a table with `input` and `layers`".into());
        };
        if let Some(key) = top
            .keys()
            .find(|k| !["input", "layers", "classes", "train"].contains(&k.as_str()))
        {
            return Err(format!(
                "unknown field `{key}`, expected `input`, `layers`, `classes` or `train`"
            ));
        }
        let train = match top.remove("train") {
            Some(value) => Recipe::from_value(value)?,
            None => Recipe::default(),
        };
        let classes = match top.remove("classes") {
            None => None,
            Some(value) => match value.as_u64() {
                Some(n) if n >= 2 => Some(n as usize),
                _ => return Err(format!("classes: expected an integer ≥ 2, got {value}")),
            },
        };
        let input = match top.remove("input") {
            Some(value) => input_shape(&value)?,
            None => return Err("input: missing; expected [C, H, W] or [D]".into()),
        };
        let Some(serde_json::Value::Array(entries)) = top.remove("layers") else {
            return Err("layers: expected a list of tables, each with a `layer` kind".into());
        };
        let layers = entries
            .into_iter()
            .enumerate()
            .map(|(i, entry)| {
                let kind = entry
                    .get("layer")
                    .and_then(|k| k.as_str())
                    .unwrap_or("?")
                    .to_string();
                LayerSpec::from_value(entry).map_err(|e| format!("layer {i} ({kind}): {e}"))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            input,
            layers,
            classes,
            train,
        })
    }

    /// Parses TOML (or, when `json`, JSON) text.
    pub fn parse(text: &str, json: bool) -> Result<Self, String> {
        let value = if json {
            serde_json::from_str(text).map_err(|e| e.to_string())?
        } else {
            toml::from_str(text).map_err(|e| toml_error(text, &e))?
        };
        Self::from_value(value)
    }

    /// Reads a spec file: JSON if its name ends in `.json`, TOML otherwise. Errors name the file.
    pub fn read(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("{}: cannot read the architecture file: {e}", path.display()))?;
        let json = path.extension().is_some_and(|e| e == "json");
        Self::parse(&text, json)
            .and_then(|spec| spec.resolved())
            .map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The shape after each layer, or a message naming the first layer that does not fit (or
    /// that reads a class the model does not have).
    pub fn shapes(&self) -> Result<Vec<[usize; 3]>, String> {
        self.check_classes()?;
        let mut shape = self.input;
        self.layers
            .iter()
            .enumerate()
            .map(|(i, layer)| {
                shape = layer
                    .output_shape(shape)
                    .map_err(|e| format!("layer {i} ({}), {}: {e}", layer.tag(), layer.name()))?;
                Ok(shape)
            })
            .collect()
    }

    /// Every layer that reads the class reads the model's `classes`.
    fn check_classes(&self) -> Result<(), String> {
        for (i, layer) in self.layers.iter().enumerate() {
            let wanted = layer.classes();
            if wanted == 0 || self.classes == Some(wanted) {
                continue;
            }
            let model = match self.classes {
                Some(n) => format!("the model's {n}"),
                None => format!(
                    "a class-conditional model: `classes = {wanted}` at the top of the file, or \
                     train --conditional"
                ),
            };
            return Err(format!(
                "layer {i} ({}): classes: {wanted} needs {model}",
                layer.tag()
            ));
        }
        Ok(())
    }

    /// This spec as a class-conditional model of `classes` classes (what `train --conditional`
    /// makes of a spec); a spec that names other classes is refused.
    pub fn conditional(&self, classes: usize) -> Result<Self, String> {
        match self.classes {
            Some(n) if n != classes => Err(format!(
                "classes: the architecture has {n} classes, the data {classes}"
            )),
            _ => {
                let spec = Self {
                    classes: Some(classes),
                    ..self.clone()
                };
                spec.shapes()?;
                Ok(spec)
            }
        }
    }

    /// The numbers of the base: a mean per class in a class-conditional model, with `latent`
    /// values each.
    fn base_params(&self, [c, h, w]: [usize; 3]) -> usize {
        self.classes.unwrap_or(0) * c * h * w
    }

    /// The shape each layer receives, in order.
    pub fn inputs(&self) -> Result<Vec<[usize; 3]>, String> {
        let shapes = self.shapes()?;
        let mut inputs = vec![self.input];
        inputs.extend(&shapes);
        inputs.pop();
        Ok(inputs)
    }

    /// This spec checked, with every default that depends on a layer's input written out: what a
    /// run folder keeps.
    pub fn resolved(&self) -> Result<Self, String> {
        let inputs = self.inputs()?;
        let layers = self
            .layers
            .iter()
            .zip(inputs)
            .map(|(layer, input)| layer.resolved(input))
            .collect();
        Ok(Self {
            input: self.input,
            layers,
            classes: self.classes,
            train: self.train.clone(),
        })
    }

    /// Trainable numbers of the model this spec builds, counted without building it.
    pub fn params(&self) -> Result<usize, String> {
        let inputs = self.inputs()?;
        let latent = *self.shapes()?.last().unwrap_or(&self.input);
        let layers: usize = self
            .layers
            .iter()
            .zip(inputs)
            .map(|(l, i)| l.params(i))
            .sum();
        Ok(layers + self.base_params(latent))
    }

    /// This spec with what it takes from the training split written in: the means and standard
    /// deviations of a first `standardize` layer that gives none. An unfitted `standardize`
    /// anywhere else is refused, since its input is not the data's.
    pub fn fitted(&self, train: &Examples) -> Result<Self, String> {
        let mut fitted = self.clone();
        for (i, layer) in fitted.layers.iter_mut().enumerate() {
            let LayerSpec::Standardize(entry) = layer else {
                continue;
            };
            if !entry.is_unfitted() {
                continue;
            }
            if i > 0 {
                return Err(format!(
                    "layer {i} (standardize): mean and std: expected them given, or the layer \
                     first, where a run computes them from its training split"
                ));
            }
            let mut values = Vec::with_capacity(train.len * train.dim());
            (0..train.len).for_each(|k| train.extend_with(k, &mut values));
            *entry = StandardizeSpec::of(&values, train.dim());
        }
        Ok(fitted)
    }

    /// Builds the model with freshly initialized parameters.
    pub fn init(&self, device: &Device) -> Result<FlowModel, String> {
        let inputs = self.inputs()?;
        let latent = *self.shapes()?.last().unwrap_or(&self.input);
        let layers = self
            .layers
            .iter()
            .zip(inputs)
            .map(|(spec, input)| spec.init(input, device))
            .collect();
        let means = self.classes.map(|classes| {
            let d = latent.iter().product();
            Param::from_tensor(Tensor::zeros([classes, d], device))
        });
        let model = FlowModel {
            layers,
            means,
            layers_read_class: self.layers.iter().any(|layer| layer.classes() > 0),
            input: self.input.to_vec(),
            latent: latent.to_vec(),
        };
        model.visit(&mut Materialize);
        Ok(model)
    }

    /// The spec as TOML, one layer per line: what `flowify info --print-spec` prints.
    pub fn to_toml(&self) -> String {
        let layers: Vec<String> = self
            .layers
            .iter()
            .map(|layer| {
                let table = toml::Table::try_from(layer).expect("a layer is a table");
                let fields: Vec<String> = table.iter().map(|(k, v)| format!("{k} = {v}")).collect();
                format!("  {{ {} }},\n", fields.join(", "))
            })
            .collect();
        let classes = self
            .classes
            .map_or(String::new(), |n| format!("classes = {n}\n"));
        let train = match self.train.lr {
            Some(lr) => format!("train = {{ lr = {lr:e} }}\n"),
            None => String::new(),
        };
        format!(
            "input = {:?}\n{classes}{train}layers = [\n{}]\n",
            written_input(self.input),
            layers.concat()
        )
    }

    /// The input's `C×H×W`, as messages write it.
    pub fn input_text(&self) -> String {
        shape_text(self.input)
    }
}

fn written_input(input: [usize; 3]) -> Vec<usize> {
    match input {
        [d, 1, 1] => vec![d],
        shape => shape.to_vec(),
    }
}

fn input_shape(value: &serde_json::Value) -> Result<[usize; 3], String> {
    let numbers: Option<Vec<usize>> = value.as_array().and_then(|a| {
        a.iter()
            .map(|v| v.as_u64().filter(|&n| n > 0).map(|n| n as usize))
            .collect()
    });
    match numbers.as_deref() {
        Some(&[c, h, w]) => Ok([c, h, w]),
        Some(&[d]) => Ok([d, 1, 1]),
        _ => Err(format!(
            "input: expected [C, H, W] or [D] of positive integers, got {value}"
        )),
    }
}

/// A TOML parse error on one line: its message and where it is.
fn toml_error(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim();
    match e.span() {
        Some(span) => {
            let line = text[..span.start].matches('\n').count() + 1;
            format!("line {line}: {message}")
        }
        None => message.to_string(),
    }
}

impl Serialize for ModelSpec {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Written<'a> {
            input: Vec<usize>,
            #[serde(skip_serializing_if = "Option::is_none")]
            classes: Option<usize>,
            #[serde(skip_serializing_if = "Recipe::is_empty")]
            train: &'a Recipe,
            layers: &'a [LayerSpec],
        }
        Written {
            input: written_input(self.input),
            classes: self.classes,
            train: &self.train,
            layers: &self.layers,
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for ModelSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(deserializer)?;
        Self::from_value(value).map_err(serde::de::Error::custom)
    }
}
