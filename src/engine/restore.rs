//! `restore`: copies paths out of a backup folder into a directory, with a
//! snapshot's fidelity (it is the snapshot engine writing into an existing
//! directory). `PATH` is relative to the backup folder and keeps its place
//! below `--to`: `home/alice/doc` goes to `DIR/home/alice/doc`.
//!
//! Nothing is followed: the paths are resolved beneath the backup folder
//! (no `..`, no symbolic link), a symbolic link in the backup is restored
//! as a link, and every write into `DIR` is made beneath it, refusing
//! symbolic links on the way. Entries already in `DIR` are refused, all
//! listed before anything is written, unless `overwrite`; then each is
//! replaced by a rename, never truncated in place. Snapshots' manifests
//! are not restored.

use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Component, Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use nix::errno::Errno;
use nix::sys::stat::{fstat, mkdirat, Mode};

use super::snapshot::{self, Meta, Root, Summary};
use super::{fsx, manifest};

pub struct Options {
    /// The backup folder (a dated folder, or a snapshot inside one).
    pub backup: PathBuf,
    /// Paths relative to it.
    pub paths: Vec<PathBuf>,
    pub to: PathBuf,
    pub overwrite: bool,
    pub dry_run: bool,
}

/// At most this many entries already in `--to` are named in the refusal.
const NAMED: usize = 10;

pub fn run(opts: &Options) -> Result<Summary> {
    if opts.paths.is_empty() {
        bail!("say what to restore: one or more paths inside the backup");
    }
    for (i, a) in opts.paths.iter().enumerate() {
        if let Some(b) = opts.paths[i + 1..].iter().find(|b| a.starts_with(b) || b.starts_with(a)) {
            bail!("{} and {} overlap: give each entry once", a.display(), b.display());
        }
    }
    let backup = fsx::open_dir_strict(&opts.backup)?;
    let mut roots = Vec::new();
    for path in &opts.paths {
        let (parent, name) = split(path)?;
        let dir = fsx::open_beneath(backup.as_fd(), parent)
            .map_err(|e| anyhow!("{}: {}", opts.backup.join(parent).display(), e.desc()))?;
        fsx::lstat_at(dir.as_fd(), name).map_err(|e| match e {
            Errno::ENOENT => anyhow!("{} is not in the backup {}", path.display(), opts.backup.display()),
            e => anyhow!("{}: {}", opts.backup.join(path).display(), e.desc()),
        })?;
        let dev = fstat(&dir)?.st_dev;
        roots.push(Root {
            dir,
            only: Some(name.to_owned()),
            into: parent.to_owned(),
            base: opts.backup.join(parent),
            dev,
        });
    }
    let mut summary = Summary { dest: opts.to.clone(), dry_run: opts.dry_run, ..Summary::default() };
    let dest = if opts.dry_run {
        match fsx::open_dir_strict(&opts.to) {
            Ok(to) => refuse_existing(&opts.backup, &opts.paths, to.as_fd())?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => bail!("--to {}: {e}", opts.to.display()),
        }
        None
    } else {
        let to = fsx::make_dirs_strict(&opts.to).with_context(|| format!("--to {}", opts.to.display()))?;
        if !opts.overwrite {
            refuse_existing(&opts.backup, &opts.paths, to.as_fd())?;
        }
        for path in &opts.paths {
            make_parents(backup.as_fd(), to.as_fd(), path)?;
        }
        Some(to)
    };
    snapshot::copy_into(roots, dest, &mut summary, opts.overwrite)?;
    Ok(summary)
}

/// A path inside the backup: relative, plain names only.
fn split(path: &Path) -> Result<(&Path, &OsStr)> {
    let plain = path.components().all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
    match (plain, path.file_name()) {
        (true, Some(name)) => Ok((path.parent().unwrap_or(Path::new("")), name)),
        _ => bail!(
            "{}: give a path inside the backup, relative to it and without `..` (home/alice, not /home/alice)",
            path.display()
        ),
    }
}

/// Refuses, naming them, the entries of the backup's `paths` that `to`
/// already has (directories are merged into, not refused).
fn refuse_existing(backup: &Path, paths: &[PathBuf], to: BorrowedFd) -> Result<()> {
    let mut found = Vec::new();
    for path in paths {
        let walk = walkdir::WalkDir::new(backup.join(path)).follow_links(false);
        for entry in walk.into_iter().filter_map(|e| e.ok()).filter(|e| e.file_name() != manifest::NAME) {
            let rel = entry.path().strip_prefix(backup).unwrap_or(entry.path());
            let (parent, name) = match (rel.parent(), rel.file_name()) {
                (Some(p), Some(n)) => (p, n),
                _ => continue,
            };
            let Ok(dir) = fsx::open_beneath(to, parent) else { continue };
            let Ok(st) = fsx::lstat_at(dir.as_fd(), name) else { continue };
            if !(entry.file_type().is_dir() && fsx::is_dir(&st)) {
                found.push(rel.to_owned());
            }
        }
    }
    if found.is_empty() {
        return Ok(());
    }
    let named: Vec<String> = found.iter().take(NAMED).map(|p| p.display().to_string()).collect();
    let more = if found.len() > NAMED { format!(" and {} more", found.len() - NAMED) } else { String::new() };
    bail!(
        "{} entries are already there and would be replaced: {}{more}; nothing was restored \
         (--overwrite replaces them)",
        found.len(),
        named.join(", ")
    )
}

/// Creates the directories leading to `path` below `to` that are not there
/// yet, with the backup's owner, mode, extended attributes and times.
fn make_parents(backup: BorrowedFd, to: BorrowedFd, path: &Path) -> Result<()> {
    let Some(parent) = path.parent() else { return Ok(()) };
    let mut done = PathBuf::new();
    for name in parent.iter() {
        let here = fsx::open_beneath(to, &done).map_err(|e| anyhow!("{}: {}", done.display(), e.desc()))?;
        let made = match mkdirat(&here, name, Mode::from_bits_truncate(0o700)) {
            Ok(()) => true,
            Err(Errno::EEXIST) => false,
            Err(e) => bail!("cannot create {}: {}", done.join(name).display(), e.desc()),
        };
        done.push(name);
        if made {
            let src = File::from(fsx::open_beneath(backup, &done)?);
            let out = File::from(fsx::open_beneath(to, &done)?);
            let meta = Meta::of(&fstat(&src)?);
            snapshot::set_meta(&src, &out, &meta, &done, nix::unistd::geteuid().is_root())
                .with_context(|| format!("cannot set metadata of {}", done.display()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_must_stay_inside_the_backup() {
        assert!(split(Path::new("home/alice")).is_ok());
        assert_eq!(split(Path::new("top")).unwrap(), (Path::new(""), OsStr::new("top")));
        for bad in ["/home/alice", "home/../etc", "..", "", "home/.."] {
            let err = split(Path::new(bad)).unwrap_err().to_string();
            assert!(err.contains("inside the backup"), "{bad}: {err}");
        }
    }
}
