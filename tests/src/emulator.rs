//! Starting emulators and capturing what an image writes to its serial port.
//!
//! QEMU writes COM1 to its standard output; Bochs writes it to a file. Either
//! way the run is bounded by a timeout, after which the emulator is killed.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::judge::{Exit, Outcome};

/// How QEMU boots the image.
#[derive(Debug, Clone)]
pub enum QemuBoot {
    /// `-kernel` (PVH entry) with an initrd and a command line.
    Direct {
        /// The loader ELF (`strata.elf`).
        elf: PathBuf,
        /// The boot archive (`strata.initrd`).
        initrd: PathBuf,
        /// The kernel command line.
        append: String,
    },
    /// `-cdrom` (BIOS, GRUB, multiboot2).
    Iso {
        /// The GRUB ISO.
        iso: PathBuf,
    },
}

/// QEMU's configuration for strata: q35, TCG with `-cpu max` (AMD with SVM
/// and nested paging under TCG), the debug-exit device at port 0xf4, COM1 on
/// standard output, no display, no reboot on triple fault.
pub fn qemu_command(boot: &QemuBoot, memory_mib: u32, extra: &[String]) -> Command {
    let mut command = Command::new("qemu-system-x86_64");
    command.args(["-machine", "q35", "-accel", "tcg", "-cpu", "max"]);
    command.args(["-m", &format!("{memory_mib}M")]);
    command.args(["-display", "none", "-no-reboot", "-serial", "stdio", "-monitor", "none"]);
    command.args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]);
    match boot {
        QemuBoot::Direct { elf, initrd, append } => {
            command.arg("-kernel").arg(elf).arg("-initrd").arg(initrd).args(["-append", append]);
        }
        QemuBoot::Iso { iso } => {
            command.arg("-cdrom").arg(iso).args(["-boot", "d"]);
        }
    }
    command.args(extra);
    command
}

/// Where the Bochs BIOS and VGA BIOS live (Debian `bochsbios`, `vgabios`).
pub const BOCHS_BIOS: &str = "/usr/share/bochs/BIOS-bochs-latest";
/// The VGA BIOS image.
pub const VGA_BIOS: &str = "/usr/share/vgabios/vgabios.bin";

/// A Bochs configuration booting `iso` on a Skylake-X model (VMX with EPT
/// and unrestricted guest), COM1 to `serial_log`. There is no headless
/// display in Debian's build: the RFB display is used without waiting for a
/// client.
pub fn bochs_config(iso: &Path, serial_log: &Path, log: &Path, memory_mib: u32) -> String {
    format!(
        "megs: {memory_mib}\n\
         cpu: model=corei7_skylake_x, count=1, ips=50000000, reset_on_triple_fault=0, ignore_bad_msrs=1\n\
         romimage: file={BOCHS_BIOS}\n\
         vgaromimage: file={VGA_BIOS}\n\
         ata0-master: type=cdrom, path=\"{}\", status=inserted\n\
         boot: cdrom\n\
         com1: enabled=1, mode=file, dev=\"{}\"\n\
         display_library: rfb, options=\"timeout=0\"\n\
         sound: waveoutdrv=dummy, waveindrv=dummy, midioutdrv=dummy\n\
         clock: sync=none, time0=1\n\
         log: \"{}\"\n\
         panic: action=fatal\n\
         error: action=report\n\
         info: action=ignore\n",
        iso.display(),
        serial_log.display(),
        log.display(),
    )
}

/// Writes the Bochs configuration and debugger script into `dir` and
/// returns the command that runs Bochs with them, and the serial log path.
pub fn bochs_command(iso: &Path, dir: &Path, memory_mib: u32) -> std::io::Result<(Command, PathBuf)> {
    fs::create_dir_all(dir)?;
    let serial = dir.join("serial.log");
    let log = dir.join("bochs.log");
    let _ = fs::remove_file(&serial);
    fs::write(dir.join("bochsrc"), bochs_config(iso, &serial, &log, memory_mib))?;
    // Debian's Bochs has the internal debugger and stops at its prompt.
    fs::write(dir.join("debugger.rc"), "continue\n")?;
    let mut command = Command::new("bochs-bin");
    command.args(["-q", "-f"]).arg(dir.join("bochsrc")).arg("-rc").arg(dir.join("debugger.rc"));
    Ok((command, serial))
}

fn drain(mut source: impl Read + Send + 'static) -> (Arc<Mutex<Vec<u8>>>, thread::JoinHandle<()>) {
    let buffer = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&buffer);
    let handle = thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        while let Ok(n) = source.read(&mut chunk) {
            if n == 0 {
                break;
            }
            if let Ok(mut out) = sink.lock() {
                out.extend_from_slice(&chunk[..n]);
            }
        }
    });
    (buffer, handle)
}

fn take(buffer: &Arc<Mutex<Vec<u8>>>) -> String {
    buffer.lock().map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
}

/// Runs `command` for at most `timeout`. The serial log is its standard
/// output, or the file `serial_file` when given (Bochs).
pub fn run(mut command: Command, serial_file: Option<&Path>, timeout: Duration) -> std::io::Result<Outcome> {
    command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = command.spawn().map_err(|error| {
        std::io::Error::new(
            error.kind(),
            format!("cannot start {:?}: {error} (run `cargo xtask setup`)", command.get_program()),
        )
    })?;
    let (stdout, stdout_reader) = drain(child.stdout.take().ok_or(std::io::ErrorKind::BrokenPipe)?);
    let (stderr, stderr_reader) = drain(child.stderr.take().ok_or(std::io::ErrorKind::BrokenPipe)?);
    let started = Instant::now();
    let exit = loop {
        if let Some(status) = child.try_wait()? {
            break status.code().map_or(Exit::Signal, Exit::Status);
        }
        if started.elapsed() >= timeout {
            let _ = child.kill();
            let _ = child.wait();
            break Exit::TimedOut(timeout);
        }
        thread::sleep(Duration::from_millis(20));
    };
    let _ = stdout_reader.join();
    let _ = stderr_reader.join();
    let mut diagnostics = take(&stderr);
    let serial = match serial_file {
        Some(path) => {
            diagnostics.push_str(&take(&stdout));
            fs::read(path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
        }
        None => take(&stdout),
    };
    Ok(Outcome { serial, exit, diagnostics })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_command_has_the_exit_device_and_boot_source() {
        let boot =
            QemuBoot::Direct { elf: "a.elf".into(), initrd: "a.initrd".into(), append: "log=info".into() };
        let args: Vec<String> =
            qemu_command(&boot, 256, &[]).get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        let joined = args.join(" ");
        assert!(joined.contains("-device isa-debug-exit,iobase=0xf4,iosize=0x04"), "{joined}");
        assert!(joined.contains("-kernel a.elf -initrd a.initrd -append log=info"), "{joined}");
        assert!(joined.contains("-m 256M"), "{joined}");
        let iso: Vec<String> = qemu_command(&QemuBoot::Iso { iso: "x.iso".into() }, 128, &[])
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert!(iso.join(" ").contains("-cdrom x.iso -boot d"));
    }

    #[test]
    fn bochs_config_names_a_vmx_model_and_the_serial_file() {
        let config = bochs_config(Path::new("/i.iso"), Path::new("/s.log"), Path::new("/b.log"), 128);
        assert!(config.contains("model=corei7_skylake_x"));
        assert!(config.contains("com1: enabled=1, mode=file, dev=\"/s.log\""));
        assert!(config.contains("path=\"/i.iso\""));
        assert!(config.contains("megs: 128"));
    }

    #[test]
    fn run_captures_output_and_enforces_the_timeout() {
        let mut quick = Command::new("sh");
        quick.args(["-c", "echo KTEST done passed=0 failed=0; exit 3"]);
        let outcome = run(quick, None, Duration::from_secs(10)).expect("sh runs");
        assert_eq!(outcome.exit, Exit::Status(3));
        assert!(outcome.serial.contains("KTEST done"));

        let mut slow = Command::new("sleep");
        slow.arg("30");
        let started = Instant::now();
        let outcome = run(slow, None, Duration::from_millis(300)).expect("sleep runs");
        assert_eq!(outcome.exit, Exit::TimedOut(Duration::from_millis(300)));
        assert!(started.elapsed() < Duration::from_secs(5));

        let missing = run(Command::new("/nonexistent/emulator"), None, Duration::from_secs(1));
        assert!(missing.is_err_and(|e| e.to_string().contains("cargo xtask setup")));
    }
}
