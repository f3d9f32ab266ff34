//! I/O ports as capabilities (after seL4's x86 `IOPortControl`/`IOPort`).
//!
//! The root task starts with the one I/O-port control capability. Issuing
//! from it makes an I/O-port capability for an inclusive range of ports,
//! a child of the control capability in the derivation tree. A range can
//! be issued only while none of its ports is held by an earlier issue, so
//! two device servers never share a port unless one copies its capability
//! to the other. The ports come back when the last capability to a range
//! is deleted; revoking the control capability takes every range back.
//!
//! `IN`/`OUT` (Intel SDM vol. 2A "IN", vol. 2B "OUT"; AMD APM vol. 3) of
//! 1, 2 or 4 bytes go through the kernel, which checks that every byte of
//! the access lies in the capability's range. Ports the kernel drives
//! itself are never issued: the COM1 console, the 8259 PICs it keeps
//! masked, and the emulators' exit devices.

use strata_abi::error::InvocationError;
use strata_abi::exit::{BOCHS_SHUTDOWN_PORT, QEMU_DEBUG_EXIT_PORT};
use strata_abi::invocation::Label;

use super::{Capability, ObjectSpace, PhysicalMemory, Slot};

/// Port ranges (inclusive) the kernel keeps for itself.
pub const KERNEL_PORTS: [(u16, u16); 5] = [
    (0x20, 0x21), // primary 8259 PIC
    (0xa0, 0xa1), // secondary 8259 PIC
    (QEMU_DEBUG_EXIT_PORT, QEMU_DEBUG_EXIT_PORT),
    (0x3f8, 0x3ff), // COM1, the kernel console
    (BOCHS_SHUTDOWN_PORT, BOCHS_SHUTDOWN_PORT),
];

/// Words in the bitmap of issued ports: one bit per port.
pub const ISSUED_WORDS: usize = 65536 / 64;

/// A checked I/O-port invocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoPortInvocation {
    /// Put a capability for `first..=last` into `destination`.
    Issue {
        /// The control capability's slot (the new capability's parent).
        control: Slot,
        /// Where the new capability goes.
        destination: Slot,
        /// First port.
        first: u16,
        /// Last port.
        last: u16,
    },
    /// Read `width` bytes from `port`; the reply carries the value.
    In {
        /// The port.
        port: u16,
        /// 1, 2 or 4.
        width: u8,
    },
    /// Write the low `width` bytes of `value` to `port`.
    Out {
        /// The port.
        port: u16,
        /// 1, 2 or 4.
        width: u8,
        /// The value.
        value: u32,
    },
}

impl<M: PhysicalMemory> ObjectSpace<M> {
    /// Whether any port of `first..=last` is held by an issued capability.
    fn ports_issued(&self, first: u16, last: u16) -> bool {
        (first..=last).any(|port| self.io_ports_issued[usize::from(port) / 64] & (1 << (port % 64)) != 0)
    }

    fn mark_ports(&mut self, first: u16, last: u16, issued: bool) {
        for port in first..=last {
            let (word, bit) = (usize::from(port) / 64, 1u64 << (port % 64));
            if issued {
                self.io_ports_issued[word] |= bit;
            } else {
                self.io_ports_issued[word] &= !bit;
            }
        }
    }

    /// Decodes an invocation of the I/O-port control or I/O-port capability
    /// in `slot`.
    ///
    /// `IoPortControlIssue`: words (first port, last port, destination
    /// index, destination depth), extra capability 0 the CNode the
    /// destination is looked up in. `IoPortIn`: words (port, width).
    /// `IoPortOut`: words (port, width, value).
    pub fn decode_ioport(
        &self,
        slot: Slot,
        label: Label,
        words: &[u64],
        extra: &[Slot],
    ) -> Result<IoPortInvocation, InvocationError> {
        let word =
            |n: usize, needed: u8| words.get(n).copied().ok_or(InvocationError::TruncatedMessage { needed });
        let port_number = |value: u64| {
            u16::try_from(value).map_err(|_| InvocationError::RangeError { min: 0, max: u64::from(u16::MAX) })
        };
        match (self.cap(slot), label) {
            (Capability::IoPortControl, Label::IoPortControlIssue) => {
                let first = port_number(word(0, 4)?)?;
                let last = port_number(word(1, 4)?)?;
                if last < first {
                    return Err(InvocationError::RangeError {
                        min: u64::from(first),
                        max: u64::from(u16::MAX),
                    });
                }
                if KERNEL_PORTS.iter().any(|&(low, high)| first <= high && low <= last) {
                    return Err(InvocationError::InvalidArgument { index: 0 });
                }
                let root = extra
                    .first()
                    .map(|&s| self.cap(s))
                    .ok_or(InvocationError::InvalidCapability { index: 1 })?;
                let destination = self.lookup_destination(root, word(2, 4)?, word(3, 4)?)?;
                if !self.cap(destination).is_null() {
                    return Err(InvocationError::DeleteFirst);
                }
                if self.ports_issued(first, last) {
                    return Err(InvocationError::RevokeFirst);
                }
                Ok(IoPortInvocation::Issue { control: slot, destination, first, last })
            }
            (Capability::IoPort { first, last }, Label::IoPortIn | Label::IoPortOut) => {
                let needed = if label == Label::IoPortIn { 2 } else { 3 };
                let port = port_number(word(0, needed)?)?;
                let width = match word(1, needed)? {
                    width @ (1 | 2 | 4) => width as u8,
                    _ => return Err(InvocationError::InvalidArgument { index: 1 }),
                };
                // Every byte of the access must lie in the range.
                let end = u32::from(port) + u32::from(width) - 1;
                if port < first || end > u32::from(last) {
                    let max = u64::from(last).saturating_sub(u64::from(width) - 1);
                    return Err(InvocationError::RangeError { min: u64::from(first), max });
                }
                Ok(if label == Label::IoPortIn {
                    IoPortInvocation::In { port, width }
                } else {
                    let value = word(2, needed)?;
                    let limit = if width == 4 { u64::from(u32::MAX) } else { (1 << (8 * width)) - 1 };
                    if value > limit {
                        return Err(InvocationError::InvalidArgument { index: 2 });
                    }
                    IoPortInvocation::Out { port, width, value: value as u32 }
                })
            }
            _ => Err(InvocationError::IllegalOperation),
        }
    }

    /// Performs a decoded I/O-port invocation; `In` returns the value read.
    pub fn perform_ioport(&mut self, invocation: IoPortInvocation) -> Option<u32> {
        match invocation {
            IoPortInvocation::Issue { control, destination, first, last } => {
                self.mark_ports(first, last, true);
                self.insert_new_object(control, destination, Capability::IoPort { first, last });
                None
            }
            IoPortInvocation::In { port, width } => Some(self.memory.port_in(port, width)),
            IoPortInvocation::Out { port, width, value } => {
                self.memory.port_out(port, width, value);
                None
            }
        }
    }

    /// Returns the ports of the last capability to a range.
    pub(super) fn finalise_ioport(&mut self, cap: &Capability) {
        if let Capability::IoPort { first, last } = *cap {
            self.mark_ports(first, last, false);
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use strata_abi::error::InvocationError;
    use strata_abi::invocation::Label;

    use super::super::delete::Budget;
    use super::super::memory::Arena;
    use super::super::model::{ROOT_CNODE, ROOT_RADIX, boot, check_invariants, finish, root_cap};
    use super::super::{Capability, ObjectSpace, Slot};
    use super::{ISSUED_WORDS, IoPortInvocation};

    const CONTROL: u64 = 2;
    const DEPTH: u64 = ROOT_RADIX as u64;

    fn slot(index: u64) -> Slot {
        Slot::in_cnode(ROOT_CNODE, index)
    }

    fn boot_with_control() -> ObjectSpace<Arena> {
        let mut space = boot();
        space.insert_root(slot(CONTROL), Capability::IoPortControl);
        space
    }

    fn issue(
        space: &mut ObjectSpace<Arena>,
        first: u64,
        last: u64,
        dest: u64,
    ) -> Result<(), InvocationError> {
        let invocation = space.decode_ioport(
            slot(CONTROL),
            Label::IoPortControlIssue,
            &[first, last, dest, DEPTH],
            &[slot(0)],
        )?;
        space.perform_ioport(invocation);
        Ok(())
    }

    fn port(
        space: &mut ObjectSpace<Arena>,
        at: u64,
        label: Label,
        words: &[u64],
    ) -> Result<Option<u32>, InvocationError> {
        let invocation = space.decode_ioport(slot(at), label, words, &[])?;
        Ok(space.perform_ioport(invocation))
    }

    fn cnode(space: &mut ObjectSpace<Arena>, label: Label, words: &[u64]) -> Result<(), InvocationError> {
        let invocation = space.decode_cnode(root_cap(), label, words, Some(root_cap()))?;
        finish(space, 2, |s, b: &mut Budget| s.perform_cnode(invocation, b));
        Ok(())
    }

    #[test]
    fn issued_ranges_reach_exactly_their_ports() {
        let mut space = boot_with_control();
        issue(&mut space, 0x70, 0x71, 10).expect("CMOS ports");
        assert_eq!(space.cap(slot(10)), Capability::IoPort { first: 0x70, last: 0x71 });
        assert_eq!(port(&mut space, 10, Label::IoPortOut, &[0x70, 1, 0x0b]), Ok(None));
        assert_eq!(space.memory.ports.get(&0x70), Some(&0x0b));
        space.memory.ports.insert(0x71, 0x02);
        assert_eq!(port(&mut space, 10, Label::IoPortIn, &[0x71, 1]), Ok(Some(0x02)));
        // A 2-byte access at 0x71 would touch 0x72, outside the range.
        assert_eq!(
            port(&mut space, 10, Label::IoPortIn, &[0x71, 2]),
            Err(InvocationError::RangeError { min: 0x70, max: 0x70 })
        );
        assert_eq!(port(&mut space, 10, Label::IoPortIn, &[0x70, 2]), Ok(Some(0x020b)));
        assert_eq!(
            port(&mut space, 10, Label::IoPortIn, &[0x6f, 1]),
            Err(InvocationError::RangeError { min: 0x70, max: 0x71 })
        );
        assert_eq!(
            port(&mut space, 10, Label::IoPortIn, &[0x70, 3]),
            Err(InvocationError::InvalidArgument { index: 1 })
        );
        assert_eq!(
            port(&mut space, 10, Label::IoPortOut, &[0x70, 1, 0x100]),
            Err(InvocationError::InvalidArgument { index: 2 })
        );
        assert_eq!(
            port(&mut space, 10, Label::IoPortOut, &[0x70, 1]),
            Err(InvocationError::TruncatedMessage { needed: 3 })
        );
        assert_eq!(
            port(&mut space, 10, Label::IoPortControlIssue, &[]),
            Err(InvocationError::IllegalOperation)
        );
        assert_eq!(
            port(&mut space, 10, Label::IoPortIn, &[0x1_0070, 1]),
            Err(InvocationError::RangeError { min: 0, max: 0xffff })
        );
    }

    #[test]
    fn issue_refuses_kernel_ports_overlaps_and_bad_ranges() {
        let mut space = boot_with_control();
        for (first, last) in
            [(0x3f8, 0x3f8), (0x3f0, 0x3ff), (0x00, 0xffff), (0x21, 0x21), (0xf4, 0xf4), (0x8900, 0x8900)]
        {
            assert_eq!(
                issue(&mut space, first, last, 10),
                Err(InvocationError::InvalidArgument { index: 0 }),
                "{first:#x}"
            );
        }
        assert_eq!(
            issue(&mut space, 0x71, 0x70, 10),
            Err(InvocationError::RangeError { min: 0x71, max: 0xffff })
        );
        assert_eq!(
            issue(&mut space, 0x70, 0x1_0000, 10),
            Err(InvocationError::RangeError { min: 0, max: 0xffff })
        );
        assert_eq!(issue(&mut space, 0x70, 0x71, 1), Err(InvocationError::DeleteFirst));
        issue(&mut space, 0xcf8, 0xcff, 10).expect("PCI configuration ports");
        assert_eq!(issue(&mut space, 0xcfc, 0xd00, 11), Err(InvocationError::RevokeFirst));
        assert_eq!(issue(&mut space, 0xc00, 0xcf8, 11), Err(InvocationError::RevokeFirst));
        issue(&mut space, 0xd00, 0xd00, 11).expect("the neighbouring port is free");
        // The control capability cannot be copied; issued ranges can.
        assert_eq!(
            cnode(&mut space, Label::CNodeCopy, &[12, DEPTH, CONTROL, DEPTH, 15]),
            Err(InvocationError::IllegalOperation)
        );
        cnode(&mut space, Label::CNodeCopy, &[12, DEPTH, 10, DEPTH, 15]).expect("copy a range");
        assert_eq!(port(&mut space, 12, Label::IoPortOut, &[0xcf8, 4, 0x8000_0000]), Ok(None));
        check_invariants(&space);
    }

    #[test]
    fn ports_return_with_the_last_capability_and_on_revoke() {
        let mut space = boot_with_control();
        issue(&mut space, 0x60, 0x64, 10).expect("issue");
        cnode(&mut space, Label::CNodeCopy, &[11, DEPTH, 10, DEPTH, 15]).expect("copy");
        cnode(&mut space, Label::CNodeDelete, &[10, DEPTH]).expect("delete the original");
        assert_eq!(
            issue(&mut space, 0x60, 0x60, 12),
            Err(InvocationError::RevokeFirst),
            "the copy still holds it"
        );
        cnode(&mut space, Label::CNodeDelete, &[11, DEPTH]).expect("delete the copy");
        issue(&mut space, 0x60, 0x60, 12).expect("free again");
        issue(&mut space, 0x61, 0x64, 13).expect("free again");
        cnode(&mut space, Label::CNodeRevoke, &[CONTROL, DEPTH]).expect("revoke control");
        assert!(space.cap(slot(12)).is_null() && space.cap(slot(13)).is_null());
        assert_eq!(space.io_ports_issued, [0; ISSUED_WORDS]);
        check_invariants(&space);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Issue { first: u16, len: u16, dest: u64 },
        Copy { src: u64, dest: u64 },
        Delete { slot: u64 },
        RevokeControl,
    }

    fn any_op() -> impl Strategy<Value = Op> {
        let slot = 8u64..24;
        prop_oneof![
            4 => (0x100u16..0x140, 0u16..8, slot.clone()).prop_map(|(first, len, dest)| Op::Issue { first, len, dest }),
            3 => (slot.clone(), slot.clone()).prop_map(|(src, dest)| Op::Copy { src, dest }),
            3 => slot.prop_map(|slot| Op::Delete { slot }),
            1 => Just(Op::RevokeControl),
        ]
    }

    proptest! {
        /// Whatever is issued, copied, deleted and revoked, a port is
        /// marked issued exactly when a live capability covers it, and
        /// ranges held by different issues never overlap.
        #[test]
        fn issued_ports_are_exactly_the_live_ranges(ops in prop::collection::vec(any_op(), 1..40)) {
            let mut space = boot_with_control();
            for op in &ops {
                let _ = match *op {
                    Op::Issue { first, len, dest } => {
                        issue(&mut space, u64::from(first), u64::from(first + len), dest)
                    }
                    Op::Copy { src, dest } => cnode(&mut space, Label::CNodeCopy, &[dest, DEPTH, src, DEPTH, 15]),
                    Op::Delete { slot } => cnode(&mut space, Label::CNodeDelete, &[slot, DEPTH]),
                    Op::RevokeControl => cnode(&mut space, Label::CNodeRevoke, &[CONTROL, DEPTH]),
                };
                let ranges: Vec<(u16, u16)> = (0..1 << ROOT_RADIX)
                    .filter_map(|i| match space.cap(slot(i)) {
                        Capability::IoPort { first, last } => Some((first, last)),
                        _ => None,
                    })
                    .collect();
                for port in 0x100u16..0x150 {
                    let covered: Vec<_> = ranges.iter().filter(|&&(f, l)| f <= port && port <= l).collect();
                    let marked = space.io_ports_issued[usize::from(port) / 64] & (1 << (port % 64)) != 0;
                    prop_assert_eq!(marked, !covered.is_empty(), "port {:#x} after {:?}", port, op);
                    prop_assert!(covered.windows(2).all(|w| w[0] == w[1]), "port {:#x} in two ranges", port);
                }
                check_invariants(&space);
            }
        }
    }

    #[test]
    fn in_and_out_decode_without_side_effects() {
        let mut space = boot_with_control();
        issue(&mut space, 0x80, 0x8f, 10).expect("issue");
        let decoded = space.decode_ioport(slot(10), Label::IoPortOut, &[0x8c, 4, 7], &[]).expect("decode");
        assert_eq!(decoded, IoPortInvocation::Out { port: 0x8c, width: 4, value: 7 });
        assert!(space.memory.ports.is_empty());
    }
}
