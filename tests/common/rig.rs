//! The usual set-up of a disk test: a test root, a known disk on a loop
//! device, and a subscriber to its events.

use std::fs;

use super::disk::*;
use super::*;

/// A test root with a scripts directory, a known disk and a subscriber.
/// (Fields drop in order: the disk is detached before the root is removed.)
pub struct Rig {
    pub disk: LoopDisk,
    pub sub: Option<Subscriber>,
    pub env: TestEnv,
}

impl Rig {
    pub fn new(fstype: &str, scripts_toml: &str) -> Rig {
        require_root_and_udevd();
        let env = TestEnv::new();
        env.write_config(scripts_toml);
        let uuid = random_uuid();
        let disk = LoopDisk::create(env.root(), fstype, &uuid, 32);
        env.cli(&["save", &uuid, "office"]).ok();
        Rig { env, disk, sub: None }
    }

    pub fn scripts_dir(&self) -> std::path::PathBuf {
        self.env.path("scripts")
    }

    pub fn subscribe(&mut self) -> &mut Subscriber {
        let sub = Subscriber::new(self.env.path("events.fifo"));
        self.env.cli(&["register", sub.path.to_str().unwrap()]).ok();
        self.sub = Some(sub);
        let sub = self.sub.as_mut().unwrap();
        sub.until("disks");
        sub
    }

    pub fn sub(&mut self) -> &mut Subscriber {
        self.sub.as_mut().unwrap()
    }

    /// Events up to `event` about this rig's disk.
    pub fn until(&mut self, event: &str) -> Vec<serde_json::Value> {
        let uuid = self.disk.uuid.clone();
        self.sub().until_about(event, &uuid)
    }

    pub fn flow(&self, events: &[serde_json::Value]) -> Vec<String> {
        flow_of(events, &self.disk.uuid)
    }

    /// The flow of this disk's events up to `event`.
    pub fn flow_until(&mut self, event: &str) -> Vec<String> {
        let events = self.until(event);
        self.flow(&events)
    }

    pub fn logs(&self) -> Vec<String> {
        fs::read_dir(self.env.path("log"))
            .map(|d| d.map(|e| fs::read_to_string(e.unwrap().path()).unwrap()).collect())
            .unwrap_or_default()
    }

    pub fn nothing_mounted(&self) {
        assert!(self.disk.mounts().is_empty(), "still mounted at {:?}", self.disk.mounts());
        let left: Vec<_> = fs::read_dir(self.env.path("mnt"))
            .map(|d| d.map(|e| e.unwrap().path()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "mount points left: {left:?}");
    }
}

/// The names of the events about the disk `uuid` (not the table refreshes,
/// nor other tests' disks, nor the progress of a backup that took more
/// than a second).
pub fn flow_of(events: &[serde_json::Value], uuid: &str) -> Vec<String> {
    let mine: Vec<_> =
        events.iter().filter(|e| e["uuid"] == uuid && e["event"] != "backup_progress").cloned().collect();
    names(&mine)
}
