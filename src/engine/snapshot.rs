//! `snapshot`: copies source trees into a new backup folder, hard-linking
//! the files that have not changed since the previous snapshot (the
//! semantics of `rsync -a --link-dest`: every snapshot is a complete tree).
//!
//! The folder is written as `DIR.partial`, locked while it is written, and
//! renamed to `DIR` only once complete, with its manifest, and synced. On the
//! destination every call is relative to a directory descriptor and refuses
//! symbolic links, so a link planted on the backup disk cannot redirect a
//! write. Directories are copied in parallel on the worker threads.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{
    fchmod, fstat, futimens, mkdirat, mknodat, utimensat, FileStat, Mode, SFlag, UtimensatFlags,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchown, fchownat, linkat, unlinkat, Gid, Uid, UnlinkatFlags};
use rayon::prelude::*;
use serde::Serialize;

use super::fsx::{self, Partial};
use super::manifest::{self, Entry, Hash, Kind, Manifest};
use super::progress;
use super::{dated_name, is_partial, Exclude, Skipped};

/// Where unchanged files are hard-linked from.
#[derive(Debug, Clone, PartialEq)]
pub enum LinkDest {
    /// The newest complete backup folder beside this one.
    Auto,
    Path(PathBuf),
}

pub struct Options {
    pub dest: PathBuf,
    /// As given: `SRC` copies the entry itself into the folder, `SRC/` its
    /// content (as rsync does).
    pub sources: Vec<OsString>,
    pub link_dest: Option<LinkDest>,
    pub exclude: Exclude,
    pub one_file_system: bool,
    pub dry_run: bool,
    /// A source that has lost more than this share (0 to 1) of its files or
    /// bytes against the previous snapshot is reported ([`Shrunk`]).
    pub shrink_warning: Option<f64>,
}

/// A source of a snapshot much smaller than in the previous one: a `/home`
/// that did not mount, a data folder emptied by mistake. Such a backup
/// still succeeds, loudly, and prune keeps the last backup before it.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Shrunk {
    pub source: PathBuf,
    pub files_before: u64,
    pub files_now: u64,
    pub bytes_before: u64,
    pub bytes_now: u64,
}

impl std::fmt::Display for Shrunk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} files ({}) last time, {} ({}) now",
            self.source.display(),
            self.files_before,
            super::human(self.bytes_before),
            self.files_now,
            super::human(self.bytes_now)
        )
    }
}

/// A `shrink_warning` (`--shrink-warning`): the share, 0 to 1, or none.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ShrinkWarning(pub Option<f64>);

impl std::str::FromStr for ShrinkWarning {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        parse_share(s).map(ShrinkWarning)
    }
}

/// Parses a `shrink_warning`: "50%" or "50" is half; "0" or "off" turns
/// the warning off.
pub fn parse_share(text: &str) -> Result<Option<f64>, String> {
    let t = text.trim();
    if t == "off" {
        return Ok(None);
    }
    let n: f64 = t
        .strip_suffix('%')
        .unwrap_or(t)
        .trim()
        .parse()
        .map_err(|_| format!("expected a percentage such as \"50%\", or \"off\", got {text:?}"))?;
    if !(0.0..=100.0).contains(&n) {
        return Err(format!("{text:?}: a percentage is between 0 and 100"));
    }
    Ok((n > 0.0).then_some(n / 100.0))
}

/// What a snapshot did (or, with `--dry-run`, would do).
#[derive(Debug, Default, Serialize)]
pub struct Summary {
    pub dest: PathBuf,
    pub link_dest: Option<PathBuf>,
    pub dry_run: bool,
    /// Regular files in the snapshot.
    pub files: u64,
    pub bytes: u64,
    pub copied_files: u64,
    pub copied_bytes: u64,
    /// What the copied files take on the disk: their sources' allocated
    /// blocks, so a sparse file counts its data, not its holes (which stay
    /// holes in the copy). What the scripts make room for.
    pub needed_bytes: u64,
    pub linked_files: u64,
    pub linked_bytes: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub specials: u64,
    /// Entries that could not be read and are missing from the snapshot.
    pub skipped: u64,
    /// Sources much smaller than in the previous snapshot.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub shrunk: Vec<Shrunk>,
    pub seconds: f64,
}

/// One source: a directory and, for `SRC` without a trailing slash, the one
/// entry of it to copy.
pub(super) struct Root {
    pub dir: OwnedFd,
    pub only: Option<OsString>,
    /// Where its entries go below the destination (`""` in a snapshot).
    pub into: PathBuf,
    /// The source's path, for messages.
    pub base: PathBuf,
    pub dev: u64,
}

#[derive(Default)]
struct Counters {
    files: AtomicU64,
    bytes: AtomicU64,
    copied_files: AtomicU64,
    copied_bytes: AtomicU64,
    needed_bytes: AtomicU64,
    linked_files: AtomicU64,
    linked_bytes: AtomicU64,
    dirs: AtomicU64,
    symlinks: AtomicU64,
    specials: AtomicU64,
}

struct Ctx<'a> {
    roots: Vec<Root>,
    /// `DIR.partial`; `None` in a dry run.
    dest: Option<OwnedFd>,
    prev: Option<OwnedFd>,
    prev_manifest: Option<Manifest>,
    /// The new manifest; `None` in a dry run.
    manifest: Option<manifest::Writer>,
    exclude: &'a Exclude,
    one_file_system: bool,
    target: Target,
    as_root: bool,
    /// Set-uid and set-gid bits, file capabilities and device nodes are
    /// recreated (not in a restore asked from the web console).
    privileges: bool,
    skipped: Skipped,
    n: Counters,
    /// Files and their bytes, for each root.
    per_root: Vec<(AtomicU64, AtomicU64)>,
    /// Directories created, for their metadata once everything is in them.
    dirs: Mutex<Vec<(usize, PathBuf, Meta)>>,
    /// The first path of each inode with several links in the source, and
    /// its entry once copied.
    first_links: Mutex<HashMap<Inode, (PathBuf, Option<Entry>)>>,
    /// Further paths of those inodes.
    more_links: Mutex<Vec<(PathBuf, Inode)>>,
}

type Inode = (u64, u64);

/// What the destination is.
#[derive(Clone, Copy, PartialEq)]
enum Target {
    /// A new snapshot folder, empty: everything is created.
    NewSnapshot,
    /// An existing directory that a restore adds to: directories already
    /// there are entered (and take the backup's metadata); with `overwrite`, an
    /// entry already there is replaced (the new one is written under a
    /// temporary name and renamed over it), without, it is an error (the
    /// restore checks for them first).
    Existing { overwrite: bool },
}

/// What is set on a copy once its content is in place.
pub(super) struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    atime: TimeSpec,
    mtime: TimeSpec,
}

impl Meta {
    pub(super) fn of(st: &FileStat) -> Meta {
        Meta {
            mode: st.st_mode & 0o7777,
            uid: st.st_uid,
            gid: st.st_gid,
            atime: TimeSpec::new(st.st_atime, st.st_atime_nsec),
            mtime: TimeSpec::new(st.st_mtime, st.st_mtime_nsec),
        }
    }
}

/// A directory job: which source, and the path below it (the same path
/// below the destination and the previous snapshot).
type Job = (usize, PathBuf);

pub fn run(opts: &Options) -> Result<Summary> {
    let started = Instant::now();
    let roots = open_sources(&opts.sources)?;
    let dest_abs = std::path::absolute(&opts.dest).unwrap_or_else(|_| opts.dest.clone());
    let link_dest = match &opts.link_dest {
        None => None,
        Some(LinkDest::Path(p)) => Some(p.clone()),
        Some(LinkDest::Auto) => {
            let found = find_previous(&dest_abs)?;
            if found.is_none() {
                eprintln!(
                    "tetras-back: no previous complete snapshot beside {}: copying everything",
                    dest_abs.display()
                );
            }
            found
        }
    };
    let (prev, prev_manifest) = match &link_dest {
        Some(p) => match fsx::open_dir_strict(p) {
            Ok(fd) => match read_manifest(fd.as_fd(), p) {
                Ok(m) => (Some(fd), m),
                // A damaged (or forged) previous backup must not stop every later one.
                Err(e) => {
                    eprintln!("tetras-back: --link-dest: {e:#}: the previous snapshot is damaged; copying everything");
                    (None, None)
                }
            },
            Err(e) => {
                eprintln!("tetras-back: --link-dest {e}: copying everything");
                (None, None)
            }
        },
        None => (None, None),
    };

    let mut target = None;
    let dest = if opts.dry_run {
        None
    } else {
        let t = Partial::create_dir(&opts.dest, "--dest")?;
        let fd = fsx::open_read(t.parent.as_fd(), &t.partial, true)
            .with_context(|| format!("cannot open {}", t.partial_path.display()))?;
        target = Some(t);
        Some(fd)
    };
    let manifest = dest.as_ref().map(|d| spill_file(d.as_fd())).transpose()?.map(manifest::Writer::new);
    let mut ctx = Ctx::new(roots, dest, &opts.exclude, Target::NewSnapshot);
    ctx.prev = prev;
    ctx.prev_manifest = prev_manifest;
    ctx.manifest = manifest;
    ctx.one_file_system = opts.one_file_system;
    if opts.dry_run {
        ctx.walk()?;
    } else {
        // An incremental snapshot expects about what the previous one held.
        let expected = ctx.prev_manifest.as_ref().map(|m| (m.totals.files, m.totals.bytes)).unzip();
        progress::during("snapshot", expected, || ctx.done(), || ctx.walk())?;
    }

    let mut summary = Summary {
        dest: dest_abs,
        link_dest: link_dest.filter(|_| ctx.prev.is_some()),
        dry_run: opts.dry_run,
        ..Summary::default()
    };
    summary.shrunk = opts.shrink_warning.map(|share| ctx.shrunk(share)).unwrap_or_default();
    for s in &summary.shrunk {
        eprintln!(
            "tetras-back: WARNING: {s}: more than {:.0}% less than the previous snapshot (did it fail to mount?)",
            opts.shrink_warning.unwrap_or(0.0) * 100.0
        );
    }
    if let (Some(dest), Some(target)) = (&ctx.dest, target) {
        ctx.link_inside(dest.as_fd())?;
        if !summary.shrunk.is_empty() {
            let mut note = fsx::create_new(dest.as_fd(), OsStr::new(manifest::SHRUNK_NOTE))
                .context("cannot write the shrink note")?;
            for s in &summary.shrunk {
                writeln!(note, "{}", serde_json::to_string(s)?).context("cannot write the shrink note")?;
            }
        }
        ctx.finish_dirs(dest.as_fd())?;
        let m = fsx::create_new(dest.as_fd(), OsStr::new(manifest::NAME))
            .context("cannot create the manifest")?;
        let mut w = BufWriter::with_capacity(1 << 20, &m);
        let writer = ctx.manifest.take().expect("a manifest is written when there is a destination");
        writer.finish(&mut w).context("cannot write the manifest")?;
        drop(w);
        // A snapshot of `SRC/` takes the metadata of SRC itself.
        if let Some((i, root)) = ctx.roots.iter().enumerate().find(|(_, r)| r.only.is_none()) {
            let st = fstat(&root.dir)?;
            ctx.set_dir_meta(dest.as_fd(), i, Path::new(""), &Meta::of(&st))?;
        }
        commit(target, dest.as_fd())?;
    }
    ctx.fill(&mut summary, started);
    Ok(summary)
}

/// Copies the `roots` (entries of a backup) into the existing directory
/// `dest` (`None`: a dry run that only counts), with the same fidelity as a
/// snapshot: what `restore` does. Without `privileges`, nothing that grants
/// them is made: set-uid and set-gid bits are dropped, file capabilities
/// not copied, device nodes left out (and reported).
pub(super) fn copy_into(
    roots: Vec<Root>,
    dest: Option<OwnedFd>,
    summary: &mut Summary,
    overwrite: bool,
    privileges: bool,
    expected: (Option<u64>, Option<u64>),
) -> Result<()> {
    let started = Instant::now();
    // Snapshots' manifests describe the backup, not the files: left there.
    let exclude = Exclude::engine_files();
    let mut ctx = Ctx::new(roots, dest, &exclude, Target::Existing { overwrite });
    ctx.privileges = privileges;
    match &ctx.dest {
        None => ctx.walk()?,
        Some(_) => progress::during("restore", expected, || ctx.done(), || ctx.walk())?,
    }
    if let Some(dest) = &ctx.dest {
        ctx.link_inside(dest.as_fd())?;
        ctx.finish_dirs(dest.as_fd())?;
        nix::unistd::syncfs(dest.as_fd()).context("syncfs on the destination")?;
    }
    ctx.fill(summary, started);
    Ok(())
}

fn open_sources(sources: &[OsString]) -> Result<Vec<Root>> {
    if sources.is_empty() {
        bail!("no source given");
    }
    let mut roots = Vec::new();
    let mut names: HashMap<OsString, &OsString> = HashMap::new();
    for src in sources {
        let path = PathBuf::from(src);
        let open_dir =
            |p: &Path| File::open(p).map(OwnedFd::from).with_context(|| format!("source {}", p.display()));
        if src.as_bytes().ends_with(b"/") {
            let dir = open_dir(&path)?;
            let st = fstat(&dir)?;
            if !fsx::is_dir(&st) {
                bail!("source {} is not a directory", path.display());
            }
            roots.push(Root { dir, only: None, into: PathBuf::new(), base: path, dev: st.st_dev });
            continue;
        }
        let name = path
            .file_name()
            .with_context(|| {
                format!(
                    "source {}: no name to give it in the snapshot (add a trailing / to copy its content)",
                    path.display()
                )
            })?
            .to_owned();
        if manifest::is_ours(Path::new(&name)) {
            bail!("source {}: that name is reserved for the snapshot's own files", path.display());
        }
        if let Some(other) = names.insert(name.clone(), src) {
            bail!(
                "sources {} and {} would both be copied to {:?}",
                Path::new(other).display(),
                path.display(),
                name
            );
        }
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        };
        let dir = open_dir(&parent)?;
        let st = fsx::lstat_at(dir.as_fd(), &name)
            .map_err(|e| anyhow!("source {}: {}", path.display(), e.desc()))?;
        roots.push(Root { dir, only: Some(name), into: PathBuf::new(), base: parent, dev: st.st_dev });
    }
    Ok(roots)
}

/// Syncs the snapshot's file system, then renames `DIR.partial` to `DIR`:
/// the name appears only on a complete, durable snapshot.
fn commit(target: Partial, dest: BorrowedFd) -> Result<()> {
    nix::unistd::syncfs(dest).context("syncfs on the destination")?;
    target.rename_into_place()
}

/// The newest complete snapshot matching `dest` among the dated folders
/// beside it: with `dest` = `B/2026-11-22_10-00-00_x/Donnees`, the newest
/// `B/<older date>.../Donnees` that has a manifest.
pub fn find_previous(dest: &Path) -> Result<Option<PathBuf>> {
    let dated = dest
        .ancestors()
        .find(|a| a.file_name().is_some_and(|n| dated_name(n.as_bytes()).is_some()))
        .unwrap_or(dest);
    let (Some(parent), Some(own)) = (dated.parent(), dated.file_name()) else { return Ok(None) };
    let below = dest.strip_prefix(dated).unwrap_or(Path::new(""));
    let parent_fd = match fsx::open_dir_strict(parent) {
        Ok(fd) => fd,
        Err(_) => return Ok(None),
    };
    let mut names: Vec<OsString> = fsx::read_names(parent_fd.as_fd())?
        .into_iter()
        .filter(|n| dated_name(n.as_bytes()).is_some() && !is_partial(n.as_bytes()))
        .filter(|n| dated_name(own.as_bytes()).is_none() || n.as_bytes() < own.as_bytes())
        .collect();
    names.sort();
    for n in names.iter().rev() {
        let rel = Path::new(n).join(below);
        if let Ok(fd) = fsx::open_beneath(parent_fd.as_fd(), &rel) {
            if fsx::lstat_at(fd.as_fd(), OsStr::new(manifest::NAME))
                .is_ok_and(|st| fsx::kind(&st) == SFlag::S_IFREG)
            {
                return Ok(Some(if below.as_os_str().is_empty() {
                    parent.join(n)
                } else {
                    parent.join(rel)
                }));
            }
        }
    }
    Ok(None)
}

pub(super) fn read_manifest(dir: BorrowedFd, path: &Path) -> Result<Option<Manifest>> {
    match fsx::open_file(dir, OsStr::new(manifest::NAME)) {
        Ok(file) => Ok(Some(Manifest::open(file, &path.join(manifest::NAME))?)),
        // A folder made by another tool: checksums are computed from the files.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => bail!("{}: {e}", path.join(manifest::NAME).display()),
    }
}

/// The new manifest's scratch file, in the snapshot being written (whose
/// file system has room for it), unlinked at once: it never outlives the run.
pub(super) fn spill_file(dest: BorrowedFd) -> Result<File> {
    let name = OsStr::new(".tetras-back-manifest.spill");
    let flags = OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let fd = nix::fcntl::openat(dest, name, flags, Mode::from_bits_truncate(0o600))
        .map_err(|e| anyhow!("cannot create the manifest's scratch file: {}", e.desc()))?;
    unlinkat(dest, name, UnlinkatFlags::NoRemoveDir)
        .map_err(|e| anyhow!("cannot unlink the manifest's scratch file: {}", e.desc()))?;
    Ok(File::from(fd))
}

fn same_file(a: &FileStat, b: &FileStat, owners: bool) -> bool {
    a.st_mode == b.st_mode
        && a.st_size == b.st_size
        && a.st_mtime == b.st_mtime
        && a.st_mtime_nsec == b.st_mtime_nsec
        && (!owners || (a.st_uid == b.st_uid && a.st_gid == b.st_gid))
}

pub(super) fn entry(path: PathBuf, kind: Kind, st: &FileStat, size: u64, hash: Option<Hash>) -> Entry {
    Entry {
        path,
        kind,
        mode: st.st_mode & 0o7777,
        uid: st.st_uid,
        gid: st.st_gid,
        size,
        mtime: (st.st_mtime, st.st_mtime_nsec),
        hash,
    }
}

fn times(st: &FileStat) -> (TimeSpec, TimeSpec) {
    (TimeSpec::new(st.st_atime, st.st_atime_nsec), TimeSpec::new(st.st_mtime, st.st_mtime_nsec))
}

/// Where a failure happened: on the source it skips one entry, on the
/// destination it ends the run.
fn dest_err(rel: &Path, what: &str, e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("cannot {what} {} at the destination: {e}", rel.display())
}

impl<'a> Ctx<'a> {
    fn new(roots: Vec<Root>, dest: Option<OwnedFd>, exclude: &'a Exclude, target: Target) -> Ctx<'a> {
        let per_root = (0..roots.len()).map(|_| Default::default()).collect();
        Ctx {
            roots,
            dest,
            prev: None,
            prev_manifest: None,
            manifest: None,
            exclude,
            one_file_system: false,
            target,
            as_root: nix::unistd::geteuid().is_root(),
            privileges: true,
            skipped: Skipped::default(),
            n: Counters::default(),
            per_root,
            dirs: Mutex::new(Vec::new()),
            first_links: Mutex::new(HashMap::new()),
            more_links: Mutex::new(Vec::new()),
        }
    }

    /// The roots that lost more than `share` of their files or bytes against
    /// the previous snapshot's manifest.
    fn shrunk(&self, share: f64) -> Vec<Shrunk> {
        let Some(prev) = &self.prev_manifest else { return Vec::new() };
        let lost = |before: u64, now: u64| before > 0 && (now as f64) < before as f64 * (1.0 - share);
        self.roots
            .iter()
            .zip(&self.per_root)
            .filter_map(|(root, (files, bytes))| {
                // `SRC` is kept under its name, `SRC/`'s content at the top.
                let top = root.only.as_deref().map_or(root.into.as_path(), Path::new);
                let (files_before, bytes_before) = prev.totals.below(top)?;
                let (files_now, bytes_now) = (files.load(Relaxed), bytes.load(Relaxed));
                let source = match &root.only {
                    Some(name) => root.base.join(name),
                    None => root.base.clone(),
                };
                (lost(files_before, files_now) || lost(bytes_before, bytes_now)).then_some(Shrunk {
                    source,
                    files_before,
                    files_now,
                    bytes_before,
                    bytes_now,
                })
            })
            .collect()
    }

    /// Copies every root, directories in parallel.
    /// Regular files and their bytes gone through so far.
    fn done(&self) -> (u64, u64) {
        (self.n.files.load(Relaxed), self.n.bytes.load(Relaxed))
    }

    fn walk(&self) -> Result<()> {
        let start: Vec<Job> = (0..self.roots.len()).map(|i| (i, PathBuf::new())).collect();
        super::walk::par_walk(start, |job| self.visit(job))
    }

    fn fill(&self, summary: &mut Summary, started: Instant) {
        let n = &self.n;
        summary.files = n.files.load(Relaxed);
        summary.bytes = n.bytes.load(Relaxed);
        summary.copied_files = n.copied_files.load(Relaxed);
        summary.copied_bytes = n.copied_bytes.load(Relaxed);
        summary.needed_bytes = n.needed_bytes.load(Relaxed);
        summary.linked_files = n.linked_files.load(Relaxed);
        summary.linked_bytes = n.linked_bytes.load(Relaxed);
        summary.dirs = n.dirs.load(Relaxed);
        summary.symlinks = n.symlinks.load(Relaxed);
        summary.specials = n.specials.load(Relaxed);
        summary.skipped = self.skipped.count();
        summary.seconds = started.elapsed().as_secs_f64();
    }

    /// Reports a source entry left out of the snapshot.
    fn skip(&self, root: usize, rel: &Path, why: impl std::fmt::Display) {
        self.skipped.report(format_args!("{}: {why}", self.roots[root].base.join(rel).display()));
    }

    fn visit(&self, (root, rel): Job) -> Result<Vec<Job>> {
        let r = &self.roots[root];
        let src = match fsx::open_beneath(r.dir.as_fd(), &rel) {
            Ok(fd) => fd,
            Err(e) => {
                self.skip(root, &rel, e.desc());
                return Ok(Vec::new());
            }
        };
        let dest = match &self.dest {
            Some(d) => {
                let at = r.into.join(&rel);
                Some(fsx::open_beneath(d.as_fd(), &at).map_err(|e| dest_err(&at, "open", e.desc()))?)
            }
            None => None,
        };
        let prev = self.prev.as_ref().and_then(|p| fsx::open_beneath(p.as_fd(), &rel).ok());
        let mut names = match fsx::read_names(src.as_fd()) {
            Ok(n) => n,
            Err(e) => {
                self.skip(root, &rel, e.desc());
                return Ok(Vec::new());
            }
        };
        // In the manifest's order, to read the previous one in step.
        names.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        let mut before = match (&self.prev_manifest, &prev) {
            (Some(m), Some(_)) => Some(m.children(&rel)),
            _ => None,
        };
        let mut entries = self.manifest.as_ref().map(|m| m.dir(&rel));
        let mut record = |e: Entry| match &mut entries {
            Some(w) => w.push(&e).map_err(|e| anyhow!("cannot write the manifest: {e}")),
            None => Ok(()),
        };
        let mut subdirs = Vec::new();
        let d = Dirs {
            src: src.as_fd(),
            dest: dest.as_ref().map(|d| d.as_fd()),
            prev: prev.as_ref().map(|p| p.as_fd()),
        };
        for name in names {
            if rel.as_os_str().is_empty() && r.only.as_ref().is_some_and(|only| *only != name) {
                continue;
            }
            let path = rel.join(&name);
            if self.exclude.matches(&path) {
                continue;
            }
            if manifest::is_ours(&path) {
                self.skip(root, &path, "that name is reserved for the snapshot's own files");
                continue;
            }
            let st = match fsx::lstat_at(src.as_fd(), &name) {
                Ok(st) => st,
                Err(e) => {
                    self.skip(root, &path, e.desc());
                    continue;
                }
            };
            let kind = fsx::kind(&st);
            if kind == SFlag::S_IFDIR {
                self.n.dirs.fetch_add(1, Relaxed);
                if let Some(dest) = d.dest {
                    match mkdirat(dest, name.as_os_str(), Mode::from_bits_truncate(0o700)) {
                        Ok(()) => {}
                        // A restore enters the directories already there
                        // (and gives them the backup's metadata at the end).
                        Err(Errno::EEXIST)
                            if self.target != Target::NewSnapshot
                                && fsx::lstat_at(dest, &name).is_ok_and(|st| fsx::is_dir(&st)) => {}
                        Err(e) => return Err(dest_err(&path, "create directory", e.desc())),
                    }
                    self.dirs.lock().unwrap().push((root, path.clone(), Meta::of(&st)));
                }
                record(entry(path.clone(), Kind::Dir, &st, 0, None))?;
                if !(self.one_file_system && st.st_dev != r.dev) {
                    subdirs.push((root, path));
                }
                continue;
            }
            let done = match kind {
                SFlag::S_IFREG => {
                    let known = match &mut before {
                        Some(b) => b.find(&name, drop)?,
                        None => None,
                    };
                    let done = self.file(root, &d, &name, path, &st, known)?;
                    if let (Some(e), true) = (&done, st.st_nlink > 1) {
                        // What the further links of this inode will say.
                        let mut first = self.first_links.lock().unwrap();
                        if let Some((_, known)) = first.get_mut(&(st.st_dev, st.st_ino)) {
                            *known = Some(e.clone());
                        }
                    }
                    done
                }
                SFlag::S_IFLNK => self.symlink(root, &d, &name, path, &st)?,
                _ => self.special(root, &d, &name, path, &st, kind)?,
            };
            if let Some(e) = done {
                record(e)?;
            }
        }
        if let Some(w) = entries {
            w.finish().map_err(|e| anyhow!("cannot write the manifest: {e}"))?;
        }
        Ok(subdirs)
    }

    /// A regular file; `before` is its entry in the previous manifest.
    fn file(
        &self,
        root: usize,
        d: &Dirs,
        name: &OsStr,
        path: PathBuf,
        st: &FileStat,
        before: Option<Entry>,
    ) -> Result<Option<Entry>> {
        let size = st.st_size as u64;
        self.n.files.fetch_add(1, Relaxed);
        self.n.bytes.fetch_add(size, Relaxed);
        self.per_root[root].0.fetch_add(1, Relaxed);
        self.per_root[root].1.fetch_add(size, Relaxed);
        if st.st_nlink > 1 {
            let inode = (st.st_dev, st.st_ino);
            let mut first = self.first_links.lock().unwrap();
            let at = self.roots[root].into.join(&path);
            if first.contains_key(&inode) {
                // Linked to its first path once everything is copied.
                self.more_links.lock().unwrap().push((at, inode));
                return Ok(None);
            }
            first.insert(inode, (at, None));
        }
        if let Some(prev) = d.prev {
            let unchanged = fsx::lstat_at(prev, name).is_ok_and(|p| same_file(st, &p, self.as_root));
            if unchanged {
                let known = before
                    .filter(|e| {
                        e.kind == Kind::File && e.size == size && e.mtime == (st.st_mtime, st.st_mtime_nsec)
                    })
                    .and_then(|e| e.hash);
                match d.dest {
                    None => {
                        self.linked(size);
                        return Ok(Some(entry(path, Kind::File, st, size, known)));
                    }
                    Some(dest) => match linkat(prev, name, dest, name, AtFlags::empty()) {
                        Ok(()) => {
                            self.linked(size);
                            let hash = match known {
                                Some(h) => h,
                                None => {
                                    let f =
                                        fsx::open_file(dest, name).map_err(|e| dest_err(&path, "read", e))?;
                                    hash_file(&f).map_err(|e| dest_err(&path, "read", e))?
                                }
                            };
                            return Ok(Some(entry(path, Kind::File, st, size, Some(hash))));
                        }
                        // Too many links, another file system, or not allowed: copy instead.
                        Err(Errno::EMLINK | Errno::EXDEV | Errno::EPERM) => {}
                        Err(e) => return Err(dest_err(&path, "hard-link", e.desc())),
                    },
                }
            }
        }
        let Some(dest) = d.dest else {
            self.copied(size, st);
            return Ok(Some(entry(path, Kind::File, st, size, None)));
        };
        let src = match fsx::open_read(d.src, name, false) {
            Ok(fd) => File::from(fd),
            Err(e) => {
                self.skip(root, &path, e.desc());
                return Ok(None);
            }
        };
        let tmp = self.temp_name();
        let at = tmp.as_deref().unwrap_or(name);
        let out = fsx::create_new(dest, at).map_err(|e| dest_err(&path, "create", e.desc()))?;
        let (copied, hash) = match copy_data(&src, &out, st) {
            Ok(r) => r,
            Err(CopyError::Read(e)) => {
                drop(out);
                let _ = unlinkat(dest, at, UnlinkatFlags::NoRemoveDir);
                self.skip(root, &path, e);
                return Ok(None);
            }
            Err(CopyError::Write(e)) => return Err(dest_err(&path, "write", e)),
        };
        self.set_meta(&src, &out, &Meta::of(st), &path).map_err(|e| dest_err(&path, "set metadata of", e))?;
        self.put(dest, tmp, name, &path)?;
        self.copied(copied, st);
        crate::fault::point("snapshot::file_copied");
        Ok(Some(entry(path, Kind::File, st, copied, Some(hash))))
    }

    /// With `overwrite`, an entry is created under a temporary name, then
    /// renamed over the one it replaces ([`Ctx::put`]).
    fn temp_name(&self) -> Option<OsString> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        (self.target == Target::Existing { overwrite: true }).then(|| {
            OsString::from(format!(
                ".tetras-back-restore.{}.{}",
                std::process::id(),
                NEXT.fetch_add(1, Relaxed)
            ))
        })
    }

    fn put(&self, dest: BorrowedFd, tmp: Option<OsString>, name: &OsStr, path: &Path) -> Result<()> {
        match tmp {
            Some(t) => nix::fcntl::renameat(dest, t.as_os_str(), dest, name)
                .map_err(|e| dest_err(path, "replace", e.desc())),
            None => Ok(()),
        }
    }

    fn linked(&self, size: u64) {
        self.n.linked_files.fetch_add(1, Relaxed);
        self.n.linked_bytes.fetch_add(size, Relaxed);
    }

    fn copied(&self, size: u64, st: &FileStat) {
        self.n.copied_files.fetch_add(1, Relaxed);
        self.n.copied_bytes.fetch_add(size, Relaxed);
        self.n.needed_bytes.fetch_add(st.st_blocks as u64 * 512, Relaxed);
    }

    fn set_meta(&self, src: &File, out: &File, meta: &Meta, what: &Path) -> io::Result<()> {
        set_meta(src, out, meta, what, self.as_root, self.privileges)
    }

    fn symlink(
        &self,
        root: usize,
        d: &Dirs,
        name: &OsStr,
        path: PathBuf,
        st: &FileStat,
    ) -> Result<Option<Entry>> {
        let target = match nix::fcntl::readlinkat(d.src, name) {
            Ok(t) => t,
            Err(e) => {
                self.skip(root, &path, e.desc());
                return Ok(None);
            }
        };
        self.n.symlinks.fetch_add(1, Relaxed);
        if let Some(dest) = d.dest {
            let tmp = self.temp_name();
            let at = tmp.as_deref().unwrap_or(name);
            nix::unistd::symlinkat(target.as_os_str(), dest, at)
                .map_err(|e| dest_err(&path, "create symlink", e.desc()))?;
            self.set_link_meta(dest, at, st).map_err(|e| dest_err(&path, "set metadata of", e.desc()))?;
            self.put(dest, tmp, name, &path)?;
        }
        let bytes = target.as_bytes();
        Ok(Some(entry(path, Kind::Symlink, st, bytes.len() as u64, Some(*blake3::hash(bytes).as_bytes()))))
    }

    fn set_link_meta(&self, dest: BorrowedFd, name: &OsStr, st: &FileStat) -> nix::Result<()> {
        if self.as_root {
            let (u, g) = (Some(Uid::from_raw(st.st_uid)), Some(Gid::from_raw(st.st_gid)));
            fchownat(dest, name, u, g, AtFlags::AT_SYMLINK_NOFOLLOW)?;
        }
        let (a, m) = times(st);
        utimensat(dest, name, &a, &m, UtimensatFlags::NoFollowSymlink)
    }

    /// FIFOs, sockets and device nodes are recreated, never opened.
    fn special(
        &self,
        root: usize,
        d: &Dirs,
        name: &OsStr,
        path: PathBuf,
        st: &FileStat,
        kind: SFlag,
    ) -> Result<Option<Entry>> {
        if !self.privileges && matches!(kind, SFlag::S_IFCHR | SFlag::S_IFBLK) {
            self.skip(root, &path, "a device node: not recreated by a restore asked from the web console");
            return Ok(None);
        }
        if let Some(dest) = d.dest {
            let perm = Mode::from_bits_truncate(st.st_mode & 0o7777);
            let tmp = self.temp_name();
            let at = tmp.as_deref().unwrap_or(name);
            if let Err(e) = mknodat(dest, at, kind, perm, st.st_rdev) {
                self.skip(root, &path, format_args!("cannot recreate it: {}", e.desc()));
                return Ok(None);
            }
            self.set_link_meta(dest, at, st).map_err(|e| dest_err(&path, "set metadata of", e.desc()))?;
            fchmod_at(dest, at, st).map_err(|e| dest_err(&path, "set the mode of", e.desc()))?;
            self.put(dest, tmp, name, &path)?;
        }
        self.n.specials.fetch_add(1, Relaxed);
        Ok(Some(entry(path, Kind::Special, st, st.st_rdev, None)))
    }

    /// Makes the further paths of inodes linked several times in the source
    /// hard links to the first one, as in the source.
    fn link_inside(&self, dest: BorrowedFd) -> Result<()> {
        let mut more = std::mem::take(&mut *self.more_links.lock().unwrap());
        // By directory, names in order: one run of the manifest for each.
        more.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let first = self.first_links.lock().unwrap();
        let mut entries: Option<manifest::DirWriter> = None;
        for (path, inode) in more {
            let (target, known) = &first[&inode];
            let Some(known) = known else {
                self.skipped.report(format_args!(
                    "{}: its first hard link {} was not copied",
                    path.display(),
                    target.display()
                ));
                continue;
            };
            let (tp, tn) = split(target);
            let (pp, pn) = split(&path);
            let tdir = fsx::open_beneath(dest, tp).map_err(|e| dest_err(target, "open", e.desc()))?;
            let pdir = fsx::open_beneath(dest, pp).map_err(|e| dest_err(&path, "open", e.desc()))?;
            let tmp = self.temp_name();
            linkat(&tdir, tn, &pdir, tmp.as_deref().unwrap_or(pn), AtFlags::empty())
                .map_err(|e| dest_err(&path, "hard-link", e.desc()))?;
            self.put(pdir.as_fd(), tmp, pn, &path)?;
            let Some(m) = &self.manifest else { continue };
            if entries.as_ref().is_none_or(|w| w.dir() != pp) {
                if let Some(w) = entries.replace(m.dir(pp)) {
                    w.finish()?;
                }
            }
            let e = Entry { path: path.clone(), ..known.clone() };
            entries.as_mut().expect("just set").push(&e)?;
        }
        if let Some(w) = entries {
            w.finish()?;
        }
        Ok(())
    }

    /// Owner, mode, extended attributes and times of the directories, now
    /// that nothing more is written into them.
    fn finish_dirs(&self, dest: BorrowedFd) -> Result<()> {
        let dirs = std::mem::take(&mut *self.dirs.lock().unwrap());
        dirs.par_iter().try_for_each(|(root, rel, meta)| self.set_dir_meta(dest, *root, rel, meta))
    }

    fn set_dir_meta(&self, dest: BorrowedFd, root: usize, rel: &Path, meta: &Meta) -> Result<()> {
        let at = self.roots[root].into.join(rel);
        let out = File::from(fsx::open_beneath(dest, &at).map_err(|e| dest_err(&at, "open", e.desc()))?);
        let src_rel =
            if self.roots[root].only.is_some() || !rel.as_os_str().is_empty() { rel } else { Path::new("") };
        match fsx::open_beneath(self.roots[root].dir.as_fd(), src_rel) {
            Ok(src) => self.set_meta(&File::from(src), &out, meta, rel),
            // Gone since: owner, mode and times are known all the same.
            Err(_) => self.set_meta(&out, &out, meta, rel),
        }
        .map_err(|e| dest_err(rel, "set metadata of", e))
    }
}

struct Dirs<'a> {
    src: BorrowedFd<'a>,
    dest: Option<BorrowedFd<'a>>,
    prev: Option<BorrowedFd<'a>>,
}

fn split(p: &Path) -> (&Path, &OsStr) {
    (p.parent().unwrap_or(Path::new("")), p.file_name().unwrap_or(p.as_os_str()))
}

/// Owner (when `as_root`), mode, `src`'s extended attributes and times, in
/// that order (a change of owner clears set-uid bits and capabilities).
/// Without `privileges`, set-uid and set-gid bits and file capabilities
/// are left out.
pub(super) fn set_meta(
    src: &File,
    out: &File,
    meta: &Meta,
    what: &Path,
    as_root: bool,
    privileges: bool,
) -> io::Result<()> {
    if as_root {
        fchown(out, Some(Uid::from_raw(meta.uid)), Some(Gid::from_raw(meta.gid)))?;
    }
    let mode = if privileges { meta.mode } else { meta.mode & !0o6000 };
    fchmod(out, Mode::from_bits_truncate(mode))?;
    copy_xattrs(src, out, what, privileges);
    futimens(out, &meta.atime, &meta.mtime)?;
    Ok(())
}

fn fchmod_at(dir: BorrowedFd, name: &OsStr, st: &FileStat) -> nix::Result<()> {
    nix::sys::stat::fchmodat(
        dir,
        name,
        Mode::from_bits_truncate(st.st_mode & 0o7777),
        nix::sys::stat::FchmodatFlags::FollowSymlink,
    )
}

/// Copies the extended attributes (ACLs and capabilities among them) that
/// the destination accepts.
fn copy_xattrs(src: &File, out: &File, what: &Path, privileges: bool) {
    use xattr::FileExt as _;
    let Ok(names) = src.list_xattr() else { return };
    for n in names {
        if !privileges && n.as_bytes() == b"security.capability" {
            continue;
        }
        if let Ok(Some(v)) = src.get_xattr(&n) {
            if let Err(e) = out.set_xattr(&n, &v) {
                if e.raw_os_error() != Some(Errno::ENOTSUP as i32) {
                    eprintln!("tetras-back: {}: cannot copy extended attribute {n:?}: {e}", what.display());
                }
            }
        }
    }
}

pub enum CopyError {
    Read(io::Error),
    Write(io::Error),
}

const BUF: usize = 256 * 1024;

thread_local! {
    static BUFFER: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; BUF]);
}

/// Copies a file's data, hashing it on the way; holes of a sparse file stay
/// holes. Returns the bytes copied (the file may have changed size since it
/// was listed) and the checksum of the content.
fn copy_data(src: &File, out: &File, st: &FileStat) -> Result<(u64, Hash), CopyError> {
    let mut hasher = blake3::Hasher::new();
    let sparse = (st.st_blocks as u64) * 512 < st.st_size as u64;
    BUFFER.with_borrow_mut(|buf| {
        let mut pos = 0u64;
        if sparse {
            loop {
                let data = match nix::unistd::lseek(src, pos as i64, nix::unistd::Whence::SeekData) {
                    Ok(d) => d as u64,
                    Err(Errno::ENXIO) => break,
                    // SEEK_DATA refused (a seccomp filter, an old file system
                    // driver): the rest is copied whole, zeros included.
                    Err(Errno::EINVAL | Errno::ENOSYS | Errno::EPERM) => {
                        pos = copy_range(src, out, pos, None, buf, &mut hasher)?;
                        break;
                    }
                    Err(e) => return Err(CopyError::Read(e.into())),
                };
                hash_zeros(&mut hasher, data - pos);
                let end = nix::unistd::lseek(src, data as i64, nix::unistd::Whence::SeekHole)
                    .map_err(|e| CopyError::Read(e.into()))? as u64;
                pos = copy_range(src, out, data, Some(end), buf, &mut hasher)?;
            }
            let end = fstat(src).map_err(|e| CopyError::Read(e.into()))?.st_size as u64;
            if end > pos {
                hash_zeros(&mut hasher, end - pos);
                pos = end;
            }
            out.set_len(pos).map_err(CopyError::Write)?;
        } else {
            pos = copy_range(src, out, 0, None, buf, &mut hasher)?;
        }
        Ok((pos, *hasher.finalize().as_bytes()))
    })
}

/// Copies from `start` to `end` (or to the end of the file) at the same
/// offsets; returns where it stopped.
fn copy_range(
    src: &File,
    out: &File,
    start: u64,
    end: Option<u64>,
    buf: &mut [u8],
    hasher: &mut blake3::Hasher,
) -> Result<u64, CopyError> {
    let mut pos = start;
    loop {
        let want = match end {
            Some(e) if e <= pos => break,
            Some(e) => buf.len().min((e - pos) as usize),
            None => buf.len(),
        };
        let n = match src.read_at(&mut buf[..want], pos) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyError::Read(e)),
        };
        hasher.update(&buf[..n]);
        out.write_all_at(&buf[..n], pos).map_err(CopyError::Write)?;
        pos += n as u64;
    }
    Ok(pos)
}

fn hash_zeros(hasher: &mut blake3::Hasher, mut n: u64) {
    static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
    while n > 0 {
        let k = n.min(ZEROS.len() as u64) as usize;
        hasher.update(&ZEROS[..k]);
        n -= k as u64;
    }
}

/// The BLAKE3 checksum of a whole file.
pub fn hash_file(f: &File) -> io::Result<Hash> {
    let mut hasher = blake3::Hasher::new();
    BUFFER.with_borrow_mut(|buf| {
        let mut r = f;
        loop {
            match r.read(buf) {
                Ok(0) => break,
                Ok(n) => {
                    hasher.update(&buf[..n]);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(*hasher.finalize().as_bytes())
    })
}
