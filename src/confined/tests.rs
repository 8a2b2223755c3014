//! The read API against hostile trees: symlinked directories, FIFOs, devices, size caps,
//! tails, missing paths and listing truncation.

use std::{
    fs::File,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
};

use k8s_openapi::jiff::Timestamp;
use rustix::fs::{FileType, Mode, CWD};

use super::*;

fn mkfifo(path: &Path) {
    rustix::fs::mknodat(CWD, path, FileType::Fifo, Mode::from_raw_mode(0o640), 0).unwrap();
}

fn names(listing: &Listing) -> Vec<(String, EntryKind)> {
    match listing {
        Listing::Missing => panic!("missing"),
        Listing::Present { entries, .. } => {
            entries.iter().map(|e| (e.name.clone(), e.kind)).collect()
        }
    }
}

#[test]
fn confine_refuses_escapes() {
    let root = Path::new("/shared");
    assert_eq!(
        confine(root, "pipes/in").unwrap(),
        Path::new("/shared/pipes/in")
    );
    assert_eq!(
        confine(root, "./logs/a.log").unwrap(),
        Path::new("/shared/logs/a.log")
    );
    for bad in ["/etc/passwd", "../etc/passwd", "a/../../b", "", ".", "a\0b"] {
        assert!(
            matches!(confine(root, bad), Err(FsError::NotRelative(_))),
            "{bad:?}"
        );
    }
}

#[test]
fn listing_classifies_without_following() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let dir = root.join("tasks/w/active");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("a.json"), b"{}").unwrap();
    std::fs::write(dir.join("empty.json"), b"").unwrap();
    std::fs::create_dir(dir.join("x.json")).unwrap();
    std::fs::write(dir.join("x.json/inner.json"), b"{}").unwrap();
    symlink("/etc/passwd", dir.join("passwd.json")).unwrap();
    symlink("/etc", dir.join("etc")).unwrap();
    mkfifo(&dir.join("pipe.json"));

    let listing = list_dir(root, &dir, 100).unwrap();
    assert_eq!(
        names(&listing),
        vec![
            ("a.json".to_string(), EntryKind::File),
            ("empty.json".to_string(), EntryKind::File),
            ("etc".to_string(), EntryKind::Symlink),
            ("passwd.json".to_string(), EntryKind::Symlink),
            ("pipe.json".to_string(), EntryKind::Fifo),
            ("x.json".to_string(), EntryKind::Dir),
        ]
    );
    let Listing::Present { entries, truncated } = &listing else {
        unreachable!()
    };
    assert!(!truncated);
    let link = entries.iter().find(|e| e.name == "passwd.json").unwrap();
    assert_eq!(link.link_target.as_deref(), Some("/etc/passwd"));
    assert_eq!(link.path, dir.join("passwd.json"));
    let fifo = entries.iter().find(|e| e.name == "pipe.json").unwrap();
    assert_eq!(fifo.mode_string(), "prw-r-----");
    assert_eq!(fifo.octal_mode(), "0640");
    assert!(entries[0].modified.is_some());

    // Capped listings say so.
    let Listing::Present { entries, truncated } = list_dir(root, &dir, 2).unwrap() else {
        unreachable!()
    };
    assert!(truncated);
    assert_eq!(entries.len(), 2);
}

#[test]
fn missing_directories_are_an_answer() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    assert_eq!(
        list_dir(root, &root.join("tasks/w/active"), 10).unwrap(),
        Listing::Missing
    );
    assert_eq!(
        list_dir(&root.join("nope"), &root.join("nope/x"), 10).unwrap(),
        Listing::Missing
    );
    assert_eq!(stat(root, &root.join("pipes/in")).unwrap(), None);
    assert!(matches!(
        read_file(root, &root.join("a/b.json"), 10),
        Err(FsError::Missing(_))
    ));
}

#[test]
fn symlinked_directories_are_never_entered() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    std::fs::create_dir_all(root.join("tasks")).unwrap();
    symlink("/etc", root.join("tasks/w")).unwrap();
    let err = list_dir(root, &root.join("tasks/w"), 10).unwrap_err();
    assert!(
        matches!(&err, FsError::Symlink { target: Some(t), .. } if t == "/etc"),
        "{err:?}"
    );
    let err = read_file(root, &root.join("tasks/w/passwd"), 1 << 20).unwrap_err();
    assert_eq!(err.reason(), "symlink");
    let err = stat(root, &root.join("tasks/w/passwd")).unwrap_err();
    assert_eq!(err.reason(), "symlink");
    // A file where a directory should be.
    std::fs::write(root.join("locks"), b"").unwrap();
    let err = list_dir(root, &root.join("locks"), 10).unwrap_err();
    assert!(matches!(
        err,
        FsError::WrongKind {
            kind: EntryKind::File,
            expected: EntryKind::Dir,
            ..
        }
    ));
}

#[test]
fn paths_outside_the_root_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("shared");
    std::fs::create_dir_all(&root).unwrap();
    for p in [
        PathBuf::from("/etc/passwd"),
        root.join("../shared/x"),
        tmp.path().join("other"),
    ] {
        assert!(
            matches!(read_file(&root, &p, 100), Err(FsError::Outside { .. })),
            "{p:?}"
        );
    }
    assert!(matches!(
        list_dir(&root, Path::new("/etc"), 10),
        Err(FsError::Outside { .. })
    ));
}

#[test]
fn reads_only_regular_files() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    std::fs::write(root.join("ok.json"), br#"{"id":"t1"}"#).unwrap();
    std::fs::write(root.join("empty.json"), b"").unwrap();
    symlink("/etc/passwd", root.join("passwd.json")).unwrap();
    std::fs::create_dir(root.join("x.json")).unwrap();
    mkfifo(&root.join("fifo.json"));

    let ok = read_file(root, &root.join("ok.json"), 1024).unwrap();
    assert_eq!(ok.bytes, br#"{"id":"t1"}"#);
    assert_eq!(ok.size, 11);
    assert!(!ok.truncated);
    let empty = read_file(root, &root.join("empty.json"), 1024).unwrap();
    assert!(empty.bytes.is_empty());

    let err = read_file(root, &root.join("passwd.json"), 1 << 20).unwrap_err();
    assert!(
        matches!(&err, FsError::Symlink { target: Some(t), .. } if t == "/etc/passwd"),
        "{err:?}"
    );
    assert!(err.to_string().contains("not followed"));
    assert!(matches!(
        read_tail(root, &root.join("passwd.json"), 100),
        Err(FsError::Symlink { .. })
    ));
    assert!(matches!(
        read_file(root, &root.join("x.json"), 1024),
        Err(FsError::WrongKind {
            kind: EntryKind::Dir,
            ..
        })
    ));
    // A FIFO without a writer: refused at once, never opened (opening would block).
    assert!(matches!(
        read_file(root, &root.join("fifo.json"), 1024),
        Err(FsError::WrongKind {
            kind: EntryKind::Fifo,
            ..
        })
    ));
    assert!(matches!(
        read_file(root, root, 1024),
        Err(FsError::WrongKind { .. })
    ));
}

#[test]
fn huge_files_are_capped() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let huge = root.join("huge.log");
    // Sparse: 64 MiB of size without the disk use, then a last line.
    let f = File::create(&huge).unwrap();
    f.set_len(64 << 20).unwrap();
    drop(f);
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&huge)
            .unwrap();
        f.write_all(b"line one\nERROR: last line\n").unwrap();
    }
    let err = read_file(root, &huge, 1 << 20).unwrap_err();
    assert!(
        matches!(err, FsError::TooLarge { size, limit, .. } if size > 64 << 20 && limit == 1 << 20)
    );
    // The last 17 bytes are exactly the last line: kept whole.
    let tail = read_tail(root, &huge, 17).unwrap();
    assert_eq!(tail.bytes.len(), 17);
    assert!(tail.truncated);
    assert!(!tail.starts_mid_line);
    assert_eq!(tail.last_lines(5), vec!["ERROR: last line".to_string()]);
    // One byte less cuts the line: the partial line is dropped.
    let tail = read_tail(root, &huge, 16).unwrap();
    assert!(tail.starts_mid_line);
    assert!(tail.last_lines(5).is_empty());
    let tail = read_tail(root, &huge, 30).unwrap();
    assert_eq!(tail.last_lines(5), vec!["ERROR: last line".to_string()]);

    let small = root.join("small.log");
    std::fs::write(&small, b"a\nb\r\nc\n").unwrap();
    let tail = read_tail(root, &small, 1024).unwrap();
    assert!(!tail.truncated);
    assert_eq!(tail.last_lines(2), vec!["b".to_string(), "c".to_string()]);
    assert_eq!(tail.last_lines(10).len(), 3);
}

#[test]
fn stat_reports_the_final_entry_as_is() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    std::fs::create_dir(root.join("pipes")).unwrap();
    mkfifo(&root.join("pipes/in"));
    symlink("/etc/passwd", root.join("pipes/out")).unwrap();
    let e = stat(root, &root.join("pipes/in")).unwrap().unwrap();
    assert_eq!(e.kind, EntryKind::Fifo);
    let e = stat(root, &root.join("pipes/out")).unwrap().unwrap();
    assert_eq!(e.kind, EntryKind::Symlink);
    assert_eq!(e.link_target.as_deref(), Some("/etc/passwd"));
    assert_eq!(e.age_seconds(Timestamp::UNIX_EPOCH), 0);
}

#[tokio::test]
async fn reasons_are_the_short_labels_status_and_evidence_show() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    std::fs::write(root.join("big"), [b'x'; 10]).unwrap();
    symlink("/etc", root.join("link")).unwrap();
    let reason = |r: Result<FileContent>| r.unwrap_err().reason();
    assert_eq!(reason(read_file(root, &root.join("gone"), 1)), "missing");
    assert_eq!(
        reason(read_file(root, Path::new("/etc/passwd"), 1)),
        "outside"
    );
    assert_eq!(
        reason(read_file(root, &root.join("link/passwd"), 1)),
        "symlink"
    );
    assert_eq!(reason(read_file(root, &root.join("big"), 1)), "tooLarge");
    assert_eq!(reason(read_file(root, root, 1)), "wrongKind");
    assert_eq!(confine(root, "..").unwrap_err().reason(), "notConfined");
    // The blocking task itself failing is an I/O failure to the caller, typed end to end.
    let panicked = crate::blocking::try_run(|| -> Result<()> { panic!("reader died") }).await;
    let err = panicked.unwrap_err();
    assert_eq!(err.reason(), "io");
    assert!(err.to_string().starts_with("blocking task failed"), "{err}");
}

#[test]
fn counting_skips_hidden_names_stops_at_the_cap_and_follows_no_symlink() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let dir = root.join("tasks/w/pending");
    std::fs::create_dir_all(&dir).unwrap();
    for i in 0..5 {
        std::fs::write(dir.join(format!("t{i}.json")), b"{}").unwrap();
    }
    std::fs::write(dir.join(".t9.json.tmp"), b"{").unwrap();
    assert_eq!(count_entries(root, &dir, 100).unwrap(), Some((5, false)));
    assert_eq!(count_entries(root, &dir, 5).unwrap(), Some((5, false)));
    assert_eq!(count_entries(root, &dir, 3).unwrap(), Some((3, true)));
    assert_eq!(
        count_entries(root, &root.join("tasks/w/active"), 3).unwrap(),
        None
    );
    // A symlinked directory is refused, not counted through.
    let outside = tempfile::tempdir().unwrap();
    symlink(outside.path(), root.join("tasks/w/staged")).unwrap();
    assert!(count_entries(root, &root.join("tasks/w/staged"), 3).is_err());
}
