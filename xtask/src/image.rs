//! Boot images: the loader ELF (QEMU `-kernel` through its PVH note), the
//! boot archive (`strata.initrd`: kernel + modules) and a GRUB ISO
//! (multiboot2; boots in QEMU, Bochs and on hardware).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use strata_abi::archive::{Builder, EntryKind};
use strata_abi::ktest::{PATTERN_LEN, PATTERN_MODULE, pattern_byte};

use crate::build::{self, Flavor};
use crate::step::{self, Result};
use crate::{fail, root, system};

/// Which image to build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// `target/image/`: the production kernel, `log=info`, and what
    /// `systems/demo.toml` describes.
    Production,
    /// `target/image-test/`: the self-test kernel and the test module;
    /// `cmdline` goes into the ISO's GRUB entry.
    SelfTest {
        /// Kernel command line for the ISO.
        cmdline: String,
        /// Seed of the test root task's system-call fuzzer (module `fuzz-seed`).
        fuzz_seed: u64,
    },
    /// `target/image-bench/`: the self-test kernel and the benchmark root task.
    Bench,
    /// `target/image-system/`: the self-test kernel, the root task and the
    /// children `systems/system-test.toml` describes (one of which
    /// crashes, and one of which is not an executable).
    System,
    /// `target/image-vm/`: the kernel, the root task, and the two tenants
    /// `systems/tenants.toml` describes, each a `strata-vmm` with its own
    /// test guests (one of which is not a guest kernel).
    Vm,
    /// `target/image-custom/`: the VM image's kernel and programs, packed
    /// as the given description says (`cargo xtask run --system`).
    Custom {
        /// The description.
        description: PathBuf,
    },
}

/// The system description an image of `kind` is built from, if any.
pub fn description(kind: &Kind) -> Option<PathBuf> {
    let name = match kind {
        Kind::Custom { description } => return Some(description.clone()),
        Kind::Production => "demo",
        Kind::System => "system-test",
        Kind::Vm => "tenants",
        Kind::SelfTest { .. } | Kind::Bench => return None,
    };
    Some(root().join("systems").join(format!("{name}.toml")))
}

/// The module of the self-test image holding the system-call fuzzer's seed.
pub const FUZZ_SEED_MODULE: &str = "fuzz-seed";

/// A built image.
pub struct Image {
    /// The loader ELF (`-kernel`).
    pub elf: PathBuf,
    /// The boot archive (`-initrd`).
    pub initrd: PathBuf,
    /// The GRUB ISO.
    pub iso: PathBuf,
}

impl Image {
    /// Prints what was built.
    pub fn describe(&self) {
        for path in [&self.elf, &self.initrd, &self.iso] {
            let size = fs::metadata(path).map(|m| m.len()).unwrap_or(0);
            println!("    {:<40} {:>9} bytes", path.strip_prefix(root()).unwrap_or(path).display(), size);
        }
        println!(
            "    boot it: cargo xtask run   (or qemu-system-x86_64 -kernel strata.elf -initrd strata.initrd)"
        );
    }
}

/// The production command line.
pub const DEFAULT_CMDLINE: &str = "log=info";

/// Builds the bare-metal binaries and packs the image of `kind`.
pub fn build(kind: Kind) -> Result<Image> {
    let (flavor, dir, cmdline) = match &kind {
        Kind::Production => (Flavor::Production, root().join("target/image"), DEFAULT_CMDLINE.to_owned()),
        Kind::SelfTest { cmdline, .. } => {
            (Flavor::SelfTest, root().join("target/image-test"), cmdline.clone())
        }
        Kind::Bench => {
            (Flavor::Bench, root().join("target/image-bench"), "log=warn ktest.token=bench".to_owned())
        }
        Kind::System => (Flavor::System, root().join("target/image-system"), "log=info".to_owned()),
        Kind::Vm => (Flavor::Vm, root().join("target/image-vm"), "log=info".to_owned()),
        Kind::Custom { .. } => (Flavor::Vm, root().join("target/image-custom"), "log=info".to_owned()),
    };
    let binaries = build::bare_metal(flavor)?;
    let started = step::begin(format!("packing the boot image in {}", dir.display()));
    fs::create_dir_all(&dir)?;
    let elf = dir.join("strata.elf");
    fs::copy(&binaries.loader, &elf).map_err(|e| fail!("copying the loader to {}: {e}", elf.display()))?;

    let kernel =
        fs::read(&binaries.kernel).map_err(|e| fail!("reading {}: {e}", binaries.kernel.display()))?;
    let mut archive = Builder::new();
    archive.add(EntryKind::Kernel, "kernel", "", &kernel).map_err(|e| fail!("boot archive: {e}"))?;
    if let Some(root_task) = &binaries.root_task {
        let image = fs::read(root_task).map_err(|e| fail!("reading {}: {e}", root_task.display()))?;
        archive.add(EntryKind::Module, "root", "", &image).map_err(|e| fail!("boot archive: {e}"))?;
    }
    if let Some(path) = description(&kind) {
        let programs: Vec<&str> = binaries.programs.iter().map(|(name, _)| *name).collect();
        let system = system::load(&path, &programs).map_err(|e| fail!("system description {e}"))?;
        archive
            .add(EntryKind::Module, strata_abi::system::MODULE, "", system.manifest_bytes())
            .map_err(|e| fail!("boot archive: {e}"))?;
        for (name, source) in &system.modules {
            let bytes = match source {
                system::Source::Text(text) => text.clone().into_bytes(),
                system::Source::Program(program) => {
                    let path = binaries.programs.iter().find(|(n, _)| n == program).map(|(_, p)| p);
                    let path = path.ok_or_else(|| fail!("program {program} was not built"))?;
                    fs::read(path).map_err(|e| fail!("reading {}: {e}", path.display()))?
                }
            };
            archive.add(EntryKind::Module, name, "", &bytes).map_err(|e| fail!("boot archive: {e}"))?;
        }
    }
    if let Kind::SelfTest { fuzz_seed, .. } = &kind {
        archive
            .add(EntryKind::Module, FUZZ_SEED_MODULE, "", format!("{fuzz_seed:x}\n").as_bytes())
            .map_err(|e| fail!("boot archive: {e}"))?;
    }
    if matches!(flavor, Flavor::SelfTest | Flavor::Bench) {
        let pattern: Vec<u8> = (0..PATTERN_LEN).map(pattern_byte).collect();
        archive
            .add(EntryKind::Module, PATTERN_MODULE, "", &pattern)
            .map_err(|e| fail!("boot archive: {e}"))?;
    }
    let initrd = dir.join("strata.initrd");
    fs::write(&initrd, archive.finish().map_err(|e| fail!("boot archive: {e}"))?)?;

    let iso = dir.join("strata.iso");
    make_iso(&dir, &elf, &initrd, &cmdline, &iso)?;
    step::end(started, "image packed");
    Ok(Image { elf, initrd, iso })
}

/// GRUB configuration: boot at once, no menu, multiboot2 with the archive
/// as the first module.
pub fn grub_cfg(cmdline: &str) -> String {
    format!(
        "set timeout=0\nset default=0\n\nmenuentry \"strata\" {{\n    multiboot2 /boot/strata.elf {cmdline}\n    module2 /boot/strata.initrd strata.initrd\n    boot\n}}\n"
    )
}

fn make_iso(dir: &Path, elf: &Path, initrd: &Path, cmdline: &str, iso: &Path) -> Result {
    let tree = dir.join("iso");
    let _ = fs::remove_dir_all(&tree);
    fs::create_dir_all(tree.join("boot/grub"))?;
    fs::copy(elf, tree.join("boot/strata.elf"))?;
    fs::copy(initrd, tree.join("boot/strata.initrd"))?;
    fs::write(tree.join("boot/grub/grub.cfg"), grub_cfg(cmdline))?;
    let output = Command::new("grub-mkrescue")
        .arg("-o")
        .arg(iso)
        .arg(&tree)
        .output()
        .map_err(|e| fail!("cannot run grub-mkrescue: {e} (run `cargo xtask setup`)"))?;
    if !output.status.success() {
        return Err(fail!(
            "grub-mkrescue failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim_end()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grub_entry_boots_the_loader_with_the_archive_as_first_module() {
        let cfg = grub_cfg("log=debug ktest.token=abc");
        assert!(cfg.contains("multiboot2 /boot/strata.elf log=debug ktest.token=abc\n"));
        assert!(cfg.contains("module2 /boot/strata.initrd"));
        assert!(cfg.contains("set timeout=0"));
    }
}
