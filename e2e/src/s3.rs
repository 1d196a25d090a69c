//! A real S3-compatible server (`s3s-fs`) for the durability tests: started on a free loopback
//! port in a temp dir with a clean environment, stopped by its pid on drop.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::eventually;

/// The keys the server accepts.
pub const ACCESS_KEY_ID: &str = "steady-e2e";
pub const SECRET_ACCESS_KEY: &str = "steady-e2e-secret";

/// A running `s3s-fs`.
pub struct S3Server {
    child: Child,
    dir: PathBuf,
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
}

impl S3Server {
    /// Starts the server under `dir` and waits until it accepts connections.
    pub fn start(dir: &Path) -> Self {
        let data = dir.join("data");
        std::fs::create_dir_all(&data).expect("s3 data dir");
        let log = std::fs::File::create(dir.join("s3s-fs.log")).expect("s3 log");
        let binary = crate::workspace().join(".tools/bin/s3s-fs");
        assert!(binary.is_file(), "{} missing: run scripts/setup.sh", binary.display());
        let child = Command::new(binary)
            .args(["--host", "127.0.0.1", "--port", "0", "--access-key", ACCESS_KEY_ID, "--secret-key"])
            .arg(SECRET_ACCESS_KEY)
            .arg(&data)
            .env_clear()
            .env("RUST_LOG", "s3s_fs=info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("s3 log"))
            .stderr(log)
            .spawn()
            .expect("start s3s-fs");
        let mut server = S3Server { child, dir: dir.to_owned(), endpoint: String::new() };
        let address = eventually("s3s-fs to report its address", || {
            assert!(server.child.try_wait().ok().flatten().is_none(), "s3s-fs exited:\n{}", server.log());
            let log = server.log();
            let line = log.lines().find(|l| l.contains("server is running at http://"))?;
            Some(line.rsplit("http://").next()?.trim().to_owned())
        });
        eventually("s3s-fs to accept connections", || TcpStream::connect(&address).ok());
        server.endpoint = format!("http://{address}");
        server
    }

    /// Creates `bucket` (s3s-fs keeps a bucket as a directory of its data directory).
    pub fn create_bucket(&self, bucket: &str) {
        std::fs::create_dir_all(self.data().join(bucket)).expect("bucket dir");
    }

    /// The server's data directory: one directory per bucket, files per object.
    pub fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// The server's output so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("s3s-fs.log")).unwrap_or_default()
    }

    /// A hostd `--storage-config` file for `bucket` on this server, written under the server's
    /// directory; `secret` replaces the right secret key (to test wrong credentials).
    pub fn storage_config(&self, bucket: &str, secret: Option<&str>) -> PathBuf {
        let path = self.dir.join(format!("storage-{bucket}.yaml"));
        let text = format!(
            "kind: s3\nbucket: {bucket}\nprefix: cluster/\nendpoint: {}\npath_style: true\n\
             access_key_id: {ACCESS_KEY_ID}\nsecret_access_key: {}\nconnect_timeout_ms: 1000\n\
             operation_timeout_ms: 10000\nattempts_max: 2\n",
            self.endpoint,
            secret.unwrap_or(SECRET_ACCESS_KEY)
        );
        std::fs::write(&path, text).expect("storage config");
        path
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("s3s-fs at {} — its log:\n{}", self.endpoint, self.log());
        }
        // Child::kill signals this child's pid only.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
