//! The I/O APIC (Intel 82093AA datasheet §3; ACPI 6.5 §5.2.12.3): device
//! interrupt lines routed to this CPU's LAPIC. The kernel drives the first
//! I/O APIC the MADT lists, the one carrying global system interrupts 0 up
//! to its line count. Every line starts masked; a line is programmed only
//! for an IRQ-handler capability, and masked again on each interrupt until
//! the handler's owner acknowledges it.

use spin::Once;

use crate::addr::{DirectMap, PhysAddr};

/// Register select (offset 0x00) and window (offset 0x10).
const IOREGSEL: usize = 0x00;
const IOWIN: usize = 0x10;
/// IOAPICVER: bits 16-23 hold the index of the last redirection entry.
const VERSION: u32 = 0x01;
/// First redirection-table register; entry `n` is at 0x10 + 2n (low half)
/// and 0x11 + 2n (high half).
const REDIRECTION: u32 = 0x10;

const ACTIVE_LOW: u32 = 1 << 13;
const LEVEL: u32 = 1 << 15;
const MASKED: u32 = 1 << 16;

/// Vector of line 0; line `n` uses `VECTOR_BASE + n`.
pub const VECTOR_BASE: u8 = 0x40;
/// Most lines the kernel drives (the usual 24 of one I/O APIC).
pub const MAX_LINES: u8 = 24;

/// The I/O APIC's registers through the direct map.
#[derive(Debug)]
pub struct IoApic {
    registers: *mut u32,
    lines: u8,
    destination: u8,
}

// SAFETY: the registers are device memory reached only through `&self`
// methods that select and access one register under the caller's lock
// (the kernel is single-CPU and calls them with interrupts off).
unsafe impl Send for IoApic {}
// SAFETY: as above.
unsafe impl Sync for IoApic {}

static IO_APIC: Once<IoApic> = Once::new();

/// The I/O APIC, once `init` has found one.
pub fn get() -> Option<&'static IoApic> {
    IO_APIC.get()
}

/// Takes over the I/O APIC at physical `address` (from the MADT), masks all
/// its lines and routes them, when enabled, to the LAPIC with ID
/// `destination`. Returns its line count.
pub fn init(direct_map: DirectMap, address: PhysAddr, destination: u8) -> u8 {
    let apic = IoApic { registers: direct_map.to_virtual(address).as_mut_ptr(), lines: 0, destination };
    let lines = (((apic.read(VERSION) >> 16) & 0xff) as u8).saturating_add(1).min(MAX_LINES);
    let apic = IO_APIC.call_once(|| IoApic { lines, ..apic });
    for line in 0..apic.lines {
        apic.set_masked(line, true);
    }
    apic.lines
}

impl IoApic {
    fn read(&self, register: u32) -> u32 {
        // SAFETY: `registers` is the direct-map address of the I/O APIC's
        // register window; IOREGSEL and IOWIN are 32-bit registers in it.
        unsafe {
            self.registers.byte_add(IOREGSEL).write_volatile(register);
            self.registers.byte_add(IOWIN).read_volatile()
        }
    }

    fn write(&self, register: u32, value: u32) {
        // SAFETY: as for `read`.
        unsafe {
            self.registers.byte_add(IOREGSEL).write_volatile(register);
            self.registers.byte_add(IOWIN).write_volatile(value);
        }
    }

    /// Lines this I/O APIC has (at most `MAX_LINES`).
    pub fn lines(&self) -> u8 {
        self.lines
    }

    /// Routes `line` as fixed delivery, physical destination, to its vector
    /// with the given trigger mode and polarity, masked.
    pub fn configure(&self, line: u8, level: bool, active_low: bool) {
        if line >= self.lines {
            return;
        }
        let register = REDIRECTION + 2 * u32::from(line);
        let mut low = u32::from(VECTOR_BASE + line) | MASKED;
        if level {
            low |= LEVEL;
        }
        if active_low {
            low |= ACTIVE_LOW;
        }
        self.write(register, MASKED);
        self.write(register + 1, u32::from(self.destination) << 24);
        self.write(register, low);
    }

    /// Masks or unmasks `line`, keeping the rest of its routing.
    pub fn set_masked(&self, line: u8, masked: bool) {
        if line >= self.lines {
            return;
        }
        let register = REDIRECTION + 2 * u32::from(line);
        let low = self.read(register);
        self.write(register, if masked { low | MASKED } else { low & !MASKED });
    }
}
