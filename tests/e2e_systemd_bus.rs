//! The operator's systemd client after the node's dbus-daemon restarts: the connection it had
//! is gone, the next call connects again, and unit changes are followed again. Its own test
//! binary: a bus restart would break the calls of tests running next to it.

mod support;

use std::time::Duration;

use futures::StreamExt;
use support::*;
use worker_recovery_operator::runtime::systemd::{Systemd, SystemdError};

const SETTLE: Duration = Duration::from_secs(20);

#[test]
fn the_client_connects_again_after_the_bus_restarts() {
    let node = systemd_node();
    let w = WorkerUnit::write(node, "bus", Some("team-a/bus"), &[], &[]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let sd = Systemd::connect(Some(&node.bus)).await.unwrap();
        sd.reload().await.unwrap();
        assert!(sd.unit(&w.unit).await.unwrap().exists());

        docker_ok(&["exec", SYSTEMD_NODE, "systemctl", "restart", "dbus.service"]);
        // The first call may find the old connection broken; a later one connects anew.
        let mut failures = Vec::new();
        let began = std::time::Instant::now();
        let unit = loop {
            match sd.unit(&w.unit).await {
                Ok(u) => break u,
                Err(e @ SystemdError::Unavailable(_)) => failures.push(e.to_string()),
                Err(e) => panic!("{e}"),
            }
            assert!(began.elapsed() < SETTLE, "no new connection: {failures:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        eprintln!(
            "e2e_systemd_bus: answered again after {:?}, failed calls: {failures:?}",
            began.elapsed()
        );
        assert!(unit.exists(), "{unit:?}");

        // Unit changes are followed on the new connection.
        let mut changes = Box::pin(sd.unit_changes().await.unwrap());
        sd.start(&w.unit, SETTLE).await.unwrap();
        let seen = tokio::time::timeout(SETTLE, async {
            while let Some(change) = changes.next().await {
                if let Ok(u) = change {
                    if u.name == w.unit && u.running() {
                        return u;
                    }
                }
            }
            panic!("the stream of unit changes ended");
        })
        .await
        .expect("the unit's start is signalled");
        assert!(seen.main_pid.is_some(), "{seen:?}");
        sd.stop(&w.unit, SETTLE).await.unwrap();
    });
}
