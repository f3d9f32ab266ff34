//! Device interrupts as capabilities (after seL4's `IRQControl` and
//! `IRQHandler`).
//!
//! The root task starts with the one IRQ control capability. From it, it
//! gets a handler capability for an I/O APIC line, named either by ISA IRQ
//! (0–15, routed as the MADT's interrupt source overrides say) or by global
//! system interrupt with an explicit trigger mode and polarity (PCI lines
//! are level-triggered, active low). A line has at most one handler at a
//! time (`RevokeFirst`); handler capabilities can be copied.
//!
//! The handler's owner binds a notification (and its badge) to the line.
//! When the line fires, the kernel masks it, sends the LAPIC EOI and
//! signals the notification; the line stays masked until the owner calls
//! `IrqHandlerAck`, after servicing the device (the scheme of seL4, and
//! the one that makes level-triggered lines safe). The LAPIC timer is the
//! kernel's and is not an I/O APIC line, so it can never be handed out.
//!
//! Deleting the last handler capability masks the line and frees it;
//! deleting the last capability to a bound notification unbinds it.

use strata_abi::error::InvocationError;
use strata_abi::invocation::Label;
use strata_abi::object::Rights;

use super::{Capability, ObjectSpace, PhysicalMemory, Slot};
use crate::addr::PhysAddr;

/// Most I/O APIC lines the kernel drives.
pub const MAX_LINES: usize = crate::arch::x86_64::ioapic::MAX_LINES as usize;

/// Where an ISA IRQ arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IsaRoute {
    /// The I/O APIC line.
    pub line: u8,
    /// Level-triggered (else edge).
    pub level: bool,
    /// Active low (else high).
    pub active_low: bool,
}

/// The state of one line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LineState {
    /// Whether a handler capability for the line exists.
    pub issued: bool,
    /// The bound notification and the badge it is signalled with.
    pub notification: Option<(PhysAddr, u64)>,
}

/// The interrupt routing the kernel found and the state of every line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IrqTable {
    /// Lines of the I/O APIC (0: none was found, so no handler can be had).
    pub lines: u8,
    /// Routes of ISA IRQs 0–15.
    pub isa: [IsaRoute; 16],
    /// Per-line state.
    pub state: [LineState; MAX_LINES],
}

impl IrqTable {
    /// No I/O APIC; ISA IRQs identity-routed, edge-triggered, active high.
    pub const fn new() -> Self {
        let mut isa = [IsaRoute { line: 0, level: false, active_low: false }; 16];
        let mut irq = 0;
        while irq < 16 {
            isa[irq].line = irq as u8;
            irq += 1;
        }
        Self { lines: 0, isa, state: [LineState { issued: false, notification: None }; MAX_LINES] }
    }
}

impl Default for IrqTable {
    fn default() -> Self {
        Self::new()
    }
}

/// A checked IRQ invocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IrqInvocation {
    /// Program `line` and put a handler capability for it into `destination`.
    Issue {
        /// The control capability's slot (the handler's parent).
        control: Slot,
        /// Where the handler capability goes.
        destination: Slot,
        /// The line.
        line: u8,
        /// Level-triggered.
        level: bool,
        /// Active low.
        active_low: bool,
    },
    /// Unmask `line`.
    Ack {
        /// The line.
        line: u8,
    },
    /// Bind `notification` (signalled with `badge`) to `line`, or unbind.
    SetNotification {
        /// The line.
        line: u8,
        /// The notification and badge, or none to unbind.
        notification: Option<(PhysAddr, u64)>,
    },
}

impl<M: PhysicalMemory> ObjectSpace<M> {
    /// Decodes an invocation of the IRQ control or IRQ handler capability
    /// in `slot` (see `docs/abi.md` for the words of each label).
    pub fn decode_irq(
        &self,
        slot: Slot,
        label: Label,
        words: &[u64],
        extra: &[Slot],
    ) -> Result<IrqInvocation, InvocationError> {
        let word =
            |n: usize, needed: u8| words.get(n).copied().ok_or(InvocationError::TruncatedMessage { needed });
        let destination = |index: usize, needed: u8| {
            let root =
                extra.first().map(|&s| self.cap(s)).ok_or(InvocationError::InvalidCapability { index: 1 })?;
            let destination =
                self.lookup_destination(root, word(index, needed)?, word(index + 1, needed)?)?;
            if self.cap(destination).is_null() { Ok(destination) } else { Err(InvocationError::DeleteFirst) }
        };
        let free_line = |line: u8| {
            if self.irqs.state[usize::from(line)].issued { Err(InvocationError::RevokeFirst) } else { Ok(()) }
        };
        match (self.cap(slot), label) {
            (Capability::IrqControl, Label::IrqControlGetIsa) => {
                let irq = word(0, 3)?;
                if irq > 15 {
                    return Err(InvocationError::RangeError { min: 0, max: 15 });
                }
                let route = self.irqs.isa[irq as usize];
                if route.line >= self.irqs.lines {
                    return Err(InvocationError::IllegalOperation);
                }
                let destination = destination(1, 3)?;
                free_line(route.line)?;
                Ok(IrqInvocation::Issue {
                    control: slot,
                    destination,
                    line: route.line,
                    level: route.level,
                    active_low: route.active_low,
                })
            }
            (Capability::IrqControl, Label::IrqControlGetLine) => {
                if self.irqs.lines == 0 {
                    return Err(InvocationError::IllegalOperation);
                }
                let line = word(0, 5)?;
                if line >= u64::from(self.irqs.lines) {
                    return Err(InvocationError::RangeError { min: 0, max: u64::from(self.irqs.lines) - 1 });
                }
                let flag = |n: usize| match word(n, 5)? {
                    0 => Ok(false),
                    1 => Ok(true),
                    _ => Err(InvocationError::InvalidArgument { index: n as u8 }),
                };
                let (level, active_low) = (flag(1)?, flag(2)?);
                let destination = destination(3, 5)?;
                free_line(line as u8)?;
                Ok(IrqInvocation::Issue { control: slot, destination, line: line as u8, level, active_low })
            }
            (Capability::IrqHandler { line }, Label::IrqHandlerAck) => Ok(IrqInvocation::Ack { line }),
            (Capability::IrqHandler { line }, Label::IrqHandlerSetNotification) => {
                let notification = match extra.first().map(|&s| self.cap(s)) {
                    Some(Capability::Notification { object, badge, rights })
                        if rights.contains(Rights::WRITE) =>
                    {
                        (object, badge)
                    }
                    _ => return Err(InvocationError::InvalidCapability { index: 1 }),
                };
                Ok(IrqInvocation::SetNotification { line, notification: Some(notification) })
            }
            (Capability::IrqHandler { line }, Label::IrqHandlerClear) => {
                Ok(IrqInvocation::SetNotification { line, notification: None })
            }
            _ => Err(InvocationError::IllegalOperation),
        }
    }

    /// Performs a decoded IRQ invocation.
    pub fn perform_irq(&mut self, invocation: IrqInvocation) {
        match invocation {
            IrqInvocation::Issue { control, destination, line, level, active_low } => {
                self.irqs.state[usize::from(line)] = LineState { issued: true, notification: None };
                self.memory.irq_configure(line, level, active_low);
                // Enabled at once, as in seL4: an interrupt before a
                // notification is bound masks the line until it is acked.
                self.memory.irq_mask(line, false);
                self.insert_new_object(control, destination, Capability::IrqHandler { line });
            }
            IrqInvocation::Ack { line } => self.memory.irq_mask(line, false),
            IrqInvocation::SetNotification { line, notification } => {
                self.irqs.state[usize::from(line)].notification = notification;
            }
        }
    }

    /// Line `line` fired (called with the LAPIC EOI sent or about to be):
    /// masks it and signals its notification, if any.
    pub fn irq_fired(&mut self, line: u8) {
        self.memory.irq_mask(line, true);
        let Some(state) = self.irqs.state.get(usize::from(line)).copied() else { return };
        if let (true, Some((notification, badge))) = (state.issued, state.notification) {
            self.signal(notification, badge);
        }
    }

    /// Releases what the last capability to a handler or a notification
    /// holds in the IRQ table.
    pub(super) fn finalise_irq(&mut self, cap: &Capability) {
        match *cap {
            Capability::IrqHandler { line } => {
                self.memory.irq_mask(line, true);
                self.irqs.state[usize::from(line)] = LineState::default();
            }
            Capability::Notification { object, .. } => {
                for state in &mut self.irqs.state {
                    if state.notification.is_some_and(|(n, _)| n == object) {
                        state.notification = None;
                    }
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use strata_abi::error::InvocationError;
    use strata_abi::invocation::Label;
    use strata_abi::object::{ObjectType, Rights};

    use super::super::delete::Budget;
    use super::super::ipc::NOTIFICATION_WORD;
    use super::super::memory::Arena;
    use super::super::model::{ROOT_CNODE, ROOT_RADIX, boot, check_invariants, finish, retype, root_cap};
    use super::super::{Capability, ObjectSpace, PhysicalMemory, Slot};
    use super::{IrqTable, IsaRoute, LineState};

    const CONTROL: u64 = 2;
    const NOTIFICATION: u64 = 3;
    const DEPTH: u64 = ROOT_RADIX as u64;

    fn slot(index: u64) -> Slot {
        Slot::in_cnode(ROOT_CNODE, index)
    }

    /// A space with 24 lines, ISA IRQ 0 on line 2 and IRQ 9 level/low, the
    /// control capability and a notification.
    fn boot_with_irqs() -> ObjectSpace<Arena> {
        let mut space = boot();
        let mut irqs = IrqTable::new();
        irqs.lines = 24;
        irqs.isa[0] = IsaRoute { line: 2, level: false, active_low: false };
        irqs.isa[9] = IsaRoute { line: 9, level: true, active_low: true };
        space.irqs = irqs;
        space.insert_root(slot(CONTROL), Capability::IrqControl);
        retype(&mut space, ObjectType::Notification, 0, NOTIFICATION, 1);
        space
    }

    fn invoke(
        space: &mut ObjectSpace<Arena>,
        at: u64,
        label: Label,
        words: &[u64],
        extra: &[u64],
    ) -> Result<(), InvocationError> {
        let extra: Vec<Slot> = extra.iter().map(|&i| slot(i)).collect();
        let invocation = space.decode_irq(slot(at), label, words, &extra)?;
        space.perform_irq(invocation);
        Ok(())
    }

    fn cnode(space: &mut ObjectSpace<Arena>, label: Label, words: &[u64]) -> Result<(), InvocationError> {
        let invocation = space.decode_cnode(root_cap(), label, words, Some(root_cap()))?;
        finish(space, 2, |s, b: &mut Budget| s.perform_cnode(invocation, b));
        Ok(())
    }

    fn word(space: &mut ObjectSpace<Arena>) -> u64 {
        let Capability::Notification { object, .. } = space.cap(slot(NOTIFICATION)) else {
            panic!("notification")
        };
        space.memory.read(object.offset(NOTIFICATION_WORD))
    }

    #[test]
    fn isa_irqs_follow_overrides_and_lines_fire_into_notifications() {
        let mut space = boot_with_irqs();
        invoke(&mut space, CONTROL, Label::IrqControlGetIsa, &[0, 10, DEPTH], &[0]).expect("ISA IRQ 0");
        assert_eq!(space.cap(slot(10)), Capability::IrqHandler { line: 2 });
        assert_eq!(space.memory.irq_lines.get(&2), Some(&(false, false, false)), "edge, high, unmasked");
        invoke(&mut space, CONTROL, Label::IrqControlGetIsa, &[9, 11, DEPTH], &[0]).expect("ISA IRQ 9");
        assert_eq!(space.memory.irq_lines.get(&9), Some(&(true, true, false)), "level, low");
        // A fire with no notification bound just masks the line.
        space.irq_fired(2);
        assert!(space.memory.irq_lines[&2].2, "masked");
        cnode(&mut space, Label::CNodeMint, &[12, DEPTH, NOTIFICATION, DEPTH, Rights::all().bits(), 0b100])
            .expect("badge");
        invoke(&mut space, 10, Label::IrqHandlerSetNotification, &[], &[12]).expect("bind");
        invoke(&mut space, 10, Label::IrqHandlerAck, &[], &[]).expect("ack");
        assert!(!space.memory.irq_lines[&2].2, "unmasked");
        space.irq_fired(2);
        assert_eq!(
            (word(&mut space), space.memory.irq_lines[&2].2),
            (0b100, true),
            "signalled with the badge, masked"
        );
        // Unbound: the next fire signals nothing.
        invoke(&mut space, 10, Label::IrqHandlerClear, &[], &[]).expect("clear");
        space.irq_fired(2);
        assert_eq!(word(&mut space), 0b100);
        check_invariants(&space);
    }

    #[test]
    fn decode_errors() {
        let mut space = boot_with_irqs();
        let get = |space: &mut ObjectSpace<Arena>, words: &[u64]| {
            invoke(space, CONTROL, Label::IrqControlGetLine, words, &[0])
        };
        assert_eq!(
            get(&mut space, &[24, 0, 0, 10, DEPTH]),
            Err(InvocationError::RangeError { min: 0, max: 23 })
        );
        assert_eq!(
            get(&mut space, &[5, 2, 0, 10, DEPTH]),
            Err(InvocationError::InvalidArgument { index: 1 })
        );
        assert_eq!(get(&mut space, &[5, 1, 1, 10]), Err(InvocationError::TruncatedMessage { needed: 5 }));
        assert_eq!(get(&mut space, &[5, 1, 1, 1, DEPTH]), Err(InvocationError::DeleteFirst));
        get(&mut space, &[5, 1, 1, 10, DEPTH]).expect("line 5");
        assert_eq!(get(&mut space, &[5, 0, 0, 11, DEPTH]), Err(InvocationError::RevokeFirst));
        assert_eq!(
            invoke(&mut space, CONTROL, Label::IrqControlGetIsa, &[16, 11, DEPTH], &[0]),
            Err(InvocationError::RangeError { min: 0, max: 15 })
        );
        assert_eq!(
            invoke(&mut space, 10, Label::IrqHandlerSetNotification, &[], &[1]),
            Err(InvocationError::InvalidCapability { index: 1 })
        );
        cnode(&mut space, Label::CNodeMint, &[12, DEPTH, NOTIFICATION, DEPTH, Rights::READ.bits(), 0])
            .expect("read-only");
        assert_eq!(
            invoke(&mut space, 10, Label::IrqHandlerSetNotification, &[], &[12]),
            Err(InvocationError::InvalidCapability { index: 1 })
        );
        assert_eq!(
            invoke(&mut space, 10, Label::IrqControlGetIsa, &[0, 11, DEPTH], &[0]),
            Err(InvocationError::IllegalOperation)
        );
        assert_eq!(
            cnode(&mut space, Label::CNodeCopy, &[13, DEPTH, CONTROL, DEPTH, 15]),
            Err(InvocationError::IllegalOperation)
        );
        // Without an I/O APIC there are no lines to have.
        space.irqs.lines = 0;
        assert_eq!(get(&mut space, &[1, 0, 0, 11, DEPTH]), Err(InvocationError::IllegalOperation));
        assert_eq!(
            invoke(&mut space, CONTROL, Label::IrqControlGetIsa, &[1, 11, DEPTH], &[0]),
            Err(InvocationError::IllegalOperation)
        );
    }

    #[test]
    fn deleting_the_last_handler_or_the_notification_releases_the_line() {
        let mut space = boot_with_irqs();
        invoke(&mut space, CONTROL, Label::IrqControlGetLine, &[7, 0, 0, 10, DEPTH], &[0]).expect("line 7");
        invoke(&mut space, 10, Label::IrqHandlerSetNotification, &[], &[NOTIFICATION]).expect("bind");
        cnode(&mut space, Label::CNodeCopy, &[11, DEPTH, 10, DEPTH, 15]).expect("copy the handler");
        cnode(&mut space, Label::CNodeDelete, &[10, DEPTH]).expect("delete one");
        assert!(space.irqs.state[7].issued, "the copy keeps the line");
        // Deleting the notification's last capability unbinds it.
        cnode(&mut space, Label::CNodeDelete, &[NOTIFICATION, DEPTH]).expect("delete the notification");
        assert_eq!(space.irqs.state[7].notification, None);
        space.irq_fired(7);
        cnode(&mut space, Label::CNodeDelete, &[11, DEPTH]).expect("delete the copy");
        assert_eq!(space.irqs.state[7], LineState::default());
        assert!(space.memory.irq_lines[&7].2, "masked");
        invoke(&mut space, CONTROL, Label::IrqControlGetLine, &[7, 0, 0, 12, DEPTH], &[0])
            .expect("free again");
        cnode(&mut space, Label::CNodeRevoke, &[CONTROL, DEPTH]).expect("revoke the control");
        assert!(space.cap(slot(12)).is_null() && !space.irqs.state[7].issued);
        check_invariants(&space);
    }
}
