//! The shipped backup scripts (`scripts/`), run as the daemon runs them:
//! from the mounted disk, with the daemon's environment, against small
//! source trees on a loop-mounted ext4 disk.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::disk::{dated_folders, fake_backup, install_shipped_scripts, require_root, sh, LoopDisk};
use common::tree::{self, assert_same, Compare};
use common::{Run, TestEnv, BIN};

const HOST: &str = "testhost";

struct Rig {
    /// Held for its `Drop`: unmount and detach.
    _disk: LoopDisk,
    env: TestEnv,
}

impl Rig {
    fn new(mb: u64) -> Rig {
        require_root();
        let env = TestEnv::new();
        install_shipped_scripts(&env.path("scripts"));
        let disk = LoopDisk::mounted(env.root(), mb, &env.path("disk"));
        Rig { _disk: disk, env }
    }

    fn disk(&self) -> PathBuf {
        self.env.path("disk")
    }

    /// Runs a shipped script with the daemon's variables and `vars`.
    fn run(&self, script: &str, args: &[&str], vars: &[(&str, &Path)]) -> Run {
        let out = Command::new(self.env.path("scripts").join(script))
            .args(args)
            .current_dir(self.disk())
            .env("TETRAS_BACK_BIN", BIN)
            .env("TETRAS_BACK_MOUNT", self.disk())
            .env("TETRAS_BACK_HOSTNAME", HOST)
            .env("TETRAS_BACK_MARGIN_BYTES", "1048576")
            .envs(vars.iter().map(|(k, v)| (k, v.as_os_str())))
            .output()
            .unwrap();
        Run::from(out)
    }

    /// The dated folders on the disk, oldest first.
    fn backups(&self) -> Vec<String> {
        dated_folders(&self.disk())
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `YYYY-MM-DD_HH-MM-SS` followed by `rest`.
fn is_dated(name: &str, rest: &str) -> bool {
    chrono::NaiveDateTime::parse_from_str(&name[..19.min(name.len())], "%Y-%m-%d_%H-%M-%S").is_ok()
        && &name[19..] == rest
}

fn home(root: &Path) -> PathBuf {
    let home = root.join("home");
    for user in ["alice", "bob"] {
        fs::create_dir_all(home.join(user).join("docs")).unwrap();
        for i in 0..20 {
            fs::write(home.join(format!("{user}/docs/f{i}")), tree::text(i, 3000)).unwrap();
        }
    }
    home
}

fn config_trees(root: &Path) -> (PathBuf, PathBuf) {
    let etc = root.join("etc");
    let srv = root.join("srv");
    fs::create_dir_all(etc.join("app")).unwrap();
    fs::write(etc.join("app/app.conf"), b"setting = 1\n").unwrap();
    fs::create_dir_all(srv.join("www")).unwrap();
    fs::write(srv.join("www/index.html"), b"<p>hi</p>\n").unwrap();
    (etc, srv)
}

#[test]
fn backup_nocloud_writes_dated_folders_with_linked_data_and_an_archive() {
    let rig = Rig::new(128);
    let home = home(rig.env.root());
    let (etc, srv) = config_trees(rig.env.root());
    let config = format!("{} {} {}", s(&etc), s(&srv), s(&rig.env.path("no-such-dir")));
    let vars: [(&str, &Path); 2] = [("NOCLOUD_DATA", &home), ("NOCLOUD_CONFIG", Path::new(&config))];
    let run = rig.run("backup_nocloud.sh", &["--data", "--config", "--mysql", "/dev/loop99"], &vars);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("device /dev/loop99"), "{run:?}");
    std::thread::sleep(std::time::Duration::from_millis(1100)); // a new second, a new folder name
    fs::write(home.join("alice/docs/f0"), b"changed").unwrap();
    let run = rig.run("backup_nocloud.sh", &["--data", "--config"], &vars);
    assert_eq!(run.code, 0, "{run:?}");

    let backups = rig.backups();
    assert_eq!(backups.len(), 2, "{backups:?}");
    for b in &backups {
        assert!(is_dated(b, &format!("_Sauvegarde_{HOST}")), "{b}");
        let dir = rig.disk().join(b);
        let mut entries: Vec<String> =
            fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        entries.sort();
        assert_eq!(entries, ["Donnees", "serveur.tar.gz"]);
        sh("gzip", &["-t", s(&dir.join("serveur.tar.gz"))]);
        let listing = sh("tar", &["tzf", s(&dir.join("serveur.tar.gz"))]);
        let etc_member = format!("{}/app/app.conf", etc.strip_prefix("/").unwrap().display());
        assert!(listing.lines().any(|l| l == etc_member), "{listing}");
        assert!(listing.contains("www/index.html"), "{listing}");
    }
    let (first, second) = (rig.disk().join(&backups[0]), rig.disk().join(&backups[1]));
    assert_same(&home, &second.join("Donnees"), &Compare::snapshot());
    let ino = |b: &Path, rel: &str| fs::metadata(b.join("Donnees").join(rel)).unwrap().ino();
    assert_eq!(ino(&first, "bob/docs/f3"), ino(&second, "bob/docs/f3"), "unchanged data is hard-linked");
    assert_ne!(ino(&first, "alice/docs/f0"), ino(&second, "alice/docs/f0"));
    let verify = Run::from(Command::new(BIN).args(["verify", s(&first.join("Donnees"))]).output().unwrap());
    assert!(verify.ok().stdout.contains("intact"));
}

#[test]
fn backup_nocloud_prunes_before_writing_and_refuses_what_cannot_fit() {
    let rig = Rig::new(96);
    let d = rig.disk();
    let old = [
        "2026-01-01_00-00-00_Sauvegarde_old",
        "2026-02-01_00-00-00_Sauvegarde_old",
        "2026-03-01_00-00-00_Sauvegarde_old",
    ];
    for n in old {
        fake_backup(&d, n, 20);
    }
    // 20 MiB of new data: the disk, nearly full, must make room first.
    let home = rig.env.path("home");
    fs::create_dir_all(&home).unwrap();
    sh("dd", &["if=/dev/urandom", &format!("of={}/big", home.display()), "bs=1M", "count=20", "status=none"]);
    let run = rig.run("backup_nocloud.sh", &["--data"], &[("NOCLOUD_DATA", &home)]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("deleted 2026-01-01_00-00-00_Sauvegarde_old"), "{run:?}");
    let left = rig.backups();
    assert!(!left.contains(&old[0].to_owned()), "{left:?}");
    assert!(left.contains(&old[2].to_owned()), "the newest old backup is kept while there is room: {left:?}");
    assert_eq!(left.len(), old.len(), "one deleted, one added: {left:?}");

    // More than the disk can ever hold: nothing deleted, nothing written, a loud failure.
    sh("dd", &["if=/dev/zero", &format!("of={}/huge", home.display()), "bs=1M", "count=150", "status=none"]);
    let before = rig.backups();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let run = rig.run("backup_nocloud.sh", &["--data"], &[("NOCLOUD_DATA", &home)]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("not enough space"), "{run:?}");
    assert_eq!(rig.backups(), before, "nothing deleted, nothing written");
}

/// A sparse file (a virtual machine's disk image) needs room for its data,
/// not for its holes: they stay holes in the copy.
#[test]
fn backup_nocloud_makes_room_for_what_sparse_files_hold_not_their_holes() {
    let rig = Rig::new(64);
    let home = home(rig.env.root());
    let image = home.join("alice/vm.img");
    fs::write(&image, tree::text(7, 1 << 20)).unwrap();
    sh("truncate", &["-s", "1G", s(&image)]);
    let run = rig.run("backup_nocloud.sh", &["--data"], &[("NOCLOUD_DATA", &home)]);
    assert_eq!(run.code, 0, "a 1 GiB sparse file holding 1 MiB fits on a 64 MiB disk: {run:?}");
    let copy = rig.disk().join(&rig.backups()[0]).join("Donnees/alice/vm.img");
    let meta = fs::metadata(&copy).unwrap();
    assert_eq!(meta.len(), 1 << 30);
    assert!(meta.blocks() * 512 < 4 << 20, "the holes stayed holes: {} blocks", meta.blocks());
    assert_same(&home, &rig.disk().join(&rig.backups()[0]).join("Donnees"), &Compare::snapshot());
}

#[test]
fn backup_demo_tibox_snapshots_etc_and_home() {
    let rig = Rig::new(64);
    let home = home(rig.env.root());
    let (etc, _) = config_trees(rig.env.root());
    let sources = format!("{} {}", s(&etc), s(&home));
    let run = rig.run("backup_demo-tibox.sh", &["/dev/loop99"], &[("TIBOX_SOURCES", Path::new(&sources))]);
    assert_eq!(run.code, 0, "{run:?}");
    let backups = rig.backups();
    assert_eq!(backups.len(), 1);
    assert!(is_dated(&backups[0], &format!("_{HOST}")), "{backups:?}");
    let dir = rig.disk().join(&backups[0]);
    assert_same(&etc, &dir.join("etc"), &Compare::exact());
    assert_same(&home, &dir.join("home"), &Compare::exact());
    assert!(dir.join(".tetras-back-manifest").is_file());

    let run = rig.run("backup_demo-tibox.sh", &["--bogus"], &[]);
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("unknown option --bogus"), "{run:?}");
}
