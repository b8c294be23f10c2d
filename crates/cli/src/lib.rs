//! Command-line pieces that `edgeloop` and `edgeloop-agent` share, so both
//! binaries spell, parse and print the same things the same way: the
//! measurement flags, terminal tables of a measurement or a device, token
//! files and CPU lists. The wire types stay in `edgeloop-api`.

pub mod cpus;
pub mod display;
pub mod measure_flags;
pub mod token;
