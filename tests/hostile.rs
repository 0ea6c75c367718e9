//! The hostile-disk corpus: a disk is plugged in by anyone, and whatever it
//! holds must neither hang, crash nor redirect the root daemon or the
//! engines. A known disk is backed up once (so it carries a real backup
//! and its identity); copies of its image each get one trick (a FIFO where
//! a file is expected, a 200 GiB sparse manifest, a symbolic link, a folder
//! dated 2099, a million entries in one folder, a 10,000-deep chain, names
//! with newlines and escapes, ...); then every path that reads a disk is
//! driven against each: the engines (`backups`, `verify`, `prune` dry run
//! and real, `restore`, an incremental `snapshot`), and the daemon (plug →
//! backup with the shipped script and its restore drill; plug → drill of
//! what is on the disk). Each cell must end within its time, without a
//! crash; the daemon must answer `status` within 2 s and stay under 100 MB
//! throughout, and back up a good disk afterwards. The matrix is printed.
//! Needs root and a running udevd (`make test` provides both).

mod common;

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::browser::{add_user, curl, curl_csrf, curl_login, curl_to, WebConsole};
use common::disk::*;
use common::rig::flow_of;
use common::smtp::free_port;
use common::*;
use wait_timeout::ChildExt;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// One trick played on a copy of the backed-up disk: `apply` gets the
/// disk's root and the name of its real backup folder; `entry` is the name
/// an outcome must give when it reports the damage.
struct Trick {
    name: &'static str,
    entry: Option<&'static str>,
    apply: fn(&Path, &str, &Path),
    /// Needs a disk with room for a million inodes.
    big: bool,
}

impl Trick {
    /// What `restore` is asked for: the whole snapshot, but a million
    /// files take minutes to restore (they are not a trick): two of them.
    fn restore_paths(&self) -> Vec<&'static str> {
        if self.big {
            vec!["Donnees/doc.txt", "Donnees/many/999999"]
        } else {
            vec!["Donnees"]
        }
    }
}

/// At most `n` characters of `line` (a 10,000-deep path is 20,000).
fn clip(line: &str, n: usize) -> String {
    if line.chars().count() <= n {
        return line.to_owned();
    }
    format!("{}...", line.chars().take(n).collect::<String>())
}

fn mkfifo_at(p: &Path) {
    let _ = fs::remove_file(p);
    nix::unistd::mkfifo(p, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
}

const MANIFEST: &str = ".tetras-back-manifest";

/// Makes the file at `p` `len` bytes long: a hole after what it holds.
fn grow(p: &Path, len: u64) {
    fs::OpenOptions::new().write(true).open(p).unwrap().set_len(len).unwrap();
}

fn tricks() -> Vec<Trick> {
    vec![
        Trick {
            name: "FIFO as a manifest",
            entry: Some(MANIFEST),
            big: false,
            apply: |r, d0, _| mkfifo_at(&r.join(d0).join("Donnees").join(MANIFEST)),
        },
        Trick {
            name: "FIFO as a .partial",
            entry: Some("x.partial"),
            big: false,
            apply: |r, d0, _| mkfifo_at(&r.join(d0).join("x.partial")),
        },
        Trick {
            name: "FIFO as a backed-up file",
            entry: Some("doc.txt"),
            big: false,
            apply: |r, d0, _| mkfifo_at(&r.join(d0).join("Donnees/doc.txt")),
        },
        Trick {
            name: "FIFO as disk-id",
            entry: Some("disk-id"),
            big: false,
            apply: |r, _, _| mkfifo_at(&r.join(".tetras-back/disk-id")),
        },
        Trick {
            name: "200 GiB sparse manifest",
            entry: Some(MANIFEST),
            big: false,
            apply: |r, d0, _| grow(&r.join(d0).join("Donnees").join(MANIFEST), 200 << 30),
        },
        Trick {
            name: "manifest with a 1 GiB line",
            entry: Some(MANIFEST),
            big: false,
            apply: |r, d0, _| {
                let p = r.join(d0).join("Donnees").join(MANIFEST);
                fs::write(&p, "tetras-back manifest 2\nf\t644\t0\t0\t1\t1.0\t").unwrap();
                grow(&p, 1 << 30);
            },
        },
        Trick {
            name: "symlinked manifest",
            entry: Some(MANIFEST),
            big: false,
            apply: |r, d0, outside| {
                let p = r.join(d0).join("Donnees").join(MANIFEST);
                fs::remove_file(&p).unwrap();
                std::os::unix::fs::symlink(outside.join("secret"), p).unwrap();
            },
        },
        Trick {
            name: "symlinked dated folder",
            entry: None,
            big: false,
            apply: |r, _, outside| {
                std::os::unix::fs::symlink(outside, r.join("2020-01-01_00-00-00_link")).unwrap();
            },
        },
        Trick {
            name: "dated folder in 2099",
            entry: Some("2099-01-01_00-00-00_fake"),
            big: false,
            apply: |r, d0, _| {
                sh("cp", &["-a", s(&r.join(d0)), s(&r.join("2099-01-01_00-00-00_fake"))]);
            },
        },
        Trick {
            name: "1,000,000 entries in a folder",
            entry: None,
            big: true,
            apply: |r, d0, _| {
                let dir = r.join(d0).join("Donnees/many");
                fs::create_dir(&dir).unwrap();
                let fd = fs::File::open(&dir).unwrap();
                use std::os::fd::AsFd;
                for i in 0..1_000_000u32 {
                    let flags = nix::fcntl::OFlag::O_CREAT | nix::fcntl::OFlag::O_WRONLY;
                    let mode = nix::sys::stat::Mode::from_bits_truncate(0o644);
                    drop(nix::fcntl::openat(fd.as_fd(), i.to_string().as_str(), flags, mode).unwrap());
                }
            },
        },
        Trick {
            name: "10,000-deep folder chain",
            entry: None,
            big: false,
            apply: |r, d0, _| {
                use std::os::fd::AsFd;
                let mut dir: std::os::fd::OwnedFd =
                    fs::File::open(r.join(d0).join("Donnees")).unwrap().into();
                for _ in 0..10_000 {
                    nix::sys::stat::mkdirat(
                        dir.as_fd(),
                        "d",
                        nix::sys::stat::Mode::from_bits_truncate(0o755),
                    )
                    .unwrap();
                    let flags = nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY;
                    dir = nix::fcntl::openat(dir.as_fd(), "d", flags, nix::sys::stat::Mode::empty()).unwrap();
                }
            },
        },
        Trick {
            name: "newlines, escapes, bad UTF-8",
            entry: None,
            big: false,
            apply: |r, d0, _| {
                let don = r.join(d0).join("Donnees");
                fs::write(don.join("evil\nSubject: forged"), "x").unwrap();
                fs::write(don.join("\x1b[2J\x1b[31mred"), "x").unwrap();
                fs::write(don.join(std::ffi::OsStr::from_bytes(b"bad\xff\xfe")), "x").unwrap();
                fs::create_dir(r.join("2021-01-01_00-00-00_\n\x1b[2Jforged")).unwrap();
            },
        },
        Trick {
            name: "hard link out of the folder",
            entry: None,
            big: false,
            apply: |r, d0, _| {
                fs::hard_link(r.join(".tetras-back/disk-id"), r.join(d0).join("Donnees/token")).unwrap();
            },
        },
    ]
}

/// How one cell ended.
#[derive(Clone, Debug)]
enum End {
    Exited(i32),
    Signalled(i32),
    Hung,
}

#[derive(Clone, Debug)]
struct Cell {
    end: End,
    text: String,
    peak_mib: f64,
}

impl Cell {
    fn summary(&self, entry: Option<&str>) -> String {
        let named = entry.is_some_and(|e| self.text.contains(e));
        match self.end {
            End::Exited(0) => "ok".into(),
            End::Exited(c) if named => format!("exit {c}, named"),
            End::Exited(c) => format!("exit {c}"),
            End::Signalled(s) => format!("SIGNAL {s}"),
            End::Hung => "HUNG".into(),
        }
    }
}

/// Runs the binary with `args` under GNU time (peak memory), in a process
/// group of its own, killed after `limit`.
fn engine(args: &[&str], limit: Duration, scratch: &Path) -> Cell {
    let peak = scratch.join("peak");
    let out = scratch.join("out");
    let mut child = Command::new("/usr/bin/time")
        .args(["-f", "%M", "-o", s(&peak), BIN])
        .args(args)
        .stdin(Stdio::null())
        .stdout(fs::File::create(&out).unwrap())
        .stderr(fs::File::options().append(true).open(&out).unwrap())
        .process_group(0)
        .spawn()
        .unwrap();
    let end = match child.wait_timeout(limit).unwrap() {
        Some(st) => match (st.code(), st.signal()) {
            (Some(c), _) => End::Exited(c),
            (_, Some(sig)) => End::Signalled(sig),
            _ => End::Signalled(0),
        },
        None => {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            let _ = child.wait();
            End::Hung
        }
    };
    // GNU time reports a child killed by a signal as its own exit "Command terminated by signal".
    let time_said = fs::read_to_string(&peak).unwrap_or_default();
    let end = match (&end, time_said.lines().find(|l| l.contains("terminated by signal"))) {
        (End::Exited(_), Some(l)) => {
            End::Signalled(l.rsplit(' ').next().unwrap().trim().parse().unwrap_or(0))
        }
        _ => end,
    };
    let peak_mib =
        time_said.lines().last().and_then(|l| l.trim().parse::<f64>().ok()).unwrap_or(0.0) / 1024.0;
    let text = String::from_utf8_lossy(&fs::read(&out).unwrap()).into_owned();
    Cell { end, text, peak_mib }
}

/// Polls the daemon while a disk is plugged: the slowest `status` answer and
/// the highest resident memory seen.
struct Watchdog {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<(Duration, u64)>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watchdog {
    fn start(env: &TestEnv, pid: i32) -> Watchdog {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new((Duration::ZERO, 0)));
        let config = env.config_path();
        let (s2, seen2) = (stop.clone(), seen.clone());
        let thread = std::thread::spawn(move || {
            while !s2.load(Ordering::SeqCst) {
                let t = Instant::now();
                let mut c = Command::new(BIN)
                    .arg("--config")
                    .arg(&config)
                    .arg("status")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap();
                let answered = c.wait_timeout(Duration::from_secs(5)).unwrap();
                if answered.is_none() {
                    let _ = c.kill();
                    let _ = c.wait();
                }
                let took =
                    if answered.is_some_and(|s| s.success()) { t.elapsed() } else { Duration::from_secs(99) };
                let rss = fs::read_to_string(format!("/proc/{pid}/status"))
                    .ok()
                    .and_then(|t| {
                        t.lines()
                            .find(|l| l.starts_with("VmRSS:"))
                            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
                    })
                    .unwrap_or(0);
                let mut m = seen2.lock().unwrap();
                m.0 = m.0.max(took);
                m.1 = m.1.max(rss);
                drop(m);
                std::thread::sleep(Duration::from_millis(300));
            }
        });
        Watchdog { stop, seen, thread: Some(thread) }
    }

    fn finish(mut self) -> (Duration, u64) {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().unwrap().join().unwrap();
        *self.seen.lock().unwrap()
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// One plug of a disk image into a running daemon: what happened.
struct Plugged {
    flow: Vec<String>,
    status: String,
    slowest: Duration,
    rss_kib: u64,
    log: String,
}

fn plug(env: &TestEnv, daemon: &Daemon, sub: &mut Subscriber, disk: &mut LoopDisk) -> Plugged {
    let dog = Watchdog::start(env, daemon.pid());
    disk.attach();
    let uuid = disk.uuid.clone();
    let events = sub.until_about_within("safe_to_remove", &uuid, Duration::from_secs(240));
    disk.detach();
    let mut rest = sub.until_about_within("disk_unplugged", &uuid, Duration::from_secs(30));
    let (slowest, rss_kib) = dog.finish();
    let mut all = events;
    all.append(&mut rest);
    let status = all
        .iter()
        .find(|e| e["event"] == "backup_finished")
        .map(|e| e["status"].as_str().unwrap_or("?").to_owned())
        .unwrap_or_else(|| "-".into());
    let log = all
        .iter()
        .filter_map(|e| e["log"].as_str())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .map(|p| fs::read_to_string(p).unwrap_or_default())
        .collect();
    Plugged { flow: flow_of(&all, &uuid), status, slowest, rss_kib, log }
}

/// A test root with the shipped scripts and `noop.sh` (writes nothing, so
/// that the drill reads what the disk holds); returns it and its data folder.
fn test_root() -> (TestEnv, std::path::PathBuf) {
    require_root_and_udevd();
    let env = TestEnv::new();
    let scripts = env.path("scripts");
    install_shipped_scripts(&scripts);
    script(&scripts, "noop.sh", "exit 0", 0o755);
    let data = env.path("data");
    fs::create_dir_all(&data).unwrap();
    (env, data)
}

#[test]
fn every_disk_path_survives_the_hostile_corpus() {
    let (env, data) = test_root();
    fs::create_dir_all(data.join("a")).unwrap();
    fs::write(data.join("doc.txt"), "the report\n").unwrap();
    fs::write(data.join("a/b.txt"), "more\n").unwrap();
    // Outside every disk: what a link on a disk points at; never read or changed.
    let outside = env.path("outside");
    fs::create_dir_all(&outside).unwrap();
    fs::write(outside.join("secret"), "root's secret\n").unwrap();
    fs::write(outside.join("keep-me"), "must survive every prune\n").unwrap();
    let shipped = "verify_every = 1\n[mail]\nwhen = \"never\"\n\
        [[scripts]]\nname = \"backup_nocloud.sh\"\nargs = [\"--data\"]\ntimeout = \"2min\"\n";
    env.write_config(shipped);
    let uuid = random_uuid();
    let mut template = LoopDisk::create(env.root(), "ext4", &uuid, 128);
    env.cli(&["save", &uuid, "office"]).ok();
    let vars = [("NOCLOUD_DATA", s(&data))];

    // A real backup and the disk's identity on the template.
    {
        let daemon = env.start_daemon_with(&vars);
        let mut sub = Subscriber::new(env.path("events.fifo"));
        env.cli(&["register", s(&sub.path)]).ok();
        sub.until("disks");
        let p = plug(&env, &daemon, &mut sub, &mut template);
        assert_eq!(p.status, "success", "{:?}\n{}", p.flow, p.log);
        daemon.signal(nix::libc::SIGTERM);
        assert_eq!(daemon.wait_exit(Duration::from_secs(15)), 0);
    }
    let root = env.root().to_owned();
    let d0 = template.inspect(&root, |m| dated_folders(m)[0].clone());
    // Every trick starts from this copy: the template itself is plugged in
    // again as the good disk, and gains backups.
    let pristine_image = env.path("pristine.img");
    sh("cp", &["--sparse=always", s(&template.image), s(&pristine_image)]);
    let mut pristine = LoopDisk { image: pristine_image, uuid: uuid.clone(), dev: None };

    // One image per trick, built with no daemon running.
    let tricks = tricks();
    let mut disks: Vec<LoopDisk> = Vec::new();
    let build = |i: usize, t: &Trick, pristine: &mut LoopDisk| -> LoopDisk {
        let image = env.path(&format!("trick-{i}.img"));
        if t.big {
            // The same filesystem UUID and content, with room for the inodes.
            let _ = fs::remove_file(&image);
            sh("truncate", &["-s", "1G", s(&image)]);
            sh("mkfs.ext4", &["-q", "-F", "-N", "1100000", "-U", &uuid, s(&image)]);
            let copy = env.path("copy");
            pristine.inspect(&root, |m| sh("cp", &["-a", &format!("{}/.", s(m)), s(&copy)]));
            let mut disk = LoopDisk { image, uuid: uuid.clone(), dev: None };
            disk.modify(&root, |m| {
                sh("cp", &["-a", &format!("{}/.", s(&copy)), s(m)]);
                (t.apply)(m, &d0, &outside)
            });
            fs::remove_dir_all(&copy).unwrap();
            return disk;
        }
        sh("cp", &["--sparse=always", s(&pristine.image), s(&image)]);
        let mut disk = LoopDisk { image, uuid: uuid.clone(), dev: None };
        disk.modify(&root, |m| (t.apply)(m, &d0, &outside));
        disk
    };
    for (i, t) in tricks.iter().enumerate() {
        disks.push(build(i, t, &mut pristine));
    }

    // The engines, on each image mounted read-write (prune last: it deletes).
    let scratch = env.path("scratch");
    fs::create_dir_all(&scratch).unwrap();
    const ENGINE_PATHS: [&str; 6] =
        ["backups", "verify", "prune -n", "restore", "snapshot", "prune --keep-last"];
    let limit = Duration::from_secs(120);
    let mut engine_cells: Vec<Vec<Cell>> = Vec::new();
    for (i, (disk, t)) in disks.iter_mut().zip(&tricks).enumerate() {
        let to = env.path(&format!("restored-{i}"));
        let cells = disk.modify(&root, |m| {
            let folder = m.join(&d0);
            let snap = m.join("2030-01-01_00-00-00_incremental/Donnees");
            vec![
                engine(&["backups", s(m)], limit, &scratch),
                engine(&["verify", s(&folder.join("Donnees"))], limit, &scratch),
                engine(&["prune", s(m), "--min-free", "99%", "--dry-run"], limit, &scratch),
                engine(
                    &[&["restore", s(m), "--from", &d0, "--to", s(&to), "--"][..], &t.restore_paths()]
                        .concat(),
                    limit,
                    &scratch,
                ),
                engine(
                    &["snapshot", "--dest", s(&snap), "--link-dest", "auto", &format!("{}/", s(&data))],
                    limit,
                    &scratch,
                ),
                engine(&["prune", s(m), "--keep-last", "1"], limit, &scratch),
            ]
        });
        let _ = fs::remove_dir_all(&to);
        engine_cells.push(cells);
    }

    // The daemon: each hostile image plugged in, backed up by the shipped
    // script (an incremental against what is there, then the drill of the
    // new backup), then a good disk; then with a script that writes nothing,
    // so that the drill reads what the disk holds.
    let mut daemon_cells: Vec<Vec<Plugged>> = (0..tricks.len()).map(|_| Vec::new()).collect();
    let mut good_after = Vec::new();
    for extra in [shipped.to_owned(), shipped.replace("backup_nocloud.sh", "noop.sh")] {
        env.write_config(&extra);
        // Fresh images: the engine pass above changed them.
        for (i, t) in tricks.iter().enumerate() {
            disks[i] = build(i, t, &mut pristine);
        }
        let daemon = env.start_daemon_with(&vars);
        let mut sub = Subscriber::new(env.path(&format!("events-{}.fifo", good_after.len())));
        env.cli(&["register", s(&sub.path)]).ok();
        sub.until("disks");
        for (i, disk) in disks.iter_mut().enumerate() {
            daemon_cells[i].push(plug(&env, &daemon, &mut sub, disk));
        }
        let good = plug(&env, &daemon, &mut sub, &mut template);
        good_after.push(good.status.clone());
        let stopping = Instant::now();
        daemon.signal(nix::libc::SIGTERM);
        assert_eq!(daemon.wait_exit(Duration::from_secs(15)), 0, "the daemon stops cleanly");
        assert!(stopping.elapsed() < Duration::from_secs(10), "stop took {:?}", stopping.elapsed());
    }

    // The console: each hostile image held and plugged in (opened read-only),
    // then browsed, a file and a folder downloaded and a file restored by an
    // admin, through `tetras-back web`.
    // Fresh images, built before the daemon starts: mounting one is a plug.
    for (i, t) in tricks.iter().enumerate() {
        disks[i] = build(i, t, &mut pristine);
    }
    let port = free_port();
    env.write_config(&format!("{shipped}{}", WebConsole::config_with_admins(&env, port, None, &["alice"])));
    add_user(&env, "alice", "pw");
    let daemon = env.start_daemon_with(&vars);
    let web = WebConsole::start(&env, port, false);
    let mut sub = Subscriber::new(env.path("events-console.fifo"));
    env.cli(&["register", s(&sub.path)]).ok();
    sub.until("disks");
    env.cli(&["hold", "office"]).ok();
    let jar = env.path("jar");
    assert_eq!(curl_login(&web.url, &jar, "alice", "pw"), 303);
    let cookies = ["-b", s(&jar)];
    let mut console_cells: Vec<Vec<(u16, Duration)>> = Vec::new();
    let mut console_failures = Vec::new();
    for (i, t) in tricks.iter().enumerate() {
        let dog = Watchdog::start(&env, daemon.pid());
        disks[i].attach();
        // Opened, or refused (the FIFO as disk-id).
        let events = sub.until_one_of(&["disk_opened", "disk_mismatch"], &uuid, Duration::from_secs(60));
        let opened = events.last().is_some_and(|e| e["event"] == "disk_opened");
        if opened != (t.name != "FIFO as disk-id") {
            console_failures.push(format!(
                "{} / console: {:?}\n{}",
                t.name,
                flow_of(&events, &uuid),
                daemon.log_text()
            ));
        }
        let base = format!("{}/disks/{uuid}", web.url);
        let tar_of = if t.big { format!("{d0}/Donnees/a") } else { format!("{d0}/Donnees") };
        let out = scratch.join("download");
        let timed = |f: &dyn Fn() -> u16| {
            let at = Instant::now();
            let code = f();
            (code, at.elapsed())
        };
        let mut cells = vec![
            timed(&|| curl(&[&cookies[..], &[&format!("{base}/browse")]].concat()).0),
            timed(&|| curl(&[&cookies[..], &[&format!("{base}/browse/{d0}/Donnees")]].concat()).0),
            timed(&|| {
                curl_to(&out, &[&cookies[..], &[&format!("{base}/file/{d0}/Donnees/doc.txt")]].concat())
            }),
            timed(&|| curl_to(&out, &[&cookies[..], &[&format!("{base}/tar/{tar_of}")]].concat())),
        ];
        let to = env.path(&format!("console-restored-{i}"));
        let form = format!("csrf={}&to={}&confirm=yes", curl_csrf(&web.url, &jar), s(&to));
        let restore = format!("{base}/restore/{d0}/Donnees/doc.txt");
        cells.push(timed(&|| curl(&[&cookies[..], &["-d", &form, &restore]].concat()).0));
        assert_eq!(
            curl(&[&format!("{}/login", web.url)]).0,
            200,
            "the console still answers after {}",
            t.name
        );
        let _ = env.cli(&["close", "office"]);
        disks[i].detach();
        sub.until_about_within("disk_unplugged", &uuid, Duration::from_secs(30));
        let (slowest, rss) = dog.finish();
        if slowest > Duration::from_secs(2) || rss > 100 * 1024 {
            console_failures
                .push(format!("{} / console: `status` took {slowest:?}, daemon RSS {rss} KiB", t.name));
        }
        console_cells.push(cells);
    }
    drop(web);
    daemon.signal(nix::libc::SIGTERM);
    assert_eq!(daemon.wait_exit(Duration::from_secs(15)), 0);

    // The matrix.
    println!("\nhostile-disk corpus: trick x path -> outcome (peak MiB of an engine; daemon: status, slowest `status`, RSS)");
    let daemon_paths = ["plug: backup + drill", "plug: drill only"];
    print!("{:<32}", "trick");
    for p in ENGINE_PATHS.iter().chain(&daemon_paths) {
        print!(" | {p:<22}");
    }
    println!();
    let mut failures = console_failures;
    for (i, t) in tricks.iter().enumerate() {
        print!("{:<32}", t.name);
        for (j, c) in engine_cells[i].iter().enumerate() {
            let cell = format!("{} ({:.0})", c.summary(t.entry), c.peak_mib);
            print!(" | {cell:<22}");
            match c.end {
                End::Hung => failures.push(format!("{} / {}: hung", t.name, ENGINE_PATHS[j])),
                End::Signalled(sig) => {
                    failures.push(format!("{} / {}: signal {sig}:\n{}", t.name, ENGINE_PATHS[j], c.text))
                }
                End::Exited(_) => {}
            }
            if c.peak_mib > 400.0 {
                failures.push(format!("{} / {}: peak {:.0} MiB", t.name, ENGINE_PATHS[j], c.peak_mib));
            }
            if let (End::Exited(1..), Some(entry), "verify" | "backups") = (&c.end, t.entry, ENGINE_PATHS[j])
            {
                if !c.text.contains(entry) {
                    failures.push(format!(
                        "{} / {}: the error does not name {entry}:\n{}",
                        t.name, ENGINE_PATHS[j], c.text
                    ));
                }
            }
        }
        for (j, p) in daemon_cells[i].iter().enumerate() {
            let cell = format!("{} {:.1}s {}M", p.status, p.slowest.as_secs_f64(), p.rss_kib / 1024);
            print!(" | {cell:<22}");
            if p.slowest > Duration::from_secs(2) {
                failures.push(format!("{} / {}: `status` took {:?}", t.name, daemon_paths[j], p.slowest));
            }
            if p.rss_kib > 100 * 1024 {
                failures.push(format!("{} / {}: daemon RSS {} KiB", t.name, daemon_paths[j], p.rss_kib));
            }
            if !p.flow.contains(&"safe_to_remove".to_owned()) {
                failures.push(format!("{} / {}: no safe_to_remove: {:?}", t.name, daemon_paths[j], p.flow));
            }
            if let (Some(entry), "damaged" | "failed" | "refused") = (t.entry, p.status.as_str()) {
                if !p.log.contains(entry) {
                    failures.push(format!(
                        "{} / {}: the log does not name {entry}:\n{}",
                        t.name, daemon_paths[j], p.log
                    ));
                }
            }
        }
        println!();
    }
    const CONSOLE_PATHS: [&str; 5] =
        ["web: backups", "web: folder", "web: file", "web: tar.gz", "web: restore"];
    println!("\nthe same disks opened in the web console (HTTP status, seconds):");
    print!("{:<32}", "trick");
    for p in CONSOLE_PATHS {
        print!(" | {p:<14}");
    }
    println!();
    for (i, t) in tricks.iter().enumerate() {
        print!("{:<32}", t.name);
        for (j, (code, took)) in console_cells[i].iter().enumerate() {
            print!(" | {:<14}", format!("{code} {:.1}s", took.as_secs_f64()));
            // 0: no answer in curl's time; 5xx: the console failed instead of saying what is wrong.
            if *code == 0 || *code >= 500 {
                failures.push(format!("{} / {}: HTTP {code} after {took:?}", t.name, CONSOLE_PATHS[j]));
            }
        }
        println!();
    }
    println!("\nwhat the failing and damaged cells said:");
    for (i, t) in tricks.iter().enumerate() {
        for (j, c) in engine_cells[i].iter().enumerate() {
            if !matches!(c.end, End::Exited(0)) {
                let said: Vec<String> = c
                    .text
                    .lines()
                    .filter(|l| l.contains("tetras-back"))
                    .take(2)
                    .map(|l| clip(l, 240))
                    .collect();
                println!("  {} / {}: {said:?}", t.name, ENGINE_PATHS[j]);
            }
        }
        for (j, p) in daemon_cells[i].iter().enumerate() {
            if p.status != "success" {
                let said: Vec<String> = p
                    .log
                    .lines()
                    .filter(|l| l.contains("ERROR") || l.contains("DAMAGED") || l.contains("not the disk"))
                    .take(3)
                    .map(|l| clip(l, 240))
                    .collect();
                println!("  {} / {}: {said:?}", t.name, daemon_paths[j]);
            }
        }
    }
    println!("good disk after the corpus: {good_after:?}");
    assert_eq!(fs::read_to_string(outside.join("secret")).unwrap(), "root's secret\n");
    assert_eq!(fs::read_to_string(outside.join("keep-me")).unwrap(), "must survive every prune\n");
    assert_eq!(good_after, ["success", "success"], "a good disk backs up after the hostile ones");
    assert!(failures.is_empty(), "{} failing cells:\n{}", failures.len(), failures.join("\n"));
}

/// Whatever the disk holds, `unplug` and `stop` end the work on it within
/// seconds: the restore drill reads a 64 GiB sparse file back (a long read,
/// as a slow or forged disk makes it), and is stopped with the disk.
#[test]
fn unplug_and_stop_end_a_long_drill_within_seconds() {
    let (env, data) = test_root();
    fs::write(data.join("start"), "x").unwrap();
    let big = fs::File::create(data.join("huge.img")).unwrap();
    big.set_len(64 << 30).unwrap();
    let backup = "verify_every = 0\n[mail]\nwhen = \"never\"\n\
        [[scripts]]\nname = \"backup_nocloud.sh\"\nargs = [\"--data\"]\ntimeout = \"10min\"\n";
    env.write_config(backup);
    let uuid = random_uuid();
    let mut disk = LoopDisk::create(env.root(), "ext4", &uuid, 64);
    env.cli(&["save", &uuid, "office"]).ok();
    let mut daemon = Some(env.start_daemon_with(&[("NOCLOUD_DATA", s(&data))]));
    let mut sub = Subscriber::new(env.path("events.fifo"));
    env.cli(&["register", s(&sub.path)]).ok();
    sub.until("disks");
    disk.attach();
    let events = sub.until_about_within("safe_to_remove", &uuid, Duration::from_secs(300));
    assert!(
        events.iter().any(|e| e["event"] == "backup_finished" && e["status"] == "success"),
        "{events:#?}"
    );
    disk.detach();
    sub.until_about("disk_unplugged", &uuid);

    // From now on each plug only runs the drill.
    env.write_config(
        &backup.replace("verify_every = 0", "verify_every = 1").replace("backup_nocloud.sh", "noop.sh"),
    );
    env.cli(&["reload"]).ok();
    let drill_running = |sub: &mut Subscriber| {
        let events = sub.until_about("backup_started", &uuid);
        let log = PathBuf::from(events.last().unwrap()["log"].as_str().unwrap());
        let deadline = Instant::now() + Duration::from_secs(60);
        while !fs::read_to_string(&log).unwrap_or_default().contains("[restore drill] reading") {
            assert!(
                Instant::now() < deadline,
                "the drill did not start:\n{}",
                fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(500));
        log
    };
    let drills = || -> usize {
        let out = Command::new("pgrep").args(["-f", &format!("{BIN} drill")]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).lines().count()
    };

    // Pulled out during the drill.
    let dev = disk.attach();
    let log = drill_running(&mut sub);
    assert_eq!(drills(), 1, "the drill runs in a child process");
    // A USB disk pulled out says `remove` at once; a loop device only once
    // its mount is gone, so the test says it for it.
    let pulled = Instant::now();
    sh("udevadm", &["trigger", "--action=remove", &dev]);
    disk.detach();
    let events = sub.until_about_within("backup_finished", &uuid, Duration::from_secs(10));
    let took = pulled.elapsed();
    let finished = events.iter().find(|e| e["event"] == "backup_finished").unwrap();
    assert_eq!(finished["status"], "removed", "{finished}");
    assert!(
        took < Duration::from_secs(6),
        "the unplug took {took:?}:\n{}",
        fs::read_to_string(&log).unwrap()
    );
    assert_eq!(drills(), 0, "the drill was stopped");
    println!("unplug during a drill: ended in {:.1} s", took.as_secs_f64());

    // The daemon stopped during the drill.
    disk.attach();
    drill_running(&mut sub);
    let stopping = Instant::now();
    let d = daemon.take().unwrap();
    d.signal(nix::libc::SIGTERM);
    assert_eq!(d.wait_exit(Duration::from_secs(15)), 0);
    let took = stopping.elapsed();
    assert!(took < Duration::from_secs(6), "the stop took {took:?}");
    assert_eq!(drills(), 0, "the drill was stopped with the daemon");
    println!("stop during a drill: ended in {:.1} s", took.as_secs_f64());
    disk.detach();
}
