//! Invocation labels: the operation a `Call` on an object capability asks
//! for. Arguments are listed in `docs/abi.md`, one section per label.

/// An invocation label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u64)]
pub enum Label {
    /// Untyped: create objects from free memory.
    UntypedRetype = 1,
    /// CNode: delete every capability derived from the one in a slot.
    CNodeRevoke = 16,
    /// CNode: delete the capability in a slot.
    CNodeDelete = 17,
    /// CNode: copy a capability, possibly with fewer rights.
    CNodeCopy = 18,
    /// CNode: copy a capability with fewer rights and a badge or guard.
    CNodeMint = 19,
    /// CNode: move a capability to another slot.
    CNodeMove = 20,
    /// CNode: move a capability, changing its badge or guard.
    CNodeMutate = 21,
    /// Page table, directory or PDPT: install it in an address space.
    PageTableMap = 32,
    /// Page table, directory or PDPT: take it out of its address space.
    PageTableUnmap = 33,
    /// Frame: map it into an address space.
    FrameMap = 40,
    /// Frame: remove its mapping.
    FrameUnmap = 41,
    /// Frame: return its physical address.
    FrameGetAddress = 42,
    /// ASID control: turn a 4 KiB Untyped into a pool of 512 ASIDs.
    AsidControlMakePool = 48,
    /// ASID pool: give an address space (PML4) an ASID.
    AsidPoolAssign = 49,
    /// TCB: set CSpace root, VSpace root and IPC buffer.
    TcbConfigure = 64,
    /// TCB: set priority and maximum controlled priority.
    TcbSetPriority = 65,
    /// TCB: replace the user registers.
    TcbWriteRegisters = 66,
    /// TCB: make the thread runnable.
    TcbResume = 67,
    /// TCB: stop the thread.
    TcbSuspend = 68,
    /// TCB: bind a notification (its signals wake the thread in `Recv`).
    TcbBindNotification = 69,
    /// TCB: undo the binding.
    TcbUnbindNotification = 70,
    /// TCB: read the registers `TcbWriteRegisters` writes.
    TcbReadRegisters = 71,
    /// I/O-port control: make an I/O-port capability for a range of ports.
    IoPortControlIssue = 80,
    /// I/O port: read 1, 2 or 4 bytes.
    IoPortIn = 81,
    /// I/O port: write 1, 2 or 4 bytes.
    IoPortOut = 82,
    /// IRQ control: a handler capability for an ISA IRQ.
    IrqControlGetIsa = 88,
    /// IRQ control: a handler capability for an I/O APIC line.
    IrqControlGetLine = 89,
    /// IRQ handler: unmask the line after servicing the device.
    IrqHandlerAck = 90,
    /// IRQ handler: bind a notification to the line.
    IrqHandlerSetNotification = 91,
    /// IRQ handler: unbind the notification.
    IrqHandlerClear = 92,
    /// VCPU: bind it to a thread, whose `VmEnter` then runs it.
    VcpuSetTcb = 96,
    /// VCPU: give its thread the GuestSpace its guest-physical addresses are in.
    VcpuSetSpace = 97,
    /// VCPU: read up to four pieces of guest state (`vcpu::Field` ids).
    VcpuReadState = 98,
    /// VCPU: write up to four pieces of guest state, as (field, value) pairs.
    VcpuWriteState = 99,
}

impl TryFrom<u64> for Label {
    type Error = u64;

    fn try_from(value: u64) -> Result<Self, u64> {
        Ok(match value {
            1 => Self::UntypedRetype,
            16 => Self::CNodeRevoke,
            17 => Self::CNodeDelete,
            18 => Self::CNodeCopy,
            19 => Self::CNodeMint,
            20 => Self::CNodeMove,
            21 => Self::CNodeMutate,
            32 => Self::PageTableMap,
            33 => Self::PageTableUnmap,
            40 => Self::FrameMap,
            41 => Self::FrameUnmap,
            42 => Self::FrameGetAddress,
            48 => Self::AsidControlMakePool,
            49 => Self::AsidPoolAssign,
            64 => Self::TcbConfigure,
            65 => Self::TcbSetPriority,
            66 => Self::TcbWriteRegisters,
            67 => Self::TcbResume,
            68 => Self::TcbSuspend,
            69 => Self::TcbBindNotification,
            70 => Self::TcbUnbindNotification,
            71 => Self::TcbReadRegisters,
            80 => Self::IoPortControlIssue,
            81 => Self::IoPortIn,
            82 => Self::IoPortOut,
            88 => Self::IrqControlGetIsa,
            89 => Self::IrqControlGetLine,
            90 => Self::IrqHandlerAck,
            91 => Self::IrqHandlerSetNotification,
            92 => Self::IrqHandlerClear,
            96 => Self::VcpuSetTcb,
            97 => Self::VcpuSetSpace,
            98 => Self::VcpuReadState,
            99 => Self::VcpuWriteState,
            other => return Err(other),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_round_trip() {
        for n in 0..128u64 {
            if let Ok(label) = Label::try_from(n) {
                assert_eq!(label as u64, n);
            }
        }
        assert_eq!(Label::try_from(0), Err(0));
    }
}
