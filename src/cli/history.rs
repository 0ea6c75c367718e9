//! `history`: past backups and plug events, read from history.sqlite
//! directly (the database is shared with a running daemon through WAL).

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;

use super::HistoryArgs;
use crate::config::Config;
use crate::engine::human;
use crate::store::history::History;

pub fn run(config: &Config, a: &HistoryArgs) -> Result<ExitCode> {
    let path = config.history_path();
    let Some(h) = History::open_read_only(&path)? else {
        if a.json {
            println!("[]");
        } else {
            println!(
                "No history yet: {} does not exist (it is made when the daemon starts).",
                path.display()
            );
        }
        return Ok(ExitCode::SUCCESS);
    };
    if a.plugs {
        let rows = h.plugs(a.disk.as_deref(), a.limit)?;
        if a.json {
            println!("{}", serde_json::to_string_pretty(&rows)?);
            return Ok(ExitCode::SUCCESS);
        }
        println!("{:<19} {:<9} {:<16} {:<36} DEVICE", "TIME", "ACTION", "DISK", "UUID");
        for r in rows {
            println!(
                "{:<19} {:<9} {:<16} {:<36} {}",
                r.time.format("%Y-%m-%d %H:%M:%S"),
                r.action,
                r.disk.as_deref().unwrap_or("(unknown)"),
                r.uuid,
                r.device
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let rows = h.backups(a.disk.as_deref(), a.limit)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(ExitCode::SUCCESS);
    }
    if rows.is_empty() {
        println!(
            "No backups recorded{}.",
            a.disk.as_deref().map(|d| format!(" for {d}")).unwrap_or_default()
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<19} {:<16} {:<11} {:>10} {:>10} {:>8}  LOG",
        "STARTED", "DISK", "STATUS", "DURATION", "WRITTEN", "FILES"
    );
    for r in rows {
        let duration = r.duration_secs.map_or("-".to_owned(), |d| {
            humantime::format_duration(Duration::from_secs(d as u64)).to_string()
        });
        println!(
            "{:<19} {:<16} {:<11} {:>10} {:>10} {:>8}  {}",
            r.started.format("%Y-%m-%d %H:%M:%S"),
            r.disk,
            r.status,
            duration,
            r.bytes_written.map_or("-".to_owned(), human),
            r.files.map_or("-".to_owned(), |f| f.to_string()),
            r.log.display()
        );
        for s in r.scripts.iter().filter(|s| s.exit_code != Some(0)) {
            println!("{:<19} └ {}: {}", "", s.script, s.outcome);
        }
        if let Some(e) = &r.error {
            println!("{:<19} └ {e}", "");
        }
        for s in &r.shrunk {
            println!("{:<19} └ WARNING, shrunk: {}", "", crate::logging::printable(&s.to_string()));
        }
        for h in &r.hosts {
            let (head, _) = crate::store::report::host_lines(h, crate::lang::Language::En);
            println!("{:<19} └ host {}: {}", "", h.name, crate::logging::printable(&head));
        }
        if let Some(d) = &r.drill {
            println!("{:<19} └ restore drill {}", "", d.summary());
            for p in d.problems.iter().take(5) {
                println!("{:<19}   {p}", "");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
