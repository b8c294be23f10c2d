#[path = "../build-support/libtorch.rs"]
mod libtorch;

fn main() {
    libtorch::link();
}
