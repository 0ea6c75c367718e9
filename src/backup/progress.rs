//! Where the running backup stands: what its engines wrote to the journal
//! (the runs that ended) and to the progress file (the one at work), made
//! into `backup_progress` once a second, with the time left reckoned from
//! this disk's usual duration.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::engine::journal;
use crate::engine::progress::Sample;
use crate::store::history::Usual;
use crate::store::report::ProgressNow;

/// How often `backup_progress` is sent while a backup runs.
pub const EVERY: Duration = Duration::from_secs(1);

/// The engines whose files count in a backup's progress (the others, prune
/// and verify, are phases of it).
const COUNTED: [&str; 4] = ["snapshot", "archive", "pull", "restore"];

/// The progress of one running backup.
///
/// A backup may run several scripts, each estimating its own part just
/// before it writes it: the whole is reckoned script by script, each
/// weighing what it usually takes (equal shares without a history), the
/// running one by its own files and bytes against its own estimates.
#[derive(Debug)]
pub struct Tracker {
    journal: PathBuf,
    sample: PathBuf,
    started: Instant,
    /// How long this disk's backups with these scripts usually take.
    usual: Option<Usual>,
    /// The scripts' shares of the backup, in their order.
    shares: Vec<f64>,
    /// How many scripts have started, and where the counts stood when the
    /// last one did (done, expected).
    scripts_started: usize,
    script_running: bool,
    script_base: ((u64, u64), (u64, u64)),
    script_clock: Instant,
    /// What the backup does when no engine is at work: `starting`,
    /// `script`, `drill`, `finishing`.
    pub step: &'static str,
    /// What was said last, which the counts never go below.
    pub now: ProgressNow,
    /// How many times it was said.
    pub ticks: u64,
}

impl Tracker {
    /// The tracker of a backup that runs `scripts` scripts.
    pub fn new(journal: PathBuf, sample: PathBuf, scripts: usize, usual: Option<Usual>) -> Tracker {
        let now = ProgressNow { phase: "starting".into(), ..ProgressNow::default() };
        let known =
            usual.as_ref().filter(|u| u.scripts.len() == scripts && u.scripts.iter().sum::<f64>() > 0.0);
        let shares = match known {
            Some(u) => u.scripts.iter().map(|s| s.max(0.01)).collect(),
            None => vec![1.0; scripts],
        };
        Tracker {
            journal,
            sample,
            started: Instant::now(),
            usual,
            shares,
            scripts_started: 0,
            script_running: false,
            script_base: ((0, 0), (0, 0)),
            script_clock: Instant::now(),
            step: "starting",
            now,
            ticks: 0,
        }
    }

    /// The next script starts: its part is counted from where things stand.
    pub fn script_started(&mut self) {
        self.update();
        let n = &self.now;
        let expected = (n.files_expected.unwrap_or(n.files_done), n.bytes_expected.unwrap_or(n.bytes_done));
        self.script_base = ((n.files_done, n.bytes_done), expected);
        self.scripts_started += 1;
        self.script_running = true;
        self.script_clock = Instant::now();
        self.step = "script";
    }

    pub fn script_finished(&mut self) {
        self.script_running = false;
        self.step = "finishing";
    }

    /// Reads where the engines are.
    pub fn update(&mut self) -> &ProgressNow {
        let ended = journal::peek(&self.journal);
        let live = Sample::read(&self.sample).filter(|s| !s.finished);
        let counted = live.as_ref().filter(|s| COUNTED.contains(&s.engine.as_str()));
        let (files, bytes) =
            counted.map_or(ended.done, |s| (ended.done.0 + s.files_done, ended.done.1 + s.bytes_done));
        let done = (files.max(self.now.files_done), bytes.max(self.now.bytes_done));
        // The scripts' estimates; without them, what the engine at work expects.
        let expected = ended.expected.or_else(|| {
            let s = counted?;
            Some((ended.done.0 + s.files_expected?, ended.done.1 + s.bytes_expected?))
        });
        let expected = expected.map(|(f, b)| (f.max(done.0), b.max(done.1)));
        let fraction = self.fraction(done, expected);
        let elapsed = self.started.elapsed().as_secs_f64();
        let usual = self.usual.as_ref().map(|u| u.total);
        let left = match fraction {
            // The files are all through (a drill or the unmount remains): the usual time says.
            Some(f) if f >= 1.0 => usual.map(|u| (u - elapsed).max(0.0)),
            f => time_left(elapsed, f, usual),
        };
        self.now = ProgressNow {
            phase: live.map_or_else(|| self.step.to_owned(), |s| s.engine),
            files_done: done.0,
            bytes_done: done.1,
            files_expected: expected.map(|e| e.0),
            bytes_expected: expected.map(|e| e.1),
            percent: fraction.map(|f| (f * 1000.0).round() / 10.0),
            eta_secs: left.map(|s| s.round() as u64),
        };
        &self.now
    }

    /// How far the whole backup is (0 to 1): the scripts before the one
    /// running, and the running one's part of its share.
    fn fraction(&self, done: (u64, u64), expected: Option<(u64, u64)>) -> Option<f64> {
        let total: f64 = self.shares.iter().sum();
        if total <= 0.0 {
            return expected.map(|e| part(done, e));
        }
        let before = self.scripts_started.saturating_sub(usize::from(self.script_running));
        let past: f64 = self.shares.iter().take(before).sum();
        if !self.script_running || before >= self.shares.len() {
            return Some((past / total).min(1.0));
        }
        let (base_done, base_expected) = self.script_base;
        let share = self.shares[before];
        let mine = match expected {
            Some(e) if e.0 > base_expected.0 || e.1 > base_expected.1 => Some(part(
                (done.0.saturating_sub(base_done.0), done.1.saturating_sub(base_done.1)),
                (e.0.saturating_sub(base_expected.0), e.1.saturating_sub(base_expected.1)),
            )),
            // Nothing expected of it yet: its usual time says, short of its end.
            _ => self.usual.as_ref().map(|_| (self.script_clock.elapsed().as_secs_f64() / share).min(0.95)),
        };
        mine.map(|m| ((past + m * share) / total).min(1.0))
    }
}

/// `done` of `expected`, by the bytes (by the files where no bytes are expected).
fn part(done: (u64, u64), expected: (u64, u64)) -> f64 {
    match expected {
        (0, 0) => 1.0,
        (f, 0) => (done.0 as f64 / f as f64).min(1.0),
        (_, b) => (done.1 as f64 / b as f64).min(1.0),
    }
}

/// Seconds left of a backup `elapsed` seconds in, `fraction` (0 to 1) of
/// its work done where that is known, that usually takes `usual` seconds.
/// The usual duration counts most at the start, the rate seen so far
/// more and more as the work advances; with neither, there is no basis.
pub fn time_left(elapsed: f64, fraction: Option<f64>, usual: Option<f64>) -> Option<f64> {
    let by_rate = |f: f64| (f >= 0.02 && elapsed >= 2.0).then(|| elapsed * (1.0 - f) / f);
    match (fraction.map(|f| f.clamp(0.0, 1.0)), usual) {
        (Some(f), Some(usual)) => {
            let by_history = (1.0 - f) * usual.max(elapsed);
            Some(match by_rate(f) {
                Some(rate) => (1.0 - f) * by_history + f * rate,
                None => by_history,
            })
        }
        (Some(f), None) => by_rate(f),
        (None, Some(usual)) => (usual > elapsed).then_some(usual - elapsed),
        (None, None) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::journal::Entry;

    #[test]
    fn time_left_needs_a_basis_and_leans_on_the_rate_as_work_advances() {
        assert_eq!(time_left(10.0, None, None), None);
        assert_eq!(time_left(1.0, Some(0.01), None), None, "too early to tell from the rate");
        assert_eq!(time_left(10.0, Some(0.5), None), Some(10.0));
        assert_eq!(time_left(10.0, None, Some(60.0)), Some(50.0));
        assert_eq!(time_left(70.0, None, Some(60.0)), None, "past its usual time: no basis left");
        assert_eq!(time_left(0.0, Some(0.0), Some(60.0)), Some(60.0));
        // Half done in 10 s, usually 60 s: between the two (30 s by history, 10 s by rate).
        let left = time_left(10.0, Some(0.5), Some(60.0)).unwrap();
        assert!((left - 20.0).abs() < 1e-9, "{left}");
        assert_eq!(time_left(30.0, Some(1.0), Some(60.0)), Some(0.0));
    }

    #[test]
    fn counts_add_the_ended_runs_to_the_one_at_work_and_never_go_down() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, sample) = (dir.path().join("j"), dir.path().join("p"));
        let record = |e: &Entry| {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new().append(true).create(true).open(&journal).unwrap();
            writeln!(f, "{}", serde_json::to_string(e).unwrap()).unwrap();
        };
        let put = |s: &Sample| std::fs::write(&sample, serde_json::to_vec(s).unwrap()).unwrap();
        let mut t = Tracker::new(journal.clone(), sample.clone(), 1, None);
        assert_eq!(t.now.phase.as_str(), "starting");
        t.script_started();
        assert_eq!(t.update().percent, None);
        record(&Entry::Estimate { dest: "/m/a".into(), files: 100, bytes: 1000 });
        record(&Entry::Estimate { dest: "/m/b".into(), files: 100, bytes: 1000 });
        put(&Sample { engine: "snapshot".into(), files_done: 50, bytes_done: 500, ..Sample::default() });
        let now = t.update().clone();
        assert_eq!((now.phase.as_str(), now.files_done, now.percent), ("snapshot", 50, Some(25.0)));
        record(&Entry::Snapshot {
            dest: "/m/a".into(),
            files: 100,
            bytes: 1000,
            bytes_written: 0,
            shrunk: vec![],
        });
        // The journal has the run before its sample says it ended: counted once.
        put(&Sample {
            engine: "snapshot".into(),
            files_done: 100,
            bytes_done: 1000,
            finished: true,
            ..Sample::default()
        });
        assert_eq!((t.update().files_done, t.now.phase.as_str()), (100, "script"));
        put(&Sample { engine: "prune".into(), ..Sample::default() });
        assert_eq!((t.update().files_done, t.now.percent, t.now.phase.as_str()), (100, Some(50.0), "prune"));
        put(&Sample { engine: "archive".into(), files_done: 100, bytes_done: 1000, ..Sample::default() });
        assert_eq!(t.update().percent, Some(100.0));
        std::fs::remove_file(&sample).unwrap();
        assert_eq!(t.update().files_done, 200, "never down");
    }

    #[test]
    fn two_scripts_each_estimating_their_part_share_the_bar() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let (journal, sample) = (dir.path().join("j"), dir.path().join("p"));
        let record = |e: &Entry| {
            let mut f = std::fs::OpenOptions::new().append(true).create(true).open(&journal).unwrap();
            writeln!(f, "{}", serde_json::to_string(e).unwrap()).unwrap();
        };
        // The second script usually takes three times as long as the first.
        let usual = Usual { total: 40.0, scripts: vec![10.0, 30.0] };
        let mut t = Tracker::new(journal.clone(), sample, 2, Some(usual));
        t.script_started();
        record(&Entry::Estimate { dest: "/m/a".into(), files: 10, bytes: 100 });
        record(&Entry::Snapshot {
            dest: "/m/a".into(),
            files: 10,
            bytes: 100,
            bytes_written: 0,
            shrunk: vec![],
        });
        assert_eq!(t.update().percent, Some(25.0), "the first script done: its share");
        t.script_finished();
        assert_eq!(t.update().percent, Some(25.0));
        t.script_started();
        record(&Entry::Estimate { dest: "/m/b".into(), files: 30, bytes: 300 });
        assert_eq!(t.update().percent, Some(25.0), "the second's estimate: nothing of it done yet");
        record(&Entry::Snapshot {
            dest: "/m/b".into(),
            files: 15,
            bytes: 150,
            bytes_written: 0,
            shrunk: vec![],
        });
        assert_eq!(t.update().percent, Some(62.5));
        assert_eq!((t.now.files_done, t.now.files_expected), (25, Some(40)));
    }

    #[test]
    fn without_estimates_the_engine_at_work_says_what_to_expect() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, sample) = (dir.path().join("j"), dir.path().join("p"));
        let s = Sample {
            engine: "snapshot".into(),
            files_done: 10,
            bytes_done: 100,
            files_expected: Some(40),
            bytes_expected: Some(400),
            ..Sample::default()
        };
        let mut t =
            Tracker::new(journal, sample.clone(), 1, Some(Usual { total: 100.0, scripts: vec![90.0] }));
        t.script_started();
        std::fs::write(&sample, serde_json::to_vec(&s).unwrap()).unwrap();
        let now = t.update();
        assert_eq!((now.files_expected, now.percent), (Some(40), Some(25.0)));
        assert!(now.eta_secs.is_some_and(|s| s > 50), "{now:?}");
    }
}
