//! Reminders: a known disk with no successful backup for
//! `mail.remind_after_days` days gets one mail a day, so that a backup that
//! silently stopped happening (the disk left in a drawer, a script that
//! always fails) does not go unnoticed.

use std::time::Duration;

use chrono::Local;

use super::Daemon;
use crate::config::MailWhen;
use crate::notify::mail::{self, outbox::Work};

/// How often the known disks are looked at.
pub const EVERY: Duration = Duration::from_secs(3600);

impl Daemon {
    pub(super) fn remind_if_due(&mut self) {
        if !self.reminders.due() {
            return;
        }
        let days = self.config.mail.remind_after_days;
        if days == 0 || self.config.mail.when == MailWhen::Never {
            return;
        }
        let Some(h) = &self.history else { return };
        let now = Local::now();
        let overdue = chrono::Duration::days(days.into());
        let host = crate::backup::hostname();
        for d in &self.state.disks {
            let last_success = match h.summary(&d.uuid) {
                Ok(s) => s.last_success,
                Err(e) => {
                    log::error!("history: {e:#}");
                    continue;
                }
            };
            if now - last_success.unwrap_or(d.added) < overdue || self.disks.pipeline.is_connected(&d.uuid) {
                continue;
            }
            let reminded = h.last_reminder(&d.uuid).ok().flatten();
            if reminded.is_some_and(|t| now - t < chrono::Duration::hours(23)) {
                continue;
            }
            match mail::reminder(&self.config.mail, &host, &d.name, &d.uuid, last_success, d.added) {
                Ok(m) => {
                    log::warn!("{}", m.subject);
                    self.mailer.send(Work::Mail(m));
                    if let Err(e) = h.reminder_sent(&d.uuid, now) {
                        log::error!("history: {e:#}");
                    }
                }
                Err(e) => log::error!("cannot compose the reminder about {}: {e:#}", d.name),
            }
        }
    }
}
