//! Running `ssh` and `rsync` with a deadline: their output read as it comes
//! (stderr echoed into the backup's log, each line marked with the host's
//! name), what is kept of it bounded, and the program stopped when the
//! deadline passes. They stay in our process group, so that the daemon's
//! stop of a script reaches them too.

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Lines of stderr kept for the caller to read (the rest is only echoed).
const KEPT_LINES: usize = 5000;
/// Bytes of stdout kept.
const KEPT_STDOUT: usize = 1 << 20;

/// What a program did.
#[derive(Debug, Default)]
pub struct Ran {
    /// `None`: stopped at the deadline.
    pub status: Option<ExitStatus>,
    pub stdout: String,
    /// Its stderr lines, at most [`KEPT_LINES`].
    pub stderr: Vec<String>,
    /// Lines saying a file vanished while rsync read it.
    pub vanished: u64,
    /// How long it ran.
    pub ran_for: Duration,
}

impl Ran {
    pub fn code(&self) -> Option<i32> {
        self.status.and_then(|s| s.code())
    }

    pub fn timed_out(&self) -> bool {
        self.status.is_none()
    }

    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    /// The last line of stderr worth showing.
    pub fn last_error(&self) -> Option<&str> {
        self.stderr.iter().rev().map(|l| l.trim()).find(|l| !l.is_empty())
    }
}

/// Runs `cmd` until it exits or `deadline` passes (then SIGTERM, and
/// SIGKILL 5 s later). `echo`: stderr lines are copied to ours, after
/// `[echo] `.
pub fn run(mut cmd: Command, deadline: Instant, echo: Option<&str>) -> Result<Ran> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {program}"))?;
    let stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    let prefix = echo.map(|e| format!("[{e}] "));
    let out_thread = std::thread::spawn(move || {
        let mut kept = Vec::new();
        let mut rest = std::io::sink();
        let mut r = stdout;
        let _ = (&mut r).take(KEPT_STDOUT as u64).read_to_end(&mut kept);
        let _ = std::io::copy(&mut r, &mut rest);
        String::from_utf8_lossy(&kept).into_owned()
    });
    let err_thread = std::thread::spawn(move || {
        let mut lines = Vec::new();
        let mut vanished = 0;
        let mut r = BufReader::new(stderr);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let line = String::from_utf8_lossy(&buf).trim_end().to_owned();
            if line.contains("file has vanished") {
                vanished += 1;
            }
            if let Some(p) = &prefix {
                eprintln!("{p}{}", crate::logging::printable(&line));
            }
            if lines.len() < KEPT_LINES {
                lines.push(line);
            }
        }
        (lines, vanished)
    });
    let started = Instant::now();
    let pid = Pid::from_raw(child.id() as i32);
    let mut status = None;
    let mut killed_at: Option<Instant> = None;
    loop {
        if let Some(st) = child.try_wait()? {
            if killed_at.is_none() {
                status = Some(st);
            }
            break;
        }
        let now = Instant::now();
        match killed_at {
            None if now >= deadline => {
                let _ = kill(pid, Signal::SIGTERM);
                killed_at = Some(now);
            }
            Some(t) if now >= t + Duration::from_secs(5) => {
                let _ = kill(pid, Signal::SIGKILL);
            }
            _ => {}
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let stdout = out_thread.join().unwrap_or_default();
    let (stderr, vanished) = err_thread.join().unwrap_or_default();
    Ok(Ran { status, stdout, stderr, vanished, ran_for: started.elapsed() })
}
