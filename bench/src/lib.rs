//! steady's own load, chaos and soak rig.
//!
//! Each scenario starts a real local cluster (the same slicer, host daemons and LBs that
//! `steady up` runs, through the test harness), drives it with [goose] users, injects faults on
//! a schedule, and reports completion, wrong answers, req/s, p50/p95/p99/p99.9, errors by kind
//! and convergence times — printed, and written as `report.md` with SVG plots of latency and
//! throughput over time, fault moments marked. Start reading at [`scenario`].

pub mod attack;
pub mod record;
pub mod report;
pub mod scenario;
