//! A trained network's tensors, as the layers read them to import its weights: each layer that
//! has weights knows which of these it takes (its spec's `weights` prefix) and how to set its own
//! parameters from them so that its mean mode computes the trained layer.

use std::collections::BTreeMap;
use std::path::Path;

use burn::store::{bridge, ModuleStore, SafetensorsStore};
use burn::tensor::DType;

/// How a file stores a dense layer's weight: PyTorch's `[out, in]` or burn's `[in, out]`.
/// (Both store a convolution's kernel as `[out, in, k, k]`.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Layout {
    /// `nn.Linear.weight`: `[out, in]`.
    #[default]
    Torch,
    /// `burn::nn::Linear.weight`: `[in, out]`.
    Burn,
}

impl std::str::FromStr for Layout {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "torch" => Ok(Layout::Torch),
            "burn" => Ok(Layout::Burn),
            _ => Err(format!("unknown layout '{s}': expected 'torch' or 'burn'")),
        }
    }
}

/// One tensor's shape and values.
#[derive(Debug, Clone)]
pub struct HostTensor {
    /// Its dimensions.
    pub shape: Vec<usize>,
    /// Its values, row-major.
    pub values: Vec<f64>,
}

/// A dense map `y = W x + b` as a trained layer holds it: `W` row-major `[out, in]`.
pub struct DenseWeights {
    /// Output width.
    pub d_output: usize,
    /// Input width.
    pub d_input: usize,
    /// `W`, `[out, in]` row-major.
    pub weight: Vec<f64>,
    /// `b` (zeros where the layer has none).
    pub bias: Vec<f64>,
}

/// The tensors of a trained network, by name.
#[derive(Debug, Clone, Default)]
pub struct Trained {
    /// Every tensor of the file.
    pub tensors: BTreeMap<String, HostTensor>,
    /// How its dense weights are laid out.
    pub layout: Layout,
}

impl Trained {
    /// Reads every floating-point tensor of a safetensors file (integer ones, such as a
    /// BatchNorm's step counter, are not weights and are skipped).
    pub fn read(path: &Path, layout: Layout) -> Result<Self, String> {
        let at = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
        if !path.is_file() {
            return Err(at(&"not found"));
        }
        let mut store = SafetensorsStore::from_file(path);
        let mut tensors = BTreeMap::new();
        for (name, tensor) in store.get_all_tensors().map_err(|e| at(&e))? {
            if !matches!(
                tensor.dtype,
                DType::F64 | DType::F32 | DType::F16 | DType::BF16
            ) {
                continue;
            }
            let data = bridge::to_data(tensor).map_err(|e| at(&format!("{name}: {e:?}")))?;
            let values = data
                .convert::<f64>()
                .try_into_vec::<f64>()
                .map_err(|e| at(&format!("{name}: {e:?}")))?;
            let shape = tensor.shape.iter().copied().collect();
            tensors.insert(name.clone(), HostTensor { shape, values });
        }
        if tensors.is_empty() {
            return Err(at(&"holds no floating-point tensors"));
        }
        Ok(Self { tensors, layout })
    }

    /// `prefix.name` for the first of `names` the file has.
    pub fn find(&self, prefix: &str, names: &[&str]) -> Option<&HostTensor> {
        names
            .iter()
            .find_map(|name| self.tensors.get(&format!("{prefix}.{name}")))
    }

    /// The prefixes that hold a `weight` (or burn's `gamma`), in the network's order: numeric
    /// parts of the names compare as numbers, so `10.weight` comes after `2.weight`.
    pub fn prefixes(&self) -> Vec<String> {
        let mut prefixes: Vec<String> = self
            .tensors
            .keys()
            .filter_map(|name| {
                name.strip_suffix(".weight")
                    .or_else(|| name.strip_suffix(".gamma"))
                    .map(String::from)
            })
            .collect();
        prefixes.sort_by_key(|p| {
            p.split('.')
                .map(|part| match part.parse::<u64>() {
                    Ok(n) => (n, String::new()),
                    Err(_) => (u64::MAX, part.to_string()),
                })
                .collect::<Vec<_>>()
        });
        prefixes
    }

    /// The dense layer at `prefix` (`weight` 2-D, optional `bias`), as `[out, in]`.
    pub fn dense(&self, prefix: &str) -> Result<DenseWeights, String> {
        let weight = self.weight(prefix)?;
        let [rows, cols] = weight.shape[..] else {
            return Err(format!(
                "{prefix}.weight: expected a dense weight of 2 dimensions, got shape {:?}",
                weight.shape
            ));
        };
        let (d_output, d_input) = match self.layout {
            Layout::Torch => (rows, cols),
            Layout::Burn => (cols, rows),
        };
        let weight = match self.layout {
            Layout::Torch => weight.values.clone(),
            Layout::Burn => (0..rows * cols)
                .map(|i| weight.values[(i % d_input) * cols + i / d_input])
                .collect(),
        };
        Ok(DenseWeights {
            d_output,
            d_input,
            weight,
            bias: self.bias(prefix, d_output)?,
        })
    }

    /// The convolution at `prefix` (`weight` `[out, in, k, k]`, optional `bias`) as the dense map
    /// of one patch, `[out, in·k·k]` with the patch channel-major as the flowified convolution
    /// cuts it; also returns `k`.
    pub fn conv(&self, prefix: &str) -> Result<(DenseWeights, usize), String> {
        let weight = self.weight(prefix)?;
        let [c_out, c_in, k, k2] = weight.shape[..] else {
            return Err(format!(
                "{prefix}.weight: expected a convolution kernel [out, in, k, k], got shape {:?}",
                weight.shape
            ));
        };
        if k != k2 {
            return Err(format!(
                "{prefix}.weight: expected a square kernel, got {k}×{k2}"
            ));
        }
        let dense = DenseWeights {
            d_output: c_out,
            d_input: c_in * k * k,
            weight: weight.values.clone(),
            bias: self.bias(prefix, c_out)?,
        };
        Ok((dense, k))
    }

    /// The per-channel affine map `y = a·x + c` at `prefix`: a BatchNorm with its running
    /// statistics folded in (`a = γ/√(var + ε)`, `c = β − a·mean`), or a plain affine layer
    /// (`weight`, `bias`) where there are none. Returns `(a, c)`.
    pub fn affine(&self, prefix: &str, eps: f64) -> Result<(Vec<f64>, Vec<f64>), String> {
        let scale = self.find(prefix, &["weight", "gamma"]).ok_or_else(|| {
            format!("{prefix}: no `{prefix}.weight` (or `{prefix}.gamma`) in the file")
        })?;
        let channels = scale.values.len();
        let shift = match self.find(prefix, &["bias", "beta"]) {
            Some(t) if t.values.len() == channels => t.values.clone(),
            Some(t) => {
                return Err(format!(
                    "{prefix}.bias: expected {channels} values, got {}",
                    t.values.len()
                ))
            }
            None => vec![0.0; channels],
        };
        let stats = (
            self.find(prefix, &["running_mean"]),
            self.find(prefix, &["running_var"]),
        );
        let (Some(mean), Some(var)) = stats else {
            return Ok((scale.values.clone(), shift));
        };
        if mean.values.len() != channels || var.values.len() != channels {
            return Err(format!(
                "{prefix}: expected {channels} running means and variances"
            ));
        }
        let a: Vec<f64> = (0..channels)
            .map(|c| scale.values[c] / (var.values[c] + eps).sqrt())
            .collect();
        let c = (0..channels)
            .map(|i| shift[i] - a[i] * mean.values[i])
            .collect();
        Ok((a, c))
    }

    fn weight(&self, prefix: &str) -> Result<&HostTensor, String> {
        self.find(prefix, &["weight"])
            .ok_or_else(|| format!("{prefix}: no `{prefix}.weight` in the file"))
    }

    fn bias(&self, prefix: &str, d_output: usize) -> Result<Vec<f64>, String> {
        match self.find(prefix, &["bias"]) {
            None => Ok(vec![0.0; d_output]),
            Some(b) if b.values.len() == d_output => Ok(b.values.clone()),
            Some(b) => Err(format!(
                "{prefix}.bias: expected {d_output} values, got shape {:?}",
                b.shape
            )),
        }
    }
}
