//! The local APIC in xAPIC mode (Intel SDM vol. 3A ch. 11; AMD APM vol. 2
//! ch. 16): interrupt acceptance, end-of-interrupt, and the timer that drives
//! preemption. Reached through the direct map at the address in
//! IA32_APIC_BASE.

use core::sync::atomic::{AtomicU64, Ordering};

use crate::addr::{DirectMap, PhysAddr};

use super::pit;

const ID: usize = 0x20;
const VERSION: usize = 0x30;
const EOI: usize = 0xb0;
const SPURIOUS: usize = 0xf0;
const LVT_TIMER: usize = 0x320;
const TIMER_INITIAL: usize = 0x380;
const TIMER_CURRENT: usize = 0x390;
const TIMER_DIVIDE: usize = 0x3e0;

const SOFTWARE_ENABLE: u32 = 1 << 8;
const LVT_MASKED: u32 = 1 << 16;
const TIMER_PERIODIC: u32 = 1 << 17;
/// Divide configuration value for divide-by-16 (SDM Figure 11-10).
const DIVIDE_BY_16: u32 = 0b0011;

/// Vector of the kernel's timer interrupt.
pub const TIMER_VECTOR: u8 = 0x30;
/// Vector the LAPIC uses for spurious interrupts (low nibble must be 0xf on old parts).
pub const SPURIOUS_VECTOR: u8 = 0xff;

/// Timer interrupts taken since boot.
pub static TICKS: AtomicU64 = AtomicU64::new(0);

/// Clock rates measured against the PIT.
#[derive(Debug, Clone, Copy)]
pub struct Calibration {
    /// LAPIC timer counts per second at divide-by-16.
    pub timer_hz: u64,
    /// TSC counts per second.
    pub tsc_hz: u64,
}

/// Why the LAPIC could not be brought up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LapicError {
    /// CPUID says there is no APIC.
    Absent,
    /// The PIT never finished the calibration interval.
    PitTimeout,
    /// The timer did not count during calibration.
    TimerStopped,
}

impl core::fmt::Display for LapicError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Absent => write!(f, "the CPU has no local APIC"),
            Self::PitTimeout => write!(f, "the PIT did not finish the calibration interval"),
            Self::TimerStopped => write!(f, "the LAPIC timer did not count during calibration"),
        }
    }
}

/// This CPU's local APIC.
#[derive(Debug, Clone, Copy)]
pub struct LocalApic {
    registers: *mut u32,
}

// SAFETY: the register block is per CPU and only touched by its own CPU
// with interrupts off; the pointer is just an address.
unsafe impl Send for LocalApic {}
// SAFETY: as above.
unsafe impl Sync for LocalApic {}

impl LocalApic {
    /// Finds this CPU's LAPIC, enables it (software enable, spurious vector)
    /// and masks its timer.
    pub fn enable(direct_map: DirectMap) -> Result<Self, LapicError> {
        if core::arch::x86_64::__cpuid(1).edx & (1 << 9) == 0 {
            return Err(LapicError::Absent);
        }
        // SAFETY: IA32_APIC_BASE exists on every CPU with an APIC (checked above).
        let base_msr = unsafe { x86::msr::rdmsr(x86::msr::IA32_APIC_BASE) };
        if base_msr & (1 << 11) == 0 {
            // SAFETY: setting the global enable bit keeps the base address.
            unsafe { x86::msr::wrmsr(x86::msr::IA32_APIC_BASE, base_msr | (1 << 11)) };
        }
        let physical = PhysAddr(base_msr & 0x000f_ffff_ffff_f000);
        let apic = Self { registers: direct_map.to_virtual(physical).as_mut_ptr() };
        apic.write(SPURIOUS, SOFTWARE_ENABLE | u32::from(SPURIOUS_VECTOR));
        apic.write(LVT_TIMER, LVT_MASKED);
        Ok(apic)
    }

    fn read(&self, register: usize) -> u32 {
        // SAFETY: `registers` is the direct-map address of this CPU's LAPIC
        // page (covered by the direct map); `register` is one of the offsets
        // above, all 16-byte aligned within the 4 KiB page.
        unsafe { self.registers.byte_add(register).read_volatile() }
    }

    fn write(&self, register: usize, value: u32) {
        // SAFETY: as for `read`.
        unsafe { self.registers.byte_add(register).write_volatile(value) }
    }

    /// The APIC ID of this CPU.
    pub fn id(&self) -> u32 {
        self.read(ID) >> 24
    }

    /// The version register (version in bits 0-7, max LVT entry in 16-23).
    pub fn version(&self) -> u32 {
        self.read(VERSION)
    }

    /// Signals the end of the interrupt being handled.
    pub fn end_of_interrupt(&self) {
        self.write(EOI, 0);
    }

    /// Measures the timer and the TSC against 10 ms of the PIT.
    pub fn calibrate(&self) -> Result<Calibration, LapicError> {
        const PIT_TICKS: u16 = 11_932; // 10.0 ms
        self.write(TIMER_DIVIDE, DIVIDE_BY_16);
        self.write(LVT_TIMER, LVT_MASKED);
        let mut tsc_start = 0;
        let mut tsc_end = 0;
        let mut remaining = 0;
        let finished = pit::wait_ticks(
            PIT_TICKS,
            || {
                self.write(TIMER_INITIAL, u32::MAX);
                tsc_start = read_tsc();
            },
            || {
                remaining = self.read(TIMER_CURRENT);
                tsc_end = read_tsc();
            },
        );
        self.write(TIMER_INITIAL, 0);
        if !finished {
            return Err(LapicError::PitTimeout);
        }
        let counted = u64::from(u32::MAX - remaining);
        if counted == 0 {
            return Err(LapicError::TimerStopped);
        }
        let scale = |count: u64| count * pit::FREQUENCY_HZ / u64::from(PIT_TICKS);
        Ok(Calibration { timer_hz: scale(counted), tsc_hz: scale(tsc_end.wrapping_sub(tsc_start)) })
    }

    /// Starts the timer interrupting `hz` times a second on [`TIMER_VECTOR`].
    pub fn start_periodic(&self, calibration: &Calibration, hz: u32) {
        let initial = (calibration.timer_hz / u64::from(hz)).clamp(1, u64::from(u32::MAX));
        self.write(TIMER_DIVIDE, DIVIDE_BY_16);
        self.write(LVT_TIMER, TIMER_PERIODIC | u32::from(TIMER_VECTOR));
        self.write(TIMER_INITIAL, initial as u32);
    }

    /// Handles a timer interrupt: counts it and acknowledges it.
    pub fn timer_interrupt(&self) {
        TICKS.fetch_add(1, Ordering::Relaxed);
        self.end_of_interrupt();
    }
}

/// Reads the time-stamp counter.
pub fn read_tsc() -> u64 {
    // SAFETY: RDTSC has no preconditions (CR4.TSD only restricts ring 3).
    unsafe { core::arch::x86_64::_rdtsc() }
}
