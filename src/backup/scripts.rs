//! Running the administrator's backup scripts: trust checks, environment,
//! process groups, timestamped logs, timeouts and cancellation.

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use wait_timeout::ChildExt;

/// How long a stopped script gets between SIGTERM and SIGKILL.
pub const KILL_GRACE: Duration = Duration::from_secs(5);

/// A backup's log file: one timestamped line per script output line or
/// daemon message, shared by the threads that read the scripts' pipes.
#[derive(Clone)]
pub struct BackupLog {
    pub path: PathBuf,
    file: Arc<Mutex<File>>,
}

impl BackupLog {
    /// `<dir>/<stem>.log`, or `<stem>_2.log`, ... when that name is taken
    /// (two backups of a disk within one second).
    pub fn free_path(dir: &Path, stem: &str) -> PathBuf {
        (1..)
            .map(|n| match n {
                1 => dir.join(format!("{stem}.log")),
                n => dir.join(format!("{stem}_{n}.log")),
            })
            .find(|p| fs::symlink_metadata(p).is_err())
            .expect("a free name")
    }

    pub fn create(path: PathBuf) -> Result<BackupLog> {
        if let Some(dir) = path.parent() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .with_context(|| format!("cannot create log directory {}", dir.display()))?;
        }
        // A log names every file that was backed up: root's only.
        let file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&path)
            .with_context(|| format!("cannot create log file {}", path.display()))?;
        Ok(BackupLog { path, file: Arc::new(Mutex::new(file)) })
    }

    /// Appends `text` as a line tagged with `source`. Control characters
    /// (a file name from a disk may hold terminal escapes) are written as
    /// escapes ([`printable`](crate::logging::printable)), so that a name
    /// cannot forge a line and `cat`ting a log cannot drive the terminal.
    pub fn line(&self, source: &str, text: &str) {
        let now = chrono::Local::now().format("%Y-%m-%d %H:%M:%S");
        let text = crate::logging::printable(text);
        let mut f = self.file.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = writeln!(f, "{now} [{source}] {text}") {
            log::warn!("cannot write to {}: {e}", self.path.display());
        }
    }

    /// A daemon message: to the backup's log and to the daemon's own log.
    pub fn info(&self, text: &str) {
        log::info!("{text}");
        self.line("tetras-back", text);
    }
}

/// Checks that `script` may be run as root: a regular file owned by root,
/// not writable by group or others, in a directory chain with the same
/// property (a root-owned sticky directory such as /tmp is accepted above
/// `scripts_dir`: others cannot rename root's entries in it).
pub fn check_trusted(scripts_dir: &Path, script: &Path) -> Result<()> {
    let meta = fs::symlink_metadata(script)
        .with_context(|| format!("script {}: cannot access it", script.display()))?;
    if !meta.file_type().is_file() {
        bail!("script {} is not a regular file (a symbolic link or a directory?); refused", script.display());
    }
    check_owner_mode(script, &meta, false)?;
    let mut dir = Some(scripts_dir);
    let mut first = true;
    while let Some(d) = dir {
        let meta = fs::symlink_metadata(d).with_context(|| format!("cannot inspect {}", d.display()))?;
        if !meta.is_dir() {
            bail!("{} is not a directory; script {} refused", d.display(), script.display());
        }
        check_owner_mode(d, &meta, !first).with_context(|| format!("script {} refused", script.display()))?;
        first = false;
        dir = d.parent();
    }
    Ok(())
}

fn check_owner_mode(path: &Path, meta: &fs::Metadata, sticky_ok: bool) -> Result<()> {
    if meta.uid() != 0 {
        bail!("{} is owned by uid {}, not root; refused", path.display(), meta.uid());
    }
    let mode = meta.mode();
    let writable = mode & 0o022 != 0;
    let sticky = mode & 0o1000 != 0;
    if writable && !(sticky_ok && sticky) {
        bail!("{} is writable by group or others (mode {:04o}); refused", path.display(), mode & 0o7777);
    }
    Ok(())
}

/// What a script run came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It exited with this code.
    Exited(i32),
    /// A signal ended it.
    Signalled(i32),
    /// It ran past its timeout and was stopped.
    TimedOut,
    /// The backup was cancelled (disk removed) and it was stopped.
    Cancelled,
}

impl Outcome {
    pub fn success(&self) -> bool {
        *self == Outcome::Exited(0)
    }

    /// The exit code as reported in events (`None` when there is none).
    pub fn code(&self) -> Option<i32> {
        match self {
            Outcome::Exited(c) => Some(*c),
            _ => None,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Outcome::Exited(0) => "succeeded".into(),
            Outcome::Exited(c) => format!("failed with exit code {c}"),
            Outcome::Signalled(s) => format!("was killed by signal {s}"),
            Outcome::TimedOut => "timed out and was stopped".into(),
            Outcome::Cancelled => "was stopped (backup cancelled)".into(),
        }
    }
}

/// One script to run.
pub struct Run<'a> {
    pub program: &'a Path,
    pub args: &'a [String],
    pub cwd: &'a Path,
    pub env: &'a [(String, String)],
    pub timeout: Duration,
    /// Tag for its log lines.
    pub tag: &'a str,
    /// What of its output is kept for the caller (an engine's answer).
    pub capture: Option<Capture>,
}

/// A child's output kept by [`Run::capture`], at most [`CAPTURE_MAX`]
/// bytes of each stream.
#[derive(Clone, Default)]
pub struct Capture {
    /// Its standard output, which then does not go to the log.
    pub stdout: Arc<Mutex<Vec<u8>>>,
    /// Its standard error, which still goes to the log too.
    pub stderr: Option<Arc<Mutex<Vec<u8>>>>,
}

impl Capture {
    /// Standard output and error, both kept.
    pub fn both() -> Capture {
        Capture { stderr: Some(Arc::default()), ..Capture::default() }
    }

    /// What was kept of `stream`, as text.
    pub fn text(stream: &Mutex<Vec<u8>>) -> String {
        String::from_utf8_lossy(&stream.lock().unwrap()).into_owned()
    }
}

/// The most of a stream that [`Capture`] keeps.
pub const CAPTURE_MAX: usize = 1 << 20;

fn keep(into: &Mutex<Vec<u8>>, bytes: &[u8]) {
    let mut out = into.lock().unwrap();
    let room = CAPTURE_MAX.saturating_sub(out.len());
    out.extend_from_slice(&bytes[..bytes.len().min(room)]);
}

/// Runs a script in its own process group, its output going line by line
/// into `log`; stops the whole group on timeout or when `cancel` is set.
pub fn run(r: &Run, log: &BackupLog, cancel: &AtomicBool) -> Result<Outcome> {
    let mut cmd = Command::new(r.program);
    cmd.args(r.args)
        .current_dir(r.cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // The daemon's systemd hand-shake is not the script's business.
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_PID")
        .env_remove("WATCHDOG_USEC")
        .envs(r.env.iter().map(|(k, v)| (k, v)))
        .process_group(0);
    let mut child = cmd.spawn().with_context(|| format!("cannot start {}", r.program.display()))?;
    let pgid = Pid::from_raw(child.id() as i32);
    let (out, err) = match &r.capture {
        Some(c) => (Some(c.stdout.clone()), c.stderr.clone()),
        None => (None, None),
    };
    let readers: Vec<_> = [
        (child.stdout.take().map(|s| Box::new(s) as Box<dyn Read + Send>), out, false),
        (child.stderr.take().map(|s| Box::new(s) as Box<dyn Read + Send>), err, true),
    ]
    .into_iter()
    .filter_map(|(pipe, capture, logged)| pipe.map(|p| (p, capture, logged)))
    .map(|(pipe, capture, logged)| {
        let log = log.clone();
        let tag = r.tag.to_owned();
        std::thread::spawn(move || {
            if let (Some(out), false) = (&capture, logged) {
                // Read to the end (the child never blocks on a full pipe), keep the first MiB.
                let mut buf = [0u8; 64 * 1024];
                let mut pipe = pipe;
                while let Ok(n @ 1..) = pipe.read(&mut buf) {
                    keep(out, &buf[..n]);
                }
                return;
            }
            let mut reader = BufReader::new(pipe);
            let mut buf = Vec::new();
            // A line longer than 64 KiB is logged in pieces, never held whole.
            while matches!((&mut reader).take(64 * 1024).read_until(b'\n', &mut buf), Ok(n) if n > 0) {
                if let Some(out) = &capture {
                    keep(out, &buf);
                }
                let line = String::from_utf8_lossy(&buf);
                log.line(&tag, line.trim_end_matches(['\n', '\r']));
                buf.clear();
            }
        })
    })
    .collect();

    let deadline = Instant::now() + r.timeout;
    // Short slices so that a cancel (disk removed) is seen quickly; this
    // only wakes while a script runs, never when the daemon is idle.
    let slice = Duration::from_millis(100);
    let outcome = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if let Some(status) = child.wait_timeout(left.min(slice)).context("cannot wait for the script")? {
            break match (status.code(), status.signal()) {
                (Some(c), _) => Outcome::Exited(c),
                (None, Some(s)) => Outcome::Signalled(s),
                _ => Outcome::Signalled(0),
            };
        }
        let stop = if cancel.load(Ordering::SeqCst) {
            Some(Outcome::Cancelled)
        } else if left.is_zero() {
            Some(Outcome::TimedOut)
        } else {
            None
        };
        if let Some(outcome) = stop {
            log.info(&format!("stopping {} (process group {pgid}): {}", r.tag, outcome.describe()));
            stop_group(pgid, &mut child);
            break outcome;
        }
    };
    // Whatever the script left in its group goes too: nothing of a backup
    // may outlive it and hold the disk busy.
    let _ = killpg(pgid, Signal::SIGKILL);
    for t in readers {
        let _ = t.join();
    }
    Ok(outcome)
}

/// SIGTERM to the group, SIGKILL after [`KILL_GRACE`].
fn stop_group(pgid: Pid, child: &mut std::process::Child) {
    let _ = killpg(pgid, Signal::SIGTERM);
    if matches!(child.wait_timeout(KILL_GRACE), Ok(Some(_))) {
        return;
    }
    let _ = killpg(pgid, Signal::SIGKILL);
    let _ = child.wait();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn script(dir: &Path, body: &str, mode: u32) -> PathBuf {
        let p = dir.join("s.sh");
        fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[test]
    fn trust_checks_name_the_file() {
        assert!(nix::unistd::geteuid().is_root(), "ownership checks need root: run `sudo make test`");
        let d = tempfile::tempdir().unwrap();
        let s = script(d.path(), "true", 0o755);
        check_trusted(d.path(), &s).unwrap();
        fs::set_permissions(&s, fs::Permissions::from_mode(0o757)).unwrap();
        let e = check_trusted(d.path(), &s).unwrap_err().to_string();
        assert!(e.contains("s.sh") && e.contains("writable by group or others"), "{e}");
        fs::set_permissions(&s, fs::Permissions::from_mode(0o755)).unwrap();
        fs::set_permissions(d.path(), fs::Permissions::from_mode(0o777)).unwrap();
        let e = format!("{:#}", check_trusted(d.path(), &s).unwrap_err());
        assert!(e.contains(&d.path().display().to_string()) && e.contains("writable"), "{e}");
        fs::set_permissions(d.path(), fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::chown(&s, Some(1000), None).unwrap();
        let e = check_trusted(d.path(), &s).unwrap_err().to_string();
        assert!(e.contains("uid 1000"), "{e}");
    }

    #[test]
    fn output_is_logged_and_exit_codes_and_timeouts_reported() {
        let d = tempfile::tempdir().unwrap();
        let log = BackupLog::create(d.path().join("b.log")).unwrap();
        let env = vec![("TETRAS_BACK_NAME".to_owned(), "office".to_owned())];
        let cancel = AtomicBool::new(false);
        let s = script(d.path(), "echo \"out $TETRAS_BACK_NAME $1\"; echo err >&2; exit 3", 0o755);
        let r = Run {
            program: &s,
            args: &["x".into()],
            cwd: d.path(),
            env: &env,
            timeout: Duration::from_secs(10),
            tag: "s.sh",
            capture: None,
        };
        assert_eq!(run(&r, &log, &cancel).unwrap(), Outcome::Exited(3));
        let text = fs::read_to_string(&log.path).unwrap();
        assert!(text.contains("[s.sh] out office x") && text.contains("[s.sh] err"), "{text}");

        let s = script(d.path(), "sleep 30 & sleep 30", 0o755);
        let r = Run { timeout: Duration::from_millis(300), program: &s, ..r };
        let started = Instant::now();
        assert_eq!(run(&r, &log, &cancel).unwrap(), Outcome::TimedOut);
        assert!(started.elapsed() < Duration::from_secs(5), "the whole group was stopped");
    }
}
