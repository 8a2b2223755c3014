//! Command line of the operator binary.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

use crate::{
    crd,
    diagnose::{self, host::DmesgProbe, report},
    docker::DockerEngine,
    operator, telemetry,
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
    #[command(subcommand)]
    command: Command,
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
    telemetry::init(cli.log_format);
    let result = match cli.command {
        Command::Crdgen { out_dir, stdout } => crdgen(&out_dir, stdout),
        Command::Run { listen, namespace } => {
            block_on(operator::run(operator::RunOptions { listen, namespace }))
        }
        Command::Diagnose {
            worker,
            namespace,
            output,
        } => block_on(diagnose(worker, namespace, output)),
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
        .build()?
        .block_on(future)
}

async fn diagnose(
    name: String,
    namespace: Option<String>,
    output: report::Format,
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
    let ctx = diagnose::CheckContext::new(&worker, Arc::new(docker), Arc::new(DmesgProbe))
        .await
        .with_context(|| format!("Worker {ns}/{name} has an invalid spec"))?;
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
