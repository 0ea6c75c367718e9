//! The manifest a snapshot leaves in its folder: one line per entry with
//! its type, mode, owner, size, mtime and BLAKE3 checksum, written last, so
//! that a folder with a manifest is a complete snapshot. `verify` compares a
//! folder with it; the next snapshot takes the checksums of unchanged files
//! from it instead of reading them again.
//!
//! Paths are bytes: printable UTF-8 is kept, a backslash, a control
//! character or a byte that is not UTF-8 is written `\xHH`, so a name with a
//! newline or in Latin-1 survives the round trip.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::io::{self, BufRead, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// The manifest's name in the top folder of a snapshot.
pub const NAME: &str = ".tetras-back-manifest";
const HEADER: &str = "tetras-back manifest 1";

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

/// Writes the entries, sorted by path, to `out`.
pub fn write(out: &mut impl Write, entries: &mut [Entry]) -> io::Result<()> {
    entries.sort_unstable_by(|a, b| a.path.as_os_str().as_bytes().cmp(b.path.as_os_str().as_bytes()));
    let mut line = String::with_capacity(256);
    writeln!(out, "{HEADER}")?;
    for e in entries.iter() {
        line.clear();
        let _ = write!(
            line,
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
                    let _ = write!(line, "{b:02x}");
                }
            }
            None => line.push('-'),
        }
        line.push('\t');
        escape(e.path.as_os_str().as_bytes(), &mut line);
        line.push('\n');
        out.write_all(line.as_bytes())?;
    }
    out.flush()
}

/// Reads a manifest; `what` names it in errors.
pub fn read(input: impl BufRead, what: &Path) -> Result<Vec<Entry>> {
    let mut lines = input.split(b'\n');
    let header = lines.next().transpose()?.unwrap_or_default();
    if header != HEADER.as_bytes() {
        bail!(
            "{}: not a tetras-back manifest (first line {:?})",
            what.display(),
            String::from_utf8_lossy(&header)
        );
    }
    let mut entries = Vec::new();
    for (i, line) in lines.enumerate() {
        let line = line?;
        if line.is_empty() {
            continue;
        }
        let entry = parse_line(&line).with_context(|| format!("{}: line {}", what.display(), i + 2))?;
        entries.push(entry);
    }
    Ok(entries)
}

/// The entries by path.
pub fn by_path(entries: Vec<Entry>) -> HashMap<PathBuf, Entry> {
    entries.into_iter().map(|e| (e.path.clone(), e)).collect()
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
        path: PathBuf::from(OsString::from_vec(unescape(path)?)),
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

fn escape(bytes: &[u8], out: &mut String) {
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c == '\\' || c.is_control() {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    let _ = write!(out, "\\x{b:02x}");
                }
            } else {
                out.push(c);
            }
        }
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
}

fn unescape(s: &str) -> Result<Vec<u8>> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' {
            let hex = s.get(i + 2..i + 4).filter(|_| bytes.get(i + 1) == Some(&b'x'));
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

    #[test]
    fn round_trip_with_strange_names() {
        let names: [&[u8]; 5] =
            [b"plain", b"new\nline", b"tab\there", b"latin1-\xe9t\xe9", b"back\\slash/\xc3\xa9"];
        let mut entries: Vec<Entry> = names
            .iter()
            .enumerate()
            .map(|(i, n)| Entry {
                path: PathBuf::from(OsString::from_vec(n.to_vec())),
                kind: if i == 0 { Kind::Dir } else { Kind::File },
                mode: 0o4755,
                uid: 1000,
                gid: 0,
                size: i as u64 * 1000,
                mtime: (1_700_000_000, 123_456_789),
                hash: if i == 0 { None } else { Some([i as u8; 32]) },
            })
            .collect();
        let mut out = Vec::new();
        write(&mut out, &mut entries).unwrap();
        assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 6, "one line per entry: {out:?}");
        let back = read(&out[..], Path::new("m")).unwrap();
        assert_eq!(back, entries);
    }

    #[test]
    fn damage_is_reported_with_the_line() {
        let err = read(&b"tetras-back manifest 1\nf\t644\n"[..], Path::new("/b/m")).unwrap_err();
        assert!(format!("{err:#}").contains("/b/m: line 2"), "{err:#}");
        assert!(read(&b"hello\n"[..], Path::new("m")).is_err());
    }
}
