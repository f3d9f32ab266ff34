//! The kernel binary: the Limine requests, the entry point and the panic
//! handler. Everything else is in the library.

#![cfg_attr(strata_baremetal, no_std, no_main)]

#[cfg(strata_baremetal)]
mod entry {
    use limine::BaseRevision;
    use limine::request::{
        BootloaderInfoRequest, ExecutableAddressRequest, ExecutableCmdlineRequest, HhdmRequest,
        MemoryMapRequest, ModuleRequest, RequestsEndMarker, RequestsStartMarker, RsdpRequest,
    };
    use strata_kernel::boot::{self, BootResponses};

    #[used]
    #[unsafe(link_section = ".requests_start_marker")]
    static START_MARKER: RequestsStartMarker = RequestsStartMarker::new();
    #[used]
    #[unsafe(link_section = ".requests")]
    static BASE_REVISION: BaseRevision = BaseRevision::new();
    #[used]
    #[unsafe(link_section = ".requests")]
    static BOOTLOADER_INFO: BootloaderInfoRequest = BootloaderInfoRequest::new();
    #[used]
    #[unsafe(link_section = ".requests")]
    static HHDM: HhdmRequest = HhdmRequest::new();
    #[used]
    #[unsafe(link_section = ".requests")]
    static MEMORY_MAP: MemoryMapRequest = MemoryMapRequest::new();
    #[used]
    #[unsafe(link_section = ".requests")]
    static EXECUTABLE_ADDRESS: ExecutableAddressRequest = ExecutableAddressRequest::new();
    #[used]
    #[unsafe(link_section = ".requests")]
    static CMDLINE: ExecutableCmdlineRequest = ExecutableCmdlineRequest::new();
    #[used]
    #[unsafe(link_section = ".requests")]
    static MODULES: ModuleRequest = ModuleRequest::new();
    #[used]
    #[unsafe(link_section = ".requests")]
    static RSDP: RsdpRequest = RsdpRequest::new();
    #[used]
    #[unsafe(link_section = ".requests_end_marker")]
    static END_MARKER: RequestsEndMarker = RequestsEndMarker::new();

    // Entered from the bootloader in long mode, interrupts off, on the
    // bootloader's stack. SSE must be on before any Rust runs (the
    // precompiled `core` uses it): CR0.MP|NE set, CR0.EM|TS clear,
    // CR4.OSFXSR|OSXMMEXCPT set. Then RFLAGS is cleared (DF=0 for the ABI)
    // and the stack aligned for the call.
    core::arch::global_asm!(
        r#"
        .section .text._start, "ax"
        .global _start
    _start:
        movq %cr0, %rax
        andq $~((1 << 2) | (1 << 3)), %rax
        orq $((1 << 1) | (1 << 5)), %rax
        movq %rax, %cr0
        movq %cr4, %rax
        orq $((1 << 9) | (1 << 10)), %rax
        movq %rax, %cr4
        pushq $0
        popfq
        andq $-16, %rsp
        xorl %ebp, %ebp
        call kernel_main
        ud2
    "#,
        options(att_syntax)
    );

    #[unsafe(no_mangle)]
    extern "C" fn kernel_main() -> ! {
        let kernel = boot::start(BootResponses {
            base_revision_supported: BASE_REVISION.is_supported(),
            bootloader: BOOTLOADER_INFO.get_response(),
            hhdm: HHDM.get_response(),
            memory_map: MEMORY_MAP.get_response(),
            executable_address: EXECUTABLE_ADDRESS.get_response(),
            cmdline: CMDLINE.get_response(),
            modules: MODULES.get_response(),
            rsdp: RSDP.get_response(),
        });
        #[cfg(feature = "selftest")]
        strata_kernel::selftest::run(&kernel);
        strata_kernel::run::start(&kernel);
        boot::idle(&kernel)
    }

    #[panic_handler]
    fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
        boot::panic(info)
    }
}

#[cfg(not(strata_baremetal))]
fn main() {
    eprintln!("strata-kernel is a bare-metal program; build a boot image with `cargo xtask image`");
    std::process::exit(2);
}
