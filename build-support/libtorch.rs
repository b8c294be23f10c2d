//! Build-script helpers for every crate whose binaries or tests link
//! libtorch (the host, edgeloop-train, the end-to-end tests).

/// Keeps libtorch's CUDA half linked. The linker's `--as-needed` drops
/// `libtorch.so` (which pulls in `libtorch_cuda.so`) because no symbol of it
/// is referenced directly, and then libtorch never sees a GPU. Linking it
/// without `--as-needed`, with an rpath to the venv's libtorch, fixes both
/// and lets the binaries start without LD_LIBRARY_PATH.
pub fn link() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch");
    }
}
