//! The daemon's side of the disk pipeline: which disks are plugged in, the
//! backup queue, and the one backup running on its worker thread.
//!
//! One plug is one backup: a disk stays in `plugged` from its first event
//! with a filesystem until it is removed (a `remove` event, or a `change`
//! whose filesystem is gone), and further add/change events for it while it
//! is there start nothing.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use anyhow::{bail, Result};
use chrono::Local;

use super::wake::WakeChannel;
use super::Daemon;
use crate::backup::report::Job;
use crate::backup::{self, Cancel, Progress};
use crate::control::RunningBackup;
use crate::devices::{BlockEvent, Filesystem};
use crate::events::Event;
use crate::fault;
use crate::mail::outbox::Work;
use crate::mail::BackupMail;
use crate::mount;
use crate::state::LastBackup;

/// A block device with a filesystem that is plugged in now.
struct Plugged {
    uuid: String,
    device: PathBuf,
    fstype: String,
}

struct Running {
    job: Job,
    cancel: Arc<Cancel>,
    since: Instant,
    script: Option<String>,
    thread: JoinHandle<()>,
    /// Its row in the history, once it has started.
    history_id: Option<i64>,
}

/// The pipeline's state inside the daemon.
pub struct Pipeline {
    /// By device number, which `remove` events still carry.
    plugged: HashMap<u64, Plugged>,
    queue: VecDeque<Job>,
    running: Option<Running>,
    /// What the worker reports.
    pub progress: WakeChannel<Progress>,
}

impl Pipeline {
    pub fn new() -> Result<Pipeline> {
        Ok(Pipeline {
            plugged: HashMap::new(),
            queue: VecDeque::new(),
            running: None,
            progress: WakeChannel::new()?,
        })
    }

    pub fn is_connected(&self, uuid: &str) -> bool {
        self.plugged.values().any(|p| p.uuid == uuid)
    }

    pub fn busy(&self) -> bool {
        self.running.is_some()
    }
}

impl Daemon {
    /// Handles a device event from udev or from `plug`/`unplug`; returns what
    /// became of it, for the `plug` command's reply.
    pub(super) fn on_block_event(&mut self, ev: BlockEvent) -> String {
        let fs = match (&ev.fs, ev.is_gone()) {
            (Some(fs), false) => fs.clone(),
            _ => return self.on_gone(&ev),
        };
        if let Some(p) = self.pipeline.plugged.get(&ev.devnum) {
            if p.uuid == fs.uuid {
                log::debug!(
                    "{} ({}) is already being handled; {:?} event ignored",
                    ev.device.display(),
                    fs.uuid,
                    ev.action
                );
                return format!("{} ({}) is already plugged in and handled", ev.device.display(), fs.uuid);
            }
            // Same device, another filesystem: the medium was swapped.
            self.on_gone(&ev);
        }
        self.pipeline.plugged.insert(
            ev.devnum,
            Plugged { uuid: fs.uuid.clone(), device: ev.device.clone(), fstype: fs.fstype.clone() },
        );
        let Some(disk) = self.state.disks.iter().find(|d| d.uuid == fs.uuid) else {
            // A mounted unknown filesystem is part of the running system
            // (the root disk, seen at every start): not a disk to offer.
            if !mount::is_unmounted(ev.devnum) {
                log::debug!("{} ({}) is mounted and not a known disk; ignored", ev.device.display(), fs.uuid);
                return format!("{} is mounted by the system and not a known disk", ev.device.display());
            }
            let Filesystem { uuid, label, fstype, size } = fs;
            log::info!("unknown disk {uuid} ({fstype}) on {}", ev.device.display());
            self.record_plug(&uuid, None, &ev.device, true);
            self.broadcast(&Event::UnknownDisk {
                uuid: uuid.clone(),
                label,
                fstype,
                size,
                device: ev.device.clone(),
            });
            return format!("{} carries filesystem {uuid}, which is not a known disk", ev.device.display());
        };
        let name = disk.name.clone();
        log::info!("disk {name} ({}) plugged in on {}", fs.uuid, ev.device.display());
        self.touch_last_seen(&fs.uuid);
        self.record_plug(&fs.uuid, Some(&name), &ev.device, true);
        self.broadcast(&Event::DiskPlugged {
            uuid: fs.uuid.clone(),
            name: name.clone(),
            device: ev.device.clone(),
            fstype: fs.fstype.clone(),
        });
        let job = Job { uuid: fs.uuid, name, device: ev.device, devnum: ev.devnum, fstype: fs.fstype };
        let msg = self.enqueue(job);
        self.broadcast(&self.disks_event());
        msg
    }

    fn on_gone(&mut self, ev: &BlockEvent) -> String {
        let Some(p) = self.pipeline.plugged.remove(&ev.devnum) else {
            return format!("{} is not a plugged-in disk", ev.device.display());
        };
        let name = self.state.disks.iter().find(|d| d.uuid == p.uuid).map(|d| d.name.clone());
        log::info!(
            "{} ({}) removed from {}",
            name.as_deref().unwrap_or("unknown disk"),
            p.uuid,
            p.device.display()
        );
        self.pipeline.queue.retain(|j| j.uuid != p.uuid);
        if let Some(r) = &self.pipeline.running {
            if r.job.uuid == p.uuid {
                log::warn!("disk {} removed during its backup: stopping the scripts", r.job.name);
                r.cancel.disk_removed.store(true, Ordering::SeqCst);
                r.cancel.stop.store(true, Ordering::SeqCst);
            }
        }
        if name.is_some() {
            self.touch_last_seen(&p.uuid);
        }
        self.record_plug(&p.uuid, name.as_deref(), &p.device, false);
        self.broadcast(&Event::DiskUnplugged { uuid: p.uuid.clone(), name, device: p.device.clone() });
        self.broadcast(&self.disks_event());
        format!("{} ({}) unplugged", p.device.display(), p.uuid)
    }

    fn enqueue(&mut self, job: Job) -> String {
        let already = self.pipeline.running.as_ref().is_some_and(|r| r.job.uuid == job.uuid)
            || self.pipeline.queue.iter().any(|j| j.uuid == job.uuid);
        if already {
            return format!("a backup of {} is already running or queued", job.name);
        }
        let name = job.name.clone();
        self.pipeline.queue.push_back(job);
        if self.pipeline.running.is_some() {
            let position = self.pipeline.queue.len();
            let j = self.pipeline.queue.back().expect("just pushed");
            self.broadcast(&Event::BackupQueued { uuid: j.uuid.clone(), name: name.clone(), position });
            return format!("backup of {name} queued (position {position})");
        }
        self.start_next();
        format!("backup of {name} started")
    }

    /// Starts the next queued backup when none runs.
    fn start_next(&mut self) {
        if self.pipeline.running.is_some() || self.stopping {
            return;
        }
        let Some(job) = self.pipeline.queue.pop_front() else {
            notify_status("idle");
            return;
        };
        let cancel = Arc::new(Cancel::default());
        let tx = match self.pipeline.progress.sender() {
            Ok(tx) => tx,
            Err(e) => {
                log::error!("cannot start the backup of {}: {e}", job.name);
                return;
            }
        };
        let (config, bus) = (self.config.clone(), self.bus.clone());
        let (worker_job, worker_cancel) = (job.clone(), cancel.clone());
        let thread = std::thread::Builder::new()
            .name(format!("backup-{}", job.name))
            .spawn(move || backup::run(worker_job, config, bus, worker_cancel, |p| tx.send(p)));
        match thread {
            Ok(thread) => {
                notify_status(&format!("backing up {}", job.name));
                self.pipeline.running = Some(Running {
                    job,
                    cancel,
                    since: Instant::now(),
                    script: None,
                    thread,
                    history_id: None,
                });
            }
            Err(e) => log::error!("cannot start a thread for the backup of {}: {e}", job.name),
        }
    }

    /// Handles what the worker reported.
    pub(super) fn on_progress(&mut self) {
        for p in self.pipeline.progress.drain() {
            self.progress(p);
        }
    }

    fn progress(&mut self, p: Progress) {
        let Some(r) = self.pipeline.running.as_mut() else { return };
        let (uuid, name) = (r.job.uuid.clone(), r.job.name.clone());
        match p {
            Progress::Started { log, started } => {
                log::info!("backup of {name} started ({:?} after it was queued)", r.since.elapsed());
                let device = r.job.device.clone();
                if let Some(h) = &self.history {
                    match h.backup_started(&r.job, started, &log) {
                        Ok(id) => r.history_id = Some(id),
                        Err(e) => log::error!("history: {e:#}"),
                    }
                }
                self.broadcast(&Event::BackupStarted { uuid, name, device, log });
            }
            Progress::ScriptStarted { script } => {
                r.script = Some(script.clone());
                self.broadcast(&Event::ScriptStarted { uuid, name, script });
            }
            Progress::ScriptFinished(s) => {
                r.script = None;
                self.broadcast(&Event::ScriptFinished {
                    uuid,
                    name,
                    script: s.script,
                    exit_code: s.exit_code,
                    outcome: s.outcome,
                    duration_secs: s.duration_secs,
                });
            }
            Progress::Finished(report) => {
                let r = self.pipeline.running.take().expect("checked above");
                if r.thread.join().is_err() {
                    log::error!("the backup thread of {name} panicked");
                }
                let last = LastBackup {
                    status: report.status,
                    started: report.started,
                    finished: Some(report.finished),
                };
                fault::point("daemon::before_state_write");
                if let Err(e) = self.edit_state(|s| {
                    if let Some(d) = s.disk_mut(&uuid) {
                        d.last_backup = Some(last);
                    }
                    Ok(())
                }) {
                    log::error!("{e:#}");
                }
                fault::point("daemon::before_history_write");
                if let Some(h) = &self.history {
                    if let Err(e) = h.backup_finished(r.history_id, &r.job, &report) {
                        log::error!("history: {e:#}");
                    }
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
                        device: r.job.device.clone(),
                        powered_off: power_off.is_some_and(|p| p.done()),
                        power_off_error: power_off.and_then(|p| p.reason()).map(str::to_owned),
                    });
                }
                self.broadcast(&self.disks_event());
                self.mailer.send(Work::Backup(Box::new(BackupMail {
                    host: backup::hostname(),
                    disk: name,
                    uuid,
                    device: r.job.device.clone(),
                    report,
                })));
                self.write_metrics(true);
                self.start_next();
            }
        }
    }

    /// `backup NAME`: back up a plugged-in known disk again, by hand.
    pub(super) fn backup_by_name(&mut self, name: &str) -> Result<String> {
        let Some(disk) = self.state.disks.iter().find(|d| d.name == name) else {
            bail!("no known disk is named {name:?} (see `tetras-back disks`)");
        };
        let uuid = disk.uuid.clone();
        let Some((&devnum, p)) = self.pipeline.plugged.iter().find(|(_, p)| p.uuid == uuid) else {
            bail!("disk {name} ({uuid}) is not plugged in");
        };
        let job =
            Job { uuid, name: name.to_owned(), device: p.device.clone(), devnum, fstype: p.fstype.clone() };
        Ok(self.enqueue(job))
    }

    /// What the pipeline is doing, for `status`: the running backup and the queue.
    pub(super) fn activity(&self) -> (Option<RunningBackup>, Vec<String>) {
        let queue = self.pipeline.queue.iter().map(|j| j.name.clone()).collect();
        let running = self.pipeline.running.as_ref().map(|r| RunningBackup {
            disk: r.job.name.clone(),
            uuid: r.job.uuid.clone(),
            device: r.job.device.clone(),
            script: r.script.clone(),
            elapsed_secs: r.since.elapsed().as_secs(),
        });
        (running, queue)
    }

    /// At shutdown: stops the running backup and waits for it to record its end.
    pub(super) fn finish_running_backup(&mut self) {
        let Some(r) = &self.pipeline.running else { return };
        log::warn!("stopping the running backup of {}", r.job.name);
        r.cancel.stop.store(true, Ordering::SeqCst);
        while self.pipeline.running.is_some() {
            match self.pipeline.progress.recv() {
                Some(p) => self.progress(p),
                None => break,
            }
        }
    }

    fn record_plug(&self, uuid: &str, name: Option<&str>, device: &std::path::Path, plugged: bool) {
        if let Some(h) = &self.history {
            if let Err(e) = h.plug(uuid, name, device, plugged) {
                log::error!("history: {e:#}");
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
