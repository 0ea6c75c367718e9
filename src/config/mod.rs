//! The administrator's configuration: `/etc/tetras-back/tetras-back.toml`.
//!
//! May import: `engine` (sizes, shares), `lang`.
//!
//! Loading happens in two stages, as in zincati: serde reads the file into
//! `Raw*` structs that reject unknown keys, then `validate` turns them into a
//! [`Config`] the rest of the program trusts (absolute paths, parsed
//! durations, known enum values). Every error names the file and the key.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Local, NaiveTime};
use lettre::message::Mailbox;
use serde::Deserialize;

use crate::lang::Language;

mod hosts;
pub use hosts::{Host, HostSide};

/// Where the configuration lives unless `--config` or `TETRAS_BACK_CONFIG` say otherwise.
pub const DEFAULT_PATH: &str = "/etc/tetras-back/tetras-back.toml";

/// A validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file it came from (`None`: built-in defaults, no file present).
    pub source: Option<PathBuf>,
    pub state_dir: PathBuf,
    pub run_dir: PathBuf,
    pub log_dir: PathBuf,
    pub mount_dir: PathBuf,
    pub scripts_dir: PathBuf,
    pub filesystems: Vec<String>,
    /// Listen to udev for plug events (false: only `plug`/`unplug` commands).
    pub udev_events: bool,
    /// After a clean unmount, ask udisks to power the drive off.
    pub power_off: bool,
    pub scripts: Vec<Script>,
    pub hooks: Hooks,
    pub mail: Mail,
    /// Prometheus text file rewritten after each backup (`None`: not written).
    pub metrics_file: Option<PathBuf>,
    /// Backing up again a disk that stays plugged in.
    pub schedule: Schedule,
    /// Backup logs older than this are deleted (the newest 50 stay).
    pub keep_logs: Duration,
    /// The udev rule keeping desktop automounters off the known disks,
    /// regenerated when a disk is saved or forgotten (`None`: not written).
    pub udev_rule: Option<PathBuf>,
    /// An opened disk (for restore) is closed after this long unused.
    pub open_timeout: Duration,
    /// The newest backup is verified after every this many backups of a
    /// disk (0: never).
    pub verify_every: u32,
    /// A restore drill still running after this long is stopped and counts
    /// as failed (something on the disk may be blocking it).
    pub verify_timeout: Duration,
    /// A snapshot source that lost more than this share (0 to 1) of its files
    /// or bytes since the last backup makes the backup a `warning` (`None`: off).
    pub shrink_warning: Option<f64>,
    /// The language of the mail reports and of the web console.
    pub language: Language,
    /// `[web]`: the web console (`tetras-back web`).
    pub web: Web,
    /// `[[hosts]]`: the other machines pulled over SSH (`tetras-back pull`).
    pub hosts: Vec<Host>,
}

/// `[web]`: the web console, its own process (`tetras-back web`).
#[derive(Debug, Clone, PartialEq)]
pub struct Web {
    pub listen: SocketAddr,
    /// `name:bcrypt-hash` lines, as `htpasswd -B` writes them.
    pub users_file: PathBuf,
    /// HTTPS (PEM files); required when `listen` is not a loopback address.
    pub tls: Option<WebTls>,
    /// A session not used for this long is logged out.
    pub session_timeout: Duration,
    /// The console's language (default: the top-level `language`).
    pub language: Language,
    /// The console users who may save and forget disks, browse, download
    /// and restore; every other user is an operator.
    pub admins: Vec<String>,
    /// The only folders a restore asked from the console may write into
    /// (default `<state_dir>/restored`).
    pub restore_to: Vec<PathBuf>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct WebTls {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// `[schedule]`: when a known disk that stays plugged in is backed up again
/// (a disk plugged in is backed up at once, whatever this says).
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    /// Again this long after its last backup ended.
    pub every: Option<Duration>,
    /// Again at these local times of day.
    pub at: Vec<NaiveTime>,
    /// Never sooner than this after a successful backup.
    pub min_interval: Duration,
}

impl Schedule {
    /// Whether anything is scheduled at all.
    pub fn is_set(&self) -> bool {
        self.every.is_some() || !self.at.is_empty()
    }

    /// When a disk still plugged in is due again, its last backup having
    /// ended at `last_end` (`successful` or not); `None` when nothing is
    /// scheduled.
    pub fn next_due(&self, last_end: DateTime<Local>, successful: bool) -> Option<DateTime<Local>> {
        let every = self.every.and_then(|e| chrono::Duration::from_std(e).ok()).map(|e| last_end + e);
        let at = self.at.iter().filter_map(|&t| next_time_of_day(last_end, t)).min();
        let due = [every, at].into_iter().flatten().min()?;
        let earliest = successful
            .then(|| chrono::Duration::from_std(self.min_interval).ok().map(|m| last_end + m))
            .flatten();
        Some(earliest.map_or(due, |e| due.max(e)))
    }
}

/// The first local `time` of day strictly after `after` (a time that a
/// clock change skips that day is taken an hour later).
fn next_time_of_day(after: DateTime<Local>, time: NaiveTime) -> Option<DateTime<Local>> {
    use chrono::TimeZone;
    (0..=2).find_map(|days| {
        let naive = after.date_naive().checked_add_days(chrono::Days::new(days))?.and_time(time);
        let local = Local
            .from_local_datetime(&naive)
            .earliest()
            .or_else(|| Local.from_local_datetime(&(naive + chrono::Duration::hours(1))).earliest())?;
        (local > after).then_some(local)
    })
}

/// Optional programs run around the scripts (as BUSY had).
#[derive(Debug, Clone, PartialEq)]
pub struct Hooks {
    /// Run before the scripts with the filesystem type, disk name and mount
    /// point; a failure aborts the backup.
    pub pre: Option<String>,
    /// Run after the disk is unmounted with the disk name, status and log path.
    pub post: Option<String>,
    pub timeout: Duration,
}

/// One entry of `[[scripts]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Script {
    pub name: String,
    pub args: Vec<String>,
    pub timeout: Duration,
    pub enabled: bool,
    /// A failure of this script skips the scripts after it.
    pub stop_on_failure: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Mail {
    /// The reports' language (the top-level `language`).
    pub language: Language,
    /// `mail.to`, parsed (a bare user name is `name@localhost`).
    pub to: Vec<Mailbox>,
    pub from: Mailbox,
    pub when: MailWhen,
    pub transport: Transport,
    /// A known disk with no successful backup for this many days gets a
    /// reminder a day (0: never).
    pub remind_after_days: u32,
    /// The first retry of a mail that could not be sent; each next one waits
    /// twice as long, at most an hour.
    pub retry_after: Duration,
    /// A mail is abandoned (kept in the outbox, marked so) after this many attempts.
    pub max_attempts: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MailWhen {
    Always,
    Failure,
    Never,
}

/// `mail.transport` as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum MailTransport {
    Sendmail,
    Smtp,
}

/// How mail leaves the machine.
#[derive(Debug, Clone, PartialEq)]
pub enum Transport {
    /// The local MTA's sendmail-compatible program.
    Sendmail {
        path: PathBuf,
    },
    Smtp(Smtp),
}

impl std::fmt::Display for Transport {
    /// "smtp mail.example.org:587 (starttls)" or "/usr/sbin/sendmail".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Transport::Sendmail { path } => write!(f, "{}", path.display()),
            Transport::Smtp(s) => write!(f, "smtp {}:{} ({})", s.host, s.port, s.tls.as_str()),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Smtp {
    pub host: String,
    pub port: u16,
    pub tls: SmtpTls,
    /// AUTH: a user and the file holding its password, or neither.
    pub login: Option<Login>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Login {
    pub user: String,
    /// Read when a mail is sent; refused when group or others can read it.
    pub password_file: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    None,
    Starttls,
    Tls,
}

impl SmtpTls {
    /// The value as written in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            SmtpTls::None => "none",
            SmtpTls::Starttls => "starttls",
            SmtpTls::Tls => "tls",
        }
    }
}

/// A configuration error: the file, the key (when one is to blame) and what is wrong.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.key {
            Some(key) => write!(f, "{}: key `{}`: {}", self.file.display(), key, self.message),
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    state_dir: Option<PathBuf>,
    run_dir: Option<PathBuf>,
    log_dir: Option<PathBuf>,
    mount_dir: Option<PathBuf>,
    scripts_dir: Option<PathBuf>,
    filesystems: Option<Vec<String>>,
    udev_events: Option<bool>,
    power_off: Option<bool>,
    scripts: Option<Vec<RawScript>>,
    hooks: Option<RawHooks>,
    mail: Option<RawMail>,
    metrics_file: Option<PathBuf>,
    udev_rule: Option<PathBuf>,
    schedule: Option<RawSchedule>,
    keep_logs: Option<String>,
    open_timeout: Option<String>,
    verify_every: Option<u32>,
    verify_timeout: Option<String>,
    shrink_warning: Option<String>,
    language: Option<Language>,
    web: Option<RawWeb>,
    hosts: Option<Vec<hosts::RawHost>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWeb {
    listen: Option<String>,
    users_file: Option<PathBuf>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    session_timeout: Option<String>,
    language: Option<Language>,
    admins: Option<Vec<String>>,
    restore_to: Option<Vec<PathBuf>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSchedule {
    every: Option<String>,
    at: Option<Vec<String>>,
    min_interval: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHooks {
    pre: Option<String>,
    post: Option<String>,
    timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScript {
    name: String,
    #[serde(default)]
    args: Vec<String>,
    timeout: Option<String>,
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default)]
    stop_on_failure: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMail {
    to: Option<String>,
    from: Option<String>,
    remind_after_days: Option<u32>,
    retry_after: Option<String>,
    max_attempts: Option<u32>,
    when: Option<MailWhen>,
    transport: Option<MailTransport>,
    sendmail_path: Option<PathBuf>,
    smtp: Option<RawSmtp>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSmtp {
    host: String,
    port: Option<u16>,
    tls: Option<SmtpTls>,
    user: Option<String>,
    password_file: Option<PathBuf>,
}

/// Filesystem types the daemon mounts unless told otherwise.
pub const DEFAULT_FILESYSTEMS: &[&str] = &["ext4", "ext3", "ext2", "xfs", "btrfs", "vfat", "exfat", "ntfs3"];
/// How long a script may run unless its entry says otherwise.
pub const DEFAULT_SCRIPT_TIMEOUT: Duration = Duration::from_secs(12 * 3600);
/// How long a pre or post hook may run unless `hooks.timeout` says otherwise.
pub const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(600);
/// The udev rule the daemon writes; it overrides the empty one installed in
/// udev's own rules directory under the same name.
pub const DEFAULT_UDEV_RULE: &str = "/run/udev/rules.d/61-tetras-back.rules";

impl Config {
    /// Loads the configuration named on the command line or in the environment.
    ///
    /// `explicit` is false when the path is the built-in default: a missing
    /// default file means "use the defaults", while a missing file that the
    /// administrator named is an error.
    pub fn load(path: &Path, explicit: bool) -> Result<Config, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Config::parse(&text, path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
                log::debug!("{} does not exist; using built-in defaults", path.display());
                validate(RawConfig::default(), None)
            }
            Err(e) => Err(ConfigError {
                file: path.to_owned(),
                key: None,
                message: format!("cannot read the configuration: {e}"),
            }),
        }
    }

    /// Parses and validates configuration text that came from `path`.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError {
            file: path.to_owned(),
            key: None,
            message: e.to_string().trim_end().to_owned(),
        })?;
        validate(raw, Some(path))
    }

    /// The control FIFO the daemon reads commands from.
    pub fn control_path(&self) -> PathBuf {
        control_path(&self.run_dir)
    }

    /// Where CLI invocations create the FIFOs they read their reply from.
    pub fn replies_dir(&self) -> PathBuf {
        replies_dir(&self.run_dir)
    }

    pub fn state_path(&self) -> PathBuf {
        self.state_dir.join("state.json")
    }

    pub fn history_path(&self) -> PathBuf {
        self.state_dir.join("history.sqlite")
    }

    /// Our SSH key pair and the host keys we trust (`tetras-back hosts`).
    pub fn ssh_dir(&self) -> PathBuf {
        self.state_dir.join("ssh")
    }

    /// The `[[hosts]]` entry named `name`; the error lists the known ones.
    pub fn host(&self, name: &str) -> Result<&Host, String> {
        self.hosts.iter().find(|h| h.name == name).ok_or_else(|| {
            let known: Vec<&str> = self.hosts.iter().map(|h| h.name.as_str()).collect();
            match (&self.source, known.is_empty()) {
                (Some(f), true) => format!("no host {name:?}: {} has no [[hosts]]", f.display()),
                (None, _) => format!("no host {name:?}: there is no configuration file, so no [[hosts]]"),
                (Some(f), false) => {
                    format!("no host {name:?} in {} (its hosts: {})", f.display(), known.join(", "))
                }
            }
        })
    }
}

/// The control FIFO in `run_dir`.
pub fn control_path(run_dir: &Path) -> PathBuf {
    run_dir.join("control")
}

/// Where CLI invocations create their reply FIFOs, in `run_dir`.
pub fn replies_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("replies")
}

/// The `run_dir` that the file at `path` sets, read even when the rest of
/// the file is invalid (the default when it cannot be told), so that
/// `reload` reaches the daemon, which then says what is wrong with the file.
pub fn run_dir_of(path: &Path) -> PathBuf {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|text| text.parse::<toml::Table>().ok())
        .and_then(|t| t.get("run_dir")?.as_str().map(PathBuf::from))
        .filter(|p| p.is_absolute())
        .unwrap_or_else(|| PathBuf::from(DEFAULT_RUN_DIR))
}

/// Where the control FIFO lives unless `run_dir` says otherwise.
const DEFAULT_RUN_DIR: &str = "/run/tetras-back";

fn validate(raw: RawConfig, source: Option<&Path>) -> Result<Config, ConfigError> {
    let file = source.map(Path::to_owned).unwrap_or_else(|| PathBuf::from(DEFAULT_PATH));
    let err =
        |key: &str, message: String| ConfigError { file: file.clone(), key: Some(key.to_owned()), message };

    let dir = |key: &str, value: Option<PathBuf>, default: &str| -> Result<PathBuf, ConfigError> {
        let p = value.unwrap_or_else(|| PathBuf::from(default));
        if !p.is_absolute() {
            return Err(err(key, format!("expected an absolute path, got {:?}", p.display().to_string())));
        }
        Ok(p)
    };
    let state_dir = dir("state_dir", raw.state_dir, "/var/lib/tetras-back")?;
    let run_dir = dir("run_dir", raw.run_dir, DEFAULT_RUN_DIR)?;
    let log_dir = dir("log_dir", raw.log_dir, "/var/log/tetras-back")?;
    let mount_dir = dir("mount_dir", raw.mount_dir, "/run/tetras-back/mnt")?;
    let scripts_dir = dir("scripts_dir", raw.scripts_dir, "/usr/local/lib/tetras-back")?;

    let filesystems =
        raw.filesystems.unwrap_or_else(|| DEFAULT_FILESYSTEMS.iter().map(|s| s.to_string()).collect());
    for (i, fs) in filesystems.iter().enumerate() {
        if fs.is_empty() || !fs.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.') {
            return Err(err(&format!("filesystems[{i}]"), format!("{fs:?} is not a filesystem type name")));
        }
    }

    let raw_scripts = raw.scripts.unwrap_or_else(|| {
        vec![RawScript {
            name: "backup_nocloud.sh".into(),
            args: vec!["--data".into(), "--config".into()],
            timeout: None,
            enabled: true,
            stop_on_failure: false,
        }]
    });
    let mut scripts = Vec::with_capacity(raw_scripts.len());
    for (i, s) in raw_scripts.into_iter().enumerate() {
        check_script_name(&s.name).map_err(|m| err(&format!("scripts[{i}].name"), m))?;
        let timeout = match s.timeout {
            None => DEFAULT_SCRIPT_TIMEOUT,
            Some(t) => parse_duration(&t).map_err(|m| err(&format!("scripts[{i}].timeout"), m))?,
        };
        scripts.push(Script {
            name: s.name,
            args: s.args,
            timeout,
            enabled: s.enabled,
            stop_on_failure: s.stop_on_failure,
        });
    }

    let raw_hooks = raw.hooks.unwrap_or_default();
    for (key, name) in [("hooks.pre", &raw_hooks.pre), ("hooks.post", &raw_hooks.post)] {
        if let Some(name) = name {
            check_script_name(name).map_err(|m| err(key, m))?;
        }
    }
    let hooks = Hooks {
        pre: raw_hooks.pre,
        post: raw_hooks.post,
        timeout: match raw_hooks.timeout {
            None => DEFAULT_HOOK_TIMEOUT,
            Some(t) => parse_duration(&t).map_err(|m| err("hooks.timeout", m))?,
        },
    };

    let raw_mail = raw.mail.unwrap_or_default();
    let sendmail_path = raw_mail.sendmail_path.unwrap_or_else(|| PathBuf::from("/usr/sbin/sendmail"));
    if !sendmail_path.is_absolute() {
        return Err(err(
            "mail.sendmail_path",
            format!("expected an absolute path, got {:?}", sendmail_path.display().to_string()),
        ));
    }
    let smtp = match raw_mail.smtp {
        None => None,
        Some(s) => {
            if s.host.trim().is_empty() {
                return Err(err("mail.smtp.host", "expected a host name, got an empty string".into()));
            }
            let login = match (s.user, s.password_file) {
                (None, None) => None,
                (Some(_), None) => {
                    return Err(err(
                        "mail.smtp.password_file",
                        "`user` is set: give the file holding its password".into(),
                    ))
                }
                (None, Some(_)) => {
                    return Err(err(
                        "mail.smtp.user",
                        "`password_file` is set: give the user it is for".into(),
                    ))
                }
                (Some(_), Some(p)) if !p.is_absolute() => {
                    return Err(err(
                        "mail.smtp.password_file",
                        format!("expected an absolute path, got {:?}", p.display().to_string()),
                    ))
                }
                (Some(user), Some(password_file)) => Some(Login { user, password_file }),
            };
            let tls = s.tls.unwrap_or(SmtpTls::Starttls);
            let port = s.port.unwrap_or(match tls {
                SmtpTls::None => 25,
                SmtpTls::Starttls => 587,
                SmtpTls::Tls => 465,
            });
            Some(Smtp { host: s.host, port, tls, login })
        }
    };
    let transport = match (raw_mail.transport.unwrap_or(MailTransport::Sendmail), smtp) {
        (MailTransport::Sendmail, _) => Transport::Sendmail { path: sendmail_path },
        (MailTransport::Smtp, Some(s)) => Transport::Smtp(s),
        (MailTransport::Smtp, None) => {
            return Err(err(
                "mail.smtp",
                "transport = \"smtp\" needs a [mail.smtp] table with at least `host`".into(),
            ))
        }
    };
    let to = recipients(raw_mail.to.as_deref().unwrap_or("root")).map_err(|m| err("mail.to", m))?;
    let from = raw_mail.from.as_deref().unwrap_or("tetras-back <root@localhost>");
    let from = from
        .parse::<Mailbox>()
        .map_err(|e| err("mail.from", format!("{from:?} is not a mail address ({e})")))?;
    let retry_after = match raw_mail.retry_after {
        None => Duration::from_secs(300),
        Some(t) => parse_duration(&t).map_err(|m| err("mail.retry_after", m))?,
    };
    let max_attempts = raw_mail.max_attempts.unwrap_or(20);
    if max_attempts == 0 {
        return Err(err("mail.max_attempts", "expected at least 1 attempt, got 0".into()));
    }
    let language = raw.language.unwrap_or_default();
    let mail = Mail {
        language,
        to,
        from,
        when: raw_mail.when.unwrap_or(MailWhen::Always),
        transport,
        remind_after_days: raw_mail.remind_after_days.unwrap_or(7),
        retry_after,
        max_attempts,
    };
    // An empty string turns an optional file off.
    let optional_file = |key: &str, value: Option<PathBuf>, default: Option<&str>| {
        let p = match value {
            Some(p) if p.as_os_str().is_empty() => return Ok(None),
            Some(p) => p,
            None => match default {
                Some(d) => PathBuf::from(d),
                None => return Ok(None),
            },
        };
        if !p.is_absolute() || p.file_name().is_none() {
            return Err(err(
                key,
                format!("expected an absolute file path or \"\", got {:?}", p.display().to_string()),
            ));
        }
        Ok(Some(p))
    };
    let metrics_file = optional_file("metrics_file", raw.metrics_file, None)?;
    let raw_schedule = raw.schedule.unwrap_or_default();
    let mut at = Vec::new();
    for (i, t) in raw_schedule.at.unwrap_or_default().iter().enumerate() {
        let time = NaiveTime::parse_from_str(t, "%H:%M").map_err(|_| {
            err(&format!("schedule.at[{i}]"), format!("expected a local time such as \"02:30\", got {t:?}"))
        })?;
        at.push(time);
    }
    let schedule = Schedule {
        every: match raw_schedule.every {
            None => None,
            Some(t) => Some(parse_duration(&t).map_err(|m| err("schedule.every", m))?),
        },
        at,
        min_interval: match raw_schedule.min_interval {
            None => Duration::from_secs(3600),
            Some(t) => parse_duration(&t).map_err(|m| err("schedule.min_interval", m))?,
        },
    };
    let udev_rule = optional_file("udev_rule", raw.udev_rule, Some(DEFAULT_UDEV_RULE))?;
    let web = web(raw.web.unwrap_or_default(), language, &state_dir).map_err(|(key, m)| err(key, m))?;
    let hosts = hosts::hosts(raw.hosts.unwrap_or_default()).map_err(|(key, m)| err(&key, m))?;

    Ok(Config {
        source: source.map(Path::to_owned),
        state_dir,
        run_dir,
        log_dir,
        mount_dir,
        scripts_dir,
        filesystems,
        udev_events: raw.udev_events.unwrap_or(true),
        power_off: raw.power_off.unwrap_or(true),
        scripts,
        hooks,
        mail,
        metrics_file,
        udev_rule,
        schedule,
        keep_logs: match raw.keep_logs {
            None => Duration::from_secs(365 * 86400),
            Some(t) => parse_duration(&t).map_err(|m| err("keep_logs", m))?,
        },
        open_timeout: match raw.open_timeout {
            None => Duration::from_secs(30 * 60),
            Some(t) => parse_duration(&t).map_err(|m| err("open_timeout", m))?,
        },
        verify_every: raw.verify_every.unwrap_or(4),
        verify_timeout: match raw.verify_timeout {
            None => Duration::from_secs(6 * 3600),
            Some(t) => parse_duration(&t).map_err(|m| err("verify_timeout", m))?,
        },
        shrink_warning: match raw.shrink_warning {
            None => Some(0.5),
            Some(t) => crate::engine::snapshot::parse_share(&t).map_err(|m| err("shrink_warning", m))?,
        },
        language,
        web,
        hosts,
    })
}

/// The default `web.listen`: loopback only, so that no password crosses
/// the network in clear unless TLS is set up.
pub const DEFAULT_WEB_LISTEN: &str = "127.0.0.1:8750";
/// The default `web.users_file`.
pub const DEFAULT_WEB_USERS: &str = "/etc/tetras-back/web-users";

/// Validates `[web]`; an error names its key.
fn web(raw: RawWeb, language: Language, state_dir: &Path) -> Result<Web, (&'static str, String)> {
    let text = raw.listen.as_deref().unwrap_or(DEFAULT_WEB_LISTEN);
    let listen: SocketAddr = text.parse().map_err(|_| {
        (
            "web.listen",
            format!("expected an address and port such as \"127.0.0.1:8750\" or \"[::]:8750\", got {text:?}"),
        )
    })?;
    let absolute = |key: &'static str, p: PathBuf| {
        if p.is_absolute() {
            Ok(p)
        } else {
            Err((key, format!("expected an absolute path, got {:?}", p.display().to_string())))
        }
    };
    let users_file = absolute("web.users_file", raw.users_file.unwrap_or_else(|| DEFAULT_WEB_USERS.into()))?;
    let tls = match (raw.tls_cert, raw.tls_key) {
        (None, None) => None,
        (Some(_), None) => {
            return Err(("web.tls_key", "`tls_cert` is set: give the PEM file of its private key".into()))
        }
        (None, Some(_)) => {
            return Err(("web.tls_cert", "`tls_key` is set: give the PEM file of its certificate".into()))
        }
        (Some(cert), Some(key)) => {
            Some(WebTls { cert: absolute("web.tls_cert", cert)?, key: absolute("web.tls_key", key)? })
        }
    };
    if tls.is_none() && !listen.ip().is_loopback() {
        return Err((
            "web.listen",
            format!(
                "{listen} is reachable from the network: set `tls_cert` and `tls_key` so that passwords \
                 do not cross it in clear, or listen on a loopback address such as {DEFAULT_WEB_LISTEN}"
            ),
        ));
    }
    let session_timeout = match raw.session_timeout {
        None => Duration::from_secs(8 * 3600),
        Some(t) => parse_duration(&t).map_err(|m| ("web.session_timeout", m))?,
    };
    let admins = raw.admins.unwrap_or_default();
    for name in &admins {
        check_user_name(name).map_err(|e| ("web.admins", e))?;
    }
    let restore_to = match raw.restore_to {
        None => vec![state_dir.join("restored")],
        Some(roots) => {
            let roots =
                roots.into_iter().map(|p| absolute("web.restore_to", p)).collect::<Result<Vec<_>, _>>()?;
            if let Some(p) = roots.iter().find(|p| {
                p.components().any(|c| c == std::path::Component::ParentDir) || p == &Path::new("/")
            }) {
                return Err((
                    "web.restore_to",
                    format!("{:?} cannot be a restore root (no `/`, no `..`)", p.display().to_string()),
                ));
            }
            roots
        }
    };
    Ok(Web {
        listen,
        users_file,
        tls,
        session_timeout,
        language: raw.language.unwrap_or(language),
        admins,
        restore_to,
    })
}

/// A console user's name (`[web] admins`, the users file): 1 to 64
/// characters, no colon (the users file's separator), space or control
/// character.
pub fn check_user_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > 64
        || name.chars().any(|c| c == ':' || c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "{name:?} is not a user name: 1 to 64 characters, no colon, space or control character"
        ));
    }
    Ok(())
}

/// Parses `mail.to`: addresses separated by commas; a bare name such as
/// "root" is a local user, `root@localhost`.
fn recipients(to: &str) -> Result<Vec<Mailbox>, String> {
    to.split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| {
            let full = if t.contains('@') { t.to_owned() } else { format!("{t}@localhost") };
            full.parse::<Mailbox>().map_err(|e| format!("{t:?} is not a mail address ({e})"))
        })
        .collect::<Result<Vec<_>, _>>()
        .and_then(|v| if v.is_empty() { Err("expected at least one address".into()) } else { Ok(v) })
}

/// A script or hook is a file in scripts_dir: a path would escape the
/// directory whose ownership and permissions are checked.
fn check_script_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(format!("expected a file name inside scripts_dir, got {name:?}"));
    }
    Ok(())
}

/// Parses a duration such as `"90s"`, `"30min"` or `"12h"`; zero is refused.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text).map_err(|e| {
        format!("expected a duration such as \"90s\", \"30min\" or \"12h\", got {text:?} ({e})")
    })?;
    if d.is_zero() {
        return Err(format!("expected a duration greater than zero, got {text:?}"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(text, Path::new("/etc/t.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn empty_file_gives_the_documented_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.state_dir, PathBuf::from("/var/lib/tetras-back"));
        assert_eq!(c.control_path(), PathBuf::from("/run/tetras-back/control"));
        assert_eq!(c.mount_dir, PathBuf::from("/run/tetras-back/mnt"));
        assert_eq!(c.filesystems.len(), 8);
        assert_eq!(c.scripts[0].name, "backup_nocloud.sh");
        assert_eq!(c.scripts[0].timeout, Duration::from_secs(12 * 3600));
        assert_eq!(c.mail.when, MailWhen::Always);
        assert_eq!(c.mail.to, vec!["root@localhost".parse::<Mailbox>().unwrap()]);
        assert_eq!(c.mail.transport, Transport::Sendmail { path: "/usr/sbin/sendmail".into() });
    }

    #[test]
    fn the_shipped_config_is_valid_and_matches_the_defaults() {
        let shipped = include_str!("../../conf/tetras-back.toml");
        let c = parse(shipped).unwrap();
        let d = parse("").unwrap();
        assert_eq!(Config { source: None, ..c }, Config { source: None, ..d });
    }

    #[test]
    fn web_defaults_and_refusals_name_the_key() {
        let c = parse("").unwrap();
        assert_eq!(c.web.listen, "127.0.0.1:8750".parse().unwrap());
        assert_eq!(c.web.users_file, PathBuf::from(DEFAULT_WEB_USERS));
        assert_eq!(c.web.session_timeout, Duration::from_secs(8 * 3600));
        assert_eq!((c.language, c.web.language), (Language::En, Language::En));
        let c = parse("language = \"fr\"\n").unwrap();
        assert_eq!(c.web.language, Language::Fr, "the console follows the top-level language");
        let c = parse("language = \"fr\"\n[web]\nlanguage = \"en\"\nlisten = \"[::1]:9000\"\n").unwrap();
        assert_eq!((c.language, c.web.language), (Language::Fr, Language::En));
        assert!(c.web.admins.is_empty(), "nobody is an admin unless named");
        let c = parse("[web]\nadmins = [\"alice\", \"bob\"]\n").unwrap();
        assert_eq!(c.web.admins, ["alice", "bob"]);
        let e = parse("[web]\nadmins = \"alice\"\n").unwrap_err();
        assert!(e.contains("admins"), "{e}");
        for (text, key) in [
            ("[web]\nlisten = \"0.0.0.0:8750\"\n", "web.listen"),
            ("[web]\nlisten = \"localhost\"\n", "web.listen"),
            ("[web]\ntls_cert = \"/etc/c.pem\"\n", "web.tls_key"),
            ("[web]\ntls_cert = \"c.pem\"\ntls_key = \"/k\"\n", "web.tls_cert"),
            ("[web]\nusers_file = \"users\"\n", "web.users_file"),
            ("[web]\nsession_timeout = \"0s\"\n", "web.session_timeout"),
            ("[web]\nadmins = [\"alice\", \"bob smith\"]\n", "web.admins"),
            ("[web]\nadmins = [\"\"]\n", "web.admins"),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.contains(&format!("key `{key}`")), "{text:?}: {e}");
        }
        assert!(parse("language = \"de\"\n").unwrap_err().contains("language"));
        let tls = "[web]\nlisten = \"0.0.0.0:8443\"\ntls_cert = \"/c.pem\"\ntls_key = \"/k.pem\"\n";
        assert_eq!(parse(tls).unwrap().web.tls, Some(WebTls { cert: "/c.pem".into(), key: "/k.pem".into() }));
    }

    #[test]
    fn unknown_key_names_file_and_key() {
        let e = parse("stat_dir = \"/x\"\n").unwrap_err();
        assert!(e.contains("/etc/t.toml"), "{e}");
        assert!(e.contains("stat_dir"), "{e}");
        let e = parse("[mail]\nwhen = \"always\"\nsubject = \"x\"\n").unwrap_err();
        assert!(e.contains("subject"), "{e}");
    }

    #[test]
    fn wrong_type_names_the_key() {
        let e = parse("filesystems = \"ext4\"\n").unwrap_err();
        assert!(e.contains("filesystems"), "{e}");
        let e = parse("[mail]\nwhen = \"sometimes\"\n").unwrap_err();
        assert!(e.contains("when") && e.contains("sometimes"), "{e}");
    }

    #[test]
    fn relative_path_is_refused() {
        let e = parse("log_dir = \"var/log\"\n").unwrap_err();
        assert_eq!(e, "/etc/t.toml: key `log_dir`: expected an absolute path, got \"var/log\"");
    }

    #[test]
    fn bad_duration_names_the_script_entry() {
        let e = parse("[[scripts]]\nname = \"a.sh\"\n[[scripts]]\nname = \"b.sh\"\ntimeout = \"soon\"\n")
            .unwrap_err();
        assert!(e.starts_with("/etc/t.toml: key `scripts[1].timeout`: expected a duration"), "{e}");
        let e = parse("[[scripts]]\nname = \"a.sh\"\ntimeout = \"0s\"\n").unwrap_err();
        assert!(e.contains("greater than zero"), "{e}");
        let c = parse("[[scripts]]\nname = \"a.sh\"\ntimeout = \"90min\"\n").unwrap();
        assert_eq!(c.scripts[0].timeout, Duration::from_secs(5400));
    }

    #[test]
    fn script_name_must_stay_in_scripts_dir() {
        let e = parse("[[scripts]]\nname = \"../evil.sh\"\n").unwrap_err();
        assert!(e.contains("scripts[0].name"), "{e}");
        let e = parse("[hooks]\npost = \"/bin/sh\"\n").unwrap_err();
        assert!(e.contains("hooks.post"), "{e}");
    }

    #[test]
    fn mail_addresses_are_checked() {
        let e = parse("[mail]\nto = \"root, @nowhere\"\n").unwrap_err();
        assert!(e.contains("mail.to") && e.contains("@nowhere"), "{e}");
        let e = parse("[mail]\nfrom = \"\"\n").unwrap_err();
        assert!(e.contains("mail.from"), "{e}");
        let c = parse("[mail]\nremind_after_days = 0\nretry_after = \"1s\"\n").unwrap();
        assert_eq!((c.mail.remind_after_days, c.mail.retry_after), (0, Duration::from_secs(1)));
    }

    #[test]
    fn optional_files_can_be_turned_off() {
        let c = parse("").unwrap();
        assert_eq!(c.udev_rule.as_deref(), Some(Path::new(DEFAULT_UDEV_RULE)));
        assert_eq!(c.metrics_file, None);
        let c = parse("udev_rule = \"\"\nmetrics_file = \"/var/lib/m.prom\"\n").unwrap();
        assert_eq!((c.udev_rule, c.metrics_file), (None, Some(PathBuf::from("/var/lib/m.prom"))));
        let e = parse("metrics_file = \"m.prom\"\n").unwrap_err();
        assert!(e.contains("metrics_file"), "{e}");
    }

    #[test]
    fn smtp_transport_needs_a_host() {
        let e = parse("[mail]\ntransport = \"smtp\"\n").unwrap_err();
        assert!(e.contains("mail.smtp"), "{e}");
        let c = parse("[mail]\ntransport = \"smtp\"\n[mail.smtp]\nhost = \"mx\"\ntls = \"tls\"\n").unwrap();
        let Transport::Smtp(s) = &c.mail.transport else { panic!("{:?}", c.mail.transport) };
        assert_eq!((s.port, c.mail.transport.to_string()), (465, "smtp mx:465 (tls)".to_owned()));
    }

    #[test]
    fn a_schedule_says_when_a_plugged_disk_is_due_again() {
        use chrono::TimeZone;
        let c = parse("[schedule]\nevery = \"6h\"\nat = [\"02:30\", \"14:00\"]\nmin_interval = \"2h\"\n")
            .unwrap();
        let s = &c.schedule;
        let t = |d: u32, h: u32, m: u32| Local.with_ymd_and_hms(2026, 3, d, h, m, 0).unwrap();
        // 01:00 + 6h = 07:00, but 02:30 comes first; min_interval pushes it to 03:00 after a success.
        assert_eq!(s.next_due(t(10, 1, 0), false), Some(t(10, 2, 30)));
        assert_eq!(s.next_due(t(10, 1, 0), true), Some(t(10, 3, 0)));
        // After 14:00 the next is 20:00 (every), before tomorrow's 02:30.
        assert_eq!(s.next_due(t(10, 14, 0), true), Some(t(10, 20, 0)));
        assert_eq!(s.next_due(t(10, 23, 0), false), Some(t(11, 2, 30)));
        let none = parse("").unwrap().schedule;
        assert!(!none.is_set() && none.next_due(t(10, 1, 0), true).is_none());
        let e = parse("[schedule]\nat = [\"25:00\"]\n").unwrap_err();
        assert!(e.contains("schedule.at[0]") && e.contains("25:00"), "{e}");
        let e = parse("[schedule]\nevery = \"daily\"\n").unwrap_err();
        assert!(e.contains("schedule.every"), "{e}");
    }

    #[test]
    fn bare_user_is_local_and_bad_addresses_are_named() {
        let r = recipients("root, ops@example.org").unwrap();
        assert_eq!(r[0].to_string(), "root@localhost");
        assert_eq!(r[1].to_string(), "ops@example.org");
        let e = recipients("a@b, not an address@").unwrap_err();
        assert!(e.contains("not an address@"), "{e}");
        assert!(recipients(" , ").is_err());
    }

    #[test]
    fn an_smtp_user_needs_its_password_file_and_the_reverse() {
        let smtp = "[mail]\ntransport = \"smtp\"\n[mail.smtp]\nhost = \"mx\"\n";
        let e = parse(&format!("{smtp}user = \"u\"\n")).unwrap_err();
        assert!(e.contains("key `mail.smtp.password_file`"), "{e}");
        let e = parse(&format!("{smtp}password_file = \"/etc/p\"\n")).unwrap_err();
        assert!(e.contains("key `mail.smtp.user`"), "{e}");
        let e = parse(&format!("{smtp}user = \"u\"\npassword_file = \"p\"\n")).unwrap_err();
        assert!(e.contains("mail.smtp.password_file") && e.contains("absolute"), "{e}");
        let c = parse(&format!("{smtp}user = \"u\"\npassword_file = \"/etc/p\"\n")).unwrap();
        let Transport::Smtp(s) = c.mail.transport else { panic!() };
        assert_eq!(s.login, Some(Login { user: "u".into(), password_file: "/etc/p".into() }));
    }

    #[test]
    fn run_dir_is_found_in_a_broken_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "run_dir = \"/run/elsewhere\"\n[mail]\nwhen = \"sometimes\"\n").unwrap();
        assert!(Config::load(&p, true).is_err());
        assert_eq!(run_dir_of(&p), PathBuf::from("/run/elsewhere"));
        std::fs::write(&p, "run_dir = [\n").unwrap();
        assert_eq!(run_dir_of(&p), PathBuf::from(DEFAULT_RUN_DIR));
        assert_eq!(run_dir_of(&dir.path().join("absent.toml")), PathBuf::from(DEFAULT_RUN_DIR));
    }

    #[test]
    fn missing_default_file_means_defaults_but_missing_named_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("absent.toml");
        assert!(Config::load(&p, false).is_ok());
        let e = Config::load(&p, true).unwrap_err().to_string();
        assert!(e.contains("absent.toml") && e.contains("cannot read"), "{e}");
    }
}
