//! What the engines did during one backup, for the daemon's report.
//!
//! A script runs the engines as separate processes; the daemon learns what
//! they wrote and pruned through a file named by `TETRAS_BACK_REPORT`, to
//! which each engine appends one JSON line when it finishes. Outside a
//! backup (the variable unset) nothing is written.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::snapshot::Shrunk;

/// The variable naming the journal file, set by the daemon for its scripts.
pub const ENV: &str = "TETRAS_BACK_REPORT";

/// One engine run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "engine", rename_all = "lowercase")]
pub enum Entry {
    Snapshot {
        dest: PathBuf,
        files: u64,
        /// What its files hold (copied or linked).
        #[serde(default)]
        bytes: u64,
        bytes_written: u64,
        /// Sources much smaller than in the previous snapshot.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        shrunk: Vec<Shrunk>,
    },
    Archive {
        output: PathBuf,
        files: u64,
        /// What its members hold, before compression.
        #[serde(default)]
        bytes: u64,
        bytes_written: u64,
    },
    Prune {
        dir: PathBuf,
        deleted: Vec<String>,
        freed: u64,
    },
    /// One host of a `pull`, as soon as it is done.
    Pull(HostPull),
    /// What a dry run (the scripts' estimate pass) found a snapshot,
    /// archive or pull will go through: the backup's expected totals.
    Estimate {
        dest: PathBuf,
        files: u64,
        bytes: u64,
    },
}

/// How the pull of one host ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pulled {
    /// Everything is there (files that vanished while rsync read them are counted).
    Done,
    /// Complete but for the files it could not read, named in `unreadable`.
    Partial,
    /// Nothing kept for this host: `error` says why.
    Failed,
}

/// One host of a `pull`: what the report, the history and the console say of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostPull {
    pub name: String,
    pub outcome: Pulled,
    /// Its folder in the backup, once complete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dest: Option<PathBuf>,
    pub files: u64,
    pub bytes: u64,
    /// Bytes of the files new since its previous pull (the others are hard links).
    pub bytes_written: u64,
    pub seconds: f64,
    /// Files that disappeared on the host while they were read.
    #[serde(default)]
    pub vanished: u64,
    /// Files the host could not read, with why (at most [`HostPull::SHOWN`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unreadable: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl HostPull {
    pub const SHOWN: usize = 50;
}

/// Appends `entry` to the journal named in the environment, if any. A
/// journal that cannot be written costs the report a line, not the backup.
pub fn record(entry: &Entry) {
    let Some(path) = std::env::var_os(ENV) else { return };
    let mut line = serde_json::to_vec(entry).expect("journal entries serialise");
    line.push(b'\n');
    let written = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(&path)
        .and_then(|mut f| f.write_all(&line));
    if let Err(e) = written {
        log::warn!("cannot append to the backup journal {}: {e}", Path::new(&path).display());
    }
}

/// The totals of a backup's journal.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Totals {
    pub bytes_written: u64,
    pub files: u64,
    /// "DIR/NAME" of each backup folder pruned.
    pub pruned: Vec<String>,
    pub freed: u64,
    /// Sources of the snapshots much smaller than the last time.
    pub shrunk: Vec<Shrunk>,
    /// What the snapshots, archives and pulls wrote: their paths.
    pub written: Vec<PathBuf>,
    /// Each host pulled (or not), in the order they finished.
    pub hosts: Vec<HostPull>,
    /// Regular files and bytes gone through by the snapshots, archives and
    /// pulls that ended (linked files too): the backup's progress.
    pub done: (u64, u64),
    /// What the estimates said those would be, when there were any.
    pub expected: Option<(u64, u64)>,
}

/// The most of a journal that is read: a line per engine run (or host).
const MAX_LEN: u64 = 16 << 20;

/// Reads the journal at `path` (absent: nothing was recorded); lines that do
/// not parse (a script writing there by mistake) are skipped, and said.
pub fn totals(path: &Path) -> Totals {
    read(path, true)
}

/// [`totals`] while the backup runs (read once a second): skipped lines
/// are not said each time.
pub fn peek(path: &Path) -> Totals {
    read(path, false)
}

fn read(path: &Path, say: bool) -> Totals {
    let mut t = Totals::default();
    let bytes = match super::fsx::read_capped(path, MAX_LEN) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return t,
        Err(e) => {
            log::warn!("{}: {e}; ignored", path.display());
            return t;
        }
    };
    let text = String::from_utf8_lossy(&bytes);
    for line in text.lines() {
        match serde_json::from_str::<Entry>(line) {
            Ok(Entry::Snapshot { dest, files, bytes, bytes_written, shrunk }) => {
                t.done = (t.done.0 + files, t.done.1 + bytes);
                t.files += files;
                t.bytes_written += bytes_written;
                t.shrunk.extend(shrunk);
                t.written.push(dest);
            }
            Ok(Entry::Archive { output, files, bytes, bytes_written }) => {
                t.done = (t.done.0 + files, t.done.1 + bytes);
                t.files += files;
                t.bytes_written += bytes_written;
                t.written.push(output);
            }
            Ok(Entry::Prune { dir, deleted, freed }) => {
                t.pruned.extend(deleted.iter().map(|d| dir.join(d).display().to_string()));
                t.freed += freed;
            }
            Ok(Entry::Pull(host)) => {
                t.done = (t.done.0 + host.files, t.done.1 + host.bytes);
                t.files += host.files;
                t.bytes_written += host.bytes_written;
                t.written.extend(host.dest.clone());
                t.hosts.push(host);
            }
            Ok(Entry::Estimate { files, bytes, .. }) => {
                let (f, b) = t.expected.unwrap_or_default();
                t.expected = Some((f + files, b + bytes));
            }
            Err(e) if say => {
                log::warn!("{}: ignored a line that is not a journal entry: {e}", path.display())
            }
            Err(_) => {}
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_add_up_and_skip_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("j");
        let lines = [
            serde_json::to_string(&Entry::Snapshot {
                dest: "/m/a".into(),
                files: 3,
                bytes: 300,
                bytes_written: 100,
                shrunk: vec![],
            })
            .unwrap(),
            "not json".into(),
            serde_json::to_string(&Entry::Archive {
                output: "/m/a.tgz".into(),
                files: 2,
                bytes: 80,
                bytes_written: 50,
            })
            .unwrap(),
            serde_json::to_string(&Entry::Prune { dir: "/m".into(), deleted: vec!["old".into()], freed: 7 })
                .unwrap(),
            serde_json::to_string(&Entry::Estimate { dest: "/m/a".into(), files: 4, bytes: 400 }).unwrap(),
        ];
        std::fs::write(&p, lines.join("\n")).unwrap();
        let t = totals(&p);
        assert_eq!(
            t,
            Totals {
                bytes_written: 150,
                files: 5,
                pruned: vec!["/m/old".into()],
                freed: 7,
                shrunk: vec![],
                written: vec!["/m/a".into(), "/m/a.tgz".into()],
                hosts: vec![],
                done: (5, 380),
                expected: Some((4, 400)),
            }
        );
        assert_eq!(totals(&dir.path().join("absent")), Totals::default());
    }
}
