//! The blob store's integration tests, in one binary so the suite links once: the same
//! behaviour checked on a local directory and on a real S3-compatible server (`s3s-fs`).

mod config;
mod store;
mod util;
