//! Exit codes scripts can rely on, and how errors are shown.

use std::fmt;

/// A failure with a stable exit code and a hint at what to do.
#[derive(Debug)]
pub struct Failure {
    pub code: i32,
    /// Short stable identifier (`not_found`, `network`, or the API's error code).
    pub kind: String,
    pub message: String,
    /// Extra lines to show (a failed start's log).
    pub detail: Vec<String>,
}

/// Refused or failed.
pub const FAILED: i32 = 1;
/// Usage error (clap uses 2 too).
pub const USAGE: i32 = 2;
/// Not signed in, a bad or revoked token, or a call the token may not make.
pub const AUTH: i32 = 3;
/// The app or thing named does not exist.
pub const NOT_FOUND: i32 = 4;
/// Conflicts with the state on the server.
pub const CONFLICT: i32 = 5;
/// Could not reach the API.
pub const NETWORK: i32 = 6;

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

impl Failure {
    pub fn new(code: i32, kind: &str, message: impl Into<String>) -> Self {
        Self { code, kind: kind.into(), message: message.into(), detail: Vec::new() }
    }
}

/// The exit code for `error`.
pub fn code(error: &anyhow::Error) -> i32 {
    error.downcast_ref::<Failure>().map_or(FAILED, |f| f.code)
}

/// Prints `error` on stderr, as JSON when `json` is set.
pub fn report(error: &anyhow::Error, json: bool) {
    let failure = error.downcast_ref::<Failure>();
    if json {
        let value = serde_json::json!({
            "error": failure.map_or("failed", |f| f.kind.as_str()),
            "message": format!("{error:#}"),
            "detail": failure.map(|f| f.detail.clone()).unwrap_or_default(),
        });
        eprintln!("{value}");
        return;
    }
    eprintln!("error: {error:#}");
    for line in failure.map(|f| f.detail.as_slice()).unwrap_or_default() {
        eprintln!("  | {line}");
    }
}
