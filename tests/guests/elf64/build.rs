//! Relinks the guest when its linker script changes.

fn main() {
    println!("cargo:rerun-if-changed=../elf64.ld");
}
