#!/usr/bin/python3
"""Generates the benchmark's source tree, the same bytes on every run.

A server-like tree: about 50,000 files in nested directories, mostly small
text (configuration, source, mail, logs: compressible), some binary
(incompressible, like photos or packages), and a few large logs.
Usage: gen.py DIR [FILES]
       gen.py --small DIR FILES   (the scale tree: many small files, as in
                                   Maildirs, 250 to a directory)
"""
import os
import random
import sys

WORDS = (
    "the server backup disk mail user home config value error warning info debug request "
    "response session client daemon process thread memory file directory network socket "
    "port address host name date time status ok failed retry timeout queue message data "
    "index table record field key hash copy link mount device kernel module service unit"
).split()


def corpus(rng, size):
    out = []
    n = 0
    while n < size:
        line = " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 14)))
        line = f"{rng.randint(0, 99999):05d} {line} {rng.random():.6f}\n"
        out.append(line)
        n += len(line)
    return "".join(out).encode()


def small(root, files):
    rng = random.Random(20261124)
    text = corpus(rng, 1 << 20)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    for k in range(0, files, 250):
        d = f"{root}/user{k // 50_000:03d}/folder{k // 250 % 200:03d}/cur"
        os.makedirs(d)
        for i in range(k, min(k + 250, files)):
            size = rng.randint(20, 600)
            off = rng.randrange(0, len(text) - size)
            fd = os.open(f"{d}/{i:07d}.mail", flags, 0o600)
            os.write(fd, text[off:off + size])
            os.close(fd)
    print(f"{files} small files in {root}")


def main():
    if sys.argv[1] == "--small":
        return small(sys.argv[2], int(sys.argv[3]))
    root = sys.argv[1]
    files = int(sys.argv[2]) if len(sys.argv) > 2 else 50_000
    rng = random.Random(20261122)
    text = corpus(rng, 8 << 20)
    noise = rng.randbytes(4 << 20)
    made = 0
    d = 0
    while made < files:
        top = f"{root}/u{d // 40:03d}/p{d % 40:02d}"
        sub = f"{top}/s{d % 7}"
        os.makedirs(sub, exist_ok=True)
        for i in range(min(100, files - made)):
            where = sub if i % 3 else top
            r = rng.random()
            if r < 0.80:
                size = int(rng.lognormvariate(7.5, 1.3))  # median ~1.8 KiB
                src = text
            elif r < 0.97:
                size = int(rng.lognormvariate(10, 1.0))  # median ~22 KiB
                src = text
            else:
                size = int(rng.lognormvariate(11, 1.2))  # binary, median ~60 KiB
                src = noise
            size = min(size, len(src) - 1)
            off = rng.randrange(0, len(src) - size)
            with open(f"{where}/f{i:03d}.{'bin' if src is noise else 'txt'}", "wb") as f:
                f.write(src[off:off + size])
            made += 1
        d += 1
    os.makedirs(f"{root}/logs", exist_ok=True)
    for k in range(4):
        with open(f"{root}/logs/big{k}.log", "wb") as f:
            for _ in range(8):
                f.write(text)  # 64 MiB each
    print(f"{made + 4} files in {root}")


if __name__ == "__main__":
    main()
