//! worker-recovery-operator: the worker-crash runbook as a Kubernetes controller.
//!
//! The pipeline of every controller is observe (Docker, files) -> decide (pure functions in
//! `decide` modules) -> act (idempotent steps behind traits) -> write status (server-side apply).

pub mod blocking;
pub mod bounded;
pub mod cli;
pub mod controller;
pub mod crd;
pub mod diagnose;
pub mod docker;
pub mod escalation;
pub mod http;
pub mod metrics;
pub mod observe;
pub mod operator;
pub mod recover;
pub mod server;
pub mod telemetry;
pub mod trust;
