//! The message info word that accompanies every IPC and invocation
//! (the same packing as seL4's `seL4_MessageInfo`).
//!
//! | bits | field |
//! |---|---|
//! | 0..7 | `length`: message words (0..=[`MAX_LENGTH`]) |
//! | 7..9 | `extra_caps`: capabilities sent (0..=[`MAX_EXTRA_CAPS`]) |
//! | 9..12 | `caps_unwrapped`: bit i set if extra cap i arrived as its badge |
//! | 12..64 | `label`: invocation label, or error code in a reply |

/// Most message words in one message.
pub const MAX_LENGTH: u64 = 120;
/// Most capabilities transferred with one message.
pub const MAX_EXTRA_CAPS: u64 = 3;
/// Message words passed in registers; the rest are in the IPC buffer.
pub const REGISTER_WORDS: usize = 8;

/// A decoded message info word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MessageInfo {
    /// Invocation label or reply code (52 bits).
    pub label: u64,
    /// Which transferred capabilities were unwrapped to badges (3 bits).
    pub caps_unwrapped: u8,
    /// Number of capabilities transferred.
    pub extra_caps: u8,
    /// Number of message words.
    pub length: u8,
}

/// A message info field that does not fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageInfoError {
    /// `length` above [`MAX_LENGTH`].
    Length,
    /// `extra_caps` above [`MAX_EXTRA_CAPS`].
    ExtraCaps,
    /// `label` wider than 52 bits.
    Label,
}

impl MessageInfo {
    /// A message info for an invocation or message.
    pub const fn new(label: u64, extra_caps: u8, length: u8) -> Self {
        Self { label, caps_unwrapped: 0, extra_caps, length }
    }

    /// Packs into a word, checking every field.
    pub fn encode(&self) -> Result<u64, MessageInfoError> {
        if u64::from(self.length) > MAX_LENGTH {
            return Err(MessageInfoError::Length);
        }
        if u64::from(self.extra_caps) > MAX_EXTRA_CAPS {
            return Err(MessageInfoError::ExtraCaps);
        }
        if self.label >> 52 != 0 {
            return Err(MessageInfoError::Label);
        }
        Ok(self.label << 12
            | u64::from(self.caps_unwrapped & 0x7) << 9
            | u64::from(self.extra_caps) << 7
            | u64::from(self.length))
    }

    /// Unpacks a word from user space. Out-of-range counts are clamped, as
    /// the kernel must accept any register value without failing the call.
    pub const fn decode(word: u64) -> Self {
        let length = (word & 0x7f) as u8;
        let extra_caps = ((word >> 7) & 0x3) as u8;
        Self {
            label: word >> 12,
            caps_unwrapped: ((word >> 9) & 0x7) as u8,
            extra_caps: if extra_caps as u64 > MAX_EXTRA_CAPS { MAX_EXTRA_CAPS as u8 } else { extra_caps },
            length: if length as u64 > MAX_LENGTH { MAX_LENGTH as u8 } else { length },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn valid_infos_round_trip(label in 0u64..1 << 52, unwrapped in 0u8..8, caps in 0u8..=3, length in 0u8..=120) {
            let info = MessageInfo { label, caps_unwrapped: unwrapped, extra_caps: caps, length };
            prop_assert_eq!(MessageInfo::decode(info.encode().expect("fits")), info);
        }

        #[test]
        fn any_word_decodes_within_limits(word in any::<u64>()) {
            let info = MessageInfo::decode(word);
            prop_assert!(u64::from(info.length) <= MAX_LENGTH);
            prop_assert!(u64::from(info.extra_caps) <= MAX_EXTRA_CAPS);
            prop_assert!(info.encode().is_ok());
        }
    }

    #[test]
    fn oversized_fields_are_refused() {
        assert_eq!(MessageInfo::new(0, 0, 121).encode(), Err(MessageInfoError::Length));
        assert_eq!(MessageInfo::new(1 << 52, 0, 0).encode(), Err(MessageInfoError::Label));
        assert_eq!(
            MessageInfo { extra_caps: 4, ..Default::default() }.encode(),
            Err(MessageInfoError::ExtraCaps)
        );
        assert_eq!(MessageInfo::decode(127).length, 120);
    }
}
