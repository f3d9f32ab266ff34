//! The 8254 programmable interval timer at ports 40h–43h (Intel 8254 data
//! sheet, "Operation" and "Read-Back Command"), on guest time: the VMM
//! passes the current time in PIT input clocks (1,193,182 Hz) with every
//! access, and asks when channel 0's output next rises ([`Pit::deadline`])
//! and whether it rose since it last asked ([`Pit::take_edges`]); each
//! rise is an edge on ISA IRQ 0.
//!
//! Modelled: the control word (channel, access mode, counting mode), count
//! writes of LSB, MSB or LSB then MSB, counter reads in the same access
//! modes, the counter latch command, and the read-back command (count and
//! status latches); modes 0 (interrupt on terminal count), 2 (rate
//! generator) and 3 (square wave), and modes 1, 4 and 5 counting as 0
//! does. A count of 0 means 65536. Not modelled: BCD counting (counts are
//! binary), the gates (channel 2's is port 61h; channels 0 and 1 have
//! theirs tied high on a PC), and the output of channels 1 and 2.

/// The PIT's input clock, Hz.
pub const HZ: u64 = 1_193_182;

/// How a channel's count is read and written (control word bits 5:4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Access {
    #[default]
    Low,
    High,
    /// LSB then MSB.
    Word,
}

/// One counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Channel {
    mode: u8,
    access: Access,
    /// The count (1–65536) and when it was loaded; `None` until a count is
    /// written after the control word.
    loaded: Option<(u64, u64)>,
    /// A word write has had its LSB.
    low_written: Option<u8>,
    /// Latched count (a word read takes both bytes from it) and whether
    /// its LSB was read.
    latched: Option<u16>,
    latched_low_read: bool,
    /// A word read of the live count has had its LSB.
    live_low_read: bool,
    /// Latched status byte (read-back).
    status: Option<u8>,
    /// For channel 0: the output's rises up to this time were reported.
    reported_until: u64,
}

impl Channel {
    /// The counter's value at `now`.
    fn count(&self, now: u64) -> u16 {
        let Some((reload, at)) = self.loaded else { return 0 };
        let elapsed = now.saturating_sub(at);
        let value = match self.mode {
            2 => reload - elapsed % reload,
            // Decrements by two, reloading every half period.
            3 => {
                let half = (reload / 2).max(1);
                reload - 2 * (elapsed % half)
            }
            // Counts down once, then wraps through FFFFh and goes on.
            _ => reload.wrapping_sub(elapsed) & 0xffff,
        };
        value as u16
    }

    /// The output at `now`.
    fn output(&self, now: u64) -> bool {
        let Some((reload, at)) = self.loaded else {
            // After the control word: low in mode 0, high otherwise.
            return self.mode != 0;
        };
        let elapsed = now.saturating_sub(at);
        match self.mode {
            2 => elapsed % reload != reload - 1,
            3 => elapsed % reload < reload.div_ceil(2),
            _ => elapsed >= reload,
        }
    }

    /// The first time after `after` at which the output rises (the IRQ 0 edge).
    fn next_rise(&self, after: u64) -> Option<u64> {
        let (reload, at) = self.loaded?;
        match self.mode {
            // Periodic: rises at `at + k * reload`, k ≥ 1.
            2 | 3 => {
                let periods = after.saturating_sub(at) / reload + 1;
                Some(at + periods * reload)
            }
            _ => (at + reload > after).then_some(at + reload),
        }
    }

    fn status_byte(&self, now: u64) -> u8 {
        let access = match self.access {
            Access::Low => 1,
            Access::High => 2,
            Access::Word => 3,
        };
        u8::from(self.output(now)) << 7 | u8::from(self.loaded.is_none()) << 6 | access << 4 | self.mode << 1
    }

    fn read(&mut self, now: u64) -> u8 {
        if let Some(status) = self.status.take() {
            return status;
        }
        if let Some(latched) = self.latched {
            let [low, high] = latched.to_le_bytes();
            return match self.access {
                Access::Low => {
                    self.latched = None;
                    low
                }
                Access::High => {
                    self.latched = None;
                    high
                }
                Access::Word if !self.latched_low_read => {
                    self.latched_low_read = true;
                    low
                }
                Access::Word => {
                    (self.latched, self.latched_low_read) = (None, false);
                    high
                }
            };
        }
        let [low, high] = self.count(now).to_le_bytes();
        match self.access {
            Access::Low => low,
            Access::High => high,
            Access::Word => {
                self.live_low_read = !self.live_low_read;
                if self.live_low_read { low } else { high }
            }
        }
    }

    fn write(&mut self, value: u8, now: u64) {
        let count = match self.access {
            Access::Low => u16::from(value),
            Access::High => u16::from(value) << 8,
            Access::Word => match self.low_written.take() {
                None => {
                    self.low_written = Some(value);
                    return;
                }
                Some(low) => u16::from_le_bytes([low, value]),
            },
        };
        let reload = if count == 0 { 0x1_0000 } else { u64::from(count) };
        self.loaded = Some((reload, now));
        self.reported_until = now;
    }

    fn latch(&mut self, now: u64) {
        // A second latch before the first is read is ignored.
        if self.latched.is_none() {
            (self.latched, self.latched_low_read) = (Some(self.count(now)), false);
        }
    }
}

/// The three counters.
#[derive(Debug, Clone, Default)]
pub struct Pit {
    channels: [Channel; 3],
}

impl Pit {
    /// The PIT as firmware leaves it before an OS programs it: nothing counting.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the VMM handles `port`.
    pub fn handles(port: u16) -> bool {
        (0x40..=0x43).contains(&port)
    }

    /// A byte written to `port` at `now`.
    pub fn write(&mut self, port: u16, value: u8, now: u64) {
        if port != 0x43 {
            self.channels[usize::from(port & 3)].write(value, now);
            return;
        }
        let select = usize::from(value >> 6);
        if select == 3 {
            // Read-back: bit 5 clear latches counts, bit 4 clear latches
            // status, of the channels in bits 3:1.
            for (i, channel) in self.channels.iter_mut().enumerate() {
                if value & (2 << i) == 0 {
                    continue;
                }
                if value & 0x10 == 0 && channel.status.is_none() {
                    channel.status = Some(channel.status_byte(now));
                }
                if value & 0x20 == 0 {
                    channel.latch(now);
                }
            }
            return;
        }
        let channel = &mut self.channels[select];
        let access = match (value >> 4) & 3 {
            0 => return channel.latch(now),
            1 => Access::Low,
            2 => Access::High,
            _ => Access::Word,
        };
        // Modes 6 and 7 are 2 and 3 (bit 3 is a don't-care there).
        let mode = match (value >> 1) & 7 {
            6 => 2,
            7 => 3,
            mode => mode,
        };
        // A control word stops the counter until a count is written.
        *channel = Channel { mode, access, reported_until: now, ..Channel::default() };
    }

    /// A byte read from `port` at `now` (the control port reads as all ones).
    pub fn read(&mut self, port: u16, now: u64) -> u8 {
        match port {
            0x40..=0x42 => self.channels[usize::from(port & 3)].read(now),
            _ => 0xff,
        }
    }

    /// When channel 0's output next rises after `now`, if it will.
    pub fn deadline(&self, now: u64) -> Option<u64> {
        self.channels[0].next_rise(now)
    }

    /// Whether channel 0's output rose since the last call (or since it was
    /// programmed), up to `now`: an edge on IRQ 0. Several rises the VMM
    /// did not see in time make one edge, as for a PIC that had not
    /// acknowledged the first.
    pub fn take_edges(&mut self, now: u64) -> bool {
        let channel = &mut self.channels[0];
        let rose = channel.next_rise(channel.reported_until).is_some_and(|rise| rise <= now);
        if rose {
            channel.reported_until = now;
        }
        rose
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Channel 0, LSB then MSB, `mode`, with `count`, at time `now`.
    fn programmed(mode: u8, count: u16, now: u64) -> Pit {
        let mut pit = Pit::new();
        pit.write(0x43, 0x30 | mode << 1, now);
        pit.write(0x40, count as u8, now);
        pit.write(0x40, (count >> 8) as u8, now);
        pit
    }

    fn read_word(pit: &mut Pit, now: u64) -> u16 {
        let low = pit.read(0x40, now);
        u16::from_le_bytes([low, pit.read(0x40, now)])
    }

    #[test]
    fn mode_0_interrupts_once_at_terminal_count() {
        let mut pit = programmed(0, 1000, 100);
        assert_eq!(pit.deadline(100), Some(1100));
        assert!(!pit.take_edges(1099));
        assert!(pit.take_edges(1100));
        assert!(!pit.take_edges(5000), "one shot");
        assert_eq!(pit.deadline(5000), None);
        // The counter read back: 1000 - 250 after 250 clocks.
        assert_eq!(read_word(&mut pit, 350), 750);
    }

    #[test]
    fn modes_2_and_3_are_periodic() {
        for mode in [2, 3, 6, 7] {
            let mut pit = programmed(mode, 100, 0);
            assert_eq!(pit.deadline(0), Some(100), "mode {mode}");
            assert_eq!(pit.deadline(150), Some(200));
            assert!(pit.take_edges(100));
            assert!(!pit.take_edges(150));
            // Three periods missed make one edge.
            assert!(pit.take_edges(480));
            assert!(!pit.take_edges(499));
            assert!(pit.take_edges(500));
        }
    }

    #[test]
    fn a_count_of_zero_is_65536_and_a_control_word_stops_the_counter() {
        let mut pit = programmed(2, 0, 0);
        assert_eq!(pit.deadline(0), Some(65536));
        pit.write(0x43, 0x34, 10);
        assert_eq!(pit.deadline(10), None);
        assert!(!pit.take_edges(70000));
    }

    #[test]
    fn latched_counts_hold_until_read_and_a_second_latch_is_ignored() {
        let mut pit = programmed(2, 1000, 0);
        pit.write(0x43, 0x00, 100); // latch channel 0
        pit.write(0x43, 0x00, 300); // ignored: the first is unread
        assert_eq!(read_word(&mut pit, 900), 900);
        assert_eq!(read_word(&mut pit, 900), 100, "live again after the latch is read");
    }

    #[test]
    fn byte_access_modes_read_and_write_one_half() {
        let mut pit = Pit::new();
        pit.write(0x43, 0x10, 0); // channel 0, LSB only, mode 0
        pit.write(0x40, 0x80, 0);
        assert_eq!(pit.deadline(0), Some(0x80));
        assert_eq!(pit.read(0x40, 0x10), 0x70);
        pit.write(0x43, 0x20, 0); // MSB only
        pit.write(0x40, 0x02, 0);
        assert_eq!(pit.deadline(0), Some(0x200));
        assert_eq!(pit.read(0x40, 0x100), 0x01);
    }

    #[test]
    fn read_back_latches_status_then_count() {
        let mut pit = programmed(0, 500, 0);
        // Read-back: count and status of channel 0.
        pit.write(0x43, 0xc2, 600);
        let status = pit.read(0x40, 700);
        assert_eq!(status, 0x80 | 0x30, "output high (terminal count passed), LSB/MSB, mode 0");
        // The count latched at 600: 500 - 600 wrapped.
        assert_eq!(read_word(&mut pit, 700), 0u16.wrapping_sub(100));
        // Status of a channel after its control word: null count, output low in mode 0.
        pit.write(0x43, 0x70, 0); // channel 1, LSB/MSB, mode 0
        pit.write(0x43, 0xe4, 0); // read-back status only, channel 1
        assert_eq!(pit.read(0x41, 0), 0x40 | 0x30);
    }

    #[test]
    fn square_wave_output_is_high_for_the_first_half() {
        let pit = programmed(3, 100, 0);
        let channel = &pit.channels[0];
        assert!(channel.output(10));
        assert!(!channel.output(60));
        assert_eq!(channel.count(10), 80, "counts down by two");
    }
}
