//! The daemon's persistent state: `<state_dir>/state.json`.
//!
//! It holds the known disks and the registered subscriber FIFOs. The file is
//! versioned, read with `deny_unknown_fields`, and written atomically (temp
//! file, fsync, rename, fsync of the directory), so a crash leaves either the
//! old or the new content. A file that cannot be read or parsed is an error
//! that names it; it is never replaced.
//!
//! The daemon holds [`StateLock`] for as long as it runs; that lock is also
//! what makes a second daemon on the same state refuse to start. The CLI takes
//! the same lock to edit the file directly when no daemon runs.

use std::ffi::{OsStr, OsString};
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use chrono::{DateTime, Local};
use nix::errno::Errno;
use nix::fcntl::{openat, renameat, Flock, FlockArg, OFlag, AT_FDCWD};
use nix::sys::stat::{fchmod, Mode};
use nix::unistd::{fsync, unlinkat, UnlinkatFlags};
use serde::{Deserialize, Serialize};

use crate::engine::fsx;
use crate::store::report::Status;

/// The schema version this build writes (2: disks carry `identity`; a
/// version 1 file reads as is, its disks without one).
pub const VERSION: u32 = 2;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    pub version: u32,
    #[serde(default)]
    pub disks: Vec<Disk>,
    /// Absolute paths of the FIFOs that receive events.
    #[serde(default)]
    pub subscribers: Vec<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Disk {
    pub uuid: String,
    pub name: String,
    pub added: DateTime<Local>,
    #[serde(default)]
    pub last_seen: Option<DateTime<Local>>,
    #[serde(default)]
    pub last_backup: Option<LastBackup>,
    /// BLAKE3 (hex) of the random token written on the disk at its first
    /// successful backup (`.tetras-back/disk-id`): a disk that only copies
    /// the UUID cannot show it. `None`: not yet written (or to be adopted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// `hold NAME`: when plugged in, it is opened read-only for restore
    /// instead of being backed up, until `release NAME`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub held: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LastBackup {
    pub status: Status,
    pub started: DateTime<Local>,
    #[serde(default)]
    pub finished: Option<DateTime<Local>>,
}

/// What `save` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Saved {
    New,
    Renamed { from: String },
    Unchanged,
}

impl Saved {
    /// What to tell the user, the same whether the daemon or the CLI applied it.
    pub fn message(&self, uuid: &str, name: &str) -> String {
        match self {
            Saved::New => format!("saved disk {name} ({uuid})"),
            Saved::Renamed { from } => format!("renamed disk {uuid} from {from} to {name}"),
            Saved::Unchanged => format!("disk {name} ({uuid}) was already saved"),
        }
    }
}

/// What [`State::tidy_subscribers`] dropped.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tidied {
    /// Paths that no longer name a FIFO.
    pub gone: usize,
    /// Paths listed more than once.
    pub repeated: usize,
    /// Paths beyond the most there can be.
    pub over: usize,
}

impl Tidied {
    pub fn changed(&self) -> bool {
        *self != Tidied::default()
    }

    /// What to log, `max` being the most subscribers there can be.
    pub fn message(&self, max: usize) -> String {
        format!(
            "dropped {} subscriber(s): {} no longer a FIFO, {} listed twice, {} beyond the limit of {max}",
            self.gone + self.repeated + self.over,
            self.gone,
            self.repeated,
            self.over
        )
    }
}

/// What `hold` (`held`) or `release` did to the disk `name`.
pub fn held_message(name: &str, held: bool, changed: bool) -> String {
    match (held, changed) {
        (true, true) => {
            format!("disk {name} is held: when plugged in, it is opened read-only for restore, not backed up")
        }
        (true, false) => format!("disk {name} was already held"),
        (false, true) => format!("disk {name} is released: it is backed up again when plugged in"),
        (false, false) => format!("disk {name} was not held"),
    }
}

impl Disk {
    pub fn forgotten_message(&self) -> String {
        format!("forgot disk {} ({})", self.name, self.uuid)
    }
}

impl Default for State {
    fn default() -> Self {
        State { version: VERSION, disks: Vec::new(), subscribers: Vec::new() }
    }
}

impl State {
    /// Reads the state file; a missing file is an empty state (first run).
    pub fn load(path: &Path) -> Result<State> {
        let mut text = String::new();
        match File::open(path) {
            Ok(mut f) => f
                .read_to_string(&mut text)
                .with_context(|| format!("cannot read state file {}", path.display()))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(State::default()),
            Err(e) => return Err(e).with_context(|| format!("cannot open state file {}", path.display())),
        };
        State::parse(&text).with_context(|| {
            format!(
                "state file {} is corrupt; it was left untouched: repair it or move it away \
                 (the daemon then starts with no known disks)",
                path.display()
            )
        })
    }

    fn parse(text: &str) -> Result<State> {
        // Read the version first, so that a file from a newer release gets
        // that message and not a confusing "unknown field".
        #[derive(Deserialize)]
        struct Versioned {
            version: u32,
        }
        let v: Versioned =
            serde_json::from_str(text).context("not a tetras-back state (JSON with a version)")?;
        if v.version > VERSION {
            bail!(
                "schema version {} was written by a newer tetras-back (this one reads up to {VERSION})",
                v.version
            );
        }
        if v.version == 0 {
            bail!("schema version 0 is not valid");
        }
        let mut state: State = serde_json::from_str(text)?;
        // Up-converted: every older version is read as the current one.
        state.version = VERSION;
        for d in &state.disks {
            check_uuid(&d.uuid).and_then(|_| check_name(&d.name)).context("invalid disk entry")?;
        }
        Ok(state)
    }

    /// Writes the state atomically: temp file, fsync, rename, fsync of the directory.
    pub fn store(&self, path: &Path) -> Result<()> {
        let mut text = serde_json::to_vec_pretty(self).context("cannot serialise the state")?;
        text.push(b'\n');
        write_atomic(path, 0o600, &text)
            .with_context(|| format!("cannot write state file {}", path.display()))
    }

    pub fn disk(&self, uuid: &str) -> Option<&Disk> {
        self.disks.iter().find(|d| d.uuid == uuid)
    }

    pub fn disk_mut(&mut self, uuid: &str) -> Option<&mut Disk> {
        self.disks.iter_mut().find(|d| d.uuid == uuid)
    }

    /// Remembers a disk, or renames it when its UUID is already known.
    /// `uuid` and `name` must have been checked with [`check_uuid`] and [`check_name`].
    pub fn save_disk(&mut self, uuid: &str, name: &str) -> Result<Saved> {
        if let Some(other) = self.disks.iter().find(|d| d.name == name && d.uuid != uuid) {
            bail!("the name {name:?} is already used by disk {}", other.uuid);
        }
        match self.disk_mut(uuid) {
            Some(d) if d.name == name => Ok(Saved::Unchanged),
            Some(d) => Ok(Saved::Renamed { from: std::mem::replace(&mut d.name, name.to_owned()) }),
            None => {
                self.disks.push(Disk {
                    uuid: uuid.to_owned(),
                    name: name.to_owned(),
                    added: Local::now(),
                    last_seen: None,
                    last_backup: None,
                    identity: None,
                    held: false,
                });
                Ok(Saved::New)
            }
        }
    }

    /// `save --adopt`: the disk now plugged in under `uuid` is the one of
    /// that name; its next successful backup writes it a new identity.
    pub fn adopt(&mut self, uuid: &str) -> Result<()> {
        match self.disk_mut(uuid) {
            Some(d) => {
                d.identity = None;
                Ok(())
            }
            None => bail!("no known disk has UUID {uuid}"),
        }
    }

    /// The known disk named `name`; an unknown name is an error that says so.
    pub fn disk_named(&self, name: &str) -> Result<&Disk> {
        match self.disks.iter().find(|d| d.name == name) {
            Some(d) => Ok(d),
            None => bail!("no known disk is named {name:?} (see `tetras-back disks`)"),
        }
    }

    /// `hold NAME` (`held`) or `release NAME`; returns the disk's UUID and
    /// whether that changed anything.
    pub fn set_held(&mut self, name: &str, held: bool) -> Result<(String, bool)> {
        let uuid = self.disk_named(name)?.uuid.clone();
        let d = self.disk_mut(&uuid).expect("found above");
        let changed = d.held != held;
        d.held = held;
        Ok((uuid, changed))
    }

    /// Keeps the first `max` subscribers whose path is still `alive` (names
    /// a FIFO: the caller says how, see `clients::fifo::is_fifo`), each once,
    /// and drops the others (gone, repeated, or beyond `max`): one pass over
    /// the list, whatever its length, and the caller writes the state once.
    /// A path beyond `max` is not even looked at.
    pub fn tidy_subscribers(&mut self, max: usize, alive: impl Fn(&Path) -> bool) -> Tidied {
        let mut tidied = Tidied::default();
        let mut seen = std::collections::HashSet::new();
        self.subscribers.retain(|p| {
            if seen.len() >= max {
                tidied.over += 1;
                false
            } else if seen.contains(p) {
                tidied.repeated += 1;
                false
            } else if !alive(p) {
                tidied.gone += 1;
                false
            } else {
                seen.insert(p.clone())
            }
        });
        tidied
    }

    /// Forgets a disk; an unknown UUID is an error. Returns the forgotten entry.
    pub fn forget_disk(&mut self, uuid: &str) -> Result<Disk> {
        match self.disks.iter().position(|d| d.uuid == uuid) {
            Some(i) => Ok(self.disks.remove(i)),
            None => bail!("no known disk has UUID {uuid} (see `tetras-back disks`)"),
        }
    }
}

/// Replaces `path` with `content` so that a crash leaves the old file or the
/// new one, never a mix, and so that whoever can write in the folder cannot
/// redirect the write (the metrics file may sit in a folder another account
/// writes to): see [`write_atomic_in`]. The folder is opened without
/// following a symbolic link.
pub fn write_atomic(path: &Path, mode: u32, content: &[u8]) -> io::Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let Some(name) = path.file_name() else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{}: not a file name", path.display()),
        ));
    };
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let dir = openat(AT_FDCWD, dir, flags, Mode::empty())?;
    write_atomic_in(dir.as_fd(), name, mode, content)
}

/// [`write_atomic`] of the entry `name` of the open folder `dir`: the
/// content goes to a new file of an unpredictable name, created with
/// `O_EXCL|O_NOFOLLOW` (a link or a file planted at that name makes the
/// creation fail; it is never followed, truncated or reused), given `mode`
/// on its descriptor (whatever the umask), synced, renamed over `name` (a
/// link there is replaced, not followed), and the folder synced.
pub fn write_atomic_in(dir: BorrowedFd, name: &OsStr, mode: u32, content: &[u8]) -> io::Result<()> {
    let (tmp, mut file) = create_temp(dir, name)?;
    let written = (|| -> io::Result<()> {
        fchmod(&file, Mode::from_bits_truncate(mode))?;
        file.write_all(content)?;
        file.sync_all()?;
        Ok(renameat(dir, tmp.as_os_str(), dir, name)?)
    })();
    if written.is_err() {
        let _ = unlinkat(dir, tmp.as_os_str(), UnlinkatFlags::NoRemoveDir);
    }
    written?;
    Ok(fsync(dir)?)
}

/// A new file `.NAME.<64 random bits>.tmp` in `dir`.
fn create_temp(dir: BorrowedFd, name: &OsStr) -> io::Result<(OsString, File)> {
    // NAME is cut so that the temporary name stays under NAME_MAX.
    let stem = &name.as_bytes()[..name.len().min(200)];
    for _ in 0..16 {
        let mut tmp = b".".to_vec();
        tmp.extend_from_slice(stem);
        tmp.extend_from_slice(format!(".{}.tmp", fsx::random_suffix()).as_bytes());
        let tmp = OsString::from_vec(tmp);
        match fsx::create_new(dir, &tmp) {
            Ok(file) => return Ok((tmp, file)),
            Err(Errno::EEXIST) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(io::Error::new(io::ErrorKind::AlreadyExists, "cannot find a free temporary name"))
}

/// Normalises and checks a filesystem UUID: the 8-4-4-4-12 hex form, the
/// vfat/exfat `XXXX-XXXX` form and the 16-hex NTFS form. Returns it lower-case
/// for the long form (as udev reports it) and upper-case for the short ones.
pub fn check_uuid(uuid: &str) -> Result<String> {
    let groups: Vec<&str> = uuid.split('-').collect();
    let lens: Vec<usize> = groups.iter().map(|g| g.len()).collect();
    let hex = groups.iter().all(|g| g.chars().all(|c| c.is_ascii_hexdigit()));
    match lens.as_slice() {
        [8, 4, 4, 4, 12] if hex => Ok(uuid.to_ascii_lowercase()),
        [4, 4] | [16] if hex => Ok(uuid.to_ascii_uppercase()),
        _ => bail!(
            "invalid filesystem UUID {uuid:?}: expected 8-4-4-4-12 hex digits \
             (e.g. 0b7c3f1e-5d2a-4c8e-9f10-2a3b4c5d6e7f), XXXX-XXXX (vfat, exfat) or 16 hex digits (NTFS); \
             `blkid` shows a disk's UUID"
        ),
    }
}

/// Checks a disk name: it ends up in paths and mail subjects.
pub fn check_name(name: &str) -> Result<()> {
    let ok = (1..=64).contains(&name.len())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        && name != "."
        && name != "..";
    if !ok {
        bail!("invalid disk name {name:?}: expected 1 to 64 characters from A-Z a-z 0-9 . _ - (and not \".\" or \"..\")");
    }
    Ok(())
}

/// Creates `dir` (and parents), the directory of the setting `key`, and
/// makes sure only its owner, the daemon's user, can enter it. A shared
/// directory (another user's, writable by group or others, sticky, like
/// `/tmp`) is refused, never chmodded: the daemon needs one of its own.
pub fn private_dir(key: &str, dir: &Path) -> Result<()> {
    let refuse = |why: String| -> Result<()> {
        bail!("`{key}` = {}: {why}; refusing to use it (give `{key}` a directory of its own)", dir.display())
    };
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("`{key}`: cannot create directory {}", dir.display()))?;
    let meta =
        fs::symlink_metadata(dir).with_context(|| format!("`{key}`: cannot inspect {}", dir.display()))?;
    if !meta.is_dir() {
        return refuse("not a directory (a symbolic link?)".into());
    }
    if meta.uid() != nix::unistd::geteuid().as_raw() {
        return refuse(format!("owned by uid {}, not by the daemon's user", meta.uid()));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o1022 != 0 {
        return refuse(format!(
            "a shared directory (mode {mode:04o}: sticky, or writable by group or others)"
        ));
    }
    if mode & 0o077 != 0 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("`{key}`: cannot restrict the mode of {}", dir.display()))?;
    }
    Ok(())
}

/// An exclusive lock on `<state_dir>/state.lock`, held by the daemon for its
/// whole life and by the CLI while it edits the state file directly.
pub struct StateLock {
    file: Flock<File>,
}

impl StateLock {
    /// Takes the lock without waiting; `Ok(None)` when someone else holds it.
    pub fn try_acquire(state_dir: &Path) -> Result<Option<StateLock>> {
        fs::create_dir_all(state_dir)
            .with_context(|| format!("cannot create state directory {}", state_dir.display()))?;
        let path = state_dir.join("state.lock");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&path)
            .with_context(|| format!("cannot open lock file {}", path.display()))?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(file) => Ok(Some(StateLock { file })),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
            Err((_, e)) => Err(e).with_context(|| format!("cannot lock {}", path.display())),
        }
    }

    /// Takes the lock, waiting up to `patience` for another CLI to finish.
    pub fn acquire(state_dir: &Path, patience: Duration) -> Result<StateLock> {
        let deadline = Instant::now() + patience;
        loop {
            if let Some(lock) = StateLock::try_acquire(state_dir)? {
                return Ok(lock);
            }
            if Instant::now() >= deadline {
                let holder = lock_holder(state_dir).map(|p| format!(" (pid {p})")).unwrap_or_default();
                bail!(
                    "{} is locked by another tetras-back process{holder}",
                    state_dir.join("state.lock").display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Records the holder's pid in the lock file, for error messages and `status`.
    pub fn write_pid(&mut self) -> Result<()> {
        let f: &mut File = &mut self.file;
        f.set_len(0)?;
        f.rewind()?;
        writeln!(f, "{}", std::process::id())?;
        Ok(())
    }
}

/// The pid written in the lock file by its current holder, if any.
pub fn lock_holder(state_dir: &Path) -> Option<u32> {
    fs::read_to_string(state_dir.join("state.lock")).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const U: &str = "0b7c3f1e-5d2a-4c8e-9f10-2a3b4c5d6e7f";

    #[test]
    fn uuid_forms() {
        assert_eq!(check_uuid("0B7C3F1E-5D2A-4C8E-9F10-2A3B4C5D6E7F").unwrap(), U);
        assert_eq!(check_uuid("ab12-cd34").unwrap(), "AB12-CD34");
        assert_eq!(check_uuid("0123456789abcdef").unwrap(), "0123456789ABCDEF");
        for bad in [
            "",
            "office",
            "0b7c3f1e-5d2a-4c8e-9f10",
            "0b7c3f1e-5d2a-4c8e-9f10-2a3b4c5d6e7g",
            "../../etc",
            "ab12cd34",
        ] {
            let e = check_uuid(bad).unwrap_err().to_string();
            assert!(e.contains("invalid filesystem UUID"), "{bad}: {e}");
        }
    }

    #[test]
    fn names() {
        for good in ["office", "a", "Disk_2.b-c", &"x".repeat(64)] {
            check_name(good).unwrap();
        }
        for bad in ["", ".", "..", "a/b", "a b", "é", &"x".repeat(65), "x\n"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn save_rename_forget() {
        let mut s = State::default();
        assert_eq!(s.save_disk(U, "office").unwrap(), Saved::New);
        assert_eq!(s.save_disk(U, "office").unwrap(), Saved::Unchanged);
        assert_eq!(s.save_disk(U, "home").unwrap(), Saved::Renamed { from: "office".into() });
        assert!(s.save_disk("AB12-CD34", "home").is_err(), "two disks with one name");
        assert_eq!(s.forget_disk(U).unwrap().name, "home");
        assert!(s.forget_disk(U).unwrap_err().to_string().contains(U));
    }

    #[test]
    fn store_then_load_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.json");
        assert_eq!(State::load(&p).unwrap(), State::default());
        let mut s = State::default();
        s.save_disk(U, "office").unwrap();
        s.subscribers.push("/run/x".into());
        s.store(&p).unwrap();
        assert_eq!(State::load(&p).unwrap(), s);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1, "no temp file left behind");
    }

    /// The symlink attack on the temporary file: in a folder another account
    /// can write to, links planted at every name the old code used (its
    /// `.NAME.PID.tmp`), a file already there under that name, and a link at
    /// the target itself are never written through; the mode is exactly the
    /// one asked for, whatever the umask.
    #[test]
    fn atomic_writes_never_follow_a_planted_link() {
        use std::os::unix::fs::{symlink, PermissionsExt};
        let mode = |p: &Path| fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777;
        let shared = tempfile::tempdir().unwrap();
        fs::set_permissions(shared.path(), fs::Permissions::from_mode(0o777)).unwrap();
        let private = tempfile::tempdir().unwrap();
        let victim = private.path().join("root-only");
        fs::write(&victim, "secret\n").unwrap();
        fs::set_permissions(&victim, fs::Permissions::from_mode(0o600)).unwrap();
        let old_tmp = |name: &str| shared.path().join(format!(".{name}.{}.tmp", std::process::id()));
        symlink(&victim, old_tmp("metrics.prom")).unwrap();
        symlink(&victim, old_tmp("state.json")).unwrap();
        fs::write(old_tmp("users"), "theirs\n").unwrap();
        symlink(&victim, shared.path().join("rule")).unwrap();
        for (name, m) in [("metrics.prom", 0o644), ("state.json", 0o600), ("users", 0o666), ("rule", 0o644)] {
            let target = shared.path().join(name);
            write_atomic(&target, m, format!("{name}\n").as_bytes()).unwrap();
            assert_eq!(fs::read_to_string(&target).unwrap(), format!("{name}\n"));
            assert!(fs::symlink_metadata(&target).unwrap().is_file(), "{name}: a new file, not the link");
            assert_eq!(mode(&target), m, "{name}: the mode asked for, not the umask's");
        }
        assert_eq!(fs::read_to_string(&victim).unwrap(), "secret\n", "written through a link");
        assert_eq!(mode(&victim), 0o600);
        assert_eq!(fs::read_link(old_tmp("metrics.prom")).unwrap(), victim);
        assert_eq!(fs::read_to_string(old_tmp("users")).unwrap(), "theirs\n");
        let mut left: Vec<String> = fs::read_dir(shared.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        let planted =
            [".metrics.prom", ".state.json", ".users"].map(|n| format!("{n}.{}.tmp", std::process::id()));
        let mut want: Vec<String> = planted
            .into_iter()
            .chain(["metrics.prom", "rule", "state.json", "users"].map(String::from))
            .collect();
        want.sort();
        assert_eq!(left, want, "no temporary file left behind");
        // The folder itself must not be a link.
        let link = private.path().join("link");
        symlink(shared.path(), &link).unwrap();
        let e = write_atomic(&link.join("x"), 0o600, b"x").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(nix::libc::ENOTDIR), "{e}");
    }

    fn is_fifo(p: &Path) -> bool {
        std::fs::symlink_metadata(p).is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_fifo(&m.file_type()))
    }

    #[test]
    fn subscribers_are_tidied_in_one_pass() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = |n: &str| {
            let p = dir.path().join(n);
            nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
            p
        };
        let (a, b, c) = (fifo("a"), fifo("b"), fifo("c"));
        let subscribers = vec![a.clone(), dir.path().join("gone"), a.clone(), b.clone(), c.clone()];
        let mut s = State { subscribers, ..State::default() };
        let t = s.tidy_subscribers(2, is_fifo);
        assert_eq!(s.subscribers, vec![a.clone(), b.clone()]);
        assert_eq!(t, Tidied { gone: 1, repeated: 1, over: 1 });
        assert!(t.message(2).starts_with("dropped 3 subscriber(s)"), "{}", t.message(2));
        assert!(!s.tidy_subscribers(2, is_fifo).changed());
        s.subscribers = (0..100_000).map(|i| dir.path().join(format!("s{i}"))).collect();
        let started = Instant::now();
        assert_eq!(s.tidy_subscribers(64, is_fifo).gone, 100_000);
        assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
        assert!(s.subscribers.is_empty());
    }

    #[test]
    fn corrupt_newer_or_invalid_files_are_refused_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.json");
        for (text, why) in [
            ("{\"version\":1,\"disks\":[", "EOF"),
            ("", "EOF"),
            ("{\"version\":9}", "newer"),
            ("{\"version\":1,\"disks\":[],\"extra\":1}", "unknown field"),
            ("{\"version\":1,\"disks\":[{\"uuid\":\"x\",\"name\":\"a\",\"added\":\"2026-01-01T00:00:00Z\"}]}", "UUID"),
        ] {
            fs::write(&p, text).unwrap();
            let e = format!("{:#}", State::load(&p).unwrap_err());
            assert!(e.contains(&p.display().to_string()) && e.contains(why), "{text}: {e}");
            assert_eq!(fs::read_to_string(&p).unwrap(), text);
        }
    }

    #[test]
    fn lock_is_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = StateLock::try_acquire(dir.path()).unwrap().unwrap();
        a.write_pid().unwrap();
        assert!(StateLock::try_acquire(dir.path()).unwrap().is_none());
        assert_eq!(lock_holder(dir.path()), Some(std::process::id()));
        let e = StateLock::acquire(dir.path(), Duration::from_millis(100)).err().unwrap().to_string();
        assert!(e.contains("locked by another"), "{e}");
        drop(a);
        assert!(StateLock::try_acquire(dir.path()).unwrap().is_some());
    }
}
