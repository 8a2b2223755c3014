//! `update_resources` and `recreate` against the real Docker engine of the local stack (Debian's
//! docker.io 20.10, API 1.41), checked with `docker inspect`:
//!
//! * `docker update` in place: a memory limit raised above the memory+swap limit takes the
//!   swap limit along, a CPU quota on a `--cpus` container is applied as `--cpus`;
//! * a recreate keeps the name, image, command, environment, labels, user, working dir, init,
//!   restart policy, networks with their aliases and the anonymous volume's data, puts the
//!   declared limits, ulimits and health check on top, and starts the new container;
//! * a leftover `<name>-wro-new` of the same Worker is replaced; one of someone else stops
//!   the recreate before anything is touched.

mod support;

use std::{
    process::Command,
    time::{Duration, Instant},
};

use serde_json::Value;
use support::*;
use worker_recovery_operator::runtime::{
    resources::{self, Declared},
    DockerEngine, HealthCheck, Limits, RuntimeError, WorkerRuntime,
};

const MI: i64 = 1 << 20;

/// Containers, networks and volumes of one test, removed when it ends.
struct Cleanup {
    containers: Vec<String>,
    networks: Vec<String>,
    volumes: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for c in &self.containers {
            let _ = docker(&["rm", "-fv", c]);
        }
        for n in &self.networks {
            let _ = docker(&["network", "rm", n]);
        }
        for v in &self.volumes {
            let _ = docker(&["volume", "rm", v]);
        }
    }
}

fn inspect(container: &str) -> Value {
    let out = docker_ok(&["inspect", container]);
    serde_json::from_str::<Value>(&out).unwrap()[0].clone()
}

fn exists(container: &str) -> bool {
    Command::new("docker")
        .args(["inspect", container])
        .output()
        .unwrap()
        .status
        .success()
}

/// Recreate `name` (now `old_id`) with `declared`: a new container, the old one gone. Returns
/// the new container's ID.
async fn recreate(engine: &DockerEngine, name: &str, declared: &Declared, old_id: &str) -> String {
    let new_id = engine
        .recreate(name, declared, Duration::from_secs(10))
        .await
        .expect("recreate");
    assert_ne!(new_id, old_id);
    assert!(!exists(old_id), "the old container is gone");
    new_id
}

/// A long-running container of the sample worker's image (busybox `sleep` under `--init`),
/// with a bit of everything a recreate has to keep.
fn run_worker(name: &str, label: &str, net: &str, extra: &[&str]) -> String {
    let mut args = vec![
        "run",
        "-d",
        "--name",
        name,
        "--label",
        label,
        "--label",
        "team=infra",
        "--network",
        net,
        "--network-alias",
        "worker",
        "-v",
        "/data",
        "-e",
        "FOO=bar baz",
        "-u",
        "1000:1000",
        "-w",
        "/tmp",
        "--init",
        "--restart",
        "unless-stopped",
        "--stop-timeout",
        "3",
        "--entrypoint",
        "sleep",
    ];
    args.extend_from_slice(extra);
    args.extend([WORKER_IMAGE, "3600"]);
    docker_ok(&args)
}

#[tokio::test(flavor = "multi_thread")]
async fn update_in_place_and_crash_aware_recreate() {
    stack();
    let started = Instant::now();
    let engine = DockerEngine::connect()
        .await
        .expect("the stack's engine answers");
    let suffix = unique_suffix();
    let name = format!("wro-res-{suffix}");
    let temp = format!("{name}{}", resources::NEW_SUFFIX);
    let (net, other_net) = (format!("wro-res-a-{suffix}"), format!("wro-res-b-{suffix}"));
    let label = format!("{CONSENT_LABEL}=res-{suffix}/w");
    let mut cleanup = Cleanup {
        containers: vec![name.clone(), temp.clone()],
        networks: vec![net.clone(), other_net.clone()],
        volumes: Vec::new(),
    };
    docker_ok(&["network", "create", &net]);
    docker_ok(&["network", "create", &other_net]);
    let old_id = run_worker(
        &name,
        &label,
        &net,
        &[
            "-m",
            "256m",
            "--memory-swap",
            "512m",
            "--cpus",
            "0.5",
            "--ulimit",
            "nofile=64:64",
        ],
    );
    docker_ok(&["network", "connect", "--alias", "extra", &other_net, &name]);
    docker_ok(&["exec", "-u", "0", &name, "sh", "-c", "echo kept > /data/f"]);
    let volume = inspect(&name)["Mounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["Destination"] == "/data")
        .expect("the anonymous volume")["Name"]
        .as_str()
        .unwrap()
        .to_string();
    cleanup.volumes.push(volume.clone());

    // What inspect reads.
    let info = engine.inspect(&name).await.unwrap().unwrap();
    assert_eq!(info.memory_limit, Some(256 * MI));
    assert_eq!(info.memory_swap, Some(512 * MI));
    assert_eq!(
        info.cpu_quota,
        Some(50_000),
        "--cpus 0.5 is 50 ms per 100 ms"
    );
    assert_eq!(info.nofile_limit, Some((64, 64)));
    assert_eq!(
        (info.nproc_limit, &info.health_check, &info.health),
        (None, &None, &None)
    );

    // In place: memory above the swap limit takes the swap limit along; the quota of a
    // `--cpus` container is applied as `--cpus`.
    engine
        .update_resources(
            &name,
            Limits {
                memory: Some(MI << 10),
                cpu_quota: Some(100_000),
                ..Default::default()
            },
        )
        .await
        .expect("docker update");
    let hc = &inspect(&name)["HostConfig"];
    assert_eq!(hc["Memory"], 1i64 << 30);
    assert_eq!(hc["MemorySwap"], 1i64 << 30);
    assert_eq!(hc["NanoCpus"], 1_000_000_000i64);
    assert_eq!(inspect(&name)["Id"], old_id.as_str(), "same container");
    let info = engine.inspect(&name).await.unwrap().unwrap();
    assert_eq!(info.cpu_quota, Some(100_000));
    // Lowering memory leaves the swap limit.
    engine
        .update_resources(
            &name,
            Limits {
                memory: Some(768 * MI),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let hc = &inspect(&name)["HostConfig"];
    assert_eq!(
        (hc["Memory"].as_i64(), hc["MemorySwap"].as_i64()),
        (Some(768 * MI), Some(1 << 30))
    );

    // A leftover of an interrupted recreate of this Worker is replaced.
    docker_ok(&["create", "--name", &temp, "--label", &label, WORKER_IMAGE]);
    let declared = Declared {
        memory: Some(512 * MI),
        cpu_quota: Some(25_000),
        nofile: Some((1024, 2048)),
        nproc: Some((512, 512)),
        health_check: Some(HealthCheck {
            command: vec!["true".into()],
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            retries: 2,
            start_period: Duration::ZERO,
        }),
        ..Default::default()
    };
    let new_id = recreate(&engine, &name, &declared, &old_id).await;
    assert!(!exists(&temp), "no temporary container is left");
    let c = inspect(&name);
    assert_eq!(c["Id"], new_id.as_str());
    assert_eq!(c["State"]["Running"], true, "started");
    assert_eq!(c["Config"]["Image"], WORKER_IMAGE);
    assert_eq!(c["Config"]["Entrypoint"], serde_json::json!(["sleep"]));
    assert_eq!(c["Config"]["Cmd"], serde_json::json!(["3600"]));
    assert!(c["Config"]["Env"]
        .as_array()
        .unwrap()
        .contains(&"FOO=bar baz".into()));
    assert_eq!(c["Config"]["User"], "1000:1000");
    assert_eq!(c["Config"]["WorkingDir"], "/tmp");
    assert_eq!(c["Config"]["StopTimeout"], 3);
    assert_eq!(c["Config"]["Labels"]["team"], "infra");
    assert_eq!(
        c["Config"]["Labels"][CONSENT_LABEL],
        format!("res-{suffix}/w").as_str()
    );
    assert_eq!(
        c["Config"]["Healthcheck"]["Test"],
        serde_json::json!(["CMD", "true"])
    );
    let hc = &c["HostConfig"];
    assert_eq!(hc["Init"], true);
    assert_eq!(hc["RestartPolicy"]["Name"], "unless-stopped");
    assert_eq!(hc["Memory"], 512 * MI);
    assert_eq!(hc["MemorySwap"], 1i64 << 30, "above the new memory: kept");
    assert_eq!(
        (hc["CpuQuota"].as_i64(), hc["CpuPeriod"].as_i64()),
        (Some(25_000), Some(100_000))
    );
    assert_eq!(hc["NanoCpus"], 0, "--cpus gave way to the quota");
    assert_eq!(hc["NetworkMode"], net.as_str());
    let networks = &c["NetworkSettings"]["Networks"];
    let aliases = |n: &str| {
        networks[n]["Aliases"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    assert!(aliases(&net).contains(&"worker".into()), "{networks}");
    assert!(aliases(&other_net).contains(&"extra".into()), "{networks}");
    assert!(
        !aliases(&net).contains(&old_id[..12].into()),
        "the old short ID is no alias of the new one"
    );
    assert_eq!(
        docker_ok(&["exec", &name, "cat", "/data/f"]),
        "kept",
        "the anonymous volume came along"
    );
    // What the engine reads of it now: no drift left.
    let info = engine.inspect(&name).await.unwrap().unwrap();
    assert_eq!(info.id, new_id);
    assert!(
        resources::drift(&declared, &info).is_empty(),
        "{:?}",
        resources::drift(&declared, &info)
    );
    // The health check runs.
    let deadline = Instant::now() + Duration::from_secs(8);
    loop {
        let health = engine.inspect(&name).await.unwrap().unwrap().health;
        if health.as_deref() == Some("healthy") {
            break;
        }
        assert!(Instant::now() < deadline, "not healthy in time: {health:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A `<name>-wro-new` of someone else: refused before anything is touched.
    docker_ok(&[
        "create",
        "--name",
        &temp,
        "--label",
        "team=other",
        WORKER_IMAGE,
    ]);
    let refused = engine
        .recreate(&name, &declared, Duration::from_secs(10))
        .await;
    assert!(
        matches!(&refused, Err(RuntimeError::Refused { message, .. }) if message.contains("not a leftover")),
        "{refused:?}"
    );
    assert_eq!(inspect(&name)["Id"], new_id.as_str());
    assert_eq!(inspect(&name)["State"]["Running"], true);
    docker_ok(&["rm", "-f", &temp]);

    // Not there: NotFound.
    assert!(matches!(
        engine
            .update_resources(
                &format!("{name}-missing"),
                Limits {
                    memory: Some(MI << 9),
                    ..Default::default()
                }
            )
            .await,
        Err(RuntimeError::NotFound(_))
    ));
    assert!(matches!(
        engine
            .recreate(&format!("{name}-missing"), &declared, Duration::ZERO)
            .await,
        Err(RuntimeError::NotFound(_))
    ));
    // The old container's anonymous volume is now the new one's: removed at the end.
    cleanup.containers.push(new_id);
    eprintln!("took {:?}", started.elapsed());
}

/// A container started with `--rm` on the host network: it removes itself when the recreate
/// stops it, and the new one takes the host's name as the old one did.
#[tokio::test(flavor = "multi_thread")]
async fn recreate_of_a_self_removing_host_network_container() {
    stack();
    let engine = DockerEngine::connect()
        .await
        .expect("the stack's engine answers");
    let name = format!("wro-res-rm-{}", unique_suffix());
    let _cleanup = Cleanup {
        containers: vec![name.clone(), format!("{name}{}", resources::NEW_SUFFIX)],
        networks: Vec::new(),
        volumes: Vec::new(),
    };
    let label = format!("{CONSENT_LABEL}=res/rm");
    let old_id = docker_ok(&[
        "run",
        "-d",
        "--rm",
        "--name",
        &name,
        "--label",
        &label,
        "--network",
        "host",
        "--init",
        "--entrypoint",
        "sleep",
        WORKER_IMAGE,
        "3600",
    ]);
    let declared = Declared {
        nofile: Some((256, 256)),
        ..Default::default()
    };
    let new_id = recreate(&engine, &name, &declared, &old_id).await;
    let c = inspect(&name);
    assert_eq!(c["Id"], new_id.as_str());
    assert_eq!(c["State"]["Running"], true);
    assert_eq!(c["HostConfig"]["AutoRemove"], true);
    assert_eq!(c["HostConfig"]["NetworkMode"], "host");
    assert_eq!(
        c["Config"]["Hostname"],
        docker_ok(&["exec", &name, "hostname"]).as_str()
    );
    let info = engine.inspect(&name).await.unwrap().unwrap();
    assert_eq!(info.nofile_limit, Some((256, 256)));
}
