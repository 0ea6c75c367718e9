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

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Component, Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use nix::errno::Errno;
use nix::sys::stat::{fstat, mkdirat, Mode};

use super::snapshot::{self, Meta, Root, Summary};
use super::{backups, fsx, manifest};

pub struct Options {
    /// The backup folder (a dated folder, or a snapshot inside one).
    pub backup: PathBuf,
    /// Paths relative to it.
    pub paths: Vec<PathBuf>,
    pub to: PathBuf,
    pub overwrite: bool,
    pub dry_run: bool,
    /// `to` may be `/` (the files go back where they were).
    pub in_place: bool,
    /// Set-uid and set-gid bits, file capabilities and device nodes are
    /// restored (`false` for a restore asked from the web console).
    pub privileges: bool,
}

/// At most this many entries already in `--to` are named in the refusal.
const NAMED: usize = 10;

/// What a restore did, in one line.
pub fn describe(s: &Summary, backup: &Path) -> String {
    format!(
        "{} {} files ({}), {} directories, {} symlinks, {} special from {} into {}; {:.2} s",
        if s.dry_run { "would restore" } else { "restored" },
        s.files,
        super::human(s.bytes),
        s.dirs,
        s.symlinks,
        s.specials,
        backup.display(),
        s.dest.display(),
        s.seconds
    )
}

pub fn run(opts: &Options) -> Result<Summary> {
    if opts.paths.is_empty() {
        bail!("say what to restore: one or more paths inside the backup");
    }
    if opts.to == Path::new("/") && !opts.in_place {
        bail!("--to / puts the files back where they were, over the running system: say --in-place too");
    }
    for (i, a) in opts.paths.iter().enumerate() {
        if let Some(b) = opts.paths[i + 1..].iter().find(|b| a.starts_with(b) || b.starts_with(a)) {
            bail!("{} and {} overlap: give each entry once", a.display(), b.display());
        }
    }
    let started = std::time::Instant::now();
    let backup = fsx::open_dir_strict(&opts.backup)?;
    // `serveur.tar.gz/etc/hosts` is the member etc/hosts of that archive.
    let mut plain = Vec::new();
    let mut archived: Vec<(OsString, Vec<PathBuf>)> = Vec::new();
    for path in &opts.paths {
        split(path)?;
        match archive_of(backup.as_fd(), path) {
            Some((archive, member)) => match archived.iter_mut().find(|(a, _)| *a == archive) {
                Some((_, members)) => members.push(member),
                None => archived.push((archive, vec![member])),
            },
            None => plain.push(path.clone()),
        }
    }
    let roots = roots(backup.as_fd(), &opts.backup, &plain)?;
    let mut members = Vec::new();
    for (archive, wanted) in &archived {
        members.push(archive_members(backup.as_fd(), &opts.backup.join(archive), archive, wanted)?);
    }
    let mut summary = Summary { dest: opts.to.clone(), dry_run: opts.dry_run, ..Summary::default() };
    // Everything already in `--to` is refused before anything is written.
    let existing = |to: BorrowedFd| -> Result<()> {
        if opts.overwrite {
            return Ok(());
        }
        let from_backup = plain.iter().flat_map(|path| backup_entries(&opts.backup, path));
        let from_archives = members.iter().flatten().map(|m| (m.path.clone(), m.dir));
        refuse_existing(from_backup.chain(from_archives), to)
    };
    if opts.dry_run {
        match fsx::open_dir_strict(&opts.to) {
            Ok(to) => existing(to.as_fd())?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => bail!("--to {}: {e}", opts.to.display()),
        }
        snapshot::copy_into(roots, None, &mut summary, false, opts.privileges, (None, None))?;
        for m in members.iter().flatten() {
            summary.dirs += u64::from(m.dir);
            summary.files += u64::from(m.file);
            summary.bytes += if m.file { m.size } else { 0 };
            summary.symlinks += u64::from(!m.dir && !m.file);
        }
        summary.seconds = started.elapsed().as_secs_f64();
        return Ok(summary);
    }
    let to = fsx::make_dirs_strict(&opts.to).with_context(|| format!("--to {}", opts.to.display()))?;
    existing(to.as_fd())?;
    for path in &plain {
        make_parents(backup.as_fd(), to.as_fd(), path, opts.privileges)?;
    }
    // What the backup's manifest says is below the paths asked for.
    let expected = expected(backup.as_fd(), &opts.backup, &plain).unzip();
    snapshot::copy_into(
        roots,
        Some(to.try_clone()?),
        &mut summary,
        opts.overwrite,
        opts.privileges,
        expected,
    )?;
    for ((archive, wanted), members) in archived.iter().zip(&members) {
        let part = from_archive((backup.as_fd(), archive), wanted, members, opts, to.as_fd())?;
        for (total, n) in [
            (&mut summary.files, part.files),
            (&mut summary.bytes, part.bytes),
            (&mut summary.dirs, part.dirs),
            (&mut summary.symlinks, part.symlinks),
            (&mut summary.specials, part.specials),
            (&mut summary.skipped, part.skipped),
        ] {
            *total += n;
        }
    }
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

/// The sources of a copy out of the backup folder `backup`: each path's
/// directory, resolved beneath it, and the one entry to take from it.
fn roots(backup: BorrowedFd, base: &Path, paths: &[PathBuf]) -> Result<Vec<Root>> {
    let mut roots = Vec::new();
    for path in paths {
        let (parent, name) = split(path)?;
        let dir = fsx::open_beneath(backup, parent)
            .map_err(|e| anyhow!("{}: {}", base.join(parent).display(), e.desc()))?;
        fsx::lstat_at(dir.as_fd(), name).map_err(|e| match e {
            Errno::ENOENT => anyhow!("{} is not in the backup {}", path.display(), base.display()),
            e => anyhow!("{}: {}", base.join(path).display(), e.desc()),
        })?;
        let dev = fstat(&dir)?.st_dev;
        roots.push(Root {
            dir,
            only: Some(name.to_owned()),
            into: parent.to_owned(),
            base: base.join(parent),
            dev,
        });
    }
    Ok(roots)
}

/// Whether `path` goes through an archive of the backup folder (its first
/// name is a `.tar.gz` file there): the archive and the member path.
fn archive_of(backup: BorrowedFd, path: &Path) -> Option<(OsString, PathBuf)> {
    let mut names = path.iter();
    let first = names.next()?;
    let st = fsx::lstat_at(backup, first).ok()?;
    if fsx::kind(&st) != nix::sys::stat::SFlag::S_IFREG || !backups::is_archive(first) {
        return None;
    }
    Some((first.to_owned(), names.collect()))
}

/// A member of an archive that is restored.
struct Member {
    path: PathBuf,
    dir: bool,
    file: bool,
    size: u64,
}

/// The members of `archive` at or below the `wanted` paths (an empty path:
/// all of it); each wanted path must be there.
fn archive_members(
    backup: BorrowedFd,
    archive: &Path,
    name: &OsStr,
    wanted: &[PathBuf],
) -> Result<Vec<Member>> {
    let mut out = Vec::new();
    let mut found = vec![false; wanted.len()];
    let file = fsx::open_file(backup, name).with_context(|| archive.display().to_string())?;
    backups::each_member(file, |entry| {
        let path =
            entry.path()?.components().filter(|c| matches!(c, Component::Normal(_))).collect::<PathBuf>();
        let Some(i) = wanted.iter().position(|w| path.starts_with(w)) else { return Ok(()) };
        found[i] = true;
        let kind = entry.header().entry_type();
        out.push(Member {
            dir: kind.is_dir(),
            file: kind.is_file() || kind.is_hard_link(),
            size: entry.size(),
            path,
        });
        Ok(())
    })
    .with_context(|| archive.display().to_string())?;
    if let Some(i) = found.iter().position(|f| !f) {
        bail!("{} is not in the archive {}", wanted[i].display(), archive.display());
    }
    Ok(out)
}

/// Restores members of `archive`: extracted (owners, modes, times, extended
/// attributes, links, holes) into a private folder beside the restored
/// files, then copied into place by the same engine as a snapshot's files,
/// with the same refusals; the private folder is removed.
///
/// The private folder is reached through its descriptor only: whoever owns
/// `to` may rename it and put a symbolic link (or a folder of their own) in
/// its place, and the extraction still goes into the folder made here, which
/// only root can enter.
fn from_archive(
    (backup, name): (BorrowedFd, &OsStr),
    wanted: &[PathBuf],
    members: &[Member],
    opts: &Options,
    to: BorrowedFd,
) -> Result<Summary> {
    let archive = opts.backup.join(name);
    let stage_name = format!(".tetras-back-restore.{}.archive", fsx::random_suffix());
    mkdirat(to, stage_name.as_str(), Mode::from_bits_truncate(0o700))
        .map_err(|e| anyhow!("cannot create {}: {}", opts.to.join(&stage_name).display(), e.desc()))?;
    let stage_path = opts.to.join(&stage_name);
    let stage = fsx::open_beneath(to, Path::new(&stage_name))
        .map_err(|e| anyhow!("{}: {}", stage_path.display(), e.desc()))?;
    let made = fstat(&stage)?;
    if made.st_uid != nix::unistd::geteuid().as_raw() || made.st_mode & 0o077 != 0 {
        bail!("{} was replaced as it was made; not extracting into it", stage_path.display());
    }
    crate::fault::point("restore::staged");
    let result = (|| -> Result<Summary> {
        use std::os::fd::AsRawFd;
        // The kernel resolves this to the folder made above, wherever its name went.
        let stage_dir = PathBuf::from(format!("/proc/self/fd/{}", stage.as_raw_fd()));
        let file = fsx::open_file(backup, name).with_context(|| archive.display().to_string())?;
        let mut unpack = tar::Archive::new(flate2::read::MultiGzDecoder::new(
            std::io::BufReader::with_capacity(1 << 20, file),
        ));
        unpack.set_preserve_permissions(true);
        unpack.set_preserve_ownerships(nix::unistd::geteuid().is_root());
        unpack.set_preserve_mtime(true);
        unpack.set_unpack_xattrs(true);
        unpack.set_overwrite(false);
        let mut skipped = 0;
        let mut left = members.len();
        let mut dir_times = Vec::new();
        for entry in unpack.entries()? {
            if left == 0 {
                break;
            }
            let mut entry = entry?;
            let path: PathBuf =
                entry.path()?.components().filter(|c| matches!(c, Component::Normal(_))).collect();
            if !wanted.iter().any(|w| path.starts_with(w)) {
                continue;
            }
            left -= 1;
            if entry.header().entry_type().is_dir() {
                dir_times.push((path.clone(), entry.header().mtime().unwrap_or(0)));
            }
            // unpack_in refuses `..` and links out of the folder, reached by its descriptor.
            if let Err(e) = entry.unpack_in(&stage_dir) {
                eprintln!("tetras-back: {}/{}: {e}", archive.display(), path.display());
                skipped += 1;
            }
        }
        // A directory's time is set once everything is in it, deepest first.
        for (dir, mtime) in dir_times.iter().rev() {
            let t = nix::sys::time::TimeSpec::new(*mtime as i64, 0);
            let _ = nix::sys::stat::utimensat(
                stage.as_fd(),
                dir,
                &t,
                &t,
                nix::sys::stat::UtimensatFlags::NoFollowSymlink,
            );
        }
        // The extracted directories on the way keep the archive's metadata.
        let mut tops: Vec<PathBuf> = wanted.iter().filter(|w| !w.as_os_str().is_empty()).cloned().collect();
        if tops.len() < wanted.len() {
            tops = fsx::read_names(stage.as_fd())?.into_iter().map(PathBuf::from).collect();
        }
        let roots = roots(stage.as_fd(), &stage_path, &tops)?;
        for path in &tops {
            make_parents(stage.as_fd(), to, path, opts.privileges)?;
        }
        let mut part = Summary::default();
        let into = Some(fsx::open_beneath(to, Path::new(""))?);
        snapshot::copy_into(roots, into, &mut part, opts.overwrite, opts.privileges, (None, None))?;
        part.skipped += skipped;
        Ok(part)
    })();
    // Removed by name only while the name is still the folder made above.
    let same = fsx::lstat_at(to, OsStr::new(&stage_name))
        .is_ok_and(|st| (st.st_dev, st.st_ino) == (made.st_dev, made.st_ino));
    let removed = if same {
        fsx::remove_tree(to, OsStr::new(&stage_name))
    } else {
        Err(std::io::Error::other("it was moved"))
    };
    if let Err(e) = removed {
        eprintln!("tetras-back: warning: cannot remove {}: {e}", stage_path.display());
    }
    result
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

/// The regular files and bytes the manifest of `backup` counts below the
/// `paths` (`None` when it has none, or does not count them: below a
/// folder deeper than the first level).
fn expected(backup: BorrowedFd, path: &Path, paths: &[PathBuf]) -> Option<(u64, u64)> {
    let manifest = snapshot::read_manifest(backup, path).ok()??;
    paths.iter().try_fold((0, 0), |(files, bytes), p| {
        let below = match p.components().count() {
            0 => manifest.totals.below(Path::new("")),
            1 => manifest.totals.below(p),
            _ => None,
        }?;
        Some((files + below.0, bytes + below.1))
    })
}

/// The entries of the backup folder at and below `path`, relative to the
/// folder, and whether each is a directory (manifests left out).
fn backup_entries<'a>(backup: &'a Path, path: &Path) -> impl Iterator<Item = (PathBuf, bool)> + 'a {
    // A link at `path` itself is an entry to restore, not a way into what it points at.
    let walk = walkdir::WalkDir::new(backup.join(path)).follow_links(false).follow_root_links(false);
    walk.into_iter()
        .filter_map(|e| e.ok())
        .filter(|e| !manifest::is_ours(Path::new(e.file_name())))
        .map(move |e| (e.path().strip_prefix(backup).unwrap_or(e.path()).to_owned(), e.file_type().is_dir()))
}

/// Refuses, naming them, the `entries` (path, is a directory) that `to`
/// already has (directories are merged into, not refused).
fn refuse_existing(entries: impl Iterator<Item = (PathBuf, bool)>, to: BorrowedFd) -> Result<()> {
    let mut found = Vec::new();
    for (rel, is_dir) in entries {
        let (parent, name) = match (rel.parent(), rel.file_name()) {
            (Some(p), Some(n)) => (p, n),
            _ => continue,
        };
        let Ok(dir) = fsx::open_beneath(to, parent) else { continue };
        let Ok(st) = fsx::lstat_at(dir.as_fd(), name) else { continue };
        if !(is_dir && fsx::is_dir(&st)) {
            found.push(rel);
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
fn make_parents(backup: BorrowedFd, to: BorrowedFd, path: &Path, privileges: bool) -> Result<()> {
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
            snapshot::set_meta(&src, &out, &meta, &done, nix::unistd::geteuid().is_root(), privileges)
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
