//! Finding the device interrupt hardware at boot: the MADT behind the
//! RSDP (ACPI 6.5 §5.2.12) names the I/O APIC and the ISA interrupt
//! source overrides; the first I/O APIC (the one whose lines start at
//! global system interrupt 0) is taken over and its lines masked.

use strata_abi::acpi::{self, MadtEntry, Polarity, Trigger};

use crate::addr::{DirectMap, PhysAddr};
use crate::arch::x86_64::ioapic;
use crate::boot::Kernel;
use crate::object::irq::IrqTable;

/// Largest table the kernel reads (a MADT for hundreds of CPUs is a few KiB).
const MAX_TABLE: usize = 64 << 10;

/// The checked table at physical `address`, or `None` with a warning.
fn table(direct_map: DirectMap, address: u64) -> Option<&'static [u8]> {
    let pointer = direct_map.to_virtual(PhysAddr(address)).as_mut_ptr::<u8>().cast_const();
    // SAFETY: the direct map covers the firmware's tables (the loader maps
    // at least the low 4 GiB and all described memory); only reads happen,
    // first of the header, then of the length it declares (capped).
    let header = unsafe { core::slice::from_raw_parts(pointer, acpi::HEADER_LEN) };
    let length = acpi::table_length(header)?.clamp(acpi::HEADER_LEN, MAX_TABLE);
    // SAFETY: as above.
    let bytes = unsafe { core::slice::from_raw_parts(pointer, length) };
    match acpi::check_table(bytes) {
        Ok((_, table)) => Some(table),
        Err(error) => {
            log::warn!("ACPI: table at {address:#x}: {error}");
            None
        }
    }
}

/// The MADT, found through the XSDT or RSDT.
fn madt(kernel: &Kernel) -> Option<&'static [u8]> {
    let (_, rsdp) = kernel.rsdp?;
    let (root, wide) = match rsdp.xsdt {
        Some(xsdt) => (xsdt, true),
        None => (u64::from(rsdp.rsdt), false),
    };
    let root = table(kernel.direct_map, root)?;
    acpi::root_entries(root, wide)
        .filter_map(|address| table(kernel.direct_map, address))
        .find(|table| table.starts_with(b"APIC"))
}

/// Takes over the I/O APIC and returns the routing table the object layer
/// hands lines out by. Without a MADT or I/O APIC, no line can be had.
pub fn discover(kernel: &Kernel) -> IrqTable {
    let mut irqs = IrqTable::new();
    let Some(madt) = madt(kernel) else {
        log::warn!("ACPI: no MADT; device interrupts are unavailable");
        return irqs;
    };
    let Some((address, id)) = acpi::madt_entries(madt).find_map(|entry| match entry {
        MadtEntry::IoApic { id, address, gsi_base: 0 } => Some((address, id)),
        _ => None,
    }) else {
        log::warn!("ACPI: the MADT lists no I/O APIC for interrupt 0 on; device interrupts are unavailable");
        return irqs;
    };
    let destination = kernel.lapic.id() as u8;
    irqs.lines = ioapic::init(kernel.direct_map, PhysAddr(u64::from(address)), destination);
    for entry in acpi::madt_entries(madt) {
        let MadtEntry::InterruptOverride { source, gsi, polarity, trigger } = entry else { continue };
        let (Some(route), Ok(line)) = (irqs.isa.get_mut(usize::from(source)), u8::try_from(gsi)) else {
            continue;
        };
        route.line = line;
        route.level = trigger == Trigger::Level;
        route.active_low = polarity == Polarity::Low;
    }
    log::info!(
        "I/O APIC {id} at {address:#x}: {} lines, ISA IRQ 0 on line {}, vectors from {:#x}",
        irqs.lines,
        irqs.isa[0].line,
        ioapic::VECTOR_BASE
    );
    irqs
}
