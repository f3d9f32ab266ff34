//! The protocol between a child process and its parent, over the child's
//! `PARENT` endpoint (a call; the parent knows the child by the badge):
//!
//! | label | words | reply |
//! |---|---|---|
//! | [`LOG`] | byte count, then the bytes of one line packed little-endian | empty |
//! | [`EXIT`] | the exit status | none: the parent ends the child |
//!
//! Faults reach the parent on the same endpoint through the child's
//! `FAULT_HANDLER` capability, whose badge has [`FAULT_BADGE`] set.

use strata_abi::bootinfo::slot;

use crate::ipc_call;

/// Label: print a line in the system log, prefixed with the child's name.
pub const LOG: u64 = 0x100;
/// Label: the child is done; the word is its exit status.
pub const EXIT: u64 = 0x101;
/// Reply label for a request the parent does not know.
pub const UNKNOWN_REQUEST: u64 = 0x1ff;
/// Badge bit of fault messages (set on the child's fault endpoint).
pub const FAULT_BADGE: u64 = 1 << 63;
/// Most bytes of one log message (119 words after the count).
pub const MAX_LOG_BYTES: usize = 119 * 8;

/// Packs up to [`MAX_LOG_BYTES`] of `text` into message words: the count,
/// then the bytes. Returns the words used.
pub fn pack(text: &[u8], words: &mut [u64; 120]) -> usize {
    let text = &text[..text.len().min(MAX_LOG_BYTES)];
    words[0] = text.len() as u64;
    for (word, chunk) in words[1..].iter_mut().zip(text.chunks(8)) {
        let mut bytes = [0u8; 8];
        bytes[..chunk.len()].copy_from_slice(chunk);
        *word = u64::from_le_bytes(bytes);
    }
    1 + text.len().div_ceil(8)
}

/// Unpacks a log message's words (as [`pack`] made them) into `out`;
/// returns the bytes (a bad count is clamped to the words present).
pub fn unpack<'a>(words: &[u64], out: &'a mut [u8; MAX_LOG_BYTES]) -> &'a [u8] {
    let Some((&count, rest)) = words.split_first() else { return &[] };
    let count = (count as usize).min(rest.len() * 8).min(MAX_LOG_BYTES);
    for (chunk, word) in out.chunks_mut(8).zip(rest) {
        chunk.copy_from_slice(&word.to_le_bytes()[..chunk.len()]);
    }
    &out[..count]
}

/// Sends one line to the parent's log (split if it is longer than a message).
pub fn log_line(text: &str) {
    let mut words = [0u64; 120];
    for chunk in text.as_bytes().chunks(MAX_LOG_BYTES) {
        let used = pack(chunk, &mut words);
        let _ = ipc_call(slot::PARENT, LOG, &words[..used]);
    }
}

/// Tells the parent this child is done, with `status`. The parent ends the
/// child, so this does not return.
pub fn exit(status: u64) -> ! {
    let _ = ipc_call(slot::PARENT, EXIT, &[status]);
    // A parent that answers instead: wait to be ended.
    loop {
        crate::yield_now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_round_trip_through_message_words() {
        let mut words = [0u64; 120];
        for text in [&b""[..], b"a", b"hello, world", &[b'x'; 2000][..]] {
            let used = pack(text, &mut words);
            let mut out = [0u8; MAX_LOG_BYTES];
            let back = unpack(&words[..used], &mut out);
            assert_eq!(back, &text[..text.len().min(MAX_LOG_BYTES)]);
        }
        // A lying count reads no further than the words that came.
        let mut out = [0u8; MAX_LOG_BYTES];
        assert_eq!(unpack(&[1000, u64::from_le_bytes(*b"abcdefgh")], &mut out), b"abcdefgh");
        assert_eq!(unpack(&[], &mut out), b"");
    }
}
