use std::process::ExitCode;

/// mimalloc: the proxy allocates and frees small buffers for every request, which glibc's
/// allocator does at a measurably higher CPU cost.
#[global_allocator]
static ALLOCATOR: Allocator = Allocator;

/// mimalloc, asked for a plain block whenever the alignment wanted is at most a word's.
///
/// The `mimalloc` crate asks for every block with `mi_malloc_aligned`. mimalloc 3 serves that
/// from its fast path only up to 1 KiB: a larger block (a header map, a boxed future, a
/// buffer) goes through its over-allocating aligned path, 3 to 5 times the instructions of a
/// plain `mi_malloc` for the same block. Every block mimalloc hands out is at least word
/// aligned (block sizes are whole words, counted from a 16-byte aligned start), so for those
/// the plain call gives the same guarantee.
struct Allocator;

const WORD: usize = std::mem::size_of::<usize>();

// SAFETY: every call goes to mimalloc, whose blocks meet the layout's alignment: a plain
// block is word aligned, and larger alignments go to the aligned calls. `mi_free` frees both.
unsafe impl std::alloc::GlobalAlloc for Allocator {
    #[inline]
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        use libmimalloc_sys::{mi_malloc, mi_malloc_aligned};
        if layout.align() <= WORD {
            unsafe { mi_malloc(layout.size()) as *mut u8 }
        } else {
            unsafe { mi_malloc_aligned(layout.size(), layout.align()) as *mut u8 }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        use libmimalloc_sys::{mi_zalloc, mi_zalloc_aligned};
        if layout.align() <= WORD {
            unsafe { mi_zalloc(layout.size()) as *mut u8 }
        } else {
            unsafe { mi_zalloc_aligned(layout.size(), layout.align()) as *mut u8 }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: std::alloc::Layout) {
        unsafe { libmimalloc_sys::mi_free(ptr.cast()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        use libmimalloc_sys::{mi_realloc, mi_realloc_aligned};
        if layout.align() <= WORD {
            unsafe { mi_realloc(ptr.cast(), new_size) as *mut u8 }
        } else {
            unsafe { mi_realloc_aligned(ptr.cast(), new_size, layout.align()) as *mut u8 }
        }
    }
}

fn main() -> ExitCode {
    gateway::cli::main()
}

#[cfg(test)]
mod tests {
    use std::alloc::{GlobalAlloc as _, Layout};

    use super::Allocator;

    /// Every block meets its layout's alignment, keeps its bytes through a realloc, and
    /// zeroed blocks are zeroed: sizes from a byte to past mimalloc's small and medium
    /// classes, alignments from 1 to a page.
    #[test]
    fn blocks_are_aligned_and_keep_their_bytes() {
        let sizes = [
            1,
            7,
            8,
            24,
            48,
            100,
            1000,
            1024,
            1025,
            3048,
            4096,
            10_000,
            100_000,
            1 << 22,
        ];
        for &size in &sizes {
            for align in [1, 2, 4, 8, 16, 32, 64, 4096] {
                let layout = Layout::from_size_align(size, align).unwrap();
                // SAFETY: non-zero sizes; every block is freed with its layout.
                unsafe {
                    let p = Allocator.alloc(layout);
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0, "size {size} align {align}");
                    for i in 0..size {
                        *p.add(i) = (i % 251) as u8;
                    }
                    let grown = size * 3 + 5;
                    let q = Allocator.realloc(p, layout, grown);
                    assert_eq!(q as usize % align, 0, "realloc: size {size} align {align}");
                    assert!((0..size).all(|i| *q.add(i) == (i % 251) as u8));
                    Allocator.dealloc(q, Layout::from_size_align(grown, align).unwrap());
                    let z = Allocator.alloc_zeroed(layout);
                    assert_eq!(z as usize % align, 0);
                    assert!((0..size).all(|i| *z.add(i) == 0));
                    Allocator.dealloc(z, layout);
                }
            }
        }
    }
}
