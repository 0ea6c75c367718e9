//! `generate`: the man pages and shell completions `make install` installs,
//! made from the same clap description as `--help`, so they never drift.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap_complete::Shell;

use super::GenerateArgs;

pub fn run(a: GenerateArgs) -> Result<ExitCode> {
    let mut cmd = super::command();
    cmd.build();
    match a.what.as_str() {
        "man" => man(&cmd, a.dir.as_deref().context("man needs a directory")?)?,
        shell => {
            let shell: Shell = shell.parse().map_err(anyhow::Error::msg)?;
            clap_complete::generate(shell, &mut cmd, "tetras-back", &mut std::io::stdout());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// tetras-back.8, and tetras-back-SUBCOMMAND.8 for each visible subcommand.
fn man(cmd: &clap::Command, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let page = |cmd: clap::Command, file: String| -> Result<()> {
        let path = dir.join(file);
        let mut out = Vec::new();
        clap_mangen::Man::new(cmd).section("8").render(&mut out)?;
        std::fs::write(&path, out).with_context(|| format!("cannot write {}", path.display()))
    };
    page(cmd.clone(), "tetras-back.8".into())?;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set() && s.get_name() != "help") {
        let name = format!("tetras-back-{}", sub.get_name());
        page(sub.clone().name(name.clone()).version(env!("CARGO_PKG_VERSION")), format!("{name}.8"))?;
    }
    Ok(())
}
