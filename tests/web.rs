//! The web console in a real headless Chromium, against `tetras-back web`
//! talking to a real daemon, with real loop disks and udev events.
//! Screenshots of the main pages are kept in target/tmp/web-screenshots/.

mod common;

use std::path::Path;
use std::time::Duration;

use common::browser::{
    add_user, curl, curl_csrf, curl_login, curl_to, login_token, raw_login, Browser, WebConsole,
};
use common::disk::*;
use common::smtp::{free_port, SmtpServer};
use common::*;

const XSS: &str = "<script>alert(1)</script>";

/// A btrfs disk (its label may be long) labelled with an HTML injection.
fn hostile_disk(env: &TestEnv) -> LoopDisk {
    let uuid = random_uuid();
    let image = env.path(&format!("{uuid}.img"));
    sh("truncate", &["-s", "128M", image.to_str().unwrap()]);
    sh("mkfs.btrfs", &["-q", "-f", "-U", &uuid, "-L", XSS, image.to_str().unwrap()]);
    LoopDisk { image, uuid, dev: None }
}

fn cookie_header(value: &str) -> String {
    format!("Cookie: tb_session={value}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_in_a_real_browser() {
    require_root_and_udevd();
    let env = TestEnv::new();
    let port = free_port();
    script(
        &env.path("scripts"),
        "backup_web.sh",
        &format!("echo 'copying {XSS} and the rest'\nsleep 4\necho 'all done'"),
        0o755,
    );
    env.write_config(&format!(
        "[[scripts]]\nname = \"backup_web.sh\"\n[mail]\nwhen = \"never\"\n{}",
        WebConsole::config_with_admins(&env, port, None, &["alice"])
    ));
    let mut daemon = Some(env.start_daemon());
    // No user yet: the console says how to make one, and serves nothing else.
    let web = WebConsole::start(&env, port, false);
    let (code, page) = curl(&[&format!("{}/", web.url)]);
    assert_eq!(code, 503, "{page}");
    assert!(page.contains("web-passwd NAME"), "{page}");
    add_user(&env, "alice", "correct horse");

    // Not logged in: pages go to /login, the API and events answer 401.
    for path in ["/", "/history", "/history/1", "/history/1/log", "/nowhere", "/disks"] {
        let (code, head) = curl(&[&format!("{}{path}", web.url)]);
        assert_eq!(code, 303, "{path}: {head}");
        assert!(head.to_lowercase().contains("location: /login"), "{path}: {head}");
    }
    for path in ["/api/status", "/api/disks", "/api/history", "/events"] {
        assert_eq!(curl(&[&format!("{}{path}", web.url)]).0, 401, "{path}");
    }
    let (_, login) = curl(&[&format!("{}/login", web.url)]);
    for header in ["content-security-policy: default-src 'none'", "x-frame-options: deny"] {
        assert!(login.to_lowercase().contains(header), "{header} missing:\n{login}");
    }

    let b = Browser::start(false).await;
    // A wrong password is refused.
    b.login(&web.url, "alice", "wrong").await;
    b.wait_text(".notice.bad", "Wrong user name or password").await;
    assert_eq!(b.path().await, "/login");
    b.login(&web.url, "alice", "correct horse").await;
    b.wait_text("#daemon", "Running").await;
    assert_eq!(b.path().await, "/");
    let session = b.client.get_named_cookie("tb_session").await.unwrap();
    assert_eq!(session.http_only(), Some(true));
    assert_eq!(session.same_site(), Some(cookie::SameSite::Strict));
    assert_eq!(session.value().len(), 64, "a 256-bit id in hex");
    assert_ne!(session.secure(), Some(true), "not Secure over plain HTTP");

    // An unknown disk appears without the page being loaded again; its
    // label is text, not markup.
    b.mark().await;
    let mut disk = hostile_disk(&env);
    disk.attach();
    b.wait_text("form.unknown", &disk.uuid).await;
    assert!(b.still_marked().await, "the page was reloaded");
    // (Other tests' disks, plugged in meanwhile, are offered here too.)
    let form = format!("form.unknown[data-uuid='{}']", disk.uuid);
    assert_eq!(b.find(&format!("{form} .label")).await.text().await.unwrap(), XSS);
    let scripts = b.client.execute("return document.scripts.length;", vec![]).await.unwrap();
    assert_eq!(scripts, serde_json::json!(1), "only the console's own script");
    assert!(b.client.get_alert_text().await.is_err(), "an alert opened");
    b.shots("dashboard-unknown-disk").await;

    // Name it and save it: it moves to the known disks.
    b.type_in(&format!("{form} input[name=name]"), "office").await;
    b.click(&format!("{form} button[type=submit]")).await;
    let row = b.wait_text("#known tr", "office").await;
    assert!(row.text().await.unwrap().contains("Connected"));
    b.wait_gone(&form).await;
    b.wait_text(".notice.ok", "office").await;
    assert!(env.cli(&["disks"]).ok().stdout.contains("office"));

    // Back up now: the running script shows live, then the success.
    b.mark().await;
    b.click(&format!("tr[data-uuid='{}'] button.backup", disk.uuid)).await;
    b.wait_text("#daemon .activity", "backup_web.sh").await;
    b.wait_text("#daemon pre.tail", "copying").await;
    b.shots("dashboard-backing-up").await;
    b.mark().await;
    b.wait_text(&format!("tr[data-uuid='{}']", disk.uuid), "Succeeded").await;
    assert!(b.still_marked().await, "the success came without a reload");
    b.shots("dashboard").await;

    // The history lists it; its page shows the script's output, as text.
    b.client.goto(&format!("{}/history", web.url)).await.unwrap();
    b.wait_text("table.history td", "office").await;
    b.shots("history").await;
    b.click("table.history td a").await;
    let log = b.wait_text("pre.log", "copying").await;
    assert!(log.text().await.unwrap().contains(&format!("copying {XSS} and the rest")));
    assert!(b.client.get_alert_text().await.is_err(), "an alert opened");
    let scripts = b.client.execute("return document.scripts.length;", vec![]).await.unwrap();
    assert_eq!(scripts, serde_json::json!(1));
    b.wait_text("table.scripts", "backup_web.sh").await;
    b.shots("backup-log").await;
    let id = b.path().await.rsplit('/').next().unwrap().to_owned();
    let cookie = cookie_header(session.value());
    let (code, whole) = curl(&["-H", &cookie, &format!("{}/history/{id}/log", web.url)]);
    assert_eq!(code, 200);
    assert!(whole.contains("all done") && whole.contains("attachment"), "{whole}");

    // JSON for other tools.
    let (code, api) = curl(&["-H", &cookie, &format!("{}/api/history?disk=office", web.url)]);
    assert_eq!(code, 200);
    assert!(api.contains("\"status\":\"success\"") && api.contains("\"total\":1"), "{api}");
    let (_, api) = curl(&["-H", &cookie, &format!("{}/api/disks", web.url)]);
    assert!(api.contains("\"name\":\"office\"") && api.contains("\"daemon\":true"), "{api}");

    // A POST without, or with a wrong, CSRF token is refused and changes nothing.
    let forget = format!("{}/disks/{}/forget", web.url, disk.uuid);
    for data in ["confirm=yes", "confirm=yes&csrf=0000"] {
        let (code, page) = curl(&["-H", &cookie, "-d", data, &forget]);
        assert_eq!(code, 403, "{data}: {page}");
    }
    let (code, _) = curl(&["-H", &cookie, "-X", "POST", &format!("{}/disks/{}/backup", web.url, disk.uuid)]);
    assert_eq!(code, 403);
    assert!(env.cli(&["disks"]).ok().stdout.contains("office"), "the disk was forgotten");

    // Forget, with a confirmation.
    b.client.goto(&format!("{}/", web.url)).await.unwrap();
    b.click(&format!("tr[data-uuid='{}'] button.forget", disk.uuid)).await;
    b.wait_text("h1", "Forget the disk office?").await;
    assert!(env.cli(&["disks"]).ok().stdout.contains("office"), "forgotten before the confirmation");
    b.click("#confirm-forget").await;
    b.wait_text(".notice.ok", "office").await;
    b.wait_gone("#known tr[data-uuid]").await;
    assert!(!env.cli(&["disks"]).ok().stdout.contains("office"));
    // Still plugged in: offered to be saved again.
    b.wait_text("form.unknown", &disk.uuid).await;

    // The daemon stops: the dashboard says so; it comes back: so does the page.
    b.mark().await;
    daemon.take().unwrap().signal(nix::libc::SIGTERM);
    b.wait_text("#daemon", "not running").await;
    b.shots("dashboard-daemon-stopped").await;
    daemon = Some(env.start_daemon());
    b.wait_text("#daemon .badge.ok", "Running").await;
    assert!(b.still_marked().await, "the page recovered by reloading");

    // Logging out ends the session on the server.
    b.click("header form button").await;
    b.wait_text("h1", "Log in").await;
    assert_eq!(curl(&["-H", &cookie, &format!("{}/api/status", web.url)]).0, 401);
    b.client.clone().close().await.unwrap();
    drop(b);

    // After 10 failures the address is throttled, even with the right password.
    for _ in 0..10 {
        assert_eq!(login_by_curl(&env, &web, "alice", "nope"), 401);
    }
    assert_eq!(login_by_curl(&env, &web, "alice", "correct horse"), 429);
    let log = web.log_text();
    assert!(log.contains("failed login as \"alice\" from 127.0.0.1 (10 in a row)"), "{log}");
    assert!(log.contains("may not log in for the next 15 minutes"), "{log}");
    drop(daemon);
    disk.detach();
}

/// A login through the form by curl: the status of the POST.
fn login_by_curl(env: &TestEnv, web: &WebConsole, user: &str, password: &str) -> u16 {
    curl_login(&web.url, &env.path("curl-jar"), user, password)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_and_french() {
    require_root_and_udevd();
    let env = TestEnv::new();
    let (cert, key) = (env.path("cert.pem"), env.path("key.pem"));
    sh(
        "openssl",
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            key.to_str().unwrap(),
            "-out",
            cert.to_str().unwrap(),
        ],
    );
    let (port, smtp_port) = (free_port(), free_port());
    let smtp = SmtpServer::start(env.root(), smtp_port);
    script(&env.path("scripts"), "backup_ok.sh", "echo sauvegarde", 0o755);
    env.write_config(&format!(
        "language = \"fr\"\n[[scripts]]\nname = \"backup_ok.sh\"\n\
         [mail]\ntransport = \"smtp\"\nto = \"admin@example.org\"\n\
         [mail.smtp]\nhost = \"127.0.0.1\"\nport = {smtp_port}\ntls = \"none\"\n{}",
        WebConsole::config(&env, port, Some((&cert, &key)))
    ));
    let mut disk = LoopDisk::create(env.root(), "ext4", &random_uuid(), 32);
    env.cli(&["save", &disk.uuid, "bureau"]).ok();
    let _daemon = env.start_daemon();
    add_user(&env, "alice", "mot de passe");
    let web = WebConsole::start(&env, port, true);

    let b = Browser::start(true).await;
    b.login(&web.url, "alice", "mot de passe").await;
    b.wait_text("#daemon", "En marche").await;
    let session = b.client.get_named_cookie("tb_session").await.unwrap();
    assert_eq!(session.secure(), Some(true), "the session cookie is Secure under TLS");
    for words in ["Tableau de bord", "Disques de sauvegarde", "Non branché", "Se déconnecter (alice)"] {
        b.wait_text("body", words).await;
    }
    let (_, head) = curl(&[&format!("{}/login", web.url)]);
    assert!(head.to_lowercase().contains("strict-transport-security"), "{head}");

    // A backup: its report mail is in French, and so is the console.
    disk.attach();
    b.wait_text(&format!("tr[data-uuid='{}']", disk.uuid), "Réussie").await;
    b.shots("dashboard-fr").await;
    let mail = smtp.wait_for(1, Duration::from_secs(30)).remove(0);
    let parsed = mailparse::parse_mail(&mail).unwrap();
    let subject = parsed.headers.iter().find(|h| h.get_key() == "Subject").unwrap().get_value();
    assert!(subject.contains(": sauvegarde sur « bureau » réussie"), "{subject}");
    let body = parsed.subparts[0].get_body().unwrap();
    assert!(body.contains("Sauvegarde de ") && body.contains("Espace libre"), "{body}");
    b.client.goto(&format!("{}/history", web.url)).await.unwrap();
    b.wait_text("h1", "Historique").await;
    b.client.clone().close().await.unwrap();
    disk.detach();
}

#[test]
fn refusals_name_the_key_or_the_file() {
    let env = TestEnv::new();
    env.write_config("[web]\nlisten = \"0.0.0.0:18751\"\n");
    env.cli(&["web"]).fails_with(&["web.listen", "0.0.0.0:18751", "tls_cert"]);
    let users = env.path("web-users");
    env.write_config(&format!(
        "[web]\nlisten = \"127.0.0.1:{}\"\nusers_file = \"{}\"\n",
        free_port(),
        users.display()
    ));
    std::fs::write(&users, "alice:$2y$05$abcdefghijklmnopqrstuu5Ck0VZoJ6kYMaxmVvRr0ZVpDVW9.0Ca\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&users, std::fs::Permissions::from_mode(0o644)).unwrap();
    env.cli(&["web"]).fails_with(&[users.to_str().unwrap(), "0644", "chmod 600"]);
    let out = env.cmd(&["web-passwd", "a:b"]).output().unwrap();
    assert!(!out.status.success());
}

#[test]
fn an_htpasswd_file_works() {
    // `htpasswd -B` (apache2-utils) writes the hashes the console reads.
    let env = TestEnv::new();
    let users = env.path("web-users");
    sh("htpasswd", &["-cbB", users.to_str().unwrap(), "bob", "from htpasswd"]);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&users, std::fs::Permissions::from_mode(0o600)).unwrap();
    let port = free_port();
    env.write_config(&WebConsole::config(&env, port, None));
    let web = WebConsole::start(&env, port, false);
    assert_eq!(login_by_curl(&env, &web, "bob", "from htpasswd"), 303);
    assert_eq!(login_by_curl(&env, &web, "bob", "wrong"), 401);
    // web-passwd changes it in place, keeping the file private.
    add_user(&env, "bob", "changed");
    assert_eq!(login_by_curl(&env, &web, "bob", "changed"), 303);
    assert_eq!(std::fs::metadata(&users).unwrap().permissions().mode() & 0o777, 0o600);

    // On a terminal (script(1) gives it one) the password is asked twice.
    let on_tty = |answers: &str| {
        let cmd = format!("TETRAS_BACK_CONFIG={} {BIN} web-passwd carol", env.config_path().display());
        let mut child = std::process::Command::new("script")
            .args(["-qec", &cmd, "/dev/null"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        for line in answers.lines() {
            std::thread::sleep(Duration::from_millis(300));
            writeln!(stdin, "{line}").unwrap();
        }
        drop(stdin);
        let out = child.wait_with_output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let (ok, said) = on_tty("one\nother");
    assert!(!ok && said.contains("Again:") && said.contains("differ"), "{said}");
    assert_eq!(login_by_curl(&env, &web, "carol", "one"), 401);
    let (ok, said) = on_tty("same pw\nsame pw");
    assert!(ok && said.contains("New password for carol:"), "{said}");
    assert_eq!(login_by_curl(&env, &web, "carol", "same pw"), 303);
}

/// Getting files back in the browser: an opened disk's backups, a folder,
/// a file (whole and a range), a folder as .tar.gz, "restore to..." with
/// a confirmation; no way out of the disk through the URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_come_back_through_the_console() {
    use std::os::unix::fs::PermissionsExt;
    require_root_and_udevd();
    let env = TestEnv::new();
    let port = free_port();
    install_shipped_scripts(&env.path("scripts"));
    env.write_config(&format!(
        "[[scripts]]\nname = \"backup_nocloud.sh\"\nargs = [\"--data\"]\n[mail]\nwhen = \"never\"\n{}",
        WebConsole::config_with_admins(&env, port, None, &["alice"])
    ));
    let data = env.path("data");
    std::fs::create_dir_all(data.join("docs/sub")).unwrap();
    let report: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(data.join("docs/report.txt"), &report).unwrap();
    std::fs::write(data.join("docs/sub/notes.md"), "# notes\n").unwrap();
    std::fs::write(data.join("docs/tool"), "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(data.join("docs/tool"), std::fs::Permissions::from_mode(0o4755)).unwrap();
    std::os::unix::fs::symlink("/etc", data.join("docs/escape")).unwrap();
    let mut disk = LoopDisk::create(env.root(), "ext4", &random_uuid(), 64);
    env.cli(&["save", &disk.uuid, "office"]).ok();
    let _daemon = env.start_daemon_with(&[("NOCLOUD_DATA", data.to_str().unwrap())]);
    let mut sub = Subscriber::new(env.path("events.fifo"));
    env.cli(&["register", sub.path.to_str().unwrap()]).ok();
    add_user(&env, "alice", "pw");
    let web = WebConsole::start(&env, port, false);
    disk.attach();
    let done = sub.until_about("backup_finished", &disk.uuid).pop().unwrap();
    assert_eq!(done["status"], "success", "{done}");
    sub.until_about("safe_to_remove", &disk.uuid);

    let b = Browser::start(false).await;
    b.login(&web.url, "alice", "pw").await;
    b.wait_text("#daemon", "Running").await;
    let row = format!("tr[data-uuid='{}']", disk.uuid);
    // Not opened yet: browsing says how to open it.
    let cookie = cookie_header(b.client.get_named_cookie("tb_session").await.unwrap().value());
    let base = format!("{}/disks/{}", web.url, disk.uuid);
    assert_eq!(curl(&["-H", &cookie, &format!("{base}/browse")]).0, 409);
    b.click(&format!("{row} button.open")).await;
    sub.until_about("disk_opened", &disk.uuid);
    b.wait_text("h1", "Backups on office").await;
    let folder = b.wait_text("table.browse td a", "_").await.text().await.unwrap();
    b.wait_text("table.browse", "Complete").await;
    // Where the shipped script put the data tree inside the folder.
    let mount = env.path("mnt").join(&disk.uuid);
    let found = sh("find", &[mount.join(&folder).to_str().unwrap(), "-name", "report.txt"]);
    let rel_file = found.trim().strip_prefix(&format!("{}/", mount.display())).unwrap().to_owned();
    let rel_docs = rel_file.strip_suffix("/report.txt").unwrap().to_owned();
    b.client.goto(&format!("{base}/browse/{rel_docs}")).await.unwrap();
    b.wait_text("table.browse td.name", "report.txt").await;
    b.wait_text("table.browse", "symbolic link").await;
    b.shots("browse").await;

    // A file, whole and a range of it; a folder as .tar.gz.
    let out = env.path("downloaded");
    let code = |to: &Path, args: &[&str]| curl_to(to, &[&["-H", cookie.as_str()][..], args].concat());
    assert_eq!(code(&out, &[&format!("{base}/file/{rel_file}")]), 200);
    assert!(std::fs::read(&out).unwrap() == report, "the downloaded bytes are not the file's");
    assert_eq!(code(&out, &["-r", "1000-1999", &format!("{base}/file/{rel_file}")]), 206);
    assert!(std::fs::read(&out).unwrap() == report[1000..2000], "the range is not the file's bytes");
    assert_eq!(code(Path::new("/dev/null"), &["-r", "400000-", &format!("{base}/file/{rel_file}")]), 416);
    let tgz = env.path("docs.tar.gz");
    assert_eq!(code(&tgz, &[&format!("{base}/tar/{rel_docs}")]), 200);
    let listing = sh("tar", &["-tzvf", tgz.to_str().unwrap()]);
    for member in ["docs/report.txt", "docs/sub/notes.md", "docs/escape -> /etc", "-rwsr-xr-x"] {
        assert!(listing.contains(member), "{member} missing from GNU tar's listing:\n{listing}");
    }
    // Nothing outside the disk, nothing through a symbolic link.
    for path in [
        format!("browse/{folder}/../../../../etc"),
        format!("browse/{folder}/%2e%2e/%2e%2e"),
        format!("file/{rel_docs}/escape/passwd"),
        format!("browse/{rel_docs}/escape"),
        format!("tar/{rel_docs}/escape"),
        format!("file/{rel_docs}/../../../../../../etc/passwd"),
    ] {
        assert_eq!(code(Path::new("/dev/null"), &["--path-as-is", &format!("{base}/{path}")]), 404, "{path}");
    }

    // Restore to a folder of the server, with a confirmation.
    let to = env.path("restored");
    b.click(&format!("a.restore[href$='{}']", rel_docs.rsplit('/').next().unwrap())).await;
    b.wait_text("h1", "Restore").await;
    b.type_in("#to", to.to_str().unwrap()).await;
    b.click("main form button[type=submit]").await;
    b.wait_text(".confirm", &format!("into {}?", to.display())).await;
    assert!(!to.exists(), "restored before the confirmation");
    b.click("#confirm-restore").await;
    b.wait_text(".notice.ok", "restored").await;
    let inner = rel_docs.split_once('/').unwrap().1;
    assert_eq!(std::fs::read(to.join(inner).join("report.txt")).unwrap(), report);
    let tool = std::fs::symlink_metadata(to.join(inner).join("tool")).unwrap();
    assert_eq!(tool.permissions().mode() & 0o7777, 0o755, "a console restore makes no set-uid file");
    assert_eq!(std::fs::read_link(to.join(inner).join("escape")).unwrap(), Path::new("/etc"));
    // Outside `[web] restore_to`: refused, naming the key.
    let outside = format!("/var/tmp/tetras-console-escape-{}", std::process::id());
    b.client.goto(&format!("{base}/restore/{rel_docs}")).await.unwrap();
    b.type_in("#to", &outside).await;
    b.click("main form button[type=submit]").await;
    b.wait_text(".confirm", &outside).await;
    b.click("#confirm-restore").await;
    b.wait_text(".notice.bad", "restore_to").await;
    assert!(!Path::new(&outside).exists(), "nothing written outside the restore roots");
    // Again: what is there is refused, and said so.
    b.client.goto(&format!("{base}/restore/{rel_docs}")).await.unwrap();
    b.type_in("#to", to.to_str().unwrap()).await;
    b.click("main form button[type=submit]").await;
    b.wait_text(".confirm", &format!("into {}?", to.display())).await;
    b.click("#confirm-restore").await;
    b.wait_text(".notice.bad", "already there").await;
    assert!(web.log_text().contains("web: alice restored"), "{}", web.log_text());

    // Closing makes it safe to remove.
    b.click("nav.crumbs button").await;
    sub.until_about("safe_to_remove", &disk.uuid);
    assert_eq!(curl(&["-H", &cookie, &format!("{base}/browse")]).0, 409);
    b.client.clone().close().await.unwrap();
    disk.detach();
}

/// Logins are throttled before their password is checked: 60 wrong ones at
/// once from one address get at most 10 checked (401), the others 429;
/// once 10 have failed, a burst with the right password among wrong ones
/// does not log in.
#[test]
fn logins_at_once_are_throttled_before_they_are_checked() {
    let env = TestEnv::new();
    let port = free_port();
    env.write_config(&WebConsole::config(&env, port, None));
    add_user(&env, "alice", "right one");
    let web = WebConsole::start(&env, port, false);
    let token = login_token(&web.url);
    let burst = |passwords: Vec<String>| -> Vec<u16> {
        let start = std::sync::Arc::new(std::sync::Barrier::new(passwords.len()));
        let threads: Vec<_> = passwords
            .into_iter()
            .map(|pw| {
                let (start, token) = (start.clone(), token.clone());
                std::thread::spawn(move || {
                    start.wait();
                    raw_login(port, &token, "alice", &pw)
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    };
    let count = |codes: &[u16], code: u16| codes.iter().filter(|&&c| c == code).count();

    let codes = burst((0..60).map(|i| format!("wrong {i}")).collect());
    let (checked, refused) = (count(&codes, 401), count(&codes, 429));
    println!("60 wrong logins at once: {checked} checked (401), {refused} refused (429)");
    assert!((1..=10).contains(&checked), "{checked} passwords checked: {codes:?}");
    assert_eq!(checked + refused, 60, "{codes:?}");

    // One at a time, until the address is locked out: 10 checked in all.
    let mut more = 0;
    while raw_login(port, &token, "alice", "wrong again") == 401 {
        more += 1;
        assert!(checked + more <= 10, "more than 10 passwords were checked");
    }
    assert_eq!(checked + more, 10, "locked out before 10 failures");

    // The right password in a burst of wrong ones: refused with them.
    let mut passwords: Vec<String> = (0..50).map(|i| format!("guess {i}")).collect();
    passwords.insert(25, "right one".into());
    let codes = burst(passwords);
    assert_eq!(count(&codes, 429), 51, "{codes:?}");
    assert_eq!(raw_login(port, &token, "alice", "right one"), 429);
    let log = web.log_text();
    assert!(log.contains("failed login as \"alice\" from 127.0.0.1 (10 in a row)"), "{log}");
    assert!(!log.contains("(11 in a row)"), "{log}");
    assert!(!log.contains("alice (operator) logged in"), "{log}");
}

/// A session ends when its user is removed from the users file or given
/// another password (the event stream too); other users' sessions go on.
#[test]
fn a_removed_user_or_a_new_password_ends_the_session() {
    let env = TestEnv::new();
    let port = free_port();
    env.write_config(&WebConsole::config(&env, port, None));
    for user in ["alice", "bob", "carol"] {
        add_user(&env, user, "pw");
    }
    let web = WebConsole::start(&env, port, false);
    let jar = |user: &str| env.path(&format!("jar-{user}"));
    for user in ["alice", "bob", "carol"] {
        assert_eq!(curl_login(&web.url, &jar(user), user, "pw"), 303, "{user}");
    }
    let get =
        |user: &str, path: &str| curl(&["-b", jar(user).to_str().unwrap(), &format!("{}{path}", web.url)]);
    for user in ["alice", "bob", "carol"] {
        assert_eq!(get(user, "/").0, 200, "{user}");
    }
    // carol follows the live events meanwhile.
    let mut events = std::process::Command::new("curl")
        .args(["-sN", "--max-time", "60", "-b", jar("carol").to_str().unwrap()])
        .arg(format!("{}/events", web.url))
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();

    env.cli(&["web-passwd", "alice", "--delete"]).ok();
    let (code, head) = get("alice", "/");
    assert_eq!(code, 303, "a removed user's session still works: {head}");
    assert!(head.to_lowercase().contains("location: /login"), "{head}");
    assert_eq!(get("alice", "/api/status").0, 401);
    add_user(&env, "alice", "pw");
    assert_eq!(get("alice", "/").0, 303, "the ended session came back with the user");

    add_user(&env, "bob", "another pw");
    assert_eq!(get("bob", "/").0, 303, "the session outlived the password");
    assert_eq!(curl_login(&web.url, &jar("bob"), "bob", "pw"), 401);
    assert_eq!(curl_login(&web.url, &jar("bob"), "bob", "another pw"), 303);
    assert_eq!(get("bob", "/").0, 200);
    assert_eq!(get("carol", "/").0, 200, "another user's session ended");
    assert!(events.try_wait().unwrap().is_none(), "carol's event stream ended");

    // Her event stream ends with her (within its 5 s check).
    env.cli(&["web-passwd", "carol", "--delete"]).ok();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while events.try_wait().unwrap().is_none() {
        assert!(std::time::Instant::now() < deadline, "the event stream outlived its session");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(get("carol", "/events").0, 401);
    let log = web.log_text();
    assert!(log.contains("the session of alice ended: they are no longer in the users file"), "{log}");
    assert!(log.contains("the session of bob ended: their password changed"), "{log}");
}

/// Roles: an operator (a console user `web.admins` does not name) sees the
/// disks, backs up, opens and closes, but is not shown Save, Forget nor
/// Browse, and is refused (403) saving, forgetting, browsing, downloads and
/// restores; an admin may. Nobody gets the disk's own folder, `.tetras-back/`
/// (its identity token): 404 in browse, file, folder download and restore.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_and_admins_and_the_disks_own_folder() {
    require_root_and_udevd();
    let env = TestEnv::new();
    let port = free_port();
    script(&env.path("scripts"), "backup_note.sh", "echo kept > \"$TETRAS_BACK_MOUNT/note.txt\"", 0o755);
    env.write_config(&format!(
        "[[scripts]]\nname = \"backup_note.sh\"\n[mail]\nwhen = \"never\"\n{}",
        WebConsole::config_with_admins(&env, port, None, &["alice"])
    ));
    let mut disk = LoopDisk::create(env.root(), "ext4", &random_uuid(), 32);
    env.cli(&["save", &disk.uuid, "office"]).ok();
    let _daemon = env.start_daemon();
    let mut sub = Subscriber::new(env.path("events.fifo"));
    env.cli(&["register", sub.path.to_str().unwrap()]).ok();
    add_user(&env, "alice", "admin pw");
    add_user(&env, "bob", "operator pw");
    let web = WebConsole::start(&env, port, false);
    disk.attach();
    assert_eq!(sub.until_about("backup_finished", &disk.uuid).pop().unwrap()["status"], "success");
    sub.until_about("safe_to_remove", &disk.uuid);
    let mut stranger = LoopDisk::create(env.root(), "ext4", &random_uuid(), 32);
    stranger.attach();
    sub.until_about("unknown_disk", &stranger.uuid);

    // The operator's dashboard: Back up now and Open, no Forget; the
    // unknown disk is shown, without a way to save it.
    let b = Browser::start(false).await;
    b.login(&web.url, "bob", "operator pw").await;
    let row = format!("tr[data-uuid='{}']", disk.uuid);
    let unknown = format!(".unknown[data-uuid='{}']", stranger.uuid);
    b.wait_text(&row, "Connected").await;
    b.wait_text(&unknown, &stranger.uuid).await;
    b.find(&format!("{row} button.backup")).await;
    for absent in [
        format!("{row} button.forget"),
        format!("form{unknown}"),
        format!("{unknown} input"),
        format!("{unknown} button"),
    ] {
        assert_eq!(b.count(&absent).await, 0, "{absent} is shown");
    }
    b.shots("dashboard-operator").await;
    // Open: it stays on the dashboard, with Close and without Browse.
    b.click(&format!("{row} button.open")).await;
    sub.until_about("disk_opened", &disk.uuid);
    b.wait_text(&row, "Opened for restore").await;
    assert_eq!(b.path().await, "/");
    b.find(&format!("{row} button.close")).await;
    assert_eq!(b.count(&format!("{row} a.browse")).await, 0, "Browse is shown");
    let mount = env.path("mnt").join(&disk.uuid);
    assert!(mount.join(".tetras-back/disk-id").is_file(), "the disk has no identity token to hide");

    // What only admins may do: refused, whatever the operator sends.
    let jar = env.path("jar-bob");
    assert_eq!(curl_login(&web.url, &jar, "bob", "operator pw"), 303);
    let csrf = curl_csrf(&web.url, &jar);
    let base = format!("{}/disks/{}", web.url, disk.uuid);
    let as_bob = |args: &[&str]| curl(&[&["-b", jar.to_str().unwrap()][..], args].concat());
    for path in ["browse", "browse/x", "file/note.txt", "tar/x", "restore/x/y", "file/.tetras-back/disk-id"] {
        let (code, page) = as_bob(&[&format!("{base}/{path}")]);
        assert_eq!(code, 403, "{path}: {page}");
        assert!(page.contains("Administrators only"), "{path}: {page}");
    }
    let to = env.path("restored-by-bob");
    for (path, form) in [
        (format!("{}/disks/{}/save", web.url, stranger.uuid), format!("csrf={csrf}&name=stolen")),
        (format!("{base}/forget"), format!("csrf={csrf}&confirm=yes")),
        (format!("{base}/restore/x/y"), format!("csrf={csrf}&to={}&confirm=yes", to.display())),
    ] {
        assert_eq!(as_bob(&["-d", &form, &path]).0, 403, "{path}");
    }
    let disks = env.cli(&["disks"]).ok().stdout;
    assert!(disks.contains("office") && !disks.contains("stolen"), "{disks}");
    assert!(!to.exists());
    let log = web.log_text();
    assert!(log.contains("web: bob (an operator) asked for POST \"/disks/"), "{log}");
    // In the browser: the page says why.
    b.client.goto(&format!("{base}/browse")).await.unwrap();
    b.wait_text("h1", "Administrators only").await;
    b.wait_text("main p", "bob").await;
    b.shots("forbidden-operator").await;
    b.client.goto(&format!("{}/", web.url)).await.unwrap();
    b.click("header form button").await;
    b.wait_text("h1", "Log in").await;

    // The admin: Browse, Forget and Save are there, and work.
    b.login(&web.url, "alice", "admin pw").await;
    b.wait_text(&row, "Opened for restore").await;
    b.find(&format!("{row} button.forget")).await;
    b.find(&format!("form{unknown} input[name=name]")).await;
    b.shots("dashboard-admin").await;
    b.click(&format!("{row} a.browse")).await;
    b.wait_text("h1", "Backups on office").await;
    let jar = env.path("jar-alice");
    assert_eq!(curl_login(&web.url, &jar, "alice", "admin pw"), 303);
    let csrf = curl_csrf(&web.url, &jar);
    let as_alice = |args: &[&str]| curl(&[&["-b", jar.to_str().unwrap()][..], args].concat());
    let (code, note) = as_alice(&[&format!("{base}/file/note.txt")]);
    assert!(code == 200 && note.ends_with("kept\n"), "{code}: {note}");
    // Never the disk's own folder, by any name of it.
    for path in [
        "file/.tetras-back/disk-id",
        "file//.tetras-back/disk-id",
        "file/.TETRAS-BACK/disk-id",
        "file/.tetras-back./disk-id",
        "browse/.tetras-back",
        "browse/.tetras-back/",
        "tar/.tetras-back",
        "restore/.tetras-back/disk-id",
    ] {
        let (code, page) = as_alice(&["--path-as-is", &format!("{base}/{path}")]);
        assert_eq!(code, 404, "{path}: {page}");
    }
    let to = env.path("restored-by-alice");
    let form = format!("csrf={csrf}&to={}&confirm=yes", to.display());
    assert_eq!(as_alice(&["-d", &form, &format!("{base}/restore/.tetras-back/disk-id")]).0, 404);
    assert!(!to.exists(), "the identity token was restored");
    // The disk's root, if listed, does not show it.
    let (code, root) = as_alice(&[&format!("{base}/browse/")]);
    assert!(!root.contains("/.tetras-back") && !root.contains(">.tetras-back"), "{code}: {root}");
    let log = web.log_text();
    assert!(log.contains("alice asked for \".tetras-back/disk-id\" on disk office; refused"), "{log}");

    b.click("nav.crumbs button").await;
    sub.until_about("safe_to_remove", &disk.uuid);
    // A new password ends the session: the dashboard left open goes to the
    // login form by itself.
    b.wait_text(&row, "Connected").await;
    add_user(&env, "alice", "new admin pw");
    b.wait_text("h1", "Log in").await;
    assert_eq!(b.path().await, "/login");
    b.client.clone().close().await.unwrap();
    stranger.detach();
    disk.detach();
}

/// A backup whose source shrank (a `/home` that did not mount) is a
/// `warning`: amber in the history and on the dashboard, and its page names
/// the source and the counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shrunk_source_shows_as_a_warning() {
    require_root_and_udevd();
    let env = TestEnv::new();
    let port = free_port();
    install_shipped_scripts(&env.path("scripts"));
    env.write_config(&format!(
        "[[scripts]]\nname = \"backup_nocloud.sh\"\nargs = [\"--data\"]\n[mail]\nwhen = \"never\"\n{}",
        WebConsole::config(&env, port, None)
    ));
    let data = env.path("data");
    std::fs::create_dir_all(data.join("docs")).unwrap();
    for i in 0..4 {
        std::fs::write(data.join(format!("docs/{i}.txt")), "text\n").unwrap();
    }
    let mut disk = LoopDisk::create(env.root(), "ext4", &random_uuid(), 64);
    env.cli(&["save", &disk.uuid, "office"]).ok();
    let _daemon = env.start_daemon_with(&[("NOCLOUD_DATA", data.to_str().unwrap())]);
    let mut sub = Subscriber::new(env.path("events.fifo"));
    env.cli(&["register", sub.path.to_str().unwrap()]).ok();
    add_user(&env, "alice", "pw");
    let web = WebConsole::start(&env, port, false);
    for (emptied, status) in [(false, "success"), (true, "warning")] {
        if emptied {
            std::fs::remove_dir_all(data.join("docs")).unwrap();
            std::thread::sleep(Duration::from_millis(1100)); // a new dated folder
        }
        disk.attach();
        let done = sub.until_about("backup_finished", &disk.uuid).pop().unwrap();
        assert_eq!(done["status"], status, "{done}");
        sub.until_about("safe_to_remove", &disk.uuid);
        disk.detach();
        sub.until_about("disk_unplugged", &disk.uuid);
    }

    let b = Browser::start(false).await;
    b.login(&web.url, "alice", "pw").await;
    let badge = b.wait_text(&format!("tr[data-uuid='{}'] .badge.warn", disk.uuid), "Warning").await;
    assert!(badge.text().await.unwrap().contains("Warning"));
    b.client.goto(&format!("{}/history", web.url)).await.unwrap();
    b.wait_text("table.history .badge.warn", "Warning").await;
    b.shots("history-warning").await;
    b.click("table.history td a").await;
    let shrunk = b.wait_text("dd.warn", "files").await.text().await.unwrap();
    assert!(
        shrunk.contains(&format!("{}/: 4 files", data.display())) && shrunk.contains("0 (0 B) now"),
        "{shrunk}"
    );
    b.shots("backup-warning").await;
}

/// A backup that pulled other hosts: its page in the console lists each
/// host, how it went or why not (one pulled, one unreachable).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backup_page_lists_each_host() {
    require_root_and_udevd();
    let env = TestEnv::new();
    let port = free_port();
    install_shipped_scripts(&env.path("scripts"));
    env.cli(&["hosts", "key"]).ok();
    let public = std::fs::read_to_string(env.path("state/ssh/id_ed25519.pub")).unwrap();
    let src = env.path("web1-src");
    std::fs::create_dir_all(src.join("www")).unwrap();
    std::fs::write(src.join("www/index.html"), "<h1>hello</h1>\n").unwrap();
    let sshd =
        common::sshd::Sshd::start(&env.path("sshd"), &format!("restrict,command=\"rrsync -ro /\" {public}"));
    let closed_port = common::smtp::ClosedPort::new();
    let closed = closed_port.port;
    env.write_config(&format!(
        "[[scripts]]\nname = \"backup_hosts.sh\"\n\
         [[hosts]]\nname = \"web1\"\naddress = \"127.0.0.1\"\nport = {}\npaths = [\"{}\"]\n\
         [[hosts]]\nname = \"gone1\"\naddress = \"127.0.0.1\"\nport = {closed}\npaths = [\"/srv\"]\n\
         [mail]\nwhen = \"never\"\n{}",
        sshd.port,
        src.display(),
        WebConsole::config(&env, port, None)
    ));
    env.cli(&["hosts", "trust", "web1", "--fingerprint", &sshd.fingerprint()]).ok();
    let mut disk = LoopDisk::create(env.root(), "ext4", &random_uuid(), 64);
    env.cli(&["save", &disk.uuid, "office"]).ok();
    let _daemon = env.start_daemon();
    let mut sub = Subscriber::new(env.path("events.fifo"));
    env.cli(&["register", sub.path.to_str().unwrap()]).ok();
    add_user(&env, "alice", "pw");
    let web = WebConsole::start(&env, port, false);
    disk.attach();
    let done = sub.until_about("backup_finished", &disk.uuid).pop().unwrap();
    assert_eq!(done["status"], "failed", "one host failed: {done}");
    sub.until_about("safe_to_remove", &disk.uuid);

    let b = Browser::start(false).await;
    b.login(&web.url, "alice", "pw").await;
    b.client.goto(&format!("{}/history", web.url)).await.unwrap();
    b.wait_text("table.history .badge", "Failed").await;
    b.click("table.history td a").await;
    let pulled = b.wait_text("dd.hosts div", "web1").await.text().await.unwrap();
    assert!(pulled.contains("web1 pulled: 1 files"), "{pulled}");
    let failed = b.wait_text("dd.hosts div.error", "gone1").await.text().await.unwrap();
    assert!(failed.contains("NOT PULLED: unreachable") && failed.contains("Connection refused"), "{failed}");
    b.shots("backup-hosts").await;
}

/// A running backup on the dashboard: a progress bar that moves (read from
/// the DOM, and seen in two screenshots), then a banner that says the disk
/// can be unplugged, big enough to be read from across the room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_progress_then_says_to_unplug() {
    require_root_and_udevd();
    let env = TestEnv::new();
    let port = free_port();
    let src = env.path("src");
    stepped_tree(&src, 8);
    script(&env.path("scripts"), "stepped.sh", &stepped_script(&src, 8), 0o755);
    env.write_config(&format!(
        "[[scripts]]\nname = \"stepped.sh\"\n[mail]\nwhen = \"never\"\n{}",
        WebConsole::config(&env, port, None)
    ));
    let mut disk = LoopDisk::create(env.root(), "ext4", &random_uuid(), 64);
    env.cli(&["save", &disk.uuid, "office"]).ok();
    let _daemon = env.start_daemon();
    add_user(&env, "alice", "pw");
    let web = WebConsole::start(&env, port, false);
    let b = Browser::start(false).await;
    b.login(&web.url, "alice", "pw").await;
    b.wait_text("#daemon", "Running").await;

    disk.attach();
    let value = || async {
        let v = b
            .client
            .execute("var p = document.getElementById('backup-progress'); return p ? p.value : null;", vec![])
            .await
            .unwrap();
        v.as_f64()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let first = loop {
        if let Some(v) = value().await {
            break v;
        }
        assert!(std::time::Instant::now() < deadline, "no progress bar");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    b.shot("dashboard-progress-1-desktop").await;
    let later = loop {
        match value().await {
            Some(v) if v > first && v < 100.0 => break v,
            _ => {}
        }
        assert!(std::time::Instant::now() < deadline, "the bar stayed at {first}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    b.shots("dashboard-progress-2").await;
    let activity = b.find("#daemon .activity").await.text().await.unwrap();
    assert!(activity.contains(" of 2,400 files") && activity.contains('%'), "{activity}");
    println!("dashboard progress bar: {first} then {later}");

    let banner = b.wait_text(".unplug", "You can unplug office now").await;
    let size: f64 = b
        .client
        .execute(
            "return parseFloat(getComputedStyle(document.querySelector('.unplug .big')).fontSize);",
            vec![],
        )
        .await
        .unwrap()
        .as_f64()
        .unwrap();
    assert!(size >= 32.0, "the banner's text is {size}px");
    assert!(banner.text().await.unwrap().contains("unmounted"));
    b.shots("dashboard-unplug").await;
    disk.detach();
    b.wait_gone(".unplug").await;
}

/// The least-squares line through (time, free) points, independently of
/// the console's code; the day it reaches zero.
fn full_date(points: &[(i64, f64)]) -> chrono::NaiveDate {
    let n = points.len() as f64;
    let t0 = points[0].0 as f64;
    let mx = points.iter().map(|p| p.0 as f64 - t0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxy: f64 = points.iter().map(|p| (p.0 as f64 - t0 - mx) * (p.1 - my)).sum();
    let sxx: f64 = points.iter().map(|p| (p.0 as f64 - t0 - mx).powi(2)).sum();
    let slope = sxy / sxx;
    let zero = t0 + mx - my / slope;
    chrono::DateTime::from_timestamp(zero as i64, 0).unwrap().with_timezone(&chrono::Local).date_naive()
}

/// The history's pictures, in real Chromium, from 40 backups of one disk
/// and a rotation with a second (rows written into the daemon's own
/// database, read by the console): the projected full date is the one the
/// test computes, the calendar has one cell per day a disk was backed up;
/// desktop and phone, English and French.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_history_draws_durations_space_and_the_rotation() {
    require_root();
    let env = TestEnv::new();
    let port = free_port();
    env.write_config(&format!("[mail]\nwhen = \"never\"\n{}", WebConsole::config(&env, port, None)));
    {
        // The daemon makes the database with its schema, then goes.
        let _daemon = env.start_daemon();
    }
    let db = rusqlite::Connection::open(env.path("state/history.sqlite")).unwrap();
    let now = chrono::Local::now().timestamp();
    let gib = 1u64 << 30;
    let mut points = Vec::new();
    let mut cells = std::collections::BTreeSet::new();
    let mut add = |disk: &str, uuid: &str, days_ago: i64, status: &str, free: u64, secs: f64| {
        let started = now - days_ago * 86_400 - 3_600;
        db.execute(
            "INSERT INTO backups (uuid, disk, device, started, finished, status, duration_secs, bytes_written,
                                  files, free_before, free_after, log, disk_size)
             VALUES (?1, ?2, '/dev/sdb1', ?3, ?4, ?5, ?6, ?7, 100, ?8, ?8, '/var/log/x.log', ?9)",
            rusqlite::params![
                uuid,
                disk,
                started,
                started + secs as i64,
                status,
                secs,
                (secs * 1e6) as i64,
                free as i64,
                (500 * gib) as i64
            ],
        )
        .unwrap();
        cells.insert((disk.to_owned(), days_ago));
        (started + secs as i64, free as f64)
    };
    for i in 0..40i64 {
        // Office: every day for 40 days, 2 GiB less free a day, give or take.
        let days_ago = 40 - i;
        let free = 300 * gib - (i as u64) * 2 * gib + ((i * 7919) % 5) as u64 * (gib / 4);
        let status = match i % 13 {
            5 => "failed",
            9 => "warning",
            _ => "success",
        };
        points.push(add("office", "u-office", days_ago, status, free, 600.0 + (i * 37 % 300) as f64));
        // Home: one day in three, not back for the last week.
        if i % 3 == 0 && days_ago > 7 {
            add("home", "u-home", days_ago, "success", 400 * gib, 300.0);
        }
    }
    drop(db);
    let expected = full_date(&points);
    add_user(&env, "alice", "pw");

    for lang in ["en", "fr"] {
        let port = if lang == "en" { port } else { free_port() };
        env.write_config(&format!(
            "language = \"{lang}\"\n[mail]\nwhen = \"never\"\n{}",
            WebConsole::config(&env, port, None)
        ));
        let web = WebConsole::start(&env, port, false);
        let b = Browser::start(false).await;
        b.login(&web.url, "alice", "pw").await;
        // The login's own redirect lands first: the history is asked for after it.
        b.wait_text("#daemon", if lang == "en" { "Stopped" } else { "Arrêté" }).await;
        b.client.goto(&format!("{}/history", web.url)).await.unwrap();
        let office = b.wait_text("section.charts[data-disk=office] .full", "office").await;
        let date =
            office.find(fantoccini::Locator::Css(".when")).await.unwrap().attr("data-date").await.unwrap();
        let shown = chrono::NaiveDate::parse_from_str(&date.unwrap(), "%Y-%m-%d").unwrap();
        assert!(
            (shown - expected).num_days().abs() <= 1,
            "the console says {shown}, least squares {expected}"
        );
        let text = office.text().await.unwrap();
        assert!(text.contains(&shown.format("%Y-%m-%d").to_string()), "{text}");
        for part in ["svg title", "svg[aria-label]"] {
            assert_eq!(b.count(&format!("section.charts[data-disk=office] {part}")).await, 3, "{part}");
        }
        let drawn = b
            .client
            .execute(
                "return Array.from(document.querySelectorAll('figure.calendar svg rect'))
                   .filter(r => ['#1F7A3A', '#C98A00', '#A61B1B', '#8C95A3'].includes(r.getAttribute('fill'))).length;",
                vec![],
            )
            .await
            .unwrap();
        assert_eq!(drawn.as_u64(), Some(cells.len() as u64), "one cell per disk and day backed up");
        let words = b.find("figure.calendar figcaption").await.text().await.unwrap();
        let ago = if lang == "en" { "days ago" } else { "il y a" };
        assert!(words.contains("home") && words.contains(ago), "{words}");
        b.client.execute("document.getElementById('calendar').scrollIntoView();", vec![]).await.unwrap();
        b.shots(&format!("history-charts-{lang}")).await;
        let office = "document.querySelector('section.charts[data-disk=office]').scrollIntoView();";
        b.client.execute(office, vec![]).await.unwrap();
        b.shots(&format!("history-office-{lang}")).await;
        b.client.goto(&format!("{}/history?disk=home", web.url)).await.unwrap();
        b.wait_text("section.charts[data-disk=home] .full", "home").await;
        assert_eq!(b.count("section.charts").await, 2, "the calendar and home's pictures only");
        drop(web);
    }
}

/// A LUKS volume plugged in: the dashboard says what it is and what
/// tetras-back does with it (nothing), and offers no "Save" for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_says_a_luks_disk_is_not_opened() {
    require_root_and_udevd();
    let env = TestEnv::new();
    let port = free_port();
    env.write_config(&format!("[mail]\nwhen = \"never\"\n{}", WebConsole::config(&env, port, None)));
    let _daemon = env.start_daemon();
    add_user(&env, "alice", "pw");
    let web = WebConsole::start(&env, port, false);
    let mut disk = luks_disk(env.root(), &random_uuid());
    let b = Browser::start(false).await;
    b.login(&web.url, "alice", "pw").await;
    disk.attach();
    let row = format!(".unknown.luks[data-uuid='{}']", disk.uuid);
    let text = b.wait_text(&row, "LUKS-encrypted").await.text().await.unwrap();
    assert!(text.contains("does not open LUKS volumes"), "{text}");
    assert_eq!(b.count(&format!("form.unknown[data-uuid='{}']", disk.uuid)).await, 0, "no Save for it");
    b.shots("dashboard-luks").await;
    disk.detach();
}
