//! What the `edgeloop` subcommands do; `main.rs` only parses arguments.

pub mod devices;
pub mod export;
pub mod measure;
pub mod space;
pub mod table;
