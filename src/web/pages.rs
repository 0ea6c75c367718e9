//! The console's pages, rendered on the server with maud: every value a
//! disk, a log or the daemon brings is escaped by maud's `(...)`. Words come
//! from the message catalogue in the console's language.

use std::borrow::Cow;

use chrono::{DateTime, Local};
use maud::{html, Markup, DOCTYPE};
use rust_i18n::t;

use super::session::Notice;
use crate::clients::control::StatusInfo;
use crate::clients::events::{DiskRow, UnknownRow};
use crate::engine::human;
use crate::lang::Language;
use crate::store::history::BackupRow;
use crate::store::report::{ProgressNow, Status};

/// What every page needs to know of who looks at it.
pub struct Ctx {
    pub lang: Language,
    pub host: String,
    /// The logged-in user and the session's CSRF token.
    pub user: Option<(String, String)>,
    /// The user is an admin (`web.admins`): the controls only admins may
    /// use are shown.
    pub admin: bool,
    pub notice: Option<Notice>,
}

impl Ctx {
    fn t(&self, key: &str) -> String {
        t!(key, locale = self.lang.code()).into_owned()
    }

    pub fn csrf(&self) -> Markup {
        html! {
            @if let Some((_, csrf)) = &self.user {
                input type="hidden" name="csrf" value=(csrf);
            }
        }
    }
}

/// A time as the console shows it: the server's local time, to the minute.
pub fn stamp(t: DateTime<Local>) -> String {
    t.format("%Y-%m-%d %H:%M").to_string()
}

fn when(t: Option<DateTime<Local>>, lang: Language) -> Cow<'static, str> {
    match t {
        Some(t) => stamp(t).into(),
        None => t!("web.never", locale = lang.code()),
    }
}

fn duration(secs: f64) -> String {
    humantime::format_duration(std::time::Duration::from_secs(secs.max(0.0).round() as u64)).to_string()
}

/// The colour class of a backup status (the word is always shown too).
fn status_class(s: Status) -> &'static str {
    match s {
        Status::Success => "ok",
        Status::Running => "busy",
        Status::Removed | Status::Interrupted | Status::Warning => "warn",
        Status::Failed | Status::Damaged | Status::Refused => "bad",
    }
}

pub fn status_badge(lang: Language, s: Status) -> Markup {
    html! { span class={"badge " (status_class(s))} { (s.word(lang)) } }
}

/// The whole page around `body`.
pub fn layout(ctx: &Ctx, title: &str, live: Option<&str>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang=(ctx.lang.code()) {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " — tetras-back " (ctx.host) }
                link rel="stylesheet" href="/static/app.css";
                script src="/static/app.js" defer {}
            }
            body {
                header {
                    a class="brand" href="/" { "tetras-back" }
                    span class="host" { (ctx.host) }
                    @if let Some((user, _)) = &ctx.user {
                        nav {
                            a href="/" { (ctx.t("web.dashboard")) }
                            a href="/history" { (ctx.t("web.history")) }
                            form method="post" action="/logout" class="inline" {
                                (ctx.csrf())
                                button class="link" type="submit" {
                                    (t!("web.logout", locale = ctx.lang.code(), user = user))
                                }
                            }
                        }
                    }
                }
                main {
                    @if let Some(n) = &ctx.notice {
                        p class={"notice " (if n.ok { "ok" } else { "bad" })} role="status" { (n.text) }
                    }
                    @if let Some(url) = live {
                        div id="live" data-live=(url) { (body) }
                    } @else {
                        (body)
                    }
                }
            }
        }
    }
}

pub fn login(ctx: &Ctx, csrf: &str, error: Option<&str>) -> Markup {
    let body = html! {
        section class="card narrow" {
            h1 { (ctx.t("web.login_title")) }
            @if let Some(e) = error {
                p class="notice bad" role="alert" { (e) }
            }
            form method="post" action="/login" {
                input type="hidden" name="csrf" value=(csrf);
                label for="username" { (ctx.t("web.username")) }
                input id="username" name="username" autocomplete="username" required autofocus;
                label for="password" { (ctx.t("web.password")) }
                input id="password" name="password" type="password" autocomplete="current-password" required;
                button type="submit" { (ctx.t("web.login")) }
            }
        }
    };
    layout(ctx, &ctx.t("web.login_title"), None, body)
}

pub fn no_users(ctx: &Ctx, users_file: &str) -> Markup {
    let body = html! {
        section class="card narrow" {
            h1 { (ctx.t("web.no_users_title")) }
            p { (t!("web.no_users", locale = ctx.lang.code(), file = users_file)) }
            pre { "tetras-back web-passwd NAME" }
        }
    };
    layout(ctx, &ctx.t("web.no_users_title"), None, body)
}

/// A page that only says something (errors, refusals).
pub fn message(ctx: &Ctx, title: &str, text: &str) -> Markup {
    let body = html! {
        section class="card narrow" {
            h1 { (title) }
            p { (text) }
            p { a href="/" { (ctx.t("web.back_to_dashboard")) } }
        }
    };
    layout(ctx, title, None, body)
}

/// What the dashboard shows.
#[derive(Default)]
pub struct Dashboard {
    /// `None`: the daemon is not running.
    pub status: Option<StatusInfo>,
    pub disks: Vec<DiskRow>,
    pub unknown: Vec<UnknownRow>,
    /// The last lines of the running backup's log.
    pub log_tail: Vec<String>,
}

pub fn dashboard_page(ctx: &Ctx, d: &Dashboard) -> Markup {
    layout(ctx, &ctx.t("web.dashboard"), Some("/"), dashboard(ctx, d))
}

/// The dashboard's content (also sent alone for live updates).
pub fn dashboard(ctx: &Ctx, d: &Dashboard) -> Markup {
    let l = ctx.lang.code();
    html! {
        @for disk in d.disks.iter().filter(|d| d.safe_to_remove) {
            section class="card unplug" role="status" data-uuid=(disk.uuid) {
                p class="big" { (t!("web.unplug_now", locale = l, disk = disk.name)) }
                p { (ctx.t("web.unplug_text")) }
            }
        }
        section id="daemon" class="card" {
            @match &d.status {
                None => {
                    p class="daemon down" {
                        span class="badge bad" { (ctx.t("web.daemon_down")) }
                        " " (ctx.t("web.daemon_down_text"))
                    }
                }
                Some(s) => {
                    p class="daemon up" {
                        span class="badge ok" { (ctx.t("web.daemon_up")) }
                        " " (t!("web.daemon_up_text", locale = l, pid = s.pid, since = when(Some(s.started), ctx.lang)))
                    }
                    @if let Some(b) = &s.backup {
                        div class="activity" data-running="1" {
                            h2 { (t!("web.backing_up", locale = l, disk = b.disk)) }
                            @if let Some(p) = &b.progress {
                                (progress(ctx, &b.disk, p))
                            }
                            p {
                                @if let Some(script) = &b.script {
                                    (t!("web.running_script", locale = l, script = script)) " · "
                                }
                                (ctx.t("web.elapsed")) " "
                                span data-elapsed=(b.elapsed_secs) { (duration(b.elapsed_secs as f64)) }
                            }
                            @if !d.log_tail.is_empty() {
                                pre class="log tail" { @for line in &d.log_tail { (line) "\n" } }
                            }
                        }
                    } @else {
                        p class="activity idle" { (ctx.t("web.idle")) }
                    }
                    @if !s.queue.is_empty() {
                        p { (ctx.t("web.queue")) " " (s.queue.join(", ")) }
                    }
                    @if s.mail_pending.unwrap_or(0) + s.mail_abandoned.unwrap_or(0) > 0 {
                        p class="mail" {
                            (t!("web.mail_waiting", locale = l,
                                pending = s.mail_pending.unwrap_or(0), abandoned = s.mail_abandoned.unwrap_or(0)))
                        }
                    }
                }
            }
        }
        section id="known" class="card" {
            h2 { (ctx.t("web.known_disks")) }
            @if d.disks.is_empty() {
                p { (ctx.t("web.no_known_disks")) }
            } @else {
                table class="disks" {
                    thead { tr {
                        th { (ctx.t("web.name")) } th { (ctx.t("web.state")) } th { (ctx.t("web.last_seen")) }
                        th { (ctx.t("web.last_success")) } th { (ctx.t("web.last_backup")) } th {}
                    } }
                    tbody {
                        @for disk in &d.disks {
                            (known_row(ctx, d, disk))
                        }
                    }
                }
            }
        }
        section id="unknown" class="card" {
            h2 { (ctx.t("web.unknown_disks")) }
            @if d.unknown.is_empty() {
                p { (ctx.t("web.no_unknown_disks")) }
            }
            @for u in &d.unknown {
                @let what = html! {
                    div class="what" {
                        strong class="label" { (u.label.as_deref().unwrap_or("—")) }
                        " " span class="uuid" { (u.uuid) }
                        br;
                        small { (u.fstype) " · " (u.size.map(human).unwrap_or_default()) " · " (u.device.display()) }
                    }
                };
                @if u.encrypted.is_some() {
                    div class="unknown luks" data-uuid=(u.uuid) {
                        (what)
                        p { span class="badge info" { (ctx.t("web.luks")) } " " (ctx.t("web.luks_text")) }
                    }
                } @else if ctx.admin {
                    form class="unknown" method="post" action={"/disks/" (u.uuid) "/save"} data-uuid=(u.uuid) {
                        (ctx.csrf())
                        (what)
                        label for={"name-" (u.uuid)} class="sr" { (ctx.t("web.name")) }
                        input id={"name-" (u.uuid)} name="name" data-keep required maxlength="64"
                            placeholder=(ctx.t("web.name_placeholder"));
                        button type="submit" { (ctx.t("web.save")) }
                    }
                } @else {
                    div class="unknown" data-uuid=(u.uuid) { (what) }
                }
            }
        }
    }
}

/// A running backup's progress bar, counts, phase and time left.
fn progress(ctx: &Ctx, disk: &str, p: &ProgressNow) -> Markup {
    let l = ctx.lang.code();
    html! {
        div class="progress" {
            @if let Some(percent) = p.percent {
                div class="bar" {
                    progress id="backup-progress" max="100" value=(format!("{percent:.1}"))
                        aria-label=(t!("progress.label", locale = l, disk = disk)) { (format!("{percent:.0}%")) }
                    span class="percent" { (format!("{percent:.0}%")) }
                }
            }
            @if let Some(left) = p.left(ctx.lang) {
                p class="eta" { (left) }
            }
            p class="counts" {
                (p.files(ctx.lang))
                @if let Some(total) = p.bytes_expected {
                    " · " (t!("progress.bytes_of", locale = l, done = human(p.bytes_done), total = human(total)))
                }
                " · " span class="phase" { (ctx.t(&format!("progress.phase.{}", p.phase))) }
            }
        }
    }
}

fn known_row(ctx: &Ctx, d: &Dashboard, disk: &DiskRow) -> Markup {
    let running = d.status.as_ref().and_then(|s| s.backup.as_ref()).is_some_and(|b| b.uuid == disk.uuid);
    let queued = d.status.as_ref().is_some_and(|s| s.queue.contains(&disk.name));
    let (class, word) = if running {
        ("busy", "web.state_backing_up")
    } else if queued {
        ("busy", "web.state_queued")
    } else if disk.opened {
        ("info", "web.state_opened")
    } else if disk.connected {
        ("ok", "web.state_connected")
    } else {
        ("off", "web.state_away")
    };
    let seen = match disk.last_seen {
        None if disk.connected => ctx.t("web.now"),
        t => when(t, ctx.lang).into_owned(),
    };
    html! {
        tr data-uuid=(disk.uuid) {
            td class="name" { strong { (disk.name) } br; small class="uuid" { (disk.uuid) } }
            td data-label=(ctx.t("web.state")) {
                span class={"badge " (class)} { (ctx.t(word)) }
                @if disk.held { " " span class="badge info" { (ctx.t("web.held")) } }
            }
            td data-label=(ctx.t("web.last_seen")) { (seen) }
            td data-label=(ctx.t("web.last_success")) { (when(disk.last_success, ctx.lang)) }
            td data-label=(ctx.t("web.last_backup")) {
                @match disk.last_backup {
                    Some(Status::Running) => { (status_badge(ctx.lang, Status::Running)) }
                    Some(s) => { (status_badge(ctx.lang, s)) " " small { (when(disk.last_backup_finished, ctx.lang)) } }
                    None => { (ctx.t("web.never")) }
                }
            }
            td class="actions" {
                @if disk.opened {
                    @if ctx.admin {
                        a href={"/disks/" (disk.uuid) "/browse"} class="browse" { (ctx.t("web.browse")) }
                    }
                    form method="post" action={"/disks/" (disk.uuid) "/close"} class="inline" {
                        (ctx.csrf())
                        button type="submit" class="secondary close" { (ctx.t("web.close_disk")) }
                    }
                }
                @if disk.connected && !running && !queued && !disk.opened && d.status.is_some() {
                    form method="post" action={"/disks/" (disk.uuid) "/backup"} class="inline" {
                        (ctx.csrf())
                        button type="submit" class="backup" { (ctx.t("web.backup_now")) }
                    }
                    form method="post" action={"/disks/" (disk.uuid) "/open"} class="inline" {
                        (ctx.csrf())
                        button type="submit" class="secondary open" { (ctx.t("web.open_disk")) }
                    }
                }
                @if ctx.admin {
                    form method="post" action={"/disks/" (disk.uuid) "/forget"} class="inline" {
                        (ctx.csrf())
                        button type="submit" class="danger forget" { (ctx.t("web.forget")) }
                    }
                }
            }
        }
    }
}

pub fn confirm_forget(ctx: &Ctx, uuid: &str, name: &str) -> Markup {
    let body = html! {
        section class="card narrow" {
            h1 { (t!("web.forget_title", locale = ctx.lang.code(), name = name)) }
            p { (ctx.t("web.forget_text")) }
            form method="post" action={"/disks/" (uuid) "/forget"} {
                (ctx.csrf())
                input type="hidden" name="confirm" value="yes";
                button type="submit" class="danger" id="confirm-forget" { (ctx.t("web.forget_confirm")) }
                " "
                a href="/" { (ctx.t("web.cancel")) }
            }
        }
    };
    layout(ctx, &ctx.t("web.forget"), None, body)
}

/// The history's filters and page.
pub struct HistoryView {
    pub rows: Vec<BackupRow>,
    pub total: u64,
    pub page: u64,
    pub per_page: u64,
    pub disk: Option<String>,
    pub status: Option<Status>,
    pub disk_names: Vec<String>,
    /// The pictures of the disk shown (or of each disk, when all are).
    pub charts: Vec<super::charts::DiskCharts>,
    /// The rotation calendar of the disks shown.
    pub calendar: Option<Markup>,
}

impl HistoryView {
    fn link(&self, page: u64) -> String {
        let page = page.to_string();
        let mut q = vec![("page", page.as_str())];
        if let Some(d) = &self.disk {
            q.push(("disk", d));
        }
        if let Some(s) = self.status {
            q.push(("status", s.as_str()));
        }
        format!("/history?{}", serde_urlencoded::to_string(&q).unwrap_or_default())
    }
}

pub fn history(ctx: &Ctx, v: &HistoryView) -> Markup {
    let l = ctx.lang.code();
    let pages = v.total.div_ceil(v.per_page).max(1);
    let body = html! {
        section class="card" {
            h1 { (ctx.t("web.history")) }
            form method="get" action="/history" class="filters" {
                div {
                    label for="disk" { (ctx.t("web.disk")) }
                    select id="disk" name="disk" {
                        option value="" { (ctx.t("web.all")) }
                        @for n in &v.disk_names {
                            option value=(n) selected[v.disk.as_deref() == Some(n)] { (n) }
                        }
                    }
                }
                div {
                    label for="status" { (ctx.t("web.status")) }
                    select id="status" name="status" {
                        option value="" { (ctx.t("web.all")) }
                        @for s in Status::ALL {
                            option value=(s.as_str()) selected[v.status == Some(s)] { (s.word(ctx.lang)) }
                        }
                    }
                }
                button type="submit" { (ctx.t("web.filter")) }
            }
        }
        @if let Some(calendar) = &v.calendar {
            section class="card charts" id="calendar" { (calendar) }
        }
        @for c in &v.charts {
            section class="card charts" data-disk=(c.disk) {
                h2 { (t!("chart.trends", locale = l, disk = c.disk)) }
                p class="full" {
                    @match c.full_at {
                        Some(full) => {
                            (t!("chart.full_at", locale = l, disk = c.disk, date = full.format("%Y-%m-%d")))
                            " " span class="when" data-date=(full.format("%Y-%m-%d")) {}
                        }
                        None => { (t!("chart.not_filling", locale = l, disk = c.disk)) }
                    }
                }
                div class="grid" { (c.space) (c.duration) (c.written) }
            }
        }
        section class="card" id="backups" {
            @if v.rows.is_empty() {
                p { (ctx.t("web.no_backups")) }
            } @else {
                table class="history" {
                    thead { tr {
                        th { (ctx.t("web.started")) } th { (ctx.t("web.disk")) } th { (ctx.t("web.status")) }
                        th { (ctx.t("web.duration")) } th { (ctx.t("web.written")) }
                    } }
                    tbody {
                        @for b in &v.rows {
                            tr {
                                td { a href={"/history/" (b.id)} { (when(Some(b.started), ctx.lang)) } }
                                td data-label=(ctx.t("web.disk")) { (b.disk) }
                                td data-label=(ctx.t("web.status")) { (status_badge(ctx.lang, b.status)) }
                                td data-label=(ctx.t("web.duration")) { (b.duration_secs.map(duration).unwrap_or_default()) }
                                td data-label=(ctx.t("web.written")) { (b.bytes_written.map(human).unwrap_or_default()) }
                            }
                        }
                    }
                }
            }
            nav class="pages" {
                @if v.page > 1 { a rel="prev" href=(v.link(v.page - 1)) { "← " (ctx.t("web.newer")) } }
                span { (t!("web.page_of", locale = l, page = v.page, pages = pages, total = v.total)) }
                @if v.page < pages { a rel="next" href=(v.link(v.page + 1)) { (ctx.t("web.older")) " →" } }
            }
        }
    };
    layout(ctx, &ctx.t("web.history"), None, body)
}

/// One backup and its log (`log`: its last part; `cut`: the file is longer).
pub fn backup(ctx: &Ctx, b: &BackupRow, log: Option<&str>, cut: bool) -> Markup {
    let l = ctx.lang.code();
    let body = html! {
        section class="card" {
            h1 { (t!("web.backup_title", locale = l, disk = b.disk)) " " (status_badge(ctx.lang, b.status)) }
            dl class="facts" {
                dt { (ctx.t("web.started")) } dd { (when(Some(b.started), ctx.lang)) }
                dt { (ctx.t("web.finished")) } dd { (when(b.finished, ctx.lang)) }
                dt { (ctx.t("web.duration")) } dd { (b.duration_secs.map(duration).unwrap_or_default()) }
                dt { (ctx.t("web.device")) } dd { (b.device) " · " span class="uuid" { (b.uuid) } }
                @for s in &b.shrunk {
                    dt { (ctx.t("mail.shrunk")) } dd class="warn" { (s.to_string()) }
                }
                dt { (ctx.t("web.written")) } dd {
                    (b.bytes_written.map(human).unwrap_or_default())
                    @if let Some(f) = b.files { " · " (t!("web.files", locale = l, count = f)) }
                }
                dt { (ctx.t("web.free_space")) } dd {
                    (b.free_before.map(human).unwrap_or_default()) " → " (b.free_after.map(human).unwrap_or_default())
                }
                @if !b.pruned.is_empty() {
                    dt { (ctx.t("web.pruned")) } dd { @for p in &b.pruned { (p) br; } }
                }
                @if !b.hosts.is_empty() {
                    dt { (ctx.t("mail.hosts")) } dd class="hosts" {
                        @for h in &b.hosts {
                            @let (head, more) = crate::store::report::host_lines(h, ctx.lang);
                            @let class = match h.outcome {
                                crate::engine::journal::Pulled::Done => "",
                                crate::engine::journal::Pulled::Partial => "warn",
                                crate::engine::journal::Pulled::Failed => "error",
                            };
                            div class=(class) {
                                strong { (h.name) } " " (head)
                                @for m in &more { br; small { (m) } }
                            }
                        }
                    }
                }
                @if let Some(d) = &b.drill {
                    dt { (ctx.t("mail.drill")) } dd {
                        (d.summary_in(ctx.lang))
                        @for p in &d.problems { br; small { (p) } }
                    }
                }
                @if let Some(e) = &b.error {
                    dt { (ctx.t("mail.error")) } dd class="error" { (e) }
                }
            }
            h2 { (ctx.t("mail.scripts")) }
            @if b.scripts.is_empty() {
                p { (ctx.t("mail.none_ran")) }
            } @else {
                table class="scripts" {
                    thead { tr { th { (ctx.t("web.script")) } th { (ctx.t("web.exit_code")) } th { (ctx.t("web.duration")) } th { (ctx.t("web.outcome")) } } }
                    tbody {
                        @for s in &b.scripts {
                            tr {
                                td { (s.script) }
                                td { (s.exit_code.map_or("-".to_owned(), |c| c.to_string())) }
                                td { (duration(s.duration_secs)) }
                                td { (s.outcome) }
                            }
                        }
                    }
                }
            }
            h2 id="log" { (ctx.t("web.log")) }
            p {
                a href={"/history/" (b.id) "/log"} download { (ctx.t("web.download_log")) }
                @if cut { " · " (ctx.t("web.log_cut")) }
            }
            @match log {
                Some(text) => { pre class="log" { (text) } }
                None => { p { (t!("web.log_missing", locale = l, path = b.log.display())) } }
            }
        }
    };
    layout(ctx, &t!("web.backup_title", locale = l, disk = b.disk), None, body)
}
