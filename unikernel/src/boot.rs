//! boot: the Xen PVH entry (qemu `-kernel`), the switch from 32-bit protected mode to long mode
//! with identity-mapped 2 MiB pages over the first 4 GiB, SSE, a GDT with a TSS and an IDT whose
//! exception handlers run on an IST stack (Rust code uses the red zone below rsp), then the app.

/// Physical address of the PVH `hvm_start_info` (0 when entered some other way).
static mut START_INFO: u32 = 0;

/// The PVH `hvm_start_info` magic: under microvm eax holds the multiboot magic at entry, so
/// the protocol is recognised from the structure, not from the register.
const PVH_MAGIC: u32 = 0x336e_c578;

#[cfg(feature = "bench-exit-at-entry")]
macro_rules! bench_exit {
    () => {
        "xorl %eax, %eax\n outl %eax, $0xf4\n"
    };
}
#[cfg(not(feature = "bench-exit-at-entry"))]
macro_rules! bench_exit {
    () => {
        ""
    };
}

core::arch::global_asm!(
    // XEN_ELFNOTE_PHYS32_ENTRY (18): the 32-bit physical entry point qemu's PVH loader jumps to.
    ".pushsection .note.Xen, \"a\", @note",
    ".balign 4",
    ".long 4, 8, 18",
    ".asciz \"Xen\"",
    ".balign 4",
    ".quad _start",
    ".popsection",
    "",
    ".pushsection .text.imgbuild_boot, \"ax\", @progbits",
    ".code32",
    ".globl _start",
    "_start:",
    bench_exit!(),
    // PVH: flat 32-bit protected mode, paging off, ebx = start_info. No stack yet.
    "cli",
    "cld",
    "movl %ebx, %esi",
    // Caches on: CR0.CD/NW come set from reset and the MTRRs disabled (all memory uncached),
    // and KVM honours both (memory ~1000x slower). MTRRs on with write-back as the default.
    "movl $0x2ff, %ecx",
    "movl $0x806, %eax",
    "xorl %edx, %edx",
    "wrmsr",
    "movl %cr0, %eax",
    "andl $0x9FFFFFFF, %eax",
    "movl %eax, %cr0",
    // Zero .bss: the page tables and stacks below live there.
    "movl $__imgbuild_bss_start, %edi",
    "movl $__imgbuild_bss_end, %ecx",
    "subl %edi, %ecx",
    "xorl %eax, %eax",
    "rep stosb",
    "movl $imgbuild_boot_stack_top, %esp",
    // 4 page directories of 512 2 MiB pages each: identity map of 0..4 GiB (RAM, and MMIO
    // from 3 GiB).
    "movl $imgbuild_boot_pd, %edi",
    "xorl %ecx, %ecx",
    "1:",
    "movl %ecx, %eax",
    "shll $21, %eax",
    "orl $0x83, %eax", // present, writable, 2 MiB page
    "cmpl $1536, %ecx",
    "jb 4f",
    "orl $0x18, %eax", // 3..4 GiB holds the MMIO devices: uncached (PCD|PWT)
    "4:",
    "movl %eax, (%edi,%ecx,8)",
    "incl %ecx",
    "cmpl $2048, %ecx",
    "jb 1b",
    "movl $imgbuild_boot_pdpt, %edi",
    "movl $imgbuild_boot_pd + 3, %eax",
    "movl %eax, (%edi)",
    "addl $4096, %eax",
    "movl %eax, 8(%edi)",
    "addl $4096, %eax",
    "movl %eax, 16(%edi)",
    "addl $4096, %eax",
    "movl %eax, 24(%edi)",
    "movl $imgbuild_boot_pdpt + 3, %eax",
    "movl %eax, imgbuild_boot_pml4",
    "movl $imgbuild_boot_pml4, %eax",
    "movl %eax, %cr3",
    // CR4: PAE, OSFXSR and OSXMMEXCPT (SSE must work before any Rust code runs).
    "movl %cr4, %eax",
    "orl $0x620, %eax",
    "movl %eax, %cr4",
    // EFER.LME
    "movl $0xC0000080, %ecx",
    "rdmsr",
    "orl $0x100, %eax",
    "wrmsr",
    // CR0: paging, write protect, monitor coprocessor, protected mode; clear EM (x87 emulation).
    "movl %cr0, %eax",
    "andl $0xFFFFFFFB, %eax",
    "orl $0x80010003, %eax",
    "movl %eax, %cr0",
    "lgdt imgbuild_gdt_ptr",
    "ljmp $0x08, $2f",
    ".code64",
    "2:",
    "movw $0x10, %ax",
    "movw %ax, %ds",
    "movw %ax, %es",
    "movw %ax, %ss",
    "xorl %eax, %eax",
    "movw %ax, %fs",
    "movw %ax, %gs",
    "movl $imgbuild_boot_stack_top, %esp", // zero-extends: the upper halves are undefined here
    "movl %esi, %edi",
    "fninit",
    "call imgbuild_uk_start",
    "3:",
    "cli",
    "hlt",
    "jmp 3b",
    "",
    // Exception entry stubs, 16 bytes apart: push a dummy error code where the CPU pushes none,
    // then the vector number.
    ".balign 16",
    "imgbuild_vectors:",
    ".set vec, 0",
    ".rept 32",
    ".balign 16",
    ".if (vec == 8) || ((vec >= 10) && (vec <= 14)) || (vec == 17) || (vec == 21) || (vec == 29) || (vec == 30)",
    ".else",
    "pushq $0",
    ".endif",
    "pushq $vec",
    "jmp imgbuild_trap_common",
    ".set vec, vec + 1",
    ".endr",
    "imgbuild_trap_common:",
    "movq %rsp, %rdi",
    "andq $-16, %rsp",
    "call imgbuild_uk_trap",
    "ud2",
    ".popsection",
    "",
    ".pushsection .data.imgbuild_gdt, \"aw\", @progbits",
    ".balign 16",
    ".globl imgbuild_gdt",
    "imgbuild_gdt:",
    ".quad 0",
    ".quad 0x00AF9A000000FFFF", // 0x08: 64-bit code
    ".quad 0x00CF92000000FFFF", // 0x10: data
    ".quad 0, 0",               // 0x18: the TSS, filled in at boot
    "imgbuild_gdt_end:",
    ".balign 8",
    "imgbuild_gdt_ptr:",
    ".word imgbuild_gdt_end - imgbuild_gdt - 1",
    ".quad imgbuild_gdt",
    ".popsection",
    "",
    ".pushsection .bss.imgbuild_boot, \"aw\", @nobits",
    ".balign 4096",
    "imgbuild_boot_pml4: .skip 4096",
    "imgbuild_boot_pdpt: .skip 4096",
    "imgbuild_boot_pd: .skip 4096 * 4",
    "imgbuild_boot_stack: .skip 32768",
    "imgbuild_boot_stack_top:",
    "imgbuild_ist_stack: .skip 8192",
    ".globl imgbuild_ist_stack_top",
    "imgbuild_ist_stack_top:",
    ".popsection",
    options(att_syntax)
);

unsafe extern "C" {
    static mut imgbuild_gdt: [u64; 5];
    static imgbuild_ist_stack_top: u8;
    static imgbuild_vectors: u8;
    static __imgbuild_image_end: u8;
}

unsafe extern "Rust" {
    /// Defined by the app through `main!`.
    fn __imgbuild_unikernel_main(rt: &mut crate::Runtime) -> i32;
}

/// The 64-bit TSS as 32-bit words (its 64-bit fields are only 4-byte aligned).
#[repr(C, align(16))]
struct Tss([u32; 26]);
static mut TSS: Tss = Tss([0; 26]);

#[repr(C, align(16))]
struct Idt([u64; 64]);
static mut IDT: Idt = Idt([0; 64]);

#[repr(C, packed)]
struct DescriptorPtr {
    limit: u16,
    base: u64,
}

/// First Rust code: called by the boot stub on the boot stack with the start_info address.
#[unsafe(no_mangle)]
extern "C" fn imgbuild_uk_start(start_info: u32) -> ! {
    #[cfg(feature = "clock")]
    crate::clock::mark_boot();
    // SAFETY: single CPU, interrupts off: nothing else touches these statics during boot.
    unsafe {
        if start_info != 0 && core::ptr::read_volatile(start_info as usize as *const u32) == PVH_MAGIC {
            START_INFO = start_info;
        }
        init_cpu_tables();
    }
    #[cfg(feature = "console")]
    crate::console::init();
    #[cfg(feature = "alloc")]
    crate::heap::init();
    #[cfg(feature = "args")]
    crate::args::init();
    // Parsed at boot, not on first use: a damaged image shows at once, and an image with the
    // module carries its code even when the app only reads files later (or never).
    #[cfg(feature = "fs")]
    crate::fs::get();
    let mut rt = crate::Runtime { _private: () };
    // SAFETY: `main!` defines it with this signature.
    let code = unsafe { __imgbuild_unikernel_main(&mut rt) };
    crate::exit::exit(code)
}

/// Loads the TSS (IST1 = the exception stack) and the IDT for the 32 CPU exceptions.
unsafe fn init_cpu_tables() {
    // SAFETY: called once at boot; the tables are statics that live forever.
    unsafe {
        let ist_top = &raw const imgbuild_ist_stack_top as u64;
        let tss = &raw mut TSS;
        (*tss).0[9] = ist_top as u32; // IST1 at byte 0x24
        (*tss).0[10] = (ist_top >> 32) as u32;
        (*tss).0[25] = 104 << 16; // I/O map base beyond the limit: no I/O bitmap
        let base = tss as u64;
        let limit = 103u64;
        let gdt = &raw mut imgbuild_gdt;
        (*gdt)[3] = (limit & 0xffff) | ((base & 0xff_ffff) << 16) | (0x89 << 40) | (((base >> 24) & 0xff) << 56);
        (*gdt)[4] = base >> 32;
        core::arch::asm!("ltr ax", in("ax") 0x18u16, options(nostack));

        let vectors = &raw const imgbuild_vectors as u64;
        let idt = &raw mut IDT;
        for v in 0..32u64 {
            let handler = vectors + v * 16;
            (*idt).0[2 * v as usize] = (handler & 0xffff)
                | (0x08 << 16) // kernel code selector
                | (1 << 32) // IST1
                | (0x8e << 40) // present, interrupt gate
                | (((handler >> 16) & 0xffff) << 48);
            (*idt).0[2 * v as usize + 1] = handler >> 32;
        }
        let ptr = DescriptorPtr { limit: (32 * 16 - 1) as u16, base: idt as u64 };
        core::arch::asm!("lidt [{}]", in(reg) &ptr, options(nostack, readonly));
    }
}

/// What the exception stubs leave on the IST stack.
#[repr(C)]
struct TrapFrame {
    vector: u64,
    error: u64,
    rip: u64,
    cs: u64,
    rflags: u64,
    rsp: u64,
    ss: u64,
}

/// A CPU exception is fatal: report it and exit with 102.
#[unsafe(no_mangle)]
extern "C" fn imgbuild_uk_trap(frame: &TrapFrame) -> ! {
    #[cfg(feature = "console")]
    {
        let cr2: u64;
        // SAFETY: reading cr2 has no side effects.
        unsafe { core::arch::asm!("mov {}, cr2", out(reg) cr2, options(nomem, nostack)) };
        crate::println!(
            "fatal: CPU exception {} at rip {:#x} (error {:#x}, rsp {:#x}, cr2 {:#x})",
            frame.vector, frame.rip, frame.error, frame.rsp, cr2
        );
    }
    let _ = frame;
    crate::exit::exit(102)
}

/// The PVH start_info, when booted through PVH.
#[allow(dead_code)]
pub(crate) fn start_info() -> Option<&'static StartInfo> {
    // SAFETY: START_INFO is written once at boot before anything reads it; the structure was
    // checked by its magic and lies in identity-mapped memory we never allocate from.
    unsafe {
        let p = START_INFO;
        (p != 0).then(|| &*(p as usize as *const StartInfo))
    }
}

/// `struct hvm_start_info` of the Xen PVH boot ABI (version 1 adds the memory map).
#[repr(C)]
#[allow(dead_code)]
pub(crate) struct StartInfo {
    pub magic: u32,
    pub version: u32,
    pub flags: u32,
    pub nr_modules: u32,
    pub modlist_paddr: u64,
    pub cmdline_paddr: u64,
    pub rsdp_paddr: u64,
    pub memmap_paddr: u64,
    pub memmap_entries: u32,
    pub reserved: u32,
}

/// `struct hvm_memmap_table_entry`.
#[repr(C)]
#[allow(dead_code)]
pub(crate) struct MemmapEntry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
    pub reserved: u32,
}

#[allow(dead_code)]
impl StartInfo {
    /// The command line (empty when there is none or it is not UTF-8).
    pub fn cmdline(&self) -> &'static str {
        if self.cmdline_paddr == 0 {
            return "";
        }
        // SAFETY: the loader gives a NUL-terminated string in identity-mapped memory.
        let bytes = unsafe { core::ffi::CStr::from_ptr(self.cmdline_paddr as usize as *const core::ffi::c_char) };
        bytes.to_str().unwrap_or("")
    }

    /// The memory map (empty before version 1 of the structure).
    pub fn memmap(&self) -> &'static [MemmapEntry] {
        if self.version < 1 || self.memmap_paddr == 0 {
            return &[];
        }
        // SAFETY: the loader gives memmap_entries entries at memmap_paddr.
        unsafe { core::slice::from_raw_parts(self.memmap_paddr as usize as *const MemmapEntry, self.memmap_entries as usize) }
    }
}

/// First byte after the image, its .bss and the boot stacks (page aligned).
#[allow(dead_code)]
pub(crate) fn image_end() -> u64 {
    // Only the address of the linker symbol is taken.
    &raw const __imgbuild_image_end as u64
}

