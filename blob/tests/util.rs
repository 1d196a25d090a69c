//! Test support: a real S3-compatible server (`s3s-fs`) on a free loopback port in a temp dir,
//! stopped by its pid when the handle drops (its log is printed if the test failed), and the
//! blob stores the tests run against. Waits are on conditions with a deadline, never a bare
//! sleep. `STEADY_S3S_FS` names the server binary; `STEADY_KEEP_TEST_DIR=1` keeps the temp dir;
//! `STEADY_TEST_PATIENCE_MS` sets the patience (default 20 s).

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use steady_blob::{LocalDir, S3Config, S3};

/// The keys the server accepts.
pub const ACCESS_KEY_ID: &str = "steady-test";
pub const SECRET_ACCESS_KEY: &str = "steady-test-secret";

/// Default patience for conditions; `STEADY_TEST_PATIENCE_MS` overrides it.
pub fn patience() -> Duration {
    let ms = std::env::var("STEADY_TEST_PATIENCE_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000);
    Duration::from_millis(ms)
}

/// Retries `check` until it returns `Some` or the patience runs out (then panics with `what`).
pub fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + patience();
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The `s3s-fs` binary: `$STEADY_S3S_FS`, else the checkout's `.tools/bin/s3s-fs`, else PATH.
pub fn s3s_fs_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("STEADY_S3S_FS") {
        let path = PathBuf::from(path);
        assert!(path.is_file(), "STEADY_S3S_FS={} is not a file", path.display());
        return path;
    }
    let checkout = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").join(".tools/bin/s3s-fs");
    if checkout.is_file() {
        return checkout;
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).map(|directory| directory.join("s3s-fs")).find(|candidate| candidate.is_file()).expect(
        "s3s-fs not found: run `bash scripts/setup.sh` (it installs .tools/bin/s3s-fs), or set STEADY_S3S_FS \
         to the binary, or put s3s-fs on PATH",
    )
}

/// A running `s3s-fs`, killed by its pid on drop.
pub struct S3Server {
    child: Child,
    dir: tempfile::TempDir,
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
}

impl S3Server {
    /// Starts the server on a port of its choosing (port 0) with a clean environment, and waits
    /// until it reports its address and accepts connections.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let data = dir.path().join("data");
        std::fs::create_dir(&data).expect("data dir");
        let log = std::fs::File::create(dir.path().join("s3s-fs.log")).expect("log file");
        let child = Command::new(s3s_fs_binary())
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--access-key",
                ACCESS_KEY_ID,
                "--secret-key",
                SECRET_ACCESS_KEY,
            ])
            .arg(&data)
            .env_clear()
            // The address line is logged at info; nothing else from the environment is needed.
            .env("RUST_LOG", "s3s_fs=info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("start s3s-fs");
        let mut server = S3Server { child, dir, endpoint: String::new() };
        let address = eventually("s3s-fs to report its address", || {
            if let Some(status) = server.child.try_wait().expect("s3s-fs status") {
                panic!("s3s-fs exited with {status}:\n{}", server.log());
            }
            let log = server.log();
            let line = log.lines().find(|line| line.contains("server is running at http://"))?;
            Some(line.rsplit("http://").next().expect("address").trim().to_owned())
        });
        eventually("s3s-fs to accept connections", || TcpStream::connect(&address).ok());
        server.endpoint = format!("http://{address}");
        server
    }

    /// The server's data directory: one directory per bucket, one file per object.
    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The server's output so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("s3s-fs.log")).unwrap_or_default()
    }

    /// Settings for `bucket` on this server with the right keys and short timeouts.
    pub fn config(&self, bucket: &str) -> S3Config {
        S3Config {
            bucket: bucket.to_owned(),
            endpoint: Some(self.endpoint.clone()),
            path_style: true,
            access_key_id: Some(ACCESS_KEY_ID.to_owned()),
            secret_access_key: Some(SECRET_ACCESS_KEY.to_owned()),
            connect_timeout_ms: 1_000,
            operation_timeout_ms: 10_000,
            attempts_max: 2,
            ..S3Config::default()
        }
    }

    /// Creates `bucket` through the S3 API (as an operator would with any S3 tool).
    pub async fn create_bucket(&self, bucket: &str) {
        let config = aws_sdk_s3::Config::builder()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .region(aws_sdk_s3::config::Region::new("us-east-1"))
            .endpoint_url(&self.endpoint)
            .force_path_style(true)
            .credentials_provider(aws_sdk_s3::config::Credentials::new(
                ACCESS_KEY_ID,
                SECRET_ACCESS_KEY,
                None,
                None,
                "test",
            ))
            .http_client(aws_smithy_http_client::Builder::new().build_http())
            .build();
        let client = aws_sdk_s3::Client::from_conf(config);
        client.create_bucket().bucket(bucket).send().await.expect("create bucket");
    }

    /// A store on a fresh bucket of this server, under `prefix`.
    pub async fn store(&self, bucket: &str, prefix: &str) -> S3 {
        self.create_bucket(bucket).await;
        S3::connect(&S3Config { prefix: prefix.to_owned(), ..self.config(bucket) }).await.expect("S3 store")
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("s3s-fs in {} at {} — its log:\n{}", self.dir.path().display(), self.endpoint, self.log());
        }
        // Child::kill sends SIGKILL to this child's pid only.
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::env::var_os("STEADY_KEEP_TEST_DIR").is_some() {
            let kept = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("temp dir"));
            eprintln!("kept {}", kept.keep().display());
        }
    }
}

/// A local store in a fresh temp dir (kept alive by the returned guard).
pub async fn local_store() -> (LocalDir, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = LocalDir::open(&dir.path().join("blobs")).await.expect("local store");
    (store, dir)
}

/// An address nothing listens on: a port bound and released again.
pub fn closed_endpoint() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = listener.local_addr().expect("address");
    drop(listener);
    format!("http://{address}")
}
