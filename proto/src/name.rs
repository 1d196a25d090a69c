//! App names: one DNS label, because every app answers at `<name>.<domain>`.

use std::fmt;

/// Longest app name in bytes: the limit of one DNS label.
pub const APP_NAME_LENGTH_MAX: usize = 63;

/// Names the platform keeps for itself, so no app can pose as part of steady.
pub const RESERVED_NAMES: &[&str] = &["www", "api", "admin", "steady", "dashboard", "static", "mail"];

/// Why a string is not a valid app name. The message is shown to users as it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("app name is empty")]
    Empty,
    #[error("app name is {0} characters long; at most {APP_NAME_LENGTH_MAX} are allowed")]
    TooLong(usize),
    #[error("app name may contain only lowercase letters a-z, digits and '-' (found {0:?})")]
    BadCharacter(char),
    #[error("app name must start with a letter")]
    BadStart,
    #[error("app name must not end with '-'")]
    BadEnd,
    #[error("app name {0:?} is reserved")]
    Reserved(String),
}

/// A validated app name. Holding one proves the rules in [`validate`] held.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AppName(String);

impl AppName {
    /// Validates `raw` and wraps it.
    pub fn new(raw: &str) -> Result<Self, NameError> {
        validate(raw)?;
        Ok(Self(raw.to_owned()))
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AppName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checks the app-name rules: 1–63 of `[a-z0-9-]`, starting with a letter, not ending in `-`,
/// and not one of [`RESERVED_NAMES`].
pub fn validate(raw: &str) -> Result<(), NameError> {
    if raw.is_empty() {
        return Err(NameError::Empty);
    }
    if raw.len() > APP_NAME_LENGTH_MAX {
        return Err(NameError::TooLong(raw.chars().count()));
    }
    if let Some(bad) = raw.chars().find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-')) {
        return Err(NameError::BadCharacter(bad));
    }
    if !raw.as_bytes()[0].is_ascii_lowercase() {
        return Err(NameError::BadStart);
    }
    if raw.ends_with('-') {
        return Err(NameError::BadEnd);
    }
    if RESERVED_NAMES.contains(&raw) {
        return Err(NameError::Reserved(raw.to_owned()));
    }
    Ok(())
}

/// Extracts the app name from a `Host` header value for `domain`: `hello.localhost:8080` with
/// domain `localhost` gives `hello`. Returns `None` for the apex, for other domains and for
/// names with more than one label. Does not allocate.
pub fn app_from_host<'h>(host: &'h str, domain: &str) -> Option<&'h str> {
    let host = strip_port(host);
    let label = host.strip_suffix(domain)?.strip_suffix('.')?;
    let label_is_single = !label.is_empty() && !label.contains('.');
    label_is_single.then_some(label)
}

/// A host name with an optional port: letters, digits, `-`, `.`, at most 253 bytes, and a
/// numeric port (no user info, no spaces, nothing a header could smuggle).
pub fn valid_host(host: &[u8]) -> bool {
    let (name, port) = match host.iter().rposition(|b| *b == b':') {
        Some(colon) => (&host[..colon], Some(&host[colon + 1..])),
        None => (host, None),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 253
        && name.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'.');
    let port_ok = port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.iter().all(u8::is_ascii_digit));
    name_ok && port_ok
}

/// Is `host` the apex `domain` itself (with or without a port)?
pub fn is_apex(host: &str, domain: &str) -> bool {
    strip_port(host).eq_ignore_ascii_case(domain)
}

fn strip_port(host: &str) -> &str {
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_values_are_names_with_an_optional_port() {
        for good in ["a.steady.page", "a.localhost:8080", "localhost", "x-1.example"] {
            assert!(super::valid_host(good.as_bytes()), "{good}");
        }
        for bad in ["", "a b", "a.page:", "user@a.page", "a.page:99999999", "a/b", "a.page\0", "[::1]", ":80"] {
            assert!(!super::valid_host(bad.as_bytes()), "{bad:?}");
        }
    }

    #[test]
    fn accepts_ordinary_names() {
        for ok in ["a", "hello", "my-app-2", &"a".repeat(63)] {
            assert_eq!(validate(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn rejects_bad_names_with_a_reason() {
        assert_eq!(validate(""), Err(NameError::Empty));
        assert_eq!(validate(&"a".repeat(64)), Err(NameError::TooLong(64)));
        assert_eq!(validate("Hello"), Err(NameError::BadCharacter('H')));
        assert_eq!(validate("a.b"), Err(NameError::BadCharacter('.')));
        assert_eq!(validate("../x"), Err(NameError::BadCharacter('.')));
        assert_eq!(validate("1abc"), Err(NameError::BadStart));
        assert_eq!(validate("-abc"), Err(NameError::BadStart));
        assert_eq!(validate("abc-"), Err(NameError::BadEnd));
        assert_eq!(validate("www"), Err(NameError::Reserved("www".into())));
    }

    #[test]
    fn host_header_gives_the_app() {
        assert_eq!(app_from_host("hello.localhost:8080", "localhost"), Some("hello"));
        assert_eq!(app_from_host("hello.steady.page", "steady.page"), Some("hello"));
        assert_eq!(app_from_host("localhost:8080", "localhost"), None);
        assert_eq!(app_from_host("a.b.localhost", "localhost"), None);
        assert_eq!(app_from_host("hello.other.page", "steady.page"), None);
        assert_eq!(app_from_host("hellolocalhost", "localhost"), None);
        assert!(is_apex("localhost:8080", "localhost"));
        assert!(!is_apex("a.localhost:8080", "localhost"));
    }
}
