//! Training with libtorch (tch): the supernet of a search space with binary
//! gates over its candidate ops, architecture parameters and their
//! gradient estimates, the optimisers, checkpoints, and export of trained
//! weights to ONNX (DESIGN §8). The search strategies (host) drive it.

pub mod arch_params;
pub mod checkpoint;
pub mod ddpg;
pub mod device;
pub mod export;
pub mod haq;
pub mod layers;
pub mod loss;
pub mod nao;
pub mod optim;
pub mod proxy;
pub mod quant;
pub mod supernet;
pub mod trainer;
pub mod unas;

pub use arch_params::{ArchParams, CostModel, GateMode, Gates};
pub use device::DeviceKind;
pub use layers::BnMode;
pub use loss::{CostLoss, CostLossKind};
pub use supernet::Supernet;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("--device-kind cuda: libtorch sees no CUDA device here (use auto or cpu)")]
    NoCuda,
    #[error("checkpoint {}: {message}", path.display())]
    Checkpoint { path: std::path::PathBuf, message: String },
}
