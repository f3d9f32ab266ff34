//! Port-mapped I/O (Intel SDM vol. 1 §19.3: IN/OUT).

/// Reads a byte from `port`.
///
/// # Safety
/// Reading some ports has side effects on devices (acknowledging interrupts,
/// popping FIFOs); the caller must own the device behind `port`.
pub unsafe fn read_u8(port: u16) -> u8 {
    // SAFETY: the caller owns the device (precondition).
    unsafe { x86::io::inb(port) }
}

/// Writes a byte to `port`.
///
/// # Safety
/// The caller must own the device behind `port` and know what the write does.
pub unsafe fn write_u8(port: u16, value: u8) {
    // SAFETY: the caller owns the device (precondition).
    unsafe { x86::io::outb(port, value) }
}
