//! The daemon's side of the disk pipeline: it feeds device events and the
//! worker's progress to [`Pipeline`] and carries out what it returns
//! (events, history rows, state, the worker thread), then records the end
//! of each backup (state, history, events, mail, metrics).

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::Result;
use chrono::{DateTime, Local};

use super::opened::OpenDisks;
use super::pipeline::{Do, Known, Pipeline};
use super::wake::{Periodic, WakeChannel};
use super::Daemon;
use crate::backup::progress::{self, Tracker};
use crate::backup::{self, Cancel, Progress};
use crate::clients::events::Event;
use crate::config::MailWhen;
use crate::disk::devices::BlockEvent;
use crate::disk::mount;
use crate::fault;
use crate::notify::mail::outbox::Work;
use crate::notify::mail::{self, BackupMail};
use crate::store::report::{Job, Report, Status};
use crate::store::state::{Disk, LastBackup};
use crate::store::trend;

/// A disk full within this many days at its rate gets a warning mail.
const FULL_WARNING_DAYS: i64 = 30;

/// The metrics file gets the running backup's progress every this many
/// `backup_progress`.
const METRICS_EVERY: u64 = 5;

/// The thread running a backup, and how to stop it.
pub struct Worker {
    cancel: Arc<Cancel>,
    thread: JoinHandle<()>,
}

/// The pipeline's state and the worker running its current backup.
pub struct Disks {
    pub pipeline: Pipeline,
    worker: Option<Worker>,
    /// What the worker reports.
    pub progress: WakeChannel<Progress>,
    /// The disks opened for restore.
    pub open: OpenDisks,
    /// Where the running backup stands, and when it is said next.
    pub tracker: Option<Tracker>,
    pub tick: Periodic,
    /// The plugged-in disks that said `safe_to_remove` since they were last mounted.
    pub safe: HashSet<String>,
}

impl Disks {
    pub fn new() -> Result<Disks> {
        Ok(Disks {
            pipeline: Pipeline::default(),
            worker: None,
            progress: WakeChannel::new()?,
            open: OpenDisks::new(),
            tracker: None,
            tick: Periodic::new(progress::EVERY),
            safe: HashSet::new(),
        })
    }
}

impl Daemon {
    /// Handles a device event from udev or from `plug`/`unplug`; returns what
    /// became of it, for the `plug` command's reply.
    pub(super) fn on_block_event(&mut self, ev: BlockEvent) -> String {
        let disks = &self.state.disks;
        let name_of = |uuid: &str| {
            disks.iter().find(|d| d.uuid == uuid).map(|d| Known { name: d.name.clone(), held: d.held })
        };
        let outcome = self.disks.pipeline.on_event(&ev, name_of, |devnum| !mount::is_unmounted(devnum));
        if outcome.actions.is_empty() {
            log::debug!("{:?} {}: {}", ev.action, ev.device.display(), outcome.message);
        } else {
            log::info!("{:?} {}: {}", ev.action, ev.device.display(), outcome.message);
        }
        self.carry_out(outcome.actions);
        outcome.message
    }

    /// When the known plugged-in `disk` is to be backed up again by the
    /// schedule (`None`: not scheduled; now when it has no backup yet).
    pub(super) fn due_at(&self, disk: &Disk) -> Option<DateTime<Local>> {
        let schedule = &self.config.schedule;
        if !schedule.is_set() {
            return None;
        }
        match &disk.last_backup {
            None => Some(Local::now()),
            Some(b) => schedule.next_due(b.finished.unwrap_or(b.started), b.status.succeeded()),
        }
    }

    /// Starts the scheduled backups that are due; returns when the next is.
    pub(super) fn back_up_due_disks(&mut self) -> Option<DateTime<Local>> {
        if !self.config.schedule.is_set() || self.disks.pipeline.closed {
            return None;
        }
        let now = Local::now();
        let mut next: Option<DateTime<Local>> = None;
        for uuid in self.disks.pipeline.idle_plugged() {
            let Some(disk) = self.state.disk(&uuid) else { continue };
            let Some(due) = self.due_at(disk) else { continue };
            if due > now {
                next = Some(next.map_or(due, |n| n.min(due)));
                continue;
            }
            let name = disk.name.clone();
            log::info!("disk {name} stayed plugged in and is due for a backup (schedule)");
            match self.disks.pipeline.backup_again(&uuid, &name) {
                Ok(outcome) => self.carry_out(outcome.actions),
                Err(e) => log::error!("{e:#}"),
            }
        }
        next
    }

    /// `backup NAME`: back up a plugged-in known disk again, by hand.
    pub(super) fn backup_by_name(&mut self, name: &str) -> Result<String> {
        let uuid = self.state.disk_named(name)?.uuid.clone();
        let outcome = self.disks.pipeline.backup_again(&uuid, name)?;
        self.carry_out(outcome.actions);
        Ok(outcome.message)
    }

    pub(super) fn carry_out(&mut self, actions: Vec<Do>) {
        for action in actions {
            match action {
                Do::Emit(event) => self.broadcast(&event),
                Do::RecordPlug { uuid, name, device, plugged } => {
                    if let Some(h) = &self.history {
                        if let Err(e) = h.plug(&uuid, name.as_deref(), &device, plugged) {
                            log::error!("history: {e:#}");
                        }
                    }
                }
                Do::Seen { uuid } => self.touch_last_seen(&uuid),
                Do::Start(job) => self.start(job),
                Do::StopRunning => {
                    if let Some(w) = &self.disks.worker {
                        log::warn!("the disk was removed during its backup: stopping the scripts");
                        w.cancel.disk_removed.store(true, Ordering::SeqCst);
                        w.cancel.stop.store(true, Ordering::SeqCst);
                    }
                }
                Do::Table => self.broadcast(&self.disks_event()),
                Do::Open(job) => {
                    // Said in the log; a held disk plugged in has no one to answer.
                    let _ = self.open_disk(job);
                }
                Do::Detach { uuid } => self.detach_opened(&uuid),
            }
        }
    }

    /// Starts the worker of the job the pipeline made current, with the
    /// identity the disk must prove as the state knows it now.
    fn start(&mut self, mut job: Job) {
        job.identity = self.state.disk(&job.uuid).and_then(|d| d.identity.clone());
        job.drill = self.history.as_ref().is_some_and(|h| {
            h.drill_due(&job.uuid, self.config.verify_every).unwrap_or_else(|e| {
                log::error!("history: {e:#}");
                false
            })
        });
        job.last_written = self.history.as_ref().and_then(|h| {
            h.last_written(&job.uuid).unwrap_or_else(|e| {
                log::error!("history: {e:#}");
                None
            })
        });
        let cancel = Arc::new(Cancel::default());
        let spawned = self.disks.progress.sender().map_err(anyhow::Error::from).and_then(|tx| {
            let (config, bus, job, cancel) =
                (self.config.clone(), self.bus.clone(), job.clone(), cancel.clone());
            std::thread::Builder::new()
                .name(format!("backup-{}", job.name))
                .spawn(move || backup::run(job, config, bus, cancel, |p| tx.send(p)))
                .map_err(anyhow::Error::from)
        });
        match spawned {
            Ok(thread) => {
                notify_status(&format!("backing up {}", job.name));
                self.disks.worker = Some(Worker { cancel, thread });
            }
            Err(e) => {
                log::error!("cannot start the backup of {}: {e:#}", job.name);
                let next = self.disks.pipeline.finished();
                self.carry_out(next);
            }
        }
    }

    /// Handles what the worker reported.
    pub(super) fn on_progress(&mut self) {
        for p in self.disks.progress.drain() {
            self.progress(p);
        }
    }

    fn progress(&mut self, p: Progress) {
        let Some(r) = self.disks.pipeline.running.as_mut() else { return };
        let (uuid, name) = (r.job.uuid.clone(), r.job.name.clone());
        match p {
            Progress::Started { log, started } => {
                log::info!("backup of {name} started ({:?} after it was queued)", r.since.elapsed());
                let scripts: Vec<String> =
                    self.config.scripts.iter().filter(|s| s.enabled).map(|s| s.name.clone()).collect();
                let usual = self.history.as_ref().and_then(|h| {
                    h.usual_duration(&uuid, &scripts).unwrap_or_else(|e| {
                        log::error!("history: {e:#}");
                        None
                    })
                });
                self.disks.tracker = Some(Tracker::new(
                    backup::journal_path(&self.config, &uuid),
                    backup::progress_path(&self.config, &uuid),
                    scripts.len(),
                    usual,
                ));
                // A backup shorter than a second says nothing of its progress.
                self.disks.tick.restart();
                let device = r.job.device.clone();
                if let Some(h) = &self.history {
                    match h.backup_started(&r.job, started, &log) {
                        Ok(id) => r.history_id = Some(id),
                        Err(e) => log::error!("history: {e:#}"),
                    }
                }
                self.broadcast(&Event::BackupStarted { uuid, name, device, log });
            }
            Progress::Step(step) => {
                r.script = None;
                self.disks.tracker.iter_mut().for_each(|t| t.step = step);
            }
            Progress::ScriptStarted { script } => {
                r.script = Some(script.clone());
                self.disks.tracker.iter_mut().for_each(Tracker::script_started);
                self.broadcast(&Event::ScriptStarted { uuid, name, script });
            }
            Progress::ScriptFinished(s) => {
                r.script = None;
                self.disks.tracker.iter_mut().for_each(Tracker::script_finished);
                self.broadcast(&Event::ScriptFinished {
                    uuid,
                    name,
                    script: s.script,
                    exit_code: s.exit_code,
                    outcome: s.outcome,
                    duration_secs: s.duration_secs,
                });
            }
            Progress::Finished(report) => self.finished(*report),
        }
    }

    /// Sends `backup_progress` for the running backup, when it is time;
    /// returns when it is next (`None`: no backup runs).
    pub(super) fn report_progress_if_due(&mut self) -> Option<std::time::Instant> {
        let r = self.disks.pipeline.running.as_ref()?;
        let tracker = self.disks.tracker.as_mut()?;
        if self.disks.tick.due() {
            let now = tracker.update().clone();
            tracker.ticks += 1;
            let metrics_due = tracker.ticks % METRICS_EVERY == 1;
            let (uuid, name, script) = (r.job.uuid.clone(), r.job.name.clone(), r.script.clone());
            self.broadcast(&Event::BackupProgress { uuid, name, script, now });
            if metrics_due {
                self.write_metrics(true);
            }
        }
        Some(self.disks.tick.next())
    }

    /// Records the end of the running backup, then starts the next one.
    fn finished(&mut self, report: Report) {
        self.disks.tracker = None;
        let Some(current) = self.disks.pipeline.running.take() else { return };
        if let Some(w) = self.disks.worker.take() {
            if w.thread.join().is_err() {
                log::error!("the backup thread of {} panicked", current.job.name);
            }
        }
        let Job { uuid, name, device, .. } = current.job.clone();
        let last =
            LastBackup { status: report.status, started: report.started, finished: Some(report.finished) };
        fault::point("daemon::before_state_write");
        let identity = report.identity.clone();
        if let Err(e) = self.edit_state(|s| {
            if let Some(d) = s.disk_mut(&uuid) {
                d.last_backup = Some(last);
                if identity.is_some() {
                    d.identity = identity;
                }
            }
            Ok(())
        }) {
            log::error!("{e:#}");
        }
        fault::point("daemon::before_history_write");
        if let Some(h) = &self.history {
            if let Err(e) = h.backup_finished(current.history_id, &current.job, &report) {
                log::error!("history: {e:#}");
            }
        }
        if report.status == Status::Refused {
            let why = report.error.clone().unwrap_or_default();
            log::warn!("{why}");
            self.broadcast(&Event::DiskMismatch {
                uuid: uuid.clone(),
                name: name.clone(),
                device: device.clone(),
                why,
            });
        }
        self.broadcast(&Event::BackupFinished {
            uuid: uuid.clone(),
            name: name.clone(),
            status: report.status,
            duration_secs: report.duration.as_secs_f64(),
            log: report.log.clone(),
            error: report.error.clone(),
        });
        if report.safe_to_remove {
            log::info!("disk {name} is safe to remove");
            let power_off = report.power_off.as_ref();
            self.broadcast(&Event::SafeToRemove {
                uuid: uuid.clone(),
                name: name.clone(),
                device: device.clone(),
                powered_off: power_off.is_some_and(|p| p.done()),
                power_off_error: power_off.and_then(|p| p.reason()).map(str::to_owned),
            });
        }
        self.broadcast(&self.disks_event());
        let full_at = self.full_at(&name);
        if let Some(full) = full_at {
            self.warn_if_full_soon(&uuid, &name, full);
        }
        self.mailer.send(Work::Backup(Box::new(BackupMail {
            host: backup::hostname(),
            disk: name,
            uuid,
            device,
            report,
            full_at,
        })));
        self.write_metrics(true);
        let next = self.disks.pipeline.finished();
        if next.is_empty() {
            notify_status("idle");
        }
        self.carry_out(next);
    }

    /// When the disk `name` is full at the rate its free space went down
    /// over its last backups, if it is going down.
    fn full_at(&self, name: &str) -> Option<DateTime<Local>> {
        let rows = self.history.as_ref()?.backups(Some(name), trend::POINTS);
        trend::full_at(&trend::points(&rows.inspect_err(|e| log::error!("history: {e:#}")).ok()?))
    }

    /// Mails a warning when the disk is full within [`FULL_WARNING_DAYS`]
    /// at this rate, once a month at most.
    fn warn_if_full_soon(&mut self, uuid: &str, name: &str, full: DateTime<Local>) {
        let now = Local::now();
        if full - now > chrono::Duration::days(FULL_WARNING_DAYS) || self.config.mail.when == MailWhen::Never
        {
            return;
        }
        let Some(h) = &self.history else { return };
        let key = format!("full:{uuid}");
        if h.last_reminder(&key).ok().flatten().is_some_and(|t| now - t < chrono::Duration::days(30)) {
            return;
        }
        match mail::full_warning(&self.config.mail, &backup::hostname(), name, full) {
            Ok(m) => {
                log::warn!("{}", m.subject);
                self.mailer.send(Work::Mail(m));
                if let Err(e) = h.reminder_sent(&key, now) {
                    log::error!("history: {e:#}");
                }
            }
            Err(e) => log::error!("cannot compose the warning that {name} is filling up: {e:#}"),
        }
    }

    /// At shutdown: no new backup starts; the running one is stopped and
    /// its end recorded.
    pub(super) fn finish_running_backup(&mut self) {
        self.disks.pipeline.closed = true;
        let Some(w) = &self.disks.worker else { return };
        log::warn!("stopping the running backup");
        w.cancel.stop.store(true, Ordering::SeqCst);
        // The worker always ends with `Finished` (a panic included).
        while self.disks.pipeline.busy() {
            match self.disks.progress.recv() {
                Some(p) => self.progress(p),
                None => break,
            }
        }
    }

    fn touch_last_seen(&mut self, uuid: &str) {
        let now = Local::now();
        if let Err(e) = self.edit_state(|s| {
            if let Some(d) = s.disk_mut(uuid) {
                d.last_seen = Some(now);
            }
            Ok(())
        }) {
            log::error!("{e:#}");
        }
    }
}

/// Unmounts what a previous daemon left mounted under `mount_dir` (it
/// crashed or was killed during a backup), so the disk can be used again.
pub fn recover_stale_mounts(mount_dir: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(mount_dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if mount::is_mount_point(&path).unwrap_or(false) {
            log::warn!("{} is still mounted from an interrupted backup; unmounting it", path.display());
            let _ = mount::sync(&path);
            if let Err(e) = mount::unmount(&path, 5) {
                log::error!("{e:#}");
            }
        }
    }
}

fn notify_status(text: &str) {
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Status(text)]);
}
