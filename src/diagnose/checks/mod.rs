//! The checks of the diagnosis, one module each. Every module exposes
//! `pub async fn run(ctx: &CheckContext) -> CheckResult`.

pub mod container;
pub mod crash_logs;
pub mod deadlock;
pub mod dependencies;
pub mod file_descriptors;
pub mod heartbeat;
pub mod memory;
pub mod metrics_endpoint;
pub mod pipes;
pub mod process;
