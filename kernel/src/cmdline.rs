//! The kernel command line: whitespace-separated `key=value` words.
//!
//! | word | meaning |
//! |---|---|
//! | `log=LEVEL` | console log level: `off`, `error`, `warn`, `info` (default), `debug`, `trace` |
//! | `timer_hz=N` | scheduler tick rate, 10 to 10000 (default 100) |
//! | `ktest.fault=KIND` | self-test images only: fault deliberately (`page`, `invalid-opcode`, `panic`) |
//! | `ktest.token=WORD` | self-test images only: echoed back so the harness can check the command line arrived |
//!
//! Words the kernel does not know are reported and otherwise ignored (the
//! command line also carries options for user space); malformed values fall
//! back to the default with a warning, never a failure to boot.

use heapless::{String, Vec};

/// Default tick rate.
pub const DEFAULT_TIMER_HZ: u32 = 100;
/// Accepted tick rates.
pub const TIMER_HZ_RANGE: core::ops::RangeInclusive<u32> = 10..=10_000;

/// A deliberate fault a self-test image is asked to take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliberateFault {
    /// Write to an unmapped kernel address (#PF).
    PageFault,
    /// Execute `ud2` (#UD).
    InvalidOpcode,
    /// Call `panic!`.
    Panic,
}

/// A problem with one word of the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CmdlineWarning {
    /// A key the kernel does not know.
    UnknownKey(String<32>),
    /// A known key with a value it cannot take.
    BadValue {
        /// The key.
        key: &'static str,
        /// The value given (truncated).
        value: String<32>,
    },
}

/// The parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cmdline {
    /// Console log level.
    pub log_level: log::LevelFilter,
    /// Tick rate.
    pub timer_hz: u32,
    /// Self-test: fault deliberately.
    pub fault: Option<DeliberateFault>,
    /// Self-test: token to echo.
    pub token: Option<String<64>>,
    /// Problems found, to be logged once logging works.
    pub warnings: Vec<CmdlineWarning, 8>,
}

impl Default for Cmdline {
    fn default() -> Self {
        Self {
            log_level: log::LevelFilter::Info,
            timer_hz: DEFAULT_TIMER_HZ,
            fault: None,
            token: None,
            warnings: Vec::new(),
        }
    }
}

fn truncated<const N: usize>(text: &str) -> String<N> {
    let mut out = String::new();
    for c in text.chars() {
        if out.push(c).is_err() {
            break;
        }
    }
    out
}

/// Parses `text`; never fails (see the module documentation).
pub fn parse(text: &str) -> Cmdline {
    let mut cmdline = Cmdline::default();
    for word in text.split_ascii_whitespace() {
        let (key, value) = word.split_once('=').unwrap_or((word, ""));
        let mut bad = |key: &'static str| {
            let _ = cmdline.warnings.push(CmdlineWarning::BadValue { key, value: truncated(value) });
        };
        match key {
            "log" => match value.parse() {
                Ok(level) => cmdline.log_level = level,
                Err(_) => bad("log"),
            },
            "timer_hz" => match value.parse() {
                Ok(hz) if TIMER_HZ_RANGE.contains(&hz) => cmdline.timer_hz = hz,
                _ => bad("timer_hz"),
            },
            "ktest.fault" => match value {
                "page" => cmdline.fault = Some(DeliberateFault::PageFault),
                "invalid-opcode" => cmdline.fault = Some(DeliberateFault::InvalidOpcode),
                "panic" => cmdline.fault = Some(DeliberateFault::Panic),
                _ => bad("ktest.fault"),
            },
            "ktest.token" if !value.is_empty() && value.len() <= 64 => {
                cmdline.token = Some(truncated(value));
            }
            "ktest.token" => bad("ktest.token"),
            _ => {
                let _ = cmdline.warnings.push(CmdlineWarning::UnknownKey(truncated(key)));
            }
        }
    }
    cmdline
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_when_empty() {
        assert_eq!(parse(""), Cmdline::default());
        assert_eq!(parse("   \t "), Cmdline::default());
    }

    #[test]
    fn reads_every_known_key() {
        let c = parse("log=trace timer_hz=1000 ktest.fault=page ktest.token=abc123");
        assert_eq!(c.log_level, log::LevelFilter::Trace);
        assert_eq!(c.timer_hz, 1000);
        assert_eq!(c.fault, Some(DeliberateFault::PageFault));
        assert_eq!(c.token.as_deref(), Some("abc123"));
        assert!(c.warnings.is_empty());
        assert_eq!(parse("ktest.fault=panic").fault, Some(DeliberateFault::Panic));
        assert_eq!(parse("ktest.fault=invalid-opcode").fault, Some(DeliberateFault::InvalidOpcode));
    }

    #[test]
    fn bad_values_keep_defaults_and_warn() {
        let c = parse("log=loud timer_hz=5 timer_hz=abc ktest.fault=meltdown ktest.token= bogus=1 flag");
        assert_eq!(c.log_level, log::LevelFilter::Info);
        assert_eq!(c.timer_hz, DEFAULT_TIMER_HZ);
        assert_eq!(c.fault, None);
        assert_eq!(c.token, None);
        assert_eq!(c.warnings.len(), 7);
        assert_eq!(c.warnings[5], CmdlineWarning::UnknownKey(truncated("bogus")));
    }

    #[test]
    fn later_words_win_and_long_values_are_truncated_in_warnings() {
        assert_eq!(parse("log=debug log=warn").log_level, log::LevelFilter::Warn);
        let long = "x".repeat(100);
        let c = parse(&std::format!("log={long}"));
        match &c.warnings[0] {
            CmdlineWarning::BadValue { key: "log", value } => assert_eq!(value.len(), 32),
            other => panic!("unexpected {other:?}"),
        }
    }
}
