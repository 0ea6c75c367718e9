//! `prune`: deletes the oldest dated backup folders of a directory until
//! the file system holding it has the free space asked for, and/or those a
//! keep policy (borg's `--keep-last/daily/weekly/monthly/yearly`) does not
//! keep. Never the newest complete backup, never a folder being written,
//! never an entry whose name does not start with a date, never through a
//! symbolic link.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{anyhow, Context, Result};
use chrono::{Datelike, NaiveDateTime};
use serde::Serialize;

use super::{dated_name, fsx, is_partial};

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
    let newest = backups.iter().rposition(|b| b.complete);

    // In order: interrupted runs, what the keep policy drops, then the
    // oldest backups for as long as space is short.
    let mut plan: Vec<(usize, &'static str)> = Vec::new();
    for (i, b) in backups.iter().enumerate() {
        if !b.complete && !b.in_use {
            plan.push((i, "interrupted backup"));
        }
    }
    if opts.keep.any() {
        let complete: Vec<(usize, NaiveDateTime)> =
            backups.iter().enumerate().filter(|(_, b)| b.complete).map(|(i, b)| (i, b.time)).collect();
        let kept = keep_policy(&complete, &opts.keep);
        for &(i, _) in &complete {
            if !kept.contains(&i) && Some(i) != newest {
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
            if !done.gone.contains(&i) && b.complete && Some(i) != newest {
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
        met: target.is_none_or(|t| free_after >= t),
    })
}

/// The name of the newest complete backup folder in `dir`, if any.
pub fn newest_complete(dir: &Path) -> Result<Option<OsString>> {
    let fd = fsx::open_dir_strict(dir)?;
    let backups = list(fd.as_fd()).with_context(|| format!("cannot list {}", dir.display()))?;
    Ok(backups
        .into_iter()
        .filter(|b| b.complete)
        .max_by(|a, b| (a.time, &a.name).cmp(&(b.time, &b.name)))
        .map(|b| b.name))
}

/// The dated folders of `dir`. A folder named `*.partial`, or holding a
/// `*.partial` entry, is incomplete; it is in use while a running process
/// holds its lock.
pub fn list(dir: BorrowedFd) -> Result<Vec<Backup>> {
    let mut out = Vec::new();
    for name in fsx::read_names(dir)? {
        let Some(time) = dated_name(name.as_bytes()) else { continue };
        let Ok(st) = fsx::lstat_at(dir, &name) else { continue };
        if !fsx::is_dir(&st) {
            continue; // a symlink or a file with a date for a name: not ours
        }
        let (complete, in_use) = if is_partial(name.as_bytes()) {
            (false, fsx::partial_in_use(dir, &name))
        } else {
            let sub = fsx::open_read(dir, &name, true).map_err(|e| anyhow!("{name:?}: {}", e.desc()))?;
            let partials: Vec<OsString> =
                fsx::read_names(sub.as_fd())?.into_iter().filter(|n| is_partial(n.as_bytes())).collect();
            (partials.is_empty(), partials.iter().any(|p| fsx::partial_in_use(sub.as_fd(), p)))
        };
        out.push(Backup { name, time, complete, in_use });
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
