//! Block devices as udev sees them: the monitor (netlink, `block`
//! subsystem), the enumeration of what is already plugged in, and the udev
//! database look-up behind `--plug DEV`.
//!
//! libudev objects are not thread-safe, so everything here is turned into a
//! plain [`BlockEvent`] at once and only those leave this module.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Serialize;

/// What happened to a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Add,
    Change,
    Remove,
}

/// A block device and the filesystem udev found on it (if any).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BlockEvent {
    pub action: Action,
    pub device: PathBuf,
    /// major:minor, to find the device in /proc/self/mountinfo.
    pub devnum: u64,
    pub fs: Option<Filesystem>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Filesystem {
    pub uuid: String,
    pub fstype: String,
    pub label: Option<String>,
    /// Size of the device in bytes, when udev knows it.
    pub size: Option<u64>,
}

impl Filesystem {
    /// `luks` for a LUKS volume (udev's `crypto_LUKS`): what `unknown_disk`
    /// says, since tetras-back does not open those (they need device-mapper).
    pub fn encryption(&self) -> Option<&'static str> {
        (self.fstype == LUKS).then_some("luks")
    }
}

/// What udev calls a LUKS volume.
pub const LUKS: &str = "crypto_LUKS";

impl BlockEvent {
    /// The device left, or its medium did (a `change` with no filesystem any
    /// more, as a detached loop device or an ejected card reader reports).
    pub fn is_gone(&self) -> bool {
        self.action == Action::Remove || self.fs.is_none()
    }
}

fn text(v: Option<&OsStr>) -> Option<String> {
    v.map(|s| s.to_string_lossy().into_owned()).filter(|s| !s.is_empty())
}

fn event_from_device(action: Action, dev: &udev::Device) -> Option<BlockEvent> {
    let device = dev.devnode()?.to_owned();
    let devnum = dev.devnum().unwrap_or(0);
    let fs = match (text(dev.property_value("ID_FS_UUID")), text(dev.property_value("ID_FS_TYPE"))) {
        (Some(uuid), Some(fstype)) if action != Action::Remove => Some(Filesystem {
            uuid,
            fstype,
            label: text(dev.property_value("ID_FS_LABEL")),
            // The sysfs `size` attribute counts 512-byte sectors whatever the device.
            size: text(dev.attribute_value("size")).and_then(|s| s.parse::<u64>().ok()).map(|s| s * 512),
        }),
        _ => None,
    };
    Some(BlockEvent { action, device, devnum, fs })
}

/// The udev monitor socket, polled by the daemon's loop.
pub struct Monitor {
    socket: udev::MonitorSocket,
}

impl Monitor {
    pub fn open() -> Result<Monitor> {
        let socket = udev::MonitorBuilder::new()
            .and_then(|b| b.match_subsystem("block"))
            .and_then(|b| b.listen())
            .context("cannot listen to udev events (netlink)")?;
        Ok(Monitor { socket })
    }

    /// The events that have arrived (the socket is non-blocking).
    pub fn drain(&mut self) -> Vec<BlockEvent> {
        self.socket
            .iter()
            .filter_map(|e| {
                let action = match e.event_type() {
                    udev::EventType::Add => Action::Add,
                    udev::EventType::Change => Action::Change,
                    udev::EventType::Remove => Action::Remove,
                    _ => return None,
                };
                event_from_device(action, &e.device())
            })
            .collect()
    }
}

impl AsFd for Monitor {
    fn as_fd(&self) -> BorrowedFd<'_> {
        use std::os::fd::AsRawFd;
        // SAFETY: the descriptor belongs to the socket, which outlives the borrow.
        unsafe { BorrowedFd::borrow_raw(self.socket.as_raw_fd()) }
    }
}

/// Block devices that carry a filesystem now (a disk plugged in before the daemon started).
pub fn enumerate() -> Result<Vec<BlockEvent>> {
    let mut en = udev::Enumerator::new().context("cannot enumerate block devices")?;
    en.match_subsystem("block")?;
    en.match_is_initialized()?;
    Ok(en
        .scan_devices()?
        .filter_map(|d| event_from_device(Action::Add, &d))
        .filter(|e| e.fs.is_some())
        .collect())
}

/// Looks a device node up in the udev database, as `--plug`/`--unplug` do.
pub fn lookup(path: &Path, action: Action) -> Result<BlockEvent> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("{}: cannot access the device", path.display()))?;
    if !meta.file_type().is_block_device() {
        bail!("{} is not a block device", path.display());
    }
    let dev = udev::Device::from_devnum(udev::DeviceType::Block, meta.rdev())
        .with_context(|| format!("{}: not found in the udev database", path.display()))?;
    let event = event_from_device(action, &dev)
        .with_context(|| format!("{}: udev knows no device node for it", path.display()))?;
    if action != Action::Remove && event.fs.is_none() {
        bail!("{} has no filesystem that udev recognises (no ID_FS_UUID; is udevd running?)", path.display());
    }
    Ok(event)
}
