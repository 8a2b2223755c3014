//! worker-recovery-operator: the worker-crash runbook as a Kubernetes controller.
//!
//! The pipeline of every controller is observe (Docker, files) -> decide (pure functions in
//! `decide` modules) -> act (idempotent steps behind traits) -> write status (server-side apply).
//!
//! A worker's files are reached only through [`confined`] (never out of the Worker's trusted
//! root through a symlink, never a FIFO or device opened, reads capped), off the async
//! runtime through [`blocking`]: read by [`observe`] and [`diagnose`], changed by [`recover`].
//! What a Worker may make the operator touch at all is decided by [`trust`].

pub mod blocking;
pub mod bounded;
pub mod cli;
pub mod confined;
pub mod controller;
pub mod crash;
pub mod crd;
pub mod diagnose;
pub mod escalation;
pub mod http;
pub mod leader;
pub mod metrics;
pub mod observe;
pub mod operator;
pub mod postmortem;
pub mod recover;
pub mod runtime;
pub mod server;
pub mod telemetry;
#[cfg(test)]
pub(crate) mod testing;
pub mod trust;
