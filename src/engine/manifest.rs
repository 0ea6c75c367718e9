//! The manifest a snapshot leaves in its folder: one line per entry with
//! its type, mode, owner, size, mtime and BLAKE3 checksum, written last, so
//! that a folder with a manifest is a complete snapshot. `verify` compares a
//! folder with it; the next snapshot takes the checksums of unchanged files
//! from it instead of reading them again.
//!
//! Paths are bytes: printable UTF-8 is kept, a backslash, a control
//! character or a byte that is not UTF-8 is written `\xHH`, so a name with a
//! newline or in Latin-1 survives the round trip.
//!
//! The lines are grouped by directory (format 2): the entries of one
//! directory are one block, in the byte order of their names, and the
//! blocks follow the directories' depth-first order. Memory does not grow
//! with the tree: a [`Writer`] spills each directory's lines to an unlinked
//! file on the destination as the walk produces them and assembles the
//! blocks at the end; a [`Manifest`] keeps only where each directory's block
//! starts and reads it when that directory is visited, in step with its
//! sorted names. A format-1 manifest (sorted by whole path) is regrouped in
//! memory once.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

use anyhow::{bail, Context, Result};

use super::fsx;

/// The note a snapshot carries when a source shrank (what snapshot's
/// `Shrunk` says, one JSON line each).
pub const SHRUNK_NOTE: &str = ".tetras-back-shrunk";

/// Whether `top`, a path at the top of a snapshot, is one of the engine's
/// own files there (the manifest, the shrink note): never a backed-up file,
/// never restored, never compared.
pub fn is_ours(top: &Path) -> bool {
    top.as_os_str() == NAME || top.as_os_str() == SHRUNK_NOTE
}

/// The manifest's name in the top folder of a snapshot.
pub const NAME: &str = ".tetras-back-manifest";
const HEADER: &str = "tetras-back manifest 2";
/// Sorted by whole path, as written before 0.2.
const HEADER_V1: &str = "tetras-back manifest 1";
/// Lines of a directory kept in memory before they go to the spill file.
const SPILL_AT: usize = 1 << 20;
/// The longest line a manifest may have: eight fields, the path escaped
/// (at most 4 bytes for each of PATH_MAX's), a hash. A longer line is
/// damage (or a forgery), never an allocation of its length.
pub const LINE_MAX: usize = 64 * 1024;

pub type Hash = [u8; 32];

/// What an entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    /// FIFO, socket or device node: recreated, never read.
    Special,
}

impl Kind {
    fn letter(self) -> char {
        match self {
            Kind::File => 'f',
            Kind::Dir => 'd',
            Kind::Symlink => 'l',
            Kind::Special => 's',
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub path: PathBuf,
    pub kind: Kind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Bytes of a file, or of a symlink's target.
    pub size: u64,
    pub mtime: (i64, i64),
    /// Of a file's content or a symlink's target.
    pub hash: Option<Hash>,
}

impl Entry {
    /// The last component of the path.
    pub fn name(&self) -> &OsStr {
        self.path.file_name().unwrap_or(self.path.as_os_str())
    }
}

/// Appends the entry's line, newline included.
fn push_line(out: &mut Vec<u8>, e: &Entry) {
    let _ = write!(
        out,
        "{}\t{:o}\t{}\t{}\t{}\t{}.{:09}\t",
        e.kind.letter(),
        e.mode,
        e.uid,
        e.gid,
        e.size,
        e.mtime.0,
        e.mtime.1
    );
    match &e.hash {
        Some(h) => {
            for b in h {
                let _ = write!(out, "{b:02x}");
            }
        }
        None => out.push(b'-'),
    }
    out.push(b'\t');
    escape(e.path.as_os_str().as_bytes(), out);
    out.push(b'\n');
}

/// Builds a manifest from the directories of a walk, visited in any order
/// on any thread.
pub struct Writer {
    spill: File,
    spilled: AtomicU64,
    /// Each directory's runs of lines, a run being segments of the spill
    /// file. A directory written by one job has one run.
    dirs: Mutex<HashMap<PathBuf, Vec<Vec<Segment>>>>,
}

#[derive(Clone, Copy)]
struct Segment {
    start: u64,
    len: u64,
}

impl Writer {
    /// `spill` is a scratch file (unlinked) on a file system with room for
    /// the manifest.
    pub fn new(spill: File) -> Writer {
        Writer { spill, spilled: AtomicU64::new(0), dirs: Mutex::default() }
    }

    /// The writer of some entries of `dir`, given in the byte order of their
    /// names.
    pub fn dir(&self, dir: &Path) -> DirWriter<'_> {
        DirWriter { writer: self, dir: dir.to_owned(), buf: Vec::new(), run: Vec::new() }
    }

    fn spill(&self, buf: &[u8]) -> io::Result<Segment> {
        let start = self.spilled.fetch_add(buf.len() as u64, Relaxed);
        self.spill.write_all_at(buf, start)?;
        Ok(Segment { start, len: buf.len() as u64 })
    }

    /// Writes the manifest: the directories in depth-first order, each one's
    /// entries in the order of their names.
    pub fn finish(self, out: &mut impl Write) -> io::Result<()> {
        let mut dirs: Vec<(PathBuf, Vec<Vec<Segment>>)> =
            self.dirs.into_inner().unwrap().into_iter().collect();
        // Path's order compares component by component: depth first.
        dirs.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        writeln!(out, "{HEADER}")?;
        let mut buf = vec![0; SPILL_AT];
        for (_, runs) in dirs {
            if let [run] = &runs[..] {
                for seg in run {
                    let mut r =
                        Window { data: Data::File(&self.spill), pos: seg.start, end: seg.start + seg.len };
                    io::copy(&mut r, out)?;
                }
                continue;
            }
            // Several jobs wrote into this directory (several sources at
            // the top, hard links added at the end): merged by name.
            buf.clear();
            for seg in runs.iter().flatten() {
                let at = buf.len();
                buf.resize(at + seg.len as usize, 0);
                self.spill.read_exact_at(&mut buf[at..], seg.start)?;
            }
            let mut lines: Vec<(Vec<u8>, &[u8])> =
                buf.split_inclusive(|&b| b == b'\n').map(|l| (line_name(l), l)).collect();
            lines.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            for (_, l) in lines {
                out.write_all(l)?;
            }
        }
        out.flush()
    }
}

/// The raw name of the entry of a line written by [`push_line`].
fn line_name(line: &[u8]) -> Vec<u8> {
    let path = line.rsplit(|&b| b == b'\t').next().unwrap_or_default();
    let path = path.strip_suffix(b"\n").unwrap_or(path);
    let name = path.rsplit(|&b| b == b'/').next().unwrap_or_default();
    unescape(name).unwrap_or_default()
}

/// Some entries of one directory, in name order.
pub struct DirWriter<'a> {
    writer: &'a Writer,
    dir: PathBuf,
    buf: Vec<u8>,
    run: Vec<Segment>,
}

impl DirWriter<'_> {
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn push(&mut self, e: &Entry) -> io::Result<()> {
        push_line(&mut self.buf, e);
        if self.buf.len() >= SPILL_AT {
            self.run.push(self.writer.spill(&self.buf)?);
            self.buf.clear();
        }
        Ok(())
    }

    pub fn finish(mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            self.run.push(self.writer.spill(&self.buf)?);
        }
        if !self.run.is_empty() {
            self.writer.dirs.lock().unwrap().entry(self.dir).or_default().push(self.run);
        }
        Ok(())
    }
}

/// A manifest open for reading, directory by directory.
pub struct Manifest {
    data: Owned,
    what: PathBuf,
    /// Each directory's block, by the directory's escaped path.
    blocks: HashMap<Vec<u8>, Block>,
    /// Its files and their bytes, counted as it was indexed.
    pub totals: Totals,
}

/// Files and file bytes of a manifest, in all and by the first name of
/// their paths (the sources of a snapshot of several), for at most
/// [`Totals::TOPS`] first names.
#[derive(Debug, Default, Clone)]
pub struct Totals {
    pub files: u64,
    pub bytes: u64,
    by_top: HashMap<Vec<u8>, (u64, u64)>,
}

impl Totals {
    const TOPS: usize = 1024;

    /// (files, bytes) below the top-level entry `name` (`""`: everything);
    /// `None` when that was not counted (more than [`Totals::TOPS`] names).
    pub fn below(&self, name: &Path) -> Option<(u64, u64)> {
        if name.as_os_str().is_empty() {
            return Some((self.files, self.bytes));
        }
        let mut key = Vec::new();
        escape(name.as_os_str().as_bytes(), &mut key);
        match self.by_top.get(&key) {
            Some(&t) => Some(t),
            None if self.by_top.len() < Self::TOPS => Some((0, 0)),
            None => None,
        }
    }

    /// Counts one line of a manifest (without its newline).
    pub(super) fn add_line(&mut self, line: &[u8]) {
        let path = &line[line.iter().rposition(|&b| b == b'\t').map_or(line.len(), |t| t + 1)..];
        self.add(line, path);
    }

    fn add(&mut self, line: &[u8], path: &[u8]) {
        if line.first() != Some(&b'f') {
            return;
        }
        let size = line.split(|&b| b == b'\t').nth(4).and_then(|s| std::str::from_utf8(s).ok()?.parse().ok());
        let size: u64 = size.unwrap_or(0);
        self.files += 1;
        self.bytes += size;
        let top = &path[..path.iter().position(|&b| b == b'/').unwrap_or(path.len())];
        let room = self.by_top.len() < Self::TOPS;
        match self.by_top.get_mut(top) {
            Some(t) => *t = (t.0 + 1, t.1 + size),
            None if room => {
                self.by_top.insert(top.to_vec(), (1, size));
            }
            None => {}
        }
    }
}

enum Owned {
    File(File),
    /// A format-1 manifest, regrouped.
    Memory(Vec<u8>),
}

impl Owned {
    fn borrow(&self) -> Data<'_> {
        match self {
            Owned::File(f) => Data::File(f),
            Owned::Memory(m) => Data::Memory(m),
        }
    }
}

#[derive(Clone, Copy)]
enum Data<'a> {
    File(&'a File),
    Memory(&'a [u8]),
}

#[derive(Clone, Copy)]
struct Block {
    start: u64,
    end: u64,
    /// Line number of its first line, for messages.
    line: usize,
}

impl Manifest {
    /// Indexes a manifest; `what` names it in errors.
    pub fn open(file: File, what: &Path) -> Result<Manifest> {
        let mut input = BufReader::with_capacity(1 << 20, &file);
        let mut header = Vec::new();
        fsx::read_line_capped(&mut input, &mut header, LINE_MAX)
            .with_context(|| format!("{}: line 1", what.display()))?;
        let header = header.strip_suffix(b"\n").unwrap_or(&header);
        if header == HEADER_V1.as_bytes() {
            let mut entries = read_lines(input, what)?;
            fn parent(e: &Entry) -> &[u8] {
                e.path.parent().map(|p| p.as_os_str().as_bytes()).unwrap_or_default()
            }
            entries.sort_unstable_by(|a, b| {
                (parent(a), a.name().as_bytes()).cmp(&(parent(b), b.name().as_bytes()))
            });
            let mut data = format!("{HEADER}\n").into_bytes();
            for e in &entries {
                push_line(&mut data, e);
            }
            let (blocks, totals) = index(&data[HEADER.len() + 1..], HEADER.len() as u64 + 1, what)?;
            return Ok(Manifest { data: Owned::Memory(data), what: what.to_owned(), blocks, totals });
        }
        if header != HEADER.as_bytes() {
            bail!(
                "{}: not a tetras-back manifest (first line {:?})",
                what.display(),
                String::from_utf8_lossy(header)
            );
        }
        let (blocks, totals) = index(input, HEADER.len() as u64 + 1, what)?;
        Ok(Manifest { data: Owned::File(file), what: what.to_owned(), blocks, totals })
    }

    /// The entries of `dir` (relative to the snapshot, `""` for its top), in
    /// the byte order of their names.
    pub fn children(&self, dir: &Path) -> Children<'_> {
        let mut key = Vec::new();
        escape(dir.as_os_str().as_bytes(), &mut key);
        let block = self.blocks.get(&key).copied();
        Children {
            manifest: self,
            input: block.map(|b| {
                BufReader::with_capacity(
                    64 * 1024,
                    Window { data: self.data.borrow(), pos: b.start, end: b.end },
                )
            }),
            line: block.map_or(0, |b| b.line),
            last: None,
            buf: Vec::new(),
            peeked: None,
        }
    }
}

/// Where each directory's block is: `lines` starts at byte `offset` of the
/// file, on line 2.
fn index(mut lines: impl BufRead, mut offset: u64, what: &Path) -> Result<(HashMap<Vec<u8>, Block>, Totals)> {
    let mut blocks: HashMap<Vec<u8>, Block> = HashMap::new();
    let mut totals = Totals::default();
    let mut current: Option<(Vec<u8>, Block)> = None;
    let mut line = Vec::new();
    let mut n = 1;
    let close = |blocks: &mut HashMap<Vec<u8>, Block>, done: Option<(Vec<u8>, Block)>, n: usize| {
        if let Some((dir, block)) = done {
            if blocks.insert(dir.clone(), block).is_some() {
                bail!(
                    "{}: line {n}: the entries of {:?} are not all together (is the manifest damaged?)",
                    what.display(),
                    String::from_utf8_lossy(&dir)
                );
            }
        }
        Ok(())
    };
    loop {
        line.clear();
        let len = fsx::read_line_capped(&mut lines, &mut line, LINE_MAX)
            .with_context(|| format!("{}: line {}", what.display(), n + 1))? as u64;
        if len == 0 {
            break;
        }
        n += 1;
        let text = line.strip_suffix(b"\n").unwrap_or(&line);
        if !text.is_empty() {
            let Some(tab) = text.iter().rposition(|&b| b == b'\t') else {
                bail!("{}: line {n}: expected 8 tab-separated fields", what.display());
            };
            let path = &text[tab + 1..];
            totals.add(text, path);
            let parent = &path[..path.iter().rposition(|&b| b == b'/').unwrap_or(0)];
            match &mut current {
                Some((dir, block)) if dir == parent => block.end = offset + len,
                _ => {
                    let next = (parent.to_vec(), Block { start: offset, end: offset + len, line: n });
                    close(&mut blocks, current.replace(next), n)?;
                }
            }
        }
        offset += len;
    }
    close(&mut blocks, current, n)?;
    Ok((blocks, totals))
}

/// A range of the manifest's bytes.
struct Window<'a> {
    data: Data<'a>,
    pos: u64,
    end: u64,
}

impl Read for Window<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = buf.len().min((self.end - self.pos) as usize);
        let n = match self.data {
            Data::File(f) => f.read_at(&mut buf[..want], self.pos)?,
            Data::Memory(m) => {
                let from = &m[self.pos as usize..][..want];
                buf[..want].copy_from_slice(from);
                want
            }
        };
        self.pos += n as u64;
        Ok(n)
    }
}

/// The entries of one directory, in name order.
pub struct Children<'a> {
    manifest: &'a Manifest,
    input: Option<BufReader<Window<'a>>>,
    line: usize,
    last: Option<OsString>,
    buf: Vec<u8>,
    peeked: Option<Entry>,
}

impl<'a> Children<'a> {
    /// The entry named `name`, if there is one; the entries before it, in
    /// name order, are given to `passed`. Names must be asked for in byte
    /// order.
    pub fn find(&mut self, name: &OsStr, mut passed: impl FnMut(Entry)) -> Result<Option<Entry>> {
        loop {
            let e = match self.peeked.take() {
                Some(e) => e,
                None => match self.next() {
                    Some(e) => e?,
                    None => return Ok(None),
                },
            };
            match e.name().as_bytes().cmp(name.as_bytes()) {
                std::cmp::Ordering::Less => passed(e),
                std::cmp::Ordering::Equal => return Ok(Some(e)),
                std::cmp::Ordering::Greater => {
                    self.peeked = Some(e);
                    return Ok(None);
                }
            }
        }
    }

    /// The entries not asked for by [`Children::find`] yet.
    pub fn rest(mut self) -> impl Iterator<Item = Result<Entry>> + 'a {
        self.peeked.take().map(Ok).into_iter().chain(self)
    }
}

impl Iterator for Children<'_> {
    type Item = Result<Entry>;

    fn next(&mut self) -> Option<Result<Entry>> {
        let input = self.input.as_mut()?;
        loop {
            self.buf.clear();
            match fsx::read_line_capped(input, &mut self.buf, LINE_MAX) {
                Ok(0) => return None,
                Ok(_) => {}
                Err(e) => {
                    let what = format!("{}: line {}", self.manifest.what.display(), self.line);
                    return Some(Err(anyhow::Error::from(e).context(what)));
                }
            }
            let n = self.line;
            self.line += 1;
            let line = self.buf.strip_suffix(b"\n").unwrap_or(&self.buf);
            if line.is_empty() {
                continue;
            }
            let at = || format!("{}: line {n}", self.manifest.what.display());
            let entry = match parse_line(line).with_context(at) {
                Ok(e) => e,
                Err(e) => return Some(Err(e)),
            };
            let name = entry.name().to_owned();
            if self.last.as_ref().is_some_and(|last| last.as_bytes() >= name.as_bytes()) {
                return Some(Err(
                    anyhow::anyhow!("entries out of order (is the manifest damaged?)").context(at())
                ));
            }
            self.last = Some(name);
            return Some(Ok(entry));
        }
    }
}

/// The entries of a format-1 manifest, whole.
fn read_lines(mut input: impl BufRead, what: &Path) -> Result<Vec<Entry>> {
    let mut entries = Vec::new();
    let mut buf = Vec::new();
    for i in 0.. {
        buf.clear();
        let at = || format!("{}: line {}", what.display(), i + 2);
        if fsx::read_line_capped(&mut input, &mut buf, LINE_MAX).with_context(at)? == 0 {
            break;
        }
        let line = buf.strip_suffix(b"\n").unwrap_or(&buf);
        if line.is_empty() {
            continue;
        }
        let entry = parse_line(line).with_context(at)?;
        entries.push(entry);
    }
    Ok(entries)
}

fn parse_line(line: &[u8]) -> Result<Entry> {
    let text = std::str::from_utf8(line).context("not UTF-8 (paths are escaped)")?;
    let f: Vec<&str> = text.splitn(8, '\t').collect();
    let [kind, mode, uid, gid, size, mtime, hash, path] = f[..] else {
        bail!("expected 8 tab-separated fields, found {}", f.len());
    };
    let kind = match kind {
        "f" => Kind::File,
        "d" => Kind::Dir,
        "l" => Kind::Symlink,
        "s" => Kind::Special,
        k => bail!("unknown entry type {k:?}"),
    };
    let (sec, nsec) = mtime.split_once('.').context("mtime is not SECONDS.NANOSECONDS")?;
    let hash = match hash {
        "-" => None,
        h => Some(parse_hash(h).context("checksum is not 64 hexadecimal digits")?),
    };
    Ok(Entry {
        path: PathBuf::from(OsString::from_vec(unescape(path.as_bytes())?)),
        kind,
        mode: u32::from_str_radix(mode, 8).context("mode is not octal")?,
        uid: uid.parse().context("bad uid")?,
        gid: gid.parse().context("bad gid")?,
        size: size.parse().context("bad size")?,
        mtime: (sec.parse().context("bad mtime")?, nsec.parse().context("bad mtime")?),
        hash,
    })
}

fn parse_hash(h: &str) -> Option<Hash> {
    if h.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(h.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

fn escape(bytes: &[u8], out: &mut Vec<u8>) {
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            let mut buf = [0u8; 4];
            let encoded = c.encode_utf8(&mut buf).as_bytes();
            if c == '\\' || c.is_control() {
                for b in encoded {
                    let _ = write!(out, "\\x{b:02x}");
                }
            } else {
                out.extend_from_slice(encoded);
            }
        }
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
}

fn unescape(bytes: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' {
            let hex = bytes.get(i + 2..i + 4).filter(|_| bytes.get(i + 1) == Some(&b'x'));
            let hex = hex.and_then(|h| std::str::from_utf8(h).ok());
            let b = hex.and_then(|h| u8::from_str_radix(h, 16).ok()).context("bad escape in path")?;
            out.push(b);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Seek;

    fn entry(path: &[u8], kind: Kind, n: u8) -> Entry {
        Entry {
            path: PathBuf::from(OsString::from_vec(path.to_vec())),
            kind,
            mode: 0o4755,
            uid: 1000,
            gid: 0,
            size: n as u64 * 1000,
            mtime: (1_700_000_000, 123_456_789),
            hash: (kind == Kind::File).then_some([n; 32]),
        }
    }

    fn open(text: &[u8]) -> Result<Manifest> {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(text).unwrap();
        f.rewind().unwrap();
        Manifest::open(f, Path::new("/b/m"))
    }

    fn children(m: &Manifest, dir: &[u8]) -> Vec<Entry> {
        m.children(Path::new(OsStr::from_bytes(dir))).collect::<Result<_>>().unwrap()
    }

    #[test]
    fn round_trip_with_strange_names_grouped_by_directory() {
        let top = [
            entry(b"a", Kind::Dir, 0),
            entry(b"back\\slash", Kind::File, 1),
            entry(b"latin1-\xe9t\xe9", Kind::File, 2),
            entry(b"new\nline", Kind::Dir, 0),
            entry(b"tab\there", Kind::File, 3),
        ];
        let in_a = [entry(b"a/z", Kind::Symlink, 5), entry(b"a/\xc3\xa9", Kind::File, 4)];
        let in_newline = [entry(b"new\nline/x", Kind::File, 6)];
        let w = Writer::new(tempfile::tempfile().unwrap());
        // Directories finish in any order; the top one in two runs, as with
        // several sources.
        let mut d = w.dir(Path::new(OsStr::from_bytes(b"new\nline")));
        d.push(&in_newline[0]).unwrap();
        d.finish().unwrap();
        let (mut first, mut second) = (w.dir(Path::new("")), w.dir(Path::new("")));
        for (i, e) in top.iter().enumerate() {
            if i % 2 == 0 { &mut first } else { &mut second }.push(e).unwrap();
        }
        first.finish().unwrap();
        second.finish().unwrap();
        let mut d = w.dir(Path::new("a"));
        for e in &in_a {
            d.push(e).unwrap();
        }
        d.finish().unwrap();
        w.dir(Path::new("empty")).finish().unwrap();
        let mut out = Vec::new();
        w.finish(&mut out).unwrap();

        assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 9, "one line per entry: {out:?}");
        let text = String::from_utf8(out.clone()).unwrap();
        let paths: Vec<&str> = text.lines().skip(1).map(|l| l.rsplit('\t').next().unwrap()).collect();
        assert_eq!(
            paths,
            [
                "a",
                "back\\x5cslash",
                "latin1-\\xe9t\\xe9",
                "new\\x0aline",
                "tab\\x09here",
                "a/z",
                "a/é",
                "new\\x0aline/x"
            ],
            "top first, then each directory depth first, names in byte order"
        );
        let m = open(&out).unwrap();
        assert_eq!(children(&m, b""), top);
        assert_eq!(children(&m, b"a"), in_a);
        assert_eq!(children(&m, b"new\nline"), in_newline);
        assert!(children(&m, b"empty").is_empty());
        assert!(children(&m, b"nowhere").is_empty());
    }

    #[test]
    fn format_1_is_regrouped() {
        let text = "tetras-back manifest 1\n\
            d\t755\t0\t0\t0\t1.000000000\t-\ta\n\
            f\t644\t0\t0\t3\t1.000000000\t-\ta/b\n\
            d\t755\t0\t0\t0\t1.000000000\t-\ta/c\n\
            f\t644\t0\t0\t3\t1.000000000\t-\ta/c/d\n\
            f\t644\t0\t0\t3\t1.000000000\t-\ta/e\n\
            f\t644\t0\t0\t3\t1.000000000\t-\tz\n";
        let m = open(text.as_bytes()).unwrap();
        let names = |dir: &[u8]| -> Vec<String> {
            children(&m, dir).iter().map(|e| e.path.display().to_string()).collect()
        };
        assert_eq!(names(b""), ["a", "z"]);
        assert_eq!(names(b"a"), ["a/b", "a/c", "a/e"]);
        assert_eq!(names(b"a/c"), ["a/c/d"]);
    }

    #[test]
    fn damage_is_reported_with_the_line() {
        let m = open(b"tetras-back manifest 2\nf\t644\tx\n").unwrap();
        let err = m.children(Path::new("")).next().unwrap().unwrap_err();
        assert!(format!("{err:#}").contains("/b/m: line 2"), "{err:#}");
        let err = open(b"tetras-back manifest 2\nno tab\n").err().unwrap();
        assert!(format!("{err:#}").contains("/b/m: line 2: expected 8"), "{err:#}");
        let line = |p: &str| format!("f\t644\t0\t0\t3\t1.000000000\t-\t{p}\n");
        let scattered = format!("tetras-back manifest 2\n{}{}{}", line("a/x"), line("b/y"), line("a/z"));
        let err = open(scattered.as_bytes()).err().unwrap();
        assert!(format!("{err:#}").contains("line 4: the entries of \"a\" are not all together"), "{err:#}");
        let unsorted = format!("tetras-back manifest 2\n{}{}", line("b"), line("a"));
        let err = open(unsorted.as_bytes()).unwrap().children(Path::new("")).nth(1).unwrap().unwrap_err();
        assert!(format!("{err:#}").contains("line 3: entries out of order"), "{err:#}");
        assert!(open(b"hello\n").err().unwrap().to_string().contains("not a tetras-back manifest"));
    }
}
