//! Getting files back in the web console, from an opened disk (`open`, or a
//! held disk plugged in): its backups, a tree browser of each (paged),
//! downloads of files (with ranges) and of folders as `.tar.gz` streams,
//! and "restore to..." a server path, done by the daemon with `restore`'s
//! rules once confirmed. Paths come from the URL and are resolved beneath
//! the disk's mount point: no `..`, no symbolic link followed (404). The
//! disk's own folder, `.tetras-back/` (its identity token, any key
//! material), is never listed, served nor restored (404). All of it is for
//! admins only (`Admin`); operators may open and close a disk.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use chrono::{DateTime, Local};
use maud::{html, Markup};
use rust_i18n::t;
use serde::Deserialize;

use super::handlers::{attachment, csrf_refusal, form, html, known_name, not_found, notice_of, Admin, User};
use super::pages::{layout, stamp, Ctx};
use super::App;
use crate::clients::control::{Data, Reply, Request};
use crate::engine::{archive, backups, fsx, human};
use crate::store::state;
use percent_encoding::{percent_encode, AsciiSet, NON_ALPHANUMERIC};

type AppState = State<Arc<App>>;

/// Entries of a folder per page.
const PER_PAGE: usize = 200;
/// How long a restore asked from the console may take before the page
/// stops waiting (the daemon finishes it anyway, and logs it).
const RESTORE_PATIENCE: Duration = Duration::from_secs(3600);
/// The disk's own folder at its root (`backup::identity`'s): its identity
/// token, and any key material later.
const PRIVATE: &str = ".tetras-back";

/// An opened disk: where it is mounted.
struct Opened {
    uuid: String,
    name: String,
    mount: PathBuf,
}

/// The opened disk `uuid`, or the page saying why it cannot be browsed.
async fn opened(app: &App, user: &User, uuid: &str) -> Result<Opened, Response> {
    let Some((uuid, name)) =
        state::check_uuid(uuid).ok().and_then(|u| known_name(&app.config, &u).map(|n| (u, n)))
    else {
        return Err(not_found(app, user));
    };
    match app.ask(Request::Locate { name: name.clone() }).await {
        Ok(Reply { ok: true, data: Some(Data::Located { disk }), .. }) if disk.opened => {
            Ok(Opened { uuid, name, mount: disk.mount })
        }
        _ => {
            let ctx = app.ctx(Some(user.session()));
            let title = t!("web.not_opened_title", locale = app.lang.code(), name = name).into_owned();
            Err(html(
                StatusCode::CONFLICT,
                super::pages::message(&ctx, &title, &t!("web.not_opened", locale = app.lang.code())),
            ))
        }
    }
}

/// The opened disk `uuid` and the path `path` of the URL within it, made
/// of at least `depth` names; or the page saying why not.
async fn target(
    app: &App,
    user: &User,
    uuid: &str,
    path: &str,
    depth: usize,
) -> Result<(Opened, PathBuf), Response> {
    let disk = opened(app, user, uuid).await?;
    let Some(rel) = relative(path).filter(|r| r.components().count() >= depth) else {
        return Err(not_found(app, user));
    };
    let (mount, at) = (disk.mount.clone(), rel.clone());
    let private = tokio::task::spawn_blocking(move || {
        let first = at.iter().next()?;
        let root = fsx::open_dir_strict(&mount).ok()?;
        Some(is_private(root.as_fd(), first))
    })
    .await;
    match private {
        Ok(Some(false)) => Ok((disk, rel)),
        // The root itself (nothing to hide in its name; its listing hides).
        Ok(None) if rel.as_os_str().is_empty() => Ok((disk, rel)),
        _ => {
            log::warn!("web: {} asked for {:?} on disk {}; refused", user.session().user, rel, disk.name);
            Err(not_found(app, user))
        }
    }
}

/// Whether `name`, at the disk's root `root`, is the disk's own folder:
/// by its name whatever its case (vfat, exfat and ntfs3 ignore it, and vfat
/// trailing dots), or as any other name of the same folder (a short 8.3
/// name, for one).
fn is_private(root: BorrowedFd, name: &OsStr) -> bool {
    let bytes = name.as_bytes();
    let trimmed = &bytes[..bytes.iter().rposition(|&b| b != b'.' && b != b' ').map_or(0, |i| i + 1)];
    if trimmed.eq_ignore_ascii_case(PRIVATE.as_bytes()) {
        return true;
    }
    match (fsx::lstat_at(root, OsStr::new(PRIVATE)), fsx::lstat_at(root, name)) {
        (Ok(a), Ok(b)) => a.st_dev == b.st_dev && a.st_ino == b.st_ino,
        _ => false,
    }
}

/// A path from the URL, relative, made only of plain names (`None`: refused).
fn relative(path: &str) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for part in path.split('/').filter(|p| !p.is_empty()) {
        if part == "." || part == ".." || part.contains('\0') {
            return None;
        }
        out.push(part);
    }
    // What Path sees must be what was checked.
    out.components().all(|c| matches!(c, Component::Normal(_))).then_some(out)
}

/// The directory `rel` beneath `mount`, never through a symbolic link.
fn open_dir(mount: &Path, rel: &Path) -> Option<OwnedFd> {
    let root = fsx::open_dir_strict(mount).ok()?;
    fsx::open_beneath(root.as_fd(), rel).ok()
}

/// The regular file `rel` beneath `mount`, and its size.
fn open_file(mount: &Path, rel: &Path) -> Option<(File, u64)> {
    let name = rel.file_name()?;
    let dir = open_dir(mount, rel.parent().unwrap_or(Path::new("")))?;
    let file = fsx::open_file(dir.as_fd(), name).ok()?;
    let len = file.metadata().ok()?.len();
    Some((file, len))
}

/// What a path keeps as it is in a URL: unreserved characters and `/`.
const PATH: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~').remove(b'/');

/// Percent-encodes a path for a URL (its `/` kept).
fn href(path: &Path) -> String {
    percent_encode(path.as_os_str().as_bytes(), PATH).to_string()
}

/// One entry of a folder.
struct Entry {
    name: String,
    /// The name is UTF-8 (others are listed, but a URL cannot carry them).
    linkable: bool,
    dir: bool,
    kind: &'static str,
    size: u64,
    modified: Option<DateTime<Local>>,
}

/// The entries of `dir`; at the disk's root (`root`), without its own folder.
fn list(dir: &OwnedFd, root: bool) -> std::io::Result<Vec<Entry>> {
    let mut out = Vec::new();
    for name in fsx::read_names(dir.as_fd())? {
        if root && is_private(dir.as_fd(), &name) {
            continue;
        }
        let Ok(st) = fsx::lstat_at(dir.as_fd(), &name) else { continue };
        let kind = fsx::kind(&st);
        use nix::sys::stat::SFlag;
        let (dir, word) = match kind {
            SFlag::S_IFDIR => (true, "web.kind_dir"),
            SFlag::S_IFREG => (false, "web.kind_file"),
            SFlag::S_IFLNK => (false, "web.kind_link"),
            _ => (false, "web.kind_other"),
        };
        out.push(Entry {
            name: name.to_string_lossy().into_owned(),
            linkable: name.to_str().is_some(),
            dir,
            kind: word,
            size: st.st_size as u64,
            modified: DateTime::from_timestamp(st.st_mtime, 0).map(|t| t.with_timezone(&Local)),
        });
    }
    out.sort_by(|a, b| b.dir.cmp(&a.dir).then_with(|| a.name.cmp(&b.name)));
    Ok(out)
}

/// Breadcrumbs: the disk, then each folder of `rel`.
fn crumbs(ctx: &Ctx, disk: &Opened, rel: &Path) -> Markup {
    let base = format!("/disks/{}/browse", disk.uuid);
    // Each folder of `rel` with the path that leads to it.
    let steps: Vec<(String, PathBuf)> = rel
        .iter()
        .scan(PathBuf::new(), |at, part| {
            at.push(part);
            Some((part.to_string_lossy().into_owned(), at.clone()))
        })
        .collect();
    html! {
        nav class="crumbs" {
            a href=(base) { (disk.name) }
            @for (part, at) in &steps {
                " / " a href={(base) "/" (href(at))} { (part) }
            }
            " · "
            form method="post" action={"/disks/" (disk.uuid) "/close"} class="inline" {
                (ctx.csrf())
                button type="submit" class="link dark" { (t!("web.close_disk", locale = ctx.lang.code())) }
            }
        }
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct PageQuery {
    page: Option<usize>,
}

/// `/disks/{uuid}/browse`: the disk's backups, newest first.
pub async fn backups_page(
    State(app): AppState,
    Admin(user): Admin,
    UrlPath(uuid): UrlPath<String>,
) -> Response {
    let disk = match opened(&app, &user, &uuid).await {
        Ok(d) => d,
        Err(r) => return r,
    };
    let mount = disk.mount.clone();
    let folders = tokio::task::spawn_blocking(move || backups::list(&mount)).await;
    let ctx = app.ctx(Some(user.session()));
    let l = ctx.lang.code();
    let folders = match folders {
        Ok(Ok(f)) => f,
        Ok(Err(e)) => return super::handlers::failure(&app, &format!("{e:#}")),
        Err(e) => return super::handlers::failure(&app, &e.to_string()),
    };
    let title = t!("web.backups_of", locale = l, name = disk.name).into_owned();
    let body = html! {
        section class="card" {
            h1 { (title) }
            (crumbs(&ctx, &disk, Path::new("")))
            @if folders.is_empty() { p { (t!("web.no_backups", locale = l)) } }
            table class="browse" {
                tbody {
                    @for f in &folders {
                        tr {
                            td { a href={"/disks/" (disk.uuid) "/browse/" (href(Path::new(&f.name)))} { (f.name) } }
                            td {
                                @if f.in_use { span class="badge busy" { (t!("web.being_written", locale = l)) } }
                                @else if f.complete { span class="badge ok" { (t!("web.complete", locale = l)) } }
                                @else { span class="badge warn" { (t!("web.incomplete", locale = l)) } }
                            }
                            td { (human(f.bytes)) " · " (t!("web.files", locale = l, count = f.files)) }
                            td { @for p in &f.parts { (p.name) " " } }
                        }
                    }
                }
            }
        }
    };
    html(StatusCode::OK, layout(&ctx, &title, None, body))
}

/// `/disks/{uuid}/browse/{path}`: a folder of a backup, paged.
pub async fn folder_page(
    State(app): AppState,
    Admin(user): Admin,
    UrlPath((uuid, path)): UrlPath<(String, String)>,
    Query(q): Query<PageQuery>,
) -> Response {
    let (disk, rel) = match target(&app, &user, &uuid, &path, 0).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    let (mount, at) = (disk.mount.clone(), rel.clone());
    let root = rel.as_os_str().is_empty();
    let entries = tokio::task::spawn_blocking(move || open_dir(&mount, &at).map(|d| list(&d, root))).await;
    let Ok(Some(Ok(entries))) = entries else { return not_found(&app, &user) };
    let ctx = app.ctx(Some(user.session()));
    let l = ctx.lang.code();
    let page = q.page.unwrap_or(1).max(1);
    let pages = entries.len().div_ceil(PER_PAGE).max(1);
    let shown = entries.iter().skip((page - 1) * PER_PAGE).take(PER_PAGE);
    let base = format!("/disks/{}", disk.uuid);
    let title = rel.to_string_lossy().into_owned();
    let body = html! {
        section class="card" {
            h1 { (title) }
            (crumbs(&ctx, &disk, &rel))
            p {
                a href={(base) "/tar/" (href(&rel))} class="download" { (t!("web.download_tar", locale = l)) }
                " · "
                a href={(base) "/restore/" (href(&rel))} class="restore" { (t!("web.restore", locale = l)) }
            }
            table class="browse" {
                thead { tr {
                    th { (t!("web.name", locale = l)) } th { (t!("web.kind", locale = l)) }
                    th { (t!("web.size", locale = l)) } th { (t!("web.modified", locale = l)) } th {}
                } }
                tbody {
                    @for e in shown {
                        @let p = rel.join(&e.name);
                        tr {
                            td class="name" {
                                @if !e.linkable { (e.name) }
                                @else if e.dir { a href={(base) "/browse/" (href(&p))} { (e.name) "/" } }
                                @else if e.kind == "web.kind_file" { a href={(base) "/file/" (href(&p))} download { (e.name) } }
                                @else { (e.name) }
                            }
                            td data-label=(t!("web.kind", locale = l)) { (t!(e.kind, locale = l)) }
                            @if e.dir { td {} } @else { td data-label=(t!("web.size", locale = l)) { (human(e.size)) } }
                            td data-label=(t!("web.modified", locale = l)) { (e.modified.map(stamp).unwrap_or_default()) }
                            td class="actions" {
                                @if e.linkable {
                                    a href={(base) "/restore/" (href(&p))} { (t!("web.restore", locale = l)) }
                                }
                            }
                        }
                    }
                }
            }
            @if pages > 1 {
                nav class="pages" {
                    @if page > 1 { a rel="prev" href={"?page=" (page - 1)} { "←" } }
                    span { (t!("web.page_of_entries", locale = l, page = page, pages = pages, total = entries.len())) }
                    @if page < pages { a rel="next" href={"?page=" (page + 1)} { "→" } }
                }
            }
        }
    };
    html(StatusCode::OK, layout(&ctx, &title, None, body))
}

/// `/disks/{uuid}/file/{path}`: a file, streamed; one byte range on request.
pub async fn file(
    State(app): AppState,
    Admin(user): Admin,
    UrlPath((uuid, path)): UrlPath<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let (disk, rel) = match target(&app, &user, &uuid, &path, 0).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    let (mount, at) = (disk.mount.clone(), rel.clone());
    let Ok(Some((mut file, len))) = tokio::task::spawn_blocking(move || open_file(&mount, &at)).await else {
        return not_found(&app, &user);
    };
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(|v| http_range_header::parse_range_header(v).and_then(|r| r.validate(len)));
    let (status, start, count) = match range {
        None => (StatusCode::OK, 0, len),
        Some(Ok(ranges)) if ranges.len() == 1 => {
            let r = &ranges[0];
            (StatusCode::PARTIAL_CONTENT, *r.start(), r.end() - r.start() + 1)
        }
        // Several ranges: the whole file (as the RFC allows).
        Some(Ok(_)) => (StatusCode::OK, 0, len),
        Some(Err(_)) => {
            let mut res = StatusCode::RANGE_NOT_SATISFIABLE.into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                res.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return res;
        }
    };
    if start > 0 && file.seek(SeekFrom::Start(start)).is_err() {
        return not_found(&app, &user);
    }
    log::info!("web: {} downloads {} from disk {}", user.session().user, rel.display(), disk.name);
    let reader = tokio::fs::File::from_std(file);
    use tokio::io::AsyncReadExt;
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(reader.take(count)));
    let mut res = Response::new(body);
    *res.status_mut() = status;
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(count));
    if status == StatusCode::PARTIAL_CONTENT {
        if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{}/{len}", start + count - 1)) {
            h.insert(header::CONTENT_RANGE, v);
        }
    }
    if let Some(v) = rel.file_name().and_then(attachment) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    res
}

/// Hands what the archive engine writes to the response body, chunk by chunk.
struct ToBody(tokio::sync::mpsc::Sender<std::io::Result<Bytes>>);

impl Write for ToBody {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .blocking_send(Ok(Bytes::copy_from_slice(buf)))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the download was abandoned"))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `/disks/{uuid}/tar/{path}`: a folder as a `.tar.gz`, made while it is sent.
pub async fn folder_tar(
    State(app): AppState,
    Admin(user): Admin,
    UrlPath((uuid, path)): UrlPath<(String, String)>,
) -> Response {
    let (disk, rel) = match target(&app, &user, &uuid, &path, 1).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    let (mount, at) = (disk.mount.clone(), rel.clone());
    if !matches!(tokio::task::spawn_blocking(move || open_dir(&mount, &at).is_some()).await, Ok(true)) {
        return not_found(&app, &user);
    }
    let name = rel.file_name().unwrap_or_default().to_owned();
    log::info!("web: {} downloads {} (.tar.gz) from disk {}", user.session().user, rel.display(), disk.name);
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let (top, base) = (disk.mount.join(&rel), PathBuf::from(&name));
    tokio::task::spawn_blocking(move || {
        let err = tx.clone();
        if let Err(e) = archive::stream(ToBody(tx), &top, &base, 6) {
            log::warn!("web: the .tar.gz of {} stopped: {e:#}", top.display());
            let _ = err.blocking_send(Err(std::io::Error::other(format!("{e:#}"))));
        }
    });
    let mut res = Response::new(Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx)));
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/gzip"));
    let mut file = name.clone();
    file.push(".tar.gz");
    if let Some(v) = attachment(&file) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    res
}

/// `/disks/{uuid}/restore/{path}`: where to restore it.
pub async fn restore_form(
    State(app): AppState,
    Admin(user): Admin,
    UrlPath((uuid, path)): UrlPath<(String, String)>,
) -> Response {
    let (disk, rel) = match target(&app, &user, &uuid, &path, 2).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    html(StatusCode::OK, restore_page(&app.ctx(Some(user.session())), &disk, &rel, None))
}

/// The restore form; with `confirm` (`to`, `overwrite`), the confirmation.
fn restore_page(ctx: &Ctx, disk: &Opened, rel: &Path, confirm: Option<(&str, bool)>) -> Markup {
    let l = ctx.lang.code();
    let what = rel.to_string_lossy();
    let title = t!("web.restore_title", locale = l, path = what).into_owned();
    let action = format!("/disks/{}/restore/{}", disk.uuid, href(rel));
    let body = html! {
        section class="card narrow" {
            h1 { (title) }
            p { (t!("web.restore_text", locale = l, disk = disk.name)) }
            form method="post" action=(action) {
                (ctx.csrf())
                @match confirm {
                    None => {
                        label for="to" { (t!("web.restore_to", locale = l)) }
                        input id="to" name="to" required placeholder="/srv/restored";
                        label class="check" {
                            input type="checkbox" name="overwrite" value="yes";
                            " " (t!("web.overwrite", locale = l))
                        }
                        button type="submit" { (t!("web.restore", locale = l)) }
                    }
                    Some((to, overwrite)) => {
                        p class="confirm" {
                            strong { (t!("web.restore_confirm_text", locale = l, path = what, to = to)) }
                            @if overwrite { br; (t!("web.overwrite", locale = l)) }
                        }
                        input type="hidden" name="to" value=(to);
                        @if overwrite { input type="hidden" name="overwrite" value="yes"; }
                        input type="hidden" name="confirm" value="yes";
                        button type="submit" id="confirm-restore" { (t!("web.restore_confirm", locale = l)) }
                        " " a href={"/disks/" (disk.uuid) "/browse"} { (t!("web.cancel", locale = l)) }
                    }
                }
            }
        }
    };
    layout(ctx, &title, None, body)
}

/// The restore form's answer: a confirmation first, then the daemon restores.
pub async fn restore(
    State(app): AppState,
    Admin(user): Admin,
    UrlPath((uuid, path)): UrlPath<(String, String)>,
    body: Bytes,
) -> Response {
    let f = form(&body);
    if let Some(r) = csrf_refusal(&app, &user, &f) {
        return r;
    }
    let (disk, rel) = match target(&app, &user, &uuid, &path, 2).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    let to = f.to.clone().unwrap_or_default().trim().to_owned();
    let overwrite = f.overwrite.as_deref() == Some("yes");
    let ctx = app.ctx(Some(user.session()));
    if !Path::new(&to).is_absolute() {
        let text = t!("web.restore_to_absolute", locale = app.lang.code()).into_owned();
        return html(StatusCode::BAD_REQUEST, super::pages::message(&ctx, &text, &text));
    }
    if f.confirm.as_deref() != Some("yes") {
        return html(StatusCode::OK, restore_page(&ctx, &disk, &rel, Some((&to, overwrite))));
    }
    let mut parts = rel.iter();
    let backup = parts.next().unwrap_or_default().to_string_lossy().into_owned();
    let request = Request::Restore {
        name: disk.name.clone(),
        backup,
        paths: vec![parts.collect()],
        to: PathBuf::from(&to),
        overwrite,
        user: Some(user.session().user.clone()),
    };
    let reply = app.ask_waiting(request, RESTORE_PATIENCE).await;
    let notice = notice_of(&app, reply);
    log::info!(
        "web: {} restored {} from disk {} into {to}: {}",
        user.session().user,
        rel.display(),
        disk.name,
        notice.text
    );
    app.sessions.notify(&user.session().id, notice);
    Redirect::to(&format!("/disks/{}/browse/{}", disk.uuid, href(rel.parent().unwrap_or(&rel))))
        .into_response()
}

/// `POST /disks/{uuid}/open` and `/close`.
pub async fn open(State(app): AppState, user: User, UrlPath(uuid): UrlPath<String>, body: Bytes) -> Response {
    open_or_close(app, user, uuid, body, true).await
}

pub async fn close(
    State(app): AppState,
    user: User,
    UrlPath(uuid): UrlPath<String>,
    body: Bytes,
) -> Response {
    open_or_close(app, user, uuid, body, false).await
}

async fn open_or_close(app: Arc<App>, user: User, uuid: String, body: Bytes, open: bool) -> Response {
    if let Some(r) = csrf_refusal(&app, &user, &form(&body)) {
        return r;
    }
    let Some(name) = state::check_uuid(&uuid).ok().and_then(|u| known_name(&app.config, &u)) else {
        return not_found(&app, &user);
    };
    let (what, request) = if open {
        (format!("opened {name}"), Request::Open { name })
    } else {
        (format!("closed {name}"), Request::Close { name })
    };
    // Operators open a disk for an admin to browse: they stay on the dashboard.
    let browse = open && app.role(&user.session().user) == super::users::Role::Admin;
    let back = if browse { format!("/disks/{uuid}/browse") } else { "/".to_owned() };
    super::handlers::act(&app, &user, what, request, &back).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_paths_are_plain_names_only() {
        assert_eq!(relative("a/b/c"), Some(PathBuf::from("a/b/c")));
        assert_eq!(relative("/a//b/"), Some(PathBuf::from("a/b")));
        assert_eq!(relative(""), Some(PathBuf::new()));
        for bad in ["..", "a/../b", "a/./b", "../../etc/passwd", "a/\0"] {
            assert_eq!(relative(bad), None, "{bad:?}");
        }
        assert_eq!(href(Path::new("a b/é#?")), "a%20b/%C3%A9%23%3F");
    }

    #[test]
    fn the_disks_own_folder_is_private_by_any_name() {
        let disk = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(disk.path().join(".tetras-back")).unwrap();
        std::fs::write(disk.path().join(".tetras-back/disk-id"), "secret").unwrap();
        std::fs::create_dir_all(disk.path().join("2024-01-01_00-00-00_x/.tetras-back")).unwrap();
        std::fs::write(disk.path().join("note.txt"), "kept").unwrap();
        // Another name of the same folder (what a bind mount, or vfat's
        // short names, would give).
        std::fs::create_dir(disk.path().join("alias")).unwrap();
        #[derive(Debug)]
        struct Unmount(PathBuf);
        impl Drop for Unmount {
            fn drop(&mut self) {
                let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
            }
        }
        let alias = disk.path().join("alias");
        let bind = nix::mount::mount(
            Some(&disk.path().join(".tetras-back")),
            &alias,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .map(|()| Unmount(alias));
        assert!(bind.is_ok() || !nix::unistd::geteuid().is_root(), "cannot bind-mount: {bind:?}");
        let root = fsx::open_dir_strict(disk.path()).unwrap();
        for name in [".tetras-back", ".TETRAS-BACK", ".Tetras-Back", ".tetras-back.", ".tetras-back . "] {
            assert!(is_private(root.as_fd(), OsStr::new(name)), "{name:?}");
        }
        for name in ["note.txt", "tetras-back", ".tetras-backup", "2024-01-01_00-00-00_x", "missing", ""] {
            assert!(!is_private(root.as_fd(), OsStr::new(name)), "{name:?}");
        }
        let names = |at_root| -> Vec<String> {
            let dir = open_dir(disk.path(), Path::new("")).unwrap();
            list(&dir, at_root).unwrap().into_iter().map(|e| e.name).collect()
        };
        let shown = names(true);
        assert!(!shown.contains(&".tetras-back".to_owned()), "{shown:?}");
        assert!(
            shown.contains(&"note.txt".to_owned()) && shown.contains(&"2024-01-01_00-00-00_x".to_owned())
        );
        if bind.is_ok() {
            assert!(is_private(root.as_fd(), OsStr::new("alias")), "the same folder by another name");
            assert!(!shown.contains(&"alias".to_owned()), "{shown:?}");
        }
        drop(bind);
        assert!(names(false).contains(&".tetras-back".to_owned()), "only the root hides it");
        // Within a backup, a folder of that name is a backed-up folder.
        let dated = open_dir(disk.path(), Path::new("2024-01-01_00-00-00_x")).unwrap();
        assert!(list(&dated, false).unwrap().iter().any(|e| e.name == ".tetras-back"));
    }
}
