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
    /// Dated in the future: suspicious, never the newest (see [`prune`]).
    pub future: bool,
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
    /// A snapshot whose manifest cannot be read (not a regular file, a line
    /// too long, ...), or a `.partial` that is neither folder nor file.
    Damaged,
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
    /// Why it is damaged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub damage: Option<String>,
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
            future: b.future,
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
        let mut damage = None;
        let (kind, files, size) = if is_partial(bytes) {
            if fsx::is_dir(&st) || fsx::kind(&st) == nix::sys::stat::SFlag::S_IFREG {
                (PartKind::Incomplete, None, 0)
            } else {
                damage = Some(format!("is {}", fsx::kind_name(&st)));
                (PartKind::Damaged, None, 0)
            }
        } else if fsx::is_dir(&st) {
            match totals(dir.as_fd(), &name) {
                Some(Ok((files, size))) => (PartKind::Snapshot, Some(files), size),
                Some(Err(e)) => {
                    damage = Some(format!("{}: {e:#}", manifest::NAME));
                    (PartKind::Damaged, None, 0)
                }
                None => (PartKind::Other, None, 0),
            }
        } else if fsx::kind(&st) == nix::sys::stat::SFlag::S_IFREG && is_archive(&name) {
            (PartKind::Archive, None, st.st_size as u64)
        } else {
            (PartKind::Other, None, 0)
        };
        out.push(Part { name: name.to_string_lossy().into_owned(), kind, files, bytes: size, damage });
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
    // A manifest that is there but no regular file (a FIFO, a link) is damage.
    match fsx::open_file(snap.as_fd(), OsStr::new(manifest::NAME)) {
        Ok(file) => Some(count_files(BufReader::new(file))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => Some(Err(e.into())),
    }
}

/// Counts the `f` lines of a manifest (either format) and adds their sizes.
fn count_files(mut input: impl BufRead) -> Result<(u64, u64)> {
    let mut totals = manifest::Totals::default();
    let mut line = Vec::new();
    let mut n = 1;
    loop {
        line.clear();
        let read = fsx::read_line_capped(&mut input, &mut line, manifest::LINE_MAX)
            .with_context(|| format!("line {n}"))?;
        if read == 0 {
            return Ok((totals.files, totals.bytes));
        }
        n += 1;
        if n == 2 {
            continue; // the header
        }
        totals.add_line(line.strip_suffix(b"\n").unwrap_or(&line));
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
    let folder_fd = fsx::open_dir_strict(folder).with_context(|| folder.display().to_string())?;
    for part in parts(folder)? {
        let path = folder.join(&part.name);
        match part.kind {
            PartKind::Snapshot => {
                let r = verify::run(&path)?;
                out.entries += r.entries;
                out.bytes += r.bytes;
                out.problems.extend(r.problems(Path::new(&part.name)));
            }
            PartKind::Archive => match read_archive(&folder_fd, &part.name) {
                Ok((entries, bytes)) => {
                    out.entries += entries;
                    out.bytes += bytes;
                }
                Err(e) => out.problems.push(format!("unreadable: {} ({e})", part.name)),
            },
            PartKind::Incomplete => out.problems.push(format!("incomplete: {}", part.name)),
            PartKind::Damaged => out.problems.push(format!(
                "damaged: {} ({})",
                part.name,
                part.damage.as_deref().unwrap_or("unreadable")
            )),
            PartKind::Other => {}
        }
    }
    Ok(out)
}

/// Reads the `.tar.gz` `name` of `dir` to its end; returns its members and their bytes.
fn read_archive(dir: &impl AsFd, name: &str) -> io::Result<(u64, u64)> {
    let (mut entries, mut bytes) = (0, 0);
    let file = fsx::open_file(dir.as_fd(), OsStr::new(name))?;
    each_member(file, |entry| {
        bytes += io::copy(entry, &mut io::sink())?;
        entries += 1;
        Ok(())
    })?;
    Ok((entries, bytes))
}

/// Calls `each` with every member of the `.tar.gz` `file` (opened with
/// [`fsx::open_file`]), then reads what follows the end-of-archive blocks,
/// so that a damaged tail fails gzip's check too.
pub(super) fn each_member(
    file: File,
    mut each: impl FnMut(&mut tar::Entry<'_, flate2::read::MultiGzDecoder<BufReader<File>>>) -> io::Result<()>,
) -> io::Result<()> {
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
