//! What the `edgeloop` subcommands do; `main.rs` only parses arguments.

pub mod devices;
pub mod measure;
