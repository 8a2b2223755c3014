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

use std::{ops::ControlFlow, sync::Arc, time::Duration};

use futures::{Stream, StreamExt};
use k8s_openapi::jiff::Timestamp;
use kube::runtime::reflector::{ObjectRef, Store};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::{
    crd::worker::Worker,
    metrics::Metrics,
    runtime::{ContainerEvent, WorkerRuntime},
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
    docker: Arc<dyn WorkerRuntime>,
    metrics: Arc<Metrics>,
    store: Store<Worker>,
) -> (
    impl Stream<Item = ObjectRef<Worker>> + Send + 'static,
    impl Stream<Item = ()> + Send + 'static,
) {
    let (refs_tx, refs_rx) = mpsc::unbounded_channel();
    let (resync_tx, resync_rx) = mpsc::unbounded_channel();
    let follower = Follower {
        docker,
        metrics,
        store,
        refs: refs_tx,
        resync: resync_tx,
        since: None,
        wait: RETRY_FIRST,
        broken: false,
    };
    tokio::spawn(follower.run());
    (tokio_stream_from(refs_rx), tokio_stream_from(resync_rx))
}

/// Following the stream across its breaks: where to follow it again from, how long to wait
/// before that, and whether it is broken now.
struct Follower {
    docker: Arc<dyn WorkerRuntime>,
    metrics: Arc<Metrics>,
    store: Store<Worker>,
    refs: mpsc::UnboundedSender<ObjectRef<Worker>>,
    resync: mpsc::UnboundedSender<()>,
    /// The time of the last event seen: the engine replays what came after it.
    since: Option<Timestamp>,
    /// The wait before the next attempt to follow a broken stream.
    wait: Duration,
    broken: bool,
}

impl Follower {
    /// Follow the stream, again and again with backoff, until the controller is gone.
    async fn run(mut self) {
        loop {
            if self.follow_once().await.is_break() {
                return;
            }
            self.metrics.record_event_stream_break();
            self.broken = true;
            warn!(retry_in = ?self.wait, "the Docker event stream ended; following it again");
            tokio::time::sleep(self.wait).await;
            self.wait = (self.wait * 2).min(RETRY_MAX);
        }
    }

    /// Follow the stream until it ends or fails; `Break` when the controller is gone.
    async fn follow_once(&mut self) -> ControlFlow<()> {
        let mut events = self.docker.events(CONSENT_LABEL, self.since);
        if self.broken {
            // What happened while the stream was down may be gone from the engine.
            let _ = self.resync.send(());
        }
        while let Some(item) = events.next().await {
            match item {
                Ok(event) => self.handle_event(&event)?,
                Err(e) => {
                    warn!(error = %e, "the Docker event stream failed");
                    break;
                }
            }
        }
        ControlFlow::Continue(())
    }

    /// One event: the stream works again, and the event's Worker, when watched, is looked at.
    /// `Break` when the controller is gone.
    fn handle_event(&mut self, event: &ContainerEvent) -> ControlFlow<()> {
        self.wait = RETRY_FIRST;
        if self.broken {
            info!("following the Docker event stream again");
            self.broken = false;
        }
        self.metrics.record_docker_event(&event.action);
        self.since = event.time.or(self.since);
        let Some(worker) = worker_of(event).filter(|w| self.store.get(w).is_some()) else {
            return ControlFlow::Continue(());
        };
        debug!(action = %event.action, %worker, "container event");
        if self.refs.send(worker).is_err() {
            return ControlFlow::Break(()); // the controller is gone
        }
        ControlFlow::Continue(())
    }
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

    /// A follower whose store watches Worker `prod/marie`, and what it passes on.
    fn follower() -> (Follower, mpsc::UnboundedReceiver<ObjectRef<Worker>>) {
        let mut marie = crate::testing::worker();
        marie.metadata.namespace = Some("prod".into());
        let (store, mut writer) = kube::runtime::reflector::store();
        writer.apply_watcher_event(&kube::runtime::watcher::Event::Apply(marie));
        let (refs, refs_rx) = mpsc::unbounded_channel();
        let follower = Follower {
            docker: Arc::new(crate::runtime::fake::FakeRuntime::default()),
            metrics: Arc::new(Metrics::default()),
            store,
            refs,
            resync: mpsc::unbounded_channel().0,
            since: None,
            wait: RETRY_MAX,
            broken: true,
        };
        (follower, refs_rx)
    }

    #[test]
    fn an_event_of_a_watched_worker_is_passed_on_and_mends_the_stream() {
        let (mut f, mut refs) = follower();
        let at: Timestamp = "2026-11-27T10:05:00Z".parse().unwrap();
        let mut die = event(Some("prod/marie"));
        die.time = Some(at);

        assert_eq!(f.handle_event(&die), ControlFlow::Continue(()));
        assert_eq!(refs.try_recv(), Ok(ObjectRef::new("marie").within("prod")));
        assert_eq!(
            (f.since, f.wait, f.broken),
            (Some(at), RETRY_FIRST, false),
            "followed again from this event, with the backoff reset"
        );

        // Not watched, or naming no Worker: nothing passed on; an event without a time keeps
        // the last one.
        for label in [Some("prod/anga"), Some("staging/marie"), None] {
            assert_eq!(f.handle_event(&event(label)), ControlFlow::Continue(()));
        }
        assert!(refs.try_recv().is_err());
        assert_eq!(f.since, Some(at));
    }

    #[test]
    fn following_ends_when_the_controller_is_gone() {
        let (mut f, refs) = follower();
        drop(refs);
        assert_eq!(
            f.handle_event(&event(Some("prod/marie"))),
            ControlFlow::Break(())
        );
        // An event of no watched Worker needs nobody to send it to.
        assert_eq!(
            f.handle_event(&event(Some("prod/anga"))),
            ControlFlow::Continue(())
        );
    }
}
