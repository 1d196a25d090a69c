//! How far behind its replica one database is, from two things hostd can observe: Litestream's
//! local position (the newest transaction it has taken from the WAL, which only grows) and
//! whether the replica storage holds a given transaction (one Level-0 object per transaction).
//!
//! [`Backlog`] remembers each local transaction the replica was not yet seen to hold, with the
//! moment hostd first saw it; the lag is the wait of the oldest. It decides when to look in the
//! replica storage — after each sync Litestream reports, else at a slow fallback pace — so a
//! healthy database costs about one existence check per transaction. It does no I/O: the
//! replicator polls Litestream and runs the checks (`Replicator::measure_lag`).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Transactions remembered per database while its replica is behind. When full, the newest
/// entry stands for newer transactions too: it keeps its earlier start, so the lag is never
/// understated.
pub const PENDING_TRANSACTIONS_MAX: usize = 64;
/// Longest pause between looks in the replica storage for a database that is behind, when
/// Litestream reports no new sync (the storage is down, say).
pub const PROBE_INTERVAL_MS_MAX: u64 = 2_000;
/// Longest one look may take (a few existence checks); after it the look counts as "not there".
pub const PROBE_TIMEOUT_MS: u64 = 1_500;

/// One look in the replica storage, handed out by [`Backlog::next_probe`] and answered with
/// [`Backlog::probed`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// The newest pending transaction: if the replica holds it, it holds all of them
    /// (Litestream uploads transactions in order).
    pub newest_txid: u64,
    /// The oldest pending transaction, when it is not the newest: if the replica holds it, the
    /// lag moves on to the next one.
    pub oldest_txid: Option<u64>,
    /// The history the probe belongs to (see [`Backlog::observe_local`]).
    epoch: u64,
}

/// A local transaction the replica was not yet seen to hold.
#[derive(Debug, Clone, Copy)]
struct Pending {
    txid: u64,
    seen_at: Instant,
}

/// What one database's replica lacks, as far as hostd has seen.
#[derive(Debug, Default)]
pub struct Backlog {
    /// Oldest first; transaction ids strictly increase.
    pending: VecDeque<Pending>,
    /// The newest local position seen.
    local_txid: u64,
    /// The newest transaction the replica storage was seen to hold.
    replicated_txid: u64,
    /// Bumped when the local history starts again, so answers to older probes are ignored.
    epoch: u64,
    /// When the last probe was handed out, and whether its answer is still due.
    probed_at: Option<Instant>,
    probing: bool,
    /// Litestream's time of its last successful sync, as it was when the last probe went out.
    probed_after_sync: Option<String>,
}

impl Backlog {
    /// Records Litestream's local position `txid` as seen at `now`.
    pub fn observe_local(&mut self, txid: u64, now: Instant) {
        if txid < self.local_txid {
            // The database's history started again (replaced or restored): nothing of the old
            // one is pending any more, and the new one is unknown to the replica so far.
            *self = Backlog { epoch: self.epoch + 1, ..Backlog::default() };
        }
        if txid <= self.local_txid.max(self.replicated_txid) {
            self.local_txid = self.local_txid.max(txid);
            return;
        }
        self.local_txid = txid;
        if self.pending.len() >= PENDING_TRANSACTIONS_MAX {
            let newest = self.pending.back_mut().expect("a full queue has a newest entry");
            newest.txid = txid;
        } else {
            self.pending.push_back(Pending { txid, seen_at: now });
        }
        debug_assert!(self.pending.iter().zip(self.pending.iter().skip(1)).all(|(a, b)| a.txid < b.txid));
    }

    /// Records that the replica storage holds transaction `txid` (and so every earlier one).
    fn observe_replicated(&mut self, txid: u64) {
        self.replicated_txid = self.replicated_txid.max(txid);
        while self.pending.front().is_some_and(|p| p.txid <= self.replicated_txid) {
            self.pending.pop_front();
        }
    }

    /// How long the oldest pending transaction has waited at `now`; zero when none is pending.
    pub fn lag(&self, now: Instant) -> Duration {
        self.pending.front().map_or(Duration::ZERO, |p| now.saturating_duration_since(p.seen_at))
    }

    /// The look to make in the replica storage now, if one is due: something is pending, no
    /// look is under way, and Litestream reports a sync newer than the last look (`last_sync`,
    /// its own timestamp, compared as text) or the last look is [`PROBE_INTERVAL_MS_MAX`] old.
    pub fn next_probe(&mut self, now: Instant, last_sync: Option<&str>) -> Option<Probe> {
        let since_last = self.probed_at.map(|at| now.saturating_duration_since(at));
        let answer_overdue = since_last.is_some_and(|d| d >= Duration::from_millis(PROBE_TIMEOUT_MS * 2));
        if self.pending.is_empty() || (self.probing && !answer_overdue) {
            return None;
        }
        let synced_since = last_sync.is_some() && last_sync != self.probed_after_sync.as_deref();
        let fallback_due = since_last.is_none_or(|d| d >= Duration::from_millis(PROBE_INTERVAL_MS_MAX));
        if !synced_since && !fallback_due {
            return None;
        }
        self.probing = true;
        self.probed_at = Some(now);
        self.probed_after_sync = last_sync.map(str::to_owned);
        let (oldest, newest) = (self.pending.front()?.txid, self.pending.back()?.txid);
        Some(Probe { newest_txid: newest, oldest_txid: (oldest != newest).then_some(oldest), epoch: self.epoch })
    }

    /// The answer to `probe`: the newest of its transactions the replica holds, if any.
    pub fn probed(&mut self, probe: &Probe, found_txid: Option<u64>) {
        if probe.epoch != self.epoch {
            return;
        }
        self.probing = false;
        if let Some(txid) = found_txid {
            assert!(txid == probe.newest_txid || Some(txid) == probe.oldest_txid, "an answer to this probe");
            self.observe_replicated(txid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(start: Instant, ms: u64) -> Instant {
        start + Duration::from_millis(ms)
    }

    #[test]
    fn the_lag_is_the_wait_of_the_oldest_transaction_the_replica_lacks() {
        let start = Instant::now();
        let mut backlog = Backlog::default();
        assert_eq!(backlog.lag(start), Duration::ZERO, "nothing seen, nothing pending");
        backlog.observe_local(5, start);
        backlog.observe_local(6, at(start, 1_000));
        backlog.observe_local(6, at(start, 1_500));
        assert_eq!(backlog.lag(at(start, 2_000)), Duration::from_millis(2_000));

        let probe = backlog.next_probe(at(start, 2_000), None).expect("a first look is due at once");
        assert_eq!((probe.newest_txid, probe.oldest_txid), (6, Some(5)));
        backlog.probed(&probe, Some(5));
        assert_eq!(backlog.lag(at(start, 2_000)), Duration::from_millis(1_000), "6 still waits");
        let probe = backlog.next_probe(at(start, 4_000), None).expect("the fallback look");
        assert_eq!((probe.newest_txid, probe.oldest_txid), (6, None));
        backlog.probed(&probe, Some(6));
        assert_eq!(backlog.lag(at(start, 4_000)), Duration::ZERO);
        assert_eq!(backlog.next_probe(at(start, 9_000), Some("later")), None, "nothing to look for");
    }

    #[test]
    fn looks_follow_litestream_syncs_and_otherwise_slow_down() {
        let start = Instant::now();
        let mut backlog = Backlog::default();
        backlog.observe_local(1, start);
        let probe = backlog.next_probe(start, Some("t1")).expect("first look");
        assert_eq!(backlog.next_probe(at(start, 100), Some("t2")), None, "one look at a time");
        backlog.probed(&probe, None);
        assert_eq!(backlog.next_probe(at(start, 200), Some("t1")), None, "no sync since the last look");
        assert!(backlog.next_probe(at(start, 300), Some("t2")).is_some(), "a new sync: look again");
        let mut stuck = Backlog::default();
        stuck.observe_local(1, start);
        let _lost = stuck.next_probe(start, None).expect("first look");
        assert_eq!(stuck.next_probe(at(start, PROBE_TIMEOUT_MS), None), None);
        assert!(stuck.next_probe(at(start, PROBE_TIMEOUT_MS * 2), None).is_some(), "an unanswered look expires");
    }

    #[test]
    fn a_full_backlog_never_understates_the_lag() {
        let start = Instant::now();
        let mut backlog = Backlog::default();
        let count = PENDING_TRANSACTIONS_MAX as u64 + 10;
        for txid in 1..=count {
            backlog.observe_local(txid, at(start, txid * 100));
        }
        assert_eq!(backlog.pending.len(), PENDING_TRANSACTIONS_MAX);
        assert_eq!(backlog.pending.back().map(|p| p.txid), Some(count), "the newest entry stands for the rest");
        backlog.observe_replicated(count - 1);
        let kept_start = at(start, (PENDING_TRANSACTIONS_MAX as u64) * 100);
        assert_eq!(backlog.lag(at(start, 100_000)), at(start, 100_000) - kept_start);
    }

    #[test]
    fn a_history_that_starts_again_forgets_the_old_one() {
        let start = Instant::now();
        let mut backlog = Backlog::default();
        backlog.observe_local(40, start);
        let old = backlog.next_probe(start, None).unwrap();
        backlog.observe_local(3, at(start, 500));
        backlog.probed(&old, Some(40));
        assert_eq!(backlog.lag(at(start, 1_500)), Duration::from_millis(1_000), "3 waits; 40 was the old history");
        let probe = backlog.next_probe(at(start, 1_500), None).expect("a look for the new history");
        backlog.probed(&probe, Some(3));
        assert_eq!(backlog.lag(at(start, 1_500)), Duration::ZERO);
    }
}
