//! Host side of edgeloop: talks to the device agents (DESIGN §5) and drives
//! measurements. The `edgeloop` binary is a thin command line over this crate.

pub mod baseline;
pub mod cache;
pub mod calibrate;
pub mod client;
pub mod commands;
pub mod dataset;
pub mod events;
pub mod farm;
pub mod measure;
pub mod plot;
pub mod predict;
pub mod proxy;
pub mod quantize;
pub mod report;
pub mod resume;
pub mod search;
pub mod table;
pub mod train;
pub mod validate;

pub use client::{AgentClient, ClientError, RetryPolicy, UploadOutcome, UploadStatus};
