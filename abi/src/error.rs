//! Errors an invocation returns. In Rust they are enums with data; at the
//! ABI boundary an error is its [`InvocationError::code`] in the reply's
//! label and up to four data words in its message registers.

use core::fmt;

/// Why a capability lookup failed (the part of the CSpace walk that broke).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LookupFailure {
    /// The root capability is not a CNode.
    InvalidRoot,
    /// The walk reached an empty slot, or a non-CNode capability with bits left.
    MissingCapability {
        /// Address bits not yet resolved.
        bits_left: u8,
    },
    /// A CNode needed more bits than the walk had left.
    DepthMismatch {
        /// Address bits not yet resolved.
        bits_left: u8,
        /// Bits the CNode at that level needs (guard plus radix).
        bits_found: u8,
    },
    /// A CNode's guard did not match the address.
    GuardMismatch {
        /// Address bits not yet resolved.
        bits_left: u8,
        /// The CNode's guard.
        guard_found: u64,
        /// The CNode's guard size in bits.
        guard_size: u8,
    },
}

/// Why an invocation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvocationError {
    /// Argument `index` has a value the invocation cannot take.
    InvalidArgument {
        /// Index of the argument (message register).
        index: u8,
    },
    /// Capability `index` (0: the invoked capability; 1..: extra capabilities)
    /// is of the wrong type or lacks a right the invocation needs.
    InvalidCapability {
        /// Index of the capability.
        index: u8,
    },
    /// The object cannot do this, or not in its present state.
    IllegalOperation,
    /// A value lies outside `min..=max`.
    RangeError {
        /// Smallest value accepted.
        min: u64,
        /// Largest value accepted.
        max: u64,
    },
    /// An address or size is not suitably aligned.
    AlignmentError,
    /// Looking up a capability or slot failed.
    FailedLookup {
        /// Whether the failing lookup was of the source (as opposed to the destination).
        source: bool,
        /// Where the walk broke.
        failure: LookupFailure,
    },
    /// The message has fewer words than the invocation needs.
    TruncatedMessage {
        /// Words the invocation needs.
        needed: u8,
    },
    /// The destination slot is not empty.
    DeleteFirst,
    /// The capability has children in the derivation tree; revoke it first.
    RevokeFirst,
    /// The Untyped has fewer free bytes than the retype needs.
    NotEnoughMemory {
        /// Bytes free.
        available: u64,
    },
}

impl InvocationError {
    /// The error's code at the ABI boundary (never 0, which means success).
    pub const fn code(&self) -> u64 {
        match self {
            Self::InvalidArgument { .. } => 1,
            Self::InvalidCapability { .. } => 2,
            Self::IllegalOperation => 3,
            Self::RangeError { .. } => 4,
            Self::AlignmentError => 5,
            Self::FailedLookup { .. } => 6,
            Self::TruncatedMessage { .. } => 7,
            Self::DeleteFirst => 8,
            Self::RevokeFirst => 9,
            Self::NotEnoughMemory { .. } => 10,
        }
    }

    /// The error's data words at the ABI boundary.
    pub const fn words(&self) -> [u64; 4] {
        match *self {
            Self::InvalidArgument { index } | Self::InvalidCapability { index } => [index as u64, 0, 0, 0],
            Self::RangeError { min, max } => [min, max, 0, 0],
            Self::TruncatedMessage { needed } => [needed as u64, 0, 0, 0],
            Self::NotEnoughMemory { available } => [available, 0, 0, 0],
            Self::FailedLookup { source, failure } => {
                let source = source as u64;
                match failure {
                    LookupFailure::InvalidRoot => [source, 1, 0, 0],
                    LookupFailure::MissingCapability { bits_left } => [source, 2, bits_left as u64, 0],
                    LookupFailure::DepthMismatch { bits_left, bits_found } => {
                        [source, 3, bits_left as u64, bits_found as u64]
                    }
                    LookupFailure::GuardMismatch { bits_left, guard_found, guard_size } => {
                        [source, 4 | (guard_size as u64) << 8 | (bits_left as u64) << 16, guard_found, 0]
                    }
                }
            }
            Self::IllegalOperation | Self::AlignmentError | Self::DeleteFirst | Self::RevokeFirst => [0; 4],
        }
    }

    /// Decodes an error from its code and data words, as user space receives them.
    pub fn decode(code: u64, words: [u64; 4]) -> Option<Self> {
        let byte = |w: u64| u8::try_from(w).ok();
        Some(match code {
            1 => Self::InvalidArgument { index: byte(words[0])? },
            2 => Self::InvalidCapability { index: byte(words[0])? },
            3 => Self::IllegalOperation,
            4 => Self::RangeError { min: words[0], max: words[1] },
            5 => Self::AlignmentError,
            6 => {
                let source = match words[0] {
                    0 => false,
                    1 => true,
                    _ => return None,
                };
                let failure = match words[1] & 0xff {
                    1 => LookupFailure::InvalidRoot,
                    2 => LookupFailure::MissingCapability { bits_left: byte(words[2])? },
                    3 => LookupFailure::DepthMismatch {
                        bits_left: byte(words[2])?,
                        bits_found: byte(words[3])?,
                    },
                    4 => LookupFailure::GuardMismatch {
                        bits_left: byte(words[1] >> 16)?,
                        guard_found: words[2],
                        guard_size: ((words[1] >> 8) & 0xff) as u8,
                    },
                    _ => return None,
                };
                Self::FailedLookup { source, failure }
            }
            7 => Self::TruncatedMessage { needed: byte(words[0])? },
            8 => Self::DeleteFirst,
            9 => Self::RevokeFirst,
            10 => Self::NotEnoughMemory { available: words[0] },
            _ => return None,
        })
    }
}

impl fmt::Display for LookupFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidRoot => write!(f, "the CSpace root is not a CNode"),
            Self::MissingCapability { bits_left } => {
                write!(f, "no capability where the address resolved ({bits_left} bits left)")
            }
            Self::DepthMismatch { bits_left, bits_found } => {
                write!(f, "a CNode needs {bits_found} bits but only {bits_left} were left")
            }
            Self::GuardMismatch { bits_left, guard_found, guard_size } => write!(
                f,
                "guard mismatch with {bits_left} bits left: the CNode's {guard_size}-bit guard is {guard_found:#x}"
            ),
        }
    }
}

impl fmt::Display for InvocationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidArgument { index } => write!(f, "argument {index} is invalid"),
            Self::InvalidCapability { index } => {
                write!(f, "capability {index} is of the wrong type or lacks a needed right")
            }
            Self::IllegalOperation => write!(f, "operation not allowed on this object now"),
            Self::RangeError { min, max } => write!(f, "value out of range {min}..={max}"),
            Self::AlignmentError => write!(f, "misaligned address or size"),
            Self::FailedLookup { source, failure } => {
                write!(f, "{} lookup failed: {failure}", if *source { "source" } else { "destination" })
            }
            Self::TruncatedMessage { needed } => {
                write!(f, "message too short: {needed} words needed")
            }
            Self::DeleteFirst => write!(f, "the destination slot is not empty"),
            Self::RevokeFirst => write!(f, "the capability has children; revoke it first"),
            Self::NotEnoughMemory { available } => {
                write!(f, "not enough memory: {available} bytes free")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn any_lookup() -> impl Strategy<Value = LookupFailure> {
        prop_oneof![
            Just(LookupFailure::InvalidRoot),
            any::<u8>().prop_map(|bits_left| LookupFailure::MissingCapability { bits_left }),
            (any::<u8>(), any::<u8>()).prop_map(|(bits_left, bits_found)| {
                LookupFailure::DepthMismatch { bits_left, bits_found }
            }),
            (any::<u8>(), any::<u64>(), any::<u8>()).prop_map(|(bits_left, guard_found, guard_size)| {
                LookupFailure::GuardMismatch { bits_left, guard_found, guard_size }
            }),
        ]
    }

    fn any_error() -> impl Strategy<Value = InvocationError> {
        prop_oneof![
            any::<u8>().prop_map(|index| InvocationError::InvalidArgument { index }),
            any::<u8>().prop_map(|index| InvocationError::InvalidCapability { index }),
            Just(InvocationError::IllegalOperation),
            (any::<u64>(), any::<u64>()).prop_map(|(min, max)| InvocationError::RangeError { min, max }),
            Just(InvocationError::AlignmentError),
            (any::<bool>(), any_lookup())
                .prop_map(|(source, failure)| InvocationError::FailedLookup { source, failure }),
            any::<u8>().prop_map(|needed| InvocationError::TruncatedMessage { needed }),
            Just(InvocationError::DeleteFirst),
            Just(InvocationError::RevokeFirst),
            any::<u64>().prop_map(|available| InvocationError::NotEnoughMemory { available }),
        ]
    }

    proptest! {
        #[test]
        fn errors_round_trip_through_the_abi(error in any_error()) {
            prop_assert_ne!(error.code(), 0);
            prop_assert_eq!(InvocationError::decode(error.code(), error.words()), Some(error));
        }

        #[test]
        fn decoding_arbitrary_words_never_panics(code in 0u64..16, words in any::<[u64; 4]>()) {
            if let Some(error) = InvocationError::decode(code, words) {
                prop_assert_eq!(error.code(), code);
            }
        }
    }
}
