//! edgeloop-agent: measures ONNX models on the device it runs on.
//!
//! Stages, each a module with one job: `store` keeps uploaded models,
//! `inputs` makes seeded input tensors, `runtime` loads and runs (tract |
//! ort), `engine` times runs and computes statistics, `worker` serialises
//! measurements on one thread, `server` is the HTTP API.

pub mod device;
pub mod engine;
mod error;
pub mod inputs;
mod local;
pub mod runtime;
mod server;
pub mod store;
mod worker;

pub use error::ApiError;
pub use local::LocalAgent;
pub use server::{Agent, AgentConfig, AgentError, check_listen_addr};
