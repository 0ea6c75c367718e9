//! Real disks for the pipeline tests: image files with real filesystems,
//! attached as loop devices, always detached (and unmounted) on the way out.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Panics with a clear message unless the tests can use loop devices and udev.
pub fn require_root_and_udevd() {
    assert!(nix::unistd::geteuid().is_root(), "the disk tests need root: run `sudo make test`");
    let udevd = Command::new("pgrep").args(["-x", "systemd-udevd"]).output().map(|o| o.status.success());
    assert!(
        matches!(udevd, Ok(true)),
        "the disk tests need a running systemd-udevd: run them through `make test` (tests/with-udevd starts one)"
    );
}

/// Panics with a clear message unless the tests run as root (mounts, owners).
pub fn require_root() {
    assert!(nix::unistd::geteuid().is_root(), "this test needs root: run `sudo make test`");
}

/// A fresh random filesystem UUID, so that parallel tests never share a disk.
pub fn random_uuid() -> String {
    fs::read_to_string("/proc/sys/kernel/random/uuid").unwrap().trim().to_owned()
}

#[track_caller]
pub fn sh(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(out.status.success(), "{cmd} {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A disk image file and, while attached, its loop device.
pub struct LoopDisk {
    pub image: PathBuf,
    pub uuid: String,
    pub dev: Option<String>,
}

impl LoopDisk {
    /// Creates an image of `mb` MiB with a `fstype` filesystem of the given UUID.
    pub fn create(dir: &Path, fstype: &str, uuid: &str, mb: u64) -> LoopDisk {
        let image = dir.join(format!("{uuid}.img"));
        sh("truncate", &["-s", &format!("{mb}M"), image.to_str().unwrap()]);
        let img = image.to_str().unwrap();
        // The programs are named in full, so that `make check-deps` sees them.
        let mkfs = match fstype {
            "ext2" => "mkfs.ext2",
            "ext3" => "mkfs.ext3",
            "ext4" => "mkfs.ext4",
            other => panic!("LoopDisk::create: no mkfs for {other}"),
        };
        sh(mkfs, &["-q", "-F", "-b", "4096", "-U", uuid, "-L", "tbtest", img]);
        LoopDisk { image, uuid: uuid.to_owned(), dev: None }
    }

    /// Attaches the image; returns the loop device.
    pub fn attach(&mut self) -> String {
        assert!(self.dev.is_none());
        let dev = sh("losetup", &["-f", "--show", self.image.to_str().unwrap()]);
        self.dev = Some(dev.clone());
        dev
    }

    /// Attaches the image to the first free device among /dev/loop0..7,
    /// the ones a systemd box shares with the host.
    pub fn attach_low(&mut self) -> String {
        assert!(self.dev.is_none());
        for n in 0..8 {
            let dev = format!("/dev/loop{n}");
            let free = Command::new("losetup").arg(&dev).output().is_ok_and(|o| !o.status.success());
            if free
                && Command::new("losetup")
                    .args([&dev, self.image.to_str().unwrap()])
                    .status()
                    .unwrap()
                    .success()
            {
                self.dev = Some(dev.clone());
                return dev;
            }
        }
        panic!("none of /dev/loop0..7 is free (see losetup -a)");
    }

    pub fn dev(&self) -> &str {
        self.dev.as_deref().expect("attached")
    }

    /// Detaches the loop device (the kernel finishes once it is unmounted).
    pub fn detach(&mut self) {
        if let Some(dev) = self.dev.take() {
            unmount_all(&dev);
            let _ = Command::new("losetup").args(["-d", &dev]).status();
        }
    }

    /// A new ext4 disk of `mb` MiB, attached and mounted at `at`; unmounted
    /// and detached when dropped.
    pub fn mounted(dir: &Path, mb: u64, at: &Path) -> LoopDisk {
        let mut disk = LoopDisk::create(dir, "ext4", &random_uuid(), mb);
        let dev = disk.attach();
        fs::create_dir_all(at).unwrap();
        sh("mount", &[&dev, at.to_str().unwrap()]);
        disk
    }

    /// Where the device is mounted now.
    pub fn mounts(&self) -> Vec<String> {
        self.dev.as_deref().map(mounts_of).unwrap_or_default()
    }

    /// Mounts the image read-only in `dir` (detached first) and returns the
    /// content of `file` on it, or `None`.
    pub fn read_file(&mut self, dir: &Path, file: &str) -> Option<String> {
        self.inspect(dir, |mnt| fs::read_to_string(mnt.join(file)).ok())
    }

    /// Mounts the image read-only in `dir` (detached first), calls `look`
    /// with the mount point, and unmounts it again, even if `look` panics.
    pub fn inspect<T>(&mut self, dir: &Path, look: impl FnOnce(&Path) -> T) -> T {
        self.mount_image(dir, "ro,loop", look)
    }

    /// As [`LoopDisk::inspect`], mounted read-write: `change` alters the disk
    /// behind the daemon's back.
    pub fn modify<T>(&mut self, dir: &Path, change: impl FnOnce(&Path) -> T) -> T {
        self.mount_image(dir, "loop", change)
    }

    fn mount_image<T>(&mut self, dir: &Path, options: &str, look: impl FnOnce(&Path) -> T) -> T {
        self.detach();
        let mnt = dir.join("verify-mnt");
        fs::create_dir_all(&mnt).unwrap();
        sh("mount", &["-o", options, self.image.to_str().unwrap(), mnt.to_str().unwrap()]);
        struct Unmount<'a>(&'a Path);
        impl Drop for Unmount<'_> {
            fn drop(&mut self) {
                // Lazily if something still holds it: never leave it mounted.
                if !Command::new("umount").arg(self.0).status().is_ok_and(|s| s.success()) {
                    let _ = Command::new("umount").arg("-l").arg(self.0).status();
                }
            }
        }
        let _guard = Unmount(&mnt);
        look(&mnt)
    }
}

impl Drop for LoopDisk {
    fn drop(&mut self) {
        self.detach();
    }
}

/// Mount points of a block device, from /proc/self/mountinfo.
pub fn mounts_of(dev: &str) -> Vec<String> {
    let Ok(meta) = fs::metadata(dev) else { return Vec::new() };
    let rdev = meta.rdev();
    let want = format!("{}:{}", nix::sys::stat::major(rdev), nix::sys::stat::minor(rdev));
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f.get(2) == Some(&want.as_str())).then(|| f[4].to_owned())
        })
        .collect()
}

fn unmount_all(dev: &str) {
    for m in mounts_of(dev) {
        let _ = Command::new("umount").args(["-l", &m]).status();
    }
}

/// The dated backup folders (`YYYY-…`) in `dir`, oldest first.
pub fn dated_folders(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("20"))
        .collect();
    names.sort();
    names
}

/// A dated backup folder `name` in `dir` holding `mb` MiB of its own data.
pub fn fake_backup(dir: &Path, name: &str, mb: u64) {
    fs::create_dir_all(dir.join(name)).unwrap();
    let of = format!("of={}/data", dir.join(name).display());
    sh("dd", &["if=/dev/urandom", &of, "bs=1M", &format!("count={mb}"), "status=none"]);
}

/// Installs the shipped scripts of `scripts/` into `dir` the way
/// `make install` does (root-owned, not writable by others).
pub fn install_shipped_scripts(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    fs::create_dir_all(dir).unwrap();
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).unwrap();
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts");
    for e in fs::read_dir(shipped).unwrap() {
        let e = e.unwrap();
        let to = dir.join(e.file_name());
        fs::copy(e.path(), &to).unwrap();
        fs::set_permissions(&to, fs::Permissions::from_mode(0o755)).unwrap();
    }
}

/// Writes an executable script into `dir` with mode `mode`.
pub fn script(dir: &Path, name: &str, body: &str, mode: u32) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    fs::create_dir_all(dir).unwrap();
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).unwrap();
    let p = dir.join(name);
    fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
    p
}

/// `parts` folders of 300 files of 4 KiB below `src`, for [`stepped_script`].
pub fn stepped_tree(src: &Path, parts: usize) {
    for part in 1..=parts {
        let dir = src.join(format!("part{part}"));
        fs::create_dir_all(&dir).unwrap();
        for i in 0..300 {
            fs::write(dir.join(format!("f{i}")), vec![b'x'; 4096]).unwrap();
        }
    }
}

/// A backup script of the `parts` folders of `src`, estimated first (as
/// the shipped scripts do), one snapshot per folder with a second between
/// them: a backup of several seconds whose progress moves in steps.
pub fn stepped_script(src: &Path, parts: usize) -> String {
    format!(
        r#"set -e
TB="$TETRAS_BACK_BIN"
D="$TETRAS_BACK_MOUNT/$(date +%Y-%m-%d_%H-%M-%S)_Progress"
for i in $(seq {parts}); do "$TB" snapshot --dry-run --dest "$D/part$i" "{src}/part$i/" >/dev/null; done
mkdir "$D"
for i in $(seq {parts}); do "$TB" snapshot --dest "$D/part$i" "{src}/part$i/" >/dev/null; sleep 1; done
"#,
        src = src.display()
    )
}

/// An image holding a LUKS2 volume (passphrase `pw`, a cheap key
/// derivation) with the UUID `uuid`: what `cryptsetup luksFormat` makes.
pub fn luks_disk(dir: &Path, uuid: &str) -> LoopDisk {
    use std::io::Write;
    let image = dir.join(format!("{uuid}.img"));
    sh("truncate", &["-s", "32M", image.to_str().unwrap()]);
    let mut child = Command::new("cryptsetup")
        .args(["luksFormat", "--batch-mode", "--type", "luks2", "--pbkdf", "pbkdf2"])
        .args(["--pbkdf-force-iterations", "1000", "--uuid", uuid, "--key-file", "-"])
        .arg(&image)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("cryptsetup (make test installs it)");
    child.stdin.take().unwrap().write_all(b"pw").unwrap();
    assert!(child.wait().unwrap().success(), "cryptsetup luksFormat failed");
    LoopDisk { image, uuid: uuid.to_owned(), dev: None }
}
