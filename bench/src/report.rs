//! A scenario's report: figures per phase printed to the terminal and written as `report.md`
//! beside plots of latency and throughput over time (SVG), with the fault moments marked.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use plotters::prelude::*;

use crate::record::{Kind, Mark, Outcome, Recorded, Series, Summary};

/// Most points one line of a plot gets; longer runs use wider time buckets.
const PLOT_BUCKETS_MAX: f64 = 600.0;

/// A named stretch of the run, summarised on its own.
#[derive(Clone, Debug)]
pub struct Phase {
    pub name: String,
    pub from_s: f64,
    pub to_s: f64,
}

/// A pass/fail statement the scenario checked.
#[derive(Clone, Debug)]
pub struct Check {
    pub what: String,
    pub passed: bool,
}

/// Everything a scenario reports.
pub struct Report {
    pub scenario: String,
    pub dir: PathBuf,
    pub recorded: Recorded,
    pub phases: Vec<Phase>,
    /// Which request kinds the phase figures cover.
    pub kinds: Vec<Kind>,
    /// Key figures (`convergence after the host kill: 1.2 s`, the parameters …).
    pub facts: Vec<(String, String)>,
    pub checks: Vec<Check>,
    /// Other time series (daemon memory), plotted by unit.
    pub series: Vec<Series>,
    /// A scenario's own Markdown table (printed after the facts).
    pub table: Option<String>,
}

impl Report {
    /// A report of `recorded` for `scenario`, written under `dir`.
    pub fn new(scenario: &str, dir: &Path, recorded: Recorded, kinds: &[Kind]) -> Self {
        let whole = Phase { name: "whole run".into(), from_s: 0.0, to_s: recorded.duration_s };
        Self {
            scenario: scenario.into(),
            dir: dir.to_owned(),
            recorded,
            phases: vec![whole],
            kinds: kinds.to_vec(),
            facts: Vec::new(),
            checks: Vec::new(),
            series: Vec::new(),
            table: None,
        }
    }

    /// Adds a fact line.
    pub fn fact(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.facts.push((name.into(), value.into()));
    }

    /// Adds a check; returns whether it passed.
    pub fn check(&mut self, what: impl Into<String>, passed: bool) -> bool {
        self.checks.push(Check { what: what.into(), passed });
        passed
    }

    /// Did every check pass?
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.passed)
    }

    /// The summary of one phase (by name) over the report's kinds.
    pub fn summary(&self, phase: &str) -> Summary {
        let phase = self.phases.iter().find(|p| p.name == phase).expect("a phase of this report");
        Summary::of(&self.recorded, &self.kinds, phase.from_s, phase.to_s)
    }

    /// The report as Markdown (also what is printed).
    pub fn markdown(&self) -> String {
        let mut text = format!("# steady-bench: {}\n\n", self.scenario);
        for (name, value) in &self.facts {
            let _ = writeln!(text, "- {name}: {value}");
        }
        if self.recorded.dropped > 0 {
            let _ = writeln!(text, "- samples dropped (over the bound): {}", self.recorded.dropped);
        }
        if let Some(table) = &self.table {
            text += "\n";
            text += table;
        }
        if !self.phases.is_empty() {
            self.phase_table(&mut text);
        }
        if !self.checks.is_empty() {
            text += "\n";
            for check in &self.checks {
                let _ = writeln!(text, "- [{}] {}", if check.passed { "x" } else { " " }, check.what);
            }
        }
        if !self.recorded.failures.is_empty() {
            text += "\nFirst failures:\n\n";
            for failure in &self.recorded.failures {
                let _ = writeln!(text, "- {}", failure.replace('\n', " "));
            }
        }
        if self.recorded.samples.is_empty() {
            return text;
        }
        text += "\n![latency](latency.svg)\n\n![throughput](throughput.svg)\n";
        if !self.series.is_empty() {
            text += "\n![series](series.svg)\n";
        }
        text += "\nGoose's own report of the same requests: [goose.html](goose.html).\n";
        text
    }

    fn phase_table(&self, text: &mut String) {
        let kinds: Vec<String> = self.kinds.iter().map(|k| format!("{k:?}").to_lowercase()).collect();
        let _ = writeln!(text, "\nRequests counted: {}.\n", kinds.join(", "));
        *text +=
            "| phase | seconds | requests | ok % | req/s | p50 ms | p95 ms | p99 ms | p99.9 ms | max ms | errors |\n";
        *text += "|---|---|---|---|---|---|---|---|---|---|---|\n";
        for phase in &self.phases {
            let s = Summary::of(&self.recorded, &self.kinds, phase.from_s, phase.to_s);
            let _ = writeln!(
                text,
                "| {} | {:.0}–{:.0} | {} | {:.3} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {} |",
                phase.name,
                phase.from_s,
                phase.to_s,
                s.requests,
                s.completion() * 100.0,
                s.rate_per_s,
                s.p50_ms,
                s.p95_ms,
                s.p99_ms,
                s.p999_ms,
                s.max_ms,
                s.errors_line()
            );
        }
    }

    /// Prints the report and writes `report.md` and the plots to its directory.
    pub fn write(&self) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let text = self.markdown();
        print!("{text}");
        std::fs::write(self.dir.join("report.md"), &text)?;
        if !self.recorded.samples.is_empty() {
            self.plot().map_err(|e| anyhow::anyhow!("drawing the plots: {e}"))?;
        }
        println!("report: {}", self.dir.join("report.md").display());
        Ok(())
    }

    fn plot(&self) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let duration_s = self.recorded.duration_s.max(1.0);
        let bucket_s = (duration_s / PLOT_BUCKETS_MAX).max(1.0).ceil();
        let buckets = (duration_s / bucket_s).ceil() as usize;
        let mut latencies: Vec<Vec<f64>> = vec![Vec::new(); buckets];
        let (mut ok, mut failed) = (vec![0u64; buckets], vec![0u64; buckets]);
        for sample in self.recorded.samples.iter().filter(|s| self.kinds.contains(&s.kind)) {
            let index = ((f64::from(sample.at_ms) / 1000.0 / bucket_s) as usize).min(buckets - 1);
            if sample.outcome == Outcome::Ok {
                ok[index] += 1;
                latencies[index].push(f64::from(sample.latency_us) / 1000.0);
            } else {
                failed[index] += 1;
            }
        }
        let at = |i: usize| (i as f64 + 0.5) * bucket_s;
        let mut p50 = Vec::new();
        let mut p99 = Vec::new();
        for (i, bucket) in latencies.iter_mut().enumerate() {
            bucket.sort_by(f64::total_cmp);
            if !bucket.is_empty() {
                p50.push((at(i), crate::record::percentile(bucket, 0.5)));
                p99.push((at(i), crate::record::percentile(bucket, 0.99)));
            }
        }
        let per_s = |counts: &[u64]| -> Vec<(f64, f64)> {
            counts.iter().enumerate().map(|(i, c)| (at(i), *c as f64 / bucket_s)).collect()
        };
        let marks = &self.recorded.marks;
        let latency_lines = [("p50 ms", BLUE, p50), ("p99 ms", RED, p99)];
        draw(&self.dir.join("latency.svg"), "latency of successful requests", "ms", duration_s, &latency_lines, marks)?;
        let rate_lines = [("ok/s", GREEN, per_s(&ok)), ("failed/s", RED, per_s(&failed))];
        draw(&self.dir.join("throughput.svg"), "requests per second", "req/s", duration_s, &rate_lines, marks)?;
        if !self.series.is_empty() {
            let palette = [BLUE, RED, GREEN, MAGENTA, CYAN, BLACK, RGBColor(255, 140, 0), RGBColor(128, 0, 128)];
            let lines: Vec<Line<'_>> = self
                .series
                .iter()
                .enumerate()
                .map(|(i, s)| (s.name.as_str(), palette[i % palette.len()], s.points.clone()))
                .collect();
            let unit = self.series[0].unit.clone();
            draw(&self.dir.join("series.svg"), "daemons", &unit, duration_s, &lines, marks)?;
        }
        Ok(())
    }
}

type Line<'a> = (&'a str, RGBColor, Vec<(f64, f64)>);

fn draw(
    path: &Path,
    title: &str,
    unit: &str,
    duration_s: f64,
    lines: &[Line<'_>],
    marks: &[Mark],
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let y_max = lines.iter().flat_map(|l| l.2.iter().map(|p| p.1)).fold(1.0f64, f64::max) * 1.1;
    let root = SVGBackend::new(path, (1100, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d(0f64..duration_s, 0f64..y_max)?;
    chart.configure_mesh().x_desc("seconds").y_desc(unit).draw()?;
    let faint = RGBColor(215, 215, 215);
    for mark in marks.iter().filter(|m| m.minor) {
        chart.draw_series(LineSeries::new([(mark.at_s, 0.0), (mark.at_s, y_max)], faint.stroke_width(1)))?;
    }
    let fault = RGBColor(200, 90, 0);
    for mark in marks.iter().filter(|m| !m.minor) {
        chart.draw_series(LineSeries::new([(mark.at_s, 0.0), (mark.at_s, y_max)], fault.stroke_width(2)))?;
        let style = ("sans-serif", 12).into_font().color(&fault);
        chart.draw_series([Text::new(mark.label.clone(), (mark.at_s, y_max * 0.96), style)])?;
    }
    for (name, color, points) in lines {
        let color = *color;
        chart
            .draw_series(LineSeries::new(points.iter().copied(), color.stroke_width(2)))?
            .label(*name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], color.stroke_width(2)));
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.85)).border_style(BLACK).draw()?;
    root.present()?;
    Ok(())
}
