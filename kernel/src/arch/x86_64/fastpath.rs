//! The IPC fastpath: `Call` and `ReplyRecv` in their common case, in
//! assembly, in one straight pass over the objects involved (after seL4's
//! fastpath).
//!
//! The common case is a client calling a server that waits in `Recv`, and
//! the server replying and waiting again with `ReplyRecv`. `syscall_entry`
//! comes here with the caller's registers and FPU state saved in its TCB
//! (RDI: the saved context, which is the TCB's start, through the direct
//! map) and RSP at the top of the kernel stack. When all of these hold,
//! the general path's outcome is known in advance, and the fastpath makes
//! exactly its writes and switches to the other thread:
//! - the caller is alone at the highest runnable priority (the per-CPU
//!   `yield_alone` flag), and the other thread's priority is at least the
//!   caller's, so the scheduler picks it once the caller blocks;
//! - the CSpace is one CNode that takes all 64 bits of the CPtr, and the
//!   capability is an endpoint with the rights the call needs;
//! - `Call`: no extra capabilities, grant or grant-reply (so there is a
//!   reply link), and a receiver waiting at the head of the queue;
//! - `ReplyRecv`: a caller waiting for this thread's reply (not a fault's),
//!   no sender waiting on the endpoint, no signal pending on the bound
//!   notification;
//! - words past the eight message registers come from the sender's IPC
//!   buffer, which must exist (they reach the receiver only if it has one);
//! - the other thread's VSpace is the one whose CR3 value the general
//!   path's last switch to it found valid and left in its TCB (with PCIDs:
//!   no ASID pool deleted since, and its PCID not marked stale, which the
//!   general path flushes).
//!
//! Anything else goes on, unchanged, to the general path
//! (`syscall_general`), which takes the call from the start.
//!
//! There is no lock: like the `VmEnter` fastpath, this runs on one CPU
//! with interrupts off, entered from user mode, so no kernel code holds
//! the runtime. (With SMP it would take the kernel lock.) It cannot run on
//! the host: the boot cases `user.ipc_fastpath`, `user.ipc_fastpath_lengths`,
//! `user.ipc_fastpath_priorities` and `user.ipc_overlapping_buffers` check
//! what it leaves behind against what the general path gives for the same
//! calls, and count the calls it took; the benchmark measures it.

use super::user::PerCpu;
use crate::object::cap::raw as field;
use crate::object::ipc::{NOTIFICATION_WORD, flags};
use crate::object::tcb::{PRIORITIES, ThreadState, UserContext, layout, register};
use core::mem::{offset_of, size_of};
use strata_abi::object::Rights;

core::arch::global_asm!(
    r#"
    .section .text.user_entry, "ax"

    /* RCX: word 0 of the endpoint capability with the rights \need that
       the CPtr in the context at RDI names, if the CSpace is one CNode of
       64 bits; RDX: its badge.
       The slot is a function of the root's words and the CPtr: the TCB
       keeps the last one found, and a lookup of the same CPtr in the
       same root takes it from there. */
    .macro lookup_endpoint need
    movq {slots}(%rdi), %rax
    movq {rdi}(%rdi), %rdx
    cmpq {cache}(%rdi), %rax
    jne 1f
    cmpq {cache}+16(%rdi), %rdx
    jne 1f
    movq {slots}+8(%rdi), %rsi
    cmpq {cache}+8(%rdi), %rsi
    jne 1f
    movq {cache}+24(%rdi), %rdx
    .pushsection .text.ipc_fast_lookup, "ax"
1:
    movl %eax, %ecx
    andl $0x1f, %ecx
    cmpl ${tag_cnode}, %ecx
    jne syscall_general
    movl %eax, %ecx
    shrl ${radix_shift}, %ecx
    andl ${radix_mask}, %ecx
    movl %eax, %esi
    shrl ${guard_shift}, %esi
    andl ${guard_mask}, %esi
    addl %ecx, %esi
    cmpl $64, %esi
    jne syscall_general
    movq %rdx, %rsi
    shrq %cl, %rsi
    cmpq {slots}+8(%rdi), %rsi
    jne syscall_general
    shlq %cl, %rsi
    subq %rsi, %rdx                     /* the index */
    shlq $5, %rdx
    shlq ${cnode_up}, %rax
    shrq ${cnode_down}, %rax
    shlq $5, %rax
    addq %rax, %rdx
    movq {slots}(%rdi), %rax
    movq %rax, {cache}(%rdi)
    movq {slots}+8(%rdi), %rax
    movq %rax, {cache}+8(%rdi)
    movq {rdi}(%rdi), %rax
    movq %rax, {cache}+16(%rdi)
    movq %rdx, {cache}+24(%rdi)
    jmp 2f
    .popsection
2:
    movq (%rbp,%rdx), %rcx
    movq 8(%rbp,%rdx), %rdx
    movl %ecx, %eax
    andl $(0x1f | \need), %eax
    cmpl $({tag_endpoint} | \need), %eax
    jne syscall_general
    .endm

    /* \out: the message words of the IPC buffer of the TCB at \tcb,
       through the direct map; to \missing if it has none. */
    .macro buffer tcb, out, missing
    movq {slots}+64\tcb, %rax
    movl %eax, %r8d
    andl $0x1f, %r8d
    cmpl ${tag_frame}, %r8d
    jne \missing
    shlq ${frame_up}, %rax
    shrq ${frame_down}, %rax
    shlq $12, %rax
    movq {ipc_buffer}\tcb, %r8
    andl $0xfff, %r8d
    leaq {buffer_message}(%rax,%r8), \out
    addq %rbp, \out
    .endm

    /* The checks both calls share, for the other thread at R12 (RBX
       physical) and the info word in R14. Out: RSI, the CR3 value that
       switches to its address space (0: it is current); R13, the length
       the receiver gets; R9 and R10, the IPC buffers past eight words. */
    .macro common_checks info_mask
    movzbl {priority}(%rdi), %eax
    cmpb %al, {priority}(%r12)
    jb syscall_general
    movq {slots}+32(%r12), %rax         /* its VSpace's word 0, and the */
    cmpq {cr3_cache}(%r12), %rax        /* CR3 value `switch_to` found */
    jne syscall_general                           /* for it (run.rs) */
    movq {cr3_cache}+8(%r12), %rsi
    movq %cr3, %r8
    cmpq %rsi, %r8
    jne 4f
    xorl %esi, %esi
    jmp 5f
4:
    cmpq $0, %gs:{stale}
    je 5f
    movq {asid_epoch}(%rip), %r8        /* with PCIDs: no ASID pool was */
    cmpq %r8, {cr3_cache}+16(%r12)      /* deleted since (its ASIDs may */
    jne syscall_general                           /* name other spaces now) */
    movq %gs:{stale}, %r11
    movl %esi, %eax
    andl $0xfff, %eax
    btq %rax, (%r11)
    jc syscall_general
    btsq $63, %rsi
5:
    movl %r14d, %r13d
    andl $\info_mask, %r13d             /* (a call's extra caps count too) */
    cmpl ${register_words}, %r13d
    jbe 3f
    cmpl $0x7f, %r13d
    ja syscall_general
    movl ${max_length}, %eax
    cmpl %eax, %r13d
    cmoval %eax, %r13d
    buffer (%rdi), %r9, syscall_general
    buffer (%r12), %r10, 8f
    movq %r10, %rax                     /* the general path reads the */
    subq %r9, %rax                      /* whole message first: decline */
    leaq (,%r13,8), %r8                 /* a receiver's buffer starting */
    cmpq %r8, %rax                      /* inside the sender's message */
    jb syscall_general
    jmp 3f
8:
    movl ${register_words}, %r13d
3:
    .endm

    /* The rest of both calls, once committed: the message (R13 words,
       from the context at RDI to the one at R12) with RDX as the badge,
       and the other thread runs in the caller's place. */
    .macro deliver
    .set words, 1
    .irp offset, {m0}, {m1}, {m2}, {m3}, {m4}, {m5}, {m6}, {m7}
    cmpl $words, %r13d
    jb 6f
    movq \offset(%rdi), %rax
    movq %rax, \offset(%r12)
    .set words, words + 1
    .endr
    movl ${register_words}, %eax
    cmpl %eax, %r13d
    jbe 6f
5:
    movq (%r9,%rax,8), %r8
    movq %r8, (%r10,%rax,8)
    incl %eax
    cmpl %r13d, %eax
    jb 5b
6:
    movq %rdx, {rdi}(%r12)
    andq $-4096, %r14
    orq %r13, %r14
    movq %r14, {rsi}(%r12)
    /* The caller was alone at its priority, the highest, so the other
       thread (at least as high) is now alone at its own. */
    movzbl {priority}(%r12), %r8d
    movq %gs:{run_queues}, %r11
    cmpb %r8b, {priority}(%rdi)
    je 7f
    movzbl {priority}(%rdi), %eax
    movq $0, (%r11,%rax,8)
    movq $0, {tails}(%r11,%rax,8)
    btrq %rax, {nonempty}(%r11)
    btsq %r8, {nonempty}(%r11)
7:
    movq %rbx, (%r11,%r8,8)
    movq %rbx, {tails}(%r11,%r8,8)
    movq $0, {blocked_on}(%r12)
    movq ${runnable}, {state}(%r12)
    jmp ipc_fast_switch
    .endm

    .global ipc_fast_call
ipc_fast_call:
    cmpq $0, %gs:{yield_alone}
    je syscall_general
    movq {rsi}(%rdi), %r14
    movq %gs:{window}, %rbp
    movq %gs:{current}, %r15            /* R15: the caller (physical) */
    lookup_endpoint {write_right}
    testl ${grant_rights}, %ecx
    jz syscall_general
    shrq ${small_shift}, %rcx           /* RCX: the endpoint (slots hold */
    shlq $4, %rcx                       /* canonical encodings: no bits above) */
    movq (%rbp,%rcx), %rbx              /* RBX: the receiver, at its head */
    testq %rbx, %rbx
    jz syscall_general
    leaq (%rbp,%rbx), %r12
    cmpq ${blocked_on_receive}, {state}(%r12)
    jne syscall_general
    common_checks 0x1ff
    /* Committed. The receiver leaves the queue; the caller waits for
       the reply. */
    movq {queue_next}(%r12), %rax       /* (its previous link is 0) */
    movq %rax, (%rbp,%rcx)
    testq %rax, %rax
    jnz 0f
    movq $0, 8(%rbp,%rcx)
    jmp 1f
0:
    movq $0, {queue_prev}(%rbp,%rax)
    movq $0, {queue_next}(%r12)
1:
    movq ${blocked_on_reply}, {state}(%rdi)
    movq %rbx, {replier}(%rdi)
    movq %r15, {reply_to}(%r12)
    deliver

    .global ipc_fast_reply_recv
ipc_fast_reply_recv:
    cmpq $0, %gs:{yield_alone}
    je syscall_general
    movq %gs:{window}, %rbp
    movq %gs:{current}, %r15            /* R15: the server (physical) */
    movq {reply_to}(%rdi), %rbx         /* RBX: the caller */
    testq %rbx, %rbx
    jz syscall_general
    leaq (%rbp,%rbx), %r12
    cmpq ${blocked_on_reply}, {state}(%r12)
    jne syscall_general
    cmpq %r15, {replier}(%r12)
    jne syscall_general
    testq ${fault}, {send_flags}(%r12)
    jnz syscall_general
    movq {rsi}(%rdi), %r14              /* (extra capabilities are ignored) */
    lookup_endpoint {read_right}
    shrq ${small_shift}, %rcx
    shlq $4, %rcx                       /* RCX: the endpoint */
    movq (%rbp,%rcx), %rax
    testq %rax, %rax
    jz 0f
    cmpq ${blocked_on_send}, {state}(%rbp,%rax)
    je syscall_general
0:
    movq {bound}(%rdi), %rax
    testq %rax, %rax
    jz 0f
    cmpq $0, {notification_word}(%rbp,%rax)
    jne syscall_general
0:
    common_checks 0x7f
    /* Committed. The reply link goes; the server waits at the tail of
       the endpoint's queue. */
    movq $0, {reply_to}(%rdi)
    movq $0, {replier}(%r12)
    movq $0, {send_flags}(%r12)
    movq ${blocked_on_receive}, {state}(%rdi)
    movq %rcx, {blocked_on}(%rdi)
    movq 8(%rbp,%rcx), %rax             /* (its next link is 0: it was */
    movq %rax, {queue_prev}(%rdi)       /* alone in its run queue) */
    testq %rax, %rax
    jnz 0f
    movq %r15, (%rbp,%rcx)
    jmp 1f
0:
    movq %r15, {queue_next}(%rbp,%rax)
1:
    movq %r15, 8(%rbp,%rcx)
    xorl %edx, %edx
    deliver

    /* The thread at R12 (RBX physical) runs next, in the address space
       whose CR3 is RSI (0: the current one). */
ipc_fast_switch:
    movq %rbx, %gs:{current}
    leaq {fpu}(%r12), %rax
    movq %rax, %gs:{fpu_area}
    leaq {context_size}(%r12), %rax
    movq %rax, %gs:{context_end}
    testq %rsi, %rsi
    jz 0f
    movq %rsi, %cr3
    .if {counting}
    lock incq {cr3_writes}(%rip)
    .endif
0:
    .if {counting}
    lock incq {fastpath_calls}(%rip)
    .endif
    movq %r12, %rsp

    /* The return to user mode of the thread whose context is at RSP (its
       TCB), which is current: here, and from the `VmEnter` fastpath. */
    .global syscall_return
syscall_return:
    movl $-1, %eax
    xrstor64 {fpu}(%rsp)
    swapgs
    "#,
    pop_general_registers!(),
    r#"
    iretq
"#,
    slots = const layout::SLOTS,
    cache = const layout::LOOKUP_CACHE,
    cr3_cache = const layout::CR3_CACHE,
    rdi = const register::RDI,
    rsi = const register::RSI,
    state = const layout::STATE,
    priority = const layout::PRIORITY,
    ipc_buffer = const layout::IPC_BUFFER,
    queue_next = const layout::QUEUE_NEXT,
    queue_prev = const layout::QUEUE_PREV,
    blocked_on = const layout::BLOCKED_ON,
    send_flags = const layout::SEND_FLAGS,
    reply_to = const layout::REPLY_TO,
    replier = const layout::REPLIER,
    bound = const layout::BOUND_NOTIFICATION,
    fpu = const layout::FPU,
    context_size = const size_of::<UserContext>(),
    m0 = const register::MESSAGE[0],
    m1 = const register::MESSAGE[1],
    m2 = const register::MESSAGE[2],
    m3 = const register::MESSAGE[3],
    m4 = const register::MESSAGE[4],
    m5 = const register::MESSAGE[5],
    m6 = const register::MESSAGE[6],
    m7 = const register::MESSAGE[7],
    register_words = const strata_abi::message::REGISTER_WORDS,
    max_length = const strata_abi::message::MAX_LENGTH,
    buffer_message = const offset_of!(strata_abi::bootinfo::IpcBuffer, message),
    runnable = const ThreadState::Runnable as u64,
    blocked_on_send = const ThreadState::BlockedOnSend as u64,
    blocked_on_receive = const ThreadState::BlockedOnReceive as u64,
    blocked_on_reply = const ThreadState::BlockedOnReply as u64,
    fault = const flags::FAULT,
    notification_word = const NOTIFICATION_WORD,
    tag_cnode = const field::TAG_CNODE,
    tag_endpoint = const field::TAG_ENDPOINT,
    tag_frame = const field::TAG_FRAME,
    radix_shift = const field::CNODE_RADIX.shift,
    radix_mask = const field::CNODE_RADIX.mask(),
    guard_shift = const field::CNODE_GUARD_SIZE.shift,
    guard_mask = const field::CNODE_GUARD_SIZE.mask(),
    cnode_up = const field::CNODE_OBJECT.up(),
    cnode_down = const field::CNODE_OBJECT.down(),
    small_shift = const field::SMALL_OBJECT.shift,
    frame_up = const field::FRAME_OBJECT.up(),
    frame_down = const field::FRAME_OBJECT.down(),
    read_right = const field::right(Rights::READ),
    write_right = const field::right(Rights::WRITE),
    grant_rights = const field::right(Rights::GRANT.union(Rights::GRANT_REPLY)),
    yield_alone = const offset_of!(PerCpu, yield_alone),
    window = const offset_of!(PerCpu, window),
    run_queues = const offset_of!(PerCpu, run_queues),
    stale = const offset_of!(PerCpu, stale_asids),
    current = const offset_of!(PerCpu, current),
    fpu_area = const offset_of!(PerCpu, fpu_area),
    context_end = const offset_of!(PerCpu, context_end),
    tails = const 8 * PRIORITIES,
    nonempty = const 16 * PRIORITIES,
    counting = const cfg!(feature = "selftest") as u8,
    cr3_writes = sym crate::run::CR3_WRITES,
    fastpath_calls = sym crate::run::FASTPATH_CALLS,
    asid_epoch = sym crate::object::vspace::ASID_EPOCH,
    options(att_syntax)
);
