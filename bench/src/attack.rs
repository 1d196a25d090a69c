//! The load generator: goose users, each a loop of one scenario step, sending through the LBs.
//!
//! Goose runs the users (hatching, run time or iteration count, waits between steps, one
//! keep-alive connection pool per user, its own request counts and an HTML report). Each step
//! also records its requests in the scenario's [`Recorder`](crate::record::Recorder) with what
//! goose does not know: whether the answer was the right one, and the time line for the plots.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use goose::prelude::*;

use crate::record::{Kind, Outcome};

/// Where and how requests go.
#[derive(Clone, Debug)]
pub struct Target {
    /// The LBs' public listeners; a user starts on one by its index and moves to the next only
    /// when no connection can be made (nothing was sent), as a client with a pool of addresses.
    pub lbs: Vec<SocketAddr>,
    /// Apps answer at `<name>.<domain>`.
    pub domain: String,
    /// Bound on one request.
    pub timeout_ms: u64,
}

/// The answer to one request: when it was sent, and the status and body or why there was none.
pub struct Fetched {
    pub sent: Instant,
    pub answer: Result<(u16, String), Outcome>,
}

impl Fetched {
    /// A short description of the answer, for failure notes.
    pub fn describe(&self) -> String {
        match &self.answer {
            Ok((status, body)) => format!("{status} {}", body.chars().take(200).collect::<String>()),
            Err(outcome) => outcome.label(),
        }
    }

    /// `Ok` when the status is 200 and `check` accepts the body.
    pub fn outcome(&self, check: impl Fn(&str) -> bool) -> Outcome {
        match &self.answer {
            Ok((200, body)) if check(body) => Outcome::Ok,
            Ok((200, _)) => Outcome::WrongAnswer,
            Ok((status, _)) => Outcome::Status(*status),
            Err(outcome) => *outcome,
        }
    }
}

/// `GET path` of `app` through the user's LB, failing over to the next LB on a refused
/// connection.
pub async fn get(user: &mut GooseUser, target: &Target, kind: Kind, app: &str, path: &str) -> Fetched {
    assert!(!target.lbs.is_empty());
    let host = format!("{app}.{}", target.domain);
    let sent = Instant::now();
    let mut answer = Err(Outcome::Connect);
    for attempt in 0..target.lbs.len() {
        let lb = target.lbs[(user.weighted_users_index + attempt) % target.lbs.len()];
        answer = send(user, target, kind, &format!("http://{lb}{path}"), &host).await;
        if answer != Err(Outcome::Connect) {
            break;
        }
    }
    Fetched { sent, answer }
}

async fn send(
    user: &mut GooseUser,
    target: &Target,
    kind: Kind,
    url: &str,
    host: &str,
) -> Result<(u16, String), Outcome> {
    let builder = user.get_request_builder(&GooseMethod::Get, url).map_err(|_| Outcome::Transport)?;
    let builder = builder.header("host", host).timeout(Duration::from_millis(target.timeout_ms));
    let name = match kind {
        Kind::Read => "read",
        Kind::Write => "write",
        Kind::Deploy => "deploy",
    };
    let request = GooseRequest::builder().set_request_builder(builder).name(name).build();
    let response = user.request(request).await.map_err(|_| Outcome::Transport)?;
    let response = response.response.map_err(|e| transport_outcome(&e))?;
    let status = response.status().as_u16();
    let body = response.text().await.map_err(|e| transport_outcome(&e))?;
    Ok((status, body))
}

fn transport_outcome(error: &reqwest::Error) -> Outcome {
    if error.is_timeout() {
        Outcome::Timeout
    } else if error.is_connect() {
        Outcome::Connect
    } else {
        Outcome::Transport
    }
}

/// How goose runs the users.
#[derive(Clone, Debug)]
pub struct Shape {
    pub users: usize,
    /// Users started per second.
    pub hatch_per_s: usize,
    /// Run this long (after all users started) …
    pub run_time_s: Option<usize>,
    /// … or let each user do this many steps.
    pub iterations: Option<usize>,
    /// Pause between a user's steps, in ms (min, max).
    pub wait_ms: (u64, u64),
}

/// One step of a user: goose calls it in a loop.
pub type Step = goose::goose::TransactionFunction;

/// Runs `step` for `shape.users` users; writes goose's own HTML report to `report_dir`.
pub async fn run(
    scenario: &str,
    shape: &Shape,
    target: &Target,
    step: Step,
    report_dir: &Path,
) -> anyhow::Result<GooseMetrics> {
    assert!(shape.users > 0 && shape.hatch_per_s > 0);
    assert!(shape.run_time_s.is_some() != shape.iterations.is_some(), "a run time or an iteration count");
    let (min, max) = (Duration::from_millis(shape.wait_ms.0), Duration::from_millis(shape.wait_ms.1));
    let scenario = Scenario::new(scenario).register_transaction(Transaction::new(step)).set_wait_time(min, max)?;
    let host = format!("http://{}", target.lbs[0]);
    let report = report_dir.join("goose.html");
    let mut attack = GooseAttack::initialize_with_config(goose::config::GooseConfiguration::default())?
        .register_scenario(scenario)
        .set_default(GooseDefault::Host, host.as_str())?
        .set_default(GooseDefault::Users, shape.users)?
        .set_default(GooseDefault::IncreaseRate, shape.hatch_per_s.to_string().as_str())?
        .set_default(GooseDefault::NoPrintMetrics, true)?
        .set_default(GooseDefault::NoTelnet, true)?
        .set_default(GooseDefault::NoWebSocket, true)?
        .set_default(GooseDefault::ReportFile, report.display().to_string().as_str())?;
    attack = match (shape.run_time_s, shape.iterations) {
        (Some(seconds), _) => attack.set_default(GooseDefault::RunTime, seconds)?,
        (_, Some(iterations)) => attack.set_default(GooseDefault::Iterations, iterations)?,
        _ => unreachable!("checked above"),
    };
    Ok(attack.execute().await?)
}

/// Wraps an async closure over (user, its index) as a goose step.
pub fn step<F>(f: F) -> Step
where
    F: for<'r> Fn(
            &'r mut GooseUser,
        ) -> std::pin::Pin<Box<dyn std::future::Future<Output = TransactionResult> + Send + 'r>>
        + Send
        + Sync
        + 'static,
{
    Arc::new(f)
}

/// Requests goose counted, and how many it saw fail (for the report, beside ours).
pub fn goose_counts(metrics: &GooseMetrics) -> (usize, usize) {
    metrics
        .requests
        .values()
        .fold((0, 0), |(all, failed), r| (all + r.success_count + r.fail_count, failed + r.fail_count))
}
