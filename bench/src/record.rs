//! What a scenario saw: every request's outcome and time, and the moments faults were injected.
//!
//! The recorder is shared by every load-generating user and the fault injector. It keeps at
//! most [`SAMPLES_MAX`] samples (an hour at 1,000 req/s fits); past that it counts what it drops
//! so a report never silently covers less than it says.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// Most samples one run keeps (16 bytes each).
pub const SAMPLES_MAX: usize = 8_000_000;
/// Most fault marks one run keeps.
pub const MARKS_MAX: usize = 100_000;
/// Most failure descriptions one run keeps (the counts go on).
pub const FAILURES_KEPT: usize = 40;

/// What kind of request a sample is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// An idempotent read (`GET`), retried by nobody: it must simply succeed.
    Read,
    /// A numbered write the app refuses unless it follows its last row.
    Write,
    /// A deploy through the API.
    Deploy,
}

/// How a request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Outcome {
    Ok,
    /// An HTTP answer with an unexpected status.
    Status(u16),
    /// A 200 whose body was not the expected one.
    WrongAnswer,
    Timeout,
    /// No connection could be made (to every LB tried).
    Connect,
    /// Any other transport error (a reset, a cut-off body).
    Transport,
}

impl Outcome {
    /// A short label for reports (`status 502`, `timeout`, …).
    pub fn label(self) -> String {
        match self {
            Outcome::Ok => "ok".into(),
            Outcome::Status(code) => format!("status {code}"),
            Outcome::WrongAnswer => "wrong answer".into(),
            Outcome::Timeout => "timeout".into(),
            Outcome::Connect => "connect".into(),
            Outcome::Transport => "transport".into(),
        }
    }
}

/// One request.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    /// Milliseconds since the run started, when the answer came.
    pub at_ms: u32,
    pub latency_us: u32,
    pub kind: Kind,
    pub outcome: Outcome,
}

/// A fault (or other event) at a moment of the run.
#[derive(Clone, Debug)]
pub struct Mark {
    pub at_s: f64,
    pub label: String,
    /// Frequent small faults (an app process killed) are drawn faintly and not labelled.
    pub minor: bool,
}

/// A named time series besides the requests (the memory of a daemon, say).
#[derive(Clone, Debug, Default)]
pub struct Series {
    pub name: String,
    pub unit: String,
    pub points: Vec<(f64, f64)>,
}

/// Collects samples and marks from many threads and tasks.
pub struct Recorder {
    started: Instant,
    samples: Mutex<Vec<Sample>>,
    marks: Mutex<Vec<Mark>>,
    failures: Mutex<Vec<String>>,
    dropped: AtomicU64,
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    /// A recorder whose clock starts now.
    pub fn new() -> Self {
        Self {
            started: Instant::now(),
            samples: Mutex::default(),
            marks: Mutex::default(),
            failures: Mutex::default(),
            dropped: AtomicU64::new(0),
        }
    }

    /// Seconds since the recorder was made.
    pub fn now_s(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// Sleeps until `at_s` seconds after the recorder's start (a fault schedule's next moment).
    pub fn wait_until(&self, at_s: f64) {
        let now_s = self.now_s();
        if at_s > now_s {
            std::thread::sleep(std::time::Duration::from_secs_f64(at_s - now_s));
        }
    }

    /// Records a request sent at `sent` that ended now with `outcome`.
    pub fn record(&self, kind: Kind, sent: Instant, outcome: Outcome) {
        let now = Instant::now();
        let sample = Sample {
            at_ms: u32::try_from(now.duration_since(self.started).as_millis()).unwrap_or(u32::MAX),
            latency_us: u32::try_from(now.duration_since(sent).as_micros()).unwrap_or(u32::MAX),
            kind,
            outcome,
        };
        let mut samples = self.samples.lock().expect("samples lock");
        if samples.len() < SAMPLES_MAX {
            samples.push(sample);
        } else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Keeps a description of a failed request (the first [`FAILURES_KEPT`]).
    pub fn note_failure(&self, what: impl FnOnce() -> String) {
        let mut failures = self.failures.lock().expect("failures lock");
        if failures.len() < FAILURES_KEPT {
            failures.push(format!("{:.2} s: {}", self.now_s(), what()));
        }
    }

    /// Marks a fault (or event) now.
    pub fn mark(&self, label: impl Into<String>, minor: bool) {
        let mut marks = self.marks.lock().expect("marks lock");
        if marks.len() < MARKS_MAX {
            marks.push(Mark { at_s: self.now_s(), label: label.into(), minor });
        }
    }

    /// Everything recorded so far, samples in time order.
    pub fn snapshot(&self) -> Recorded {
        let mut samples = self.samples.lock().expect("samples lock").clone();
        samples.sort_by_key(|s| s.at_ms);
        Recorded {
            samples,
            marks: self.marks.lock().expect("marks lock").clone(),
            failures: self.failures.lock().expect("failures lock").clone(),
            dropped: self.dropped.load(Ordering::Relaxed),
            duration_s: self.now_s(),
        }
    }
}

/// A finished run's raw record.
#[derive(Clone, Debug, Default)]
pub struct Recorded {
    pub samples: Vec<Sample>,
    pub marks: Vec<Mark>,
    /// The first failures, described.
    pub failures: Vec<String>,
    /// Samples not kept because [`SAMPLES_MAX`] was reached.
    pub dropped: u64,
    pub duration_s: f64,
}

/// Figures over a set of samples.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    pub requests: u64,
    pub ok: u64,
    pub rate_per_s: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    /// Failed requests by outcome label.
    pub errors: BTreeMap<String, u64>,
}

impl Summary {
    /// Summarises the samples of `kinds` answered in `[from_s, to_s)`.
    pub fn of(recorded: &Recorded, kinds: &[Kind], from_s: f64, to_s: f64) -> Self {
        assert!(to_s >= from_s, "a window ends after it starts");
        let in_window = |s: &&Sample| {
            let at_s = f64::from(s.at_ms) / 1000.0;
            kinds.contains(&s.kind) && at_s >= from_s && at_s < to_s
        };
        let mut summary = Summary::default();
        let mut latencies = Vec::new();
        for sample in recorded.samples.iter().filter(in_window) {
            summary.requests += 1;
            if sample.outcome == Outcome::Ok {
                summary.ok += 1;
                latencies.push(f64::from(sample.latency_us) / 1000.0);
            } else {
                *summary.errors.entry(sample.outcome.label()).or_default() += 1;
            }
        }
        latencies.sort_by(f64::total_cmp);
        summary.rate_per_s = summary.requests as f64 / (to_s - from_s).max(1e-3);
        summary.p50_ms = percentile(&latencies, 0.50);
        summary.p95_ms = percentile(&latencies, 0.95);
        summary.p99_ms = percentile(&latencies, 0.99);
        summary.p999_ms = percentile(&latencies, 0.999);
        summary.max_ms = latencies.last().copied().unwrap_or(f64::NAN);
        summary
    }

    /// Share of requests that succeeded (1.0 when there were none).
    pub fn completion(&self) -> f64 {
        if self.requests == 0 {
            1.0
        } else {
            self.ok as f64 / self.requests as f64
        }
    }

    /// Errors as `label: count, …` (or `none`).
    pub fn errors_line(&self) -> String {
        if self.errors.is_empty() {
            return "none".into();
        }
        self.errors.iter().map(|(label, count)| format!("{label}: {count}")).collect::<Vec<_>>().join(", ")
    }
}

/// The value at `p` (0–1) of sorted values; NaN for none.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    assert!((0.0..=1.0).contains(&p));
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_counts_each_outcome_in_its_window() {
        let recorder = Recorder::new();
        let sent = Instant::now();
        recorder.record(Kind::Read, sent, Outcome::Ok);
        recorder.record(Kind::Read, sent, Outcome::Status(502));
        recorder.record(Kind::Write, sent, Outcome::Ok);
        let recorded = recorder.snapshot();
        let reads = Summary::of(&recorded, &[Kind::Read], 0.0, 60.0);
        assert_eq!((reads.requests, reads.ok), (2, 1));
        assert_eq!(reads.errors_line(), "status 502: 1");
        assert!((reads.completion() - 0.5).abs() < 1e-9);
        let later = Summary::of(&recorded, &[Kind::Read, Kind::Write], 30.0, 60.0);
        assert_eq!(later.requests, 0);
        assert_eq!(later.completion(), 1.0);
    }

    #[test]
    fn percentiles_pick_from_sorted_values() {
        let values: Vec<f64> = (1..=1000).map(f64::from).collect();
        assert_eq!(percentile(&values, 0.5), 501.0);
        assert_eq!(percentile(&values, 0.99), 990.0);
        assert_eq!(percentile(&values, 1.0), 1000.0);
        assert!(percentile(&[], 0.5).is_nan());
    }
}
