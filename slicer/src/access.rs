//! The API's access calls: the LB's `authorize` before every API call, and the caller's
//! tokens. The decisions themselves are in [`crate::identity`].

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{delete, post};
use axum::{Json, Router};
use steady_proto::wire::{Authorize, CreatedToken, NewToken, Principal, Role, TokenInfo, HEADER_OWNER, HEADER_ROLE};

use crate::api::{now_ms, Failure, Slicer};
use crate::identity::{Denied, TEMPORARY_TTL_S_MAX};

/// The routes of this module.
pub fn routes() -> Router<Arc<Slicer>> {
    Router::new()
        .route("/v1/auth/authorize", post(authorize))
        .route("/v1/tokens", post(create_token).get(list_tokens))
        .route("/v1/tokens/{id}", delete(revoke_token))
}

impl From<Denied> for Failure {
    fn from(denied: Denied) -> Self {
        let message = denied.to_string();
        match denied {
            Denied::LoginRequired => Failure(StatusCode::UNAUTHORIZED, "login_required", message),
            Denied::BadToken => Failure(StatusCode::UNAUTHORIZED, "bad_token", message),
            Denied::AdminOnly => Failure(StatusCode::FORBIDDEN, "admin_only", message),
            Denied::TemporaryOnly => Failure(StatusCode::FORBIDDEN, "temporary_only", message),
            Denied::NotFound(_) => Failure(StatusCode::NOT_FOUND, "not_found", message),
            Denied::UnknownToken(_) => Failure(StatusCode::NOT_FOUND, "unknown_token", message),
            Denied::NameTaken(_) => Failure(StatusCode::CONFLICT, "name_taken", message),
            Denied::BadRequest(_) => Failure(StatusCode::BAD_REQUEST, "bad_request", message),
            Denied::Full(_) => Failure(StatusCode::TOO_MANY_REQUESTS, "limit_reached", message),
            Denied::Store(error) => error.into(),
        }
    }
}

/// Who is calling, as the LB told us in its headers. A call without them came straight to the
/// slicer on the private network (a host, an operator's script): it acts as the admin.
pub struct Caller {
    pub owner: String,
    pub role: Role,
}

impl Caller {
    /// The caller named by `headers`.
    pub fn of(headers: &HeaderMap) -> Self {
        let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        match (text(HEADER_OWNER), text(HEADER_ROLE).and_then(Role::parse)) {
            (Some(owner), Some(role)) => Caller { owner: owner.to_owned(), role },
            _ => Caller { owner: crate::identity::ADMIN_OWNER.to_owned(), role: Role::Admin },
        }
    }

    /// Whether the caller may see what `owner` holds.
    pub fn sees_owner(&self, owner: &str) -> bool {
        self.role == Role::Admin || self.owner == owner
    }

    /// `None` for an admin (every owner), else the caller's own owner name.
    fn scope(&self) -> Option<&str> {
        (self.role != Role::Admin).then_some(self.owner.as_str())
    }
}

async fn authorize(State(slicer): State<Arc<Slicer>>, Json(ask): Json<Authorize>) -> Result<Json<Principal>, Failure> {
    if let Some(app) = &ask.app {
        steady_proto::name::validate(app).map_err(|e| Failure(StatusCode::BAD_REQUEST, "bad_name", e.to_string()))?;
    }
    let principal = slicer.write(|store| store.authorize(&ask, now_ms()))?;
    if principal.new_token.is_some() {
        tracing::info!(owner = %principal.owner, app = ?ask.app, "anonymous run: temporary token made");
    }
    Ok(Json(principal))
}

async fn list_tokens(
    State(slicer): State<Arc<Slicer>>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, Failure> {
    let caller = Caller::of(&headers);
    let tokens: Vec<TokenInfo> = slicer.read(|store| store.tokens(caller.scope()))?;
    Ok(Json(serde_json::json!({ "tokens": tokens })))
}

/// An admin makes tokens for anyone; an owner makes more of its own owner tokens.
async fn create_token(
    State(slicer): State<Arc<Slicer>>,
    headers: HeaderMap,
    Json(new): Json<NewToken>,
) -> Result<(StatusCode, Json<CreatedToken>), Failure> {
    let caller = Caller::of(&headers);
    let owner = new.owner.clone().unwrap_or_else(|| caller.owner.clone());
    let role = new.role.unwrap_or(Role::Owner);
    if caller.role != Role::Admin && (owner != caller.owner || role != Role::Owner) {
        return Err(Denied::AdminOnly.into());
    }
    if caller.role == Role::Temporary {
        return Err(Denied::TemporaryOnly.into());
    }
    if role == Role::Temporary {
        return Err(Denied::BadRequest("temporary tokens are only made by anonymous runs".into()).into());
    }
    let ttl_s = new.ttl_s.map(|t| t.clamp(1, 100 * TEMPORARY_TTL_S_MAX));
    let now = now_ms();
    let expires_at_ms = ttl_s.map(|t| now + t * 1000);
    let label = new.label.as_deref().unwrap_or_default();
    let created = slicer.write(|store| store.create_token(&owner, role, label, expires_at_ms, now))?;
    tracing::info!(owner = %owner, role = role.as_str(), id = %created.info.id, by = %caller.owner, "token made");
    Ok((StatusCode::CREATED, Json(created)))
}

async fn revoke_token(
    State(slicer): State<Arc<Slicer>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<TokenInfo>, Failure> {
    let caller = Caller::of(&headers);
    if id == crate::identity::ADMIN_TOKEN_ID {
        let message = "the admin token is replaced by changing the slicer's admin token file".into();
        return Err(Failure(StatusCode::BAD_REQUEST, "bad_request", message));
    }
    let revoked = slicer.write(|store| store.revoke_token(&id, caller.scope(), now_ms()))?;
    tracing::info!(id = %id, by = %caller.owner, "token revoked");
    Ok(Json(revoked))
}
