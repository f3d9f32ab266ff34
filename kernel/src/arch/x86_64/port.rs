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

/// Reads `width` bytes (1, 2 or 4; anything else reads 4) from `port`.
///
/// # Safety
/// As for [`read_u8`].
pub unsafe fn read(port: u16, width: u8) -> u32 {
    // SAFETY: the caller owns the device (precondition).
    unsafe {
        match width {
            1 => u32::from(x86::io::inb(port)),
            2 => u32::from(x86::io::inw(port)),
            _ => x86::io::inl(port),
        }
    }
}

/// Writes the low `width` bytes (1, 2 or 4; anything else writes 4) of
/// `value` to `port`.
///
/// # Safety
/// As for [`write_u8`].
pub unsafe fn write(port: u16, width: u8, value: u32) {
    // SAFETY: the caller owns the device (precondition).
    unsafe {
        match width {
            1 => x86::io::outb(port, value as u8),
            2 => x86::io::outw(port, value as u16),
            _ => x86::io::outl(port, value),
        }
    }
}
