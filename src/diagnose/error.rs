//! Why a check could not run. Checks return a [`CheckError`]; it becomes text only where the
//! diagnosis writes it into a CheckFailed finding, as [`message`] makes it.

use std::error::Error;

use crate::{
    blocking::BlockingError,
    observe::heartbeat::HeartbeatObservation,
    runtime::{ContainerState, RuntimeError},
};

use super::checks::{crash_logs::LogFailure, process::ProcessError};

/// Why a check could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// Docker could not be asked about the container when the diagnosis started.
    #[error("cannot inspect container {container:?}")]
    Uninspectable {
        container: String,
        #[source]
        source: RuntimeError,
    },
    /// The check needs the container, and there is none; `so` says what that prevents.
    #[error("container {container:?} does not exist{}", so.map(|s| format!(": {s}")).unwrap_or_default())]
    NoContainer {
        container: String,
        so: Option<&'static str>,
    },
    /// The container vanished while the check was looking at it.
    #[error("container {container:?} disappeared while it was searched")]
    Disappeared { container: String },
    #[error("container {container:?} is paused: its process is frozen and exec is refused")]
    Paused { container: String },
    /// Descriptors are counted by exec, which needs a running container.
    #[error("container is not running ({state}); file descriptors can only be counted in a running container")]
    NotRunningToCountDescriptors { state: ContainerState },
    /// The engine refused a request of the check, or the container was never admitted.
    #[error(transparent)]
    Engine(#[from] RuntimeError),
    /// The worker's own process could not be found.
    #[error(transparent)]
    Process(#[from] ProcessError),
    /// The container runs but the worker's process is not in it (the reason says why).
    #[error("{0}")]
    NoWorkerProcess(String),
    #[error("cannot exec into {container:?} to count descriptors")]
    CountDescriptors {
        container: String,
        #[source]
        source: RuntimeError,
    },
    /// The descriptor script's output is not the three sections it prints.
    #[error("unexpected output of `sh -c '{script}'` (exit code {exit_code}): {output}")]
    UnexpectedOutput {
        script: String,
        exit_code: String,
        output: String,
    },
    /// An I/O error reading the heartbeat file (anything else about the file is a finding).
    #[error("cannot read the heartbeat file {path}")]
    HeartbeatUnreadable {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("unexpected heartbeat observation {0:?}")]
    UnexpectedHeartbeat(Box<HeartbeatObservation>),
    /// Neither the container's log nor the application log could be read.
    #[error("{}", join(.0))]
    LogsUnreadable(Vec<LogFailure>),
    /// A file reader on the blocking pool did not finish.
    #[error(transparent)]
    FileReader(#[from] BlockingError),
    /// The check did not finish within the spec's per-check timeout.
    #[error("did not finish within {seconds}s")]
    TimedOut { seconds: u64 },
}

/// The text of an error for a finding: its message, then its sources', joined by `": "`.
pub fn message(e: &(dyn Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn join(failures: &[LogFailure]) -> String {
    failures
        .iter()
        .map(|f| message(f))
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_ends_with_its_sources() {
        let e = CheckError::CountDescriptors {
            container: "marie".into(),
            source: RuntimeError::unavailable(
                crate::runtime::RuntimeKind::Docker,
                "connection refused",
            ),
        };
        assert_eq!(
            message(&e),
            "cannot exec into \"marie\" to count descriptors: Docker engine unreachable: connection refused"
        );
        // A transparent wrapper says its source's message once.
        let e = CheckError::from(RuntimeError::NotFound("marie".into()));
        assert_eq!(message(&e), "\"marie\" not found");
        let e = CheckError::NoContainer {
            container: "marie".into(),
            so: Some("no memory to look at"),
        };
        assert_eq!(
            message(&e),
            "container \"marie\" does not exist: no memory to look at"
        );
    }
}
