//! A 16550 UART at the guest's COM1 (ports 3F8h–3FFh), for output: bytes
//! written to the transmit register become lines of the system log. The
//! register file behaves as the 16550's does (National Semiconductor
//! PC16550D data sheet, table 2): the divisor latch behind LCR.DLAB, the
//! scratch register, the interrupt identification with its FIFO bits, and
//! a transmitter that is always ready. Nothing is ever received, and the
//! UART raises no interrupts.

use alloc::string::String;

/// Longest line kept; longer ones are split.
pub const LINE_LIMIT: usize = 200;

/// The UART's state.
#[derive(Debug, Default)]
pub struct Uart {
    interrupt_enable: u8,
    line_control: u8,
    modem_control: u8,
    scratch: u8,
    divisor: u16,
    fifo_enabled: bool,
    line: String,
}

impl Uart {
    /// A UART after reset.
    pub fn new() -> Self {
        Self { line_control: 0x03, divisor: 1, ..Self::default() }
    }

    fn dlab(&self) -> bool {
        self.line_control & 0x80 != 0
    }

    /// A read of register `offset` (0–7).
    pub fn read(&mut self, offset: u16) -> u8 {
        match offset {
            0 if self.dlab() => self.divisor as u8,
            0 => 0,
            1 if self.dlab() => (self.divisor >> 8) as u8,
            1 => self.interrupt_enable,
            // No interrupt pending; FIFOs enabled shows in bits 6-7.
            2 => 0x01 | if self.fifo_enabled { 0xc0 } else { 0 },
            3 => self.line_control,
            4 => self.modem_control,
            // Transmitter holding register and shift register empty.
            5 => 0x60,
            // Loopback echoes the modem control outputs; else CTS, DSR, DCD.
            6 if self.modem_control & 0x10 != 0 => (self.modem_control & 0x0f) << 4,
            6 => 0xb0,
            7 => self.scratch,
            _ => 0xff,
        }
    }

    /// A write of `value` to register `offset`; returns a finished line of output.
    pub fn write(&mut self, offset: u16, value: u8) -> Option<String> {
        match offset {
            0 if self.dlab() => self.divisor = (self.divisor & 0xff00) | u16::from(value),
            0 => return self.transmit(value),
            1 if self.dlab() => self.divisor = (self.divisor & 0x00ff) | u16::from(value) << 8,
            1 => self.interrupt_enable = value & 0x0f,
            2 => self.fifo_enabled = value & 1 != 0,
            3 => self.line_control = value,
            4 => self.modem_control = value & 0x1f,
            7 => self.scratch = value,
            _ => {}
        }
        None
    }

    fn transmit(&mut self, byte: u8) -> Option<String> {
        match byte {
            b'\n' => Some(core::mem::take(&mut self.line)),
            b'\r' => None,
            byte => {
                self.line.push(if byte.is_ascii_graphic() || byte == b' ' { char::from(byte) } else { '.' });
                (self.line.len() >= LINE_LIMIT).then(|| core::mem::take(&mut self.line))
            }
        }
    }

    /// Output not yet ended by a newline.
    pub fn pending(&mut self) -> Option<String> {
        (!self.line.is_empty()).then(|| core::mem::take(&mut self.line))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_come_out_whole_and_control_bytes_are_masked() {
        let mut uart = Uart::new();
        let mut lines = Vec::new();
        for &byte in b"hello\r\nworld\x07\n" {
            lines.extend(uart.write(0, byte));
        }
        assert_eq!(lines, ["hello", "world."]);
        assert_eq!(uart.pending(), None);
    }

    #[test]
    fn the_divisor_latch_hides_the_data_registers() {
        let mut uart = Uart::new();
        uart.write(3, 0x83);
        assert_eq!(uart.write(0, 0x0c), None, "a divisor byte is not output");
        uart.write(1, 0x00);
        assert_eq!(uart.read(0), 0x0c);
        uart.write(3, 0x03);
        assert_eq!(uart.read(1), 0, "IER, not the divisor");
        uart.write(7, 0x5a);
        assert_eq!(uart.read(7), 0x5a);
        assert_eq!(uart.read(5) & 0x60, 0x60);
        uart.write(2, 0x07);
        assert_eq!(uart.read(2), 0xc1);
    }
}
