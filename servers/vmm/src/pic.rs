//! The PC's two cascaded 8259A interrupt controllers: the master at ports
//! 20h–21h with the slave on its line 2, the slave at A0h–A1h (Intel 8259A
//! data sheet, "Programming the 8259A"; the PC/AT wiring).
//!
//! Each chip is modelled as the data sheet describes it in x86 mode with
//! fully nested (fixed) priority: the initialization sequence (ICW1–ICW4),
//! the interrupt mask (OCW1), end of interrupt, specific and non-specific
//! (OCW2), reading IRR or ISR (OCW3), and automatic EOI (ICW4.AEOI).
//! Lines are edge triggered: a request is latched on a rising edge. The
//! VMM asks [`Pic::pending`] whether an interrupt should be presented to
//! the CPU, and calls [`Pic::acknowledge`] when it injects one, as the
//! CPU's INTA cycles would. Not modelled: level-triggered mode (ICW1.LTIM),
//! priority rotation (the rotating EOI commands do their EOI only),
//! special mask mode, polling, and buffered mode.

/// One 8259A.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Chip {
    /// Interrupt request register: latched edges not yet acknowledged.
    irr: u8,
    /// In-service register: acknowledged, waiting for their EOI.
    isr: u8,
    /// Interrupt mask register (OCW1).
    imr: u8,
    /// Line levels, for edge detection.
    level: u8,
    /// The vector of line 0 (ICW2, its low three bits clear).
    base: u8,
    /// ICW4.AEOI: the acknowledge ends the interrupt at once.
    auto_eoi: bool,
    /// OCW3: a read of the command port returns ISR (else IRR).
    read_isr: bool,
    /// Which initialization word comes next (0: none, initialized).
    expect: u8,
    /// ICW1.IC4 and !ICW1.SNGL, remembered for the sequence.
    needs_icw4: bool,
    single: bool,
}

impl Chip {
    /// A write to the command port (A0 = 0).
    fn command(&mut self, value: u8) {
        if value & 0x10 != 0 {
            // ICW1: the mask and in-service state are cleared, IR7 gets
            // the lowest priority, status reads return IRR; edges are
            // sensed afresh.
            *self = Self {
                base: self.base,
                level: self.level,
                needs_icw4: value & 0x01 != 0,
                single: value & 0x02 != 0,
                expect: 2,
                ..Self::default()
            };
        } else if value & 0x18 == 0x08 {
            // OCW3: RR (bit 1) with RIS (bit 0) selects the register read.
            if value & 0x02 != 0 {
                self.read_isr = value & 0x01 != 0;
            }
        } else {
            // OCW2: bits 7:5 are R, SL, EOI.
            match value >> 5 {
                // Non-specific EOI, plain or rotating: the highest-priority
                // in-service line.
                0b001 | 0b101 => self.isr &= self.isr.wrapping_sub(1),
                // Specific EOI for line L (bits 2:0), plain or rotating.
                0b011 | 0b111 => self.isr &= !(1 << (value & 7)),
                // Rotation itself and set-priority: not modelled (fixed priority).
                _ => {}
            }
        }
    }

    /// A write to the data port (A0 = 1).
    fn data(&mut self, value: u8) {
        match self.expect {
            2 => {
                self.base = value & 0xf8;
                self.expect = if !self.single {
                    3
                } else if self.needs_icw4 {
                    4
                } else {
                    0
                };
            }
            3 => self.expect = if self.needs_icw4 { 4 } else { 0 },
            4 => {
                self.auto_eoi = value & 0x02 != 0;
                self.expect = 0;
            }
            _ => self.imr = value,
        }
    }

    fn read_command(&self) -> u8 {
        if self.read_isr { self.isr } else { self.irr }
    }

    /// Sets line `line` to `high`; a rising edge latches a request.
    fn set_line(&mut self, line: u8, high: bool) {
        let bit = 1 << line;
        if high && self.level & bit == 0 {
            self.irr |= bit;
        }
        if high { self.level |= bit } else { self.level &= !bit }
    }

    /// The line that would be presented to the CPU: the highest-priority
    /// (lowest-numbered) unmasked request, if no line of equal or higher
    /// priority is in service.
    fn pending(&self) -> Option<u8> {
        let requests = self.irr & !self.imr;
        if requests == 0 || self.expect != 0 {
            return None;
        }
        let line = requests.trailing_zeros() as u8;
        let in_service = self.isr.trailing_zeros() as u8;
        (line < in_service).then_some(line)
    }

    /// Whether a new request on `line` would be presented: the chip is
    /// initialised, the line unmasked, nothing of equal or higher priority
    /// in service.
    fn would_present(&self, line: u8) -> bool {
        Self { irr: 1 << line, ..*self }.pending() == Some(line)
    }

    /// INTA: `line` goes from requested to in service (unless AEOI).
    fn acknowledge(&mut self, line: u8) {
        self.irr &= !(1 << line);
        if !self.auto_eoi {
            self.isr |= 1 << line;
        }
    }
}

/// The master and slave controllers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pic {
    master: Chip,
    slave: Chip,
}

/// The master's line the slave's output is wired to.
const CASCADE: u8 = 2;

impl Default for Pic {
    fn default() -> Self {
        Self::new()
    }
}

impl Pic {
    /// Both chips as firmware leaves them before an OS programs them: all
    /// lines masked, vectors 08h and 70h (the BIOS's).
    pub fn new() -> Self {
        let chip = |base| Chip { base, imr: 0xff, ..Chip::default() };
        Self { master: chip(0x08), slave: chip(0x70) }
    }

    /// Whether the VMM handles `port`.
    pub fn handles(port: u16) -> bool {
        matches!(port, 0x20 | 0x21 | 0xa0 | 0xa1)
    }

    fn chip(&mut self, port: u16) -> &mut Chip {
        if port & 0x80 != 0 { &mut self.slave } else { &mut self.master }
    }

    /// A byte written to `port`.
    pub fn write(&mut self, port: u16, value: u8) {
        let chip = self.chip(port);
        if port & 1 == 0 { chip.command(value) } else { chip.data(value) }
    }

    /// A byte read from `port`.
    pub fn read(&mut self, port: u16) -> u8 {
        let chip = self.chip(port);
        if port & 1 == 0 { chip.read_command() } else { chip.imr }
    }

    /// Sets ISA line `irq` (0–15) to `high`.
    pub fn set_irq(&mut self, irq: u8, high: bool) {
        if irq < 8 {
            self.master.set_line(irq, high);
        } else {
            self.slave.set_line(irq - 8, high);
        }
        self.update_cascade();
    }

    /// A rising and falling edge on `irq`: one request (as the PIT's
    /// output does once per period).
    pub fn pulse(&mut self, irq: u8) {
        self.set_irq(irq, true);
        self.set_irq(irq, false);
    }

    fn update_cascade(&mut self) {
        let high = self.slave.pending().is_some();
        self.master.set_line(CASCADE, high);
    }

    /// Whether a new request on master line `irq` (0–7) would reach the
    /// CPU without the guest first unmasking or ending an interrupt.
    pub fn would_deliver(&self, irq: u8) -> bool {
        irq < 8 && self.master.would_present(irq)
    }

    /// The vector the controllers present to the CPU, if any.
    pub fn pending(&self) -> Option<u8> {
        match self.master.pending()? {
            CASCADE => self.slave.pending().map(|line| self.slave.base | line),
            line => Some(self.master.base | line),
        }
    }

    /// INTA: the CPU takes the pending interrupt; returns its vector.
    pub fn acknowledge(&mut self) -> Option<u8> {
        let line = self.master.pending()?;
        self.master.acknowledge(line);
        let vector = if line == CASCADE {
            let slave_line = self.slave.pending()?;
            self.slave.acknowledge(slave_line);
            self.slave.base | slave_line
        } else {
            self.master.base | line
        };
        self.update_cascade();
        Some(vector)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sequence every PC OS uses: ICW1 (edge, cascade, ICW4), vector
    /// bases, cascade wiring, 8086 mode.
    fn initialised(master_base: u8, slave_base: u8) -> Pic {
        let mut pic = Pic::new();
        for (port, value) in [
            (0x20, 0x11),
            (0xa0, 0x11),
            (0x21, master_base),
            (0xa1, slave_base),
            (0x21, 0x04),
            (0xa1, 0x02),
            (0x21, 0x01),
            (0xa1, 0x01),
        ] {
            pic.write(port, value);
        }
        pic
    }

    #[test]
    fn after_initialisation_nothing_is_masked_and_lines_use_the_new_bases() {
        let mut pic = initialised(0x20, 0x28);
        assert_eq!((pic.read(0x21), pic.read(0xa1)), (0, 0));
        pic.pulse(0);
        assert_eq!(pic.pending(), Some(0x20));
        assert_eq!(pic.acknowledge(), Some(0x20));
        assert_eq!(pic.pending(), None);
    }

    #[test]
    fn firmware_state_masks_everything() {
        let mut pic = Pic::new();
        pic.pulse(0);
        assert_eq!(pic.pending(), None);
        pic.write(0x21, 0xfe);
        assert_eq!(pic.pending(), Some(0x08));
    }

    #[test]
    fn masked_lines_wait_and_priority_is_fixed() {
        let mut pic = initialised(0x20, 0x28);
        pic.write(0x21, 0x01); // mask IRQ0
        pic.pulse(0);
        pic.pulse(4);
        assert_eq!(pic.acknowledge(), Some(0x24));
        // IRQ4 in service; IRQ0 masked; unmasking it lets it through (higher priority).
        pic.write(0x21, 0x00);
        assert_eq!(pic.pending(), Some(0x20));
        assert_eq!(pic.acknowledge(), Some(0x20));
        // IRQ6 waits for IRQ4's EOI (lower priority than one in service).
        pic.pulse(6);
        pic.write(0x20, 0x20); // non-specific EOI: ends IRQ0, the highest in service
        assert_eq!(pic.pending(), None, "IRQ4 is still in service");
        pic.write(0x20, 0x64); // specific EOI for line 4
        assert_eq!(pic.pending(), Some(0x26));
    }

    #[test]
    fn a_level_held_high_requests_once() {
        let mut pic = initialised(0x20, 0x28);
        pic.set_irq(3, true);
        assert_eq!(pic.acknowledge(), Some(0x23));
        pic.write(0x20, 0x20);
        pic.set_irq(3, true);
        assert_eq!(pic.pending(), None, "no new edge");
        pic.set_irq(3, false);
        pic.set_irq(3, true);
        assert_eq!(pic.pending(), Some(0x23));
    }

    #[test]
    fn slave_lines_come_through_the_cascade() {
        let mut pic = initialised(0x20, 0x28);
        pic.pulse(12);
        assert_eq!(pic.pending(), Some(0x2c));
        assert_eq!(pic.acknowledge(), Some(0x2c));
        // Both chips have it in service until their EOIs.
        pic.write(0x20, 0x0b); // OCW3: read ISR
        pic.write(0xa0, 0x0b);
        assert_eq!((pic.read(0x20), pic.read(0xa0)), (1 << 2, 1 << 4));
        pic.write(0xa0, 0x20);
        pic.write(0x20, 0x20);
        assert_eq!((pic.read(0x20), pic.read(0xa0)), (0, 0));
    }

    #[test]
    fn a_request_is_deliverable_only_unmasked_and_above_what_is_in_service() {
        assert!(!Pic::new().would_deliver(0), "after reset every line is masked");
        let mut pic = initialised(0x20, 0x28);
        assert!(pic.would_deliver(0), "ICW1 clears the mask");
        pic.write(0x21, 0xff);
        assert!(!pic.would_deliver(0), "masked by OCW1");
        pic.write(0x21, 0xfe);
        assert!(pic.would_deliver(0) && !pic.would_deliver(1), "IRQ 0 unmasked alone");
        pic.pulse(0);
        assert_eq!(pic.acknowledge(), Some(0x20));
        assert!(!pic.would_deliver(0), "IRQ 0 in service, no EOI yet");
        pic.write(0x21, 0xfc);
        assert!(!pic.would_deliver(1), "a lower priority than the one in service");
        pic.write(0x20, 0xa0);
        assert!(pic.would_deliver(0) && pic.would_deliver(1), "after a rotating non-specific EOI");
        pic.pulse(0);
        assert_eq!(pic.acknowledge(), Some(0x20));
        pic.write(0x20, 0xe0);
        assert!(pic.would_deliver(0), "after a rotating specific EOI for line 0");
        assert!(!pic.would_deliver(8), "a slave line");
    }

    #[test]
    fn automatic_eoi_leaves_nothing_in_service_and_irr_reads_back() {
        let mut pic = Pic::new();
        for (port, value) in [(0x20, 0x13), (0x21, 0x40), (0x21, 0x03), (0x21, 0x00)] {
            pic.write(port, value); // single, ICW4 with AEOI
        }
        pic.pulse(1);
        assert_eq!(pic.read(0x20), 1 << 1, "IRR by default");
        assert_eq!(pic.acknowledge(), Some(0x41));
        pic.pulse(1);
        assert_eq!(pic.pending(), Some(0x41), "nothing in service blocks it");
    }

    #[test]
    fn initialisation_drops_old_requests_and_holds_new_ones_until_it_ends() {
        let mut pic = initialised(0x20, 0x28);
        pic.pulse(5);
        pic.write(0x20, 0x11); // ICW1 again (as QEMU, requests before it are dropped)
        pic.pulse(0);
        assert_eq!(pic.pending(), None, "not during the sequence");
        for value in [0x30, 0x04, 0x01] {
            pic.write(0x21, value);
        }
        assert_eq!(pic.pending(), Some(0x30), "the edge during it, at the new base");
        assert_eq!(pic.acknowledge(), Some(0x30));
        assert_eq!(pic.pending(), None, "IRQ5's request went with ICW1");
    }
}
