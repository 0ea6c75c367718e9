//! What an engine has done while it runs, for the daemon's `backup_progress`.
//!
//! The daemon names a file in its run directory in `TETRAS_BACK_PROGRESS`;
//! while an engine works, a thread of its own replaces that file (written
//! beside it, then renamed over it, so that a reader never sees half of
//! one) with a [`Sample`] at most [`EVERY`], and once more when the work
//! ends. The engine's threads only bump the counters they keep anyway, so
//! the cost is one small file written four times a second. Outside a
//! backup (the variable unset) nothing is started.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The variable naming the progress file, set by the daemon for its scripts.
pub const ENV: &str = "TETRAS_BACK_PROGRESS";

/// How often the file is written, at most.
pub const EVERY: Duration = Duration::from_millis(250);

/// The most of the file a reader takes: a sample is a few hundred bytes.
pub const MAX_LEN: u64 = 4096;

/// Where one engine run stands.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// `snapshot`, `archive`, `pull`, `prune`, `verify`, `restore`.
    pub engine: String,
    /// The engine's process, which tells one run from the next.
    pub pid: u32,
    /// Regular files (and their bytes) done by this run.
    pub files_done: u64,
    pub bytes_done: u64,
    /// What this run will have done when it ends, where it knows.
    #[serde(default)]
    pub files_expected: Option<u64>,
    #[serde(default)]
    pub bytes_expected: Option<u64>,
    /// The run has ended: its counts are in the journal now.
    #[serde(default)]
    pub finished: bool,
}

impl Sample {
    /// Reads the sample at `path`; `None` when there is none (yet) or it
    /// is not one.
    pub fn read(path: &Path) -> Option<Sample> {
        serde_json::from_slice(&super::fsx::read_capped(path, MAX_LEN).ok()?).ok()
    }
}

/// Files and bytes done, for an engine whose own counts are not shared
/// with other threads.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64, AtomicU64);

impl Counter {
    pub fn add(&self, files: u64, bytes: u64) {
        self.0.fetch_add(files, Ordering::Relaxed);
        self.1.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn get(&self) -> (u64, u64) {
        (self.0.load(Ordering::Relaxed), self.1.load(Ordering::Relaxed))
    }
}

/// Runs `work` while its progress is written to the file the environment
/// names: `sample()` says what is done so far (files, bytes), `expected`
/// what will be when it ends (`None` where it does not know).
pub fn during<T>(
    engine: &str,
    expected: (Option<u64>, Option<u64>),
    sample: impl Fn() -> (u64, u64) + Sync,
    work: impl FnOnce() -> T,
) -> T {
    let Some(path) = std::env::var_os(ENV).map(PathBuf::from) else { return work() };
    let stop = AtomicBool::new(false);
    let write = |finished: bool| {
        let (files_done, bytes_done) = sample();
        let s = Sample {
            engine: engine.to_owned(),
            pid: std::process::id(),
            files_done,
            bytes_done,
            files_expected: expected.0,
            bytes_expected: expected.1,
            finished,
        };
        put(&path, &s);
    };
    std::thread::scope(|scope| {
        let reporter = scope.spawn(|| {
            while !stop.load(Ordering::Acquire) {
                write(false);
                std::thread::park_timeout(EVERY);
            }
        });
        let out = {
            // Stops the reporter however `work` ends: a panic in it must
            // reach the engine's exit, not wait for a thread that never stops.
            let _stop = StopOnDrop(&stop, reporter.thread());
            work()
        };
        let _ = reporter.join();
        write(true);
        out
    })
}

/// Tells the reporter thread to stop when dropped.
struct StopOnDrop<'a>(&'a AtomicBool, &'a std::thread::Thread);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
        self.1.unpark();
    }
}

/// An engine that has nothing to count (its phase is what is said).
pub fn phase<T>(engine: &str, work: impl FnOnce() -> T) -> T {
    during(engine, (None, None), || (0, 0), work)
}

/// Replaces the file at `path` with `s`. A file that cannot be written
/// costs the progress display, never the backup.
fn put(path: &Path, s: &Sample) {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".new");
    let tmp = PathBuf::from(tmp);
    let written = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        // Nothing planted there (a link, a FIFO) is followed or waited on.
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(&tmp)
        .and_then(|mut f| f.write_all(&serde_json::to_vec(s).expect("a sample serialises")))
        .and_then(|()| fs::rename(&tmp, path));
    if let Err(e) = written {
        log::debug!("cannot write the progress file {}: {e}", path.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_follows_the_work_and_ends_finished() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("progress.json");
        std::env::set_var(ENV, &path);
        let files = AtomicU64::new(0);
        let seen = during(
            "snapshot",
            (Some(10), None),
            || (files.load(Ordering::Relaxed), 7),
            || {
                files.store(3, Ordering::Relaxed);
                std::thread::sleep(EVERY * 3);
                let mid = Sample::read(&path).expect("a sample while it runs");
                files.store(10, Ordering::Relaxed);
                mid
            },
        );
        std::env::remove_var(ENV);
        assert_eq!((seen.files_done, seen.finished, seen.files_expected), (3, false, Some(10)));
        let end = Sample::read(&path).unwrap();
        assert_eq!(
            (end.engine.as_str(), end.files_done, end.bytes_done, end.finished),
            ("snapshot", 10, 7, true)
        );
        std::fs::write(&path, "not json").unwrap();
        assert_eq!(Sample::read(&path), None);

        // A panic in the work goes on up at once: the reporter does not hold it.
        std::env::set_var(ENV, &path);
        let started = std::time::Instant::now();
        let panicked =
            std::panic::catch_unwind(|| during("archive", (None, None), || (0, 0), || panic!("boom")));
        std::env::remove_var(ENV);
        assert!(panicked.is_err());
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    }
}
