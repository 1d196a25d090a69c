//! Configuration as an operator writes it, and every refusal of `validate`.

use steady_blob::{BlobConfig, ConfigError, S3Config};

fn s3(json: &str) -> S3Config {
    match serde_json::from_str::<BlobConfig>(json).expect("parses") {
        BlobConfig::S3(s3) => s3,
        other => panic!("not s3: {other:?}"),
    }
}

fn refusal(config: S3Config) -> ConfigError {
    BlobConfig::S3(config).validate().expect_err("refused")
}

#[test]
fn defaults_fill_what_is_left_out() {
    let config = s3(r#"{"kind": "s3", "bucket": "steady-bundles"}"#);
    assert_eq!(config, S3Config { bucket: "steady-bundles".into(), ..S3Config::default() });
    assert_eq!(config.region, "us-east-1");
    assert_eq!(config.prefix, "");
    assert!(!config.path_style && config.endpoint.is_none() && config.access_key_id.is_none());
    BlobConfig::S3(config).validate().expect("valid");

    let local: BlobConfig = serde_json::from_str(r#"{"kind": "local"}"#).unwrap();
    assert_eq!(local, BlobConfig::default());
    local.validate().expect("valid");
}

#[test]
fn a_full_s3_compatible_config_round_trips() {
    let json = r#"{"kind": "s3", "bucket": "b01", "prefix": "steady/prod/", "region": "eu-west-3",
        "endpoint": "http://127.0.0.1:9000", "path_style": true, "access_key_id": "id",
        "secret_access_key": "secret", "connect_timeout_ms": 500, "operation_timeout_ms": 9000,
        "attempts_max": 5}"#;
    let config = s3(json);
    BlobConfig::S3(config.clone()).validate().expect("valid");
    let again: BlobConfig =
        serde_json::from_str(&serde_json::to_string(&BlobConfig::S3(config.clone())).unwrap()).unwrap();
    assert_eq!(again, BlobConfig::S3(config.clone()));
    assert!(!format!("{config:?}").contains("secret\""), "the secret is redacted in Debug");
}

#[test]
fn typos_and_unknown_kinds_are_refused() {
    assert!(serde_json::from_str::<BlobConfig>(r#"{"kind": "s3", "bucket": "b01", "path-style": true}"#).is_err());
    assert!(serde_json::from_str::<BlobConfig>(r#"{"kind": "gcs", "bucket": "b01"}"#).is_err());
    assert!(serde_json::from_str::<BlobConfig>(r#"{"bucket": "b01"}"#).is_err());
}

#[test]
fn validate_names_what_is_wrong() {
    let valid = S3Config { bucket: "steady".into(), ..S3Config::default() };
    assert_eq!(refusal(S3Config { bucket: String::new(), ..valid.clone() }), ConfigError::BucketEmpty);
    for bucket in ["ab", "Steady", "steady_", "-steady", "a..b", "has space"] {
        let error = refusal(S3Config { bucket: bucket.into(), ..valid.clone() });
        assert!(matches!(error, ConfigError::BucketInvalid { .. }), "{bucket}: {error}");
    }
    for prefix in ["/steady", "a/../b", "a//b", "ü"] {
        let error = refusal(S3Config { prefix: prefix.into(), ..valid.clone() });
        assert!(matches!(error, ConfigError::PrefixInvalid { .. }), "{prefix}: {error}");
    }
    assert!(refusal(S3Config { prefix: "/x".into(), ..valid.clone() })
        .to_string()
        .contains("must not start with a slash"));
    for endpoint in ["127.0.0.1:9000", "ftp://host", "http://", "http://u:p@host", "http://host/path", "http://h/?q"] {
        let error = refusal(S3Config { endpoint: Some(endpoint.into()), ..valid.clone() });
        assert!(matches!(error, ConfigError::EndpointInvalid { .. }), "{endpoint}: {error}");
    }
    for region in ["", "US-EAST-1", "eu west"] {
        assert!(matches!(
            refusal(S3Config { region: region.into(), ..valid.clone() }),
            ConfigError::RegionInvalid { .. }
        ));
    }
    let half = S3Config { access_key_id: Some("id".into()), ..valid.clone() };
    assert_eq!(refusal(half), ConfigError::CredentialsIncomplete);
    let empty = S3Config { access_key_id: Some(String::new()), secret_access_key: Some("s".into()), ..valid.clone() };
    assert_eq!(refusal(empty), ConfigError::CredentialsIncomplete);
    let slow_connect = S3Config { connect_timeout_ms: 10_000, operation_timeout_ms: 1_000, ..valid.clone() };
    assert!(matches!(refusal(slow_connect), ConfigError::TimeoutsInvalid { .. }));
    assert!(matches!(
        refusal(S3Config { connect_timeout_ms: 0, ..valid.clone() }),
        ConfigError::TimeoutsInvalid { .. }
    ));
    for attempts_max in [0, 11] {
        assert!(matches!(refusal(S3Config { attempts_max, ..valid.clone() }), ConfigError::AttemptsInvalid { .. }));
    }
    let local = BlobConfig::Local(steady_blob::LocalConfig { path: "".into() });
    assert_eq!(local.validate(), Err(ConfigError::PathEmpty));
}
