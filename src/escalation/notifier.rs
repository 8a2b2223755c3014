//! Escalation notifications off the reconcile path.
//!
//! The Worker's reconcile records a level change as a `Pending` notification in status and
//! hands it here; it never waits for the webhook. Each delivery runs on its own task: at most
//! one per Worker (a newer level waiting for it replaces an older one), at most
//! [`MAX_CONCURRENT_DELIVERIES`] in all, each bounded in attempts and in time counted from when
//! it was queued. When one ends, its outcome is kept by the Worker's UID and the Worker's
//! reconcile is woken ([`Notifier::wakeups`]) to write it into status. A notification still
//! `Pending` in status that this process does not know (queued before a restart) is handed
//! over again by the reconcile, with the time it has left.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::{stream::BoxStream, StreamExt};
use k8s_openapi::jiff::Timestamp;
use kube::runtime::reflector::ObjectRef;
use tokio::{
    sync::{mpsc, Semaphore},
    task::AbortHandle,
    time::Instant,
};
use tracing::{info, warn};

use super::webhook::{self, Delivery, EscalationPayload, Hook};
use crate::{crd::worker::Worker, http::HttpClient};

/// Deliveries under way at once, over all Workers.
pub const MAX_CONCURRENT_DELIVERIES: usize = 64;

/// A notification to deliver.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    /// The Worker to wake when the delivery ends.
    pub worker: ObjectRef<Worker>,
    pub hook: Hook,
    pub payload: EscalationPayload,
    /// When it was queued, in whole seconds as status keeps it; with the level, it names the
    /// notification.
    pub queued: Timestamp,
    /// Delivered or given up by `queued` plus this.
    pub deliver_within: Duration,
}

/// How a delivery ended.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    pub level: String,
    pub queued: Timestamp,
    pub delivery: Delivery,
    /// When it ended.
    pub time: Timestamp,
}

/// What the notifier knows of one notification.
#[derive(Clone, Debug, PartialEq)]
pub enum Progress {
    /// Nothing: not handed over since this process started, or replaced by a newer level.
    Unknown,
    /// Waiting for its turn, or being delivered.
    Pending,
    Done(Outcome),
}

/// The deliveries of every Worker. Create it inside the process's runtime's lifetime; its
/// methods never wait.
pub struct Notifier {
    shared: Arc<Shared>,
    wakeups: Mutex<Option<mpsc::UnboundedReceiver<ObjectRef<Worker>>>>,
}

struct Shared {
    http: HttpClient,
    workers: Mutex<HashMap<String, Slot>>,
    permits: Arc<Semaphore>,
    wake: mpsc::UnboundedSender<ObjectRef<Worker>>,
}

/// One Worker's notifications.
#[derive(Default)]
struct Slot {
    running: Option<Running>,
    /// The newest level waiting for `running` to end.
    waiting: Option<Request>,
    /// The last delivery that ended.
    done: Option<Outcome>,
}

struct Running {
    level: String,
    queued: Timestamp,
    task: AbortHandle,
}

impl Notifier {
    pub fn new(http: HttpClient) -> Self {
        Self::with_limit(http, MAX_CONCURRENT_DELIVERIES)
    }

    fn with_limit(http: HttpClient, concurrent: usize) -> Self {
        let (wake, wakeups) = mpsc::unbounded_channel();
        Self {
            shared: Arc::new(Shared {
                http,
                workers: Mutex::default(),
                permits: Arc::new(Semaphore::new(concurrent)),
                wake,
            }),
            wakeups: Mutex::new(Some(wakeups)),
        }
    }

    /// Deliver `request` for the Worker with `uid`, unless this notification (its level and
    /// queued time) is already waiting, under way or done. Returns at once.
    pub fn notify(&self, uid: &str, request: Request) {
        let mut workers = self.shared.workers.lock().unwrap();
        let slot = workers.entry(uid.to_string()).or_default();
        let (level, queued) = (request.payload.level.as_str(), request.queued);
        let known = slot.running.as_ref().is_some_and(|r| r.is(level, queued))
            || slot
                .waiting
                .as_ref()
                .is_some_and(|w| w.payload.level == level && w.queued == queued)
            || slot
                .done
                .as_ref()
                .is_some_and(|d| d.level == level && d.queued == queued);
        if known {
            return;
        }
        if slot.running.is_some() {
            slot.waiting = Some(request);
        } else {
            slot.done = None;
            slot.running = Some(self.shared.start(uid, request));
        }
    }

    /// What is known of the notification of `level` queued at `queued` for the Worker with
    /// `uid`.
    pub fn progress(&self, uid: &str, level: &str, queued: Timestamp) -> Progress {
        let workers = self.shared.workers.lock().unwrap();
        let Some(slot) = workers.get(uid) else {
            return Progress::Unknown;
        };
        match &slot.done {
            Some(d) if d.level == level && d.queued == queued => return Progress::Done(d.clone()),
            _ => {}
        }
        let waiting = slot
            .waiting
            .as_ref()
            .is_some_and(|w| w.payload.level == level && w.queued == queued);
        if waiting || slot.running.as_ref().is_some_and(|r| r.is(level, queued)) {
            Progress::Pending
        } else {
            Progress::Unknown
        }
    }

    /// Forget the Worker with `uid` (it was deleted): its delivery stops, its outcome goes.
    pub fn forget(&self, uid: &str) {
        let slot = self.shared.workers.lock().unwrap().remove(uid);
        if let Some(running) = slot.and_then(|s| s.running) {
            running.task.abort();
        }
    }

    /// Forget every Worker whose UID `live` does not hold (they were deleted).
    pub fn forget_all_but(&self, live: &std::collections::HashSet<String>) {
        let gone: Vec<String> = {
            let workers = self.shared.workers.lock().unwrap();
            workers
                .keys()
                .filter(|uid| !live.contains(*uid))
                .cloned()
                .collect()
        };
        for uid in gone {
            self.forget(&uid);
        }
    }

    /// The Workers whose delivery ended, for the Worker controller's `reconcile_on`. Only the
    /// first call gets them.
    pub fn wakeups(&self) -> BoxStream<'static, ObjectRef<Worker>> {
        match self.wakeups.lock().unwrap().take() {
            Some(mut rx) => futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed(),
            None => {
                warn!("the notifier's wake-ups were already taken");
                futures::stream::empty().boxed()
            }
        }
    }
}

impl Running {
    fn is(&self, level: &str, queued: Timestamp) -> bool {
        self.level == level && self.queued == queued
    }
}

impl Shared {
    fn start(self: &Arc<Self>, uid: &str, request: Request) -> Running {
        let (level, queued) = (request.payload.level.clone(), request.queued);
        let task = tokio::spawn(self.clone().deliver(uid.to_string(), request));
        Running {
            level,
            queued,
            task: task.abort_handle(),
        }
    }

    async fn deliver(self: Arc<Self>, uid: String, request: Request) {
        let deadline = deadline(request.queued, request.deliver_within);
        let permit = tokio::time::timeout_at(deadline, self.permits.clone().acquire_owned()).await;
        let delivery = match permit {
            Ok(Ok(_permit)) => {
                webhook::deliver(&self.http, &request.hook, &request.payload, deadline).await
            }
            _ => Delivery {
                attempts: 0,
                result: Err(webhook::DeliveryError::DeadlineWhileQueued),
            },
        };
        let level = request.payload.level;
        match &delivery.result {
            Ok(status) => {
                info!(worker = %request.worker, %level, status, "escalation webhook delivered")
            }
            Err(error) => warn!(
                worker = %request.worker, %level, attempts = delivery.attempts, %error,
                "the escalation webhook was not delivered"
            ),
        }
        let outcome = Outcome {
            level,
            queued: request.queued,
            delivery,
            time: Timestamp::now(),
        };
        self.finish(&uid, outcome, request.worker);
    }

    /// Keep the outcome, start the level waiting, wake the Worker.
    fn finish(self: &Arc<Self>, uid: &str, outcome: Outcome, worker: ObjectRef<Worker>) {
        {
            let mut workers = self.workers.lock().unwrap();
            let Some(slot) = workers.get_mut(uid) else {
                return; // forgotten
            };
            if !slot
                .running
                .as_ref()
                .is_some_and(|r| r.is(&outcome.level, outcome.queued))
            {
                return;
            }
            slot.running = slot.waiting.take().map(|next| self.start(uid, next));
            slot.done = Some(outcome);
        }
        let _ = self.wake.send(worker);
    }
}

/// `within` after `queued`, on the runtime's clock. A queued time ahead of this host's clock
/// counts from now.
fn deadline(queued: Timestamp, within: Duration) -> Instant {
    let elapsed = Timestamp::now().duration_since(queued);
    let elapsed = if elapsed.is_negative() {
        Duration::ZERO
    } else {
        elapsed.unsigned_abs()
    };
    Instant::now() + within.saturating_sub(elapsed)
}

/// `at` in whole seconds, as a time in status keeps it.
pub fn whole_seconds(at: Timestamp) -> Timestamp {
    Timestamp::from_second(at.as_second()).expect("a whole second of a valid time is valid")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::testing::{black_hole, client, serve, Answer};

    fn payload(level: &str) -> EscalationPayload {
        EscalationPayload {
            worker: "marie".into(),
            namespace: "prod".into(),
            level: level.into(),
            level_index: 0,
            previous_level: None,
            reason: "restarts exhausted".into(),
            root_cause: None,
            run: None,
            since: "2026-11-28T10:00:00Z".into(),
            time: "2026-11-28T10:00:00Z".into(),
        }
    }

    fn request(url: &str, level: &str, queued: Timestamp, within: u64) -> Request {
        Request {
            worker: ObjectRef::new("marie").within("prod"),
            hook: Hook {
                url: url.into(),
                timeout: Duration::from_secs(5),
                max_attempts: 20,
            },
            payload: payload(level),
            queued,
            deliver_within: Duration::from_secs(within),
        }
    }

    fn now() -> Timestamp {
        whole_seconds(Timestamp::now())
    }

    /// The level of every request `server` got, in order.
    fn levels(requests: &Mutex<Vec<String>>) -> Vec<String> {
        requests
            .lock()
            .unwrap()
            .iter()
            .map(|r| {
                let body = r.split_once("\r\n\r\n").unwrap().1;
                serde_json::from_str::<serde_json::Value>(body).unwrap()["level"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_black_holed_hook_does_not_hold_notify_and_fails_within_the_time_bound() {
        let notifier = Notifier::new(client());
        let mut woken = notifier.wakeups();
        let url = black_hole().await;
        let queued = now();
        let started = Instant::now();
        notifier.notify("uid-1", request(&url, "L1", queued, 30));
        assert_eq!(started.elapsed(), Duration::ZERO, "notify returns at once");
        assert_eq!(notifier.progress("uid-1", "L1", queued), Progress::Pending);

        assert_eq!(
            woken.next().await,
            Some(ObjectRef::new("marie").within("prod"))
        );
        assert!(
            started.elapsed() <= Duration::from_secs(30),
            "{:?}",
            started.elapsed()
        );
        let Progress::Done(outcome) = notifier.progress("uid-1", "L1", queued) else {
            panic!("the delivery ended");
        };
        assert!(outcome.delivery.attempts >= 2, "{outcome:?}");
        let err = outcome.delivery.result.unwrap_err().to_string();
        assert!(err.starts_with("gave up at the delivery deadline"), "{err}");
    }

    #[tokio::test]
    async fn a_newer_level_replaces_one_still_waiting_and_one_delivery_runs_at_a_time() {
        let server = serve(vec![Answer::status(200)]).await;
        let notifier = Notifier::new(client());
        let mut woken = notifier.wakeups();
        let queued = now();
        notifier.notify("uid-1", request(&server.url, "Automated", queued, 60));
        notifier.notify("uid-1", request(&server.url, "L1", queued, 60));
        notifier.notify("uid-1", request(&server.url, "L2", queued, 60));
        // The same notification again changes nothing.
        notifier.notify("uid-1", request(&server.url, "L2", queued, 60));
        assert_eq!(notifier.progress("uid-1", "L1", queued), Progress::Unknown);
        assert_eq!(notifier.progress("uid-1", "L2", queued), Progress::Pending);

        woken.next().await.unwrap();
        woken.next().await.unwrap();
        assert_eq!(levels(&server.requests), ["Automated", "L2"]);
        let Progress::Done(outcome) = notifier.progress("uid-1", "L2", queued) else {
            panic!("L2 was delivered");
        };
        assert_eq!(outcome.delivery.result, Ok(200));
        // Done is not delivered again.
        notifier.notify("uid-1", request(&server.url, "L2", queued, 60));
        tokio::task::yield_now().await;
        assert_eq!(
            notifier.progress("uid-1", "L2", queued),
            Progress::Done(outcome)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_time_bound_counts_from_the_queued_time_and_deliveries_are_bounded_in_all() {
        let server = serve(vec![Answer::status(204)]).await;
        // Queued 40 s ago with 30 s to deliver: given up without an attempt.
        let notifier = Notifier::with_limit(client(), 1);
        let mut woken = notifier.wakeups();
        let long_ago = whole_seconds(Timestamp::now() - Duration::from_secs(40));
        notifier.notify("uid-1", request(&server.url, "L1", long_ago, 30));
        woken.next().await.unwrap();
        let Progress::Done(late) = notifier.progress("uid-1", "L1", long_ago) else {
            panic!("ended");
        };
        assert_eq!(late.delivery.attempts, 0);
        assert!(server.requests.lock().unwrap().is_empty());

        // One permit, held by a black-holed delivery: the other Worker's waits past its bound.
        let hole = black_hole().await;
        let queued = now();
        notifier.notify("uid-2", request(&hole, "L1", queued, 60));
        notifier.notify("uid-3", request(&server.url, "L1", queued, 20));
        let first = woken.next().await.unwrap();
        assert_eq!(first, ObjectRef::new("marie").within("prod"));
        let Progress::Done(starved) = notifier.progress("uid-3", "L1", queued) else {
            panic!("uid-3 ended first");
        };
        assert!(starved
            .delivery
            .result
            .unwrap_err()
            .to_string()
            .contains("other deliveries"));
        assert_eq!(notifier.progress("uid-2", "L1", queued), Progress::Pending);
    }

    #[tokio::test]
    async fn a_forgotten_worker_s_delivery_stops_and_its_outcome_goes() {
        // One delivery at a time in all, taken by a black-holed hook.
        let notifier = Notifier::with_limit(client(), 1);
        let mut woken = notifier.wakeups();
        let hole = black_hole().await;
        let queued = now();
        notifier.notify("uid-1", request(&hole, "L1", queued, 600));
        tokio::task::yield_now().await;
        notifier.forget("uid-1");
        assert_eq!(notifier.progress("uid-1", "L1", queued), Progress::Unknown);
        // Its delivery stopped and gave its place up: another Worker's goes through at once.
        let server = serve(vec![Answer::status(200)]).await;
        notifier.notify("uid-2", request(&server.url, "L1", queued, 600));
        let woke = tokio::time::timeout(Duration::from_secs(5), woken.next()).await;
        assert!(woke.is_ok(), "the permit was not given back");
        assert!(matches!(
            notifier.progress("uid-2", "L1", queued),
            Progress::Done(Outcome {
                delivery: Delivery {
                    result: Ok(200),
                    ..
                },
                ..
            })
        ));
        assert!(!notifier
            .shared
            .workers
            .lock()
            .unwrap()
            .contains_key("uid-1"));
    }
}
