//! Where a disk's free space is heading: a straight line fitted (least
//! squares) through its free space after each backup, and the day that
//! line reaches zero, what the mail report and the console call the
//! estimated date the disk is full.

use chrono::{DateTime, Local, TimeZone};

use super::history::BackupRow;

/// Free space after one backup.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub at: DateTime<Local>,
    pub free: u64,
}

/// The fitted line: free bytes at `at` are `intercept + slope × seconds
/// since the Unix epoch`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Line {
    pub intercept: f64,
    pub slope: f64,
}

impl Line {
    /// The least-squares line through `points` (`None` with fewer than two,
    /// or all at one time).
    pub fn fit(points: &[Point]) -> Option<Line> {
        if points.len() < 2 {
            return None;
        }
        let n = points.len() as f64;
        // Centred on the first point, so that the squares of Unix times do not eat the precision.
        let t0 = points[0].at.timestamp() as f64;
        let xs: Vec<f64> = points.iter().map(|p| p.at.timestamp() as f64 - t0).collect();
        let ys: Vec<f64> = points.iter().map(|p| p.free as f64).collect();
        let (mx, my) = (xs.iter().sum::<f64>() / n, ys.iter().sum::<f64>() / n);
        let sxx: f64 = xs.iter().map(|x| (x - mx).powi(2)).sum();
        if sxx == 0.0 {
            return None;
        }
        let sxy: f64 = xs.iter().zip(&ys).map(|(x, y)| (x - mx) * (y - my)).sum();
        let slope = sxy / sxx;
        Some(Line { intercept: my - slope * (mx + t0), slope })
    }

    /// Free bytes the line gives at `at`.
    pub fn at(&self, at: DateTime<Local>) -> f64 {
        self.intercept + self.slope * at.timestamp() as f64
    }

    /// Bytes a day the free space shrinks by (negative: it grows).
    pub fn used_per_day(&self) -> f64 {
        -self.slope * 86_400.0
    }

    /// When the line reaches no free space, if it goes down.
    pub fn full_at(&self) -> Option<DateTime<Local>> {
        if self.slope >= 0.0 {
            return None;
        }
        let secs = -self.intercept / self.slope;
        (secs.is_finite() && secs < 8.0e12).then(|| Local.timestamp_opt(secs as i64, 0).single()).flatten()
    }
}

/// How many of a disk's last backups the line goes through.
pub const POINTS: usize = 60;

/// The free space after each of `rows` (a disk's backups, newest first
/// as the history gives them) that says it, oldest first, the last
/// [`POINTS`] of them.
pub fn points(rows: &[BackupRow]) -> Vec<Point> {
    let mut out: Vec<Point> = rows
        .iter()
        .filter_map(|r| Some(Point { at: r.finished?, free: r.free_after? }))
        .take(POINTS)
        .collect();
    out.reverse();
    out
}

/// The fewest backups, and the shortest time they span, that a full date
/// is reckoned from: two backups a minute apart say nothing of a trend.
pub const MIN_POINTS: usize = 3;
pub const MIN_SPAN_DAYS: i64 = 3;

/// Whether `points` are enough to say when the disk is full.
pub fn enough(points: &[Point]) -> bool {
    match (points.first(), points.last()) {
        (Some(a), Some(b)) => {
            points.len() >= MIN_POINTS && b.at - a.at >= chrono::Duration::days(MIN_SPAN_DAYS)
        }
        _ => false,
    }
}

/// The estimated date the disk is full, from the free space after its
/// backups (`None`: not filling up, or too few points over too short a time).
pub fn full_at(points: &[Point]) -> Option<DateTime<Local>> {
    if !enough(points) {
        return None;
    }
    Line::fit(points)?.full_at()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(n: i64, free: u64) -> Point {
        Point { at: Local.timestamp_opt(1_800_000_000 + n * 86_400, 0).unwrap(), free }
    }

    #[test]
    fn a_disk_losing_a_gigabyte_a_day_is_full_when_the_line_says() {
        assert_eq!(full_at(&[day(0, 9), day(1, 6), day(2, 3)]), None, "over too short a time");
        let gib = 1u64 << 30;
        let points: Vec<Point> = (0..10).map(|n| day(n, 100 * gib - n as u64 * gib)).collect();
        let line = Line::fit(&points).unwrap();
        assert!((line.used_per_day() - gib as f64).abs() < 1.0, "{}", line.used_per_day());
        assert_eq!(full_at(&points), Some(day(100, 0).at));
    }

    #[test]
    fn no_date_when_it_does_not_fill_up_or_cannot_tell() {
        assert_eq!(full_at(&[day(0, 5), day(1, 7), day(3, 9)]), None, "growing free space");
        assert_eq!(full_at(&[day(0, 5), day(1, 5), day(3, 5)]), None, "flat");
        assert_eq!(full_at(&[day(0, 5), day(9, 3)]), None, "two points");
        assert_eq!(Line::fit(&[day(2, 5), day(2, 3)]), None, "one moment");
    }
}
