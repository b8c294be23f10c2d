#[path = "../../build-support/libtorch.rs"]
mod libtorch;

/// Links libtorch (see build-support) and compiles the fused-SGD shim
/// against the headers of the same libtorch, with its C++ ABI.
fn main() {
    libtorch::link();
    println!("cargo:rerun-if-changed=csrc/fused_sgd.cpp");
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    let libtorch = std::env::var("LIBTORCH").expect("LIBTORCH (set by .cargo/config.toml) names libtorch");
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".into());
    cc::Build::new()
        .cpp(true)
        .pic(true)
        .warnings(false)
        .std("c++17")
        .include(std::path::Path::new(&libtorch).join("include"))
        .define("_GLIBCXX_USE_CXX11_ABI", abi.as_str())
        .file("csrc/fused_sgd.cpp")
        .compile("edgeloop_fused_sgd");
}
