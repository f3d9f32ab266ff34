//! `cargo xtask` links this program with `servers/rt/user.ld`; this makes
//! an edit to it relink the program.
fn main() {
    println!("cargo::rerun-if-changed=../../servers/rt/user.ld");
}
