//! Links the effp binary and its tests against the venv's libtorch.
include!("crates/engine/build/link_libtorch.rs");

fn main() {
    link_libtorch();
}
