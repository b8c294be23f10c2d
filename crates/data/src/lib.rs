//! Image-classification datasets for training the search's networks:
//! synthetic shapes (no download, deterministic by seed), CIFAR-10, MNIST and
//! class-per-folder images. Every loader converts to the network's input
//! [`ImageShape`]; a [`BatchLoader`] prepares normalised, optionally augmented
//! batches in a background thread. Batches are plain `Vec<f32>`, so this crate
//! needs no libtorch; nothing here ever downloads.

mod cifar;
mod convert;
mod error;
mod folder;
mod loader;
mod mnist;
mod spec;
mod split;
mod synthetic;

pub use error::DataError;
pub use loader::{Batch, BatchLoader, LoaderConfig};
pub use spec::{Dataset, DatasetSpec};
pub use split::{ImageShape, Normalization, Split};
