//! The command line: the legacy flags of the Perl Tetras-back
//! (`--save UUID=name`, `--plug /dev/sdb1`, ...) and the modern subcommands,
//! both turned into one [`Action`] so that clap's types stop here.
//!
//! May import: every room, as the top of the house: `backup`, `clients`,
//! `config`, `daemon`, `disk`, `engine`, `hosts`, `lang`, `logging`, `notify`, `store`, `web`.

mod commands;
mod engines;
mod generate;
mod history;
mod hosts;
mod watch;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{ArgAction, Args, Parser, Subcommand};

use crate::config;

/// Exit code of a command that needs the daemon when it is not running
/// (the code `systemctl status` uses for an inactive unit).
pub const EXIT_NOT_RUNNING: u8 = 3;

#[derive(Parser, Debug)]
#[command(
    name = "tetras-back",
    version,
    about = "Back up this server onto known USB disks when they are plugged in",
    long_about = "Back up this server onto known USB disks when they are plugged in.\n\n\
        Remember a disk once with `tetras-back save UUID NAME` (or the original's \
        `--save UUID=NAME`); from then on the daemon backs the server up whenever that \
        disk is plugged in, unmounts it and says when it is safe to remove.",
    after_help = "Examples:\n  tetras-back --save 0b7c3f1e-5d2a-4c8e-9f10-2a3b4c5d6e7f=office\n  \
        tetras-back disks\n  tetras-back watch"
)]
struct Cli {
    /// Configuration file
    #[arg(long, global = true, value_name = "PATH", env = "TETRAS_BACK_CONFIG")]
    config: Option<PathBuf>,

    /// More log output (-v: debug, -vv: trace)
    #[arg(short, long, global = true, action = ArgAction::Count)]
    verbose: u8,

    #[command(flatten)]
    legacy: Legacy,

    #[command(subcommand)]
    command: Option<Command>,
}

/// The original's flags, kept exactly.
#[derive(Args, Debug)]
#[group(multiple = false)]
struct Legacy {
    /// Remember a disk by filesystem UUID under a name (as `save`)
    #[arg(long, value_name = "UUID=NAME")]
    save: Option<String>,
    /// Forget a disk (as `forget`)
    #[arg(long, value_name = "UUID")]
    forget: Option<String>,
    /// Send events to this FIFO (as `register`)
    #[arg(long, value_name = "FIFO")]
    register: Option<PathBuf>,
    /// Stop sending events to this FIFO (as `unregister`)
    #[arg(long, value_name = "FIFO")]
    unregister: Option<PathBuf>,
    /// Act as if this device was plugged in (as `plug`)
    #[arg(long, value_name = "DEV")]
    plug: Option<PathBuf>,
    /// Act as if this device was removed (as `unplug`)
    #[arg(long, value_name = "DEV")]
    unplug: Option<PathBuf>,
    /// Run the daemon in the foreground (as `daemon`)
    #[arg(long)]
    start: bool,
    /// Stop the running daemon (as `stop`)
    #[arg(long)]
    stop: bool,
}

impl Legacy {
    fn any(&self) -> bool {
        self.save.is_some()
            || self.forget.is_some()
            || self.register.is_some()
            || self.unregister.is_some()
            || self.plug.is_some()
            || self.unplug.is_some()
            || self.start
            || self.stop
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the daemon in the foreground (what the systemd unit starts)
    #[command(after_help = "Example:\n  tetras-back daemon -v")]
    Daemon,
    /// Remember a disk: back it up whenever it is plugged in
    #[command(after_help = "Example (the UUID is the filesystem's, as `blkid` shows it):\n  \
        tetras-back save 0b7c3f1e-5d2a-4c8e-9f10-2a3b4c5d6e7f office\n\n\
        Saving a known UUID under another name renames it. Works with or without the daemon.\n\n\
        A known disk proves who it is with .tetras-back/disk-id, written at its first backup; \
        a disk that only copies its UUID is refused. --adopt accepts the disk plugged in now \
        as the one of that name: its next backup (started at once) gives it a new identity.")]
    Save {
        /// Filesystem UUID
        uuid: String,
        /// Name: 1 to 64 characters from A-Z a-z 0-9 . _ -
        name: String,
        /// The disk plugged in under this UUID is the one of that name (a new identity)
        #[arg(long)]
        adopt: bool,
    },
    /// Forget a disk
    #[command(after_help = "Example:\n  tetras-back forget 0b7c3f1e-5d2a-4c8e-9f10-2a3b4c5d6e7f")]
    Forget {
        /// Filesystem UUID of a known disk
        uuid: String,
    },
    /// Send events, one JSON line each, to an existing FIFO
    #[command(
        after_help = "Example:\n  mkfifo /run/my-notifier.fifo && tetras-back register /run/my-notifier.fifo"
    )]
    Register {
        /// Absolute path of the FIFO
        fifo: PathBuf,
    },
    /// Stop sending events to a FIFO
    #[command(after_help = "Example:\n  tetras-back unregister /run/my-notifier.fifo")]
    Unregister {
        /// Absolute path of the FIFO
        fifo: PathBuf,
    },
    /// Act as if a block device was plugged in
    #[command(after_help = "Example:\n  tetras-back plug /dev/sdb1")]
    Plug {
        /// Block device
        device: PathBuf,
    },
    /// Act as if a block device was removed
    #[command(after_help = "Example:\n  tetras-back unplug /dev/sdb1")]
    Unplug {
        /// Block device
        device: PathBuf,
    },
    /// Back up a plugged-in known disk now (again)
    #[command(after_help = "Example:\n  tetras-back backup office")]
    Backup {
        /// Name of a known disk that is plugged in
        name: String,
    },
    /// Open the disk for restore when it is plugged in, instead of backing it up
    #[command(after_help = "Example:\n  tetras-back hold office\n\n\
        Until `release`, plugging the disk in mounts it read-only (a restore never starts \
        with a backup that prunes); `backups office` and `restore office ...` then read it.")]
    Hold {
        /// Name of a known disk
        name: String,
    },
    /// Back the disk up again when it is plugged in (undoes `hold`)
    #[command(after_help = "Example:\n  tetras-back release office")]
    Release {
        /// Name of a known disk
        name: String,
    },
    /// Mount a plugged-in known disk read-only for restore
    #[command(after_help = "Example:\n  tetras-back open office\n\n\
        The disk stays opened until `close`, until it is unplugged, or until it has not been \
        used for `open_timeout` (30 min by default). It is not backed up while opened.")]
    Open {
        /// Name of a known disk that is plugged in
        name: String,
    },
    /// Unmount an opened disk; then it is safe to remove
    #[command(after_help = "Example:\n  tetras-back close office")]
    Close {
        /// Name of an opened disk
        name: String,
    },
    /// List the backup folders on a disk: complete or not, parts, size, files, last check
    #[command(
        after_help = "Examples:\n  tetras-back backups office\n  tetras-back backups /mnt/usb --json\n\n\
        DISK is the name of an opened disk (or one being backed up), or the directory where a \
        backup disk is mounted."
    )]
    Backups {
        /// Name of an opened disk, or a directory (with a `/`)
        #[arg(value_name = "DISK")]
        disk: PathBuf,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Stop the running daemon
    #[command(after_help = "Example:\n  tetras-back stop")]
    Stop,
    /// Make the daemon re-read its configuration, and say whether that worked
    #[command(after_help = "Example:\n  tetras-back reload\n\n\
        What `systemctl reload tetras-back` runs. A broken configuration is refused with the \
        file, the key and the problem (exit code 1); the daemon keeps the configuration it had.")]
    Reload,
    /// List the known disks, whether they are connected, and their last backup
    #[command(after_help = "Example:\n  tetras-back disks --json")]
    Disks {
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Say whether the daemon runs and what it is doing
    #[command(after_help = "Example:\n  tetras-back status\n\nExit code 3: the daemon is not running.")]
    Status {
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Show past backups (or plug events) from the history
    #[command(
        after_help = "Examples:\n  tetras-back history\n  tetras-back history --disk office --limit 5 --json\n  \
        tetras-back history --plugs\n\nReads <state_dir>/history.sqlite; works with or without the daemon."
    )]
    History(HistoryArgs),
    /// Send a test mail with the configured transport and show its error, if any
    #[command(
        name = "mail-test",
        after_help = "Example:\n  tetras-back mail-test\n\n\
        Sent at once (not through the outbox); the transport's error is printed as it is."
    )]
    MailTest,
    /// Serve the web console (its own process; the unit tetras-back-web.service)
    #[command(after_help = "Examples:\n  tetras-back web\n  tetras-back web-passwd alice\n\n\
        The console listens on `[web] listen` (127.0.0.1:8750 by default) and talks to the \
        daemon like the command line does. Nobody can log in until `web-passwd` has made a user.")]
    Web,
    /// Set (or with --delete remove) a web console user's password
    #[command(
        name = "web-passwd",
        after_help = "Examples:\n  tetras-back web-passwd alice\n  \
        echo 'secret' | tetras-back web-passwd alice\n  tetras-back web-passwd --delete alice\n\n\
        On a terminal the password is asked twice; otherwise one line is read from stdin. \
        The users file (`[web] users_file`) is written 0600 with bcrypt hashes, as `htpasswd -B` does."
    )]
    WebPasswd {
        /// User name
        name: String,
        /// Remove the user
        #[arg(long)]
        delete: bool,
    },
    /// Write the man pages or a shell completion script (used by `make install`)
    #[command(hide = true)]
    Generate(GenerateArgs),
    /// The restore drill on a mounted disk, as the daemon runs it (one JSON line)
    #[command(hide = true)]
    Drill {
        /// Where the disk is mounted
        mount: PathBuf,
    },
    /// Print events live until Ctrl-C
    #[command(after_help = "Example:\n  tetras-back watch --json | jq .\n\n\
        Registers a temporary FIFO with the daemon and removes it on exit.")]
    Watch {
        /// Print the raw JSON lines
        #[arg(long)]
        json: bool,
    },
    /// Copy trees into a new backup folder, hard-linking files unchanged since the last one
    #[command(after_help = "Examples:\n  \
        tetras-back snapshot --dest /mnt/disk/2026-11-22_10-00-00/home --link-dest auto /home/\n  \
        tetras-back snapshot --dry-run --dest /mnt/disk/new --link-dest /mnt/disk/old /etc /home\n\n\
        The folder is written as DIR.partial and renamed when complete. Exit code 23: some files \
        could not be read (reported; everything else was copied).")]
    Snapshot(engines::SnapshotArgs),
    /// Write a .tar.gz of trees, files and glob matches, compressed on all cores
    #[command(after_help = "Example:\n  \
        tetras-back archive -o /mnt/disk/server.tar.gz /etc /srv --glob '/var/log/*.log' --exclude '*.tmp'\n\n\
        Exit code 23: some files could not be read (reported; everything else was archived).")]
    Archive(engines::ArchiveArgs),
    /// Delete the oldest dated backup folders until enough space is free
    #[command(after_help = "Examples:\n  tetras-back prune /mnt/disk/backups --min-free 20GiB\n  \
        tetras-back prune /mnt/disk/backups --keep-daily 7 --keep-weekly 4 --keep-monthly 12 --dry-run\n\n\
        Backup folders are those whose names start with YYYY-MM-DD_HH-MM-SS. The newest complete \
        one and any being written are never deleted. Exit code 5: the free space asked for cannot \
        be reached.")]
    Prune(engines::PruneArgs),
    /// Re-read a snapshot and compare it with its manifest
    #[command(after_help = "Example:\n  tetras-back verify /mnt/disk/2026-11-22_10-00-00/home\n\n\
        Exit code 4: something is missing, changed or extra.")]
    Verify(engines::VerifyArgs),
    /// The other machines of [[hosts]]: list them; `key`, `trust`, `check`
    #[command(after_help = "Examples:\n  tetras-back hosts\n  tetras-back hosts key\n  \
        tetras-back hosts trust web1\n  tetras-back hosts check\n\n\
        Set-up: add a [[hosts]] entry, put the line `hosts key` prints on the host, `hosts trust` it, \
        `hosts check` it. backup_hosts.sh then pulls it onto every backup disk.")]
    Hosts(hosts::HostsArgs),
    /// Pull other hosts' paths over SSH with rsync into a backup folder
    #[command(after_help = "Examples:\n  \
        tetras-back pull --all --dest /mnt/disk/2026-12-02_02-30-00_Hosts --link-dest auto\n  \
        tetras-back pull web1 --dest /mnt/disk/new --dry-run --json\n\n\
        Each host goes into DIR/NAME with its absolute paths kept (DIR/web1/etc/nginx/...), \
        written as NAME.partial and renamed when complete, with a manifest as a snapshot has. \
        Exit code 6: a host failed (the others are complete); 23: some files could not be read there; 1: the pull could not run.")]
    Pull(hosts::PullArgs),
    /// Run a command confined to some folders (what pull runs rsync under)
    #[command(hide = true)]
    Confine(hosts::ConfineArgs),
    /// Copy files back out of a backup, with owners, modes, times, links and holes
    #[command(after_help = "Examples:\n  \
        tetras-back restore office Donnees/alice/thesis.odt --to /tmp/restored\n  \
        tetras-back restore office --from 2026-11-20_02-30-00_srv home/alice --to /srv/old --dry-run\n  \
        tetras-back restore office serveur.tar.gz/etc/nginx --to / --in-place --overwrite\n  \
        tetras-back restore /mnt/usb Donnees/alice --to /tmp/restored\n\n\
        DISK is an opened disk's name (`hold` or `open` it first) or the directory where a backup \
        disk is mounted. A PATH that starts with an archive's name (serveur.tar.gz/etc/nginx) \
        is taken from that archive. Each PATH keeps its place below DIR. Entries already in DIR are refused (all listed, \
        nothing written) unless --overwrite. Exit code 23: some entries could not be read.")]
    Restore(engines::RestoreArgs),
}

#[derive(Args, Debug, PartialEq)]
pub struct HistoryArgs {
    /// Only this disk
    #[arg(long, value_name = "NAME")]
    pub disk: Option<String>,
    /// At most this many entries, newest first
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub limit: usize,
    /// Plug and unplug events instead of backups
    #[arg(long)]
    pub plugs: bool,
    /// Print JSON instead of a table
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug, PartialEq)]
pub struct GenerateArgs {
    /// `man` (pages into DIR) or a shell: bash, zsh, fish (script on stdout)
    #[arg(value_parser = ["man", "bash", "zsh", "fish"])]
    pub what: String,
    /// Where the man pages go
    #[arg(value_name = "DIR", required_if_eq("what", "man"))]
    pub dir: Option<PathBuf>,
}

/// What to do, with the CLI's syntax gone.
#[derive(Debug, PartialEq)]
pub enum Action {
    Daemon,
    Save { uuid: String, name: String, adopt: bool },
    Forget { uuid: String },
    Register { fifo: PathBuf },
    Unregister { fifo: PathBuf },
    Plug { device: PathBuf },
    Unplug { device: PathBuf },
    Backup { name: String },
    Hold { name: String },
    Release { name: String },
    Open { name: String },
    Close { name: String },
    Backups { disk: PathBuf, json: bool },
    Stop,
    Reload,
    Disks { json: bool },
    Status { json: bool },
    Watch { json: bool },
    History(HistoryArgs),
    MailTest,
    Web,
    WebPasswd { name: String, delete: bool },
    Generate(GenerateArgs),
    Drill { mount: PathBuf },
    Snapshot(engines::SnapshotArgs),
    Archive(engines::ArchiveArgs),
    Prune(engines::PruneArgs),
    Verify(engines::VerifyArgs),
    Restore(engines::RestoreArgs),
    Hosts(hosts::HostsArgs),
    Pull(hosts::PullArgs),
    Confine(hosts::ConfineArgs),
}

impl Cli {
    fn action(self) -> Result<Action, String> {
        let l = self.legacy;
        if self.command.is_some() && l.any() {
            return Err(
                "the original's flags (--save, --plug, ...) cannot be combined with a subcommand".into()
            );
        }
        if let Some(command) = self.command {
            return Ok(match command {
                Command::Daemon => Action::Daemon,
                Command::Save { uuid, name, adopt } => Action::Save { uuid, name, adopt },
                Command::Forget { uuid } => Action::Forget { uuid },
                Command::Register { fifo } => Action::Register { fifo },
                Command::Unregister { fifo } => Action::Unregister { fifo },
                Command::Plug { device } => Action::Plug { device },
                Command::Unplug { device } => Action::Unplug { device },
                Command::Backup { name } => Action::Backup { name },
                Command::Hold { name } => Action::Hold { name },
                Command::Release { name } => Action::Release { name },
                Command::Open { name } => Action::Open { name },
                Command::Close { name } => Action::Close { name },
                Command::Backups { disk, json } => Action::Backups { disk, json },
                Command::Stop => Action::Stop,
                Command::Reload => Action::Reload,
                Command::Disks { json } => Action::Disks { json },
                Command::Status { json } => Action::Status { json },
                Command::Watch { json } => Action::Watch { json },
                Command::History(a) => Action::History(a),
                Command::MailTest => Action::MailTest,
                Command::Web => Action::Web,
                Command::WebPasswd { name, delete } => Action::WebPasswd { name, delete },
                Command::Generate(a) => Action::Generate(a),
                Command::Drill { mount } => Action::Drill { mount },
                Command::Snapshot(a) => Action::Snapshot(a),
                Command::Archive(a) => Action::Archive(a),
                Command::Prune(a) => Action::Prune(a),
                Command::Verify(a) => Action::Verify(a),
                Command::Restore(a) => Action::Restore(a),
                Command::Hosts(a) => Action::Hosts(a),
                Command::Pull(a) => Action::Pull(a),
                Command::Confine(a) => Action::Confine(a),
            });
        }
        Ok(if let Some(arg) = l.save {
            let (uuid, name) =
                arg.split_once('=').ok_or_else(|| format!("--save expects UUID=NAME, got {arg:?}"))?;
            Action::Save { uuid: uuid.to_owned(), name: name.to_owned(), adopt: false }
        } else if let Some(uuid) = l.forget {
            Action::Forget { uuid }
        } else if let Some(fifo) = l.register {
            Action::Register { fifo }
        } else if let Some(fifo) = l.unregister {
            Action::Unregister { fifo }
        } else if let Some(device) = l.plug {
            Action::Plug { device }
        } else if let Some(device) = l.unplug {
            Action::Unplug { device }
        } else if l.start {
            Action::Daemon
        } else if l.stop {
            Action::Stop
        } else {
            return Err("no command given; see `tetras-back --help`".into());
        })
    }
}

/// The clap description of the command line, for man pages and completions.
pub fn command() -> clap::Command {
    <Cli as clap::CommandFactory>::command()
}

/// Parses the command line, runs the command, prints any error once.
pub fn run() -> ExitCode {
    let cli = Cli::parse();
    let (config_path, explicit) = match &cli.config {
        Some(p) => (p.clone(), true),
        None => (PathBuf::from(config::DEFAULT_PATH), false),
    };
    let verbose = cli.verbose;
    let action = match cli.action() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("tetras-back: {e}");
            return ExitCode::from(2);
        }
    };
    crate::logging::init(verbose, matches!(action, Action::Daemon | Action::Web));
    match commands::run(action, config_path, explicit) {
        Ok(code) => code,
        Err(e) => {
            if e.downcast_ref::<crate::clients::control::client::NotRunning>().is_some() {
                eprintln!("tetras-back: {e}");
                return ExitCode::from(EXIT_NOT_RUNNING);
            }
            eprintln!("tetras-back: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn action(args: &[&str]) -> Result<Action, String> {
        let cli = Cli::try_parse_from(std::iter::once("tetras-back").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        cli.action()
    }

    #[test]
    fn legacy_flags_and_subcommands_mean_the_same() {
        let u = "0b7c3f1e-5d2a-4c8e-9f10-2a3b4c5d6e7f";
        assert_eq!(action(&["--save", &format!("{u}=office")]), action(&["save", u, "office"]));
        assert_eq!(action(&["--forget", u]), action(&["forget", u]));
        assert_eq!(action(&["--register", "/f"]), action(&["register", "/f"]));
        assert_eq!(action(&["--unregister", "/f"]), action(&["unregister", "/f"]));
        assert_eq!(action(&["--plug", "/dev/sdb1"]), action(&["plug", "/dev/sdb1"]));
        assert_eq!(action(&["--unplug", "/dev/sdb1"]), action(&["unplug", "/dev/sdb1"]));
        assert_eq!(action(&["--start"]), Ok(Action::Daemon));
        assert_eq!(action(&["--stop"]), Ok(Action::Stop));
    }

    #[test]
    fn malformed_legacy_use_is_refused() {
        assert!(action(&["--save", "no-equals-sign"]).unwrap_err().contains("UUID=NAME"));
        assert!(action(&["--save", "a=b", "--forget", "c"]).is_err(), "two legacy actions at once");
        assert!(action(&[]).unwrap_err().contains("no command"));
    }

    #[test]
    fn config_flag_is_global() {
        let cli = Cli::try_parse_from(["tetras-back", "disks", "--config", "/tmp/c.toml"]).unwrap();
        assert_eq!(cli.config, Some(PathBuf::from("/tmp/c.toml")));
        let cli = Cli::try_parse_from(["tetras-back", "--config", "/tmp/c.toml", "disks"]).unwrap();
        assert_eq!(cli.config, Some(PathBuf::from("/tmp/c.toml")));
        assert!(action(&["--stop", "disks"]).is_err(), "a legacy flag and a subcommand at once");
    }
}
