//! Getting files back with real components: a disk backed up by the
//! shipped script through real udev events, held, plugged in again and
//! opened read-only by the daemon, listed, restored from (snapshot and
//! archive), closed, pulled out while opened, timed out; and the restore
//! drill finding a byte flipped behind the backup's back. Needs root and a
//! running udevd (`make test` provides both).

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::disk::*;
use common::rig::flow_of;
use common::tree::{self, assert_same, Compare};
use common::*;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A known disk ("office", 256 MiB ext4) backed up by the shipped script
/// (`--data` the torture tree, `--config` a small tree into an archive),
/// with a daemon and a subscriber.
struct Restorable {
    sub: Subscriber,
    daemon: Option<Daemon>,
    disk: LoopDisk,
    data: PathBuf,
    conf: PathBuf,
    env: TestEnv,
}

impl Restorable {
    fn new(extra: &str) -> Restorable {
        require_root_and_udevd();
        let env = TestEnv::new();
        env.write_config(&format!(
            "{extra}\n[[scripts]]\nname = \"backup_nocloud.sh\"\nargs = [\"--data\", \"--config\"]\n"
        ));
        install_shipped_scripts(&env.path("scripts"));
        let uuid = random_uuid();
        let disk = LoopDisk::create(env.root(), "ext4", &uuid, 256);
        env.cli(&["save", &uuid, "office"]).ok();
        let data = env.path("data");
        tree::torture(&data);
        let conf = env.path("conf");
        fs::create_dir_all(conf.join("nginx/sites")).unwrap();
        fs::write(conf.join("nginx/nginx.conf"), "worker_processes 2;\n").unwrap();
        fs::write(conf.join("nginx/sites/default"), "server { listen 80; }\n").unwrap();
        fs::hard_link(conf.join("nginx/nginx.conf"), conf.join("nginx/nginx.conf.link")).unwrap();
        std::os::unix::fs::symlink("sites/default", conf.join("nginx/enabled")).unwrap();
        let daemon = start(&env, &data, &conf);
        let sub = Subscriber::new(env.path("events.fifo"));
        env.cli(&["register", s(&sub.path)]).ok();
        let mut r = Restorable { sub, daemon: Some(daemon), disk, data, conf, env };
        r.sub.until("disks");
        r
    }

    /// Alters the disk with no daemon running (mounting the image makes a
    /// loop device that a daemon would take for the disk plugged in).
    fn modify_offline(&mut self, change: impl FnOnce(&Path)) {
        let daemon = self.daemon.take().unwrap();
        daemon.signal(nix::libc::SIGTERM);
        let code = daemon.wait_exit(Duration::from_secs(10));
        assert_eq!(code, 0, "the daemon stops cleanly");
        let root = self.env.root().to_owned();
        self.disk.modify(&root, change);
        self.daemon = Some(start(&self.env, &self.data, &self.conf));
    }

    fn daemon_log(&self) -> String {
        self.daemon.as_ref().map(Daemon::log_text).unwrap_or_default()
    }

    fn uuid(&self) -> String {
        self.disk.uuid.clone()
    }

    /// The names of this disk's events up to `event`, and the events.
    fn flow_until(&mut self, event: &str) -> (Vec<String>, Vec<serde_json::Value>) {
        let uuid = self.uuid();
        let events = self.sub.until_about(event, &uuid);
        (flow_of(&events, &uuid), events)
    }

    /// Plugs the disk in and waits for its backup to end; returns its status.
    fn back_up(&mut self) -> String {
        self.disk.attach();
        let (flow, events) = self.flow_until("safe_to_remove");
        assert!(flow.contains(&"backup_started".to_owned()), "{flow:?}");
        let finished = events.iter().find(|e| e["event"] == "backup_finished").unwrap();
        finished["status"].as_str().unwrap().to_owned()
    }

    fn unplug(&mut self) {
        self.disk.detach();
        self.flow_until("disk_unplugged");
    }

    fn mount_point(&self) -> PathBuf {
        self.env.path("mnt").join(self.uuid())
    }

    fn history(&self) -> serde_json::Value {
        serde_json::from_str(&self.env.cli(&["history", "--json"]).ok().stdout).unwrap()
    }
}

fn start(env: &TestEnv, data: &Path, conf: &Path) -> Daemon {
    env.start_daemon_with(&[("NOCLOUD_DATA", s(data)), ("NOCLOUD_CONFIG", s(conf))])
}

#[test]
fn a_held_disk_opens_read_only_lists_its_backups_and_gives_everything_back() {
    let mut r = Restorable::new("verify_every = 1");
    assert_eq!(r.back_up(), "success", "{}", r.daemon_log());
    let last = &r.history()[0];
    assert_eq!(last["drill"]["passed"], true, "verify_every = 1 checks every backup: {last}");
    r.unplug();

    // Held: the next plug runs no script, prunes nothing, mounts read-only.
    let run = r.env.cli(&["hold", "office"]).ok();
    assert!(run.stdout.contains("held"), "{run:?}");
    let logs_before = fs::read_dir(r.env.path("log")).unwrap().count();
    let dev = r.disk.attach();
    let (flow, events) = r.flow_until("disk_opened");
    assert_eq!(flow, ["disk_plugged", "disk_opened"]);
    let mount = PathBuf::from(events.last().unwrap()["mount"].as_str().unwrap());
    assert_eq!(mount, r.mount_point());
    assert!(mounts_of(&dev).contains(&s(&mount).to_owned()), "{:?}", mounts_of(&dev));
    let err = fs::write(mount.join("scribble"), "x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(nix::libc::EROFS), "{err}");
    assert!(r.sub.during(Duration::from_millis(500)).iter().all(|e| e["event"] != "backup_started"));
    assert_eq!(fs::read_dir(r.env.path("log")).unwrap().count(), logs_before, "no backup, no log");
    let disks = r.env.cli(&["disks", "--json"]).ok().stdout;
    let disks: serde_json::Value = serde_json::from_str(&disks).unwrap();
    assert_eq!((&disks["disks"][0]["held"], &disks["disks"][0]["opened"]), (&true.into(), &true.into()));
    let status: serde_json::Value =
        serde_json::from_str(&r.env.cli(&["status", "--json"]).ok().stdout).unwrap();
    assert_eq!(status["opened"], serde_json::json!(["office"]));
    assert_eq!(status["held"], serde_json::json!(["office"]));
    r.env.cli(&["backup", "office"]).fails_with(&["opened for restore", "close office"]);

    // Listed: one complete folder, its snapshot and its archive, checked.
    let list: serde_json::Value =
        serde_json::from_str(&r.env.cli(&["backups", "office", "--json"]).ok().stdout).unwrap();
    let folders = list["backups"].as_array().unwrap();
    assert_eq!(folders.len(), 1, "{list}");
    let f = &folders[0];
    assert_eq!(f["complete"], true);
    let kinds: Vec<(&str, &str)> = f["parts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["name"].as_str().unwrap(), p["kind"].as_str().unwrap()))
        .collect();
    assert_eq!(kinds, [("Donnees", "snapshot"), ("serveur.tar.gz", "archive")]);
    assert_eq!(f["verified"]["passed"], true, "{f}");
    assert!(f["files"].as_u64().unwrap() >= 10 && f["bytes"].as_u64().unwrap() > 3 << 20, "{f}");
    let text = r.env.cli(&["backups", "office"]).ok().stdout;
    assert!(
        text.contains("complete") && text.contains("passed") && text.contains("Donnees/ (snapshot)"),
        "{text}"
    );

    // Restored by the disk's name: identical to the source by the
    // independent walker (times to the ns, xattrs, owners, setuid, holes,
    // hard links, odd names) and by rsync.
    let to = r.env.path("restored");
    let run = r.env.cli(&["restore", "office", "Donnees", "--to", s(&to)]).ok();
    assert!(run.stdout.contains("restored"), "{run:?}");
    assert_same(&r.data, &to.join("Donnees"), &Compare::exact());
    assert!(fs::metadata(to.join("Donnees/sparse")).unwrap().blocks() < 64, "holes stay holes");
    let out = Command::new("rsync")
        .args([
            "-anHAXc",
            "--itemize-changes",
            &format!("{}/", r.data.display()),
            &format!("{}/", to.join("Donnees").display()),
        ])
        .output()
        .unwrap();
    let changes = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && changes.trim().is_empty(), "rsync sees differences: {changes}");
    // Again: everything is already there; refused, nothing written.
    fs::write(to.join("Donnees/a/hard1"), "changed since").unwrap();
    r.env
        .cli(&["restore", "office", "Donnees/a", "--to", s(&to)])
        .fails_with(&["already there", "Donnees/a/hard1"]);
    assert_eq!(fs::read(to.join("Donnees/a/hard1")).unwrap(), b"changed since");
    for bad in ["../etc", "Donnees/../../x"] {
        r.env.cli(&["restore", "office", bad, "--to", s(&to)]).fails_with(&["inside the backup"]);
    }

    // From the archive, by member path: contents, modes, links (tar keeps
    // whole seconds); then refused when already there, replaced with --overwrite.
    let member = r.conf.strip_prefix("/").unwrap().join("nginx");
    let from_archive = Path::new("serveur.tar.gz").join(&member);
    let conf_to = r.env.path("conf-restored");
    r.env.cli(&["restore", "office", s(&from_archive), "--to", s(&conf_to)]).ok();
    let tar = Compare { nanoseconds: false, xattrs: false, ignore: Vec::new() };
    assert_same(&r.conf.join("nginx"), &conf_to.join(&member), &tar);
    let restored = conf_to.join(&member);
    assert_eq!(
        fs::metadata(restored.join("nginx.conf")).unwrap().ino(),
        fs::metadata(restored.join("nginx.conf.link")).unwrap().ino(),
        "hard links within the restored set are links"
    );
    assert_eq!(fs::read_link(restored.join("enabled")).unwrap(), Path::new("sites/default"));
    fs::write(restored.join("nginx.conf"), "edited").unwrap();
    r.env
        .cli(&["restore", "office", s(&from_archive), "--to", s(&conf_to)])
        .fails_with(&["already there", "nginx.conf"]);
    r.env.cli(&["restore", "office", s(&from_archive), "--to", s(&conf_to), "--overwrite"]).ok();
    assert_eq!(fs::read_to_string(restored.join("nginx.conf")).unwrap(), "worker_processes 2;\n");
    let left: Vec<_> = fs::read_dir(&conf_to).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left.len(), 1, "the extraction folder is gone: {left:?}");

    // Closed: unmounted, safe to remove.
    r.env.cli(&["close", "office"]).ok();
    let (flow, _) = r.flow_until("safe_to_remove");
    assert_eq!(flow, ["disk_closed", "safe_to_remove"]);
    assert!(mounts_of(&dev).is_empty() && !r.mount_point().exists());
    r.env.cli(&["restore", "office", "Donnees", "--to", s(&to)]).fails_with(&["not opened", "open office"]);

    // Mounted elsewhere by hand: `open` refuses and says why.
    let elsewhere = r.env.path("by-hand");
    fs::create_dir_all(&elsewhere).unwrap();
    sh("mount", &["-o", "ro", &dev, s(&elsewhere)]);
    let refused = r.env.cli(&["open", "office"]);
    sh("umount", &[s(&elsewhere)]);
    refused.fails_with(&["could not be opened", "already mounted at", s(&elsewhere)]);

    // Opened again by hand, then pulled out: detached, nothing left.
    r.env.cli(&["open", "office"]).ok();
    r.flow_until("disk_opened");
    r.disk.detach();
    let (flow, _) = r.flow_until("disk_unplugged");
    assert_eq!(flow, ["disk_closed", "disk_unplugged"]);
    assert!(mounts_of(&dev).is_empty() && !r.mount_point().exists(), "{:?}", mounts_of(&dev));

    // Unused for open_timeout: closed by itself.
    r.env.write_config(
        "open_timeout = \"2s\"\n[[scripts]]\nname = \"backup_nocloud.sh\"\nargs = [\"--data\", \"--config\"]\n",
    );
    r.env.cli(&["reload"]).ok();
    r.disk.attach();
    r.flow_until("disk_opened");
    let (flow, events) = r.flow_until("safe_to_remove");
    assert_eq!(flow, ["disk_closed", "safe_to_remove"]);
    assert_eq!(events.iter().find(|e| e["event"] == "disk_closed").unwrap()["why"], "timeout");

    // Released: the next plug backs up again.
    r.env.cli(&["release", "office"]).ok();
    r.unplug();
    assert_eq!(r.back_up(), "success");
}

#[test]
fn the_restore_drill_finds_a_flipped_byte_and_names_the_file() {
    let mut r = Restorable::new("verify_every = 1");
    assert_eq!(r.back_up(), "success", "{}", r.daemon_log());
    r.unplug();
    // One byte of a file in the last backup flipped, its time put back:
    // nothing but a checksum can tell.
    r.modify_offline(|disk| {
        let folder = dated_folders(disk).pop().unwrap();
        let file = disk.join(folder).join("Donnees/a/b/other-owner");
        let before = fs::metadata(&file).unwrap();
        let mut bytes = fs::read(&file).unwrap();
        bytes[100] ^= 0x20;
        fs::write(&file, bytes).unwrap();
        tree::set_mtime(&file, before.mtime(), before.mtime_nsec());
    });
    // The next backup links the unchanged file to that damaged copy: its
    // drill reads the newest folder and finds it.
    assert_eq!(r.back_up(), "damaged", "{}", r.daemon_log());
    let last = &r.history()[0];
    assert_eq!(last["status"], "damaged");
    let problems = last["drill"]["problems"].to_string();
    assert!(problems.contains("Donnees/a/b/other-owner") && problems.contains("content differs"), "{last}");
    let log = fs::read_to_string(last["log"].as_str().unwrap()).unwrap();
    assert!(log.contains("DAMAGED: changed: Donnees/a/b/other-owner"), "{log}");
    let text = r.env.cli(&["history"]).ok().stdout;
    assert!(text.contains("damaged") && text.contains("restore drill DAMAGED"), "{text}");
}

#[test]
fn the_drill_runs_every_nth_backup() {
    let mut r = Restorable::new("verify_every = 2");
    for _ in 0..3 {
        assert_eq!(r.back_up(), "success", "{}", r.daemon_log());
        r.unplug();
        std::thread::sleep(Duration::from_millis(1100)); // the next folder gets a later name
    }
    let drilled: Vec<bool> =
        r.history().as_array().unwrap().iter().rev().map(|b| b.get("drill").is_some()).collect();
    assert_eq!(drilled, [false, true, false], "the 2nd of every 2 backups is checked");
}

/// Sends one request to the daemon's control FIFO, as the web console does
/// (with a `user`), and waits for the answer on a reply FIFO of its own.
fn ask(env: &TestEnv, mut request: serde_json::Value) -> serde_json::Value {
    use std::io::{Read, Write};
    use std::os::unix::fs::OpenOptionsExt;
    let reply = env.path(&format!("run/replies/test-{}", random_uuid()));
    mkfifo(&reply);
    // Open for reading first: the daemon's non-blocking write finds a reader.
    let mut answer = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(&reply)
        .unwrap();
    request["reply"] = s(&reply).into();
    let mut control = fs::OpenOptions::new().write(true).open(env.control_path()).unwrap();
    writeln!(control, "{request}").unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let mut buf = Vec::new();
    while !buf.contains(&b'\n') {
        assert!(std::time::Instant::now() < deadline, "no answer to {request}");
        let mut chunk = [0u8; 4096];
        match answer.read(&mut chunk) {
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    let _ = fs::remove_file(&reply);
    serde_json::from_slice(&buf[..buf.iter().position(|&b| b == b'\n').unwrap()]).unwrap()
}

/// A restore asked from the web console (the request carries the user's
/// name) runs as a child process, writes only beneath `[web] restore_to`,
/// keeps owners, but never makes a set-uid or set-gid file, a file
/// capability or a device node: a console user restoring a set-uid root
/// shell from a disk of their own gets a plain file. Root's own restore
/// (the command line) keeps everything.
#[test]
fn a_restore_asked_from_the_console_goes_only_into_its_roots_and_grants_nothing() {
    let root = tempfile::Builder::new().prefix("tetras-console-restores-").tempdir().unwrap();
    let roots = root.path().join("restores");
    let mut r = Restorable::new(&format!("verify_every = 0\n[web]\nrestore_to = [\"{}\"]\n", s(&roots)));
    // A file capability, as on ping: it grants privileges as set-uid does.
    let cap = r.data.join("a/capable");
    fs::write(&cap, "#!/bin/sh\n").unwrap();
    // security.capability v2: cap_net_raw in the permitted and effective sets.
    let value: [u8; 20] = [0, 0, 0, 2, 0, 0x20, 0, 0, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    xattr::set(&cap, "security.capability", &value).unwrap();
    assert_eq!(r.back_up(), "success", "{}", r.daemon_log());
    r.unplug();
    r.env.cli(&["hold", "office"]).ok();
    r.disk.attach();
    r.flow_until("disk_opened");
    let backup = r.env.cli(&["backups", "office", "--json"]).ok().stdout;
    let backup: serde_json::Value = serde_json::from_str(&backup).unwrap();
    let folder = backup["backups"][0]["name"].as_str().unwrap().to_owned();
    let restore = |to: &Path, paths: &[&str]| {
        serde_json::json!({"cmd": "restore", "name": "office", "backup": folder, "paths": paths,
                           "to": s(to), "user": "mallory"})
    };

    // Anywhere else: refused, naming the roots; nothing written.
    for to in [r.env.path("elsewhere"), roots.join("../escape"), PathBuf::from("/tmp")] {
        let said = ask(&r.env, restore(&to, &["Donnees/a"]));
        assert_eq!(said["ok"], false, "{said}");
        let error = said["error"].as_str().unwrap();
        assert!(error.contains("restore_to") && error.contains(s(&roots)), "{error}");
    }
    assert!(!r.env.path("elsewhere").exists() && !root.path().join("escape").exists());

    // Into a root: owners kept, set-uid bits, capabilities and devices not.
    let to = roots.join("mallory");
    let said = ask(&r.env, restore(&to, &["Donnees"]));
    assert_eq!(said["ok"], true, "{said}");
    assert!(said["message"].as_str().unwrap().contains("restored"), "{said}");
    let got = to.join("Donnees");
    assert_eq!(fs::metadata(got.join("a/setuid")).unwrap().mode() & 0o7777, 0o755, "no set-uid bit");
    assert_eq!(
        fs::metadata(got.join("sticky")).unwrap().mode() & 0o7777,
        0o1777,
        "the sticky bit is no privilege"
    );
    assert!(
        xattr::get(got.join("a/capable"), "security.capability").unwrap().is_none(),
        "no file capability"
    );
    assert!(!got.join("null-device").exists(), "no device node");
    assert!(
        std::os::unix::fs::FileTypeExt::is_fifo(&fs::symlink_metadata(got.join("fifo")).unwrap().file_type()),
        "a FIFO is no privilege"
    );
    assert_eq!(fs::metadata(got.join("a/b/other-owner")).unwrap().uid(), 1234, "owners are kept");
    assert_eq!(fs::read(got.join("a/hard1")).unwrap(), fs::read(r.data.join("a/hard1")).unwrap());
    // Its log: root's only, naming who asked.
    let logs: Vec<PathBuf> = fs::read_dir(r.env.path("log"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with("_restore.log"))
        .collect();
    assert_eq!(logs.len(), 1, "{logs:?}");
    assert_eq!(fs::metadata(&logs[0]).unwrap().mode() & 0o777, 0o600);
    assert!(fs::read_to_string(&logs[0]).unwrap().contains("asked by web user mallory"));

    // Root's restore from the command line keeps what the console may not.
    let full = r.env.path("full");
    r.env.cli(&["restore", "office", "Donnees/a", "--to", s(&full)]).ok();
    assert_eq!(fs::metadata(full.join("Donnees/a/setuid")).unwrap().mode() & 0o7777, 0o4755);
    assert!(xattr::get(full.join("Donnees/a/capable"), "security.capability").unwrap().is_some());
    r.env.cli(&["close", "office"]).ok();
    r.flow_until("safe_to_remove");
}
