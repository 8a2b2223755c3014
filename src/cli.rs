//! Command line of the operator binary.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

use ipnet::IpNet;

use crate::{
    controller::scope::Scope,
    crd,
    diagnose::{self, host::DmesgProbe, report},
    http::{self, policy, HttpClient, UrlPolicy},
    leader, operator,
    runtime::DockerEngine,
    telemetry,
    trust::{self, AllowedRoots, FileOnlyGrants, RootGrant, Trust},
};

#[derive(Parser, Debug)]
#[command(
    name = "worker-recovery-operator",
    version,
    about = "Self-healing automation for crashed agent workers"
)]
pub struct Cli {
    /// Log format.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "pretty",
        env = "WRO_LOG_FORMAT"
    )]
    log_format: telemetry::LogFormat,
    /// A PEM bundle of certificate authorities to trust for https:// webhooks, metrics
    /// endpoints and trace export, besides Mozilla's roots (the operator image has no system
    /// trust store).
    #[arg(long, global = true, value_name = "PEM", env = "WRO_CA_FILE")]
    ca_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

/// Where the operator may look and act (see `crate::trust`).
#[derive(clap::Args, Debug, Clone)]
struct TrustArgs {
    /// A directory that may hold Workers' shared roots, for every namespace (`DIR`) or for one
    /// namespace only (`NAMESPACE=DIR`); repeat for several. A Worker whose sharedRoot
    /// (resolved through symlinks) is outside all of its namespace's is refused. None given:
    /// every Worker is refused.
    #[arg(
        long = "allowed-root",
        value_name = "[NAMESPACE=]DIR",
        env = "WRO_ALLOWED_ROOTS",
        value_delimiter = ','
    )]
    allowed_roots: Vec<RootGrant>,
    /// A Worker (`NAMESPACE/NAME`, or `NAMESPACE/*`) whose files may be read and changed while
    /// it has no container: by default a Worker's files are reached only through a container
    /// that consents. Repeat for several.
    #[arg(
        long = "file-only-worker",
        value_name = "NAMESPACE/NAME",
        env = "WRO_FILE_ONLY_WORKERS",
        value_delimiter = ','
    )]
    file_only_workers: Vec<String>,
}

impl TrustArgs {
    fn resolve(&self) -> anyhow::Result<Trust> {
        let roots = AllowedRoots::from_grants(&self.allowed_roots)
            .map_err(|e| anyhow::anyhow!("--allowed-root: {e}"))?;
        if roots.is_empty() {
            tracing::warn!(
                "no --allowed-root (WRO_ALLOWED_ROOTS) is configured: every Worker will be refused"
            );
        }
        let file_only = FileOnlyGrants::parse(&self.file_only_workers)
            .map_err(|e| anyhow::anyhow!("--file-only-worker: {e}"))?;
        Ok(Trust { roots, file_only })
    }
}

/// What webhook and metrics URLs from Worker specs may reach (see `crate::http::policy`).
#[derive(clap::Args, Debug, Clone)]
struct UrlPolicyArgs {
    /// A network (CIDR, or one address) that webhook and metrics URLs may not reach; repeat for
    /// several. Given, it replaces the default list: 169.254.0.0/16, fe80::/10,
    /// 100.100.100.200/32, fd00:ec2::254/128 (link-local and the cloud metadata services).
    #[arg(
        long = "url-deny",
        value_name = "CIDR",
        env = "WRO_URL_DENY",
        value_delimiter = ',',
        value_parser = policy::parse_network
    )]
    url_deny: Vec<IpNet>,
    /// A network (CIDR, or one address) that webhook and metrics URLs may reach; repeat for
    /// several. Given, no address outside them may be reached.
    #[arg(
        long = "url-allow",
        value_name = "CIDR",
        env = "WRO_URL_ALLOW",
        value_delimiter = ',',
        value_parser = policy::parse_network
    )]
    url_allow: Vec<IpNet>,
}

impl UrlPolicyArgs {
    fn policy(&self) -> UrlPolicy {
        let deny = (!self.url_deny.is_empty()).then(|| self.url_deny.clone());
        UrlPolicy::new(deny, self.url_allow.clone())
    }

    /// The HTTP client of the command, trusting `tls`.
    fn client(&self, tls: &rustls::ClientConfig) -> anyhow::Result<HttpClient> {
        let policy = self.policy();
        tracing::info!(deny = ?policy.deny(), allow = ?policy.allow(), "URL policy");
        // As a message: it names the innermost cause already, which `{:#}` would repeat.
        HttpClient::new(policy, tls.clone()).map_err(anyhow::Error::msg)
    }
}

/// The analyzer of the cores that `Debug` runs collect (see `crate::crash`).
#[derive(clap::Args, Debug, Clone)]
struct AnalyzerArgs {
    /// An image with `gdb` on its PATH (e.g. the one `scripts/build-analyzer-image.sh` builds
    /// from Debian's gdb-minimal): each core a `Debug` run collects is analyzed in a container
    /// of it, without network, with the core and the executable mounted read-only. Unset:
    /// cores are recorded without a backtrace.
    #[arg(long, value_name = "IMAGE", env = "WRO_CORE_ANALYZER_IMAGE")]
    core_analyzer_image: Option<String>,
    /// The analysis of one core is stopped after this many seconds.
    #[arg(long, default_value_t = 120, env = "WRO_CORE_ANALYZER_TIMEOUT_SECONDS")]
    core_analyzer_timeout_seconds: u64,
    /// Memory limit of the analyzer container, in MiB.
    #[arg(long, default_value_t = 1024, env = "WRO_CORE_ANALYZER_MEMORY_MIB")]
    core_analyzer_memory_mib: i64,
}

impl AnalyzerArgs {
    fn resolve(&self) -> Option<crate::crash::Analyzer> {
        let image = self.core_analyzer_image.clone().filter(|i| !i.is_empty())?;
        Some(crate::crash::Analyzer {
            image,
            timeout: std::time::Duration::from_secs(self.core_analyzer_timeout_seconds.max(1)),
            memory_bytes: self.core_analyzer_memory_mib.max(64) << 20,
        })
    }
}

/// Leader election among several operator processes (the single-host Deployment mode).
#[derive(clap::Args, Debug, Clone)]
struct ElectionArgs {
    /// Run the controllers only while this process holds the leader Lease; a standby waits
    /// for it. A leader that loses it exits (non-zero) at once, to come back as a standby.
    #[arg(
        long,
        env = "WRO_LEADER_ELECT",
        value_parser = clap::builder::BoolishValueParser::new(),
        default_value_t = false,
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    leader_elect: bool,
    /// Name of the leader Lease.
    #[arg(long, default_value = leader::DEFAULT_LEASE, env = "WRO_LEADER_ELECTION_LEASE")]
    leader_election_lease: String,
    /// Namespace of the leader Lease (default: $POD_NAMESPACE, else `default`).
    #[arg(long, env = "WRO_LEADER_ELECTION_NAMESPACE")]
    leader_election_namespace: Option<String>,
    /// Seconds the leader Lease holds without a renewal: how long a crashed leader's standby
    /// waits at most before it takes over.
    #[arg(long, default_value_t = 15, env = "WRO_LEADER_ELECTION_LEASE_SECONDS")]
    leader_election_lease_seconds: u64,
    /// Seconds between the leader's renewals of the Lease (less than the lease seconds).
    #[arg(long, default_value_t = 5, env = "WRO_LEADER_ELECTION_RENEW_SECONDS")]
    leader_election_renew_seconds: u64,
}

impl ElectionArgs {
    /// The election to take part in, if any; `env` reads POD_NAMESPACE, POD_NAME and HOSTNAME.
    fn resolve(
        &self,
        env: impl Fn(&str) -> Option<String>,
    ) -> anyhow::Result<Option<leader::Election>> {
        if !self.leader_elect {
            return Ok(None);
        }
        let election = leader::Election {
            lease: self.leader_election_lease.clone(),
            namespace: self
                .leader_election_namespace
                .clone()
                .or_else(|| env("POD_NAMESPACE"))
                .unwrap_or_else(|| "default".into()),
            identity: leader::identity(env("POD_NAME"), env("HOSTNAME")),
            lease_seconds: self.leader_election_lease_seconds,
            renew_seconds: self.leader_election_renew_seconds,
        };
        election
            .validate()
            .map_err(|e| anyhow::anyhow!("--leader-election-renew-seconds: {e}"))?;
        Ok(Some(election))
    }
}

/// The environment variable `name`, when set and not empty.
fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the operator: watch Workers and keep them healthy.
    Run {
        /// Address of the /metrics, /healthz and /readyz endpoints.
        #[arg(long, default_value = "0.0.0.0:8080", env = "WRO_LISTEN")]
        listen: SocketAddr,
        /// Watch only this namespace (all namespaces by default).
        #[arg(long, env = "WRO_NAMESPACE")]
        namespace: Option<String>,
        #[command(flatten)]
        trust: TrustArgs,
        #[command(flatten)]
        urls: UrlPolicyArgs,
        /// Write a Worker's unchanged status at most this often (seconds): a look that finds
        /// nothing new writes nothing until then. 0 writes at every look.
        #[arg(long, default_value_t = 300, env = "WRO_STATUS_REFRESH_SECONDS")]
        status_refresh_seconds: u64,
        /// Act only on the Workers whose spec.nodeName is NAME (a per-node agent; a DaemonSet
        /// passes its pod's node). Without it every Worker is acted on.
        #[arg(long, value_name = "NAME", env = "WRO_NODE_NAME")]
        node_name: Option<String>,
        #[command(flatten)]
        election: ElectionArgs,
        #[command(flatten)]
        analyzer: AnalyzerArgs,
        /// The D-Bus of the node's systemd, for Workers run as systemd services
        /// (`spec.runtime.systemd`): `system` for the system bus, or an address
        /// (`unix:path=/run/dbus/system_bus_socket`). Unset: such Workers wait with a reason.
        #[arg(long, value_name = "ADDRESS", env = "WRO_SYSTEMD_BUS")]
        systemd_bus: Option<String>,
        /// Where systemd's journal is, for the logs of its units (read-only; the ones that
        /// exist are read). Repeat for several.
        #[arg(
            long = "systemd-journal-dir",
            value_name = "DIR",
            env = "WRO_SYSTEMD_JOURNAL_DIRS",
            value_delimiter = ',',
            default_values = ["/var/log/journal", "/run/log/journal"]
        )]
        systemd_journal_dirs: Vec<PathBuf>,
    },
    /// Diagnose a Worker now: run every check of the runbook and print findings and root cause.
    /// Needs no running operator: reads the Worker from the API, looks at Docker and files directly.
    Diagnose {
        /// metadata.name of the Worker.
        worker: String,
        /// Namespace of the Worker (default: the kubeconfig's namespace).
        #[arg(short, long)]
        namespace: Option<String>,
        /// Output format.
        #[arg(short, long, value_enum, default_value = "table")]
        output: report::Format,
        #[command(flatten)]
        trust: TrustArgs,
        #[command(flatten)]
        urls: UrlPolicyArgs,
    },
    /// Print the post-mortem of a Worker's incident (the latest by default), as the operator
    /// wrote it into the ConfigMap `<worker>-postmortems`.
    Postmortem {
        /// metadata.name of the Worker.
        worker: String,
        /// Namespace of the Worker (default: the kubeconfig's namespace).
        #[arg(short, long)]
        namespace: Option<String>,
        /// The incident's number (`status.incident.number`, `status.incidentsTotal`).
        #[arg(long)]
        incident: Option<u32>,
        /// Output format.
        #[arg(short, long, value_enum, default_value = "markdown")]
        output: PostmortemFormat,
    },
    /// Write the CustomResourceDefinitions generated from the Rust types.
    Crdgen {
        /// Directory to write `*.yaml` into (repeat for several); by default `crds/` and the
        /// Helm chart's copy.
        #[arg(long, default_values = crd::CRD_DIRS)]
        out_dir: Vec<PathBuf>,
        /// Print all CRDs to standard output instead.
        #[arg(long)]
        stdout: bool,
    },
}

/// Parse the command line and run the command.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let tls = match http::tls::load(cli.ca_file.as_deref()) {
        Ok(tls) => tls,
        Err(e) => {
            eprintln!("error: --ca-file: {e}");
            return ExitCode::FAILURE;
        }
    };
    let _telemetry = telemetry::init(cli.log_format, &tls);
    let result = match cli.command {
        Command::Crdgen { out_dir, stdout } => crdgen(&out_dir, stdout),
        Command::Run {
            listen,
            namespace,
            trust,
            urls,
            status_refresh_seconds,
            node_name,
            election,
            analyzer,
            systemd_bus,
            systemd_journal_dirs,
        } => trust.resolve().and_then(|trust| {
            let http = urls.client(&tls)?;
            let leader = election.resolve(env_var)?;
            block_on(operator::run(operator::RunOptions {
                listen,
                namespace,
                trust,
                http,
                status_refresh: std::time::Duration::from_secs(status_refresh_seconds),
                scope: node_name
                    .filter(|n| !n.is_empty())
                    .map_or_else(Scope::all, Scope::node),
                leader,
                core_analyzer: analyzer.resolve(),
                systemd_bus: systemd_bus.filter(|b| !b.is_empty()),
                systemd_journal_dirs,
            }))
        }),
        Command::Diagnose {
            worker,
            namespace,
            output,
            trust,
            urls,
        } => trust.resolve().and_then(|trust| {
            let http = urls.client(&tls)?;
            block_on(diagnose(worker, namespace, output, trust, http))
        }),
        Command::Postmortem {
            worker,
            namespace,
            incident,
            output,
        } => block_on(postmortem(worker, namespace, incident, output)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn block_on(future: impl std::future::Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // File reads run on blocking threads; 512 of them (tokio's default) after a look at a
        // thousand Workers would each keep a stack and a malloc arena.
        .max_blocking_threads(16)
        .build()?
        .block_on(future)
}

/// How `postmortem` prints.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum PostmortemFormat {
    Markdown,
    Json,
}

/// A client from the kubeconfig (or in-cluster config), and `namespace` or its default one.
async fn client_in(namespace: Option<String>) -> anyhow::Result<(kube::Client, String)> {
    use anyhow::Context as _;

    let client = kube::Client::try_default()
        .await
        .context("cannot configure a Kubernetes client (set KUBECONFIG)")?;
    let ns = namespace.unwrap_or_else(|| client.default_namespace().to_string());
    Ok((client, ns))
}

async fn postmortem(
    worker: String,
    namespace: Option<String>,
    incident: Option<u32>,
    output: PostmortemFormat,
) -> anyhow::Result<()> {
    let (client, ns) = client_in(namespace).await?;
    let json = output == PostmortemFormat::Json;
    let text = crate::postmortem::store::read(&client, &ns, &worker, incident, json).await?;
    println!("{}", text.trim_end());
    Ok(())
}

async fn diagnose(
    name: String,
    namespace: Option<String>,
    output: report::Format,
    trust: Trust,
    http: HttpClient,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    use std::sync::Arc;

    let (client, ns) = client_in(namespace).await?;
    let workers: kube::Api<crd::Worker> = kube::Api::namespaced(client, &ns);
    let worker = workers
        .get_opt(&name)
        .await
        .with_context(|| format!("cannot read Worker {ns}/{name}"))?
        .with_context(|| format!("Worker {name:?} not found in namespace {ns}"))?;
    let docker = DockerEngine::connect()
        .await
        .context("cannot reach the Docker engine (set DOCKER_HOST or start dockerd)")?;
    // The same trust rules as the operator's: nothing outside the allowed roots, no container
    // without consent. Path claims are the operator's to settle: this command only reads, and
    // prints to its caller.
    let admission = trust::admit(&worker, &trust, &docker, None)
        .await
        .with_context(|| format!("Worker {ns}/{name} cannot be diagnosed"))?;
    let ctx = diagnose::CheckContext::new(
        &worker,
        admission,
        Arc::new(docker),
        Arc::new(DmesgProbe),
        http,
    );
    let diagnosis = diagnose::diagnose(&ctx).await;
    print!("{}", report::render(&diagnosis, output));
    Ok(())
}

fn crdgen(out_dirs: &[PathBuf], stdout: bool) -> anyhow::Result<()> {
    if stdout {
        for (_, c) in crd::all() {
            print!("{}", crd::render(&c)?);
        }
    } else {
        for dir in out_dirs {
            for path in crd::write_all(dir)? {
                eprintln!("wrote {}", path.display());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_args(args: &[&str]) -> (Option<String>, ElectionArgs) {
        let mut argv = vec!["worker-recovery-operator", "run"];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Run {
                node_name,
                election,
                ..
            } => (node_name, election),
            other => panic!("not run: {other:?}"),
        }
    }

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn by_default_no_node_and_no_election() {
        let (node, election) = run_args(&[]);
        assert_eq!(node, None);
        assert_eq!(election.resolve(env(&[])).unwrap(), None);
    }

    #[test]
    fn the_node_name_is_taken() {
        assert_eq!(
            run_args(&["--node-name", "node-a"]).0.as_deref(),
            Some("node-a")
        );
    }

    #[test]
    fn an_election_defaults_to_the_pods_namespace_and_name() {
        let (_, election) = run_args(&["--leader-elect"]);
        let election = election
            .resolve(env(&[("POD_NAMESPACE", "ops"), ("POD_NAME", "op-0")]))
            .unwrap()
            .unwrap();
        assert_eq!(election.lease, "worker-recovery-operator");
        assert_eq!(election.namespace, "ops");
        assert_eq!(election.identity, format!("op-0-{}", std::process::id()));
        assert_eq!((election.lease_seconds, election.renew_seconds), (15, 5));
        let (_, election) = run_args(&["--leader-elect"]);
        let election = election.resolve(env(&[])).unwrap().unwrap();
        assert_eq!(election.namespace, "default");
    }

    #[test]
    fn an_election_takes_its_flags() {
        let (_, election) = run_args(&[
            "--leader-elect=1",
            "--leader-election-lease",
            "wro",
            "--leader-election-namespace",
            "ops",
            "--leader-election-lease-seconds",
            "4",
            "--leader-election-renew-seconds",
            "1",
        ]);
        let election = election
            .resolve(env(&[("POD_NAMESPACE", "elsewhere")]))
            .unwrap()
            .unwrap();
        assert_eq!(
            (election.lease.as_str(), election.namespace.as_str()),
            ("wro", "ops")
        );
        assert_eq!((election.lease_seconds, election.renew_seconds), (4, 1));
    }

    #[test]
    fn a_renewal_after_the_lease_runs_out_is_refused() {
        let (_, election) = run_args(&[
            "--leader-elect",
            "--leader-election-lease-seconds",
            "5",
            "--leader-election-renew-seconds",
            "5",
        ]);
        assert!(election.resolve(env(&[])).is_err());
    }
}
