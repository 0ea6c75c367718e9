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
//! One JSON object per line, at most [`crate::fifo::MAX_LINE`] bytes, so each
//! request is one atomic pipe write and two CLIs never interleave. `run_dir`
//! is 0700: only root can send commands (the original's FIFO was 0666).
//! The full protocol, with examples, is in `docs/protocol.md`.

pub mod client;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// A command sent to the daemon.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Remember a disk (or rename a known one).
    Save { uuid: String, name: String },
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
    pub data: Option<serde_json::Value>,
}

impl Reply {
    pub fn ok(message: impl Into<String>) -> Reply {
        Reply { ok: true, message: Some(message.into()), error: None, data: None }
    }

    pub fn data(data: serde_json::Value) -> Reply {
        Reply { ok: true, message: None, error: None, data: Some(data) }
    }

    pub fn error(error: impl Into<String>) -> Reply {
        Reply { ok: false, message: None, error: Some(error.into()), data: None }
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
        assert_eq!(r.unwrap(), Request::Save { uuid: "u".into(), name: "n".into() });
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
