//! The legacy 8259A interrupt controllers: remapped away from the exception
//! vectors and masked, so that only the local APIC delivers interrupts.
//! (8259A data sheet: ICW1-ICW4 initialisation sequence.)

use super::port;

const PRIMARY_COMMAND: u16 = 0x20;
const PRIMARY_DATA: u16 = 0x21;
const SECONDARY_COMMAND: u16 = 0xa0;
const SECONDARY_DATA: u16 = 0xa1;

/// First vector of the remapped primary PIC; spurious IRQ 7 and 15 may still
/// arrive at `BASE + 7` and `BASE + 15` even with every line masked.
pub const BASE: u8 = 0x20;

/// Remaps both PICs to vectors `BASE..BASE + 16` and masks every line.
pub fn remap_and_mask() {
    // SAFETY: the PICs are owned by the kernel; this is the documented
    // initialisation sequence, after which all lines are masked.
    unsafe {
        port::write_u8(PRIMARY_COMMAND, 0x11); // ICW1: edge, cascade, ICW4 follows
        port::write_u8(SECONDARY_COMMAND, 0x11);
        port::write_u8(PRIMARY_DATA, BASE); // ICW2: vector base
        port::write_u8(SECONDARY_DATA, BASE + 8);
        port::write_u8(PRIMARY_DATA, 0x04); // ICW3: secondary on IRQ 2
        port::write_u8(SECONDARY_DATA, 0x02); // ICW3: cascade identity
        port::write_u8(PRIMARY_DATA, 0x01); // ICW4: 8086 mode
        port::write_u8(SECONDARY_DATA, 0x01);
        port::write_u8(PRIMARY_DATA, 0xff); // mask everything
        port::write_u8(SECONDARY_DATA, 0xff);
    }
}
