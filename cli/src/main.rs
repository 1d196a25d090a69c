//! `steady`: the command line of the steady platform.
//!
//! `steady up` runs the whole platform on this machine; `steady deploy` bundles an app here
//! with Bun and uploads it; `steady apps` lists what runs. Exit codes are stable for scripts:
//! see [`exit`].

mod api;
mod bundle;
mod exit;
mod tools;
mod up;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// steady: deploy a TypeScript app and it answers at <name>.<domain> within a second.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None, after_help = EXAMPLES)]
struct Cli {
    /// Address of steady's API (the load balancer's private port).
    #[arg(long, global = true, env = "STEADY_API", default_value = api::DEFAULT_API)]
    api: String,
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

Exit codes: 0 ok, 1 refused or failed, 2 usage, 4 not found, 5 conflict, 6 network.";

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the whole platform on this machine, in the foreground, until Ctrl-C.
    Up(up::UpArgs),
    /// Bundle an app with Bun on this machine and deploy it.
    #[command(
        after_help = "PATH is an entry file (index.ts) or a folder holding index.ts, index.tsx, index.js\n\
or a package.json naming its entry. Dependencies in package.json must be installed\n\
(node_modules) here: hosts never reach the network."
    )]
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
}

fn main() {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let json = cli.json;
    let result = runtime.block_on(run(cli));
    if let Err(error) = result {
        exit::report(&error, json);
        std::process::exit(exit::code(&error));
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let client = api::Client::new(&cli.api)?;
    match cli.command {
        Command::Up(args) => up::run(args, &cli.api).await,
        Command::Deploy { path, name } => deploy(&client, &path, name.as_deref(), cli.json).await,
        Command::Apps => apps(&client, cli.json).await,
    }
}

async fn deploy(
    client: &api::Client,
    path: &std::path::Path,
    name: Option<&str>,
    json: bool,
) -> anyhow::Result<()> {
    let built = bundle::build(path, name)?;
    if !json {
        eprintln!(
            "bundled {} ({} bytes); deploying as {}…",
            built.entry.display(),
            built.archive.len(),
            built.name
        );
    }
    let deployed = client.deploy(&built.name, built.archive).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&deployed)?);
    } else {
        eprintln!(
            "deployed {} version {} on {}",
            deployed.result.name, deployed.result.version, deployed.result.host_id
        );
        println!("{}", deployed.url);
    }
    Ok(())
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
    let width = apps.iter().map(|a| a.name.len()).max().unwrap_or(4).max(4);
    println!(
        "{:<width$}  {:<10}  {:>7}  UPDATED",
        "NAME", "HOST", "VERSION"
    );
    for app in apps {
        let updated = humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_millis(app.updated_at_ms),
        );
        println!(
            "{:<width$}  {:<10}  {:>7}  {updated}",
            app.name, app.host_id, app.version
        );
    }
    Ok(())
}
