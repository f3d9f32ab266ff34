//! I/O ports through I/O-port capabilities.
//!
//! A driver holds an [`IoPorts`] for the ports of its device; each access
//! is one call into the kernel, which checks the port against the
//! capability's range. The root task makes such capabilities with
//! [`issue`] from the I/O-port control capability it starts with.

use strata_abi::bootinfo::slot;
use strata_abi::error::InvocationError;
use strata_abi::invocation::Label;

use crate::root::{DEPTH, fresh_slot};
use crate::{CPtr, call};

/// An I/O-port capability: the ports `first..=last` of some device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoPorts(pub CPtr);

/// Makes a capability for `first..=last` in a fresh root-CNode slot from
/// the I/O-port control capability. Fails with `RevokeFirst` if a port is
/// already issued and `InvalidArgument` if the kernel keeps one for itself.
pub fn issue(first: u16, last: u16) -> Result<IoPorts, InvocationError> {
    let destination = fresh_slot();
    let words = [u64::from(first), u64::from(last), destination, DEPTH];
    call(slot::IO_PORT_CONTROL, Label::IoPortControlIssue, &words, &[slot::CNODE])?;
    Ok(IoPorts(destination))
}

impl IoPorts {
    fn read(self, port: u16, width: u64) -> Result<u32, InvocationError> {
        call(self.0, Label::IoPortIn, &[u64::from(port), width], &[]).map(|reply| reply[0] as u32)
    }

    fn write(self, port: u16, width: u64, value: u32) -> Result<(), InvocationError> {
        call(self.0, Label::IoPortOut, &[u64::from(port), width, u64::from(value)], &[]).map(|_| ())
    }

    /// `IN AL, DX`.
    pub fn read_u8(self, port: u16) -> Result<u8, InvocationError> {
        self.read(port, 1).map(|v| v as u8)
    }

    /// `IN AX, DX`.
    pub fn read_u16(self, port: u16) -> Result<u16, InvocationError> {
        self.read(port, 2).map(|v| v as u16)
    }

    /// `IN EAX, DX`.
    pub fn read_u32(self, port: u16) -> Result<u32, InvocationError> {
        self.read(port, 4)
    }

    /// `OUT DX, AL`.
    pub fn write_u8(self, port: u16, value: u8) -> Result<(), InvocationError> {
        self.write(port, 1, u32::from(value))
    }

    /// `OUT DX, AX`.
    pub fn write_u16(self, port: u16, value: u16) -> Result<(), InvocationError> {
        self.write(port, 2, u32::from(value))
    }

    /// `OUT DX, EAX`.
    pub fn write_u32(self, port: u16, value: u32) -> Result<(), InvocationError> {
        self.write(port, 4, value)
    }
}
