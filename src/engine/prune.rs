//! `prune`: deletes the oldest dated backup folders of a directory until
//! the file system holding it has the free space asked for, and/or those a
//! keep policy (borg's `--keep-last/daily/weekly/monthly/yearly`) does not
//! keep. Never the newest complete backup, never a folder being written,
//! never an entry whose name does not start with a date, never through a
//! symbolic link. "Newest" is never a name dated in the future: anyone can
//! name a folder 2099-01-01 (and a clock that jumped does), and such a
//! folder is reported as suspicious instead of protecting itself while the
//! real backups are deleted.

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{anyhow, Context, Result};
use chrono::{Datelike, NaiveDateTime};
use serde::Serialize;

use super::{dated_name, fsx, is_partial, manifest};

/// The free space to reach: bytes, or a percentage of the file system.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FreeTarget {
    Bytes(u64),
    Percent(f64),
}

impl FromStr for FreeTarget {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(p) = s.strip_suffix('%') {
            let p: f64 = p.trim().parse().map_err(|_| format!("{s:?} is not a percentage"))?;
            if !(0.0..=100.0).contains(&p) {
                return Err(format!("{s:?}: a percentage is between 0 and 100"));
            }
            return Ok(FreeTarget::Percent(p));
        }
        s.parse::<bytesize::ByteSize>()
            .map(|b| FreeTarget::Bytes(b.as_u64()))
            .map_err(|_| format!("{s:?} is neither a size (20GiB, 500MB, 1048576) nor a percentage (10%)"))
    }
}

/// How many backups each rule keeps (borg's semantics).
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Keep {
    pub last: usize,
    pub daily: usize,
    pub weekly: usize,
    pub monthly: usize,
    pub yearly: usize,
}

impl Keep {
    fn any(&self) -> bool {
        self.last + self.daily + self.weekly + self.monthly + self.yearly > 0
    }
}

pub struct Options {
    pub dir: PathBuf,
    pub min_free: Option<FreeTarget>,
    pub keep: Keep,
    pub dry_run: bool,
    /// Folders never deleted whatever they are named: the newest one the
    /// daemon's history says this server wrote (`TETRAS_BACK_KEEP`).
    pub keep_names: Vec<OsString>,
}

#[derive(Debug, Serialize)]
pub struct Deleted {
    pub name: String,
    pub reason: &'static str,
    /// Bytes this frees, as measured (or estimated in a dry run).
    pub freed: u64,
}

#[derive(Debug, Serialize)]
pub struct Outcome {
    pub dir: PathBuf,
    pub dry_run: bool,
    pub free_before: u64,
    pub free_after: u64,
    pub target: Option<u64>,
    pub deleted: Vec<Deleted>,
    /// Backups left, oldest first.
    pub kept: Vec<String>,
    /// Folders being written by a running process, left alone.
    pub in_use: Vec<String>,
    /// Folders dated in the future: never counted as the newest backup.
    pub suspicious: Vec<String>,
    /// Whether the free-space target (if any) is met.
    pub met: bool,
}

/// What a run has deleted so far.
struct Progress {
    free: u64,
    deleted: Vec<Deleted>,
    gone: HashSet<usize>,
    /// Inodes with several links met in a dry run's estimate.
    seen: HashMap<(u64, u64), u32>,
}

/// A dated backup folder.
#[derive(Debug, Clone)]
pub struct Backup {
    pub name: OsString,
    pub time: NaiveDateTime,
    pub complete: bool,
    /// Being written now (a running process holds its lock).
    pub in_use: bool,
    /// Dated more than a day ahead of this machine's clock.
    pub future: bool,
    /// A snapshot in it found a source much smaller than the last time
    /// (it carries the shrink note).
    pub shrunk: bool,
}

/// How far ahead of the clock a dated name may be (time zones, a clock set
/// back by hand) before it is suspicious.
const FUTURE_SLACK: chrono::TimeDelta = chrono::TimeDelta::days(1);

impl Backup {
    /// Complete, and not dated in the future: a candidate for "the newest".
    pub fn real_and_complete(&self) -> bool {
        self.complete && !self.future
    }
}

pub fn run(opts: &Options) -> Result<Outcome> {
    let dir = fsx::open_dir_strict(&opts.dir)?;
    let mut backups = list(dir.as_fd()).with_context(|| format!("cannot list {}", opts.dir.display()))?;
    backups.sort_by(|a, b| (a.time, &a.name).cmp(&(b.time, &b.name)));
    let (free_before, total) = fsx::free_space(dir.as_fd()).context("statvfs")?;
    let target = opts.min_free.map(|t| match t {
        FreeTarget::Bytes(b) => b,
        FreeTarget::Percent(p) => (total as f64 * p / 100.0).ceil() as u64,
    });
    let newest = backups.iter().rposition(Backup::real_and_complete);
    // While the newest backups found a source shrunk (a /home that did not
    // mount), the last one before the shrink is what holds the data.
    let before_shrink = newest
        .filter(|&n| backups[n].shrunk)
        .and_then(|n| backups[..n].iter().rposition(|b| b.real_and_complete() && !b.shrunk));
    let protected = |i: usize| {
        Some(i) == newest || Some(i) == before_shrink || opts.keep_names.contains(&backups[i].name)
    };

    // In order: interrupted runs, what the keep policy drops, then the
    // oldest backups for as long as space is short.
    let mut plan: Vec<(usize, &'static str)> = Vec::new();
    for (i, b) in backups.iter().enumerate() {
        if !b.complete && !b.in_use {
            plan.push((i, "interrupted backup"));
        }
    }
    if opts.keep.any() {
        // A folder dated in the future takes no place in the policy (it
        // would be "the last" for ever): it is left alone and reported.
        let complete: Vec<(usize, NaiveDateTime)> = backups
            .iter()
            .enumerate()
            .filter(|(_, b)| b.real_and_complete())
            .map(|(i, b)| (i, b.time))
            .collect();
        let kept = keep_policy(&complete, &opts.keep);
        for &(i, _) in &complete {
            if !kept.contains(&i) && !protected(i) {
                plan.push((i, "not kept by the keep policy"));
            }
        }
    }

    let mut done =
        Progress { free: free_before, deleted: Vec::new(), gone: HashSet::new(), seen: HashMap::new() };
    let delete = |done: &mut Progress, i: usize, reason: &'static str| -> Result<()> {
        let b: &Backup = &backups[i];
        let freed = if opts.dry_run {
            estimate_freed(&opts.dir.join(&b.name), &mut done.seen)
        } else {
            fsx::remove_tree(dir.as_fd(), &b.name)
                .with_context(|| format!("cannot delete {}", opts.dir.join(&b.name).display()))?;
            crate::fault::point("prune::after_deletion");
            let (now, _) = fsx::free_space(dir.as_fd()).context("statvfs")?;
            now.saturating_sub(done.free)
        };
        done.free += freed;
        done.gone.insert(i);
        done.deleted.push(Deleted { name: b.name.to_string_lossy().into_owned(), reason, freed });
        Ok(())
    };
    for (i, reason) in plan {
        delete(&mut done, i, reason)?;
    }
    if let Some(target) = target {
        for (i, b) in backups.iter().enumerate() {
            if done.free >= target {
                break;
            }
            if !done.gone.contains(&i) && b.complete && !protected(i) {
                delete(&mut done, i, "oldest, to free space")?;
            }
        }
    }
    let gone = &done.gone;
    let kept = backups
        .iter()
        .enumerate()
        .filter(|(i, b)| !gone.contains(i) && !b.in_use)
        .map(|(_, b)| b.name.to_string_lossy().into_owned())
        .collect();
    let in_use = backups.iter().filter(|b| b.in_use).map(|b| b.name.to_string_lossy().into_owned()).collect();
    let suspicious =
        backups.iter().filter(|b| b.future).map(|b| b.name.to_string_lossy().into_owned()).collect();
    let free_after =
        if opts.dry_run { done.free } else { fsx::free_space(dir.as_fd()).context("statvfs")?.0 };
    Ok(Outcome {
        dir: opts.dir.clone(),
        dry_run: opts.dry_run,
        free_before,
        free_after,
        target,
        deleted: done.deleted,
        kept,
        in_use,
        suspicious,
        met: target.is_none_or(|t| free_after >= t),
    })
}

/// The name of the newest complete backup folder in `dir`, if any.
pub fn newest_complete(dir: &Path) -> Result<Option<OsString>> {
    let fd = fsx::open_dir_strict(dir)?;
    let backups = list(fd.as_fd()).with_context(|| format!("cannot list {}", dir.display()))?;
    Ok(backups
        .into_iter()
        .filter(Backup::real_and_complete)
        .max_by(|a, b| (a.time, &a.name).cmp(&(b.time, &b.name)))
        .map(|b| b.name))
}

/// The dated folders of `dir`. A folder named `*.partial`, or holding a
/// `*.partial` entry, is incomplete; it is in use while a running process
/// holds its lock.
pub fn list(dir: BorrowedFd) -> Result<Vec<Backup>> {
    let mut out = Vec::new();
    let ahead = chrono::Local::now().naive_local() + FUTURE_SLACK;
    for name in fsx::read_names(dir)? {
        let Some(time) = dated_name(name.as_bytes()) else { continue };
        let Ok(st) = fsx::lstat_at(dir, &name) else { continue };
        if !fsx::is_dir(&st) {
            continue; // a symlink or a file with a date for a name: not ours
        }
        let (complete, in_use, shrunk) = if is_partial(name.as_bytes()) {
            (false, fsx::partial_in_use(dir, &name), false)
        } else {
            let sub = fsx::open_read(dir, &name, true).map_err(|e| anyhow!("{name:?}: {}", e.desc()))?;
            let names = fsx::read_names(sub.as_fd())?;
            let partials: Vec<&OsString> = names.iter().filter(|n| is_partial(n.as_bytes())).collect();
            // The folder is a snapshot itself, or holds snapshots.
            let note = OsStr::new(manifest::SHRUNK_NOTE);
            let shrunk = names.iter().any(|n| n == note)
                || names.iter().any(|n| {
                    fsx::open_read(sub.as_fd(), n, true)
                        .is_ok_and(|part| fsx::lstat_at(part.as_fd(), note).is_ok())
                });
            (partials.is_empty(), partials.iter().any(|p| fsx::partial_in_use(sub.as_fd(), p)), shrunk)
        };
        out.push(Backup { name, time, complete, in_use, future: time > ahead, shrunk });
    }
    Ok(out)
}

/// Space deleting `path` would free, counting a hard-linked file only once
/// its last link is among those deleted (`seen` carries over between the
/// folders of one dry run).
fn estimate_freed(path: &Path, seen: &mut HashMap<(u64, u64), u32>) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut freed = 0;
    for e in walkdir::WalkDir::new(path).follow_links(false).same_file_system(true).into_iter().flatten() {
        let Ok(m) = e.metadata() else { continue };
        let last = m.is_dir() || m.nlink() == 1 || {
            let count = seen.entry((m.dev(), m.ino())).or_insert(0);
            *count += 1;
            u64::from(*count) == m.nlink()
        };
        if last {
            freed += m.blocks() * 512;
        }
    }
    freed
}

/// Indices (into `backups`, complete ones with their times, oldest first)
/// that the policy keeps: for each rule in borg's order, walking from the
/// newest, the first backup of each period not already kept, up to the
/// rule's count; if a rule runs out of backups, it keeps the oldest.
fn keep_policy(backups: &[(usize, NaiveDateTime)], keep: &Keep) -> HashSet<usize> {
    type Period = fn(&NaiveDateTime) -> (i32, u32, u32, u32, u32, u32);
    let rules: [(usize, Period); 5] = [
        (keep.last, |t| (t.year(), t.month(), t.day(), t.hour(), t.minute(), t.second())),
        (keep.daily, |t| (t.year(), t.month(), t.day(), 0, 0, 0)),
        (keep.weekly, |t| (t.iso_week().year(), t.iso_week().week(), 0, 0, 0, 0)),
        (keep.monthly, |t| (t.year(), t.month(), 0, 0, 0, 0)),
        (keep.yearly, |t| (t.year(), 0, 0, 0, 0, 0)),
    ];
    use chrono::Timelike;
    let mut kept = HashSet::new();
    for (n, period) in rules {
        if n == 0 {
            continue;
        }
        let mut count = 0;
        let mut last = None;
        for &(i, t) in backups.iter().rev() {
            let p = period(&t);
            if last != Some(p) {
                last = Some(p);
                if kept.insert(i) {
                    count += 1;
                    if count == n {
                        break;
                    }
                }
            }
        }
        if count < n {
            if let Some(&(oldest, _)) = backups.first() {
                kept.insert(oldest);
            }
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_targets() {
        assert_eq!("10%".parse(), Ok(FreeTarget::Percent(10.0)));
        assert_eq!("1GiB".parse(), Ok(FreeTarget::Bytes(1 << 30)));
        assert_eq!("1048576".parse(), Ok(FreeTarget::Bytes(1 << 20)));
        assert!("150%".parse::<FreeTarget>().unwrap_err().contains("between 0 and 100"));
        assert!("lots".parse::<FreeTarget>().unwrap_err().contains("\"lots\""));
    }

    fn t(s: &str) -> NaiveDateTime {
        dated_name(s.as_bytes()).unwrap()
    }

    /// A folder named for 2099 (planted, or written while the clock was
    /// wrong) is never "the newest": prune keeps the newest real backup, and
    /// the keep policy does not count it.
    #[test]
    fn a_folder_dated_in_the_future_never_protects_itself() {
        let t = tempfile::tempdir().unwrap();
        for name in ["2026-01-01_00-00-00_a", "2026-01-02_00-00-00_b", "2099-01-01_00-00-00_fake"] {
            std::fs::create_dir(t.path().join(name)).unwrap();
            std::fs::write(t.path().join(name).join("data"), name).unwrap();
        }
        let o = |min_free, keep, dry_run| Options {
            dir: t.path().to_owned(),
            min_free,
            keep,
            dry_run,
            keep_names: Vec::new(),
        };
        let out = run(&o(None, Keep { last: 1, ..Keep::default() }, true)).unwrap();
        let deleted: Vec<&str> = out.deleted.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(deleted, ["2026-01-01_00-00-00_a"], "the policy keeps the newest real one");
        assert_eq!(out.suspicious, ["2099-01-01_00-00-00_fake"]);
        let out = run(&o(Some(FreeTarget::Percent(100.0)), Keep::default(), false)).unwrap();
        let deleted: Vec<&str> = out.deleted.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(deleted, ["2026-01-01_00-00-00_a", "2099-01-01_00-00-00_fake"]);
        assert_eq!(out.kept, ["2026-01-02_00-00-00_b"], "the newest real backup stays");
        assert_eq!(newest_complete(t.path()).unwrap().unwrap(), "2026-01-02_00-00-00_b");
        // What the history says this server wrote is kept whatever its name.
        std::fs::create_dir(t.path().join("2026-01-01_00-00-00_a")).unwrap();
        let mut keep = o(Some(FreeTarget::Percent(100.0)), Keep::default(), true);
        keep.keep_names = vec!["2026-01-01_00-00-00_a".into()];
        let out = run(&keep).unwrap();
        assert!(out.deleted.iter().all(|d| d.name != "2026-01-01_00-00-00_a"), "{:?}", out.deleted);
    }

    /// While the newest backups found a source shrunk, the last one before
    /// the shrink is kept, by the policy and when space is short.
    #[test]
    fn the_last_backup_before_a_shrink_is_kept() {
        let t = tempfile::tempdir().unwrap();
        for name in
            ["2026-01-01_00-00-00", "2026-01-02_00-00-00", "2026-01-03_00-00-00", "2026-01-04_00-00-00"]
        {
            std::fs::create_dir_all(t.path().join(name).join("Donnees")).unwrap();
        }
        for shrunk in ["2026-01-03_00-00-00", "2026-01-04_00-00-00"] {
            std::fs::write(t.path().join(shrunk).join("Donnees").join(manifest::SHRUNK_NOTE), "{}\n")
                .unwrap();
        }
        let o = |min_free, keep| Options {
            dir: t.path().to_owned(),
            min_free,
            keep,
            dry_run: true,
            keep_names: Vec::new(),
        };
        let deleted = |o: Outcome| o.deleted.into_iter().map(|d| d.name).collect::<Vec<_>>();
        assert_eq!(
            deleted(run(&o(None, Keep { last: 1, ..Keep::default() })).unwrap()),
            ["2026-01-01_00-00-00", "2026-01-03_00-00-00"],
            "the newest, and the last before the shrink, stay"
        );
        assert_eq!(
            deleted(run(&o(Some(FreeTarget::Percent(100.0)), Keep::default())).unwrap()),
            ["2026-01-01_00-00-00", "2026-01-03_00-00-00"]
        );
        // Once a backup is whole again, the shrink is over.
        std::fs::remove_file(t.path().join("2026-01-04_00-00-00/Donnees").join(manifest::SHRUNK_NOTE))
            .unwrap();
        assert_eq!(
            deleted(run(&o(None, Keep { last: 1, ..Keep::default() })).unwrap()),
            ["2026-01-01_00-00-00", "2026-01-02_00-00-00", "2026-01-03_00-00-00"]
        );
    }

    #[test]
    fn keep_daily_takes_the_newest_of_each_day() {
        let b: Vec<(usize, NaiveDateTime)> =
            ["2026-11-01_08-00-00", "2026-11-01_20-00-00", "2026-11-02_08-00-00", "2026-11-03_08-00-00"]
                .iter()
                .enumerate()
                .map(|(i, s)| (i, t(s)))
                .collect();
        let kept = keep_policy(&b, &Keep { daily: 2, ..Keep::default() });
        assert_eq!(kept, HashSet::from([3, 2]));
        let kept = keep_policy(&b, &Keep { daily: 5, ..Keep::default() });
        assert_eq!(kept, HashSet::from([3, 2, 1, 0]), "runs out: the oldest is kept too");
        let kept = keep_policy(&b, &Keep { last: 1, daily: 1, ..Keep::default() });
        assert_eq!(kept, HashSet::from([3, 2]), "a backup kept by an earlier rule does not count");
    }
}
