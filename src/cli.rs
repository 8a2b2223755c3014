//! Command line of the operator binary.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

use crate::{crd, operator, telemetry};

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
        Command::Run { listen, namespace } => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(operator::run(operator::RunOptions { listen, namespace }))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
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
