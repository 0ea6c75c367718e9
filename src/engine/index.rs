//! The manifest of a tree another tool wrote: what `pull` leaves in a
//! host's folder once rsync has filled it, so that `verify`, the drill,
//! `backups`, `restore` and the console read it as they read a snapshot.
//!
//! Checksums are carried over from the previous folder's manifest for the
//! files rsync hard-linked from it (the same inode at the same path) and
//! computed for the others; a file linked several times inside the tree is
//! read once. Everything is opened beneath the folder's descriptor, no link
//! followed.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::BufWriter;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

use anyhow::{anyhow, bail, Context, Result};
use nix::sys::stat::{FileStat, SFlag};
use serde::Serialize;

use super::fsx;
use super::manifest::{self, Hash, Kind, Manifest};
use super::snapshot::{entry, hash_file, spill_file};

/// What the tree holds, and what of it is new since the previous folder.
#[derive(Debug, Default, Clone, PartialEq, Serialize)]
pub struct Indexed {
    pub files: u64,
    pub bytes: u64,
    /// Files hard-linked from the previous folder (their checksums carried over).
    pub linked_files: u64,
    /// Files written anew, and their bytes.
    pub new_files: u64,
    pub new_bytes: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub specials: u64,
    /// Folders of the tree that are symbolic links in the previous folder:
    /// a tool that hard-links from it by path (rsync's `--link-dest`) may
    /// have followed them out of it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub followed_links: Vec<PathBuf>,
}

#[derive(Default)]
struct Counts {
    files: AtomicU64,
    bytes: AtomicU64,
    linked_files: AtomicU64,
    new_files: AtomicU64,
    new_bytes: AtomicU64,
    dirs: AtomicU64,
    symlinks: AtomicU64,
    specials: AtomicU64,
}

struct Ctx<'a> {
    root: BorrowedFd<'a>,
    what: &'a Path,
    prev: Option<(OwnedFd, Manifest)>,
    writer: manifest::Writer,
    /// Checksums of inodes linked several times in the tree.
    seen: Mutex<HashMap<(u64, u64), Hash>>,
    followed: Mutex<Vec<PathBuf>>,
    n: Counts,
}

/// Writes the manifest of the tree at `root` (`what`, for messages), the
/// last thing written into it. `prev` is the previous folder of the same
/// tree, whose manifest gives the checksums of the files linked from it; a
/// previous folder without a readable manifest only costs reading those
/// files.
pub fn write(root: BorrowedFd, what: &Path, prev: Option<&Path>) -> Result<Indexed> {
    let prev = prev.and_then(|p| {
        let fd = fsx::open_dir_strict(p).ok()?;
        let file = fsx::open_file(fd.as_fd(), OsStr::new(manifest::NAME)).ok()?;
        match Manifest::open(file, &p.join(manifest::NAME)) {
            Ok(m) => Some((fd, m)),
            Err(e) => {
                eprintln!("tetras-back: {e:#}: its checksums are computed again");
                None
            }
        }
    });
    let writer = manifest::Writer::new(spill_file(root)?);
    let ctx = Ctx {
        root,
        what,
        prev,
        writer,
        seen: Mutex::default(),
        followed: Mutex::default(),
        n: Counts::default(),
    };
    super::walk::par_walk(vec![PathBuf::new()], |rel| ctx.visit(rel))?;
    let out = fsx::create_new(root, OsStr::new(manifest::NAME))
        .map_err(|e| anyhow!("cannot create {}: {}", what.join(manifest::NAME).display(), e.desc()))?;
    let mut w = BufWriter::with_capacity(1 << 20, &out);
    ctx.writer
        .finish(&mut w)
        .with_context(|| format!("cannot write {}", what.join(manifest::NAME).display()))?;
    drop(w);
    out.sync_all().context("cannot sync the manifest")?;
    let n = &ctx.n;
    Ok(Indexed {
        files: n.files.load(Relaxed),
        bytes: n.bytes.load(Relaxed),
        linked_files: n.linked_files.load(Relaxed),
        new_files: n.new_files.load(Relaxed),
        new_bytes: n.new_bytes.load(Relaxed),
        dirs: n.dirs.load(Relaxed),
        symlinks: n.symlinks.load(Relaxed),
        specials: n.specials.load(Relaxed),
        followed_links: ctx.followed.into_inner().unwrap(),
    })
}

impl Ctx<'_> {
    fn err(&self, rel: &Path, e: impl std::fmt::Display) -> anyhow::Error {
        anyhow!("{}: {e}", self.what.join(rel).display())
    }

    fn visit(&self, rel: PathBuf) -> Result<Vec<PathBuf>> {
        let dir = fsx::open_beneath(self.root, &rel).map_err(|e| self.err(&rel, e.desc()))?;
        let mut names = fsx::read_names(dir.as_fd()).map_err(|e| self.err(&rel, e.desc()))?;
        names.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        let prev_dir = self.prev.as_ref().and_then(|(fd, _)| fsx::open_beneath(fd.as_fd(), &rel).ok());
        let mut before = match (&self.prev, &prev_dir) {
            (Some((_, m)), Some(_)) => Some(m.children(&rel)),
            _ => None,
        };
        let mut out = self.writer.dir(&rel);
        let mut subdirs = Vec::new();
        for name in names {
            let path = rel.join(&name);
            if manifest::is_ours(&path) {
                bail!(
                    "{}: a name reserved for the manifest is already there",
                    self.what.join(&path).display()
                );
            }
            let st = fsx::lstat_at(dir.as_fd(), &name).map_err(|e| self.err(&path, e.desc()))?;
            let e = match fsx::kind(&st) {
                SFlag::S_IFDIR => {
                    self.n.dirs.fetch_add(1, Relaxed);
                    let link_before = prev_dir.as_ref().is_some_and(|p| {
                        fsx::lstat_at(p.as_fd(), &name).is_ok_and(|p| fsx::kind(&p) == SFlag::S_IFLNK)
                    });
                    if link_before {
                        self.followed.lock().unwrap().push(path.clone());
                    }
                    subdirs.push(path.clone());
                    entry(path, Kind::Dir, &st, 0, None)
                }
                SFlag::S_IFREG => {
                    let known = match &mut before {
                        Some(b) => b.find(&name, drop)?,
                        None => None,
                    };
                    let linked = prev_dir.as_ref().is_some_and(|p| {
                        fsx::lstat_at(p.as_fd(), &name)
                            .is_ok_and(|p| (p.st_dev, p.st_ino) == (st.st_dev, st.st_ino))
                    });
                    let size = st.st_size as u64;
                    let carried = known
                        .filter(|k| {
                            linked
                                && k.kind == Kind::File
                                && k.size == size
                                && k.mtime == (st.st_mtime, st.st_mtime_nsec)
                        })
                        .and_then(|k| k.hash);
                    let (hash, first) = match carried {
                        Some(h) => (h, false),
                        None => self.hash(dir.as_fd(), &name, &path, &st)?,
                    };
                    self.n.files.fetch_add(1, Relaxed);
                    self.n.bytes.fetch_add(size, Relaxed);
                    if linked {
                        self.n.linked_files.fetch_add(1, Relaxed);
                    } else {
                        self.n.new_files.fetch_add(1, Relaxed);
                        if first {
                            self.n.new_bytes.fetch_add(size, Relaxed);
                        }
                    }
                    entry(path, Kind::File, &st, size, Some(hash))
                }
                SFlag::S_IFLNK => {
                    let target = nix::fcntl::readlinkat(dir.as_fd(), name.as_os_str())
                        .map_err(|e| self.err(&path, e.desc()))?;
                    self.n.symlinks.fetch_add(1, Relaxed);
                    let bytes = target.as_bytes();
                    entry(path, Kind::Symlink, &st, bytes.len() as u64, Some(*blake3::hash(bytes).as_bytes()))
                }
                _ => {
                    self.n.specials.fetch_add(1, Relaxed);
                    entry(path, Kind::Special, &st, st.st_rdev, None)
                }
            };
            out.push(&e).map_err(|e| anyhow!("cannot write the manifest: {e}"))?;
        }
        out.finish().map_err(|e| anyhow!("cannot write the manifest: {e}"))?;
        Ok(subdirs)
    }

    /// The checksum of a file of the tree, read once per inode; and whether
    /// this was its first path (its bytes were not counted yet).
    fn hash(&self, dir: BorrowedFd, name: &OsStr, path: &Path, st: &FileStat) -> Result<(Hash, bool)> {
        let inode = (st.st_dev, st.st_ino);
        if st.st_nlink > 1 {
            if let Some(h) = self.seen.lock().unwrap().get(&inode) {
                return Ok((*h, false));
            }
        }
        let f = fsx::open_file(dir, name).map_err(|e| self.err(path, e))?;
        let h = hash_file(&f).map_err(|e| self.err(path, e))?;
        if st.st_nlink > 1 {
            self.seen.lock().unwrap().insert(inode, h);
        }
        Ok((h, true))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    /// A folder of the new tree that is a symbolic link in the previous
    /// one is reported (a tool linking by path may have followed it), and
    /// the checksums of files linked from the previous folder are carried.
    #[test]
    fn links_in_the_previous_folder_where_folders_are_now_are_named() {
        let t = tempfile::tempdir().unwrap();
        let (prev, new) = (t.path().join("prev"), t.path().join("new"));
        fs::create_dir_all(prev.join("kept")).unwrap();
        fs::write(prev.join("kept/f"), "same").unwrap();
        std::os::unix::fs::symlink("/etc", prev.join("leak")).unwrap();
        let prev_fd = fsx::open_dir_strict(&prev).unwrap();
        write(prev_fd.as_fd(), &prev, None).unwrap();
        fs::create_dir_all(new.join("kept")).unwrap();
        fs::hard_link(prev.join("kept/f"), new.join("kept/f")).unwrap();
        fs::create_dir_all(new.join("leak")).unwrap();
        fs::write(new.join("leak/passwd"), "mine").unwrap();
        let new_fd = fsx::open_dir_strict(&new).unwrap();
        let i = write(new_fd.as_fd(), &new, Some(&prev)).unwrap();
        assert_eq!(i.followed_links, [PathBuf::from("leak")]);
        assert_eq!((i.files, i.linked_files, i.new_files, i.new_bytes), (2, 1, 1, 4));
    }
}
