//! The instruction behind a nested page fault on device memory, decoded
//! with iced-x86: which register receives a read, or what value a write
//! stores, and how long the instruction is (the hardware does not always
//! say: QEMU's SVM has no next-RIP save). Also the memory operand of a
//! string I/O instruction (INS, OUTS): its segment, which the exit does
//! not give, and its address size.

use iced_x86::{Decoder, DecoderOptions, Instruction, Mnemonic, OpKind, Register};
use strata_abi::vcpu::Segment;

/// A general register operand: its encoding number and how it is accessed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gpr {
    /// 0 (RAX) to 15 (R15).
    pub index: usize,
    /// Bytes accessed: 1, 2, 4 or 8.
    pub size: u8,
    /// AH, CH, DH or BH: bits 8–15 of the register.
    pub high_byte: bool,
}

impl Gpr {
    fn of(register: Register) -> Option<Self> {
        let high_byte = matches!(register, Register::AH | Register::CH | Register::DH | Register::BH);
        let full = register.full_register();
        let index = (full as usize).checked_sub(Register::RAX as usize).filter(|&i| i < 16)?;
        let size = register.size() as u8;
        Some(Self { index, size, high_byte })
    }

    /// The register's new value after `data` is loaded into this operand
    /// (32-bit writes clear the upper half, narrower ones keep it).
    pub fn merge(self, old: u64, data: u64) -> u64 {
        match (self.size, self.high_byte) {
            (1, true) => (old & !0xff00) | (data & 0xff) << 8,
            (1, false) => (old & !0xff) | (data & 0xff),
            (2, _) => (old & !0xffff) | (data & 0xffff),
            (4, _) => data & 0xffff_ffff,
            _ => data,
        }
    }

    /// The operand's value in a register holding `value`.
    pub fn extract(self, value: u64) -> u64 {
        match (self.size, self.high_byte) {
            (1, true) => (value >> 8) & 0xff,
            (1, false) => value & 0xff,
            (2, _) => value & 0xffff,
            (4, _) => value & 0xffff_ffff,
            _ => value,
        }
    }
}

/// What a decoded device access does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Load `size` bytes into the register.
    Read(Gpr),
    /// Store the register's value.
    WriteRegister(Gpr),
    /// Store an immediate.
    WriteImmediate(u64),
}

/// A decoded access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decoded {
    /// The access.
    pub access: Access,
    /// Bytes accessed.
    pub size: u8,
    /// Instruction length.
    pub length: u64,
}

/// Why an access cannot be emulated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MmioError {
    /// The bytes are not a valid instruction.
    Invalid,
    /// A valid instruction this emulation does not handle.
    Unsupported(Mnemonic),
}

impl core::fmt::Display for MmioError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Invalid => write!(f, "the faulting bytes are not a valid instruction"),
            Self::Unsupported(mnemonic) => write!(f, "{mnemonic:?} on device memory is not emulated"),
        }
    }
}

/// Decodes the instruction in `bytes` (fetched at the guest's RIP) for a
/// CPU in `bitness`-bit mode (16, 32 or 64).
pub fn decode(bytes: &[u8], bitness: u32) -> Result<Decoded, MmioError> {
    let mut decoder = Decoder::new(bitness, bytes, DecoderOptions::NONE);
    let instruction: Instruction = decoder.decode();
    if instruction.is_invalid() {
        return Err(MmioError::Invalid);
    }
    let unsupported = Err(MmioError::Unsupported(instruction.mnemonic()));
    if instruction.mnemonic() != Mnemonic::Mov || instruction.op_count() != 2 {
        return unsupported;
    }
    let size = instruction.memory_size().size() as u8;
    let access = match (instruction.op0_kind(), instruction.op1_kind()) {
        (OpKind::Register, OpKind::Memory) => match Gpr::of(instruction.op0_register()) {
            Some(gpr) => Access::Read(gpr),
            None => return unsupported,
        },
        (OpKind::Memory, OpKind::Register) => match Gpr::of(instruction.op1_register()) {
            Some(gpr) => Access::WriteRegister(gpr),
            None => return unsupported,
        },
        (OpKind::Memory, OpKind::Immediate8 | OpKind::Immediate16 | OpKind::Immediate32) => {
            Access::WriteImmediate(instruction.immediate(1))
        }
        (OpKind::Memory, OpKind::Immediate32to64) => {
            Access::WriteImmediate(instruction.immediate32to64() as u64)
        }
        _ => return unsupported,
    };
    Ok(Decoded { access, size, length: instruction.len() as u64 })
}

/// The memory operand of INS or OUTS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StringOperand {
    /// Its segment: ES for INS (no override applies, Intel SDM vol. 2B
    /// INS); DS or the override prefix's for OUTS.
    pub segment: Segment,
    /// The address size, in bytes (2, 4 or 8): which part of RSI or RDI
    /// (and of RCX, with REP) the instruction uses.
    pub address_size: u8,
}

/// Decodes the string I/O instruction in `bytes` (fetched at the guest's
/// RIP) for a CPU in `bitness`-bit mode. The exit's own address size is
/// not used: under QEMU 7.2's SVM a real-mode `rep outsb` exits with a 64-bit one.
pub fn string_operand(bytes: &[u8], bitness: u32) -> Result<StringOperand, MmioError> {
    let mut decoder = Decoder::new(bitness, bytes, DecoderOptions::NONE);
    let instruction: Instruction = decoder.decode();
    if instruction.is_invalid() {
        return Err(MmioError::Invalid);
    }
    use Mnemonic::*;
    if !matches!(instruction.mnemonic(), Insb | Insw | Insd | Outsb | Outsw | Outsd) {
        return Err(MmioError::Unsupported(instruction.mnemonic()));
    }
    // INS writes ES:(E/R)DI; OUTS reads its segment, DS unless overridden, at (E/R)SI.
    let (memory, input) = match instruction.op0_kind() {
        OpKind::Register => (instruction.op1_kind(), false),
        destination => (destination, true),
    };
    let segment = match instruction.memory_segment() {
        _ if input => Segment::Es,
        Register::ES => Segment::Es,
        Register::CS => Segment::Cs,
        Register::SS => Segment::Ss,
        Register::FS => Segment::Fs,
        Register::GS => Segment::Gs,
        _ => Segment::Ds,
    };
    let address_size = match memory {
        OpKind::MemorySegSI | OpKind::MemoryESDI => 2,
        OpKind::MemorySegESI | OpKind::MemoryESEDI => 4,
        _ => 8,
    };
    Ok(StringOperand { segment, address_size })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_and_stores_of_each_size() {
        // mov eax, [rbx]
        let read = decode(&[0x8b, 0x03], 64).expect("decodes");
        assert_eq!(
            read,
            Decoded { access: Access::Read(Gpr { index: 0, size: 4, high_byte: false }), size: 4, length: 2 }
        );
        // mov [rdi+8], r9
        let write = decode(&[0x4c, 0x89, 0x4f, 0x08], 64).expect("decodes");
        assert_eq!(write.access, Access::WriteRegister(Gpr { index: 9, size: 8, high_byte: false }));
        assert_eq!(write.length, 4);
        // mov dword [rax], 0x12345678
        let immediate = decode(&[0xc7, 0x00, 0x78, 0x56, 0x34, 0x12], 64).expect("decodes");
        assert_eq!(immediate, Decoded { access: Access::WriteImmediate(0x1234_5678), size: 4, length: 6 });
        // mov ah, [rsi]: bits 8-15 of RAX
        let high = decode(&[0x8a, 0x26], 64).expect("decodes");
        let Access::Read(gpr) = high.access else { panic!("{high:?}") };
        assert_eq!((gpr.index, gpr.high_byte), (0, true));
        assert_eq!(gpr.merge(0x1111_2222_3333_4444, 0xab), 0x1111_2222_3333_ab44);
        // 32-bit mode: mov [ebx], ax
        let narrow = decode(&[0x66, 0x89, 0x03], 32).expect("decodes");
        assert_eq!(narrow.size, 2);
    }

    #[test]
    fn string_io_operands_take_their_segment_and_address_size_from_the_instruction() {
        let operand = |bytes: &[u8], bitness| string_operand(bytes, bitness).expect("string I/O");
        let (es, ds) = (Segment::Es, Segment::Ds);
        // rep outsb in real mode: DS:SI.
        assert_eq!(operand(&[0xf3, 0x6e], 16), StringOperand { segment: ds, address_size: 2 });
        // es rep outsb: the override applies to OUTS...
        assert_eq!(operand(&[0x26, 0xf3, 0x6e], 16).segment, es);
        // ...but not to INS, always ES:DI (here cs rep insb).
        assert_eq!(operand(&[0x2e, 0xf3, 0x6c], 16), StringOperand { segment: es, address_size: 2 });
        // An address-size prefix: ESI in real mode, SI in 32-bit mode.
        assert_eq!(operand(&[0x67, 0x6e], 16).address_size, 4);
        assert_eq!(operand(&[0x67, 0x6f], 32).address_size, 2);
        // 64-bit mode: RSI, and a GS override (outsd).
        assert_eq!(operand(&[0x65, 0x6f], 64), StringOperand { segment: Segment::Gs, address_size: 8 });
        assert_eq!(string_operand(&[0xe6, 0x80], 16), Err(MmioError::Unsupported(Mnemonic::Out)));
        assert_eq!(string_operand(&[0x0f, 0xff], 64), Err(MmioError::Invalid));
    }

    #[test]
    fn other_instructions_are_refused() {
        assert_eq!(decode(&[0x01, 0x03], 64), Err(MmioError::Unsupported(Mnemonic::Add)));
        assert_eq!(decode(&[0x0f, 0xff], 64), Err(MmioError::Invalid));
        let merged = Gpr { index: 1, size: 4, high_byte: false }.merge(u64::MAX, 7);
        assert_eq!(merged, 7, "32-bit loads clear the upper half");
    }
}
