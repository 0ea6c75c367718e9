//! Pictures of the history, drawn on the server as SVG (plotters' SVG
//! backend) and put in the page as they are: no script, no style
//! attribute, so the console's CSP stays as it is. Each picture has a
//! `<title>` and an `aria-label` that say its numbers in words, and the
//! figure's caption says what matters (the date the disk is full).
//!
//! Per disk: the duration and the bytes written of each backup over time,
//! and its free (and used) space with the straight line fitted through it
//! carried on to the day it reaches zero. For all disks: the rotation
//! calendar, one row per disk and one cell per day it was backed up,
//! coloured by how that went.

use chrono::{DateTime, Duration, Local, NaiveDate, TimeZone};
use maud::{html, Markup, PreEscaped};
use plotters::prelude::*;
use rust_i18n::t;

use crate::engine::human;
use crate::lang::Language;
use crate::store::history::BackupRow;
use crate::store::report::Status;
use crate::store::trend::{self, Line};

const WIDTH: u32 = 560;
const HEIGHT: u32 = 250;
const CALENDAR_WIDTH: u32 = 760;
const FONT: (&str, u32) = ("sans-serif", 16);
const BLUE: RGBColor = RGBColor(0x1a, 0x56, 0xa8);
const GREY: RGBColor = RGBColor(0x5c, 0x66, 0x75);
/// The calendar's colours, one per kind of outcome.
pub const SUCCESS: RGBColor = RGBColor(0x1f, 0x7a, 0x3a);
pub const WARNING: RGBColor = RGBColor(0xc9, 0x8a, 0x00);
pub const FAILED: RGBColor = RGBColor(0xa6, 0x1b, 0x1b);
pub const OTHER: RGBColor = RGBColor(0x8c, 0x95, 0xa3);

/// How many days the rotation calendar shows, at most.
pub const CALENDAR_DAYS: i64 = 56;

/// The pictures of one disk.
pub struct DiskCharts {
    pub disk: String,
    pub duration: Markup,
    pub written: Markup,
    pub space: Markup,
    /// When it is full at this rate, if its free space goes down.
    pub full_at: Option<DateTime<Local>>,
}

/// The three pictures of the disk `disk` from its backups `rows` (newest
/// first, as the history gives them); `None` with fewer than two.
pub fn disk(lang: Language, disk: &str, rows: &[BackupRow]) -> Option<DiskCharts> {
    let l = lang.code();
    let done: Vec<&BackupRow> = rows.iter().rev().filter(|r| r.finished.is_some()).collect();
    if done.len() < 2 {
        return None;
    }
    let durations: Vec<(DateTime<Local>, f64)> =
        done.iter().filter_map(|r| Some((r.started, r.duration_secs? / 60.0))).collect();
    let written: Vec<(DateTime<Local>, f64)> =
        done.iter().filter_map(|r| Some((r.started, r.bytes_written? as f64))).collect();
    let points = trend::points(rows);
    let line = Line::fit(&points);
    let full_at = trend::full_at(&points);
    let last = |v: &[(DateTime<Local>, f64)], f: &dyn Fn(f64) -> String| {
        v.last().map(|(at, y)| (at.format("%Y-%m-%d").to_string(), f(*y))).unwrap_or_default()
    };
    let (at, minutes) = last(&durations, &|m| format!("{m:.1}"));
    let duration_words = t!(
        "chart.duration_alt",
        locale = l,
        disk = disk,
        count = durations.len(),
        date = at,
        minutes = minutes
    );
    let (at, bytes) = last(&written, &|b| human(b as u64));
    let written_words =
        t!("chart.written_alt", locale = l, disk = disk, count = written.len(), date = at, bytes = bytes);
    let space_words = match (points.last(), full_at) {
        (Some(p), Some(full)) => t!(
            "chart.space_alt_full",
            locale = l,
            disk = disk,
            free = human(p.free),
            per_day = human(line.map_or(0.0, |l| l.used_per_day()).max(0.0) as u64),
            date = full.format("%Y-%m-%d")
        ),
        (Some(p), None) => t!("chart.space_alt", locale = l, disk = disk, free = human(p.free)),
        (None, _) => t!("chart.no_space", locale = l, disk = disk),
    };
    Some(DiskCharts {
        disk: disk.to_owned(),
        duration: figure(
            &t!("chart.duration", locale = l),
            &duration_words,
            series(&durations, &t!("chart.minutes", locale = l), &|m| format!("{m:.0}")),
        ),
        written: figure(
            &t!("chart.written", locale = l),
            &written_words,
            series(&written, "", &|b| human(b.max(0.0) as u64)),
        ),
        space: figure(&t!("chart.space", locale = l), &space_words, space(lang, rows, &points, line)),
        full_at,
    })
}

/// A figure: its caption, and the SVG with `words` as its title and label.
fn figure(caption: &str, words: &str, svg: Option<String>) -> Markup {
    html! {
        figure class="chart" {
            figcaption { strong { (caption) } br; small { (words) } }
            @if let Some(svg) = svg { (labelled(svg, words)) }
        }
    }
}

/// `svg` with `role="img"`, an `aria-label` and a `<title>` saying `words`.
fn labelled(svg: String, words: &str) -> Markup {
    let words = html! { (words) }.into_string();
    let Some(open) = svg.find('>') else { return PreEscaped(svg) };
    let head = svg[..open].replacen("<svg ", &format!("<svg role=\"img\" aria-label=\"{words}\" "), 1);
    PreEscaped(format!("{head}><title>{words}</title>{}", &svg[open + 1..]))
}

/// The day of `at`, as the x of the charts (days since the Unix epoch).
fn x(at: DateTime<Local>) -> f64 {
    at.timestamp() as f64 / 86_400.0
}

fn day_label(x: &f64) -> String {
    Local
        .timestamp_opt((x * 86_400.0) as i64, 0)
        .single()
        .map(|d| d.format("%d/%m").to_string())
        .unwrap_or_default()
}

/// Points joined by a line, over time.
fn series(values: &[(DateTime<Local>, f64)], unit: &str, label: &dyn Fn(f64) -> String) -> Option<String> {
    let (first, last) = (values.first()?.0, values.last()?.0);
    let top = values.iter().map(|v| v.1).fold(0.0, f64::max).max(1e-9) * 1.15;
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (WIDTH, HEIGHT)).into_drawing_area();
        let mut chart = over_time(&root, span(first, last), top, unit, label)?;
        let at = |(t, y): &(DateTime<Local>, f64)| (x(*t), *y);
        chart.draw_series(LineSeries::new(values.iter().map(at), BLUE.stroke_width(2))).ok()?;
        chart.draw_series(values.iter().map(|v| Circle::new(at(v), 3, BLUE.filled()))).ok()?;
        root.present().ok()?;
    }
    Some(out)
}

type TimeChart<'a, 'b> = ChartContext<
    'a,
    SVGBackend<'b>,
    Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
>;

/// A white chart of days (`x`, a range) against values from 0 to `top`,
/// said by `label` in `unit`, with its axes drawn.
fn over_time<'a, 'b>(
    root: &'a DrawingArea<SVGBackend<'b>, plotters::coord::Shift>,
    (x0, x1): (f64, f64),
    top: f64,
    unit: &str,
    label: &dyn Fn(f64) -> String,
) -> Option<TimeChart<'a, 'b>> {
    root.fill(&WHITE).ok()?;
    let mut chart = ChartBuilder::on(root)
        .margin(12)
        .x_label_area_size(28)
        .y_label_area_size(72)
        .build_cartesian_2d(x0..x1, 0.0..top)
        .ok()?;
    chart
        .configure_mesh()
        .x_labels(6)
        .y_labels(5)
        .x_label_formatter(&day_label)
        .y_label_formatter(&|y| label(*y))
        .y_desc(unit)
        .label_style(FONT)
        .light_line_style(WHITE)
        .draw()
        .ok()?;
    Some(chart)
}

/// The x range of a chart from `first` to `last` (a day at least).
fn span(first: DateTime<Local>, last: DateTime<Local>) -> (f64, f64) {
    let (a, b) = (x(first), x(last));
    if b - a < 1.0 {
        (a - 0.5, b + 0.5)
    } else {
        (a, b + (b - a) * 0.03)
    }
}

/// Free space (and used, where the size is known) after each backup, and
/// the fitted line carried on, dashed, to the day it reaches zero (at most
/// a year past the last point).
fn space(lang: Language, rows: &[BackupRow], points: &[trend::Point], line: Option<Line>) -> Option<String> {
    let l = lang.code();
    let (first, last) = (points.first()?.at, points.last()?.at);
    // The line is drawn only where it says something (see `trend::enough`).
    let line = line.filter(|_| trend::enough(points));
    let horizon = last + Duration::days(365);
    let end = line.and_then(|l| l.full_at()).map_or(last, |f| f.min(horizon)).max(last);
    let used: Vec<(DateTime<Local>, f64)> = rows
        .iter()
        .rev()
        .filter_map(|r| Some((r.finished?, r.disk_size?.saturating_sub(r.free_after?) as f64)))
        .filter(|(at, _)| *at >= first)
        .collect();
    let top = points
        .iter()
        .map(|p| p.free as f64)
        .chain(used.iter().map(|u| u.1))
        .chain(rows.iter().filter_map(|r| r.disk_size.map(|s| s as f64)))
        .fold(1.0, f64::max)
        * 1.1;
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (WIDTH, HEIGHT)).into_drawing_area();
        let mut chart = over_time(&root, span(first, end), top, "", &|y| human(y.max(0.0) as u64))?;
        let free: Vec<(f64, f64)> = points.iter().map(|p| (x(p.at), p.free as f64)).collect();
        chart
            .draw_series(LineSeries::new(free.iter().copied(), SUCCESS.stroke_width(2)))
            .ok()?
            .label(t!("chart.free", locale = l))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], SUCCESS.stroke_width(2)));
        chart.draw_series(free.iter().map(|p| Circle::new(*p, 3, SUCCESS.filled()))).ok()?;
        if !used.is_empty() {
            chart
                .draw_series(LineSeries::new(used.iter().map(|(t, y)| (x(*t), *y)), GREY.stroke_width(2)))
                .ok()?
                .label(t!("chart.used", locale = l))
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], GREY.stroke_width(2)));
        }
        if let Some(line) = line.filter(|l| l.slope < 0.0) {
            let ends = [first, end].map(|t| (x(t), line.at(t).max(0.0)));
            chart
                .draw_series(DashedLineSeries::new(ends, 8, 5, FAILED.stroke_width(2)))
                .ok()?
                .label(t!("chart.projection", locale = l))
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], FAILED.stroke_width(2)));
        }
        chart
            .configure_series_labels()
            .label_font(FONT)
            .background_style(WHITE.mix(0.85))
            .border_style(GREY)
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .ok()?;
        root.present().ok()?;
    }
    Some(out)
}

/// The outcome of a day, as the calendar colours it.
fn colour(s: Status) -> RGBColor {
    match s {
        Status::Success => SUCCESS,
        Status::Warning => WARNING,
        Status::Failed | Status::Damaged | Status::Refused => FAILED,
        Status::Running | Status::Removed | Status::Interrupted => OTHER,
    }
}

/// The rotation calendar of the disks `names` from their backups `rows`
/// (any order) up to `today`: a row per disk, a cell per day it was backed
/// up (the day's last backup says the colour); `None` without backups.
pub fn calendar(lang: Language, names: &[String], rows: &[BackupRow], today: NaiveDate) -> Option<Markup> {
    let l = lang.code();
    let from = today - Duration::days(CALENDAR_DAYS - 1);
    let mut cells: Vec<(usize, NaiveDate, DateTime<Local>, Status)> = Vec::new();
    for r in rows {
        let day = r.started.date_naive();
        let Some(i) = names.iter().position(|n| *n == r.disk) else { continue };
        if day < from || day > today || r.status == Status::Running {
            continue;
        }
        match cells.iter_mut().find(|c| c.0 == i && c.1 == day) {
            Some(c) if c.2 < r.started => (c.2, c.3) = (r.started, r.status),
            Some(_) => {}
            None => cells.push((i, day, r.started, r.status)),
        }
    }
    if cells.is_empty() {
        return None;
    }
    let first = cells.iter().map(|c| c.1).min().unwrap_or(from);
    let days = (today - first).num_days() + 1;
    let height = 40 + 30 * names.len() as u32;
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (CALENDAR_WIDTH, height.max(90))).into_drawing_area();
        root.fill(&WHITE).ok()?;
        let rows_of = names.len() as i32;
        let mut chart = ChartBuilder::on(&root)
            .margin(8)
            .x_label_area_size(26)
            .y_label_area_size(90)
            .build_cartesian_2d(0.0..days as f64, (0..rows_of).into_segmented())
            .ok()?;
        // Row 0 at the top: the first disk named.
        let row = |i: usize| rows_of - 1 - i as i32;
        let name = |v: &SegmentValue<i32>| match v {
            SegmentValue::CenterOf(r) | SegmentValue::Exact(r) => {
                names.get((rows_of - 1 - r) as usize).cloned().unwrap_or_default()
            }
            SegmentValue::Last => String::new(),
        };
        chart
            .configure_mesh()
            .disable_mesh()
            .x_labels(7)
            .x_label_formatter(&|d| (first + Duration::days(*d as i64)).format("%d/%m").to_string())
            .y_label_formatter(&name)
            .label_style(FONT)
            .draw()
            .ok()?;
        chart
            .draw_series(cells.iter().map(|(i, day, _, status)| {
                let d = (*day - first).num_days() as f64;
                let (lo, hi) = (SegmentValue::Exact(row(*i)), SegmentValue::Exact(row(*i) + 1));
                let mut cell = Rectangle::new([(d, lo), (d + 1.0, hi)], colour(*status).filled());
                cell.set_margin(4, 4, 1, 1);
                cell
            }))
            .ok()?;
        root.present().ok()?;
    }
    // In words: each disk's days, its last backup, how long it has been away.
    let words: Vec<String> = names
        .iter()
        .enumerate()
        .map(|(i, disk)| {
            let mine: Vec<_> = cells.iter().filter(|c| c.0 == i).collect();
            match mine.iter().map(|c| c.1).max() {
                Some(last) => t!(
                    "chart.calendar_disk",
                    locale = l,
                    disk = disk,
                    days = mine.len(),
                    last = last.format("%Y-%m-%d"),
                    ago = (today - last).num_days()
                )
                .into_owned(),
                None => t!("chart.calendar_none", locale = l, disk = disk, days = CALENDAR_DAYS).into_owned(),
            }
        })
        .collect();
    let words = words.join(" ");
    Some(html! {
        figure class="chart calendar" {
            figcaption {
                strong { (t!("chart.calendar", locale = l)) } br; small { (words) }
                span class="legend" {
                    span class="key success" { (Status::Success.word(lang)) }
                    span class="key warning" { (Status::Warning.word(lang)) }
                    span class="key failed" { (Status::Failed.word(lang)) }
                    span class="key other" { (Status::Removed.word(lang)) }
                }
            }
            (labelled(out, &words))
        }
    })
}
