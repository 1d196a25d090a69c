//! Signing in and tokens: `login`, `logout`, `whoami`, `token create|list|revoke`.

use std::io::BufRead;

use steady_proto::wire::{NewToken, Role, TokenInfo};

use crate::api::Client;
use crate::config::{base_url, ConfigFile};
use crate::exit::{Failure, AUTH, USAGE};

/// Longest token line read from stdin.
const TOKEN_LINE_BYTES_MAX: u64 = 1024;

/// What to do with tokens.
#[derive(Debug, clap::Subcommand)]
pub enum TokenAction {
    /// Make a token; its secret is printed once. An admin names any owner (a new owner comes
    /// to be with its first token); an owner makes more tokens of its own.
    ///
    /// Example: steady token create --owner alice --label "alice's laptop"
    Create {
        /// Owner the token acts for (default: yours).
        #[arg(long)]
        owner: Option<String>,
        /// `owner` (default) or `admin`.
        #[arg(long, value_parser = ["owner", "admin"])]
        role: Option<String>,
        /// A note to tell tokens apart in `steady token list`.
        #[arg(long)]
        label: Option<String>,
        /// Lifetime (e.g. 30d, 12h); default: until revoked.
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<std::time::Duration>,
    },
    /// List your tokens (every token, for an admin); secrets are never shown again.
    List,
    /// Revoke a token by its id (from `steady token list`); it stops working at once.
    Revoke { id: String },
}

/// Checks the token and saves it for `api` in the config file.
pub async fn login(api: &str, token: Option<&str>, mut file: ConfigFile, json: bool) -> anyhow::Result<()> {
    let token = match token {
        Some(token) => token.trim().to_owned(),
        None => read_token()?,
    };
    let who = Client::new(api, Some(&token))?.whoami().await?;
    file.tokens.insert(base_url(api), token);
    file.api = Some(base_url(api));
    let path = file.save()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&who)?);
    } else {
        eprintln!(
            "signed in to {} as {} ({}); saved in {}",
            base_url(api),
            who.owner,
            role_name(who.role),
            path.display()
        );
    }
    Ok(())
}

fn read_token() -> anyhow::Result<String> {
    use std::io::{IsTerminal, Read};
    if std::io::stdin().is_terminal() {
        eprint!("paste your token (stdy_…): ");
    }
    let mut line = String::new();
    std::io::stdin().lock().take(TOKEN_LINE_BYTES_MAX).read_line(&mut line)?;
    let token = line.trim().to_owned();
    if token.is_empty() {
        let message = "no token given: pass --token, set STEADY_TOKEN or paste one on stdin";
        return Err(Failure::new(USAGE, "no_token", message).into());
    }
    Ok(token)
}

/// Forgets the token saved for `api`.
pub fn logout(api: &str, mut file: ConfigFile, json: bool) -> anyhow::Result<()> {
    let removed = file.tokens.remove(&base_url(api)).is_some();
    if removed {
        file.save()?;
    }
    if json {
        println!("{}", serde_json::json!({ "api": base_url(api), "signed_out": removed }));
    } else if removed {
        eprintln!("signed out of {} (the token still works until revoked: `steady token revoke ID`)", base_url(api));
    } else {
        eprintln!("no token was saved for {}", base_url(api));
    }
    Ok(())
}

/// Prints who the token belongs to.
pub async fn whoami(client: &Client, json: bool) -> anyhow::Result<()> {
    let who = client.whoami().await.map_err(|error| match error.downcast_ref::<Failure>() {
        Some(f) if f.code == AUTH => error.context(format!("not signed in to {}", client.base())),
        _ => error,
    })?;
    if json {
        println!("{}", serde_json::to_string_pretty(&who)?);
    } else {
        println!("{} ({}) on {}, token {}", who.owner, role_name(who.role), client.base(), who.token_id);
    }
    Ok(())
}

fn role_name(role: Role) -> &'static str {
    role.as_str()
}

/// Runs a token action.
pub async fn token(client: &Client, action: TokenAction, json: bool) -> anyhow::Result<()> {
    match action {
        TokenAction::Create { owner, role, label, ttl } => {
            let role = role.as_deref().and_then(Role::parse);
            let new = NewToken { owner, role, label, ttl_s: ttl.map(|t| t.as_secs().max(1)) };
            let created = client.create_token(&new).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&created)?);
            } else {
                eprintln!(
                    "made token {} for {} ({}); it is shown this once:",
                    created.info.id,
                    created.info.owner,
                    role_name(created.info.role)
                );
                println!("{}", created.token);
            }
        }
        TokenAction::List => {
            let tokens = client.tokens().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&tokens)?);
            } else {
                print_tokens(&tokens);
            }
        }
        TokenAction::Revoke { id } => {
            let revoked = client.revoke_token(&id).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&revoked)?);
            } else {
                eprintln!("revoked {} ({}); it no longer works", revoked.id, revoked.owner);
            }
        }
    }
    Ok(())
}

fn print_tokens(tokens: &[TokenInfo]) {
    let time = |ms: u64| {
        humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms)).to_string()
    };
    println!("{:<16}  {:<16}  {:<9}  {:<20}  {:<9}  LABEL", "ID", "OWNER", "ROLE", "CREATED", "STATE");
    for token in tokens {
        let state = match (token.revoked_at_ms, token.expires_at_ms) {
            (Some(_), _) => "revoked".to_owned(),
            (None, Some(at)) => format!("until {}", time(at)),
            (None, None) => "active".to_owned(),
        };
        println!(
            "{:<16}  {:<16}  {:<9}  {:<20}  {state:<9}  {}",
            token.id,
            token.owner,
            role_name(token.role),
            time(token.created_at_ms),
            token.label
        );
    }
}
