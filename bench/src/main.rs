//! `steady-bench`: runs one named scenario of the rig and writes its report.

use clap::{Parser, Subcommand};
use steady_bench::scenario::{chaos, cold_storm, deploy_storm, migration, proxies, soak, throughput};

/// steady's load, chaos and soak rig. Each scenario starts its own local cluster (build the
/// workspace with `cargo build --release --workspace --bins` first), prints its figures and
/// writes report.md with SVG plots under target/bench-reports/ (or --out).
#[derive(Parser)]
#[command(
    version,
    after_help = "Examples:\n  steady-bench chaos\n  steady-bench soak --duration-s 3600\n  steady-bench throughput --connections 64"
)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Many apps, keep-alive clients, as fast as they answer.
    Throughput(throughput::Options),
    /// Many sleeping apps woken at once.
    ColdStorm(cold_storm::Options),
    /// Many deploys at once through the API.
    DeployStorm(deploy_storm::Options),
    /// A host joins and another drains while the counter load runs.
    Migration(migration::Options),
    /// App processes, the slicer, an LB and a host killed while the counter load runs.
    Chaos(chaos::Options),
    /// The counter load for a long time; daemon memory and latency over time.
    Soak(soak::Options),
    /// The example app direct, behind nginx, HAProxy, steady-lb alone and the full steady path.
    Proxies(proxies::Options),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let report = match cli.scenario {
        Scenario::Throughput(options) => throughput::run(&options)?,
        Scenario::ColdStorm(options) => cold_storm::run(&options)?,
        Scenario::DeployStorm(options) => deploy_storm::run(&options)?,
        Scenario::Migration(options) => migration::run(&options)?,
        Scenario::Chaos(options) => chaos::run(&options)?,
        Scenario::Soak(options) => soak::run(&options)?,
        Scenario::Proxies(options) => proxies::run(&options)?,
    };
    if !report.passed() {
        eprintln!("some checks failed (see the report)");
        std::process::exit(1);
    }
    Ok(())
}
