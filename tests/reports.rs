//! What the daemon tells the administrator: mail through a real SMTP server
//! on loopback (aiosmtpd) and through a sendmail stand-in, the history in
//! SQLite, the metrics file, reminders. Root, udevd and loop disks, as the
//! pipeline tests.

mod common;

use std::fs;
use std::time::Duration;

use common::disk::*;
use common::rig::*;
use common::smtp::*;
use common::*;

/// A script that snapshots $SRC onto the disk, fails when the file
/// `$FLAGS/fail` exists and dawdles when `$FLAGS/slow` does.
const BACKUP: &str = r#"
echo $$ > "$FLAGS/script.pid"
echo "backing up $SRC"
echo "keep: ${TETRAS_BACK_KEEP:-}"
"$TETRAS_BACK_BIN" snapshot --dest "$TETRAS_BACK_MOUNT/$(date +%Y-%m-%d_%H-%M-%S)-$$" --link-dest auto "$SRC" || exit 1
if [ -e "$FLAGS/slow" ]; then sleep 60; fi
if [ -e "$FLAGS/fail" ]; then echo "told to fail"; exit 7; fi
echo "all done"
"#;

/// A rig whose disk is backed up by BACKUP, with `extra` configuration.
fn rig(extra: &str) -> Rig {
    let rig = Rig::new("ext4", &format!("[[scripts]]\nname = \"backup.sh\"\n{extra}"));
    script(&rig.scripts_dir(), "backup.sh", BACKUP, 0o755);
    let src = rig.env.path("src");
    fs::create_dir_all(src.join("sub")).unwrap();
    fs::write(src.join("a.txt"), "alpha\n").unwrap();
    fs::write(src.join("sub/b.txt"), "bravo bravo\n").unwrap();
    fs::write(src.join("c.bin"), vec![7u8; 100_000]).unwrap();
    rig
}

/// Starts the daemon (with the variables BACKUP reads) and subscribes.
fn start(rig: &mut Rig) -> Daemon {
    let d = daemon(rig);
    rig.subscribe();
    d
}

fn daemon(rig: &Rig) -> Daemon {
    let (src, flags) = (rig.env.path("src"), rig.env.root().to_owned());
    rig.env.start_daemon_with(&[("SRC", src.to_str().unwrap()), ("FLAGS", flags.to_str().unwrap())])
}

fn host() -> String {
    nix::unistd::gethostname().unwrap().to_string_lossy().into_owned()
}

fn finished(events: &[serde_json::Value]) -> &serde_json::Value {
    events.iter().rev().find(|e| e["event"] == "backup_finished").expect("a backup_finished event")
}

#[test]
fn a_backup_mails_one_report_with_the_log_attached() {
    let port = free_port();
    let mut rig = rig(&smtp_config(port, ""));
    let server = SmtpServer::start(rig.env.root(), port);
    let _d = start(&mut rig);
    rig.disk.attach();
    let events = rig.until("safe_to_remove");
    let ended = std::time::Instant::now();
    assert_eq!(finished(&events)["status"], "success");
    let log_path = finished(&events)["log"].as_str().unwrap().to_owned();

    let raw = server.wait_for(1, Duration::from_secs(20));
    println!("safe_to_remove read to mail delivered: {:?}", ended.elapsed());
    let m = Mail::parse(&raw[0]);
    assert_eq!(m.subject, format!("[tetras-back] {}: backup on 'office' succeeded", host()));
    assert_eq!(m.to, "admin@example.org");
    for needle in [
        format!("Disk:        office (UUID {})", rig.disk.uuid),
        "Started:".into(),
        "Finished:".into(),
        "Duration:".into(),
        "Free space:".into(),
        "Written:     ".into(),
        " in 3 files".into(),
        "Pruned:      nothing".into(),
        "backup.sh".into(),
        "exit 0".into(),
        "all done".into(),
        // Loop devices cannot be powered off, whatever D-Bus the machine has.
        "The disk is safe to remove (it was left powered: ".into(),
    ] {
        assert!(m.body.contains(&needle), "the body lacks {needle:?}:\n{}", m.body);
    }
    assert_eq!(m.attachments.len(), 1, "one attachment");
    let (name, content) = &m.attachments[0];
    assert_eq!(Some(name.as_str()), log_path.rsplit('/').next());
    assert_eq!(content, &fs::read(&log_path).unwrap(), "the whole log is attached");
    // Exactly one mail for one backup.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(server.messages().len(), 1);
}

#[test]
fn a_mail_that_cannot_be_sent_waits_in_the_outbox_and_goes_when_the_server_is_back() {
    let port = free_port();
    let mut rig = rig(&smtp_config(port, ""));
    let _d = start(&mut rig);
    rig.disk.attach();
    let events = rig.until("safe_to_remove");
    assert_eq!(finished(&events)["status"], "success", "a mail problem never fails the backup");
    let failed = rig.sub().until("mail_failed");
    let f = failed.last().unwrap();
    assert!(f["subject"].as_str().unwrap().contains("backup on 'office' succeeded"), "{f}");
    assert!(f["error"].as_str().unwrap().contains("Connection refused"), "the transport's words: {f}");
    assert_eq!(f["attempts"], 1);
    assert!(f["retry_at"].is_string(), "{f}");
    let status = rig.env.cli(&["status", "--json"]).ok().stdout;
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["mail_pending"], 1, "{status}");

    let server = SmtpServer::start(rig.env.root(), port);
    let raw = server.wait_for(1, Duration::from_secs(30));
    assert!(Mail::parse(&raw[0]).subject.contains("succeeded"));
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(server.messages().len(), 1, "sent once, not again");
}

#[test]
fn with_when_failure_only_failed_backups_are_mailed() {
    let port = free_port();
    let mut rig = rig(&smtp_config(port, "when = \"failure\""));
    let server = SmtpServer::start(rig.env.root(), port);
    let _d = start(&mut rig);
    rig.disk.attach();
    assert_eq!(finished(&rig.until("safe_to_remove"))["status"], "success");
    std::thread::sleep(Duration::from_secs(2));
    assert!(server.messages().is_empty(), "no mail for a success");

    fs::write(rig.env.path("fail"), "").unwrap();
    rig.env.cli(&["backup", "office"]).ok();
    assert_eq!(finished(&rig.until("backup_finished"))["status"], "failed");
    let m = Mail::parse(&server.wait_for(1, Duration::from_secs(20))[0]);
    assert_eq!(m.subject, format!("[tetras-back] {}: backup on 'office' FAILED", host()));
    assert!(m.body.contains("exit 7"), "{}", m.body);
    assert!(m.body.contains("told to fail"), "the log's last lines: {}", m.body);
}

#[test]
fn the_sendmail_transport_hands_the_report_to_the_local_mta() {
    let env_root = tempfile::Builder::new().prefix("tetras-sendmail-").tempdir().unwrap();
    let out = env_root.path();
    // A sendmail-compatible stand-in that keeps what it is given.
    let fake = script(
        &out.join("bin"),
        "sendmail",
        &format!("printf '%s\\n' \"$@\" > {0}/args.tmp; cat > {0}/msg.tmp; mv {0}/args.tmp {0}/args; mv {0}/msg.tmp {0}/msg", out.display()),
        0o755,
    );
    let mut rig = rig(&format!("[mail]\nsendmail_path = \"{}\"\n", fake.display()));
    let _d = start(&mut rig);
    rig.disk.attach();
    rig.until("safe_to_remove");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !out.join("msg").exists() {
        assert!(std::time::Instant::now() < deadline, "sendmail was never run");
        std::thread::sleep(Duration::from_millis(50));
    }
    let args = fs::read_to_string(out.join("args")).unwrap();
    assert!(args.lines().any(|a| a == "root@localhost"), "the default recipient, root: {args}");
    let m = Mail::parse(&fs::read(out.join("msg")).unwrap());
    assert!(m.subject.ends_with("backup on 'office' succeeded"), "{}", m.subject);
    assert_eq!(m.attachments.len(), 1);
}

#[test]
fn mail_test_sends_now_or_shows_the_transport_error() {
    let env = TestEnv::new();
    let port = free_port();
    env.write_config(&smtp_config(port, ""));
    env.cli(&["mail-test"]).fails_with(&[
        "admin@example.org",
        &format!("127.0.0.1:{port}"),
        "Connection refused",
    ]);
    let server = SmtpServer::start(env.root(), port);
    let out = env.cli(&["mail-test"]).ok().stdout;
    assert!(out.contains("test mail sent to admin@example.org"), "{out}");
    let m = Mail::parse(&server.wait_for(1, Duration::from_secs(10))[0]);
    assert!(m.subject.ends_with(": test mail"), "{}", m.subject);
}

#[test]
fn starttls_and_smtps_check_the_server_certificate() {
    let env = TestEnv::new();
    // A test CA, and a server certificate for 127.0.0.1 signed by it.
    let p = |name: &str| env.path(name).to_str().unwrap().to_owned();
    let (ca, cert, key) = (p("ca.pem"), p("cert.pem"), p("key.pem"));
    fs::write(env.path("leaf.ext"), "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n").unwrap();
    let (ca_key, csr, ext) = (p("ca.key"), p("leaf.csr"), p("leaf.ext"));
    let ca_args = ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test CA"];
    sh("openssl", &[&ca_args[..], &["-keyout", &ca_key, "-out", &ca]].concat());
    let leaf_args = ["req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1"];
    sh("openssl", &[&leaf_args[..], &["-keyout", &key, "-out", &csr]].concat());
    let sign = ["x509", "-req", "-days", "2", "-CAcreateserial", "-in", &csr, "-CA", &ca, "-CAkey", &ca_key];
    sh("openssl", &[&sign[..], &["-extfile", &ext, "-out", &cert]].concat());
    let (c, k) = (cert.as_str(), key.as_str());
    for (tls, options) in
        [("starttls", ["--tlscert", c, "--tlskey", k]), ("tls", ["--smtpscert", c, "--smtpskey", k])]
    {
        let port = free_port();
        env.write_config(&smtp_tls_config(port, tls, ""));
        let dir = env.path(tls);
        fs::create_dir(&dir).unwrap();
        let server = SmtpServer::start_with(&dir, port, &options);
        // A certificate nobody vouches for is refused...
        env.cli(&["mail-test"]).fails_with(&["certificate"]);
        assert!(server.messages().is_empty());
        // ... and accepted once trusted (rustls-native-certs reads SSL_CERT_FILE).
        let out = env.cmd(&["mail-test"]).env("SSL_CERT_FILE", &ca).output().unwrap();
        assert!(out.status.success(), "{tls}: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(server.wait_for(1, Duration::from_secs(10)).len(), 1, "{tls}");
    }
}

#[test]
fn history_records_each_outcome_and_survives_a_killed_daemon() {
    let mut rig = rig("[mail]\nwhen = \"never\"\n");
    let mut d = start(&mut rig);
    let dev = rig.disk.attach();
    rig.until("safe_to_remove");

    fs::write(rig.env.path("fail"), "").unwrap();
    rig.env.cli(&["backup", "office"]).ok();
    assert_eq!(finished(&rig.until("backup_finished"))["status"], "failed");

    fs::remove_file(rig.env.path("fail")).unwrap();
    fs::write(rig.env.path("slow"), "").unwrap();
    rig.env.cli(&["backup", "office"]).ok();
    rig.until("script_started");
    sh("udevadm", &["trigger", "--action=remove", &dev]);
    rig.disk.detach();
    let events = rig.until("backup_finished");
    assert_eq!(finished(&events)["status"], "removed", "{events:#?}\n{}", rig.logs().join("\n---\n"));

    let history = |rig: &Rig| -> Vec<serde_json::Value> {
        let out = rig.env.cli(&["history", "--json"]).ok().stdout;
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
    };
    let h = history(&rig);
    let statuses: Vec<&str> = h.iter().map(|b| b["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["removed", "failed", "success"], "newest first");
    assert_eq!(h[2]["files"], 3);
    assert!(h[2]["bytes_written"].as_u64().unwrap() >= 100_000, "{}", h[2]);
    assert_eq!(h[1]["scripts"][0]["exit_code"], 7);
    assert_eq!(h[2]["scripts"][0]["script"], "backup.sh");
    assert!(h.iter().all(|b| b["disk"] == "office" && b["uuid"] == rig.disk.uuid.as_str()));
    let table = rig.env.cli(&["history", "--disk", "office", "--limit", "2"]).ok().stdout;
    assert_eq!(table.lines().filter(|l| l.contains(" office ")).count(), 2, "{table}");
    let plugs = rig.env.cli(&["history", "--plugs", "--json"]).ok().stdout;
    let plugs: Vec<serde_json::Value> = serde_json::from_str(&plugs).unwrap();
    // (Other tests' disks come and go too: they are unknown disks here.)
    let actions: Vec<&str> = plugs
        .iter()
        .filter(|p| p["uuid"] == rig.disk.uuid.as_str())
        .map(|p| p["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["unplugged", "plugged"]);
    assert!(plugs.iter().filter(|p| p["uuid"] == rig.disk.uuid.as_str()).all(|p| p["disk"] == "office"));
    let disks = rig.env.cli(&["disks", "--json"]).ok().stdout;
    let disks: serde_json::Value = serde_json::from_str(&disks).unwrap();
    assert_eq!(disks["disks"][0]["last_backup"], "removed");
    assert!(disks["disks"][0]["last_success"].is_string(), "{disks}");

    // SIGKILL in the middle of a backup: the database stays readable.
    rig.disk.attach();
    rig.until("script_started");
    d.signal(nix::libc::SIGKILL);
    let _ = d.wait_exit(Duration::from_secs(5));
    let pid: i32 = fs::read_to_string(rig.env.path("script.pid")).unwrap().trim().parse().unwrap();
    // The script's process group outlived the daemon: stop it (it is ours).
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe { nix::libc::kill(-pid, nix::libc::SIGKILL) };
    let killed = history(&rig)[0].clone();
    assert_eq!(killed["status"], "running");
    fs::remove_file(rig.env.path("slow")).unwrap();
    // The next daemon closes the record, and backs up the disk still plugged in.
    d = daemon(&rig);
    rig.until("safe_to_remove");
    let h = history(&rig);
    assert_eq!(h.len(), 5);
    let again = h.iter().find(|b| b["id"] == killed["id"]).unwrap();
    assert_eq!(again["status"], "interrupted", "{again:#}");
    assert_eq!(h[0]["status"], "success");
    drop(d);
}

#[test]
fn the_metrics_file_is_prometheus_text_with_a_series_per_disk() {
    let mut rig = rig("");
    let path = rig.env.path("metrics.prom");
    rig.env.write_config(&format!(
        "metrics_file = \"{}\"\n[[scripts]]\nname = \"backup.sh\"\n[mail]\nwhen = \"never\"\n",
        path.display()
    ));
    let d = start(&mut rig);
    rig.disk.attach();
    rig.until("safe_to_remove");
    let parsed = prometheus(&path);
    let uuid = rig.disk.uuid.clone();
    let sample = |name: &str, status: Option<&str>| -> f64 {
        parsed
            .iter()
            .find(|s| {
                s["name"] == name
                    && (s["labels"].as_object().unwrap().is_empty()
                        || (s["labels"]["disk"] == "office" && s["labels"]["uuid"] == uuid.as_str()))
                    && status.is_none_or(|st| s["labels"]["status"] == st)
            })
            .unwrap_or_else(|| panic!("no {name} {status:?} in {parsed:#?}"))["value"]
            .as_f64()
            .unwrap()
    };
    assert_eq!(sample("tetras_back_up", None), 1.0);
    let now = chrono::Local::now().timestamp() as f64;
    assert!((now - sample("tetras_back_last_success_timestamp_seconds", None)).abs() < 120.0);
    assert_eq!(sample("tetras_back_last_backup_status", Some("success")), 1.0);
    assert_eq!(sample("tetras_back_last_backup_status", Some("failed")), 0.0);
    assert!(sample("tetras_back_last_backup_duration_seconds", None) > 0.0);
    assert!(sample("tetras_back_last_backup_bytes_written", None) >= 100_000.0);
    drop(d);
    assert_eq!(prometheus(&path).iter().find(|s| s["name"] == "tetras_back_up").unwrap()["value"], 0.0);
}

/// The samples of a metrics file, read by the Prometheus client library's own parser.
fn prometheus(path: &std::path::Path) -> Vec<serde_json::Value> {
    let code = "import json, sys\n\
        from prometheus_client.parser import text_string_to_metric_families\n\
        out = [dict(name=s.name, labels=s.labels, value=s.value) \
               for f in text_string_to_metric_families(open(sys.argv[1]).read()) for s in f.samples]\n\
        print(json.dumps(out))";
    let out = sh("/usr/bin/python3", &["-c", code, path.to_str().unwrap()]);
    serde_json::from_str(&out).unwrap()
}

/// A saved disk whose state says it was saved `days` ago; returns its UUID.
fn saved_long_ago(env: &TestEnv, name: &str, days: i64) -> (String, chrono::DateTime<chrono::Local>) {
    let uuid = random_uuid();
    env.cli(&["save", &uuid, name]).ok();
    let state = fs::read_to_string(env.state_path()).unwrap();
    let mut state: serde_json::Value = serde_json::from_str(&state).unwrap();
    let added = chrono::Local::now() - chrono::Duration::days(days);
    for d in state["disks"].as_array_mut().unwrap() {
        if d["uuid"] == uuid.as_str() {
            d["added"] = added.to_rfc3339().into();
        }
    }
    fs::write(env.state_path(), serde_json::to_string(&state).unwrap()).unwrap();
    (uuid, added)
}

#[test]
fn a_disk_not_backed_up_for_days_gets_one_reminder_a_day() {
    let env = TestEnv::new();
    let port = free_port();
    env.write_config(&smtp_config(port, "remind_after_days = 3"));
    let (uuid, added) = saved_long_ago(&env, "drawer", 10);
    env.cli(&["save", &random_uuid(), "fresh"]).ok();

    let server = SmtpServer::start(env.root(), port);
    let d = env.start_daemon();
    let m = Mail::parse(&server.wait_for(1, Duration::from_secs(20))[0]);
    assert_eq!(m.subject, format!("[tetras-back] {}: no backup on 'drawer' yet", host()));
    assert!(m.body.contains(&uuid) && m.body.contains(&added.format("%Y-%m-%d").to_string()), "{}", m.body);
    drop(d);
    // Restarted within the day: no second reminder (and none for the fresh disk).
    let _d = env.start_daemon();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(server.messages().len(), 1);
}

#[test]
fn a_mail_is_abandoned_after_max_attempts_and_kept() {
    let env = TestEnv::new();
    env.write_config(&smtp_config(free_port(), "remind_after_days = 1\nmax_attempts = 3"));
    saved_long_ago(&env, "drawer", 5);
    let mut sub = Subscriber::new(env.path("events.fifo"));
    let _d = env.start_daemon();
    env.cli(&["register", sub.path.to_str().unwrap()]).ok();
    // Attempts 1, 2, 3, one and two seconds apart (the first may precede the registration).
    let mut last = serde_json::Value::Null;
    while last["attempts"] != 3 {
        last = sub.until("mail_failed").pop().unwrap();
        assert!(last["attempts"].as_u64().unwrap() <= 3, "{last}");
        if last["attempts"] != 3 {
            assert!(last["retry_at"].is_string(), "{last}");
        }
    }
    assert!(last.get("retry_at").is_none(), "abandoned: no next attempt: {last}");
    assert!(sub.during(Duration::from_secs(3)).iter().all(|e| e["event"] != "mail_failed"), "no 4th attempt");
    let status: serde_json::Value =
        serde_json::from_str(&env.cli(&["status", "--json"]).ok().stdout).unwrap();
    assert_eq!((status["mail_pending"].as_u64(), status["mail_abandoned"].as_u64()), (Some(0), Some(1)));
    let text = env.cli(&["status"]).ok().stdout;
    assert!(text.contains("1 abandoned"), "{text}");
}

/// Names from the disk go into the report escaped: a file name and a dated
/// folder name with a newline, a carriage return and terminal escapes
/// (found by the restore drill), and a script's output quoting them,
/// cannot forge a line of the mail or put a control character in it.
#[test]
fn names_from_the_disk_are_escaped_in_the_mail() {
    const EVIL: &str = r#"
dest="$TETRAS_BACK_MOUNT/$(date +%Y-%m-%d_%H-%M-%S)_$(printf 'evil\rfolder')"
"$TETRAS_BACK_BIN" snapshot --dest "$dest/Donnees" "$SRC" || exit 1
: > "$dest/Donnees/$(printf 'x\nForged: line\033[2J')"
echo "found $(printf 'y\nForged: output\033[31m\302\233')"
"#;
    let port = free_port();
    let mut rig = Rig::new(
        "ext4",
        &format!("verify_every = 1\n[[scripts]]\nname = \"evil.sh\"\n{}", smtp_config(port, "")),
    );
    script(&rig.scripts_dir(), "evil.sh", EVIL, 0o755);
    let src = rig.env.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("a.txt"), "alpha\n").unwrap();
    let server = SmtpServer::start(rig.env.root(), port);
    let _d = start(&mut rig);
    rig.disk.attach();
    assert_eq!(finished(&rig.until("safe_to_remove"))["status"], "damaged", "the drill found the extra file");
    let m = Mail::parse(&server.wait_for(1, Duration::from_secs(20))[0]);
    assert!(
        m.subject.ends_with("backup on 'office' DAMAGED: the restore drill found differences"),
        "{}",
        m.subject
    );
    let body = m.body.replace("\r\n", "\n");
    for text in [&m.subject, &body] {
        let hidden: Vec<char> = text.chars().filter(|c| c.is_control() && *c != '\n').collect();
        assert!(hidden.is_empty(), "control characters {hidden:?} in:\n{text}");
    }
    for needle in [
        "_evil\\rfolder differs from what was written",
        "extra: Donnees/x\\nForged: line\\x1b[2J",
        "[evil.sh] Forged: output",
    ] {
        assert!(body.contains(needle), "the body lacks {needle:?}:\n{body}");
    }
    // Neither the report's own lines nor the log's quoted ones.
    let forged: Vec<&str> = body.lines().filter(|l| l.trim_start().starts_with("Forged")).collect();
    assert!(forged.is_empty(), "forged lines {forged:?} in:\n{body}");
}

/// Logs are the daemon's alone however it is started: from a shell with
/// umask 022 (not systemd's UMask=0077) the log folder is 0700 (a 0755 one
/// left by an older start is tightened) and each backup's log 0600 (it
/// was 0755 and 0644).
#[test]
fn logs_are_private_however_the_daemon_is_started() {
    use std::os::unix::fs::PermissionsExt;
    // The umask of a login shell; the daemon inherits it.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    let mut rig = rig("[mail]\nwhen = \"never\"\n");
    let logs = rig.env.path("log");
    fs::create_dir_all(&logs).unwrap();
    fs::set_permissions(&logs, fs::Permissions::from_mode(0o755)).unwrap();
    let _d = start(&mut rig);
    rig.disk.attach();
    let events = rig.until("safe_to_remove");
    assert_eq!(finished(&events)["status"], "success");
    let mode = |p: &std::path::Path| fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(&logs), 0o700);
    let log = std::path::PathBuf::from(finished(&events)["log"].as_str().unwrap());
    assert!(log.starts_with(&logs), "{}", log.display());
    assert_eq!(mode(&log), 0o600, "{}", log.display());
    assert_eq!(mode(&rig.env.path("state/history.sqlite")), 0o600);
}

/// rsnapshot's most-cited failure: a source that silently becomes empty (a
/// `/home` that did not mount) and backups that go on succeeding with
/// nothing in them until the keep policy prunes the last good one. Here the
/// backup is a loud `warning` (mail subject, history, the console), and
/// prune keeps the last backup from before the shrink.
#[test]
fn a_source_that_shrank_is_a_loud_warning_and_its_last_whole_backup_stays() {
    let port = free_port();
    let mut rig = rig(&smtp_config(port, ""));
    let server = SmtpServer::start(rig.env.root(), port);
    let _d = start(&mut rig);
    rig.disk.attach();
    assert_eq!(finished(&rig.until("safe_to_remove"))["status"], "success");
    rig.disk.detach();
    rig.until("disk_unplugged");
    // The source "did not mount": nothing in it now.
    let src = rig.env.path("src");
    fs::remove_dir_all(&src).unwrap();
    fs::create_dir(&src).unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    rig.disk.attach();
    let events = rig.until("safe_to_remove");
    assert_eq!(finished(&events)["status"], "warning", "{events:#?}");
    rig.disk.detach();
    rig.until("disk_unplugged");

    let mails = server.wait_for(2, Duration::from_secs(20));
    let m = Mail::parse(&mails[1]);
    let said = format!("{}: 3 files last time, 0 now", src.display());
    assert!(m.subject.contains("succeeded, BUT") && m.subject.contains(&said), "{}", m.subject);
    assert!(m.body.contains(&format!("Shrunk:      {}: 3 files (", src.display())), "{}", m.body);
    let history: serde_json::Value =
        serde_json::from_str(&rig.env.cli(&["history", "--json"]).ok().stdout).unwrap();
    assert_eq!(history[0]["status"], "warning");
    assert_eq!(
        (&history[0]["shrunk"][0]["files_before"], &history[0]["shrunk"][0]["files_now"]),
        (&3.into(), &0.into())
    );
    let text = rig.env.cli(&["history"]).ok().stdout;
    assert!(text.contains("WARNING, shrunk:"), "{text}");
    // The history knows which folder each backup wrote, and the next backup's
    // scripts are told to keep the last one (prune honours TETRAS_BACK_KEEP).
    let first = history[1]["folders"][0].as_str().unwrap().to_owned();
    assert!(first.starts_with("20") && history[0]["folders"][0] != first.as_str(), "{history}");
    let log = fs::read_to_string(history[0]["log"].as_str().unwrap()).unwrap();
    assert!(log.contains(&format!("keep: {first}")), "{log}");
    // The last whole backup stays while the newest ones are shrunk.
    let root = rig.env.root().to_owned();
    let prune = rig.disk.inspect(&root, |m| {
        rig.env.cli(&["prune", m.to_str().unwrap(), "--keep-last", "1", "--dry-run", "--json"]).ok().stdout
    });
    let prune: serde_json::Value = serde_json::from_str(&prune).unwrap();
    assert_eq!(prune["deleted"], serde_json::json!([]), "{prune}");
    assert_eq!(prune["kept"].as_array().unwrap().len(), 2, "{prune}");
}

/// A disk whose free space has gone down backup after backup: the report
/// says when it is full at that rate, and a warning mail says it once when
/// that is less than 30 days away (the history's earlier rows are written
/// into the daemon's own database; the last point is the real backup's).
#[test]
fn a_disk_filling_up_is_said_in_the_report_and_warned_of_once() {
    let port = free_port();
    let mut rig = rig(&smtp_config(port, ""));
    let server = SmtpServer::start(rig.env.root(), port);
    let d = daemon(&rig);
    drop(d);
    let db = rusqlite::Connection::open(rig.env.path("state/history.sqlite")).unwrap();
    // 10 MB less free every day for five days, down to about what the disk has now.
    let now = chrono::Local::now().timestamp();
    for i in 0..5i64 {
        let t = now - (5 - i) * 86_400;
        db.execute(
            "INSERT INTO backups (uuid, disk, device, started, finished, status, duration_secs, free_after, log)
             VALUES (?1, 'office', '/dev/x', ?2, ?2, 'success', 1.0, ?3, '/var/log/x.log')",
            rusqlite::params![rig.disk.uuid, t, 30_000_000 + (5 - i) * 10_000_000],
        )
        .unwrap();
    }
    drop(db);
    let _d = start(&mut rig);
    rig.disk.attach();
    assert_eq!(finished(&rig.until("safe_to_remove"))["status"], "success");
    let raw = server.wait_for(2, Duration::from_secs(20));
    let mails: Vec<Mail> = raw.iter().map(|r| Mail::parse(r)).collect();
    let report = mails.iter().find(|m| m.subject.contains("succeeded")).expect("the report");
    assert!(report.body.contains("Full:") && report.body.contains("at this rate (in "), "{}", report.body);
    let warning = mails.iter().find(|m| m.subject.contains("is full in about")).expect("the warning");
    assert!(warning.body.contains("disk office of"), "{}", warning.body);

    // The next backup: its report says it again, the warning is not sent twice.
    std::thread::sleep(Duration::from_millis(1100));
    rig.env.cli(&["backup", "office"]).ok();
    rig.until("safe_to_remove");
    server.wait_for(3, Duration::from_secs(20));
    std::thread::sleep(Duration::from_secs(2));
    let all: Vec<Mail> = server.wait_for(3, Duration::from_secs(1)).iter().map(|r| Mail::parse(r)).collect();
    assert_eq!(all.len(), 3, "two reports and one warning");
    assert_eq!(all.iter().filter(|m| m.subject.contains("is full in about")).count(), 1, "warned once");
}
