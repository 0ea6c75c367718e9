//! `verify`: reads a snapshot again and compares it with the manifest
//! written when it was made: missing, changed and extra entries.

use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{anyhow, Context, Result};
use nix::sys::stat::{FileStat, SFlag};
use serde::Serialize;

use super::fsx;
use super::manifest::{self, Entry, Kind, Manifest};
use super::progress;
use super::snapshot::hash_file;

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub backup: PathBuf,
    pub entries: u64,
    pub files: u64,
    pub bytes: u64,
    pub missing: Vec<PathBuf>,
    /// Path and what differs.
    pub changed: Vec<(PathBuf, String)>,
    pub extra: Vec<PathBuf>,
}

impl Report {
    pub fn intact(&self) -> bool {
        self.missing.is_empty() && self.changed.is_empty() && self.extra.is_empty()
    }

    /// Each difference as a line: `missing: P`, `changed: P (what)`,
    /// `extra: P`, with the paths below `under`.
    pub fn problems<'a>(&'a self, under: &'a Path) -> impl Iterator<Item = String> + 'a {
        let missing = self.missing.iter().map(move |p| format!("missing: {}", under.join(p).display()));
        let changed = self
            .changed
            .iter()
            .map(move |(p, what)| format!("changed: {} ({what})", under.join(p).display()));
        let extra = self.extra.iter().map(move |p| format!("extra: {}", under.join(p).display()));
        missing.chain(changed).chain(extra)
    }

    fn add(&mut self, mut part: Report) {
        self.entries += part.entries;
        self.files += part.files;
        self.bytes += part.bytes;
        self.missing.append(&mut part.missing);
        self.changed.append(&mut part.changed);
        self.extra.append(&mut part.extra);
    }
}

pub fn run(backup: &Path) -> Result<Report> {
    let root = fsx::open_dir_strict(backup)?;
    let file = fsx::open_file(root.as_fd(), OsStr::new(manifest::NAME)).map_err(|e| {
        anyhow!(
            "{}: {e} (not a snapshot made by tetras-back, or one that never completed)",
            backup.join(manifest::NAME).display(),
        )
    })?;
    let expected = Manifest::open(file, &backup.join(manifest::NAME))?;
    let report = Mutex::new(Report { backup: backup.to_owned(), ..Report::default() });
    let done = progress::Counter::default();
    let totals = (Some(expected.totals.files), Some(expected.totals.bytes));

    // Each directory is read in name order beside its block of the manifest.
    let walk = || {
        super::walk::par_walk(vec![PathBuf::new()], |rel| -> Result<Vec<PathBuf>> {
            let dir = fsx::open_beneath(root.as_fd(), &rel)
                .map_err(|e| anyhow!("{}: {}", backup.join(&rel).display(), e.desc()))?;
            let mut names =
                fsx::read_names(dir.as_fd()).with_context(|| backup.join(&rel).display().to_string())?;
            names.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
            let mut want = expected.children(&rel);
            let mut here = Report::default();
            let mut subdirs = Vec::new();
            for name in names {
                let path = rel.join(&name);
                if manifest::is_ours(&path) {
                    continue;
                }
                let st = fsx::lstat_at(dir.as_fd(), &name)
                    .with_context(|| backup.join(&path).display().to_string())?;
                // A missing directory is reported once, not with what it held.
                let Some(want) = want.find(&name, |gone| here.missing.push(gone.path))? else {
                    here.extra.push(path);
                    continue;
                };
                let kind = kind_of(&st);
                if kind == Kind::Dir && want.kind == Kind::Dir {
                    subdirs.push(path.clone());
                }
                let difference = if kind != want.kind {
                    Some(format!("was {}, is now {}", describe(want.kind), describe(kind)))
                } else {
                    compare(dir.as_fd(), &name, &st, &want)
                        .with_context(|| backup.join(&path).display().to_string())?
                };
                here.entries += 1;
                if kind == Kind::File {
                    here.files += 1;
                    here.bytes += st.st_size as u64;
                }
                if let Some(d) = difference {
                    here.changed.push((path, d));
                }
            }
            for gone in want.rest() {
                here.missing.push(gone?.path);
            }
            done.add(here.files, here.bytes);
            report.lock().unwrap().add(here);
            Ok(subdirs)
        })
    };
    progress::during("verify", totals, || done.get(), walk)?;

    let mut r = report.into_inner().unwrap();
    r.missing.sort();
    r.changed.sort();
    r.extra.sort();
    Ok(r)
}

fn kind_of(st: &FileStat) -> Kind {
    match fsx::kind(st) {
        SFlag::S_IFREG => Kind::File,
        SFlag::S_IFDIR => Kind::Dir,
        SFlag::S_IFLNK => Kind::Symlink,
        _ => Kind::Special,
    }
}

fn describe(k: Kind) -> &'static str {
    match k {
        Kind::File => "a file",
        Kind::Dir => "a directory",
        Kind::Symlink => "a symbolic link",
        Kind::Special => "a special file",
    }
}

/// What differs between an entry and its manifest line, if anything.
fn compare(
    dir: std::os::fd::BorrowedFd,
    name: &OsStr,
    st: &FileStat,
    want: &Entry,
) -> Result<Option<String>> {
    let mut diffs = Vec::new();
    if st.st_mode & 0o7777 != want.mode {
        diffs.push(format!("mode {:o} instead of {:o}", st.st_mode & 0o7777, want.mode));
    }
    if (st.st_uid, st.st_gid) != (want.uid, want.gid) {
        diffs.push(format!("owner {}:{} instead of {}:{}", st.st_uid, st.st_gid, want.uid, want.gid));
    }
    match want.kind {
        Kind::File => {
            if st.st_size as u64 != want.size {
                diffs.push(format!("{} bytes instead of {}", st.st_size, want.size));
            } else {
                let hash = hash_file(&fsx::open_file(dir, name)?)?;
                if Some(hash) != want.hash {
                    diffs.push("content differs".into());
                }
            }
            if (st.st_mtime, st.st_mtime_nsec) != want.mtime {
                diffs.push("modification time differs".into());
            }
        }
        Kind::Symlink => {
            let target = nix::fcntl::readlinkat(dir, name)?;
            if Some(*blake3::hash(target.as_bytes()).as_bytes()) != want.hash {
                diffs.push("link target differs".into());
            }
        }
        Kind::Dir | Kind::Special => {}
    }
    Ok((!diffs.is_empty()).then(|| diffs.join(", ")))
}
