//! The backup history: `<state_dir>/history.sqlite`.
//!
//! Every backup (one row when it starts, completed when it ends, with each
//! script's result), every plug and unplug, the mail outbox and the reminders
//! sent. SQLite in WAL mode with each change in its own transaction, so that
//! a daemon killed at any point leaves a readable database: a backup whose
//! row still says `running` at the next start is marked `interrupted`.
//!
//! The schema is versioned with `PRAGMA user_version`; [`MIGRATIONS`] brings
//! an older file up to date, and a file from a newer tetras-back is refused
//! rather than altered.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use chrono::{DateTime, Local, TimeZone};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use serde::Serialize;

use crate::engine::journal::HostPull;
use crate::engine::snapshot::Shrunk;
use crate::store::report::{Drill, Job, Report, ScriptReport, Status};

/// Schema migrations, in order: entry `i` brings version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: backups, their scripts, plug events, the mail outbox, reminders.
    "CREATE TABLE backups (
        id INTEGER PRIMARY KEY,
        uuid TEXT NOT NULL,
        disk TEXT NOT NULL,
        device TEXT NOT NULL,
        started INTEGER NOT NULL,          -- Unix seconds
        finished INTEGER,                  -- NULL while running
        status TEXT NOT NULL,              -- running | success | failed | removed | interrupted
        duration_secs REAL,
        bytes_written INTEGER,
        files INTEGER,
        free_before INTEGER,
        free_after INTEGER,
        pruned TEXT,                       -- JSON array of folders
        log TEXT NOT NULL,
        error TEXT
    );
    CREATE INDEX backups_by_disk ON backups (uuid, started);
    CREATE TABLE scripts (
        backup_id INTEGER NOT NULL REFERENCES backups (id) ON DELETE CASCADE,
        seq INTEGER NOT NULL,
        name TEXT NOT NULL,
        exit_code INTEGER,
        outcome TEXT NOT NULL,
        duration_secs REAL NOT NULL,
        PRIMARY KEY (backup_id, seq)
    );
    CREATE TABLE plugs (
        id INTEGER PRIMARY KEY,
        time INTEGER NOT NULL,
        uuid TEXT NOT NULL,
        disk TEXT,
        device TEXT NOT NULL,
        action TEXT NOT NULL               -- plugged | unplugged
    );
    CREATE TABLE outbox (
        id INTEGER PRIMARY KEY,
        created INTEGER NOT NULL,
        subject TEXT NOT NULL,
        sender TEXT NOT NULL,
        recipients TEXT NOT NULL,          -- JSON array
        message BLOB NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt INTEGER NOT NULL,
        last_error TEXT,
        state TEXT NOT NULL                -- pending | sent | abandoned
    );
    CREATE INDEX outbox_due ON outbox (state, next_attempt);
    CREATE TABLE reminders (
        uuid TEXT PRIMARY KEY,
        sent INTEGER NOT NULL
    );",
    // 2: the restore drill of a backup (JSON: folder, passed, problems).
    "ALTER TABLE backups ADD COLUMN drill TEXT;",
    "ALTER TABLE backups ADD COLUMN shrunk TEXT;",
    "ALTER TABLE backups ADD COLUMN folders TEXT;",
    "ALTER TABLE backups ADD COLUMN hosts TEXT;",
    // 6: the disk's size, for its used space over time.
    "ALTER TABLE backups ADD COLUMN disk_size INTEGER;",
];

/// An open history database.
pub struct History {
    conn: Connection,
    path: PathBuf,
}

/// One backup, as `history` shows it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BackupRow {
    pub id: i64,
    pub disk: String,
    pub uuid: String,
    pub device: String,
    pub started: DateTime<Local>,
    pub finished: Option<DateTime<Local>>,
    pub status: Status,
    pub duration_secs: Option<f64>,
    pub bytes_written: Option<u64>,
    pub files: Option<u64>,
    pub free_before: Option<u64>,
    pub free_after: Option<u64>,
    /// The disk's size (`None` in rows older than the column).
    pub disk_size: Option<u64>,
    pub pruned: Vec<String>,
    pub log: PathBuf,
    pub error: Option<String>,
    pub scripts: Vec<ScriptReport>,
    /// The restore drill, when it ran with this backup.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drill: Option<Drill>,
    /// Sources much smaller than the last time (status `warning`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub shrunk: Vec<Shrunk>,
    /// The dated folders it wrote at the top of the disk.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub folders: Vec<String>,
    /// The other hosts it pulled (or failed to).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<HostPull>,
}

/// How long a disk's backups with given scripts usually take, in seconds.
#[derive(Debug, Clone, PartialEq)]
pub struct Usual {
    pub total: f64,
    /// Each script's, in their order.
    pub scripts: Vec<f64>,
}

/// One plug or unplug.
#[derive(Debug, Clone, Serialize)]
pub struct PlugRow {
    pub time: DateTime<Local>,
    pub uuid: String,
    pub disk: Option<String>,
    pub device: String,
    pub action: String,
}

/// What `disks`, the metrics and the reminders need of a disk's backups.
#[derive(Debug, Clone, Default)]
pub struct DiskSummary {
    /// The last backup, whatever its status.
    pub last: Option<BackupRow>,
    /// When the last successful one finished.
    pub last_success: Option<DateTime<Local>>,
}

/// A mail waiting in the outbox.
#[derive(Debug, Clone)]
pub struct Queued {
    pub id: i64,
    pub subject: String,
    pub sender: String,
    pub recipients: Vec<String>,
    pub message: Vec<u8>,
    pub attempts: u32,
}

/// A backup's row as it starts (`running`); returns its id.
fn insert_backup(conn: &Connection, job: &Job, started: DateTime<Local>, log: &Path) -> Result<i64> {
    conn.execute(
        "INSERT INTO backups (uuid, disk, device, started, status, log) VALUES (?1, ?2, ?3, ?4, 'running', ?5)",
        params![job.uuid, job.name, job.device.display().to_string(), started.timestamp(), log.display().to_string()],
    )?;
    Ok(conn.last_insert_rowid())
}

/// A column holding JSON (`None`: NULL, or JSON of an older shape).
fn json_column<T: serde::de::DeserializeOwned>(r: &rusqlite::Row, i: usize) -> rusqlite::Result<Option<T>> {
    Ok(r.get::<_, Option<String>>(i)?.and_then(|text| serde_json::from_str(&text).ok()))
}

fn time(secs: i64) -> DateTime<Local> {
    Local.timestamp_opt(secs, 0).single().unwrap_or_default()
}

impl History {
    /// Opens (creating it if need be) the database and brings its schema up to date.
    pub fn open(path: &Path) -> Result<History> {
        let conn = Connection::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let h = History { conn, path: path.to_owned() };
        h.setup().with_context(|| format!("{}: cannot use the history database", path.display()))?;
        Ok(h)
    }

    /// Opens an existing database for reading (`None`: there is none yet).
    pub fn open_read_only(path: &Path) -> Result<Option<History>> {
        if !path.exists() {
            return Ok(None);
        }
        let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .with_context(|| format!("cannot open {}", path.display()))?;
        conn.busy_timeout(Duration::from_secs(5))?;
        let h = History { conn, path: path.to_owned() };
        let version = h.version()?;
        if version as usize > MIGRATIONS.len() {
            bail!("{}", h.too_new(version));
        }
        if (version as usize) < MIGRATIONS.len() {
            bail!(
                "{}: schema version {version} is older than this tetras-back's ({}); \
                 the daemon updates it when it starts",
                path.display(),
                MIGRATIONS.len()
            );
        }
        Ok(Some(h))
    }

    fn version(&self) -> Result<i64> {
        self.conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .with_context(|| format!("{} is not a readable SQLite database", self.path.display()))
    }

    fn too_new(&self, version: i64) -> String {
        format!(
            "{}: schema version {version} was written by a newer tetras-back (this one knows up to {}); \
             left untouched",
            self.path.display(),
            MIGRATIONS.len()
        )
    }

    fn setup(&self) -> Result<()> {
        self.conn.busy_timeout(Duration::from_secs(5))?;
        let version = self.version()?;
        if version as usize > MIGRATIONS.len() {
            bail!("{}", self.too_new(version));
        }
        // WAL: readers (the CLI) never block the daemon, and a crash loses
        // at most the transaction being written.
        self.conn.pragma_update(None, "journal_mode", "WAL")?;
        self.conn.pragma_update(None, "synchronous", "NORMAL")?;
        self.conn.pragma_update(None, "foreign_keys", "ON")?;
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let tx = self.conn.unchecked_transaction()?;
            tx.execute_batch(sql).with_context(|| format!("migration to schema version {}", i + 1))?;
            tx.pragma_update(None, "user_version", i as i64 + 1)?;
            tx.commit()?;
            log::info!("{}: schema updated to version {}", self.path.display(), i + 1);
        }
        Ok(())
    }

    /// Marks backups left `running` by a daemon that died as `interrupted`.
    pub fn close_interrupted(&self) -> Result<usize> {
        Ok(self.conn.execute(
            "UPDATE backups SET status = 'interrupted', error = 'the daemon stopped during the backup' \
             WHERE status = 'running'",
            [],
        )?)
    }

    /// Records the start of a backup; returns its id.
    pub fn backup_started(&self, job: &Job, started: DateTime<Local>, log: &Path) -> Result<i64> {
        insert_backup(&self.conn, job, started, log)
    }

    /// Records the end of a backup; `id` is `None` when its start was never
    /// recorded (it failed before it had a log), and a row is made now.
    pub fn backup_finished(&self, id: Option<i64>, job: &Job, r: &Report) -> Result<()> {
        let tx = self.conn.unchecked_transaction()?;
        let id = match id {
            Some(id) => id,
            None => insert_backup(&tx, job, r.started, &r.log)?,
        };
        tx.execute(
            "UPDATE backups SET finished = ?2, status = ?3, duration_secs = ?4, bytes_written = ?5, files = ?6,
                free_before = ?7, free_after = ?8, pruned = ?9, error = ?10, drill = ?11, shrunk = ?12,
                folders = ?13, hosts = ?14, disk_size = ?15
             WHERE id = ?1",
            params![
                id,
                r.finished.timestamp(),
                r.status.as_str(),
                r.duration.as_secs_f64(),
                r.totals.bytes_written as i64,
                r.totals.files as i64,
                r.free_before.map(|b| b as i64),
                r.free_after.map(|b| b as i64),
                serde_json::to_string(&r.totals.pruned)?,
                r.error,
                r.drill.as_ref().map(serde_json::to_string).transpose()?,
                (!r.totals.shrunk.is_empty()).then(|| serde_json::to_string(&r.totals.shrunk)).transpose()?,
                (!r.folders.is_empty()).then(|| serde_json::to_string(&r.folders)).transpose()?,
                (!r.totals.hosts.is_empty()).then(|| serde_json::to_string(&r.totals.hosts)).transpose()?,
                r.disk_size.map(|b| b as i64),
            ],
        )?;
        for (seq, s) in r.scripts.iter().enumerate() {
            tx.execute(
                "INSERT INTO scripts (backup_id, seq, name, exit_code, outcome, duration_secs)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![id, seq as i64, s.script, s.exit_code, s.outcome, s.duration_secs],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// The newest dated folder that a finished backup of the disk `uuid`
    /// wrote (`success`, `warning` or `damaged`): what this server knows it
    /// made, whatever names the disk holds.
    pub fn last_written(&self, uuid: &str) -> Result<Option<String>> {
        let folders: Option<String> = self
            .conn
            .query_row(
                "SELECT folders FROM backups WHERE uuid = ?1 AND folders IS NOT NULL
                   AND status IN ('success', 'warning', 'damaged') ORDER BY id DESC LIMIT 1",
                [uuid],
                |r| r.get(0),
            )
            .optional()?;
        let folders: Vec<String> = folders.and_then(|f| serde_json::from_str(&f).ok()).unwrap_or_default();
        Ok(folders.into_iter().max())
    }

    /// How long the last backups of the disk `uuid` that ran the same
    /// `scripts` (in that order) and got through them took: the median of
    /// the last three, in all and script by script, what a running
    /// backup's progress and time left are reckoned from (`None`: there is
    /// none).
    pub fn usual_duration(&self, uuid: &str, scripts: &[String]) -> Result<Option<Usual>> {
        let mut stmt = self.conn.prepare(
            "SELECT b.id, b.duration_secs,
                    (SELECT group_concat(name, char(10)) FROM
                       (SELECT name FROM scripts WHERE backup_id = b.id ORDER BY seq))
               FROM backups b
              WHERE b.uuid = ?1 AND b.duration_secs IS NOT NULL
                AND b.status IN ('success', 'warning', 'damaged')
              ORDER BY b.id DESC LIMIT 50",
        )?;
        let wanted = scripts.join("\n");
        let rows = stmt.query_map([uuid], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, f64>(1)?, r.get::<_, Option<String>>(2)?))
        })?;
        let mut last = Vec::new();
        for row in rows {
            let (id, secs, ran) = row?;
            if ran.unwrap_or_default() == wanted {
                last.push((id, secs));
                if last.len() == 3 {
                    break;
                }
            }
        }
        if last.is_empty() {
            return Ok(None);
        }
        let mut each =
            self.conn.prepare("SELECT duration_secs FROM scripts WHERE backup_id = ?1 ORDER BY seq")?;
        let mut per_script: Vec<Vec<f64>> = vec![Vec::new(); scripts.len()];
        for (id, _) in &last {
            for (i, secs) in each.query_map([id], |r| r.get::<_, f64>(0))?.enumerate() {
                if let Some(v) = per_script.get_mut(i) {
                    v.push(secs?);
                }
            }
        }
        let median = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v.get(v.len() / 2).copied().unwrap_or(0.0)
        };
        Ok(Some(Usual {
            total: median(last.iter().map(|l| l.1).collect()),
            scripts: per_script.into_iter().map(median).collect(),
        }))
    }

    /// Whether the restore drill is due with the next backup of the disk
    /// `uuid`: `every - 1` backups (successful or damaged) since the last
    /// drill, or before the first one (`every` 0: never).
    pub fn drill_due(&self, uuid: &str, every: u32) -> Result<bool> {
        if every == 0 {
            return Ok(false);
        }
        let since: i64 = self.conn.query_row(
            "SELECT count(*) FROM backups WHERE uuid = ?1 AND status IN ('success', 'warning', 'damaged')
               AND id > coalesce((SELECT max(id) FROM backups WHERE uuid = ?1 AND drill IS NOT NULL), 0)",
            [uuid],
            |r| r.get(0),
        )?;
        Ok(since + 1 >= i64::from(every))
    }

    /// The last drill of each backup folder of the disk `uuid`, newest first.
    pub fn drills(&self, uuid: &str) -> Result<Vec<(DateTime<Local>, Drill)>> {
        let mut stmt = self.conn.prepare(
            "SELECT finished, drill FROM backups WHERE uuid = ?1 AND drill IS NOT NULL ORDER BY id DESC LIMIT 1000",
        )?;
        let rows = stmt.query_map([uuid], |r| Ok((r.get::<_, Option<i64>>(0)?, r.get::<_, String>(1)?)))?;
        let mut out: Vec<(DateTime<Local>, Drill)> = Vec::new();
        for row in rows {
            let (finished, text) = row?;
            let Ok(d) = serde_json::from_str::<Drill>(&text) else { continue };
            if !out.iter().any(|(_, o)| o.folder == d.folder) {
                out.push((time(finished.unwrap_or_default()), d));
            }
        }
        Ok(out)
    }

    /// Deletes the plug/unplug rows from before `before`; returns how many.
    pub fn prune_plugs(&self, before: DateTime<Local>) -> Result<usize> {
        Ok(self.conn.execute("DELETE FROM plugs WHERE time < ?1", [before.timestamp()])?)
    }

    pub fn plug(&self, uuid: &str, disk: Option<&str>, device: &Path, plugged: bool) -> Result<()> {
        self.conn.execute(
            "INSERT INTO plugs (time, uuid, disk, device, action) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                Local::now().timestamp(),
                uuid,
                disk,
                device.display().to_string(),
                if plugged { "plugged" } else { "unplugged" }
            ],
        )?;
        Ok(())
    }

    /// The newest backups first, of one disk (by name) or all.
    pub fn backups(&self, disk: Option<&str>, limit: usize) -> Result<Vec<BackupRow>> {
        self.select_backups("?1 IS NULL OR disk = ?1", params![disk], limit, 0)
    }

    /// The last backup of the disk `uuid`.
    pub fn last_backup(&self, uuid: &str) -> Result<Option<BackupRow>> {
        Ok(self.select_backups("uuid = ?1", params![uuid], 1, 0)?.pop())
    }

    /// One backup by its id.
    pub fn backup(&self, id: i64) -> Result<Option<BackupRow>> {
        Ok(self.select_backups("id = ?1", params![id], 1, 0)?.pop())
    }

    /// One page of backups, newest first, of one disk (by name) and/or
    /// with one status; and how many there are in all.
    pub fn page(
        &self,
        disk: Option<&str>,
        status: Option<Status>,
        offset: usize,
        limit: usize,
    ) -> Result<(Vec<BackupRow>, u64)> {
        const FILTER: &str = "(?1 IS NULL OR disk = ?1) AND (?2 IS NULL OR status = ?2)";
        let status = status.map(Status::as_str);
        let total: i64 = self.conn.query_row(
            &format!("SELECT COUNT(*) FROM backups WHERE {FILTER}"),
            params![disk, status],
            |r| r.get(0),
        )?;
        Ok((self.select_backups(FILTER, params![disk, status], limit, offset)?, total as u64))
    }

    /// The last pull of each host, newest first: when it finished, onto
    /// which disk, and how it went (`tetras-back hosts`).
    pub fn last_pulls(&self) -> Result<Vec<(DateTime<Local>, String, HostPull)>> {
        let mut stmt = self.conn.prepare(
            "SELECT COALESCE(finished, started), disk, hosts FROM backups WHERE hosts IS NOT NULL
             ORDER BY id DESC LIMIT 1000",
        )?;
        let rows =
            stmt.query_map([], |r| Ok((time(r.get(0)?), r.get::<_, String>(1)?, json_column(r, 2)?)))?;
        let mut out: Vec<(DateTime<Local>, String, HostPull)> = Vec::new();
        for row in rows {
            let (when, disk, hosts): (_, _, Option<Vec<HostPull>>) = row?;
            for h in hosts.unwrap_or_default() {
                if !out.iter().any(|(_, _, o)| o.name == h.name) {
                    out.push((when, disk.clone(), h));
                }
            }
        }
        Ok(out)
    }

    /// The names of the disks in the history, for filters.
    pub fn disk_names(&self) -> Result<Vec<String>> {
        let mut stmt = self.conn.prepare("SELECT DISTINCT disk FROM backups ORDER BY disk")?;
        let names = stmt.query_map([], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?;
        Ok(names)
    }

    fn select_backups(
        &self,
        condition: &str,
        params: impl rusqlite::Params,
        limit: usize,
        offset: usize,
    ) -> Result<Vec<BackupRow>> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT id, disk, uuid, device, started, finished, status, duration_secs, bytes_written, files,
                    free_before, free_after, pruned, log, error, drill, shrunk, folders, hosts, disk_size
             FROM backups WHERE {condition} ORDER BY started DESC, id DESC LIMIT {limit} OFFSET {offset}"
        ))?;
        let count = |v: Option<i64>| v.map(|b| b as u64);
        let rows = stmt.query_map(params, |r| {
            Ok(BackupRow {
                id: r.get(0)?,
                disk: r.get(1)?,
                uuid: r.get(2)?,
                device: r.get(3)?,
                started: time(r.get(4)?),
                finished: r.get::<_, Option<i64>>(5)?.map(time),
                status: r.get::<_, String>(6)?.parse().map_err(|e: String| {
                    rusqlite::Error::FromSqlConversionFailure(6, rusqlite::types::Type::Text, e.into())
                })?,
                duration_secs: r.get(7)?,
                bytes_written: count(r.get(8)?),
                files: count(r.get(9)?),
                free_before: count(r.get(10)?),
                free_after: count(r.get(11)?),
                pruned: json_column(r, 12)?.unwrap_or_default(),
                log: PathBuf::from(r.get::<_, String>(13)?),
                error: r.get(14)?,
                scripts: Vec::new(),
                drill: json_column(r, 15)?,
                shrunk: json_column(r, 16)?.unwrap_or_default(),
                folders: json_column(r, 17)?.unwrap_or_default(),
                hosts: json_column(r, 18)?.unwrap_or_default(),
                disk_size: count(r.get(19)?),
            })
        })?;
        let mut out = rows.collect::<rusqlite::Result<Vec<_>>>()?;
        let mut stmt = self.conn.prepare(
            "SELECT name, exit_code, outcome, duration_secs FROM scripts WHERE backup_id = ?1 ORDER BY seq",
        )?;
        for b in &mut out {
            b.scripts = stmt
                .query_map([b.id], |r| {
                    Ok(ScriptReport {
                        script: r.get(0)?,
                        exit_code: r.get(1)?,
                        outcome: r.get(2)?,
                        duration_secs: r.get(3)?,
                    })
                })?
                .collect::<rusqlite::Result<_>>()?;
        }
        Ok(out)
    }

    /// The newest plug events first.
    pub fn plugs(&self, disk: Option<&str>, limit: usize) -> Result<Vec<PlugRow>> {
        let mut stmt = self.conn.prepare(
            "SELECT time, uuid, disk, device, action FROM plugs WHERE ?1 IS NULL OR disk = ?1
             ORDER BY time DESC, id DESC LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![disk, limit as i64], |r| {
            Ok(PlugRow {
                time: time(r.get(0)?),
                uuid: r.get(1)?,
                disk: r.get(2)?,
                device: r.get(3)?,
                action: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The last backup and the last successful one of the disk `uuid`.
    pub fn summary(&self, uuid: &str) -> Result<DiskSummary> {
        let last = self.last_backup(uuid)?;
        let success: Option<i64> = self.conn.query_row(
            "SELECT max(finished) FROM backups WHERE uuid = ?1 AND status IN ('success', 'warning')",
            [uuid],
            |r| r.get(0),
        )?;
        Ok(DiskSummary { last, last_success: success.map(time) })
    }

    /// When the last reminder about `uuid` was sent.
    pub fn last_reminder(&self, uuid: &str) -> Result<Option<DateTime<Local>>> {
        let t: Option<i64> = self
            .conn
            .query_row("SELECT sent FROM reminders WHERE uuid = ?1", [uuid], |r| r.get(0))
            .optional()?;
        Ok(t.map(time))
    }

    pub fn reminder_sent(&self, uuid: &str, at: DateTime<Local>) -> Result<()> {
        self.conn.execute(
            "INSERT INTO reminders (uuid, sent) VALUES (?1, ?2) ON CONFLICT (uuid) DO UPDATE SET sent = ?2",
            params![uuid, at.timestamp()],
        )?;
        Ok(())
    }

    /// Puts a formatted mail in the outbox, due now; returns its id.
    pub fn enqueue_mail(
        &self,
        subject: &str,
        sender: &str,
        recipients: &[String],
        message: &[u8],
    ) -> Result<i64> {
        let now = Local::now().timestamp();
        self.conn.execute(
            "INSERT INTO outbox (created, subject, sender, recipients, message, next_attempt, state)
             VALUES (?1, ?2, ?3, ?4, ?5, ?1, 'pending')",
            params![now, subject, sender, serde_json::to_string(recipients)?, message],
        )?;
        Ok(self.conn.last_insert_rowid())
    }

    /// Pending mails whose next attempt is due at `now`, oldest first.
    pub fn due_mails(&self, now: DateTime<Local>) -> Result<Vec<Queued>> {
        let mut stmt = self.conn.prepare(
            "SELECT id, subject, sender, recipients, message, attempts FROM outbox
             WHERE state = 'pending' AND next_attempt <= ?1 ORDER BY id",
        )?;
        let rows = stmt.query_map([now.timestamp()], |r| {
            let recipients: String = r.get(3)?;
            Ok(Queued {
                id: r.get(0)?,
                subject: r.get(1)?,
                sender: r.get(2)?,
                recipients: serde_json::from_str(&recipients).unwrap_or_default(),
                message: r.get(4)?,
                attempts: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// When the next pending mail is due.
    pub fn next_mail_due(&self) -> Result<Option<DateTime<Local>>> {
        let t: Option<i64> =
            self.conn.query_row("SELECT min(next_attempt) FROM outbox WHERE state = 'pending'", [], |r| {
                r.get(0)
            })?;
        Ok(t.map(time))
    }

    pub fn mail_sent(&self, id: i64) -> Result<()> {
        self.conn.execute(
            // The message (with its log attached) is not kept once delivered:
            // the log file is still in log_dir.
            "UPDATE outbox SET state = 'sent', attempts = attempts + 1, last_error = NULL, message = x''
             WHERE id = ?1",
            [id],
        )?;
        Ok(())
    }

    /// Records a failed attempt: the mail is tried again at `retry`, or
    /// abandoned (kept, marked so) when `retry` is `None`.
    pub fn mail_failed(&self, id: i64, error: &str, retry: Option<DateTime<Local>>) -> Result<()> {
        self.conn.execute(
            "UPDATE outbox SET attempts = attempts + 1, last_error = ?2,
                state = CASE WHEN ?3 IS NULL THEN 'abandoned' ELSE 'pending' END,
                next_attempt = coalesce(?3, next_attempt) WHERE id = ?1",
            params![id, error, retry.map(|t| t.timestamp())],
        )?;
        Ok(())
    }

    /// (pending, abandoned) mails in the outbox.
    pub fn outbox_counts(&self) -> Result<(u64, u64)> {
        Ok(self.conn.query_row(
            "SELECT count(*) FILTER (WHERE state = 'pending'), count(*) FILTER (WHERE state = 'abandoned') FROM outbox",
            [],
            |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plug_rows_older_than_the_limit_are_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let h = History::open(&dir.path().join("h.sqlite")).unwrap();
        h.plug("u", Some("office"), Path::new("/dev/x"), true).unwrap();
        h.conn.execute("UPDATE plugs SET time = time - 400 * 86400", []).unwrap();
        h.plug("u", Some("office"), Path::new("/dev/x"), false).unwrap();
        assert_eq!(h.prune_plugs(Local::now() - chrono::Duration::days(365)).unwrap(), 1);
        assert_eq!(h.plugs(None, 10).unwrap().len(), 1);
    }

    #[test]
    fn migrations_apply_once_and_a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("h.sqlite");
        let h = History::open(&p).unwrap();
        assert_eq!(h.version().unwrap(), MIGRATIONS.len() as i64);
        let job = Job {
            uuid: "u".into(),
            name: "office".into(),
            device: "/dev/x".into(),
            devnum: 0,
            fstype: "ext4".into(),
            identity: None,
            drill: false,
            last_written: None,
        };
        let id = h.backup_started(&job, Local::now(), Path::new("/l")).unwrap();
        drop(h);
        let h = History::open(&p).unwrap();
        assert_eq!(h.close_interrupted().unwrap(), 1);
        let rows = h.backups(None, 10).unwrap();
        assert_eq!((rows[0].id, rows[0].status.as_str()), (id, "interrupted"));
        h.conn.pragma_update(None, "user_version", 99).unwrap();
        drop(h);
        let e = format!("{:#}", History::open(&p).err().unwrap());
        assert!(e.contains("h.sqlite") && e.contains("newer tetras-back"), "{e}");
        let e = format!("{:#}", History::open_read_only(&p).err().unwrap());
        assert!(e.contains("newer tetras-back"), "{e}");
    }

    #[test]
    fn the_usual_duration_is_that_of_backups_with_the_same_scripts() {
        let dir = tempfile::tempdir().unwrap();
        let h = History::open(&dir.path().join("h.sqlite")).unwrap();
        let add = |secs: f64, status: &str, scripts: &[&str]| {
            h.conn
                .execute(
                    "INSERT INTO backups (uuid, disk, device, started, status, duration_secs, log)
                     VALUES ('u', 'office', '/dev/x', 0, ?1, ?2, '/l')",
                    rusqlite::params![status, secs],
                )
                .unwrap();
            let id = h.conn.last_insert_rowid();
            for (seq, name) in scripts.iter().enumerate() {
                h.conn
                    .execute(
                        "INSERT INTO scripts VALUES (?1, ?2, ?3, 0, 'succeeded', 1.0)",
                        rusqlite::params![id, seq as i64, name],
                    )
                    .unwrap();
            }
        };
        let both = ["a.sh".to_string(), "b.sh".to_string()];
        assert_eq!(h.usual_duration("u", &both).unwrap(), None);
        add(100.0, "success", &["a.sh", "b.sh"]);
        add(10.0, "success", &["b.sh", "a.sh"]);
        add(30.0, "success", &["a.sh", "b.sh"]);
        add(5.0, "failed", &["a.sh", "b.sh"]);
        add(60.0, "warning", &["a.sh", "b.sh"]);
        let usual = h.usual_duration("u", &both).unwrap().unwrap();
        assert_eq!((usual.total, usual.scripts), (60.0, vec![1.0, 1.0]));
        assert_eq!(h.usual_duration("u", &both[..1]).unwrap(), None);
        assert_eq!(h.usual_duration("other", &both).unwrap(), None);
    }

    #[test]
    fn a_file_that_is_not_sqlite_is_named_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("h.sqlite");
        std::fs::write(&p, b"this is not a database, but somebody's data\n").unwrap();
        let e = format!("{:#}", History::open(&p).err().unwrap());
        assert!(e.contains("h.sqlite"), "{e}");
        assert_eq!(std::fs::read(&p).unwrap(), b"this is not a database, but somebody's data\n");
    }

    #[test]
    fn outbox_retries_then_abandons() {
        let dir = tempfile::tempdir().unwrap();
        let h = History::open(&dir.path().join("h.sqlite")).unwrap();
        let id = h.enqueue_mail("s", "a@b", &["c@d".into()], b"msg").unwrap();
        assert_eq!(h.due_mails(Local::now()).unwrap().len(), 1);
        let later = Local::now() + chrono::Duration::seconds(60);
        h.mail_failed(id, "refused", Some(later)).unwrap();
        assert!(h.due_mails(Local::now()).unwrap().is_empty());
        assert_eq!(h.next_mail_due().unwrap().map(|t| t.timestamp()), Some(later.timestamp()));
        let q = h.due_mails(later).unwrap();
        assert_eq!((q[0].attempts, q[0].recipients.clone()), (1, vec!["c@d".to_owned()]));
        h.mail_failed(id, "refused", None).unwrap();
        assert_eq!(h.outbox_counts().unwrap(), (0, 1));
        let sent = h.enqueue_mail("s2", "a@b", &["c@d".into()], b"a long message").unwrap();
        h.mail_sent(sent).unwrap();
        let kept: Vec<u8> =
            h.conn.query_row("SELECT message FROM outbox WHERE id = ?1", [sent], |r| r.get(0)).unwrap();
        assert!(kept.is_empty(), "a sent mail's body is not kept");
        assert_eq!(h.outbox_counts().unwrap(), (0, 1));
    }
}
