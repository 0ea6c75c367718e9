//! File-system calls relative to directory descriptors that never follow a
//! symbolic link: on a backup disk anyone may have planted one, and a
//! process running as root must not write, link or delete through it.
//!
//! `openat2(2)` and `renameat2(2)` do this in one call where the kernel
//! allows it. Older kernels, containers and seccomp filters (systemd's
//! `RestrictSUIDSGID=` answers every `openat2` with ENOSYS, since it cannot
//! inspect its mode argument) refuse them; then the same guarantee is had
//! with `openat(O_NOFOLLOW)` one component at a time, and a rename that
//! checks the name is free first. Which one works is learnt once per process.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};
use std::sync::atomic::{AtomicBool, Ordering};

use nix::errno::Errno;
use nix::fcntl::{openat, openat2, Flock, FlockArg, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fstatat, mkdirat, FileStat, Mode, SFlag};
use nix::unistd::UnlinkatFlags;

/// The type bits of a `stat` mode.
pub fn kind(st: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits())
}

pub fn is_dir(st: &FileStat) -> bool {
    kind(st) == SFlag::S_IFDIR
}

/// Opens a directory path (absolute or relative to the working directory)
/// refusing any symbolic link on the way, with an error that names the path.
pub fn open_dir_strict(path: &Path) -> io::Result<OwnedFd> {
    open_dir_at(nix::fcntl::AT_FDCWD, path, ResolveFlag::RESOLVE_NO_SYMLINKS).map_err(|e| match e {
        Errno::ELOOP => io::Error::other(format!(
            "{}: a component of this path is a symbolic link; refusing to follow it \
             (give the real path)",
            path.display()
        )),
        e => io::Error::other(format!("{}: {}", path.display(), e.desc())),
    })
}

/// Opens a directory path, creating the missing folders on the way (as
/// `mkdir -p`), one component at a time relative to its parent, refusing any
/// symbolic link.
pub fn make_dirs_strict(path: &Path) -> io::Result<OwnedFd> {
    let start = if path.is_absolute() { Path::new("/") } else { Path::new(".") };
    let mut dir = open_dir_strict(start)?;
    let mut so_far = start.to_path_buf();
    for c in path.components() {
        let Component::Normal(name) = c else {
            if c == Component::ParentDir {
                return Err(io::Error::other(format!("{}: `..` is not allowed here", path.display())));
            }
            continue;
        };
        so_far.push(name);
        match mkdirat(&dir, name, Mode::from_bits_truncate(0o755)) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => {
                return Err(io::Error::other(format!("cannot create {}: {}", so_far.display(), e.desc())))
            }
        }
        dir = open_read(dir.as_fd(), name, true).map_err(|e| match e {
            Errno::ELOOP | Errno::ENOTDIR => io::Error::other(format!(
                "{}: {} is a symbolic link or not a folder; refusing to follow it (give the real path)",
                path.display(),
                so_far.display()
            )),
            e => io::Error::other(format!("{}: {}", so_far.display(), e.desc())),
        })?;
    }
    Ok(dir)
}

/// Opens the directory `rel` below `root`: never above it, never through a
/// symbolic link. An empty `rel` opens `root` itself again.
pub fn open_beneath(root: BorrowedFd, rel: &Path) -> nix::Result<OwnedFd> {
    let rel = if rel.as_os_str().is_empty() { Path::new(".") } else { rel };
    open_dir_at(root, rel, ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS)
}

/// Set once `openat2` has been refused: every later call walks instead.
static NO_OPENAT2: AtomicBool = AtomicBool::new(false);

/// Opens the directory `path` from `dir` with `openat2`'s `resolve` rules,
/// or, where `openat2` is refused, with the equivalent walk.
fn open_dir_at<Fd: std::os::fd::AsFd>(dir: Fd, path: &Path, resolve: ResolveFlag) -> nix::Result<OwnedFd> {
    if !NO_OPENAT2.load(Ordering::Relaxed) {
        let how =
            OpenHow::new().flags(OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC).resolve(resolve);
        match openat2(&dir, path, how) {
            // A seccomp filter's answer (ENOSYS, or EPERM as systemd's
            // SystemCallErrorNumber= has it), or a kernel before 5.6.
            Err(e @ (Errno::ENOSYS | Errno::EPERM)) => {
                if !NO_OPENAT2.swap(true, Ordering::Relaxed) {
                    log::debug!(
                        "openat2 is refused here ({}); opening folders one component at a time",
                        e.desc()
                    );
                }
            }
            other => return other,
        }
    }
    walk_dirs(dir.as_fd(), path, resolve.contains(ResolveFlag::RESOLVE_BENEATH))
}

/// Opens the directory `path` from `dir` one component at a time with
/// `O_NOFOLLOW`, so that no symbolic link is followed: what `openat2` with
/// `RESOLVE_NO_SYMLINKS` does. `beneath` refuses an absolute path and `..`
/// (EXDEV, as `RESOLVE_BENEATH` does for a path that leaves `dir`).
pub fn walk_dirs(dir: BorrowedFd, path: &Path, beneath: bool) -> nix::Result<OwnedFd> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let mut here = openat(dir, ".", flags, Mode::empty())?;
    for c in path.components() {
        let name: &OsStr = match c {
            Component::Normal(name) => name,
            Component::CurDir => continue,
            Component::RootDir | Component::Prefix(_) if beneath => return Err(Errno::EXDEV),
            Component::RootDir | Component::Prefix(_) => "/".as_ref(),
            Component::ParentDir if beneath => return Err(Errno::EXDEV),
            Component::ParentDir => "..".as_ref(),
        };
        // O_NOFOLLOW with O_DIRECTORY: a symbolic link gives ELOOP (or
        // ENOTDIR on some kernels); either way it is not followed.
        here = match openat(&here, name, flags, Mode::empty()) {
            Err(Errno::ENOTDIR)
                if lstat_at(here.as_fd(), name).is_ok_and(|st| kind(&st) == SFlag::S_IFLNK) =>
            {
                return Err(Errno::ELOOP)
            }
            r => r?,
        };
    }
    Ok(here)
}

/// Opens the entry `name` of `dir` for reading, refusing a symbolic link,
/// and never blocking: a FIFO planted where a file was expected opens at
/// once (and reads as empty) instead of waiting for a writer. What is read
/// from a disk is opened with [`open_file`], which also checks the type.
pub fn open_read(dir: BorrowedFd, name: &OsStr, directory: bool) -> nix::Result<OwnedFd> {
    let mut flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK;
    if directory {
        flags |= OFlag::O_DIRECTORY;
    }
    // O_NOATIME spares the source disk a write per file; only the owner or root may use it.
    openat(dir, name, flags | OFlag::O_NOATIME, Mode::empty()).or_else(|e| {
        if e == Errno::EPERM {
            openat(dir, name, flags, Mode::empty())
        } else {
            Err(e)
        }
    })
}

/// What a `stat` type is called in messages.
pub fn kind_name(st: &FileStat) -> &'static str {
    match kind(st) {
        SFlag::S_IFREG => "a regular file",
        SFlag::S_IFDIR => "a folder",
        SFlag::S_IFLNK => "a symbolic link",
        SFlag::S_IFIFO => "a FIFO",
        SFlag::S_IFSOCK => "a socket",
        SFlag::S_IFCHR => "a character device",
        SFlag::S_IFBLK => "a block device",
        _ => "of an unknown type",
    }
}

/// Opens the regular file `name` of `dir` for reading: the one way a file
/// on a backup disk is opened. No symbolic link is followed, the open never
/// blocks, and anything but a regular file (a FIFO, a device, a socket, a
/// folder) is refused with an error that says what it is.
pub fn open_file(dir: BorrowedFd, name: &OsStr) -> io::Result<File> {
    if name.as_bytes().contains(&b'/') {
        // A path would go through links on its way: one name, beneath `dir`.
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "is a path, not one name"));
    }
    let fd = open_read(dir, name, false).map_err(|e| match e {
        Errno::ELOOP => io::Error::other("is a symbolic link; not following it"),
        e => io::Error::from(e),
    })?;
    let st = nix::sys::stat::fstat(&fd)?;
    if kind(&st) != SFlag::S_IFREG {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("is {}, not a regular file", kind_name(&st)),
        ));
    }
    Ok(File::from(fd))
}

/// Reads at most `max` bytes of the regular file at `path`, a file of the
/// daemon's own run directory (the journal, the progress file): the last
/// component is not followed if it is a link, nothing is waited on, and
/// anything but a regular file is refused.
pub fn read_capped(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(path)?;
    if !f.metadata()?.is_file() {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "not a regular file"));
    }
    let mut bytes = Vec::new();
    f.take(max).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Reads one line (up to and with its `\n`) into `buf`, as `read_until`
/// does, but never more than `cap` bytes: a longer line (a sparse file of
/// zeros, a forged manifest) is an error, not an allocation of its size.
/// Returns the bytes read (0 at the end).
pub fn read_line_capped(input: &mut impl io::BufRead, buf: &mut Vec<u8>, cap: usize) -> io::Result<usize> {
    let start = buf.len();
    let n = io::BufRead::read_until(&mut io::Read::take(&mut *input, cap as u64 + 1), b'\n', buf)?;
    if n > cap {
        buf.truncate(start);
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a line longer than {cap} bytes (damaged or not written by tetras-back)"),
        ));
    }
    Ok(n)
}

/// 16 random hexadecimal digits, for names another account cannot guess.
pub fn random_suffix() -> String {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).expect("the kernel's random source is readable");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Creates the file `name` in `dir`; fails if anything (a symlink
/// included) already has that name.
pub fn create_new(dir: BorrowedFd, name: &OsStr) -> nix::Result<File> {
    let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    openat(dir, name, flags, Mode::from_bits_truncate(0o600)).map(File::from)
}

pub fn lstat_at(dir: BorrowedFd, name: &OsStr) -> nix::Result<FileStat> {
    fstatat(dir, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
}

/// The names in a directory, without `.` and `..`.
pub fn read_names(dir: BorrowedFd) -> nix::Result<Vec<std::ffi::OsString>> {
    let fd = openat(dir, ".", OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())?;
    let mut d = nix::dir::Dir::from_fd(fd)?;
    let mut names = Vec::new();
    for entry in d.iter() {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(OsStr::from_bytes(name).to_owned());
        }
    }
    Ok(names)
}

/// A `.partial` folder or file being written, locked so that `prune` and
/// the next run can tell it is in use (the lock goes with the process).
pub struct InUse(#[allow(dead_code)] Flock<OwnedFd>);

impl InUse {
    /// Takes the lock on an open `.partial`, or says it is in use.
    pub fn lock(fd: OwnedFd) -> Result<InUse, Errno> {
        Flock::lock(fd, FlockArg::LockExclusiveNonblock).map(InUse).map_err(|(_, e)| e)
    }
}

/// Whether the `.partial` entry `name` of `dir` is being written by a
/// running process (it holds the lock).
pub fn partial_in_use(dir: BorrowedFd, name: &OsStr) -> bool {
    let Ok(fd) = open_read(dir, name, false) else { return false };
    // Only what the engines write (a folder or a file) is ever locked; a
    // FIFO or a device of that name is not locked, whatever it says.
    let ours =
        nix::sys::stat::fstat(&fd).is_ok_and(|st| matches!(kind(&st), SFlag::S_IFDIR | SFlag::S_IFREG));
    ours && matches!(InUse::lock(fd), Err(Errno::EWOULDBLOCK))
}

/// Removes the tree `name` in `parent` (a file, a symlink or a directory
/// with everything in it) on all worker threads. Symbolic links are removed,
/// never followed; a file system mounted inside the tree stops it.
pub fn remove_tree(parent: BorrowedFd, name: &OsStr) -> io::Result<()> {
    let st = lstat_at(parent, name).map_err(io::Error::from)?;
    if !is_dir(&st) {
        return nix::unistd::unlinkat(parent, name, UnlinkatFlags::NoRemoveDir).map_err(io::Error::from);
    }
    let root = open_read(parent, name, true)?;
    let dev = st.st_dev;
    let dirs = std::sync::Mutex::new(Vec::new());
    super::walk::par_walk(vec![std::path::PathBuf::new()], |rel| -> io::Result<Vec<std::path::PathBuf>> {
        let rel = rel.as_path();
        let dir = open_beneath(root.as_fd(), rel)?;
        let here = nix::sys::stat::fstat(&dir)?;
        if here.st_dev != dev {
            return Err(io::Error::other(format!(
                "{}: another file system is mounted here; not deleting it",
                rel.display()
            )));
        }
        let mut subdirs = Vec::new();
        for n in read_names(dir.as_fd())? {
            match nix::unistd::unlinkat(&dir, n.as_os_str(), UnlinkatFlags::NoRemoveDir) {
                Ok(()) | Err(Errno::ENOENT) => {}
                Err(Errno::EISDIR) => subdirs.push(rel.join(n)),
                Err(e) => return Err(io::Error::other(format!("{}: {}", rel.join(n).display(), e.desc()))),
            }
        }
        dirs.lock().unwrap().push(rel.to_owned());
        Ok(subdirs)
    })?;
    // Deepest first; each directory is empty once those below it are gone.
    let mut dirs = dirs.into_inner().unwrap();
    dirs.sort_by_key(|rel| std::cmp::Reverse(rel.components().count()));
    for rel in dirs.iter().filter(|rel| !rel.as_os_str().is_empty()) {
        let parent_rel = rel.parent().unwrap_or(Path::new(""));
        let p = open_beneath(root.as_fd(), parent_rel)?;
        nix::unistd::unlinkat(&p, rel.file_name().unwrap(), UnlinkatFlags::RemoveDir)
            .map_err(|e| io::Error::other(format!("{}: {}", rel.display(), e.desc())))?;
    }
    drop(root);
    nix::unistd::unlinkat(parent, name, UnlinkatFlags::RemoveDir).map_err(io::Error::from)
}

/// A new folder or file `NAME` written as `NAME.partial` beside it: made
/// ready (missing parents created, a stale `.partial` removed), locked
/// while written, renamed into place when complete.
pub struct Partial {
    pub parent: OwnedFd,
    name: std::ffi::OsString,
    pub partial: std::ffi::OsString,
    pub partial_path: std::path::PathBuf,
    /// Held, not read: the lock lasts as long as the `Partial`.
    lock: Option<InUse>,
}

impl Partial {
    /// `flag` names the option that gave `path` in messages (`--dest`).
    pub fn prepare(path: &Path, flag: &str) -> anyhow::Result<Partial> {
        use anyhow::{bail, Context};
        use std::os::unix::ffi::OsStrExt;
        let name = path.file_name().with_context(|| format!("{flag} {}: not a name", path.display()))?;
        if super::is_partial(name.as_bytes()) {
            bail!(
                "{flag} {}: names ending in {} are for what is being written",
                path.display(),
                super::PARTIAL
            );
        }
        let parent_path = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let parent = make_dirs_strict(parent_path).with_context(|| format!("{flag} {}", path.display()))?;
        if lstat_at(parent.as_fd(), name).is_ok() {
            bail!("{} already exists: backups are always written under a new name", path.display());
        }
        let mut partial = name.to_owned();
        partial.push(super::PARTIAL);
        let partial_path = parent_path.join(&partial);
        if lstat_at(parent.as_fd(), &partial).is_ok() {
            if partial_in_use(parent.as_fd(), &partial) {
                bail!("{} is being written by another running process", partial_path.display());
            }
            eprintln!("tetras-back: removing {}, left by an interrupted run", partial_path.display());
            remove_tree(parent.as_fd(), &partial)
                .with_context(|| format!("cannot remove {}", partial_path.display()))?;
        }
        Ok(Partial { parent, name: name.to_owned(), partial, partial_path, lock: None })
    }

    /// Creates the folder `DIR.partial` (0700 until its metadata is set),
    /// locked while it is written.
    pub fn create_dir(path: &Path, flag: &str) -> anyhow::Result<Partial> {
        let mut t = Partial::prepare(path, flag)?;
        nix::sys::stat::mkdirat(&t.parent, t.partial.as_os_str(), Mode::from_bits_truncate(0o700))
            .map_err(|e| anyhow::anyhow!("cannot create {}: {}", t.partial_path.display(), e.desc()))?;
        let fd = open_read(t.parent.as_fd(), &t.partial, true)?;
        t.lock(fd)?;
        Ok(t)
    }

    /// Takes the lock through a descriptor of the new `.partial`.
    pub fn lock(&mut self, fd: OwnedFd) -> anyhow::Result<()> {
        let lock = InUse::lock(fd)
            .map_err(|e| anyhow::anyhow!("cannot lock {}: {}", self.partial_path.display(), e.desc()))?;
        self.lock = Some(lock);
        Ok(())
    }

    /// Renames `NAME.partial` to `NAME` (never over an existing `NAME`) and
    /// syncs the folder holding it. The caller has synced the content.
    pub fn rename_into_place(self) -> anyhow::Result<()> {
        use anyhow::Context;
        crate::fault::point("engine::before_rename");
        let (p, from, to) = (self.parent.as_fd(), self.partial.as_os_str(), self.name.as_os_str());
        rename_noreplace(p, from, to).map_err(|e| {
            anyhow::anyhow!("cannot rename {} into place: {}", self.partial_path.display(), e.desc())
        })?;
        nix::unistd::fsync(&self.parent).context("fsync of the folder holding the backup")?;
        Ok(())
    }
}

/// Renames `from` to `to` in `dir`, failing with EEXIST if `to` exists.
/// `RENAME_NOREPLACE` makes that atomic; where the kernel, the file system
/// or a seccomp filter refuses it, the name is checked first and a plain
/// rename follows (what is renamed is locked, and its new name is a new
/// dated one, so nothing else is expected to take it in between).
pub fn rename_noreplace(dir: BorrowedFd, from: &OsStr, to: &OsStr) -> nix::Result<()> {
    match nix::fcntl::renameat2(dir, from, dir, to, nix::fcntl::RenameFlags::RENAME_NOREPLACE) {
        Err(Errno::EINVAL | Errno::ENOSYS | Errno::EPERM) => rename_if_free(dir, from, to),
        other => other,
    }
}

/// `rename_noreplace` without `RENAME_NOREPLACE`: the name is checked, then taken.
fn rename_if_free(dir: BorrowedFd, from: &OsStr, to: &OsStr) -> nix::Result<()> {
    match lstat_at(dir, to) {
        Ok(_) => Err(Errno::EEXIST),
        Err(Errno::ENOENT) => nix::fcntl::renameat(dir, from, dir, to),
        Err(e) => Err(e),
    }
}

/// (available to unprivileged users, total) bytes of the file system holding `dir`.
pub fn free_space(dir: impl AsFd) -> io::Result<(u64, u64)> {
    let s = nix::sys::statvfs::fstatvfs(dir)?;
    let unit = s.fragment_size() as u64;
    Ok((s.blocks_available() as u64 * unit, s.blocks() as u64 * unit))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// `a/b/c`, a link `a/up -> ..`, a link `a/abs -> /` and a file `a/f`.
    fn tree() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("a/b/c")).unwrap();
        std::os::unix::fs::symlink("..", t.path().join("a/up")).unwrap();
        std::os::unix::fs::symlink("/", t.path().join("a/abs")).unwrap();
        std::fs::write(t.path().join("a/f"), b"").unwrap();
        t
    }

    fn ino(fd: &OwnedFd) -> u64 {
        nix::sys::stat::fstat(fd).unwrap().st_ino
    }

    /// The walk used where openat2 is refused answers as openat2 does.
    #[test]
    fn the_walk_refuses_what_openat2_refuses() {
        let t = tree();
        let root = open_dir_strict(t.path()).unwrap();
        let beneath = ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS;
        let via_openat2 = |rel: &str| {
            let how = OpenHow::new()
                .flags(OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
                .resolve(beneath);
            openat2(&root, rel, how)
        };
        for rel in ["a/b/c", "a", ".", "a/./b"] {
            let (w, o) = (walk_dirs(root.as_fd(), Path::new(rel), true).unwrap(), via_openat2(rel).unwrap());
            assert_eq!(ino(&w), ino(&o), "{rel}");
            assert_eq!(ino(&w), std::fs::metadata(t.path().join(rel)).unwrap().ino(), "{rel}");
        }
        for (rel, errno) in [
            ("a/up", Errno::ELOOP),
            ("a/up/a", Errno::ELOOP),
            ("a/abs", Errno::ELOOP),
            ("a/f", Errno::ENOTDIR),
            ("a/missing", Errno::ENOENT),
        ] {
            assert_eq!(walk_dirs(root.as_fd(), Path::new(rel), true).unwrap_err(), errno, "{rel}");
            assert_eq!(via_openat2(rel).unwrap_err(), errno, "{rel}");
        }
        // Leaving the directory: openat2 says EXDEV, and so does the walk
        // (which also refuses a `..` that would stay inside).
        for rel in ["..", "a/../..", "/etc"] {
            assert_eq!(walk_dirs(root.as_fd(), Path::new(rel), true).unwrap_err(), Errno::EXDEV, "{rel}");
            assert_eq!(via_openat2(rel).unwrap_err(), Errno::EXDEV, "{rel}");
        }
        // Without `beneath`: absolute paths and `..` are fine, links are not.
        let w = walk_dirs(root.as_fd(), &t.path().join("a/b/../b/c"), false).unwrap();
        assert_eq!(ino(&w), std::fs::metadata(t.path().join("a/b/c")).unwrap().ino());
        assert_eq!(walk_dirs(root.as_fd(), &t.path().join("a/up/a"), false).unwrap_err(), Errno::ELOOP);
    }

    /// What a disk may hold where a file is expected opens at once and is
    /// refused by its type; a long line is an error, not an allocation.
    #[test]
    fn disk_files_open_one_way_and_read_bounded() {
        let t = tree();
        nix::unistd::mkfifo(&t.path().join("fifo"), Mode::from_bits_truncate(0o644)).unwrap();
        let dir = open_dir_strict(t.path()).unwrap();
        let e = open_file(dir.as_fd(), "fifo".as_ref()).unwrap_err().to_string();
        assert!(e.contains("is a FIFO, not a regular file"), "{e}");
        assert!(!partial_in_use(dir.as_fd(), "fifo".as_ref()), "a FIFO is never a locked .partial");
        let e = open_file(dir.as_fd(), "a/up".as_ref());
        assert!(e.is_err(), "a symbolic link is not followed");
        let e = open_file(dir.as_fd(), "a".as_ref()).unwrap_err().to_string();
        assert!(e.contains("is a folder"), "{e}");
        assert!(open_file(dir.as_fd(), "a/f".as_ref()).is_err(), "one name, not a path through links");
        let a = open_dir_strict(&t.path().join("a")).unwrap();
        assert!(open_file(a.as_fd(), "f".as_ref()).is_ok());

        let mut input = io::Cursor::new(b"short\nexactly10\n0123456789abcdef".to_vec());
        let mut buf = Vec::new();
        assert_eq!(read_line_capped(&mut input, &mut buf, 10).unwrap(), 6);
        buf.clear();
        assert_eq!(
            read_line_capped(&mut input, &mut buf, 10).unwrap(),
            10,
            "a line of the cap, newline included"
        );
        buf.clear();
        let e = read_line_capped(&mut input, &mut buf, 10).unwrap_err().to_string();
        assert!(e.contains("longer than 10 bytes") && buf.is_empty(), "{e}");
        let mut zeros = io::BufReader::new(io::Read::take(io::repeat(0), 1 << 40));
        assert!(read_line_capped(&mut zeros, &mut buf, 1 << 16).is_err(), "a 1 TiB line stops at the cap");
    }

    #[test]
    fn rename_noreplace_never_replaces() {
        let t = tree();
        let dir = open_dir_strict(t.path()).unwrap();
        for rename in [rename_noreplace, rename_if_free] {
            std::fs::write(t.path().join("x.partial"), b"new").unwrap();
            let taken = rename(dir.as_fd(), "x.partial".as_ref(), "a".as_ref());
            assert_eq!(taken.unwrap_err(), Errno::EEXIST);
            rename(dir.as_fd(), "x.partial".as_ref(), "x".as_ref()).unwrap();
            assert_eq!(std::fs::read(t.path().join("x")).unwrap(), b"new");
            std::fs::remove_file(t.path().join("x")).unwrap();
        }
    }
}
