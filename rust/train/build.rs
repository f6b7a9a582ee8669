//! 1. Test binaries of this crate load libtorch at run time. torch-sys links it
//!    from the venv's torch/lib but sets no rpath for us, so without this
//!    `cargo test -p train` would need LD_LIBRARY_PATH. The Python extension
//!    does not need it: `import torch` has loaded libtorch before `_core` is
//!    imported.
//! 2. Compiles the CPU training shims `csrc/bitlinear.cpp` (BitLinear, see
//!    `src/cpu_bitlinear.rs`), `csrc/mhc.cpp` (mHC's stream passes) and
//!    `csrc/attention.cpp` (rotary + causal attention, `src/cpu_attention.rs`),
//!    `csrc/optim.cpp` (the optimizers' element-wise passes, `src/optim.rs`)
//!    against the same libtorch's headers, with the C++ ABI torch-sys uses (`LIBTORCH_CXX11_ABI`, default 1 as in every
//!    torch >= 2.7 wheel).
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    println!("cargo:rerun-if-changed=csrc/bitlinear.cpp");
    println!("cargo:rerun-if-changed=csrc/mhc.cpp");
    println!("cargo:rerun-if-changed=csrc/attention.cpp");
    println!("cargo:rerun-if-changed=csrc/optim.cpp");
    println!("cargo:rerun-if-changed=csrc/common.h");
    let lib = std::env::var("DEP_TCH_LIBTORCH_LIB")
        .expect("torch-sys did not report its libtorch lib dir (DEP_TCH_LIBTORCH_LIB)");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    let include = PathBuf::from(&lib).join("..").join("include");
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".to_owned());
    cc::Build::new()
        .cpp(true)
        .pic(true)
        .warnings(false)
        .opt_level(2)
        .include(&include)
        .include(include.join("torch").join("csrc").join("api").join("include"))
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .file("csrc/bitlinear.cpp")
        .file("csrc/mhc.cpp")
        .file("csrc/attention.cpp")
        .file("csrc/optim.cpp")
        .compile("nct_bitlinear");
}
