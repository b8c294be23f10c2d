//! The end-to-end suite: real agents on loopback ports, real runtimes, real
//! files. One binary with a module per area; tests that time or train take
//! the machine to themselves (`edgeloop_e2e::exclusive`), the rest share it.

mod agent_api;
mod deploy;
mod export;
mod measure;
mod ort;
mod qemu_agent;
mod quant_export;
mod quantize;
mod search;
mod table;
mod telemetry;
mod trained_export;
