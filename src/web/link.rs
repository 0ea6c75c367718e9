//! The console's link to the daemon: a subscriber FIFO registered with it
//! (as any client's), read on a thread of its own. Every event is passed on
//! to the pages' live connections; when the daemon stops (its
//! `daemon_stopping`, or nobody reading the control FIFO any more) the
//! console says so, and when it is back the FIFO is registered again.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Result;
use tokio::sync::{broadcast, watch};

use crate::clients::control::client;
use crate::clients::control::Request;
use crate::clients::fifo::{self, Line, LineReader};
use crate::config::Config;

/// How often the link checks that the daemon is still there.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// What the pages' live connections receive.
#[derive(Debug, Clone, PartialEq)]
pub enum Live {
    /// A daemon event, as the JSON line it wrote.
    Event(String),
    /// The daemon came (true) or went (false).
    Daemon(bool),
}

/// The running link.
pub struct Link {
    pub events: broadcast::Sender<Live>,
    pub up: watch::Receiver<bool>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    config: Arc<Config>,
    path: PathBuf,
}

/// The subscriber FIFO of the console, in the daemon's run directory.
pub fn fifo_path(config: &Config) -> PathBuf {
    config.run_dir.join("web-events")
}

impl Link {
    pub fn start(config: Arc<Config>) -> Result<Link> {
        let (events, _) = broadcast::channel(256);
        let (up_tx, up) = watch::channel(false);
        let stop = Arc::new(AtomicBool::new(false));
        let path = fifo_path(&config);
        let thread = {
            let (config, events, stop, path) = (config.clone(), events.clone(), stop.clone(), path.clone());
            std::thread::Builder::new()
                .name("daemon-link".into())
                .spawn(move || follow(&config, &path, &events, &up_tx, &stop))?
        };
        Ok(Link { events, up, stop, thread: Some(thread), config, path })
    }

    pub fn daemon_up(&self) -> bool {
        *self.up.borrow()
    }
}

impl Drop for Link {
    /// Unregisters the FIFO and removes it.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if client::daemon_running(&self.config) {
            let _ = client::send(&self.config, &Request::Unregister { path: self.path.clone() });
        }
        let _ = fs::remove_file(&self.path);
    }
}

fn follow(
    config: &Config,
    path: &Path,
    events: &broadcast::Sender<Live>,
    up_tx: &watch::Sender<bool>,
    stop: &AtomicBool,
) {
    let set_up = |up: bool| {
        if up_tx.send_replace(up) != up {
            if up {
                log::info!("the daemon is running: following its events on {}", path.display());
            } else {
                log::warn!("the daemon is not running: the console waits for it");
            }
            let _ = events.send(Live::Daemon(up));
        }
    };
    let mut reader: Option<fs::File> = None;
    let mut lines = LineReader::default();
    let mut checked = Instant::now() - CHECK_EVERY;
    let mut registered = false;
    while !stop.load(Ordering::Relaxed) {
        if checked.elapsed() >= CHECK_EVERY {
            checked = Instant::now();
            if !client::daemon_running(config) {
                registered = false;
                set_up(false);
            } else if !registered {
                match register(config, path, &mut reader) {
                    Ok(()) => {
                        registered = true;
                        set_up(true);
                    }
                    Err(e) => log::warn!("cannot follow the daemon's events: {e:#}"),
                }
            }
        }
        let Some(r) = reader.as_mut() else {
            std::thread::sleep(Duration::from_millis(200));
            continue;
        };
        match fifo::wait_readable(r, Some(Duration::from_millis(250))) {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) => {
                log::warn!("cannot wait on {}: {e:#}", path.display());
                std::thread::sleep(Duration::from_millis(250));
                continue;
            }
        }
        let got = match lines.read_from(r) {
            Ok(got) => got.unwrap_or_default(),
            Err(e) => {
                log::warn!("cannot read {}: {e}", path.display());
                continue;
            }
        };
        for line in got {
            let Line::Complete(bytes) = line else { continue };
            let text = String::from_utf8_lossy(&bytes).into_owned();
            let stopping = serde_json::from_str::<serde_json::Value>(&text)
                .is_ok_and(|v| v.get("event").and_then(|e| e.as_str()) == Some("daemon_stopping"));
            let _ = events.send(Live::Event(text));
            if stopping {
                registered = false;
                set_up(false);
            }
        }
    }
}

/// Makes the FIFO (kept open for reading) and registers it: the daemon
/// answers with its disk table at once.
fn register(config: &Config, path: &Path, reader: &mut Option<fs::File>) -> Result<()> {
    let exists = fs::symlink_metadata(path).is_ok();
    if reader.is_none() || !exists {
        fifo::create(path, 0o600)?;
        *reader = Some(fifo::open_reader(path)?);
    }
    let reply = client::send(config, &Request::Register { path: path.to_owned() })?;
    if !reply.ok {
        anyhow::bail!("{}", reply.error.unwrap_or_default());
    }
    Ok(())
}
