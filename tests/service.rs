//! The installed service under a real systemd PID 1 (a systemd-box): what
//! production is. `make install` is staged and copied into a freshly booted
//! Debian, the unit is enabled, and disks attached on the host (loop
//! devices, real udev events) are backed up by it: with the unit's seccomp
//! filters, its watchdog, its restart policy, logind and D-Bus.
//!
//! The scenarios share one box and run in order (systemd and the disks are
//! one machine's); this is a test program of its own (`harness = false`) so
//! that the box is powered off and removed however the scenarios end. The
//! Debian package is tested last, in a second fresh box that has udisks.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use common::browser::{curl, curl_csrf, curl_login, curl_to};
use common::disk::*;
use common::sdbox::SystemdBox;
use common::tree::{self, Compare};
use common::*;

/// Where the tests keep their FIFO and scripts inside the box.
const TEST_DIR: &str = "/srv/tetras-test";
const SCRIPTS_DIR: &str = "/usr/local/lib/tetras-back";
const CONFIG: &str = "/etc/tetras-back/tetras-back.toml";

/// One box with the staged install in it, the service enabled, and a
/// subscriber registered with the daemon.
struct Ctx {
    sub: Subscriber,
    images: tempfile::TempDir,
    /// The configuration `make install` put there (the shipped one).
    shipped_config: String,
    b: SystemdBox,
}

impl Ctx {
    /// A new known disk named `name`, not yet attached.
    fn disk(&self, name: &str) -> LoopDisk {
        let uuid = random_uuid();
        let disk = LoopDisk::create(self.images.path(), "ext4", &uuid, 64);
        self.b.sh(&format!("tetras-back save {uuid} {name}")).ok();
        disk
    }

    /// Writes the box's configuration (the shipped one, or test scripts)
    /// and has the daemon reload it.
    fn configure(&self, scripts_toml: Option<&str>) {
        self.write_config(scripts_toml);
        self.b.sh("systemctl reload tetras-back").ok();
    }

    fn write_config(&self, scripts_toml: Option<&str>) {
        let text = match scripts_toml {
            None => self.shipped_config.clone(),
            Some(s) => format!("{s}\n[mail]\nwhen = \"never\"\n"),
        };
        fs::write(self.b.path(CONFIG), text).unwrap();
    }

    /// The service is running, idle and configured as shipped (a failed
    /// scenario may have left it otherwise).
    fn settle(&mut self) {
        self.write_config(None);
        self.b.sh("systemctl reset-failed tetras-back; systemctl start tetras-back").ok();
        self.configure(None);
        self.b.wait_until(60, "the daemon is idle", |b| {
            b.sh("tetras-back status --json").stdout.contains("\"activity\": \"idle\"")
        });
    }

    fn events_until(&mut self, event: &str, disk: &LoopDisk) -> Vec<serde_json::Value> {
        self.sub.until_about(event, &disk.uuid)
    }

    fn script_processes(&self, name: &str) -> String {
        // `[x]yz` matches the script's command line, not this shell's own.
        let (first, rest) = name.split_at(1);
        self.b.sh(&format!("pgrep -af '{SCRIPTS_DIR}/[{first}]{rest}' || true")).stdout
    }

    fn mounts_of(&self, dev: &str) -> String {
        self.b.sh(&format!("findmnt -rn -S {dev} || true")).stdout
    }
}

/// A script in the box's scripts_dir that sleeps for its first argument.
fn install_slow_script(b: &SystemdBox) {
    let p = b.path(&format!("{SCRIPTS_DIR}/slow.sh"));
    fs::write(&p, "#!/bin/sh\necho \"sleeping $1 s on $TETRAS_BACK_MOUNT\"\nsleep \"$1\"\n").unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
}

fn slow(seconds: u32) -> String {
    format!("[[scripts]]\nname = \"slow.sh\"\nargs = [\"{seconds}\"]\n")
}

fn installed_unit_starts_and_answers(c: &mut Ctx) {
    assert_eq!(c.b.sh("systemctl is-active tetras-back").stdout.trim(), "active");
    assert_eq!(c.b.sh("systemctl is-enabled tetras-back").stdout.trim(), "enabled");
    let status = c.b.sh("tetras-back status").ok();
    assert!(status.stdout.contains("tetras-back daemon: running"), "{status:?}");
    assert_eq!(c.b.unit_property("Type"), "notify");
}

/// The production path end to end: the shipped config and script, with
/// the unit's sandbox, on a /home that holds what a backup must keep.
fn shipped_script_keeps_setuid_xattrs_and_owners(c: &mut Ctx) {
    let home = c.b.path("home");
    let _ = fs::remove_dir_all(&home);
    fs::create_dir_all(home.join("alice")).unwrap();
    let alice = home.join("alice");
    fs::write(alice.join("setuid-tool"), b"#!/bin/sh\necho hi\n").unwrap();
    fs::set_permissions(alice.join("setuid-tool"), fs::Permissions::from_mode(0o4755)).unwrap();
    fs::write(alice.join("noted"), b"with an extended attribute").unwrap();
    xattr::set(alice.join("noted"), "user.note", b"kept").unwrap();
    fs::write(alice.join("bobs"), b"owned by someone else").unwrap();
    std::os::unix::fs::chown(alice.join("bobs"), Some(1234), Some(5678)).unwrap();
    // And every other kind of entry (links, a device node, a FIFO, a sparse file).
    tree::torture(&home.join("torture"));

    let mut disk = c.disk("shipped");
    let dev = disk.attach_low();
    let events = c.events_until("backup_finished", &disk);
    let finished = events.last().unwrap();
    assert_eq!(
        finished["status"],
        "success",
        "{finished}\n{}",
        fs::read_to_string(c.b.path(finished["log"].as_str().unwrap())).unwrap_or_default()
    );
    let safe = c.events_until("safe_to_remove", &disk).pop().unwrap();
    assert_eq!(safe["powered_off"], false, "{safe}");
    assert!(safe["power_off_error"].as_str().unwrap().contains("udisks is not on the system bus"), "{safe}");
    assert_eq!(c.mounts_of(&dev), "", "nothing is left mounted");

    // Again, in a new second: the disk proves its identity on a read-only
    // mount, remounted writable under the unit's filters, and the snapshot
    // is incremental.
    std::thread::sleep(Duration::from_millis(1100));
    c.b.sh("tetras-back backup shipped").ok();
    let finished = c.events_until("backup_finished", &disk).pop().unwrap();
    assert_eq!(finished["status"], "success", "{finished}");
    let log = fs::read_to_string(c.b.path(finished["log"].as_str().unwrap())).unwrap();
    assert!(log.contains("the disk proved its identity"), "{log}");
    c.events_until("safe_to_remove", &disk);

    // Forgotten first, so that the host's loop mount of the image is no plug to the daemon.
    c.b.sh(&format!("tetras-back forget {}", disk.uuid)).ok();
    disk.inspect(c.images.path(), |mnt| {
        let dated = dated_folders(mnt);
        assert_eq!(dated.len(), 2, "{dated:?}");
        let (first, newest) = (mnt.join(&dated[0]), mnt.join(&dated[1]));
        tree::assert_same(&home, &newest.join("Donnees"), &Compare::snapshot());
        let suid = fs::symlink_metadata(newest.join("Donnees/alice/setuid-tool")).unwrap();
        assert_eq!(suid.permissions().mode() & 0o7777, 0o4755);
        let ino = |b: &Path| fs::metadata(b.join("Donnees/alice/noted")).unwrap().ino();
        assert_eq!(ino(&first), ino(&newest), "an unchanged file is hard-linked to the previous backup");
        assert!(newest.join("serveur.tar.gz").exists(), "the shipped script archives /etc too");
        assert!(mnt.join(".tetras-back/disk-id").exists());
    });
}

/// Getting files back under the unit: a held disk is mounted read-only by
/// the service (its system call filter allows the mount, nothing can
/// write), listed and restored from by the CLI, closed, released.
fn a_held_disk_is_opened_read_only_and_restored_from(c: &mut Ctx) {
    let alice = c.b.path("home/alice");
    fs::create_dir_all(&alice).unwrap();
    fs::write(alice.join("setuid-tool"), b"#!/bin/sh\necho hi\n").unwrap();
    fs::set_permissions(alice.join("setuid-tool"), fs::Permissions::from_mode(0o4755)).unwrap();
    fs::write(alice.join("noted"), b"with an extended attribute").unwrap();
    xattr::set(alice.join("noted"), "user.note", b"kept").unwrap();
    let mut disk = c.disk("restorable");
    disk.attach_low();
    let finished = c.events_until("backup_finished", &disk).pop().unwrap();
    assert_eq!(finished["status"], "success", "{finished}");
    c.events_until("safe_to_remove", &disk);
    c.b.sh("tetras-back hold restorable").ok();
    disk.detach();
    c.events_until("disk_unplugged", &disk);

    let dev = disk.attach_low();
    let opened = c.events_until("disk_opened", &disk);
    assert!(opened.iter().all(|e| e["event"] != "backup_started"), "{opened:?}");
    let mount = opened.last().unwrap()["mount"].as_str().unwrap().to_owned();
    let options = c.b.sh(&format!("findmnt -rn -o OPTIONS -S {dev}")).ok().stdout;
    assert!(options.split(',').any(|o| o == "ro") && options.contains("nosuid"), "{options}");
    let write = c.b.sh(&format!("touch {mount}/scribble"));
    assert!(write.code != 0 && write.stderr.contains("Read-only file system"), "{write:?}");
    let list = c.b.sh("tetras-back backups restorable").ok().stdout;
    assert!(list.contains("complete") && list.contains("Donnees/ (snapshot)"), "{list}");
    c.b.sh(&format!("rm -rf {TEST_DIR}/restored")).ok();
    c.b.sh(&format!("tetras-back restore restorable Donnees/alice --to {TEST_DIR}/restored")).ok();
    let suid =
        fs::symlink_metadata(c.b.path(&format!("{TEST_DIR}/restored/Donnees/alice/setuid-tool"))).unwrap();
    assert_eq!(suid.permissions().mode() & 0o7777, 0o4755, "set-uid restored under the unit");
    assert_eq!(
        xattr::get(c.b.path(&format!("{TEST_DIR}/restored/Donnees/alice/noted")), "user.note")
            .unwrap()
            .unwrap(),
        b"kept"
    );

    c.b.sh("tetras-back close restorable").ok();
    c.events_until("safe_to_remove", &disk);
    assert_eq!(c.mounts_of(&dev), "", "nothing is left mounted");
    c.b.sh("tetras-back release restorable").ok();
}

/// The console under its installed, sandboxed unit: it reaches the daemon's
/// control FIFO, follows its events across a restart, reads the history.
fn the_web_console_runs_under_its_unit(c: &mut Ctx) {
    let url = "http://127.0.0.1:8750";
    // alice may browse and restore: an admin.
    fs::write(c.b.path(CONFIG), c.shipped_config.replace("admins = []", "admins = [\"alice\"]")).unwrap();
    c.b.sh("systemctl reload tetras-back && systemctl enable --now tetras-back-web").ok();
    let (code, page) = curl(&[&format!("{url}/")]);
    assert_eq!(code, 503, "no user yet: {page}");
    assert!(page.contains("tetras-back web-passwd NAME"), "{page}");
    c.b.sh("echo 'box password' | tetras-back web-passwd alice").ok();
    let users = fs::metadata(c.b.path("/etc/tetras-back/web-users")).unwrap();
    assert_eq!(users.permissions().mode() & 0o777, 0o600);

    fs::create_dir_all(c.b.path("home/webuser")).unwrap();
    fs::write(c.b.path("home/webuser/hello.txt"), "from the box\n").unwrap();
    let mut disk = c.disk("webbox");
    disk.attach_low();
    assert_eq!(c.events_until("backup_finished", &disk).pop().unwrap()["status"], "success");
    c.events_until("safe_to_remove", &disk);
    let jar = c.images.path().join("jar");
    assert_eq!(curl_login(url, &jar, "alice", "box password"), 303);
    let cookies = ["-b", jar.to_str().unwrap()];
    let (_, disks) = curl(&[&cookies[..], &[&format!("{url}/api/disks")]].concat());
    assert!(disks.contains("\"name\":\"webbox\"") && disks.contains("\"daemon\":true"), "{disks}");
    let (_, history) = curl(&[&cookies[..], &[&format!("{url}/api/history?disk=webbox")]].concat());
    assert!(history.contains("\"status\":\"success\""), "the history is readable under the unit: {history}");
    // A backup asked from the console.
    let form = format!("csrf={}", curl_csrf(url, &jar));
    let (code, _) =
        curl(&[&cookies[..], &["-d", &form, &format!("{url}/disks/{}/backup", disk.uuid)]].concat());
    assert_eq!(code, 303);
    assert_eq!(c.events_until("backup_finished", &disk).pop().unwrap()["status"], "success");
    c.events_until("safe_to_remove", &disk);

    // Opened from the console: its sandbox sees the daemon's mount, a file
    // comes back as a download, and a restore is done by the daemon.
    let form = format!("csrf={}", curl_csrf(url, &jar));
    let (code, _) =
        curl(&[&cookies[..], &["-d", &form, &format!("{url}/disks/{}/open", disk.uuid)]].concat());
    assert_eq!(code, 303);
    c.events_until("disk_opened", &disk);
    let (code, page) = curl(&[&cookies[..], &[&format!("{url}/disks/{}/browse", disk.uuid)]].concat());
    assert!(code == 200 && page.contains("Sauvegarde"), "{code}: {page}");
    let found = c.b.sh(&format!("find /run/tetras-back/mnt/{} -name hello.txt", disk.uuid)).ok().stdout;
    // Two backups hold it (the plug's and the console's): the first found.
    let first = found.lines().next().unwrap_or_default();
    let rel = first.strip_prefix(&format!("/run/tetras-back/mnt/{}/", disk.uuid)).unwrap().to_owned();
    let out = c.images.path().join("hello.txt");
    let file = format!("{url}/disks/{}/file/{rel}", disk.uuid);
    assert_eq!(curl_to(&out, &[&cookies[..], &[file.as_str()]].concat()), 200);
    assert_eq!(fs::read_to_string(&out).unwrap(), "from the box\n");
    let restore = format!("{url}/disks/{}/restore/{}", disk.uuid, rel.rsplit_once('/').unwrap().0);
    // Into the default `[web] restore_to`, beneath the state directory.
    let into = "/var/lib/tetras-back/restored/web";
    let form = format!("csrf={}&to={into}&confirm=yes", curl_csrf(url, &jar));
    assert_eq!(curl(&[&cookies[..], &["-d", &form, &restore]].concat()).0, 303);
    let inner = rel.split_once('/').unwrap().1.rsplit_once('/').unwrap().0;
    let restored = c.b.path(&format!("{into}/{inner}/hello.txt"));
    assert_eq!(fs::read_to_string(&restored).unwrap(), "from the box\n", "restored by the daemon");
    let form = format!("csrf={}", curl_csrf(url, &jar));
    curl(&[&cookies[..], &["-d", &form, &format!("{url}/disks/{}/close", disk.uuid)]].concat());
    c.events_until("safe_to_remove", &disk);

    // The daemon restarts: the console registers its FIFO again.
    c.b.sh("systemctl restart tetras-back").ok();
    c.b.wait_until(30, "the console follows the restarted daemon", |b| {
        b.sh("journalctl -u tetras-back-web -o cat").stdout.matches("following its events").count() >= 2
    });
    let (_, status) = curl(&[&cookies[..], &[&format!("{url}/api/status")]].concat());
    assert!(status.contains("\"daemon\":true"), "{status}");
    let exposure = c.b.sh("systemd-analyze security tetras-back-web --no-pager | tail -n 1").stdout;
    println!("    systemd-analyze security tetras-back-web: {}", exposure.trim());
    disk.detach();
    c.events_until("disk_unplugged", &disk);
}

fn reload_says_whether_the_configuration_is_good(c: &mut Ctx) {
    c.configure(Some(&slow(1)));
    let status = c.b.sh("tetras-back status").ok();
    assert!(status.stdout.contains("slow.sh"), "the good configuration is in force: {status:?}");

    let good = fs::read_to_string(c.b.path(CONFIG)).unwrap();
    fs::write(c.b.path(&format!("{TEST_DIR}/good.toml")), &good).unwrap();
    fs::write(c.b.path(CONFIG), format!("{good}\n[hooks]\ntimeout = \"soon\"\n")).unwrap();
    let reload = c.b.sh("systemctl reload tetras-back");
    assert_ne!(reload.code, 0, "systemctl reload must fail on a broken configuration: {reload:?}");
    let journal = c.b.journal();
    assert!(
        journal.contains(&format!("{CONFIG}: key `hooks.timeout`")),
        "the journal names the file and the key:\n{journal}"
    );
    assert_eq!(c.b.sh("systemctl is-active tetras-back").stdout.trim(), "active");
    // The CLI refuses the broken file too; the daemon, asked with the good
    // copy (same run_dir), still runs the previous configuration.
    c.b.sh("tetras-back status").fails_with(&["hooks.timeout"]);
    let status = c.b.sh(&format!("tetras-back --config {TEST_DIR}/good.toml status")).ok();
    assert!(status.stdout.contains("slow.sh"), "the previous configuration stays: {status:?}");
}

fn sleep_and_shutdown_wait_for_a_backup(c: &mut Ctx) {
    install_slow_script(&c.b);
    c.configure(Some(&slow(4)));
    let mut disk = c.disk("inhibit");
    disk.attach_low();
    c.events_until("script_started", &disk);
    let during = c.b.sh("systemd-inhibit --list --no-pager").ok().stdout;
    let line = during
        .lines()
        .find(|l| l.contains("tetras-back"))
        .unwrap_or_else(|| panic!("no inhibitor:\n{during}"));
    assert!(line.contains("shutdown:sleep") && line.contains("block") && line.contains("inhibit"), "{line}");
    assert_eq!(c.events_until("backup_finished", &disk).last().unwrap()["status"], "success");
    let after = c.b.sh("systemd-inhibit --list --no-pager").ok().stdout;
    assert!(!after.contains("tetras-back"), "the inhibitor is released after the backup:\n{after}");
}

fn the_watchdog_keeps_a_long_backup_alive(c: &mut Ctx) {
    let dropin = c.b.path("/etc/systemd/system/tetras-back.service.d/watchdog.conf");
    fs::create_dir_all(dropin.parent().unwrap()).unwrap();
    fs::write(&dropin, "[Service]\nWatchdogSec=2s\n").unwrap();
    c.b.sh("systemctl daemon-reload && systemctl restart tetras-back").ok();
    assert_eq!(c.b.unit_property("WatchdogUSec"), "2s");
    install_slow_script(&c.b);
    c.configure(Some(&slow(7)));
    let pid = c.b.unit_property("MainPID");
    let restarts = c.b.unit_property("NRestarts");

    let mut disk = c.disk("watchdog");
    disk.attach_low();
    let finished = c.events_until("backup_finished", &disk).pop().unwrap();
    assert_eq!(finished["status"], "success", "{finished}");
    assert!(finished["duration_secs"].as_f64().unwrap() > 6.0, "{finished}");
    assert_eq!(c.b.unit_property("MainPID"), pid, "the daemon was not restarted:\n{}", c.b.journal());
    assert_eq!(c.b.unit_property("NRestarts"), restarts);

    fs::remove_file(&dropin).unwrap();
    c.b.sh("systemctl daemon-reload && systemctl restart tetras-back").ok();
}

fn a_killed_daemon_is_restarted_and_backs_up(c: &mut Ctx) {
    let pid = c.b.unit_property("MainPID");
    let restarts: u32 = c.b.unit_property("NRestarts").parse().unwrap();
    c.b.sh(&format!("kill -9 {pid}")).ok();
    c.b.wait_until(30, "systemd restarts the service", |b| {
        let now = b.unit_property("MainPID");
        now != "0" && now != pid && b.sh("systemctl is-active tetras-back").stdout.trim() == "active"
    });
    assert_eq!(c.b.unit_property("NRestarts").parse::<u32>().unwrap(), restarts + 1);
    let mut disk = c.disk("restarted");
    disk.attach_low();
    assert_eq!(c.events_until("backup_finished", &disk).last().unwrap()["status"], "success");
}

fn systemctl_stop_during_a_backup_leaves_a_clean_system(c: &mut Ctx) {
    install_slow_script(&c.b);
    c.configure(Some(&slow(120)));
    let mut disk = c.disk("stopped");
    let dev = disk.attach_low();
    c.events_until("script_started", &disk);
    assert_ne!(c.script_processes("slow.sh"), "");
    let stop = Instant::now();
    c.b.sh("systemctl stop tetras-back").ok();
    assert!(stop.elapsed() < Duration::from_secs(60), "stop took {:?}", stop.elapsed());
    assert_eq!(c.b.sh("systemctl is-active tetras-back").stdout.trim(), "inactive");
    assert_eq!(c.script_processes("slow.sh"), "", "the script was stopped");
    assert_eq!(c.mounts_of(&dev), "", "nothing is left mounted");
    let history = c.b.sh("tetras-back history --json --disk stopped --limit 1").ok().stdout;
    let rows: serde_json::Value = serde_json::from_str(&history).unwrap();
    let status = rows[0]["status"].as_str().unwrap();
    assert!(status == "failed" || status == "interrupted", "{history}");

    // A later start is clean: nothing to recover, idle once the disk is gone.
    disk.detach();
    let before = c.b.journal().len();
    c.b.sh("systemctl start tetras-back").ok();
    let since = c.b.journal()[before..].to_owned();
    assert!(!since.contains("interrupted backup"), "the next start finds nothing to clean up:\n{since}");
    assert!(c.b.sh("tetras-back status").ok().stdout.contains("activity:    idle"));
}

fn a_disk_plugged_before_the_service_starts_is_backed_up(c: &mut Ctx) {
    c.configure(Some(&slow(0)));
    c.b.sh("systemctl stop tetras-back").ok();
    let mut disk = c.disk("early");
    disk.attach_low();
    sh("udevadm", &["settle", "--timeout=10"]);
    c.b.sh("systemctl start tetras-back").ok();
    let finished = c.events_until("backup_finished", &disk).pop().unwrap();
    assert_eq!(finished["status"], "success", "{finished}");
}

/// A stranger's disk under the installed unit: FIFOs where a manifest and a
/// `.partial` are expected, a 200 GiB sparse manifest, a folder dated 2099.
/// Plugged in while a good disk waits its turn, it neither hangs nor kills
/// the daemon: the drill (a child process under the unit's sandbox) names
/// the damage, the good disk is backed up, and `systemctl stop` during the
/// stranger's next backup completes within 10 s.
fn a_hostile_disk_blocks_neither_the_next_disk_nor_the_stop(c: &mut Ctx) {
    install_slow_script(&c.b);
    // A script that writes nothing: the drill reads what the disk holds.
    c.configure(Some(&format!("verify_every = 1\n{}", slow(0))));
    let mut hostile = c.disk("stranger");
    hostile.attach_low();
    assert_eq!(c.events_until("backup_finished", &hostile).last().unwrap()["status"], "success");
    hostile.detach();
    c.events_until("disk_unplugged", &hostile);
    // Altered with the service stopped: mounting the image is a plug.
    c.b.sh("systemctl stop tetras-back").ok();
    let images = c.images.path().to_owned();
    hostile.modify(&images, |m| {
        let fifo =
            |p: &Path| nix::unistd::mkfifo(p, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        fs::create_dir_all(m.join("2099-01-01_00-00-00_evil/Donnees")).unwrap();
        fifo(&m.join("2099-01-01_00-00-00_evil/Donnees/.tetras-back-manifest"));
        fs::create_dir_all(m.join("2026-01-01_00-00-00_old")).unwrap();
        fifo(&m.join("2026-01-01_00-00-00_old/x.partial"));
        fs::create_dir_all(m.join("2026-01-02_00-00-00_newest/Donnees")).unwrap();
        let manifest = m.join("2026-01-02_00-00-00_newest/Donnees/.tetras-back-manifest");
        fs::write(&manifest, "tetras-back manifest 2\n").unwrap();
        fs::OpenOptions::new().write(true).open(&manifest).unwrap().set_len(200 << 30).unwrap();
    });
    c.b.sh("systemctl start tetras-back").ok();
    let mut good = c.disk("good");
    hostile.attach_low();
    c.events_until("backup_started", &hostile);
    good.attach_low();
    let finished = c.events_until("backup_finished", &hostile).pop().unwrap();
    assert_eq!(finished["status"], "damaged", "{finished}");
    let log = c.b.sh(&format!("cat {}", finished["log"].as_str().unwrap())).ok().stdout;
    assert!(log.contains("2026-01-02_00-00-00_newest") && log.contains(".tetras-back-manifest"), "{log}");
    assert!(log.contains("a line longer than"), "the sparse manifest is named as damaged:\n{log}");
    assert!(
        !log.contains("2099-01-01_00-00-00_evil back"),
        "the folder dated 2099 is never the newest:\n{log}"
    );
    assert_eq!(c.events_until("backup_finished", &good).pop().unwrap()["status"], "success");
    hostile.detach();
    good.detach();
    c.events_until("disk_unplugged", &hostile);

    hostile.attach_low();
    c.events_until("backup_started", &hostile);
    let stop = Instant::now();
    c.b.sh("systemctl stop tetras-back").ok();
    assert!(stop.elapsed() < Duration::from_secs(10), "stop took {:?}", stop.elapsed());
    assert_eq!(c.b.sh("systemctl is-active tetras-back").stdout.trim(), "inactive");
    assert_eq!(c.b.sh("pgrep -af 'tetras-back [d]rill' || true").stdout, "", "no drill is left running");
    hostile.detach();
    c.b.sh("systemctl start tetras-back").ok();
}

/// `make deb`, lintian, then the package's life in a fresh box that has
/// udisks: installed and running, a backup whose disk udisks cannot power
/// off (a loop device has no drive), removed (config and state kept),
/// purged (gone).
fn debian_package(images: &Path) {
    let said = make("deb", &["PROFILE=dev"], &[]);
    let deb = said
        .lines()
        .find_map(|l| l.strip_prefix("Built ").and_then(|r| r.split(';').next()))
        .unwrap_or_else(|| panic!("make deb did not say what it built:\n{said}"));
    let deb = Path::new(env!("CARGO_MANIFEST_DIR")).join(deb);
    let lintian = std::process::Command::new("lintian").arg("--allow-root").arg(&deb).output().unwrap();
    let lintian = Run::from(lintian);
    assert!(
        lintian.code == 0 && !lintian.stdout.lines().any(|l| l.starts_with("E:")),
        "lintian: {lintian:?}"
    );

    // The Depends a Debian with udisks has to have: openssh-client (rsync is in every box).
    let b = SystemdBox::boot("udisks-ssh", "udisks2,openssh-client");
    b.put(&deb, "/root/tetras-back.deb");
    b.sh("dpkg -i /root/tetras-back.deb").ok();
    assert_eq!(b.sh("systemctl is-active tetras-back").stdout.trim(), "active");
    assert_eq!(b.sh("systemctl is-enabled tetras-back").stdout.trim(), "enabled");
    assert_eq!(b.sh("systemctl is-active tetras-back-web").stdout.trim(), "active");
    assert_eq!(b.sh("systemctl is-enabled tetras-back-web").stdout.trim(), "enabled");
    assert!(b.sh("dpkg-query -W -f '${Conffiles}' tetras-back").ok().stdout.contains(CONFIG));

    fs::create_dir_all(b.path(TEST_DIR)).unwrap();
    let mut sub = Subscriber::new(b.path(&format!("{TEST_DIR}/events.fifo")));
    b.sh(&format!("tetras-back register {TEST_DIR}/events.fifo")).ok();
    let uuid = random_uuid();
    let mut disk = LoopDisk::create(images, "ext4", &uuid, 64);
    b.sh(&format!("tetras-back save {uuid} packaged")).ok();
    disk.attach_low();
    let finished = sub.until_about("backup_finished", &uuid).pop().unwrap();
    assert_eq!(finished["status"], "success", "{finished}");
    let safe = sub.until_about("safe_to_remove", &uuid).pop().unwrap();
    assert_eq!(safe["powered_off"], false, "{safe}");
    let why = safe["power_off_error"].as_str().unwrap();
    assert!(
        why.contains("not on a drive that can be powered off"),
        "udisks answered, for a loop device: {safe}"
    );
    disk.detach();

    b.sh("dpkg -r tetras-back").ok();
    assert_ne!(b.sh("systemctl is-active tetras-back").stdout.trim(), "active");
    assert_ne!(b.sh("systemctl is-active tetras-back-web").stdout.trim(), "active");
    assert!(!b.path("/usr/sbin/tetras-back").exists());
    assert!(b.path(CONFIG).exists(), "dpkg -r keeps the configuration");
    assert!(b.path("/var/lib/tetras-back/state.json").exists(), "dpkg -r keeps the state");
    b.sh("dpkg --purge tetras-back").ok();
    assert!(!b.path("/etc/tetras-back").exists(), "dpkg --purge removes the configuration");
    assert!(!b.path("/var/lib/tetras-back").exists(), "dpkg --purge removes the state");
    assert!(!b.path("/var/log/tetras-back").exists(), "dpkg --purge removes the logs");
}

type Scenario = (&'static str, fn(&mut Ctx));

const SCENARIOS: &[Scenario] = &[
    ("installed_unit_starts_and_answers", installed_unit_starts_and_answers),
    ("shipped_script_keeps_setuid_xattrs_and_owners", shipped_script_keeps_setuid_xattrs_and_owners),
    ("a_held_disk_is_opened_read_only_and_restored_from", a_held_disk_is_opened_read_only_and_restored_from),
    ("the_web_console_runs_under_its_unit", the_web_console_runs_under_its_unit),
    ("reload_says_whether_the_configuration_is_good", reload_says_whether_the_configuration_is_good),
    ("sleep_and_shutdown_wait_for_a_backup", sleep_and_shutdown_wait_for_a_backup),
    ("the_watchdog_keeps_a_long_backup_alive", the_watchdog_keeps_a_long_backup_alive),
    ("a_killed_daemon_is_restarted_and_backs_up", a_killed_daemon_is_restarted_and_backs_up),
    (
        "systemctl_stop_during_a_backup_leaves_a_clean_system",
        systemctl_stop_during_a_backup_leaves_a_clean_system,
    ),
    (
        "a_disk_plugged_before_the_service_starts_is_backed_up",
        a_disk_plugged_before_the_service_starts_is_backed_up,
    ),
    (
        "a_hostile_disk_blocks_neither_the_next_disk_nor_the_stop",
        a_hostile_disk_blocks_neither_the_next_disk_nor_the_stop,
    ),
    ("a_host_is_pulled_through_the_units_sandbox", a_host_is_pulled_through_the_units_sandbox),
];

/// Another host pulled over SSH by the installed unit: ssh and rsync run
/// within its sandbox, the key and known_hosts in its StateDirectory, the
/// host an sshd on this machine's loopback (the box shares its network).
fn a_host_is_pulled_through_the_units_sandbox(c: &mut Ctx) {
    c.b.sh("tetras-back hosts key").ok();
    let public = fs::read_to_string(c.b.path("/var/lib/tetras-back/ssh/id_ed25519.pub")).unwrap();
    let src = c.images.path().join("web1-src");
    tree::torture(&src);
    let sshd = common::sshd::Sshd::start(
        &c.images.path().join("sshd"),
        &format!("restrict,command=\"rrsync -ro /\" {public}"),
    );
    let hosts = format!(
        "[[scripts]]\nname = \"backup_hosts.sh\"\nargs = [\"--verify\"]\n\
         [[hosts]]\nname = \"web1\"\naddress = \"127.0.0.1\"\nport = {}\npaths = [\"{}\"]\n",
        sshd.port,
        src.display()
    );
    c.configure(Some(&hosts));
    c.b.sh(&format!("tetras-back hosts trust web1 --fingerprint {}", sshd.fingerprint())).ok();
    let check = c.b.sh("tetras-back hosts check web1").ok();
    assert!(check.stdout.contains("web1: ok:"), "{check:?}");

    let mut disk = c.disk("hosts");
    disk.attach_low();
    let events = c.events_until("backup_finished", &disk);
    let finished = events.last().unwrap();
    assert_eq!(
        finished["status"],
        "success",
        "{finished}\n{}",
        fs::read_to_string(c.b.path(finished["log"].as_str().unwrap())).unwrap_or_default()
    );
    c.events_until("safe_to_remove", &disk);
    // The unit's seccomp filter lets pull confine its rsync (Landlock).
    let log = fs::read_to_string(c.b.path(finished["log"].as_str().unwrap())).unwrap();
    assert!(!log.contains("unconfined"), "rsync ran unconfined under the unit:\n{log}");
    let history = c.b.sh("tetras-back history --json --limit 1").ok();
    let rows: serde_json::Value = serde_json::from_str(&history.stdout).unwrap();
    assert_eq!(rows[0]["hosts"][0]["outcome"], "done", "{rows:#}");
    let mount = c.images.path().join("look");
    disk.inspect(&mount, |m| {
        let folder = fs::read_dir(m)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.to_string_lossy().ends_with("_Hosts"))
            .expect("a _Hosts folder");
        let copy = folder.join("web1").join(src.strip_prefix("/").unwrap());
        tree::assert_same(&src, &copy, &Compare::snapshot());
    });
    disk.detach();
    drop(sshd);
}

/// Runs `f`, printing its outcome as libtest does; returns whether it passed.
fn run_one(name: &str, f: impl FnOnce()) -> bool {
    let started = Instant::now();
    let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_ok();
    println!(
        "test {name} ... {} ({:.1}s)",
        if ok { "ok" } else { "FAILED" },
        started.elapsed().as_secs_f64()
    );
    ok
}

fn main() -> std::process::ExitCode {
    let filter: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let wanted = |name: &str| filter.is_empty() || filter.iter().any(|f| name.contains(f.as_str()));
    require_root_and_udevd();
    let images = tempfile::Builder::new().prefix("tetras-service-").tempdir().unwrap();
    let (mut passed, mut failed) = (0, 0);

    if SCENARIOS.iter().any(|(n, _)| wanted(n)) {
        let stage = images.path().join("stage");
        make("install", &[&format!("DESTDIR={}", stage.display()), "PREFIX=/usr/local", "PROFILE=dev"], &[]);
        // With ssh: the unit pulls other hosts.
        let b = SystemdBox::boot("plain-ssh", "openssh-client");
        b.install(&stage);
        b.sh("systemctl daemon-reload && systemctl enable --now tetras-back").ok();
        fs::create_dir_all(b.path(TEST_DIR)).unwrap();
        let sub = Subscriber::new(b.path(&format!("{TEST_DIR}/events.fifo")));
        b.sh(&format!("tetras-back register {TEST_DIR}/events.fifo")).ok();
        let shipped_config = fs::read_to_string(b.path(CONFIG)).unwrap();
        let mut c = Ctx { sub, images: tempfile::tempdir_in(images.path()).unwrap(), shipped_config, b };
        for (name, f) in SCENARIOS.iter().filter(|(n, _)| wanted(n)) {
            if run_one(name, || {
                c.settle();
                f(&mut c)
            }) {
                passed += 1;
            } else {
                failed += 1;
                println!("--- the service's journal:\n{}", c.b.journal());
            }
        }
    }
    if wanted("debian_package") {
        if run_one("debian_package", || debian_package(images.path())) {
            passed += 1;
        } else {
            failed += 1;
        }
    }
    println!("\nservice: {passed} passed, {failed} failed");
    if failed == 0 {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}
