use super::*;

fn props(entries: &[(&str, Prop)]) -> Props {
    entries
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

fn text(s: &str) -> Prop {
    Prop::Text(s.into())
}

/// A unit killed by the OOM killer under `MemoryMax=64M`, as systemd 252 reports it.
fn oom_killed() -> UnitInfo {
    let unit = props(&[
        ("LoadState", text("loaded")),
        ("ActiveState", text("failed")),
        ("SubState", text("failed")),
    ]);
    let service = props(&[
        ("Result", text("oom-kill")),
        ("ExecMainStatus", Prop::Signed(9)),
        ("MainPID", Prop::Unsigned(0)),
        ("NRestarts", Prop::Unsigned(2)),
        (
            "ExecMainStartTimestamp",
            Prop::Unsigned(1_795_000_000_000_000),
        ),
        (
            "ExecMainExitTimestamp",
            Prop::Unsigned(1_795_000_030_500_000),
        ),
        (
            "Environment",
            Prop::Texts(vec![
                "WORKER_NAME=marie".into(),
                "WORKERRECOVERY_WORKER=team-a/marie".into(),
            ]),
        ),
        ("MemoryMax", Prop::Unsigned(64 << 20)),
        ("MemoryCurrent", Prop::Unsigned(u64::MAX)),
        ("LimitNOFILESoft", Prop::Unsigned(1024)),
    ]);
    UnitInfo::from_props("agent-worker-marie.service", &unit, &service)
}

#[test]
fn an_oom_killed_unit_reads_with_its_result_limit_and_times() {
    let u = oom_killed();
    assert_eq!(u.active_state, ActiveState::Failed);
    assert_eq!(u.result, ServiceResult::OomKill);
    assert_eq!((u.exec_main_status, u.main_pid, u.n_restarts), (9, None, 2));
    assert_eq!(u.memory_max, Some(64 << 20));
    assert_eq!(u.memory_current, None, "u64::MAX: not accounted");
    assert_eq!(u.nofile_limit, Some(1024));
    assert_eq!(
        u.exited_at.unwrap().as_millisecond() - u.started_at.unwrap().as_millisecond(),
        30_500
    );
    assert!(u.exists() && !u.running());
}

#[test]
fn consent_is_the_last_consent_variable_of_the_environment() {
    let mut u = oom_killed();
    assert_eq!(u.consent(), Some("team-a/marie"));
    u.environment
        .push("WORKERRECOVERY_WORKER=team-b/other".into());
    assert_eq!(
        u.consent(),
        Some("team-b/other"),
        "systemd: the last one wins"
    );
    u.environment = vec!["WORKERRECOVERY_WORKERX=team-a/marie".into()];
    assert_eq!(u.consent(), None, "another variable is no consent");
}

#[test]
fn an_unknown_unit_and_missing_properties_read_as_absent() {
    let unit = props(&[
        ("LoadState", text("not-found")),
        ("ActiveState", text("inactive")),
    ]);
    let u = UnitInfo::from_props("nope.service", &unit, &Props::new());
    assert!(!u.exists());
    assert_eq!(u.active_state, ActiveState::Inactive);
    assert_eq!(u.result, ServiceResult::Other(String::new()));
    assert_eq!(
        (u.started_at, u.memory_max, u.consent(), u.job),
        (None, None, None, None)
    );
    // A queued job, and none (id 0).
    let with_job = |id| props(&[("LoadState", text("loaded")), ("Job", Prop::Unsigned(id))]);
    assert_eq!(
        UnitInfo::from_props("a.service", &with_job(7), &Props::new()).job,
        Some(7)
    );
    assert_eq!(
        UnitInfo::from_props("a.service", &with_job(0), &Props::new()).job,
        None
    );
}

#[test]
fn states_in_transition_are_known() {
    assert!(ActiveState::parse("activating").in_transition());
    assert!(ActiveState::parse("deactivating").in_transition());
    assert!(!ActiveState::parse("active").in_transition());
    assert_eq!(ActiveState::parse("weird"), ActiveState::Unknown);
    assert_eq!(ServiceResult::parse("core-dump"), ServiceResult::CoreDump);
    assert_eq!(ServiceResult::parse("watchdog"), ServiceResult::Watchdog);
}
