//! A known disk's identity. A filesystem UUID is no secret (`blkid` shows
//! it, reports and logs name it, `mkfs -U` copies it), so at its first
//! successful backup a disk gets a random 256-bit token in
//! `.tetras-back/disk-id` (0600), and the state keeps its BLAKE3 hash. At
//! every later plug the token is read from the disk, mounted read-only,
//! before anything runs, and compared in constant time: a disk that only
//! copies the UUID receives nothing.
//!
//! The disk is untrusted: the folder and the file are opened without
//! following symbolic links, the file must be a small regular file, and
//! it is never opened in a way that could block (a FIFO planted there).

use std::ffi::OsStr;
use std::fs::File;
use std::io::Read;
use std::os::fd::AsFd;
use std::path::Path;

use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::fcntl::{openat, OFlag};
use nix::sys::stat::{mkdirat, Mode};

use crate::engine::fsx;

const DIR: &str = ".tetras-back";
const FILE: &str = "disk-id";
/// The token is 64 hex characters; anything much longer is not ours.
const MAX_LEN: i64 = 256;

/// Why a disk that failed [`check`] is refused, for the log, the event and the mail.
pub fn refusal(job: &crate::store::report::Job, why: &str) -> String {
    format!(
        "{} carries the UUID of disk {} ({}) but {why}: it is not the disk that was saved; \
         nothing was run or written (`tetras-back save {} {} --adopt` accepts it)",
        job.device.display(),
        job.name,
        job.uuid,
        job.uuid,
        job.name
    )
}

/// Whether the disk mounted at `mount` holds the token whose hash is
/// `expected` (hex); `Err` says why not, in words for the report.
pub fn check(mount: &Path, expected: &str) -> Result<(), String> {
    let expected =
        blake3::Hash::from_hex(expected).map_err(|_| "the known identity is not valid".to_owned())?;
    let missing = |e: Errno| match e {
        Errno::ENOENT => format!("it has no {DIR}/{FILE}"),
        Errno::ELOOP | Errno::ENOTDIR => format!("its {DIR}/{FILE} is a symbolic link or not a file"),
        e => format!("its {DIR}/{FILE} cannot be read: {}", e.desc()),
    };
    let root = File::open(mount).map_err(|e| format!("{}: {e}", mount.display()))?;
    let dir = fsx::open_read(root.as_fd(), OsStr::new(DIR), true).map_err(missing)?;
    let file = fsx::open_file(dir.as_fd(), OsStr::new(FILE)).map_err(|e| match e.raw_os_error() {
        Some(n) => missing(Errno::from_raw(n)),
        None => format!("its {DIR}/{FILE} {e}"),
    })?;
    if file.metadata().map_err(|e| format!("its {DIR}/{FILE}: {e}"))?.len() > MAX_LEN as u64 {
        return Err(format!("its {DIR}/{FILE} is not a small regular file"));
    }
    let mut token = Vec::new();
    file.take(MAX_LEN as u64).read_to_end(&mut token).map_err(|e| format!("its {DIR}/{FILE}: {e}"))?;
    // blake3::Hash compares in constant time.
    if blake3::hash(token.trim_ascii()) == expected {
        Ok(())
    } else {
        Err(format!("its {DIR}/{FILE} is not the saved disk's"))
    }
}

/// Writes a new random token on the disk mounted (read-write) at `mount`;
/// returns its hash (hex) for the state.
pub fn write(mount: &Path) -> Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no random numbers: {e}"))?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let root = File::open(mount).with_context(|| format!("cannot open {}", mount.display()))?;
    match mkdirat(root.as_fd(), DIR, Mode::from_bits_truncate(0o700)) {
        Ok(()) | Err(Errno::EEXIST) => {}
        Err(e) => return Err(e).with_context(|| format!("cannot create {DIR} on the disk")),
    }
    let dir = openat(
        root.as_fd(),
        DIR,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .with_context(|| format!("{DIR} on the disk is not a folder"))?;
    crate::store::state::write_atomic_in(
        dir.as_fd(),
        OsStr::new(FILE),
        0o600,
        format!("{token}\n").as_bytes(),
    )
    .context("cannot write the identity file")?;
    Ok(blake3::hash(token.as_bytes()).to_hex().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_identity_checks_and_others_do_not() {
        let disk = tempfile::tempdir().unwrap();
        assert!(check(disk.path(), &"0".repeat(64)).unwrap_err().contains("has no"));
        let hash = write(disk.path()).unwrap();
        check(disk.path(), &hash).unwrap();
        let meta = std::fs::metadata(disk.path().join(DIR).join(FILE)).unwrap();
        assert_eq!(std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777, 0o600);
        let other = write(disk.path()).unwrap();
        assert_ne!(hash, other, "a new token each time");
        assert!(check(disk.path(), &hash).unwrap_err().contains("not the saved disk's"));
        // A planted link or FIFO is refused without being followed or blocking.
        std::fs::remove_file(disk.path().join(DIR).join(FILE)).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", disk.path().join(DIR).join(FILE)).unwrap();
        assert!(check(disk.path(), &other).unwrap_err().contains("symbolic link"));
        std::fs::remove_file(disk.path().join(DIR).join(FILE)).unwrap();
        nix::unistd::mkfifo(&disk.path().join(DIR).join(FILE), Mode::from_bits_truncate(0o600)).unwrap();
        assert!(check(disk.path(), &other).unwrap_err().contains("is a FIFO, not a regular file"));
    }
}
