//! alloc: the global allocator. The heap is the largest RAM range of the PVH memory map above
//! the image (below 3 GiB: the identity-mapped, cached part), minus what the loader put there. An
//! address-ordered first-fit free list with coalescing: small, and fragmentation stays low for
//! the short-lived single-threaded apps it serves.

use core::alloc::{GlobalAlloc, Layout};
use core::ptr::null_mut;

/// Block granularity: every block is 16-byte aligned and a multiple of 16 bytes, so a free
/// block always has room for its header.
const UNIT: usize = 16;

#[repr(C)]
struct Free {
    size: usize,
    next: *mut Free,
}

struct Heap {
    head: core::cell::UnsafeCell<*mut Free>,
    total: core::cell::UnsafeCell<usize>,
}

// SAFETY: one CPU, no interrupt handlers that allocate: never accessed concurrently.
unsafe impl Sync for Heap {}

#[global_allocator]
static HEAP: Heap = Heap { head: core::cell::UnsafeCell::new(null_mut()), total: core::cell::UnsafeCell::new(0) };

const fn round_up(x: usize, to: usize) -> usize {
    (x + to - 1) & !(to - 1)
}

/// Picks the heap range and makes it one free block.
pub(crate) fn init() {
    let Some(si) = crate::boot::start_info() else { return };
    let image_end = crate::boot::image_end();
    // What the loader handed over and we still read later (args copies the command line).
    let cmdline = si.cmdline();
    let taken = [
        (si as *const _ as u64, core::mem::size_of_val(si) as u64),
        (si.cmdline_paddr, cmdline.len() as u64 + 1),
        (si.memmap_paddr, si.memmap().len() as u64 * 24),
    ];
    let mut best = (0u64, 0u64);
    for e in si.memmap() {
        if e.kind != 1 {
            continue; // not RAM
        }
        let mut start = e.addr.max(image_end);
        let mut end = (e.addr + e.size).min(3 << 30); // cached, identity-mapped RAM
        for &(addr, len) in &taken {
            if addr == 0 || addr + len <= start || addr >= end {
                continue;
            }
            // Keep the larger side of a loader structure inside the range.
            if addr - start.min(addr) >= end - (addr + len).min(end) {
                end = addr;
            } else {
                start = addr + len;
            }
        }
        let start = round_up(start as usize, UNIT) as u64;
        let end = end & !(UNIT as u64 - 1);
        if end > start && end - start > best.1 - best.0 {
            best = (start, end);
        }
    }
    if best.1 > best.0 {
        let block = best.0 as usize as *mut Free;
        // SAFETY: the range is RAM nobody else uses; boot is single-threaded.
        unsafe {
            block.write(Free { size: (best.1 - best.0) as usize, next: null_mut() });
            *HEAP.head.get() = block;
            *HEAP.total.get() = (best.1 - best.0) as usize;
        }
    }
}

/// The heap's size in bytes (0 when there is no memory map).
#[allow(dead_code)]
pub fn heap_size() -> usize {
    // SAFETY: see `Sync` above.
    unsafe { *HEAP.total.get() }
}

unsafe impl GlobalAlloc for Heap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let size = round_up(layout.size().max(1), UNIT);
        let align = layout.align().max(UNIT);
        // SAFETY: the free list only holds blocks inside the heap range, see `init`/`dealloc`.
        unsafe {
            let mut link: *mut *mut Free = self.head.get();
            while !(*link).is_null() {
                let block = *link;
                let (addr, bsize, next) = (block as usize, (*block).size, (*block).next);
                let start = round_up(addr, align);
                if start + size <= addr + bsize {
                    let tail = addr + bsize - (start + size);
                    // The rest after the allocation stays free, linked where the block was.
                    let after = if tail > 0 {
                        let t = (start + size) as *mut Free;
                        t.write(Free { size: tail, next });
                        t
                    } else {
                        next
                    };
                    if start > addr {
                        // Alignment gap before it (a multiple of 16): keep it as a free block.
                        (*block).size = start - addr;
                        (*block).next = after;
                    } else {
                        *link = after;
                    }
                    return start as *mut u8;
                }
                link = &raw mut (*block).next;
            }
            null_mut()
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let size = round_up(layout.size().max(1), UNIT);
        let addr = ptr as usize;
        // SAFETY: ptr/layout come from `alloc`, so the block is ours to put back.
        unsafe {
            // Find the neighbours in address order.
            let mut prev: *mut Free = null_mut();
            let mut next = *self.head.get();
            while !next.is_null() && (next as usize) < addr {
                prev = next;
                next = (*next).next;
            }
            let block = ptr as *mut Free;
            block.write(Free { size, next });
            if !next.is_null() && addr + size == next as usize {
                (*block).size += (*next).size;
                (*block).next = (*next).next;
            }
            if prev.is_null() {
                *self.head.get() = block;
            } else if prev as usize + (*prev).size == addr {
                (*prev).size += (*block).size;
                (*prev).next = (*block).next;
            } else {
                (*prev).next = block;
            }
        }
    }
}
