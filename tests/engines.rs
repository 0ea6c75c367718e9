//! The backup engines on real file systems: sources in the test's temporary
//! directory, backups on a loop-mounted ext4 disk image, compared with
//! independent tools (GNU tar and gzip, borg) where there is one.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::disk::{fake_backup, require_root, sh, LoopDisk};
use common::tree::{self, assert_same, Compare};
use common::{Run, TestEnv};

/// A test's set-up: a temporary root and a mounted ext4 disk in it.
/// Field order is drop order: the disk is unmounted before the root goes.
struct Bench {
    /// Held for its `Drop`: unmount and detach.
    _disk: LoopDisk,
    env: TestEnv,
}

impl Bench {
    fn new(mb: u64) -> Bench {
        require_root();
        let env = TestEnv::new();
        let disk = LoopDisk::mounted(env.root(), mb, &env.path("disk"));
        Bench { _disk: disk, env }
    }

    fn disk(&self, rel: &str) -> PathBuf {
        self.env.path("disk").join(rel)
    }

    fn tb(&self, args: &[&str]) -> Run {
        self.env.cli(args)
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn json(run: &Run) -> serde_json::Value {
    serde_json::from_str(run.stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {run:?}"))
}

#[test]
fn torture_tree_round_trips_through_snapshot() {
    let b = Bench::new(256);
    let src = b.env.path("src");
    tree::torture(&src);
    let dest = b.disk("2026-11-01_10-00-00");
    let run = b.tb(&["snapshot", "--json", "--dest", s(&dest), &format!("{}/", src.display())]).ok();
    let sum = json(&run);
    assert_eq!(sum["skipped"], 0, "{run:?}");
    assert_eq!(sum["specials"], 2, "the FIFO and the device node are recreated: {run:?}");
    assert!(!b.disk("2026-11-01_10-00-00.partial").exists());

    assert_same(&src, &dest, &Compare::snapshot());
    // The hole stayed a hole: the 1 GiB file takes a few blocks on a 256 MiB disk.
    assert!(fs::metadata(dest.join("sparse")).unwrap().blocks() < 64, "sparse file was filled in");
    // Root of the snapshot takes the source directory's metadata too.
    let (ms, md) = (fs::metadata(&src).unwrap(), fs::metadata(&dest).unwrap());
    assert_eq!((ms.mode(), ms.mtime(), ms.mtime_nsec()), (md.mode(), md.mtime(), md.mtime_nsec()));

    let verify = b.tb(&["verify", s(&dest)]).ok();
    assert!(verify.stdout.contains("intact"), "{verify:?}");
}

#[test]
fn incremental_links_unchanged_files_and_leaves_the_previous_snapshot_alone() {
    let b = Bench::new(128);
    let src = b.env.path("src");
    for d in 0..10 {
        fs::create_dir_all(src.join(format!("d{d}"))).unwrap();
        for f in 0..20 {
            fs::write(src.join(format!("d{d}/f{f}")), tree::text(d * 100 + f, 2000 + f as usize * 37))
                .unwrap();
        }
    }
    let first = b.disk("2026-11-01_10-00-00_Sauvegarde_h");
    let second = b.disk("2026-11-02_10-00-00_Sauvegarde_h");
    let srcarg = format!("{}/", src.display());
    b.tb(&["snapshot", "--dest", s(&first.join("Donnees")), "--link-dest", "auto", &srcarg]).ok();
    let before = tree::fingerprint(&first);

    // Same size, new content; appended; new mode; added; removed.
    fs::write(src.join("d1/f1"), tree::text(999, fs::metadata(src.join("d1/f1")).unwrap().len() as usize))
        .unwrap();
    fs::OpenOptions::new()
        .append(true)
        .open(src.join("d2/f2"))
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"more"))
        .unwrap();
    sh("chmod", &["600", s(&src.join("d3/f3"))]);
    fs::write(src.join("d4/new"), b"new file").unwrap();
    fs::remove_file(src.join("d5/f5")).unwrap();

    let run = b
        .tb(&["snapshot", "--json", "--dest", s(&second.join("Donnees")), "--link-dest", "auto", &srcarg])
        .ok();
    let sum = json(&run);
    assert_eq!(sum["link_dest"], s(&first.join("Donnees")), "auto found the previous Donnees: {run:?}");
    assert_eq!(sum["copied_files"], 4, "{run:?}");
    assert_eq!(sum["linked_files"], 196, "{run:?}");

    let ino = |root: &Path, rel: &str| fs::symlink_metadata(root.join("Donnees").join(rel)).unwrap().ino();
    for rel in ["d0/f0", "d1/f2", "d9/f19", "d5/f4"] {
        assert_eq!(ino(&first, rel), ino(&second, rel), "{rel} unchanged: one inode");
    }
    for rel in ["d1/f1", "d2/f2", "d3/f3"] {
        assert_ne!(ino(&first, rel), ino(&second, rel), "{rel} changed: its own copy");
    }
    assert!(!second.join("Donnees/d5/f5").exists());
    assert_same(&src, &second.join("Donnees"), &Compare::snapshot());
    assert!(tree::fingerprint(&first) == before, "the previous snapshot changed");
    b.tb(&["verify", s(&first.join("Donnees"))]).ok();
    b.tb(&["verify", s(&second.join("Donnees"))]).ok();
}

#[test]
fn killed_snapshot_leaves_only_partial_which_nothing_mistakes_for_a_backup() {
    let b = Bench::new(512);
    let src = b.env.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("small"), b"small").unwrap();
    let complete = b.disk("2026-11-01_10-00-00");
    b.tb(&["snapshot", "--dest", s(&complete), &format!("{}/", src.display())]).ok();
    // Enough data that the copy is still running when it is killed.
    for i in 0..3 {
        sh(
            "dd",
            &["if=/dev/zero", &format!("of={}/big{i}", src.display()), "bs=1M", "count=100", "status=none"],
        );
    }
    let killed = b.disk("2026-11-02_10-00-00");
    let partial = b.disk("2026-11-02_10-00-00.partial");
    let mut child = b
        .env
        .cmd(&["snapshot", "-j", "1", "--dest", s(&killed), &format!("{}/", src.display())])
        .spawn()
        .unwrap();
    let t = Instant::now();
    while !partial.join("big0").exists() && t.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(partial.is_dir(), "the partial folder is there");
    assert!(!killed.exists(), "never renamed: the run did not finish");

    // `--link-dest auto` skips it and takes the complete one.
    let next = b.disk("2026-11-03_10-00-00");
    let run =
        b.tb(&["snapshot", "--dry-run", "--json", "--dest", s(&next), "--link-dest", "auto", s(&src)]).ok();
    assert_eq!(json(&run)["link_dest"], s(&complete), "{run:?}");
    // prune sees an interrupted backup, and never counts it as the newest.
    let run = b.tb(&["prune", "--dry-run", "--json", s(&b.disk("")), "--keep-last", "1"]).ok();
    let out = json(&run);
    assert_eq!(out["deleted"][0]["name"], "2026-11-02_10-00-00.partial", "{run:?}");
    assert_eq!(out["deleted"][0]["reason"], "interrupted backup");
    assert_eq!(out["kept"], serde_json::json!(["2026-11-01_10-00-00"]));

    // The same run again removes the leftover and completes.
    let run = b.tb(&["snapshot", "--dest", s(&killed), &format!("{}/", src.display())]).ok();
    assert!(run.stderr.contains("left by an interrupted run"), "{run:?}");
    assert!(!partial.exists());
    assert_same(&src, &killed, &Compare::snapshot());
}

#[test]
fn partial_being_written_is_left_alone() {
    let b = Bench::new(64);
    fs::create_dir_all(b.disk("2026-11-01_10-00-00")).unwrap();
    let busy = b.disk("2026-11-02_10-00-00.partial");
    fs::create_dir_all(&busy).unwrap();
    // This test process holds the lock a running snapshot would hold.
    let fd = fs::File::open(&busy).unwrap();
    let _lock = nix::fcntl::Flock::lock(fd, nix::fcntl::FlockArg::LockExclusiveNonblock).unwrap();
    let run = b.tb(&["prune", s(&b.disk("")), "--keep-last", "1"]).ok();
    assert!(run.stdout.contains("left 2026-11-02_10-00-00.partial: being written"), "{run:?}");
    assert!(busy.is_dir());
    let run = b.tb(&["snapshot", "--dest", s(&b.disk("2026-11-02_10-00-00")), s(&b.env.config_path())]);
    run.fails_with(&["being written by another running process"]);
}

#[test]
fn symlinks_planted_on_the_disk_are_not_written_through() {
    let b = Bench::new(64);
    let src = b.env.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("secret"), b"data").unwrap();
    let outside = b.env.path("outside");
    fs::create_dir_all(&outside).unwrap();

    // A stale .partial that is a symlink to a directory off the disk.
    std::os::unix::fs::symlink(&outside, b.disk("2026-11-01_10-00-00.partial")).unwrap();
    b.tb(&["snapshot", "--dest", s(&b.disk("2026-11-01_10-00-00")), s(&src)]).ok();
    assert!(b.disk("2026-11-01_10-00-00/src/secret").is_file());
    assert!(!b.disk("2026-11-01_10-00-00").is_symlink());
    assert_eq!(fs::read_dir(&outside).unwrap().count(), 0, "nothing written outside the disk");

    // A folder on the way to the destination replaced by a symlink.
    std::os::unix::fs::symlink(&outside, b.disk("backups")).unwrap();
    b.tb(&["snapshot", "--dest", s(&b.disk("backups/2026-11-02_10-00-00")), s(&src)])
        .fails_with(&["symbolic link", "backups"]);
    b.tb(&["archive", "-o", s(&b.disk("backups/a.tar.gz")), s(&src)]).fails_with(&["symbolic link"]);
    assert_eq!(fs::read_dir(&outside).unwrap().count(), 0, "nothing written outside the disk");

    // prune deletes the symlink's target never: a dated symlink is not a backup.
    std::os::unix::fs::symlink(&outside, b.disk("2026-10-01_00-00-00")).unwrap();
    fs::write(outside.join("precious"), b"x").unwrap();
    b.tb(&["prune", s(&b.disk("")), "--keep-last", "1"]).ok();
    assert!(outside.join("precious").exists());
    assert!(b.disk("2026-10-01_00-00-00").is_symlink());
}

#[test]
fn archive_is_read_by_gnu_tar_and_gzip() {
    let b = Bench::new(128);
    let src = b.env.path("src");
    fs::create_dir_all(src.join("tree/empty")).unwrap();
    fs::create_dir_all(src.join("logs")).unwrap();
    // Several gzip members (blocks of 1 MiB), names tar must extend.
    fs::write(src.join("tree/big.txt"), tree::text(7, 5 << 20)).unwrap();
    let long = "n".repeat(150);
    fs::write(src.join("tree").join(&long), b"long name").unwrap();
    fs::write(src.join("tree").join(std::ffi::OsStr::new("new\nline")), b"x").unwrap();
    fs::write(src.join("tree/cache.tmp"), b"excluded").unwrap();
    std::os::unix::fs::symlink("big.txt", src.join("tree/link")).unwrap();
    fs::hard_link(src.join("tree/big.txt"), src.join("tree/big-again.txt")).unwrap();
    fs::write(src.join("logs/a.log"), b"a").unwrap();
    fs::write(src.join("logs/b.log"), b"b").unwrap();
    fs::write(src.join("logs/c.txt"), b"not matched").unwrap();
    fs::write(src.join("single"), b"one file").unwrap();
    sh("chown", &["-h", "4321:8765", s(&src.join("tree/link"))]);

    let out = b.disk("server.tar.gz");
    let glob = format!("{}/logs/*.log", src.display());
    let run = b
        .tb(&[
            "archive",
            "--json",
            "-o",
            s(&out),
            s(&src.join("tree")),
            s(&src.join("single")),
            "--glob",
            &glob,
            "--exclude",
            "*.tmp",
        ])
        .ok();
    assert_eq!(json(&run)["files"], 6, "{run:?}");
    assert!(!b.disk("server.tar.gz.partial").exists());
    sh("gzip", &["-t", s(&out)]);
    let listing = sh("tar", &["tzf", s(&out)]);
    assert!(!listing.contains("cache.tmp"), "{listing}");
    assert!(!listing.contains("c.txt"), "{listing}");

    let x = b.env.path("extracted");
    fs::create_dir_all(&x).unwrap();
    sh("tar", &["xzf", s(&out), "-C", s(&x)]);
    let base = x.join(src.strip_prefix("/").unwrap());
    fs::remove_file(src.join("tree/cache.tmp")).unwrap();
    let tar = Compare { nanoseconds: false, xattrs: false, ignore: Vec::new() };
    assert_same(&src.join("tree"), &base.join("tree"), &tar);
    assert_eq!(fs::read(base.join("single")).unwrap(), b"one file");
    assert_eq!(fs::read(base.join("logs/a.log")).unwrap(), b"a");
    assert!(base.join("logs/b.log").exists() && !base.join("logs/c.txt").exists());
    b.tb(&["archive", "-o", s(&out), s(&src)]).fails_with(&["already exists"]);
}

fn free_bytes(p: &Path) -> u64 {
    let s = nix::sys::statvfs::statvfs(p).unwrap();
    s.blocks_available() as u64 * s.fragment_size() as u64
}

#[test]
fn prune_frees_space_oldest_first_and_never_the_newest() {
    let b = Bench::new(96);
    let d = b.disk("");
    let names = [
        "2026-10-01_00-00-00",
        "2026-10-02_00-00-00_x",
        "2026-10-03_12-00-00",
        "2026-10-04_00-00-00",
        "2026-10-05_00-00-00",
    ];
    for n in names {
        fake_backup(&d, n, 14);
    }
    fs::create_dir_all(d.join("not-a-backup")).unwrap();
    sh("sync", &[]);
    let before = free_bytes(&d);
    assert!(before < 30 << 20, "the disk is nearly full: {before}");

    let run = b.tb(&["prune", s(&d), "--min-free", "30MiB"]).ok();
    let gone: Vec<&str> = names.iter().copied().filter(|n| !d.join(n).exists()).collect();
    assert_eq!(gone, &names[..2], "the two oldest, no more: {run:?}");
    assert!(free_bytes(&d) >= 30 << 20);
    assert!(run.stdout.contains("deleted 2026-10-01_00-00-00 (oldest, to free space"), "{run:?}");
    assert!(run.stdout.contains("free space was"), "{run:?}");

    // Asking for more than the disk can give: all but the newest go, and it says so.
    let run = b.tb(&["prune", s(&d), "--min-free", "95%"]);
    assert_eq!(run.code, 5, "{run:?}");
    assert!(run.stderr.contains("cannot free"), "{run:?}");
    assert!(d.join(names[4]).exists(), "the newest backup is never deleted");
    assert!(!d.join(names[3]).exists());
    assert!(d.join("not-a-backup").exists() && d.join("lost+found").exists());

    b.tb(&["prune", s(&d), "--min-free", "lots"]).fails_with(&["\"lots\""]);
    b.tb(&["prune", s(&d)]).fails_with(&["--min-free"]);
}

/// Dry-run decisions of `prune --keep-*` against those of borg itself, on
/// the same timestamps.
#[test]
fn keep_policy_keeps_exactly_what_borg_keeps() {
    let env = TestEnv::new();
    let dir = env.path("backups");
    let empty = env.path("empty");
    fs::create_dir_all(&empty).unwrap();
    // Irregular times over five months: several a day, gaps, month ends.
    let mut times = Vec::new();
    let mut t = chrono::NaiveDate::from_ymd_opt(2026, 6, 28).unwrap().and_hms_opt(23, 30, 0).unwrap();
    for i in 0..40u32 {
        times.push(t);
        let step = [5, 60 * 7, 60 * 26, 60 * 24 * 3, 60 * 24 * 9][(i * 7 % 5) as usize];
        t += chrono::Duration::minutes(step);
    }
    let repo = env.path("repo");
    let borg = |args: &[&str]| -> String {
        let out = Command::new("borg")
            .args(args)
            .env("BORG_BASE_DIR", env.path("borg-home"))
            .env("BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK", "yes")
            .env("TZ", "UTC")
            .output()
            .expect("borg (Debian package borgbackup) is installed by make test");
        assert!(out.status.success(), "borg {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    };
    borg(&["init", "-e", "none", s(&repo)]);
    for t in &times {
        let name = t.format("%Y-%m-%d_%H-%M-%S").to_string();
        fs::create_dir_all(dir.join(&name)).unwrap();
        let ts = t.format("%Y-%m-%dT%H:%M:%S").to_string();
        borg(&["create", "--timestamp", &ts, &format!("{}::{name}", s(&repo)), s(&empty)]);
    }
    let policies: [&[&str]; 4] = [
        &["--keep-daily", "7"],
        &["--keep-last", "3", "--keep-weekly", "4"],
        &["--keep-daily", "5", "--keep-weekly", "3", "--keep-monthly", "12"],
        &["--keep-monthly", "2", "--keep-yearly", "1"],
    ];
    for policy in policies {
        let mut args = vec!["prune", "--dry-run", "--list"];
        args.extend_from_slice(policy);
        args.push(s(&repo));
        let out = borg(&args);
        let mut borg_prunes: Vec<String> = out
            .lines()
            .filter_map(|l| l.strip_prefix("Would prune:"))
            .map(|rest| rest.split_whitespace().next().unwrap().to_owned())
            .collect();
        borg_prunes.sort();

        let mut ours = vec!["prune", "--dry-run", "--json", s(&dir)];
        ours.extend_from_slice(policy);
        let run = env.cli(&ours).ok();
        let mut deleted: Vec<String> = json(&run)["deleted"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["name"].as_str().unwrap().to_owned())
            .collect();
        deleted.sort();
        assert!(!borg_prunes.is_empty(), "the policy {policy:?} prunes something");
        assert_eq!(deleted, borg_prunes, "policy {policy:?}");
    }
}

#[test]
fn verify_reports_a_flipped_byte_a_deleted_file_and_an_extra_one() {
    let b = Bench::new(64);
    let src = b.env.path("src");
    fs::create_dir_all(src.join("sub")).unwrap();
    fs::write(src.join("sub/doc"), tree::text(5, 10_000)).unwrap();
    fs::write(src.join("gone"), b"soon deleted").unwrap();
    fs::create_dir_all(src.join("folder/inner")).unwrap();
    fs::write(src.join("folder/inner/deep"), b"deep").unwrap();
    let snap = b.disk("2026-11-01_10-00-00");
    b.tb(&["snapshot", "--dest", s(&snap), &format!("{}/", src.display())]).ok();
    b.tb(&["verify", s(&snap)]).ok();

    // One byte flipped in place, times put back: only the content tells.
    let doc = snap.join("sub/doc");
    let m = fs::metadata(&doc).unwrap();
    let mut bytes = fs::read(&doc).unwrap();
    bytes[4321] ^= 0x20;
    fs::write(&doc, &bytes).unwrap();
    tree::set_mtime(&doc, m.mtime(), m.mtime_nsec());
    fs::remove_file(snap.join("gone")).unwrap();
    fs::remove_dir_all(snap.join("folder")).unwrap();
    fs::write(snap.join("sub/intruder"), b"?").unwrap();

    let run = b.tb(&["verify", s(&snap)]);
    assert_eq!(run.code, 4, "{run:?}");
    assert!(run.stdout.contains("changed: sub/doc (content differs)"), "{run:?}");
    assert!(run.stdout.contains("missing: gone"), "{run:?}");
    assert!(run.stdout.contains("missing: folder\n"), "{run:?}");
    assert!(!run.stdout.contains("folder/"), "a missing folder is reported once: {run:?}");
    assert!(run.stdout.contains("extra: sub/intruder"), "{run:?}");
    assert!(run.stdout.contains("DAMAGED"), "{run:?}");
    b.tb(&["verify", s(&src)]).fails_with(&["not a snapshot made by tetras-back"]);
}

#[test]
fn unreadable_source_files_are_skipped_and_reported() {
    let b = Bench::new(64);
    let src = b.env.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("fine"), b"fine").unwrap();
    fs::create_dir_all(src.join("locked")).unwrap();
    fs::write(src.join("locked/inside"), b"x").unwrap();
    let dest = b.disk("2026-11-01_10-00-00");
    // Root reads everything: run as an unprivileged user, so that a
    // directory with mode 000 cannot be read.
    sh("chmod", &["000", s(&src.join("locked"))]);
    sh("chmod", &["755", b.env.root().to_str().unwrap(), s(&src)]);
    sh("chown", &["nobody", s(&b.disk(""))]);
    let out = Command::new("setpriv")
        .args([
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            common::BIN,
            "snapshot",
            "--dest",
            s(&dest),
            &format!("{}/", src.display()),
        ])
        .output()
        .unwrap();
    let run = Run::from(out);
    assert_eq!(run.code, 23, "partial: {run:?}");
    assert!(run.stderr.contains("locked"), "the unreadable directory is named: {run:?}");
    assert_eq!(fs::read(dest.join("fine")).unwrap(), b"fine", "everything else is copied");
}

/// Rewrites a snapshot's manifest in format 1, as tetras-back 0.1 wrote it:
/// sorted by whole path.
fn to_format_1(snap: &Path) {
    let path = snap.join(".tetras-back-manifest");
    let text = fs::read_to_string(&path).unwrap();
    let mut lines: Vec<&str> = text.lines().skip(1).collect();
    assert!(text.starts_with("tetras-back manifest 2\n"), "{text}");
    lines.sort_by_key(|l| l.rsplit('\t').next().unwrap().to_owned());
    fs::write(&path, format!("tetras-back manifest 1\n{}\n", lines.join("\n"))).unwrap();
}

#[test]
fn checksums_come_from_the_previous_manifest_in_either_format() {
    let b = Bench::new(64);
    let src = b.env.path("src");
    for d in ["a", "a/b", "a-b", "c"] {
        fs::create_dir_all(src.join(d)).unwrap();
        for f in 0..3 {
            fs::write(src.join(format!("{d}/f{f}")), format!("{d} {f}")).unwrap();
        }
    }
    let slash = format!("{}/", src.display());
    let first = b.disk("2026-11-01_10-00-00");
    b.tb(&["snapshot", "--dest", s(&first), &slash]).ok();
    to_format_1(&first);
    let verify = b.tb(&["verify", s(&first)]).ok();
    assert!(verify.stdout.contains("intact"), "a format-1 manifest is still read: {verify:?}");

    // A checksum of the old manifest made wrong: the next snapshot, which
    // links the file, trusts it, and its verify shows where it came from.
    let manifest = first.join(".tetras-back-manifest");
    let text = fs::read_to_string(&manifest).unwrap();
    let line = text.lines().find(|l| l.ends_with("\ta/b/f1")).unwrap();
    let hash = line.split('\t').nth(6).unwrap();
    fs::write(&manifest, text.replace(hash, &"0".repeat(64))).unwrap();
    let second = b.disk("2026-11-01_11-00-00");
    let run = b.tb(&["snapshot", "--json", "--dest", s(&second), "--link-dest", s(&first), &slash]).ok();
    assert_eq!(json(&run)["linked_files"], 12, "{run:?}");
    let verify = b.tb(&["verify", s(&second)]);
    assert_eq!(verify.code, 4, "{verify:?}");
    assert!(verify.stdout.contains("changed: a/b/f1 (content differs)"), "{verify:?}");
    assert_eq!(verify.stdout.matches("changed:").count(), 1, "{verify:?}");
    assert!(
        fs::read_to_string(second.join(".tetras-back-manifest"))
            .unwrap()
            .starts_with("tetras-back manifest 2\n"),
        "new snapshots write format 2"
    );

    // Format 2 is read the same way, directory by directory.
    let third = b.disk("2026-11-01_12-00-00");
    b.tb(&["snapshot", "--dest", s(&third), "--link-dest", s(&second), &slash]).ok();
    let verify = b.tb(&["verify", s(&third)]);
    assert!(verify.stdout.contains("changed: a/b/f1 (content differs)"), "{verify:?}");
}

/// Peak resident memory of a command, in KiB (GNU time).
fn peak_kib(args: &[&str]) -> u64 {
    let out =
        Command::new("/usr/bin/time").args(["-f", "peak %M"]).arg(common::BIN).args(args).output().unwrap();
    let run = Run::from(out);
    assert_eq!(run.code, 0, "{args:?}: {run:?}");
    let peak = run.stderr.lines().rev().find_map(|l| l.strip_prefix("peak ")).expect("GNU time's line");
    peak.trim().parse().unwrap()
}

#[test]
fn memory_does_not_grow_with_the_number_of_files() {
    require_root();
    let env = TestEnv::new();
    let src = env.path("src");
    // 100,000 files: the engines before format 2 held about 450 bytes a
    // file (some 50 MiB here); now a directory at a time.
    for d in 0..400 {
        let dir = src.join(format!("user{:02}/folder{d:03}", d / 40));
        fs::create_dir_all(&dir).unwrap();
        for f in 0..250 {
            fs::write(dir.join(format!("{f:04}.mail")), format!("message {d} {f}")).unwrap();
        }
    }
    // The same runs on 100 files: what the program itself takes (its
    // code, its threads), whatever the build.
    let small = env.path("small");
    for d in 0..4 {
        let dir = small.join(format!("folder{d}"));
        fs::create_dir_all(&dir).unwrap();
        for f in 0..25 {
            fs::write(dir.join(format!("{f:04}.mail")), format!("message {d} {f}")).unwrap();
        }
    }
    let runs = |src: &Path, at: &str| -> [u64; 3] {
        let slash = format!("{}/", src.display());
        let (first, second) =
            (env.path(&format!("{at}/2026-11-01_10-00-00")), env.path(&format!("{at}/2026-11-01_11-00-00")));
        fs::create_dir_all(env.path(at)).unwrap();
        let full = peak_kib(&["snapshot", "--dest", s(&first), &slash]);
        let incremental = peak_kib(&["snapshot", "--dest", s(&second), "--link-dest", s(&first), &slash]);
        [full, incremental, peak_kib(&["verify", s(&second)])]
    };
    let base = runs(&small, "b-small");
    let big = runs(&src, "b");
    // Held a file at a time, 100,000 files would take some 45 MiB more.
    let growth = 8 * 1024;
    for (i, what) in ["first snapshot", "incremental snapshot", "verify"].iter().enumerate() {
        eprintln!("{what}: peak {} KiB for 100,000 files, {} KiB for 100", big[i], base[i]);
        assert!(
            big[i] < base[i] + growth,
            "{what} peaked at {} KiB for 100,000 files, {} KiB for 100 (more than {growth} KiB of growth)",
            big[i],
            base[i]
        );
    }
}

#[test]
fn restore_gives_back_the_torture_tree_exactly_and_never_escapes() {
    let b = Bench::new(256);
    let src = b.env.path("src");
    tree::torture(&src);
    let folder = b.disk("2026-11-01_10-00-00");
    b.tb(&["snapshot", "--dest", s(&folder.join("Donnees")), &format!("{}/", src.display())]).ok();
    // Planted on the disk: a link out of the backup, which a restore must
    // copy as a link and never follow.
    fs::create_dir_all(folder.join("elsewhere")).unwrap();
    std::os::unix::fs::symlink("/etc", folder.join("elsewhere/planted")).unwrap();

    let to = b.env.path("restored");
    let run = b.tb(&["restore", s(&b.disk("")), "--from", "latest", "Donnees", "--to", s(&to)]).ok();
    assert!(run.stdout.contains("restored"), "{run:?}");
    let run =
        b.tb(&["restore", s(&b.disk("")), "elsewhere/planted", "elsewhere", "--to", s(&to), "--dry-run"]);
    assert!(run.code == 1 && run.stderr.contains("overlap"), "an entry given twice: {run:?}");
    b.tb(&["restore", s(&b.disk("")), "elsewhere", "--to", s(&to)]).ok();
    assert_eq!(fs::read_link(to.join("elsewhere/planted")).unwrap(), Path::new("/etc"), "restored as a link");
    assert!(!to.join("Donnees/.tetras-back-manifest").exists(), "the manifest is the backup's, not a file");
    assert_same(&src, &to.join("Donnees"), &Compare::exact());
    assert!(fs::metadata(to.join("Donnees/sparse")).unwrap().blocks() < 64, "holes stay holes");
    // An independent opinion: rsync, comparing checksums, hard links, ACLs
    // and extended attributes, finds nothing to do.
    let out = Command::new("rsync")
        .args([
            "-anHAXc",
            "--itemize-changes",
            &format!("{}/", src.display()),
            &format!("{}/", to.join("Donnees").display()),
        ])
        .output()
        .unwrap();
    let changes = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && changes.trim().is_empty(), "rsync sees differences: {changes}");

    // One file, by its path, below a directory that is not there yet: the
    // directories on the way take the backup's owner and mode.
    let one = b.env.path("one");
    b.tb(&["restore", s(&b.disk("")), "Donnees/a/b/c/big", "--to", s(&one)]).ok();
    assert_eq!(fs::read(one.join("Donnees/a/b/c/big")).unwrap(), fs::read(src.join("a/b/c/big")).unwrap());
    let c = fs::metadata(one.join("Donnees/a/b/c")).unwrap();
    assert_eq!((c.uid(), c.gid(), c.mode() & 0o7777), (2000, 2001, 0o750));

    // Already there: refused, all named, nothing written; --overwrite replaces.
    fs::write(to.join("Donnees/a/hard1"), b"changed since").unwrap();
    let run = b.tb(&["restore", s(&b.disk("")), "Donnees/a", "--to", s(&to)]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("already there") && run.stderr.contains("Donnees/a/hard1"), "{run:?}");
    assert!(run.stderr.contains("nothing was restored"), "{run:?}");
    assert_eq!(fs::read(to.join("Donnees/a/hard1")).unwrap(), b"changed since");
    b.tb(&["restore", s(&b.disk("")), "Donnees/a", "--to", s(&to), "--overwrite"]).ok();
    assert_same(&src.join("a"), &to.join("Donnees/a"), &Compare::exact());

    // Paths that leave the backup, a symlink in --to, and / without --in-place.
    for bad in ["../etc", "/etc/passwd", "Donnees/../../x"] {
        let run = b.tb(&["restore", s(&b.disk("")), bad, "--to", s(&one)]);
        assert_eq!(run.code, 1, "{bad}: {run:?}");
        assert!(run.stderr.contains("inside the backup"), "{bad}: {run:?}");
    }
    let trap = b.env.path("trap");
    fs::create_dir_all(&trap).unwrap();
    let outside = b.env.path("outside");
    fs::create_dir_all(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, trap.join("Donnees")).unwrap();
    let run = b.tb(&["restore", s(&b.disk("")), "Donnees/a/hard1", "--to", s(&trap), "--overwrite"]);
    assert_ne!(run.code, 0, "{run:?}");
    assert_eq!(fs::read_dir(&outside).unwrap().count(), 0, "nothing written through the link in --to");
    let run = b.tb(&["restore", s(&b.disk("")), "Donnees/a", "--to", "/"]);
    assert!(run.code == 1 && run.stderr.contains("--in-place"), "{run:?}");
}

/// Whoever owns `--to` may rename the folder an archive is extracted into
/// and put a symbolic link in its place while the restore runs: the files
/// still go into the folder the engine made (reached by its descriptor),
/// never through the link into a root-only folder elsewhere.
#[test]
fn an_archive_restore_cannot_be_redirected_by_the_owner_of_its_target() {
    let b = Bench::new(64);
    let tree = b.env.path("conf");
    fs::create_dir_all(tree.join("db")).unwrap();
    fs::write(tree.join("db/dump.sql"), "CREATE TABLE secrets;\n").unwrap();
    let folder = b.disk("2026-11-01_10-00-00");
    fs::create_dir_all(&folder).unwrap();
    let archive = folder.join("serveur.tar.gz");
    let made = b.env.cmd(&["archive", "-o", s(&archive), "db"]).current_dir(&tree).output().unwrap();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let victim = b.env.path("root-only");
    fs::create_dir_all(&victim).unwrap();
    fs::set_permissions(&victim, fs::Permissions::from_mode(0o700)).unwrap();
    let to = b.env.path("to");
    fs::create_dir_all(&to).unwrap();
    sh("chmod", &["755", b.env.root().to_str().unwrap()]);
    sh("chown", &["nobody:nogroup", s(&to)]);

    // The restore waits 3 s once its extraction folder exists.
    let child = b
        .env
        .cmd(&[
            "restore",
            s(&b.disk("")),
            "--from",
            "2026-11-01_10-00-00",
            "serveur.tar.gz/db",
            "--to",
            s(&to),
        ])
        .env("FAILPOINTS", "restore::staged=sleep(3000)")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let stage = loop {
        let found = fs::read_dir(&to)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.file_name().unwrap().to_string_lossy().starts_with(".tetras-back-restore."));
        if let Some(p) = found {
            break p;
        }
        assert!(Instant::now() < deadline, "no extraction folder appeared in {}", to.display());
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(fs::metadata(&stage).unwrap().mode() & 0o777, 0o700, "the extraction folder is root's only");
    // As the unprivileged owner of `--to` would.
    let attack = Command::new("setpriv")
        .args([
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            "sh",
            "-c",
            r#"mv "$1" "$2" && ln -s "$3" "$1""#,
        ])
        .args(["sh", s(&stage), s(&to.join("moved-away")), s(&victim)])
        .output()
        .unwrap();
    assert!(
        attack.status.success(),
        "the owner of --to moves the folder: {}",
        String::from_utf8_lossy(&attack.stderr)
    );
    let out = child.wait_with_output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{said}");
    assert_eq!(fs::read_dir(&victim).unwrap().count(), 0, "nothing was written through the link: {said}");
    assert_eq!(fs::read_to_string(to.join("db/dump.sql")).unwrap(), "CREATE TABLE secrets;\n");
    assert!(fs::symlink_metadata(&stage).unwrap().file_type().is_symlink(), "the planted link is left alone");
}

/// Restoring a symbolic link of a backup restores the link: the check for
/// what is already in `--to` does not walk into what it points at (a link
/// `s -> /root` on a disk listed root's files in the refusal).
#[test]
fn restoring_a_link_never_walks_what_it_points_at() {
    let b = Bench::new(64);
    let outside = b.env.path("outside");
    fs::create_dir_all(&outside).unwrap();
    fs::write(outside.join("root-only-secret"), "x").unwrap();
    let folder = b.disk("2026-11-01_10-00-00");
    fs::create_dir_all(&folder).unwrap();
    std::os::unix::fs::symlink(&outside, folder.join("s")).unwrap();
    let to = b.env.path("to");
    fs::create_dir_all(to.join("s")).unwrap();
    fs::write(to.join("s/root-only-secret"), "y").unwrap();
    let run = b.tb(&["restore", s(&b.disk("")), "--from", "2026-11-01_10-00-00", "s", "--to", s(&to)]);
    assert_ne!(run.code, 0, "s is there already: {run:?}");
    assert!(!run.stderr.contains("root-only-secret"), "the refusal lists what the link points at: {run:?}");
    fs::remove_dir_all(to.join("s")).unwrap();
    b.tb(&["restore", s(&b.disk("")), "--from", "2026-11-01_10-00-00", "s", "--to", s(&to)]).ok();
    assert_eq!(fs::read_link(to.join("s")).unwrap(), outside, "restored as a link");
}
