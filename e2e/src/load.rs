//! A paced write load over many apps through several LBs, for the move tests and benchmarks.
//!
//! Each app gets one writer thread that sends `GET /write?seq=N` with N counting up from the
//! app's last row; the [`COUNTER_APP`] refuses a write that does not follow its last row (a
//! gap or a duplicate), so a lost write or a second copy of the app serving shows up as a
//! failed request. Requests alternate over the LBs. Everything is bounded: the run ends when
//! asked, each request has a timeout, and at most [`FAILURES_KEPT`] failures are kept per app.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// An app that appends numbered rows and refuses any number but the next one.
pub const COUNTER_APP: &str = r#"import { Database } from "bun:sqlite";
const db = new Database("/data/counter.db");
db.exec("PRAGMA journal_mode = WAL; PRAGMA busy_timeout = 5000;");
db.exec("CREATE TABLE IF NOT EXISTS hits (seq INTEGER PRIMARY KEY, at_ms INTEGER NOT NULL)");
const last = db.query("SELECT coalesce(max(seq), 0) AS max, count(*) AS rows FROM hits");
const insert = db.query("INSERT INTO hits (seq, at_ms) VALUES (?, ?)");
export default {
  fetch(request) {
    const url = new URL(request.url);
    const { max, rows } = last.get();
    if (url.pathname === "/write") {
      const seq = Number(url.searchParams.get("seq"));
      if (seq !== max + 1 || rows !== max) {
        return new Response(`out of order: got ${seq} after ${max} (${rows} rows)`, { status: 409 });
      }
      insert.run(seq, Date.now());
      return new Response(String(seq));
    }
    return Response.json({ max, rows });
  },
};
"#;

/// Failure messages kept per app (the count goes on).
pub const FAILURES_KEPT: usize = 20;
/// Bound on one request (held requests wait up to hostd's `--move-hold-ms`).
const REQUEST_TIMEOUT_MS: u64 = 30_000;

/// Bundles `source` (an `index.ts`) as `steady deploy` would: `bun build`, then a tar with
/// `index.js` at the top.
pub fn bundle(source: &str, dir: &Path) -> Vec<u8> {
    let work = dir.join("bundle-src");
    std::fs::create_dir_all(&work).expect("bundle dir");
    std::fs::write(work.join("index.ts"), source).expect("app source");
    let status = std::process::Command::new(crate::workspace().join(".tools/bin/bun"))
        .args(["build", "--target=bun", "--outfile"])
        .arg(work.join("index.js"))
        .arg(work.join("index.ts"))
        .stdout(std::process::Stdio::null())
        .status()
        .expect("bun build");
    assert!(status.success(), "bun build failed");
    let mut archive = tar::Builder::new(Vec::new());
    archive.append_path_with_name(work.join("index.js"), "index.js").expect("tar");
    archive.into_inner().expect("tar")
}

/// Deploys `bundle` as `name` through the API at `private`; panics unless it is created.
pub fn deploy_bundle(cluster: &crate::Cluster, name: &str, bundle: &[u8]) {
    let private = cluster.private;
    let request =
        cluster.api().post(format!("http://{private}/v1/apps/{name}/deploy")).timeout(Duration::from_secs(60));
    let response = request.body(bundle.to_vec()).send();
    let response = response.expect("deploy request");
    let status = response.status().as_u16();
    assert!(status == 201 || status == 200, "deploy of {name}: {status} {}", response.text().unwrap_or_default());
}

/// One request's outcome time and latency.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// Seconds since the load started, when the answer came.
    pub at_s: f64,
    pub latency_ms: f64,
    pub ok: bool,
}

/// What one app's writer saw.
#[derive(Debug, Default)]
pub struct AppOutcome {
    pub app: String,
    /// The highest sequence number the app acknowledged.
    pub acked: u64,
    pub sent: u64,
    pub failed: u64,
    pub failures: Vec<String>,
    pub samples: Vec<Sample>,
}

/// A running load.
pub struct Load {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    writers: Vec<JoinHandle<AppOutcome>>,
    started: Instant,
}

/// The result of a load.
pub struct Report {
    pub apps: Vec<AppOutcome>,
    pub elapsed: Duration,
}

impl Load {
    /// Starts one writer per app, each sending `per_app_per_second` writes a second (as long
    /// as answers come that fast) alternately through `lbs`.
    pub fn start(apps: &[String], lbs: &[SocketAddr], domain: &str, per_app_per_second: u32) -> Self {
        assert!(!lbs.is_empty() && per_app_per_second > 0 && apps.len() <= 1_000);
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_millis(REQUEST_TIMEOUT_MS))
            .pool_max_idle_per_host(apps.len())
            .build()
            .expect("client");
        let (stop, sent) = (Arc::new(AtomicBool::new(false)), Arc::default());
        let started = Instant::now();
        let gap = Duration::from_secs(1) / per_app_per_second;
        let writers = apps
            .iter()
            .enumerate()
            .map(|(index, app)| {
                let writer = Writer {
                    app: app.clone(),
                    host: format!("{app}.{domain}"),
                    lbs: lbs.to_vec(),
                    first_lb: index,
                    http: http.clone(),
                    stop: stop.clone(),
                    sent: Arc::clone(&sent),
                    gap,
                    started,
                };
                std::thread::spawn(move || writer.run())
            })
            .collect();
        Self { stop, sent, writers, started }
    }

    /// Requests sent so far, over all apps.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Seconds since the load started.
    pub fn elapsed_s(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// Stops the writers (each finishes its request in flight) and collects what they saw.
    pub fn stop(self) -> Report {
        self.stop.store(true, Ordering::Relaxed);
        let apps = self.writers.into_iter().map(|w| w.join().expect("writer thread")).collect();
        Report { apps, elapsed: self.started.elapsed() }
    }
}

impl Report {
    pub fn sent(&self) -> u64 {
        self.apps.iter().map(|a| a.sent).sum()
    }

    pub fn failed(&self) -> u64 {
        self.apps.iter().map(|a| a.failed).sum()
    }

    /// Requests per second over the run.
    pub fn rate(&self) -> f64 {
        self.sent() as f64 / self.elapsed.as_secs_f64()
    }

    /// The kept failure messages, `app: message`, for assertion output.
    pub fn failure_lines(&self) -> Vec<String> {
        self.apps.iter().flat_map(|a| a.failures.iter().map(move |f| format!("{}: {f}", a.app))).collect()
    }

    /// Latencies of successful requests, sorted, in ms.
    pub fn latencies_ms(&self) -> Vec<f64> {
        let mut all: Vec<f64> =
            self.apps.iter().flat_map(|a| a.samples.iter().filter(|s| s.ok).map(|s| s.latency_ms)).collect();
        all.sort_by(f64::total_cmp);
        all
    }
}

/// The value at `p` (0–1) of sorted values.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

struct Writer {
    app: String,
    host: String,
    lbs: Vec<SocketAddr>,
    first_lb: usize,
    http: reqwest::blocking::Client,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    gap: Duration,
    started: Instant,
}

impl Writer {
    fn run(self) -> AppOutcome {
        let mut outcome = AppOutcome { app: self.app.clone(), ..AppOutcome::default() };
        let mut seq = self.resync().unwrap_or(0) + 1;
        let mut next = Instant::now();
        while !self.stop.load(Ordering::Relaxed) {
            let lb = self.lbs[(self.first_lb + outcome.sent as usize) % self.lbs.len()];
            let sent_at = Instant::now();
            let answer = self
                .http
                .get(format!("http://{lb}/write?seq={seq}"))
                .header("host", &self.host)
                .send()
                .and_then(|r| Ok((r.status().as_u16(), r.text()?)));
            let latency_ms = sent_at.elapsed().as_secs_f64() * 1000.0;
            outcome.sent += 1;
            self.sent.fetch_add(1, Ordering::Relaxed);
            let ok = matches!(&answer, Ok((200, body)) if *body == seq.to_string());
            let at_s = self.started.elapsed().as_secs_f64();
            outcome.samples.push(Sample { at_s, latency_ms, ok });
            if ok {
                outcome.acked = seq;
                seq += 1;
            } else {
                outcome.failed += 1;
                if outcome.failures.len() < FAILURES_KEPT {
                    let what = match &answer {
                        Ok((status, body)) => format!("{status} {}", body.chars().take(300).collect::<String>()),
                        Err(error) => format!("error: {error}"),
                    };
                    outcome.failures.push(format!("seq {seq} via {lb} at {at_s:.2} s: {what}"));
                }
                // Whether the write happened is unknown: continue after the app's last row.
                if let Some(max) = self.resync() {
                    seq = max + 1;
                }
            }
            next += self.gap;
            let now = Instant::now();
            if next > now {
                std::thread::sleep(next - now);
            } else {
                next = now;
            }
        }
        outcome
    }

    /// The app's last row number, asked through the first LB.
    fn resync(&self) -> Option<u64> {
        let lb = self.lbs[self.first_lb % self.lbs.len()];
        let response = self.http.get(format!("http://{lb}/count")).header("host", &self.host).send().ok()?;
        if !response.status().is_success() {
            return None;
        }
        let body: serde_json::Value = response.json().ok()?;
        body["max"].as_u64()
    }
}

/// The app's `(max, rows)` as it answers `/count` through `lb`.
pub fn count(lb: SocketAddr, app: &str, domain: &str) -> Option<(u64, u64)> {
    let http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(30)).build().ok()?;
    let response = http.get(format!("http://{lb}/count")).header("host", format!("{app}.{domain}")).send().ok()?;
    let body: serde_json::Value = response.json().ok()?;
    Some((body["max"].as_u64()?, body["rows"].as_u64()?))
}
