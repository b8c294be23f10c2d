//! The agent's integration tests, one binary: its command line and a real
//! `serve` process (`cli`), and the hostile-input suite (`hostile`).

mod cli;
mod hostile;
