#!/usr/bin/python3
"""make bench: tetras-back's engines against the tools users would otherwise
use, on the same generated tree, in the same run. Each command is timed
RUNS times (median), alternating with its competitors, after a `sync` so
that no run pays for another's writeback. Commands that leave data on disk
are timed up to a `sync -f` of what they wrote, since tetras-back's own
figures include making the backup durable.

The "pull" section starts an OpenSSH server of its own on 127.0.0.1 and
pulls the same tree from it over ssh with `tetras-back pull`, against
rsync with the same options through the same ssh_config; then eight
smaller hosts at --jobs 1 against --jobs 4. It is left out, saying why,
when root's password is locked (sshd without PAM then refuses root's key).

The "scale" section then takes a tree of SCALE_FILES small files (1,000,000
unless BENCH_SCALE_FILES says otherwise; 0 leaves it out) and runs each
command once, printing its time and its peak resident memory (GNU time's
%M, which covers the command's children).

The "progress" section times the same snapshots with TETRAS_BACK_PROGRESS
set, as the daemon sets it (a thread of the engine rewrites a small file
four times a second), and without: what reporting progress costs.

BENCH_ONLY=SECTION[,SECTION...] runs only those of "engines" (snapshot,
archive, restore, prune), "progress", "pull" and "scale".

Usage: bench.py TETRAS_BACK_BINARY WORKDIR [RUNS]
"""
import os
import re
import shutil
import signal
import socket
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
SECTIONS = ("engines", "progress", "pull", "scale")
ONLY = [x for x in os.environ.get("BENCH_ONLY", ",".join(SECTIONS)).split(",") if x]
if set(ONLY) - set(SECTIONS):
    sys.exit(f"bench: BENCH_ONLY takes some of {','.join(SECTIONS)}, not {os.environ['BENCH_ONLY']!r}")


def sh(cmd):
    subprocess.run(cmd, shell=True, check=True, stdout=subprocess.DEVNULL)


def quiet(cmd):
    """sh(), its stderr (tetras-back's log) shown only if it fails."""
    r = subprocess.run(cmd, shell=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        sys.exit(f"bench: `{cmd}` failed ({r.returncode}): {r.stderr}")


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


def compare(title, ours, others, prepare, target, throughput=False, limit=None):
    """Times `ours` and each of `others` (label, command), alternating. With
    `limit`, the first ratio is said to PASS the target or to be over it."""
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
    verdict = ""
    if limit is not None:
        verdict = f": {'PASS' if rows[0][2] <= limit else 'over'} ({rows[0][2]:.2f}x)"
    print(f"  target: {target}{verdict}")
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


def root_locked():
    """root's password field in /etc/shadow if it is locked ("!..."): sshd
    without PAM then refuses every login to root, keys included."""
    try:
        with open("/etc/shadow") as f:
            for line in f:
                name, _, rest = line.partition(":")
                if name == "root":
                    password = rest.split(":")[0]
                    return password if password.startswith("!") else None
    except OSError:
        pass
    return None


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_sshd(d, port, authorized_keys):
    """Debian's sshd in the foreground on 127.0.0.1:`port`, with a host key,
    a config, an authorized_keys, a pid file and a log (sshd.log) of its own
    in `d`; root may log in with a key only. Returns the process once the
    port accepts connections (10 s)."""
    if not os.path.isdir("/run/sshd"):  # its privilege separation directory
        os.makedirs("/run/sshd")
        os.chmod("/run/sshd", 0o755)
    os.makedirs(d)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "tetras-back bench sshd",
                    "-f", f"{d}/host_ed25519"], stdin=subprocess.DEVNULL, check=True)
    with open(f"{d}/authorized_keys", "w") as f:
        f.write(authorized_keys)
    os.chmod(f"{d}/authorized_keys", 0o600)
    # OpenSSH 9.8 and later hold back for a while a source whose connections
    # do not authenticate, as the probe below does: not for loopback.
    v = subprocess.run(["/usr/sbin/sshd", "-V"], capture_output=True, text=True)
    m = re.search(r"OpenSSH_(\d+)\.(\d+)", v.stderr + v.stdout)
    penalties = "PerSourcePenalties no\n" if m and (int(m[1]), int(m[2])) >= (9, 8) else ""
    config = f"{d}/sshd_config"
    with open(config, "w") as f:
        f.write(f'ListenAddress 127.0.0.1:{port}\nHostKey "{d}/host_ed25519"\n'
                f'AuthorizedKeysFile "{d}/authorized_keys"\nPidFile "{d}/sshd.pid"\n'
                "StrictModes no\nPermitRootLogin prohibit-password\nPubkeyAuthentication yes\n"
                "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
                f"PrintMotd no\nLogLevel VERBOSE\n{penalties}")
    r = subprocess.run(["/usr/sbin/sshd", "-t", "-f", config], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"bench: sshd -t -f {config}: {r.stderr}")
    with open(f"{d}/sshd.log", "ab") as log:
        proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", config],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_sshd(proc)
            sys.exit(f"bench: sshd did not listen on 127.0.0.1:{port}:\n{sshd_log(d)}")
        time.sleep(0.02)


def stop_sshd(proc):
    """SIGTERM to that pid, SIGKILL after 2 s, and reap."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(2)
        except subprocess.TimeoutExpired:
            proc.kill()
    proc.wait()


def sshd_log(d):
    try:
        with open(f"{d}/sshd.log") as f:
            return f.read()
    except OSError:
        return ""


def pull():
    """`tetras-back pull` from an sshd on loopback against rsync with the
    same options through the same ssh_config (so the same ssh, key and
    cipher), then eight hosts at --jobs 1 against --jobs 4."""
    print("\n== pull: the tree over ssh from an sshd of our own on 127.0.0.1 ==")
    locked = root_locked()
    if locked:
        print(f"  skipped: root's password is locked ({locked[:1]}... in /etc/shadow), and sshd without PAM "
              "then refuses root's key login; unlock it with `usermod -p '*' root` to run this section")
        return
    root = f"{WORK}/pull"
    clean(root)
    os.makedirs(root)
    sshd = None
    changed = []
    try:
        state, sshd_dir, cfg = f"{root}/state", f"{root}/sshd", f"{root}/tetras-back.toml"
        # Eight hosts of a part of the tree each (u000 to u007: 4,000 files).
        parts = sorted(e for e in os.listdir(SRC) if e.startswith("u") and os.path.isdir(f"{SRC}/{e}"))
        parts = [parts[i % len(parts)] for i in range(8)]
        port = free_port()
        hosts = [("h1", SRC)] + [(f"part{i + 1}", f"{SRC}/{p}") for i, p in enumerate(parts)]
        with open(cfg, "w") as f:
            f.write(f'state_dir = "{state}"\nrun_dir = "{root}/run"\nlog_dir = "{root}/log"\n')
            for name, path in hosts:
                f.write(f'\n[[hosts]]\nname = "{name}"\naddress = "127.0.0.1"\nport = {port}\npaths = ["{path}"]\n')
        tb = f"{BIN} --config {cfg}"
        quiet(f"{tb} hosts key")
        with open(f"{state}/ssh/id_ed25519.pub") as f:
            public = f.read()
        sshd = start_sshd(sshd_dir, port, public)
        fingerprint = subprocess.run(["ssh-keygen", "-lf", f"{sshd_dir}/host_ed25519.pub"],
                                     capture_output=True, text=True, check=True).stdout.split()[1]
        quiet(f"{tb} hosts trust h1 --fingerprint {fingerprint}")
        # `hosts check` writes our ssh_config (so does each pull, for the
        # hosts it pulls) and says what is wrong, if anything.
        r = subprocess.run(f"{tb} hosts check h1", shell=True, capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"bench: hosts check h1: {r.stdout}{r.stderr}\n{sshd_log(sshd_dir)}")
        ssh_config = f"{state}/ssh/ssh_config"
        # The login works, with the ssh, config and key that rsync uses below.
        r = subprocess.run(["ssh", "-F", ssh_config, "tetras-back--h1", "true"],
                           stdin=subprocess.DEVNULL, capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"bench: ssh -F {ssh_config} tetras-back--h1 failed: {r.stderr}\n{sshd_log(sshd_dir)}")
        out = subprocess.run(["ssh", "-V"], capture_output=True, text=True).stderr.strip()
        print(f"  {out}; port {port}; the default cipher; ssh_config {ssh_config}")

        rsync = f"rsync -aHAXS --numeric-ids --relative -e \"ssh -F '{ssh_config}'\""
        d, dr = f"{root}/d", f"{root}/d-rsync"
        compare(
            "first pull (full copy)",
            f"{tb} pull h1 --dest {d}",
            [("rsync -aHAXS over ssh + sync", f"{rsync} tetras-back--h1:{SRC} {dr}/ && sync -f {dr}")],
            lambda: clean(d, dr),
            "<= 1.15x rsync",
            limit=1.15,
        )

        # The previous pull of each, then 1% of the files changed.
        prev, prevr = f"{root}/prev", f"{root}/prev-rsync"
        quiet(f"{tb} pull h1 --dest {prev}")
        sh(f"{rsync} tetras-back--h1:{SRC} {prevr}/ && sync -f {prevr}")
        changed = change_one_percent(SRC)
        compare(
            "incremental pull (1% of files changed, --link-dest the previous)",
            f"{tb} pull h1 --dest {d} --link-dest {prev}",
            [("rsync --link-dest over ssh + sync",
              f"{rsync} --link-dest={prevr} tetras-back--h1:{SRC} {dr}/ && sync -f {dr}")],
            lambda: clean(d, dr),
            "<= 1.2x rsync --link-dest",
            limit=1.2,
        )
        undo(changed)
        changed = []
        clean(prev, prevr)

        names = " ".join(name for name, _ in hosts[1:])
        one = timed(f"{tb} pull {names} --dest {d} --jobs 1", lambda: clean(d))
        four = timed(f"{tb} pull {names} --dest {d} --jobs 4", lambda: clean(d))
        print(f"\n8 hosts at once ({', '.join(sorted(set(parts)))} of the tree: one each), first pull")
        print(f"  --jobs 1    {one:8.2f} s")
        print(f"  --jobs 4    {four:8.2f} s   speed-up {one / four:5.2f}x on {os.cpu_count()} cores")
    finally:
        undo(changed)
        if sshd:
            stop_sshd(sshd)
        clean(root)


def main():
    os.makedirs(WORK, exist_ok=True)
    if not os.path.isdir(SRC):
        sh(f"/usr/bin/python3 {HERE}/gen.py {SRC}")
    out = subprocess.run(["du", "-sh", "--apparent-size", SRC], capture_output=True, text=True).stdout.split()[0]
    files = int(subprocess.run(f"find {SRC} -type f | wc -l", shell=True, capture_output=True, text=True).stdout)
    print(f"tree: {files} files, {out}, in {SRC}; median of {RUNS} runs; {os.cpu_count()} cores")
    if "engines" in ONLY:
        engines()
    if "progress" in ONLY:
        progress()
    if "pull" in ONLY:
        pull()
    if "scale" in ONLY and SCALE_FILES:
        scale()


def engines():
    """snapshot, archive, restore and prune on the tree."""
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


def progress():
    """The same first and incremental snapshots with and without progress reports."""
    d, base, pf = f"{WORK}/dest", f"{WORK}/base", f"{WORK}/progress.json"
    clean(base)
    sh(f"{BIN} snapshot --dest {base} {SRC}/")
    changed = []
    for title, cmd in [
        ("first snapshot, reporting its progress", f"{BIN} snapshot --dest {d} {SRC}/"),
        ("incremental snapshot (1% changed), reporting its progress",
         f"{BIN} snapshot --dest {d} --link-dest {base} {SRC}/"),
    ]:
        if not changed and "incremental" in title:
            changed = change_one_percent(SRC)
        compare(title, f"TETRAS_BACK_PROGRESS={pf} {cmd}", [("the same without progress", cmd)],
                lambda: clean(d, pf), "<= 1.02x the time without", limit=1.02)
    clean(d, base, pf)
    undo(changed)


if __name__ == "__main__":
    main()
