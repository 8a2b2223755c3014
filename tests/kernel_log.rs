//! The kernel log as the operator reads it, without `dmesg`: `syslog(2)` on this host (the
//! tests run as root, with `CAP_SYSLOG`) gives a line just written to `/dev/kmsg`, stamped as
//! `dmesg` stamps it.

use worker_recovery_operator::diagnose::host::read_ring_buffer;

#[test]
fn the_ring_buffer_is_read_with_the_syscall() {
    let marker = format!("wro-kernel-log-test-{}", std::process::id());
    std::fs::write("/dev/kmsg", format!("{marker}\n")).expect("root writes /dev/kmsg");
    let log = read_ring_buffer().expect("syslog(2) as root");
    let line = log
        .lines()
        .find(|l| l.contains(&marker))
        .unwrap_or_else(|| panic!("{marker} not in the {} bytes read", log.len()));
    assert!(line.starts_with('['), "stamped, without the level: {line}");
}
