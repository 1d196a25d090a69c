//! Per-app logs, bounded on disk: the app's output ([`AppLog`]: stdout and stderr combined,
//! one timestamped line each, followable live) and its request log ([`RequestLog`]: one JSON
//! line per request).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use steady_proto::wire::RequestRecord;
use tokio::sync::broadcast;

use crate::config::{LOG_BYTES_MAX, LOG_LINE_BYTES_MAX};

/// Lines buffered for each live follower; a slower follower is told how many it missed.
const FOLLOW_BUFFER_LINES: usize = 1024;
/// Most live followers of one app's log at once.
pub const FOLLOWERS_MAX: usize = 32;
/// Most bytes read back from a log file to answer a tail request.
const TAIL_READ_BYTES_MAX: u64 = 2 * LOG_BYTES_MAX;

/// An append-only file rotated at [`LOG_BYTES_MAX`] (one older file, `.1`, is kept).
struct BoundedFile {
    path: PathBuf,
    state: Mutex<FileState>,
}

struct FileState {
    file: File,
    size_bytes: u64,
}

impl BoundedFile {
    fn open(path: &Path) -> io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let size_bytes = file.metadata()?.len();
        Ok(Self { path: path.to_owned(), state: Mutex::new(FileState { file, size_bytes }) })
    }

    /// Appends `lines` (which end in a newline). Never fails the caller: a log that cannot be
    /// written must not take the app down.
    fn append(&self, lines: &[u8]) {
        debug_assert!(lines.ends_with(b"\n"));
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.size_bytes + lines.len() as u64 > LOG_BYTES_MAX {
            if let Err(error) = self.rotate(&mut state) {
                tracing::warn!(%error, path = %self.path.display(), "log rotation failed");
            }
        }
        if state.file.write_all(lines).is_ok() {
            state.size_bytes += lines.len() as u64;
        }
    }

    fn rotate(&self, state: &mut FileState) -> io::Result<()> {
        let mut older = self.path.clone().into_os_string();
        older.push(".1");
        std::fs::rename(&self.path, older)?;
        state.file = OpenOptions::new().create(true).append(true).open(&self.path)?;
        state.size_bytes = 0;
        Ok(())
    }

    /// The last `count` lines (at most), oldest first, from the current file.
    fn tail(&self, count: usize) -> Vec<String> {
        use std::io::{Read, Seek, SeekFrom};
        let Ok(mut file) = File::open(&self.path) else {
            return Vec::new();
        };
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        let start = size.saturating_sub(TAIL_READ_BYTES_MAX);
        let mut text = String::new();
        if file.seek(SeekFrom::Start(start)).is_err()
            || file.take(TAIL_READ_BYTES_MAX).read_to_string(&mut text).is_err()
        {
            return Vec::new();
        }
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(count)..].iter().map(|l| l.to_string()).collect()
    }
}

/// An app's output log.
pub struct AppLog {
    file: BoundedFile,
    live: broadcast::Sender<Arc<str>>,
}

impl AppLog {
    /// Opens (creating) the log at `path` for appending.
    pub fn open(path: &Path) -> io::Result<Self> {
        Ok(Self { file: BoundedFile::open(path)?, live: broadcast::channel(FOLLOW_BUFFER_LINES).0 })
    }

    /// Appends one line: `<RFC 3339 time> <stream> <text>`, and sends it to live followers.
    pub fn line(&self, stream: &str, text: &str) {
        let text = truncate(text.trim_end_matches(['\n', '\r']), LOG_LINE_BYTES_MAX);
        let stamp = humantime::format_rfc3339_millis(SystemTime::now());
        let line = format!("{stamp} {stream} {text}\n");
        self.file.append(line.as_bytes());
        let _ = self.live.send(Arc::from(line.trim_end()));
    }

    /// The last `count` lines (at most), oldest first.
    pub fn tail(&self, count: usize) -> Vec<String> {
        self.file.tail(count)
    }

    /// A live feed of new lines, or `None` when [`FOLLOWERS_MAX`] already follow.
    pub fn follow(&self) -> Option<broadcast::Receiver<Arc<str>>> {
        (self.live.receiver_count() < FOLLOWERS_MAX).then(|| self.live.subscribe())
    }
}

/// Bytes of request log lines kept in memory before they are written.
pub const REQUEST_LOG_PENDING_BYTES_MAX: usize = 32 * 1024;

/// How long a request log line may wait in memory before the next record writes it; the
/// housekeeping loop writes what waits at least once a second, and every read writes it first.
pub const REQUEST_LOG_PENDING_MS_MAX: u64 = 250;

/// An app's request log: one JSON [`RequestRecord`] per line.
///
/// Lines are written in batches, not one write per request: at a busy app's rate that write
/// was a fifth of the ingress's system calls per request. A line waits in memory at most
/// [`REQUEST_LOG_PENDING_BYTES_MAX`] bytes or until the next flush; a hostd that dies loses
/// at most that much of the log, never the app's data.
pub struct RequestLog {
    file: BoundedFile,
    pending: Mutex<Pending>,
}

#[derive(Default)]
struct Pending {
    lines: Vec<u8>,
    /// When the oldest waiting line was recorded.
    since: Option<std::time::Instant>,
}

impl RequestLog {
    /// Opens (creating) the request log at `path`.
    pub fn open(path: &Path) -> io::Result<Self> {
        Ok(Self { file: BoundedFile::open(path)?, pending: Mutex::new(Pending::default()) })
    }

    /// Appends one request (written with the next batch).
    pub fn record(&self, record: &RequestRecord) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let start = pending.lines.len();
        if serde_json::to_writer(&mut pending.lines, record).is_err() {
            pending.lines.truncate(start);
            return;
        }
        pending.lines.push(b'\n');
        let since = *pending.since.get_or_insert_with(std::time::Instant::now);
        let waited_ms = since.elapsed().as_millis() as u64;
        if pending.lines.len() >= REQUEST_LOG_PENDING_BYTES_MAX || waited_ms >= REQUEST_LOG_PENDING_MS_MAX {
            self.write_pending(&mut pending);
        }
    }

    /// Writes the lines waiting in memory.
    pub fn flush(&self) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        self.write_pending(&mut pending);
    }

    fn write_pending(&self, pending: &mut Pending) {
        if !pending.lines.is_empty() {
            self.file.append(&pending.lines);
        }
        pending.lines.clear();
        pending.since = None;
    }

    /// The last `count` requests, oldest first (the waiting ones written first).
    pub fn tail(&self, count: usize) -> Vec<RequestRecord> {
        self.flush();
        self.file.tail(count).iter().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }
}

impl Drop for RequestLog {
    fn drop(&mut self) {
        self.flush();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_rotate_at_their_bound_and_tail_reads_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let log = AppLog::open(&dir.path().join("app.log")).unwrap();
        let line = "x".repeat(1000);
        for _ in 0..(LOG_BYTES_MAX / 1000 + 10) {
            log.line("out", &line);
        }
        let size = std::fs::metadata(dir.path().join("app.log")).unwrap().len();
        assert!(size < LOG_BYTES_MAX, "current file stays under the bound: {size}");
        assert!(dir.path().join("app.log.1").exists(), "one older file is kept");
        let tail = log.tail(3);
        assert_eq!(tail.len(), 3);
        assert!(tail[2].ends_with(&format!("out {line}")));
    }

    #[test]
    fn followers_see_new_lines_and_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let log = AppLog::open(&dir.path().join("app.log")).unwrap();
        let mut follower = log.follow().unwrap();
        log.line("err", "boom");
        assert!(follower.try_recv().unwrap().ends_with("err boom"));
        let others: Vec<_> = (1..FOLLOWERS_MAX).map(|_| log.follow().unwrap()).collect();
        assert!(log.follow().is_none(), "no more than FOLLOWERS_MAX followers");
        drop(others);
        assert!(log.follow().is_some());
    }

    #[test]
    fn long_lines_are_cut() {
        let dir = tempfile::tempdir().unwrap();
        let log = AppLog::open(&dir.path().join("app.log")).unwrap();
        log.line("out", &"y".repeat(LOG_LINE_BYTES_MAX * 2));
        let last = log.tail(1).pop().unwrap();
        assert!(last.len() < LOG_LINE_BYTES_MAX + 100 && last.ends_with("bytes]"), "{}", last.len());
    }

    #[test]
    fn request_records_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let log = RequestLog::open(&dir.path().join("requests.log")).unwrap();
        let record =
            RequestRecord { at_ms: 1, method: "GET".into(), path: "/a".into(), status: 200, duration_ms: 3, bytes: 5 };
        log.record(&record);
        assert_eq!(log.tail(10), [record]);
    }

    #[test]
    fn request_lines_wait_in_memory_until_a_flush_a_read_or_a_full_batch() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("requests.log");
        let log = RequestLog::open(&path).unwrap();
        let record = |path: &str| RequestRecord {
            at_ms: 1,
            method: "GET".into(),
            path: path.into(),
            status: 200,
            duration_ms: 0,
            bytes: 0,
        };
        log.record(&record("/a"));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "", "one line waits");
        log.flush();
        assert!(std::fs::read_to_string(&path).unwrap().contains("\"/a\""));
        let long_path = "/".repeat(1024);
        let lines = REQUEST_LOG_PENDING_BYTES_MAX / 1024 + 1;
        for _ in 0..lines {
            log.record(&record(&long_path));
        }
        let written = std::fs::read_to_string(&path).unwrap().lines().count();
        assert!(written > 1, "a full batch is written without a flush ({written} lines)");
        log.record(&record("/last"));
        assert_eq!(log.tail(1), [record("/last")], "a read writes what waits first");
        drop(log);
        assert!(std::fs::read_to_string(&path)
            .unwrap()
            .ends_with("\"/last\",\"status\":200,\"duration_ms\":0,\"bytes\":0}\n"));
    }
}
