//! Ending a run: the emulator exit devices, then a halt (on hardware).

use strata_abi::exit::{BOCHS_SHUTDOWN_PORT, BOCHS_SHUTDOWN_STRING, ExitCode, QEMU_DEBUG_EXIT_PORT};

use super::{port, serial::Uart16550};

/// Flushes the console, signals `code` to whichever emulator is listening
/// (QEMU's isa-debug-exit, Bochs's shutdown port; on hardware neither port
/// is decoded) and halts.
pub fn exit(code: ExitCode) -> ! {
    Uart16550::com1().flush();
    // SAFETY: both ports are either the emulator's exit device or undecoded;
    // the machine is being shut down, so no device state matters any more.
    unsafe {
        port::write_u8(QEMU_DEBUG_EXIT_PORT, code as u8);
        for &byte in BOCHS_SHUTDOWN_STRING {
            port::write_u8(BOCHS_SHUTDOWN_PORT, byte);
        }
    }
    halt_forever()
}

/// Disables interrupts and halts for good.
pub fn halt_forever() -> ! {
    loop {
        // SAFETY: halting with interrupts off only stops this CPU.
        unsafe { core::arch::asm!("cli", "hlt", options(nomem, nostack)) };
    }
}
