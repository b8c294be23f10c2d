//! The host's integration tests, one binary (it links libtorch once): the
//! `edgeloop` binary and library against real agents on loopback ports.

mod cli;
mod cuda;
mod farm;
mod proxy;
mod search;
mod support;
mod table;
