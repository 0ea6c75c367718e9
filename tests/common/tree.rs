//! Source trees for the engine tests, and an independent comparison of two
//! trees by lstat fields, content, link targets, extended attributes and
//! hard-link structure (it does not use the engines' own code).

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::disk::sh;

/// Sets a file's times (nanoseconds included) without following a symlink.
pub fn set_mtime(p: &Path, sec: i64, nsec: i64) {
    use nix::sys::stat::{utimensat, UtimensatFlags};
    use nix::sys::time::TimeSpec;
    let t = TimeSpec::new(sec, nsec);
    utimensat(nix::fcntl::AT_FDCWD, p, &t, &t, UtimensatFlags::NoFollowSymlink).unwrap();
}

fn chown(p: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(p, Some(uid), Some(gid)).unwrap();
}

fn mode(p: &Path, m: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(m)).unwrap();
}

/// Text-like content, different for each seed.
pub fn text(seed: u64, len: usize) -> Vec<u8> {
    let words = ["backup ", "disk ", "server ", "mail ", "home ", "etc ", "log\n", "data "];
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        out.extend_from_slice(words[(x >> 60) as usize % words.len()].as_bytes());
        if x & 0xf == 0 {
            out.extend_from_slice(format!("{:x} ", x >> 20).as_bytes());
        }
    }
    out.truncate(len);
    out
}

/// Everything a backup must keep: modes with set-uid and sticky bits, other
/// owners, symlinks (relative, absolute, dangling), hard links, empty
/// directories, a newline and a non-UTF-8 byte in names, a sparse file with
/// a 1 GiB hole, a FIFO, a device node, extended attributes, nanosecond
/// times.
pub fn torture(root: &Path) {
    fs::create_dir_all(root.join("a/b/c")).unwrap();
    fs::create_dir_all(root.join("empty/nested-empty")).unwrap();
    fs::create_dir_all(root.join("sticky")).unwrap();
    fs::write(root.join("a/setuid"), b"#!/bin/sh\n").unwrap();
    mode(&root.join("a/setuid"), 0o4755);
    mode(&root.join("sticky"), 0o1777);
    fs::write(root.join("a/b/other-owner"), text(1, 5000)).unwrap();
    chown(&root.join("a/b/other-owner"), 1234, 5678);
    mode(&root.join("a/b/other-owner"), 0o640);
    chown(&root.join("a/b/c"), 2000, 2001);
    mode(&root.join("a/b/c"), 0o750);
    fs::write(root.join("a/b/c/big"), text(2, 3 << 20)).unwrap();
    fs::write(root.join("a/empty-file"), b"").unwrap();
    std::os::unix::fs::symlink("b/other-owner", root.join("a/relative-link")).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", root.join("a/absolute-link")).unwrap();
    std::os::unix::fs::symlink("../nowhere/at/all", root.join("a/dangling-link")).unwrap();
    chown(&root.join("a/dangling-link"), 1234, 5678);
    fs::write(root.join("a/hard1"), text(3, 777)).unwrap();
    fs::hard_link(root.join("a/hard1"), root.join("a/b/hard2")).unwrap();
    fs::create_dir_all(root.join("linked")).unwrap();
    fs::hard_link(root.join("a/hard1"), root.join("linked/hard3")).unwrap();
    fs::write(root.join("new\nline"), b"a name with a newline\n").unwrap();
    fs::write(root.join(OsStr::from_bytes(b"caf\xe9-latin1")), b"not UTF-8\n").unwrap();
    let sparse = root.join("sparse");
    fs::write(&sparse, b"data at the start").unwrap();
    sh("truncate", &["-s", "1G", sparse.to_str().unwrap()]);
    let f = fs::OpenOptions::new().append(true).open(&sparse).unwrap();
    std::io::Write::write_all(&mut &f, b"and at the end").unwrap();
    drop(f);
    nix::unistd::mkfifo(&root.join("fifo"), nix::sys::stat::Mode::from_bits_truncate(0o620)).unwrap();
    sh("mknod", &["-m", "0600", root.join("null-device").to_str().unwrap(), "c", "1", "3"]);
    xattr::set(root.join("a/hard1"), "user.comment", b"kept").unwrap();
    xattr::set(root.join("a/b"), "user.dir-note", b"dirs too").unwrap();
    // Times last, deepest first, so that creating entries does not change them.
    let mut all = list(root);
    all.sort_by_key(|(p, _)| std::cmp::Reverse(p.components().count()));
    for (i, (p, _)) in all.iter().enumerate() {
        set_mtime(&root.join(p), 1_600_000_000 + i as i64 * 1000, 123_456_789 + i as i64);
    }
}

/// Every path below `root` (relative), with its metadata.
pub fn list(root: &Path) -> Vec<(PathBuf, fs::Metadata)> {
    fn go(root: &Path, rel: &Path, out: &mut Vec<(PathBuf, fs::Metadata)>) {
        for e in fs::read_dir(root.join(rel)).unwrap() {
            let e = e.unwrap();
            let r = rel.join(e.file_name());
            let m = fs::symlink_metadata(root.join(&r)).unwrap();
            let is_dir = m.is_dir();
            out.push((r.clone(), m));
            if is_dir {
                go(root, &r, out);
            }
        }
    }
    let mut out = Vec::new();
    go(root, Path::new(""), &mut out);
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

pub struct Compare {
    /// Compare modification times to the nanosecond (tar keeps seconds).
    pub nanoseconds: bool,
    pub xattrs: bool,
    /// Names in the copy that the source does not have.
    pub ignore: Vec<&'static str>,
}

impl Compare {
    /// Everything, times to the nanosecond and extended attributes included.
    pub fn exact() -> Compare {
        Compare { nanoseconds: true, xattrs: true, ignore: Vec::new() }
    }

    /// `exact`, for a snapshot of a source: the manifest is the snapshot's own.
    pub fn snapshot() -> Compare {
        Compare { ignore: vec![".tetras-back-manifest"], ..Compare::exact() }
    }
}

/// Panics with every difference between `src` and `copy`.
pub fn assert_same(src: &Path, copy: &Path, how: &Compare) {
    let a = list(src);
    let b: Vec<_> =
        list(copy).into_iter().filter(|(p, _)| !how.ignore.iter().any(|i| p == Path::new(i))).collect();
    let names_a: Vec<&PathBuf> = a.iter().map(|(p, _)| p).collect();
    let names_b: Vec<&PathBuf> = b.iter().map(|(p, _)| p).collect();
    assert_eq!(names_a, names_b, "the two trees hold different names");
    let mut problems = Vec::new();
    let mut groups_a: HashMap<u64, Vec<&PathBuf>> = HashMap::new();
    let mut groups_b: HashMap<u64, Vec<&PathBuf>> = HashMap::new();
    for ((p, ma), (_, mb)) in a.iter().zip(b.iter()) {
        let mut d = Vec::new();
        if ma.mode() != mb.mode() {
            d.push(format!("mode {:o} vs {:o}", ma.mode(), mb.mode()));
        }
        if (ma.uid(), ma.gid()) != (mb.uid(), mb.gid()) {
            d.push(format!("owner {}:{} vs {}:{}", ma.uid(), ma.gid(), mb.uid(), mb.gid()));
        }
        let nsec_ok = !how.nanoseconds || ma.mtime_nsec() == mb.mtime_nsec();
        if ma.mtime() != mb.mtime() || !nsec_ok {
            d.push(format!("mtime {}.{} vs {}.{}", ma.mtime(), ma.mtime_nsec(), mb.mtime(), mb.mtime_nsec()));
        }
        let ft = ma.file_type();
        if ft.is_file() {
            if ma.len() != mb.len() {
                d.push(format!("size {} vs {}", ma.len(), mb.len()));
            } else if !same_content(&src.join(p), &copy.join(p)) {
                d.push("content differs".into());
            }
            if ma.nlink() > 1 {
                groups_a.entry(ma.ino()).or_default().push(p);
                groups_b.entry(mb.ino()).or_default().push(p);
            }
        } else if ft.is_symlink() {
            if fs::read_link(src.join(p)).unwrap() != fs::read_link(copy.join(p)).unwrap() {
                d.push("link target differs".into());
            }
        } else if !ft.is_dir() && ma.rdev() != mb.rdev() {
            d.push(format!("device {} vs {}", ma.rdev(), mb.rdev()));
        }
        if how.xattrs && !ft.is_symlink() {
            let xa = xattrs(&src.join(p));
            let xb = xattrs(&copy.join(p));
            if xa != xb {
                d.push(format!("xattrs {xa:?} vs {xb:?}"));
            }
        }
        if !d.is_empty() {
            problems.push(format!("{}: {}", p.display(), d.join(", ")));
        }
    }
    let mut ga: Vec<Vec<&PathBuf>> = groups_a.into_values().collect();
    let mut gb: Vec<Vec<&PathBuf>> = groups_b.into_values().filter(|g| g.len() > 1).collect();
    ga.iter_mut().chain(gb.iter_mut()).for_each(|g| g.sort());
    ga.sort();
    gb.sort();
    if ga != gb {
        problems.push(format!("hard links differ: {ga:?} vs {gb:?}"));
    }
    assert!(
        problems.is_empty(),
        "{} differs from {}:\n{}",
        copy.display(),
        src.display(),
        problems.join("\n")
    );
}

fn same_content(a: &Path, b: &Path) -> bool {
    use std::io::Read;
    let (mut fa, mut fb) = (fs::File::open(a).unwrap(), fs::File::open(b).unwrap());
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let na = read_full(&mut fa, &mut ba);
        let nb = read_full(&mut fb, &mut bb);
        if na != nb || ba[..na] != bb[..nb] {
            return false;
        }
        if na == 0 {
            return true;
        }
    }
    fn read_full(f: &mut fs::File, buf: &mut [u8]) -> usize {
        let mut n = 0;
        while n < buf.len() {
            match f.read(&mut buf[n..]).unwrap() {
                0 => break,
                k => n += k,
            }
        }
        n
    }
}

fn xattrs(p: &Path) -> BTreeMap<String, Vec<u8>> {
    xattr::list(p)
        .unwrap()
        .filter(|n| n.as_bytes().starts_with(b"user."))
        .map(|n| (n.to_string_lossy().into_owned(), xattr::get(p, &n).unwrap().unwrap_or_default()))
        .collect()
}

/// One entry of a [`fingerprint`]: path, mode, size, mtime, inode, content.
pub type Print = (PathBuf, u32, u64, (i64, i64), u64, Vec<u8>);

/// Every file's content and metadata, to show a tree did not change.
pub fn fingerprint(root: &Path) -> Vec<Print> {
    list(root)
        .into_iter()
        .map(|(p, m)| {
            let content = if m.is_file() { fs::read(root.join(&p)).unwrap() } else { Vec::new() };
            (p, m.mode(), m.len(), (m.mtime(), m.mtime_nsec()), m.ino(), content)
        })
        .collect()
}
