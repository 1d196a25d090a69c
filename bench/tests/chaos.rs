//! The chaos scenario as a test: app processes killed every 500 ms for 60 s, then the slicer,
//! an LB and a host killed, while the counter load runs. Every check of its report must pass:
//! ≥ 99.9 % of reads succeed while apps are killed, every app answers again after each kind of
//! kill, no acknowledged write is lost. The report (with plots) is written under
//! `target/bench-reports/`.

use steady_bench::scenario::chaos;

#[test]
fn chaos_keeps_reads_up_and_loses_no_acknowledged_write() {
    let options = chaos::Options { apps: 40, hosts: 3, kill_every_ms: 500, kill_for_s: 60, wait_ms: 100, out: None };
    let report = chaos::run(&options).expect("the chaos scenario runs");
    let failed: Vec<&str> = report.checks.iter().filter(|c| !c.passed).map(|c| c.what.as_str()).collect();
    assert!(failed.is_empty(), "failed checks: {failed:#?}\nreport in {}", report.dir.display());
    assert!(report.dir.join("latency.svg").is_file() && report.dir.join("throughput.svg").is_file());
    let kills = report.recorded.marks.iter().filter(|m| m.minor).count();
    assert!(kills >= 100, "only {kills} app processes were killed");
}
