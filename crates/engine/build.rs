//! Links this package's tests against the venv's libtorch (see build/link_libtorch.rs).
include!("build/link_libtorch.rs");

fn main() {
    link_libtorch();
}
