//! The file client's allocator, set for a short process that moves large buffers.
#![allow(unsafe_code)]

/// Keeps freed memory in the process instead of returning it to the kernel: every chunk of a
/// download is a buffer of about a MiB, which glibc by default gives back as it is freed (a
/// mapping of its own, or the top of a heap trimmed), so the kernel faulted in and zeroed the
/// pages of every chunk again: about a tenth of the client's CPU per download. The client runs
/// for one transfer and ends, which gives everything back. Call before any thread starts.
pub fn keep_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: `mallopt` only sets glibc's allocator parameters; it is called before the
    // client's threads start, and the values are within glibc's documented ranges.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
    }
}
