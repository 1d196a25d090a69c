//! The store's behaviour, one body run against both implementations, and the failure kinds a
//! caller must be able to tell apart.

use std::time::{Duration, Instant};

use bytes::Bytes;
use steady_blob::{blob_key, digest, BlobError, BlobStore, S3Config, BLOB_SIZE_MAX_BYTES, S3};

use crate::util::{closed_endpoint, local_store, S3Server};

/// What every store must do: content-addressed round trip, idempotent puts, keyed objects,
/// listing by prefix, deletes, and refusing bad keys and digests.
async fn round_trip(store: &dyn BlobStore) {
    let bundle = Bytes::from_static(b"export default { fetch() { return new Response('hello') } }");
    let address = store.put(bundle.clone()).await.expect("put");
    assert_eq!(address, digest(&bundle));
    assert!(store.exists(&address).await.expect("exists"));
    assert_eq!(store.get(&address).await.expect("get"), bundle);

    // A second put of the same bytes is a no-op that returns the same address.
    assert_eq!(store.put(bundle.clone()).await.expect("put again"), address);
    assert_eq!(store.list("sha256/").await.expect("list blobs"), vec![blob_key(&address).unwrap()]);

    let absent = digest(b"never stored");
    assert!(!store.exists(&absent).await.expect("exists absent"));
    assert!(matches!(store.get(&absent).await, Err(BlobError::NotFound { .. })));

    // Empty blobs are blobs too.
    let empty = store.put(Bytes::new()).await.expect("put empty");
    assert_eq!(store.get(&empty).await.expect("get empty"), Bytes::new());

    // Keyed objects, as a replica layer would write them.
    for (key, text) in [("replicas/db/0001.ltx", "one"), ("replicas/db/0002.ltx", "two"), ("replicas/other/x", "x")] {
        store.put_key(key, Bytes::from(text)).await.expect("put_key");
    }
    store.put_key("replicas/db/0002.ltx", Bytes::from_static(b"two, again")).await.expect("overwrite");
    assert_eq!(store.get_key("replicas/db/0002.ltx").await.expect("get_key"), "two, again");
    assert_eq!(store.list("replicas/db/").await.unwrap(), ["replicas/db/0001.ltx", "replicas/db/0002.ltx"]);
    assert_eq!(store.list("replicas/d").await.unwrap(), ["replicas/db/0001.ltx", "replicas/db/0002.ltx"]);
    assert_eq!(store.list("replicas/").await.unwrap().len(), 3);
    assert_eq!(store.list("").await.unwrap().len(), 5, "2 blobs and 3 keyed objects");
    assert!(store.list("nothing/").await.unwrap().is_empty());

    store.delete_key("replicas/db/0001.ltx").await.expect("delete");
    store.delete_key("replicas/db/0001.ltx").await.expect("deleting a missing key is fine");
    assert!(!store.exists_key("replicas/db/0001.ltx").await.unwrap());
    assert!(matches!(store.get_key("replicas/db/0001.ltx").await, Err(BlobError::NotFound { .. })));
    assert_eq!(store.list("replicas/db/").await.unwrap(), ["replicas/db/0002.ltx"]);

    for key in ["../escape", "/absolute", "a/../b", "a//b", "a/", ".hidden", "a/.tmp", "space here", "ü", ""] {
        let refused = store.put_key(key, Bytes::new()).await;
        assert!(matches!(refused, Err(BlobError::InvalidKey { .. })), "{key:?} was not refused: {refused:?}");
    }
    assert!(matches!(store.list("/").await, Err(BlobError::InvalidKey { .. })));
    for bad in ["abc", &address.to_uppercase(), &format!("{address}0")] {
        assert!(matches!(store.get(bad).await, Err(BlobError::InvalidDigest { .. })), "{bad}");
    }
}

/// Over the size limit: refused on put before any I/O.
async fn oversize_put(store: &dyn BlobStore) {
    let big = Bytes::from(vec![0u8; BLOB_SIZE_MAX_BYTES as usize + 1]);
    let refused = store.put(big.clone()).await;
    assert!(matches!(refused, Err(BlobError::TooLarge { size_bytes, .. }) if size_bytes == BLOB_SIZE_MAX_BYTES + 1));
    assert!(matches!(store.put_key("big", big).await, Err(BlobError::TooLarge { .. })));
    assert!(!store.exists_key("big").await.unwrap());
}

/// Writes a sparse file of `size_bytes` (no time spent writing zeros).
fn sparse_file(path: &std::path::Path, size_bytes: u64) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::File::create(path).and_then(|file| file.set_len(size_bytes)).expect("sparse file");
}

#[tokio::test]
async fn local_round_trip() {
    let (store, _dir) = local_store().await;
    round_trip(&store).await;
    // No temporary files are left behind.
    let leftovers = walk_names(store.root()).into_iter().filter(|name| name.starts_with('.')).count();
    assert_eq!(leftovers, 0);
}

#[tokio::test]
async fn s3_round_trip() {
    let server = S3Server::start();
    round_trip(&server.store("steady", "").await).await;
}

#[tokio::test]
async fn s3_round_trip_under_a_prefix() {
    let server = S3Server::start();
    round_trip(&server.store("steady", "clusters/test/").await).await;
    // Everything went under the prefix, nothing elsewhere in the bucket.
    let bucket = server.data().join("steady");
    let top: Vec<_> = std::fs::read_dir(&bucket).unwrap().map(|entry| entry.unwrap().file_name()).collect();
    assert_eq!(top, ["clusters"]);
}

#[tokio::test]
async fn open_picks_the_implementation_from_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let config = steady_blob::BlobConfig::Local(steady_blob::LocalConfig { path: dir.path().join("b") });
    round_trip(steady_blob::open(&config).await.expect("open local").as_ref()).await;

    let server = S3Server::start();
    server.create_bucket("opened").await;
    let config = steady_blob::BlobConfig::S3(server.config("opened"));
    round_trip(steady_blob::open(&config).await.expect("open s3").as_ref()).await;
}

#[tokio::test]
async fn local_digest_mismatch_is_an_error_not_data() {
    let (store, _dir) = local_store().await;
    let address = store.put(Bytes::from_static(b"the real bundle")).await.unwrap();
    std::fs::write(store.path(&blob_key(&address).unwrap()).unwrap(), b"bit rot").unwrap();
    let result = store.get(&address).await;
    assert!(
        matches!(&result, Err(BlobError::DigestMismatch { digest, actual }) if *digest == address && *actual == steady_blob::digest(b"bit rot")),
        "{result:?}"
    );
}

#[tokio::test]
async fn s3_digest_mismatch_is_an_error_not_data() {
    let server = S3Server::start();
    let store = server.store("steady", "").await;
    let address = digest(b"the real bundle");
    store.put_key(&blob_key(&address).unwrap(), Bytes::from_static(b"something else")).await.unwrap();
    assert!(store.exists(&address).await.unwrap());
    let result = store.get(&address).await;
    assert!(matches!(&result, Err(BlobError::DigestMismatch { .. })), "{result:?}");
    // Put is a no-op for a present address, so the corrupt object stays until someone deletes it.
    assert_eq!(store.put(Bytes::from_static(b"the real bundle")).await.unwrap(), address);
    assert!(matches!(store.get(&address).await, Err(BlobError::DigestMismatch { .. })));
}

#[tokio::test]
async fn local_oversize_is_refused_on_put_and_get() {
    let (store, _dir) = local_store().await;
    oversize_put(&store).await;
    sparse_file(&store.path("replicas/huge").unwrap(), BLOB_SIZE_MAX_BYTES + 1);
    let result = store.get_key("replicas/huge").await;
    assert!(matches!(result, Err(BlobError::TooLarge { operation: "get", .. })), "{result:?}");
}

#[tokio::test]
async fn s3_oversize_is_refused_on_put_and_get() {
    let server = S3Server::start();
    let store = server.store("steady", "").await;
    oversize_put(&store).await;
    // s3s-fs keeps objects as plain files: make one over the limit without uploading 64 MiB.
    sparse_file(&server.data().join("steady/replicas/huge"), BLOB_SIZE_MAX_BYTES + 1);
    let started = Instant::now();
    let result = store.get_key("replicas/huge").await;
    assert!(matches!(result, Err(BlobError::TooLarge { operation: "get", .. })), "{result:?}");
    assert!(started.elapsed() < Duration::from_secs(5), "refused by its length, not read whole");
}

#[tokio::test]
async fn s3_wrong_credentials_are_access_denied() {
    let server = S3Server::start();
    server.create_bucket("steady").await;
    let wrong_secret = S3Config { secret_access_key: Some("not-the-secret".into()), ..server.config("steady") };
    let unknown_key = S3Config { access_key_id: Some("nobody".into()), ..server.config("steady") };
    for config in [wrong_secret, unknown_key] {
        let store = S3::connect(&config).await.unwrap();
        let put = store.put(Bytes::from_static(b"x")).await;
        assert!(matches!(put, Err(BlobError::AccessDenied { .. })), "{put:?}");
        let get = store.get_key("a").await;
        assert!(matches!(get, Err(BlobError::AccessDenied { .. })), "{get:?}");
        let list = store.list("").await;
        assert!(matches!(list, Err(BlobError::AccessDenied { .. })), "{list:?}");
    }
}

#[tokio::test]
async fn s3_missing_bucket_is_not_a_missing_object() {
    let server = S3Server::start();
    let store = S3::connect(&server.config("no-such-bucket")).await.unwrap();
    let list = store.list("").await;
    assert!(matches!(list, Err(BlobError::BucketMissing { .. })), "{list:?}");
    let delete = store.delete_key("a").await;
    assert!(matches!(delete, Err(BlobError::BucketMissing { .. })), "{delete:?}");
    // s3s-fs answers GetObject in a missing bucket with NoSuchKey, and PutObject creates the
    // bucket's directory instead of failing, so those two are not checked here. HeadObject has
    // no body on any server, so `exists` reports a missing bucket as a missing object.
}

#[tokio::test]
async fn s3_closed_port_is_unreachable_within_the_timeout() {
    let config = S3Config {
        bucket: "steady".into(),
        endpoint: Some(closed_endpoint()),
        path_style: true,
        access_key_id: Some("k".into()),
        secret_access_key: Some("s".into()),
        connect_timeout_ms: 500,
        operation_timeout_ms: 5_000,
        attempts_max: 2,
        ..S3Config::default()
    };
    let store = S3::connect(&config).await.unwrap();
    let started = Instant::now();
    let result = store.get_key("a").await;
    assert!(matches!(&result, Err(BlobError::Unreachable { .. })), "{result:?}");
    assert!(started.elapsed() < Duration::from_millis(config.operation_timeout_ms), "took {:?}", started.elapsed());
    let message = result.unwrap_err().to_string();
    assert!(message.contains("cannot reach http://127.0.0.1:"), "{message}");
}

#[tokio::test]
async fn s3_stalled_server_is_a_timeout() {
    // A listener that accepts connections (the kernel does, from its backlog) and never answers.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let config = S3Config {
        bucket: "steady".into(),
        endpoint: Some(format!("http://{}", listener.local_addr().unwrap())),
        path_style: true,
        access_key_id: Some("k".into()),
        secret_access_key: Some("s".into()),
        connect_timeout_ms: 500,
        operation_timeout_ms: 1_000,
        attempts_max: 1,
        ..S3Config::default()
    };
    let store = S3::connect(&config).await.unwrap();
    let started = Instant::now();
    let result = store.get_key("a").await;
    assert!(matches!(&result, Err(BlobError::Timeout { .. })), "{result:?}");
    assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
}

/// Every file and directory name under `root`.
fn walk_names(root: &std::path::Path) -> Vec<String> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(root).unwrap() {
        let entry = entry.unwrap();
        names.push(entry.file_name().to_string_lossy().into_owned());
        if entry.file_type().unwrap().is_dir() {
            names.extend(walk_names(&entry.path()));
        }
    }
    names
}
