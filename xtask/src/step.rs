//! Progress lines and running external commands with clear failures.

use std::fmt;
use std::process::Command;
use std::time::Instant;

/// An error with a message meant for the person at the terminal.
#[derive(Debug)]
pub struct Error(pub String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<std::io::Error> for Error {
    fn from(error: std::io::Error) -> Self {
        Self(error.to_string())
    }
}

/// Result of an xtask step.
pub type Result<T = ()> = std::result::Result<T, Error>;

/// Builds an [`Error`] from format arguments.
#[macro_export]
macro_rules! fail {
    ($($arg:tt)*) => { $crate::step::Error(format!($($arg)*)) };
}

/// Prints the start of a long step and returns a timer for its end.
pub fn begin(what: impl fmt::Display) -> Instant {
    println!("==> {what}");
    Instant::now()
}

/// Prints how long a step took.
pub fn end(started: Instant, what: impl fmt::Display) {
    println!("    {what} ({:.1} s)", started.elapsed().as_secs_f64());
}

/// Runs `command` with inherited output; a failure names the command.
pub fn run(command: &mut Command) -> Result {
    let status =
        command.status().map_err(|error| fail!("cannot run {:?}: {error}", command.get_program()))?;
    if status.success() { Ok(()) } else { Err(fail!("{} failed ({status})", describe(command))) }
}

/// `program arg arg ...` for messages.
pub fn describe(command: &Command) -> String {
    std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|part| part.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}
