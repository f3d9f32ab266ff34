//! System call numbers. The number goes in RAX; a capability pointer in RDI;
//! the message info word in RSI; message registers in RDX, R8, R9, R10, R12,
//! R13, R14, R15 and then the IPC buffer (see `docs/abi.md`).

/// A system call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u64)]
pub enum Syscall {
    /// Send to an endpoint or invoke an object and wait for the reply.
    Call = 1,
    /// Reply to the last caller, then wait on an endpoint.
    ReplyRecv = 2,
    /// Send to an endpoint, blocking until a receiver takes the message.
    Send = 3,
    /// Send to an endpoint if a receiver is waiting; otherwise drop the message.
    NbSend = 4,
    /// Wait for a message on an endpoint or a signal on a notification.
    Recv = 5,
    /// Take a waiting message or signal if there is one; never block.
    NbRecv = 6,
    /// Reply to the last caller.
    Reply = 7,
    /// Give up the rest of the time slice to threads of the same priority.
    Yield = 8,
    /// Run the VCPU bound to this thread until a VM exit user space must see.
    VmEnter = 9,
    /// Debug builds: write one byte to the kernel console.
    DebugPutChar = 100,
    /// Test builds: end the run with the exit code in RDI (an
    /// `abi::exit::ExitCode` value).
    DebugShutdown = 101,
    /// Test builds: read the kernel's event counters (CR3 writes, FPU
    /// saves, FPU restores) into message registers 0–2, for benchmarks.
    DebugCounters = 102,
}

impl TryFrom<u64> for Syscall {
    type Error = u64;

    fn try_from(value: u64) -> Result<Self, u64> {
        Ok(match value {
            1 => Self::Call,
            2 => Self::ReplyRecv,
            3 => Self::Send,
            4 => Self::NbSend,
            5 => Self::Recv,
            6 => Self::NbRecv,
            7 => Self::Reply,
            8 => Self::Yield,
            9 => Self::VmEnter,
            100 => Self::DebugPutChar,
            101 => Self::DebugShutdown,
            102 => Self::DebugCounters,
            other => return Err(other),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_round_trip_and_unknown_numbers_are_refused() {
        for n in 0..200u64 {
            if let Ok(syscall) = Syscall::try_from(n) {
                assert_eq!(syscall as u64, n);
            }
        }
        assert_eq!(Syscall::try_from(0), Err(0));
        assert_eq!(Syscall::try_from(u64::MAX), Err(u64::MAX));
        assert_eq!(Syscall::try_from(9), Ok(Syscall::VmEnter));
    }
}
