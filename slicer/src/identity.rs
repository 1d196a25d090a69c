//! Who may call the API: tokens (kept as the SHA-256 of their secret, never the secret), the
//! owner and role of each, and which owner holds each app name (a claim). The LB asks
//! [`Store::authorize`] before it forwards any API call, so this module is the one place that
//! decides who may do what.
//!
//! Invariants: every app the slicer records has a claim (apps recorded without one, by a host
//! directly or from before tokens existed, belong to `admin`); a name is claimed by the first
//! deploy and freed when the app is deleted, or an hour after a claim whose app never came up.

use std::collections::HashMap;
use std::path::Path;

use rusqlite::{params, OptionalExtension, Transaction};
use sha2::{Digest, Sha256};
use steady_proto::wire::{Access, Authorize, CreatedToken, Principal, Role, TokenInfo};

use crate::store::{Store, StoreError};

/// Every token's secret starts with this, so a leaked one is easy to find and revoke.
pub const TOKEN_PREFIX: &str = "stdy_";
const SECRET_BYTES: usize = 24;
/// The admin token's fixed public id.
pub const ADMIN_TOKEN_ID: &str = "tok_admin";
/// The owner of the admin token, and of apps recorded without a claim.
pub const ADMIN_OWNER: &str = "admin";
/// Owner names: like app names, at most this long.
pub const OWNER_BYTES_MAX: usize = 63;
pub const LABEL_BYTES_MAX: usize = 200;
/// Tokens an owner may hold at once (revoked ones do not count).
pub const TOKENS_PER_OWNER_MAX: i64 = 100;
/// Anonymous tokens alive at once over the whole cluster; past it anonymous runs are refused.
pub const TEMPORARY_TOKENS_MAX: i64 = 100_000;
/// Longest a temporary app, and so its anonymous token, lives.
pub const TEMPORARY_TTL_S_MAX: u64 = 7 * 24 * 3600;
/// A claim whose app never came up (its first deploy failed) is freed after this long.
const CLAIM_UNUSED_TTL_MS: u64 = 3_600_000;

pub(crate) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS tokens (
    id TEXT PRIMARY KEY,
    hash TEXT NOT NULL UNIQUE,
    owner TEXT NOT NULL,
    role TEXT NOT NULL,
    label TEXT NOT NULL DEFAULT '',
    created_at_ms INTEGER NOT NULL,
    expires_at_ms INTEGER,
    revoked_at_ms INTEGER
);
CREATE INDEX IF NOT EXISTS tokens_owner ON tokens (owner);
CREATE TABLE IF NOT EXISTS claims (name TEXT PRIMARY KEY, owner TEXT NOT NULL, claimed_at_ms INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS claims_owner ON claims (owner);
";

/// Why a call is refused; each maps to one HTTP status and a stable code.
#[derive(Debug, thiserror::Error)]
pub enum Denied {
    #[error(
        "this call needs a token: sign in with `steady login` (anonymous callers may only `steady run` temporary apps)"
    )]
    LoginRequired,
    #[error("the token is not valid (mistyped, revoked or expired); sign in again with `steady login`")]
    BadToken,
    #[error("only an admin token may do this")]
    AdminOnly,
    #[error("a temporary token may only run temporary apps; sign in with an owner's token to deploy")]
    TemporaryOnly,
    /// Also the answer for another owner's app: isolation never reveals that it exists.
    #[error("no app named {0:?} (among the apps this token may see)")]
    NotFound(String),
    #[error("no token {0:?} (among the tokens this token may see)")]
    UnknownToken(String),
    #[error("the name {0:?} belongs to another owner; pick another name (--name)")]
    NameTaken(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Full(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<rusqlite::Error> for Denied {
    fn from(error: rusqlite::Error) -> Self {
        Denied::Store(StoreError::Sqlite(error))
    }
}

/// The SHA-256 of a token's secret, as stored.
fn hash_of(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

fn random_hex(bytes: usize) -> String {
    let mut buffer = vec![0u8; bytes];
    getrandom::fill(&mut buffer).expect("the system's random source");
    hex::encode(buffer)
}

/// A new secret: the prefix and 24 random bytes in hex.
pub fn new_secret() -> String {
    format!("{TOKEN_PREFIX}{}", random_hex(SECRET_BYTES))
}

/// Whether `secret` looks like a token (checked before any lookup, and on files we read).
pub fn well_formed(secret: &str) -> bool {
    secret.strip_prefix(TOKEN_PREFIX).is_some_and(|hex| {
        hex.len() == SECRET_BYTES * 2 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// Checks an owner name: the rules of app names (lowercase letters, digits, '-').
pub fn validate_owner(owner: &str) -> Result<(), Denied> {
    let valid = !owner.is_empty()
        && owner.len() <= OWNER_BYTES_MAX
        && owner.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !owner.starts_with('-')
        && !owner.ends_with('-');
    if !valid {
        let message = format!("owner {owner:?} must be 1 to {OWNER_BYTES_MAX} lowercase letters, digits and inner '-'");
        return Err(Denied::BadRequest(message));
    }
    Ok(())
}

/// Reads the admin token from `path`, or makes one and writes it there (mode 0600) if the file
/// does not exist. A file that exists but holds no well-formed token is an error, never replaced.
pub fn admin_secret(path: &Path) -> anyhow::Result<String> {
    use anyhow::Context;
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let secret = text.trim().to_owned();
            anyhow::ensure!(
                well_formed(&secret),
                "{} does not hold a steady token ({TOKEN_PREFIX}…); fix or remove it",
                path.display()
            );
            Ok(secret)
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let secret = new_secret();
            write_private(path, &format!("{secret}\n")).with_context(|| format!("writing {}", path.display()))?;
            tracing::info!(path = %path.display(), "made the admin token");
            Ok(secret)
        }
        Err(error) => Err(error).with_context(|| format!("reading {}", path.display())),
    }
}

/// Writes `text` to `path` readable by its owner only: a temp file, fsync, rename.
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let temp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&temp)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&temp, path)
}

fn role_of(text: String) -> rusqlite::Result<Role> {
    Role::parse(&text).ok_or_else(|| rusqlite::Error::InvalidColumnType(0, text, rusqlite::types::Type::Text))
}

const TOKEN_COLUMNS: &str = "id, owner, role, label, created_at_ms, expires_at_ms, revoked_at_ms";

fn token_of(row: &rusqlite::Row) -> rusqlite::Result<TokenInfo> {
    Ok(TokenInfo {
        id: row.get(0)?,
        owner: row.get(1)?,
        role: role_of(row.get(2)?)?,
        label: row.get(3)?,
        created_at_ms: row.get::<_, i64>(4)? as u64,
        expires_at_ms: row.get::<_, Option<i64>>(5)?.map(|v| v as u64),
        revoked_at_ms: row.get::<_, Option<i64>>(6)?.map(|v| v as u64),
    })
}

impl Store {
    /// Makes `secret` the admin token (replacing an earlier admin secret).
    pub fn set_admin_token(&mut self, secret: &str, now_ms: u64) -> Result<(), StoreError> {
        assert!(well_formed(secret), "the admin secret is checked when read");
        self.connection().execute(
            "INSERT INTO tokens (id, hash, owner, role, label, created_at_ms) VALUES (?1, ?2, ?3, 'admin', 'admin', ?4)
             ON CONFLICT(id) DO UPDATE SET hash = excluded.hash, revoked_at_ms = NULL",
            params![ADMIN_TOKEN_ID, hash_of(secret), ADMIN_OWNER, now_ms as i64],
        )?;
        Ok(())
    }

    /// Decides whether the caller of `ask` may make the call, and who it is. A deploy claims a
    /// free name for the caller; an anonymous run gets a new temporary token.
    pub fn authorize(&mut self, ask: &Authorize, now_ms: u64) -> Result<Principal, Denied> {
        let tx = self.connection_mut().transaction()?;
        let principal = match &ask.token {
            Some(secret) => Some(principal_of(&tx, secret, now_ms)?),
            None => None,
        };
        let principal = match (principal, ask.access) {
            (None, Access::Run) => anonymous(&tx, ask.ttl_s, now_ms)?,
            (None, _) => return Err(Denied::LoginRequired),
            (Some(p), Access::Admin) if p.role != Role::Admin => return Err(Denied::AdminOnly),
            (Some(p), Access::Deploy) if p.role == Role::Temporary => return Err(Denied::TemporaryOnly),
            (Some(p), _) => p,
        };
        if let Some(app) = &ask.app {
            check_app(&tx, &principal, app, ask.access, now_ms)?;
        }
        tx.commit()?;
        Ok(principal)
    }

    /// Makes a token; the secret is in the answer and nowhere else.
    pub fn create_token(
        &mut self,
        owner: &str,
        role: Role,
        label: &str,
        expires_at_ms: Option<u64>,
        now_ms: u64,
    ) -> Result<CreatedToken, Denied> {
        validate_owner(owner)?;
        if label.len() > LABEL_BYTES_MAX || label.chars().any(char::is_control) {
            return Err(Denied::BadRequest(format!("a label is at most {LABEL_BYTES_MAX} bytes of plain text")));
        }
        let tx = self.connection_mut().transaction()?;
        let held: i64 =
            tx.query_row("SELECT COUNT(*) FROM tokens WHERE owner = ?1 AND revoked_at_ms IS NULL", [owner], |r| {
                r.get(0)
            })?;
        if held >= TOKENS_PER_OWNER_MAX {
            let message = format!("{owner} holds {held} tokens, the most allowed; revoke one first");
            return Err(Denied::Full(message));
        }
        let created = insert_token(&tx, owner, role, label, expires_at_ms, now_ms)?;
        tx.commit()?;
        Ok(created)
    }

    /// Tokens of `owner`, or of everyone for `None`, newest first (at most 1,000).
    pub fn tokens(&self, owner: Option<&str>) -> Result<Vec<TokenInfo>, StoreError> {
        let sql = format!(
            "SELECT {TOKEN_COLUMNS} FROM tokens WHERE ?1 IS NULL OR owner = ?1 ORDER BY created_at_ms DESC LIMIT 1000"
        );
        let mut statement = self.connection().prepare(&sql)?;
        let tokens = statement.query_map([owner], token_of)?.collect::<Result<_, _>>()?;
        Ok(tokens)
    }

    /// Revokes token `id`; `owner` limits it to that owner's tokens (`None`: an admin).
    pub fn revoke_token(&mut self, id: &str, owner: Option<&str>, now_ms: u64) -> Result<TokenInfo, Denied> {
        let sql = format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE id = ?1 AND (?2 IS NULL OR owner = ?2)");
        let found = self.connection().query_row(&sql, params![id, owner], token_of).optional()?;
        let Some(mut token) = found else { return Err(Denied::UnknownToken(id.to_owned())) };
        if token.revoked_at_ms.is_none() {
            self.connection()
                .execute("UPDATE tokens SET revoked_at_ms = ?2 WHERE id = ?1", params![id, now_ms as i64])?;
            token.revoked_at_ms = Some(now_ms);
        }
        Ok(token)
    }

    /// The owner of every claimed name.
    pub fn claims(&self) -> Result<HashMap<String, String>, StoreError> {
        let mut statement = self.connection().prepare("SELECT name, owner FROM claims")?;
        let claims = statement.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<Result<_, _>>()?;
        Ok(claims)
    }
}

/// A token's row as authorization reads it: id, owner, role, expiry, revocation.
type TokenRow = (String, String, String, Option<i64>, Option<i64>);

/// Who holds `secret`, if it is a live token.
fn principal_of(tx: &Transaction, secret: &str, now_ms: u64) -> Result<Principal, Denied> {
    if !well_formed(secret) {
        return Err(Denied::BadToken);
    }
    let found: Option<TokenRow> = tx
        .query_row(
            "SELECT id, owner, role, expires_at_ms, revoked_at_ms FROM tokens WHERE hash = ?1",
            [hash_of(secret)],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )
        .optional()?;
    let Some((token_id, owner, role, expires, revoked)) = found else { return Err(Denied::BadToken) };
    let expired = expires.is_some_and(|at| at as u64 <= now_ms);
    let role = Role::parse(&role).ok_or(Denied::BadToken)?;
    if revoked.is_some() || expired {
        return Err(Denied::BadToken);
    }
    Ok(Principal { owner, role, token_id, new_token: None })
}

/// A new anonymous owner with a temporary token that lives as long as the app it runs.
fn anonymous(tx: &Transaction, ttl_s: Option<u64>, now_ms: u64) -> Result<Principal, Denied> {
    let ttl_s = ttl_s.ok_or(Denied::LoginRequired)?.clamp(1, TEMPORARY_TTL_S_MAX);
    // Expired anonymous tokens are dropped here, so the table stays bounded.
    tx.execute("DELETE FROM tokens WHERE role = 'temporary' AND expires_at_ms <= ?1", [now_ms as i64])?;
    let alive: i64 = tx.query_row("SELECT COUNT(*) FROM tokens WHERE role = 'temporary'", [], |r| r.get(0))?;
    if alive >= TEMPORARY_TOKENS_MAX {
        return Err(Denied::Full("too many anonymous apps are running; sign in to deploy".into()));
    }
    let owner = format!("anon-{}", random_hex(6));
    let expires_at_ms = now_ms + ttl_s * 1000;
    let created = insert_token(tx, &owner, Role::Temporary, "anonymous run", Some(expires_at_ms), now_ms)?;
    Ok(Principal { owner, role: Role::Temporary, token_id: created.info.id, new_token: Some(created.token) })
}

fn insert_token(
    tx: &Transaction,
    owner: &str,
    role: Role,
    label: &str,
    expires_at_ms: Option<u64>,
    now_ms: u64,
) -> Result<CreatedToken, Denied> {
    let token = new_secret();
    let info = TokenInfo {
        id: format!("tok_{}", random_hex(6)),
        owner: owner.to_owned(),
        role,
        label: label.to_owned(),
        created_at_ms: now_ms,
        expires_at_ms,
        revoked_at_ms: None,
    };
    tx.execute(
        "INSERT INTO tokens (id, hash, owner, role, label, created_at_ms, expires_at_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            info.id,
            hash_of(&token),
            info.owner,
            role.as_str(),
            info.label,
            now_ms as i64,
            expires_at_ms.map(|v| v as i64)
        ],
    )?;
    Ok(CreatedToken { info, token })
}

/// May `principal` make an `access` call about `app`? A deploy or run of a free name claims it.
fn check_app(tx: &Transaction, principal: &Principal, app: &str, access: Access, now_ms: u64) -> Result<(), Denied> {
    let claim: Option<(String, i64)> = tx
        .query_row("SELECT owner, claimed_at_ms FROM claims WHERE name = ?1", [app], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let recorded = || -> rusqlite::Result<bool> {
        tx.query_row("SELECT COUNT(*) FROM apps WHERE name = ?1", [app], |r| r.get::<_, i64>(0)).map(|n| n > 0)
    };
    let claiming = matches!(access, Access::Deploy | Access::Run);
    let holder = match claim {
        Some((_, at)) if claiming && now_ms.saturating_sub(at as u64) > CLAIM_UNUSED_TTL_MS && !recorded()? => None,
        Some((owner, _)) => Some(owner),
        None => None,
    };
    match holder {
        Some(owner) if owner == principal.owner || principal.role == Role::Admin => Ok(()),
        Some(_) if claiming => Err(Denied::NameTaken(app.to_owned())),
        Some(_) => Err(Denied::NotFound(app.to_owned())),
        None if claiming => {
            tx.execute(
                "INSERT INTO claims (name, owner, claimed_at_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT(name) DO UPDATE SET owner = excluded.owner, claimed_at_ms = excluded.claimed_at_ms",
                params![app, principal.owner, now_ms as i64],
            )?;
            Ok(())
        }
        // An app recorded before claims existed belongs to the admin; that path is the
        // migration's, so here an unclaimed name is simply not found, except for an admin.
        None if principal.role == Role::Admin => Ok(()),
        None => Err(Denied::NotFound(app.to_owned())),
    }
}

/// Claims, for `admin`, every recorded app that has no claim (apps from before tokens).
pub(crate) fn claim_unclaimed(connection: &rusqlite::Connection, now_ms: u64) -> rusqlite::Result<usize> {
    connection.execute(
        "INSERT OR IGNORE INTO claims (name, owner, claimed_at_ms) SELECT name, ?1, ?2 FROM apps",
        params![ADMIN_OWNER, now_ms as i64],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("slicer.db")).unwrap();
        (dir, store)
    }

    fn ask(token: Option<&str>, access: Access, app: Option<&str>) -> Authorize {
        Authorize { token: token.map(str::to_owned), access, app: app.map(str::to_owned), ttl_s: Some(60) }
    }

    #[test]
    fn owners_are_isolated_and_names_are_claimed_once() {
        let (_dir, mut store) = store();
        let alice = store.create_token("alice", Role::Owner, "", None, 1).unwrap().token;
        let bob = store.create_token("bob", Role::Owner, "", None, 1).unwrap().token;
        store.authorize(&ask(Some(&alice), Access::Deploy, Some("shop")), 2).unwrap();
        store.authorize(&ask(Some(&alice), Access::Read, Some("shop")), 3).unwrap();
        assert!(matches!(
            store.authorize(&ask(Some(&bob), Access::Deploy, Some("shop")), 4),
            Err(Denied::NameTaken(_))
        ));
        assert!(matches!(store.authorize(&ask(Some(&bob), Access::Read, Some("shop")), 4), Err(Denied::NotFound(_))));
        assert!(matches!(store.authorize(&ask(Some(&bob), Access::Write, Some("shop")), 4), Err(Denied::NotFound(_))));
        assert!(matches!(store.authorize(&ask(Some(&bob), Access::Admin, None), 4), Err(Denied::AdminOnly)));
    }

    #[test]
    fn anonymous_callers_only_run_and_get_a_token_for_their_app() {
        let (_dir, mut store) = store();
        assert!(matches!(store.authorize(&ask(None, Access::Deploy, Some("a")), 1), Err(Denied::LoginRequired)));
        assert!(matches!(store.authorize(&ask(None, Access::Account, None), 1), Err(Denied::LoginRequired)));
        let ran = store.authorize(&ask(None, Access::Run, Some("tmp-1")), 1).unwrap();
        let token = ran.new_token.expect("a new temporary token");
        assert_eq!(ran.role, Role::Temporary);
        store.authorize(&ask(Some(&token), Access::Read, Some("tmp-1")), 2).unwrap();
        let deploy = store.authorize(&ask(Some(&token), Access::Deploy, Some("tmp-2")), 2);
        assert!(matches!(deploy, Err(Denied::TemporaryOnly)));
        // The token dies with its app's time to live (60 s).
        assert!(matches!(
            store.authorize(&ask(Some(&token), Access::Read, Some("tmp-1")), 61_000),
            Err(Denied::BadToken)
        ));
    }

    #[test]
    fn a_revoked_token_is_refused_at_once() {
        let (_dir, mut store) = store();
        let created = store.create_token("alice", Role::Owner, "laptop", None, 1).unwrap();
        store.authorize(&ask(Some(&created.token), Access::Account, None), 2).unwrap();
        let other = store.revoke_token(&created.info.id, Some("bob"), 3);
        assert!(matches!(other, Err(Denied::UnknownToken(_))), "bob cannot revoke alice's token");
        store.revoke_token(&created.info.id, Some("alice"), 3).unwrap();
        assert!(matches!(store.authorize(&ask(Some(&created.token), Access::Account, None), 4), Err(Denied::BadToken)));
        assert!(matches!(
            store.authorize(&ask(Some("stdy_nonsense"), Access::Account, None), 4),
            Err(Denied::BadToken)
        ));
    }

    #[test]
    fn an_admin_sees_every_app_and_an_unused_claim_expires() {
        let (_dir, mut store) = store();
        let admin = new_secret();
        store.set_admin_token(&admin, 1).unwrap();
        let alice = store.create_token("alice", Role::Owner, "", None, 1).unwrap().token;
        let bob = store.create_token("bob", Role::Owner, "", None, 1).unwrap().token;
        store.authorize(&ask(Some(&alice), Access::Deploy, Some("shop")), 2).unwrap();
        store.authorize(&ask(Some(&admin), Access::Write, Some("shop")), 3).unwrap();
        store.authorize(&ask(Some(&admin), Access::Admin, None), 3).unwrap();
        // alice's deploy never recorded an app; an hour later the name is free again.
        let later = 2 + CLAIM_UNUSED_TTL_MS + 1;
        store.authorize(&ask(Some(&bob), Access::Deploy, Some("shop")), later).unwrap();
    }

    #[test]
    fn secrets_are_well_formed_and_owners_checked() {
        assert!(well_formed(&new_secret()));
        assert!(!well_formed("stdy_"));
        assert!(validate_owner("alice-2").is_ok());
        assert!(validate_owner("Alice").is_err());
        assert!(validate_owner("").is_err());
    }
}
