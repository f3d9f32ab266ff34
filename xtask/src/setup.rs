//! Emulator and image-building prerequisites: checked on every `run` and
//! `test`, installed with apt when possible.

use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::Duration;

use crate::fail;
use crate::step::{self, Result};

/// A prerequisite: something that must exist, and the Debian package that provides it.
struct Need {
    /// A program on PATH, or an absolute file or directory path.
    what: &'static str,
    package: &'static str,
}

const NEEDS: &[Need] = &[
    Need { what: "qemu-system-x86_64", package: "qemu-system-x86" },
    Need { what: "bochs-bin", package: "bochs" },
    Need { what: "/usr/share/bochs/BIOS-bochs-latest", package: "bochsbios" },
    Need { what: "/usr/share/vgabios/vgabios.bin", package: "vgabios" },
    Need { what: "/usr/lib/grub/i386-pc", package: "grub-pc-bin" },
    Need { what: "grub-mkrescue", package: "grub-common" },
    Need { what: "xorriso", package: "xorriso" },
    Need { what: "mformat", package: "mtools" },
];

fn present(what: &str) -> bool {
    if what.starts_with('/') {
        return Path::new(what).exists();
    }
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(what).is_file()))
}

fn missing() -> Vec<&'static Need> {
    NEEDS.iter().filter(|need| !present(need.what)).collect()
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}

/// Runs apt-get, waiting out another apt or dpkg process holding the lock
/// (common right after a machine boots).
fn apt(args: &[&str]) -> Result {
    for attempt in 1..=30 {
        let output = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .output()
            .map_err(|e| fail!("cannot run apt-get: {e}"))?;
        if output.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        if stderr.contains("Could not get lock") || stderr.contains("Unable to acquire the dpkg") {
            println!(
                "    apt is busy (another package manager holds the lock); retrying in 10 s ({attempt}/30)"
            );
            thread::sleep(Duration::from_secs(10));
            continue;
        }
        return Err(fail!("apt-get {} failed:\n{}", args.join(" "), stderr.trim_end()));
    }
    Err(fail!("apt-get {}: the package manager stayed locked for 5 minutes", args.join(" ")))
}

/// Checks every prerequisite; installs what is missing when running as
/// root, otherwise says exactly what to install.
pub fn ensure() -> Result {
    let needed = missing();
    if needed.is_empty() {
        println!("==> prerequisites present (QEMU, Bochs, GRUB, xorriso, mtools)");
        return Ok(());
    }
    let mut packages: Vec<&str> = needed.iter().map(|n| n.package).collect();
    packages.dedup();
    let list =
        needed.iter().map(|n| format!("{} (package {})", n.what, n.package)).collect::<Vec<_>>().join(", ");
    if !is_root() || !present("apt-get") {
        return Err(fail!(
            "missing prerequisites: {list}\n  install them with: sudo apt-get install {}",
            packages.join(" ")
        ));
    }
    let started = step::begin(format!("installing {} with apt", packages.join(" ")));
    apt(&["update", "-q"])?;
    let mut install = vec!["install", "-y", "-q"];
    install.extend(&packages);
    apt(&install)?;
    let still = missing();
    if !still.is_empty() {
        let list = still.iter().map(|n| n.what).collect::<Vec<_>>().join(", ");
        return Err(fail!("after installing, still missing: {list}"));
    }
    step::end(started, "prerequisites installed");
    Ok(())
}
