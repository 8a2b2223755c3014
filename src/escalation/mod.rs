//! Telling humans that automatic recovery gave up: the runbook's escalation ladder (Automated
//! 0-5 min, L1 5-15, L2 15-30, L3 30+) is announced to a webhook at each level change, by the
//! notifier, off the reconcile path.

pub mod notifier;
pub mod webhook;
