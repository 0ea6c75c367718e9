//! The control channel: how the CLI (or any root client) talks to the daemon.
//!
//! ```text
//!   CLI                                   daemon
//!    | mkfifo <run_dir>/replies/<id>        |
//!    | {"cmd":"save",...,"reply":"<id>"}\n  |
//!    |---- <run_dir>/control (0600) ------->| validate, apply, persist
//!    |<--- <run_dir>/replies/<id> ----------| {"ok":true,...}\n
//!    | rm <run_dir>/replies/<id>            |
//! ```
//!
//! One JSON object per line. A request is at most [`crate::clients::fifo::MAX_LINE`]
//! bytes, so each one is one atomic pipe write and two CLIs never interleave.
//! A reply is as long as it needs (the disk table of thousands of disks is
//! larger than a pipe): only the daemon writes on a reply FIFO, once, and
//! [`answer`] never blocks the daemon for it. `run_dir` is 0700: only root
//! can send commands (the original's FIFO was 0666).
//! The full protocol, with examples, is in `docs/protocol.md`.

pub mod client;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use chrono::{DateTime, Local};
use serde::{Deserialize, Serialize};

use crate::clients::events::{DiskRow, UnknownRow};
use crate::clients::fifo::{self, Delivery};
use crate::store::report::{ProgressNow, Status};

/// A command sent to the daemon.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Remember a disk (or rename a known one); `adopt`: the disk plugged
    /// in under this UUID is the one of that name (it gets a new identity).
    Save {
        uuid: String,
        name: String,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        adopt: bool,
    },
    /// Forget a known disk.
    Forget { uuid: String },
    /// Send events to this FIFO.
    Register { path: PathBuf },
    /// Stop sending events to this FIFO.
    Unregister { path: PathBuf },
    /// Act as if this block device had been plugged in.
    Plug { device: PathBuf },
    /// Act as if this block device had been removed.
    Unplug { device: PathBuf },
    /// Back up a plugged-in known disk now, by hand.
    Backup { name: String },
    /// Open the disk for restore instead of backing it up when plugged in.
    Hold { name: String },
    /// Back the disk up again when plugged in.
    Release { name: String },
    /// Mount a plugged-in known disk read-only for restore.
    Open { name: String },
    /// Unmount an opened disk (then it is safe to remove).
    Close { name: String },
    /// Where the disk is mounted now (opened, or being backed up), for
    /// `backups` and `restore`; counts as a use of an opened disk.
    Locate { name: String },
    /// Restore `paths` of the backup folder `backup` of an opened disk into
    /// `to`, with `restore`'s rules (the web console's "restore to..."). The
    /// reply comes when it is done; `user` is who asked, for the log.
    Restore {
        name: String,
        backup: String,
        paths: Vec<PathBuf>,
        to: PathBuf,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        overwrite: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user: Option<String>,
    },
    /// What the daemon is doing.
    Status,
    /// The known disks, with whether they are connected.
    Disks,
    /// Re-read the configuration file; the reply says what is wrong with it.
    Reload,
    /// Stop the daemon.
    Stop,
}

/// The daemon's answer, one line on the reply FIFO.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Data>,
}

/// What `status` and `disks` answer with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Data {
    Status(Box<StatusInfo>),
    Disks {
        disks: Vec<DiskRow>,
        /// The plugged-in filesystems that are not known disks.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        unknown: Vec<UnknownRow>,
    },
    Located {
        disk: DiskLocation,
    },
}

/// Where a known disk is mounted now, and why (`locate`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskLocation {
    pub name: String,
    pub uuid: String,
    pub mount: PathBuf,
    /// Opened read-only for restore (otherwise: being backed up, writable).
    pub opened: bool,
}

/// The daemon's `status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusInfo {
    pub pid: u32,
    pub started: DateTime<Local>,
    pub uptime_secs: i64,
    /// "idle" or "backing up".
    pub activity: String,
    /// The backup running now.
    pub backup: Option<RunningBackup>,
    /// The names of the disks waiting for their backup, in order.
    pub queue: Vec<String>,
    /// The configuration file (`None`: built-in defaults).
    pub config: Option<PathBuf>,
    pub state_dir: PathBuf,
    /// The enabled scripts.
    pub scripts: Vec<String>,
    pub known_disks: usize,
    pub subscribers: usize,
    pub last_backup: Option<LastBackupInfo>,
    /// Mails waiting to be sent again, and abandoned (`None`: no history).
    pub mail_pending: Option<u64>,
    pub mail_abandoned: Option<u64>,
    /// history.sqlite, when the daemon could open it.
    pub history: Option<PathBuf>,
    /// The plugged-in disk backed up next by `[schedule]`, and when.
    pub next_due: Option<NextDue>,
    /// The disks opened for restore now.
    #[serde(default)]
    pub opened: Vec<String>,
    /// The disks held (opened for restore when plugged in).
    #[serde(default)]
    pub held: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NextDue {
    pub disk: String,
    pub at: DateTime<Local>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunningBackup {
    pub disk: String,
    pub uuid: String,
    pub device: PathBuf,
    pub script: Option<String>,
    pub elapsed_secs: u64,
    /// Where it stands (what the last `backup_progress` said).
    #[serde(default)]
    pub progress: Option<ProgressNow>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LastBackupInfo {
    pub disk: String,
    pub status: Status,
    pub started: DateTime<Local>,
    pub finished: Option<DateTime<Local>>,
}

impl Reply {
    pub fn ok(message: impl Into<String>) -> Reply {
        Reply { ok: true, message: Some(message.into()), error: None, data: None }
    }

    pub fn data(data: Data) -> Reply {
        Reply { ok: true, message: None, error: None, data: Some(data) }
    }

    pub fn error(error: impl Into<String>) -> Reply {
        Reply { ok: false, message: None, error: Some(error.into()), data: None }
    }
}

/// Long replies being written at once, at most (each by a thread of its own).
const MAX_LONG_REPLIES: usize = 16;

/// Writes `reply`, one line, on the client's reply FIFO, never blocking the
/// caller: what the pipe takes now is written now (every short reply, in
/// one write); the rest of a long one is written by a thread of its own as
/// the client reads it, for as long as the client waits for a reply
/// ([`client::REPLY_TIMEOUT`]). A client that went away costs a log line.
pub fn answer(path: &Path, reply: &Reply) {
    let line = fifo::with_newline(&serde_json::to_vec(reply).expect("replies serialise"));
    let failed = |d: Delivery| log::warn!("control: could not answer on {}: {d:?}", path.display());
    let mut file = match fifo::open_writer(path) {
        Ok(f) => f,
        Err(d) => return failed(d),
    };
    let done = match fifo::write_now(&mut file, &line) {
        Ok(n) if n == line.len() => return,
        Ok(n) => n,
        Err(d) => return failed(d),
    };
    static WRITING: AtomicUsize = AtomicUsize::new(0);
    if WRITING.fetch_add(1, Ordering::SeqCst) >= MAX_LONG_REPLIES {
        WRITING.fetch_sub(1, Ordering::SeqCst);
        return failed(Delivery::Full);
    }
    let owned = path.to_owned();
    let spawned = std::thread::Builder::new().name("long-reply".into()).spawn(move || {
        let deadline = Instant::now() + client::REPLY_TIMEOUT;
        let outcome = fifo::write_all_until(&mut file, &line[done..], deadline);
        WRITING.fetch_sub(1, Ordering::SeqCst);
        if outcome != Delivery::Written {
            log::warn!("control: could not answer on {}: {outcome:?}", owned.display());
        }
    });
    if let Err(e) = spawned {
        WRITING.fetch_sub(1, Ordering::SeqCst);
        failed(Delivery::Gone(format!("no thread to write a long reply: {e}")));
    }
}

/// Why a control line was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ProtocolError {
    #[error("not valid JSON: {0}")]
    Json(String),
    #[error("expected a JSON object with a \"cmd\" key")]
    NotAnObject,
    #[error("\"reply\" must be the path of a FIFO directly inside {0}")]
    BadReplyPath(PathBuf),
    #[error("{0}")]
    BadCommand(String),
}

/// A parsed control line: the command (or why it is invalid) and where to answer.
pub struct Incoming {
    pub request: Result<Request, ProtocolError>,
    pub reply: Option<PathBuf>,
}

/// Parses one control line. The reply path is extracted even when the
/// command is invalid, so that the sender learns what was wrong.
pub fn parse_line(line: &[u8], replies_dir: &Path) -> Incoming {
    let mut value: serde_json::Value = match serde_json::from_slice(line) {
        Ok(v) => v,
        Err(e) => return Incoming { request: Err(ProtocolError::Json(e.to_string())), reply: None },
    };
    let Some(obj) = value.as_object_mut() else {
        return Incoming { request: Err(ProtocolError::NotAnObject), reply: None };
    };
    let reply = match obj.remove("reply") {
        None => None,
        Some(serde_json::Value::String(p)) => {
            let p = PathBuf::from(p);
            // Only FIFOs that a root CLI made in the root-only replies
            // directory: the daemon must not be told to write elsewhere.
            let inside =
                p.parent() == Some(replies_dir) && p.file_name().is_some_and(|n| n != ".." && n != ".");
            if !inside {
                return Incoming {
                    request: Err(ProtocolError::BadReplyPath(replies_dir.to_owned())),
                    reply: None,
                };
            }
            Some(p)
        }
        Some(_) => {
            return Incoming {
                request: Err(ProtocolError::BadReplyPath(replies_dir.to_owned())),
                reply: None,
            }
        }
    };
    if !obj.contains_key("cmd") {
        return Incoming { request: Err(ProtocolError::NotAnObject), reply };
    }
    let request = serde_json::from_value(value).map_err(|e| ProtocolError::BadCommand(e.to_string()));
    Incoming { request, reply }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> (Result<Request, ProtocolError>, Option<PathBuf>) {
        let i = parse_line(line.as_bytes(), Path::new("/run/t/replies"));
        (i.request, i.reply)
    }

    #[test]
    fn valid_commands() {
        let (r, reply) = parse(r#"{"cmd":"save","uuid":"u","name":"n","reply":"/run/t/replies/12"}"#);
        assert_eq!(r.unwrap(), Request::Save { uuid: "u".into(), name: "n".into(), adopt: false });
        assert_eq!(reply.unwrap(), PathBuf::from("/run/t/replies/12"));
        assert_eq!(parse(r#"{"cmd":"stop"}"#).0.unwrap(), Request::Stop);
    }

    #[test]
    fn invalid_commands_keep_the_reply_path() {
        let (r, reply) = parse(r#"{"cmd":"format_disk","reply":"/run/t/replies/1"}"#);
        assert!(matches!(r, Err(ProtocolError::BadCommand(ref m)) if m.contains("format_disk")), "{r:?}");
        assert!(reply.is_some());
        let (r, _) = parse(r#"{"cmd":"save","uuid":"u","name":"n","force":true}"#);
        assert!(matches!(r, Err(ProtocolError::BadCommand(ref m)) if m.contains("force")), "{r:?}");
        let (r, _) = parse(r#"{"cmd":"save","uuid":"u"}"#);
        assert!(matches!(r, Err(ProtocolError::BadCommand(ref m)) if m.contains("name")), "{r:?}");
    }

    /// Every request and every kind of reply reads back as it was written
    /// (the CLI and the daemon use these same types on each side).
    #[test]
    fn requests_and_replies_read_back_as_written() {
        let requests = [
            Request::Save { uuid: "u".into(), name: "n".into(), adopt: false },
            Request::Save { uuid: "u".into(), name: "n".into(), adopt: true },
            Request::Forget { uuid: "u".into() },
            Request::Register { path: "/run/f".into() },
            Request::Unregister { path: "/run/f".into() },
            Request::Plug { device: "/dev/sdb1".into() },
            Request::Unplug { device: "/dev/sdb1".into() },
            Request::Backup { name: "n".into() },
            Request::Hold { name: "n".into() },
            Request::Release { name: "n".into() },
            Request::Open { name: "n".into() },
            Request::Close { name: "n".into() },
            Request::Locate { name: "n".into() },
            Request::Restore {
                name: "n".into(),
                backup: "2026-11-24_02-00-00_Sauvegarde_srv".into(),
                paths: vec!["Donnees/etc".into()],
                to: "/srv/restored".into(),
                overwrite: true,
                user: Some("alice".into()),
            },
            Request::Status,
            Request::Disks,
            Request::Reload,
            Request::Stop,
        ];
        for r in requests {
            let line = serde_json::to_vec(&r).unwrap();
            let back = parse_line(&line, Path::new("/run/t/replies")).request.unwrap();
            assert_eq!(back, r, "{}", String::from_utf8_lossy(&line));
        }
        let now = Local::now();
        let status = StatusInfo {
            pid: 812,
            started: now,
            uptime_secs: 3600,
            activity: "backing up".into(),
            backup: Some(RunningBackup {
                disk: "office".into(),
                uuid: "u".into(),
                device: "/dev/sdb1".into(),
                script: Some("backup_nocloud.sh".into()),
                elapsed_secs: 42,
                progress: Some(ProgressNow {
                    phase: "snapshot".into(),
                    percent: Some(4.5),
                    ..Default::default()
                }),
            }),
            queue: vec!["home".into()],
            config: Some("/etc/tetras-back/tetras-back.toml".into()),
            state_dir: "/var/lib/tetras-back".into(),
            scripts: vec!["backup_nocloud.sh".into()],
            known_disks: 2,
            subscribers: 1,
            last_backup: Some(LastBackupInfo {
                disk: "office".into(),
                status: Status::Success,
                started: now,
                finished: Some(now),
            }),
            mail_pending: Some(0),
            mail_abandoned: None,
            history: Some("/var/lib/tetras-back/history.sqlite".into()),
            next_due: Some(NextDue { disk: "office".into(), at: now }),
            opened: vec!["home".into()],
            held: vec!["home".into()],
        };
        let row = DiskRow {
            uuid: "u".into(),
            name: "office".into(),
            connected: true,
            last_seen: Some(now),
            last_backup: Some(Status::Failed),
            last_backup_finished: None,
            last_success: None,
            next_due: Some(now),
            held: true,
            opened: true,
            safe_to_remove: true,
        };
        for reply in [
            Reply::ok("saved"),
            Reply::error("no such disk"),
            Reply::data(Data::Status(Box::new(status))),
            Reply::data(Data::Disks { disks: vec![row], unknown: vec![] }),
            Reply::data(Data::Disks { disks: vec![], unknown: vec![] }),
            Reply::data(Data::Disks {
                disks: vec![],
                unknown: vec![UnknownRow {
                    uuid: "u2".into(),
                    label: Some("<b>x</b>".into()),
                    fstype: "ext4".into(),
                    size: Some(1 << 30),
                    device: "/dev/sdc1".into(),
                    encrypted: None,
                }],
            }),
            Reply::data(Data::Located {
                disk: DiskLocation {
                    name: "office".into(),
                    uuid: "u".into(),
                    mount: "/run/tetras-back/mnt/u".into(),
                    opened: true,
                },
            }),
        ] {
            let line = serde_json::to_string(&reply).unwrap();
            assert_eq!(serde_json::from_str::<Reply>(&line).unwrap(), reply, "{line}");
        }
    }

    #[test]
    fn garbage_and_foreign_reply_paths_are_refused() {
        assert!(matches!(parse("not json").0, Err(ProtocolError::Json(_))));
        assert!(matches!(parse("[1,2]").0, Err(ProtocolError::NotAnObject)));
        assert!(matches!(parse("{}").0, Err(ProtocolError::NotAnObject)));
        for p in ["/etc/passwd", "/run/t/replies/../control", "/run/t/replies", "relative"] {
            let line = format!(r#"{{"cmd":"status","reply":"{p}"}}"#);
            assert!(matches!(parse(&line).0, Err(ProtocolError::BadReplyPath(_))), "{p}");
        }
    }
}
