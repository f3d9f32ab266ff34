//! `cargo xtask` links user programs with `user.ld`; this makes an edit to
//! it relink them.
fn main() {
    println!("cargo::rerun-if-changed=user.ld");
}
