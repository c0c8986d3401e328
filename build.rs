//! Build script.
//!
//! With the cargo feature `bitnet-cpp` off (the default) it does nothing: the
//! default build needs no C or C++ toolchain.
//!
//! With the feature on it compiles bitnet.cpp's ggml and llama.cpp-fork
//! sources with gcc/g++ through the `cc` crate (no cmake, no clang, no source
//! patch) into one static library linked into tern; `src/bitnet_cpp/` holds
//! the bindings and the safe wrapper.
//!
//! Where the sources come from: the crates.io package `bitnet-cpp-sys`
//! 0.0.5, which ships microsoft/BitNet with its llama.cpp fork. Cargo.toml
//! names it as an optional dependency under a never-true target cfg, so Cargo
//! resolves, locks (checksum) and `cargo fetch` downloads and unpacks it, but
//! never builds it (its own build script wants cmake and clang). That package
//! declares `links = "llama"` but prints no `cargo:KEY=VALUE` metadata, so no
//! `DEP_LLAMA_*` variable could carry its path even if it were built; this
//! script finds the unpacked package instead:
//! 1. `BITNET_CPP_SYS_DIR`, if set (a directory holding that package), else
//! 2. `$CARGO_HOME/registry/src/*/bitnet-cpp-sys-0.0.5` (`CARGO_HOME`
//!    defaulting to `~/.cargo`), where `cargo fetch` unpacks it.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    #[cfg(feature = "bitnet-cpp")]
    bitnet_cpp::build();
}

#[cfg(feature = "bitnet-cpp")]
mod bitnet_cpp {
    use std::env;
    use std::path::{Path, PathBuf};
    use std::process::Command;

    const PACKAGE: &str = "bitnet-cpp-sys-0.0.5";

    /// ggml's C sources (relative to the llama.cpp fork), as its CMake list
    /// has them for a CPU-only build without llamafile.
    const GGML_C: &[&str] = &[
        "ggml/src/ggml.c",
        "ggml/src/ggml-alloc.c",
        "ggml/src/ggml-quants.c",
        "ggml/src/ggml-aarch64.c",
    ];

    /// The C++ sources: ggml's backend, llama itself.
    const LLAMA_CPP: &[&str] = &[
        "ggml/src/ggml-backend.cpp",
        "src/llama.cpp",
        "src/llama-vocab.cpp",
        "src/llama-grammar.cpp",
        "src/llama-sampling.cpp",
        "src/unicode.cpp",
        "src/unicode-data.cpp",
    ];

    /// bitnet.cpp's own kernels (relative to `bitnet/`): the I2_S quantizer
    /// and int8 × I2_S dot product. `ggml-bitnet-lut.cpp` (the TL1/TL2 lookup
    /// kernels) is left out: it needs `bitnet-lut-kernels.h`, which the
    /// package does not ship (bitnet.cpp generates it per model), and nothing
    /// references it while `GGML_BITNET_ARM_TL1`/`GGML_BITNET_X86_TL2` are
    /// undefined, which keeps the I2_S path of ggml's mul_mat.
    const BITNET_CPP: &[&str] = &["src/ggml-bitnet-mad.cpp"];

    /// The CPU features bitnet.cpp's CMake enables by default on x86_64
    /// (GGML_AVX, GGML_AVX2, GGML_FMA, GGML_F16C). Without `__AVX2__` the
    /// body of `ggml_vec_dot_i2_i8_s` compiles to nothing and leaves its
    /// result unwritten, so these are not optional.
    const X86_FLAGS: &[&str] = &["-mavx", "-mavx2", "-mfma", "-mf16c"];

    pub fn build() {
        let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
        if arch != "x86_64" {
            panic!(
                "the `bitnet-cpp` feature builds bitnet.cpp's x86_64 AVX2 I2_S kernels; \
                 target architecture {:?} is not supported",
                arch
            );
        }
        let pkg = locate();
        let bitnet = pkg.join("bitnet");
        let llama = bitnet.join("3rdparty/llama.cpp");
        let here = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
        let shim = here.join("src/bitnet_cpp/shim.c");
        println!("cargo:rerun-if-changed={}", shim.display());

        let includes = [
            llama.join("include"),
            llama.join("ggml/include"),
            llama.join("ggml/src"),
            llama.join("src"),
            bitnet.join("include"),
        ];
        // Pick gcc/g++ unless the user chose compilers through CC/CXX.
        let user_cc = env::var_os("CC").is_some() || env::var_os("CXX").is_some();
        let base = |cpp: bool| {
            let mut b = cc::Build::new();
            b.cpp(cpp)
                .includes(&includes)
                .define("NDEBUG", None)
                .define("_GNU_SOURCE", None)
                .define("_XOPEN_SOURCE", "600")
                // The fork's own CMake builds Release (-O3) whatever tern's
                // profile; a debug ggml would make the tests crawl.
                .flag("-O3")
                .flag("-pthread")
                .warnings(false)
                .cargo_warnings(false);
            for f in X86_FLAGS {
                b.flag(f);
            }
            if !user_cc {
                b.compiler(if cpp { "g++" } else { "gcc" });
            }
            b
        };

        let mut c = base(false);
        c.flag("-std=c11");
        for f in GGML_C {
            c.file(llama.join(f));
        }
        c.file(&shim);
        let c_objects = c.compile_intermediates();

        let mut cxx = base(true);
        cxx.flag("-std=c++11");
        for f in LLAMA_CPP {
            cxx.file(llama.join(f));
        }
        for f in BITNET_CPP {
            cxx.file(bitnet.join(f));
        }
        cxx.objects(&c_objects);
        let version = compiler_version(cxx.get_compiler().path());
        // One archive for C and C++ objects: ggml.c calls into the C++ files
        // and llama.cpp into the C ones, which two archives would make
        // order-dependent at link time.
        cxx.compile("tern_bitnet_cpp");

        println!("cargo:rustc-env=TERN_BITNET_CPP_SRC={}", pkg.display());
        println!("cargo:rustc-env=TERN_BITNET_CPP_CXX={}", version);
    }

    /// The unpacked `bitnet-cpp-sys` 0.0.5 package (see the file comment).
    fn locate() -> PathBuf {
        println!("cargo:rerun-if-env-changed=BITNET_CPP_SYS_DIR");
        println!("cargo:rerun-if-env-changed=CARGO_HOME");
        if let Some(dir) = env::var_os("BITNET_CPP_SYS_DIR") {
            let dir = PathBuf::from(dir);
            if is_package(&dir) {
                return dir;
            }
            panic!(
                "BITNET_CPP_SYS_DIR={} does not hold the {} package \
                 (bitnet/3rdparty/llama.cpp/include/llama.h and bitnet/src/ggml-bitnet-mad.cpp)",
                dir.display(),
                PACKAGE
            );
        }
        let home = env::var_os("CARGO_HOME")
            .map(PathBuf::from)
            .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
            .expect("neither CARGO_HOME nor HOME is set");
        let registry = home.join("registry/src");
        let mut candidates: Vec<PathBuf> = std::fs::read_dir(&registry)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.path().join(PACKAGE))
                    .filter(|p| is_package(p))
                    .collect()
            })
            .unwrap_or_default();
        candidates.sort();
        match candidates.into_iter().next() {
            Some(p) => p,
            None => panic!(
                "the `bitnet-cpp` feature needs the sources of {} under {}/*/: \
                 run `cargo fetch` first (Cargo downloads that source-only dependency \
                 but does not build it), or point BITNET_CPP_SYS_DIR at an unpacked copy",
                PACKAGE,
                registry.display()
            ),
        }
    }

    fn is_package(dir: &Path) -> bool {
        dir.join("bitnet/3rdparty/llama.cpp/include/llama.h")
            .is_file()
            && dir.join("bitnet/src/ggml-bitnet-mad.cpp").is_file()
    }

    /// First line of `<compiler> --version`, for the record.
    fn compiler_version(path: &Path) -> String {
        let first = Command::new(path)
            .arg("--version")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.lines().next().map(str::to_string))
            .unwrap_or_default();
        format!("{} ({})", path.display(), first.trim())
    }
}
