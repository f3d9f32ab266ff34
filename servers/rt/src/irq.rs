//! Device interrupts through IRQ handler capabilities.
//!
//! A driver binds a notification to its [`IrqHandler`], waits on the
//! notification, services the device and then calls [`IrqHandler::ack`]:
//! the kernel masks the line on each interrupt until it is acknowledged.

use strata_abi::bootinfo::slot;
use strata_abi::error::InvocationError;
use strata_abi::invocation::Label;

use crate::root::{DEPTH, fresh_slot};
use crate::{CPtr, call};

/// An IRQ handler capability: one I/O APIC line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IrqHandler(pub CPtr);

/// A handler for ISA IRQ `irq` (0–15), routed as the firmware's MADT says,
/// in a fresh root-CNode slot. `RevokeFirst` if the line has a handler.
pub fn isa(irq: u8) -> Result<IrqHandler, InvocationError> {
    let destination = fresh_slot();
    call(slot::IRQ_CONTROL, Label::IrqControlGetIsa, &[u64::from(irq), destination, DEPTH], &[slot::CNODE])?;
    Ok(IrqHandler(destination))
}

/// A handler for I/O APIC line `line` with the given trigger mode and
/// polarity (a PCI line: level-triggered, active low).
pub fn line(line: u8, level: bool, active_low: bool) -> Result<IrqHandler, InvocationError> {
    let destination = fresh_slot();
    let words = [u64::from(line), u64::from(level), u64::from(active_low), destination, DEPTH];
    call(slot::IRQ_CONTROL, Label::IrqControlGetLine, &words, &[slot::CNODE])?;
    Ok(IrqHandler(destination))
}

impl IrqHandler {
    /// Interrupts on the line signal `notification` with its badge.
    pub fn set_notification(self, notification: CPtr) -> Result<(), InvocationError> {
        call(self.0, Label::IrqHandlerSetNotification, &[], &[notification]).map(|_| ())
    }

    /// Unbinds the notification.
    pub fn clear(self) -> Result<(), InvocationError> {
        call(self.0, Label::IrqHandlerClear, &[], &[]).map(|_| ())
    }

    /// Unmasks the line after the device has been serviced.
    pub fn ack(self) -> Result<(), InvocationError> {
        call(self.0, Label::IrqHandlerAck, &[], &[]).map(|_| ())
    }
}
