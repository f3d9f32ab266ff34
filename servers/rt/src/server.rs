//! The server loop: receive a request, handle it, reply and wait for the
//! next one in a single `ReplyRecv` (the kernel's fastpath case).

use crate::{CPtr, Message, recv, reply_recv, sys};

/// A request as received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// The badge of the capability the sender used (who it is).
    pub badge: u64,
    /// The label (what it asks).
    pub label: u64,
    /// How many words came.
    pub length: usize,
    registers: [u64; 8],
}

impl From<Message> for Request {
    fn from(message: Message) -> Self {
        Self {
            badge: message.badge,
            label: message.label,
            length: usize::from(message.length),
            registers: message.words,
        }
    }
}

impl Request {
    /// Word `index` of the message (0 past its end). Words past the eighth
    /// come from the IPC buffer, so read them before the next IPC.
    pub fn word(&self, index: usize) -> u64 {
        if index >= self.length {
            0
        } else if let Some(&word) = self.registers.get(index) {
            word
        } else {
            let mut word = [0];
            sys::message_words(index, &mut word);
            word[0]
        }
    }

    /// All words of the message, into `out` (as many as fit); returns them.
    pub fn words<'a>(&self, out: &'a mut [u64]) -> &'a [u64] {
        let length = self.length.min(out.len());
        let in_registers = length.min(8);
        out[..in_registers].copy_from_slice(&self.registers[..in_registers]);
        if length > 8 {
            sys::message_words(8, &mut out[8..length]);
        }
        &out[..length]
    }
}

/// What the handler wants done with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// Reply with this label and these words (at most eight).
    Reply {
        /// The reply's label (0: success).
        label: u64,
        /// The reply's words.
        words: heapless::Vec<u64, 8>,
    },
    /// Do not reply (the caller stays blocked, e.g. because it is being ended).
    NoReply,
}

impl Response {
    /// A reply with `label` and `words` (words past the eighth are dropped).
    pub fn reply(label: u64, words: &[u64]) -> Self {
        Self::Reply { label, words: words.iter().copied().take(8).collect() }
    }
}

/// Serves requests on `endpoint` for ever.
pub fn serve(endpoint: CPtr, mut handler: impl FnMut(Request) -> Response) -> ! {
    let mut message = recv(endpoint);
    loop {
        message = match handler(Request::from(message)) {
            Response::Reply { label, words } => reply_recv(endpoint, label, &words),
            Response::NoReply => recv(endpoint),
        };
    }
}
