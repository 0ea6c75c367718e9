//! The web console under test and a real headless Chromium driving it
//! through WebDriver (Debian's chromium and chromium-driver). Both are
//! stopped by pid (the browser by its process group) when dropped.

use std::fs;
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};

use super::smtp::free_port;
use super::TestEnv;

/// Waits until something listens on `port` of loopback, or `child` exits.
fn wait_listening(port: u16, child: &mut Child, what: &str, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(st) = child.try_wait().unwrap() {
            panic!("{what} exited ({st}):\n{}", fs::read_to_string(log).unwrap_or_default());
        }
        assert!(Instant::now() < deadline, "{what} did not listen on port {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn stop(child: &mut Child, group: bool) {
    let pid = child.id() as i32;
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe { nix::libc::kill(if group { -pid } else { pid }, nix::libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(5);
    while child.try_wait().ok().flatten().is_none() {
        if Instant::now() > deadline {
            unsafe { nix::libc::kill(if group { -pid } else { pid }, nix::libc::SIGKILL) };
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.wait();
}

/// `tetras-back web` of a test env.
pub struct WebConsole {
    child: Child,
    pub port: u16,
    pub url: String,
    pub log: PathBuf,
}

impl WebConsole {
    /// The `[web]` table for `port` (TLS with the PEM files when given).
    pub fn config(env: &TestEnv, port: u16, tls: Option<(&Path, &Path)>) -> String {
        Self::config_with_admins(env, port, tls, &[])
    }

    /// The same, with these console users as its admins.
    pub fn config_with_admins(
        env: &TestEnv,
        port: u16,
        tls: Option<(&Path, &Path)>,
        admins: &[&str],
    ) -> String {
        // Restores from the console go beneath the test's root only.
        let mut s = format!(
            "[web]\nlisten = \"127.0.0.1:{port}\"\nusers_file = \"{}\"\nrestore_to = [\"{}\"]\n",
            env.path("web-users").display(),
            env.root().display()
        );
        if !admins.is_empty() {
            let names: Vec<String> = admins.iter().map(|a| format!("{a:?}")).collect();
            s.push_str(&format!("admins = [{}]\n", names.join(", ")));
        }
        if let Some((cert, key)) = tls {
            s.push_str(&format!("tls_cert = \"{}\"\ntls_key = \"{}\"\n", cert.display(), key.display()));
        }
        s
    }

    pub fn start(env: &TestEnv, port: u16, tls: bool) -> WebConsole {
        let log = env.path("web.log");
        let err = fs::OpenOptions::new().create(true).append(true).open(&log).unwrap();
        let mut child =
            env.cmd(&["web", "-v"]).stdin(Stdio::null()).stdout(Stdio::null()).stderr(err).spawn().unwrap();
        wait_listening(port, &mut child, "tetras-back web", &log);
        let url = format!("{}://127.0.0.1:{port}", if tls { "https" } else { "http" });
        WebConsole { child, port, url, log }
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for WebConsole {
    fn drop(&mut self) {
        stop(&mut self.child, false);
    }
}

/// Sets a console user's password through `web-passwd` (stdin).
pub fn add_user(env: &TestEnv, name: &str, password: &str) {
    use std::io::Write;
    let mut child =
        env.cmd(&["web-passwd", name]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "web-passwd failed: {out:?}");
}

/// An HTTP request by curl: the status code, the response headers and body.
pub fn curl(args: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-sk", "-i", "-w", "\n%{http_code}", "--max-time", "20"])
        .args(args)
        .output()
        .expect("curl (make test installs it)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.trim_end().rsplit_once('\n').unwrap_or(("", text.trim()));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

/// An HTTP request by curl whose body goes to `out`: the status code.
pub fn curl_to(out: &Path, args: &[&str]) -> u16 {
    let o = Command::new("curl")
        .args(["-sk", "--max-time", "60", "-w", "%{http_code}", "-o"])
        .arg(out)
        .args(args)
        .output()
        .expect("curl (make test installs it)");
    String::from_utf8_lossy(&o.stdout).trim().parse().unwrap_or(0)
}

/// Logs in through the form with curl (its cookies in `jar`): the status of the POST.
pub fn curl_login(url: &str, jar: &Path, user: &str, password: &str) -> u16 {
    let jar = jar.to_str().unwrap();
    let (_, page) = curl(&["-c", jar, &format!("{url}/login")]);
    let csrf =
        page.split("name=\"csrf\" value=\"").nth(1).expect(&page).split('"').next().unwrap().to_owned();
    let form = format!("csrf={csrf}&username={user}&password={}", password.replace(' ', "+"));
    curl(&["-b", jar, "-c", jar, "-d", &form, &format!("{url}/login")]).0
}

/// The login form's token (also its cookie's value, `tb_login`).
pub fn login_token(url: &str) -> String {
    let (_, page) = curl(&[&format!("{url}/login")]);
    page.split("name=\"csrf\" value=\"").nth(1).expect(&page).split('"').next().unwrap().to_owned()
}

/// A login POSTed straight over TCP (plain HTTP, so that many can be sent
/// at once without a process each): the status code of the answer.
pub fn raw_login(port: u16, token: &str, user: &str, password: &str) -> u16 {
    use std::io::{Read, Write};
    let body = format!("csrf={token}&username={user}&password={}", password.replace(' ', "+"));
    let request = format!(
        "POST /login HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nCookie: tb_login={token}\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).unwrap();
    // "HTTP/1.1 401"
    String::from_utf8_lossy(&head[9..12]).parse().unwrap()
}

/// The CSRF token of the logged-in session whose cookies are in `jar`.
pub fn curl_csrf(url: &str, jar: &Path) -> String {
    let (_, page) = curl(&["-b", jar.to_str().unwrap(), &format!("{url}/")]);
    page.split("name=\"csrf\" value=\"").nth(1).expect(&page).split('"').next().unwrap().to_owned()
}

/// Chromium driven by chromedriver.
pub struct Browser {
    pub client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// A headless Chromium with a fresh profile (`insecure`: accepts the
    /// test's self-signed certificate).
    pub async fn start(insecure: bool) -> Browser {
        let port = free_port();
        let log = std::env::temp_dir().join(format!("chromedriver-{port}.log"));
        let mut driver = Command::new("/usr/bin/chromedriver")
            .arg(format!("--port={port}"))
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(fs::File::create(&log).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .expect("/usr/bin/chromedriver (Debian: chromium-driver; `make test` installs it)");
        wait_listening(port, &mut driver, "chromedriver", &log);
        let profile = tempfile::Builder::new().prefix("tetras-chromium-").tempdir().unwrap();
        let caps = serde_json::json!({
            "acceptInsecureCerts": insecure,
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage", "--window-size=1280,900",
                    format!("--user-data-dir={}", profile.path().display()),
                ]
            }
        });
        let caps = caps.as_object().unwrap().clone().into_iter().collect();
        let mut builder = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new());
        builder.capabilities(caps);
        let client = match builder.connect(&format!("http://127.0.0.1:{port}")).await {
            Ok(c) => c,
            Err(e) => {
                stop(&mut driver, true);
                panic!("cannot start Chromium through chromedriver: {e}");
            }
        };
        Browser { client, driver, _profile: profile }
    }

    /// Saves a screenshot as `target/tmp/web-screenshots/<name>.png`.
    pub async fn shot(&self, name: &str) -> PathBuf {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("web-screenshots");
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}.png"));
        fs::write(&path, self.client.screenshot().await.unwrap()).unwrap();
        path
    }

    /// Screenshots at desktop and phone widths.
    pub async fn shots(&self, name: &str) {
        self.client.set_window_size(1280, 900).await.unwrap();
        self.shot(&format!("{name}-desktop")).await;
        self.client.set_window_size(390, 844).await.unwrap();
        self.shot(&format!("{name}-phone")).await;
        self.client.set_window_size(1280, 900).await.unwrap();
    }

    pub async fn find(&self, css: &str) -> Element {
        self.client.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("no {css}: {e}"))
    }

    /// Waits for an element matching `css` whose text contains `text`.
    pub async fn wait_text(&self, css: &str, text: &str) -> Element {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            for e in self.client.find_all(Locator::Css(css)).await.unwrap_or_default() {
                if e.text().await.unwrap_or_default().contains(text) {
                    return e;
                }
            }
            if Instant::now() > deadline {
                let page = self.client.source().await.unwrap_or_default();
                panic!("no {css} containing {text:?} after 30 s; the page:\n{page}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Clicks the element matching `css`, found again if the live page
    /// replaced it meanwhile.
    pub async fn click(&self, css: &str) {
        for _ in 0..20 {
            match self.find(css).await.click().await {
                Ok(()) => return,
                Err(e) if e.to_string().contains("stale") => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Err(e) => panic!("cannot click {css}: {e}"),
            }
        }
        panic!("{css} kept being replaced");
    }

    /// Types into the field matching `css` (found again as `click` does).
    pub async fn type_in(&self, css: &str, text: &str) {
        for _ in 0..20 {
            match self.find(css).await.send_keys(text).await {
                Ok(()) => return,
                Err(e) if e.to_string().contains("stale") => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Err(e) => panic!("cannot type into {css}: {e}"),
            }
        }
        panic!("{css} kept being replaced");
    }

    /// How many elements match `css` now.
    pub async fn count(&self, css: &str) -> usize {
        self.client.find_all(Locator::Css(css)).await.unwrap_or_else(|e| panic!("{css}: {e}")).len()
    }

    /// Waits until nothing matches `css`.
    pub async fn wait_gone(&self, css: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.client.find_all(Locator::Css(css)).await.unwrap_or_default().is_empty() {
            assert!(Instant::now() < deadline, "{css} is still there after 30 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn path(&self) -> String {
        self.client.current_url().await.unwrap().path().to_owned()
    }

    /// Logs in through the form.
    pub async fn login(&self, base: &str, user: &str, password: &str) {
        self.client.goto(&format!("{base}/login")).await.unwrap();
        self.type_in("#username", user).await;
        self.type_in("#password", password).await;
        self.click("form button[type=submit]").await;
    }

    /// Marks the page: a page loaded again loses the mark.
    pub async fn mark(&self) {
        self.client.execute("window.tetrasMark = 42;", vec![]).await.unwrap();
    }

    pub async fn still_marked(&self) -> bool {
        self.client.execute("return window.tetrasMark === 42;", vec![]).await.unwrap()
            == serde_json::json!(true)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        stop(&mut self.driver, true);
    }
}
