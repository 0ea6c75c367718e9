//! The daemon: one thread, one `poll(2)` loop over the control FIFO, the
//! udev monitor, the signal pipes and the backup worker's progress pipe,
//! asleep (no timer, no wake-up) until something happens. A backup runs on a
//! worker thread (see `backup`), so the loop keeps answering commands and
//! sees the disk being pulled out.
//!
//! May import: `backup`, `bus`, `clients`, `config`, `disk`, `fault`,
//! `notify`, `store`.
//!
//! Its life is three functions around [`Phase`]:
//!
//! ```text
//!  start:    config ok, state lock taken, state read, FIFO made, disks found  ──> Running
//!  serve:    Running ──(SIGHUP, `reload`)──> config re-read (a bad one is refused) ──> Running
//!            Running ──(SIGTERM, SIGINT, `stop`)──> Stopping
//!  shutdown: Stopping: no new backup; the running one's scripts stopped, its disk
//!            unmounted, its end recorded; `daemon_stopping`; FIFO removed
//! ```
//!
//! While Running, each known disk goes through: plugged → queued → backing
//! up → finished (safe to remove) → unplugged; the rules are `pipeline`'s,
//! carried out by `disks`.
//!
//! `start` refuses (and the daemon exits non-zero) when the configuration or
//! the state file is invalid, or when another daemon holds the state lock.

use std::fs::{self, File};
use std::io::Read;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use chrono::{DateTime, Local};
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

mod disks;
mod opened;
mod pipeline;
mod reminders;
mod retention;
mod wake;

use crate::bus::Bus;
use crate::clients::control::{self, Data, LastBackupInfo, NextDue, Reply, Request, StatusInfo};
use crate::clients::events::{DiskRow, Event, Subscribers, MAX_SUBSCRIBERS};
use crate::clients::fifo::{self, Line, LineReader};
use crate::config::Config;
use crate::disk::devices::{self, Monitor};
use crate::disk::udev_rule;
use crate::notify::mail::outbox::{self, Mailer, Work};
use crate::notify::metrics;
use crate::store::history::History;
use crate::store::state::{self, Saved, State, StateLock};

/// Where the configuration comes from, so that SIGHUP can read it again.
pub struct ConfigSource {
    pub path: PathBuf,
    pub explicit: bool,
}

/// Where the daemon is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Answering commands, following disks, backing up.
    Running,
    /// Told to stop: the loop ends, `shutdown` follows.
    Stopping,
}

struct Daemon {
    phase: Phase,
    source: ConfigSource,
    config: Config,
    state: State,
    _lock: StateLock,
    subscribers: Subscribers,
    disks: disks::Disks,
    /// `None` when history.sqlite cannot be used (said at start; backups go on).
    history: Option<History>,
    /// The system bus, for the backup worker (logind, udisks).
    bus: Bus,
    mailer: Mailer,
    /// Mails the mailer thread could not send.
    mail_failures: wake::WakeChannel<outbox::Failure>,
    /// Looking for disks not backed up for too long (hourly).
    reminders: wake::Periodic,
    /// Pruning old logs and history rows (daily).
    retention: wake::Periodic,
    started: DateTime<Local>,
}

/// What the loop listens to, besides the daemon's own channels.
struct Inputs {
    control: ControlFifo,
    lines: LineReader,
    term: UnixStream,
    hup: UnixStream,
    /// `None` with `udev_events = false`, or when udev cannot be listened to.
    monitor: Option<Monitor>,
    /// Half of `WatchdogSec=`, when systemd watches.
    watchdog: Option<Duration>,
}

/// Removes the control FIFO when the daemon exits, however it exits.
struct ControlFifo {
    path: PathBuf,
    file: File,
}

impl Drop for ControlFifo {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_file(&self.path) {
            log::warn!("cannot remove {}: {e}", self.path.display());
        }
    }
}

/// Runs the daemon until it is told to stop.
pub fn run(source: ConfigSource) -> Result<()> {
    let (mut daemon, mut inputs) = start(source)?;
    daemon.serve(&mut inputs)?;
    daemon.shutdown();
    Ok(())
}

/// Takes the state lock, reads the state, opens the control FIFO, the
/// signals, udev, the history and the mailer; handles the disks already
/// plugged in; tells systemd it is ready.
fn start(source: ConfigSource) -> Result<(Daemon, Inputs)> {
    // What the unit's UMask=0077 gives, however the daemon is started: its
    // logs, history and mount points are root's alone (the scripts inherit it).
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let config = Config::load(&source.path, source.explicit)?;
    state::private_dir("state_dir", &config.state_dir)?;
    let Some(mut lock) = StateLock::try_acquire(&config.state_dir)? else {
        let pid = state::lock_holder(&config.state_dir).map(|p| format!(" (pid {p})")).unwrap_or_default();
        bail!("another tetras-back daemon is running on {}{pid}", config.state_dir.display());
    };
    lock.write_pid()?;
    let mut state = State::load(&config.state_path())?;
    // A hand-edited list may hold any number of paths: tidied in one pass
    // and one write, before anything is sent to them.
    let tidied = state.tidy_subscribers(MAX_SUBSCRIBERS, fifo::is_fifo);
    if tidied.changed() {
        log::warn!("{}", tidied.message(MAX_SUBSCRIBERS));
        state.store(&config.state_path())?;
    }

    for (key, dir) in [
        ("run_dir", &config.run_dir),
        ("run_dir", &config.replies_dir()),
        ("log_dir", &config.log_dir),
        ("mount_dir", &config.mount_dir),
    ] {
        state::private_dir(key, dir)?;
    }
    let control_path = config.control_path();
    fifo::create(&control_path, 0o600)?;
    let control = ControlFifo { file: fifo::open_reader(&control_path)?, path: control_path };

    let (term, term_tx) = UnixStream::pair()?;
    let (hup, hup_tx) = UnixStream::pair()?;
    for s in [&term, &hup] {
        s.set_nonblocking(true)?;
    }
    signal_hook::low_level::pipe::register(SIGTERM, term_tx.try_clone()?)?;
    signal_hook::low_level::pipe::register(SIGINT, term_tx)?;
    signal_hook::low_level::pipe::register(SIGHUP, hup_tx)?;

    disks::recover_stale_mounts(&config.mount_dir);
    let monitor = if config.udev_events {
        match Monitor::open() {
            Ok(m) => Some(m),
            Err(e) => {
                log::error!("{e:#}; only `tetras-back plug DEV` will start backups");
                None
            }
        }
    } else {
        log::info!("udev_events = false: only `tetras-back plug DEV` starts backups");
        None
    };

    let history = match History::open(&config.history_path()) {
        Ok(h) => {
            match h.close_interrupted() {
                Ok(0) => {}
                Ok(n) => log::warn!("{n} backup(s) were interrupted when the daemon last stopped"),
                Err(e) => log::error!("history: {e:#}"),
            }
            Some(h)
        }
        Err(e) => {
            log::error!(
                "{e:#}; backups go on without history or mail outbox until it is repaired or moved away"
            );
            None
        }
    };
    let mail_failures = wake::WakeChannel::new()?;
    let failures = mail_failures.sender()?;
    let mailer = Mailer::start(config.history_path(), config.mail.clone(), move |f| failures.send(f))?;
    let mut daemon = Daemon {
        phase: Phase::Running,
        source,
        config,
        state,
        _lock: lock,
        subscribers: Subscribers::default(),
        disks: disks::Disks::new()?,
        history,
        bus: Bus::connect(),
        mailer,
        mail_failures,
        reminders: wake::Periodic::new(reminders::EVERY),
        retention: wake::Periodic::new(retention::EVERY),
        started: Local::now(),
    };
    daemon.update_udev_rule();
    daemon.write_metrics(true);
    log::info!(
        "started (pid {}, config {}, {} known disks, {} subscribers)",
        std::process::id(),
        daemon.config.source.as_deref().map_or("built-in defaults".into(), |p| p.display().to_string()),
        daemon.state.disks.len(),
        daemon.state.subscribers.len()
    );
    // Subscribers stay registered across restarts: tell them where things stand.
    daemon.broadcast(&daemon.disks_event());
    if monitor.is_some() {
        // A known disk plugged in before the daemon started is backed up now.
        match devices::enumerate() {
            Ok(present) => present.into_iter().for_each(|ev| {
                daemon.on_block_event(ev);
            }),
            Err(e) => log::error!("{e:#}"),
        }
    }
    notify(&[sd_notify::NotifyState::Ready]);
    // With WatchdogSec= set, systemd restarts a daemon whose loop stops turning.
    let watchdog = sd_notify::watchdog_enabled().map(|d| d / 2);
    if let Some(w) = watchdog {
        log::debug!("watchdog: pinging systemd every {w:?}");
    }
    Ok((daemon, Inputs { control, lines: LineReader::default(), term, hup, monitor, watchdog }))
}

impl Daemon {
    /// The loop, until the daemon is told to stop.
    fn serve(&mut self, io: &mut Inputs) -> Result<()> {
        while self.phase == Phase::Running {
            if io.watchdog.is_some() {
                notify(&[sd_notify::NotifyState::Watchdog]);
            }
            self.remind_if_due();
            self.prune_if_due();
            let next_due = self.back_up_due_disks();
            let next_close = self.close_unused_disks();
            let next_progress = self.report_progress_if_due();
            let mut fds = vec![
                PollFd::new(io.control.file.as_fd(), PollFlags::POLLIN),
                PollFd::new(io.term.as_fd(), PollFlags::POLLIN),
                PollFd::new(io.hup.as_fd(), PollFlags::POLLIN),
                PollFd::new(self.disks.progress.wake_rx.as_fd(), PollFlags::POLLIN),
                PollFd::new(self.mail_failures.wake_rx.as_fd(), PollFlags::POLLIN),
            ];
            if let Some(m) = &io.monitor {
                fds.push(PollFd::new(m.as_fd(), PollFlags::POLLIN));
            }
            // Asleep until something happens, the watchdog is due, reminders
            // are, or a plugged-in disk's next backup is.
            let wake_in =
                self.reminders.next().min(self.retention.next()).saturating_duration_since(Instant::now());
            let wake_in = io.watchdog.map_or(wake_in, |w| w.min(wake_in));
            let wake_in = [next_close, next_progress]
                .into_iter()
                .flatten()
                .fold(wake_in, |w, at| at.saturating_duration_since(Instant::now()).min(w));
            let wake_in =
                next_due.map_or(wake_in, |d| (d - Local::now()).to_std().unwrap_or_default().min(wake_in));
            // Rounded up, so that the loop does not spin for the last partial millisecond.
            let timeout =
                PollTimeout::try_from(wake_in + Duration::from_micros(999)).unwrap_or(PollTimeout::MAX);
            match poll(&mut fds, timeout) {
                Ok(_) => {}
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(e).context("poll failed"),
            }
            let ready = |fd: &PollFd| fd.revents().is_some_and(|r| !r.is_empty());
            let (control_ready, term, hup) = (ready(&fds[0]), ready(&fds[1]), ready(&fds[2]));
            let (progress, mail, udev) = (ready(&fds[3]), ready(&fds[4]), fds.get(5).is_some_and(ready));
            drop(fds);
            if progress {
                self.on_progress();
            }
            if mail {
                self.on_mail_failures();
            }
            if udev {
                for ev in io.monitor.as_mut().map(Monitor::drain).unwrap_or_default() {
                    log::debug!("udev: {ev:?}");
                    self.on_block_event(ev);
                }
            }
            if term {
                drain(&mut io.term);
                log::info!("signal received; stopping");
                self.phase = Phase::Stopping;
            }
            if hup {
                drain(&mut io.hup);
                if let Err(e) = self.reload() {
                    log::error!("{e:#}");
                }
            }
            if control_ready {
                // The daemon holds a write end itself, so this never reports EOF.
                let mut file = &io.control.file;
                for line in
                    io.lines.read_from(&mut file).context("cannot read the control FIFO")?.unwrap_or_default()
                {
                    self.handle_line(line);
                }
            }
        }
        Ok(())
    }

    /// Stopping: the running backup ends cleanly and is recorded; the
    /// subscribers are told; the control FIFO goes with `Inputs`.
    fn shutdown(mut self) {
        notify(&[sd_notify::NotifyState::Stopping]);
        self.finish_running_backup();
        self.close_all_disks();
        self.write_metrics(false);
        self.broadcast(&Event::DaemonStopping);
        log::info!("stopped");
    }
}

/// Writes `reply` on the client's reply FIFO.
pub(super) fn answer(path: &std::path::Path, reply: &Reply) {
    control::answer(path, reply)
}

impl Daemon {
    fn handle_line(&mut self, line: Line) {
        let incoming = match line {
            Line::TooLong => {
                log::warn!("control: ignored a line longer than {} bytes", fifo::MAX_LINE);
                return;
            }
            Line::Complete(bytes) => control::parse_line(&bytes, &self.config.replies_dir()),
        };
        let reply = match incoming.request {
            // Answered by its own thread once done (or at once when refused).
            Ok(Request::Restore { name, backup, paths, to, overwrite, user }) => {
                let request = opened::RestoreRequest { name, backup, paths, to, overwrite, user };
                match self.restore(request, incoming.reply.clone()) {
                    Ok(()) => return,
                    Err(e) => Reply::error(format!("{e:#}")),
                }
            }
            Ok(request) => {
                log::debug!("control: {request:?}");
                self.handle(request).unwrap_or_else(|e| Reply::error(format!("{e:#}")))
            }
            Err(e) => Reply::error(format!("invalid command: {e}")),
        };
        if !reply.ok {
            log::warn!("control: {}", reply.error.as_deref().unwrap_or_default());
        }
        if let Some(path) = incoming.reply {
            answer(&path, &reply);
        }
    }

    fn handle(&mut self, request: Request) -> Result<Reply> {
        match request {
            Request::Save { uuid, name, adopt } => {
                let uuid = state::check_uuid(&uuid)?;
                state::check_name(&name)?;
                let plugged = self.disks.pipeline.unknown(|_| false);
                if let Some(luks) = plugged.iter().find(|u| u.uuid == uuid && u.encrypted.is_some()) {
                    bail!(
                        "{uuid} (on {}) is a LUKS-encrypted volume: tetras-back does not open LUKS \
                         volumes (that needs device-mapper), so it cannot back up onto it; not saved",
                        luks.device.display()
                    );
                }
                let outcome = self.edit_state(|s| {
                    let outcome = s.save_disk(&uuid, &name)?;
                    if adopt {
                        s.adopt(&uuid)?;
                    }
                    Ok(outcome)
                })?;
                let mut message = outcome.message(&uuid, &name);
                if adopt {
                    log::warn!("disk {name} ({uuid}) adopted: its next backup gives it a new identity");
                    message.push_str("; adopted: its next backup gives it a new identity");
                    if self.disks.pipeline.is_connected(&uuid) {
                        message = format!("{message}; {}", self.backup_by_name(&name)?);
                    }
                }
                if outcome != Saved::Unchanged {
                    let renamed_from = match outcome {
                        Saved::Renamed { from } => Some(from),
                        _ => None,
                    };
                    log::info!("{message}");
                    self.update_udev_rule();
                    self.broadcast(&Event::DiskSaved { uuid, name, renamed_from });
                    self.broadcast(&self.disks_event());
                }
                Ok(Reply::ok(message))
            }
            Request::Forget { uuid } => {
                let uuid = state::check_uuid(&uuid)?;
                let disk = self.edit_state(|s| s.forget_disk(&uuid))?;
                let message = disk.forgotten_message();
                log::info!("{message}");
                self.update_udev_rule();
                self.broadcast(&Event::DiskForgotten { uuid, name: disk.name });
                self.broadcast(&self.disks_event());
                Ok(Reply::ok(message))
            }
            Request::Register { path } => {
                fifo::check_is_fifo(&path)?;
                if !self.state.subscribers.contains(&path) {
                    // The subscribers that are gone make room, in the same write.
                    self.edit_state(|s| {
                        s.tidy_subscribers(MAX_SUBSCRIBERS, fifo::is_fifo);
                        if s.subscribers.len() >= MAX_SUBSCRIBERS {
                            bail!(
                                "{} subscribers are registered already, the most there can be; \
                                 unregister one first",
                                MAX_SUBSCRIBERS
                            );
                        }
                        s.subscribers.push(path.clone());
                        Ok(())
                    })?;
                    log::info!("registered subscriber {}", path.display());
                }
                let event = self.disks_event();
                if let Some(gone) = self.subscribers.send_to(&path, &event) {
                    self.unregister_gone(vec![gone]);
                }
                Ok(Reply::ok(format!("registered {}", path.display())))
            }
            Request::Unregister { path } => {
                if !self.state.subscribers.contains(&path) {
                    bail!("{} is not registered", path.display());
                }
                self.edit_state(|s| {
                    s.subscribers.retain(|p| p != &path);
                    Ok(())
                })?;
                self.subscribers.close(&path);
                log::info!("unregistered subscriber {}", path.display());
                Ok(Reply::ok(format!("unregistered {}", path.display())))
            }
            Request::Plug { device } => {
                let ev = devices::lookup(&device, devices::Action::Add)?;
                Ok(Reply::ok(self.on_block_event(ev)))
            }
            Request::Unplug { device } => {
                let ev = devices::lookup(&device, devices::Action::Remove)?;
                Ok(Reply::ok(self.on_block_event(ev)))
            }
            Request::Backup { name } => Ok(Reply::ok(self.backup_by_name(&name)?)),
            Request::Hold { name } => Ok(Reply::ok(self.hold(&name, true)?)),
            Request::Release { name } => Ok(Reply::ok(self.hold(&name, false)?)),
            Request::Open { name } => Ok(Reply::ok(self.open_by_name(&name)?)),
            Request::Close { name } => Ok(Reply::ok(self.close_by_name(&name)?)),
            // Taken by handle_line, which answers it from its own thread.
            Request::Restore { .. } => bail!("restore is answered by its own thread"),
            Request::Locate { name } => Ok(Reply::data(Data::Located { disk: self.locate(&name)? })),
            Request::Status => Ok(Reply::data(Data::Status(Box::new(self.status())))),
            Request::Disks => {
                let unknown = self.disks.pipeline.unknown(|uuid| self.state.disk(uuid).is_some());
                Ok(Reply::data(Data::Disks { disks: self.disk_rows(), unknown }))
            }
            Request::Reload => Ok(Reply::ok(self.reload()?)),
            Request::Stop => {
                log::info!("stop requested");
                self.phase = Phase::Stopping;
                Ok(Reply::ok("the daemon is stopping"))
            }
        }
    }

    /// Applies `edit` to a copy of the state and persists it; the in-memory
    /// state changes only once the file is safely written.
    fn edit_state<T>(&mut self, edit: impl FnOnce(&mut State) -> Result<T>) -> Result<T> {
        let mut next = self.state.clone();
        let out = edit(&mut next)?;
        next.store(&self.config.state_path())?;
        self.state = next;
        Ok(out)
    }

    fn disk_rows(&self) -> Vec<DiskRow> {
        let mut rows =
            DiskRow::table(&self.state, self.history.as_ref(), |uuid| self.disks.pipeline.is_connected(uuid));
        let idle = self.disks.pipeline.idle_plugged();
        for r in rows.iter_mut() {
            if idle.contains(&r.uuid) {
                r.next_due = self.state.disk(&r.uuid).and_then(|d| self.due_at(d));
            }
            r.opened = self.disks.open.contains_key(&r.uuid);
            r.safe_to_remove = r.connected && self.disks.safe.contains(&r.uuid);
        }
        rows
    }

    fn update_udev_rule(&self) {
        if let Err(e) = udev_rule::update(self.config.udev_rule.as_deref(), &self.state.disks) {
            log::error!("{e:#}");
        }
    }

    /// Rewrites the metrics file, when one is configured.
    fn write_metrics(&self, up: bool) {
        let Some(path) = &self.config.metrics_file else { return };
        let Some(h) = &self.history else { return };
        let mut disks = Vec::with_capacity(self.state.disks.len());
        for d in &self.state.disks {
            match h.summary(&d.uuid) {
                Ok(summary) => disks.push(metrics::DiskMetrics { name: &d.name, uuid: &d.uuid, summary }),
                Err(e) => log::error!("history: {e:#}"),
            }
        }
        let pending = h.outbox_counts().map(|c| c.0).unwrap_or(0);
        let running =
            self.disks.pipeline.running.as_ref().zip(self.disks.tracker.as_ref()).map(|(r, t)| {
                metrics::RunningMetrics { name: &r.job.name, uuid: &r.job.uuid, progress: &t.now }
            });
        if let Err(e) = metrics::write(path, &metrics::render(up, &disks, pending, running)) {
            log::error!("{e:#}");
        }
    }

    fn on_mail_failures(&mut self) {
        for f in self.mail_failures.drain() {
            self.broadcast(&Event::MailFailed {
                subject: f.subject,
                to: f.recipients,
                error: f.error,
                attempts: f.attempts,
                retry_at: f.retry_at,
            });
        }
    }

    fn disks_event(&self) -> Event {
        Event::Disks { disks: self.disk_rows(), truncated: false }
    }

    fn broadcast(&mut self, event: &Event) {
        // Which plugged-in disks can be pulled out now, for the disk table.
        match event {
            Event::SafeToRemove { uuid, .. } => {
                self.disks.safe.insert(uuid.clone());
            }
            Event::DiskPlugged { uuid, .. }
            | Event::BackupStarted { uuid, .. }
            | Event::DiskOpened { uuid, .. }
            | Event::DiskUnplugged { uuid, .. } => {
                self.disks.safe.remove(uuid);
            }
            _ => {}
        }
        let gone = self.subscribers.broadcast(&self.state.subscribers, event);
        self.unregister_gone(gone);
    }

    fn unregister_gone(&mut self, gone: Vec<PathBuf>) {
        if gone.is_empty() {
            return;
        }
        if let Err(e) = self.edit_state(|s| {
            s.subscribers.retain(|p| !gone.contains(p));
            Ok(())
        }) {
            log::error!("{e:#}");
        }
    }

    fn status(&self) -> StatusInfo {
        let (mut backup, queue) = self.disks.pipeline.activity();
        if let (Some(b), Some(t)) = (backup.as_mut(), &self.disks.tracker) {
            // What the last `backup_progress` said (none before the first).
            b.progress = (t.ticks > 0).then(|| t.now.clone());
        }
        let last_backup =
            self.history.as_ref().and_then(|h| h.backups(None, 1).ok()).and_then(|mut v| v.pop());
        let outbox = self.history.as_ref().and_then(|h| h.outbox_counts().ok());
        StatusInfo {
            pid: std::process::id(),
            started: self.started,
            uptime_secs: (Local::now() - self.started).num_seconds(),
            activity: if self.disks.pipeline.busy() { "backing up" } else { "idle" }.into(),
            backup,
            queue,
            config: self.config.source.clone(),
            state_dir: self.config.state_dir.clone(),
            scripts: self.config.scripts.iter().filter(|s| s.enabled).map(|s| s.name.clone()).collect(),
            known_disks: self.state.disks.len(),
            subscribers: self.state.subscribers.len(),
            last_backup: last_backup.map(|b| LastBackupInfo {
                disk: b.disk,
                status: b.status,
                started: b.started,
                finished: b.finished,
            }),
            mail_pending: outbox.map(|o| o.0),
            mail_abandoned: outbox.map(|o| o.1),
            history: self.history.as_ref().map(|_| self.config.history_path()),
            next_due: self
                .disk_rows()
                .into_iter()
                .filter_map(|r| Some(NextDue { at: r.next_due?, disk: r.name }))
                .min_by_key(|n| n.at),
            opened: self
                .disks
                .open
                .keys()
                .filter_map(|u| self.state.disk(u))
                .map(|d| d.name.clone())
                .collect(),
            held: self.state.disks.iter().filter(|d| d.held).map(|d| d.name.clone()).collect(),
        }
    }

    /// Re-reads the configuration (SIGHUP, `reload`); a broken file leaves
    /// the running configuration as it was, and the error says why.
    fn reload(&mut self) -> Result<String> {
        let started = Instant::now();
        let mut new = Config::load(&self.source.path, self.source.explicit)
            .context("reload failed, keeping the previous configuration")?;
        // The daemon's own files stay where they were opened; a new
        // location takes effect at the next start.
        let mut notes = Vec::new();
        for (key, old, new) in [
            ("state_dir", &self.config.state_dir, &mut new.state_dir),
            ("run_dir", &self.config.run_dir, &mut new.run_dir),
        ] {
            if old != new {
                notes.push(format!("`{key}` changed; it takes effect when the daemon restarts"));
                *new = old.clone();
            }
        }
        self.mailer.send(Work::Config(new.mail.clone()));
        self.config = new;
        self.update_udev_rule();
        let mut message = format!("configuration reloaded from {}", self.source.path.display());
        for n in &notes {
            message.push_str("; ");
            message.push_str(n);
        }
        log::info!("{message} (in {:?})", started.elapsed());
        Ok(message)
    }
}

fn drain(s: &mut UnixStream) {
    let mut buf = [0u8; 64];
    while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
}

fn notify(states: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        log::warn!("cannot notify systemd: {e}");
    }
}
