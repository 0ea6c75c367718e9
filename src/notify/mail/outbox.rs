//! The mailer thread: every mail goes into the outbox (a table of
//! `history.sqlite`) before it is sent, so that one that cannot be sent now
//! survives a restart and is tried again later: after `retry_after`, then
//! twice as long each time (at most an hour apart), until `max_attempts`,
//! when it is marked abandoned (kept, never deleted).
//!
//! The daemon hands it work and goes on; it reports each failure back,
//! which the daemon turns into a `mail_failed` event.

use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Result;
use chrono::{DateTime, Local};

use super::{BackupMail, Composed};
use crate::config;
use crate::store::history::History;

/// The longest wait between two attempts, and between two looks at the outbox.
const MAX_WAIT: Duration = Duration::from_secs(3600);

/// Work for the mailer.
pub enum Work {
    /// The report of a finished backup (sent or not according to `mail.when`).
    Backup(Box<BackupMail>),
    /// A composed mail (reminders).
    Mail(Composed),
    /// The configuration was reloaded.
    Config(config::Mail),
}

/// A mail that could not be sent.
#[derive(Debug, Clone)]
pub struct Failure {
    pub subject: String,
    pub recipients: Vec<String>,
    pub error: String,
    pub attempts: u32,
    /// When it is tried again; `None`: abandoned.
    pub retry_at: Option<DateTime<Local>>,
}

pub struct Mailer {
    tx: Option<Sender<Work>>,
    thread: Option<JoinHandle<()>>,
}

impl Mailer {
    /// Starts the thread; `failed` is called on it for every failed attempt.
    pub fn start(
        db: PathBuf,
        cfg: config::Mail,
        failed: impl Fn(Failure) + Send + 'static,
    ) -> Result<Mailer> {
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("mailer".into())
            .spawn(move || Worker { db, cfg, history: None, failed: Box::new(failed) }.run(rx))?;
        Ok(Mailer { tx: Some(tx), thread: Some(thread) })
    }

    pub fn send(&self, work: Work) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(work);
        }
    }
}

impl Drop for Mailer {
    /// Lets the thread finish the mail it is sending (what is left waits in the outbox).
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Worker {
    db: PathBuf,
    cfg: config::Mail,
    history: Option<History>,
    failed: Box<dyn Fn(Failure) + Send>,
}

impl Worker {
    fn run(mut self, rx: Receiver<Work>) {
        // Opened now rather than at the first mail: the daemon's descriptors
        // are then the same before and after its first backups.
        self.history();
        loop {
            self.send_due();
            let wait = self.next_wait();
            match rx.recv_timeout(wait) {
                Ok(work) => self.take(work),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            // Take everything already waiting before sending.
            while let Ok(work) = rx.try_recv() {
                self.take(work);
            }
        }
    }

    /// The outbox, opened on first use (and again after an error).
    fn history(&mut self) -> Option<&History> {
        if self.history.is_none() {
            match History::open(&self.db) {
                Ok(h) => self.history = Some(h),
                Err(e) => log::error!("mail outbox: {e:#}"),
            }
        }
        self.history.as_ref()
    }

    fn take(&mut self, work: Work) {
        let composed = match work {
            Work::Config(cfg) => {
                self.cfg = cfg;
                return;
            }
            Work::Mail(m) => Ok(m),
            Work::Backup(b) => {
                if !super::wanted(self.cfg.when, b.report.status) {
                    log::debug!("mail.when = {:?}: no report for this backup", self.cfg.when);
                    return;
                }
                b.compose(&self.cfg)
            }
        };
        let m = match composed {
            Ok(m) => m,
            Err(e) => {
                log::error!("cannot compose a mail: {e:#}");
                return;
            }
        };
        match self.history().map(|h| h.enqueue_mail(&m.subject, &m.sender, &m.recipients, &m.message)) {
            // Queued: `send_due` sends it next.
            Some(Ok(_)) => return,
            Some(Err(e)) => {
                log::error!("cannot put a mail in the outbox: {e:#}");
                self.history = None;
            }
            None => {}
        }
        // No outbox: one attempt now, and the failure said.
        if let Err(e) = super::deliver(&self.cfg, &m.sender, &m.recipients, &m.message) {
            self.report(Failure {
                subject: m.subject,
                recipients: m.recipients,
                error: format!("{} (not kept: the outbox cannot be written)", super::describe(&e)),
                attempts: 1,
                retry_at: None,
            });
        }
    }

    fn send_due(&mut self) {
        let Some(h) = self.history() else { return };
        let due = match h.due_mails(Local::now()) {
            Ok(d) => d,
            Err(e) => {
                log::error!("mail outbox: {e:#}");
                return;
            }
        };
        for q in due {
            let result = super::deliver(&self.cfg, &q.sender, &q.recipients, &q.message);
            let Some(h) = self.history.as_ref() else { return };
            let attempts = q.attempts + 1;
            let recorded = match &result {
                Ok(()) => {
                    log::info!(
                        "mail {:?} sent to {} (attempt {attempts})",
                        q.subject,
                        q.recipients.join(", ")
                    );
                    h.mail_sent(q.id)
                }
                Err(e) => {
                    let retry_at = (attempts < self.cfg.max_attempts)
                        .then(|| Local::now() + backoff(self.cfg.retry_after, attempts));
                    let error = super::describe(e);
                    let recorded = h.mail_failed(q.id, &error, retry_at);
                    self.report(Failure {
                        subject: q.subject,
                        recipients: q.recipients,
                        error,
                        attempts,
                        retry_at,
                    });
                    recorded
                }
            };
            if let Err(e) = recorded {
                log::error!("mail outbox: {e:#}");
            }
        }
    }

    fn report(&self, f: Failure) {
        match f.retry_at {
            Some(t) => log::warn!(
                "mail {:?} to {} not sent (attempt {}): {}; next attempt at {}",
                f.subject,
                f.recipients.join(", "),
                f.attempts,
                f.error,
                t.format("%H:%M:%S")
            ),
            None => log::error!(
                "mail {:?} to {} not sent after {} attempts, abandoned (kept in the outbox): {}",
                f.subject,
                f.recipients.join(", "),
                f.attempts,
                f.error
            ),
        }
        (self.failed)(f);
    }

    /// How long to sleep before the next due mail.
    fn next_wait(&mut self) -> Duration {
        let next = self.history().and_then(|h| h.next_mail_due().ok().flatten());
        match next {
            Some(t) => (t - Local::now()).to_std().unwrap_or(Duration::ZERO).min(MAX_WAIT),
            None => MAX_WAIT,
        }
    }
}

/// The wait after the `attempts`-th failure: `first`, doubled each time, at most an hour.
fn backoff(first: Duration, attempts: u32) -> chrono::Duration {
    let d = first.saturating_mul(1 << attempts.saturating_sub(1).min(16)).min(MAX_WAIT);
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::hours(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_an_hour() {
        let m = Duration::from_secs(300);
        assert_eq!(backoff(m, 1).num_seconds(), 300);
        assert_eq!(backoff(m, 2).num_seconds(), 600);
        assert_eq!(backoff(m, 4).num_seconds(), 2400);
        assert_eq!(backoff(m, 5).num_seconds(), 3600);
        assert_eq!(backoff(m, 40).num_seconds(), 3600);
    }
}
