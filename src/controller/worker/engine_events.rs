//! Event-driven detection: the Docker event stream tells the Worker controller at once when a
//! consenting container dies, is OOM-killed, starts, stops, is removed or changes health,
//! instead of it finding out at its next look.
//!
//! Each event names its Worker through the consent label (`<namespace>/<name>`), so no lookup
//! is needed. When the stream breaks (the engine restarted, the socket closed), it is followed
//! again with backoff from the last event seen (the engine replays what it still has), and every
//! Worker is looked at once to catch up with what the engine no longer has. Looking at a Worker
//! is idempotent, so an event seen twice changes nothing: a container already running is not
//! started again.

use std::{sync::Arc, time::Duration};

use futures::{Stream, StreamExt};
use k8s_openapi::jiff::Timestamp;
use kube::runtime::reflector::{ObjectRef, Store};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::{
    crd::worker::Worker,
    docker::{ContainerEvent, ContainerRuntime},
    metrics::Metrics,
    trust::CONSENT_LABEL,
};

/// First and longest wait before following a broken stream again.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// The Worker an event is about, from the container's consent label; `None` for a label that
/// does not name one Worker.
pub fn worker_of(event: &ContainerEvent) -> Option<ObjectRef<Worker>> {
    let value = event.labels.get(CONSENT_LABEL)?;
    let (ns, name) = value.split_once('/')?;
    if ns.is_empty() || name.is_empty() || name.contains('/') {
        return None;
    }
    Some(ObjectRef::new(name).within(ns))
}

/// Follow the engine's events until the process ends. Returns the Workers to look at now, and
/// a tick for each time every Worker must be looked at (after the stream broke). Only Workers
/// in `store` (the ones this operator watches) are passed on.
pub fn follow(
    docker: Arc<dyn ContainerRuntime>,
    metrics: Arc<Metrics>,
    store: Store<Worker>,
) -> (
    impl Stream<Item = ObjectRef<Worker>> + Send + 'static,
    impl Stream<Item = ()> + Send + 'static,
) {
    let (refs_tx, refs_rx) = mpsc::unbounded_channel();
    let (resync_tx, resync_rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut since: Option<Timestamp> = None;
        let mut wait = RETRY_FIRST;
        let mut broken = false;
        loop {
            let mut events = docker.events(CONSENT_LABEL, since);
            if broken {
                // What happened while the stream was down may be gone from the engine.
                let _ = resync_tx.send(());
            }
            while let Some(item) = events.next().await {
                match item {
                    Ok(event) => {
                        wait = RETRY_FIRST;
                        if broken {
                            info!("following the Docker event stream again");
                            broken = false;
                        }
                        metrics.record_docker_event(&event.action);
                        since = event.time.or(since);
                        match worker_of(&event) {
                            Some(worker) if store.get(&worker).is_some() => {
                                debug!(action = %event.action, %worker, "container event");
                                if refs_tx.send(worker).is_err() {
                                    return; // the controller is gone
                                }
                            }
                            _ => {}
                        }
                    }
                    Err(e) => {
                        warn!(error = %e, "the Docker event stream failed");
                        break;
                    }
                }
            }
            metrics.record_event_stream_break();
            broken = true;
            warn!(retry_in = ?wait, "the Docker event stream ended; following it again");
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(RETRY_MAX);
        }
    });
    (tokio_stream_from(refs_rx), tokio_stream_from(resync_rx))
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: mpsc::UnboundedReceiver<T>,
) -> impl Stream<Item = T> + Send + 'static {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(label: Option<&str>) -> ContainerEvent {
        ContainerEvent {
            action: "die".into(),
            container_id: "3f2a".into(),
            labels: label
                .map(|v| [(CONSENT_LABEL.to_string(), v.to_string())].into())
                .unwrap_or_default(),
            time: None,
        }
    }

    #[test]
    fn an_event_names_its_worker_through_the_consent_label() {
        assert_eq!(
            worker_of(&event(Some("prod/marie"))),
            Some(ObjectRef::new("marie").within("prod"))
        );
        for bad in [
            None,
            Some("marie"),
            Some("/marie"),
            Some("prod/"),
            Some("a/b/c"),
        ] {
            assert_eq!(worker_of(&event(bad)), None, "{bad:?}");
        }
    }
}
