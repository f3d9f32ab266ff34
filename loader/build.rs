//! `cargo xtask` passes `link.ld` to the linker for bare-metal builds; this
//! makes an edit to it relink the binary.
fn main() {
    println!("cargo::rerun-if-changed=link.ld");
}
