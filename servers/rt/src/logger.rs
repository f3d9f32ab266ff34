//! A `log` backend: each record becomes one line, either on the kernel
//! console (`[name] LEVEL message`; the root task) or in the parent's log
//! (through the `parent` protocol; a child process, whose parent adds its
//! name). A line is formatted completely before it is sent, so lines of
//! different processes do not mix.

use core::fmt::Write;

use spin::Once;

use crate::parent;

/// Where log lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// The kernel console, each line prefixed with this name.
    Console(&'static str),
    /// The parent process (this is a child).
    Parent,
}

struct Logger {
    output: Output,
}

static LOGGER: Once<Logger> = Once::new();

/// Routes the `log` macros to `output` at `level` and above. Later calls
/// change nothing.
pub fn init(output: Output, level: log::LevelFilter) {
    let logger = LOGGER.call_once(|| Logger { output });
    if log::set_logger(logger).is_ok() {
        log::set_max_level(level);
    }
}

/// Where this task's lines go (the console with no name before [`init`]).
pub fn output() -> Output {
    LOGGER.get().map_or(Output::Console(""), |l| l.output)
}

/// Writes one finished line to `output`.
pub fn write_line(output: Output, line: &str) {
    match output {
        Output::Console("") => crate::debug::print_line(line),
        Output::Console(name) => {
            let mut text = heapless::String::<{ parent::MAX_LOG_BYTES + 40 }>::new();
            let _ = write!(text, "[{name}] {line}");
            crate::debug::print_line(&text);
        }
        Output::Parent => parent::log_line(line),
    }
}

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let mut line = heapless::String::<{ parent::MAX_LOG_BYTES }>::new();
        // A line too long for the buffer is cut short.
        let _ = write!(line, "{:<5} {}", record.level(), record.args());
        write_line(self.output, &line);
    }

    fn flush(&self) {}
}
