//! The worker: one backup of one disk, from mount to unmount. It runs on a thread
//! and reports its progress to the daemon's loop, which turns it into events
//! and state; the loop cancels it when the disk is pulled out.
//!
//! ```text
//!  inhibit sleep/shutdown ─ check fs type ─ not mounted elsewhere ─ mount + verify
//!    ─ pre hook ─ scripts, in order ─ syncfs ─ unmount ─ power off ─ post hook ─ report
//!                               │ cancelled (disk removed)
//!                               └─ stop the scripts' group ─ detach ─ report "removed"
//! ```
//!
//! The logind inhibitor is held from the start to the report, whatever the
//! outcome (it is a file descriptor: dropped, it is released).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use chrono::{DateTime, Local};

use super::scripts::{self, BackupLog, Outcome};
use crate::bus::Bus;
use crate::config::Config;
use crate::disk::identity;
use crate::disk::mount;
use crate::engine::{fsx, journal, progress};
use crate::fault;
use crate::store::report::{Drill, Job, PowerOff, Report, ScriptReport, Status};

/// How the daemon's loop stops a running backup.
#[derive(Debug, Default)]
pub struct Cancel {
    /// Stop the scripts now.
    pub stop: AtomicBool,
    /// ... because the disk is gone (otherwise: the daemon is shutting down).
    pub disk_removed: AtomicBool,
}

/// What the worker tells the daemon's loop.
#[derive(Debug)]
pub enum Progress {
    Started {
        log: PathBuf,
        started: DateTime<Local>,
    },
    ScriptStarted {
        script: String,
    },
    /// What the backup does between the scripts' steps: `drill` (the
    /// restore drill began), `finishing` (sync and unmount).
    Step(&'static str),
    ScriptFinished(ScriptReport),
    Finished(Box<Report>),
}

/// Runs `job`; every step is reported through `progress`, and the last
/// report is always `Finished`: a panic in the backup is caught, its mount
/// released on the way out (see [`mount::Mounted`]), and reported as an
/// internal error, so that the daemon goes on with the next disk.
pub fn run(job: Job, config: Config, bus: Bus, cancel: Arc<Cancel>, progress: impl Fn(Progress)) {
    let at = Local::now();
    let log =
        BackupLog::free_path(&config.log_dir, &format!("{}_{}", at.format("%Y-%m-%d_%H-%M-%S"), job.name));
    let begun = Begun { at, clock: Instant::now(), log };
    let finished = AtomicBool::new(false);
    let report = |p: Progress| {
        finished.fetch_or(matches!(p, Progress::Finished(_)), Ordering::SeqCst);
        progress(p)
    };
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        backup(&job, &config, &bus, &cancel, &begun, &report)
    }));
    if let Err(panic) = outcome {
        let why = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic".into());
        log::error!("the backup of {} stopped on an internal error: {why}", job.name);
        if !finished.load(Ordering::SeqCst) {
            // Its mount was released while unwinding; whether everything
            // reached the disk is not known, so it is not said to be safe.
            progress(Progress::Finished(Box::new(begun.failed(false, format!("internal error: {why}")))));
        }
    }
}

/// When a backup began and where its log is: what every report of it says.
struct Begun {
    at: DateTime<Local>,
    clock: Instant,
    log: PathBuf,
}

impl Begun {
    /// The report of a backup that failed before it could say anything else.
    fn failed(&self, safe_to_remove: bool, error: String) -> Report {
        Report {
            status: Status::Failed,
            started: self.at,
            finished: Local::now(),
            duration: self.clock.elapsed(),
            log: self.log.clone(),
            safe_to_remove,
            power_off: None,
            error: Some(error),
            scripts: Vec::new(),
            free_before: None,
            free_after: None,
            disk_size: None,
            totals: journal::Totals::default(),
            identity: None,
            drill: None,
            folders: Vec::new(),
        }
    }
}

fn backup(
    job: &Job,
    config: &Config,
    bus: &Bus,
    cancel: &Cancel,
    begun: &Begun,
    progress: &impl Fn(Progress),
) {
    let (started, clock, log_path) = (begun.at, begun.clock, begun.log.as_path());
    let _inhibitor = bus.inhibit(&format!("backing up this server onto disk {} ({})", job.name, job.uuid));
    let log = match BackupLog::create(log_path.to_owned()) {
        Ok(l) => l,
        Err(e) => {
            log::error!("{e:#}");
            progress(Progress::Finished(Box::new(
                begun.failed(mount::is_unmounted(job.devnum), format!("{e:#}")),
            )));
            return;
        }
    };
    progress(Progress::Started { log: log_path.to_owned(), started });
    log.info(&format!("backup of {} ({}) on {} started", job.name, job.uuid, job.device.display()));
    let journal = journal_path(config, &job.uuid);
    let _ = std::fs::remove_file(&journal);
    let _ = std::fs::remove_file(progress_path(config, &job.uuid));
    let mut b = Backup {
        job,
        config,
        log: &log,
        cancel,
        journal: &journal,
        scripts: Vec::new(),
        free_before: None,
        free_after: None,
        disk_size: None,
        identity: None,
        drill: None,
    };
    let (status, error, safe_to_remove) = b.run(progress);
    let power_off = safe_to_remove.then(|| {
        let p = if config.power_off {
            bus.power_off(&job.device)
        } else {
            PowerOff::Not("power_off = false in the configuration".into())
        };
        match p.reason() {
            None => log.info(&format!("the drive of {} was powered off", job.device.display())),
            Some(why) => log.info(&format!("the drive was left powered: {why}")),
        }
        p
    });
    let totals = journal::totals(&journal);
    let _ = std::fs::remove_file(&journal);
    let _ = std::fs::remove_file(progress_path(config, &job.uuid));
    for s in &totals.shrunk {
        log.line("tetras-back", &format!("WARNING: a source shrank: {s}"));
    }
    let status =
        if status == Status::Success && !totals.shrunk.is_empty() { Status::Warning } else { status };
    let folders = written_folders(&config.mount_dir.join(&job.uuid), &totals.written);
    if let Some(e) = &error {
        log.line("tetras-back", &format!("ERROR: {e}"));
        log::error!("backup of {}: {e}", job.name);
    }
    b.post_hook(status);
    let duration = clock.elapsed();
    log.info(&format!(
        "backup of {} finished: {} in {}{}",
        job.name,
        status.as_str(),
        humantime::format_duration(Duration::from_secs(duration.as_secs())),
        if safe_to_remove { "; the disk is safe to remove" } else { "" }
    ));
    progress(Progress::Finished(Box::new(Report {
        status,
        started,
        finished: Local::now(),
        duration,
        log: log_path.to_owned(),
        safe_to_remove,
        power_off,
        error,
        scripts: b.scripts,
        free_before: b.free_before,
        free_after: b.free_after,
        disk_size: b.disk_size,
        totals,
        identity: b.identity,
        drill: b.drill,
        folders,
    })));
}

/// The journal the engines of a backup of the disk `uuid` append what they
/// did to (see [`journal`]).
pub fn journal_path(config: &Config, uuid: &str) -> PathBuf {
    config.run_dir.join(format!("journal-{uuid}.jsonl"))
}

/// The file the engine at work in a backup of the disk `uuid` keeps its
/// progress in (see [`progress`](crate::engine::progress)).
pub fn progress_path(config: &Config, uuid: &str) -> PathBuf {
    config.run_dir.join(format!("progress-{uuid}.json"))
}

/// The dated folders at the top of the disk mounted at `mount` that hold
/// what the engines wrote (`written`), by name, each once.
fn written_folders(mount: &Path, written: &[PathBuf]) -> Vec<String> {
    let mut out: Vec<String> = written
        .iter()
        .filter_map(|p| p.strip_prefix(mount).ok()?.components().next())
        .filter_map(|c| c.as_os_str().to_str())
        .map(|n| n.strip_suffix(crate::engine::PARTIAL).unwrap_or(n).to_owned())
        .filter(|n| crate::engine::dated_name(n.as_bytes()).is_some())
        .collect();
    out.sort();
    out.dedup();
    out
}

struct Backup<'a> {
    job: &'a Job,
    config: &'a Config,
    log: &'a BackupLog,
    cancel: &'a Cancel,
    journal: &'a Path,
    scripts: Vec<ScriptReport>,
    free_before: Option<u64>,
    free_after: Option<u64>,
    disk_size: Option<u64>,
    /// The identity written on the disk by this backup.
    identity: Option<String>,
    /// The restore drill, when it was due and ran.
    drill: Option<Drill>,
}

impl Backup<'_> {
    /// Returns the status, the error that is not a script's, and whether the
    /// disk was left unmounted.
    fn run(&mut self, progress: &impl Fn(Progress)) -> (Status, Option<String>, bool) {
        let target = self.config.mount_dir.join(&self.job.uuid);
        let mounted = match self.mount(&target) {
            Ok(m) => m,
            Err(e) => return (Status::Failed, Some(format!("{e:#}")), mount::is_unmounted(self.job.devnum)),
        };
        fault::point("backup::after_mount");
        if let Some(expected) = &self.job.identity {
            if let Err(why) = identity::check(&target, expected) {
                let refused = identity::refusal(self.job, &why);
                let safe = matches!(mounted.unmount(15), Ok(mount::Unmounted::Clean));
                return (Status::Refused, Some(refused), safe);
            }
            self.log.info("the disk proved its identity");
            if let Err(e) = mounted.remount_writable() {
                return (
                    Status::Failed,
                    Some(format!("{e:#}")),
                    matches!(mounted.unmount(15), Ok(mount::Unmounted::Clean)),
                );
            }
        }
        (self.free_before, self.disk_size) = free_space(&target).unzip();
        let mut failed = false;
        if let Err(e) = self.pre_hook(&target) {
            self.log.line("tetras-back", &format!("ERROR: {e:#}"));
            failed = true;
        } else {
            failed |= self.scripts(&target, progress);
        }
        // The restore drill, once the scripts succeeded; a disk pulled out
        // during it is caught below like one pulled out during a script.
        let stopped = || self.cancel.stop.load(Ordering::SeqCst);
        if !failed && !stopped() && self.job.drill {
            progress(Progress::Step("drill"));
            self.drill = self.drill(&target);
            progress(Progress::Step("finishing"));
        }
        let damaged = self.drill.as_ref().is_some_and(|d| !d.passed);

        if self.cancel.disk_removed.load(Ordering::SeqCst) {
            self.log.info("the disk was removed during the backup; detaching its mount");
            if let Err(e) = mounted.detach() {
                self.log.line("tetras-back", &format!("ERROR: {e:#}"));
            }
            return (Status::Removed, None, false);
        }
        if stopped() {
            self.log.line("tetras-back", "ERROR: the daemon is stopping: backup interrupted");
            failed = true;
        }
        // Its first successful backup (or one after `save --adopt`) gives the disk its identity.
        if !failed && self.job.identity.is_none() {
            match identity::write(&target) {
                Ok(hash) => {
                    self.log.info("wrote the disk's identity (.tetras-back/disk-id)");
                    self.identity = Some(hash);
                }
                Err(e) => self.log.line("tetras-back", &format!("WARNING: {e:#}")),
            }
        }
        if let Err(e) = mount::sync(&target) {
            self.log.line("tetras-back", &format!("ERROR: {e:#}"));
            failed = true;
        }
        self.free_after = free_space(&target).map(|(free, _)| free);
        fault::point("backup::before_unmount");
        let safe = match mounted.unmount(15) {
            Ok(mount::Unmounted::Clean) => true,
            Ok(mount::Unmounted::Detached) => {
                self.log.info("the disk stayed busy; it was detached and may still be written to");
                false
            }
            Err(e) => return (Status::Failed, Some(format!("{e:#}")), false),
        };
        let status = match (failed, damaged) {
            (true, _) => Status::Failed,
            (false, true) => Status::Damaged,
            (false, false) => Status::Success,
        };
        (status, None, safe)
    }

    /// The restore drill, in a child process (see [`drill`](super::drill)).
    fn drill(&self, target: &Path) -> Option<Drill> {
        self.log.info("restore drill: reading the newest backup back and checking it");
        let timeout = self.config.verify_timeout;
        let Some(drill) = super::drill::in_child(target, timeout, self.log, &self.cancel.stop) else {
            self.log.info("restore drill: no complete backup folder to verify, or the drill was stopped");
            return None;
        };
        for p in &drill.problems {
            self.log.line("tetras-back", &format!("DAMAGED: {p}"));
        }
        self.log.info(&format!("restore drill {}", drill.summary()));
        Some(drill)
    }

    fn mount(&self, target: &Path) -> Result<mount::Mounted> {
        let job = self.job;
        let mounted = mount_known(job, self.config, job.identity.is_some())?;
        self.log.info(&format!("mounted {} ({}) at {}", job.device.display(), job.fstype, target.display()));
        Ok(mounted)
    }

    fn env(&self, target: &Path) -> Vec<(String, String)> {
        let hostname = hostname();
        let bin = std::env::current_exe().map(|p| p.display().to_string()).unwrap_or_default();
        [
            ("TETRAS_BACK_MOUNT", target.display().to_string()),
            ("TETRAS_BACK_UUID", self.job.uuid.clone()),
            ("TETRAS_BACK_NAME", self.job.name.clone()),
            ("TETRAS_BACK_DEVICE", self.job.device.display().to_string()),
            ("TETRAS_BACK_FSTYPE", self.job.fstype.clone()),
            ("TETRAS_BACK_HOSTNAME", hostname),
            ("TETRAS_BACK_LOG", self.log.path.display().to_string()),
            // The newest folder the history says this server wrote: prune keeps it.
            ("TETRAS_BACK_KEEP", self.job.last_written.clone().unwrap_or_default()),
            (
                "TETRAS_BACK_SHRINK_WARNING",
                self.config.shrink_warning.map_or("off".into(), |s| format!("{}%", s * 100.0)),
            ),
            ("TETRAS_BACK_BIN", bin),
            (journal::ENV, self.journal.display().to_string()),
            (progress::ENV, progress_path(self.config, &self.job.uuid).display().to_string()),
        ]
        .into_iter()
        .chain(
            // The daemon's configuration, for the engines that read it (`pull`).
            self.config.source.as_ref().map(|p| ("TETRAS_BACK_CONFIG", p.display().to_string())),
        )
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    /// Runs the enabled scripts in order; returns whether any failed.
    fn scripts(&mut self, target: &Path, progress: &impl Fn(Progress)) -> bool {
        let env = self.env(target);
        let mut failed = false;
        for s in self.config.scripts.iter().filter(|s| s.enabled) {
            if self.cancel.stop.load(Ordering::SeqCst) {
                break;
            }
            progress(Progress::ScriptStarted { script: s.name.clone() });
            let started = Instant::now();
            let mut args = s.args.clone();
            args.push(self.job.device.display().to_string());
            let program = self.config.scripts_dir.join(&s.name);
            self.log.info(&format!("running {} {}", program.display(), args.join(" ")));
            let run = scripts::Run {
                program: &program,
                args: &args,
                cwd: target,
                env: &env,
                timeout: s.timeout,
                tag: &s.name,
                capture: None,
            };
            fault::point("backup::before_script");
            let outcome = scripts::check_trusted(&self.config.scripts_dir, &program)
                .and_then(|_| scripts::run(&run, self.log, &self.cancel.stop));
            fault::point("backup::after_script");
            let (exit_code, text) = match &outcome {
                Ok(o) => (o.code(), o.describe()),
                Err(e) => (None, format!("{e:#}")),
            };
            let ok = matches!(outcome, Ok(ref o) if o.success());
            if ok {
                self.log.info(&format!("{} {text}", s.name));
            } else {
                self.log.line("tetras-back", &format!("ERROR: {} {text}", s.name));
                log::warn!("backup of {}: {} {text}", self.job.name, s.name);
            }
            let report = ScriptReport {
                script: s.name.clone(),
                exit_code,
                outcome: text,
                duration_secs: started.elapsed().as_secs_f64(),
            };
            self.scripts.push(report.clone());
            progress(Progress::ScriptFinished(report));
            if !ok {
                failed = true;
                if s.stop_on_failure {
                    self.log
                        .info(&format!("{} has stop_on_failure set: skipping the scripts after it", s.name));
                    break;
                }
            }
        }
        failed
    }

    fn pre_hook(&self, target: &Path) -> Result<()> {
        let Some(name) = &self.config.hooks.pre else { return Ok(()) };
        let args = [self.job.fstype.clone(), self.job.name.clone(), target.display().to_string()];
        let outcome = self.hook(name, &args, target, &self.cancel.stop)?;
        if !outcome.success() {
            bail!("pre hook {name} {}: backup aborted", outcome.describe());
        }
        Ok(())
    }

    fn post_hook(&self, status: Status) {
        let Some(name) = &self.config.hooks.post else { return };
        let args = [self.job.name.clone(), status.as_str().to_owned(), self.log.path.display().to_string()];
        match self.hook(name, &args, Path::new("/"), &AtomicBool::new(false)) {
            Ok(o) if o.success() => {}
            Ok(o) => self.log.line("tetras-back", &format!("WARNING: post hook {name} {}", o.describe())),
            Err(e) => self.log.line("tetras-back", &format!("WARNING: post hook {name}: {e:#}")),
        }
    }

    fn hook(&self, name: &str, args: &[String], cwd: &Path, cancel: &AtomicBool) -> Result<Outcome> {
        let program = self.config.scripts_dir.join(name);
        scripts::check_trusted(&self.config.scripts_dir, &program)?;
        let env = self.env(&self.config.mount_dir.join(&self.job.uuid));
        let run = scripts::Run {
            program: &program,
            args,
            cwd,
            env: &env,
            timeout: self.config.hooks.timeout,
            tag: name,
            capture: None,
        };
        scripts::run(&run, self.log, cancel)
    }
}

/// Mounts the known disk of `job` at `<mount_dir>/<uuid>` (see
/// [`mount::mount_disk`]), if its filesystem type is allowed and it is not
/// mounted elsewhere already; read-only when asked.
pub fn mount_known(job: &Job, config: &Config, read_only: bool) -> Result<mount::Mounted> {
    if job.fstype == crate::disk::devices::LUKS {
        bail!(
            "{} is a LUKS-encrypted volume: tetras-back does not open LUKS volumes (that needs \
             device-mapper); not mounted",
            job.device.display()
        );
    }
    if !config.filesystems.iter().any(|f| f == &job.fstype) {
        bail!(
            "{} has a {} filesystem, which is not in `filesystems` ({}); not mounted",
            job.device.display(),
            job.fstype,
            config.filesystems.join(", ")
        );
    }
    let elsewhere = mount::mounted_at(job.devnum)?;
    if let Some(at) = elsewhere.first() {
        bail!(
            "{} is already mounted at {} (a desktop automounter?); unmount it and plug it again, \
             or run `tetras-back backup {}`",
            job.device.display(),
            at.display(),
            job.name
        );
    }
    mount::mount_disk(&job.device, &job.fstype, &config.mount_dir.join(&job.uuid), read_only)
}

/// This machine's name, for the scripts and the mail reports.
pub fn hostname() -> String {
    nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "localhost".into())
}

/// Free bytes on the mounted disk and its size, for the report.
fn free_space(mount_point: &Path) -> Option<(u64, u64)> {
    let dir = std::fs::File::open(mount_point).ok()?;
    fsx::free_space(&dir).ok()
}
