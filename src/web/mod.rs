//! `tetras-back web`: the web console, a process of its own. It is a client
//! of the daemon like any other: commands through the control FIFO, live
//! events through a subscriber FIFO (`link`), the history read from
//! `history.sqlite` read-only. The daemon stays free of HTTP.
//!
//! May import: `backup`, `clients`, `config`, `engine`, `lang`, `store`.
//!
//! ```text
//!   browser ──HTTP(S)──> web ──control FIFO──> daemon
//!      ^  SSE /events     |  <──web-events FIFO── (events)
//!      └──────────────────┘  history.sqlite (read-only)
//! ```

mod browse;
mod charts;
mod handlers;
mod link;
mod pages;
mod session;
pub mod users;

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use axum::extract::{Request, State};
use axum::http::header::{self, HeaderValue};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;

use crate::config::Config;
use crate::lang::Language;
use link::Link;
use session::{Sessions, Throttle};

/// What every request handler shares.
pub struct App {
    pub config: Arc<Config>,
    pub lang: Language,
    pub host: String,
    /// Served over HTTPS: cookies are `Secure`.
    pub tls: bool,
    pub sessions: Sessions,
    pub throttle: Throttle,
    pub link: Link,
}

/// Runs the console until SIGTERM or SIGINT.
pub fn run(config: Config) -> Result<ExitCode> {
    let web = config.web.clone();
    // The users file is checked now, so that a file others can read stops
    // the start with its name (it is read again at each request).
    let known = users::Users::load(&web.users_file)?;
    for admin in web.admins.iter().filter(|a| !known.names().any(|n| n == a.as_str())) {
        log::warn!(
            "web.admins names {admin:?}, who is not in {} (yet): `tetras-back web-passwd {admin}` makes them",
            web.users_file.display()
        );
    }
    if let Some(tls) = &web.tls {
        for (key, path) in [("web.tls_cert", &tls.cert), ("web.tls_key", &tls.key)] {
            std::fs::File::open(path).with_context(|| format!("{key}: cannot read {}", path.display()))?;
        }
    }
    let listener = std::net::TcpListener::bind(web.listen)
        .with_context(|| format!("web.listen: cannot listen on {}", web.listen))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("web")
        .enable_all()
        .build()
        .context("cannot start the web console's runtime")?;
    let config = Arc::new(config);
    let app = Arc::new(App {
        lang: web.language,
        host: crate::backup::hostname(),
        tls: web.tls.is_some(),
        sessions: Sessions::new(web.session_timeout),
        throttle: Throttle::default(),
        link: Link::start(config.clone())?,
        config,
    });
    runtime.block_on(serve(app.clone(), listener))?;
    drop(app);
    Ok(ExitCode::SUCCESS)
}

async fn serve(app: Arc<App>, listener: std::net::TcpListener) -> Result<()> {
    let addr = listener.local_addr()?;
    let handle = axum_server::Handle::new();
    {
        let handle = handle.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let (mut term, mut int) = match (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
            {
                (Ok(t), Ok(i)) => (t, i),
                _ => return,
            };
            tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
            log::info!("stopping the web console");
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
            handle.graceful_shutdown(Some(Duration::from_secs(3)));
        });
    }
    let service = router(app.clone()).into_make_service_with_connect_info::<SocketAddr>();
    let ready = || {
        log::info!("the web console listens on {}://{addr}", if app.tls { "https" } else { "http" });
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    };
    match &app.config.web.tls {
        Some(tls) => {
            let _ = rustls::crypto::ring::default_provider().install_default();
            let rustls = axum_server::tls_rustls::RustlsConfig::from_pem_file(&tls.cert, &tls.key)
                .await
                .with_context(|| {
                    format!(
                        "web.tls_cert/web.tls_key: cannot use {} and {}",
                        tls.cert.display(),
                        tls.key.display()
                    )
                })?;
            let server = axum_server::tls_rustls::from_tcp_rustls(listener, rustls)?.handle(handle);
            ready();
            server.serve(service).await?;
        }
        None => {
            let server = axum_server::from_tcp(listener)?.handle(handle);
            ready();
            server.serve(service).await?;
        }
    }
    Ok(())
}

fn router(app: Arc<App>) -> Router {
    use handlers::*;
    Router::new()
        .route("/login", get(login_form).post(login))
        .route("/logout", post(logout))
        .route("/", get(dashboard))
        .route("/events", get(events))
        .route("/history", get(history))
        .route("/history/{id}", get(backup))
        .route("/history/{id}/log", get(backup_log))
        .route("/api/status", get(api_status))
        .route("/api/disks", get(api_disks))
        .route("/api/history", get(api_history))
        .route("/disks/{uuid}/save", post(save))
        .route("/disks/{uuid}/backup", post(backup_now))
        .route("/disks/{uuid}/forget", post(forget))
        .route("/disks/{uuid}/open", post(browse::open))
        .route("/disks/{uuid}/close", post(browse::close))
        .route("/disks/{uuid}/browse", get(browse::backups_page))
        .route("/disks/{uuid}/browse/{*path}", get(browse::folder_page))
        .route("/disks/{uuid}/file/{*path}", get(browse::file))
        .route("/disks/{uuid}/tar/{*path}", get(browse::folder_tar))
        .route("/disks/{uuid}/restore/{*path}", get(browse::restore_form).post(browse::restore))
        .route("/static/app.css", get(stylesheet))
        .route("/static/app.js", get(script))
        .route("/favicon.ico", get(|| async { axum::http::StatusCode::NO_CONTENT }))
        .fallback(fallback)
        .layer(middleware::from_fn_with_state(app.clone(), need_users))
        .layer(middleware::from_fn_with_state(app.clone(), security_headers))
        .with_state(app)
}

/// With no user in the users file, the console says how to create one and
/// serves nothing else. The file is read at each request (and handed to
/// the handlers): a user removed or given another password is logged out
/// at their next request.
async fn need_users(State(app): State<Arc<App>>, mut req: Request, next: Next) -> Response {
    if req.uri().path().starts_with("/static/") || req.uri().path() == "/favicon.ico" {
        return next.run(req).await;
    }
    match users::Users::load(&app.config.web.users_file) {
        Ok(u) if !u.is_empty() => {
            req.extensions_mut().insert(Arc::new(u));
            next.run(req).await
        }
        Ok(_) => handlers::no_users(&app, req.uri().path()),
        Err(e) => {
            log::error!("{e:#}");
            handlers::failure(&app, &format!("{e:#}"))
        }
    }
}

/// A strict Content-Security-Policy (no inline script or style), no
/// framing, no sniffing, no referrer; pages are not cached.
async fn security_headers(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let static_asset = req.uri().path().starts_with("/static/");
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; \
             form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    if !static_asset {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    if app.tls {
        h.insert(header::STRICT_TRANSPORT_SECURITY, HeaderValue::from_static("max-age=31536000"));
    }
    res
}

/// `web-passwd NAME [--delete]`: the password is asked twice on a
/// terminal, read as one line from stdin otherwise.
pub fn passwd(config: &Config, name: &str, delete: bool) -> Result<ExitCode> {
    let path: &Path = &config.web.users_file;
    users::check_name(name)?;
    if delete {
        users::delete(path, name)?;
        println!("Deleted web console user {name} from {}.", path.display());
        return Ok(ExitCode::SUCCESS);
    }
    use std::io::IsTerminal;
    let password = if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password(format!("New password for {name}: "))?;
        let again = rpassword::prompt_password("Again: ")?;
        if first != again {
            anyhow::bail!("the two passwords differ; nothing was changed");
        }
        first
    } else {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).context("cannot read the password from stdin")?;
        line.trim_end_matches(['\n', '\r']).to_owned()
    };
    let new = users::set_password(path, name, &password)?;
    println!(
        "{} web console user {name} in {}.",
        if new { "Added" } else { "Changed the password of" },
        path.display()
    );
    Ok(ExitCode::SUCCESS)
}
