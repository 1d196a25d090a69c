//! App environment variables set with `steady env`: which names and values are allowed, decided
//! once so the CLI can refuse a bad name before it reaches a host, and the host refuses it too.

/// Longest variable name in bytes.
pub const ENV_NAME_BYTES_MAX: usize = 128;
/// Longest value in bytes.
pub const ENV_VALUE_BYTES_MAX: usize = 32 * 1024;
/// Most variables one app may have.
pub const ENV_KEYS_MAX: usize = 100;
/// Most bytes of names and values together, per app: the environment travels to the sandbox
/// on one stdin line, which the runner bounds.
pub const ENV_TOTAL_BYTES_MAX: usize = 1024 * 1024;
/// Prefix of the variables the platform sets itself (`STEADY_APP`, `STEADY_VERSION`,
/// `STEADY_DATA_DIR`, `STEADY_ENTRY`, `STEADY_SOCKET`); no app variable may use it.
pub const RESERVED_PREFIX: &str = "STEADY_";

/// Why a variable name or value is refused. The message is shown to users as it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvError {
    #[error("variable name is empty")]
    EmptyName,
    #[error("variable name is {0} bytes long; at most {ENV_NAME_BYTES_MAX} are allowed")]
    NameTooLong(usize),
    #[error("variable name {0:?} must match [A-Z_][A-Z0-9_]* (uppercase letters, digits, '_')")]
    BadName(String),
    #[error("variable name {0:?} is reserved: names starting with {RESERVED_PREFIX} are set by steady")]
    Reserved(String),
    #[error("value is {0} bytes long; at most {ENV_VALUE_BYTES_MAX} are allowed")]
    ValueTooLong(usize),
}

/// Checks a variable name: `[A-Z_][A-Z0-9_]*`, at most [`ENV_NAME_BYTES_MAX`] bytes, not
/// starting with [`RESERVED_PREFIX`].
pub fn validate_name(name: &str) -> Result<(), EnvError> {
    let first = name.bytes().next().ok_or(EnvError::EmptyName)?;
    if name.len() > ENV_NAME_BYTES_MAX {
        return Err(EnvError::NameTooLong(name.len()));
    }
    let allowed = |b: u8| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_';
    if first.is_ascii_digit() || !name.bytes().all(allowed) {
        return Err(EnvError::BadName(name.to_owned()));
    }
    if name.starts_with(RESERVED_PREFIX) {
        return Err(EnvError::Reserved(name.to_owned()));
    }
    Ok(())
}

/// Checks a value's size (any UTF-8 text up to [`ENV_VALUE_BYTES_MAX`] bytes).
pub fn validate_value(value: &str) -> Result<(), EnvError> {
    if value.len() > ENV_VALUE_BYTES_MAX {
        return Err(EnvError::ValueTooLong(value.len()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for good in ["A", "_", "API_KEY", "K2", "_X_1"] {
            assert_eq!(validate_name(good), Ok(()), "{good}");
        }
        assert_eq!(validate_name(""), Err(EnvError::EmptyName));
        for bad in ["a", "1A", "A-B", "A B", "ÄB", "A=B"] {
            assert!(matches!(validate_name(bad), Err(EnvError::BadName(_))), "{bad}");
        }
        assert!(matches!(validate_name("STEADY_APP"), Err(EnvError::Reserved(_))));
        assert!(validate_name("STEADY").is_ok(), "only the prefix with its underscore is reserved");
        assert_eq!(validate_name(&"A".repeat(ENV_NAME_BYTES_MAX)), Ok(()));
        assert!(matches!(validate_name(&"A".repeat(ENV_NAME_BYTES_MAX + 1)), Err(EnvError::NameTooLong(_))));
        assert!(validate_value(&"x".repeat(ENV_VALUE_BYTES_MAX)).is_ok());
        assert!(validate_value(&"x".repeat(ENV_VALUE_BYTES_MAX + 1)).is_err());
    }
}
