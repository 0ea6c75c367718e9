//! The house: `src/` is made of rooms (a folder with its `mod.rs`, or a
//! file at the top), each of which says in its first `//!` lines what it
//! may import (`May import: `a`, `b``). This test reads the sources and
//! holds every room to its word: each `crate::ROOM` it names must be in its
//! list, and the lists together must have no cycle (arrows only downward).
//! A new import that goes up, or a room without its list, fails here.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file below `dir`.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The rooms: name, the file that documents it, and all its files.
fn rooms() -> BTreeMap<String, (PathBuf, Vec<PathBuf>)> {
    let mut rooms = BTreeMap::new();
    for e in fs::read_dir(src()).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_stem().unwrap().to_string_lossy().into_owned();
        if p.is_dir() && p.join("mod.rs").exists() {
            let mut files = Vec::new();
            sources(&p, &mut files);
            rooms.insert(name, (p.join("mod.rs"), files));
        } else if p.extension().is_some_and(|x| x == "rs") && name != "main" {
            rooms.insert(name, (p.clone(), vec![p]));
        }
    }
    rooms
}

/// The rooms named in backquotes in the `May import:` paragraph of the
/// room's opening `//!` comment.
fn declared(doc: &Path, rooms: &BTreeSet<String>) -> BTreeSet<String> {
    let text = fs::read_to_string(doc).unwrap();
    let head: Vec<&str> = text.lines().take_while(|l| l.starts_with("//!")).collect();
    let start = head
        .iter()
        .position(|l| l.starts_with("//! May import:"))
        .unwrap_or_else(|| panic!("{}: its opening //! comment has no `May import:` line", doc.display()));
    let para: String = head[start..]
        .iter()
        .take_while(|l| l.trim() != "//!")
        .map(|l| l.trim_start_matches("//!"))
        .collect::<Vec<_>>()
        .join(" ");
    para.split('`').skip(1).step_by(2).filter(|w| rooms.contains(*w)).map(str::to_owned).collect()
}

/// The rooms a file names as `crate::ROOM`.
fn used(file: &Path, rooms: &BTreeSet<String>) -> BTreeSet<String> {
    let text = fs::read_to_string(file).unwrap();
    text.match_indices("crate::")
        .map(|(i, _)| {
            text[i + 7..].chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect::<String>()
        })
        .filter(|r| rooms.contains(r))
        .collect()
}

#[test]
fn every_room_imports_only_what_it_says_and_arrows_only_go_down() {
    let rooms = rooms();
    let names: BTreeSet<String> = rooms.keys().cloned().collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut wrong = Vec::new();
    for (name, (doc, files)) in &rooms {
        let allowed = declared(doc, &names);
        for f in files {
            for r in used(f, &names).into_iter().filter(|r| r != name) {
                if !allowed.contains(&r) {
                    let rel = f.strip_prefix(src()).unwrap().display().to_string();
                    wrong.push(format!("src/{rel} imports crate::{r}, which `{name}` does not list"));
                }
            }
        }
        graph.insert(name.clone(), allowed);
    }
    assert!(wrong.is_empty(), "imports against the house's rules:\n{}", wrong.join("\n"));

    // No cycle among the declared arrows: peel off the rooms that import
    // nothing left, until none remain.
    let mut left = graph.clone();
    let mut order = Vec::new();
    while !left.is_empty() {
        let free: Vec<String> = left
            .iter()
            .filter(|(_, deps)| deps.iter().all(|d| !left.contains_key(d)))
            .map(|(n, _)| n.clone())
            .collect();
        assert!(!free.is_empty(), "a cycle among the rooms {:?}: {left:?}", left.keys().collect::<Vec<_>>());
        for n in free {
            left.remove(&n);
            order.push(n);
        }
    }
    println!("rooms, from the ground up: {}", order.join(" < "));
    let engine = &graph["engine"];
    assert!(
        engine.iter().all(|d| d == "fault"),
        "`engine` imports {engine:?}: it must stay commands of their own"
    );
}
