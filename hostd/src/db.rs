//! One bounded SQL statement against an app's SQLite database (`steady db`).
//!
//! The database is the app's own file, used by the app's process at the same time: this is an
//! ordinary SQLite client beside it, so SQLite's locking (WAL or rollback journal, with a busy
//! timeout) keeps both consistent, and Litestream sees a write like any of the app's. A read
//! opens the file read-only and sets `PRAGMA query_only`; no statement may attach another file
//! (the attach limit is zero, which also refuses `VACUUM INTO`), so a query never reaches
//! beyond its app's database. Every answer is bounded in rows, bytes and time.

use std::path::Path;
use std::time::Duration;

use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags};
use steady_proto::wire::{DbAnswer, DbValue};

/// Most rows in one answer; more are left out and the answer says it was truncated.
pub const ROWS_MAX: usize = 1_000;
/// Most bytes of values in one answer (roughly, as text); beyond it the answer is truncated.
pub const RESULT_BYTES_MAX: usize = 1024 * 1024;
/// Longest a statement may run before it is interrupted.
pub const QUERY_TIMEOUT_MS: u64 = 5_000;
/// How long a statement waits for a lock the app holds before it fails as busy.
const BUSY_TIMEOUT_MS: u64 = 5_000;
/// Longest statement accepted, in bytes.
pub const SQL_BYTES_MAX: usize = 64 * 1024;

/// Why a statement gave no answer. `Sql` carries SQLite's own message for the user.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("{0}")]
    Sql(String),
    #[error("the statement ran longer than {QUERY_TIMEOUT_MS} ms and was interrupted")]
    Timeout,
    #[error("this statement changes the database: pass --write (write: true) to allow it")]
    ReadOnly,
    #[error("the statement is longer than {SQL_BYTES_MAX} bytes")]
    TooLong,
    #[error("give exactly one SQL statement")]
    NotOneStatement,
}

/// Runs `sql` on the database at `path`, read-only unless `write`. Blocking: call it off the
/// async runtime. The statement is interrupted after [`QUERY_TIMEOUT_MS`].
pub fn run(path: &Path, database: &str, sql: &str, write: bool) -> Result<DbAnswer, QueryError> {
    if sql.len() > SQL_BYTES_MAX {
        return Err(QueryError::TooLong);
    }
    let connection = open(path, write).map_err(sql_error)?;
    let interrupt = connection.get_interrupt_handle();
    let (done, finished) = std::sync::mpsc::channel::<()>();
    // A plain thread, not a task: the statement runs on a blocking thread and must be stopped
    // even when the runtime's workers are busy.
    let watchdog = std::thread::spawn(move || {
        if finished.recv_timeout(Duration::from_millis(QUERY_TIMEOUT_MS)).is_err() {
            interrupt.interrupt();
            return true;
        }
        false
    });
    let answer = execute(&connection, database, sql, write);
    let _ = done.send(());
    let interrupted = watchdog.join().unwrap_or(false);
    match answer {
        Err(QueryError::Sql(_)) if interrupted => Err(QueryError::Timeout),
        other => other,
    }
}

fn open(path: &Path, write: bool) -> rusqlite::Result<Connection> {
    // Never CREATE: a query must not make a database the app does not have.
    let access = if write { OpenFlags::SQLITE_OPEN_READ_WRITE } else { OpenFlags::SQLITE_OPEN_READ_ONLY };
    let connection = Connection::open_with_flags(path, access | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
    // SAFETY: the handle is this connection's own and stays valid for the call; sqlite3_limit
    // only sets a bound on it.
    unsafe {
        rusqlite::ffi::sqlite3_limit(connection.handle(), rusqlite::ffi::SQLITE_LIMIT_ATTACHED, 0);
    }
    connection.busy_timeout(Duration::from_millis(BUSY_TIMEOUT_MS))?;
    if !write {
        connection.pragma_update(None, "query_only", true)?;
    }
    Ok(connection)
}

fn sql_error(error: rusqlite::Error) -> QueryError {
    match error {
        rusqlite::Error::MultipleStatement => QueryError::NotOneStatement,
        rusqlite::Error::SqliteFailure(_, Some(message)) => QueryError::Sql(message),
        other => QueryError::Sql(other.to_string()),
    }
}

fn execute(connection: &Connection, database: &str, sql: &str, write: bool) -> Result<DbAnswer, QueryError> {
    let mut statement = connection.prepare(sql).map_err(sql_error)?;
    if !write && !statement.readonly() {
        return Err(QueryError::ReadOnly);
    }
    let columns: Vec<String> = statement.column_names().map(str::to_owned).collect();
    let mut rows = Vec::new();
    let (mut truncated, mut bytes) = (false, 0usize);
    let mut cursor = statement.raw_query();
    while let Some(row) = cursor.next().map_err(sql_error)? {
        if rows.len() == ROWS_MAX {
            truncated = true;
            break;
        }
        let mut values = Vec::with_capacity(columns.len());
        for index in 0..columns.len() {
            let (value, size) = value_of(row.get_ref(index).map_err(sql_error)?);
            bytes += size;
            values.push(value);
        }
        if bytes > RESULT_BYTES_MAX {
            truncated = true;
            break;
        }
        rows.push(values);
    }
    drop(cursor);
    // A fresh connection: the count is this statement's, for a statement that changes rows.
    let changes = if write && !statement.readonly() { connection.changes() } else { 0 };
    Ok(DbAnswer { database: database.to_owned(), columns, rows, truncated, changes })
}

/// A value for the answer and its approximate size in the JSON answer.
fn value_of(value: ValueRef<'_>) -> (DbValue, usize) {
    match value {
        ValueRef::Null => (DbValue::Null, 4),
        ValueRef::Integer(i) => (DbValue::Integer(i), 20),
        ValueRef::Real(r) => (DbValue::Real(r), 24),
        ValueRef::Text(text) => {
            let text = String::from_utf8_lossy(text).into_owned();
            let size = text.len() + 2;
            (DbValue::Text(text), size)
        }
        ValueRef::Blob(blob) => (DbValue::Blob { blob_hex: hex::encode(blob) }, 2 * blob.len() + 16),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn database() -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.db");
        let connection = Connection::open(&path).unwrap();
        connection
            .execute_batch(
                "PRAGMA journal_mode=WAL; CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, data BLOB, x REAL);
                 INSERT INTO t (name, data, x) VALUES ('a', x'0102', 1.5), (NULL, NULL, NULL);",
            )
            .unwrap();
        (dir, path)
    }

    #[test]
    fn reads_typed_values_and_refuses_writes_without_write() {
        let (_dir, path) = database();
        let answer = run(&path, "app.db", "SELECT id, name, data, x FROM t ORDER BY id", false).unwrap();
        assert_eq!(answer.columns, ["id", "name", "data", "x"]);
        assert_eq!(
            answer.rows[0],
            [
                DbValue::Integer(1),
                DbValue::Text("a".into()),
                DbValue::Blob { blob_hex: "0102".into() },
                DbValue::Real(1.5)
            ]
        );
        assert_eq!(answer.rows[1][1], DbValue::Null);
        assert!(matches!(run(&path, "app.db", "DELETE FROM t", false), Err(QueryError::ReadOnly)));
        let attach = run(&path, "app.db", "ATTACH '/tmp/other.db' AS o", true);
        assert!(matches!(attach, Err(QueryError::Sql(_))), "{attach:?}");
        assert!(matches!(run(&path, "app.db", "SELECT 1; SELECT 2", false), Err(QueryError::NotOneStatement)));
        let bad = run(&path, "app.db", "SELECT nope FROM t", false);
        assert!(matches!(&bad, Err(QueryError::Sql(m)) if m.contains("no such column")), "{bad:?}");
        let changed = run(&path, "app.db", "UPDATE t SET name = 'b'", true).unwrap();
        assert_eq!(changed.changes, 2);
    }

    #[test]
    fn bounds_rows_and_time() {
        let (_dir, path) = database();
        let many = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n LIMIT 5000) SELECT i FROM n";
        let answer = run(&path, "app.db", many, false).unwrap();
        assert_eq!((answer.rows.len(), answer.truncated), (ROWS_MAX, true));
        let big = "SELECT zeroblob(300000) FROM t, t AS u, t AS v";
        let answer = run(&path, "app.db", big, false).unwrap();
        assert!(answer.truncated && answer.rows.len() < 8, "{} rows", answer.rows.len());
        let endless = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT count(*) FROM n";
        assert!(matches!(run(&path, "app.db", endless, false), Err(QueryError::Timeout)));
    }
}
