//! The dataset crate's integration tests, one binary.

mod files;
mod split_loader;
mod synthetic;
