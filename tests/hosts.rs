//! Other hosts pulled over SSH with rsync (`hosts`, `pull`, backup_hosts.sh):
//! real OpenSSH servers on loopback (tests/common/sshd.rs), each serving
//! this machine's files as "a host", real rsync and rrsync, real loop disks.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::disk::{install_shipped_scripts, require_root, LoopDisk};
use common::smtp::{free_port, ClosedPort};
use common::sshd::Sshd;
use common::tree::{self, text};
use common::{Run, TestEnv};

/// A test root with a mounted disk, our key, and sshd servers started by the test.
struct Site {
    disk: LoopDisk,
    env: TestEnv,
    /// Our public key line.
    public: String,
}

impl Site {
    fn new(mb: u64) -> Site {
        require_root();
        // The "hosts" are this machine: its own host.d would join every pull.
        assert!(
            !Path::new("/etc/tetras-back/host.d").exists(),
            "/etc/tetras-back/host.d exists on this machine: the hosts tests serve this machine's files and would pull what it declares"
        );
        let env = TestEnv::new();
        install_shipped_scripts(&env.path("scripts"));
        let disk = LoopDisk::mounted(env.root(), mb, &env.path("disk"));
        // The key is made by `hosts key`, whatever the config says of hosts.
        let out = env.cli(&["hosts", "key"]).ok();
        assert!(out.stdout.contains("No [[hosts]] yet"), "{out:?}");
        let public = fs::read_to_string(env.path("state/ssh/id_ed25519.pub")).unwrap().trim().to_owned();
        assert!(out.stdout.contains(&public), "{out:?}");
        let key = fs::metadata(env.path("state/ssh/id_ed25519")).unwrap();
        assert_eq!(key.mode() & 0o777, 0o600);
        assert_eq!(fs::metadata(env.path("state/ssh")).unwrap().mode() & 0o777, 0o700);
        Site { disk, env, public }
    }

    fn disk(&self) -> PathBuf {
        self.env.path("disk")
    }

    /// An sshd whose authorized_keys holds our key after `options` (`restrict`, ...).
    fn sshd(&self, name: &str, options: &str) -> Sshd {
        Sshd::start(&self.env.path(&format!("sshd-{name}")), &format!("{options} {}\n", self.public))
    }

    fn hosts(&self, toml: &str) {
        self.env.write_config(&format!("filesystems = [\"ext4\"]\n{toml}"));
    }

    fn trust(&self, name: &str, fingerprints: &[&str]) -> Run {
        let mut args = vec!["hosts", "trust", name];
        for f in fingerprints {
            args.extend(["--fingerprint", f]);
        }
        self.env.cli(&args)
    }

    fn pull(&self, args: &[&str]) -> (Run, serde_json::Value) {
        let mut all = vec!["pull", "--json"];
        all.extend(args);
        let run = self.env.cli(&all);
        let json = serde_json::from_str(run.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {run:?}"));
        (run, json)
    }
}

/// The host named `name` in a pull's JSON summary.
fn host<'a>(summary: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    summary["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["name"] == name)
        .unwrap_or_else(|| panic!("{summary:#}"))
}

fn toml_host(name: &str, port: u16, paths: &[&Path], extra: &str) -> String {
    let paths: Vec<String> = paths.iter().map(|p| format!("{:?}", p.display().to_string())).collect();
    format!(
        "[[hosts]]\nname = \"{name}\"\naddress = \"127.0.0.1\"\nport = {port}\npaths = [{}]\n{extra}\n",
        paths.join(", ")
    )
}

/// `rsync -anHAXc --delete -i` of `src` against `copy` lists nothing: the same tree.
fn assert_rsync_finds_nothing(src: &Path, copy: &Path) {
    let out = Command::new("rsync")
        .args(["-anHAXc", "--numeric-ids", "--delete", "-i"])
        .arg(format!("{}/", src.display()))
        .arg(format!("{}/", copy.display()))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let listed = String::from_utf8_lossy(&out.stdout);
    // The copy's own manifest is only at the host folder's top, never here.
    assert!(listed.trim().is_empty(), "the copy differs from {}:\n{listed}", src.display());
}

fn inode(p: &Path) -> u64 {
    fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).ino()
}

/// A failing host fails alone, and says why: a changed host key (naming
/// both fingerprints), an unreachable port (quickly), a `before` command
/// that fails; the others are pulled, through a jump host and with a key
/// limited to `rrsync -ro`, with what the host adds in its host.d.
#[test]
fn each_host_fails_alone_and_says_why() {
    let site = Site::new(128);
    let src = site.env.path("web1-src");
    tree::torture(&src);
    // "store1" sees a root of its own through rrsync: its /srv/data and the
    // host.d file there that adds /srv/app.
    let fake = site.env.path("store1-root");
    fs::create_dir_all(fake.join("srv/data")).unwrap();
    fs::write(fake.join("srv/data/a.txt"), text(1, 5000)).unwrap();
    fs::create_dir_all(fake.join("srv/app")).unwrap();
    fs::write(fake.join("srv/app/app.db"), text(2, 7000)).unwrap();
    fs::create_dir_all(fake.join("srv/other")).unwrap();
    fs::write(fake.join("srv/other/not-asked.txt"), "x").unwrap();
    fs::create_dir_all(fake.join("etc/tetras-back/host.d")).unwrap();
    fs::write(fake.join("etc/tetras-back/host.d/app.toml"), "paths = [\"/srv/app\"]\n").unwrap();
    fs::write(fake.join("etc/tetras-back/host.d/README"), "not a .toml: not read").unwrap();

    let plain = site.sshd("plain", "restrict");
    let limited = site.sshd("limited", &format!("restrict,command=\"rrsync -ro {}\"", fake.display()));
    let gone = site.sshd("gone", "restrict");
    let mut jump = site.sshd(
        "jump",
        &format!("restrict,port-forwarding,permitopen=\"127.0.0.1:{}\",command=\"/bin/false\"", limited.port),
    );
    let mut changed = site.sshd("changed", "restrict");
    let closed_port = ClosedPort::new();
    let closed = closed_port.port;
    // Our key is not there; rsync is not installed there.
    let (_, stranger) = common::sshd::client_key(&site.env.path("stranger"));
    let nokey = Sshd::start(&site.env.path("sshd-nokey"), &format!("{stranger}\n"));
    let norsync = site.sshd("norsync", "restrict,command=\"PATH=/nonexistent rsync\"");
    let fake_data = Path::new("/srv/data");
    site.hosts(
        &[
            toml_host("web1", plain.port, &[&src], "before = [\"echo dumped > /dev/null; echo before-ran\"]"),
            toml_host("store1", limited.port, &[fake_data], ""),
            toml_host("far", limited.port, &[fake_data], &format!("jump = \"root@127.0.0.1:{}\"", jump.port)),
            toml_host("mail1", changed.port, &[&src], ""),
            toml_host("db1", plain.port, &[&src], "before = [\"exit 1\"]"),
            toml_host("nowhere", closed, &[&src], ""),
            toml_host("gone", gone.port, &[&src], ""),
            toml_host("nokey", nokey.port, &[&src], ""),
            toml_host("norsync", norsync.port, &[&src], ""),
        ]
        .concat(),
    );

    // Not on a terminal, a key is never pinned without its fingerprint.
    site.trust("web1", &[]).fails_with(&["not on a terminal", "--fingerprint"]);
    site.trust("web1", &["SHA256:not-it"]).fails_with(&["not a fingerprint given", "nothing was written"]);
    // Nothing pinned: the pull refuses the host, naming what to run.
    let (run, s) =
        site.pull(&["web1", "--dest", site.disk().join("2026-01-01_00-00-00_Hosts").to_str().unwrap()]);
    assert_eq!(run.code, 6, "{run:?}");
    assert!(host(&s, "web1")["error"].as_str().unwrap().contains("hosts trust web1"), "{s:#}");
    assert!(!site.disk().join("2026-01-01_00-00-00_Hosts/web1").exists());
    let _ = fs::remove_dir_all(site.disk().join("2026-01-01_00-00-00_Hosts"));

    site.trust("web1", &[&plain.fingerprint()]).ok();
    site.trust("db1", &[&plain.fingerprint()]).fails_with(&["already trusted"]);
    site.trust("store1", &[&limited.fingerprint()]).ok();
    // Through the jump: both keys are shown and both must be given.
    site.trust("far", &[&limited.fingerprint()]).fails_with(&["not a fingerprint given"]);
    let far = site.trust("far", &[&limited.fingerprint(), &jump.fingerprint()]);
    assert!(far.stdout.contains(&jump.fingerprint()), "{far:?}");
    site.trust("mail1", &[&changed.fingerprint()]).ok();
    site.trust("gone", &[&gone.fingerprint()]).ok();
    // Trusting needs no accepted key: the host key comes first.
    site.trust("nokey", &[&nokey.fingerprint()]).ok();
    site.trust("norsync", &[&norsync.fingerprint()]).ok();
    let pinned = changed.fingerprint();
    changed.restart_with_new_host_key();
    drop(gone);

    // With the key limited to rrsync, no command runs.
    let ssh = Command::new("ssh")
        .arg("-F")
        .arg(site.env.path("state/ssh/ssh_config"))
        .args(["tetras-back--store1", "id"])
        .output()
        .unwrap();
    assert!(!ssh.status.success() && !String::from_utf8_lossy(&ssh.stdout).contains("uid="), "{ssh:?}");

    let check = site.env.cli(&["hosts", "check"]);
    assert_eq!(check.code, 1, "{check:?}");
    for (name, says) in [
        ("web1", "ok:"),
        ("store1", "ok:"),
        ("far", "ok:"),
        ("mail1", "host key changed"),
        ("nowhere", "unreachable"),
        ("db1", "ok:"),
        ("nokey", "our key is refused"),
        ("norsync", "rsync is not installed there"),
    ] {
        let line = check
            .stdout
            .lines()
            .find(|l| l.starts_with(&format!("{name}:")))
            .unwrap_or_else(|| panic!("{check:?}"));
        assert!(line.contains(says), "{name}: {line}");
    }

    let dir = site.disk().join("2026-12-01_10-00-00_Hosts");
    let started = Instant::now();
    let (run, s) =
        site.pull(&["--all", "--dest", dir.to_str().unwrap(), "--link-dest", "auto", "--jobs", "3"]);
    assert_eq!(run.code, 6, "{run:?}");
    assert_eq!(host(&s, "web1")["outcome"], "done", "{s:#}");
    assert!(run.stderr.contains("[web1] before-ran"), "the before command's output is in the log: {run:?}");
    assert_rsync_finds_nothing(&src, &dir.join("web1").join(src.strip_prefix("/").unwrap()));
    site.env.cli(&["verify", dir.join("web1").to_str().unwrap()]).ok();

    // rrsync's root is the host's /; host.d added /srv/app, not the README.
    assert_eq!(host(&s, "store1")["outcome"], "done", "{s:#}");
    assert_eq!(fs::read(dir.join("store1/srv/app/app.db")).unwrap(), text(2, 7000));
    assert_eq!(fs::read(dir.join("store1/srv/data/a.txt")).unwrap(), text(1, 5000));
    assert!(!dir.join("store1/srv/other").exists());
    assert!(run.stderr.contains("host.d/app.toml: 1 more paths"), "{run:?}");
    assert_eq!(host(&s, "far")["outcome"], "done", "{s:#}");
    assert!(dir.join("far/srv/app/app.db").exists());

    let why = host(&s, "mail1")["error"].as_str().unwrap().to_owned();
    assert!(why.contains(&pinned) && why.contains(&changed.fingerprint()), "both fingerprints: {why}");
    assert!(why.contains("--replace"), "{why}");
    let why = host(&s, "nowhere")["error"].as_str().unwrap().to_owned();
    assert!(why.contains("unreachable") && why.contains("Connection refused"), "{why}");
    let why = host(&s, "db1")["error"].as_str().unwrap().to_owned();
    assert!(why.contains("before command `exit 1` failed: exit 1"), "{why}");
    assert!(host(&s, "gone")["error"].as_str().is_some_and(|e| e.contains("unreachable")), "{s:#}");
    // Failed hosts leave nothing; the others are complete.
    let mut names: Vec<String> =
        fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["far", "store1", "web1"]);
    assert!(host(&s, "nokey")["error"].as_str().unwrap().contains("our key is refused"), "{s:#}");
    assert!(host(&s, "norsync")["error"].as_str().unwrap().contains("rsync is not installed there"), "{s:#}");
    assert!(started.elapsed() < Duration::from_secs(60), "took {:?}", started.elapsed());
    let backups = site.env.cli(&["backups", site.disk().to_str().unwrap(), "--json"]).ok();
    let folders: serde_json::Value = serde_json::from_str(&backups.stdout).unwrap();
    let parts = folders["backups"][0]["parts"].as_array().unwrap();
    assert!(parts.iter().all(|p| p["kind"] == "snapshot"), "{folders:#}");

    // A reinstalled host is trusted again with --replace, and pulled; a
    // --replace that is not confirmed keeps the old pin.
    site.trust("mail1", &[&changed.fingerprint()]).fails_with(&["changed", "--replace"]);
    site.env
        .cli(&["hosts", "trust", "mail1", "--replace", "--fingerprint", "SHA256:wrong"])
        .fails_with(&["nothing was written"]);
    let still = site.env.cli(&["hosts", "check", "mail1"]);
    assert!(still.stdout.contains("host key changed"), "the old pin is kept: {still:?}");
    let again =
        site.env.cli(&["hosts", "trust", "mail1", "--replace", "--fingerprint", &changed.fingerprint()]).ok();
    assert!(again.stdout.contains("pinned 1 key"), "{again:?}");
    let (run, s) = site.pull(&[
        "mail1",
        "web1",
        "--dest",
        site.disk().join("2026-12-01_11-00-00_Hosts").to_str().unwrap(),
        "--link-dest",
        "auto",
    ]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(host(&s, "mail1")["outcome"], "done");
    // web1's second pull hard-links what did not change.
    let rel = src.strip_prefix("/").unwrap().join("a/b/c/big");
    let first = dir.join("web1").join(&rel);
    let second = site.disk().join("2026-12-01_11-00-00_Hosts/web1").join(&rel);
    assert_eq!(inode(&first), inode(&second), "not hard-linked");
    assert_eq!(host(&s, "web1")["bytes_written"], 0, "{s:#}");

    // A jump host whose key changed is named as such, and trusted again.
    let old_jump = jump.fingerprint();
    jump.restart_with_new_host_key();
    let (run, s) =
        site.pull(&["far", "--dest", site.disk().join("2026-12-01_12-00-00_Hosts").to_str().unwrap()]);
    assert_eq!(run.code, 6, "{run:?}");
    let why = host(&s, "far")["error"].as_str().unwrap().to_owned();
    assert!(why.contains("the jump host on the way"), "{why}");
    assert!(why.contains(&old_jump) && why.contains(&jump.fingerprint()), "{why}");
    site.env
        .cli(&[
            "hosts",
            "trust",
            "far",
            "--replace",
            "--fingerprint",
            &limited.fingerprint(),
            "--fingerprint",
            &jump.fingerprint(),
        ])
        .ok();
    let (run, _) = site.pull(&[
        "far",
        "store1",
        "--dest",
        site.disk().join("2026-12-01_13-00-00_Hosts").to_str().unwrap(),
    ]);
    assert_eq!(run.code, 0, "{run:?}");
    drop(site.disk);
}

/// The whole procedure: a known disk plugged in, backup_hosts.sh pulls the
/// host (through a key limited to `rrsync -ro /`), the copy is the source
/// exactly, the report and the history list the host; the second backup
/// hard-links what did not change, the drill passes, and a flipped byte in
/// the host's folder is found.
#[test]
fn a_plugged_disk_gets_the_host_pulled_linked_drilled_and_reported() {
    use common::rig::Rig;
    use common::smtp::{smtp_config, Mail, SmtpServer};
    let mut rig = Rig::new("ext4", "");
    install_shipped_scripts(&rig.scripts_dir());
    rig.env.cli(&["hosts", "key"]).ok();
    let public = fs::read_to_string(rig.env.path("state/ssh/id_ed25519.pub")).unwrap();
    let src = rig.env.path("web1-src");
    tree::torture(&src);
    let sshd = Sshd::start(&rig.env.path("sshd"), &format!("restrict,command=\"rrsync -ro /\" {public}"));
    let mail_port = free_port();
    rig.env.write_config(&format!(
        "verify_every = 2\n[[scripts]]\nname = \"backup_hosts.sh\"\nargs = [\"--verify\"]\n{}{}",
        toml_host("web1", sshd.port, &[&src], ""),
        smtp_config(mail_port, "")
    ));
    let key = rig.env.cli(&["hosts", "key"]).ok();
    assert!(key.stdout.contains(&format!("restrict,command=\"rrsync -ro /\" {}", public.trim())), "{key:?}");
    rig.env.cli(&["hosts", "trust", "web1", "--fingerprint", &sshd.fingerprint()]).ok();
    let server = SmtpServer::start(rig.env.root(), mail_port);
    let _d = rig.env.start_daemon();
    rig.subscribe();
    rig.disk.attach();
    let events = rig.until("safe_to_remove");
    let finished = events.iter().find(|e| e["event"] == "backup_finished").unwrap();
    assert_eq!(finished["status"], "success", "{}", rig.logs().join("\n"));
    assert!(!rig.logs().concat().contains("unconfined"), "rsync ran unconfined: {}", rig.logs().join("\n"));
    let m = Mail::parse(&server.wait_for(1, Duration::from_secs(20))[0]);
    assert!(m.body.contains("Hosts:"), "{}", m.body);
    let line =
        m.body.lines().find(|l| l.trim_start().starts_with("web1")).unwrap_or_else(|| panic!("{}", m.body));
    assert!(line.contains("pulled: ") && line.contains(" files, "), "{line}");

    // One file changes; the second backup copies only it.
    let changed = src.join("a/b/other-owner");
    fs::write(&changed, text(9, 6000)).unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    rig.env.cli(&["backup", "office"]).ok();
    let events = rig.until("safe_to_remove");
    let finished = events.iter().find(|e| e["event"] == "backup_finished").unwrap();
    assert_eq!(finished["status"], "success", "{}", rig.logs().join("\n"));
    let history = rig.env.cli(&["history", "--json"]).ok();
    let rows: serde_json::Value = serde_json::from_str(&history.stdout).unwrap();
    let newest = &rows[0];
    assert_eq!(newest["hosts"][0]["name"], "web1", "{newest:#}");
    assert_eq!(newest["hosts"][0]["bytes_written"], 6000, "only the changed file is new: {newest:#}");
    assert_eq!(newest["drill"]["passed"], true, "{newest:#}");
    let table = rig.env.cli(&["history", "--limit", "1"]).ok();
    assert!(table.stdout.contains("└ host web1: "), "{table:?}");
    let listing = rig.env.cli(&["hosts"]).ok();
    assert!(listing.stdout.contains("onto office") && listing.stdout.contains("yes"), "{listing:?}");

    let rel = src.strip_prefix("/").unwrap().to_owned();
    let root = rig.env.root().to_owned();
    rig.disk.modify(&root, |disk| {
        let mut folders: Vec<PathBuf> = fs::read_dir(disk)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_string_lossy().ends_with("_Hosts"))
            .collect();
        folders.sort();
        assert_eq!(folders.len(), 2, "{folders:?}");
        let (old, new) = (folders[0].join("web1").join(&rel), folders[1].join("web1").join(&rel));
        assert_rsync_finds_nothing(&src, &new);
        assert_eq!(inode(&old.join("a/b/c/big")), inode(&new.join("a/b/c/big")), "unchanged: hard-linked");
        assert_ne!(
            inode(&old.join("a/b/other-owner")),
            inode(&new.join("a/b/other-owner")),
            "changed: copied"
        );
        // A flipped byte in the host's folder is found.
        let f = new.join("a/b/other-owner");
        let mut bytes = fs::read(&f).unwrap();
        bytes[100] ^= 1;
        fs::write(&f, bytes).unwrap();
        let out = Command::new(common::BIN).arg("verify").arg(folders[1].join("web1")).output().unwrap();
        assert_eq!(out.status.code(), Some(4), "{out:?}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("other-owner"), "{out:?}");
    });
}

/// A host whose files vanish while rsync reads them is pulled (and says
/// how many); one with unreadable files is pulled but for them, named.
/// The "host" serves through a forced command that drops root's power to
/// read anything and throttles what it sends, so that a file can vanish
/// between the listing and its turn.
#[test]
fn vanished_files_are_noted_and_unreadable_ones_named() {
    let site = Site::new(64);
    let vanish = site.env.path("vanish");
    fs::create_dir_all(&vanish).unwrap();
    fs::write(vanish.join("a_big"), text(5, 3 << 20)).unwrap();
    fs::write(vanish.join("z_vanish"), "soon gone").unwrap();
    let secret_dir = site.env.path("secret");
    fs::create_dir_all(&secret_dir).unwrap();
    fs::write(secret_dir.join("readable"), "fine").unwrap();
    fs::write(secret_dir.join("secret"), "root cannot read me without its capabilities").unwrap();
    nix::unistd::chown(&secret_dir.join("secret"), Some(1234.into()), Some(1234.into())).unwrap();
    fs::set_permissions(secret_dir.join("secret"), std::os::unix::fs::PermissionsExt::from_mode(0o000))
        .unwrap();
    let wrapper = common::disk::script(
        &site.env.path("bin"),
        "weak-slow",
        "exec setpriv --inh-caps=-dac_override,-dac_read_search --bounding-set=-dac_override,-dac_read_search \\\n  \
         bash -o pipefail -c \"$SSH_ORIGINAL_COMMAND | pv -q -L 1m\"",
        0o755,
    );
    let sshd = site.sshd("weak", &format!("restrict,command=\"{}\"", wrapper.display()));
    site.hosts(
        &[
            toml_host("moving", sshd.port, &[&vanish], ""),
            toml_host("locked", sshd.port, &[&secret_dir], ""),
            toml_host("slowpoke", sshd.port, &[&vanish], "timeout = \"2s\""),
        ]
        .concat(),
    );
    site.trust("moving", &[&sshd.fingerprint()]).ok();

    let dir = site.disk().join("2026-12-01_10-00-00_Hosts");
    let watched = dir.join("moving.partial").join(vanish.strip_prefix("/").unwrap());
    let gone = vanish.join("z_vanish");
    let remover = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(60);
        // rsync writes a_big under a temporary name first: the listing is done.
        while !fs::read_dir(&watched).is_ok_and(|d| {
            d.filter_map(|e| e.ok()).any(|e| e.file_name().to_string_lossy().contains("a_big"))
        }) {
            assert!(Instant::now() < deadline, "the pull never started writing a_big");
            std::thread::sleep(Duration::from_millis(5));
        }
        fs::remove_file(gone).unwrap();
    });
    let (run, s) = site.pull(&["moving", "--dest", dir.to_str().unwrap()]);
    remover.join().unwrap();
    assert_eq!(run.code, 0, "vanished files are no failure: {run:?}");
    let moving = host(&s, "moving");
    assert_eq!(moving["outcome"], "done", "{s:#}");
    assert_eq!(moving["vanished"], 1, "{s:#}");
    assert!(dir.join("moving").join(vanish.strip_prefix("/").unwrap()).join("a_big").exists());

    let (run, s) = site.pull(&["locked", "--dest", dir.to_str().unwrap()]);
    assert_eq!(run.code, 23, "{run:?}");
    let locked = host(&s, "locked");
    assert_eq!(locked["outcome"], "partial", "{s:#}");
    let named = locked["unreadable"].as_array().unwrap();
    assert!(named.iter().any(|u| u.as_str().unwrap().contains("secret/secret: Permission denied")), "{s:#}");
    let kept = dir.join("locked").join(secret_dir.strip_prefix("/").unwrap());
    assert_eq!(fs::read_to_string(kept.join("readable")).unwrap(), "fine");
    site.env.cli(&["verify", dir.join("locked").to_str().unwrap()]).ok();

    // 3 MiB at 1 MiB/s: its 2 s timeout stops it, and nothing is kept.
    let started = Instant::now();
    let (run, s) = site.pull(&["slowpoke", "--dest", dir.to_str().unwrap()]);
    assert_eq!(run.code, 6, "{run:?}");
    let why = host(&s, "slowpoke")["error"].as_str().unwrap().to_owned();
    assert_eq!(why, "timed out: its timeout (2s) passed");
    assert!(started.elapsed() < Duration::from_secs(15), "{:?}", started.elapsed());
    assert!(!dir.join("slowpoke").exists() && !dir.join("slowpoke.partial").exists());
}

/// The pid of the running `tetras-back pull` whose command line mentions `needle`.
fn pull_pid(needle: &str) -> Option<i32> {
    fs::read_dir("/proc").ok()?.filter_map(|e| e.ok()).find_map(|e| {
        let pid: i32 = e.file_name().to_str()?.parse().ok()?;
        let cmd = fs::read(e.path().join("cmdline")).ok()?;
        let words: Vec<&[u8]> = cmd.split(|&b| b == 0).collect();
        let is_pull = words.iter().any(|w| *w == b"pull") && !words.iter().any(|w| *w == b"--dry-run");
        (is_pull && String::from_utf8_lossy(&cmd).contains(needle)).then_some(pid)
    })
}

/// Killed dead in the middle of a pull (the daemon, the script, pull, rsync
/// and ssh, as a power cut would): only `NAME.partial` is left, `backups`
/// shows it incomplete, and the next backup is complete, not linked to it.
#[test]
fn killed_during_a_pull_only_a_partial_is_left_and_the_next_backup_is_whole() {
    use common::rig::Rig;
    let mut rig = Rig::new("ext4", "");
    install_shipped_scripts(&rig.scripts_dir());
    rig.env.cli(&["hosts", "key"]).ok();
    let public = fs::read_to_string(rig.env.path("state/ssh/id_ed25519.pub")).unwrap();
    let src = rig.env.path("slow-src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("big"), text(7, 4 << 20)).unwrap();
    let slow = common::disk::script(
        &rig.env.path("bin"),
        "slow",
        "exec bash -o pipefail -c \"$SSH_ORIGINAL_COMMAND | pv -q -L 1m\"",
        0o755,
    );
    let sshd =
        Sshd::start(&rig.env.path("sshd"), &format!("restrict,command=\"{}\" {public}", slow.display()));
    rig.env.write_config(&format!(
        "[[scripts]]\nname = \"backup_hosts.sh\"\n{}",
        toml_host("slow1", sshd.port, &[&src], "")
    ));
    rig.env.cli(&["hosts", "trust", "slow1", "--fingerprint", &sshd.fingerprint()]).ok();
    let mnt = rig.env.path("mnt").join(&rig.disk.uuid);
    let d = rig.env.start_daemon();
    rig.subscribe();
    rig.disk.attach();
    let deadline = Instant::now() + Duration::from_secs(60);
    let pid = loop {
        let writing = fs::read_dir(&mnt).ok().and_then(|d| {
            d.filter_map(|e| e.ok()).map(|e| e.path()).find(|p| p.join("slow1.partial").exists())
        });
        if let (Some(_), Some(pid)) = (writing, pull_pid(mnt.to_str().unwrap())) {
            break pid;
        }
        assert!(Instant::now() < deadline, "the pull never started:\n{}", rig.logs().join("\n"));
        std::thread::sleep(Duration::from_millis(20));
    };
    let pgid = nix::unistd::getpgid(Some(nix::unistd::Pid::from_raw(pid))).unwrap();
    let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(d.pid()), nix::sys::signal::Signal::SIGKILL);
    drop(d);
    // Still mounted where the killed daemon left it: the folder is
    // incomplete, its host a `.partial` that nothing holds any more.
    let out = Command::new(common::BIN).args(["backups", "--json"]).arg(&mnt).output().unwrap();
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let killed = &listed["backups"][0];
    assert_eq!(killed["complete"], false, "{out:?}");
    assert_eq!(killed["in_use"], false, "{out:?}");
    assert_eq!(killed["parts"][0]["name"], "slow1.partial", "{out:?}");
    assert_eq!(killed["parts"][0]["kind"], "incomplete", "{out:?}");
    let killed = killed["name"].as_str().unwrap().to_owned();

    // The next daemon finds the disk plugged in and backs it up again; its
    // prune deletes the interrupted folder.
    let _d = rig.env.start_daemon();
    let events = rig.until("safe_to_remove");
    let finished = events.iter().find(|e| e["event"] == "backup_finished").unwrap();
    assert_eq!(finished["status"], "success", "{}", rig.logs().join("\n"));
    let history = rig.env.cli(&["history", "--json"]).ok();
    let rows: serde_json::Value = serde_json::from_str(&history.stdout).unwrap();
    assert_eq!(rows[1]["status"], "interrupted", "{rows:#}");

    let root = rig.env.root().to_owned();
    let logs = rig.logs();
    rig.disk.inspect(&root, |disk| {
        let out = Command::new(common::BIN).args(["backups", "--json"]).arg(disk).output().unwrap();
        let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let folders = listed["backups"].as_array().unwrap_or_else(|| panic!("{out:?}"));
        assert_eq!(folders.len(), 1, "{listed:#}");
        assert_eq!(folders[0]["complete"], true, "{listed:#}");
        assert_eq!(folders[0]["parts"][0]["name"], "slow1");
        assert!(
            logs.iter().any(|l| l.contains(&format!("deleted {killed} (interrupted backup"))),
            "{logs:?}"
        );
        let whole = disk
            .join(folders[0]["name"].as_str().unwrap())
            .join("slow1")
            .join(src.strip_prefix("/").unwrap());
        assert_eq!(fs::read(whole.join("big")).unwrap(), text(7, 4 << 20));
        assert_eq!(fs::metadata(whole.join("big")).unwrap().nlink(), 1, "not linked to the partial");
        let verify = Command::new(common::BIN)
            .arg("verify")
            .arg(disk.join(folders[0]["name"].as_str().unwrap()).join("slow1"))
            .output()
            .unwrap();
        assert!(verify.status.success(), "{verify:?}");
    });
}

/// A host that was broken into cannot have the backup server's own files
/// put into its backup: it leaves `srv/leak -> <a folder of the server>` in
/// one backup and a folder `srv/leak` holding a file that looks like the
/// server's (same size, time, mode, owner) in the next; rsync, hard-linking
/// from the previous folder by path, would follow the link. It is confined
/// to the two folders (Landlock), and the pull notices the link and pulls
/// that host again without `--link-dest`.
#[test]
fn a_host_cannot_have_the_servers_files_linked_into_its_backup() {
    let site = Site::new(64);
    let secret = site.env.path("server-secret");
    fs::create_dir_all(&secret).unwrap();
    fs::write(secret.join("id"), "THE SERVER'S OWN SECRET").unwrap();
    tree::set_mtime(&secret.join("id"), 1_700_000_000, 0);
    let fake = site.env.path("evil-root");
    fs::create_dir_all(fake.join("srv")).unwrap();
    std::os::unix::fs::symlink(&secret, fake.join("srv/leak")).unwrap();
    let sshd = site.sshd("evil", &format!("restrict,command=\"rrsync -ro {}\"", fake.display()));
    site.hosts(&toml_host("evil", sshd.port, &[Path::new("/srv")], ""));
    site.trust("evil", &[&sshd.fingerprint()]).ok();
    let first = site.disk().join("2026-12-01_10-00-00_Hosts");
    let (run, _) = site.pull(&["evil", "--dest", first.to_str().unwrap()]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(fs::symlink_metadata(first.join("evil/srv/leak")).unwrap().file_type().is_symlink());

    // Now a folder where the link was, with a look-alike of the server's file.
    fs::remove_file(fake.join("srv/leak")).unwrap();
    fs::create_dir_all(fake.join("srv/leak")).unwrap();
    fs::write(fake.join("srv/leak/id"), "the host's own bytes!!!").unwrap();
    assert_eq!(
        fs::metadata(fake.join("srv/leak/id")).unwrap().len(),
        fs::metadata(secret.join("id")).unwrap().len()
    );
    fs::set_permissions(fake.join("srv/leak/id"), fs::metadata(secret.join("id")).unwrap().permissions())
        .unwrap();
    tree::set_mtime(&fake.join("srv/leak/id"), 1_700_000_000, 0);
    let second = site.disk().join("2026-12-01_11-00-00_Hosts");
    let (run, s) = site.pull(&["evil", "--dest", second.to_str().unwrap(), "--link-dest", "auto"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(host(&s, "evil")["outcome"], "done");
    assert!(run.stderr.contains("pulling again without --link-dest"), "{run:?}");
    let copy = second.join("evil/srv/leak/id");
    assert_eq!(fs::read_to_string(&copy).unwrap(), "the host's own bytes!!!");
    assert_ne!(inode(&copy), inode(&secret.join("id")));
    assert_eq!(fs::metadata(secret.join("id")).unwrap().nlink(), 1, "the server's file was linked");
    site.env.cli(&["verify", second.join("evil").to_str().unwrap()]).ok();
}
