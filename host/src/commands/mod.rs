//! The `edgeloop` subcommands: each module declares its flags and renders
//! what the library did; `main.rs` only parses and dispatches.

pub mod baseline;
pub mod devices;
pub mod export;
pub mod farm;
pub mod flags;
pub mod measure;
pub mod progress;
pub mod proxy;
pub mod quantize;
pub mod report;
pub mod search;
pub mod space;
pub mod table;
pub mod train;
