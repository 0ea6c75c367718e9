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
//!  device event ── known ──> Seen, RecordPlug, Emit(disk_plugged) ─ enqueue ─┬─ idle: Start(job)
//!        │                                                                    └─ busy: Emit(backup_queued)
//!        ├─ unknown ──> RecordPlug, Emit(unknown_disk)   (not for the system's own mounted disks)
//!        └─ gone ─────> StopRunning (if its backup runs), RecordPlug, Emit(disk_unplugged)
//!  finished ──> the next job: Start(job)
//! ```

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Result};

use crate::backup::report::Job;
use crate::control::RunningBackup;
use crate::devices::{BlockEvent, Filesystem};
use crate::events::Event;

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
    /// No new backup starts (the daemon is stopping).
    pub closed: bool,
}

impl Pipeline {
    pub fn is_connected(&self, uuid: &str) -> bool {
        self.plugged.values().any(|p| p.uuid == uuid)
    }

    pub fn busy(&self) -> bool {
        self.running.is_some()
    }

    /// A device event from udev or from `plug`/`unplug`. `name_of` says
    /// whether a filesystem UUID is a known disk's (its name);
    /// `mounted_by_system` whether a device is mounted already (an unknown
    /// filesystem that is is part of the running system: not offered).
    pub fn on_event(
        &mut self,
        ev: &BlockEvent,
        name_of: impl Fn(&str) -> Option<String>,
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
            Plugged { uuid: fs.uuid.clone(), device: ev.device.clone(), fstype: fs.fstype.clone() },
        );
        let Some(name) = name_of(&fs.uuid) else {
            if mounted_by_system(ev.devnum) {
                out.message =
                    format!("{} is mounted by the system and not a known disk", ev.device.display());
                return out;
            }
            let Filesystem { uuid, label, fstype, size } = fs.clone();
            out.message =
                format!("{} carries filesystem {uuid}, which is not a known disk", ev.device.display());
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
        };
        let queued = self.enqueue(job);
        out.message = queued.message;
        out.actions.extend(queued.actions);
        out.actions.push(Do::Table);
        out
    }

    fn gone(&mut self, ev: &BlockEvent, name_of: &impl Fn(&str) -> Option<String>) -> Outcome {
        let Some(p) = self.plugged.remove(&ev.devnum) else {
            return Outcome {
                message: format!("{} is not a plugged-in disk", ev.device.display()),
                actions: vec![],
            };
        };
        let name = name_of(&p.uuid);
        let mut actions = Vec::new();
        self.queue.retain(|j| j.uuid != p.uuid);
        if self.running.as_ref().is_some_and(|r| r.job.uuid == p.uuid) {
            actions.push(Do::StopRunning);
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

    /// Queues a backup of `job` (once), starting it when nothing runs.
    pub fn enqueue(&mut self, job: Job) -> Outcome {
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
        let Some((&devnum, p)) = self.plugged.iter().find(|(_, p)| p.uuid == uuid) else {
            bail!("disk {name} ({uuid}) is not plugged in");
        };
        let job = Job {
            uuid: uuid.to_owned(),
            name: name.to_owned(),
            device: p.device.clone(),
            devnum,
            fstype: p.fstype.clone(),
            identity: None,
        };
        Ok(self.enqueue(job))
    }

    /// The plugged-in filesystems whose backup neither runs nor waits (a
    /// schedule may make them due).
    pub fn idle_plugged(&self) -> Vec<String> {
        let mut uuids: Vec<String> = self
            .plugged
            .values()
            .map(|p| p.uuid.clone())
            .filter(|u| {
                self.running.as_ref().is_none_or(|r| &r.job.uuid != u)
                    && !self.queue.iter().any(|j| &j.uuid == u)
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
        });
        (running, queue)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::Action;

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

    fn known(uuid: &str) -> Option<String> {
        match uuid {
            "u1" => Some("office".into()),
            "u2" => Some("home".into()),
            _ => None,
        }
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
}
