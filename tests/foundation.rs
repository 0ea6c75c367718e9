//! The foundation, end to end: the real binary as a daemon in a temporary
//! root, driven only through the real CLI and real FIFOs.

mod common;

use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::time::Duration;

use common::*;

#[test]
fn save_survives_a_restart_then_forget() {
    let env = TestEnv::new();
    let d = env.start_daemon();
    let out = env.cli(&["save", UUID, "office"]).ok();
    assert!(out.stdout.contains("saved disk office"), "{out:?}");
    let disks = env.cli(&["disks"]).ok().stdout;
    assert!(disks.contains("office") && disks.contains(UUID) && disks.contains(" no "), "{disks}");
    drop(d);

    let _d = env.start_daemon();
    let json: serde_json::Value = serde_json::from_str(&env.cli(&["disks", "--json"]).ok().stdout).unwrap();
    assert_eq!(json["daemon_running"], true);
    assert_eq!(json["disks"][0]["name"], "office");
    assert_eq!(json["disks"][0]["uuid"], UUID);
    env.cli(&["forget", UUID]).ok();
    assert!(env.cli(&["disks"]).ok().stdout.contains("No known disks"));
}

#[test]
fn legacy_flags_give_the_same_result_as_subcommands() {
    let legacy = TestEnv::new();
    let modern = TestEnv::new();
    let _a = legacy.start_daemon();
    let _b = modern.start_daemon();
    legacy.cli(&["--save", &format!("{UUID}={}", "office")]).ok();
    legacy.cli(&["--save", &format!("{UUID2}={}", "home")]).ok();
    legacy.cli(&["--forget", UUID]).ok();
    modern.cli(&["save", UUID, "office"]).ok();
    modern.cli(&["save", UUID2, "home"]).ok();
    modern.cli(&["forget", UUID]).ok();
    let table = |env: &TestEnv| {
        let v: serde_json::Value = serde_json::from_str(&env.cli(&["disks", "--json"]).ok().stdout).unwrap();
        v["disks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| (d["uuid"].clone(), d["name"].clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(table(&legacy), table(&modern));
    assert_eq!(table(&legacy).len(), 1);

    for env in [&legacy, &modern] {
        let f = env.path("events.fifo");
        mkfifo(&f);
        env.cli(&["--register", f.to_str().unwrap()]).ok();
        env.cli(&["unregister", f.to_str().unwrap()]).ok();
        env.cli(&["register", f.to_str().unwrap()]).ok();
        env.cli(&["--unregister", f.to_str().unwrap()]).ok();
        let state: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(env.state_path()).unwrap()).unwrap();
        assert_eq!(state["subscribers"].as_array().unwrap().len(), 0);
    }
    legacy.cli(&["--stop"]).ok();
    modern.cli(&["stop"]).ok();
}

#[test]
fn bad_uuid_name_and_unknown_disk_are_refused_with_and_without_daemon() {
    let env = TestEnv::new();
    for running in [false, true] {
        let _d = running.then(|| env.start_daemon());
        env.cli(&["save", "not-a-uuid", "office"]).fails_with(&["invalid filesystem UUID", "not-a-uuid"]);
        env.cli(&["--save", &format!("{UUID}=bad/name")]).fails_with(&["invalid disk name", "bad/name"]);
        env.cli(&["save", UUID, ".."]).fails_with(&["invalid disk name"]);
        env.cli(&["--save", UUID]).fails_with(&["UUID=NAME"]);
        env.cli(&["forget", UUID2]).fails_with(&["no known disk", UUID2]);
        assert!(
            !env.state_path().exists() || !fs::read_to_string(env.state_path()).unwrap().contains("office")
        );
    }
}

#[test]
fn offline_edits_apply_to_the_state_file_and_the_daemon_sees_them() {
    let env = TestEnv::new();
    let out = env.cli(&["save", UUID, "office"]).ok();
    assert!(out.stdout.contains("daemon not running"), "{out:?}");
    env.cli(&["save", UUID2, "home"]).ok();
    env.cli(&["forget", UUID2]).ok();
    let offline = env.cli(&["disks"]).ok().stdout;
    assert!(
        offline.contains("office") && !offline.contains("home") && offline.contains("not running"),
        "{offline}"
    );
    let _d = env.start_daemon();
    assert!(env.cli(&["disks"]).ok().stdout.contains("office"));
}

#[test]
fn commands_that_need_the_daemon_say_it_is_not_running() {
    let env = TestEnv::new();
    let f = env.path("f.fifo");
    mkfifo(&f);
    for args in [
        vec!["plug", "/dev/loop0"],
        vec!["--unplug", "/dev/loop0"],
        vec!["stop"],
        vec!["register", f.to_str().unwrap()],
        vec!["watch"],
    ] {
        let out = env.cli(&args);
        assert_eq!(out.code, 3, "{args:?}: {out:?}");
        assert!(
            out.stderr.contains("daemon is not running") && out.stderr.contains("tetras-back daemon"),
            "{out:?}"
        );
    }
    let out = env.cli(&["status"]);
    assert_eq!(out.code, 3);
    assert!(out.stdout.contains("not running"));
}

#[test]
fn a_corrupt_state_file_stops_the_daemon_and_is_left_untouched() {
    let env = TestEnv::new();
    fs::create_dir_all(env.path("state")).unwrap();
    let garbage = "{\"version\":1,\"disks\":[{\"uuid\":";
    fs::write(env.state_path(), garbage).unwrap();
    let out = env.daemon_refuses();
    assert_ne!(out.code, 0);
    assert!(
        out.stderr.contains(env.state_path().to_str().unwrap()) && out.stderr.contains("corrupt"),
        "{out:?}"
    );
    assert_eq!(fs::read_to_string(env.state_path()).unwrap(), garbage);
    // The CLI will not overwrite it either.
    env.cli(&["save", UUID, "office"]).fails_with(&["corrupt", "state.json"]);
    assert_eq!(fs::read_to_string(env.state_path()).unwrap(), garbage);
    assert!(!env.control_path().exists());
}

#[test]
fn a_bad_config_names_the_file_and_the_key() {
    let env = TestEnv::new();
    env.write_config("[[scripts]]\nname = \"a.sh\"\ntimeout = \"forever\"\n");
    env.cli(&["disks"]).fails_with(&[env.config_path().to_str().unwrap(), "scripts[0].timeout", "forever"]);
    let out = env.daemon_refuses();
    assert!(out.stderr.contains("scripts[0].timeout"), "{out:?}");
    env.write_config("colour = \"blue\"\n");
    env.cli(&["status"]).fails_with(&["colour", "tetras-back.toml"]);
    let absent = env.path("absent.toml");
    let out = Run::from(
        std::process::Command::new(BIN)
            .args(["disks", "--config", absent.to_str().unwrap()])
            .output()
            .unwrap(),
    );
    out.fails_with(&["absent.toml", "cannot read"]);
}

#[test]
fn only_one_daemon_per_state_dir() {
    let env = TestEnv::new();
    let d = env.start_daemon();
    let out = env.daemon_refuses();
    assert!(
        out.stderr.contains("another tetras-back daemon") && out.stderr.contains(&d.pid().to_string()),
        "{out:?}"
    );
    assert!(env.cli(&["status"]).ok().stdout.contains(&d.pid().to_string()), "first daemon still serves");
}

#[test]
fn register_refuses_everything_but_an_existing_fifo() {
    let env = TestEnv::new();
    let _d = env.start_daemon();
    let fifo = env.path("real.fifo");
    mkfifo(&fifo);
    let file = env.path("file");
    fs::write(&file, "precious").unwrap();
    let link = env.path("link.fifo");
    std::os::unix::fs::symlink(&fifo, &link).unwrap();
    let dir = env.path("dir");
    fs::create_dir(&dir).unwrap();
    for (path, why) in [
        (file.to_str().unwrap(), "regular file"),
        (link.to_str().unwrap(), "symbolic link"),
        ("/dev/null", "device"),
        (dir.to_str().unwrap(), "directory"),
        ("/nonexistent/x.fifo", "no such file"),
    ] {
        env.cli(&["register", path]).fails_with(&[path, why]);
    }
    env.cli(&["save", UUID, "office"]).ok();
    assert_eq!(fs::read_to_string(&file).unwrap(), "precious");
    env.cli(&["unregister", fifo.to_str().unwrap()]).fails_with(&["not registered"]);
}

#[test]
fn a_subscriber_gets_the_table_then_each_change_and_survives_a_restart() {
    let env = TestEnv::new();
    let d = env.start_daemon();
    let mut sub = Subscriber::new(env.path("events.fifo"));
    env.cli(&["register", sub.path.to_str().unwrap()]).ok();
    let first = sub.until("disks");
    assert_eq!(names(&first), ["disks"]);
    env.cli(&["save", UUID, "office"]).ok();
    let events = sub.until("disks");
    assert_eq!(names(&events), ["disk_saved", "disks"]);
    assert_eq!(events[0]["uuid"], UUID);
    assert_eq!(events[0]["name"], "office");
    assert!(events[0]["seq"].as_u64().unwrap() > first[0]["seq"].as_u64().unwrap());
    assert!(events[0]["time"].as_str().unwrap().starts_with("20"));
    assert_eq!(events[1]["disks"][0]["name"], "office");
    env.cli(&["save", UUID, "home"]).ok();
    assert_eq!(sub.until("disk_saved")[0]["renamed_from"], "office");

    drop(d);
    assert_eq!(names(&sub.until("daemon_stopping")).last().unwrap(), "daemon_stopping");
    let _d = env.start_daemon();
    sub.until("disks");
    env.cli(&["forget", UUID]).ok();
    let events = sub.until("disks");
    assert_eq!(names(&events), ["disk_forgotten", "disks"]);
    assert_eq!(events[0]["name"], "home");
}

#[test]
fn subscribers_that_do_not_read_never_block_the_daemon() {
    let env = TestEnv::new();
    let d = env.start_daemon();
    // No reader at all.
    let unread = env.path("unread.fifo");
    mkfifo(&unread);
    // A reader that never reads: its pipe fills up.
    let full = Subscriber::new(env.path("full.fifo"));
    env.cli(&["register", unread.to_str().unwrap()]).ok();
    env.cli(&["register", full.path.to_str().unwrap()]).ok();
    // Enough saves to overflow a 64 KiB pipe with disk tables.
    for i in 0..250 {
        let out = env.cmd(&["save", UUID, &format!("name-{i}-{}", "x".repeat(40))]).output().unwrap();
        assert!(out.status.success(), "save {i}: {}", String::from_utf8_lossy(&out.stderr));
    }
    assert!(env.cli(&["status"]).ok().stdout.contains("running"));
    d.wait_log("pipe full");
}

#[test]
fn a_subscriber_whose_fifo_disappears_is_dropped() {
    let env = TestEnv::new();
    let d = env.start_daemon();
    let sub = Subscriber::new(env.path("events.fifo"));
    env.cli(&["register", sub.path.to_str().unwrap()]).ok();
    fs::remove_file(&sub.path).unwrap();
    // A regular file put in its place must not be written to.
    fs::write(&sub.path, "keep").unwrap();
    env.cli(&["save", UUID, "office"]).ok();
    d.wait_log("unregistering it");
    assert_eq!(fs::read_to_string(&sub.path).unwrap(), "keep");
    let state: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(env.state_path()).unwrap()).unwrap();
    assert_eq!(state["subscribers"].as_array().unwrap().len(), 0);
}

#[test]
fn garbage_on_the_control_fifo_never_stops_the_daemon() {
    let env = TestEnv::new();
    let d = env.start_daemon();
    {
        let mut control = fs::OpenOptions::new().write(true).open(env.control_path()).unwrap();
        for i in 0..1000 {
            let line = match i % 5 {
                0 => "not json at all".to_owned(),
                1 => "[1,2,3]".to_owned(),
                2 => r#"{"cmd":"format_everything"}"#.to_owned(),
                3 => r#"{"cmd":"save","uuid":"zz","name":"x","reply":"/etc/passwd"}"#.to_owned(),
                _ => format!("{{\"cmd\":\"forget\",\"uuid\":\"{UUID}\",\"junk\":{i}}}"),
            };
            control.write_all(line.as_bytes()).unwrap();
            control.write_all(b"\n").unwrap();
        }
        // Oversized lines, with and without a newline, and binary junk.
        control.write_all(&vec![b'{'; 10_000]).unwrap();
        control.write_all(b"\n").unwrap();
        control.write_all(&[0xff, 0xfe, 0, 1, 2, b'\n']).unwrap();
    }
    env.cli(&["save", UUID, "office"]).ok();
    assert!(env.cli(&["disks"]).ok().stdout.contains("office"));
    let log = d.log_text();
    assert!(log.contains("invalid command") && log.contains("longer than 4096"), "{log}");
    assert!(fs::read_to_string("/etc/passwd").unwrap().contains("root:"));
}

#[test]
fn a_client_that_dies_before_its_reply_and_concurrent_clients_are_fine() {
    let env = TestEnv::new();
    let d = env.start_daemon();
    // A reply FIFO nobody reads (its CLI died), and one already removed.
    let dead = env.path("run/replies/dead-1");
    mkfifo(&dead);
    {
        let mut control = fs::OpenOptions::new().write(true).open(env.control_path()).unwrap();
        for reply in [dead.to_str().unwrap(), env.path("run/replies/gone-2").to_str().unwrap()] {
            writeln!(control, r#"{{"cmd":"status","reply":"{reply}"}}"#).unwrap();
        }
    }
    d.wait_log("could not answer");
    // Many CLIs at once: every one gets its own answer.
    let children: Vec<_> = (0..16)
        .map(|i| {
            let name = format!("disk{i}");
            let uuid = format!("{i:08x}-0000-4000-8000-000000000000");
            env.cmd(&["save", &uuid, &name]).stdout(std::process::Stdio::piped()).spawn().unwrap()
        })
        .collect();
    for (i, c) in children.into_iter().enumerate() {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success());
        assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("saved disk disk{i} ")));
    }
    let v: serde_json::Value = serde_json::from_str(&env.cli(&["disks", "--json"]).ok().stdout).unwrap();
    assert_eq!(v["disks"].as_array().unwrap().len(), 16);
    let leftovers: Vec<_> =
        fs::read_dir(env.path("run/replies")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(leftovers, vec![std::ffi::OsString::from("dead-1")], "CLIs remove their reply FIFOs");
}

#[test]
fn sigterm_and_stop_leave_no_fifo_behind() {
    let env = TestEnv::new();
    let d = env.start_daemon();
    let meta = fs::symlink_metadata(env.control_path()).unwrap();
    assert!(meta.file_type().is_fifo());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(fs::metadata(env.path("run")).unwrap().permissions().mode() & 0o777, 0o700);
    d.signal(nix::libc::SIGTERM);
    assert_eq!(d.wait_exit(Duration::from_secs(5)), 0);
    assert!(!env.control_path().exists());

    let d = env.start_daemon();
    d.signal(nix::libc::SIGINT);
    assert_eq!(d.wait_exit(Duration::from_secs(5)), 0);
    assert!(!env.control_path().exists());

    let d = env.start_daemon();
    assert!(env.cli(&["--stop"]).ok().stdout.contains("stopping"));
    assert_eq!(d.wait_exit(Duration::from_secs(5)), 0);
    assert!(!env.control_path().exists());
    assert_eq!(env.cli(&["status"]).code, 3, "status reports the daemon gone");
}

#[test]
fn sighup_reloads_and_a_broken_config_keeps_the_old_one() {
    let env = TestEnv::new();
    env.write_config("[[scripts]]\nname = \"first.sh\"\n");
    let d = env.start_daemon();
    assert!(env.cli(&["status"]).ok().stdout.contains("first.sh"));
    env.write_config("[[scripts]]\nname = \"second.sh\"\n");
    d.signal(nix::libc::SIGHUP);
    d.wait_log("configuration reloaded");
    assert!(env.cli(&["status"]).ok().stdout.contains("second.sh"));

    let good = fs::read_to_string(env.config_path()).unwrap();
    fs::write(env.config_path(), format!("{good}[[scripts]]\nname = \"third.sh\"\ntimeout = \"never\"\n"))
        .unwrap();
    d.signal(nix::libc::SIGHUP);
    d.wait_log("keeping the previous configuration");
    assert!(d.log_text().contains("scripts[1].timeout"));
    // The CLI reads the broken file too: ask the daemon with the good one.
    fs::write(env.path("good.toml"), good).unwrap();
    let out = Run::from(
        std::process::Command::new(BIN)
            .args(["status", "--config", env.path("good.toml").to_str().unwrap()])
            .output()
            .unwrap(),
    )
    .ok();
    assert!(out.stdout.contains("second.sh") && !out.stdout.contains("third.sh"), "{out:?}");
}

/// `reload` (what the unit's ExecReload runs) reaches the daemon even with a
/// broken file, and fails with the daemon's word on it.
#[test]
fn reload_command_says_whether_the_config_is_good() {
    let env = TestEnv::new();
    env.write_config("[[scripts]]\nname = \"first.sh\"\n");
    let _d = env.start_daemon();
    env.write_config("[[scripts]]\nname = \"second.sh\"\n");
    let out = env.cli(&["reload"]).ok();
    assert!(out.stdout.contains("configuration reloaded from"), "{out:?}");
    assert!(env.cli(&["status"]).ok().stdout.contains("second.sh"));

    let good = fs::read_to_string(env.config_path()).unwrap();
    fs::write(env.config_path(), format!("{good}[mail]\nwhen = \"sometimes\"\n")).unwrap();
    env.cli(&["reload"]).fails_with(&["keeping the previous configuration", "tetras-back.toml", "sometimes"]);
    fs::write(env.config_path(), &good).unwrap();
    assert!(env.cli(&["status"]).ok().stdout.contains("second.sh"), "the daemon kept what it had");
    fs::write(env.config_path(), good.replace("/state\"", "/state-elsewhere\"")).unwrap();
    let out = env.cli(&["reload"]).ok();
    assert!(out.stdout.contains("`state_dir` changed; it takes effect when the daemon restarts"), "{out:?}");
}

#[test]
fn watch_prints_events_and_cleans_up_on_ctrl_c() {
    let env = TestEnv::new();
    let _d = env.start_daemon();
    let watch = env
        .cmd(&["watch", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait for its registration.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !fs::read_to_string(env.state_path()).map(|s| s.contains("watch-")).unwrap_or(false) {
        assert!(std::time::Instant::now() < deadline, "watch never registered");
        std::thread::sleep(Duration::from_millis(20));
    }
    env.cli(&["save", UUID, "office"]).ok();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(unsafe { nix::libc::kill(watch.id() as i32, nix::libc::SIGINT) }, 0);
    let out = watch.wait_with_output().unwrap();
    assert!(out.status.success());
    let lines: Vec<serde_json::Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(names(&lines), ["disks", "disk_saved", "disks"]);
    let state = fs::read_to_string(env.state_path()).unwrap();
    assert!(!state.contains("watch-"), "watch unregistered itself: {state}");
    let left: Vec<_> = fs::read_dir(env.path("run/replies")).unwrap().collect();
    assert!(left.is_empty(), "watch removed its FIFO");
}

/// Old backup logs are deleted at start (then daily), the newest 50 kept.
#[test]
fn old_logs_are_pruned_at_start() {
    let env = TestEnv::new();
    env.write_config("keep_logs = \"30days\"\n");
    let logs = env.path("log");
    fs::create_dir_all(&logs).unwrap();
    let now = std::time::SystemTime::now();
    for i in 0..60u32 {
        let p = logs.join(format!("2025-01-01_00-00-{i:02}_office.log"));
        fs::write(&p, b"old").unwrap();
        let age = Duration::from_secs(86400 * (40 + u64::from(i)));
        fs::File::options().write(true).open(&p).unwrap().set_modified(now - age).unwrap();
    }
    let d = env.start_daemon();
    d.wait_log("deleted 10 backup log(s) older than `keep_logs`");
    assert_eq!(fs::read_dir(&logs).unwrap().count(), 50);
    assert!(logs.join("2025-01-01_00-00-00_office.log").exists(), "the newest stays");
    assert!(!logs.join("2025-01-01_00-00-59_office.log").exists(), "the oldest goes");
}

/// A state.json of `disks` saved disks and `subscribers` subscriber paths.
fn write_state(env: &TestEnv, disks: usize, subscribers: &[std::path::PathBuf]) {
    let added = chrono::Local::now().to_rfc3339();
    let disks: Vec<serde_json::Value> = (0..disks)
        .map(|i| {
            serde_json::json!({
                "uuid": format!("{i:08x}-0000-4000-8000-{i:012x}"),
                "name": format!("disk-{i:05}-{}", "x".repeat(40)),
                "added": added,
            })
        })
        .collect();
    let state = serde_json::json!({ "version": 2, "disks": disks, "subscribers": subscribers });
    fs::create_dir_all(env.path("state")).unwrap();
    fs::write(env.state_path(), serde_json::to_vec(&state).unwrap()).unwrap();
}

/// A reply larger than a pipe (1000 saved disks: some 300 KB) reaches the
/// CLI whole, so `disks` works with any number of disks (it said "the
/// reply is too large for one line" above a few dozen); subscribers still
/// get the table cut to one atomic line.
#[test]
fn disks_answers_with_a_table_of_any_size() {
    let env = TestEnv::new();
    write_state(&env, 1000, &[]);
    let d = env.start_daemon();
    let mut sub = Subscriber::new(env.path("events.fifo"));
    env.cli(&["register", sub.path.to_str().unwrap()]).ok();
    let json = env.cli(&["disks", "--json"]).ok().stdout;
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["daemon_running"], true);
    let rows = v["disks"].as_array().unwrap();
    assert_eq!(rows.len(), 1000);
    assert_eq!(rows[999]["uuid"], format!("{:08x}-0000-4000-8000-{:012x}", 999, 999));
    let text = env.cli(&["disks"]).ok().stdout;
    assert!(text.contains("disk-00000-") && text.contains("disk-00999-"), "{text}");
    // Several CLIs at once, each with its own 300 KB answer.
    let children: Vec<_> = (0..4)
        .map(|_| env.cmd(&["disks", "--json"]).stdout(std::process::Stdio::piped()).spawn().unwrap())
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["disks"].as_array().unwrap().len(), 1000);
    }
    let table = sub.until("disks").pop().unwrap();
    assert_eq!(table["truncated"], true, "events stay one atomic line");
    assert!(serde_json::to_vec(&table).unwrap().len() < 4096);
    assert!(!d.log_text().contains("could not answer"), "{}", d.log_text());
}

/// `state_dir`, `run_dir`, `log_dir` and `mount_dir` set to a shared
/// directory (sticky and world-writable like /tmp, group-writable, another
/// user's) are refused at start with the key and the path, and left as
/// they were: `run_dir = "/tmp"` used to chmod /tmp to 0700. (A stand-in
/// for /tmp, so that the old code under test cannot break the machine.)
#[test]
fn shared_directories_are_refused_not_chmodded() {
    let env = TestEnv::new();
    let shared = |name: &str, mode: u32, owner: Option<u32>| {
        let p = env.path(name);
        fs::create_dir(&p).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
        if let Some(uid) = owner {
            std::os::unix::fs::chown(&p, Some(uid), None).unwrap();
        }
        p
    };
    let dirs = [
        (shared("tmp", 0o1777, None), 0o1777, "a shared directory (mode 1777"),
        (shared("group", 0o770, None), 0o770, "a shared directory (mode 0770"),
        (shared("nobody", 0o755, Some(65534)), 0o755, "owned by uid 65534"),
    ];
    for key in ["state_dir", "run_dir", "log_dir", "mount_dir"] {
        for (dir, mode, why) in &dirs {
            let text = env.config_text("");
            let line = text.lines().find(|l| l.starts_with(&format!("{key} = "))).unwrap();
            let text = text.replace(line, &format!("{key} = \"{}\"", dir.display()));
            fs::write(env.config_path(), text).unwrap();
            let out = env.daemon_refuses();
            assert!(
                out.stderr.contains(&format!("`{key}` = {}", dir.display())) && out.stderr.contains(why),
                "{key} = {}: {out:?}",
                dir.display()
            );
            assert_eq!(fs::metadata(dir).unwrap().permissions().mode() & 0o7777, *mode, "{key}: chmodded");
            assert!(!env.control_path().exists());
        }
    }
    // A directory of the daemon's own that others can only read is made 0700.
    env.write_config("");
    fs::create_dir_all(env.path("log")).unwrap();
    fs::set_permissions(env.path("log"), fs::Permissions::from_mode(0o755)).unwrap();
    let _d = env.start_daemon();
    for dir in ["state", "run", "run/replies", "log", "mnt"] {
        assert_eq!(fs::metadata(env.path(dir)).unwrap().permissions().mode() & 0o7777, 0o700, "{dir}");
    }
}

/// 100,000 subscriber paths in state.json (gone FIFOs): dropped in one pass
/// and one write at start, the one live subscriber kept, `status` answered
/// within 2 s of starting and SIGTERM obeyed at once. (They used to take
/// one state write each: ~3 minutes deaf to SIGTERM.)
#[test]
fn a_hundred_thousand_subscribers_do_not_hold_the_daemon_up() {
    let env = TestEnv::new();
    let mut sub = Subscriber::new(env.path("events.fifo"));
    let mut paths: Vec<std::path::PathBuf> =
        (0..100_000).map(|i| env.path(&format!("gone/sub-{i}.fifo"))).collect();
    paths.insert(50_000, sub.path.clone());
    write_state(&env, 3, &paths);
    let started = std::time::Instant::now();
    let d = env.start_daemon();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(2), "status answered {took:?} after the start");
    assert_eq!(names(&sub.until("disks")), ["disks"], "the live subscriber gets the table");
    let state: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(env.state_path()).unwrap()).unwrap();
    assert_eq!(state["subscribers"], serde_json::json!([sub.path]));
    assert_eq!(state["disks"].as_array().unwrap().len(), 3);
    d.wait_log("dropped 100000 subscriber(s): 100000 no longer a FIFO");
    let stopping = std::time::Instant::now();
    d.signal(nix::libc::SIGTERM);
    assert_eq!(d.wait_exit(Duration::from_secs(5)), 0);
    assert!(stopping.elapsed() < Duration::from_secs(2), "stopped {:?} after SIGTERM", stopping.elapsed());
}

/// The temporary file of an atomic write is a new file of an unpredictable
/// name: links planted (as root, in a folder anyone can write to, like
/// node-exporter's textfile folder) at the names the old code used,
/// `.NAME.PID.tmp`, are never written through, for the metrics file, the
/// state file and the udev rule. (A planted link made root overwrite a
/// 0600 root file with the metrics.)
#[test]
fn atomic_writes_are_never_redirected_by_a_planted_link() {
    let env = TestEnv::new();
    let textfile = env.path("textfile");
    fs::create_dir(&textfile).unwrap();
    fs::set_permissions(&textfile, fs::Permissions::from_mode(0o777)).unwrap();
    let metrics = textfile.join("tetras-back.prom");
    env.write_config(&format!("metrics_file = \"{}\"\n", metrics.display()));
    fs::create_dir_all(env.path("udev")).unwrap();
    let victim = env.path("root-only");
    fs::write(&victim, "secret\n").unwrap();
    fs::set_permissions(&victim, fs::Permissions::from_mode(0o600)).unwrap();
    let d = env.start_daemon();
    let planted: Vec<std::path::PathBuf> =
        [metrics.clone(), env.state_path(), env.path("udev/61-tetras-back.rules")]
            .iter()
            .map(|p| {
                let name = p.file_name().unwrap().to_str().unwrap();
                let link = p.with_file_name(format!(".{name}.{}.tmp", d.pid()));
                std::os::unix::fs::symlink(&victim, &link).unwrap();
                link
            })
            .collect();
    env.cli(&["save", UUID, "office"]).ok(); // the state file and the udev rule
    d.signal(nix::libc::SIGTERM); // the metrics file, `tetras_back_up 0`
    assert_eq!(d.wait_exit(Duration::from_secs(5)), 0);
    assert_eq!(fs::read_to_string(&victim).unwrap(), "secret\n", "written through a planted link");
    assert_eq!(fs::metadata(&victim).unwrap().permissions().mode() & 0o777, 0o600);
    for link in &planted {
        assert_eq!(fs::read_link(link).unwrap(), victim, "{}", link.display());
    }
    let meta = fs::symlink_metadata(&metrics).unwrap();
    assert!(meta.is_file() && meta.permissions().mode() & 0o777 == 0o644, "{meta:?}");
    assert!(fs::read_to_string(&metrics).unwrap().contains("tetras_back_up 0\n"));
    assert!(fs::read_to_string(env.state_path()).unwrap().contains("office"));
    assert!(fs::read_to_string(env.path("udev/61-tetras-back.rules")).unwrap().contains(UUID));
    let strays: Vec<_> = fs::read_dir(&textfile)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".tmp") && !planted.iter().any(|p| p.ends_with(n)))
        .collect();
    assert!(strays.is_empty(), "temporary files left: {strays:?}");
}
