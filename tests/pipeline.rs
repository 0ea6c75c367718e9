//! The disk pipeline with real components: systemd-udevd events, loop
//! devices carrying real filesystems, real mounts, real scripts. Needs root
//! and a running udevd (`make test` provides both).

mod common;

use std::fs;
use std::time::{Duration, Instant};

use common::disk::*;
use common::rig::*;
use common::*;

/// The events of one backup, from plug to safe_to_remove.
const ONE_BACKUP: [&str; 6] = [
    "disk_plugged",
    "backup_started",
    "script_started",
    "script_finished",
    "backup_finished",
    "safe_to_remove",
];

const WRITER: &str = r#"
{
  echo "cwd=$(pwd)"
  echo "args=$*"
  for v in MOUNT UUID NAME DEVICE FSTYPE HOSTNAME LOG BIN; do eval "echo TETRAS_BACK_$v=\$TETRAS_BACK_$v"; done
  echo "notify=${NOTIFY_SOCKET:-unset}"
} > "$TETRAS_BACK_MOUNT/proof.txt"
echo "wrote the proof"
"#;

#[test]
fn a_known_disk_is_backed_up_unmounted_and_announced_in_order() {
    let mut rig = Rig::new("ext4", "[[scripts]]\nname = \"writer.sh\"\nargs = [\"--data\", \"--config\"]\n");
    script(&rig.scripts_dir(), "writer.sh", WRITER, 0o755);
    let _d = rig.env.start_daemon();
    rig.subscribe();
    let plugged_at = Instant::now();
    let dev = rig.disk.attach();
    let events = rig.until("backup_started");
    let delay = plugged_at.elapsed();
    println!(
        "plug-to-backup_started delay: {delay:?} (losetup returned to backup_started read by the subscriber)"
    );
    assert!(delay < Duration::from_secs(5), "{delay:?}");
    let mut events = [events, rig.until("safe_to_remove")].concat();
    assert_eq!(rig.flow(&events), ONE_BACKUP);
    events.retain(|e| e["uuid"] == rig.disk.uuid.as_str());
    assert_eq!(events[0]["device"], dev.as_str());
    assert_eq!(events[0]["fstype"], "ext4");
    assert_eq!(events[3]["script"], "writer.sh");
    assert_eq!(events[3]["exit_code"], 0);
    assert_eq!(events[4]["status"], "success");
    let log = events[4]["log"].as_str().unwrap().to_owned();
    assert!(log.starts_with(rig.env.path("log").to_str().unwrap()) && log.ends_with("_office.log"), "{log}");
    assert!(fs::read_to_string(&log).unwrap().contains("[writer.sh] wrote the proof"));
    rig.nothing_mounted();

    let disks = rig.env.cli(&["disks"]).ok().stdout;
    assert!(disks.contains(" yes ") && disks.contains("success"), "{disks}");

    // By hand, once more: `backup NAME` on the still-plugged disk.
    rig.env.cli(&["backup", "office"]).ok();
    let again = rig.until("safe_to_remove");
    assert_eq!(rig.flow(&again), ONE_BACKUP[1..]);
    // The proof on the disk is the second run's: its log is that run's log.
    let log =
        again.iter().find(|e| e["event"] == "backup_finished").unwrap()["log"].as_str().unwrap().to_owned();

    let proof = rig.disk.read_file(rig.env.root(), "proof.txt").expect("the script wrote onto the disk");
    let mnt = rig.env.path("mnt").join(&rig.disk.uuid);
    for want in [
        format!("cwd={}", mnt.display()),
        format!("args=--data --config {dev}"),
        format!("TETRAS_BACK_MOUNT={}", mnt.display()),
        format!("TETRAS_BACK_UUID={}", rig.disk.uuid),
        "TETRAS_BACK_NAME=office".to_owned(),
        format!("TETRAS_BACK_DEVICE={dev}"),
        "TETRAS_BACK_FSTYPE=ext4".to_owned(),
        format!("TETRAS_BACK_LOG={log}"),
        format!("TETRAS_BACK_BIN={BIN}"),
        "notify=unset".to_owned(),
    ] {
        assert!(proof.contains(&want), "{want:?} not in\n{proof}");
    }
    let unplugged = rig.until("disk_unplugged");
    assert_eq!(unplugged.last().unwrap()["name"], "office");
}

#[test]
fn repeated_change_events_during_a_backup_start_exactly_one() {
    let mut rig = Rig::new("ext4", "[[scripts]]\nname = \"slow.sh\"\n");
    script(&rig.scripts_dir(), "slow.sh", "sleep 2", 0o755);
    let _d = rig.env.start_daemon();
    rig.subscribe();
    let dev = rig.disk.attach();
    rig.until("script_started");
    for _ in 0..3 {
        sh("udevadm", &["trigger", "--action=change", &dev]);
    }
    let mut events = rig.until("safe_to_remove");
    events.extend(rig.sub().during(Duration::from_secs(2)));
    assert_eq!(rig.flow(&events).iter().filter(|e| *e == "backup_started").count(), 0, "{events:#?}");
    assert_eq!(rig.flow(&events).iter().filter(|e| *e == "backup_finished").count(), 1);
    assert_eq!(rig.logs().len(), 1, "exactly one backup log");
}

#[test]
fn an_unknown_disk_is_announced_and_left_alone() {
    require_root_and_udevd();
    let env = TestEnv::new();
    env.write_config("[[scripts]]\nname = \"never.sh\"\n");
    script(&env.path("scripts"), "never.sh", "touch \"$TETRAS_BACK_MOUNT/ran\"", 0o755);
    let uuid = random_uuid();
    let mut disk = LoopDisk::create(env.root(), "ext4", &uuid, 32);
    let _d = env.start_daemon();
    let mut sub = Subscriber::new(env.path("events.fifo"));
    env.cli(&["register", sub.path.to_str().unwrap()]).ok();
    let dev = disk.attach();
    let events = sub.until_about("unknown_disk", &uuid);
    let e = events.last().unwrap();
    assert_eq!(e["uuid"], uuid.as_str());
    assert_eq!(e["device"], dev.as_str());
    assert_eq!(e["fstype"], "ext4");
    assert_eq!(e["label"], "tbtest");
    assert_eq!(e["size"], 32 * 1024 * 1024);
    let later = sub.during(Duration::from_secs(1));
    assert!(flow_of(&later, &uuid).is_empty(), "{later:#?}");
    assert!(disk.mounts().is_empty());
    // The daemon makes its (private) log folder at start; no log is in it.
    assert!(fs::read_dir(env.path("log")).map_or(true, |d| d.count() == 0), "no backup log");
    assert!(disk.read_file(env.root(), "ran").is_none());
}

#[test]
fn a_disk_plugged_before_the_daemon_starts_is_backed_up_at_start() {
    let mut rig = Rig::new("ext4", "[[scripts]]\nname = \"writer.sh\"\n");
    script(&rig.scripts_dir(), "writer.sh", WRITER, 0o755);
    rig.disk.attach();
    sh("udevadm", &["settle", "--timeout=10"]);
    // Subscribe through the state file before the daemon runs, so the
    // first events are seen too.
    let mut sub = Subscriber::new(rig.env.path("events.fifo"));
    let mut state: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(rig.env.state_path()).unwrap()).unwrap();
    state["subscribers"] = serde_json::json!([sub.path]);
    fs::write(rig.env.state_path(), state.to_string()).unwrap();
    let _d = rig.env.start_daemon();
    let events = sub.until_about("safe_to_remove", &rig.disk.uuid);
    assert_eq!(rig.flow(&events), ONE_BACKUP);
    assert!(rig.disk.read_file(rig.env.root(), "proof.txt").is_some());
}

#[test]
fn removing_the_disk_mid_backup_stops_it_and_the_daemon_carries_on() {
    let mut rig = Rig::new("ext4", "[[scripts]]\nname = \"sleepy.sh\"\n");
    script(&rig.scripts_dir(), "sleepy.sh", "echo started; sleep 60; echo never", 0o755);
    let d = rig.env.start_daemon();
    rig.subscribe();
    let dev = rig.disk.attach();
    rig.until("script_started");
    let pulled = Instant::now();
    sh("udevadm", &["trigger", "--action=remove", &dev]);
    rig.disk.detach();
    let events = rig.until("backup_finished");
    println!("removal to backup_finished: {:?}", pulled.elapsed());
    assert!(rig.flow(&events).contains(&"disk_unplugged".to_owned()), "{events:#?}");
    let finished = events.last().unwrap();
    assert_eq!(finished["status"], "removed");
    let after = rig.sub().during(Duration::from_millis(500));
    assert!(!rig.flow(&after).contains(&"safe_to_remove".to_owned()));
    let status = rig.env.cli(&["status"]).ok().stdout;
    assert!(status.contains("idle"), "{status}");
    rig.nothing_mounted();
    assert!(!rig.logs()[0].contains("never"));
    let state = fs::read_to_string(rig.env.state_path()).unwrap();
    assert!(state.contains("\"removed\""), "{state}");
    d.wait_log("removed during its backup");

    // The next plug backs up again normally.
    script(&rig.scripts_dir(), "sleepy.sh", "echo quick", 0o755);
    rig.disk.attach();
    let events = rig.until("safe_to_remove");
    assert_eq!(rig.flow(&events), ONE_BACKUP);
    assert_eq!(events.iter().rev().find(|e| e["event"] == "backup_finished").unwrap()["status"], "success");
}

#[test]
fn untrusted_failing_and_overdue_scripts_fail_the_backup() {
    let mut rig = Rig::new(
        "ext4",
        "[[scripts]]\nname = \"open.sh\"\n\n[[scripts]]\nname = \"three.sh\"\n\n\
         [[scripts]]\nname = \"slow.sh\"\ntimeout = \"1s\"\n\n[[scripts]]\nname = \"after.sh\"\n",
    );
    let dir = rig.scripts_dir();
    let open = script(&dir, "open.sh", "touch \"$TETRAS_BACK_MOUNT/open-ran\"", 0o757);
    script(&dir, "three.sh", "echo failing on purpose; exit 3", 0o755);
    script(&dir, "slow.sh", "sleep 30", 0o755);
    script(&dir, "after.sh", "touch \"$TETRAS_BACK_MOUNT/after-ran\"", 0o755);
    let _d = rig.env.start_daemon();
    rig.subscribe();
    rig.disk.attach();
    let started = Instant::now();
    let events = rig.until("safe_to_remove");
    assert!(started.elapsed() < Duration::from_secs(20), "the timeout stopped slow.sh");
    let finished: Vec<_> = events.iter().filter(|e| e["event"] == "script_finished").collect();
    assert_eq!(finished.len(), 4, "{events:#?}");
    assert!(finished[0]["outcome"].as_str().unwrap().contains("writable by group or others"));
    assert!(finished[0]["outcome"].as_str().unwrap().contains(open.to_str().unwrap()));
    assert_eq!(finished[1]["exit_code"], 3);
    assert_eq!(finished[2]["exit_code"], serde_json::Value::Null);
    assert!(finished[2]["outcome"].as_str().unwrap().contains("timed out"));
    assert_eq!(finished[3]["exit_code"], 0, "later scripts still run");
    assert_eq!(events.iter().find(|e| e["event"] == "backup_finished").unwrap()["status"], "failed");
    let log = &rig.logs()[0];
    assert!(log.contains(open.to_str().unwrap()) && log.contains("writable by group or others"), "{log}");
    assert!(
        log.contains("three.sh failed with exit code 3") && log.contains("[three.sh] failing on purpose"),
        "{log}"
    );
    assert!(log.contains("slow.sh timed out"), "{log}");
    assert!(rig.disk.read_file(rig.env.root(), "open-ran").is_none(), "the untrusted script never ran");
}

#[test]
fn a_filesystem_type_not_allowed_is_refused_unmounted() {
    let mut rig = Rig::new("ext2", "filesystems = [\"ext4\"]\n[[scripts]]\nname = \"never.sh\"\n");
    script(&rig.scripts_dir(), "never.sh", "touch \"$TETRAS_BACK_MOUNT/ran\"", 0o755);
    let _d = rig.env.start_daemon();
    rig.subscribe();
    rig.disk.attach();
    let events = rig.until("backup_finished");
    let f = events.last().unwrap();
    assert_eq!(f["status"], "failed");
    assert!(f["error"].as_str().unwrap().contains("ext2 filesystem, which is not in `filesystems`"), "{f}");
    assert!(!rig.flow(&events).contains(&"script_started".to_owned()));
    assert!(rig.disk.mounts().is_empty());
    assert!(rig.disk.read_file(rig.env.root(), "ran").is_none());
}

#[test]
fn a_corrupt_filesystem_is_a_reported_mount_failure() {
    let mut rig = Rig::new("ext4", "[[scripts]]\nname = \"never.sh\"\n");
    script(&rig.scripts_dir(), "never.sh", "true", 0o755);
    // Keep the superblock (udev still sees the UUID), destroy the group
    // descriptors right after it: the kernel refuses to mount.
    let img = rig.disk.image.to_str().unwrap().to_owned();
    sh(
        "dd",
        &[
            "if=/dev/urandom",
            &format!("of={img}"),
            "bs=4096",
            "seek=1",
            "count=1",
            "conv=notrunc",
            "status=none",
        ],
    );
    let d = rig.env.start_daemon();
    rig.subscribe();
    rig.disk.attach();
    let events = rig.until("backup_finished");
    let f = events.last().unwrap();
    assert_eq!(f["status"], "failed");
    println!("mount failure reported as: {}", f["error"]);
    assert!(f["error"].as_str().unwrap().contains("cannot mount"), "{f}");
    assert!(rig.logs()[0].contains("cannot mount"));
    assert!(rig.disk.mounts().is_empty());
    assert!(rig.env.cli(&["status"]).ok().stdout.contains("idle"));
    drop(d);
}

#[test]
fn plug_by_hand_without_udev_events_gives_the_same_result() {
    let mut rig = Rig::new("ext4", "udev_events = false\n[[scripts]]\nname = \"writer.sh\"\n");
    script(&rig.scripts_dir(), "writer.sh", WRITER, 0o755);
    let _d = rig.env.start_daemon();
    rig.subscribe();
    let dev = rig.disk.attach();
    sh("udevadm", &["settle", "--timeout=10"]);
    let quiet = rig.sub().during(Duration::from_millis(700));
    assert!(rig.flow(&quiet).is_empty(), "udev events are off: {quiet:#?}");
    let out = rig.env.cli(&["--plug", &dev]).ok();
    assert!(out.stdout.contains("backup of office started"), "{out:?}");
    assert_eq!(rig.flow_until("safe_to_remove"), ONE_BACKUP);
    rig.env.cli(&["--plug", &dev]).ok();
    rig.env.cli(&["unplug", &dev]).ok();
    assert_eq!(rig.flow_until("disk_unplugged"), ["disk_unplugged"]);
    rig.env.cli(&["plug", "/etc/passwd"]).fails_with(&["/etc/passwd is not a block device"]);
    assert!(rig.disk.read_file(rig.env.root(), "proof.txt").is_some());
}

#[test]
fn a_failing_pre_hook_aborts_and_the_post_hook_gets_the_result() {
    let mut rig = Rig::new(
        "ext4",
        "[hooks]\npre = \"pre.sh\"\npost = \"post.sh\"\n[[scripts]]\nname = \"writer.sh\"\n",
    );
    let dir = rig.scripts_dir();
    let record = rig.env.path("hooks.txt");
    script(&dir, "pre.sh", &format!("echo \"pre $*\" >> {}; exit 1", record.display()), 0o755);
    script(&dir, "post.sh", &format!("echo \"post $*\" >> {}", record.display()), 0o755);
    script(&dir, "writer.sh", WRITER, 0o755);
    let _d = rig.env.start_daemon();
    rig.subscribe();
    rig.disk.attach();
    let events = rig.until("safe_to_remove");
    assert!(!rig.flow(&events).contains(&"script_started".to_owned()), "pre failed: no script runs");
    let finished = events.iter().find(|e| e["event"] == "backup_finished").unwrap();
    assert_eq!(finished["status"], "failed");
    let log = finished["log"].as_str().unwrap();
    let mnt = rig.env.path("mnt").join(&rig.disk.uuid);
    let hooks = fs::read_to_string(&record).unwrap();
    assert_eq!(hooks, format!("pre ext4 office {}\npost office failed {log}\n", mnt.display()));
    assert!(fs::read_to_string(log)
        .unwrap()
        .contains("pre hook pre.sh failed with exit code 1: backup aborted"));
    assert!(rig.disk.read_file(rig.env.root(), "proof.txt").is_none());
}

#[test]
fn a_disk_mounted_elsewhere_is_not_mounted_twice() {
    let mut rig = Rig::new("ext4", "udev_events = false\n[[scripts]]\nname = \"writer.sh\"\n");
    script(&rig.scripts_dir(), "writer.sh", WRITER, 0o755);
    let _d = rig.env.start_daemon();
    rig.subscribe();
    let dev = rig.disk.attach();
    let elsewhere = rig.env.path("automounted");
    fs::create_dir(&elsewhere).unwrap();
    sh("mount", &[&dev, elsewhere.to_str().unwrap()]);
    rig.env.cli(&["plug", &dev]).ok();
    let events = rig.until("backup_finished");
    let f = events.last().unwrap();
    assert_eq!(f["status"], "failed");
    let error = f["error"].as_str().unwrap();
    assert!(error.contains(&format!("already mounted at {}", elsewhere.display())), "{error}");
    assert_eq!(rig.disk.mounts(), vec![elsewhere.display().to_string()]);
    assert!(!rig.flow(&events).contains(&"safe_to_remove".to_owned()), "it is mounted: not safe");
}

#[test]
fn backups_of_two_disks_run_one_after_the_other() {
    let mut rig = Rig::new("ext4", "[[scripts]]\nname = \"slow.sh\"\n");
    script(&rig.scripts_dir(), "slow.sh", "sleep 3", 0o755);
    let uuid2 = random_uuid();
    let mut second = LoopDisk::create(rig.env.root(), "ext4", &uuid2, 32);
    rig.env.cli(&["save", &uuid2, "home"]).ok();
    let _d = rig.env.start_daemon();
    rig.subscribe();
    rig.disk.attach();
    rig.until("script_started");
    second.attach();
    let queued = rig.sub().until_about("backup_queued", &uuid2);
    assert_eq!(queued.last().unwrap()["position"], 1);
    let status = rig.env.cli(&["status", "--json"]).ok().stdout;
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["running"], true);
    assert_eq!(status["backup"]["disk"], "office");
    assert_eq!(status["backup"]["script"], "slow.sh");
    assert_eq!(status["queue"], serde_json::json!(["home"]));
    let events = rig.sub().until_about("safe_to_remove", &uuid2);
    let order: Vec<_> = events
        .iter()
        .filter(|e| e["event"] == "backup_started" || e["event"] == "backup_finished")
        .map(|e| format!("{} {}", e["event"].as_str().unwrap(), e["name"].as_str().unwrap()))
        .collect();
    assert_eq!(order, ["backup_finished office", "backup_started home", "backup_finished home"]);
}

#[test]
fn stopping_the_daemon_mid_backup_unmounts_and_records_it() {
    let mut rig = Rig::new("ext4", "[[scripts]]\nname = \"sleepy.sh\"\n");
    script(&rig.scripts_dir(), "sleepy.sh", "sleep 60", 0o755);
    let d = rig.env.start_daemon();
    rig.subscribe();
    rig.disk.attach();
    rig.until("script_started");
    d.signal(nix::libc::SIGTERM);
    assert_eq!(d.wait_exit(Duration::from_secs(20)), 0);
    let events = rig.until("safe_to_remove");
    assert_eq!(events.iter().find(|e| e["event"] == "backup_finished").unwrap()["status"], "failed");
    rig.nothing_mounted();
    let state = fs::read_to_string(rig.env.state_path()).unwrap();
    assert!(state.contains("\"failed\""), "{state}");
    assert!(rig.logs()[0].contains("the daemon is stopping"));
}

#[test]
fn the_shipped_script_backs_up_a_plugged_disk_twice_with_hard_links() {
    let mut rig = Rig::new("ext4", "[[scripts]]\nname = \"backup_nocloud.sh\"\nargs = [\"--data\"]\n");
    install_shipped_scripts(&rig.scripts_dir());
    let data = rig.env.path("data");
    fs::create_dir_all(data.join("alice")).unwrap();
    fs::write(data.join("alice/thesis.txt"), "chapter one\n").unwrap();
    let data_str = data.to_str().unwrap().to_owned();
    let _d = rig.env.start_daemon_with(&[("NOCLOUD_DATA", &data_str)]);
    rig.subscribe();
    rig.disk.attach();
    let events = rig.until("safe_to_remove");
    assert_eq!(rig.flow(&events), ONE_BACKUP);
    let finished = events.iter().find(|e| e["event"] == "backup_finished").unwrap();
    assert_eq!(finished["status"], "success", "{}", rig.logs().join("\n"));
    std::thread::sleep(Duration::from_millis(1100)); // the next folder gets a later name
    rig.env.cli(&["backup", "office"]).ok();
    let events = rig.until("safe_to_remove");
    assert_eq!(events.iter().find(|e| e["event"] == "backup_finished").unwrap()["status"], "success");

    let root = rig.env.root().to_owned();
    rig.disk.inspect(&root, |disk| {
        let mut backups: Vec<_> = fs::read_dir(disk)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.file_name().unwrap().to_str().unwrap().contains("_Sauvegarde_"))
            .collect();
        backups.sort();
        assert_eq!(backups.len(), 2, "{backups:?}");
        let thesis = |b: &std::path::Path| fs::metadata(b.join("Donnees/alice/thesis.txt")).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!(thesis(&backups[0]).ino(), thesis(&backups[1]).ino(), "the second backup links the first");
        assert_eq!(fs::read_to_string(backups[1].join("Donnees/alice/thesis.txt")).unwrap(), "chapter one\n");
    });
}

/// The simplest reader a client author writes, `while true; do cat FIFO >>
/// file; done`, started in its own process group and stopped (that group
/// only) when dropped.
struct CatLoop {
    child: std::process::Child,
    out: std::path::PathBuf,
}

impl CatLoop {
    fn start(fifo: &std::path::Path, out: std::path::PathBuf) -> CatLoop {
        use std::os::unix::process::CommandExt;
        let child = std::process::Command::new("bash")
            .args(["-c", "while true; do cat \"$0\" >> \"$1\"; done"])
            .arg(fifo)
            .arg(&out)
            .process_group(0)
            .spawn()
            .unwrap();
        CatLoop { child, out }
    }

    fn events(&self) -> Vec<serde_json::Value> {
        fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad line {l:?}: {e}")))
            .collect()
    }

    /// Waits until `n` events named `event` about `uuid` have been read.
    #[track_caller]
    fn wait_for(&self, n: usize, event: &str, uuid: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let seen = self.events().iter().filter(|e| e["event"] == event && e["uuid"] == uuid).count();
            if seen >= n {
                return;
            }
            assert!(Instant::now() < deadline, "{seen} of {n} {event} events read");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for CatLoop {
    fn drop(&mut self) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = self.child.wait();
    }
}

/// A subscriber is a stream: a reader that reopens the FIFO after each
/// end-of-file (as the original's clients did) must not lose events that
/// come within a millisecond of each other.
#[test]
fn a_cat_loop_reader_gets_every_event_of_twenty_backups_in_order() {
    let rig = Rig::new("ext4", "[[scripts]]\nname = \"noop.sh\"\n");
    script(&rig.scripts_dir(), "noop.sh", "exit 0", 0o755);
    let _d = rig.env.start_daemon();
    let fifo = rig.env.path("cat.fifo");
    mkfifo(&fifo);
    let reader = CatLoop::start(&fifo, rig.env.path("events.jsonl"));
    rig.env.cli(&["register", fifo.to_str().unwrap()]).ok();
    let mut disk = rig.disk;
    disk.attach();
    reader.wait_for(1, "safe_to_remove", &disk.uuid);
    for n in 2..=20 {
        rig.env.cli(&["backup", "office"]).ok();
        reader.wait_for(n, "safe_to_remove", &disk.uuid);
    }
    let events = reader.events();
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    let gaps: Vec<(u64, u64)> = seqs.windows(2).filter(|w| w[1] != w[0] + 1).map(|w| (w[0], w[1])).collect();
    assert!(gaps.is_empty(), "events missing or out of order between these seq: {gaps:?}");
    let mine = flow_of(&events, &disk.uuid);
    let one = ["backup_started", "script_started", "script_finished", "backup_finished", "safe_to_remove"];
    let mut expected = vec!["disk_plugged".to_owned()];
    for _ in 0..20 {
        expected.extend(one.iter().map(|s| s.to_string()));
    }
    assert_eq!(mine, expected);
    println!(
        "cat loop reader: {} events, seq {}..={}, none missing",
        seqs.len(),
        seqs[0],
        seqs[seqs.len() - 1]
    );
    disk.detach();
}

/// A small random number generator (xorshift), seeded and printed so that
/// a failing storm can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A delay from 0 to 2 s, most of them short (u⁶), so that 300
    /// cycles take a few minutes while some pauses outlast a backup.
    fn delay(&mut self) -> Duration {
        Duration::from_secs_f64(2.0 * self.unit().powi(6))
    }
}

/// What /proc says of a process.
fn proc_counts(pid: i32) -> (usize, usize, u64) {
    let count = |what: &str| fs::read_dir(format!("/proc/{pid}/{what}")).unwrap().count();
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss_kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    (count("fd"), count("task"), rss_kb)
}

/// Processes (pid, state, command line) whose parent is `ppid` or whose
/// command line mentions `needle`.
fn processes_of(ppid: i32, needle: &str) -> Vec<(i32, char, String)> {
    let mut out = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        let mut f = after.split(' ');
        let state = f.next().unwrap().chars().next().unwrap();
        let parent: i32 = f.next().unwrap().parse().unwrap();
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if parent == ppid || cmdline.contains(needle) {
            out.push((pid, state, cmdline));
        }
    }
    out
}

/// Plug and unplug a known disk 300 times, at random moments, during its
/// backups, with `plug`/`unplug`, synthetic change events and save/forget
/// mixed in: the daemon must end as it began.
#[test]
fn a_plug_unplug_storm_leaves_the_daemon_as_it_began() {
    let rig = Rig::new("ext4", "[[scripts]]\nname = \"jitter.sh\"\n[mail]\nwhen = \"never\"\n");
    // Backups of 0 to 0.4 s, so that unplugs land before, during and after them.
    script(
        &rig.scripts_dir(),
        "jitter.sh",
        "echo hi > \"$TETRAS_BACK_MOUNT/proof\"; sleep \"0.$(( $(od -An -N1 -tu1 /dev/urandom) % 5 ))\"",
        0o755,
    );
    let d = rig.env.start_daemon();
    let fifo = rig.env.path("storm.fifo");
    mkfifo(&fifo);
    let reader = CatLoop::start(&fifo, rig.env.path("storm-events.jsonl"));
    rig.env.cli(&["register", fifo.to_str().unwrap()]).ok();
    let image = rig.disk.image.to_str().unwrap().to_owned();
    let uuid = rig.disk.uuid.clone();
    let other = random_uuid();
    let seed =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
    let mut rng = Rng(seed);
    println!("storm seed {seed:#x}");

    let started = Instant::now();
    let mut first = None;
    let mut loops = Vec::new();
    const CYCLES: usize = 300;
    for cycle in 0..CYCLES {
        let dev = sh("losetup", &["-f", "--show", &image]);
        loops.push(dev.clone());
        std::thread::sleep(rng.delay());
        match rng.next() % 6 {
            0 => drop(rig.env.cli(&["plug", &dev])),
            1 => drop(
                std::process::Command::new("udevadm").args(["trigger", "--action=change", &dev]).status(),
            ),
            2 => drop(rig.env.cli(&["save", &other, "other"])),
            3 => drop(rig.env.cli(&["forget", &other])),
            4 => {
                // Forgotten mid-backup, and known again.
                drop(rig.env.cli(&["forget", &uuid]));
                drop(rig.env.cli(&["save", &uuid, "office"]));
            }
            _ => {}
        }
        std::thread::sleep(rng.delay());
        if rng.next().is_multiple_of(4) {
            drop(rig.env.cli(&["unplug", &dev]));
        }
        let _ = std::process::Command::new("losetup").args(["-d", &dev]).status();
        if cycle == 0 {
            // The baseline once the daemon has written its history (SQLite
            // opens its -wal and -shm files at the first write) and is idle:
            // under load the first plug can take more than a second.
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let plugs = rig.env.cli(&["history", "--plugs", "--json"]).stdout;
                let idle = rig.env.cli(&["status", "--json"]).stdout.contains("\"activity\": \"idle\"");
                if idle && plugs.contains("\"plugged\"") {
                    break;
                }
                assert!(Instant::now() < deadline, "the first plug was never recorded: {plugs}");
                std::thread::sleep(Duration::from_millis(100));
            }
            std::thread::sleep(Duration::from_millis(500));
            first = Some(proc_counts(d.pid()));
        }
    }
    // Quiet again: idle, and every loop device let go.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let idle = rig.env.cli(&["status", "--json"]).stdout.contains("\"activity\": \"idle\"");
        let held = sh("losetup", &["-j", &image]);
        if idle && held.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "not idle, or loop devices still held: {held}");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    let storm = started.elapsed();
    let (fds0, threads0, rss0) = first.unwrap();
    let (fds, threads, rss) = proc_counts(d.pid());

    let events = reader.events();
    let mine: Vec<&serde_json::Value> = events.iter().filter(|e| e["uuid"] == uuid.as_str()).collect();
    let backups_started = mine.iter().filter(|e| e["event"] == "backup_started").count();
    let backups_finished = mine.iter().filter(|e| e["event"] == "backup_finished").count();
    let mut statuses = std::collections::BTreeMap::new();
    for e in mine.iter().filter(|e| e["event"] == "backup_finished") {
        *statuses.entry(e["status"].as_str().unwrap().to_owned()).or_insert(0) += 1;
    }
    let history: Vec<serde_json::Value> =
        serde_json::from_str(&rig.env.cli(&["history", "--json", "--limit", "100000"]).ok().stdout).unwrap();
    let rows = history.iter().filter(|h| h["uuid"] == uuid.as_str()).count();
    println!(
        "storm: {CYCLES} cycles in {:.0} s; {backups_started} backups started, {backups_finished} finished {statuses:?}, \
         {rows} history rows; fds {fds0} -> {fds}, threads {threads0} -> {threads}, RSS {rss0} kB -> {rss} kB",
        storm.as_secs_f64()
    );

    let mut open = false;
    for e in mine.iter().filter(|e| e["event"] == "backup_started" || e["event"] == "backup_finished") {
        let starting = e["event"] == "backup_started";
        assert_ne!(starting, open, "a backup_started without its backup_finished (or the reverse) at {e}");
        open = starting;
    }
    assert_eq!(backups_started, backups_finished);
    assert!(backups_started > 10, "the storm started too few backups to mean anything");
    assert_eq!(rows, backups_started, "one history row per backup");
    // The rig's own disk was never attached through it: each cycle's loop device is checked.
    assert!(loops.iter().all(|l| mounts_of(l).is_empty()), "a mount is left");
    rig.nothing_mounted();
    let strays = processes_of(d.pid(), rig.scripts_dir().to_str().unwrap());
    assert!(strays.is_empty(), "zombies or scripts left: {strays:?}");
    assert_eq!((fds, threads), (fds0, threads0), "descriptors and threads are back to their count");
    assert!(rss as f64 <= rss0 as f64 * 1.10, "RSS grew from {rss0} kB to {rss} kB");
}

/// `[schedule]`: a disk left plugged in is backed up again when due, not
/// once unplugged, and a reload changes the schedule.
#[test]
fn a_disk_that_stays_plugged_in_is_backed_up_again_when_due() {
    let scripts = "[[scripts]]\nname = \"noop.sh\"\n[mail]\nwhen = \"never\"\n";
    let schedule = |every: &str| format!("{scripts}[schedule]\nevery = \"{every}\"\nmin_interval = \"1s\"\n");
    let mut rig = Rig::new("ext4", &schedule("3s"));
    script(&rig.scripts_dir(), "noop.sh", "exit 0", 0o755);
    let d = rig.env.start_daemon();
    rig.subscribe();
    rig.disk.attach();
    let mut ends = Vec::new();
    for _ in 0..3 {
        let finished = rig.until("backup_finished").pop().unwrap();
        assert_eq!(finished["status"], "success", "{finished}");
        ends.push(Instant::now());
        if ends.len() == 1 {
            let rows = rig.env.cli(&["disks", "--json"]).ok().stdout;
            assert!(rows.contains("\"next_due\""), "disks shows when: {rows}");
            let status = rig.env.cli(&["status"]).ok().stdout;
            assert!(status.contains("next backup: office at "), "{status}");
        }
    }
    let gaps: Vec<f64> = ends.windows(2).map(|w| (w[1] - w[0]).as_secs_f64()).collect();
    println!("scheduled backups every 3 s: gaps {gaps:.2?} s");
    assert!(gaps.iter().all(|g| (2.5..6.0).contains(g)), "{gaps:?}");
    assert_eq!(rig.logs().len(), 3, "one log per backup");
    let history = rig.env.cli(&["history", "--json", "--disk", "office"]).ok().stdout;
    assert_eq!(serde_json::from_str::<Vec<serde_json::Value>>(&history).unwrap().len(), 3);

    // Unplugged: nothing is due.
    rig.disk.detach();
    rig.until("disk_unplugged");
    let quiet = rig.sub().during(Duration::from_millis(4500));
    assert!(flow_of(&quiet, &rig.disk.uuid).is_empty(), "{quiet:#?}");

    // A reload to once an hour: one backup at the plug, none after.
    rig.env.write_config(&schedule("1h"));
    d.signal(nix::libc::SIGHUP);
    d.wait_log("configuration reloaded");
    rig.disk.attach();
    assert_eq!(rig.until("backup_finished").pop().unwrap()["status"], "success");
    let quiet = rig.sub().during(Duration::from_millis(4000));
    assert!(!flow_of(&quiet, &rig.disk.uuid).contains(&"backup_started".to_owned()), "{quiet:#?}");
    // And back to every 2 s: due again at once.
    rig.env.write_config(&schedule("2s"));
    d.signal(nix::libc::SIGHUP);
    assert_eq!(rig.until("backup_finished").pop().unwrap()["status"], "success");
    rig.disk.detach();
}

/// A UUID is no secret: a disk formatted with a known disk's UUID is
/// refused before anything runs or is written, the administrator is
/// mailed, the real disk goes on working, and `save --adopt` accepts it.
#[test]
fn a_disk_that_only_copies_a_known_uuid_is_refused() {
    use common::smtp::{free_port, smtp_config, Mail, SmtpServer};
    let port = free_port();
    let scripts = "[[scripts]]\nname = \"writer.sh\"\n";
    let mut rig = Rig::new("ext4", &format!("{scripts}{}", smtp_config(port, "")));
    script(&rig.scripts_dir(), "writer.sh", "date +%s%N > \"$TETRAS_BACK_MOUNT/proof-$(date +%s%N)\"", 0o755);
    let server = SmtpServer::start(rig.env.root(), port);
    let d = rig.env.start_daemon();
    rig.subscribe();
    let uuid = rig.disk.uuid.clone();

    // The real disk: its first backup gives it its identity.
    rig.disk.attach();
    assert_eq!(rig.until("backup_finished").pop().unwrap()["status"], "success");
    rig.until("safe_to_remove");
    rig.disk.detach();
    rig.until("disk_unplugged");
    let state = fs::read_to_string(rig.env.state_path()).unwrap();
    assert!(state.contains("\"identity\""), "{state}");

    // A clone of its UUID: refused, nothing written to it, mailed.
    fs::create_dir_all(rig.env.path("clone")).unwrap();
    let mut clone = LoopDisk::create(&rig.env.path("clone"), "ext4", &uuid, 32);
    let image = clone.image.to_str().unwrap().to_owned();
    let before = sh("sha256sum", &[&image]);
    clone.attach();
    let events = rig.until("backup_finished");
    assert_eq!(events.last().unwrap()["status"], "refused", "{events:#?}");
    let flow = rig.flow(&events);
    assert!(
        flow.contains(&"disk_mismatch".to_owned()) && !flow.contains(&"script_started".to_owned()),
        "{flow:?}"
    );
    let mismatch = events.iter().find(|e| e["event"] == "disk_mismatch").unwrap();
    assert!(mismatch["why"].as_str().unwrap().contains("it has no .tetras-back/disk-id"), "{mismatch}");
    rig.until("safe_to_remove");
    clone.detach();
    rig.until("disk_unplugged");
    assert_eq!(sh("sha256sum", &[&image]), before, "the clone was not written to");
    let mails: Vec<Mail> =
        server.wait_for(2, Duration::from_secs(20)).iter().map(|m| Mail::parse(m)).collect();
    let alert = mails
        .iter()
        .find(|m| m.subject.contains("a disk claiming to be 'office' is not the disk that was saved"));
    assert!(
        alert.is_some_and(|m| m.body.contains("not the disk that was saved")),
        "no alert among {:?}",
        mails.iter().map(|m| &m.subject).collect::<Vec<_>>()
    );
    let history = rig.env.cli(&["history", "--json", "--disk", "office", "--limit", "1"]).ok().stdout;
    assert!(history.contains("\"status\": \"refused\""), "{history}");

    // The real disk still works.
    rig.disk.attach();
    assert_eq!(rig.until("backup_finished").pop().unwrap()["status"], "success");
    rig.until("safe_to_remove");
    rig.disk.detach();
    rig.until("disk_unplugged");

    // Adopted, the clone is backed up (and is the disk of that name from now on).
    clone.attach();
    assert_eq!(rig.until("backup_finished").pop().unwrap()["status"], "refused");
    let adopted = rig.env.cli(&["save", &uuid, "office", "--adopt"]).ok().stdout;
    assert!(adopted.contains("adopted") && adopted.contains("backup of office started"), "{adopted}");
    assert_eq!(rig.until("backup_finished").pop().unwrap()["status"], "success");
    rig.until("safe_to_remove");
    clone.detach();

    // Each carries its own token, readable by root only (looked at with the
    // daemon gone: a loop mount of a known disk would be a plug to it).
    drop(d);
    let root = rig.env.root().to_owned();
    let token = |disk: &mut LoopDisk| {
        disk.inspect(&root, |mnt| {
            use std::os::unix::fs::PermissionsExt;
            let id = mnt.join(".tetras-back/disk-id");
            (fs::metadata(&id).unwrap().permissions().mode() & 0o777, fs::read_to_string(&id).unwrap())
        })
    };
    let (real, copy) = (token(&mut rig.disk), token(&mut clone));
    assert_eq!((real.0, copy.0), (0o600, 0o600));
    assert_ne!(real.1, copy.1, "the adopted disk got a token of its own");
}

/// A LUKS volume plugged in is said to be one (`unknown_disk` with
/// `encrypted: "luks"`), never mounted, and cannot be saved.
#[test]
fn a_luks_volume_is_reported_encrypted_and_left_alone() {
    require_root_and_udevd();
    let env = TestEnv::new();
    let _d = env.start_daemon();
    let mut sub = Subscriber::new(env.path("events.fifo"));
    env.cli(&["register", sub.path.to_str().unwrap()]).ok();
    let mut disk = luks_disk(env.root(), &random_uuid());
    disk.attach();
    let offered = sub.until_about("unknown_disk", &disk.uuid).pop().unwrap();
    assert_eq!(
        (&offered["encrypted"], &offered["fstype"]),
        (&"luks".into(), &"crypto_LUKS".into()),
        "{offered}"
    );
    env.cli(&["save", &disk.uuid, "vault"]).fails_with(&["LUKS-encrypted", "not saved", &disk.uuid]);
    assert!(!env.cli(&["disks"]).ok().stdout.contains("vault"));
    assert!(disk.mounts().is_empty(), "{:?}", disk.mounts());
    disk.detach();
}
