//! Mounting a backup disk safely, and getting it off the system again.
//!
//! The disk is mounted with `mount(2)` at `<mount_dir>/<uuid>` with
//! `nosuid,nodev,noexec` (and `errors=remount-ro` for ext*), and the mount is
//! verified before anything writes: an empty mount point would send a
//! backup onto the root filesystem.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use nix::mount::{mount, umount2, MntFlags, MsFlags};

/// Where `devnum` (major:minor) is mounted now, from /proc/self/mountinfo.
pub fn mounted_at(devnum: u64) -> Result<Vec<PathBuf>> {
    let text = fs::read_to_string("/proc/self/mountinfo").context("cannot read /proc/self/mountinfo")?;
    let want = format!("{}:{}", nix::sys::stat::major(devnum), nix::sys::stat::minor(devnum));
    Ok(text
        .lines()
        .filter_map(|l| {
            let mut f = l.split(' ');
            let (_id, _parent, dev, _root, target) = (f.next()?, f.next()?, f.next()?, f.next()?, f.next()?);
            (dev == want).then(|| PathBuf::from(unescape(target)))
        })
        .collect())
}

/// Whether `devnum` is mounted nowhere (false when that cannot be told).
pub fn is_unmounted(devnum: u64) -> bool {
    mounted_at(devnum).is_ok_and(|m| m.is_empty())
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let mut out = Vec::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push(u8::from_str_radix(&s[i + 1..i + 4], 8).unwrap_or(b'?'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether `path` is the root of a mounted filesystem (its device differs
/// from its parent's).
pub fn is_mount_point(path: &Path) -> Result<bool> {
    let here = fs::symlink_metadata(path).with_context(|| format!("cannot inspect {}", path.display()))?;
    let parent =
        fs::metadata(path.join("..")).with_context(|| format!("cannot inspect {}/..", path.display()))?;
    Ok(here.dev() != parent.dev() || here.ino() == parent.ino())
}

/// A disk mounted for a backup. It is unmounted by [`Mounted::unmount`] or
/// [`Mounted::detach`]; dropped without either (the backup's thread
/// panicked), it is synced and unmounted, or detached when busy, so that
/// no mount outlives the backup.
#[derive(Debug)]
pub struct Mounted {
    target: PathBuf,
    released: bool,
}

impl Mounted {
    /// Makes a read-only mount writable (once the disk proved who it is).
    pub fn remount_writable(&self) -> Result<()> {
        mount(None::<&str>, &self.target, None::<&str>, MsFlags::MS_REMOUNT | safe_flags(), None::<&str>)
            .with_context(|| format!("cannot make {} writable", self.target.display()))
    }

    /// Unmounts, retrying while busy, then detaching (see [`unmount`]).
    pub fn unmount(mut self, attempts: u32) -> Result<Unmounted> {
        self.released = true;
        unmount(&self.target, attempts)
    }

    /// Unmounts, retrying while busy; still busy after `attempts`, it stays
    /// mounted and `Ok(false)` says so (for a disk that is being read).
    pub fn unmount_unless_busy(&mut self, attempts: u32) -> Result<bool> {
        if !umount_retrying(&self.target, attempts)? {
            return Ok(false);
        }
        self.released = true;
        remove_mount_point(&self.target);
        Ok(true)
    }

    /// Where it is mounted.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Detaches at once: the disk is gone.
    pub fn detach(mut self) -> Result<()> {
        self.released = true;
        detach(&self.target)
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        log::warn!("{} is still mounted at the end of its backup; unmounting it", self.target.display());
        let _ = sync(&self.target);
        if let Err(e) = unmount(&self.target, 5) {
            log::error!("{e:#}");
        }
    }
}

fn safe_flags() -> MsFlags {
    MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC
}

/// Mounts `device` (of type `fstype`) at `target`, creating the directory,
/// and checks that the mount really happened; `read_only` until the disk
/// has proved who it is.
pub fn mount_disk(device: &Path, fstype: &str, target: &Path, read_only: bool) -> Result<Mounted> {
    fs::create_dir_all(target).with_context(|| format!("cannot create mount point {}", target.display()))?;
    if is_mount_point(target)? {
        bail!("{} is already a mount point; refusing to mount over it", target.display());
    }
    let flags = if read_only { safe_flags() | MsFlags::MS_RDONLY } else { safe_flags() };
    let data = fstype.starts_with("ext").then_some("errors=remount-ro");
    if let Err(e) = mount(Some(device), target, Some(fstype), flags, data) {
        // The disk went away, or its filesystem is damaged: no directory is
        // left behind for a mount that never happened.
        remove_mount_point(target);
        return Err(e).with_context(|| {
            format!("cannot mount {} ({fstype}) at {}", device.display(), target.display())
        });
    }
    if !is_mount_point(target)? {
        bail!(
            "mounting {} at {} reported success but nothing is mounted there",
            device.display(),
            target.display()
        );
    }
    Ok(Mounted { target: target.to_owned(), released: false })
}

/// Flushes the filesystem mounted at `target` to the disk.
pub fn sync(target: &Path) -> Result<()> {
    let dir = fs::File::open(target).with_context(|| format!("cannot open {}", target.display()))?;
    nix::unistd::syncfs(&dir).with_context(|| format!("syncfs {} failed", target.display()))
}

/// How a disk left the system.
#[derive(Debug, PartialEq, Eq)]
pub enum Unmounted {
    /// Cleanly: everything is on the disk.
    Clean,
    /// Detached while still busy (`MNT_DETACH`): gone from the namespace,
    /// written out when the last user lets go.
    Detached,
}

/// Unmounts `target`, retrying briefly while it is busy, then detaching it;
/// removes the mount point directory afterwards.
pub fn unmount(target: &Path, attempts: u32) -> Result<Unmounted> {
    let mut how = Unmounted::Clean;
    if !umount_retrying(target, attempts)? {
        umount2(target, MntFlags::MNT_DETACH)
            .with_context(|| format!("cannot detach {}", target.display()))?;
        how = Unmounted::Detached;
    }
    remove_mount_point(target);
    Ok(how)
}

/// Unmounts `target`, trying `attempts` times 200 ms apart while it is
/// busy; `Ok(false)`: still busy (and still mounted).
fn umount_retrying(target: &Path, attempts: u32) -> Result<bool> {
    for tried in 1.. {
        match umount2(target, MntFlags::empty()) {
            Ok(()) => return Ok(true),
            Err(nix::errno::Errno::EBUSY) if tried < attempts => {
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(nix::errno::Errno::EBUSY) => return Ok(false),
            Err(e) => return Err(e).with_context(|| format!("cannot unmount {}", target.display())),
        }
    }
    unreachable!("the loop returns")
}

/// Detaches `target` at once (the disk is gone) and removes the directory.
pub fn detach(target: &Path) -> Result<()> {
    match umount2(target, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) => {}
        Err(e) => return Err(e).with_context(|| format!("cannot detach {}", target.display())),
    }
    remove_mount_point(target);
    Ok(())
}

fn remove_mount_point(target: &Path) {
    // rmdir, never a recursive delete: if something is still mounted or
    // was written there, it stays.
    if let Err(e) = fs::remove_dir(target) {
        log::warn!("cannot remove mount point {}: {e}", target.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape("/mnt/a\\040b\\134c"), "/mnt/a b\\c");
        assert_eq!(unescape("/plain"), "/plain");
    }

    #[test]
    fn root_and_proc_are_mount_points_a_plain_dir_is_not() {
        assert!(is_mount_point(Path::new("/")).unwrap());
        assert!(is_mount_point(Path::new("/proc")).unwrap());
        let d = tempfile::tempdir().unwrap();
        assert!(!is_mount_point(d.path()).unwrap());
    }
}
