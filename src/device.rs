//! Which burn device a run uses, as a user names it: `cpu` (burn's `flex` backend, where the
//! ops run flowify's CPU kernels) or, in a build with the `wgpu` feature, `wgpu` (the best
//! adapter burn's wgpu backend finds, over Vulkan) and `wgpu:N` (the `N`-th discrete GPU).
//! Everything else in the library takes a [`Device`] and works on any of them.

use std::fmt;
use std::str::FromStr;

use burn::tensor::Device;
use serde::{Deserialize, Serialize};

/// A device named on the command line and recorded in a run's `config.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum DeviceChoice {
    /// burn's `flex` backend on the CPU, with flowify's kernels.
    #[default]
    Cpu,
    /// burn's wgpu backend: the best adapter (`None`) or the `N`-th discrete GPU.
    Wgpu(Option<usize>),
}

impl DeviceChoice {
    /// Whether this build can open the device at all.
    pub fn compiled_in(&self) -> bool {
        match self {
            DeviceChoice::Cpu => true,
            DeviceChoice::Wgpu(_) => cfg!(feature = "wgpu"),
        }
    }

    /// The device, checked to work: a wgpu device that this build lacks or that finds no adapter
    /// is an error naming the device and how to get it, not a panic at the first tensor.
    pub fn open(&self) -> Result<Device, String> {
        match self {
            DeviceChoice::Cpu => Ok(Device::flex()),
            DeviceChoice::Wgpu(index) => self.open_wgpu(*index),
        }
    }

    #[cfg(feature = "wgpu")]
    fn open_wgpu(&self, index: Option<usize>) -> Result<Device, String> {
        use burn::tensor::{DeviceKind, Tensor};
        let kind = index.map_or(DeviceKind::DefaultDevice, DeviceKind::DiscreteGpu);
        let device = Device::wgpu(kind);
        // burn opens the adapter lazily and panics when there is none: open it here, on one
        // value, with the panic's message kept for the error line instead of printed.
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let probe = std::panic::catch_unwind(|| Tensor::<1>::zeros([1], &device).into_data());
        std::panic::set_hook(hook);
        match probe {
            Ok(_) => Ok(device),
            Err(payload) => {
                let why = payload
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| payload.downcast_ref::<&str>().copied())
                    .unwrap_or("no reason given");
                let why = why.lines().next().unwrap_or_default();
                Err(format!(
                    "--device {self}: no usable wgpu adapter ({why}); install a Vulkan driver \
                     (the GPU vendor's, or Debian's mesa-vulkan-drivers for a software one) or \
                     use --device cpu"
                ))
            }
        }
    }

    #[cfg(not(feature = "wgpu"))]
    fn open_wgpu(&self, _index: Option<usize>) -> Result<Device, String> {
        Err(format!(
            "--device {self}: this flowify was built without GPU support; build it with \
             `cargo build --release --features wgpu`"
        ))
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceChoice::Cpu => f.write_str("cpu"),
            DeviceChoice::Wgpu(None) => f.write_str("wgpu"),
            DeviceChoice::Wgpu(Some(n)) => write!(f, "wgpu:{n}"),
        }
    }
}

impl FromStr for DeviceChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let unknown = || format!("unknown device '{s}': expected cpu, wgpu or wgpu:N");
        match s.split_once(':') {
            None if s == "cpu" => Ok(DeviceChoice::Cpu),
            None if s == "wgpu" => Ok(DeviceChoice::Wgpu(None)),
            Some(("wgpu", n)) => n
                .parse()
                .map(|n| DeviceChoice::Wgpu(Some(n)))
                .map_err(|_| unknown()),
            _ => Err(unknown()),
        }
    }
}

impl From<DeviceChoice> for String {
    fn from(choice: DeviceChoice) -> String {
        choice.to_string()
    }
}

impl TryFrom<String> for DeviceChoice {
    type Error = String;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}
