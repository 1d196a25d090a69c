//! Pure placement logic: (current slice owners, live hosts) → new slice owners.
//!
//! The planner does no I/O. It keeps every slice whose owner is still live where it is,
//! takes slices only from hosts above their fair share, and gives them (and orphaned slices)
//! to hosts below it — so a host joining moves about 1/N of the slices and a host leaving
//! moves only its own. [`rebalance`] balances slice counts; [`rebalance_weighted`], which the
//! store uses, balances app counts (a weight per slice) the same way.

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

/// A host above the mean app count by more than this many percent sheds slices, and the
/// improvement pass works on the most loaded host until it is at or below this bound.
const SHED_ABOVE_MEAN_PERCENT: u128 = 8;

/// A host below this percentage of the mean app count (a host that just joined) is filled
/// up to the mean with slices taken from the most loaded hosts.
const FILL_BELOW_MEAN_PERCENT: u128 = 50;

/// Computes an assignment of all slices over `host_count` hosts that balances the number of
/// apps per host (`weights[s]` is the app count of slice `s`) and moves as few apps as possible
/// away from `current`. `current` may name hosts `>= host_count` (hosts that left); their
/// slices are reassigned.
///
/// Slices of live hosts stay unless their host is well above the mean app count (it sheds
/// down to the mean), a host is far below it (it is filled from the most loaded hosts), or the
/// most loaded host can still be improved by a move or a swap. Empty slices move only to even
/// out the number of empty slices per host (they move no app, and new apps land on them).
/// With no apps at all this is [`rebalance`] (balance by slice count).
pub fn rebalance_weighted(current: &[Option<usize>], weights: &[u64], host_count: usize) -> Assignment {
    let slice_count = SLICE_COUNT as usize;
    assert_eq!(current.len(), slice_count, "assignment covers every slice");
    assert_eq!(weights.len(), slice_count, "a weight for every slice");
    if host_count == 0 || weights.iter().all(|&w| w == 0) {
        return rebalance(current, host_count);
    }
    let owners: Assignment = current.iter().map(|o| o.filter(|&h| h < host_count)).collect();
    let mut plan = Plan::new(owners, weights, host_count);
    plan.shed_excess();
    plan.place_orphans();
    plan.fill_light_hosts();
    plan.improve_most_loaded();
    plan.spread_empty_slices();
    let owners = plan.owners;
    assert!(owners.iter().all(|o| o.is_some_and(|h| h < host_count)), "every slice has a live owner");
    owners
}

/// The working state of [`rebalance_weighted`]: owners plus per-host app and slice counts,
/// kept in step by [`Plan::assign`].
struct Plan<'a> {
    owners: Assignment,
    weights: &'a [u64],
    loads: Vec<u64>,
    counts: Vec<usize>,
    total: u128,
}

impl<'a> Plan<'a> {
    fn new(owners: Assignment, weights: &'a [u64], host_count: usize) -> Self {
        let total = weights.iter().map(|&w| w as u128).sum();
        let mut plan = Plan { owners, weights, loads: vec![0; host_count], counts: vec![0; host_count], total };
        for (slice, owner) in plan.owners.iter().enumerate() {
            if let Some(h) = *owner {
                plan.loads[h] += weights[slice];
                plan.counts[h] += 1;
            }
        }
        plan
    }

    fn host_count(&self) -> usize {
        self.loads.len()
    }

    /// Moves `slice` to `to` (`None` orphans it), keeping loads and counts in step.
    fn assign(&mut self, slice: usize, to: Option<usize>) {
        if let Some(from) = self.owners[slice] {
            self.loads[from] -= self.weights[slice];
            self.counts[from] -= 1;
        }
        if let Some(h) = to {
            self.loads[h] += self.weights[slice];
            self.counts[h] += 1;
        }
        self.owners[slice] = to;
    }

    /// `load * host_count * 100` compared with `total * percent`: is `load` above `percent`% of the mean?
    fn above_percent(&self, load: u64, percent: u128) -> bool {
        load as u128 * self.host_count() as u128 * 100 > self.total * percent
    }

    /// The most apps a host can hold without exceeding the mean (rounded down).
    fn mean_floor(&self) -> u64 {
        (self.total / self.host_count() as u128) as u64
    }

    fn slices_of(&self, host: usize) -> impl Iterator<Item = usize> + '_ {
        self.owners.iter().enumerate().filter(move |(_, o)| **o == Some(host)).map(|(s, _)| s)
    }

    /// The slice of `host` with the largest weight in `1..=limit`, if any.
    fn largest_fitting(&self, host: usize, limit: u64) -> Option<usize> {
        let fits = self.slices_of(host).filter(|&s| (1..=limit).contains(&self.weights[s]));
        fits.max_by_key(|&s| (self.weights[s], std::cmp::Reverse(s)))
    }

    /// Hosts well above the mean orphan their largest slices that keep them at or above the
    /// mean, down to the mean; if no slice fits and they are still well above, their smallest
    /// non-empty ones.
    fn shed_excess(&mut self) {
        let limit = 100 + SHED_ABOVE_MEAN_PERCENT;
        for h in 0..self.host_count() {
            if !self.above_percent(self.loads[h], limit) {
                continue;
            }
            for _ in 0..self.owners.len() {
                let excess = self.loads[h].saturating_sub(self.mean_floor());
                let smallest =
                    || self.slices_of(h).filter(|&s| self.weights[s] > 0).min_by_key(|&s| (self.weights[s], s));
                let fitting = self.largest_fitting(h, excess);
                let still_above = self.above_percent(self.loads[h], limit);
                let Some(slice) = fitting.or_else(|| still_above.then(smallest).flatten()) else { break };
                self.assign(slice, None);
            }
        }
    }

    /// Orphans go, heaviest first, to the least loaded host; empty orphans to the host with
    /// the fewest empty slices.
    fn place_orphans(&mut self) {
        let mut orphans: Vec<usize> = (0..self.owners.len()).filter(|&s| self.owners[s].is_none()).collect();
        orphans.sort_by_key(|&s| (std::cmp::Reverse(self.weights[s]), s));
        let mut empty = vec![0usize; self.host_count()];
        for (slice, owner) in self.owners.iter().enumerate() {
            if let (Some(h), 0) = (*owner, self.weights[slice]) {
                empty[h] += 1;
            }
        }
        for slice in orphans {
            let hosts = 0..self.host_count();
            let host = if self.weights[slice] > 0 {
                hosts.min_by_key(|&h| (self.loads[h], self.counts[h], h))
            } else {
                hosts.min_by_key(|&h| (empty[h], self.counts[h], h))
            };
            let host = host.expect("hosts");
            empty[host] += usize::from(self.weights[slice] == 0);
            self.assign(slice, Some(host));
        }
    }

    /// Hosts far below the mean (a host that just joined) take slices from the most loaded
    /// hosts above the mean until no slice fits under the mean.
    fn fill_light_hosts(&mut self) {
        for r in 0..self.host_count() {
            if self.above_percent(self.loads[r], FILL_BELOW_MEAN_PERCENT) {
                continue;
            }
            for _ in 0..self.owners.len() {
                let room = self.mean_floor().saturating_sub(self.loads[r]);
                let Some(slice) = self.donation(r, room) else { break };
                self.assign(slice, Some(r));
            }
        }
    }

    /// The largest slice of weight `<= room` held by the most loaded host above the mean that
    /// has one.
    fn donation(&self, receiver: usize, room: u64) -> Option<usize> {
        let mut donors: Vec<usize> =
            (0..self.host_count()).filter(|&d| d != receiver && self.above_percent(self.loads[d], 100)).collect();
        donors.sort_by_key(|&d| (std::cmp::Reverse(self.loads[d]), d));
        donors.into_iter().find_map(|d| self.largest_fitting(d, room))
    }

    /// While the most loaded host is above the shed bound, makes the move or swap that most
    /// lowers the larger of the two hosts involved; stops when none lowers it.
    fn improve_most_loaded(&mut self) {
        for _ in 0..self.owners.len() {
            let h = (0..self.host_count()).max_by_key(|&h| (self.loads[h], std::cmp::Reverse(h))).expect("hosts");
            if !self.above_percent(self.loads[h], 100 + SHED_ABOVE_MEAN_PERCENT) {
                return;
            }
            let best = self.best_move(h).into_iter().chain(self.best_swap(h)).min_by_key(|c| c.0);
            match best {
                Some((peak, moves)) if peak < self.loads[h] => {
                    for (slice, to) in moves {
                        self.assign(slice, Some(to));
                    }
                }
                _ => return,
            }
        }
    }

    /// The move of one slice from `h` to the least loaded host: (resulting peak, moves).
    fn best_move(&self, h: usize) -> Option<(u64, Vec<(usize, usize)>)> {
        let m = (0..self.host_count()).min_by_key(|&m| (self.loads[m], m))?;
        let peak = |s: usize| (self.loads[h] - self.weights[s]).max(self.loads[m] + self.weights[s]);
        let slice = self.slices_of(h).filter(|&s| self.weights[s] > 0).min_by_key(|&s| (peak(s), s))?;
        Some((peak(slice), vec![(slice, m)]))
    }

    /// The swap of a slice of `h` with a lighter slice of another host: (resulting peak, moves).
    fn best_swap(&self, h: usize) -> Option<(u64, Vec<(usize, usize)>)> {
        let mut best: Option<(u64, Vec<(usize, usize)>)> = None;
        for a in self.slices_of(h) {
            for (b, owner) in self.owners.iter().enumerate() {
                let Some(g) = *owner else { continue };
                let (wa, wb) = (self.weights[a], self.weights[b]);
                if g == h || wa <= wb {
                    continue;
                }
                let peak = (self.loads[h] - wa + wb).max(self.loads[g] + wa - wb);
                if best.as_ref().is_none_or(|(p, _)| peak < *p) {
                    best = Some((peak, vec![(a, g), (b, h)]));
                }
            }
        }
        best
    }

    /// Evens out the empty slices (they hold no app, but new apps land on them) by moving them
    /// from the host with the most to the one with the fewest, so they do not pile up on one host.
    fn spread_empty_slices(&mut self) {
        let mut empty = vec![0usize; self.host_count()];
        for (slice, owner) in self.owners.iter().enumerate() {
            if let (Some(h), 0) = (*owner, self.weights[slice]) {
                empty[h] += 1;
            }
        }
        for _ in 0..self.owners.len() {
            let from = (0..self.host_count()).max_by_key(|&h| (empty[h], std::cmp::Reverse(h))).expect("hosts");
            let to = (0..self.host_count()).min_by_key(|&h| (empty[h], h)).expect("hosts");
            if empty[from] < empty[to] + 2 {
                return;
            }
            let slice = self.slices_of(from).filter(|&s| self.weights[s] == 0).last().expect("an empty slice");
            self.assign(slice, Some(to));
            empty[from] -= 1;
            empty[to] += 1;
        }
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
    /// Host counts the weighted properties are checked for.
    const HOST_COUNTS: [usize; 7] = [3, 4, 5, 8, 16, 32, 64];

    /// App counts per slice for `app_count` deterministic names `app-0`, `app-1`, ….
    fn app_weights(app_count: usize) -> Vec<u64> {
        let mut weights = vec![0; SLICE_COUNT as usize];
        for i in 0..app_count {
            weights[steady_proto::slice::slice_of(&format!("app-{i}")) as usize] += 1;
        }
        weights
    }

    /// App counts per slice for `app_count` names drawn from a seeded linear congruential generator.
    fn random_app_weights(app_count: usize) -> Vec<u64> {
        let mut weights = vec![0; SLICE_COUNT as usize];
        let mut seed: u64 = 0x5eed;
        for _ in 0..app_count {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            weights[steady_proto::slice::slice_of(&format!("{:x}", seed >> 16)) as usize] += 1;
        }
        weights
    }

    fn loads(a: &Assignment, weights: &[u64], host_count: usize) -> Vec<u64> {
        let mut loads = vec![0; host_count];
        for (slice, owner) in a.iter().enumerate() {
            let owner = owner.expect("every slice has an owner");
            assert!(owner < host_count, "owner {owner} is not a live host");
            loads[owner] += weights[slice];
        }
        loads
    }

    /// Max apps per host over the mean; asserts every slice has a live owner.
    fn peak_ratio(a: &Assignment, weights: &[u64], host_count: usize) -> f64 {
        let loads = loads(a, weights, host_count);
        let total: u64 = weights.iter().sum();
        *loads.iter().max().unwrap() as f64 * host_count as f64 / total as f64
    }

    fn moved_apps(a: &Assignment, b: &Assignment, weights: &[u64]) -> u64 {
        a.iter().zip(b).zip(weights).filter(|((x, y), _)| x != y).map(|(_, w)| w).sum()
    }

    /// Rebalances and checks the result is balanced (<= 1.10) and a fixed point.
    fn balanced(current: &Assignment, weights: &[u64], host_count: usize) -> (Assignment, f64) {
        let a = rebalance_weighted(current, weights, host_count);
        let ratio = peak_ratio(&a, weights, host_count);
        assert!(ratio <= 1.10, "n={host_count}: max/mean {ratio:.4}");
        assert_eq!(rebalance_weighted(&a, weights, host_count), a, "n={host_count}: not idempotent");
        (a, ratio)
    }

    /// Host `leaver` of `host_count` leaves: its slices are orphaned, later hosts shift down
    /// (the store numbers hosts by position in its id-sorted list).
    fn without_host(a: &Assignment, leaver: usize) -> Assignment {
        a.iter().map(|o| o.and_then(|h| (h != leaver).then(|| if h > leaver { h - 1 } else { h }))).collect()
    }

    #[test]
    fn weighted_placement_balances_apps_and_moves_few() {
        let weights = app_weights(10_000);
        let empty = vec![None; SLICE_COUNT as usize];
        for n in HOST_COUNTS {
            let (start, fresh) = balanced(&empty, &weights, n);
            let (joined, join_moved) = join(&start, &weights, n);
            let join_balance = peak_ratio(&joined, &weights, n + 1);
            let left = leave(&start, &weights, n, n / 2);
            let leave_balance = peak_ratio(&left, &weights, n - 1);
            println!(
                "n={n:2}: fresh max/mean {fresh:.4}; join {n}->{}: moved {join_moved:.4}/(N+1), max/mean {join_balance:.4}; \
                 leave {n}->{}: max/mean {leave_balance:.4}",
                n + 1,
                n - 1
            );
        }
    }

    /// One host joins a balanced assignment: the result is balanced and moved at most 1.15/(N+1)
    /// of the apps. Returns the result and the moved share times N+1.
    fn join(a: &Assignment, weights: &[u64], n: usize) -> (Assignment, f64) {
        let (b, _) = balanced(a, weights, n + 1);
        let total: u64 = weights.iter().sum();
        let share = moved_apps(a, &b, weights) as f64 * (n + 1) as f64 / total as f64;
        assert!(share <= 1.15, "n={n}->{}: moved {share:.4}/(N+1) of the apps", n + 1);
        (b, share)
    }

    /// Host `leaver` of `n` leaves: only its slices move and the result is balanced.
    fn leave(a: &Assignment, weights: &[u64], n: usize, leaver: usize) -> Assignment {
        let renumbered = without_host(a, leaver);
        let (b, _) = balanced(&renumbered, weights, n - 1);
        for (before, after) in renumbered.iter().zip(&b) {
            assert!(before.is_none() || before == after, "n={n}: a slice of a staying host moved");
        }
        b
    }

    #[test]
    fn weighted_join_and_leave_sequences_stay_balanced() {
        for (names, weights) in [("app-i", app_weights(10_000)), ("lcg", random_app_weights(10_000))] {
            sequences(names, &weights);
        }
    }

    /// Up from 3 to 65 hosts one join at a time, down to 3 with pseudo-random leavers, up
    /// again; prints the worst ratios seen per host count.
    fn sequences(names: &str, weights: &[u64]) {
        let weights = weights.to_vec();
        let mut worst_balance = vec![0.0f64; 67];
        let mut worst_join = vec![0.0f64; 67];
        let mut a = balanced(&vec![None; SLICE_COUNT as usize], &weights, 3).0;
        let mut seed: u64 = 7;
        for round in 0..2 {
            for n in 3..=64 {
                let share;
                (a, share) = join(&a, &weights, n);
                worst_join[n] = worst_join[n].max(share);
                worst_balance[n + 1] = worst_balance[n + 1].max(peak_ratio(&a, &weights, n + 1));
            }
            for n in (4..=65).rev().take(if round == 0 { 62 } else { 0 }) {
                seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
                a = leave(&a, &weights, n, (seed >> 33) as usize % n);
                worst_balance[n - 1] = worst_balance[n - 1].max(peak_ratio(&a, &weights, n - 1));
            }
        }
        for n in HOST_COUNTS {
            println!(
                "{names} sequence n={n:2}: worst max/mean {:.4}, worst join {n}->{}: {:.4}/(N+1)",
                worst_balance[n],
                n + 1,
                worst_join[n]
            );
        }
        let overall = worst_balance.iter().cloned().fold(0.0, f64::max);
        let overall_join = worst_join.iter().cloned().fold(0.0, f64::max);
        println!("{names} sequence all n in 3..=65: worst max/mean {overall:.4}, worst join {overall_join:.4}/(N+1)");
    }

    #[test]
    fn empty_slices_are_spread_by_count() {
        // 300 apps leave most slices empty; the empty ones must not pile up on one host.
        let weights = app_weights(300);
        let a = rebalance_weighted(&vec![None; SLICE_COUNT as usize], &weights, 8);
        let b = rebalance_weighted(&a, &weights, 9);
        for (assignment, n) in [(&a, 8), (&b, 9)] {
            let mut empty = vec![0; n];
            for (slice, owner) in assignment.iter().enumerate() {
                empty[owner.unwrap()] += usize::from(weights[slice] == 0);
            }
            let (min, max) = (empty.iter().min().unwrap(), empty.iter().max().unwrap());
            assert!(max - min <= 1, "n={n}: empty slices per host {empty:?}");
            println!("n={n}: slices per host {:?}", counts(assignment, n));
            assert!(peak_ratio(assignment, &weights, n) <= 1.10);
        }
        let no_apps = vec![0; SLICE_COUNT as usize];
        assert_eq!(rebalance_weighted(&a, &no_apps, 9), rebalance(&a, 9));
    }
}
