//! How a strata image ends a run in an emulator.
//!
//! QEMU's `isa-debug-exit` device (I/O port [`QEMU_DEBUG_EXIT_PORT`]) ends QEMU
//! with status `(value << 1) | 1` when `value` is written to it. Bochs has no
//! such device; writing the string `Shutdown` byte by byte to
//! [`BOCHS_SHUTDOWN_PORT`] ends Bochs (always with status 1), so on Bochs the
//! verdict is read from the serial log alone. Writes to a port nothing decodes
//! are ignored on both, so an image performs both writes.

/// I/O port of QEMU's `isa-debug-exit` device as strata configures it.
pub const QEMU_DEBUG_EXIT_PORT: u16 = 0xf4;
/// I/O port on which Bochs accepts the `Shutdown` string.
pub const BOCHS_SHUTDOWN_PORT: u16 = 0x8900;
/// The string Bochs must receive on [`BOCHS_SHUTDOWN_PORT`].
pub const BOCHS_SHUTDOWN_STRING: &[u8] = b"Shutdown";

/// Why an image ended; the value written to the debug-exit port.
///
/// Values avoid 0 so that a QEMU status of 1 (QEMU's own failure status)
/// cannot be mistaken for a clean exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ExitCode {
    /// The kernel finished what it was asked to do.
    Success = 0x10,
    /// The kernel panicked or took a fatal exception.
    KernelFailure = 0x11,
    /// The loader refused the boot image (bad archive, kernel ELF or boot info).
    LoaderFailure = 0x12,
}

impl ExitCode {
    /// The process status QEMU exits with after this code is written.
    pub const fn qemu_status(self) -> i32 {
        ((self as i32) << 1) | 1
    }

    /// Decodes a QEMU process status back into the code that caused it.
    pub fn from_qemu_status(status: i32) -> Option<Self> {
        [Self::Success, Self::KernelFailure, Self::LoaderFailure]
            .into_iter()
            .find(|code| code.qemu_status() == status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_status_round_trips_and_never_collides_with_qemu_errors() {
        for code in [ExitCode::Success, ExitCode::KernelFailure, ExitCode::LoaderFailure] {
            assert_eq!(ExitCode::from_qemu_status(code.qemu_status()), Some(code));
            assert_ne!(code.qemu_status(), 0);
            assert_ne!(code.qemu_status(), 1);
        }
        assert_eq!(ExitCode::from_qemu_status(1), None);
        assert_eq!(ExitCode::from_qemu_status(0), None);
    }
}
