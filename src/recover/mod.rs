//! Recovery steps that change a worker's files: the runbook's `clean_recovery`, carried out
//! crash-safely through directory handles confined below the Worker's allowed root.

pub mod clean_state;
