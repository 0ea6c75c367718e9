//! The CLI's side of the control channel: make a reply FIFO, send one
//! request, wait for the answer, remove the FIFO (also on error).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use super::{Reply, Request};
use crate::clients::fifo::{self, Delivery};
use crate::config::{self, Config};

/// How long the CLI waits for the daemon's answer.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// The daemon is not there to answer.
#[derive(Debug, thiserror::Error)]
#[error("the tetras-back daemon is not running (no reader on {}); start it with `systemctl start tetras-back` or `tetras-back daemon`", .control.display())]
pub struct NotRunning {
    pub control: PathBuf,
}

/// Whether a daemon is reading the control FIFO of this configuration.
pub fn daemon_running(config: &Config) -> bool {
    fifo::open_writer(&config.control_path()).is_ok()
}

/// A reply FIFO that is removed when dropped.
struct ReplyFifo {
    path: PathBuf,
}

impl Drop for ReplyFifo {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// Sends `request` and returns the daemon's reply. A reply with `ok: false`
/// is returned as `Ok`: the caller prints it. A missing daemon is an error
/// that downcasts to [`NotRunning`].
pub fn send(config: &Config, request: &Request) -> Result<Reply> {
    send_in(&config.run_dir, request)
}

/// `send`, waiting up to `patience` for the answer (a restore answers when done).
pub fn send_waiting(config: &Config, request: &Request, patience: Duration) -> Result<Reply> {
    send_for(&config.run_dir, request, patience)
}

/// `send` to the daemon whose control FIFO is in `run_dir`.
pub fn send_in(run_dir: &Path, request: &Request) -> Result<Reply> {
    send_for(run_dir, request, REPLY_TIMEOUT)
}

fn send_for(run_dir: &Path, request: &Request, patience: Duration) -> Result<Reply> {
    let control = config::control_path(run_dir);
    let mut writer = match fifo::open_writer(&control) {
        Ok(w) => w,
        Err(Delivery::NoReader) => return Err(NotRunning { control }.into()),
        Err(Delivery::Gone(why)) => {
            if let Err(e) = fs::symlink_metadata(&control) {
                if e.kind() == io::ErrorKind::PermissionDenied {
                    bail!(
                        "cannot reach {}: permission denied (tetras-back commands must run as root)",
                        control.display()
                    );
                }
                return Err(NotRunning { control }.into());
            }
            bail!("cannot open the control FIFO: {why}");
        }
        Err(other) => bail!("cannot open the control FIFO {}: {other:?}", control.display()),
    };

    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let reply_path = config::replies_dir(run_dir).join(format!(
        "{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    fifo::create(&reply_path, 0o600)?;
    let guard = ReplyFifo { path: reply_path };
    let mut reader = fifo::open_reader(&guard.path)?;

    let mut line = serde_json::to_value(request)?;
    line.as_object_mut()
        .expect("a request serialises to an object")
        .insert("reply".into(), guard.path.to_string_lossy().into_owned().into());
    let line = serde_json::to_vec(&line)?;
    if line.len() >= fifo::MAX_LINE {
        bail!("the command is longer than {} bytes", fifo::MAX_LINE);
    }
    // The pipe can be momentarily full when many clients talk at once.
    let mut deadline = Instant::now() + REPLY_TIMEOUT;
    loop {
        match fifo::write_line(&mut writer, &line) {
            Delivery::Written => break,
            Delivery::Full if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Delivery::NoReader => return Err(NotRunning { control }.into()),
            other => bail!("cannot send the command to {}: {other:?}", control.display()),
        }
    }
    drop(writer);
    deadline = Instant::now() + patience;
    read_reply(&mut reader, &guard.path, deadline, patience)
}

fn read_reply(reader: &mut fs::File, path: &Path, deadline: Instant, patience: Duration) -> Result<Reply> {
    // A reply is as long as it needs: only the daemon writes here.
    let mut lines = fifo::LineReader::with_limit(fifo::MAX_REPLY);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || !fifo::wait_readable(reader, Some(left))? {
            bail!("the daemon did not answer within {}s (reply FIFO {})", patience.as_secs(), path.display());
        }
        let got = lines.read_from(reader).context("cannot read the daemon's reply")?;
        if let Some(first) = got.into_iter().flatten().next() {
            return match first {
                fifo::Line::Complete(bytes) => serde_json::from_slice(&bytes)
                    .map_err(|e| anyhow!("the daemon's reply is not valid: {e}")),
                fifo::Line::TooLong => bail!("the daemon's reply is longer than {} bytes", fifo::MAX_REPLY),
            };
        }
    }
}
