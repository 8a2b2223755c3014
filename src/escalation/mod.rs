//! Telling humans that automatic recovery gave up: the escalation webhook.

pub mod webhook;
