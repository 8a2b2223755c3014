//! Command line of the operator binary.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

use ipnet::IpNet;

use crate::{
    crd,
    diagnose::{self, host::DmesgProbe, report},
    docker::DockerEngine,
    http::{self, policy, HttpClient, UrlPolicy},
    operator, telemetry,
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
    /// Write the CustomResourceDefinitions generated from the Rust types.
    Crdgen {
        /// Directory to write `*.yaml` into.
        #[arg(long, default_value = "crds")]
        out_dir: PathBuf,
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
        } => trust.resolve().and_then(|trust| {
            let http = urls.client(&tls)?;
            block_on(operator::run(operator::RunOptions {
                listen,
                namespace,
                trust,
                http,
                status_refresh: std::time::Duration::from_secs(status_refresh_seconds),
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

async fn diagnose(
    name: String,
    namespace: Option<String>,
    output: report::Format,
    trust: Trust,
    http: HttpClient,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    use std::sync::Arc;

    let client = kube::Client::try_default()
        .await
        .context("cannot configure a Kubernetes client (set KUBECONFIG)")?;
    let ns = namespace.unwrap_or_else(|| client.default_namespace().to_string());
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

fn crdgen(out_dir: &std::path::Path, stdout: bool) -> anyhow::Result<()> {
    if stdout {
        for (_, c) in crd::all() {
            print!("{}", crd::render(&c)?);
        }
    } else {
        for path in crd::write_all(out_dir)? {
            eprintln!("wrote {}", path.display());
        }
    }
    Ok(())
}
