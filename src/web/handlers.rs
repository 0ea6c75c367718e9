//! The console's routes. Every one but `/login` and the static assets
//! needs a session (`User`): pages answer 303 to `/login`, the API and the
//! event stream 401. A session lasts while its user is in the users file
//! with the password they logged in with. Saving and forgetting disks,
//! browsing, downloads and restores need an admin (`Admin`): operators get
//! 403. Every POST carries the session's CSRF token.

use std::convert::Infallible;
use std::io::{Read, Seek, SeekFrom};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, FromRequestParts, Path as UrlPath, Query, State};
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Json;
use cookie::{Cookie, SameSite};
use maud::Markup;
use rust_i18n::t;
use serde::Deserialize;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::{Stream, StreamExt};

use super::charts;
use super::link::Live;
use super::pages::{self, Ctx, Dashboard, HistoryView};
use super::session::{self, Notice, Refusal, Session, MAX_FAILURES};
use super::users::{Role, Users};
use super::App;
use crate::clients::control::client::{self, NotRunning};
use crate::clients::control::{Data, Reply, Request};
use crate::clients::events::DiskRow;
use crate::config::Config;
use crate::lang::Language;
use crate::store::history::History;
use crate::store::report::Status;
use crate::store::state::{self, State as DiskState};

const SESSION_COOKIE: &str = "tb_session";
/// The login form's own token (double-submitted: cookie and field).
const LOGIN_COOKIE: &str = "tb_login";
/// Header the page's script sends to get the dashboard's content alone.
const FRAGMENT_HEADER: &str = "x-tetras-fragment";
/// How much of a log a page shows (the whole file is a download).
const LOG_SHOWN: u64 = 1 << 20;
/// Backups per history page.
const PER_PAGE: u64 = 25;
/// How often a live event stream checks that its session may go on.
const SESSION_CHECK: Duration = Duration::from_secs(5);

type AppState = State<Arc<App>>;

impl App {
    pub fn ctx(&self, session: Option<&Session>) -> Ctx {
        Ctx {
            lang: self.lang,
            host: self.host.clone(),
            user: session.map(|s| (s.user.clone(), s.csrf.clone())),
            admin: session.is_some_and(|s| self.role(&s.user) == Role::Admin),
            notice: session.and_then(|s| self.sessions.take_notice(&s.id)),
        }
    }

    pub fn role(&self, user: &str) -> Role {
        Role::of(&self.config.web, user)
    }

    /// The session `id` if it is live and its user may still use it (in
    /// `users`, with the password they logged in with); one that may not
    /// is ended. `touch`: it is used now.
    fn session(&self, id: &str, users: &anyhow::Result<Arc<Users>>, touch: bool) -> Option<Session> {
        self.sessions.get_checked(id, touch, |s| {
            let now = users.as_ref().ok().map(|u| u.fingerprint(&s.user));
            let why = match now {
                Some(Some(f)) if session::same_token(&f, &s.fingerprint) => return true,
                Some(Some(_)) => "their password changed",
                Some(None) => "they are no longer in the users file",
                None => "the users file cannot be read",
            };
            log::warn!("web: the session of {} ended: {why}", s.user);
            false
        })
    }

    /// The users file as the middleware read it for this request.
    fn users_of(&self, extensions: &axum::http::Extensions) -> anyhow::Result<Arc<Users>> {
        match extensions.get::<Arc<Users>>() {
            Some(u) => Ok(u.clone()),
            None => Ok(Arc::new(Users::load(&self.config.web.users_file)?)),
        }
    }

    pub fn t(&self, key: &str) -> String {
        t!(key, locale = self.lang.code()).into_owned()
    }

    fn cookie(
        &self,
        name: &'static str,
        value: String,
        path: &'static str,
        max_age: Option<u64>,
    ) -> HeaderValue {
        let mut c = Cookie::build((name, value))
            .path(path)
            .http_only(true)
            .same_site(SameSite::Strict)
            .secure(self.tls);
        if let Some(secs) = max_age {
            c = c.max_age(cookie::time::Duration::seconds(secs as i64));
        }
        HeaderValue::from_str(&c.build().to_string()).expect("cookie values are hex")
    }

    /// Asks the daemon, off the async threads.
    pub async fn ask(&self, request: Request) -> anyhow::Result<Reply> {
        self.ask_waiting(request, client::REPLY_TIMEOUT).await
    }

    /// The same, waiting up to `patience` for the answer.
    pub async fn ask_waiting(&self, request: Request, patience: Duration) -> anyhow::Result<Reply> {
        let config = self.config.clone();
        blocking(move || client::send_waiting(&config, &request, patience)).await
    }
}

fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|c| c.name() == name)
        .map(|c| c.value().to_owned())
}

pub fn html(status: StatusCode, markup: Markup) -> Response {
    (status, markup).into_response()
}

/// A logged-in user.
pub struct User(Session);

impl User {
    pub fn session(&self) -> &Session {
        &self.0
    }
}

impl FromRequestParts<Arc<App>> for User {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<User, Response> {
        let users = app.users_of(&parts.extensions);
        if let Some(s) =
            cookie_value(&parts.headers, SESSION_COOKIE).and_then(|id| app.session(&id, &users, true))
        {
            return Ok(User(s));
        }
        let path = parts.uri.path();
        if path.starts_with("/api/") || path == "/events" || parts.headers.contains_key(FRAGMENT_HEADER) {
            return Err((StatusCode::UNAUTHORIZED, Json(serde_json::json!({"error": "not logged in"})))
                .into_response());
        }
        Err(Redirect::to("/login").into_response())
    }
}

/// A logged-in admin (`web.admins`): anyone else is refused, 403.
pub struct Admin(pub User);

impl FromRequestParts<Arc<App>> for Admin {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Admin, Response> {
        let user = User::from_request_parts(parts, app).await?;
        if app.role(&user.0.user) == Role::Admin {
            return Ok(Admin(user));
        }
        log::warn!(
            "web: {} (an operator) asked for {} {:?}; refused: for admins only",
            user.0.user,
            parts.method,
            parts.uri.path()
        );
        Err(forbidden(app, &user))
    }
}

/// What an operator gets for what only admins may do.
pub fn forbidden(app: &App, user: &User) -> Response {
    let text = t!("web.admins_only", locale = app.lang.code(), user = user.0.user.as_str());
    html(
        StatusCode::FORBIDDEN,
        pages::message(&app.ctx(Some(&user.0)), &app.t("web.admins_only_title"), &text),
    )
}

/// A form's fields, read whatever the content type (a missing or foreign
/// body is a form without a CSRF token, hence refused).
#[derive(Debug, Default, Deserialize)]
pub struct Form {
    csrf: Option<String>,
    username: Option<String>,
    password: Option<String>,
    pub name: Option<String>,
    pub confirm: Option<String>,
    pub to: Option<String>,
    pub overwrite: Option<String>,
}

pub fn form(body: &Bytes) -> Form {
    serde_urlencoded::from_bytes(body).unwrap_or_default()
}

/// The session's token must come with every POST: the refusal when it did not.
pub fn csrf_refusal(app: &App, user: &User, form: &Form) -> Option<Response> {
    match &form.csrf {
        Some(t) if session::same_token(t, &user.0.csrf) => None,
        _ => {
            log::warn!("web: a POST for {} came without the session's CSRF token; refused", user.0.user);
            Some(html(
                StatusCode::FORBIDDEN,
                pages::message(&app.ctx(Some(&user.0)), &app.t("web.csrf_title"), &app.t("web.csrf_text")),
            ))
        }
    }
}

pub fn no_users(app: &App, path: &str) -> Response {
    if path.starts_with("/api/") || path == "/events" {
        return (StatusCode::SERVICE_UNAVAILABLE, Json(serde_json::json!({"error": "no users"})))
            .into_response();
    }
    let file = app.config.web.users_file.display().to_string();
    html(StatusCode::SERVICE_UNAVAILABLE, pages::no_users(&app.ctx(None), &file))
}

pub fn failure(app: &App, text: &str) -> Response {
    html(StatusCode::INTERNAL_SERVER_ERROR, pages::message(&app.ctx(None), &app.t("web.error_title"), text))
}

pub fn not_found(app: &App, user: &User) -> Response {
    html(
        StatusCode::NOT_FOUND,
        pages::message(&app.ctx(Some(&user.0)), &app.t("web.not_found"), &app.t("web.not_found_text")),
    )
}

pub async fn fallback(State(app): AppState, user: User) -> Response {
    not_found(&app, &user)
}

// ---------------------------------------------------------------- login

pub async fn login_form(
    State(app): AppState,
    headers: HeaderMap,
    extensions: axum::http::Extensions,
) -> Response {
    let users = app.users_of(&extensions);
    if cookie_value(&headers, SESSION_COOKIE).and_then(|id| app.session(&id, &users, false)).is_some() {
        return Redirect::to("/").into_response();
    }
    login_page(&app, &headers, StatusCode::OK, None)
}

/// The login form. Its token is kept while the browser has one, so that
/// another tab (or a redirected favicon request) does not void the form.
fn login_page(app: &App, headers: &HeaderMap, status: StatusCode, error: Option<&str>) -> Response {
    let token = cookie_value(headers, LOGIN_COOKIE)
        .filter(|t| t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()))
        .unwrap_or_else(session::token);
    let mut res = html(status, pages::login(&app.ctx(None), &token, error));
    res.headers_mut().append(header::SET_COOKIE, app.cookie(LOGIN_COOKIE, token, "/login", Some(3600)));
    res
}

pub async fn login(
    State(app): AppState,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let ip = peer.ip();
    let f = form(&body);
    let expected = cookie_value(&headers, LOGIN_COOKIE).unwrap_or_default();
    if !f.csrf.as_deref().is_some_and(|t| !expected.is_empty() && session::same_token(t, &expected)) {
        return login_page(&app, &headers, StatusCode::FORBIDDEN, Some(&app.t("web.csrf_text")));
    }
    // The attempt counts as a failure before its password is checked: as
    // many at once as there are, no more than MAX_FAILURES get checked.
    let attempt = match app.throttle.begin(ip) {
        Ok(a) => a,
        Err(refusal) => {
            let (text, wait) = match refusal {
                Refusal::Locked(wait) => {
                    log::warn!("web: login from {ip} refused: too many failures");
                    let minutes = wait.as_secs().div_ceil(60);
                    (t!("web.throttled", locale = app.lang.code(), minutes = minutes).into_owned(), wait)
                }
                Refusal::Busy => {
                    log::warn!("web: login from {ip} refused: its other logins are being checked");
                    (app.t("web.login_busy"), Duration::from_secs(1))
                }
            };
            let mut res = login_page(&app, &headers, StatusCode::TOO_MANY_REQUESTS, Some(&text));
            res.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(wait.as_secs().max(1)));
            return res;
        }
    };
    let count = attempt.count();
    let (name, password) = (f.username.unwrap_or_default(), f.password.unwrap_or_default());
    let users_file = app.config.web.users_file.clone();
    let (who, pw) = (name.clone(), password);
    // The attempt goes with the check: it ends when bcrypt is done, even
    // if the request was abandoned meanwhile.
    let fingerprint = tokio::task::spawn_blocking(move || {
        let print = Users::load(&users_file).ok().and_then(|u| u.check(&who, &pw));
        if print.is_some() {
            attempt.succeeded();
        }
        print
    })
    .await
    .ok()
    .flatten();
    let Some(fingerprint) = fingerprint else {
        log::warn!("web: failed login as {name:?} from {ip} ({count} in a row)");
        if count >= MAX_FAILURES {
            log::warn!("web: {ip} may not log in for the next 15 minutes");
        }
        return login_page(&app, &headers, StatusCode::UNAUTHORIZED, Some(&app.t("web.login_failed")));
    };
    let s = app.sessions.create(&name, &fingerprint);
    log::info!("web: {name} ({}) logged in from {ip}", app.role(&name).as_str());
    let mut res = Redirect::to("/").into_response();
    let h = res.headers_mut();
    h.append(header::SET_COOKIE, app.cookie(SESSION_COOKIE, s.id, "/", None));
    h.append(header::SET_COOKIE, app.cookie(LOGIN_COOKIE, String::new(), "/login", Some(0)));
    res
}

pub async fn logout(State(app): AppState, user: User, body: Bytes) -> Response {
    if let Some(r) = csrf_refusal(&app, &user, &form(&body)) {
        return r;
    }
    app.sessions.remove(&user.0.id);
    log::info!("web: {} logged out", user.0.user);
    let mut res = Redirect::to("/login").into_response();
    res.headers_mut().append(header::SET_COOKIE, app.cookie(SESSION_COOKIE, String::new(), "/", Some(0)));
    res
}

// ---------------------------------------------------------------- dashboard

/// What the daemon says (or, without it, the state file).
fn gather(config: &Config) -> Dashboard {
    let status = match client::send(config, &Request::Status) {
        Ok(Reply { ok: true, data: Some(Data::Status(s)), .. }) => Some(*s),
        _ => None,
    };
    let from_daemon = status.as_ref().and_then(|_| match client::send(config, &Request::Disks) {
        Ok(Reply { ok: true, data: Some(Data::Disks { disks, unknown }), .. }) => Some((disks, unknown)),
        _ => None,
    });
    let history = History::open_read_only(&config.history_path()).ok().flatten();
    let (disks, unknown) = from_daemon.unwrap_or_else(|| {
        let rows = match DiskState::load(&config.state_path()) {
            Ok(s) => DiskRow::table(&s, history.as_ref(), |_| false),
            Err(e) => {
                log::error!("{e:#}");
                Vec::new()
            }
        };
        (rows, Vec::new())
    });
    let log_tail = match (&status, &history) {
        (Some(s), Some(h)) if s.backup.is_some() => h
            .backups(None, 1)
            .ok()
            .and_then(|rows| rows.into_iter().find(|b| b.status == Status::Running))
            .map(|b| tail_lines(&b.log, 6))
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    Dashboard { status, disks, unknown, log_tail }
}

/// The last `n` lines of a log.
fn tail_lines(path: &Path, n: usize) -> Vec<String> {
    let (text, _) = read_end(path, 8192).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].iter().map(|l| l.to_string()).collect()
}

/// The last `max` bytes of a file as text, and whether it was cut.
fn read_end(path: &Path, max: u64) -> std::io::Result<(String, bool)> {
    let mut f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    let cut = len > max;
    if cut {
        f.seek(SeekFrom::Start(len - max))?;
    }
    let mut bytes = Vec::new();
    f.take(max).read_to_end(&mut bytes)?;
    let mut text = String::from_utf8_lossy(&bytes).into_owned();
    if cut {
        // Start at a whole line.
        if let Some(i) = text.find('\n') {
            text.drain(..=i);
        }
    }
    Ok((text, cut))
}

async fn dashboard_data(app: &App) -> Dashboard {
    let config = app.config.clone();
    tokio::task::spawn_blocking(move || gather(&config)).await.unwrap_or_default()
}

pub async fn dashboard(State(app): AppState, user: User, headers: HeaderMap) -> Response {
    let data = dashboard_data(&app).await;
    if headers.contains_key(FRAGMENT_HEADER) {
        let ctx = Ctx { notice: None, ..app.ctx(Some(&user.0)) };
        return html(StatusCode::OK, pages::dashboard(&ctx, &data));
    }
    html(StatusCode::OK, pages::dashboard_page(&app.ctx(Some(&user.0)), &data))
}

/// Server-Sent Events: `daemon` (`up`/`down`) at once and whenever it
/// changes, `change` with each daemon event's JSON line.
/// The stream ends when its session does (it is checked at each event and
/// every few seconds, without counting as a use of the session).
pub async fn events(
    State(app): AppState,
    user: User,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let up = app.link.daemon_up();
    let first = tokio_stream::once(Live::Daemon(up));
    let rest = BroadcastStream::new(app.link.events.subscribe()).filter_map(Result::ok);
    let checks = tokio_stream::wrappers::IntervalStream::new(tokio::time::interval(SESSION_CHECK));
    let id = user.0.id;
    let stream = first
        .chain(rest)
        .map(Some)
        .merge(checks.map(|_| None))
        .take_while(move |_| {
            let users = Users::load(&app.config.web.users_file).map(Arc::new);
            app.session(&id, &users, false).is_some()
        })
        .filter_map(|live| {
            Some(Ok(match live? {
                Live::Daemon(up) => SseEvent::default().event("daemon").data(if up { "up" } else { "down" }),
                Live::Event(json) => SseEvent::default().event("change").data(json),
            }))
        });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

// ---------------------------------------------------------------- history

#[derive(Debug, Default, Deserialize)]
pub struct HistoryQuery {
    disk: Option<String>,
    status: Option<String>,
    page: Option<u64>,
}

/// How many of a disk's last backups its pictures show.
const CHART_ROWS: usize = 120;

/// A page of the history; with `pictures` (in that language), its charts too.
fn history_view(config: &Config, pictures: Option<Language>, q: HistoryQuery) -> anyhow::Result<HistoryView> {
    let disk = q.disk.filter(|d| !d.is_empty());
    let status = match q.status.as_deref().filter(|s| !s.is_empty()) {
        Some(s) => Some(s.parse::<Status>().map_err(anyhow::Error::msg)?),
        None => None,
    };
    let page = q.page.unwrap_or(1).max(1);
    let Some(h) = History::open_read_only(&config.history_path())? else {
        return Ok(HistoryView {
            rows: vec![],
            total: 0,
            page,
            per_page: PER_PAGE,
            disk,
            status,
            disk_names: vec![],
            charts: vec![],
            calendar: None,
        });
    };
    let (rows, total) =
        h.page(disk.as_deref(), status, ((page - 1) * PER_PAGE) as usize, PER_PAGE as usize)?;
    let disk_names = h.disk_names()?;
    // The pictures: of the disk asked for, or of every disk.
    let shown: Vec<String> = match &disk {
        Some(d) => vec![d.clone()],
        None => disk_names.clone(),
    };
    let (mut charts, mut calendar) = (Vec::new(), None);
    if let Some(lang) = pictures {
        let mut recent = Vec::new();
        for name in &shown {
            let mine = h.backups(Some(name), CHART_ROWS)?;
            charts.extend(charts::disk(lang, name, &mine));
            recent.extend(mine);
        }
        calendar = charts::calendar(lang, &shown, &recent, chrono::Local::now().date_naive());
    }
    Ok(HistoryView { rows, total, page, per_page: PER_PAGE, disk, status, disk_names, charts, calendar })
}

pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(f).await?
}

pub async fn history(State(app): AppState, user: User, Query(q): Query<HistoryQuery>) -> Response {
    let config = app.config.clone();
    let lang = app.ctx(Some(&user.0)).lang;
    match blocking(move || history_view(&config, Some(lang), q)).await {
        Ok(v) => html(StatusCode::OK, pages::history(&app.ctx(Some(&user.0)), &v)),
        Err(e) => html(
            StatusCode::BAD_REQUEST,
            pages::message(&app.ctx(Some(&user.0)), &app.t("web.error_title"), &format!("{e:#}")),
        ),
    }
}

/// A backup of the history, and whether its log is one of the daemon's.
fn find_backup(config: &Config, id: i64) -> anyhow::Result<Option<crate::store::history::BackupRow>> {
    let Some(h) = History::open_read_only(&config.history_path())? else { return Ok(None) };
    h.backup(id)
}

fn log_is_ours(config: &Config, log: &Path) -> bool {
    log.starts_with(&config.log_dir) && !log.components().any(|c| c == std::path::Component::ParentDir)
}

pub async fn backup(State(app): AppState, user: User, UrlPath(id): UrlPath<String>) -> Response {
    let Ok(id) = id.parse::<i64>() else { return not_found(&app, &user) };
    let config = app.config.clone();
    let found = blocking(move || {
        let Some(b) = find_backup(&config, id)? else { return Ok(None) };
        let log = if log_is_ours(&config, &b.log) { read_end(&b.log, LOG_SHOWN).ok() } else { None };
        Ok(Some((b, log)))
    })
    .await;
    match found {
        Ok(Some((b, log))) => {
            let (text, cut) = match &log {
                Some((t, c)) => (Some(t.as_str()), *c),
                None => (None, false),
            };
            html(StatusCode::OK, pages::backup(&app.ctx(Some(&user.0)), &b, text, cut))
        }
        Ok(None) => not_found(&app, &user),
        Err(e) => failure(&app, &format!("{e:#}")),
    }
}

/// The whole log file, as a download.
pub async fn backup_log(State(app): AppState, user: User, UrlPath(id): UrlPath<String>) -> Response {
    let Ok(id) = id.parse::<i64>() else { return not_found(&app, &user) };
    let config = app.config.clone();
    let found =
        blocking(move || Ok(find_backup(&config, id)?.filter(|b| log_is_ours(&config, &b.log)))).await;
    let Ok(Some(b)) = found else { return not_found(&app, &user) };
    let file = match tokio::fs::File::open(&b.log).await {
        Ok(f) => f,
        Err(_) => return not_found(&app, &user),
    };
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(file));
    let mut res = Response::new(body);
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    if let Some(v) = b.log.file_name().and_then(attachment) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    res
}

/// `Content-Disposition` of a download named `name` (quotes, backslashes
/// and control characters replaced).
pub fn attachment(name: &std::ffi::OsStr) -> Option<HeaderValue> {
    let safe: String = name
        .to_string_lossy()
        .chars()
        .map(|c| if c.is_control() || c == '"' || c == '\\' { '_' } else { c })
        .collect();
    HeaderValue::from_str(&format!("attachment; filename=\"{safe}\"")).ok()
}

// ---------------------------------------------------------------- API

pub async fn api_status(State(app): AppState, _user: User) -> Response {
    let status = match app.ask(Request::Status).await {
        Ok(Reply { ok: true, data: Some(Data::Status(s)), .. }) => Some(s),
        _ => None,
    };
    Json(serde_json::json!({ "daemon": status.is_some(), "status": status })).into_response()
}

pub async fn api_disks(State(app): AppState, _user: User) -> Response {
    let d = dashboard_data(&app).await;
    Json(serde_json::json!({ "daemon": d.status.is_some(), "disks": d.disks, "unknown": d.unknown }))
        .into_response()
}

pub async fn api_history(State(app): AppState, _user: User, Query(q): Query<HistoryQuery>) -> Response {
    let config = app.config.clone();
    match blocking(move || history_view(&config, None, q)).await {
        Ok(v) => Json(serde_json::json!({ "total": v.total, "page": v.page, "per_page": v.per_page, "backups": v.rows }))
            .into_response(),
        Err(e) => (StatusCode::BAD_REQUEST, Json(serde_json::json!({ "error": format!("{e:#}") }))).into_response(),
    }
}

// ---------------------------------------------------------------- actions

/// The daemon's answer as a notice for the next page.
pub fn notice_of(app: &App, reply: anyhow::Result<Reply>) -> Notice {
    match reply {
        Ok(Reply { ok: true, message, .. }) => Notice { ok: true, text: message.unwrap_or_default() },
        Ok(Reply { error, .. }) => Notice { ok: false, text: error.unwrap_or_default() },
        Err(e) if e.is::<NotRunning>() => Notice { ok: false, text: app.t("web.daemon_down_text") },
        Err(e) => Notice { ok: false, text: format!("{e:#}") },
    }
}

/// Sends `request` for `user`, leaves its outcome as the next page's
/// notice, and goes `back`.
pub async fn act(app: &App, user: &User, what: String, request: Request, back: &str) -> Response {
    let notice = notice_of(app, app.ask(request).await);
    log::info!("web: {} {what}: {}", user.0.user, notice.text);
    app.sessions.notify(&user.0.id, notice);
    Redirect::to(back).into_response()
}

/// The disk's UUID from the URL, checked; and its name when it is known.
pub fn known_name(config: &Config, uuid: &str) -> Option<String> {
    DiskState::load(&config.state_path()).ok()?.disk(uuid).map(|d| d.name.clone())
}

pub async fn save(
    State(app): AppState,
    Admin(user): Admin,
    UrlPath(uuid): UrlPath<String>,
    body: Bytes,
) -> Response {
    let f = form(&body);
    if let Some(r) = csrf_refusal(&app, &user, &f) {
        return r;
    }
    let Ok(uuid) = state::check_uuid(&uuid) else { return not_found(&app, &user) };
    let name = f.name.unwrap_or_default().trim().to_owned();
    act(&app, &user, format!("saved {uuid} as {name:?}"), Request::Save { uuid, name, adopt: false }, "/")
        .await
}

pub async fn backup_now(
    State(app): AppState,
    user: User,
    UrlPath(uuid): UrlPath<String>,
    body: Bytes,
) -> Response {
    if let Some(r) = csrf_refusal(&app, &user, &form(&body)) {
        return r;
    }
    let Some(name) = state::check_uuid(&uuid).ok().and_then(|u| known_name(&app.config, &u)) else {
        return not_found(&app, &user);
    };
    act(&app, &user, format!("asked for a backup of {name}"), Request::Backup { name }, "/").await
}

pub async fn forget(
    State(app): AppState,
    Admin(user): Admin,
    UrlPath(uuid): UrlPath<String>,
    body: Bytes,
) -> Response {
    let f = form(&body);
    if let Some(r) = csrf_refusal(&app, &user, &f) {
        return r;
    }
    let Some((uuid, name)) =
        state::check_uuid(&uuid).ok().and_then(|u| known_name(&app.config, &u).map(|n| (u, n)))
    else {
        return not_found(&app, &user);
    };
    if f.confirm.as_deref() != Some("yes") {
        return html(StatusCode::OK, pages::confirm_forget(&app.ctx(Some(&user.0)), &uuid, &name));
    }
    act(&app, &user, format!("forgot {name} ({uuid})"), Request::Forget { uuid }, "/").await
}

// ---------------------------------------------------------------- assets

pub async fn stylesheet() -> Response {
    asset("text/css; charset=utf-8", include_str!("static/app.css"))
}

pub async fn script() -> Response {
    asset("text/javascript; charset=utf-8", include_str!("static/app.js"))
}

fn asset(kind: &'static str, text: &'static str) -> Response {
    let mut res = text.into_response();
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("max-age=300"));
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_log_is_shown_from_a_whole_line_near_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("b.log");
        let text: String = (0..100_000).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&log, &text).unwrap();
        let (shown, cut) = read_end(&log, LOG_SHOWN).unwrap();
        assert!(cut && shown.len() <= LOG_SHOWN as usize);
        assert!(shown.starts_with("line ") && shown.ends_with("line 99999\n"));
        assert!(text.ends_with(&shown));
        let (all, cut) = read_end(&log, 10 << 20).unwrap();
        assert!(!cut && all == text);
        assert_eq!(tail_lines(&log, 2), ["line 99998", "line 99999"]);
    }
}
