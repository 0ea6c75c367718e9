//! A booted Debian with systemd as PID 1 (`../shared/tools/systemd-box`),
//! for the tests of the installed service: its root is a fresh copy of a
//! cached one, so that every run starts from a machine nothing was
//! installed on; it is powered off and its copy removed when dropped.
//!
//! The box shares the host's network namespace (it receives the host
//! udevd's events) and `/dev/loop0..7`; its root is a folder on the host,
//! so that the tests write its files and read its FIFOs directly.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::Run;

/// Where the roots are built once (mmdebstrap) and copied from.
const CACHE: &str = "/var/tmp/tetras-back-test-box";

fn tool() -> PathBuf {
    let t = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/tools/systemd-box");
    assert!(t.exists(), "{} is missing: the service tests need the shared systemd-box tool", t.display());
    t
}

fn box_tool(args: &[&str], vars: &[(&str, &str)]) -> Run {
    let out = Command::new(tool())
        .args(args)
        .envs(vars.iter().copied())
        .env("BOX_SRC", env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::null())
        .output()
        .expect("systemd-box");
    Run::from(out)
}

pub struct SystemdBox {
    pub root: PathBuf,
}

impl SystemdBox {
    /// Boots a fresh copy of the root `flavour` (built once with the extra
    /// Debian `packages`, comma-separated).
    pub fn boot(flavour: &str, packages: &str) -> SystemdBox {
        super::disk::require_root();
        assert!(
            box_tool(&["pid"], &[]).code != 0,
            "a systemd-box is already running: stop it (systemd-box stop) before the service tests"
        );
        assert!(
            Path::new("/run/udev/control").exists(),
            "the service tests need the host's systemd-udevd running before the box starts (make test starts one)"
        );
        let base = Path::new(CACHE).join(flavour);
        if !base.join("lib/systemd/systemd").exists() {
            eprintln!("service tests: building the {flavour} box root (once; mmdebstrap)");
            fs::create_dir_all(CACHE).unwrap();
            let b = base.to_str().unwrap();
            box_tool(&["start", b], &[("BOX_PACKAGES", packages)]).ok();
            box_tool(&["stop"], &[]).ok();
        }
        let root = Path::new(CACHE).join(format!("run-{flavour}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        super::disk::sh("cp", &["-a", base.to_str().unwrap(), root.to_str().unwrap()]);
        let b = SystemdBox { root };
        // nspawn's own seccomp filter refuses Landlock's calls; a real
        // machine has only the unit's filter, which the box must show.
        let landlock = "--system-call-filter=landlock_create_ruleset \
                        --system-call-filter=landlock_add_rule --system-call-filter=landlock_restrict_self";
        let started = box_tool(&["start", b.root.to_str().unwrap()], &[("BOX_BINDS", landlock)]);
        assert_eq!(started.code, 0, "the box did not boot: {started:?}");
        b
    }

    /// A path inside the box, as the host sees it.
    pub fn path(&self, inside: &str) -> PathBuf {
        self.root.join(inside.trim_start_matches('/'))
    }

    /// Runs a shell command line inside the box.
    pub fn sh(&self, script: &str) -> Run {
        box_tool(&["exec", "/bin/sh", "-c", script], &[])
    }

    /// Copies a staged `make install DESTDIR=...` tree into the box's root
    /// (its /lib is a symbolic link to usr/lib, which must stay one).
    pub fn install(&self, stage: &Path) {
        let tar = format!(
            "tar -C '{}' -c . | tar -C '{}' -x --keep-directory-symlink",
            stage.display(),
            self.root.display()
        );
        super::disk::sh("sh", &["-c", &tar]);
    }

    /// Copies a file from the host into the box.
    pub fn put(&self, from: &Path, inside: &str) {
        fs::copy(from, self.path(inside)).unwrap();
    }

    /// `systemctl show -p PROP --value tetras-back`.
    pub fn unit_property(&self, prop: &str) -> String {
        self.sh(&format!("systemctl show -p {prop} --value tetras-back")).ok().stdout.trim().to_owned()
    }

    /// Waits until `check` holds on the box (or panics after `secs`).
    #[track_caller]
    pub fn wait_until(&self, secs: u64, what: &str, check: impl Fn(&SystemdBox) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !check(self) {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The service's journal, messages only.
    pub fn journal(&self) -> String {
        self.sh("journalctl -u tetras-back --no-pager -o cat").stdout
    }
}

impl Drop for SystemdBox {
    fn drop(&mut self) {
        let stopped = box_tool(&["stop"], &[]);
        if stopped.code != 0 || box_tool(&["pid"], &[]).code == 0 {
            eprintln!("service tests: the box did not stop; leaving {} in place", self.root.display());
            return;
        }
        // The box's mounts (its /src bind among them) lived in its own mount
        // namespace; --one-file-system keeps rm on this copy regardless.
        let _ = Command::new("rm").args(["-rf", "--one-file-system"]).arg(&self.root).status();
    }
}
