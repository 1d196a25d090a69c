//! Per-app log: stdout and stderr combined, one timestamped line each, bounded on disk.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use crate::config::{LOG_BYTES_MAX, LOG_LINE_BYTES_MAX};

/// An append-only log file rotated at [`LOG_BYTES_MAX`] (one older file, `.1`, is kept).
pub struct AppLog {
    path: PathBuf,
    state: Mutex<LogState>,
}

struct LogState {
    file: File,
    size_bytes: u64,
}

impl AppLog {
    /// Opens (creating) the log at `path` for appending.
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let size_bytes = file.metadata()?.len();
        Ok(Self {
            path: path.to_owned(),
            state: Mutex::new(LogState { file, size_bytes }),
        })
    }

    /// Appends one line: `<RFC 3339 time> <stream> <text>`. Never fails the caller: a log
    /// that cannot be written must not take the app down.
    pub fn line(&self, stream: &str, text: &str) {
        let text = truncate(text.trim_end_matches(['\n', '\r']), LOG_LINE_BYTES_MAX);
        let stamp = humantime::format_rfc3339_millis(SystemTime::now());
        let line = format!("{stamp} {stream} {text}\n");
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.size_bytes + line.len() as u64 > LOG_BYTES_MAX {
            if let Err(error) = self.rotate(&mut state) {
                tracing::warn!(%error, path = %self.path.display(), "log rotation failed");
            }
        }
        if state.file.write_all(line.as_bytes()).is_ok() {
            state.size_bytes += line.len() as u64;
        }
    }

    fn rotate(&self, state: &mut LogState) -> io::Result<()> {
        std::fs::rename(&self.path, self.path.with_extension("log.1"))?;
        state.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        state.size_bytes = 0;
        Ok(())
    }

    /// The last `count` lines (at most), oldest first.
    pub fn tail(&self, count: usize) -> Vec<String> {
        let text = std::fs::read_to_string(&self.path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(count)..]
            .iter()
            .map(|l| l.to_string())
            .collect()
    }
}

fn truncate(text: &str, max_bytes: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= max_bytes {
        return text.into();
    }
    let mut end = max_bytes;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{} [line cut at {max_bytes} bytes]", &text[..end]).into()
}
