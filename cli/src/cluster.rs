//! `steady cluster plan FILE`: turns one YAML file describing a multi-machine cluster into the
//! exact command line of every daemon on every machine (for systemd units, or to run by hand).
//!
//! The file is checked as a whole first — unique host ids and addresses, at least one host and
//! one LB, a blob store every host shares — so a typo fails here, with its field named, and not
//! on the third machine at start.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::exit::{Failure, USAGE};

/// Largest cluster file read.
const FILE_BYTES_MAX: u64 = 1024 * 1024;
/// Most hosts (and LBs) one file may list.
const MEMBERS_MAX: usize = 1_000;

/// A cluster: one slicer, hosts, LBs, the domains apps answer under and the shared storage.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterFile {
    pub domains: Vec<String>,
    pub slicer: SlicerSpec,
    pub storage: StorageSpec,
    pub hosts: Vec<HostSpec>,
    pub lbs: Vec<LbSpec>,
    #[serde(default)]
    pub paths: Paths,
    /// The cluster key for app environment variables (64 hex digits, mode 0600), the same
    /// file on every host (`openssl rand -hex 32`).
    #[serde(default = "default_secrets_key_file")]
    pub secrets_key_file: PathBuf,
    /// The certificates of the LBs that terminate TLS (those with `tls_listen`).
    #[serde(default)]
    pub tls: Option<TlsSpec>,
}

/// The certificates every LB with a TLS listener serves, one (wildcard) per domain.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSpec {
    pub certs: Vec<CertSpec>,
}

/// One domain's certificate: files on every LB machine, reloaded on SIGHUP.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertSpec {
    /// One of `domains`; the certificate should cover `*.<domain>`.
    pub domain: String,
    /// The certificate chain (PEM), leaf first.
    pub chain: PathBuf,
    /// The private key (PEM).
    pub key: PathBuf,
}

fn default_secrets_key_file() -> PathBuf {
    "/etc/steady/secrets.key".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlicerSpec {
    /// The slicer's API address, reachable from every host and LB.
    pub listen: SocketAddr,
}

/// Where hosts keep bundles and replicas: an S3 bucket (a storage YAML file on each host) or a
/// directory every host mounts.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageSpec {
    /// The storage YAML file (kind: s3, bucket, endpoint, …) on every host.
    #[serde(default)]
    pub config: Option<PathBuf>,
    /// A directory every host mounts at the same path.
    #[serde(default)]
    pub dir: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostSpec {
    /// Stable id (apps are placed by it).
    pub id: String,
    /// App traffic from the LBs.
    pub ingress: SocketAddr,
    /// The host's API (deploys, metrics): operators' network only.
    pub api: SocketAddr,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LbSpec {
    pub public: SocketAddr,
    /// API and metrics: operators' network only.
    pub private: SocketAddr,
    #[serde(default)]
    pub threads: Option<usize>,
    /// An HTTPS listener beside `public` (another port), with the certificates of `tls`.
    #[serde(default)]
    pub tls_listen: Option<SocketAddr>,
}

/// Where binaries, tools and data live on the machines.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Paths {
    pub bin: PathBuf,
    pub data: PathBuf,
    pub bun: Option<PathBuf>,
    pub bwrap: Option<PathBuf>,
    pub litestream: Option<PathBuf>,
}

impl Default for Paths {
    fn default() -> Self {
        Self { bin: "/usr/local/bin".into(), data: "/var/lib/steady".into(), bun: None, bwrap: None, litestream: None }
    }
}

/// One daemon to start: its name and its full command line.
#[derive(Debug, serde::Serialize)]
pub struct Launch {
    pub name: String,
    /// The machine address it runs on (its API or listen address's IP).
    pub machine: String,
    pub argv: Vec<String>,
}

/// Reads and checks `path`.
pub fn read(path: &Path) -> anyhow::Result<ClusterFile> {
    let usage = |message: String| Failure::new(USAGE, "bad_cluster_file", message);
    let size = std::fs::metadata(path).map_err(|e| usage(format!("cannot read {}: {e}", path.display())))?.len();
    if size > FILE_BYTES_MAX {
        return Err(usage(format!("{} is larger than {FILE_BYTES_MAX} bytes", path.display())).into());
    }
    let text = std::fs::read_to_string(path).map_err(|e| usage(format!("cannot read {}: {e}", path.display())))?;
    let file: ClusterFile = serde_yaml::from_str(&text).map_err(|e| usage(format!("{}: {e}", path.display())))?;
    file.check().map_err(|e| usage(format!("{}: {e}", path.display())))?;
    Ok(file)
}

impl ClusterFile {
    /// Checks the file as a whole; the error names the field.
    pub fn check(&self) -> Result<(), String> {
        if self.domains.is_empty() {
            return Err("domains: list at least one domain".into());
        }
        if self.storage.config.is_some() == self.storage.dir.is_some() {
            return Err("storage: give either config (an S3 storage file) or dir (a shared directory)".into());
        }
        if self.hosts.is_empty() || self.lbs.is_empty() {
            return Err("hosts and lbs: list at least one of each".into());
        }
        if self.hosts.len() > MEMBERS_MAX || self.lbs.len() > MEMBERS_MAX {
            return Err(format!("at most {MEMBERS_MAX} hosts and {MEMBERS_MAX} LBs"));
        }
        let mut ids = HashSet::new();
        for host in &self.hosts {
            steady_proto::name::validate(&host.id).map_err(|e| format!("hosts: id {:?}: {e}", host.id))?;
            if !ids.insert(host.id.as_str()) {
                return Err(format!("hosts: id {:?} appears twice", host.id));
            }
        }
        let mut addresses = HashSet::from([self.slicer.listen]);
        let listed = self.hosts.iter().flat_map(|h| [("ingress", h.ingress), ("api", h.api)]);
        let listed = listed.chain(self.lbs.iter().flat_map(|l| [("public", l.public), ("private", l.private)]));
        let listed = listed.chain(self.lbs.iter().filter_map(|l| l.tls_listen.map(|a| ("tls_listen", a))));
        for (field, address) in listed {
            if !addresses.insert(address) {
                return Err(format!("{field} address {address} is used twice"));
            }
        }
        for lb in &self.lbs {
            let threads_max = if lb.tls_listen.is_some() {
                steady_proto::LB_THREADS_MAX_WITH_TLS
            } else {
                steady_proto::LB_THREADS_MAX
            };
            if lb.threads.is_some_and(|t| t == 0 || t > threads_max) {
                return Err(format!(
                    "lbs: threads of {} must be between 1 and {threads_max} (each LB worker listens on a \
                     socket of its own per listener, and an upgrade hands over at most 32)",
                    lb.public
                ));
            }
            if lb.tls_listen.is_some_and(|tls| tls.port() == lb.public.port()) {
                return Err(format!("lbs: tls_listen of {} must use another port than public", lb.public));
            }
        }
        self.check_tls()
    }

    /// The certificates agree with the domains and the LBs that listen for TLS.
    fn check_tls(&self) -> Result<(), String> {
        let certs: &[CertSpec] = self.tls.as_ref().map_or(&[], |tls| &tls.certs);
        let tls_lbs = self.lbs.iter().filter(|l| l.tls_listen.is_some()).count();
        if tls_lbs > 0 && certs.is_empty() {
            return Err("tls: an LB has tls_listen, so list at least one certificate in tls.certs".into());
        }
        if tls_lbs == 0 && !certs.is_empty() {
            return Err("tls: certificates are listed but no LB has tls_listen".into());
        }
        if certs.len() > steady_proto::LB_TLS_CERTS_MAX {
            return Err(format!("tls: at most {} certificates", steady_proto::LB_TLS_CERTS_MAX));
        }
        for (index, cert) in certs.iter().enumerate() {
            let domain = cert.domain.to_ascii_lowercase();
            if !self.domains.iter().any(|d| d.eq_ignore_ascii_case(&domain)) {
                return Err(format!("tls: a certificate for {domain:?}, which is not one of domains"));
            }
            if certs[..index].iter().any(|other| other.domain.eq_ignore_ascii_case(&domain)) {
                return Err(format!("tls: two certificates for {domain:?}"));
            }
            for (field, file) in [("chain", &cert.chain), ("key", &cert.key)] {
                // The LB reads them under a service manager, from no particular directory, and
                // takes `<domain>=<chain>,<key>` on its command line.
                let text = file.to_string_lossy();
                if !file.is_absolute() || text.contains(',') || text.chars().any(char::is_whitespace) {
                    return Err(format!(
                        "tls: {field} of {domain:?} must be an absolute path without commas or spaces"
                    ));
                }
            }
        }
        Ok(())
    }

    /// Every daemon's command line: the slicer, then the hosts, then the LBs.
    pub fn launches(&self) -> Vec<Launch> {
        let bin = |name: &str| self.paths.bin.join(name).display().to_string();
        let data = |name: &str| self.paths.data.join(name).display().to_string();
        let slicer = self.slicer.listen.to_string();
        let mut launches = vec![Launch {
            name: "slicer".into(),
            machine: self.slicer.listen.ip().to_string(),
            argv: vec![bin("steady-slicer"), "--listen".into(), slicer.clone(), "--data".into(), data("slicer")],
        }];
        for host in &self.hosts {
            let mut argv = vec![bin("steady-hostd"), "--id".into(), host.id.clone(), "--data".into(), data(&host.id)];
            argv.extend(["--ingress".into(), host.ingress.to_string(), "--api".into(), host.api.to_string()]);
            argv.extend(["--slicer".into(), slicer.clone()]);
            argv.extend(match (&self.storage.config, &self.storage.dir) {
                (Some(file), _) => ["--storage-config".into(), file.display().to_string()],
                (None, Some(dir)) => ["--storage-dir".into(), dir.display().to_string()],
                (None, None) => unreachable!("checked: storage names one"),
            });
            argv.extend(["--secrets-key-file".into(), self.secrets_key_file.display().to_string()]);
            for (flag, tool) in
                [("--bun", &self.paths.bun), ("--bwrap", &self.paths.bwrap), ("--litestream", &self.paths.litestream)]
            {
                if let Some(tool) = tool {
                    argv.extend([flag.to_owned(), tool.display().to_string()]);
                }
            }
            launches.push(Launch { name: host.id.clone(), machine: host.api.ip().to_string(), argv });
        }
        for (index, lb) in self.lbs.iter().enumerate() {
            let name = format!("lb-{}", index + 1);
            let mut argv = vec![bin("steady-lb"), "--public".into(), lb.public.to_string()];
            argv.extend(["--private".into(), lb.private.to_string(), "--slicer".into(), slicer.clone()]);
            argv.extend(["--data".into(), data(&name)]);
            for domain in &self.domains {
                argv.extend(["--domain".into(), domain.clone()]);
            }
            if let Some(threads) = lb.threads {
                argv.extend(["--threads".into(), threads.to_string()]);
            }
            if let Some(tls) = lb.tls_listen {
                argv.extend(["--tls-listen".into(), tls.to_string()]);
                for cert in self.tls.iter().flat_map(|tls| &tls.certs) {
                    let files = format!("{}={},{}", cert.domain, cert.chain.display(), cert.key.display());
                    argv.extend(["--tls-cert".into(), files]);
                }
            }
            launches.push(Launch { name, machine: lb.private.ip().to_string(), argv });
        }
        launches
    }
}

/// Prints the plan: per daemon, a comment line and its command line (or JSON).
pub fn print_plan(file: &ClusterFile, json: bool) -> anyhow::Result<()> {
    let launches = file.launches();
    if json {
        println!("{}", serde_json::to_string_pretty(&launches)?);
        return Ok(());
    }
    for launch in launches {
        println!("# {} (on {})", launch.name, launch.machine);
        println!("{}\n", launch.argv.join(" "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ClusterFile, String> {
        let file: ClusterFile = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
        file.check().map(|()| file)
    }

    const EXAMPLE: &str = include_str!("../../deploy/cluster.example.yaml");

    #[test]
    fn the_example_file_plans_every_daemon() {
        let file = parse(EXAMPLE).expect("the example is valid");
        let launches = file.launches();
        assert_eq!(launches.len(), 1 + file.hosts.len() + file.lbs.len());
        let host = &launches[1];
        assert!(host.argv.windows(2).any(|w| w[0] == "--slicer" && w[1] == file.slicer.listen.to_string()));
        assert!(host.argv.windows(2).any(|w| w[0] == "--secrets-key-file" && w[1] == "/etc/steady/secrets.key"));
        let lb = launches.last().expect("an LB");
        assert_eq!(lb.argv.iter().filter(|a| *a == "--domain").count(), file.domains.len());
    }

    #[test]
    fn mistakes_are_named() {
        let duplicate = EXAMPLE.replace("id: host-2", "id: host-1");
        assert!(parse(&duplicate).unwrap_err().contains("appears twice"));
        let typo = EXAMPLE.replace("ingress:", "ingres:");
        assert!(parse(&typo).unwrap_err().contains("unknown field"));
        let clash = EXAMPLE.replace("10.0.0.22:8091", "10.0.0.21:8091");
        assert!(parse(&clash).unwrap_err().contains("used twice"));
    }

    #[test]
    fn an_lb_with_tls_gets_its_listener_and_every_certificate() {
        let file = parse(EXAMPLE).expect("the example is valid");
        let launches = file.launches();
        let lb = &launches.last().expect("an LB").argv;
        assert!(lb.windows(2).any(|w| w[0] == "--tls-listen" && w[1] == "0.0.0.0:443"), "{lb:?}");
        let certs: Vec<_> = lb.windows(2).filter(|w| w[0] == "--tls-cert").map(|w| w[1].as_str()).collect();
        assert_eq!(
            certs,
            [
                "steady.page=/etc/steady/tls/steady.page/fullchain.pem,/etc/steady/tls/steady.page/privkey.pem",
                "steady.sh=/etc/steady/tls/steady.sh/fullchain.pem,/etc/steady/tls/steady.sh/privkey.pem",
            ]
        );
    }

    #[test]
    fn tls_mistakes_are_named() {
        let cases = [
            (EXAMPLE.replace("    tls_listen: 0.0.0.0:443\n", ""), "no LB has tls_listen"),
            (EXAMPLE.replace("domain: steady.sh", "domain: steady.page"), "two certificates"),
            (EXAMPLE.replace("domain: steady.sh", "domain: example.com"), "not one of domains"),
            (EXAMPLE.replace("0.0.0.0:443", "0.0.0.0:80"), "used twice"),
            (EXAMPLE.replace("0.0.0.0:443", "10.0.0.12:80"), "another port"),
            (EXAMPLE.replace("threads: 4", "threads: 16"), "between 1 and 15"),
            (EXAMPLE.replace("key: /etc/steady/tls/steady.sh/privkey.pem", "key: privkey.pem"), "absolute path"),
        ];
        for (text, expected) in cases {
            let error = parse(&text).err().unwrap_or_else(|| panic!("accepted, expected {expected:?}"));
            assert!(error.contains(expected), "{error} (expected {expected:?})");
        }
        let no_certs = EXAMPLE.split("\ntls:").next().unwrap().to_owned() + "\n";
        assert!(parse(&no_certs).unwrap_err().contains("at least one certificate"));
    }
}
