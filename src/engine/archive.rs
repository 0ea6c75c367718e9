//! `archive`: a `.tar.gz` of trees, single files and glob matches, streamed
//! (no size limit) into `FILE.partial` and renamed when complete and synced.
//! The tar stream is cut into blocks compressed on all cores; each block is
//! an independent gzip member, and a file of several members is valid gzip
//! (RFC 1952), read by `gzip -d` and `tar xzf` as one stream.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, Metadata};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use flate2::Compression;
use serde::Serialize;
use tar::{EntryType, Header, HeaderMode};

use super::fsx::{self, Partial};
use super::progress;
use super::{Exclude, Skipped};

pub struct Options {
    pub output: PathBuf,
    pub paths: Vec<PathBuf>,
    /// Patterns expanded like a shell would (`/var/log/*.log`).
    pub globs: Vec<String>,
    pub exclude: Exclude,
    /// gzip level, 1 (fast) to 9 (small).
    pub level: u32,
}

#[derive(Debug, Default, Serialize)]
pub struct Summary {
    pub output: PathBuf,
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub hardlinks: u64,
    /// File data read.
    pub bytes_in: u64,
    /// Size of the archive.
    pub bytes_out: u64,
    pub skipped: u64,
    pub seconds: f64,
}

pub fn run(opts: &Options) -> Result<Summary> {
    let started = Instant::now();
    if !(1..=9).contains(&opts.level) {
        bail!("--level {}: gzip levels go from 1 to 9", opts.level);
    }
    let mut inputs: Vec<PathBuf> = opts.paths.clone();
    for pattern in &opts.globs {
        let matches: Vec<PathBuf> = glob::glob(pattern)
            .with_context(|| format!("--glob {pattern:?} is not a valid pattern"))?
            .filter_map(|m| m.ok())
            .collect();
        if matches.is_empty() {
            eprintln!("tetras-back: --glob {pattern:?} matches nothing");
        }
        inputs.extend(matches);
    }
    if inputs.is_empty() {
        bail!("nothing to archive: give paths or --glob patterns");
    }
    let target = Output::create(&opts.output)?;
    let done = progress::Counter::default();
    let mut w = Writer::new(target.file.try_clone()?, opts.level, &opts.exclude, &done);
    w.summary.output = std::path::absolute(&opts.output).unwrap_or(opts.output.clone());
    progress::during(
        "archive",
        (None, None),
        || done.get(),
        || -> Result<()> {
            for input in &inputs {
                w.add_tree(input, &member_name(input))
                    .with_context(|| format!("cannot write {}", target.target.partial_path.display()))?;
            }
            Ok(())
        },
    )?;
    let gz = w.tar.into_inner().context("cannot finish the tar stream")?;
    let file =
        gz.finish().with_context(|| format!("cannot write {}", target.target.partial_path.display()))?;
    drop(file);
    let mut summary = w.summary;
    summary.skipped = w.skipped.count();
    summary.bytes_out = target.commit()?;
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

/// `FILE.partial`, locked while it is written, renamed to `FILE` at the end.
struct Output {
    target: Partial,
    file: File,
}

impl Output {
    fn create(path: &Path) -> Result<Output> {
        let mut target = Partial::prepare(path, "--output")?;
        let file = fsx::create_new(target.parent.as_fd(), &target.partial)
            .map_err(|e| anyhow!("cannot create {}: {}", target.partial_path.display(), e.desc()))?;
        target.lock(OwnedFd::from(file.try_clone()?))?;
        Ok(Output { target, file })
    }

    /// Syncs and renames into place; returns the archive's size.
    fn commit(self) -> Result<u64> {
        let what = &self.target.partial_path;
        self.file.sync_all().with_context(|| format!("cannot sync {}", what.display()))?;
        let size = self.file.metadata()?.len();
        self.target.rename_into_place()?;
        Ok(size)
    }
}

/// Streams the tree `top` as a `.tar.gz` into `out` (a download of the web
/// console): its members are named from `base` down, with the fidelity of
/// `archive`; unreadable entries are skipped and counted, and the engines' own
/// files (manifests, shrink notes) are left out, as a restore leaves them.
pub fn stream<W: Write>(out: W, top: &Path, base: &Path, level: u32) -> Result<Summary> {
    let ours = Exclude::engine_files();
    let done = progress::Counter::default();
    let mut w = Writer::new(out, level, &ours, &done);
    w.add_tree(top, base)?;
    let gz = w.tar.into_inner().context("cannot finish the tar stream")?;
    let mut out = gz.finish()?;
    out.flush()?;
    let mut summary = w.summary;
    summary.skipped = w.skipped.count();
    Ok(summary)
}

struct Writer<'a, W: Write> {
    tar: tar::Builder<ParGz<W>>,
    exclude: &'a Exclude,
    /// Member name of the first path of each inode with several links.
    links: HashMap<(u64, u64), PathBuf>,
    skipped: Skipped,
    summary: Summary,
    /// What the progress file says.
    done: &'a progress::Counter,
}

/// The name a path gets in the archive: relative, without `.`/`..`.
fn member_name(path: &Path) -> PathBuf {
    path.components().filter(|c| matches!(c, Component::Normal(_))).collect()
}

impl<'a, W: Write> Writer<'a, W> {
    fn new(out: W, level: u32, exclude: &'a Exclude, done: &'a progress::Counter) -> Writer<'a, W> {
        let gz = ParGz::new(out, Compression::new(level), rayon::current_num_threads());
        Writer {
            tar: tar::Builder::new(gz),
            exclude,
            links: HashMap::new(),
            skipped: Skipped::default(),
            summary: Summary::default(),
            done,
        }
    }

    /// Adds a path and, for a directory, everything below it, named from
    /// `base`. Unreadable entries are reported and skipped; only a failure
    /// to write is an error.
    fn add_tree(&mut self, top: &Path, base: &Path) -> io::Result<()> {
        let base = base.to_path_buf();
        let walker = walkdir::WalkDir::new(top).follow_links(false).sort_by_file_name();
        let exclude = self.exclude;
        let base_for_filter = base.clone();
        let walker = walker.into_iter().filter_entry(move |e| {
            let rel = e.path().strip_prefix(top).unwrap_or(Path::new(""));
            rel.as_os_str().is_empty() || !exclude.matches(&base_for_filter.join(rel))
        });
        for entry in walker {
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    self.skipped.report(format_args!("{}", e));
                    continue;
                }
            };
            let rel = entry.path().strip_prefix(top).unwrap_or(Path::new(""));
            let name = if rel.as_os_str().is_empty() { base.clone() } else { base.join(rel) };
            if name.as_os_str().is_empty() {
                continue; // `/` itself: its content follows
            }
            match entry.metadata() {
                Ok(meta) => self.add(entry.path(), &name, &meta)?,
                Err(e) => self.skipped.report(format_args!("{}: {e}", entry.path().display())),
            }
        }
        Ok(())
    }

    fn add(&mut self, path: &Path, name: &Path, meta: &Metadata) -> io::Result<()> {
        let mut header = Header::new_gnu();
        header.set_metadata_in_mode(meta, HeaderMode::Complete);
        let ft = meta.file_type();
        if ft.is_dir() {
            header.set_size(0);
            self.summary.dirs += 1;
            return self.tar.append_data(&mut header, name, io::empty());
        }
        if ft.is_symlink() {
            let target = match std::fs::read_link(path) {
                Ok(t) => t,
                Err(e) => {
                    self.skipped.report(format_args!("{}: {e}", path.display()));
                    return Ok(());
                }
            };
            header.set_size(0);
            self.summary.symlinks += 1;
            return self.tar.append_link(&mut header, name, target);
        }
        if ft.is_fifo() || ft.is_char_device() || ft.is_block_device() {
            header.set_entry_type(if ft.is_fifo() {
                EntryType::Fifo
            } else if ft.is_char_device() {
                EntryType::Char
            } else {
                EntryType::Block
            });
            header.set_size(0);
            let rdev = meta.rdev();
            header.set_device_major(nix::sys::stat::major(rdev) as u32)?;
            header.set_device_minor(nix::sys::stat::minor(rdev) as u32)?;
            return self.tar.append_data(&mut header, name, io::empty());
        }
        if !ft.is_file() {
            eprintln!("tetras-back: {}: socket not archived", path.display());
            return Ok(());
        }
        if meta.nlink() > 1 {
            if let Some(first) = self.links.get(&(meta.dev(), meta.ino())) {
                header.set_entry_type(EntryType::Link);
                header.set_size(0);
                self.summary.hardlinks += 1;
                let first = first.clone();
                return self.tar.append_link(&mut header, name, first);
            }
            self.links.insert((meta.dev(), meta.ino()), name.to_owned());
        }
        // Never blocking, and still the regular file that was listed (a
        // download of a backup disk's folder reads what the disk holds).
        let opened = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
            .open(path)
            .and_then(|f| match f.metadata() {
                Ok(m) if m.is_file() && m.ino() == meta.ino() => Ok(f),
                Ok(_) => {
                    Err(io::Error::other("changed into something else than this file while being archived"))
                }
                Err(e) => Err(e),
            });
        let file = match opened {
            Ok(f) => f,
            Err(e) => {
                self.skipped.report(format_args!("{}: {e}", path.display()));
                self.links.remove(&(meta.dev(), meta.ino()));
                return Ok(());
            }
        };
        let size = meta.len();
        let mut data = Exact { inner: file.take(size), left: size, short: false };
        self.tar.append_data(&mut header, name, &mut data)?;
        if data.short {
            eprintln!("tetras-back: {}: file shrank while being archived; padded with zeros", path.display());
        }
        self.summary.files += 1;
        self.summary.bytes_in += size;
        self.done.add(1, size);
        Ok(())
    }
}

/// Exactly `left` bytes: the file's, then zeros if it shrank meanwhile (a
/// tar entry must have the size its header announced).
struct Exact<R> {
    inner: R,
    left: u64,
    short: bool,
}

impl<R: Read> Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let want = buf.len().min(self.left as usize);
        let n = if self.short { 0 } else { self.inner.read(&mut buf[..want])? };
        let n = if n == 0 {
            self.short = true;
            buf[..want].fill(0);
            want
        } else {
            n
        };
        self.left -= n as u64;
        Ok(n)
    }
}

/// Size of the blocks compressed independently.
const BLOCK: usize = 1 << 20;

type Compressed = io::Result<Vec<u8>>;

/// A writer that gzips on several threads: blocks of input become gzip
/// members, written in order.
pub struct ParGz<W: Write> {
    out: W,
    block: Vec<u8>,
    jobs: Option<mpsc::SyncSender<(u64, Vec<u8>)>>,
    done: mpsc::Receiver<(u64, Compressed)>,
    workers: Vec<JoinHandle<()>>,
    ready: BTreeMap<u64, Compressed>,
    sent: u64,
    written: u64,
    max_in_flight: u64,
}

impl<W: Write> ParGz<W> {
    pub fn new(out: W, level: Compression, threads: usize) -> ParGz<W> {
        let threads = threads.max(1);
        let (jobs, job_rx) = mpsc::sync_channel::<(u64, Vec<u8>)>(threads);
        let job_rx = Arc::new(Mutex::new(job_rx));
        let (done_tx, done) = mpsc::channel();
        let workers = (0..threads)
            .map(|_| {
                let job_rx = Arc::clone(&job_rx);
                let done_tx = done_tx.clone();
                std::thread::spawn(move || loop {
                    let job = job_rx.lock().unwrap().recv();
                    let Ok((seq, data)) = job else { return };
                    let mut enc = flate2::write::GzEncoder::new(Vec::with_capacity(data.len() / 2), level);
                    let member = enc.write_all(&data).and_then(|_| enc.finish());
                    if done_tx.send((seq, member)).is_err() {
                        return;
                    }
                })
            })
            .collect();
        ParGz {
            out,
            block: Vec::with_capacity(BLOCK),
            jobs: Some(jobs),
            done,
            workers,
            ready: BTreeMap::new(),
            sent: 0,
            written: 0,
            max_in_flight: 2 * threads as u64 + 1,
        }
    }

    fn send_block(&mut self) -> io::Result<()> {
        if self.block.is_empty() {
            return Ok(());
        }
        while self.sent - self.written >= self.max_in_flight {
            self.wait_one()?;
        }
        let data = std::mem::replace(&mut self.block, Vec::with_capacity(BLOCK));
        self.jobs
            .as_ref()
            .expect("not finished")
            .send((self.sent, data))
            .map_err(|_| io::Error::other("compression threads stopped"))?;
        self.sent += 1;
        while let Ok((seq, member)) = self.done.try_recv() {
            self.ready.insert(seq, member);
        }
        self.write_ready()
    }

    fn wait_one(&mut self) -> io::Result<()> {
        let (seq, member) = self.done.recv().map_err(|_| io::Error::other("compression threads stopped"))?;
        self.ready.insert(seq, member);
        self.write_ready()
    }

    fn write_ready(&mut self) -> io::Result<()> {
        while let Some(member) = self.ready.remove(&self.written) {
            member.and_then(|m| self.out.write_all(&m))?;
            self.written += 1;
        }
        Ok(())
    }

    /// Compresses what is left, writes every member and returns the output.
    pub fn finish(mut self) -> io::Result<W> {
        self.send_block()?;
        while self.written < self.sent {
            self.wait_one()?;
        }
        self.jobs = None;
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
        self.out.flush()?;
        Ok(self.out)
    }
}

impl<W: Write> Write for ParGz<W> {
    fn write(&mut self, mut buf: &[u8]) -> io::Result<usize> {
        let total = buf.len();
        while !buf.is_empty() {
            let room = BLOCK - self.block.len();
            let n = room.min(buf.len());
            self.block.extend_from_slice(&buf[..n]);
            buf = &buf[n..];
            if self.block.len() == BLOCK {
                self.send_block()?;
            }
        }
        Ok(total)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn parallel_gzip_is_one_gzip_stream() {
        let data: Vec<u8> = (0..5 * BLOCK + 123).map(|i| (i % 251) as u8 ^ (i / 7919) as u8).collect();
        let mut gz = ParGz::new(Vec::new(), Compression::new(6), 3);
        for chunk in data.chunks(100_000) {
            gz.write_all(chunk).unwrap();
        }
        let out = gz.finish().unwrap();
        let mut back = Vec::new();
        flate2::read::MultiGzDecoder::new(&out[..]).read_to_end(&mut back).unwrap();
        assert_eq!(back.len(), data.len());
        assert!(back == data);
        assert!(out.len() < data.len() / 10, "compressed: {} bytes", out.len());
    }

    #[test]
    fn member_names_are_relative() {
        assert_eq!(member_name(Path::new("/etc/passwd")), PathBuf::from("etc/passwd"));
        assert_eq!(member_name(Path::new("./a/../b")), PathBuf::from("a/b"));
    }
}
