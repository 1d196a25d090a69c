//! `steady`: the command line of the steady platform.
//!
//! `steady up` runs the whole platform on this machine; `steady deploy` bundles an app here
//! with Bun and uploads it; `steady apps` lists what runs. Exit codes are stable for scripts:
//! see [`exit`].

mod account;
mod api;
mod bundle;
mod cluster;
mod config;
mod db;
mod edit;
mod env;
mod exit;
mod names;
mod sources;
mod tools;
mod up;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// steady: deploy a TypeScript app and it answers at <name>.<domain> within a second.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None, after_help = EXAMPLES)]
struct Cli {
    /// Address of steady's API: the load balancer's private port (`host:port`), or a platform's
    /// apex URL (`https://steady.page`). Default: the config file's, else 127.0.0.1:8081.
    #[arg(long, global = true, env = "STEADY_API")]
    api: Option<String>,
    /// Token to call the API with. Default: the config file's token for the API (`steady login`).
    #[arg(long, global = true, env = "STEADY_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Print machine-readable JSON on stdout (errors as JSON on stderr).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

const EXAMPLES: &str = "Examples:
  steady up                           run the platform here (API on 127.0.0.1:8081)
  steady deploy examples/hello        bundle and deploy; prints the app's URL
  steady deploy . --name my-app       deploy the app in this folder as my-app
  steady apps --json                  list apps as JSON
  steady run scratch.ts --ttl 30m     a temporary app with a random name
  steady logs hello --follow          stream an app's log
  steady rollback hello               serve the previous version again
  steady edit hello                   edit the sources in $EDITOR and deploy the change
  steady env set hello API_KEY=abc    a secret the app reads from process.env
  steady db hello \"SELECT * FROM t\"  query the app's database (--write to change it)

  steady login                        sign in (paste a token); saved in ~/.config/steady/config.yaml
  steady completions bash > ~/.local/share/bash-completion/completions/steady

Exit codes: 0 ok, 1 refused or failed, 2 usage, 3 not signed in or not allowed, 4 not found,
5 conflict, 6 network.";

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the whole platform on this machine, in the foreground, until Ctrl-C (a second
    /// Ctrl-C while it stops kills what is still running).
    Up(up::UpArgs),
    /// Bundle an app with Bun on this machine and deploy it.
    #[command(after_help = "PATH is an entry file (index.ts) or a folder holding index.ts, index.tsx, index.js\n\
or a package.json naming its entry. Dependencies in package.json must be installed\n\
(node_modules) here: hosts never reach the network.")]
    Deploy {
        /// The app: an entry file or a folder.
        #[arg(default_value = ".")]
        path: PathBuf,
        /// App name (lowercase letters, digits, '-'); defaults to the folder's name.
        #[arg(long, short)]
        name: Option<String>,
    },
    /// List apps with their host and version.
    Apps,
    /// Run a file as a temporary app under a random name; it is deleted with its data after --ttl.
    Run {
        /// The app: an entry file or a folder.
        path: PathBuf,
        /// How long the app lives (e.g. 30m, 2h; at most 7 days).
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: std::time::Duration,
        /// Use this name instead of a random one (an existing temporary app is overwritten).
        #[arg(long, short)]
        name: Option<String>,
    },
    /// Show an app's state: host, version, running or asleep, last start, requests.
    Status { name: String },
    /// Show an app's log (stdout and stderr, with a line at every version start).
    Logs {
        name: String,
        /// Keep streaming new lines until interrupted.
        #[arg(long, short)]
        follow: bool,
        /// Number of earlier lines to show first.
        #[arg(long, short = 'n', default_value_t = 100)]
        tail: usize,
    },
    /// Show an app's last requests (time, method, path, status, duration, bytes).
    Requests {
        name: String,
        #[arg(long, short = 'n', default_value_t = 50)]
        tail: usize,
    },
    /// List an app's versions; the current one is marked.
    Versions { name: String },
    /// Serve an earlier version again (the one before the current by default). The database is
    /// left as it is.
    Rollback { name: String, version: Option<u64> },
    /// List the hosts: id, addresses, slices owned and apps held (a dead host is gone from it);
    /// or drain one before maintenance.
    ///
    /// A host joins by starting `steady-hostd --id <id> --slicer <addr>` on it: it registers,
    /// takes its share of the slices, and the slicer moves those apps to it live. A host that
    /// misses heartbeats for the slicer's `--host-timeout-ms` is declared dead; its apps are
    /// restored from their replicas on the others.
    ///
    /// Examples: steady hosts; steady hosts drain host-2; steady hosts undrain host-2
    Hosts {
        #[command(subcommand)]
        action: Option<HostsAction>,
    },
    /// Check a cluster file (YAML: slicer, hosts, LBs, domains, storage) and print every
    /// daemon's command line, machine by machine.
    ///
    /// Example: steady cluster plan deploy/cluster.example.yaml
    Cluster {
        #[command(subcommand)]
        action: ClusterAction,
    },
    /// Ship every committed write of an app's databases to its replica now.
    Backup { name: String },
    /// Replace an app's data with its replica, as of a time or the latest state. The app is
    /// stopped first and its current data is kept beside the restored one, never deleted.
    ///
    /// Example: steady restore ledger --at 2026-11-23T09:30:00Z
    Restore {
        name: String,
        /// RFC 3339 time to restore to (point in time); the latest replicated state if absent.
        #[arg(long)]
        at: Option<String>,
    },
    /// Open an app's URL in the browser ($BROWSER, else xdg-open); prints the URL too.
    Open {
        name: String,
        /// Only print the URL.
        #[arg(long)]
        print: bool,
    },
    /// Sign in: check a token with the API and save it in the config file for that API.
    ///
    /// The token comes from --token / STEADY_TOKEN, else from stdin (paste it). An operator
    /// finds the admin token in the slicer's data folder (`admin.token`; `steady up` signs in
    /// with it by itself) and makes tokens for users with `steady token create --owner NAME`.
    ///
    /// Example: steady login --api https://steady.page
    Login,
    /// Forget the token saved for the API.
    Logout,
    /// Show who the token belongs to.
    Whoami,
    /// Make, list and revoke tokens.
    Token {
        #[command(subcommand)]
        action: account::TokenAction,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    ///
    /// Example: steady completions zsh > "${fpath[1]}/_steady"
    Completions { shell: clap_complete::Shell },
    /// Write the source files a version was deployed with into DIR (default ./NAME).
    ///
    /// Every deploy carries the app's own files (not node_modules, hidden folders or .env
    /// files). Files already in DIR with other content are left alone unless --force.
    Pull {
        name: String,
        dir: Option<PathBuf>,
        /// The version to pull; the current one by default.
        #[arg(long)]
        version: Option<u64>,
        /// Overwrite files in DIR that differ.
        #[arg(long)]
        force: bool,
    },
    /// Edit the current version's sources in $VISUAL or $EDITOR (vi by default) and deploy the
    /// result as the next version. Nothing is deployed when nothing changed; when the build
    /// fails, the edited files are kept in a directory the error names.
    Edit { name: String },
    /// An app's environment variables: secrets it reads from process.env, stored encrypted.
    ///
    /// Examples: steady env set hello API_KEY=abc123; steady env set hello API_KEY < key.txt;
    /// steady env list hello; steady env unset hello API_KEY
    Env {
        #[command(subcommand)]
        action: EnvAction,
    },
    /// Run one SQL statement on an app's SQLite database, on its host. Read-only unless --write;
    /// at most 1,000 rows and 1 MiB are shown, and a statement is stopped after 5 s.
    ///
    /// Example: steady db hello "SELECT count(*) FROM visits"
    Db {
        name: String,
        sql: String,
        /// Allow the statement to change the database.
        #[arg(long)]
        write: bool,
        /// The database file in the app's data directory (when it has several).
        #[arg(long)]
        database: Option<String>,
    },
    /// Delete an app with its data and logs.
    Delete {
        name: String,
        /// Confirm: deletion cannot be undone.
        #[arg(long, short)]
        yes: bool,
    },
}

/// What to do with an app's environment variables.
#[derive(Debug, clap::Subcommand)]
enum EnvAction {
    /// Set KEY=VALUE (or KEY alone, the value read from stdin). A running app is restarted so
    /// the next request sees it.
    Set { name: String, assignment: String },
    /// Remove KEY.
    Unset { name: String, key: String },
    /// List the variables' names (values only with --reveal).
    List {
        name: String,
        /// Print KEY=VALUE lines, values included.
        #[arg(long)]
        reveal: bool,
    },
}

/// What to do with a cluster file.
#[derive(Debug, clap::Subcommand)]
enum ClusterAction {
    /// Check FILE and print the command line of every daemon it describes.
    Plan { file: PathBuf },
}

/// What to do with a host.
#[derive(Debug, clap::Subcommand)]
enum HostsAction {
    /// Move every app off a host, live, and give it no new ones (it keeps running). Waits
    /// until the host holds no app, showing progress.
    Drain {
        host: String,
        /// Return once the drain is recorded instead of waiting for the moves.
        #[arg(long)]
        no_wait: bool,
        /// Give up waiting after this many seconds (the moves go on).
        #[arg(long, default_value_t = 600)]
        timeout_s: u64,
    },
    /// Let a drained host take apps again (the slicer rebalances onto it).
    Undrain { host: String },
}

fn main() {
    let cli = Cli::parse();
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio runtime");
    let json = cli.json;
    let result = runtime.block_on(run(cli));
    if let Err(error) = result {
        exit::report(&error, json);
        std::process::exit(exit::code(&error));
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    if let Command::Completions { shell } = cli.command {
        let mut command = <Cli as clap::CommandFactory>::command();
        clap_complete::generate(shell, &mut command, "steady", &mut std::io::stdout());
        return Ok(());
    }
    let file = config::ConfigFile::load()?;
    let api = cli.api.clone().or_else(|| file.api.clone()).unwrap_or_else(|| api::DEFAULT_API.to_owned());
    let token = cli.token.clone().or_else(|| file.token_for(&api).map(str::to_owned));
    let client = api::Client::new(&api, token.as_deref())?;
    match cli.command {
        Command::Completions { .. } => unreachable!("answered above"),
        Command::Up(args) => up::run(args, &api).await,
        Command::Login => account::login(&api, cli.token.as_deref(), file, cli.json).await,
        Command::Logout => account::logout(&api, file, cli.json),
        Command::Whoami => account::whoami(&client, cli.json).await,
        Command::Token { action } => account::token(&client, action, cli.json).await,
        Command::Open { name, print } => open(&client, &name, print, cli.json).await,
        Command::Deploy { path, name } => deploy(&client, &path, name.as_deref(), cli.json).await,
        Command::Apps => apps(&client, cli.json).await,
        Command::Cluster { action: ClusterAction::Plan { file } } => {
            cluster::print_plan(&cluster::read(&file)?, cli.json)
        }
        Command::Hosts { action: None } => hosts(&client, cli.json).await,
        Command::Hosts { action: Some(HostsAction::Drain { host, no_wait, timeout_s }) } => {
            client.host_action(&host, "drain").await?;
            if no_wait {
                eprintln!("{host} is draining; its apps move to the other hosts");
                return Ok(());
            }
            wait_drained(&client, &host, std::time::Duration::from_secs(timeout_s)).await
        }
        Command::Hosts { action: Some(HostsAction::Undrain { host }) } => {
            client.host_action(&host, "undrain").await?;
            eprintln!("{host} takes apps again");
            Ok(())
        }
        Command::Run { path, ttl, name } => run_temporary(&client, &path, ttl, name, cli.json).await,
        Command::Status { name } => status(&client, &name, cli.json).await,
        Command::Logs { name, follow, tail } => {
            client.logs(&name, tail, follow, &mut std::io::stdout(), cli.json).await
        }
        Command::Requests { name, tail } => requests(&client, &name, tail, cli.json).await,
        Command::Versions { name } => versions(&client, &name, cli.json).await,
        Command::Rollback { name, version } => {
            let deployed = client.rollback(&name, version).await?;
            print_deployed(&deployed, cli.json, "rolled back to")?;
            if !cli.json {
                eprintln!("the database was left as it is");
            }
            Ok(())
        }
        Command::Backup { name } => {
            let answer = client.backup(&name).await?;
            if cli.json {
                println!("{answer}");
            } else if answer["running"] == true {
                eprintln!("{name}: {} databases synced to the replica", answer["synced"]);
            } else {
                eprintln!("{name} is asleep: its replica was completed when it stopped");
            }
            Ok(())
        }
        Command::Restore { name, at } => {
            eprintln!("restoring {name} (the app is stopped while its data is replaced)…");
            let answer = client.restore(&name, at.as_deref()).await?;
            if cli.json {
                println!("{answer}");
            } else {
                let databases: Vec<&str> =
                    answer["databases"].as_array().into_iter().flatten().filter_map(|d| d.as_str()).collect();
                let when = at.as_deref().unwrap_or("the latest replicated state");
                eprintln!("restored {name} ({}) as of {when}", databases.join(", "));
                if let Some(kept) = answer["kept"].as_str() {
                    eprintln!("its earlier data is kept on the host as {kept}");
                }
            }
            Ok(())
        }
        Command::Pull { name, dir, version, force } => edit::pull(&client, &name, dir, version, force, cli.json).await,
        Command::Edit { name } => edit::edit(&client, &name, cli.json).await,
        Command::Env { action: EnvAction::Set { name, assignment } } => {
            env::set(&client, &name, &assignment, cli.json).await
        }
        Command::Env { action: EnvAction::Unset { name, key } } => env::unset(&client, &name, &key, cli.json).await,
        Command::Env { action: EnvAction::List { name, reveal } } => env::list(&client, &name, reveal, cli.json).await,
        Command::Db { name, sql, write, database } => db::run(&client, &name, sql, write, database, cli.json).await,
        Command::Delete { name, yes } => {
            if !yes {
                anyhow::bail!(exit::Failure::new(
                    exit::USAGE,
                    "confirm",
                    format!("deleting {name} removes its data for good; pass --yes")
                ));
            }
            client.delete(&name).await?;
            if cli.json {
                println!("{}", serde_json::json!({ "deleted": name }));
            } else {
                eprintln!("deleted {name}");
            }
            Ok(())
        }
    }
}

/// Opens the app's URL in the browser, or prints it.
async fn open(client: &api::Client, name: &str, print: bool, json: bool) -> anyhow::Result<()> {
    let (_, url) = client.status_with_url(name).await?;
    anyhow::ensure!(!url.is_empty(), "the API did not say where {name} answers; is the load balancer up to date?");
    if json {
        println!("{}", serde_json::json!({ "name": name, "url": url }));
    } else {
        println!("{url}");
    }
    if print {
        return Ok(());
    }
    let browser = std::env::var("BROWSER").ok().filter(|b| !b.trim().is_empty());
    let opener = browser.unwrap_or_else(|| "xdg-open".to_owned());
    // $BROWSER may hold arguments ("firefox --new-tab"): run it through the shell, URL as $1.
    let status = std::process::Command::new("sh")
        .args(["-c", &format!("{opener} \"$1\""), "steady-open", &url])
        .stdin(std::process::Stdio::null())
        .status();
    match status {
        Ok(status) if status.success() => Ok(()),
        _ => {
            eprintln!("could not start a browser ({opener}); open the URL above yourself, or set $BROWSER");
            Ok(())
        }
    }
}

fn print_deployed(deployed: &api::Deployed, json: bool, verb: &str) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(deployed)?);
    } else {
        eprintln!("{verb} {} version {} on {}", deployed.result.name, deployed.result.version, deployed.result.host_id);
        println!("{}", deployed.url);
    }
    Ok(())
}

fn time(ms: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms)).to_string()
}

async fn run_temporary(
    client: &api::Client,
    path: &std::path::Path,
    ttl: std::time::Duration,
    name: Option<String>,
    json: bool,
) -> anyhow::Result<()> {
    let name = name.unwrap_or_else(names::random);
    let built = bundle::build(path, Some(&name))?;
    let deployed = client.deploy(&built.name, built.archive, Some(ttl.as_secs().max(1))).await?;
    if !json {
        eprintln!("temporary app {name} lives for {}", humantime::format_duration(ttl));
        if let Some(token) = &deployed.token {
            eprintln!("you are not signed in: this token sees and deletes the app until it expires:");
            eprintln!("  STEADY_TOKEN={token}");
        }
    }
    print_deployed(&deployed, json, "running")
}

async fn status(client: &api::Client, name: &str, json: bool) -> anyhow::Result<()> {
    let (status, url) = client.status_with_url(name).await?;
    if json {
        let mut value = serde_json::to_value(&status)?;
        value["url"] = url.into();
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    println!("name:       {}", status.name);
    println!("url:        {url}");
    println!("host:       {}", status.host_id);
    println!("version:    {}", status.version);
    println!("state:      {}{}", status.state, status.pid.map(|p| format!(" (pid {p})")).unwrap_or_default());
    if let Some(at) = status.last_start_ms {
        println!("last start: {} ({} ms to listen)", time(at), status.last_start_duration_ms.unwrap_or(0));
    }
    if let Some(bytes) = status.memory_bytes {
        println!("memory:     {:.1} MiB", bytes as f64 / (1024.0 * 1024.0));
    }
    println!("requests:   {}", status.requests_total);
    if status.crashes > 0 {
        println!("crashes:    {} in a row", status.crashes);
    }
    if let Some(at) = status.expires_at_ms {
        println!("expires:    {} (temporary)", time(at));
    }
    if let Some(replica) = &status.replica {
        println!("replica:    {replica}");
    }
    if let Some(error) = &status.data_error {
        println!("DATA:       not available — {error}");
    }
    Ok(())
}

async fn requests(client: &api::Client, name: &str, tail: usize, json: bool) -> anyhow::Result<()> {
    let requests = client.requests(name, tail).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&requests)?);
        return Ok(());
    }
    for r in requests {
        println!(
            "{}  {:<6} {:>3} {:>6} ms {:>9} B  {}",
            time(r.at_ms),
            r.method,
            r.status,
            r.duration_ms,
            r.bytes,
            r.path
        );
    }
    Ok(())
}

async fn versions(client: &api::Client, name: &str, json: bool) -> anyhow::Result<()> {
    let versions = client.versions(name).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&versions)?);
        return Ok(());
    }
    println!("  VERSION  STATUS    CREATED               BUNDLE");
    for v in versions {
        let mark = if v.current { "*" } else { " " };
        println!(
            "{mark} {:>7}  {:<8}  {}  {}",
            v.version,
            v.status,
            time(v.created_at_ms),
            &v.bundle[..12.min(v.bundle.len())]
        );
    }
    Ok(())
}

async fn deploy(client: &api::Client, path: &std::path::Path, name: Option<&str>, json: bool) -> anyhow::Result<()> {
    let built = bundle::build(path, name)?;
    if !json {
        eprintln!(
            "bundled {} ({} bytes, {} source files); deploying as {}…",
            built.entry.display(),
            built.archive.len(),
            built.source_files,
            built.name
        );
    }
    let deployed = client.deploy(&built.name, built.archive, None).await?;
    print_deployed(&deployed, json, "deployed")
}

async fn apps(client: &api::Client, json: bool) -> anyhow::Result<()> {
    let apps = client.apps().await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&apps)?);
        return Ok(());
    }
    if apps.is_empty() {
        println!("no apps yet: deploy one with `steady deploy PATH`");
        return Ok(());
    }
    let width = apps.iter().map(|a| a.entry.name.len()).max().unwrap_or(4).max(4);
    println!("{:<width$}  {:<12}  {:<10}  {:>7}  UPDATED", "NAME", "OWNER", "HOST", "VERSION");
    for app in apps {
        let (app, owner) = (app.entry, app.owner);
        let updated = time(app.updated_at_ms);
        println!("{:<width$}  {owner:<12}  {:<10}  {:>7}  {updated}", app.name, app.host_id, app.version);
    }
    Ok(())
}

async fn hosts(client: &api::Client, json: bool) -> anyhow::Result<()> {
    let answer = client.hosts().await?;
    if json {
        println!("{answer}");
        return Ok(());
    }
    println!("{:<16} {:<22} {:<22} {:>6} {:>6}  STATE", "HOST", "INGRESS", "API", "SLICES", "APPS");
    for host in answer["hosts"].as_array().into_iter().flatten() {
        let text = |key: &str| host[key].as_str().unwrap_or("-").to_owned();
        let state = if host["draining"].as_bool() == Some(true) { "draining" } else { "active" };
        println!(
            "{:<16} {:<22} {:<22} {:>6} {:>6}  {state}",
            text("id"),
            text("ingress_addr"),
            text("api_addr"),
            host["slices"],
            host["apps"]
        );
    }
    Ok(())
}

/// Waits until `host` holds no app, printing how many are left whenever it changes.
async fn wait_drained(client: &api::Client, host: &str, timeout: std::time::Duration) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + timeout;
    let mut last = None;
    loop {
        let answer = client.hosts().await?;
        let entry = answer["hosts"].as_array().into_iter().flatten().find(|h| h["id"].as_str() == Some(host));
        let Some(entry) = entry else {
            let message = format!("host {host:?} is not registered (it left or was declared dead)");
            return Err(exit::Failure::new(exit::NOT_FOUND, "unknown_host", message).into());
        };
        let left = entry["apps"].as_u64().unwrap_or(0);
        if left == 0 {
            eprintln!("{host} is drained: it holds no app");
            return Ok(());
        }
        if last != Some(left) {
            eprintln!("{host}: {left} apps still to move");
            last = Some(left);
        }
        if std::time::Instant::now() > deadline {
            anyhow::bail!(
                "{host} still holds {left} apps after {} s; the moves go on (see `steady hosts`)",
                timeout.as_secs()
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}
