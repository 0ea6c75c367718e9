//! Logs and history do not grow for ever: backup logs older than
//! `keep_logs` are deleted (the newest [`KEEP_NEWEST`] always stay), and
//! plug/unplug rows of the history older than a year; at start, then daily.
//! Backup rows stay (they are small, and the history of backups is the point).

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use super::Daemon;

/// The newest logs kept whatever their age.
pub const KEEP_NEWEST: usize = 50;
/// How long plug and unplug rows stay in the history.
const PLUGS_FOR: Duration = Duration::from_secs(365 * 86400);
pub const EVERY: Duration = Duration::from_secs(86400);

impl Daemon {
    pub(super) fn prune_if_due(&mut self) {
        if !self.retention.due() {
            return;
        }
        match prune_logs(&self.config.log_dir, self.config.keep_logs, KEEP_NEWEST, SystemTime::now()) {
            Ok(0) => {}
            Ok(n) => log::info!("deleted {n} backup log(s) older than `keep_logs`"),
            Err(e) => log::error!("cannot prune the logs in {}: {e}", self.config.log_dir.display()),
        }
        if let Some(h) = &self.history {
            let before = chrono::Local::now() - chrono::Duration::from_std(PLUGS_FOR).unwrap_or_default();
            match h.prune_plugs(before) {
                Ok(0) => {}
                Ok(n) => log::info!("deleted {n} plug/unplug row(s) older than a year from the history"),
                Err(e) => log::error!("history: {e:#}"),
            }
        }
    }
}

/// Deletes the `*.log` files of `dir` older than `keep` (by modification
/// time), but never the `newest` most recent ones; returns how many went.
pub fn prune_logs(dir: &Path, keep: Duration, newest: usize, now: SystemTime) -> std::io::Result<usize> {
    let mut logs: Vec<(i64, std::path::PathBuf)> = Vec::new();
    let entries = match fs::read_dir(dir) {
        // No backup has written a log yet.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        other => other?,
    };
    for e in entries {
        let e = e?;
        let meta = e.path().symlink_metadata()?;
        if meta.is_file() && e.path().extension().is_some_and(|x| x == "log") {
            logs.push((meta.mtime(), e.path()));
        }
    }
    logs.sort_by(|a, b| b.cmp(a));
    let limit = now.checked_sub(keep).unwrap_or(SystemTime::UNIX_EPOCH);
    let limit = limit.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    let mut deleted = 0;
    for (mtime, path) in logs.into_iter().skip(newest) {
        if mtime < limit {
            fs::remove_file(&path)?;
            deleted += 1;
        }
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_logs_go_but_the_newest_fifty_and_other_files_stay() {
        let d = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        let day = Duration::from_secs(86400);
        // 60 logs 400 to 459 days old, 5 recent ones, and a file that is not a log.
        for i in 0..65u64 {
            let p = d.path().join(format!("b{i:03}.log"));
            fs::write(&p, b"x").unwrap();
            let age = if i < 60 { day * (400 + i as u32) } else { Duration::from_secs(60 * i) };
            fs::File::options().write(true).open(&p).unwrap().set_modified(now - age).unwrap();
        }
        fs::write(d.path().join("notes.txt"), b"keep").unwrap();
        fs::File::options()
            .write(true)
            .open(d.path().join("notes.txt"))
            .unwrap()
            .set_modified(now - day * 900)
            .unwrap();
        let gone = prune_logs(d.path(), day * 365, KEEP_NEWEST, now).unwrap();
        // The 5 recent + the 45 youngest of the old ones are the newest 50.
        assert_eq!(gone, 15);
        let left: Vec<_> =
            fs::read_dir(d.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        assert_eq!(left.len(), 51);
        assert!(left.contains(&"notes.txt".to_owned()) && left.contains(&"b000.log".to_owned()));
        assert!(!left.contains(&"b059.log".to_owned()), "the oldest went");
        assert_eq!(prune_logs(d.path(), day * 365, KEEP_NEWEST, now).unwrap(), 0);
        assert_eq!(prune_logs(&d.path().join("not yet"), day, KEEP_NEWEST, now).unwrap(), 0);
    }
}
