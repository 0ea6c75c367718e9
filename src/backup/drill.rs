//! The restore drill: the newest real, complete backup folder at the top of
//! a disk read back and checked ([`backups::check`]).
//!
//! Whatever is on the disk may make that read slow or stuck (a FIFO, a
//! forged million-line manifest, a damaged filesystem), so the daemon never
//! reads it itself: [`in_child`] runs `tetras-back drill MOUNT` ([`main`])
//! in a process group of its own, like a script, with a timeout, stopped
//! when the disk is pulled out or the daemon stops, and reads the child's
//! one JSON line ([`CAPTURE_MAX`](super::scripts::CAPTURE_MAX) at most).

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::{Context, Result};

use super::scripts::{self, BackupLog, Capture, Outcome};
use crate::engine::{backups, prune};
use crate::store::report::Drill;

/// `tetras-back drill MOUNT`: checks the newest backup of the disk mounted
/// at `mount` and prints the [`Drill`] as one JSON line (`null`: there is no
/// complete backup folder). What it does goes to standard error.
pub fn main(mount: &Path) -> Result<()> {
    crate::engine::init(None);
    let Some(folder) = prune::newest_complete(mount)? else {
        println!("null");
        return Ok(());
    };
    let folder = folder.to_string_lossy().into_owned();
    eprintln!("reading {folder} back and checking it");
    let (entries, bytes, problems) = match backups::check(&mount.join(&folder)) {
        Ok(c) => (c.entries, c.bytes, c.problems),
        Err(e) => (0, 0, vec![format!("cannot be read: {e:#}")]),
    };
    let drill = Drill {
        passed: problems.is_empty(),
        entries,
        bytes,
        problem_count: problems.len() as u64,
        problems: problems.into_iter().take(Drill::SHOWN).collect(),
        folder,
    };
    println!("{}", serde_json::to_string(&drill)?);
    Ok(())
}

/// Runs the drill on the disk mounted at `mount` in a child process (see
/// the module's documentation). `None`: nothing to check, or the drill was
/// stopped (`cancel`); a drill that fails or times out is a failed drill.
pub fn in_child(mount: &Path, timeout: Duration, log: &BackupLog, cancel: &AtomicBool) -> Option<Drill> {
    let capture = Capture::default();
    let outcome = std::env::current_exe().context("cannot find this program").and_then(|bin| {
        let run = scripts::Run {
            program: &bin,
            args: &["drill".to_owned(), mount.display().to_string()],
            cwd: Path::new("/"),
            env: &[],
            timeout,
            tag: "restore drill",
            capture: Some(capture.clone()),
        };
        scripts::run(&run, log, cancel)
    });
    let failed = |why: String| Drill {
        folder: String::new(),
        passed: false,
        entries: 0,
        bytes: 0,
        problems: vec![why],
        problem_count: 1,
    };
    match outcome {
        Ok(Outcome::Exited(0)) => {
            let out = capture.stdout.lock().unwrap();
            match serde_json::from_slice::<Option<Drill>>(&out) {
                Ok(d) => d,
                Err(e) => Some(failed(format!("the drill's answer cannot be read: {e}"))),
            }
        }
        Ok(Outcome::Cancelled) => None,
        Ok(o @ Outcome::TimedOut) => Some(failed(format!(
            "the restore drill {} after {} (is something on the disk blocking it?)",
            o.describe(),
            humantime::format_duration(timeout)
        ))),
        Ok(o) => Some(failed(format!("the restore drill {}", o.describe()))),
        Err(e) => Some(failed(format!("the restore drill could not run: {e:#}"))),
    }
}
