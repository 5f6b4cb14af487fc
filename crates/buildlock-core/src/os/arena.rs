//! The allocator of the hook and commit-retry when they are built against musl (install.sh does
//! so where it can: musl's start-up is a quarter of a millisecond cheaper than glibc's on a
//! virtual machine). musl's own malloc is slow on what a failing hook allocates (parsing and
//! writing the state, the messages): a 64-agent election took 71 ms with it against 56 with
//! glibc's. mimalloc fixed that and cost the green path a millisecond at start-up (its arenas).
//!
//! A hook lives for a commit: [`Arena`] hands out memory from a fixed block by moving a pointer,
//! and takes back only the newest allocation (or grows it in place); the rest is returned when the
//! process exits. Once the block is used up (a hook that waits a long time, a huge output), every
//! allocation goes to the system allocator, and is freed there. The block is zero-initialised
//! static memory: the kernel gives its pages on first touch, so an unused part costs nothing.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The block's size: far more than a commit's hook needs (a few hundred KB), far less than what
/// anyone would miss.
pub const BLOCK: usize = 8 << 20;

#[repr(C, align(4096))]
struct Block(UnsafeCell<[u8; BLOCK]>);

// SAFETY: the block's bytes are only reached through `Bump`, which hands each byte range to one
// allocation at a time.
unsafe impl Sync for Block {}

static BLOCK_MEMORY: Block = Block(UnsafeCell::new([0; BLOCK]));
static NEXT: AtomicUsize = AtomicUsize::new(0);

/// The global allocator: [`Bump`] over a static block, then [`System`].
pub struct Arena;

impl Arena {
    fn bump() -> Bump<'static> {
        Bump {
            base: BLOCK_MEMORY.0.get().cast::<u8>(),
            size: BLOCK,
            next: &NEXT,
        }
    }
}

// SAFETY: every pointer handed out is either a range of the block that no other live allocation
// holds (see `Bump`), or the system allocator's; each is given back to the one it came from.
unsafe impl GlobalAlloc for Arena {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match Arena::bump().alloc(layout) {
            Some(p) => p,
            // SAFETY: as the caller of `alloc` promised (a non-zero size).
            None => unsafe { System.alloc(layout) },
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let bump = Arena::bump();
        if bump.holds(ptr) {
            bump.take_back(ptr, layout.size());
        } else {
            // SAFETY: not the block's, so the system allocator's, with this layout.
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let bump = Arena::bump();
        if !bump.holds(ptr) {
            // SAFETY: the system allocator's, with this layout, as the caller promised.
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        // Shrunk, any allocation keeps its place (its tail is lost until the exit).
        if new_size <= layout.size() || bump.resize_in_place(ptr, layout.size(), new_size) {
            return ptr;
        }
        // SAFETY: the caller promised a valid layout for `new_size`.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        // SAFETY: a non-zero size, as for `realloc`.
        let new = unsafe { self.alloc(new_layout) };
        if !new.is_null() {
            // SAFETY: both ranges are live, distinct allocations at least this long.
            unsafe { std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size)) };
            bump.take_back(ptr, layout.size());
        }
        new
    }
}

/// A bump allocator over `size` bytes at `base`: `next` is the offset of the first free byte.
/// Taking a range back releases it and handing it out acquires it, so the thread that gets a
/// range another freed sees that thread's last writes to it done.
struct Bump<'a> {
    base: *mut u8,
    size: usize,
    next: &'a AtomicUsize,
}

impl Bump<'_> {
    fn holds(&self, ptr: *mut u8) -> bool {
        let (p, b) = (ptr as usize, self.base as usize);
        p >= b && p < b + self.size
    }

    /// A range of the block for `layout`, or None when it does not fit.
    fn alloc(&self, layout: Layout) -> Option<*mut u8> {
        let base = self.base as usize;
        let mut cur = self.next.load(Ordering::Acquire);
        loop {
            let start = (base + cur).checked_next_multiple_of(layout.align())? - base;
            let end = start.checked_add(layout.size())?;
            if end > self.size {
                return None;
            }
            match self
                .next
                .compare_exchange_weak(cur, end, Ordering::AcqRel, Ordering::Acquire)
            {
                // SAFETY: start < size: inside the block.
                Ok(_) => return Some(unsafe { self.base.add(start) }),
                Err(now) => cur = now,
            }
        }
    }

    /// Frees the newest allocation (`ptr`, `size` bytes); any other stays until the exit.
    fn take_back(&self, ptr: *mut u8, size: usize) {
        let start = ptr as usize - self.base as usize;
        let _ =
            self.next
                .compare_exchange(start + size, start, Ordering::AcqRel, Ordering::Relaxed);
    }

    /// Grows or shrinks the newest allocation where it is; false for any other, or when it
    /// does not fit.
    fn resize_in_place(&self, ptr: *mut u8, size: usize, new_size: usize) -> bool {
        let start = ptr as usize - self.base as usize;
        let Some(end) = start.checked_add(new_size) else {
            return false;
        };
        end <= self.size
            && self
                .next
                .compare_exchange(start + size, end, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_bump(size: usize, f: impl FnOnce(&Bump<'_>)) {
        let mut memory = vec![0u64; size / 8];
        let next = AtomicUsize::new(0);
        let bump = Bump {
            base: memory.as_mut_ptr().cast(),
            size,
            next: &next,
        };
        f(&bump);
    }

    #[test]
    fn allocations_are_aligned_disjoint_and_inside_the_block() {
        with_bump(4096, |b| {
            let l = |size, align| Layout::from_size_align(size, align).unwrap();
            let a = b.alloc(l(3, 1)).unwrap();
            let c = b.alloc(l(16, 16)).unwrap();
            let d = b.alloc(l(8, 8)).unwrap();
            assert_eq!(c as usize % 16, 0);
            assert_eq!(d as usize % 8, 0);
            assert!(a as usize + 3 <= c as usize && c as usize + 16 <= d as usize);
            assert!(b.holds(a) && b.holds(d));
            assert!(b.alloc(l(5000, 8)).is_none(), "too big for the block");
        });
    }

    #[test]
    fn only_the_newest_is_taken_back_or_resized_in_place() {
        with_bump(4096, |b| {
            let l = Layout::from_size_align(64, 8).unwrap();
            let first = b.alloc(l).unwrap();
            let second = b.alloc(l).unwrap();
            assert!(!b.resize_in_place(first, 64, 128), "not the newest");
            assert!(
                b.resize_in_place(second, 64, 1024),
                "the newest grows where it is"
            );
            b.take_back(first, 64); // not the newest: stays
            let third = b.alloc(l).unwrap();
            assert_eq!(third as usize, second as usize + 1024);
            b.take_back(third, 64);
            assert_eq!(b.alloc(l).unwrap(), third, "the newest was taken back");
            assert!(
                !b.resize_in_place(third, 64, 1 << 20),
                "past the block's end"
            );
        });
    }

    #[test]
    fn the_global_allocator_moves_to_the_system_when_the_block_is_used_up() {
        // The real allocator, called directly (the tests themselves use the system's).
        let a = Arena;
        let small = Layout::from_size_align(100, 8).unwrap();
        let huge = Layout::from_size_align(BLOCK + 1, 8).unwrap();
        // SAFETY: non-zero sizes; each pointer goes back with its layout.
        unsafe {
            let p = a.alloc(small);
            assert!(Arena::bump().holds(p));
            p.write_bytes(7, 100);
            let q = a.realloc(p, small, 300);
            assert_eq!(*q.add(99), 7, "kept its bytes when it grew");
            let big = a.alloc(huge);
            assert!(
                !big.is_null() && !Arena::bump().holds(big),
                "from the system"
            );
            big.write_bytes(1, BLOCK + 1);
            let moved = a.realloc(q, Layout::from_size_align(300, 8).unwrap(), BLOCK * 2);
            assert!(!Arena::bump().holds(moved), "grown out of the block");
            assert_eq!(*moved.add(99), 7);
            a.dealloc(moved, Layout::from_size_align(BLOCK * 2, 8).unwrap());
            a.dealloc(big, huge);
        }
    }
}
