//! Fault injection (the `failpoints` feature, see src/fault.rs): the daemon
//! or the engine is stopped dead (SIGKILL) at each step of a backup, or the
//! backup's thread panics, and what is left must be sound: nothing mounted
//! once the daemon is back, the history row `interrupted`, state.json and
//! history.sqlite readable, the previous complete backup byte-identical,
//! and the next plug backs up.
// Without the feature only `failpoints_are_compiled_in` is built.
#![cfg_attr(not(feature = "failpoints"), allow(dead_code, unused_imports))]

mod common;

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use common::disk::*;
use common::rig::Rig;
use common::tree::{self, fingerprint};
use common::*;

/// Without the feature the points are not compiled in: say so, loudly.
#[cfg(not(feature = "failpoints"))]
#[test]
fn failpoints_are_compiled_in() {
    panic!("the fault tests need `cargo test --features failpoints` (`make test` passes it)");
}

/// A backup script that writes a dated snapshot of its first argument and
/// keeps the two newest backups.
const SNAP: &str = r#"set -e
d="$TETRAS_BACK_MOUNT/$(date +%Y-%m-%d_%H-%M-%S)_test"
"$TETRAS_BACK_BIN" snapshot --dest "$d" --link-dest auto "$1/"
"$TETRAS_BACK_BIN" prune "$TETRAS_BACK_MOUNT" --keep-last 2
"#;

/// Where a point is, and so what is killed there.
#[derive(Clone, Copy, PartialEq)]
enum In {
    Daemon,
    Engine,
}

const POINTS: &[(&str, &str, In)] = &[
    ("backup::after_mount", "return", In::Daemon),
    ("backup::before_script", "return", In::Daemon),
    ("snapshot::file_copied", "3*off->return", In::Engine),
    ("engine::before_rename", "return", In::Engine),
    ("prune::after_deletion", "return", In::Engine),
    ("backup::after_script", "return", In::Daemon),
    ("backup::before_unmount", "return", In::Daemon),
    ("daemon::before_state_write", "return", In::Daemon),
    ("daemon::before_history_write", "return", In::Daemon),
];

/// A rig whose disk is backed up by SNAP on `plug` only (udev_events = false).
struct Case {
    rig: Rig,
    src: std::path::PathBuf,
}

impl Case {
    fn new() -> Case {
        let rig = Rig::new("ext4", "udev_events = false\n");
        let src = rig.env.path("src");
        for i in 0..20 {
            fs::create_dir_all(src.join(format!("d{}", i % 4))).unwrap();
            fs::write(src.join(format!("d{}/f{i}", i % 4)), tree::text(i, 20_000)).unwrap();
        }
        rig.env.write_config(&format!(
            "udev_events = false\n[[scripts]]\nname = \"snap.sh\"\nargs = [\"{}\"]\n",
            src.display()
        ));
        script(&rig.scripts_dir(), "snap.sh", SNAP, 0o755);
        let mut c = Case { rig, src };
        c.rig.disk.attach();
        c
    }

    /// Plugs the disk by hand (udev_events = false) and waits for its
    /// backup's status in the history (written once the daemon has it).
    fn backup(&self, d: &Daemon, first: bool) -> String {
        let before = self.history().len();
        let done = |c: &Case| {
            let h = c.history();
            h.len() > before && h[0]["status"] != "running"
        };
        if first {
            self.plug();
        } else {
            new_second();
            self.rig.env.cli(&["backup", "office"]).ok();
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while !done(self) {
            assert!(Instant::now() < deadline, "no end of backup:\n{}", d.log_text());
            std::thread::sleep(Duration::from_millis(50));
        }
        self.history()[0]["status"].as_str().unwrap().to_owned()
    }

    /// Plugs the (attached) disk in by hand, in a new second.
    fn plug(&self) {
        new_second();
        sh("udevadm", &["settle", "--timeout=10"]);
        self.rig.env.cli(&["plug", self.rig.disk.dev()]).ok();
    }

    /// The newest backup log.
    fn last_log(&self) -> String {
        let h = &self.history()[0];
        fs::read_to_string(h["log"].as_str().unwrap()).unwrap_or_default()
    }

    fn history(&self) -> Vec<serde_json::Value> {
        let out = self.rig.env.cli(&["history", "--json"]).ok();
        serde_json::from_str(&out.stdout).unwrap()
    }

    /// Looks at the disk read-only (detached meanwhile, attached again after).
    fn look<T>(&mut self, f: impl FnOnce(&Path) -> T) -> T {
        let root = self.rig.env.root().to_owned();
        let seen = self.rig.disk.inspect(&root, f);
        self.rig.disk.attach();
        seen
    }
}

/// Backup folders are named by the second they start in: one backup a second.
fn new_second() {
    std::thread::sleep(Duration::from_millis(1100));
}

/// Waits until a process says it reached the point `name` (the daemon in
/// its log, an engine in the backup's log); returns that process's pid.
fn wait_reached(env: &TestEnv, d: &Daemon, name: &str) -> i32 {
    let needle = format!("failpoint {name} reached (pid ");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let logs = fs::read_dir(env.path("log"))
            .map(|dir| dir.map(|e| fs::read_to_string(e.unwrap().path()).unwrap_or_default()).collect())
            .unwrap_or_else(|_| Vec::new());
        for text in logs.iter().chain(std::iter::once(&d.log_text())) {
            if let Some(at) = text.find(&needle) {
                let rest = &text[at + needle.len()..];
                return rest[..rest.find(')').unwrap()].parse().unwrap();
            }
        }
        assert!(Instant::now() < deadline, "{name} never reached:\n{}", d.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn kill(pid: i32) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
}

/// One row of the matrix: killed at `point`, then checked. Returns the
/// interrupted backup's history status.
fn killed_at(point: &str, spec: &str, at: In) -> String {
    let mut c = Case::new();
    {
        let d = c.rig.env.start_daemon();
        assert_eq!(c.backup(&d, true), "success");
        assert_eq!(c.backup(&d, false), "success");
    }
    let (before, previous) = c.look(|mnt| {
        let names = dated_folders(mnt);
        let newest = fingerprint(&mnt.join(&names[names.len() - 1]));
        (names, newest)
    });
    assert_eq!(before.len(), 2, "{before:?}");
    // Changed since: the next snapshot copies every file (none is hard-linked).
    for (i, f) in walkdir::WalkDir::new(&c.src)
        .into_iter()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().is_file())
        .enumerate()
    {
        fs::write(f.path(), tree::text(100 + i as u64, 20_000)).unwrap();
    }

    // Stopped dead at the point.
    let d = c.rig.env.start_daemon_with(&[("FAILPOINTS", &format!("{point}={spec}"))]);
    c.plug();
    let pid = wait_reached(&c.rig.env, &d, point);
    if at == In::Engine {
        // The engine and its script (one process group), as a power cut would.
        let pgid = nix::unistd::getpgid(Some(nix::unistd::Pid::from_raw(pid))).unwrap();
        let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
    }
    kill(d.pid());
    drop(d);

    // The next daemon cleans up: nothing mounted, the row interrupted,
    // state and history readable.
    let d = c.rig.env.start_daemon();
    c.rig.nothing_mounted();
    let history = c.history();
    let status = history[0]["status"].as_str().unwrap().to_owned();
    assert_eq!(status, "interrupted", "{history:#?}");
    assert_eq!(history.len(), 3);
    let disks = c.rig.env.cli(&["disks", "--json"]).ok();
    assert!(disks.stdout.contains("\"office\""), "{disks:?}");
    drop(d);

    // The previous complete backup is as it was.
    let (after, now) = c.look(|mnt| {
        let p = mnt.join(&before[1]);
        (dated_folders(mnt), p.exists().then(|| fingerprint(&p)))
    });
    assert!(now.is_some(), "the previous backup {} is gone: {after:?}", before[1]);
    assert!(now == Some(previous), "the previous backup {} changed", before[1]);

    // And the next plug backs up.
    let d = c.rig.env.start_daemon();
    assert_eq!(c.backup(&d, true), "success", "{}", c.last_log());
    drop(d);
    c.rig.nothing_mounted();
    status
}

/// Kills the daemon or the engine at each point of a backup, in parallel
/// (one disk each), and prints the matrix of points and outcomes.
#[cfg(feature = "failpoints")]
#[test]
fn killed_at_any_step_a_backup_leaves_everything_sound() {
    let results: Vec<(&str, In, Result<String, String>)> = std::thread::scope(|s| {
        let handles: Vec<_> = POINTS
            .iter()
            .map(|&(point, spec, at)| {
                (
                    point,
                    at,
                    s.spawn(move || {
                        std::panic::catch_unwind(|| killed_at(point, spec, at)).map_err(|e| {
                            e.downcast_ref::<String>()
                                .cloned()
                                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                                .unwrap_or_default()
                        })
                    }),
                )
            })
            .collect();
        handles.into_iter().map(|(p, at, h)| (p, at, h.join().unwrap())).collect()
    });
    println!("\n{:<30} {:<7} {:<12} outcome", "point", "killed", "history");
    for (point, at, r) in &results {
        let killed = if *at == In::Daemon { "daemon" } else { "engine" };
        match r {
            Ok(status) => println!("{point:<30} {killed:<7} {status:<12} sound: unmounted, readable, previous intact, next plug ok"),
            Err(e) => println!("{point:<30} {killed:<7} {:<12} FAILED: {}", "-", e.lines().next().unwrap_or("")),
        }
    }
    let failed: Vec<String> =
        results.iter().filter_map(|(p, _, r)| r.as_ref().err().map(|e| format!("{p}: {e}"))).collect();
    assert!(failed.is_empty(), "{}", failed.join("\n\n"));
}

/// A panic in the backup's thread is reported as an internal error, the
/// disk is unmounted, and the daemon goes on with the next backup.
#[cfg(feature = "failpoints")]
#[test]
fn a_panicking_backup_is_reported_and_the_daemon_goes_on() {
    let mut rig = Rig::new("ext4", "[[scripts]]\nname = \"noop.sh\"\n");
    script(&rig.scripts_dir(), "noop.sh", "exit 0", 0o755);
    let _d = rig.env.start_daemon_with(&[("FAILPOINTS", "backup::after_mount=1*panic(boom)")]);
    rig.subscribe();
    rig.disk.attach();
    let finished = rig.until("backup_finished").pop().unwrap();
    assert_eq!(finished["status"], "failed", "{finished}");
    assert_eq!(finished["error"], "internal error: boom", "{finished}");
    rig.nothing_mounted();
    rig.env.cli(&["backup", "office"]).ok();
    let finished = rig.until("backup_finished").pop().unwrap();
    assert_eq!(finished["status"], "success", "the daemon goes on: {finished}");
    let status = rig.env.cli(&["status", "--json"]).ok();
    assert!(status.stdout.contains("\"activity\": \"idle\""), "{status:?}");
    rig.disk.detach();
}
