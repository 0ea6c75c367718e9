//! The integration-test harness: a temporary root with a config whose every
//! path points inside it, the real `tetras-back` binary, and guards that stop
//! what a test started (by pid) even when the test fails.
#![allow(dead_code)]

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_tetras-back");
pub const UUID: &str = "0b7c3f1e-5d2a-4c8e-9f10-2a3b4c5d6e7f";
pub const UUID2: &str = "6f1d2c3b-4a59-4e8d-8c7b-1a2b3c4d5e6f";

pub struct TestEnv {
    pub dir: tempfile::TempDir,
    /// Where the daemon writes its udev rule: inside the root, so that tests
    /// never touch udev's own directory, unless `with_udev_rule` says otherwise.
    udev_rule: Option<PathBuf>,
}

impl TestEnv {
    pub fn new() -> TestEnv {
        TestEnv::make(None)
    }

    /// An env whose udev rule goes to `rule` (for the test that asks udev itself).
    pub fn with_udev_rule(rule: PathBuf) -> TestEnv {
        TestEnv::make(Some(rule))
    }

    fn make(udev_rule: Option<PathBuf>) -> TestEnv {
        let dir = tempfile::Builder::new().prefix("tetras-test-").tempdir().unwrap();
        let env = TestEnv { dir, udev_rule };
        env.write_config("");
        env
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn config_path(&self) -> PathBuf {
        self.root().join("tetras-back.toml")
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.root().join(rel)
    }

    /// The paths every config of this env uses, followed by `extra`.
    pub fn config_text(&self, extra: &str) -> String {
        let r = self.root().display();
        let rule = self.udev_rule.clone().unwrap_or_else(|| self.path("udev/61-tetras-back.rules"));
        format!(
            "state_dir = \"{r}/state\"\nrun_dir = \"{r}/run\"\nlog_dir = \"{r}/log\"\n\
             mount_dir = \"{r}/mnt\"\nscripts_dir = \"{r}/scripts\"\nudev_rule = \"{}\"\n{extra}",
            rule.display()
        )
    }

    pub fn write_config(&self, extra: &str) {
        fs::write(self.config_path(), self.config_text(extra)).unwrap();
    }

    pub fn state_path(&self) -> PathBuf {
        self.path("state/state.json")
    }

    pub fn control_path(&self) -> PathBuf {
        self.path("run/control")
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.args(args).env("TETRAS_BACK_CONFIG", self.config_path()).env_remove("NOTIFY_SOCKET");
        c
    }

    /// Runs the CLI and returns its output.
    pub fn cli(&self, args: &[&str]) -> Run {
        let out = self.cmd(args).stdin(Stdio::null()).output().unwrap();
        Run::from(out)
    }

    /// Starts the daemon and waits until it answers `status`.
    pub fn start_daemon(&self) -> Daemon {
        self.start_daemon_with(&[])
    }

    /// Starts the daemon with extra environment variables (its scripts inherit them).
    pub fn start_daemon_with(&self, vars: &[(&str, &str)]) -> Daemon {
        let log = self.path("daemon.log");
        let err = fs::OpenOptions::new().create(true).append(true).open(&log).unwrap();
        let child = self
            .cmd(&["daemon", "-v"])
            .envs(vars.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .unwrap();
        let mut d = Daemon { child: Some(child), log };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if self.cli(&["status"]).code == 0 {
                return d;
            }
            if let Some(status) = d.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("daemon exited at start ({status}):\n{}", d.log_text());
            }
            assert!(Instant::now() < deadline, "daemon did not come up:\n{}", d.log_text());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs the daemon expecting it to refuse to start; returns its output.
    pub fn daemon_refuses(&self) -> Run {
        let mut child = self
            .cmd(&["daemon"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the daemon started although it should have refused");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Run::from(child.wait_with_output().unwrap())
    }
}

/// A CLI run's exit code and output.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Run {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl Run {
    #[track_caller]
    pub fn ok(self) -> Run {
        assert_eq!(self.code, 0, "command failed: {self:?}");
        self
    }

    /// Asserts a failure whose stderr mentions every one of `needles`.
    #[track_caller]
    pub fn fails_with(self, needles: &[&str]) -> Run {
        assert_ne!(self.code, 0, "command should have failed: {self:?}");
        for n in needles {
            assert!(self.stderr.contains(n), "stderr does not mention {n:?}: {self:?}");
        }
        self
    }
}

/// A running daemon, stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Daemon {
    child: Option<Child>,
    pub log: PathBuf,
}

impl Daemon {
    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    pub fn signal(&self, sig: i32) {
        assert_eq!(libc_kill(self.pid(), sig), 0);
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for the daemon to exit on its own; returns its exit code.
    pub fn wait_exit(mut self, timeout: Duration) -> i32 {
        let mut child = self.child.take().unwrap();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                return s.code().unwrap_or(-1);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("daemon did not exit within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the daemon's log contains `needle`.
    #[track_caller]
    pub fn wait_log(&self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.log_text().contains(needle) {
            assert!(Instant::now() < deadline, "log never said {needle:?}:\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            libc_kill(child.id() as i32, nix::libc::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while child.try_wait().ok().flatten().is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.wait();
        }
    }
}

fn libc_kill(pid: i32, sig: i32) -> i32 {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe { nix::libc::kill(pid, sig) }
}

/// Runs `make TARGET VARS... LAYOUT...` in the checkout; returns what it
/// said. It builds in `target/install`, not where the binary under test
/// (built with the test feature) is.
#[track_caller]
pub fn make(target: &str, vars: &[&str], layout: &[&str]) -> String {
    let out = Command::new("make")
        .arg("-C")
        .arg(env!("CARGO_MANIFEST_DIR"))
        .arg(target)
        .arg(concat!("CARGO_TARGET_DIR=", env!("CARGO_MANIFEST_DIR"), "/target/install"))
        .args(vars)
        .args(layout)
        .output()
        .expect("make");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "make {target} failed:\n{text}");
    text
}

/// Makes a FIFO at `path`.
pub fn mkfifo(path: &Path) {
    let st = Command::new("mkfifo").arg("-m").arg("600").arg(path).status().unwrap();
    assert!(st.success());
}

/// A FIFO opened for reading (read-write, so it never sees EOF), from which
/// complete JSON lines can be collected.
pub struct Subscriber {
    pub path: PathBuf,
    file: fs::File,
    buf: Vec<u8>,
}

impl Subscriber {
    pub fn new(path: PathBuf) -> Subscriber {
        use std::os::unix::fs::OpenOptionsExt;
        mkfifo(&path);
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(nix::libc::O_NONBLOCK)
            .open(&path)
            .unwrap();
        Subscriber { path, file, buf: Vec::new() }
    }

    /// Reads whatever events arrive during `wait`.
    pub fn during(&mut self, wait: Duration) -> Vec<serde_json::Value> {
        let end = Instant::now() + wait;
        let mut seen = Vec::new();
        while Instant::now() < end {
            let mut chunk = [0u8; 4096];
            match self.file.read(&mut chunk) {
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        while let Some(v) = self.next_line() {
            seen.push(v);
        }
        seen
    }

    /// The next complete event line in the buffer, parsed.
    fn next_line(&mut self) -> Option<serde_json::Value> {
        let i = self.buf.iter().position(|&b| b == b'\n')?;
        let line: Vec<u8> = self.buf.drain(..=i).collect();
        Some(
            serde_json::from_slice(&line[..line.len() - 1])
                .unwrap_or_else(|e| panic!("bad event line {:?}: {e}", String::from_utf8_lossy(&line))),
        )
    }

    /// Reads events until one named `event` arrives (or times out); returns
    /// every event read, in order, up to and including that one.
    #[track_caller]
    pub fn until(&mut self, event: &str) -> Vec<serde_json::Value> {
        self.until_match(event, |v| v["event"] == event, Duration::from_secs(30))
    }

    /// Like `until`, for an event about the filesystem `uuid` (other tests'
    /// disks come and go on the same machine).
    #[track_caller]
    pub fn until_about(&mut self, event: &str, uuid: &str) -> Vec<serde_json::Value> {
        self.until_match(event, |v| v["event"] == event && v["uuid"] == uuid, Duration::from_secs(30))
    }

    /// Like `until_about`, waiting at most `wait`.
    #[track_caller]
    pub fn until_about_within(&mut self, event: &str, uuid: &str, wait: Duration) -> Vec<serde_json::Value> {
        self.until_match(event, |v| v["event"] == event && v["uuid"] == uuid, wait)
    }

    /// Events until one of `events` about the filesystem `uuid` arrives.
    #[track_caller]
    pub fn until_one_of(&mut self, events: &[&str], uuid: &str, wait: Duration) -> Vec<serde_json::Value> {
        let what = events.join(" or ");
        self.until_match(&what, |v| v["uuid"] == uuid && events.iter().any(|e| v["event"] == *e), wait)
    }

    #[track_caller]
    /// Events until one that `done` accepts (`what` names it in the panic).
    fn until_match(
        &mut self,
        what: &str,
        done: impl Fn(&serde_json::Value) -> bool,
        wait: Duration,
    ) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + wait;
        let mut seen = Vec::new();
        loop {
            while let Some(v) = self.next_line() {
                let done = done(&v);
                seen.push(v);
                if done {
                    return seen;
                }
            }
            assert!(Instant::now() < deadline, "no {what:?} event; got {seen:#?}");
            let mut chunk = [0u8; 4096];
            match self.file.read(&mut chunk) {
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Err(e) => panic!("{e}"),
            }
        }
    }
}

/// The names of a list of events.
pub fn names(events: &[serde_json::Value]) -> Vec<String> {
    events.iter().map(|e| e["event"].as_str().unwrap().to_owned()).collect()
}

pub mod browser;
pub mod disk;
pub mod rig;
pub mod sdbox;
pub mod smtp;
pub mod sshd;
pub mod tree;
