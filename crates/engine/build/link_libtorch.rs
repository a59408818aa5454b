// Shared by the build scripts of every package whose binaries or tests link libtorch
// (included, since a build script cannot depend on a library of its own workspace).

/// Makes binaries and tests find libtorch at run time without LD_LIBRARY_PATH, and
/// keeps libtorch_cuda linked so that CUDA works where it exists.
fn link_libtorch() {
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else { return };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    if std::path::Path::new(&lib).join("libtorch_cuda.so").exists() {
        // The linker drops libraries nobody references by symbol (--as-needed);
        // torch_cuda registers CUDA kernels from static initialisers only.
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}
