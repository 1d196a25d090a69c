//! Pure placement logic: (current slice owners, live hosts) → new slice owners.
//!
//! The planner does no I/O. It keeps every slice whose owner is still live where it is,
//! takes slices only from hosts above their fair share, and gives them (and orphaned slices)
//! to hosts below it — so a host joining moves about 1/N of the slices and a host leaving
//! moves only its own.

use steady_proto::slice::SLICE_COUNT;

/// A slice → owner assignment: `owners[s]` is an index into the host list, or `None`.
pub type Assignment = Vec<Option<usize>>;

/// Computes a balanced assignment of all slices over `host_count` hosts that moves as few
/// slices as possible away from `current`. `current` may name hosts `>= host_count` (hosts
/// that left); their slices are reassigned.
pub fn rebalance(current: &[Option<usize>], host_count: usize) -> Assignment {
    let slice_count = SLICE_COUNT as usize;
    assert_eq!(current.len(), slice_count, "assignment covers every slice");
    if host_count == 0 {
        return vec![None; slice_count];
    }
    let mut owners: Assignment = current.iter().map(|o| o.filter(|&h| h < host_count)).collect();
    let targets = fair_shares(&owners, host_count);
    release_excess(&mut owners, &targets, host_count);
    fill_orphans(&mut owners, &targets, host_count);
    debug_assert!(owners.iter().all(Option::is_some));
    owners
}

/// How many slices each host should own: `S / N`, with the `S % N` leftover slices going to
/// the hosts that already hold the most (ties by index), so no slice moves just for the remainder.
fn fair_shares(owners: &Assignment, host_count: usize) -> Vec<usize> {
    let slice_count = owners.len();
    let counts = counts(owners, host_count);
    let mut targets = vec![slice_count / host_count; host_count];
    let mut by_count: Vec<usize> = (0..host_count).collect();
    by_count.sort_by_key(|&h| (std::cmp::Reverse(counts[h]), h));
    for &h in by_count.iter().take(slice_count % host_count) {
        targets[h] += 1;
    }
    debug_assert_eq!(targets.iter().sum::<usize>(), slice_count);
    targets
}

fn counts(owners: &Assignment, host_count: usize) -> Vec<usize> {
    let mut counts = vec![0; host_count];
    for owner in owners.iter().flatten() {
        counts[*owner] += 1;
    }
    counts
}

/// Hosts above target give up their highest-numbered slices until they are at target.
fn release_excess(owners: &mut Assignment, targets: &[usize], host_count: usize) {
    let mut counts = counts(owners, host_count);
    for owner in owners.iter_mut().rev() {
        if let Some(h) = *owner {
            if counts[h] > targets[h] {
                counts[h] -= 1;
                *owner = None;
            }
        }
    }
}

/// Orphaned slices go, in slice order, to the hosts below target, lowest index first.
fn fill_orphans(owners: &mut Assignment, targets: &[usize], host_count: usize) {
    let mut counts = counts(owners, host_count);
    let mut host = 0;
    for owner in owners.iter_mut().filter(|o| o.is_none()) {
        while counts[host] >= targets[host] {
            host += 1;
            assert!(host < host_count, "targets sum to the slice count");
        }
        *owner = Some(host);
        counts[host] += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn moved(a: &Assignment, b: &Assignment) -> usize {
        a.iter().zip(b).filter(|(x, y)| x != y).count()
    }

    fn assert_balanced(a: &Assignment, host_count: usize) {
        let counts = counts(a, host_count);
        let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
        assert!(max - min <= 1, "counts {counts:?}");
        assert!(a.iter().all(Option::is_some));
    }

    #[test]
    fn empty_ring_goes_to_the_first_host() {
        let a = rebalance(&vec![None; SLICE_COUNT as usize], 1);
        assert!(a.iter().all(|o| *o == Some(0)));
    }

    #[test]
    fn joins_move_about_one_nth_and_stay_balanced() {
        let mut a = rebalance(&vec![None; SLICE_COUNT as usize], 1);
        for n in 2..=64 {
            let b = rebalance(&a, n);
            assert_balanced(&b, n);
            let ideal = SLICE_COUNT as usize / n;
            assert!(moved(&a, &b) <= ideal + 1, "n={n} moved {} ideal {ideal}", moved(&a, &b));
            a = b;
        }
    }

    #[test]
    fn a_leaving_host_moves_only_its_own_slices() {
        let a = (1..=5).fold(rebalance(&vec![None; SLICE_COUNT as usize], 1), |a, n| rebalance(&a, n));
        // Host 4 (the last) leaves.
        let b = rebalance(&a, 4);
        assert_balanced(&b, 4);
        for (before, after) in a.iter().zip(&b) {
            if *before != Some(4) {
                assert_eq!(before, after, "a slice of a staying host moved");
            }
        }
    }

    #[test]
    fn rebalance_is_idempotent() {
        let a = rebalance(&vec![None; SLICE_COUNT as usize], 3);
        assert_eq!(rebalance(&a, 3), a);
    }

    #[test]
    fn no_hosts_means_no_owners() {
        let a = rebalance(&vec![Some(0); SLICE_COUNT as usize], 0);
        assert!(a.iter().all(Option::is_none));
    }
}
