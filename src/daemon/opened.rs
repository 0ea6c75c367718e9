//! Disks opened for restore: mounted read-only (`nosuid,nodev,noexec,ro`)
//! at `<mount_dir>/<uuid>` so that `backups`, `restore` and the web console
//! read them, never backed up or pruned while they are.
//!
//! ```text
//!  hold NAME + plug, or open NAME ─> mount ro ─ identity proved ─> disk_opened
//!  close NAME ─────────────────────> unmount (refused while busy) ─> disk_closed, safe_to_remove
//!  open_timeout without a `locate` and not busy ─> the same, why "timeout"
//!  pulled out ─────────────────────> detach ─> disk_closed (unplugged), disk_unplugged
//! ```
//!
//! Mounting and unmounting happen on the daemon's loop: they take
//! milliseconds, and a read-only mount writes nothing to wait for.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::pipeline::Do;
use super::Daemon;
use crate::backup;
use crate::backup::scripts::{self, BackupLog, Capture, Outcome};
use crate::clients::control::{DiskLocation, Reply};
use crate::clients::events::Event;
use crate::disk::identity;
use crate::disk::mount::Mounted;
use crate::store::report::{Job, PowerOff};

/// An opened disk: its read-only mount and when it was last used.
pub struct OpenDisk {
    job: Job,
    mounted: Mounted,
    last_used: Instant,
    /// Set when the disk goes (pulled out, the daemon stopping): its
    /// restores are stopped.
    cancel: Arc<AtomicBool>,
}

/// The opened disks, by UUID.
pub type OpenDisks = HashMap<String, OpenDisk>;

impl Daemon {
    /// `hold NAME` / `release NAME`.
    pub(super) fn hold(&mut self, name: &str, held: bool) -> Result<String> {
        let (uuid, changed) = self.edit_state(|s| s.set_held(name, held))?;
        let mut message = crate::store::state::held_message(name, held, changed);
        if held && self.disks.pipeline.is_connected(&uuid) && self.disks.pipeline.opened(&uuid).is_none() {
            message.push_str(&format!("; it is plugged in now: `tetras-back open {name}` opens it"));
        }
        if changed {
            log::info!("{message}");
            self.broadcast(&self.disks_event());
        }
        Ok(message)
    }

    /// `open NAME`.
    pub(super) fn open_by_name(&mut self, name: &str) -> Result<String> {
        let uuid = self.state.disk_named(name)?.uuid.clone();
        if let Some(o) = self.disks.open.get_mut(&uuid) {
            o.last_used = Instant::now();
            return Ok(format!("disk {name} is already opened at {}", o.mounted.target().display()));
        }
        let outcome = self.disks.pipeline.open(&uuid, name)?;
        let mut opened = Ok(());
        for action in outcome.actions {
            match action {
                Do::Open(job) => opened = self.open_disk(job),
                other => self.carry_out(vec![other]),
            }
        }
        opened.with_context(|| format!("disk {name} could not be opened"))?;
        let mount = self.disks.open.get(&uuid).map(|o| o.mounted.target().display().to_string());
        Ok(format!("disk {name} is opened read-only at {}", mount.unwrap_or_default()))
    }

    /// Mounts the disk of `job` read-only (the pipeline counts it as opened
    /// already; it is told otherwise when this fails, and the error says why).
    pub(super) fn open_disk(&mut self, mut job: Job) -> Result<()> {
        job.identity = self.state.disk(&job.uuid).and_then(|d| d.identity.clone());
        let refused = |d: &mut Daemon, e: anyhow::Error| {
            log::error!("cannot open disk {}: {e:#}", job.name);
            d.disks.pipeline.closed(&job.uuid);
            d.broadcast(&d.disks_event());
            Err(e)
        };
        let mut mounted = match backup::mount_known(&job, &self.config, true) {
            Ok(m) => m,
            Err(e) => return refused(self, e),
        };
        if let Some(expected) = &job.identity {
            if let Err(why) = identity::check(mounted.target(), expected) {
                let why = identity::refusal(&job, &why);
                if let Err(e) = mounted.unmount_unless_busy(15) {
                    log::error!("{e:#}");
                }
                self.broadcast(&Event::DiskMismatch {
                    uuid: job.uuid.clone(),
                    name: job.name.clone(),
                    device: job.device.clone(),
                    why: why.clone(),
                });
                return refused(self, anyhow::anyhow!(why));
            }
        }
        let mount = mounted.target().to_owned();
        log::info!("disk {} opened read-only for restore at {}", job.name, mount.display());
        let event = Event::DiskOpened {
            uuid: job.uuid.clone(),
            name: job.name.clone(),
            device: job.device.clone(),
            mount,
        };
        self.disks.open.insert(
            job.uuid.clone(),
            OpenDisk { job, mounted, last_used: Instant::now(), cancel: Arc::default() },
        );
        self.broadcast(&event);
        Ok(())
    }

    /// `close NAME`: refused while something still reads the disk.
    pub(super) fn close_by_name(&mut self, name: &str) -> Result<String> {
        let uuid = self.state.disk_named(name)?.uuid.clone();
        if !self.disks.open.contains_key(&uuid) {
            bail!("disk {name} is not opened");
        }
        if !self.close(&uuid, "close", 15)? {
            bail!(
                "disk {name} is still in use (a restore, a shell or a program in {}); \
                 close it again once that has ended",
                self.config.mount_dir.join(&uuid).display()
            );
        }
        Ok(format!("disk {name} is closed and safe to remove"))
    }

    /// Unmounts the opened disk `uuid`; `Ok(false)` when it stayed busy
    /// (it stays opened).
    fn close(&mut self, uuid: &str, why: &str, attempts: u32) -> Result<bool> {
        let Some(o) = self.disks.open.get_mut(uuid) else { return Ok(true) };
        if !o.mounted.unmount_unless_busy(attempts)? {
            return Ok(false);
        }
        let OpenDisk { job, .. } = self.disks.open.remove(uuid).expect("found above");
        self.disks.pipeline.closed(uuid);
        log::info!("disk {} closed ({why}); it is safe to remove", job.name);
        let power_off = if self.config.power_off {
            self.bus.power_off(&job.device)
        } else {
            PowerOff::Not("power_off = false in the configuration".into())
        };
        self.broadcast(&Event::DiskClosed {
            uuid: job.uuid.clone(),
            name: job.name.clone(),
            why: why.into(),
        });
        self.broadcast(&Event::SafeToRemove {
            uuid: job.uuid,
            name: job.name,
            device: job.device,
            powered_off: power_off.done(),
            power_off_error: power_off.reason().map(str::to_owned),
        });
        self.broadcast(&self.disks_event());
        Ok(true)
    }

    /// The opened disk `uuid` was pulled out.
    pub(super) fn detach_opened(&mut self, uuid: &str) {
        let Some(OpenDisk { job, mounted, cancel, .. }) = self.disks.open.remove(uuid) else { return };
        cancel.store(true, Ordering::SeqCst);
        log::warn!("disk {} was pulled out while opened; detaching its mount", job.name);
        if let Err(e) = mounted.detach() {
            log::error!("{e:#}");
        }
        self.broadcast(&Event::DiskClosed { uuid: job.uuid, name: job.name, why: "unplugged".into() });
    }

    /// `locate NAME`: where the disk is mounted now; a use of an opened disk.
    pub(super) fn locate(&mut self, name: &str) -> Result<DiskLocation> {
        let uuid = self.state.disk_named(name)?.uuid.clone();
        if let Some(o) = self.disks.open.get_mut(&uuid) {
            o.last_used = Instant::now();
            return Ok(DiskLocation {
                name: name.into(),
                uuid,
                mount: o.mounted.target().to_owned(),
                opened: true,
            });
        }
        if self.disks.pipeline.running.as_ref().is_some_and(|r| r.job.uuid == uuid) {
            return Ok(DiskLocation {
                name: name.into(),
                mount: self.config.mount_dir.join(&uuid),
                uuid,
                opened: false,
            });
        }
        let how = if self.disks.pipeline.is_connected(&uuid) {
            format!("it is plugged in: `tetras-back open {name}` opens it")
        } else {
            format!("`tetras-back hold {name}`, then plug it in, opens it without a backup")
        };
        bail!("disk {name} is not opened; {how}")
    }

    /// Starts restoring from an opened disk in a child process (`tetras-back
    /// restore`, like a script: its own process group, its output in a log
    /// of its own, stopped when the disk is pulled out or the daemon stops),
    /// watched by a thread that answers on `reply` when done; refuses at
    /// once what cannot be. A restore asked from the web console (`user`)
    /// only writes beneath `[web] restore_to` and makes nothing that grants
    /// privileges.
    pub(super) fn restore(&mut self, r: RestoreRequest, reply: Option<PathBuf>) -> Result<()> {
        let disk = self.locate(&r.name)?;
        if !disk.opened {
            bail!("disk {} is being backed up; restore from it once its backup has finished", r.name);
        }
        let mut parts = Path::new(&r.backup).components();
        if !matches!((parts.next(), parts.next()), (Some(std::path::Component::Normal(_)), None)) {
            bail!("{:?} is not a backup folder of disk {}", r.backup, r.name);
        }
        if r.user.is_some() {
            restore_root(&self.config.web.restore_to, &r.to)?;
        }
        let who = r.user.as_ref().map_or("root".to_owned(), |u| format!("web user {u}"));
        let mut args: Vec<String> = vec!["restore".into(), "--from".into(), r.backup.clone()];
        args.extend(["--to".into(), r.to.display().to_string()]);
        if r.overwrite {
            args.push("--overwrite".into());
        }
        if r.user.is_some() {
            args.push("--no-privileges".into());
        }
        args.push("--".into());
        args.push(disk.mount.display().to_string());
        args.extend(r.paths.iter().map(|p| p.display().to_string()));
        log::info!(
            "restore of {:?} from {} into {}, asked by {who}",
            r.paths,
            disk.mount.join(&r.backup).display(),
            r.to.display()
        );
        let at = chrono::Local::now().format("%Y-%m-%d_%H-%M-%S");
        let log = BackupLog::create(BackupLog::free_path(
            &self.config.log_dir,
            &format!("{at}_{}_restore", r.name),
        ))?;
        log.info(&format!(
            "restore of {:?} from {} into {}, asked by {who}",
            r.paths,
            r.backup,
            r.to.display()
        ));
        let cancel = self.disks.open.get(&disk.uuid).map(|o| o.cancel.clone()).unwrap_or_default();
        std::thread::Builder::new().name("restore".into()).spawn(move || {
            let capture = Capture::both();
            let outcome = std::env::current_exe().context("cannot find this program").and_then(|bin| {
                let run = scripts::Run {
                    program: &bin,
                    args: &args,
                    cwd: Path::new("/"),
                    env: &[],
                    timeout: RESTORE_TIMEOUT,
                    tag: "restore",
                    capture: Some(capture.clone()),
                };
                scripts::run(&run, &log, &cancel)
            });
            let said = Capture::text(&capture.stdout);
            let said = said.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("restored").to_owned();
            let errors = capture.stderr.as_deref().map(Capture::text).unwrap_or_default();
            let why = errors
                .lines()
                .rfind(|l| !l.trim().is_empty())
                .unwrap_or("")
                .trim_start_matches("tetras-back: ");
            let answer = match outcome {
                Ok(Outcome::Exited(0)) => Reply::ok(said),
                Ok(Outcome::Exited(23)) => {
                    Reply::ok(format!("{said}; some entries could not be read (see {})", log.path.display()))
                }
                Ok(o) => Reply::error(if why.is_empty() {
                    format!("the restore {}", o.describe())
                } else {
                    why.to_owned()
                }),
                Err(e) => Reply::error(format!("{e:#}")),
            };
            match &answer.error {
                None => {
                    log.info(&format!("{} (asked by {who})", answer.message.as_deref().unwrap_or_default()))
                }
                Some(e) => log::warn!("restore asked by {who} failed: {e}"),
            }
            if let Some(path) = reply {
                super::answer(&path, &answer);
            }
        })?;
        Ok(())
    }

    /// Closes the opened disks unused for `open_timeout` (a disk still being
    /// read counts as used); returns when the next one is due.
    pub(super) fn close_unused_disks(&mut self) -> Option<Instant> {
        let timeout = self.config.open_timeout;
        let now = Instant::now();
        let due: Vec<String> = self
            .disks
            .open
            .iter()
            .filter(|(_, o)| o.last_used + timeout <= now)
            .map(|(u, _)| u.clone())
            .collect();
        for uuid in due {
            match self.close(&uuid, "timeout", 1) {
                Ok(true) => {}
                Ok(false) => {
                    log::info!("an opened disk is still being read; it stays opened");
                    if let Some(o) = self.disks.open.get_mut(&uuid) {
                        o.last_used = now;
                    }
                }
                Err(e) => log::error!("{e:#}"),
            }
        }
        self.disks.open.values().map(|o| o.last_used + timeout).min()
    }

    /// At shutdown: nothing stays mounted.
    pub(super) fn close_all_disks(&mut self) {
        for o in self.disks.open.values() {
            o.cancel.store(true, Ordering::SeqCst);
        }
        if !self.disks.open.is_empty() {
            // The restores' children get their SIGTERM, then SIGKILL.
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        for uuid in self.disks.open.keys().cloned().collect::<Vec<_>>() {
            match self.close(&uuid, "daemon stopping", 15) {
                Ok(true) => {}
                Ok(false) | Err(_) => {
                    if let Some(OpenDisk { job, mounted, .. }) = self.disks.open.remove(&uuid) {
                        log::warn!("disk {} is still in use as the daemon stops; detaching it", job.name);
                        let _ = mounted.detach();
                    }
                }
            }
        }
    }
}

/// A restore still running after this long is stopped.
const RESTORE_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// Checks that `to` is one of the console's restore roots or beneath one,
/// with no `..` (the restore itself refuses any symbolic link on the way).
fn restore_root(roots: &[PathBuf], to: &Path) -> Result<()> {
    let plain = to.is_absolute() && to.components().all(|c| !matches!(c, std::path::Component::ParentDir));
    if plain && roots.iter().any(|root| to.starts_with(root)) {
        return Ok(());
    }
    let roots: Vec<String> = roots.iter().map(|r| r.display().to_string()).collect();
    bail!(
        "{} is not a folder the web console may restore into; it restores only into {} (`[web] restore_to`)",
        to.display(),
        roots.join(", ")
    )
}

/// `Request::Restore`'s fields.
pub(super) struct RestoreRequest {
    pub name: String,
    pub backup: String,
    pub paths: Vec<PathBuf>,
    pub to: PathBuf,
    pub overwrite: bool,
    pub user: Option<String>,
}
