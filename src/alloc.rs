//! The process's memory allocator, and what it says about itself.
//!
//! Huge requests (a million rows is ~100 MB of tensors, decoded, converted and
//! encoded) make large, short-lived allocations on many threads. glibc malloc
//! kept much of that memory after the requests ended (retained RSS grew from
//! 1.0 to 1.6 GB over six rounds of eight concurrent 1M-row requests, and
//! plateaued at 1.4 GB with one arena), which looks like a leak to anyone
//! watching RSS. jemalloc with background threads returns dirty pages to the
//! OS after its decay time (10 s by default) even while the server is idle,
//! and its statistics tell allocator retention (resident − allocated) from a
//! real leak (allocated that keeps growing): both are exported on /metrics.
//! tests/load/huge_requests.py measures it.

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's view of the heap, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AllocatorStats {
    /// Bytes the program holds (what a leak makes grow).
    pub allocated: u64,
    /// Bytes in physically resident pages the allocator maps (what RSS
    /// sees of the heap, including freed pages not yet returned).
    pub resident: u64,
}

/// Fresh statistics (jemalloc caches them until its epoch is advanced), or
/// `None` if the allocator cannot report them.
pub fn stats() -> Option<AllocatorStats> {
    use tikv_jemalloc_ctl::{epoch, stats};
    epoch::advance().ok()?;
    Some(AllocatorStats {
        allocated: stats::allocated::read().ok()? as u64,
        resident: stats::resident::read().ok()? as u64,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn statistics_follow_allocations() {
        let before = super::stats().expect("jemalloc reports statistics");
        // Other tests allocate concurrently: margins well under the 64 MiB.
        let held = std::hint::black_box(vec![1u8; 64 << 20]);
        let during = super::stats().unwrap();
        assert!(
            during.allocated >= before.allocated + (32 << 20),
            "{before:?} {during:?}"
        );
        assert!(during.resident >= 32 << 20, "{during:?}");
        drop(held);
        let after = super::stats().unwrap();
        assert!(
            after.allocated + (32 << 20) <= during.allocated,
            "{during:?} {after:?}"
        );
    }
}
