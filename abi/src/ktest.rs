//! The line protocol in-emulator test suites report through.
//!
//! A test image prints its results on the serial console, one record per
//! line, mixed with ordinary log output:
//!
//! ```text
//! KTEST suite boot
//! KTEST pass boot.memory usable_kib=252928 regions=3
//! KTEST fail boot.timer expected 10 ticks, saw 0
//! KTEST done passed=5 failed=1
//! ```
//!
//! Fatal conditions are announced by lines starting with one of the
//! [`FATAL_MARKERS`]; the host harness treats any of them as a failed run
//! whatever else the log says. [`parse_line`] is the one parser of this
//! format; the kernel formats lines with the constants defined here.

/// First word of every test record.
pub const PREFIX: &str = "KTEST";
/// Printed by the kernel's panic handler before anything else.
pub const PANIC_MARKER: &str = "KERNEL PANIC";
/// Printed by the kernel's exception handler for a fatal exception.
pub const FAULT_MARKER: &str = "KERNEL FAULT";
/// Printed by the loader when it refuses a boot image.
pub const LOADER_ERROR_MARKER: &str = "strata-loader: error";
/// Every marker that makes a run fail on sight.
pub const FATAL_MARKERS: [&str; 3] = [PANIC_MARKER, FAULT_MARKER, LOADER_ERROR_MARKER];

/// One parsed line of test output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Record<'a> {
    /// A suite starts; its cases follow.
    Suite {
        /// Suite name, one word.
        name: &'a str,
    },
    /// A case passed.
    Pass {
        /// Case name, `suite.case`.
        case: &'a str,
        /// Measurements or notes, possibly empty.
        detail: &'a str,
    },
    /// A case failed.
    Fail {
        /// Case name, `suite.case`.
        case: &'a str,
        /// Why it failed, possibly empty.
        detail: &'a str,
    },
    /// The image finished running tests and reports its own counts.
    Done {
        /// Number of cases the image says passed.
        passed: u32,
        /// Number of cases the image says failed.
        failed: u32,
    },
    /// A fatal marker: the line from the marker on.
    Fatal {
        /// The line, starting at the marker.
        message: &'a str,
    },
}

/// Parses one line of serial output. Lines that are not test records return
/// `None`; so do records too malformed to mean anything (a harness counts
/// cases it expected and did not see, so a garbled line still fails a run).
pub fn parse_line(line: &str) -> Option<Record<'_>> {
    let line = line.trim_end_matches(['\r', '\n']);
    if let Some(position) = FATAL_MARKERS.iter().filter_map(|marker| line.find(marker)).min() {
        return Some(Record::Fatal { message: &line[position..] });
    }
    let rest = line.strip_prefix(PREFIX)?.strip_prefix(' ')?;
    let (verb, rest) = split_word(rest);
    match verb {
        "suite" => {
            let (name, _) = split_word(rest);
            (!name.is_empty()).then_some(Record::Suite { name })
        }
        "pass" | "fail" => {
            let (case, detail) = split_word(rest);
            if case.is_empty() {
                return None;
            }
            Some(if verb == "pass" { Record::Pass { case, detail } } else { Record::Fail { case, detail } })
        }
        "done" => {
            let mut passed = None;
            let mut failed = None;
            for field in rest.split_whitespace() {
                match field.split_once('=') {
                    Some(("passed", n)) => passed = n.parse().ok(),
                    Some(("failed", n)) => failed = n.parse().ok(),
                    _ => return None,
                }
            }
            Some(Record::Done { passed: passed?, failed: failed? })
        }
        _ => None,
    }
}

fn split_word(text: &str) -> (&str, &str) {
    let text = text.trim_start();
    match text.split_once(char::is_whitespace) {
        Some((word, rest)) => (word, rest.trim()),
        None => (text, ""),
    }
}

/// Name of the boot module test images carry to check module hand-over.
pub const PATTERN_MODULE: &str = "ktest-pattern";
/// Its length: deliberately not a multiple of the page size.
pub const PATTERN_LEN: usize = 12_345;

/// Byte `index` of the pattern module.
pub const fn pattern_byte(index: usize) -> u8 {
    ((index * 31 + 7) % 251) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_record_kind() {
        assert_eq!(parse_line("KTEST suite boot\r\n"), Some(Record::Suite { name: "boot" }));
        assert_eq!(
            parse_line("KTEST pass boot.memory usable_kib=4 regions=1"),
            Some(Record::Pass { case: "boot.memory", detail: "usable_kib=4 regions=1" })
        );
        assert_eq!(
            parse_line("KTEST fail boot.timer"),
            Some(Record::Fail { case: "boot.timer", detail: "" })
        );
        assert_eq!(parse_line("KTEST done passed=7 failed=2"), Some(Record::Done { passed: 7, failed: 2 }));
    }

    #[test]
    fn fatal_markers_win_anywhere_on_the_line() {
        assert_eq!(
            parse_line("[0.1] KERNEL PANIC at kernel/src/main.rs:3: boom"),
            Some(Record::Fatal { message: "KERNEL PANIC at kernel/src/main.rs:3: boom" })
        );
        assert_eq!(parse_line("KTEST pass x KERNEL FAULT"), Some(Record::Fatal { message: "KERNEL FAULT" }));
    }

    #[test]
    fn rejects_malformed_records() {
        for line in [
            "KTEST",
            "KTEST ",
            "KTESTpass a",
            "KTEST pass",
            "KTEST bogus a",
            "KTEST done passed=1",
            "KTEST done passed=x failed=0",
            "KTEST done passed=1 failed=0 extra",
            "ktest pass a",
            "ordinary log line",
        ] {
            assert_eq!(parse_line(line), None, "{line:?}");
        }
    }
}
