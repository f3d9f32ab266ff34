//! Links the bare-metal kernel with its own script; host builds (tests,
//! `cargo check`) link normally.
fn main() {
    println!("cargo:rerun-if-changed=link.ld");
    println!("cargo::rustc-check-cfg=cfg(strata_baremetal)");
    if std::env::var_os("CARGO_CFG_STRATA_BAREMETAL").is_some() {
        let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
        for arg in [
            "-nostartfiles",
            "-nostdlib",
            "-static",
            "-Wl,--no-dynamic-linker",
            "-Wl,--build-id=none",
            "-Wl,--gc-sections",
            &format!("-Wl,-T,{dir}/link.ld"),
        ] {
            println!("cargo:rustc-link-arg-bins={arg}");
        }
    }
}
