#!/usr/bin/python3
"""make bench: tetras-back's engines against the tools users would otherwise
use, on the same generated tree, in the same run. Each command is timed
RUNS times (median), alternating with its competitors, after a `sync` so
that no run pays for another's writeback. Commands that leave data on disk
are timed up to a `sync -f` of what they wrote, since tetras-back's own
figures include making the backup durable.

The "scale" section then takes a tree of SCALE_FILES small files (1,000,000
unless BENCH_SCALE_FILES says otherwise; 0 leaves it out) and runs each
command once, printing its time and its peak resident memory (GNU time's
%M, which covers the command's children).

Usage: bench.py TETRAS_BACK_BINARY WORKDIR [RUNS]
"""
import os
import shutil
import statistics
import subprocess
import sys
import time

sys.stdout.reconfigure(line_buffering=True)
BIN = os.path.abspath(sys.argv[1])
WORK = os.path.abspath(sys.argv[2])
RUNS = int(sys.argv[3]) if len(sys.argv) > 3 else 3
SRC = f"{WORK}/src"
SCALE_FILES = int(os.environ.get("BENCH_SCALE_FILES", "1000000"))
HERE = os.path.dirname(os.path.abspath(__file__))


def sh(cmd):
    subprocess.run(cmd, shell=True, check=True, stdout=subprocess.DEVNULL)


def clean(*paths):
    for p in paths:
        if os.path.isdir(p) and not os.path.islink(p):
            shutil.rmtree(p)
        elif os.path.lexists(p):
            os.unlink(p)
    sh("sync")


def timed(cmd, prepare):
    samples = []
    for _ in range(RUNS):
        prepare()
        t = time.monotonic()
        r = subprocess.run(cmd, shell=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        samples.append(time.monotonic() - t)
        if r.returncode != 0:
            sys.exit(f"bench: `{cmd}` failed ({r.returncode}): {r.stderr}")
    return statistics.median(samples)


def compare(title, ours, others, prepare, target, throughput=False):
    """Times `ours` and each of `others` (label, command), alternating."""
    results = {}
    for label, cmd in [("tetras-back", ours)] + others:
        results[label] = timed(cmd, prepare)
    mine = results["tetras-back"]
    rows = []
    for label, _ in others:
        theirs = results[label]
        if throughput:
            ratio, unit = theirs / mine, "x the throughput"
        else:
            ratio, unit = mine / theirs, "x the time"
        rows.append((label, theirs, ratio, unit))
    print(f"\n{title}")
    print(f"  tetras-back {mine:8.2f} s")
    for label, theirs, ratio, unit in rows:
        print(f"  {label:<28} {theirs:8.2f} s   ratio {ratio:5.2f}{unit} of {label.split(' +')[0]}")
    print(f"  target: {target}")
    return rows


def change_one_percent(tree):
    """Appends a line to one file in a hundred; returns what undoes it."""
    changed, seen = [], 0
    for dirpath, _, names in sorted(os.walk(tree)):
        for n in sorted(names):
            seen += 1
            if seen % 100 == 0:
                path = f"{dirpath}/{n}"
                changed.append((path, os.path.getsize(path)))
                with open(path, "ab") as f:
                    f.write(b"changed for the incremental run\n")
    return changed


def undo(changed):
    """Truncates the changed files back, so that every run starts from the
    same bytes."""
    for path, size in changed:
        os.truncate(path, size)


def measured(cmd):
    """Runs `cmd` once: (seconds, peak resident memory in MiB). GNU time
    reads the peak, so that this Python process's own size, which a child
    forked from it carries until it execs, does not count."""
    sh("sync")
    rss = f"{WORK}/peak"
    t = time.monotonic()
    r = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", rss, "sh", "-c", cmd],
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    elapsed = time.monotonic() - t
    if r.returncode != 0:
        sys.exit(f"bench: `{cmd}` failed ({r.returncode}): {r.stderr}")
    with open(rss) as f:
        peak = int(f.read().split()[-1]) / 1024
    os.unlink(rss)
    return elapsed, peak


def scale_row(title, ours, others, target):
    """Runs `ours` and each of `others` (label, command, cleanup) once."""
    mine, mine_mib = measured(ours)
    print(f"\n{title}")
    print(f"  tetras-back {mine:8.2f} s   peak {mine_mib:7.1f} MiB")
    for label, cmd, cleanup in others:
        theirs, their_mib = measured(cmd)
        cleanup()
        print(f"  {label:<28} {theirs:8.2f} s   peak {their_mib:7.1f} MiB   "
              f"ratio {mine / theirs:5.2f}x the time of {label.split(' +')[0]}")
    print(f"  target: {target}; peak <= 64 MiB")
    return mine_mib


def scale():
    """The engines on a tree of many small files: time and peak memory."""
    src = f"{WORK}/scale-src-{SCALE_FILES}"
    if not os.path.isdir(src):
        sh(f"/usr/bin/python3 {HERE}/gen.py --small {src} {SCALE_FILES}")
    root = f"{WORK}/scale"
    clean(root)
    os.makedirs(root)
    base, snap, other = (f"{root}/2026-01-01_00-00-00", f"{root}/2026-01-02_00-00-00", f"{root}/other")
    print(f"\n== scale: {SCALE_FILES:,} small files in {src}, one run each ==")
    peaks = [scale_row(
        "first snapshot (full copy)",
        f"{BIN} snapshot --dest {base} {src}/ && sync -f {base}",
        [("cp -a + sync", f"cp -a {src} {other} && sync -f {other}", lambda: clean(other)),
         ("rsync -a + sync", f"rsync -a {src}/ {other}/ && sync -f {other}", lambda: clean(other))],
        "<= 1.0x cp -a",
    )]
    changed = change_one_percent(src)
    peaks.append(scale_row(
        "incremental snapshot (1% of files changed)",
        f"{BIN} snapshot --dest {snap} --link-dest {base} {src}/ && sync -f {snap}",
        [("rsync -a --link-dest + sync", f"rsync -a --link-dest={base} {src}/ {other}/ && sync -f {other}",
          lambda: clean(other)),
         ("cp -al + sync", f"cp -al {base} {other} && sync -f {other}", lambda: clean(other))],
        "<= 0.33x rsync --link-dest",
    ))
    peaks.append(scale_row(
        "verify the incremental snapshot",
        f"{BIN} verify {snap}",
        [("rsync -anc --delete", f"rsync -anc --delete {src}/ {snap}/", lambda: None)],
        "<= 1.0x rsync -anc",
    ))
    clean(root)
    undo(changed)
    print(f"\n  peak memory of the engines at {SCALE_FILES:,} files: {max(peaks):.1f} MiB (target <= 64 MiB)")


def main():
    os.makedirs(WORK, exist_ok=True)
    if not os.path.isdir(SRC):
        sh(f"/usr/bin/python3 {HERE}/gen.py {SRC}")
    out = subprocess.run(["du", "-sh", "--apparent-size", SRC], capture_output=True, text=True).stdout.split()[0]
    files = int(subprocess.run(f"find {SRC} -type f | wc -l", shell=True, capture_output=True, text=True).stdout)
    print(f"tree: {files} files, {out}, in {SRC}; median of {RUNS} runs; {os.cpu_count()} cores")

    d = f"{WORK}/dest"
    compare(
        "first snapshot (full copy)",
        f"{BIN} snapshot --dest {d} {SRC}/",
        [("cp -a + sync", f"cp -a {SRC} {d} && sync -f {d}"),
         ("rsync -a + sync", f"rsync -a {SRC}/ {d}/ && sync -f {d}")],
        lambda: clean(d),
        "<= 1.0x cp -a",
    )

    # The previous snapshot, then 1% of the files changed.
    base = f"{WORK}/base"
    clean(base)
    sh(f"{BIN} snapshot --dest {base} {SRC}/")
    changed = change_one_percent(SRC)
    compare(
        "incremental snapshot (1% of files changed)",
        f"{BIN} snapshot --dest {d} --link-dest {base} {SRC}/",
        [("rsync -a --link-dest + sync", f"rsync -a --link-dest={base} {SRC}/ {d}/ && sync -f {d}"),
         ("cp -al + sync", f"cp -al {base} {d} && sync -f {d}")],
        lambda: clean(d),
        "<= 0.33x rsync --link-dest",
    )

    a = f"{WORK}/a.tar.gz"
    compare(
        "archive (.tar.gz)",
        f"{BIN} archive -o {a} {SRC}",
        [("tar czf + sync", f"tar czf {a} -C {WORK} src && sync -f {a}")],
        lambda: clean(a),
        ">= 1.8x the throughput of tar czf",
        throughput=True,
    )

    # Getting it all back: the snapshot restored into an empty folder, with
    # the same fidelity as the tools it is compared with (owners, modes,
    # times, hard links, xattrs).
    entries = " ".join(e for e in sorted(os.listdir(base)) if e != ".tetras-back-manifest")
    compare(
        "restore a snapshot",
        f"{BIN} restore {WORK} --from base {entries} --to {d} && sync -f {d}",
        [("cp -a + sync", f"cp -a {base} {d} && sync -f {d}"),
         ("rsync -aHAX + sync", f"rsync -aHAX --exclude=/.tetras-back-manifest {base}/ {d}/ && sync -f {d}")],
        lambda: clean(d),
        "<= 1.0x cp -a",
    )

    p = f"{WORK}/prune"
    victim = f"{p}/2026-01-01_00-00-00"

    def prepare_prune():
        clean(p)
        os.makedirs(f"{p}/2026-01-02_00-00-00")
        sh(f"cp -a {SRC} {victim}")
        sh("sync")

    compare(
        "prune one snapshot",
        f"{BIN} prune {p} --keep-last 1",
        [("rm -rf", f"rm -rf {victim}")],
        prepare_prune,
        "<= 1.0x rm -rf",
    )
    clean(p, d, a, base)
    undo(changed)
    if SCALE_FILES:
        scale()


if __name__ == "__main__":
    main()
