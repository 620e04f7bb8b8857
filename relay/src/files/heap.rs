//! How much freed memory a process keeps, set for processes that move large buffers.
#![allow(unsafe_code)]

/// Whose heap is set.
#[derive(Debug, Clone, Copy)]
pub enum Keeper {
    /// A file command: one transfer, then the process ends and gives everything back.
    Transfer,
    /// The appliance, which runs for months: keeps a bounded amount per allocator arena.
    Appliance,
}

/// Keeps freed memory in the process instead of returning it to the kernel. Every chunk that
/// moves is a buffer of about a MiB, and every batch quinn receives is copied into a new buffer;
/// by default glibc gives such memory back as it is freed (a mapping of its own, or the top of a
/// heap trimmed), so the kernel faulted in and zeroed the pages of every chunk again: about a
/// tenth of the client's CPU per download, and three page faults in four of the relay's during a
/// put. Both limits must be set: one alone turns off glibc's own adaptive threshold, and then every
/// chunk buffer above 128 KiB is a mapping of its own. Call before any thread starts.
pub fn keep_freed_memory(keeper: Keeper) {
    // Allocations below the first limit come from the heap; freed memory at a heap's top is kept
    // up to the second.
    let (mmap_threshold, trim_threshold) = match keeper {
        Keeper::Transfer => (32 << 20, 256 << 20),
        // Above the largest chunk with its frame (4 MiB), and a few chunks kept per arena: at
        // most 16 MiB times glibc's arenas (up to eight per core) more than a process with the
        // defaults would keep.
        Keeper::Appliance => (8 << 20, 16 << 20),
    };
    #[cfg(target_env = "gnu")]
    {
        // SAFETY: `mallopt` only sets glibc's allocator parameters; it is called before the
        // process's threads start, and the values are within glibc's documented ranges.
        let set = unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, mmap_threshold) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, trim_threshold) == 1
        };
        if !set {
            tracing::warn!("the allocator kept its defaults: freed memory goes back at once");
        }
    }
    #[cfg(not(target_env = "gnu"))]
    let _ = (mmap_threshold, trim_threshold);
}
