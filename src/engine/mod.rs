//! The backup engines that the shipped scripts call: `snapshot`, `archive`,
//! `prune` and `verify`; and `restore`, which gets files back. They run outside the daemon, as ordinary commands,
//! and share the pieces here: exclusion patterns, the dated folder names,
//! the report of files that had to be skipped, and the thread pool.
//!
//! May import: nothing else of the crate but `fault` (its fault-injection
//! points): the engines are commands of their own.

pub mod archive;
pub mod backups;
pub mod fsx;
pub mod index;
pub mod journal;
pub mod manifest;
pub mod progress;
pub mod prune;
pub mod restore;
pub mod snapshot;
pub mod verify;
mod walk;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result};
use chrono::NaiveDateTime;
use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

/// `--exclude` patterns, matched against the path as it is stored in the
/// backup (relative, without a leading `/`). A pattern without a `/`
/// matches a name at any depth (`*.tmp`, `.cache`); one with a `/` matches
/// the whole stored path (`home/*/.cache`, `**/node_modules`). An excluded
/// directory is skipped with everything below it.
#[derive(Debug, Default)]
pub struct Exclude {
    names: GlobSet,
    paths: GlobSet,
    empty: bool,
}

impl Exclude {
    pub fn new(patterns: &[String]) -> Result<Exclude> {
        let mut names = GlobSetBuilder::new();
        let mut paths = GlobSetBuilder::new();
        for p in patterns {
            let trimmed = p.trim_start_matches('/').trim_end_matches('/');
            let glob = GlobBuilder::new(trimmed)
                .literal_separator(true)
                .backslash_escape(true)
                .build()
                .with_context(|| format!("--exclude {p:?} is not a valid glob pattern"))?;
            if trimmed.contains('/') {
                paths.add(glob);
            } else {
                names.add(glob);
            }
        }
        Ok(Exclude { names: names.build()?, paths: paths.build()?, empty: patterns.is_empty() })
    }

    /// The engines' own files in a backup (a snapshot's manifest and shrink
    /// note), left out of what a backup gives back (restores, downloads).
    pub fn engine_files() -> Exclude {
        Exclude::new(&[manifest::NAME.to_owned(), manifest::SHRUNK_NOTE.to_owned()])
            .expect("the engine's file names are valid patterns")
    }

    /// Whether the entry stored at `rel` is excluded.
    pub fn matches(&self, rel: &Path) -> bool {
        if self.empty {
            return false;
        }
        let name = rel.file_name().map(Path::new).unwrap_or(rel);
        self.names.is_match(name) || self.paths.is_match(rel)
    }
}

/// The date at the start of a backup folder's name
/// (`YYYY-MM-DD_HH-MM-SS...`), or `None` if the name does not start with one.
pub fn dated_name(name: &[u8]) -> Option<NaiveDateTime> {
    let head = std::str::from_utf8(name.get(..19)?).ok()?;
    NaiveDateTime::parse_from_str(head, "%Y-%m-%d_%H-%M-%S").ok()
}

/// The suffix of folders and files still being written.
pub const PARTIAL: &str = ".partial";

/// Whether a name is that of something being written (or left by an
/// interrupted run).
pub fn is_partial(name: &[u8]) -> bool {
    name.ends_with(PARTIAL.as_bytes())
}

/// Files that could not be backed up: each is reported on stderr as it is
/// met, and counted, so that the run can end with the "partial" status.
#[derive(Default)]
pub struct Skipped(AtomicU64);

impl Skipped {
    pub fn report(&self, what: std::fmt::Arguments) {
        eprintln!("tetras-back: skipped {what}");
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Sizes for people: `1.5 GiB`.
pub fn human(bytes: u64) -> String {
    bytesize::ByteSize::b(bytes).display().iec().to_string()
}

/// Sets up the worker threads: `jobs`, or one per core. Directories are
/// re-opened by each task, so no descriptor is held while work waits.
pub fn init(jobs: Option<usize>) {
    let threads = jobs.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    // Fails only if already set up (several engines in one process, in tests).
    let _ = rayon::ThreadPoolBuilder::new().num_threads(threads.max(1)).build_global();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclude_names_and_paths() {
        let ex = Exclude::new(&["*.tmp".into(), "/home/*/.cache".into(), "node_modules/".into()]).unwrap();
        assert!(ex.matches(Path::new("a/b/x.tmp")));
        assert!(ex.matches(Path::new("x.tmp")));
        assert!(ex.matches(Path::new("home/alice/.cache")));
        assert!(!ex.matches(Path::new("home/alice/work/.cache")), "anchored pattern");
        assert!(ex.matches(Path::new("src/node_modules")));
        assert!(!ex.matches(Path::new("home/alice/x.tmpl")));
        assert!(Exclude::new(&["a[".into()]).unwrap_err().to_string().contains("a["));
        assert!(!Exclude::default().matches(Path::new("anything")));
    }

    #[test]
    fn dated_names() {
        assert!(dated_name(b"2026-11-22_10-00-00_Sauvegarde_host").is_some());
        assert!(dated_name(b"2026-11-22_10-00-00").is_some());
        assert!(dated_name(b"2026-13-22_10-00-00").is_none());
        assert!(dated_name(b"lost+found").is_none());
        assert!(dated_name(b"2026-11-22").is_none());
        assert!(is_partial(b"2026-11-22_10-00-00.partial"));
    }
}
