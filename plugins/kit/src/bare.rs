//! What a plugin without `std` needs: an allocator, a panic handler and `cabi_realloc`.
//!
//! Rust's `std` on `wasm32-wasip2` imports about twenty WASI interfaces (environment, exit,
//! streams, terminals, the filesystem...), and the gateway links every one of them into each
//! instance. A plugin that only uses `core` and `alloc` imports nothing but the
//! gateway's `log`: its instances are set up in about half the time (`BENCHMARKS.md`).
//!
//! ```ignore
//! #![no_std]
//! extern crate alloc;
//!
//! wit_bindgen::generate!({ path: "../../wit", world: "transform" });
//! plugin_kit::bare_plugin!();
//! ```
//!
//! A panic is logged through the gateway's `log` (the plugin's bindings must be generated at
//! the crate root, as above) and then traps, which fails the call like any trap.

use core::alloc::{GlobalAlloc, Layout};
use core::arch::wasm32;
use core::cell::Cell;

const PAGE: usize = 64 * 1024;

// `memcmp`, `memcpy` and the like, which `core` calls, come from wasi-libc (they import
// nothing).
#[link(name = "c")]
unsafe extern "C" {
    /// Where the linker put the end of the stack and the static data: the heap starts here.
    static __heap_base: u8;
}

/// A bump allocator that rewinds when nothing is allocated. Each call's arguments, and all a
/// well-behaved plugin allocates during the call, are freed by the time the call has returned:
/// so an instance the gateway reuses (`instances: reused`) starts each call on the same memory
/// as the last, and a fresh one never frees. Between rewinds, only the latest allocation is
/// worth freeing, which makes a growing `Vec` or `String` grow in place. Memory is taken from
/// the rest of the initial pages first, then grown a page at a time (the gateway's memory cap
/// still applies: a failed grow is an allocation failure, and an instance that fails is never
/// reused).
pub struct Bump {
    /// The first free byte; 0 until the first allocation, and after a rewind.
    next: Cell<usize>,
    /// Allocations not yet freed.
    live: Cell<usize>,
}

// A component instance runs on one thread.
unsafe impl Sync for Bump {}

impl Bump {
    #[allow(clippy::new_without_default)]
    pub const fn new() -> Bump {
        Bump {
            next: Cell::new(0),
            live: Cell::new(0),
        }
    }

    fn next(&self) -> usize {
        match self.next.get() {
            0 => &raw const __heap_base as usize,
            next => next,
        }
    }

    /// Makes `end` addressable and the first free byte; false when memory cannot grow.
    fn claim(&self, end: usize) -> bool {
        let have = wasm32::memory_size(0) * PAGE;
        if end > have && wasm32::memory_grow(0, (end - have).div_ceil(PAGE)) == usize::MAX {
            return false;
        }
        self.next.set(end);
        true
    }

    fn is_latest(&self, ptr: *mut u8, size: usize) -> bool {
        ptr as usize + size == self.next()
    }
}

unsafe impl GlobalAlloc for Bump {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let start = self.next().next_multiple_of(layout.align());
        match start.checked_add(layout.size()) {
            Some(end) if self.claim(end) => {
                self.live.set(self.live.get() + 1);
                start as *mut u8
            }
            _ => core::ptr::null_mut(),
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let live = self.live.get().saturating_sub(1);
        self.live.set(live);
        if live == 0 {
            self.next.set(0);
        } else if self.is_latest(ptr, layout.size()) {
            self.next.set(ptr as usize);
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if self.is_latest(ptr, layout.size()) {
            return match (ptr as usize).checked_add(new_size) {
                Some(end) if self.claim(end) => ptr,
                _ => core::ptr::null_mut(),
            };
        }
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        let new = unsafe { self.alloc(new_layout) };
        if !new.is_null() {
            unsafe { core::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size)) };
            // The old block is not the latest: this only counts it freed.
            unsafe { self.dealloc(ptr, layout) };
        }
        new
    }
}

/// The canonical ABI's `cabi_realloc`, which the host calls to place arguments in the guest.
///
/// # Safety
/// As the canonical ABI defines it: `old` is null or an allocation of `old_len` bytes with
/// alignment `align`.
pub unsafe fn cabi_realloc(old: *mut u8, old_len: usize, align: usize, new_len: usize) -> *mut u8 {
    if new_len == 0 {
        return align as *mut u8;
    }
    let ptr = unsafe {
        if old_len == 0 {
            alloc::alloc::alloc(Layout::from_size_align_unchecked(new_len, align))
        } else {
            let layout = Layout::from_size_align_unchecked(old_len, align);
            alloc::alloc::realloc(old, layout, new_len)
        }
    };
    if ptr.is_null() {
        wasm32::unreachable();
    }
    ptr
}

/// Logs a panic's message with `log` (unless logging it panicked too) and traps.
pub fn panic(info: &core::panic::PanicInfo, log: impl FnOnce(&str)) -> ! {
    static mut PANICKING: bool = false;
    // SAFETY: one thread.
    unsafe {
        if !PANICKING {
            PANICKING = true;
            log(&alloc::format!("plugin panicked: {info}"));
        }
    }
    wasm32::unreachable()
}

/// Makes a `#![no_std]` plugin crate complete: the [`Bump`] allocator, a panic handler that
/// logs and traps, and `cabi_realloc`. Use it once, at the crate root, after the crate's
/// `wit_bindgen::generate!`.
// `crate::capgate::...` is meant: the `log` import of the plugin's own bindings.
#[allow(clippy::crate_in_macro_def)]
#[macro_export]
macro_rules! bare_plugin {
    () => {
        #[global_allocator]
        static ALLOCATOR: $crate::bare::Bump = $crate::bare::Bump::new();

        #[panic_handler]
        fn panic(info: &::core::panic::PanicInfo) -> ! {
            $crate::bare::panic(info, |message| {
                crate::capgate::transform::host::log(
                    crate::capgate::transform::types::Level::Error,
                    message,
                )
            })
        }

        /// # Safety
        /// See `plugin_kit::bare::cabi_realloc`.
        #[unsafe(no_mangle)]
        unsafe extern "C" fn cabi_realloc(
            old: *mut u8,
            old_len: usize,
            align: usize,
            new_len: usize,
        ) -> *mut u8 {
            unsafe { $crate::bare::cabi_realloc(old, old_len, align, new_len) }
        }
    };
}
