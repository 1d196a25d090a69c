//! Test support: a real S3-compatible server (`s3s-fs`, started and stopped by the end-to-end
//! harness's [`steady_e2e::s3::S3Server`]) in its own temp dir, and the blob stores the tests
//! run against.

use std::net::TcpListener;
use std::path::PathBuf;

use steady_blob::{LocalDir, S3Config, S3};
use steady_e2e::s3::{ACCESS_KEY_ID, SECRET_ACCESS_KEY};

/// A running `s3s-fs` in a temp dir of its own (the server stops before the dir goes).
pub struct S3Server {
    server: steady_e2e::s3::S3Server,
    _dir: tempfile::TempDir,
}

impl S3Server {
    /// Starts the server and waits until it accepts connections.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        S3Server { server: steady_e2e::s3::S3Server::start(dir.path()), _dir: dir }
    }

    /// The server's data directory: one directory per bucket, one file per object.
    pub fn data(&self) -> PathBuf {
        self.server.data()
    }

    /// Settings for `bucket` on this server with the right keys and short timeouts.
    pub fn config(&self, bucket: &str) -> S3Config {
        S3Config {
            bucket: bucket.to_owned(),
            endpoint: Some(self.server.endpoint.clone()),
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
            .endpoint_url(&self.server.endpoint)
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
