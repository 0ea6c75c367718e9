//! The words the backup worker, the history, the mail reports and the
//! events share: which disk is backed up ([`Job`]), how a backup ended
//! ([`Status`], [`Report`], [`ScriptReport`]), what became of its drive
//! ([`PowerOff`]). A leaf: it imports nothing of the daemon's.

use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Local};
use serde::{Deserialize, Serialize};

use crate::engine::journal;
use crate::lang::Language;

/// A known disk to back up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub uuid: String,
    pub name: String,
    pub device: PathBuf,
    pub devnum: u64,
    pub fstype: String,
    /// The identity the disk must prove (see `state::Disk::identity`);
    /// `None`: it gets one at this backup, if it succeeds.
    pub identity: Option<String>,
    /// The restore drill is due: verify the newest backup after the scripts.
    pub drill: bool,
    /// The newest dated folder a backup of this disk wrote and finished (the
    /// history's word, not a name on the disk): prune never deletes it.
    pub last_written: Option<String>,
}

/// Where a backup is, or how it ended: in the history, the state file,
/// the events and the mails alike.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Started, not finished (a row of the history).
    #[default]
    Running,
    Success,
    Failed,
    /// The disk was pulled out during the backup.
    Removed,
    /// The daemon stopped (or was killed) during the backup: found
    /// `running` at the next start.
    Interrupted,
    /// The disk carried the known UUID but not the known disk's identity:
    /// nothing ran, nothing was written.
    Refused,
    /// The scripts succeeded but the restore drill found the newest backup
    /// different from what was recorded when it was written.
    Damaged,
    /// It succeeded, but a source was much smaller than the last time (a
    /// `/home` that did not mount): counted as a success, said loudly.
    Warning,
}

impl Status {
    pub const ALL: [Status; 8] = [
        Status::Running,
        Status::Success,
        Status::Failed,
        Status::Removed,
        Status::Interrupted,
        Status::Refused,
        Status::Damaged,
        Status::Warning,
    ];

    /// The status in words, in `lang`: the catalogue's `status.<as_str>`.
    pub fn word(self, lang: crate::lang::Language) -> std::borrow::Cow<'static, str> {
        rust_i18n::t!(format!("status.{}", self.as_str()), locale = lang.code())
    }

    /// A backup that holds what it should (for reminders and the schedule).
    pub fn succeeded(self) -> bool {
        matches!(self, Status::Success | Status::Warning)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Running => "running",
            Status::Success => "success",
            Status::Failed => "failed",
            Status::Removed => "removed",
            Status::Interrupted => "interrupted",
            Status::Refused => "refused",
            Status::Damaged => "damaged",
            Status::Warning => "warning",
        }
    }
}

impl std::str::FromStr for Status {
    type Err = String;

    fn from_str(s: &str) -> Result<Status, String> {
        Status::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| format!("unknown backup status {s:?}"))
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One script's part in a backup.
#[derive(Debug, Clone, Serialize)]
pub struct ScriptReport {
    pub script: String,
    pub exit_code: Option<i32>,
    pub outcome: String,
    pub duration_secs: f64,
}

/// The end of a backup.
#[derive(Debug, Clone)]
pub struct Report {
    pub status: Status,
    pub started: DateTime<Local>,
    pub finished: DateTime<Local>,
    pub duration: Duration,
    pub log: PathBuf,
    /// The disk was cleanly unmounted: it can be pulled out.
    pub safe_to_remove: bool,
    /// Whether its drive was then powered off (`None`: not tried, as the
    /// disk was not cleanly unmounted).
    pub power_off: Option<PowerOff>,
    /// Why it failed, when something other than a script did.
    pub error: Option<String>,
    /// Each script that ran, in order.
    pub scripts: Vec<ScriptReport>,
    /// Free bytes on the disk after it was mounted, and before it was unmounted.
    pub free_before: Option<u64>,
    pub free_after: Option<u64>,
    /// The size of the disk's filesystem.
    pub disk_size: Option<u64>,
    /// What the engines wrote and pruned (see `engine::journal`).
    pub totals: journal::Totals,
    /// The identity this backup wrote on the disk (its first success).
    pub identity: Option<String>,
    /// The restore drill, when it ran.
    pub drill: Option<Drill>,
    /// The dated folders at the top of the disk that its engines wrote.
    pub folders: Vec<String>,
}

/// The restore drill: the newest backup on the disk read again and checked
/// against what was recorded when it was written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Drill {
    /// The dated folder checked.
    pub folder: String,
    pub passed: bool,
    /// Entries checked (snapshot entries, archive members).
    pub entries: u64,
    pub bytes: u64,
    /// What differs, at most [`Drill::SHOWN`] lines ("changed: path (why)").
    pub problems: Vec<String>,
    /// How many differences there were in all.
    pub problem_count: u64,
}

impl Drill {
    pub const SHOWN: usize = 50;

    /// One line for the report, the history and the console, in `lang`.
    pub fn summary_in(&self, lang: crate::lang::Language) -> String {
        use rust_i18n::t;
        let locale = lang.code();
        if self.passed {
            t!("mail.drill_passed", locale = locale, folder = self.folder, entries = self.entries)
                .into_owned()
        } else {
            t!("mail.drill_damaged", locale = locale, folder = self.folder, count = self.problem_count)
                .into_owned()
        }
    }

    /// The same in English, for the command line and the log.
    pub fn summary(&self) -> String {
        self.summary_in(crate::lang::Language::En)
    }
}

/// One host of a backup in words, in `lang`: how its pull went (the
/// report, the console), then what vanished and what could not be read.
pub fn host_lines(h: &journal::HostPull, lang: crate::lang::Language) -> (String, Vec<String>) {
    use rust_i18n::t;
    let locale = lang.code();
    let secs = humantime::format_duration(Duration::from_secs(h.seconds.round() as u64)).to_string();
    let (files, bytes, new) =
        (h.files.to_string(), crate::engine::human(h.bytes), crate::engine::human(h.bytes_written));
    let head = match h.outcome {
        journal::Pulled::Done => {
            t!("mail.host_done", locale = locale, files = files, bytes = bytes, new = new, secs = secs)
        }
        journal::Pulled::Partial => {
            t!("mail.host_partial", locale = locale, files = files, bytes = bytes, new = new, secs = secs)
        }
        journal::Pulled::Failed => {
            t!("mail.host_failed", locale = locale, why = h.error.as_deref().unwrap_or("?"))
        }
    };
    let mut more = Vec::new();
    if h.vanished > 0 {
        more.push(t!("mail.host_vanished", locale = locale, count = h.vanished).into_owned());
    }
    for u in &h.unreadable {
        more.push(t!("mail.host_unreadable", locale = locale, what = u).into_owned());
    }
    (head.into_owned(), more)
}

/// What became of the drive after the unmount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PowerOff {
    Done,
    /// Left powered, and why.
    Not(String),
}

impl PowerOff {
    pub fn done(&self) -> bool {
        *self == PowerOff::Done
    }

    /// Why the drive was left powered, when it was.
    pub fn reason(&self) -> Option<&str> {
        match self {
            PowerOff::Done => None,
            PowerOff::Not(why) => Some(why),
        }
    }
}

/// Where a running backup stands: what `backup_progress` says, and `status`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProgressNow {
    /// The engine at work (`snapshot`, `archive`, `pull`, `prune`,
    /// `verify`, `restore`), `drill` for the restore drill, or `script`
    /// when the script does something of its own (a database dump).
    pub phase: String,
    /// Regular files (and their bytes) the snapshots, archives and pulls of
    /// this backup have gone through, linked ones included. They never
    /// go down.
    pub files_done: u64,
    pub bytes_done: u64,
    /// What they will be at the end, from the scripts' estimates or the
    /// previous snapshot (`null`: not known).
    pub files_expected: Option<u64>,
    pub bytes_expected: Option<u64>,
    /// 0 to 100 (`null` when nothing is expected).
    pub percent: Option<f64>,
    /// Seconds left, from the progress and this disk's previous backups
    /// with the same scripts (`null`: no basis).
    pub eta_secs: Option<u64>,
}

impl ProgressNow {
    /// `45% (23,104 of 51,230 files), about 3 min left`; what is not
    /// known is left out.
    pub fn describe(&self, lang: Language) -> String {
        let files = self.files(lang);
        let mut text = match self.percent {
            Some(p) => format!("{p:.0}% ({files})"),
            None => files,
        };
        if let Some(left) = self.left(lang) {
            text.push_str(", ");
            text.push_str(&left);
        }
        text
    }

    /// `23,104 of 51,230 files`, or `23,104 files` when the total is not known.
    pub fn files(&self, lang: Language) -> String {
        use rust_i18n::t;
        let (l, done) = (lang.code(), grouped(self.files_done, lang));
        match self.files_expected {
            Some(of) => {
                t!("progress.files_of", locale = l, done = done, total = grouped(of, lang)).into_owned()
            }
            None => t!("progress.files", locale = l, done = done).into_owned(),
        }
    }

    /// `about 3 min left`, when there is a basis for it.
    pub fn left(&self, lang: Language) -> Option<String> {
        use rust_i18n::t;
        let (l, secs) = (lang.code(), self.eta_secs?);
        Some(
            match secs {
                0..=89 => t!("progress.left_secs", locale = l, n = secs),
                90..=5399 => t!("progress.left_min", locale = l, n = (secs + 30) / 60),
                _ => {
                    let minutes = (secs + 30) / 60;
                    t!("progress.left_hours", locale = l, h = minutes / 60, m = minutes % 60)
                }
            }
            .into_owned(),
        )
    }
}

/// `51230` as `51,230` (`51 230` in French, with a narrow no-break space).
pub fn grouped(n: u64, lang: Language) -> String {
    let sep = match lang {
        Language::En => ',',
        Language::Fr => '\u{202f}',
    };
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3 * 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(sep);
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{grouped, ProgressNow, Status};
    use crate::lang::Language;

    /// Every status has its words in both languages (a missing key would
    /// come back as the key itself).
    #[test]
    fn every_status_is_said_in_both_languages() {
        for s in Status::ALL {
            for lang in [Language::En, Language::Fr] {
                assert_ne!(s.word(lang), format!("status.{s}"), "{s} in {lang:?}");
            }
        }
        assert_eq!(Status::Success.word(Language::En), "Succeeded");
        assert_eq!(Status::Damaged.word(Language::Fr), "Endommagée");
    }

    #[test]
    fn progress_reads_as_people_say_it() {
        let mut p = ProgressNow {
            phase: "snapshot".into(),
            files_done: 23_104,
            bytes_done: 0,
            files_expected: Some(51_230),
            bytes_expected: Some(1),
            percent: Some(45.1),
            eta_secs: Some(170),
        };
        assert_eq!(p.describe(Language::En), "45% (23,104 of 51,230 files), about 3 min left");
        assert_eq!(
            p.describe(Language::Fr),
            "45% (23\u{202f}104 fichiers sur 51\u{202f}230), encore 3 min environ"
        );
        p.eta_secs = Some(42);
        assert_eq!(p.left(Language::En).as_deref(), Some("about 42 s left"));
        p.eta_secs = Some(2 * 3600 + 600);
        assert_eq!(p.left(Language::En).as_deref(), Some("about 2 h 10 min left"));
        p.eta_secs = Some(2 * 3600 + 3590);
        assert_eq!(p.left(Language::En).as_deref(), Some("about 3 h 0 min left"));
        (p.percent, p.files_expected, p.eta_secs) = (None, None, None);
        assert_eq!(p.describe(Language::En), "23,104 files");
        assert_eq!(
            [0, 999, 1000, 1_234_567].map(|n| grouped(n, Language::En)),
            ["0", "999", "1,000", "1,234,567"]
        );
    }
}
