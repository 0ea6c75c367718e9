//! `verify`: reads a snapshot again and compares it with the manifest
//! written when it was made: missing, changed and extra entries.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::File;
use std::io::BufReader;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{anyhow, Context, Result};
use nix::sys::stat::{FileStat, SFlag};
use serde::Serialize;

use super::fsx;
use super::manifest::{self, Entry, Hash, Kind};
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
}

pub fn run(backup: &Path) -> Result<Report> {
    let root = fsx::open_dir_strict(backup)?;
    let fd = fsx::open_read(root.as_fd(), OsStr::new(manifest::NAME), false).map_err(|e| {
        anyhow!(
            "{}: {} (not a snapshot made by tetras-back, or one that never completed)",
            backup.join(manifest::NAME).display(),
            e.desc()
        )
    })?;
    let expected =
        manifest::by_path(manifest::read(BufReader::new(File::from(fd)), &backup.join(manifest::NAME))?);
    let seen = Mutex::new(HashSet::new());
    let report = Mutex::new(Report { backup: backup.to_owned(), ..Report::default() });
    let hashes: Mutex<HashMap<(u64, u64), Hash>> = Mutex::new(HashMap::new());

    super::walk::par_walk(vec![PathBuf::new()], |rel| -> Result<Vec<PathBuf>> {
        let dir = fsx::open_beneath(root.as_fd(), &rel)
            .map_err(|e| anyhow!("{}: {}", backup.join(&rel).display(), e.desc()))?;
        let mut subdirs = Vec::new();
        let names = fsx::read_names(dir.as_fd()).with_context(|| backup.join(&rel).display().to_string())?;
        for name in names {
            let path = rel.join(&name);
            if path.as_os_str() == manifest::NAME {
                continue;
            }
            let st = fsx::lstat_at(dir.as_fd(), &name)
                .with_context(|| backup.join(&path).display().to_string())?;
            let Some(want) = expected.get(&path) else {
                report.lock().unwrap().extra.push(path);
                continue;
            };
            seen.lock().unwrap().insert(path.clone());
            let kind = kind_of(&st);
            if kind == Kind::Dir && want.kind == Kind::Dir {
                subdirs.push(path.clone());
            }
            let difference = if kind != want.kind {
                Some(format!("was {}, is now {}", describe(want.kind), describe(kind)))
            } else {
                compare(dir.as_fd(), &name, &st, want, &hashes)
                    .with_context(|| backup.join(&path).display().to_string())?
            };
            let mut r = report.lock().unwrap();
            r.entries += 1;
            if kind == Kind::File {
                r.files += 1;
                r.bytes += st.st_size as u64;
            }
            if let Some(d) = difference {
                r.changed.push((path, d));
            }
        }
        Ok(subdirs)
    })?;

    let seen = seen.into_inner().unwrap();
    let mut r = report.into_inner().unwrap();
    let missing: HashSet<&PathBuf> = expected.keys().filter(|p| !seen.contains(*p)).collect();
    // A missing directory is reported once, not with everything it held.
    r.missing = missing
        .iter()
        .filter(|p| {
            p.parent().is_none_or(|parent| {
                parent.as_os_str().is_empty() || !missing.contains(&parent.to_path_buf())
            })
        })
        .map(|p| (*p).clone())
        .collect();
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
    hashes: &Mutex<HashMap<(u64, u64), Hash>>,
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
                let key = (st.st_dev, st.st_ino);
                let known = hashes.lock().unwrap().get(&key).copied();
                let hash = match known {
                    Some(h) => h,
                    None => {
                        let f = File::from(fsx::open_read(dir, name, false)?);
                        let h = hash_file(&f)?;
                        hashes.lock().unwrap().insert(key, h);
                        h
                    }
                };
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
