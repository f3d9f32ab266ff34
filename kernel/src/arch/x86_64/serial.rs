//! The 16550 UART on COM1, the console of every strata image (serial output
//! is what the emulator test harness reads).
//!
//! Register layout: PC16550D data sheet, registers 0-7 from the base port.

use core::fmt;

use super::port;

/// Base port of COM1.
pub const COM1: u16 = 0x3f8;

const DATA: u16 = 0;
const INTERRUPT_ENABLE: u16 = 1;
const FIFO_CONTROL: u16 = 2;
const LINE_CONTROL: u16 = 3;
const MODEM_CONTROL: u16 = 4;
const LINE_STATUS: u16 = 5;
/// Line status: transmit holding register empty.
const THR_EMPTY: u8 = 1 << 5;
/// Line status: transmitter completely idle (holding and shift register empty).
const TRANSMITTER_EMPTY: u8 = 1 << 6;

/// A 16550 UART at a fixed port base. Stateless: any number of values may
/// name the same UART, which is what lets fault and panic paths print
/// without taking a lock.
#[derive(Debug, Clone, Copy)]
pub struct Uart16550 {
    base: u16,
}

impl Uart16550 {
    /// The UART at COM1.
    pub const fn com1() -> Self {
        Self { base: COM1 }
    }

    /// Programs 115200 baud, 8N1, FIFOs on, interrupts off. Bytes a
    /// previous owner (the loader) queued are sent first: resetting the
    /// FIFOs would drop them.
    pub fn init(&self) {
        self.flush();
        // SAFETY: COM1 is the kernel's console; nothing else drives it.
        unsafe {
            port::write_u8(self.base + INTERRUPT_ENABLE, 0);
            port::write_u8(self.base + LINE_CONTROL, 0x80); // divisor latch access
            port::write_u8(self.base + DATA, 1); // divisor 1: 115200 baud
            port::write_u8(self.base + INTERRUPT_ENABLE, 0);
            port::write_u8(self.base + LINE_CONTROL, 0x03); // 8 data bits, no parity, 1 stop
            port::write_u8(self.base + FIFO_CONTROL, 0xc7); // enable and clear FIFOs
            port::write_u8(self.base + MODEM_CONTROL, 0x03); // DTR, RTS
        }
    }

    /// Sends one byte, waiting for room in the transmitter.
    pub fn write_byte(&self, byte: u8) {
        // SAFETY: COM1 is the kernel's console; reading the line status has no side effects.
        unsafe {
            while port::read_u8(self.base + LINE_STATUS) & THR_EMPTY == 0 {
                core::hint::spin_loop();
            }
            port::write_u8(self.base + DATA, byte);
        }
    }

    /// Sends `bytes`, turning `\n` into `\r\n`.
    pub fn write_bytes(&self, bytes: &[u8]) {
        for &byte in bytes {
            if byte == b'\n' {
                self.write_byte(b'\r');
            }
            self.write_byte(byte);
        }
    }

    /// Waits until every byte has left the UART (emulators drop bytes still
    /// queued when the machine is shut down).
    pub fn flush(&self) {
        // SAFETY: reading the line status has no side effects.
        unsafe {
            while port::read_u8(self.base + LINE_STATUS) & TRANSMITTER_EMPTY == 0 {
                core::hint::spin_loop();
            }
        }
    }
}

impl fmt::Write for Uart16550 {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        self.write_bytes(text.as_bytes());
        Ok(())
    }
}
