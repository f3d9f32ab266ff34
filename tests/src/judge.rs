//! Judging a run from its serial log.

use std::fmt;
use std::time::Duration;

use strata_abi::ktest::{Record, parse_line};

/// Checks a detail string; the error says what is wrong with it.
pub type CheckFn = Box<dyn Fn(&str) -> Result<(), String>>;

/// A check of the detail text a case reported (e.g. a figure the harness
/// configured and the image measured).
pub struct DetailCheck {
    /// Case whose detail is checked.
    pub case: String,
    /// Returns why the detail is wrong, if it is.
    pub check: CheckFn,
}

impl DetailCheck {
    /// Checks that field `key=value` of `case`'s detail satisfies `accept`.
    pub fn field(
        case: &str,
        key: &'static str,
        accept: impl Fn(&str) -> Result<(), String> + 'static,
    ) -> Self {
        Self {
            case: case.to_owned(),
            check: Box::new(move |detail| {
                let value = field(detail, key).ok_or_else(|| format!("no `{key}=` in \"{detail}\""))?;
                accept(value).map_err(|why| format!("{key}={value}: {why}"))
            }),
        }
    }
}

/// The value of `key=value` in a detail string.
pub fn field<'a>(detail: &'a str, key: &str) -> Option<&'a str> {
    detail.split_whitespace().find_map(|word| word.strip_prefix(key)?.strip_prefix('='))
}

/// What a run must show to pass.
#[derive(Default)]
pub struct Expectation {
    /// Cases that must each report `pass`.
    pub cases: Vec<String>,
    /// Checks of reported details.
    pub checks: Vec<DetailCheck>,
    /// The process status that means success (QEMU's debug-exit status);
    /// `None` where the status carries no verdict (Bochs).
    pub success_status: Option<i32>,
}

/// How the emulator process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// It exited with this status.
    Status(i32),
    /// It was killed by a signal (not by the harness).
    Signal,
    /// The harness killed it after this long.
    TimedOut(Duration),
}

/// A finished run: its serial log and how it ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Everything the image wrote to COM1.
    pub serial: String,
    /// How the emulator ended.
    pub exit: Exit,
    /// Emulator diagnostics (stderr, log file tail), shown on failure.
    pub diagnostics: String,
}

/// The judgement of one run.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Cases that passed.
    pub passed: Vec<String>,
    /// Cases that failed, with the reason.
    pub failed: Vec<(String, String)>,
    /// Why the run as a whole failed, if it did.
    pub run_failure: Option<String>,
}

impl Verdict {
    /// Whether everything passed.
    pub fn is_pass(&self) -> bool {
        self.failed.is_empty() && self.run_failure.is_none()
    }

    /// Failures counted for the summary: failed cases, plus one for a run
    /// failure (a crash with every case already reported is still a failure).
    pub fn failure_count(&self) -> usize {
        self.failed.len() + usize::from(self.run_failure.is_some())
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (case, reason) in &self.failed {
            writeln!(f, "  FAIL {case}: {reason}")?;
        }
        if let Some(reason) = &self.run_failure {
            writeln!(f, "  FAIL run: {reason}")?;
        }
        Ok(())
    }
}

/// Judges `outcome` against `expectation`.
pub fn judge(expectation: &Expectation, outcome: &Outcome) -> Verdict {
    let mut verdict = Verdict::default();
    let mut seen: Vec<String> = Vec::new();
    let mut summary = None;
    let mut fatal = None;
    for line in outcome.serial.lines() {
        match parse_line(line) {
            Some(Record::Pass { case, detail }) => {
                seen.push(case.to_owned());
                let failures: Vec<String> = expectation
                    .checks
                    .iter()
                    .filter(|c| c.case == case)
                    .filter_map(|c| (c.check)(detail).err())
                    .collect();
                if failures.is_empty() {
                    verdict.passed.push(case.to_owned());
                } else {
                    verdict
                        .failed
                        .push((case.to_owned(), format!("reported pass, but {}", failures.join("; "))));
                }
            }
            Some(Record::Fail { case, detail }) => {
                seen.push(case.to_owned());
                verdict.failed.push((case.to_owned(), detail.to_owned()));
            }
            // Several suites may run in one image: their summaries add up.
            Some(Record::Done { passed, failed }) => {
                let (p, f) = summary.unwrap_or((0, 0));
                summary = Some((p + passed, f + failed));
            }
            Some(Record::Fatal { message }) if fatal.is_none() => fatal = Some(message.to_owned()),
            _ => {}
        }
    }
    for case in &expectation.cases {
        if !seen.contains(case) {
            verdict.failed.push((case.clone(), "not reported".to_owned()));
        }
    }

    let reported_pass = seen.len() - verdict.failed.iter().filter(|(c, _)| seen.contains(c)).count();
    let reported_fail = seen.len() - reported_pass;
    verdict.run_failure = if let Some(message) = fatal {
        Some(format!("fatal: {message}"))
    } else if let Exit::TimedOut(after) = outcome.exit {
        Some(format!("timed out after {} s", after.as_secs()))
    } else if outcome.exit == Exit::Signal {
        Some("the emulator was killed by a signal".to_owned())
    } else if let Some((passed, failed)) = summary {
        // Count what the image reported (before harness checks) against its own summary.
        let harness_rejected = verdict.failed.iter().filter(|(_, r)| r.starts_with("reported pass")).count();
        let image_pass = reported_pass + harness_rejected;
        let image_fail = reported_fail - harness_rejected;
        if (passed as usize, failed as usize) != (image_pass, image_fail) {
            Some(format!(
                "the image's summary says {passed} passed, {failed} failed, but it reported {image_pass} passed, {image_fail} failed"
            ))
        } else {
            status_failure(expectation, outcome)
        }
    } else {
        Some("no `KTEST done` summary: the image stopped before finishing its tests".to_owned())
    };
    verdict
}

fn status_failure(expectation: &Expectation, outcome: &Outcome) -> Option<String> {
    match (expectation.success_status, &outcome.exit) {
        (Some(expected), Exit::Status(status)) if *status != expected => {
            Some(format!("exit status {status}, expected {expected} (the image's success exit)"))
        }
        _ => None,
    }
}

/// The last `lines` lines of `text`, for failure reports.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expectation() -> Expectation {
        Expectation {
            cases: vec!["boot.a".into(), "boot.b".into()],
            checks: vec![DetailCheck::field("boot.b", "token", |v| {
                if v == "xyz" { Ok(()) } else { Err("wrong token".into()) }
            })],
            success_status: Some(33),
        }
    }

    fn outcome(serial: &str, exit: Exit) -> Outcome {
        Outcome { serial: serial.into(), exit, diagnostics: String::new() }
    }

    const GOOD: &str = "[INFO ] strata\nKTEST suite boot\nKTEST pass boot.a\nKTEST pass boot.b token=xyz\nKTEST done passed=2 failed=0\n";

    #[test]
    fn a_clean_run_passes() {
        let verdict = judge(&expectation(), &outcome(GOOD, Exit::Status(33)));
        assert!(verdict.is_pass(), "{verdict}");
        assert_eq!(verdict.passed, ["boot.a", "boot.b"]);
        assert_eq!(verdict.failure_count(), 0);
    }

    #[test]
    fn a_failed_case_fails_the_run() {
        let log = GOOD
            .replace("KTEST pass boot.a", "KTEST fail boot.a broke")
            .replace("passed=2 failed=0", "passed=1 failed=1");
        let verdict = judge(&expectation(), &outcome(&log, Exit::Status(35)));
        assert_eq!(verdict.failed, [("boot.a".to_owned(), "broke".to_owned())]);
        assert!(verdict.run_failure.as_deref().is_some_and(|r| r.contains("exit status 35")));
        assert_eq!(verdict.failure_count(), 2);
    }

    #[test]
    fn a_missing_case_fails_even_if_the_summary_is_happy() {
        let log = "KTEST pass boot.a\nKTEST done passed=1 failed=0\n";
        let verdict = judge(&expectation(), &outcome(log, Exit::Status(33)));
        assert_eq!(verdict.failed, [("boot.b".to_owned(), "not reported".to_owned())]);
    }

    #[test]
    fn harness_checks_overrule_a_reported_pass() {
        let log = GOOD.replace("token=xyz", "token=abc");
        let verdict = judge(&expectation(), &outcome(&log, Exit::Status(33)));
        assert!(!verdict.is_pass());
        assert!(verdict.failed[0].1.contains("wrong token"), "{verdict}");
        // The image's own summary still matches what it printed.
        assert_eq!(verdict.run_failure, None);
    }

    #[test]
    fn fatal_markers_timeouts_and_missing_summaries_fail_the_run() {
        let panic = format!("{GOOD}KERNEL PANIC: boom\n");
        assert!(
            judge(&expectation(), &outcome(&panic, Exit::Status(33)))
                .run_failure
                .is_some_and(|r| r.contains("boom"))
        );
        let timeout = judge(&expectation(), &outcome(GOOD, Exit::TimedOut(Duration::from_secs(9))));
        assert_eq!(timeout.run_failure.as_deref(), Some("timed out after 9 s"));
        let truncated = GOOD.replace("KTEST done passed=2 failed=0\n", "");
        assert!(
            judge(&expectation(), &outcome(&truncated, Exit::Status(33)))
                .run_failure
                .is_some_and(|r| r.contains("summary"))
        );
        let signal = judge(&expectation(), &outcome(GOOD, Exit::Signal));
        assert!(!signal.is_pass());
    }

    #[test]
    fn a_lying_summary_fails_the_run() {
        let log = GOOD.replace("passed=2", "passed=3");
        let verdict = judge(&expectation(), &outcome(&log, Exit::Status(33)));
        assert!(verdict.run_failure.is_some_and(|r| r.contains("says 3 passed")));
    }

    #[test]
    fn status_is_ignored_where_it_carries_no_verdict() {
        let mut bochs = expectation();
        bochs.success_status = None;
        assert!(judge(&bochs, &outcome(GOOD, Exit::Status(1))).is_pass());
    }

    #[test]
    fn fields_are_found_by_key() {
        assert_eq!(field("a=1 usable_kib=2048 b=", "usable_kib"), Some("2048"));
        assert_eq!(field("a=1 b=", "b"), Some(""));
        assert_eq!(field("xa=1", "a"), None);
        assert_eq!(tail("1\n2\n3", 2), "2\n3");
    }
}
