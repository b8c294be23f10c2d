//! Records the tract version this agent is built with, from Cargo.lock, so
//! `/v1/info` and every `Measurement` name the exact runtime version.

use std::path::Path;

fn locked_version(lock: &str, package: &str) -> Option<String> {
    let needle = format!("name = \"{package}\"\nversion = \"");
    let start = lock.find(&needle)? + needle.len();
    let end = lock[start..].find('"')?;
    Some(lock[start..start + end].to_string())
}

fn main() {
    let lock_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.lock");
    println!("cargo:rerun-if-changed={}", lock_path.display());
    let lock = std::fs::read_to_string(&lock_path).unwrap_or_default();
    let version = locked_version(&lock, "tract-core").unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=EDGELOOP_TRACT_VERSION={version}");
}
