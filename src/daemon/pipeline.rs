//! The plug and queue logic, as a plain struct: which disks are plugged in,
//! which backups wait, which one runs. Its methods change nothing outside
//! it; they return what the daemon is to do ([`Do`]), so that the rules are
//! tested without root, udev or disks.
//!
//! One plug is one backup: a disk stays in `plugged` from its first event
//! with a filesystem until it is removed (a `remove` event, or a `change`
//! whose filesystem is gone), and further add/change events for it while it
//! is there start nothing.
//!
//! ```text
//!  device event ── known ──> Seen, RecordPlug, Emit(disk_plugged) ─┬─ held: Open(job)
//!        │                                                          └─ enqueue ─┬─ idle: Start(job)
//!        │                                                                      └─ busy: Emit(backup_queued)
//!        ├─ unknown ──> RecordPlug, Emit(unknown_disk)   (not for the system's own mounted disks)
//!        └─ gone ─────> StopRunning (if its backup runs), Detach (if opened),
//!                       RecordPlug, Emit(disk_unplugged)
//!  finished ──> the next job: Start(job)
//!  open NAME (plugged, neither backing up nor queued) ──> Open(job)
//! ```
//!
//! An opened disk (mounted read-only for restore) is neither backed up nor
//! queued until it is closed: by `close`, by its time-out, or by unplugging.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Result};

use crate::clients::control::RunningBackup;
use crate::clients::events::{Event, UnknownRow};
use crate::disk::devices::{BlockEvent, Filesystem};
use crate::store::report::Job;

/// What the daemon does about an event.
#[derive(Debug, Clone, PartialEq)]
pub enum Do {
    /// Tell the subscribers.
    Emit(Event),
    /// Record a plug or unplug in the history.
    RecordPlug { uuid: String, name: Option<String>, device: PathBuf, plugged: bool },
    /// The known disk `uuid` was seen now (its `last_seen`).
    Seen { uuid: String },
    /// Start a backup worker for this job (it is the running one now).
    Start(Job),
    /// Stop the running backup: its disk is gone.
    StopRunning,
    /// The disk table changed: send it.
    Table,
    /// Mount this plugged-in disk read-only for restore (it is opened now).
    Open(Job),
    /// The opened disk `uuid` is gone: detach its mount.
    Detach { uuid: String },
}

/// What the daemon knows of a filesystem UUID that is a known disk's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Known {
    pub name: String,
    /// `hold NAME`: opened for restore when plugged in, not backed up.
    pub held: bool,
}

/// What became of an event: a sentence for the `plug` command's reply, and what to do.
#[derive(Debug, Default, PartialEq)]
pub struct Outcome {
    pub message: String,
    pub actions: Vec<Do>,
}

/// A block device with a filesystem that is plugged in now.
#[derive(Debug)]
struct Plugged {
    uuid: String,
    device: PathBuf,
    fstype: String,
    /// An unknown filesystem offered to be saved (`unknown_disk`).
    offered: Option<Filesystem>,
}

/// The backup running now.
#[derive(Debug)]
pub struct Current {
    pub job: Job,
    pub since: Instant,
    pub script: Option<String>,
    /// Its row in the history, once it has started.
    pub history_id: Option<i64>,
}

#[derive(Debug, Default)]
pub struct Pipeline {
    /// By device number, which `remove` events still carry.
    plugged: HashMap<u64, Plugged>,
    queue: VecDeque<Job>,
    pub running: Option<Current>,
    /// The disks opened for restore (mounted read-only), by UUID.
    opened: HashMap<String, Job>,
    /// No new backup starts (the daemon is stopping).
    pub closed: bool,
}

impl Pipeline {
    pub fn is_connected(&self, uuid: &str) -> bool {
        self.plugged.values().any(|p| p.uuid == uuid)
    }

    /// The plugged-in filesystems that were offered to be saved and are
    /// still not known disks (`is_known`), by device.
    pub fn unknown(&self, is_known: impl Fn(&str) -> bool) -> Vec<UnknownRow> {
        let mut rows: Vec<UnknownRow> = self
            .plugged
            .values()
            .filter_map(|p| {
                let fs = p.offered.as_ref().filter(|fs| !is_known(&fs.uuid))?;
                Some(UnknownRow {
                    uuid: fs.uuid.clone(),
                    label: fs.label.clone(),
                    fstype: fs.fstype.clone(),
                    size: fs.size,
                    device: p.device.clone(),
                    encrypted: fs.encryption().map(str::to_owned),
                })
            })
            .collect();
        rows.sort_by(|a, b| a.device.cmp(&b.device));
        rows
    }

    pub fn busy(&self) -> bool {
        self.running.is_some()
    }

    /// The opened disk `uuid`, if it is.
    pub fn opened(&self, uuid: &str) -> Option<&Job> {
        self.opened.get(uuid)
    }

    /// The daemon could not open (mount) `uuid`, or closed it.
    pub fn closed(&mut self, uuid: &str) {
        self.opened.remove(uuid);
    }

    /// A device event from udev or from `plug`/`unplug`. `name_of` says
    /// whether a filesystem UUID is a known disk's (its name);
    /// `mounted_by_system` whether a device is mounted already (an unknown
    /// filesystem that is is part of the running system: not offered).
    pub fn on_event(
        &mut self,
        ev: &BlockEvent,
        name_of: impl Fn(&str) -> Option<Known>,
        mounted_by_system: impl Fn(u64) -> bool,
    ) -> Outcome {
        let fs = match (&ev.fs, ev.is_gone()) {
            (Some(fs), false) => fs,
            _ => return self.gone(ev, &name_of),
        };
        let mut out = Outcome::default();
        if let Some(p) = self.plugged.get(&ev.devnum) {
            if p.uuid == fs.uuid {
                out.message =
                    format!("{} ({}) is already plugged in and handled", ev.device.display(), fs.uuid);
                return out;
            }
            // Same device, another filesystem: the medium was swapped.
            out.actions = self.gone(ev, &name_of).actions;
        }
        self.plugged.insert(
            ev.devnum,
            Plugged {
                uuid: fs.uuid.clone(),
                device: ev.device.clone(),
                fstype: fs.fstype.clone(),
                offered: None,
            },
        );
        let Some(Known { name, held }) = name_of(&fs.uuid) else {
            if mounted_by_system(ev.devnum) {
                out.message =
                    format!("{} is mounted by the system and not a known disk", ev.device.display());
                return out;
            }
            if let Some(p) = self.plugged.get_mut(&ev.devnum) {
                p.offered = Some(fs.clone());
            }
            let encrypted = fs.encryption().map(str::to_owned);
            let Filesystem { uuid, label, fstype, size } = fs.clone();
            out.message = match &encrypted {
                Some(_) => format!(
                    "{} is a LUKS-encrypted volume ({uuid}); tetras-back does not open LUKS volumes",
                    ev.device.display()
                ),
                None => {
                    format!("{} carries filesystem {uuid}, which is not a known disk", ev.device.display())
                }
            };
            out.actions.push(Do::RecordPlug {
                uuid: uuid.clone(),
                name: None,
                device: ev.device.clone(),
                plugged: true,
            });
            out.actions.push(Do::Emit(Event::UnknownDisk {
                uuid,
                label,
                fstype,
                size,
                device: ev.device.clone(),
                encrypted,
            }));
            return out;
        };
        out.actions.extend([
            Do::Seen { uuid: fs.uuid.clone() },
            Do::RecordPlug {
                uuid: fs.uuid.clone(),
                name: Some(name.clone()),
                device: ev.device.clone(),
                plugged: true,
            },
            Do::Emit(Event::DiskPlugged {
                uuid: fs.uuid.clone(),
                name: name.clone(),
                device: ev.device.clone(),
                fstype: fs.fstype.clone(),
            }),
        ]);
        let job = Job {
            uuid: fs.uuid.clone(),
            name,
            device: ev.device.clone(),
            devnum: ev.devnum,
            fstype: fs.fstype.clone(),
            identity: None,
            drill: false,
            last_written: None,
        };
        let queued = if held { self.open_now(job) } else { self.enqueue(job) };
        out.message = queued.message;
        out.actions.extend(queued.actions);
        out.actions.push(Do::Table);
        out
    }

    fn gone(&mut self, ev: &BlockEvent, name_of: &impl Fn(&str) -> Option<Known>) -> Outcome {
        let Some(p) = self.plugged.remove(&ev.devnum) else {
            return Outcome {
                message: format!("{} is not a plugged-in disk", ev.device.display()),
                actions: vec![],
            };
        };
        let name = name_of(&p.uuid).map(|k| k.name);
        let mut actions = Vec::new();
        self.queue.retain(|j| j.uuid != p.uuid);
        if self.running.as_ref().is_some_and(|r| r.job.uuid == p.uuid) {
            actions.push(Do::StopRunning);
        }
        if self.opened.remove(&p.uuid).is_some() {
            actions.push(Do::Detach { uuid: p.uuid.clone() });
        }
        if name.is_some() {
            actions.push(Do::Seen { uuid: p.uuid.clone() });
        }
        actions.extend([
            Do::RecordPlug {
                uuid: p.uuid.clone(),
                name: name.clone(),
                device: p.device.clone(),
                plugged: false,
            },
            Do::Emit(Event::DiskUnplugged { uuid: p.uuid.clone(), name, device: p.device.clone() }),
            Do::Table,
        ]);
        Outcome { message: format!("{} ({}) unplugged", p.device.display(), p.uuid), actions }
    }

    /// Opens the plugged-in disk `job` for restore.
    fn open_now(&mut self, job: Job) -> Outcome {
        let name = job.name.clone();
        self.opened.insert(job.uuid.clone(), job.clone());
        Outcome {
            message: format!("disk {name} is held: opening it read-only for restore, not backing it up"),
            actions: vec![Do::Open(job)],
        }
    }

    /// `open NAME`: the plugged-in disk `uuid` is opened for restore, once
    /// its backup (if one runs or waits) is over.
    pub fn open(&mut self, uuid: &str, name: &str) -> Result<Outcome> {
        if self.opened.contains_key(uuid) {
            return Ok(Outcome { message: format!("disk {name} is already opened"), actions: vec![] });
        }
        let job = self.plugged_job(uuid, name)?;
        if self.running.as_ref().is_some_and(|r| r.job.uuid == uuid) {
            bail!("disk {name} is being backed up; open it once its backup has finished");
        }
        if self.queue.iter().any(|j| j.uuid == uuid) {
            bail!("disk {name} waits for its backup; open it once that has finished");
        }
        let mut out = self.open_now(job);
        out.message = format!("opening disk {name} read-only for restore");
        out.actions.push(Do::Table);
        Ok(out)
    }

    /// A job for the plugged-in known disk `uuid`.
    fn plugged_job(&self, uuid: &str, name: &str) -> Result<Job> {
        let Some((&devnum, p)) = self.plugged.iter().find(|(_, p)| p.uuid == uuid) else {
            bail!("disk {name} ({uuid}) is not plugged in");
        };
        Ok(Job {
            uuid: uuid.to_owned(),
            name: name.to_owned(),
            device: p.device.clone(),
            devnum,
            fstype: p.fstype.clone(),
            identity: None,
            drill: false,
            last_written: None,
        })
    }

    /// Queues a backup of `job` (once), starting it when nothing runs.
    fn enqueue(&mut self, job: Job) -> Outcome {
        let already = self.running.as_ref().is_some_and(|r| r.job.uuid == job.uuid)
            || self.queue.iter().any(|j| j.uuid == job.uuid);
        if already {
            return Outcome {
                message: format!("a backup of {} is already running or queued", job.name),
                actions: vec![],
            };
        }
        let (uuid, name) = (job.uuid.clone(), job.name.clone());
        self.queue.push_back(job);
        if self.running.is_some() || self.closed {
            let position = self.queue.len();
            return Outcome {
                message: format!("backup of {name} queued (position {position})"),
                actions: vec![Do::Emit(Event::BackupQueued { uuid, name, position })],
            };
        }
        Outcome { message: format!("backup of {name} started"), actions: self.start_next() }
    }

    /// The running backup has ended: what starts next.
    pub fn finished(&mut self) -> Vec<Do> {
        self.running = None;
        self.start_next()
    }

    fn start_next(&mut self) -> Vec<Do> {
        if self.running.is_some() || self.closed {
            return vec![];
        }
        let Some(job) = self.queue.pop_front() else { return vec![] };
        self.running =
            Some(Current { job: job.clone(), since: Instant::now(), script: None, history_id: None });
        vec![Do::Start(job)]
    }

    /// `backup NAME`: the plugged-in disk `uuid` (named `name`) is backed up again.
    pub fn backup_again(&mut self, uuid: &str, name: &str) -> Result<Outcome> {
        let job = self.plugged_job(uuid, name)?;
        if self.opened.contains_key(uuid) {
            bail!("disk {name} is opened for restore; `tetras-back close {name}` first");
        }
        Ok(self.enqueue(job))
    }

    /// The plugged-in filesystems whose backup neither runs nor waits and
    /// that are not opened (a schedule may make them due).
    pub fn idle_plugged(&self) -> Vec<String> {
        let mut uuids: Vec<String> = self
            .plugged
            .values()
            .map(|p| p.uuid.clone())
            .filter(|u| {
                self.running.as_ref().is_none_or(|r| &r.job.uuid != u)
                    && !self.queue.iter().any(|j| &j.uuid == u)
                    && !self.opened.contains_key(u)
            })
            .collect();
        uuids.sort();
        uuids.dedup();
        uuids
    }

    /// The running backup and the names waiting, for `status`.
    pub fn activity(&self) -> (Option<RunningBackup>, Vec<String>) {
        let queue = self.queue.iter().map(|j| j.name.clone()).collect();
        let running = self.running.as_ref().map(|r| RunningBackup {
            disk: r.job.name.clone(),
            uuid: r.job.uuid.clone(),
            device: r.job.device.clone(),
            script: r.script.clone(),
            elapsed_secs: r.since.elapsed().as_secs(),
            progress: None,
        });
        (running, queue)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::devices::Action;

    fn ev(devnum: u64, uuid: Option<&str>, action: Action) -> BlockEvent {
        BlockEvent {
            action,
            device: PathBuf::from(format!("/dev/sd{}1", (b'a' + devnum as u8) as char)),
            devnum,
            fs: uuid.map(|u| Filesystem {
                uuid: u.into(),
                label: None,
                fstype: "ext4".into(),
                size: Some(1 << 30),
            }),
        }
    }

    fn known(uuid: &str) -> Option<Known> {
        let name = match uuid {
            "u1" | "held" => "office",
            "u2" => "home",
            _ => return None,
        };
        Some(Known { name: name.into(), held: uuid == "held" })
    }

    fn names(actions: &[Do]) -> Vec<String> {
        actions
            .iter()
            .map(|a| match a {
                Do::Emit(e) => {
                    format!("emit {}", serde_json::to_value(e).unwrap()["event"].as_str().unwrap())
                }
                Do::RecordPlug { plugged, .. } => {
                    format!("record {}", if *plugged { "plug" } else { "unplug" })
                }
                Do::Seen { uuid } => format!("seen {uuid}"),
                Do::Start(j) => format!("start {}", j.name),
                Do::StopRunning => "stop".into(),
                Do::Table => "table".into(),
                Do::Open(j) => format!("open {}", j.name),
                Do::Detach { uuid } => format!("detach {uuid}"),
            })
            .collect()
    }

    #[test]
    fn a_known_disk_is_backed_up_once_per_plug() {
        let mut p = Pipeline::default();
        let out = p.on_event(&ev(1, Some("u1"), Action::Add), known, |_| false);
        assert_eq!(
            names(&out.actions),
            ["seen u1", "record plug", "emit disk_plugged", "start office", "table"]
        );
        assert_eq!(out.message, "backup of office started");
        assert!(p.busy() && p.is_connected("u1"));
        // Repeated add/change events for a disk still plugged in start nothing.
        for action in [Action::Change, Action::Add, Action::Change] {
            assert!(p.on_event(&ev(1, Some("u1"), action), known, |_| false).actions.is_empty());
        }
        assert!(p.finished().is_empty(), "nothing else to start");
        assert!(!p.busy());
    }

    #[test]
    fn a_second_disk_waits_for_the_first() {
        let mut p = Pipeline::default();
        p.on_event(&ev(1, Some("u1"), Action::Add), known, |_| false);
        let out = p.on_event(&ev(2, Some("u2"), Action::Add), known, |_| false);
        assert!(names(&out.actions).contains(&"emit backup_queued".to_owned()), "{:?}", out.actions);
        assert_eq!(out.message, "backup of home queued (position 1)");
        assert_eq!(p.activity().1, ["home"]);
        assert_eq!(names(&p.finished()), ["start home"]);
        assert_eq!(p.activity().0.unwrap().disk, "home");
    }

    #[test]
    fn pulled_out_during_its_backup_it_is_stopped_and_a_queued_one_forgotten() {
        let mut p = Pipeline::default();
        p.on_event(&ev(1, Some("u1"), Action::Add), known, |_| false);
        p.on_event(&ev(2, Some("u2"), Action::Add), known, |_| false);
        let out = p.on_event(&ev(1, None, Action::Remove), known, |_| false);
        assert_eq!(names(&out.actions), ["stop", "seen u1", "record unplug", "emit disk_unplugged", "table"]);
        let out = p.on_event(&ev(2, Some("u2"), Action::Change), known, |_| false);
        assert!(out.actions.is_empty());
        let out = p.on_event(&ev(2, None, Action::Change), known, |_| false);
        assert!(!names(&out.actions).contains(&"stop".to_owned()), "home was only queued");
        assert!(p.finished().is_empty(), "home left the queue with its disk");
        assert!(!p.is_connected("u1") && !p.is_connected("u2"));
    }

    #[test]
    fn unknown_disks_are_offered_unless_the_system_mounted_them() {
        let mut p = Pipeline::default();
        let out = p.on_event(&ev(3, Some("stranger"), Action::Add), known, |_| false);
        assert_eq!(names(&out.actions), ["record plug", "emit unknown_disk"]);
        let out = p.on_event(&ev(4, Some("root-fs"), Action::Add), known, |_| true);
        assert!(out.actions.is_empty(), "{:?}", out.actions);
        assert!(!p.busy());
        // Listed until saved or unplugged; the system's own never.
        let uuids = |p: &Pipeline, known: &str| -> Vec<String> {
            p.unknown(|u| u == known).into_iter().map(|r| r.uuid).collect()
        };
        assert_eq!(uuids(&p, ""), ["stranger"]);
        assert!(uuids(&p, "stranger").is_empty(), "a saved disk is not unknown");
        p.on_event(&ev(3, None, Action::Remove), known, |_| false);
        assert!(uuids(&p, "").is_empty());
    }

    #[test]
    fn a_swapped_medium_is_an_unplug_then_a_plug() {
        let mut p = Pipeline::default();
        p.on_event(&ev(1, Some("u1"), Action::Add), known, |_| false);
        let out = p.on_event(&ev(1, Some("u2"), Action::Change), known, |_| false);
        let n = names(&out.actions);
        assert_eq!(&n[..4], ["stop", "seen u1", "record unplug", "emit disk_unplugged"]);
        assert!(n.contains(&"emit disk_plugged".to_owned()) && n.contains(&"emit backup_queued".to_owned()));
        assert!(p.is_connected("u2") && !p.is_connected("u1"));
    }

    #[test]
    fn a_stopping_daemon_starts_nothing_new() {
        let mut p = Pipeline { closed: true, ..Pipeline::default() };
        let out = p.on_event(&ev(1, Some("u1"), Action::Add), known, |_| false);
        assert!(!names(&out.actions).iter().any(|a| a.starts_with("start")));
        assert!(p.finished().is_empty());
    }

    #[test]
    fn idle_plugged_disks_are_those_not_running_nor_queued() {
        let mut p = Pipeline::default();
        p.on_event(&ev(1, Some("u1"), Action::Add), known, |_| false);
        p.on_event(&ev(2, Some("u2"), Action::Add), known, |_| false);
        assert!(p.idle_plugged().is_empty());
        p.finished();
        assert_eq!(p.idle_plugged(), ["u1"]);
        p.finished();
        assert_eq!(p.idle_plugged(), ["u1", "u2"]);
    }

    #[test]
    fn backup_again_needs_the_disk_plugged_in() {
        let mut p = Pipeline::default();
        assert!(p.backup_again("u1", "office").unwrap_err().to_string().contains("not plugged in"));
        p.on_event(&ev(1, Some("u1"), Action::Add), known, |_| false);
        assert!(p.backup_again("u1", "office").unwrap().message.contains("already running"));
        p.finished();
        assert_eq!(names(&p.backup_again("u1", "office").unwrap().actions), ["start office"]);
    }

    #[test]
    fn a_held_disk_is_opened_not_backed_up_and_detached_when_pulled_out() {
        let mut p = Pipeline::default();
        let out = p.on_event(&ev(1, Some("held"), Action::Add), known, |_| false);
        assert_eq!(
            names(&out.actions),
            ["seen held", "record plug", "emit disk_plugged", "open office", "table"]
        );
        assert!(!p.busy() && p.opened("held").is_some());
        assert!(p.idle_plugged().is_empty(), "an opened disk is not due for a scheduled backup");
        assert!(p.backup_again("held", "office").unwrap_err().to_string().contains("close office"));
        let out = p.on_event(&ev(1, None, Action::Remove), known, |_| false);
        assert_eq!(
            names(&out.actions),
            ["detach held", "seen held", "record unplug", "emit disk_unplugged", "table"]
        );
        assert!(p.opened("held").is_none());
    }

    #[test]
    fn open_waits_for_the_backup_and_a_closed_disk_can_be_backed_up_again() {
        let mut p = Pipeline::default();
        assert!(p.open("u1", "office").unwrap_err().to_string().contains("not plugged in"));
        p.on_event(&ev(1, Some("u1"), Action::Add), known, |_| false);
        p.on_event(&ev(2, Some("u2"), Action::Add), known, |_| false);
        assert!(p.open("u1", "office").unwrap_err().to_string().contains("being backed up"));
        assert!(p.open("u2", "home").unwrap_err().to_string().contains("waits for its backup"));
        p.finished();
        p.finished();
        assert_eq!(names(&p.open("u1", "office").unwrap().actions), ["open office", "table"]);
        assert!(p.open("u1", "office").unwrap().actions.is_empty(), "already opened");
        assert_eq!(p.idle_plugged(), ["u2"]);
        p.closed("u1");
        assert_eq!(names(&p.backup_again("u1", "office").unwrap().actions), ["start office"]);
    }
}
