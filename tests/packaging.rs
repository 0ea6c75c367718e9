//! Installing like a Debian service: `make install`/`uninstall` with
//! DESTDIR against a golden file list, the unit through `systemd-analyze
//! verify`, and the udev rule through `udevadm test` on a real loop device.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::disk::*;
use common::*;

/// The layout options every `make` run of the test uses.
const LAYOUT: &[&str] =
    &["PROFILE=dev", "PREFIX=/usr", "UNITDIR=/usr/lib/systemd/system", "UDEVDIR=/usr/lib/udev"];

fn make(target: &str, destdir: &Path) -> String {
    common::make(target, &[&format!("DESTDIR={}", destdir.display())], LAYOUT)
}

/// Every file under `root`, as absolute paths of the installed system.
fn files(root: &Path) -> Vec<String> {
    let mut out: Vec<String> = walkdir::WalkDir::new(root)
        .into_iter()
        .map(|e| e.unwrap())
        .filter(|e| !e.file_type().is_dir())
        .map(|e| format!("/{}", e.path().strip_prefix(root).unwrap().display()))
        .collect();
    out.sort();
    out
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

#[test]
fn make_install_and_uninstall_with_destdir() {
    let dest = tempfile::Builder::new().prefix("tetras-destdir-").tempdir().unwrap();
    let root = dest.path();
    let said = make("install", root);
    assert!(said.contains("not starting the service"), "{said}");

    let golden = include_str!("golden/install-files.txt");
    let golden: Vec<&str> = golden.lines().collect();
    assert_eq!(files(root), golden, "the installed files differ from tests/golden/install-files.txt");
    assert_eq!(mode(&root.join("usr/sbin/tetras-back")), 0o755);
    assert_eq!(mode(&root.join("usr/lib/tetras-back/backup_nocloud.sh")), 0o755);
    assert_eq!(mode(&root.join("etc/tetras-back/tetras-back.toml")), 0o644);
    let config = fs::read_to_string(root.join("etc/tetras-back/tetras-back.toml")).unwrap();
    assert!(config.contains("\nscripts_dir = \"/usr/lib/tetras-back\"\n"), "scripts_dir follows PREFIX");
    let man = fs::read_to_string(root.join("usr/share/man/man8/tetras-back.8")).unwrap();
    assert!(man.contains(".TH tetras-back 8") && man.contains("mail\\-test"), "{man}");
    let bash = fs::read_to_string(root.join("usr/share/bash-completion/completions/tetras-back")).unwrap();
    assert!(bash.contains("history") && bash.contains("--save"), "bash completion knows the commands");

    // The unit passes systemd-analyze verify, its ExecStart pointed at the
    // staged binary (DESTDIR is only the staging prefix).
    let unit = fs::read_to_string(root.join("usr/lib/systemd/system/tetras-back.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/sbin/tetras-back daemon"), "{unit}");
    assert!(unit.contains("ExecReload=/usr/sbin/tetras-back reload"), "{unit}");
    let web = fs::read_to_string(root.join("usr/lib/systemd/system/tetras-back-web.service")).unwrap();
    assert!(web.contains("ExecStart=/usr/sbin/tetras-back web"), "{web}");
    let check = root.join("check");
    fs::create_dir(&check).unwrap();
    for (name, text) in [("tetras-back.service", &unit), ("tetras-back-web.service", &web)] {
        let staged = text.replace("=/usr/sbin/", &format!("={}/usr/sbin/", root.display()));
        fs::write(check.join(name), staged).unwrap();
        let v = Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(check.join(name))
            .output()
            .expect("systemd-analyze");
        assert!(
            v.status.success() && v.stderr.is_empty(),
            "systemd-analyze verify {name}: {}",
            String::from_utf8_lossy(&v.stderr)
        );
    }
    fs::remove_dir_all(&check).unwrap();

    // An edited configuration survives a reinstall.
    let conf = root.join("etc/tetras-back/tetras-back.toml");
    fs::write(&conf, format!("{config}\n# edited by the administrator\n")).unwrap();
    assert!(make("install", root).contains("Keeping existing"));
    assert!(fs::read_to_string(&conf).unwrap().ends_with("# edited by the administrator\n"));

    make("uninstall", root);
    assert_eq!(files(root), ["/etc/tetras-back/tetras-back.toml"], "uninstall keeps the configuration only");
}

/// Removes a file of ours from udev's runtime rules directory, even when the test fails.
struct RuleFile(PathBuf);

impl Drop for RuleFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
        let _ = Command::new("udevadm").args(["control", "--reload"]).status();
    }
}

/// `udevadm test` on a device: the properties udev would give it.
fn udev_properties(dev: &str) -> String {
    let name = dev.trim_start_matches("/dev/");
    let out = Command::new("udevadm").args(["test", &format!("/sys/class/block/{name}")]).output().unwrap();
    assert!(out.status.success(), "udevadm test: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn saved_disks_are_hidden_from_udisks_by_a_generated_rule() {
    require_root_and_udevd();
    let uuid = random_uuid();
    let rule = RuleFile(PathBuf::from(format!("/run/udev/rules.d/61-tetras-back-test-{}.rules", &uuid[..8])));
    let env = TestEnv::with_udev_rule(rule.0.clone());
    env.write_config("[[scripts]]\nname = \"none.sh\"\n");
    let mut disk = LoopDisk::create(env.root(), "ext4", &uuid, 32);

    // Saved while no daemon runs: the CLI writes the rule.
    env.cli(&["save", &uuid, "office"]).ok();
    let text = fs::read_to_string(&rule.0).expect("the rule is written on save");
    assert!(text.contains(&uuid), "{text}");
    let dev = disk.attach();
    let props = udev_properties(&dev);
    assert!(props.contains(&format!("ID_FS_UUID={uuid}")), "{props}");
    assert!(props.lines().any(|l| l == "UDISKS_IGNORE=1"), "{props}");

    // Forgotten through the daemon: the rule goes, and so does the property.
    let _d = env.start_daemon();
    env.cli(&["forget", &uuid]).ok();
    assert!(!rule.0.exists(), "the rule is removed with the last disk");
    let props = udev_properties(&dev);
    assert!(!props.contains("UDISKS_IGNORE"), "{props}");

    // Saved through the daemon: back again.
    env.cli(&["save", &uuid, "office"]).ok();
    assert!(udev_properties(&dev).lines().any(|l| l == "UDISKS_IGNORE=1"));
    disk.detach();
}

#[test]
fn the_daemon_tells_systemd_it_is_ready_and_pings_the_watchdog() {
    use std::os::unix::net::UnixDatagram;
    let env = TestEnv::new();
    let socket_path = env.path("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
    // As systemd does for WatchdogSec=400ms: the daemon must ping at least every 400 ms.
    let _d = env
        .start_daemon_with(&[("NOTIFY_SOCKET", socket_path.to_str().unwrap()), ("WATCHDOG_USEC", "400000")]);
    let mut said = Vec::new();
    let start = std::time::Instant::now();
    while said.iter().filter(|m: &&String| m.contains("WATCHDOG=1")).count() < 4 {
        let mut buf = [0u8; 4096];
        let n = socket.recv(&mut buf).expect("a notification within 5 s");
        said.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert!(said[0].contains("READY=1"), "{said:?}");
    // Four pings in well under four intervals: the loop wakes up by itself.
    assert!(start.elapsed() < std::time::Duration::from_secs(4), "{:?}: {said:?}", start.elapsed());
}

/// A Makefile variable's value, as make expands it.
fn make_var(name: &str) -> String {
    let eval = format!("print-var:;@echo $({name})");
    let out = Command::new("make")
        .args(["-s", "-C", env!("CARGO_MANIFEST_DIR"), "--eval", &eval, "print-var"])
        .output()
        .unwrap();
    assert!(out.status.success(), "make --eval {name}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// `make check-deps` passes with the Makefile's lists, and fails naming the
/// program and its callers when a package is left out of TEST_DEPS (rsync,
/// which only `make bench` installed once, and CI hid it).
#[test]
fn check_deps_names_a_program_whose_package_no_list_installs() {
    let check = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/check-deps");
    let (test, bench) = (make_var("TEST_DEPS"), make_var("BENCH_DEPS"));
    let run = |test: &str| {
        let out =
            Command::new(&check).arg(format!("test={test}")).arg(format!("bench={bench}")).output().unwrap();
        (
            out.status.success(),
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
        )
    };
    let (ok, said) = run(&test);
    assert!(ok, "check-deps fails with the Makefile's own lists:\n{said}");
    let without: Vec<&str> = test.split_whitespace().filter(|p| *p != "rsync").collect();
    let (ok, said) = run(&without.join(" "));
    assert!(!ok, "check-deps passed without rsync in TEST_DEPS:\n{said}");
    let line = said.lines().find(|l| l.starts_with("check-deps: rsync:")).unwrap_or_else(|| panic!("{said}"));
    assert!(line.contains("tests/engines.rs") && line.contains("TEST_DEPS"), "{line}");
}
