//! The kernel console: COM1 behind a lock, and the `log` backend on it.
//!
//! Fault and panic paths do not use this: they write to a fresh
//! [`Uart16550`] value so they cannot deadlock on a lock the failing code held.

use core::fmt::Write;

use spin::Mutex;

use crate::arch::x86_64::serial::Uart16550;

static CONSOLE: Mutex<Uart16550> = Mutex::new(Uart16550::com1());

struct Logger;

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            let mut console = CONSOLE.lock();
            let _ = writeln!(console, "[{:<5}] {}", record.level(), record.args());
        }
    }

    fn flush(&self) {
        CONSOLE.lock().flush();
    }
}

static LOGGER: Logger = Logger;

/// Programs the UART and installs the logger at `level`.
pub fn init(level: log::LevelFilter) {
    CONSOLE.lock().init();
    // A second call (there is none) would keep the first logger.
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level);
}

/// Writes one byte to the console (the debug system call); `\n` becomes `\r\n`.
pub fn print_byte(byte: u8) {
    CONSOLE.lock().write_bytes(&[byte]);
}

/// Writes a line to the console regardless of the log level (test records).
pub fn print_line(args: core::fmt::Arguments<'_>) {
    let mut console = CONSOLE.lock();
    let _ = console.write_fmt(args);
    let _ = console.write_str("\n");
}
