//! What a backup disk holds, folder by folder: `backups` lists it, and the
//! restore drill reads the newest folder back ([`check`]).
//!
//! A backup folder is a dated folder (`YYYY-MM-DD_HH-MM-SS...`) at the top
//! of the disk; its parts are snapshots (folders with a manifest),
//! `.tar.gz` archives, and whatever else a script left there. Sizes and
//! file counts come from the manifests, so listing a million-file snapshot
//! reads its manifest, not its tree.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use anyhow::{anyhow, Context, Result};
use chrono::NaiveDateTime;
use serde::Serialize;

use super::{fsx, is_partial, manifest, prune, verify};

/// One dated folder of a disk.
#[derive(Debug, Clone, Serialize)]
pub struct Folder {
    pub name: String,
    pub time: NaiveDateTime,
    /// Every part was completed (no `.partial` left).
    pub complete: bool,
    /// Being written now.
    pub in_use: bool,
    pub parts: Vec<Part>,
    /// Files in its snapshots and bytes of their files and of its archives.
    pub files: u64,
    pub bytes: u64,
}

/// What a part of a backup folder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PartKind {
    /// A folder with a manifest.
    Snapshot,
    /// A `.tar.gz` (or `.tgz`) file.
    Archive,
    /// A `.partial` folder or file: never completed.
    Incomplete,
    /// Anything else.
    Other,
}

#[derive(Debug, Clone, Serialize)]
pub struct Part {
    pub name: String,
    pub kind: PartKind,
    /// Files of a snapshot (from its manifest).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub files: Option<u64>,
    /// A snapshot's file bytes (from its manifest), an archive's size.
    pub bytes: u64,
}

/// The dated folders at the top of `root`, newest first.
pub fn list(root: &Path) -> Result<Vec<Folder>> {
    let dir = fsx::open_dir_strict(root).with_context(|| root.display().to_string())?;
    let mut backups = prune::list(dir.as_fd()).with_context(|| format!("cannot list {}", root.display()))?;
    backups.sort_by(|a, b| (b.time, &b.name).cmp(&(a.time, &a.name)));
    let mut out = Vec::with_capacity(backups.len());
    for b in backups {
        let path = root.join(&b.name);
        let parts = if is_partial(b.name.as_bytes()) { Vec::new() } else { parts(&path)? };
        out.push(Folder {
            name: b.name.to_string_lossy().into_owned(),
            time: b.time,
            complete: b.complete,
            in_use: b.in_use,
            files: parts.iter().filter_map(|p| p.files).sum(),
            bytes: parts.iter().map(|p| p.bytes).sum(),
            parts,
        });
    }
    Ok(out)
}

/// The parts of the backup folder `folder`, by name.
pub fn parts(folder: &Path) -> Result<Vec<Part>> {
    let dir = fsx::open_dir_strict(folder).with_context(|| folder.display().to_string())?;
    let mut names = fsx::read_names(dir.as_fd()).with_context(|| folder.display().to_string())?;
    names.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    let mut out = Vec::new();
    for name in names {
        let st = fsx::lstat_at(dir.as_fd(), &name)
            .map_err(|e| anyhow!("{}: {}", folder.join(&name).display(), e.desc()))?;
        let bytes = name.as_bytes();
        let (kind, files, size) = if is_partial(bytes) {
            (PartKind::Incomplete, None, 0)
        } else if fsx::is_dir(&st) {
            match totals(dir.as_fd(), &name) {
                Some(Ok((files, size))) => (PartKind::Snapshot, Some(files), size),
                Some(Err(e)) => {
                    return Err(e).context(folder.join(&name).join(manifest::NAME).display().to_string())
                }
                None => (PartKind::Other, None, 0),
            }
        } else if fsx::kind(&st) == nix::sys::stat::SFlag::S_IFREG && is_archive(&name) {
            (PartKind::Archive, None, st.st_size as u64)
        } else {
            (PartKind::Other, None, 0)
        };
        out.push(Part { name: name.to_string_lossy().into_owned(), kind, files, bytes: size });
    }
    Ok(out)
}

pub(super) fn is_archive(name: &OsStr) -> bool {
    let n = name.as_bytes();
    n.ends_with(b".tar.gz") || n.ends_with(b".tgz")
}

/// Files and file bytes of the snapshot `name` in `dir`, from its manifest
/// (`None`: it has none, so it is not a snapshot).
fn totals(dir: BorrowedFd, name: &OsStr) -> Option<Result<(u64, u64)>> {
    let snap = fsx::open_read(dir, name, true).ok()?;
    let fd = fsx::open_read(snap.as_fd(), OsStr::new(manifest::NAME), false).ok()?;
    Some(count_files(BufReader::new(File::from(fd))))
}

/// Counts the `f` lines of a manifest (either format) and adds their sizes.
fn count_files(mut input: impl BufRead) -> Result<(u64, u64)> {
    let (mut files, mut bytes) = (0, 0);
    let mut line = Vec::new();
    input.read_until(b'\n', &mut line)?; // the header
    loop {
        line.clear();
        if input.read_until(b'\n', &mut line)? == 0 {
            return Ok((files, bytes));
        }
        if line.first() == Some(&b'f') {
            let size = line.split(|&b| b == b'\t').nth(4).and_then(|s| std::str::from_utf8(s).ok());
            files += 1;
            bytes += size.and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
        }
    }
}

/// What reading a backup folder back found.
#[derive(Debug, Default)]
pub struct Check {
    pub entries: u64,
    pub bytes: u64,
    /// "changed: Donnees/a (content differs)", ... every difference.
    pub problems: Vec<String>,
}

/// Reads the backup folder `folder` back: each snapshot against its
/// manifest (every file's checksum), each archive through to its end
/// (gzip's CRC of every member, tar's structure), incomplete parts named.
pub fn check(folder: &Path) -> Result<Check> {
    let mut out = Check::default();
    for part in parts(folder)? {
        let path = folder.join(&part.name);
        match part.kind {
            PartKind::Snapshot => {
                let r = verify::run(&path)?;
                out.entries += r.entries;
                out.bytes += r.bytes;
                out.problems.extend(r.problems(Path::new(&part.name)));
            }
            PartKind::Archive => match read_archive(&path) {
                Ok((entries, bytes)) => {
                    out.entries += entries;
                    out.bytes += bytes;
                }
                Err(e) => out.problems.push(format!("unreadable: {} ({e})", part.name)),
            },
            PartKind::Incomplete => out.problems.push(format!("incomplete: {}", part.name)),
            PartKind::Other => {}
        }
    }
    Ok(out)
}

/// Reads a `.tar.gz` to its end; returns its members and their bytes.
fn read_archive(path: &Path) -> io::Result<(u64, u64)> {
    let (mut entries, mut bytes) = (0, 0);
    each_member(path, |entry| {
        bytes += io::copy(entry, &mut io::sink())?;
        entries += 1;
        Ok(())
    })?;
    Ok((entries, bytes))
}

/// Calls `each` with every member of the `.tar.gz` at `path`, then reads
/// what follows the end-of-archive blocks, so that a damaged tail fails
/// gzip's check too.
pub(super) fn each_member(
    path: &Path,
    mut each: impl FnMut(&mut tar::Entry<'_, flate2::read::MultiGzDecoder<BufReader<File>>>) -> io::Result<()>,
) -> io::Result<()> {
    let file = File::open(path)?;
    let mut archive =
        tar::Archive::new(flate2::read::MultiGzDecoder::new(BufReader::with_capacity(1 << 20, file)));
    for entry in archive.entries()? {
        each(&mut entry?)?;
    }
    io::copy(&mut archive.into_inner(), &mut io::sink())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_totals_count_files_only() {
        let text = "tetras-back manifest 2\n\
            d\t755\t0\t0\t0\t1.000000000\t-\ta\n\
            f\t644\t0\t0\t10\t1.000000000\t00\ta/x\n\
            l\t777\t0\t0\t3\t1.000000000\t00\ta/l\n\
            f\t644\t0\t0\t32\t1.000000000\t00\ta/y\n";
        assert_eq!(count_files(text.as_bytes()).unwrap(), (2, 42));
    }
}
