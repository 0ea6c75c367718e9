//! The backup engines' subcommands (`snapshot`, `archive`, `prune`,
//! `verify`, `restore`): their arguments, and what they print. They need no daemon and
//! no configuration file: the shipped scripts call them on a mounted disk.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;

use crate::config::Config;
use crate::engine::{self, archive, human, journal, progress, prune, restore, snapshot, Exclude};
use crate::store::history::History;

/// Exit code of `snapshot`/`archive` when some files could not be read
/// (everything else was saved), as rsync's "partial transfer".
pub const EXIT_PARTIAL: u8 = 23;
/// Exit code of `verify` when the backup differs from its manifest.
pub const EXIT_DAMAGED: u8 = 4;
/// Exit code of `prune` when the free space asked for cannot be reached.
pub const EXIT_SHORT_OF_SPACE: u8 = 5;

#[derive(Args, Debug, PartialEq)]
pub struct SnapshotArgs {
    /// The new backup folder (written as DIR.partial, renamed when complete)
    #[arg(long, value_name = "DIR")]
    dest: PathBuf,
    /// Hard-link files unchanged since this snapshot; `auto`: the newest
    /// complete one among the dated folders beside DIR
    #[arg(long, value_name = "PREV|auto")]
    link_dest: Option<PathBuf>,
    /// Leave out what matches (a glob; without a `/` it matches a name at any depth)
    #[arg(long, value_name = "PATTERN")]
    exclude: Vec<String>,
    /// Do not descend into other file systems (their mount points are kept, empty)
    #[arg(short = 'x', long)]
    one_file_system: bool,
    /// Only say how many files and bytes would be copied
    #[arg(short = 'n', long)]
    dry_run: bool,
    /// Print the summary as JSON
    #[arg(long)]
    json: bool,
    /// Worker threads (default: one per core)
    #[arg(short, long, value_name = "N")]
    jobs: Option<usize>,
    /// Warn, and note it in the snapshot, when a source has lost more than
    /// this share of its files or bytes since the previous snapshot (`off`: never)
    #[arg(long, value_name = "PERCENT", env = "TETRAS_BACK_SHRINK_WARNING", default_value = "50%")]
    shrink_warning: snapshot::ShrinkWarning,
    /// Sources: `SRC` is copied into DIR under its name, `SRC/` has its content copied into DIR
    #[arg(required = true, value_name = "SRC")]
    sources: Vec<OsString>,
}

#[derive(Args, Debug, PartialEq)]
pub struct ArchiveArgs {
    /// The archive to create (written as FILE.partial, renamed when complete)
    #[arg(short, long, value_name = "FILE.tar.gz")]
    output: PathBuf,
    /// Also archive what this pattern matches (quote it: --glob '/var/log/*.log')
    #[arg(long, value_name = "PATTERN")]
    glob: Vec<String>,
    /// Leave out what matches (a glob; without a `/` it matches a name at any depth)
    #[arg(long, value_name = "PATTERN")]
    exclude: Vec<String>,
    /// gzip level: 1 (fastest) to 9 (smallest)
    #[arg(long, default_value_t = 6, value_name = "1-9")]
    level: u32,
    /// Print the summary as JSON
    #[arg(long)]
    json: bool,
    /// Compression threads (default: one per core)
    #[arg(short, long, value_name = "N")]
    jobs: Option<usize>,
    /// Trees and files to archive
    #[arg(value_name = "PATH")]
    paths: Vec<PathBuf>,
}

#[derive(Args, Debug, PartialEq)]
pub struct PruneArgs {
    /// The directory holding the dated backup folders
    #[arg(value_name = "DIR")]
    dir: PathBuf,
    /// Delete the oldest backups until this much space is free: a size
    /// (20GiB, 500MB) or a share of the file system (10%)
    #[arg(long, value_name = "SIZE|PERCENT")]
    min_free: Option<prune::FreeTarget>,
    /// Keep the N newest backups
    #[arg(long, value_name = "N", default_value_t = 0, hide_default_value = true)]
    keep_last: usize,
    /// Keep the newest backup of each of the last N days that have one
    #[arg(long, value_name = "N", default_value_t = 0, hide_default_value = true)]
    keep_daily: usize,
    /// Keep the newest backup of each of the last N ISO weeks that have one
    #[arg(long, value_name = "N", default_value_t = 0, hide_default_value = true)]
    keep_weekly: usize,
    /// Keep the newest backup of each of the last N months that have one
    #[arg(long, value_name = "N", default_value_t = 0, hide_default_value = true)]
    keep_monthly: usize,
    /// Keep the newest backup of each of the last N years that have one
    #[arg(long, value_name = "N", default_value_t = 0, hide_default_value = true)]
    keep_yearly: usize,
    /// Only list what would be deleted
    #[arg(short = 'n', long)]
    dry_run: bool,
    /// Never delete this folder (the daemon names the newest one it wrote
    /// on the disk, whatever else the disk holds)
    #[arg(long, value_name = "NAME", env = "TETRAS_BACK_KEEP")]
    keep_folder: Option<OsString>,
    /// Print the outcome as JSON
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug, PartialEq)]
pub struct VerifyArgs {
    /// A snapshot folder made by `tetras-back snapshot`
    #[arg(value_name = "BACKUP")]
    backup: PathBuf,
    /// Print the report as JSON
    #[arg(long)]
    json: bool,
    /// Worker threads (default: one per core)
    #[arg(short, long, value_name = "N")]
    jobs: Option<usize>,
}

#[derive(Args, Debug, PartialEq)]
pub struct RestoreArgs {
    /// An opened disk's name, or the directory where a backup disk is mounted
    #[arg(value_name = "DISK")]
    pub disk: PathBuf,
    /// The backup folder on the disk: its name, or `latest` (the newest complete one)
    #[arg(long, value_name = "BACKUP|latest", default_value = "latest")]
    from: PathBuf,
    /// What to restore, relative to the backup folder (Donnees/alice/doc, home/alice)
    #[arg(required = true, value_name = "PATH")]
    paths: Vec<PathBuf>,
    /// Where to restore to; each PATH keeps its place below it
    #[arg(long, value_name = "DIR")]
    to: PathBuf,
    /// Replace entries that are already there (each is written aside, then renamed over it)
    #[arg(long)]
    overwrite: bool,
    /// Allow `--to /`: put the files back where they were
    #[arg(long)]
    in_place: bool,
    /// Only say what would be restored
    #[arg(short = 'n', long)]
    dry_run: bool,
    /// Make nothing that grants privileges: drop set-uid and set-gid bits and
    /// file capabilities, leave device nodes out (restores asked from the web console)
    #[arg(long)]
    no_privileges: bool,
    /// Print the summary as JSON
    #[arg(long)]
    json: bool,
}

fn print_json(value: &impl serde::Serialize) {
    println!("{}", serde_json::to_string(value).expect("summaries serialize"));
}

fn partial_exit(skipped: u64) -> ExitCode {
    if skipped == 0 {
        return ExitCode::SUCCESS;
    }
    eprintln!("tetras-back: {skipped} entries could not be read and are missing (see above)");
    ExitCode::from(EXIT_PARTIAL)
}

pub fn snapshot(a: SnapshotArgs) -> Result<ExitCode> {
    engine::init(a.jobs);
    let link_dest = a.link_dest.map(|p| {
        if p.as_os_str() == "auto" {
            snapshot::LinkDest::Auto
        } else {
            snapshot::LinkDest::Path(p)
        }
    });
    let opts = snapshot::Options {
        dest: a.dest,
        sources: a.sources,
        link_dest,
        exclude: Exclude::new(&a.exclude)?,
        one_file_system: a.one_file_system,
        dry_run: a.dry_run,
        shrink_warning: a.shrink_warning.0,
    };
    let s = snapshot::run(&opts)?;
    journal::record(&if s.dry_run {
        journal::Entry::Estimate { dest: s.dest.clone(), files: s.files, bytes: s.bytes }
    } else {
        journal::Entry::Snapshot {
            dest: s.dest.clone(),
            files: s.files,
            bytes: s.bytes,
            bytes_written: s.copied_bytes,
            shrunk: s.shrunk.clone(),
        }
    });
    if a.json {
        print_json(&s);
    } else {
        let from = match &s.link_dest {
            Some(p) => format!(" from {}", p.display()),
            None => String::new(),
        };
        if s.dry_run {
            println!(
                "dry run: would copy {} files ({}, {} bytes) and hard-link {} ({}){from} into {}",
                s.copied_files,
                human(s.copied_bytes),
                s.copied_bytes,
                s.linked_files,
                human(s.linked_bytes),
                s.dest.display()
            );
        } else {
            println!(
                "snapshot {}: {} files ({}): {} copied ({}), {} hard-linked{from}; {} directories, {} symlinks, {} special; {:.2} s",
                s.dest.display(),
                s.files,
                human(s.bytes),
                s.copied_files,
                human(s.copied_bytes),
                s.linked_files,
                s.dirs,
                s.symlinks,
                s.specials,
                s.seconds
            );
        }
    }
    Ok(partial_exit(s.skipped))
}

pub fn archive(a: ArchiveArgs) -> Result<ExitCode> {
    engine::init(a.jobs);
    let opts = archive::Options {
        output: a.output,
        paths: a.paths,
        globs: a.glob,
        exclude: Exclude::new(&a.exclude)?,
        level: a.level,
    };
    let s = archive::run(&opts)?;
    journal::record(&journal::Entry::Archive {
        output: s.output.clone(),
        files: s.files,
        bytes: s.bytes_in,
        bytes_written: s.bytes_out,
    });
    if a.json {
        print_json(&s);
    } else {
        println!(
            "archive {}: {} files, {} directories, {} symlinks; {} in, {} out; {:.2} s",
            s.output.display(),
            s.files,
            s.dirs,
            s.symlinks,
            human(s.bytes_in),
            human(s.bytes_out),
            s.seconds
        );
    }
    Ok(partial_exit(s.skipped))
}

pub fn prune(a: PruneArgs) -> Result<ExitCode> {
    engine::init(None);
    let keep = prune::Keep {
        last: a.keep_last,
        daily: a.keep_daily,
        weekly: a.keep_weekly,
        monthly: a.keep_monthly,
        yearly: a.keep_yearly,
    };
    if a.min_free.is_none() && keep == prune::Keep::default() {
        anyhow::bail!("say what to keep: --min-free and/or --keep-last/--keep-daily/--keep-weekly/--keep-monthly/--keep-yearly");
    }
    let keep_names = a.keep_folder.into_iter().filter(|n| !n.is_empty()).collect();
    let opts = prune::Options { dir: a.dir, min_free: a.min_free, keep, dry_run: a.dry_run, keep_names };
    let o = if opts.dry_run { prune::run(&opts) } else { progress::phase("prune", || prune::run(&opts)) }?;
    if !o.dry_run && !o.deleted.is_empty() {
        journal::record(&journal::Entry::Prune {
            dir: o.dir.clone(),
            deleted: o.deleted.iter().map(|d| d.name.clone()).collect(),
            freed: o.deleted.iter().map(|d| d.freed).sum(),
        });
    }
    if a.json {
        print_json(&o);
    } else {
        let verb = if o.dry_run { "would delete" } else { "deleted" };
        for d in &o.deleted {
            let freed = if o.dry_run { "about " } else { "" };
            println!("{verb} {} ({}; {freed}{} freed)", d.name, d.reason, human(d.freed));
        }
        for n in &o.in_use {
            println!("left {n}: being written by a running process");
        }
        for n in &o.suspicious {
            eprintln!(
                "tetras-back: warning: {n} is dated in the future (planted, or written while the clock was wrong): \
                 never counted as the newest backup"
            );
        }
        let free = if o.dry_run { "would be about" } else { "now" };
        println!(
            "{}: {} backups kept, {} deleted; free space was {}, {free} {}",
            o.dir.display(),
            o.kept.len(),
            o.deleted.len(),
            human(o.free_before),
            human(o.free_after)
        );
    }
    if !o.met {
        eprintln!(
            "tetras-back: cannot free {} in {}: only {} would be free with every backup but the newest complete one deleted",
            human(o.target.unwrap_or(0)),
            o.dir.display(),
            human(o.free_after)
        );
        return Ok(ExitCode::from(EXIT_SHORT_OF_SPACE));
    }
    Ok(ExitCode::SUCCESS)
}

pub fn verify(a: VerifyArgs) -> Result<ExitCode> {
    engine::init(a.jobs);
    let r = engine::verify::run(&a.backup)?;
    if a.json {
        print_json(&r);
    } else {
        for p in r.problems(Path::new("")) {
            println!("{p}");
        }
        let verdict = if r.intact() { "intact" } else { "DAMAGED" };
        println!(
            "{}: {verdict}: {} entries, {} files ({}) checked; {} missing, {} changed, {} extra",
            r.backup.display(),
            r.entries,
            r.files,
            human(r.bytes),
            r.missing.len(),
            r.changed.len(),
            r.extra.len()
        );
    }
    Ok(if r.intact() { ExitCode::SUCCESS } else { ExitCode::from(EXIT_DAMAGED) })
}

/// `restore` from the directory `a.disk` (the CLI found an opened disk's
/// mount point for a name).
pub fn restore(a: RestoreArgs) -> Result<ExitCode> {
    engine::init(None);
    let from = if a.from == Path::new("latest") {
        let newest = prune::newest_complete(&a.disk)?;
        PathBuf::from(newest.with_context(|| format!("no complete backup folder in {}", a.disk.display()))?)
    } else {
        a.from
    };
    let backup = a.disk.join(&from);
    let opts = restore::Options {
        backup: backup.clone(),
        paths: a.paths,
        to: a.to,
        overwrite: a.overwrite,
        dry_run: a.dry_run,
        in_place: a.in_place,
        privileges: !a.no_privileges,
    };
    let s = restore::run(&opts)?;
    if a.json {
        print_json(&s);
    } else {
        println!("{}", restore::describe(&s, &backup));
    }
    Ok(partial_exit(s.skipped))
}

/// `backups`: the dated folders of the disk mounted at `root`, newest
/// first, with the last restore drill of each (from the history, when the
/// disk is known by its UUID).
pub fn backups(config: &Config, root: &Path, uuid: Option<&str>, json: bool) -> Result<ExitCode> {
    let folders = engine::backups::list(root)?;
    let drills = match (uuid, History::open_read_only(&config.history_path())) {
        (Some(uuid), Ok(Some(h))) => h.drills(uuid)?,
        (_, Err(e)) => {
            eprintln!("tetras-back: warning: {e:#}");
            Vec::new()
        }
        _ => Vec::new(),
    };
    let drill_of = |name: &str| drills.iter().find(|(_, d)| d.folder == name);
    if json {
        let rows: Vec<serde_json::Value> = folders
            .iter()
            .map(|f| {
                let mut v = serde_json::to_value(f).expect("folders serialise");
                if let Some((at, d)) = drill_of(&f.name) {
                    v["verified"] =
                        serde_json::json!({ "at": at, "passed": d.passed, "problems": d.problem_count });
                }
                v
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "disk": root, "backups": rows }))?);
        return Ok(ExitCode::SUCCESS);
    }
    if folders.is_empty() {
        println!("No dated backup folder at the top of {}.", root.display());
        return Ok(ExitCode::SUCCESS);
    }
    println!("{:<44} {:<10} {:>10} {:>9}  {:<24} PARTS", "BACKUP", "STATE", "SIZE", "FILES", "VERIFIED");
    for f in &folders {
        let state = match (f.complete, f.in_use) {
            _ if f.future => "FUTURE?",
            (true, _) => "complete",
            (false, true) => "writing",
            (false, false) => "INCOMPLETE",
        };
        let verified = match drill_of(&f.name) {
            Some((at, d)) => {
                format!("{} {}", if d.passed { "passed" } else { "DAMAGED" }, at.format("%Y-%m-%d %H:%M"))
            }
            None => "-".into(),
        };
        let parts: Vec<String> = f
            .parts
            .iter()
            .map(|p| match p.kind {
                engine::backups::PartKind::Snapshot => format!("{}/ (snapshot)", p.name),
                engine::backups::PartKind::Archive => format!("{} (archive)", p.name),
                engine::backups::PartKind::Incomplete => format!("{} (incomplete)", p.name),
                engine::backups::PartKind::Other => p.name.clone(),
                engine::backups::PartKind::Damaged => {
                    format!("{} (damaged: {})", p.name, p.damage.as_deref().unwrap_or("unreadable"))
                }
            })
            .collect();
        println!(
            "{:<44} {:<10} {:>10} {:>9}  {:<24} {}",
            f.name,
            state,
            human(f.bytes),
            f.files,
            verified,
            parts.join(", ")
        );
    }
    Ok(ExitCode::SUCCESS)
}
