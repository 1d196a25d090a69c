//! The slice math: app name → 64-bit hash → slice.
//!
//! The hash space is cut into [`SLICE_COUNT`] equal, contiguous ranges ("slices"); the slicer
//! gives each slice one owner host. Contiguous ranges (rather than a hash modulo) keep a slice
//! a range of the ring, so a slice can later be split in two without rehashing any app.

use xxhash_rust::xxh3::xxh3_64;

/// Number of slices the hash space is cut into. A power of two so a slice is the top bits of
/// the hash. 1024 slices keep per-host slice counts even (±1) up to hundreds of hosts.
pub const SLICE_COUNT: u32 = 1024;
const SLICE_BITS: u32 = SLICE_COUNT.trailing_zeros();
const _: () = assert!(SLICE_COUNT.is_power_of_two());

/// Index of one slice, `0..SLICE_COUNT`.
pub type SliceId = u32;

/// The stable 64-bit hash of an app name. xxh3 is fixed by its specification, so every binary
/// and every release computes the same value.
pub fn app_hash(name: &str) -> u64 {
    xxh3_64(name.as_bytes())
}

/// The slice an app name falls in.
pub fn slice_of(name: &str) -> SliceId {
    let slice = (app_hash(name) >> (64 - SLICE_BITS)) as SliceId;
    debug_assert!(slice < SLICE_COUNT);
    slice
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_are_stable_and_in_range() {
        // Pinned values: if these change, every deployed app would move.
        assert_eq!(app_hash("hello"), 10_760_762_337_991_515_389);
        assert_eq!(slice_of("hello"), 597);
        assert_eq!(slice_of("hello"), slice_of("hello"));
        for i in 0..10_000 {
            assert!(slice_of(&format!("app-{i}")) < SLICE_COUNT);
        }
    }

    #[test]
    fn names_spread_over_all_slices() {
        let mut hits = vec![0u32; SLICE_COUNT as usize];
        for i in 0..100_000 {
            hits[slice_of(&format!("app-{i}")) as usize] += 1;
        }
        let empty = hits.iter().filter(|&&h| h == 0).count();
        assert_eq!(empty, 0, "every slice gets some of 100k names");
    }
}
