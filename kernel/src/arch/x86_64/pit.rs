//! The 8254 programmable interval timer, used once at boot as a reference
//! clock to calibrate the local APIC timer and the TSC (8254 data sheet;
//! channel 2 gated through port 0x61 as on every PC).

use super::port;

/// Input clock of the PIT.
pub const FREQUENCY_HZ: u64 = 1_193_182;

const CHANNEL2_DATA: u16 = 0x42;
const COMMAND: u16 = 0x43;
const GATE_PORT: u16 = 0x61;
const GATE: u8 = 1 << 0;
const SPEAKER: u8 = 1 << 1;
const OUT2: u8 = 1 << 5;

/// Runs `start`, waits `ticks` PIT ticks (at most 65535, about 55 ms) on
/// channel 2 in mode 0, and runs `stop`. Returns `false` if the PIT never
/// signalled the end (no PIT, or a broken one), after a bounded wait.
pub fn wait_ticks(ticks: u16, start: impl FnOnce(), stop: impl FnOnce()) -> bool {
    // SAFETY: channel 2 and the gate port are owned by the kernel during
    // boot; the speaker output stays disabled.
    unsafe {
        let gate = port::read_u8(GATE_PORT) & !(SPEAKER | GATE);
        port::write_u8(GATE_PORT, gate);
        port::write_u8(COMMAND, 0b1011_0000); // channel 2, lobyte/hibyte, mode 0, binary
        let [low, high] = ticks.to_le_bytes();
        port::write_u8(CHANNEL2_DATA, low);
        port::write_u8(CHANNEL2_DATA, high);
        start();
        port::write_u8(GATE_PORT, gate | GATE);
        // Bound the wait by a generous iteration count so a machine without
        // a working PIT reports an error instead of hanging.
        let mut finished = false;
        for _ in 0..200_000_000u64 {
            if port::read_u8(GATE_PORT) & OUT2 != 0 {
                finished = true;
                break;
            }
        }
        stop();
        port::write_u8(GATE_PORT, gate);
        finished
    }
}
