//! Types that cross the network between steady's binaries and its CLI.
//!
//! Only this module derives `Serialize`/`Deserialize` for what goes over the wire, so a field
//! renamed here is renamed for every party at once.

use serde::{Deserialize, Serialize};

use crate::slice::{slice_of, SLICE_COUNT};

/// Header the load balancer sets on every request it forwards to a host's ingress: the app
/// the request is for. The LB strips any copy a client sent.
pub const HEADER_APP: &str = "x-steady-app";
/// Header on a deploy answer: the routing-table version that includes the deployed app. The
/// LB holds the answer until its own table is at least this new, so the app's URL works the
/// moment the CLI prints it.
pub const HEADER_TABLE_VERSION: &str = "x-steady-table-version";
/// Header hostd sends to an app to run one of its cron schedules; never from clients.
pub const HEADER_CRON: &str = "x-steady-cron";
/// Header the LB adds to a deploy answer: the app's public URL.
pub const HEADER_URL: &str = "x-steady-url";
/// Prefix of every header that is internal to steady; stripped from client requests.
pub const INTERNAL_HEADER_PREFIX: &str = "x-steady-";
/// Header on the LB's `HEAD` probe to an app's old host during a move: "is the app live
/// here?" The host answers 200 (live: send the request here) or 404, and never wakes the app.
pub const HEADER_PROBE: &str = "x-steady-probe";
/// Header a host sets on a request it forwards to another host (the app left it, or its
/// table says the app is elsewhere): the forwarding host's id. A forwarded request is never
/// forwarded again, so two hosts with different views cannot bounce a request between them.
pub const HEADER_FORWARDED_BY: &str = "x-steady-forwarded-by";

/// Header the LB sets on an API call it forwards: the owner the caller's token belongs to.
/// The slicer and hosts trust it (they listen only on the private network; the LB strips any
/// copy a client sent).
pub const HEADER_OWNER: &str = "x-steady-owner";
/// Header the LB sets on an API call it forwards: the caller's [`Role`].
pub const HEADER_ROLE: &str = "x-steady-role";
/// Header on the answer to an anonymous `run`: the new temporary token that may see and
/// delete the temporary app (and nothing else) until it expires with it.
pub const HEADER_NEW_TOKEN: &str = "x-steady-token";

/// Marker in a slice map for a slice that has no owner (no hosts registered yet).
pub const UNASSIGNED: u16 = u16::MAX;

/// A host daemon as the slicer knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostEntry {
    /// Stable identity of the host, kept across restarts (e.g. `host-1`).
    pub id: String,
    /// Where app traffic goes (`ip:port`).
    pub ingress_addr: String,
    /// Where the host's control API listens (`ip:port`).
    pub api_addr: String,
    /// Set by `steady hosts drain`: the host keeps serving what it has while the slicer moves
    /// every app off it, and gets no slices.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub draining: bool,
}

/// An app the slicer has been told about by its owning host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppEntry {
    pub name: String,
    /// Host that runs the app.
    pub host_id: String,
    /// The version now serving; versions count up from 1.
    pub version: u64,
    /// Milliseconds since the Unix epoch of the last deploy.
    pub updated_at_ms: u64,
    /// Content address (hex SHA-256) of the serving version's bundle in the blob store, so a
    /// host that lacks the app can fetch it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle: Option<String>,
    /// When a temporary app ends, in milliseconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<u64>,
    /// The host the app is moving to, while a move is under way: `host_id` still holds it
    /// until the move completes. LBs probe the holder and send requests to this host once the
    /// app is no longer live on the holder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moving_to: Option<String>,
}

/// The routing table: which host owns each slice, and which apps exist. Versioned: every
/// change gets a higher `version`, and watchers ask for "newer than N".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoutingTable {
    pub version: u64,
    pub hosts: Vec<HostEntry>,
    /// `slices[s]` is an index into `hosts`, or [`UNASSIGNED`]. Always `SLICE_COUNT` long.
    pub slices: Vec<u16>,
    /// Sorted by name (byte order), each name once.
    pub apps: Vec<AppEntry>,
}

impl RoutingTable {
    /// A table with no hosts and no apps.
    pub fn empty() -> Self {
        Self { version: 0, hosts: Vec::new(), slices: vec![UNASSIGNED; SLICE_COUNT as usize], apps: Vec::new() }
    }

    /// The host that owns `app` by the ring, whether or not the app exists.
    pub fn owner_of(&self, app: &str) -> Option<&HostEntry> {
        let index = *self.slices.get(slice_of(app) as usize)?;
        self.hosts.get(usize::from(index))
    }

    /// The host with id `id`, if it is in the table (alive, as far as the slicer knows).
    pub fn host(&self, id: &str) -> Option<&HostEntry> {
        self.hosts.iter().find(|h| h.id == id)
    }

    /// The app's record, if the app exists.
    pub fn app(&self, name: &str) -> Option<&AppEntry> {
        self.apps.binary_search_by(|a| a.name.as_str().cmp(name)).ok().map(|i| &self.apps[i])
    }

    /// The host that should get `name`'s traffic and API calls now: the live host holding it,
    /// or — while nobody holds it (released, or its holder died) — the slice's owner, which
    /// adopts it. During a move this is still the old holder.
    pub fn holder_of(&self, name: &str) -> Option<&HostEntry> {
        let holder = self.app(name).and_then(|a| self.host(&a.host_id));
        holder.or_else(|| self.owner_of(name))
    }

    /// Checks the table's own invariants; a table that fails is rejected, not half-used.
    pub fn check(&self) -> Result<(), String> {
        if self.slices.len() != SLICE_COUNT as usize {
            return Err(format!("table has {} slices, expected {SLICE_COUNT}", self.slices.len()));
        }
        let bad = self.slices.iter().find(|&&i| i != UNASSIGNED && usize::from(i) >= self.hosts.len());
        if let Some(i) = bad {
            return Err(format!("slice points at host index {i}, table has {} hosts", self.hosts.len()));
        }
        match self.apps.windows(2).find(|pair| pair[0].name >= pair[1].name) {
            Some(pair) => Err(format!("apps are not sorted by name at {:?}", pair[1].name)),
            None => Ok(()),
        }
    }
}

/// Body of `POST /v1/hosts/register`, sent by a host daemon at start.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegisterHost {
    pub host: HostEntry,
}

/// The load of one app, as its host reports it in each heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppLoad {
    pub name: String,
    /// Requests per second since the previous heartbeat.
    pub requests_per_s: f64,
    /// Memory the app's process uses now; 0 while it sleeps.
    pub memory_bytes: u64,
}

/// Body of `POST /v1/hosts/{id}/heartbeat`: what the host runs and how busy each app is.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// At most [`HEARTBEAT_APPS_MAX`] apps (the busiest first); the rest count as idle.
    #[serde(default)]
    pub apps: Vec<AppLoad>,
}

/// Most apps one heartbeat reports on.
pub const HEARTBEAT_APPS_MAX: usize = 10_000;

/// Body of `PUT /v1/apps/{name}` from the owning host after a deploy has taken over.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AppDeployed {
    pub host_id: String,
    pub version: u64,
    /// Hex SHA-256 of the version's bundle (see [`AppEntry::bundle`]).
    #[serde(default)]
    pub bundle: Option<String>,
    /// When a temporary app ends.
    #[serde(default)]
    pub expires_at_ms: Option<u64>,
}

/// Answer of the slicer to [`AppDeployed`]: the table version that includes the app.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TableVersion {
    pub version: u64,
}

/// Answer to a successful deploy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployResult {
    pub name: String,
    pub version: u64,
    pub host_id: String,
    /// Content address of the bundle (`sha256:<hex>`).
    pub bundle: String,
}

/// One app as its host lists it (`GET /v1/apps` on a host).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostApp {
    pub name: String,
    pub version: u64,
    pub bundle: String,
    pub deployed_at_ms: u64,
    /// When a temporary app is collected; `None` for a permanent app.
    pub expires_at_ms: Option<u64>,
}

/// One version attempt (`GET /v1/apps/{name}/versions`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionInfo {
    pub version: u64,
    /// Bundle address (hex SHA-256).
    pub bundle: String,
    /// `starting`, `ready` (started and passed its check) or `failed`.
    pub status: String,
    pub created_at_ms: u64,
    /// Is this the version that serves traffic?
    pub current: bool,
}

/// Body of `POST /v1/apps/{name}/rollback`: the version to go back to, or the one before.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Rollback {
    pub version: Option<u64>,
}

/// One line of an app's request log (`GET /v1/apps/{name}/requests`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestRecord {
    pub at_ms: u64,
    pub method: String,
    pub path: String,
    pub status: u16,
    pub duration_ms: u64,
    /// Response body bytes sent.
    pub bytes: u64,
}

/// An app's state on its host (`GET /v1/apps/{name}/status`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppStatus {
    pub name: String,
    pub host_id: String,
    pub version: u64,
    /// `running`, `asleep`, `starting` or `crash-loop`.
    pub state: String,
    /// Process id of the app's sandbox while it runs.
    pub pid: Option<u32>,
    pub last_start_ms: Option<u64>,
    /// Spawn-to-listening time of the last start.
    pub last_start_duration_ms: Option<u64>,
    pub requests_total: u64,
    /// Memory the app's process uses now (where the host has cgroups).
    pub memory_bytes: Option<u64>,
    /// The kernel limits the app runs under, as the host describes them.
    pub limits: String,
    /// Unexpected exits in a row (reset by a deploy, a rollback or a long-lived process).
    pub crashes: u32,
    pub expires_at_ms: Option<u64>,
    /// Where the app's databases are replicated (the replica URL without its settings).
    #[serde(default)]
    pub replica: Option<String>,
    /// Why the app's data could not be made ready (a failed restore), until it can.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_error: Option<String>,
}

/// An app's environment variables (`GET /v1/apps/<name>/env`): the names always, the values
/// only when asked for (`?reveal=true`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvList {
    pub name: String,
    /// Variable names, sorted.
    pub keys: Vec<String>,
    /// Name → value, present only when revealed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values: Option<std::collections::BTreeMap<String, String>>,
}

/// The answer to setting or removing one variable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvChange {
    pub name: String,
    pub key: String,
    /// Whether the variable existed before (for an unset: whether anything was removed).
    pub existed: bool,
    /// How many variables the app has now.
    pub keys: usize,
    /// Whether a running process was restarted so the change applies to the next request.
    pub restarted: bool,
    /// Why the restarted process did not start again, if it did not (the change is stored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_error: Option<String>,
}

/// A query against an app's SQLite database (`POST /v1/apps/<name>/db`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DbQuery {
    /// One SQL statement.
    pub sql: String,
    /// Allow changes; without it the database is opened read-only.
    #[serde(default)]
    pub write: bool,
    /// The database file in the app's data directory; the app's default one when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
}

/// One value of a query result, as SQLite typed it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum DbValue {
    Null,
    Integer(i64),
    Real(f64),
    Text(String),
    /// A BLOB, as lowercase hex.
    Blob {
        blob_hex: String,
    },
}

/// The answer to a [`DbQuery`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DbAnswer {
    /// The database file queried.
    pub database: String,
    pub columns: Vec<String>,
    pub rows: Vec<Vec<DbValue>>,
    /// Whether rows were left out to stay within the row or size bound.
    pub truncated: bool,
    /// Rows the statement inserted, updated or deleted.
    pub changes: u64,
}

/// Every API error has this JSON shape, with a message meant for a person.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    /// A short stable code a script can match (`bad_name`, `bundle_too_large`, ...).
    pub code: String,
    pub message: String,
}

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything, on every app; admin calls (hosts, drains, moves, tokens of others). Accepted
    /// only on the private listener.
    Admin,
    /// Deploy and manage its owner's apps.
    Owner,
    /// Made for an anonymous `run`: sees and deletes its temporary apps, runs more of them
    /// (rate-limited), nothing else. Expires with its app.
    Temporary,
}

impl Role {
    /// The role's name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Owner => "owner",
            Role::Temporary => "temporary",
        }
    }

    /// Parses [`Role::as_str`].
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "admin" => Some(Role::Admin),
            "owner" => Some(Role::Owner),
            "temporary" => Some(Role::Temporary),
            _ => None,
        }
    }
}

/// What an API call wants to do, as the LB classifies it for the slicer's check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    /// Read one app (status, logs, versions, source).
    Read,
    /// Change one app (rollback, env, delete, database writes).
    Write,
    /// Deploy a version of an app; claims the name for the caller if nobody holds it.
    Deploy,
    /// Deploy a temporary app; the only call open to anonymous callers.
    Run,
    /// Calls about the caller's own account (its app list, its tokens, whoami).
    Account,
    /// Cluster administration (hosts, drains, moves, history).
    Admin,
}

/// The LB's question to the slicer before it forwards an API call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Authorize {
    /// The bearer token the caller sent, if any.
    pub token: Option<String>,
    pub access: Access,
    /// The app the call is about, for per-app calls.
    pub app: Option<String>,
    /// For [`Access::Run`]: how long the temporary app (and a new anonymous token) lives.
    #[serde(default)]
    pub ttl_s: Option<u64>,
}

/// Who is calling: the slicer's answer when the call is allowed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    pub owner: String,
    pub role: Role,
    /// The public id of the token (never the secret).
    pub token_id: String,
    /// For an anonymous `run`: the secret of the temporary token made for it, shown once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_token: Option<String>,
}

/// A token as listed (the secret is never stored, only its SHA-256).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenInfo {
    pub id: String,
    pub owner: String,
    pub role: Role,
    pub label: String,
    pub created_at_ms: u64,
    pub expires_at_ms: Option<u64>,
    pub revoked_at_ms: Option<u64>,
}

/// A request for a new token (`POST /v1/tokens`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewToken {
    /// The owner; defaults to the caller's own. Only an admin names another.
    #[serde(default)]
    pub owner: Option<String>,
    /// Defaults to `owner`. Only an admin makes admin tokens.
    #[serde(default)]
    pub role: Option<Role>,
    #[serde(default)]
    pub label: Option<String>,
    /// Lifetime in seconds; none means until revoked.
    #[serde(default)]
    pub ttl_s: Option<u64>,
}

/// A new token: its listing and its secret, shown this once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatedToken {
    #[serde(flatten)]
    pub info: TokenInfo,
    pub token: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_follows_the_slice_map() {
        let mut table = RoutingTable::empty();
        assert!(table.owner_of("hello").is_none());
        table.hosts.push(HostEntry {
            id: "h1".into(),
            ingress_addr: "127.0.0.2:1".into(),
            api_addr: "127.0.0.2:2".into(),
            draining: false,
        });
        table.slices = vec![0; SLICE_COUNT as usize];
        assert_eq!(table.owner_of("hello").map(|h| h.id.as_str()), Some("h1"));
        assert_eq!(table.check(), Ok(()));
        table.slices[3] = 7;
        assert!(table.check().is_err());
    }

    #[test]
    fn table_round_trips_as_json() {
        let table = RoutingTable::empty();
        let json = serde_json::to_string(&table).unwrap();
        assert_eq!(serde_json::from_str::<RoutingTable>(&json).unwrap(), table);
    }
}
