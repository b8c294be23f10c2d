//! edgeloop-agent: measures ONNX models on the device it runs on.
//!
//! Stages, each a module with one job: `store` keeps uploaded models,
//! `inputs` makes seeded input tensors, `runtime` loads, runs and profiles
//! (tract | ort), `engine` times runs and computes statistics, `limits` refuses what
//! a model may not ask before anything is allocated, `worker` serialises
//! measurements in a supervised child process (or a thread), `server` is the HTTP API. Beside
//! the engine: `energy` (power sensors and their sampler), `thermal`
//! (temperatures, frequencies, throttling, cool-down), `affinity` (pinning),
//! `compare` (cross-checks the runtimes' outputs).

pub mod affinity;
pub mod compare;
pub mod device;
pub mod energy;
pub mod engine;
mod error;
pub mod inputs;
pub mod limits;
pub mod load;
mod local;
pub mod runtime;
mod server;
pub mod store;
pub mod thermal;
mod worker;

pub use error::ApiError;
pub use local::LocalAgent;
pub use server::{Agent, AgentConfig, AgentError, check_listen_addr};
pub use worker::{Isolation, serve_worker};
