//! What each command does on the CLI side: ask the daemon, or, for `save`
//! and `forget` when no daemon runs, edit the state file under its lock.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Result};

use super::{engines, Action, EXIT_NOT_RUNNING};
use crate::clients::control::client::{self, NotRunning};
use crate::clients::control::{Data, DiskLocation, Reply, Request};
use crate::clients::events::DiskRow;
use crate::config::Config;
use crate::daemon::{self, ConfigSource};
use crate::disk::udev_rule;
use crate::lang::Language;
use crate::notify::mail;
use crate::store::history::History;
use crate::store::state::{self, State, StateLock};

pub fn run(action: Action, config_path: PathBuf, explicit: bool) -> Result<ExitCode> {
    // The engines need neither the daemon nor the configuration.
    let action = match action {
        Action::Daemon => {
            daemon::run(ConfigSource { path: config_path, explicit })?;
            return Ok(ExitCode::SUCCESS);
        }
        Action::Snapshot(a) => return engines::snapshot(a),
        Action::Archive(a) => return engines::archive(a),
        Action::Prune(a) => return engines::prune(a),
        Action::Verify(a) => return engines::verify(a),
        Action::Restore(a) if is_dir_path(&a.disk) => return engines::restore(a),
        Action::Generate(a) => return super::generate::run(a),
        Action::Confine(a) => return super::hosts::confine(a),
        Action::Drill { mount } => {
            crate::backup::drill::main(&mount)?;
            return Ok(ExitCode::SUCCESS);
        }
        // The daemon reads the file, and says what is wrong with it: only
        // where to reach the daemon is taken from it here.
        Action::Reload => {
            let run_dir = crate::config::run_dir_of(&config_path);
            return print_reply(client::send_in(&run_dir, &Request::Reload)?);
        }
        other => other,
    };
    let config = Config::load(&config_path, explicit)?;
    match action {
        Action::Hosts(a) => super::hosts::hosts(&config, a),
        Action::Pull(a) => super::hosts::pull(&config, a),
        Action::Daemon
        | Action::Snapshot(_)
        | Action::Archive(_)
        | Action::Prune(_)
        | Action::Verify(_)
        | Action::Generate(_)
        | Action::Confine(_)
        | Action::Drill { .. }
        | Action::Reload => unreachable!("handled above"),
        Action::Restore(mut a) => {
            let disk = located(&config, &a.disk)?;
            if !disk.opened {
                bail!(
                    "disk {} is being backed up; restore from it once its backup has finished \
                     (`tetras-back hold {}` keeps its next plug from backing up)",
                    disk.name,
                    disk.name
                );
            }
            a.disk = disk.mount;
            engines::restore(a)
        }
        Action::Backups { disk, json } => {
            let (root, uuid) = if is_dir_path(&disk) {
                (disk, None)
            } else {
                let d = located(&config, &disk)?;
                (d.mount, Some(d.uuid))
            };
            engines::backups(&config, &root, uuid.as_deref(), json)
        }
        Action::Hold { name } => edit(&config, Request::Hold { name: name.clone() }, |s| {
            let (_, changed) = s.set_held(&name, true)?;
            Ok(state::held_message(&name, true, changed))
        }),
        Action::Release { name } => edit(&config, Request::Release { name: name.clone() }, |s| {
            let (_, changed) = s.set_held(&name, false)?;
            Ok(state::held_message(&name, false, changed))
        }),
        Action::Open { name } => print_reply(client::send(&config, &Request::Open { name })?),
        Action::Close { name } => print_reply(client::send(&config, &Request::Close { name })?),
        Action::Save { uuid, name, adopt } => {
            // Checked here too, so that a typo is reported the same way with or without a daemon.
            let uuid = state::check_uuid(&uuid)?;
            state::check_name(&name)?;
            edit(&config, Request::Save { uuid: uuid.clone(), name: name.clone(), adopt }, |s| {
                let outcome = s.save_disk(&uuid, &name)?;
                if adopt {
                    s.adopt(&uuid)?;
                }
                Ok(outcome.message(&uuid, &name))
            })
        }
        Action::Forget { uuid } => {
            let uuid = state::check_uuid(&uuid)?;
            edit(&config, Request::Forget { uuid: uuid.clone() }, |s| {
                Ok(s.forget_disk(&uuid)?.forgotten_message())
            })
        }
        Action::Register { fifo } => {
            let fifo = std::path::absolute(&fifo).unwrap_or(fifo);
            print_reply(client::send(&config, &Request::Register { path: fifo })?)
        }
        Action::Unregister { fifo } => {
            let fifo = std::path::absolute(&fifo).unwrap_or(fifo);
            print_reply(client::send(&config, &Request::Unregister { path: fifo })?)
        }
        Action::Plug { device } => print_reply(client::send(&config, &Request::Plug { device })?),
        Action::Unplug { device } => print_reply(client::send(&config, &Request::Unplug { device })?),
        Action::Backup { name } => print_reply(client::send(&config, &Request::Backup { name })?),
        Action::Stop => print_reply(client::send(&config, &Request::Stop)?),
        Action::Disks { json } => disks(&config, json),
        Action::Status { json } => status(&config, json),
        Action::Watch { json } => super::watch::run(&config, json),
        Action::Web => crate::web::run(config),
        Action::WebPasswd { name, delete } => crate::web::passwd(&config, &name, delete),
        Action::History(a) => super::history::run(&config, &a),
        Action::MailTest => mail_test(&config),
    }
}

/// Whether a DISK argument is a directory (it has a `/`) rather than a disk's name.
fn is_dir_path(disk: &std::path::Path) -> bool {
    disk.as_os_str().as_encoded_bytes().contains(&b'/')
}

/// Where the daemon has the disk named `name` mounted (opened, or being backed up).
fn located(config: &Config, name: &std::path::Path) -> Result<DiskLocation> {
    let name = name.to_string_lossy().into_owned();
    match client::send(config, &Request::Locate { name: name.clone() }) {
        Ok(Reply { ok: true, data: Some(Data::Located { disk }), .. }) => Ok(disk),
        Ok(Reply { ok: true, .. }) => bail!("the daemon's locate reply has no location"),
        Ok(Reply { error, .. }) => bail!("{}", error.unwrap_or_default()),
        Err(e) if e.is::<NotRunning>() => Err(e.context(format!(
            "disk {name} can only be found through the daemon; give the directory where it is mounted instead"
        ))),
        Err(e) => Err(e),
    }
}

/// Sends a state edit to the daemon, or applies it to the state file
/// directly (under the lock) when no daemon runs.
fn edit(
    config: &Config,
    request: Request,
    apply: impl FnOnce(&mut State) -> Result<String>,
) -> Result<ExitCode> {
    match client::send(config, &request) {
        Ok(reply) => print_reply(reply),
        Err(e) if e.is::<NotRunning>() => {
            let _lock = StateLock::acquire(&config.state_dir, Duration::from_secs(10))?;
            let path = config.state_path();
            let mut state = State::load(&path)?;
            let message = apply(&mut state)?;
            state.store(&path)?;
            if let Err(e) = udev_rule::update(config.udev_rule.as_deref(), &state.disks) {
                eprintln!("tetras-back: warning: {e:#}");
            }
            println!("{message} (daemon not running: state file {} updated)", path.display());
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Err(e),
    }
}

fn print_reply(reply: Reply) -> Result<ExitCode> {
    if !reply.ok {
        bail!("{}", reply.error.unwrap_or_else(|| "the daemon refused the command".into()));
    }
    if let Some(m) = reply.message {
        println!("{m}");
    }
    Ok(ExitCode::SUCCESS)
}

fn disks(config: &Config, json: bool) -> Result<ExitCode> {
    // The daemon knows which disks are connected; without it the state file
    // still tells what is known.
    let (rows, live): (Vec<DiskRow>, bool) = match client::send(config, &Request::Disks) {
        Ok(Reply { ok: true, data: Some(Data::Disks { disks, .. }), .. }) => (disks, true),
        Ok(reply) if reply.ok => bail!("the daemon's disks reply has no disk table"),
        Ok(reply) => bail!("{}", reply.error.unwrap_or_default()),
        Err(e) if e.is::<NotRunning>() => {
            let state = State::load(&config.state_path())?;
            let history = History::open_read_only(&config.history_path()).unwrap_or_else(|e| {
                eprintln!("tetras-back: warning: {e:#}");
                None
            });
            (DiskRow::table(&state, history.as_ref(), |_| false), false)
        }
        Err(e) => return Err(e),
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "disks": rows, "daemon_running": live }))?
        );
        return Ok(ExitCode::SUCCESS);
    }
    if rows.is_empty() {
        println!("No known disks. Remember one with: tetras-back save UUID NAME");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<16} {:<36} {:<9} {:<19} {:<19} LAST BACKUP",
        "NAME", "UUID", "CONNECTED", "LAST SEEN", "LAST SUCCESS"
    );
    let when = |t: Option<chrono::DateTime<chrono::Local>>| {
        t.map_or("never".to_owned(), |t| t.format("%Y-%m-%d %H:%M:%S").to_string())
    };
    for r in &rows {
        let connected = match (live, r.connected) {
            (false, _) => "?",
            (true, true) => "yes",
            (true, false) => "no",
        };
        let backup = match &r.last_backup {
            None => "never".to_owned(),
            Some(status) => format!("{status} ({})", when(r.last_backup_finished)),
        };
        println!(
            "{:<16} {:<36} {:<9} {:<19} {:<19} {backup}",
            r.name,
            r.uuid,
            connected,
            when(r.last_seen),
            when(r.last_success)
        );
    }
    for r in rows.iter().filter(|r| r.next_due.is_some()) {
        println!("{} stays plugged in: next backup at {} (schedule)", r.name, when(r.next_due));
    }
    if !live {
        println!("(the daemon is not running: connection state unknown)");
    }
    Ok(ExitCode::SUCCESS)
}

fn status(config: &Config, json: bool) -> Result<ExitCode> {
    let reply = match client::send(config, &Request::Status) {
        Ok(r) => r,
        Err(e) if e.is::<NotRunning>() => {
            if json {
                println!("{}", serde_json::json!({ "running": false }));
            } else {
                println!("{e}");
            }
            return Ok(ExitCode::from(EXIT_NOT_RUNNING));
        }
        Err(e) => return Err(e),
    };
    let s = match reply {
        Reply { ok: true, data: Some(Data::Status(s)), .. } => s,
        Reply { ok: true, .. } => bail!("the daemon's status reply has no status"),
        Reply { error, .. } => bail!("{}", error.unwrap_or_default()),
    };
    if json {
        let mut data = serde_json::to_value(&s)?;
        data["running"] = true.into();
        println!("{}", serde_json::to_string_pretty(&data)?);
        return Ok(ExitCode::SUCCESS);
    }
    let uptime = Duration::from_secs(s.uptime_secs.max(0) as u64);
    println!("tetras-back daemon: running (pid {}, up {})", s.pid, humantime::format_duration(uptime));
    let activity = match &s.backup {
        Some(r) => {
            let running = r.script.as_ref().map(|s| format!(", running {s}")).unwrap_or_default();
            let phase = r.progress.as_ref().map(|p| format!(" ({})", p.phase)).unwrap_or_default();
            let head = match &r.progress {
                Some(p) => format!("backing up {}: {}", r.disk, p.describe(Language::En)),
                None => format!("backing up {}", r.disk),
            };
            format!("{head}\n             on {} for {}s{running}{phase}", r.device.display(), r.elapsed_secs)
        }
        None => s.activity.clone(),
    };
    println!("activity:    {activity}");
    if !s.queue.is_empty() {
        println!("queued:      {}", s.queue.join(", "));
    }
    let config = s.config.as_ref().map_or("built-in defaults".into(), |p| p.display().to_string());
    println!("config:      {config}");
    println!("state:       {}", s.state_dir.display());
    println!("scripts:     {}", s.scripts.join(", "));
    println!("known disks: {}   subscribers: {}", s.known_disks, s.subscribers);
    if let Some(n) = &s.next_due {
        println!("next backup: {} at {} (schedule)", n.disk, n.at.format("%Y-%m-%d %H:%M:%S"));
    }
    if let Some(b) = &s.last_backup {
        println!(
            "last backup: {} on {}, started {}",
            b.status,
            b.disk,
            b.started.format("%Y-%m-%d %H:%M:%S")
        );
    }
    match (s.mail_pending, s.mail_abandoned) {
        (Some(0), Some(0)) | (None, _) => {}
        (Some(p), a) => println!(
            "mail:        {p} waiting to be sent again, {} abandoned (see the daemon's log)",
            a.unwrap_or(0)
        ),
    }
    Ok(ExitCode::SUCCESS)
}

/// `mail-test`: one mail, sent now with the configured transport.
fn mail_test(config: &Config) -> Result<ExitCode> {
    let m = mail::test_message(&config.mail, &crate::backup::hostname())?;
    let via = &config.mail.transport;
    match mail::deliver(&config.mail, &m.sender, &m.recipients, &m.message) {
        Ok(()) => {
            println!("test mail sent to {} through {via}", m.recipients.join(", "));
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            bail!(
                "the test mail to {} was not sent through {via}: {}",
                m.recipients.join(", "),
                mail::describe(&e)
            )
        }
    }
}
