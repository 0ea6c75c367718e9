//! Mail to the administrator: the report after each backup (with the log
//! attached), reminders for disks not backed up for too long, and the
//! `mail-test` message; sent through the local MTA's sendmail or SMTP.
//!
//! Composing is here; queueing and retrying is `outbox`, which runs on its
//! own thread so that a slow or absent mail server never holds a backup up.

pub mod outbox;

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use chrono::{DateTime, Local};
use lettre::address::Envelope;
use lettre::message::header::ContentType;
use lettre::message::{Attachment, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{Message, SendmailTransport, SmtpTransport, Transport as _};

use rust_i18n::t;

use crate::config::{self, MailWhen, SmtpTls, Transport};
use crate::engine::human;
use crate::lang::Language;
use crate::logging::printable;
use crate::store::report::{Report, Status};

/// A log larger than this is attached cut to its end (the end says how it finished).
const MAX_ATTACHMENT: u64 = 8 << 20;
/// Lines of the log quoted in the body.
const TAIL_LINES: usize = 20;
/// How long an SMTP conversation may take before the attempt counts as failed.
const SMTP_TIMEOUT: Duration = Duration::from_secs(30);

/// A formatted mail, ready for the outbox.
#[derive(Debug, Clone)]
pub struct Composed {
    pub subject: String,
    pub sender: String,
    pub recipients: Vec<String>,
    pub message: Vec<u8>,
}

/// Whether the report of a backup that ended with `status` is to be sent.
pub fn wanted(when: MailWhen, status: Status) -> bool {
    match when {
        MailWhen::Always => true,
        MailWhen::Failure => status != Status::Success,
        MailWhen::Never => false,
    }
}

/// What the report of one backup is about.
#[derive(Debug, Clone)]
pub struct BackupMail {
    pub host: String,
    pub disk: String,
    pub uuid: String,
    pub device: PathBuf,
    pub report: Report,
    /// When the disk is full at the rate its free space goes down (see
    /// [`trend`](crate::store::trend)), if it does.
    pub full_at: Option<DateTime<Local>>,
}

impl BackupMail {
    pub fn subject(&self, lang: Language) -> String {
        let locale = lang.code();
        let what = match self.report.status {
            Status::Success => t!("mail.what_success", locale = locale),
            Status::Failed => t!("mail.what_failed", locale = locale),
            Status::Removed => t!("mail.what_removed", locale = locale),
            Status::Damaged => t!("mail.what_damaged", locale = locale),
            Status::Warning => match self.report.totals.shrunk.first() {
                Some(s) => t!(
                    "mail.what_warning",
                    locale = locale,
                    source = printable(&s.source.display().to_string()),
                    before = s.files_before,
                    now = s.files_now
                ),
                None => t!("mail.what_success", locale = locale),
            },
            Status::Running | Status::Interrupted => t!("mail.what_interrupted", locale = locale),
            Status::Refused => {
                return t!("mail.subject_refused", locale = locale, host = self.host, disk = self.disk)
                    .into_owned()
            }
        };
        t!("mail.subject_backup", locale = locale, host = self.host, disk = self.disk, what = what)
            .into_owned()
    }

    /// The report's text. Every string that may come from the disk (the
    /// names of files, of dated folders, errors that quote them, the log's
    /// lines) goes through [`printable`]: a name cannot forge a line.
    pub fn body(&self, lang: Language, log_tail: &str) -> String {
        let locale = lang.code();
        let r = &self.report;
        let when = |t: DateTime<Local>| t.format("%Y-%m-%d %H:%M:%S %:z").to_string();
        let unknown = t!("mail.unknown", locale = locale);
        let size = |b: Option<u64>| b.map_or(unknown.to_string(), human);
        let mut rows: Vec<(Cow<str>, String)> = vec![
            (
                t!("mail.disk", locale = locale),
                t!(
                    "mail.disk_value",
                    locale = locale,
                    disk = self.disk,
                    uuid = self.uuid,
                    device = self.device.display()
                )
                .into_owned(),
            ),
            (t!("mail.started", locale = locale), when(r.started)),
            (t!("mail.finished", locale = locale), when(r.finished)),
            (t!("mail.duration", locale = locale), whole_seconds(r.duration)),
            (
                t!("mail.free", locale = locale),
                t!(
                    "mail.free_value",
                    locale = locale,
                    before = size(r.free_before),
                    after = size(r.free_after)
                )
                .into_owned(),
            ),
            (
                t!("mail.written", locale = locale),
                t!(
                    "mail.written_value",
                    locale = locale,
                    bytes = human(r.totals.bytes_written),
                    files = r.totals.files
                )
                .into_owned(),
            ),
        ];
        if let Some(full) = self.full_at {
            rows.push((t!("mail.full", locale = locale), full_words(full, lang)));
        }
        let mut more: Vec<String> = Vec::new();
        let pruned = if r.totals.pruned.is_empty() {
            t!("mail.pruned_nothing", locale = locale).into_owned()
        } else {
            more.extend(r.totals.pruned.iter().map(|p| printable(p).into_owned()));
            t!(
                "mail.pruned_value",
                locale = locale,
                count = r.totals.pruned.len(),
                freed = human(r.totals.freed)
            )
            .into_owned()
        };
        rows.push((t!("mail.pruned", locale = locale), pruned));
        // "Label:" and at least two spaces: the English labels line up at 13.
        let width = rows.iter().map(|(label, _)| label.chars().count()).max().unwrap_or(0) + 3;
        let indent = " ".repeat(width);
        let mut out = t!(
            "mail.heading",
            locale = locale,
            host = self.host,
            disk = self.disk,
            status = r.status.word(lang)
        )
        .into_owned();
        out.push_str("\n\n");
        for (label, value) in &rows {
            out.push_str(&format!("{:<width$}{}\n", format!("{label}:"), printable(value)));
        }
        for p in &more {
            out.push_str(&format!("{indent}{p}\n"));
        }
        if let Some(d) = &r.drill {
            let summary = d.summary_in(lang);
            out.push_str(&format!("{}: {}\n", t!("mail.drill", locale = locale), printable(&summary)));
            for p in &d.problems {
                out.push_str(&format!("{indent}{}\n", printable(p)));
            }
            let left = d.problem_count.saturating_sub(d.problems.len() as u64);
            if left > 0 {
                out.push_str(&format!("{indent}{}\n", t!("mail.and_more", locale = locale, count = left)));
            }
        }
        for s in &r.totals.shrunk {
            let label = format!("{}:", t!("mail.shrunk", locale = locale));
            out.push_str(&format!("{label:<width$}{}\n", printable(&s.to_string())));
        }
        if !r.totals.hosts.is_empty() {
            out.push_str(&format!("\n{}:\n", t!("mail.hosts", locale = locale)));
            for h in &r.totals.hosts {
                let (head, more) = crate::store::report::host_lines(h, lang);
                out.push_str(&format!("  {:<16} {}\n", printable(&h.name), printable(&head)));
                for m in more {
                    out.push_str(&format!("  {:<16} {}\n", "", printable(&m)));
                }
            }
        }
        out.push_str(&format!("\n{}:\n", t!("mail.scripts", locale = locale)));
        if r.scripts.is_empty() {
            out.push_str(&format!("  {}\n", t!("mail.none_ran", locale = locale)));
        }
        let exit = t!("mail.exit", locale = locale);
        for s in &r.scripts {
            let code = s.exit_code.map_or("-".to_owned(), |c| c.to_string());
            out.push_str(&format!(
                "  {:<28} {exit} {:<4} {:<10} {}\n",
                printable(&s.script),
                code,
                whole_seconds(Duration::from_secs_f64(s.duration_secs)),
                printable(&s.outcome)
            ));
        }
        if let Some(e) = &r.error {
            out.push_str(&format!("\n{}: {}\n", t!("mail.error", locale = locale), printable(e)));
        }
        out.push_str(&format!(
            "\n{}\n{log_tail}\n",
            t!("mail.log_tail", locale = locale, log = r.log.display())
        ));
        let end = match (r.safe_to_remove, r.status) {
            (true, _) => match r.power_off.as_ref().and_then(|p| p.reason()) {
                None => t!("mail.safe_powered_off", locale = locale),
                Some(why) => t!("mail.safe_left_powered", locale = locale, why = why),
            },
            (false, Status::Removed) => t!("mail.removed_incomplete", locale = locale),
            (false, _) => t!("mail.not_safe", locale = locale),
        };
        out.push_str(&format!("\n{end}\n"));
        out
    }

    /// The report with the log attached, in the configured language.
    pub fn compose(&self, cfg: &config::Mail) -> Result<Composed> {
        let (log, cut) = read_log(&self.report.log);
        let tail = tail(&log, TAIL_LINES);
        let mut body = self.body(cfg.language, &tail);
        if cut {
            let note = t!("mail.log_cut", locale = cfg.language.code(), size = human(MAX_ATTACHMENT));
            body.push_str(&format!("\n{note}\n"));
        }
        let name =
            self.report.log.file_name().map_or("backup.log".into(), |n| n.to_string_lossy().into_owned());
        let parts = MultiPart::mixed()
            .singlepart(SinglePart::plain(body))
            .singlepart(Attachment::new(name).body(log, ContentType::TEXT_PLAIN));
        build(cfg, self.subject(cfg.language), |b| b.multipart(parts))
    }
}

/// A reminder that `disk` has not been backed up for too long.
pub fn reminder(
    cfg: &config::Mail,
    host: &str,
    disk: &str,
    uuid: &str,
    last_success: Option<DateTime<Local>>,
    known_since: DateTime<Local>,
) -> Result<Composed> {
    let locale = cfg.language.code();
    let day = |t: DateTime<Local>| t.format("%Y-%m-%d %H:%M").to_string();
    let (subject, since) = match last_success {
        Some(t) => (
            t!("mail.reminder_subject_since", locale = locale, host = host, disk = disk, date = day(t)),
            t!("mail.reminder_since", locale = locale, disk = disk, uuid = uuid, date = day(t)),
        ),
        None => (
            t!("mail.reminder_subject_never", locale = locale, host = host, disk = disk),
            t!("mail.reminder_never", locale = locale, disk = disk, uuid = uuid, date = day(known_since)),
        ),
    };
    let rest =
        t!("mail.reminder_body", locale = locale, host = host, disk = disk, days = cfg.remind_after_days);
    let body = format!("{since}\n\n{rest}");
    build(cfg, subject.into_owned(), |b| b.header(ContentType::TEXT_PLAIN).body(body))
}

/// `around 2027-03-14 (in 102 days)`.
pub fn full_words(full: DateTime<Local>, lang: Language) -> String {
    let days = (full - Local::now()).num_days().max(0);
    t!("mail.full_value", locale = lang.code(), date = full.format("%Y-%m-%d"), days = days).into_owned()
}

/// A warning that `disk` is full within a few weeks at the rate it fills up.
pub fn full_warning(cfg: &config::Mail, host: &str, disk: &str, full: DateTime<Local>) -> Result<Composed> {
    let locale = cfg.language.code();
    let days = (full - Local::now()).num_days().max(0);
    let subject = t!("mail.full_subject", locale = locale, host = host, disk = disk, days = days);
    let body = t!(
        "mail.full_body",
        locale = locale,
        disk = disk,
        when = full_words(full, cfg.language),
        host = host
    );
    build(cfg, subject.into_owned(), |b| b.header(ContentType::TEXT_PLAIN).body(body.into_owned()))
}

/// The `mail-test` message.
pub fn test_message(cfg: &config::Mail, host: &str) -> Result<Composed> {
    let locale = cfg.language.code();
    let body = t!("mail.test_body", locale = locale, host = host, transport = cfg.transport).into_owned();
    let subject = t!("mail.test_subject", locale = locale, host = host).into_owned();
    build(cfg, subject, |b| b.header(ContentType::TEXT_PLAIN).body(body))
}

fn build(
    cfg: &config::Mail,
    subject: String,
    content: impl FnOnce(lettre::message::MessageBuilder) -> Result<Message, lettre::error::Error>,
) -> Result<Composed> {
    // One line, whatever a name in it holds.
    let subject = printable(&subject).into_owned();
    let mut b = Message::builder().from(cfg.from.clone()).subject(subject.clone()).date_now();
    for to in &cfg.to {
        b = b.to(to.clone());
    }
    let msg = content(b).context("cannot compose the mail")?;
    let env = msg.envelope();
    Ok(Composed {
        subject,
        sender: env.from().map(|a| a.to_string()).unwrap_or_default(),
        recipients: env.to().iter().map(|a| a.to_string()).collect(),
        message: msg.formatted(),
    })
}

/// Hands a formatted mail to the configured transport. The error carries the
/// transport's own words (the server's reply, sendmail's stderr).
pub fn deliver(cfg: &config::Mail, sender: &str, recipients: &[String], message: &[u8]) -> Result<()> {
    let from = sender.parse().with_context(|| format!("bad sender {sender:?}"))?;
    let to = recipients
        .iter()
        .map(|r| r.parse().with_context(|| format!("bad recipient {r:?}")))
        .collect::<Result<Vec<_>>>()?;
    let envelope = Envelope::new(Some(from), to)?;
    match &cfg.transport {
        Transport::Sendmail { path } => {
            SendmailTransport::new_with_command(path)
                .send_raw(&envelope, message)
                .with_context(|| format!("sendmail ({}) failed", path.display()))?;
        }
        Transport::Smtp(s) => {
            let builder = match s.tls {
                SmtpTls::None => SmtpTransport::builder_dangerous(&s.host),
                SmtpTls::Starttls => SmtpTransport::starttls_relay(&s.host)?,
                SmtpTls::Tls => SmtpTransport::relay(&s.host)?,
            };
            let mut builder = builder.port(s.port).timeout(Some(SMTP_TIMEOUT));
            if let Some(login) = &s.login {
                builder = builder
                    .credentials(Credentials::new(login.user.clone(), password(&login.password_file)?));
            }
            builder
                .build()
                .send_raw(&envelope, message)
                .with_context(|| format!("{} refused the mail", cfg.transport))?;
        }
    }
    Ok(())
}

/// An error's chain of causes on one line, without the repetitions of
/// lettre, whose errors print their source themselves.
pub fn describe(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain().map(|c| c.to_string()) {
        if out.contains(&cause) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&cause);
    }
    out
}

/// Reads the SMTP password, refusing a file others can read.
fn password(file: &Path) -> Result<String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(file).with_context(|| format!("cannot read {}", file.display()))?;
    if meta.mode() & 0o077 != 0 {
        bail!(
            "{} can be read by group or others (mode {:04o}); `chmod 600` it, it holds the SMTP password",
            file.display(),
            meta.mode() & 0o7777
        );
    }
    let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    Ok(text.trim_end_matches(['\n', '\r']).to_owned())
}

/// The log file's content (its end, when too large) and whether it was cut.
fn read_log(path: &Path) -> (Vec<u8>, bool) {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else {
        return (format!("(the log {} could not be read)\n", path.display()).into_bytes(), false);
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let cut = len > MAX_ATTACHMENT;
    if cut {
        let _ = f.seek(SeekFrom::Start(len - MAX_ATTACHMENT));
    }
    let mut buf = Vec::new();
    let _ = f.take(MAX_ATTACHMENT).read_to_end(&mut buf);
    (buf, cut)
}

/// The last `n` lines of `log`, indented, their control characters escaped
/// (scripts print what they find on the disk).
fn tail(log: &[u8], n: usize) -> String {
    let text = String::from_utf8_lossy(log);
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(n);
    lines[from..].iter().map(|l| format!("  {}\n", printable(l))).collect()
}

fn whole_seconds(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::report::PowerOff;

    #[test]
    fn causes_are_said_once() {
        let e = anyhow::anyhow!("Connection refused")
            .context("Connection error: Connection refused")
            .context("smtp x");
        assert_eq!(describe(&e), "smtp x: Connection error: Connection refused");
    }

    /// The report of a backup that failed to mount its disk.
    fn failed_to_mount() -> BackupMail {
        let now = Local::now();
        BackupMail {
            host: "host1".into(),
            disk: "office".into(),
            uuid: "u".into(),
            device: "/dev/sdb1".into(),
            report: Report {
                status: Status::Failed,
                started: now,
                finished: now,
                duration: Duration::from_secs(3),
                log: "/var/log/x.log".into(),
                safe_to_remove: false,
                power_off: None,
                error: Some("cannot mount /dev/sdb1 (ext4): EUCLEAN".into()),
                scripts: Vec::new(),
                free_before: None,
                free_after: None,
                disk_size: None,
                totals: Default::default(),
                identity: None,
                drill: None,
                folders: Vec::new(),
            },
            full_at: None,
        }
    }

    #[test]
    fn the_date_the_disk_is_full_is_said_when_it_fills_up() {
        let m = failed_to_mount();
        assert!(!m.body(Language::En, "").contains("Full:"), "not filling up: nothing said");
        let soon = BackupMail {
            full_at: Some(Local::now() + chrono::Duration::days(20) + chrono::Duration::hours(1)),
            ..m
        };
        let date = (Local::now() + chrono::Duration::days(20)).format("%Y-%m-%d").to_string();
        let body = soon.body(Language::En, "");
        assert!(
            body.contains("Full:") && body.contains(&format!("around {date} at this rate (in 20 days)")),
            "{body}"
        );
        assert!(soon.body(Language::Fr, "").contains(&format!("vers le {date} à ce rythme (dans 20 jours)")));
        let cfg = config::Config::parse("", std::path::Path::new("/etc/t.toml")).unwrap().mail;
        let w = full_warning(&cfg, "host1", "office", soon.full_at.unwrap()).unwrap();
        assert!(w.subject.ends_with("disk office is full in about 20 days"), "{}", w.subject);
    }

    #[test]
    fn a_failure_not_caused_by_a_script_is_explained() {
        let m = failed_to_mount();
        assert_eq!(m.subject(Language::En), "[tetras-back] host1: backup on 'office' FAILED");
        let body = m.body(Language::En, "  last line\n");
        for needle in
            ["Error: cannot mount /dev/sdb1 (ext4): EUCLEAN", "none ran", "unknown before", "NOT safe"]
        {
            assert!(body.contains(needle), "{needle:?} missing from:\n{body}");
        }
        let safe =
            |power_off| Report { safe_to_remove: true, power_off: Some(power_off), ..m.report.clone() };
        let powered = BackupMail { report: safe(PowerOff::Done), ..m.clone() };
        assert!(powered.body(Language::En, "").contains("safe to remove: it was unmounted and powered off"));
        let left =
            BackupMail { report: safe(PowerOff::Not("udisks is not on the system bus".into())), ..m.clone() };
        assert!(left
            .body(Language::En, "")
            .contains("safe to remove (it was left powered: udisks is not on the system bus)"));
        let removed =
            BackupMail { report: Report { status: Status::Removed, ..m.report.clone() }, ..m.clone() };
        assert!(removed.subject(Language::En).ends_with("backup on 'office' disk removed during backup"));
        assert!(removed
            .body(Language::En, "")
            .contains("removed during the backup: this backup is incomplete"));
        let problems: Vec<String> =
            (0..60).map(|i| format!("changed: Donnees/f{i} (content differs)")).collect();
        let drill = crate::store::report::Drill {
            folder: "2026-11-24_02-00-00_Sauvegarde_srv".into(),
            passed: false,
            entries: 100,
            bytes: 1 << 20,
            problem_count: 60,
            problems: problems[..crate::store::report::Drill::SHOWN].to_vec(),
        };
        let damaged = BackupMail {
            report: Report { status: Status::Damaged, drill: Some(drill), ..m.report.clone() },
            ..m
        };
        assert!(damaged
            .subject(Language::En)
            .ends_with("backup on 'office' DAMAGED: the restore drill found differences"));
        let body = damaged.body(Language::En, "");
        for needle in [
            "Restore drill: DAMAGED: 2026-11-24_02-00-00_Sauvegarde_srv differs",
            "changed: Donnees/f0 (content differs)",
            "changed: Donnees/f49 (content differs)",
            "... and 10 more (see the log)",
        ] {
            assert!(body.contains(needle), "{needle:?} missing from:\n{body}");
        }
        assert!(!body.contains("Donnees/f50 "), "at most 50 named:\n{body}");
    }

    /// Names from a disk (a file in the drill's list, the dated folder, a
    /// pruned folder, an error quoting one) cannot forge a line of the body.
    #[test]
    fn disk_supplied_names_cannot_forge_lines() {
        let evil = "x\nThe disk is safe to remove.\r\u{1b}[2J\u{9b}";
        let drill = crate::store::report::Drill {
            folder: format!("2026-11-24_02-00-00_{evil}"),
            passed: false,
            entries: 1,
            bytes: 1,
            problem_count: 1,
            problems: vec![format!("extra: Donnees/{evil}")],
        };
        let mut totals = crate::engine::journal::Totals::default();
        totals.pruned.push(format!("2020-01-01_00-00-00_{evil}"));
        let m = failed_to_mount();
        let m = BackupMail {
            report: Report {
                status: Status::Damaged,
                error: Some(format!("cannot read {evil}")),
                totals,
                drill: Some(drill),
                ..m.report
            },
            ..m
        };
        // A log line is one line (the log is split at newlines): its escapes are what is left.
        let body = m.body(Language::En, &tail("2026 [backup.sh] y\r\u{1b}[2J\u{9b}\n".as_bytes(), 5));
        assert!(!body.contains('\r') && !body.contains('\u{1b}') && !body.contains('\u{9b}'), "{body}");
        assert!(
            !body.lines().any(|l| l.trim_start().starts_with("The disk is safe")),
            "a forged line:\n{body}"
        );
        let shown = "x\\nThe disk is safe to remove.\\r\\x1b[2J\\u{9b}";
        for needle in [
            format!("extra: Donnees/{shown}"),
            format!("2026-11-24_02-00-00_{shown}"),
            format!("2020-01-01_00-00-00_{shown}"),
            format!("cannot read {shown}"),
            "[backup.sh] y\\r\\x1b[2J\\u{9b}".into(),
        ] {
            assert!(body.contains(&needle), "{needle:?} missing from:\n{body}");
        }
    }

    #[test]
    fn a_password_file_others_can_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pw");
        std::fs::write(&f, "s3cret\n").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = password(&f).unwrap_err().to_string();
        assert!(e.contains(&f.display().to_string()) && e.contains("0644") && e.contains("chmod 600"), "{e}");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(password(&f).unwrap(), "s3cret");
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail(b"a\nb\nc\n", 2), "  b\n  c\n");
        assert_eq!(tail(b"", 2), "");
        assert_eq!(tail(b"x\x1b[2Jy\rz\n", 2), "  x\\x1b[2Jy\\rz\n");
    }
}
