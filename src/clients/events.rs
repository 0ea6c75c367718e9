//! Events for subscribers: one JSON line per event to every registered FIFO.
//!
//! Each line has `event`, `seq` (increasing within one daemon run) and
//! `time`, plus the event's own fields, and is at most [`fifo::MAX_LINE`]
//! bytes so that each write is atomic.
//!
//! A subscriber is a stream: once a reader has it open, the daemon keeps
//! its write end open and writes every event to it, so a reader that stays
//! open (even `cat FIFO`) sees every event, in `seq` order, with no
//! end-of-file in between. Delivery never blocks: with no reader the event
//! is missed (logged at debug) and the FIFO opened again at the next event;
//! a reader that went away (EPIPE) is let go and the FIFO opened again at
//! once, for a reader that took its place; a full pipe drops the event
//! (warned); a FIFO that disappeared, or whose path now names something
//! else, is dropped from the list.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Local, SecondsFormat};
use serde::{Deserialize, Serialize};

use crate::clients::fifo::{self, Delivery};
use crate::store::history::{DiskSummary, History};
use crate::store::report::{ProgressNow, Status};
use crate::store::state::{Disk, State};

/// Something the daemon tells its subscribers (and what `watch` reads back).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The whole disk table: sent on registration and after every change.
    Disks {
        disks: Vec<DiskRow>,
        /// Set when the table was cut to fit in one line.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        truncated: bool,
    },
    DiskSaved {
        uuid: String,
        name: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        renamed_from: Option<String>,
    },
    DiskForgotten {
        uuid: String,
        name: String,
    },
    /// A known disk was plugged in.
    DiskPlugged {
        uuid: String,
        name: String,
        device: PathBuf,
        fstype: String,
    },
    /// A disk carries a known disk's UUID but not its identity: refused,
    /// nothing run or written.
    DiskMismatch {
        uuid: String,
        name: String,
        device: PathBuf,
        why: String,
    },
    /// A filesystem that is not a known disk appeared: a client may offer to save it.
    UnknownDisk {
        uuid: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        label: Option<String>,
        fstype: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        size: Option<u64>,
        device: PathBuf,
        /// `luks` for a LUKS volume, which tetras-back does not open.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        encrypted: Option<String>,
    },
    /// The backup waits for another one to finish.
    BackupQueued {
        uuid: String,
        name: String,
        position: usize,
    },
    BackupStarted {
        uuid: String,
        name: String,
        device: PathBuf,
        log: PathBuf,
    },
    ScriptStarted {
        uuid: String,
        name: String,
        script: String,
    },
    /// Where the running backup stands, at most once a second.
    BackupProgress {
        uuid: String,
        name: String,
        /// The script running, if one is.
        script: Option<String>,
        #[serde(flatten)]
        now: ProgressNow,
    },
    ScriptFinished {
        uuid: String,
        name: String,
        script: String,
        /// `null` when the script did not exit by itself (signal, timeout, removal).
        exit_code: Option<i32>,
        outcome: String,
        duration_secs: f64,
    },
    BackupFinished {
        uuid: String,
        name: String,
        status: Status,
        duration_secs: f64,
        log: PathBuf,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// The disk is unmounted and synced: it can be pulled out.
    SafeToRemove {
        uuid: String,
        name: String,
        device: PathBuf,
        /// udisks powered its drive off.
        powered_off: bool,
        /// Why it was not (no udisks, not a drive that can be, refused, turned off).
        #[serde(skip_serializing_if = "Option::is_none")]
        power_off_error: Option<String>,
    },
    DiskUnplugged {
        uuid: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        device: PathBuf,
    },
    /// A known disk is mounted read-only for restore (`open`, or a held
    /// disk plugged in): `backups`, `restore` and the web console read it.
    DiskOpened {
        uuid: String,
        name: String,
        device: PathBuf,
        mount: PathBuf,
    },
    /// An opened disk was closed: `close`, `timeout` (unused for
    /// `open_timeout`) or `unplugged`. `safe_to_remove` follows a clean close.
    DiskClosed {
        uuid: String,
        name: String,
        why: String,
    },
    /// A mail (backup report, reminder) could not be sent; it stays in the
    /// outbox and is tried again at `retry_at` (absent: abandoned).
    MailFailed {
        subject: String,
        to: Vec<String>,
        error: String,
        attempts: u32,
        #[serde(skip_serializing_if = "Option::is_none")]
        retry_at: Option<DateTime<Local>>,
    },
    /// The daemon is about to exit (a subscriber that stays registered
    /// receives events again when it restarts).
    DaemonStopping,
}

/// A plugged-in filesystem that is not a known disk (it can be saved).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnknownRow {
    pub uuid: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    pub fstype: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    pub device: PathBuf,
    /// `luks` for a LUKS volume, which tetras-back does not open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encrypted: Option<String>,
}

/// One disk in the `disks` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiskRow {
    pub uuid: String,
    pub name: String,
    pub connected: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<DateTime<Local>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_backup: Option<Status>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_backup_finished: Option<DateTime<Local>>,
    /// When the last successful backup finished (from the history).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_success: Option<DateTime<Local>>,
    /// When it is backed up again, if it stays plugged in (`[schedule]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_due: Option<DateTime<Local>>,
    /// `hold NAME`: opened for restore when plugged in, not backed up.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub held: bool,
    /// Mounted read-only for restore now.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub opened: bool,
    /// Plugged in, and unmounted cleanly since its last backup or opening
    /// (its `safe_to_remove`): it can be pulled out now.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub safe_to_remove: bool,
}

impl DiskRow {
    /// A disk's row; the history, when there is one, says what its last
    /// backups were (the state file keeps only the last one).
    pub fn new(disk: &Disk, connected: bool, history: Option<&History>) -> DiskRow {
        let summary =
            history.and_then(|h| h.summary(&disk.uuid).inspect_err(|e| log::error!("history: {e:#}")).ok());
        let (last_backup, last_backup_finished, last_success) = match summary {
            Some(DiskSummary { last: Some(b), last_success }) => (Some(b.status), b.finished, last_success),
            _ => {
                let b = disk.last_backup.as_ref();
                let success = b.filter(|b| b.status == Status::Success).and_then(|b| b.finished);
                (b.map(|b| b.status), b.and_then(|b| b.finished), success)
            }
        };
        DiskRow {
            uuid: disk.uuid.clone(),
            name: disk.name.clone(),
            connected,
            last_seen: disk.last_seen,
            last_backup,
            last_backup_finished,
            last_success,
            next_due: None,
            held: disk.held,
            opened: false,
            safe_to_remove: false,
        }
    }

    /// The rows of every known disk.
    pub fn table(state: &State, history: Option<&History>, connected: impl Fn(&str) -> bool) -> Vec<DiskRow> {
        state.disks.iter().map(|d| DiskRow::new(d, connected(&d.uuid), history)).collect()
    }
}

/// One line on a subscriber's FIFO: the event's name and fields, its
/// number and its time (RFC 3339, local, to the second).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventLine<'a> {
    #[serde(flatten)]
    pub event: Cow<'a, Event>,
    pub seq: u64,
    pub time: String,
}

/// Serialises an event as one line that fits in a pipe's atomic write.
fn encode(event: &Event, seq: u64, time: DateTime<Local>) -> Vec<u8> {
    let time = time.to_rfc3339_opts(SecondsFormat::Secs, false);
    let bytes = |e: &Event| {
        serde_json::to_vec(&EventLine { event: Cow::Borrowed(e), seq, time: time.clone() })
            .expect("events serialise")
    };
    let mut out = bytes(event);
    if out.len() < fifo::MAX_LINE {
        return out;
    }
    // Only the disk table can grow without bound: send as many rows as fit,
    // found by bisection (the whole table does not fit; no row always does).
    if let Event::Disks { disks, .. } = event {
        let cut = |n: usize| bytes(&Event::Disks { disks: disks[..n].to_vec(), truncated: true });
        let (mut fits, mut over) = (0, disks.len());
        out = cut(0);
        while fits + 1 < over {
            let mid = fits + (over - fits) / 2;
            let line = cut(mid);
            if line.len() < fifo::MAX_LINE {
                (fits, out) = (mid, line);
            } else {
                over = mid;
            }
        }
    }
    out
}

/// How many subscribers may be registered: each one holds a descriptor.
pub const MAX_SUBSCRIBERS: usize = 64;

/// The write ends held open, and the event sequence counter.
#[derive(Debug, Default)]
pub struct Subscribers {
    seq: u64,
    streams: HashMap<PathBuf, Stream>,
}

/// A subscriber's FIFO opened for writing, and which inode it is.
#[derive(Debug)]
struct Stream {
    file: File,
    id: (u64, u64),
}

impl Stream {
    fn new(file: File) -> Option<Stream> {
        let m = file.metadata().ok()?;
        Some(Stream { file, id: (m.dev(), m.ino()) })
    }

    /// Whether `path` still names this FIFO (not deleted, not replaced).
    fn still_at(&self, path: &Path) -> bool {
        std::fs::symlink_metadata(path)
            .is_ok_and(|m| m.file_type().is_fifo() && (m.dev(), m.ino()) == self.id)
    }
}

impl Subscribers {
    /// Sends `event` to every path in `paths` (the registered subscribers);
    /// returns the paths that are gone (deleted, or no longer a FIFO), which
    /// the caller unregisters.
    pub fn broadcast(&mut self, paths: &[PathBuf], event: &Event) -> Vec<PathBuf> {
        self.seq += 1;
        let line = encode(event, self.seq, Local::now());
        // Streams of subscribers no longer registered are closed.
        self.streams.retain(|p, _| paths.contains(p));
        paths.iter().filter_map(|path| self.deliver(path, &line)).collect()
    }

    /// Sends `event` to one subscriber only (the table a new subscriber gets).
    pub fn send_to(&mut self, path: &Path, event: &Event) -> Option<PathBuf> {
        self.seq += 1;
        let line = encode(event, self.seq, Local::now());
        self.deliver(path, &line)
    }

    /// Lets go of an unregistered subscriber's stream (its reader sees EOF).
    pub fn close(&mut self, path: &Path) {
        self.streams.remove(path);
    }

    fn deliver(&mut self, path: &Path, line: &[u8]) -> Option<PathBuf> {
        if let Some(s) = self.streams.get_mut(path) {
            if s.still_at(path) {
                match fifo::write_line(&mut s.file, line) {
                    Delivery::Written => return None,
                    Delivery::Full => {
                        log::warn!("subscriber {} is not reading (pipe full); event dropped", path.display());
                        return None;
                    }
                    // EPIPE: the reader went away; another may have the FIFO open now.
                    Delivery::NoReader => log::debug!("the reader of {} went away", path.display()),
                    Delivery::Gone(why) => log::debug!("cannot write to {}: {why}", path.display()),
                }
            }
            self.streams.remove(path);
        }
        let mut file = match fifo::open_writer(path) {
            Ok(f) => f,
            Err(Delivery::Gone(why)) => {
                log::warn!("subscriber {} is gone ({why}); unregistering it", path.display());
                return Some(path.to_owned());
            }
            Err(_) => {
                log::debug!("subscriber {} has no reader; event missed", path.display());
                return None;
            }
        };
        match fifo::write_line(&mut file, line) {
            Delivery::Written => {}
            Delivery::Full => {
                log::warn!("subscriber {} is not reading (pipe full); event dropped", path.display())
            }
            other => {
                log::debug!("subscriber {}: {other:?}; event missed", path.display());
                return None;
            }
        }
        if let Some(s) = Stream::new(file) {
            self.streams.insert(path.to_owned(), s);
        }
        None
    }
}

#[cfg(test)]
/// One event of each kind (the match makes a new kind fail to compile here).
pub(crate) fn one_of_each() -> Vec<Event> {
    let (u, n, dev) =
        ("0b7c3f1e-5d2a-4c8e-9f10-2a3b4c5d6e7f".to_owned(), "office".to_owned(), PathBuf::from("/dev/sdb1"));
    let all = vec![
        Event::Disks { disks: vec![tests::row(1), tests::row(2)], truncated: true },
        Event::DiskSaved { uuid: u.clone(), name: n.clone(), renamed_from: Some("old".into()) },
        Event::DiskForgotten { uuid: u.clone(), name: n.clone() },
        Event::DiskPlugged { uuid: u.clone(), name: n.clone(), device: dev.clone(), fstype: "ext4".into() },
        Event::DiskMismatch {
            uuid: u.clone(),
            name: n.clone(),
            device: dev.clone(),
            why: "no disk-id".into(),
        },
        Event::UnknownDisk {
            uuid: u.clone(),
            label: Some("L".into()),
            fstype: "xfs".into(),
            size: Some(1 << 30),
            device: dev.clone(),
            encrypted: None,
        },
        Event::UnknownDisk {
            uuid: u.clone(),
            label: None,
            fstype: "crypto_LUKS".into(),
            size: Some(1 << 30),
            device: dev.clone(),
            encrypted: Some("luks".into()),
        },
        Event::BackupQueued { uuid: u.clone(), name: n.clone(), position: 2 },
        Event::BackupStarted {
            uuid: u.clone(),
            name: n.clone(),
            device: dev.clone(),
            log: "/var/log/x.log".into(),
        },
        Event::ScriptStarted { uuid: u.clone(), name: n.clone(), script: "a.sh".into() },
        Event::BackupProgress {
            uuid: u.clone(),
            name: n.clone(),
            script: Some("a.sh".into()),
            now: ProgressNow {
                phase: "snapshot".into(),
                files_done: 23_104,
                bytes_done: 1 << 30,
                files_expected: Some(51_230),
                bytes_expected: None,
                percent: Some(45.1),
                eta_secs: Some(180),
            },
        },
        Event::ScriptFinished {
            uuid: u.clone(),
            name: n.clone(),
            script: "a.sh".into(),
            exit_code: Some(3),
            outcome: "failed with exit code 3".into(),
            duration_secs: 1.5,
        },
        Event::BackupFinished {
            uuid: u.clone(),
            name: n.clone(),
            status: Status::Removed,
            duration_secs: 2.25,
            log: "/var/log/x.log".into(),
            error: Some("e".into()),
        },
        Event::SafeToRemove {
            uuid: u.clone(),
            name: n.clone(),
            device: dev.clone(),
            powered_off: false,
            power_off_error: Some("no udisks".into()),
        },
        Event::DiskUnplugged { uuid: u.clone(), name: None, device: dev.clone() },
        Event::DiskOpened {
            uuid: u.clone(),
            name: n.clone(),
            device: dev.clone(),
            mount: "/run/tetras-back/mnt/x".into(),
        },
        Event::DiskClosed { uuid: u.clone(), name: n.clone(), why: "timeout".into() },
        Event::MailFailed {
            subject: "s".into(),
            to: vec!["root@localhost".into()],
            error: "refused".into(),
            attempts: 3,
            retry_at: Some(Local::now()),
        },
        Event::DaemonStopping,
    ];
    for e in &all {
        match e {
            Event::Disks { .. }
            | Event::DiskSaved { .. }
            | Event::DiskForgotten { .. }
            | Event::DiskPlugged { .. }
            | Event::DiskMismatch { .. }
            | Event::UnknownDisk { .. }
            | Event::BackupQueued { .. }
            | Event::BackupStarted { .. }
            | Event::ScriptStarted { .. }
            | Event::BackupProgress { .. }
            | Event::ScriptFinished { .. }
            | Event::BackupFinished { .. }
            | Event::SafeToRemove { .. }
            | Event::DiskUnplugged { .. }
            | Event::DiskOpened { .. }
            | Event::DiskClosed { .. }
            | Event::MailFailed { .. }
            | Event::DaemonStopping => {}
        }
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_reads_back_as_it_was_written() {
        for e in super::one_of_each() {
            let line = encode(&e, 42, Local::now());
            let back: EventLine = serde_json::from_slice(&line).unwrap_or_else(|err| panic!("{e:?}: {err}"));
            assert_eq!((back.event.as_ref(), back.seq), (&e, 42), "{}", String::from_utf8_lossy(&line));
        }
    }

    pub(crate) fn row(i: usize) -> DiskRow {
        DiskRow {
            uuid: format!("{i:08}-0000-0000-0000-000000000000"),
            name: format!("disk-{i}-{}", "x".repeat(50)),
            connected: false,
            last_seen: Some(Local::now()),
            last_backup: Some(Status::Success),
            last_backup_finished: Some(Local::now()),
            last_success: Some(Local::now()),
            next_due: None,
            held: i.is_multiple_of(2),
            opened: false,
            safe_to_remove: false,
        }
    }

    #[test]
    fn lines_carry_event_seq_and_time() {
        let e = Event::DiskSaved { uuid: "u".into(), name: "n".into(), renamed_from: None };
        let v: serde_json::Value = serde_json::from_slice(&encode(&e, 7, Local::now())).unwrap();
        assert_eq!(v["event"], "disk_saved");
        assert_eq!(v["seq"], 7);
        assert!(v["time"].as_str().unwrap().len() >= 20);
        assert!(v.get("renamed_from").is_none());
    }

    #[test]
    fn a_huge_disk_table_is_cut_to_one_atomic_line() {
        for n in [30, 100, 20_000] {
            let e = Event::Disks { disks: (0..n).map(row).collect(), truncated: false };
            let started = std::time::Instant::now();
            let line = encode(&e, 1, Local::now());
            assert!(started.elapsed() < std::time::Duration::from_secs(2), "{n}: {:?}", started.elapsed());
            assert!(line.len() < fifo::MAX_LINE);
            let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
            assert_eq!(v["truncated"], true);
            let kept = v["disks"].as_array().unwrap().len();
            assert!(kept > 5, "{kept}");
            // As many rows as fit: one more would not.
            let more = Event::Disks { disks: (0..kept + 1).map(row).collect(), truncated: true };
            let more = serde_json::to_vec(&EventLine {
                event: Cow::Owned(more),
                seq: 1,
                time: v["time"].as_str().unwrap().into(),
            });
            assert!(more.unwrap().len() >= fifo::MAX_LINE, "{n}: {kept} rows, and one more fits");
        }
    }
}
