//! `tetras-back watch`: follow the daemon's events on a temporary FIFO.

use std::fs;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use serde_json::Value;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

use crate::config::Config;
use crate::control::client;
use crate::control::Request;
use crate::fifo::{self, Line, LineReader};

/// The watch FIFO: unregistered and removed on the way out, however we leave.
struct Registration<'a> {
    config: &'a Config,
    path: PathBuf,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        // The daemon may be gone already; the FIFO goes in any case, and a
        // daemon that still lists it drops it at its next event.
        let _ = client::send(self.config, &Request::Unregister { path: self.path.clone() });
        let _ = fs::remove_file(&self.path);
    }
}

pub fn run(config: &Config, json: bool) -> Result<ExitCode> {
    if !client::daemon_running(config) {
        return Err(client::NotRunning { control: config.control_path() }.into());
    }
    let path = config.replies_dir().join(format!("watch-{}", std::process::id()));
    fifo::create(&path, 0o600)?;
    // Opened read-write before registering: the daemon's first write (the
    // disk table) finds a reader, and we never see EOF between events.
    let mut reader = match fifo::open_reader(&path) {
        Ok(r) => r,
        Err(e) => {
            let _ = fs::remove_file(&path);
            return Err(e);
        }
    };
    let (mut sig_rx, sig_tx) = UnixStream::pair()?;
    for s in [SIGINT, SIGTERM, SIGHUP] {
        signal_hook::low_level::pipe::register(s, sig_tx.try_clone()?)?;
    }
    let registration = Registration { config, path: path.clone() };
    let reply = client::send(config, &Request::Register { path })?;
    if !reply.ok {
        anyhow::bail!("{}", reply.error.unwrap_or_default());
    }
    if !json {
        eprintln!("Watching tetras-back events (Ctrl-C to stop)...");
    }

    let mut lines = LineReader::default();
    let mut gaps = SeqGaps::default();
    let stdout = std::io::stdout();
    loop {
        let mut fds =
            [PollFd::new(reader.as_fd(), PollFlags::POLLIN), PollFd::new(sig_rx.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => return Err(e).context("poll failed"),
        }
        if fds[1].revents().is_some_and(|r| !r.is_empty()) {
            let _ = sig_rx.read(&mut [0u8; 16]);
            break;
        }
        for line in lines.read_from(&mut reader)?.unwrap_or_default() {
            let Line::Complete(bytes) = line else { continue };
            let event = serde_json::from_slice::<Value>(&bytes).ok();
            if let Some(missed) = gaps.missed(event.as_ref().and_then(|v| v["seq"].as_u64())) {
                eprintln!("tetras-back: missed {missed} event(s) (the pipe was full or nobody was reading)");
            }
            let mut out = stdout.lock();
            let printed = if json {
                out.write_all(&bytes).and_then(|_| out.write_all(b"\n"))
            } else {
                match &event {
                    Some(v) => writeln!(out, "{}", describe(v)),
                    None => writeln!(out, "(unreadable event) {}", String::from_utf8_lossy(&bytes)),
                }
            };
            // A closed stdout (`watch | head`) ends the watch.
            if printed.and_then(|_| out.flush()).is_err() {
                drop(registration);
                return Ok(ExitCode::SUCCESS);
            }
        }
    }
    drop(registration);
    Ok(ExitCode::SUCCESS)
}

/// Notices events that never arrived: `seq` grows by one within a daemon's
/// run (and starts again at 1 when the daemon restarts).
#[derive(Debug, Default)]
struct SeqGaps {
    last: Option<u64>,
}

impl SeqGaps {
    /// How many events were missed before the one numbered `seq`, if any.
    fn missed(&mut self, seq: Option<u64>) -> Option<u64> {
        let seq = seq?;
        let missed = self.last.filter(|&last| seq > last + 1).map(|last| seq - last - 1);
        self.last = Some(seq);
        missed
    }
}

/// One human-readable line for an event.
fn describe(v: &Value) -> String {
    let s = |k: &str| v[k].as_str().unwrap_or("?").to_owned();
    let time = v["time"].as_str().and_then(|t| t.get(11..19)).unwrap_or("--:--:--");
    let event = s("event");
    let text = match event.as_str() {
        "disks" => {
            let disks = v["disks"].as_array().cloned().unwrap_or_default();
            let names: Vec<String> = disks
                .iter()
                .map(|d| {
                    let mark = if d["connected"].as_bool() == Some(true) { " (connected)" } else { "" };
                    format!("{}{mark}", d["name"].as_str().unwrap_or("?"))
                })
                .collect();
            format!("{} known disk(s): {}", disks.len(), names.join(", "))
        }
        "disk_saved" => match v["renamed_from"].as_str() {
            Some(from) => format!("disk {} renamed {} (was {from})", s("uuid"), s("name")),
            None => format!("disk {} saved as {}", s("uuid"), s("name")),
        },
        "disk_forgotten" => format!("disk {} ({}) forgotten", s("name"), s("uuid")),
        "daemon_stopping" => "the daemon is stopping".into(),
        "disk_plugged" => format!("{} ({}) plugged in on {}", s("name"), s("fstype"), s("device")),
        "unknown_disk" => format!(
            "{} on {} is not a known disk (save it with: tetras-back save {} NAME)",
            s("uuid"),
            s("device"),
            s("uuid")
        ),
        "backup_queued" => format!("backup of {} waits (position {})", s("name"), v["position"]),
        "backup_started" => format!("backup of {} started, log {}", s("name"), s("log")),
        "script_started" => format!("{}: running {}", s("name"), s("script")),
        "script_finished" => {
            format!(
                "{}: {} {} ({:.1}s)",
                s("name"),
                s("script"),
                s("outcome"),
                v["duration_secs"].as_f64().unwrap_or(0.0)
            )
        }
        "backup_finished" => {
            let error = v["error"].as_str().map(|e| format!(": {e}")).unwrap_or_default();
            format!(
                "backup of {}: {} in {:.1}s{error}",
                s("name"),
                s("status"),
                v["duration_secs"].as_f64().unwrap_or(0.0)
            )
        }
        "safe_to_remove" => format!("{} ({}) is unmounted: SAFE TO REMOVE", s("name"), s("device")),
        "disk_unplugged" => match v["name"].as_str() {
            Some(name) => format!("{name} ({}) unplugged", s("device")),
            None => format!("{} ({}) unplugged", s("uuid"), s("device")),
        },
        _ => {
            // Events this build does not know yet: show their fields.
            let mut fields: Vec<String> = v
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(k, _)| !matches!(k.as_str(), "event" | "seq" | "time"))
                .map(|(k, val)| format!("{k}={}", val.as_str().map_or(val.to_string(), str::to_owned)))
                .collect();
            fields.sort();
            fields.join(" ")
        }
    };
    format!("{time}  {event:<16} {text}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_gaps_are_counted_and_a_restart_is_not_one() {
        let mut g = SeqGaps::default();
        assert_eq!([3, 4, 5].map(|s| g.missed(Some(s))), [None, None, None]);
        assert_eq!(g.missed(Some(9)), Some(3));
        assert_eq!(g.missed(None), None, "an unreadable line says nothing");
        assert_eq!(g.missed(Some(1)), None, "the daemon restarted");
        assert_eq!(g.missed(Some(3)), Some(1));
    }
}
