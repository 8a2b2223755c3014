//! End-to-end harness: the real local stack (kube-apiserver + etcd + dockerd, started by
//! `scripts/stack.sh`), the real sample-worker image, and the operator binary as a process.
//!
//! Nothing here skips: if the stack cannot start, every e2e test fails with the reason.
#![allow(dead_code)]

mod containers;
mod diagnosis;
mod files;
mod manifests;
mod operator;
mod prometheus;
mod stack;
mod systemd;
mod waits;

// Each test binary uses a part of the harness.
#[allow(unused_imports)]
pub use {
    containers::*, diagnosis::*, files::*, manifests::*, operator::*, prometheus::*, stack::*,
    systemd::*, waits::*,
};

pub const WORKER_IMAGE: &str = "wro-sample-worker:dev";
/// The label by which a container lets one Worker manage it (`<namespace>/<worker>`).
pub const CONSENT_LABEL: &str = "workerrecovery.io/worker";
