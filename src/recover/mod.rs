//! Recovery steps that change a worker's files, carried out crash-safely through directory
//! handles confined below the Worker's trusted root ([`crate::confined`]):
//!
//! * [`clean_state`]: the runbook's `clean_recovery` (requeue or dead-letter the active tasks,
//!   quarantine what is not a task, remove stale locks, empty `tmp/`, reset `state.json`),
//!   journaled so that a run interrupted anywhere finishes without doing anything twice;
//! * [`batches`]: the file moves of a ResumePlan's gradual resume (batches from `pending/` to
//!   `staged/`) and the worker's `state.json` status;
//! * [`poison`]: a task that was active at too many crashes in a row moved to `failed/`;
//! * [`failover`]: a failed Worker's pending tasks moved to a backup Worker.

pub mod batches;
pub mod clean_state;
pub mod failover;
pub mod poison;
#[cfg(test)]
pub(crate) mod testing;
