//! Seeing a backup happen: `backup_progress` events from the real engines
//! of a real backup (loop disk, udevd, the daemon), `watch` on a terminal
//! (through script(1)) and `status` while it runs. Needs root and a
//! running udevd (`make test` provides both).

mod common;

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use chrono::DateTime;
use common::disk::*;
use common::*;

const PARTS: usize = 5;

/// A process started in its own group (script(1) and what it runs),
/// stopped, that group only, when dropped.
struct Group(Child);

impl Drop for Group {
    fn drop(&mut self) {
        let pgid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.0.wait();
    }
}

fn secs(v: &serde_json::Value) -> f64 {
    DateTime::parse_from_rfc3339(v["time"].as_str().unwrap()).unwrap().timestamp_millis() as f64 / 1000.0
}

/// What the progress events of one backup show, checked as a user would
/// expect them; returns (the first ETA given, seconds from it to the end).
fn check_progress(events: &[serde_json::Value], uuid: &str) -> Option<(f64, f64)> {
    let progress: Vec<&serde_json::Value> =
        events.iter().filter(|e| e["event"] == "backup_progress" && e["uuid"] == uuid).collect();
    let finished = events.iter().find(|e| e["event"] == "backup_finished" && e["uuid"] == uuid).unwrap();
    assert_eq!(finished["status"], "success", "{finished}");
    let took = finished["duration_secs"].as_f64().unwrap();
    assert!(progress.len() + 2 >= took as usize, "{} progress events in {took:.1} s", progress.len());
    for w in progress.windows(2) {
        let gap = secs(w[1]) - secs(w[0]);
        assert!((0.5..2.5).contains(&gap), "progress events {gap:.2} s apart: {} then {}", w[0], w[1]);
        for field in ["files_done", "bytes_done"] {
            assert!(
                w[1][field].as_u64() >= w[0][field].as_u64(),
                "{field} went down: {} then {}",
                w[0],
                w[1]
            );
        }
    }
    // Until the script's estimates are in (a first second spent mounting), nothing is expected.
    let known: Vec<&&serde_json::Value> =
        progress.iter().skip_while(|p| p["files_expected"].is_null()).collect();
    assert!(known.len() + 1 >= progress.len() && known.len() >= 3, "{progress:#?}");
    for p in known {
        assert_eq!(
            (&p["name"], &p["files_expected"]),
            (&"office".into(), &(PARTS as u64 * 300).into()),
            "{p}"
        );
        let percent = p["percent"].as_f64().unwrap();
        assert!((0.0..=100.0).contains(&percent), "{p}");
    }
    let last = progress.last().unwrap();
    assert!(last["percent"].as_f64().unwrap() >= 95.0, "the last progress before the end: {last}");
    let phases: Vec<&str> = progress.iter().map(|p| p["phase"].as_str().unwrap()).collect();
    assert!(
        phases.iter().all(|p| ["starting", "script", "snapshot", "finishing"].contains(p))
            && phases.contains(&"script"),
        "{phases:?}"
    );
    let percents: Vec<String> = progress.iter().map(|p| p["percent"].to_string()).collect();
    println!(
        "{} progress events in {took:.1} s: phases {phases:?}, percent {}",
        progress.len(),
        percents.join(" ")
    );
    let first_eta = progress.iter().find(|p| p["eta_secs"].is_u64())?;
    Some((first_eta["eta_secs"].as_f64().unwrap(), secs(finished) - secs(first_eta)))
}

#[test]
fn a_backup_says_how_far_it_is_and_how_long_it_still_takes() {
    require_root_and_udevd();
    let env = TestEnv::new();
    let src = env.path("src");
    stepped_tree(&src, PARTS);
    script(&env.path("scripts"), "stepped.sh", &stepped_script(&src, PARTS), 0o755);
    let metrics = env.path("metrics.prom");
    env.write_config(&format!(
        "metrics_file = \"{}\"\n[[scripts]]\nname = \"stepped.sh\"\n",
        metrics.display()
    ));
    let mut disk = LoopDisk::create(env.root(), "ext4", &random_uuid(), 64);
    env.cli(&["save", &disk.uuid, "office"]).ok();
    let _daemon = env.start_daemon();
    let mut sub = Subscriber::new(env.path("events.fifo"));
    env.cli(&["register", sub.path.to_str().unwrap()]).ok();

    disk.attach();
    let first = sub.until_about("safe_to_remove", &disk.uuid);
    check_progress(&first, &disk.uuid);

    // The second backup: `watch` on a terminal, and `status` half-way.
    let watch = Command::new("script")
        .args(["-qfec", &format!("{BIN} watch"), "/dev/null"])
        .env("TETRAS_BACK_CONFIG", env.config_path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap();
    let mut watch = Group(watch);
    std::thread::sleep(Duration::from_millis(500));
    env.cli(&["backup", "office"]).ok();
    sub.until_about("backup_progress", &disk.uuid);
    let mut status = String::new();
    for _ in 0..30 {
        status = env.cli(&["status"]).ok().stdout;
        if status.contains("min left") || status.contains(" s left") {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // The metrics file has the running backup's progress (rewritten every 5 s).
    let mut prom = String::new();
    for _ in 0..40 {
        prom = std::fs::read_to_string(&metrics).unwrap_or_default();
        if prom.contains("tetras_back_backup_progress_ratio{disk=\"office\"") {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(prom.contains("tetras_back_backup_running{disk=\"office\""), "{prom}");
    assert!(prom.contains("tetras_back_backup_files_expected{disk=\"office\""), "{prom}");
    let second = sub.until_about("safe_to_remove", &disk.uuid);
    // Rewritten after the backup (just after its last events): the progress goes with it.
    let mut after = String::new();
    for _ in 0..50 {
        after = std::fs::read_to_string(&metrics).unwrap();
        if !after.contains("tetras_back_backup_running{") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!after.contains("tetras_back_backup_running{"), "{after}");
    let (eta, real) = check_progress(&second, &disk.uuid).expect("the second backup gives a time left");
    println!("second backup: first ETA {eta:.0} s, it ended {real:.1} s later");
    assert!(eta <= 2.0 * real + 1.0 && eta + 1.0 >= real / 2.0, "ETA {eta} s, real {real:.1} s");
    assert!(
        status.contains("backing up office: ")
            && status.contains("% (")
            && status.contains(" of 1,500 files)"),
        "{status}"
    );

    std::thread::sleep(Duration::from_millis(300));
    let pgid = nix::unistd::Pid::from_raw(watch.0.id() as i32);
    nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let mut shown = String::new();
    watch.0.stdout.take().unwrap().read_to_string(&mut shown).unwrap();
    assert!(shown.contains("\r\x1b[2Koffice  ["), "a bar redrawn in place: {shown:?}");
    assert!(shown.contains("] 100%") || shown.contains("]  9"), "the bar reaches the end: {shown:?}");
    assert!(shown.contains("backup of office: success"), "{shown:?}");
}
