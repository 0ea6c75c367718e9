//! Metrics for Prometheus, in the text format node_exporter's textfile
//! collector reads: written to `metrics_file` atomically (temp file and
//! rename in the same directory, so the collector never reads half a file)
//! when the daemon starts, after each backup, and when it stops. That
//! directory may be writable by another account (node-exporter's):
//! [`crate::store::state::write_atomic`] never writes through what it plants there.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};

use crate::store::history::DiskSummary;
use crate::store::report::{ProgressNow, Status};

/// The statuses `tetras_back_last_backup_status` has a series for.
const STATUSES: [Status; 6] =
    [Status::Success, Status::Warning, Status::Failed, Status::Removed, Status::Interrupted, Status::Damaged];

/// One known disk and what the history says of it.
pub struct DiskMetrics<'a> {
    pub name: &'a str,
    pub uuid: &'a str,
    pub summary: DiskSummary,
}

/// The backup running now, and where it stands.
pub struct RunningMetrics<'a> {
    pub name: &'a str,
    pub uuid: &'a str,
    pub progress: &'a ProgressNow,
}

/// The metrics file's text.
pub fn render(
    up: bool,
    disks: &[DiskMetrics],
    mails_pending: u64,
    running: Option<RunningMetrics>,
) -> String {
    let mut out = String::new();
    let mut family = |name: &str, help: &str, samples: Vec<(String, f64)>| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    let labels = |d: &DiskMetrics| format!("disk=\"{}\",uuid=\"{}\"", escape(d.name), escape(d.uuid));
    let per_disk = |f: &dyn Fn(&DiskSummary) -> Option<f64>| -> Vec<(String, f64)> {
        disks.iter().filter_map(|d| f(&d.summary).map(|v| (format!("{{{}}}", labels(d)), v))).collect()
    };
    family(
        "tetras_back_up",
        "Whether the tetras-back daemon is running.",
        vec![(String::new(), if up { 1.0 } else { 0.0 })],
    );
    family(
        "tetras_back_last_success_timestamp_seconds",
        "When the last successful backup on the disk finished (Unix time).",
        per_disk(&|s| s.last_success.map(|t| t.timestamp() as f64)),
    );
    family(
        "tetras_back_last_backup_timestamp_seconds",
        "When the last backup on the disk finished, whatever its status (Unix time).",
        per_disk(&|s| s.last.as_ref().and_then(|b| b.finished).map(|t| t.timestamp() as f64)),
    );
    let status: Vec<(String, f64)> = disks
        .iter()
        .filter_map(|d| d.summary.last.as_ref().map(|b| (d, b.status)))
        .flat_map(|(d, st)| {
            STATUSES
                .iter()
                .map(move |s| (format!("{{{},status=\"{s}\"}}", labels(d)), f64::from(u8::from(*s == st))))
        })
        .collect();
    family(
        "tetras_back_last_backup_status",
        "The status of the last backup on the disk: 1 for the series of that status.",
        status,
    );
    family(
        "tetras_back_last_backup_duration_seconds",
        "How long the last backup on the disk took.",
        per_disk(&|s| s.last.as_ref().and_then(|b| b.duration_secs)),
    );
    family(
        "tetras_back_last_backup_bytes_written",
        "Bytes the last backup on the disk wrote (snapshot copies and archives).",
        per_disk(&|s| s.last.as_ref().and_then(|b| b.bytes_written).map(|b| b as f64)),
    );
    let running_labels =
        running.as_ref().map(|r| format!("{{disk=\"{}\",uuid=\"{}\"}}", escape(r.name), escape(r.uuid)));
    let now = |f: &dyn Fn(&ProgressNow) -> Option<f64>| -> Vec<(String, f64)> {
        running
            .iter()
            .zip(&running_labels)
            .filter_map(|(r, l)| f(r.progress).map(|v| (l.clone(), v)))
            .collect()
    };
    family(
        "tetras_back_backup_running",
        "1 while a backup of the disk runs (the series is there only then).",
        now(&|_| Some(1.0)),
    );
    family(
        "tetras_back_backup_files_done",
        "Regular files the running backup has gone through so far.",
        now(&|p| Some(p.files_done as f64)),
    );
    family(
        "tetras_back_backup_bytes_done",
        "Bytes of the files the running backup has gone through so far.",
        now(&|p| Some(p.bytes_done as f64)),
    );
    family(
        "tetras_back_backup_files_expected",
        "Regular files the running backup is expected to go through.",
        now(&|p| p.files_expected.map(|v| v as f64)),
    );
    family(
        "tetras_back_backup_bytes_expected",
        "Bytes the running backup is expected to go through.",
        now(&|p| p.bytes_expected.map(|v| v as f64)),
    );
    family(
        "tetras_back_backup_progress_ratio",
        "How far the running backup is, from 0 to 1.",
        now(&|p| p.percent.map(|v| v / 100.0)),
    );
    family(
        "tetras_back_backup_eta_seconds",
        "About how long the running backup still takes.",
        now(&|p| p.eta_secs.map(|v| v as f64)),
    );
    family(
        "tetras_back_mail_outbox_pending",
        "Mails that could not be sent yet and wait to be tried again.",
        vec![(String::new(), mails_pending as f64)],
    );
    out
}

/// Label values escape backslash, double quote and newline.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Replaces the metrics file.
pub fn write(path: &Path, text: &str) -> Result<()> {
    crate::store::state::write_atomic(path, 0o644, text.as_bytes())
        .with_context(|| format!("cannot write the metrics file {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::history::BackupRow;

    #[test]
    fn one_status_series_is_one_and_labels_are_escaped() {
        let last = BackupRow { status: Status::Failed, ..Default::default() };
        let summary = DiskSummary { last: Some(last), last_success: None };
        let text = render(true, &[DiskMetrics { name: "a\"b", uuid: "u", summary }], 2, None);
        assert!(text.contains("tetras_back_up 1\n"), "{text}");
        assert!(
            text.contains("tetras_back_last_backup_status{disk=\"a\\\"b\",uuid=\"u\",status=\"failed\"} 1\n")
        );
        assert!(text.contains("status=\"success\"} 0\n"));
        assert!(text.contains("tetras_back_mail_outbox_pending 2\n"));
        assert!(!text.contains("tetras_back_last_success_timestamp_seconds{"), "no success, no sample");
        assert!(!text.contains("tetras_back_backup_running{"), "no backup, no sample");
    }

    #[test]
    fn the_running_backup_has_its_progress() {
        let progress =
            ProgressNow { files_done: 7, percent: Some(45.0), eta_secs: Some(60), ..Default::default() };
        let running = RunningMetrics { name: "office", uuid: "u", progress: &progress };
        let text = render(true, &[], 0, Some(running));
        for line in [
            "tetras_back_backup_running{disk=\"office\",uuid=\"u\"} 1\n",
            "tetras_back_backup_files_done{disk=\"office\",uuid=\"u\"} 7\n",
            "tetras_back_backup_progress_ratio{disk=\"office\",uuid=\"u\"} 0.45\n",
            "tetras_back_backup_eta_seconds{disk=\"office\",uuid=\"u\"} 60\n",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
        assert!(!text.contains("tetras_back_backup_files_expected{"), "not known, no sample");
    }
}
