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
use serde::Deserialize;
use serde_json::Value;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

use crate::clients::control::client;
use crate::clients::control::Request;
use crate::clients::events::{Event, EventLine};
use crate::clients::fifo::{self, Line, LineReader};
use crate::config::Config;
use crate::lang::Language;

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
    // On a terminal, the running backup's progress is one line redrawn in place.
    let terminal = !json && std::io::IsTerminal::is_terminal(&stdout);
    let mut bar: Option<String> = None;
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
            } else if let (true, Some(drawn)) = (terminal, event.as_ref().and_then(progress_bar)) {
                bar = Some(drawn);
                write!(out, "\r\x1b[2K{}", bar.as_deref().unwrap_or_default())
            } else {
                let text = match &event {
                    Some(v) => describe(v),
                    None => format!("(unreadable event) {}", String::from_utf8_lossy(&bytes)),
                };
                if event.as_ref().is_some_and(|v| v["event"] == "backup_finished") {
                    bar = None;
                }
                let above = if terminal { "\r\x1b[2K" } else { "" };
                let again = bar.as_deref().unwrap_or_default();
                write!(out, "{above}{text}\n{again}")
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

/// One human-readable line for an event; events this build does not know
/// (a newer daemon's) are shown with their fields.
fn describe(v: &Value) -> String {
    let Ok(line) = EventLine::deserialize(v) else { return unknown(v) };
    let time = line.time.get(11..19).unwrap_or("--:--:--");
    let name = v["event"].as_str().unwrap_or_default();
    let text = match line.event.as_ref() {
        Event::Disks { disks, .. } => {
            let names: Vec<String> = disks
                .iter()
                .map(|d| {
                    let how = match (d.opened, d.held, d.connected) {
                        (true, ..) => " (opened)",
                        (false, true, _) => " (held)",
                        (false, false, true) => " (connected)",
                        _ => "",
                    };
                    format!("{}{how}", d.name)
                })
                .collect();
            format!("{} known disk(s): {}", disks.len(), names.join(", "))
        }
        Event::DiskSaved { uuid, name, renamed_from: Some(from) } => {
            format!("disk {uuid} renamed {name} (was {from})")
        }
        Event::DiskSaved { uuid, name, renamed_from: None } => format!("disk {uuid} saved as {name}"),
        Event::DiskForgotten { uuid, name } => format!("disk {name} ({uuid}) forgotten"),
        Event::DaemonStopping => "the daemon is stopping".into(),
        Event::DiskPlugged { name, fstype, device, .. } => {
            format!("{name} ({fstype}) plugged in on {}", device.display())
        }
        Event::DiskMismatch { name, device, .. } => {
            format!("the disk on {} claims to be {name} but is not: REFUSED", device.display())
        }
        Event::UnknownDisk { uuid, device, encrypted: Some(how), .. } => format!(
            "{uuid} on {} is a {} encrypted volume: tetras-back does not open those (they need device-mapper)",
            device.display(),
            how.to_uppercase()
        ),
        Event::UnknownDisk { uuid, device, .. } => format!(
            "{uuid} on {} is not a known disk (save it with: tetras-back save {uuid} NAME)",
            device.display()
        ),
        Event::BackupQueued { name, position, .. } => format!("backup of {name} waits (position {position})"),
        Event::BackupStarted { name, log, .. } => format!("backup of {name} started, log {}", log.display()),
        Event::ScriptStarted { name, script, .. } => format!("{name}: running {script}"),
        Event::BackupProgress { name, now, .. } => {
            format!("{name}: {}, {}", now.phase, now.describe(Language::En))
        }
        Event::ScriptFinished { name, script, outcome, duration_secs, .. } => {
            format!("{name}: {script} {outcome} ({duration_secs:.1}s)")
        }
        Event::BackupFinished { name, status, duration_secs, error, .. } => {
            let error = error.as_ref().map(|e| format!(": {e}")).unwrap_or_default();
            format!("backup of {name}: {status} in {duration_secs:.1}s{error}")
        }
        Event::SafeToRemove { name, device, powered_off, .. } => format!(
            "{name} ({}) is unmounted{}: SAFE TO REMOVE",
            device.display(),
            if *powered_off { " and powered off" } else { "" }
        ),
        Event::DiskUnplugged { name: Some(name), device, .. } => {
            format!("{name} ({}) unplugged", device.display())
        }
        Event::DiskUnplugged { uuid, name: None, device } => {
            format!("{uuid} ({}) unplugged", device.display())
        }
        Event::DiskOpened { name, mount, .. } => {
            format!("{name} is opened read-only for restore at {}", mount.display())
        }
        Event::DiskClosed { name, why, .. } => format!("{name} was closed ({why})"),
        Event::MailFailed { subject, error, .. } => format!("mail {subject:?} not sent: {error}"),
    };
    format!("{time}  {name:<16} {text}")
}

/// The line a terminal shows for a `backup_progress` event:
/// `office  [#########-----------]  45%  snapshot  23,104 of 51,230 files, about 3 min left`.
fn progress_bar(v: &Value) -> Option<String> {
    let line = EventLine::deserialize(v).ok()?;
    let Event::BackupProgress { name, now, .. } = line.event.as_ref() else { return None };
    const WIDTH: usize = 24;
    let bar = match now.percent {
        Some(p) => {
            let full = ((p.clamp(0.0, 100.0) / 100.0) * WIDTH as f64).round() as usize;
            format!("[{}{}] {p:>3.0}%  ", "#".repeat(full), "-".repeat(WIDTH - full))
        }
        None => String::new(),
    };
    let mut described = now.clone();
    described.percent = None;
    Some(format!("{name}  {bar}{}  {}", now.phase, described.describe(Language::En)))
}

/// An event this build cannot read: its name and fields as they are.
fn unknown(v: &Value) -> String {
    let time = v["time"].as_str().and_then(|t| t.get(11..19)).unwrap_or("--:--:--");
    let mut fields: Vec<String> = v
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, _)| !matches!(k.as_str(), "event" | "seq" | "time"))
        .map(|(k, val)| format!("{k}={}", val.as_str().map_or(val.to_string(), str::to_owned)))
        .collect();
    fields.sort();
    format!("{time}  {:<16} {}", v["event"].as_str().unwrap_or("?"), fields.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_reads_as_a_line_of_text() {
        use std::borrow::Cow;
        for e in crate::clients::events::one_of_each() {
            let line =
                EventLine { event: Cow::Borrowed(&e), seq: 1, time: "2026-11-24T10:11:12+01:00".into() };
            let text = describe(&serde_json::to_value(&line).unwrap());
            assert!(text.starts_with("10:11:12  "), "{text}");
            assert!(!text.contains('=') && !text.contains('?'), "read as an unknown event: {text}");
        }
        let newer = serde_json::json!({"event": "disk_exploded", "seq": 2, "time": "2026-11-24T10:11:13+01:00", "uuid": "u"});
        assert_eq!(describe(&newer), "10:11:13  disk_exploded    uuid=u");
    }

    #[test]
    fn a_progress_event_draws_a_bar() {
        let e = crate::clients::events::one_of_each()
            .into_iter()
            .find(|e| matches!(e, Event::BackupProgress { .. }))
            .unwrap();
        let line = EventLine { event: std::borrow::Cow::Borrowed(&e), seq: 1, time: "t".into() };
        let drawn = progress_bar(&serde_json::to_value(&line).unwrap()).unwrap();
        assert!(drawn.contains("[###########-------------]  45%  snapshot"), "{drawn}");
        assert!(drawn.ends_with("23,104 of 51,230 files, about 3 min left"), "{drawn}");
    }

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
