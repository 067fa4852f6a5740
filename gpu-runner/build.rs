//! Gives every binary, test and doctest of this crate an rpath to the libtorch it was
//! linked against, so they run without LD_LIBRARY_PATH (which still wins when set, e.g.
//! on a GPU machine whose own PyTorch supplies the CUDA build of the same libraries).

fn main() {
    // torch-sys declares `links = "tch"` and exports its library folder as
    // `cargo:libtorch_lib=…`, which reaches direct dependents as DEP_TCH_LIBTORCH_LIB.
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    }
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
}
