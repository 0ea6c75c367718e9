//! Named pipes: the control FIFO, the CLI's reply FIFOs and subscribers' FIFOs.
//!
//! The daemon runs as root and writes to paths that other programs gave it,
//! so every open here refuses symlinks and checks, on the opened descriptor,
//! that the file really is a FIFO before writing: the original Perl daemon
//! would overwrite any file it was handed. Writes never block: a reader that
//! is gone or slow costs one failed write, never a stalled daemon.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

use anyhow::{bail, Context, Result};
use nix::errno::Errno;
use nix::libc;
use nix::sys::stat::Mode;

/// Largest line written to or read from a FIFO that several processes may
/// write to (the control FIFO, subscribers' FIFOs); writes up to `PIPE_BUF`
/// (4096 on Linux) are atomic, so concurrent writers never interleave.
pub const MAX_LINE: usize = 4096;

/// Largest reply read from a reply FIFO: only the daemon writes there, once,
/// so a reply needs no atomic write and is as long as it needs (a table of
/// thousands of disks); the cap only bounds the reader's memory.
pub const MAX_REPLY: usize = 64 << 20;

/// Creates a FIFO with exactly `mode` (umask does not apply), replacing a stale FIFO.
pub fn create(path: &Path, mode: u32) -> Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_fifo() => {
            fs::remove_file(path).with_context(|| format!("cannot remove stale FIFO {}", path.display()))?
        }
        Ok(_) => bail!("{} exists and is not a FIFO; refusing to replace it", path.display()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot inspect {}", path.display())),
    }
    nix::unistd::mkfifo(path, Mode::from_bits_truncate(mode))
        .with_context(|| format!("cannot create FIFO {}", path.display()))?;
    nix::sys::stat::fchmodat(
        nix::fcntl::AT_FDCWD,
        path,
        Mode::from_bits_truncate(mode),
        nix::sys::stat::FchmodatFlags::FollowSymlink,
    )
    .with_context(|| format!("cannot set the mode of {}", path.display()))?;
    Ok(())
}

/// Whether `path` is absolute and names an existing FIFO (not a symlink to
/// one): [`check_is_fifo`] without the message, for long lists.
pub fn is_fifo(path: &Path) -> bool {
    path.is_absolute() && fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_fifo())
}

/// Checks that `path` names an existing FIFO (not a symlink to one), with a
/// message for each thing it could be instead.
pub fn check_is_fifo(path: &Path) -> Result<()> {
    if !path.is_absolute() {
        bail!("{}: expected an absolute path to a FIFO", path.display());
    }
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            bail!("{}: no such file; create the FIFO first (mkfifo)", path.display())
        }
        Err(e) => return Err(e).with_context(|| format!("cannot inspect {}", path.display())),
    };
    let t = meta.file_type();
    let what = if t.is_fifo() {
        return Ok(());
    } else if t.is_symlink() {
        "is a symbolic link; give the FIFO's own path"
    } else if t.is_file() {
        "is a regular file, not a FIFO; events are only written to FIFOs"
    } else if t.is_dir() {
        "is a directory, not a FIFO"
    } else if t.is_block_device() || t.is_char_device() {
        "is a device, not a FIFO"
    } else if t.is_socket() {
        "is a socket, not a FIFO"
    } else {
        "is not a FIFO"
    };
    bail!("{} {what}", path.display())
}

/// What became of a non-blocking write.
#[derive(Debug, PartialEq, Eq)]
pub enum Delivery {
    Written,
    /// Nobody has the FIFO open for reading.
    NoReader,
    /// The reader does not keep up; the pipe is full.
    Full,
    /// The path no longer exists or is no longer a FIFO.
    Gone(String),
}

/// Opens the FIFO at `path` for a non-blocking write, without following a
/// symlink and without ever opening anything but a FIFO.
pub fn open_writer(path: &Path) -> Result<File, Delivery> {
    // O_PATH opens nothing for I/O (no side effect even on a device); the
    // type is checked on that descriptor, then the same inode is reopened
    // through /proc, so swapping the path in between cannot redirect the write.
    let handle = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| Delivery::Gone(format!("{}: {e}", path.display())))?;
    let meta = handle.metadata().map_err(|e| Delivery::Gone(format!("{}: {e}", path.display())))?;
    if !meta.file_type().is_fifo() {
        return Err(Delivery::Gone(format!("{} is no longer a FIFO", path.display())));
    }
    let proc_path = format!("/proc/self/fd/{}", handle.as_raw_fd());
    match OpenOptions::new().write(true).custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC).open(proc_path) {
        Ok(f) => Ok(f),
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => Err(Delivery::NoReader),
        Err(e) => Err(Delivery::Gone(format!("{}: {e}", path.display()))),
    }
}

/// Writes one line to an already open non-blocking FIFO in a single write.
pub fn write_line(f: &mut File, line: &[u8]) -> Delivery {
    debug_assert!(line.len() < MAX_LINE, "line exceeds PIPE_BUF and would not be atomic");
    match write_some(f, &with_newline(line)) {
        Ok(n) if n == line.len() + 1 => Delivery::Written,
        // Only possible above PIPE_BUF, which callers never send.
        Ok(_) => Delivery::Full,
        Err(d) => d,
    }
}

/// `line` and its `\n`.
pub fn with_newline(line: &[u8]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(line.len() + 1);
    buf.extend_from_slice(line);
    buf.push(b'\n');
    buf
}

/// One non-blocking `write(2)`: how much it took (0 when the pipe is full).
fn write_some(f: &mut File, buf: &[u8]) -> Result<usize, Delivery> {
    loop {
        match f.write(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => return Ok(0),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => return Err(Delivery::NoReader),
            Err(e) => return Err(Delivery::Gone(e.to_string())),
        }
    }
}

/// Writes as much of `buf` as the pipe takes now, without waiting; returns
/// how much was written. For a FIFO that only one process writes to (a
/// reply), where a long message may go in several writes.
pub fn write_now(f: &mut File, buf: &[u8]) -> Result<usize, Delivery> {
    let mut done = 0;
    while done < buf.len() {
        match write_some(f, &buf[done..])? {
            0 => break,
            n => done += n,
        }
    }
    Ok(done)
}

/// Writes all of `buf` to a non-blocking FIFO, waiting for room as the
/// reader drains it, until `deadline`: `Full` if the reader did not take
/// it all by then, `NoReader` if it went away.
pub fn write_all_until(f: &mut File, buf: &[u8], deadline: std::time::Instant) -> Delivery {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    let mut done = 0;
    loop {
        match write_now(f, &buf[done..]) {
            Ok(n) => done += n,
            Err(d) => return d,
        }
        if done == buf.len() {
            return Delivery::Written;
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Delivery::Full;
        }
        let mut fds = [PollFd::new(f.as_fd(), PollFlags::POLLOUT)];
        match poll(&mut fds, PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX)) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => return Delivery::Gone(e.to_string()),
        }
    }
}

/// Splits bytes read from a FIFO into lines of at most [`MAX_LINE`] bytes
/// (or the limit given to [`LineReader::with_limit`]). A longer line is
/// reported once as [`Line::TooLong`] and skipped up to its newline, so one
/// bad writer costs one error, not the stream.
pub struct LineReader {
    buf: Vec<u8>,
    discarding: bool,
    limit: usize,
}

impl Default for LineReader {
    fn default() -> Self {
        LineReader::with_limit(MAX_LINE)
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    Complete(Vec<u8>),
    TooLong,
}

impl LineReader {
    /// A reader of lines up to `limit` bytes, newline included.
    pub fn with_limit(limit: usize) -> LineReader {
        LineReader { buf: Vec::new(), discarding: false, limit }
    }

    /// Reads what is available from a non-blocking descriptor; returns the
    /// complete lines. `Ok(None)` means end of file.
    pub fn read_from(&mut self, f: &mut impl io::Read) -> io::Result<Option<Vec<Line>>> {
        let mut chunk = [0u8; 8192];
        let mut lines = Vec::new();
        loop {
            match f.read(&mut chunk) {
                Ok(0) if lines.is_empty() => return Ok(None),
                Ok(0) => return Ok(Some(lines)),
                Ok(n) => self.push(&chunk[..n], &mut lines),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Some(lines)),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    fn push(&mut self, mut data: &[u8], out: &mut Vec<Line>) {
        while !data.is_empty() {
            match data.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    if self.discarding {
                        self.discarding = false;
                    } else if self.buf.len() + i + 1 > self.limit {
                        out.push(Line::TooLong);
                    } else {
                        self.buf.extend_from_slice(&data[..i]);
                        out.push(Line::Complete(std::mem::take(&mut self.buf)));
                    }
                    self.buf.clear();
                    data = &data[i + 1..];
                }
                None => {
                    if !self.discarding {
                        self.buf.extend_from_slice(data);
                        if self.buf.len() >= self.limit {
                            out.push(Line::TooLong);
                            self.buf.clear();
                            self.discarding = true;
                        }
                    }
                    data = &[];
                }
            }
        }
    }
}

/// Opens a FIFO read-write and non-blocking: holding a write end ourselves
/// means the reader never sees end-of-file when writers come and go.
pub fn open_reader(path: &Path) -> Result<File> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .with_context(|| format!("cannot open FIFO {}", path.display()))?;
    if !f.metadata()?.file_type().is_fifo() {
        bail!("{} is not a FIFO", path.display());
    }
    Ok(f)
}

/// Waits until `f` is readable or `timeout` passes (`None`: forever).
/// Returns false on timeout.
pub fn wait_readable(f: &File, timeout: Option<std::time::Duration>) -> Result<bool> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    let timeout = match timeout {
        None => PollTimeout::NONE,
        Some(t) => PollTimeout::try_from(t).unwrap_or(PollTimeout::MAX),
    };
    let mut fds = [PollFd::new(f.as_fd(), PollFlags::POLLIN)];
    loop {
        match poll(&mut fds, timeout) {
            Ok(n) => return Ok(n > 0),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes one line to the FIFO at `path`, never blocking.
    fn send_line(path: &Path, line: &[u8]) -> Delivery {
        match open_writer(path) {
            Ok(mut f) => write_line(&mut f, line),
            Err(d) => d,
        }
    }

    fn lines(chunks: &[&[u8]]) -> Vec<Line> {
        let mut r = LineReader::default();
        let mut out = Vec::new();
        for c in chunks {
            r.push(c, &mut out);
        }
        out
    }

    #[test]
    fn splits_lines_across_chunks() {
        assert_eq!(
            lines(&[b"ab", b"c\nde\n", b"f"]),
            vec![Line::Complete(b"abc".to_vec()), Line::Complete(b"de".to_vec())]
        );
    }

    #[test]
    fn oversized_line_is_reported_once_and_skipped() {
        let big = vec![b'x'; MAX_LINE * 3];
        let got = lines(&[&big, &big, b"tail\nok\n"]);
        assert_eq!(got, vec![Line::TooLong, Line::Complete(b"ok".to_vec())]);
        let exact = vec![b'y'; MAX_LINE - 1];
        let got = lines(&[&exact, b"\n"]);
        assert_eq!(got, vec![Line::Complete(exact)]);
    }

    #[test]
    fn fifo_checks_name_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("f");
        create(&fifo, 0o600).unwrap();
        check_is_fifo(&fifo).unwrap();
        let file = dir.path().join("file");
        fs::write(&file, "x").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&fifo, &link).unwrap();
        for (p, want) in [
            (file.as_path(), "regular file"),
            (link.as_path(), "symbolic link"),
            (dir.path(), "directory"),
            (Path::new("/dev/null"), "device"),
            (&dir.path().join("absent"), "no such file"),
            (Path::new("rel/f"), "absolute"),
        ] {
            let e = check_is_fifo(p).unwrap_err().to_string();
            assert!(e.contains(want), "{}: {e}", p.display());
        }
        assert!(matches!(send_line(&link, b"x"), Delivery::Gone(_)), "symlink followed");
        assert!(matches!(send_line(&file, b"x"), Delivery::Gone(_)));
        assert_eq!(fs::read_to_string(&file).unwrap(), "x");
        assert_eq!(send_line(&fifo, b"x"), Delivery::NoReader);
    }

    #[test]
    fn full_pipe_does_not_block() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("f");
        create(&fifo, 0o600).unwrap();
        let _reader = open_reader(&fifo).unwrap();
        let line = vec![b'z'; 1000];
        let mut outcomes = Vec::new();
        for _ in 0..200 {
            outcomes.push(send_line(&fifo, &line));
        }
        assert_eq!(outcomes[0], Delivery::Written);
        assert_eq!(outcomes.last(), Some(&Delivery::Full));
    }

    /// A reply larger than the pipe goes whole to a reader that drains it
    /// slowly, and is read back as one line; nothing waits for a reader
    /// that is gone.
    #[test]
    fn a_long_line_is_written_whole_as_the_reader_drains_it() {
        use std::time::{Duration, Instant};
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("f");
        create(&fifo, 0o600).unwrap();
        let mut reader = open_reader(&fifo).unwrap();
        let long: Vec<u8> = (0..1_000_000u32).map(|i| b'a' + (i % 26) as u8).collect();
        let mut writer = open_writer(&fifo).unwrap();
        let first = write_now(&mut writer, &with_newline(&long)).unwrap();
        assert!(first > 0 && first < long.len(), "the pipe takes part of it: {first}");
        let rest = with_newline(&long)[first..].to_vec();
        let t = std::thread::spawn(move || {
            write_all_until(&mut writer, &rest, Instant::now() + Duration::from_secs(20))
        });
        let mut lines = LineReader::with_limit(MAX_REPLY);
        let got = loop {
            assert!(wait_readable(&reader, Some(Duration::from_secs(20))).unwrap());
            std::thread::sleep(Duration::from_millis(1));
            if let Some(l) = lines.read_from(&mut reader).unwrap().unwrap_or_default().pop() {
                break l;
            }
        };
        assert_eq!(t.join().unwrap(), Delivery::Written);
        assert_eq!(got, Line::Complete(long.clone()));
        // The default reader keeps its 4096-byte limit.
        let mut short = LineReader::default();
        let mut out = Vec::new();
        short.push(&with_newline(&long), &mut out);
        assert_eq!(out, vec![Line::TooLong]);
        // A reader that is gone: EPIPE at once, not a wait until the deadline.
        let mut writer = open_writer(&fifo).unwrap();
        drop(reader);
        let started = Instant::now();
        let d = write_all_until(&mut writer, &long, Instant::now() + Duration::from_secs(20));
        assert_eq!(d, Delivery::NoReader);
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
