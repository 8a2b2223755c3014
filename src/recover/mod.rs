//! Recovery steps that change a worker's files: the runbook's `clean_recovery` and the file
//! moves of its gradual resume, carried out crash-safely through directory handles confined
//! below the Worker's allowed root ([`confined`]).

pub mod batches;
pub mod clean_state;
pub mod confined;
pub mod failover;
pub mod poison;
pub(crate) mod remove_tree;
