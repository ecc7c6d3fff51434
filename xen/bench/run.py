#!/usr/bin/env python3
"""Time nixboot, pygrub and a plain copy on benchmark disks (see bench.sh).

Each run gets a fresh output directory and a pre-created result file, as
libxl gives the boot loader, and starts after `sync` (so writeback from
the previous run does not land inside this one); cold runs also drop the
page cache first. Wall time is measured around spawn + wait4; peak RSS is
wait4's ru_maxrss, which covers the process and every descendant it waited
for (for nixboot: the parent and its parse child, the larger of the two).
The first run of each command is checked: result file items and copies
byte-identical to the source kernel and initrd.
"""
import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time


def drop_caches():
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


TIME = "/usr/bin/time"


def run_once(argv, cold, work):
    """Wall ms and peak RSS KiB of argv. It runs under GNU time, which
    reports wait4's ru_maxrss for its child: Linux keeps ru_maxrss across
    execve, so a command spawned straight from this Python process would
    report Python's own RSS; time's small fork child does not carry it."""
    os.sync()
    if cold:
        drop_caches()
    rssfile = os.path.join(work, "rss")
    devnull = os.open(os.devnull, os.O_RDWR)
    try:
        t0 = time.perf_counter_ns()
        pid = os.posix_spawn(
            TIME, [TIME, "-f", "%M", "-o", rssfile, *argv], os.environ,
            file_actions=[(os.POSIX_SPAWN_DUP2, devnull, 0),
                          (os.POSIX_SPAWN_DUP2, devnull, 1),
                          (os.POSIX_SPAWN_DUP2, devnull, 2)])
        _, status, _ = os.wait4(pid, 0)
        t1 = time.perf_counter_ns()
    finally:
        os.close(devnull)
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"{argv!r} failed with {code}")
    return (t1 - t0) / 1e6, int(open(rssfile).read().split()[-1])


def check(outdir, result, kernel, initrd, expect_result):
    names = sorted(os.listdir(outdir))
    if expect_result:
        items = [i for i in open(result, "rb").read().split(b"\0") if i]
        d = dict(i.split(b" ", 1) for i in items)
        k, r = d[b"kernel"].decode(), d[b"ramdisk"].decode()
    else:
        k = os.path.join(outdir, next(n for n in names if "vmlinuz" in n or "kernel" in n))
        r = os.path.join(outdir, next(n for n in names if "initrd" in n or "ramdisk" in n))
    for got, want in ((k, kernel), (r, initrd)):
        if subprocess.run(["cmp", "-s", got, want]).returncode != 0:
            raise SystemExit(f"{got} differs from {want}")


def measure(name, make_argv, reps, cold, work, kernel, initrd, validate, expect_result=True):
    times, rss = [], []
    # Warm runs start with one untimed run of the same command, so its
    # inputs are in the page cache (reading a whole image would not do:
    # reading the holes of a sparse 8 GiB image fills the cache with zero
    # pages and evicts everything else).
    for i in range(-1 if not cold else 0, reps):
        outdir = tempfile.mkdtemp(prefix="out.", dir=work)
        result = os.path.join(outdir + ".result")
        open(result, "wb").close()
        argv = make_argv(outdir, result)
        ms, kib = run_once(argv, cold, work)
        if i == 0 and validate:
            check(outdir, result, kernel, initrd, expect_result)
        if i >= 0:
            times.append(ms)
            rss.append(kib)
        shutil.rmtree(outdir)
        os.unlink(result)
    return {"name": name, "median": statistics.median(times), "min": min(times),
            "max": max(times), "rss": max(rss), "n": reps}


def split_rss(nixboot, disk, work):
    """One extra run with -vv: nixboot logs its own and its parse child's peak RSS."""
    outdir = tempfile.mkdtemp(prefix="out.", dir=work)
    result = outdir + ".result"
    open(result, "wb").close()
    p = subprocess.run([TIME, "-f", "%M", nixboot, f"--output={result}", "--output-format=simple0",
                        f"--output-directory={outdir}", "-vv", disk],
                       capture_output=True, text=True)
    shutil.rmtree(outdir)
    os.unlink(result)
    m = re.search(r"parent peak RSS (\d+) KiB, parse child peak RSS (\d+) KiB", p.stderr)
    return (int(m.group(1)), int(m.group(2))) if m else (None, None)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--nixboot", required=True)
    ap.add_argument("--pygrub", required=True)
    ap.add_argument("--kernel", required=True)
    ap.add_argument("--initrd", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--cold-reps", type=int, default=5)
    ap.add_argument("--pygrub-variants", default="all",
                    help="'all' or 'first': run pygrub on every image or only the first")
    ap.add_argument("--only", default="", help="comma-separated commands to run: cp,cat,nixboot,lookup,pygrub")
    ap.add_argument("images", nargs="+", help="NAME=PATH")
    a = ap.parse_args()
    images = [i.split("=", 1) for i in a.images]
    nb = lambda disk, extra=(): lambda out, res: [
        a.nixboot, f"--output={res}", "--output-format=simple0", f"--output-directory={out}", *extra, disk]
    pg = lambda disk: lambda out, res: [
        a.pygrub, f"--output={res}", "--output-format=simple0", f"--output-directory={out}", "-q", disk]
    cp = shutil.which("cp")
    cat = shutil.which("sh")
    copy = lambda out, res: [cp, a.kernel, a.initrd, out + "/"]
    catcopy = lambda out, res: [cat, "-c", 'cat "$1" > "$3/boot_kernel" && cat "$2" > "$3/boot_ramdisk"', "sh",
                                a.kernel, a.initrd, out]

    only = set(filter(None, a.only.split(",")))
    want = lambda cmd: not only or cmd in only
    modes = [("warm", False, a.reps)]
    if a.cold_reps > 0:
        modes.append(("cold", True, a.cold_reps))
    rows = []
    for mode, cold, reps in modes:
        args = dict(reps=reps, cold=cold, work=a.work, kernel=a.kernel, initrd=a.initrd)
        if want("cp"):
            rows.append((mode, "-", "copy (cp)", measure("cp", copy, validate=True, expect_result=False, **args)))
        if want("cat"):
            rows.append((mode, "-", "copy (cat >)", measure("cat", catcopy, validate=True, expect_result=False, **args)))
        for idx, (name, disk) in enumerate(images):
            if want("nixboot"):
                rows.append((mode, name, "nixboot", measure("nixboot", nb(disk), validate=True, **args)))
            if want("lookup"):
                rows.append((mode, name, "nixboot -n (lookup)", measure(
                    "nixboot-n", lambda o, r, d=disk: [a.nixboot, "-n", "-q", d], validate=False, **args)))
            if want("pygrub") and (a.pygrub_variants == "all" or idx == 0):
                rows.append((mode, name, "pygrub -q", measure("pygrub", pg(disk), validate=True, **args)))
        print(f"[{mode} done]", file=sys.stderr, flush=True)

    print()
    print(f"{'mode':5} {'disk':22} {'command':20} {'median ms':>10} {'min ms':>8} {'max ms':>8} {'peak RSS':>10}  n")
    for mode, disk, cmd, r in rows:
        print(f"{mode:5} {disk:22} {cmd:20} {r['median']:10.1f} {r['min']:8.1f} {r['max']:8.1f} "
              f"{r['rss'] / 1024:7.1f} MiB  {r['n']}")
    print()
    base = images[0][0]
    for mode, _, _ in modes:
        get = lambda disk, cmd: next((r for m, d, c, r in rows if m == mode and d == disk and c == cmd), None)
        cpr, catr = get("-", "copy (cp)"), get("-", "copy (cat >)")
        for name, _ in images:
            n, p = get(name, "nixboot"), get(name, "pygrub -q")
            lk, lk0 = get(name, "nixboot -n (lookup)"), get(base, "nixboot -n (lookup)")
            parts = []
            if n and cpr:
                parts.append(f"nixboot/copy(cp) {n['median'] / cpr['median']:.2f}x")
            if n and catr:
                parts.append(f"nixboot/copy(cat) {n['median'] / catr['median']:.2f}x")
            if n and p:
                parts.append(f"pygrub/nixboot {p['median'] / n['median']:.1f}x (nixboot/pygrub {n['median'] / p['median']:.2f})")
            if lk and lk0:
                parts.append(f"lookup {lk['median']:.1f} ms ({lk['median'] / lk0['median']:.2f}x of {base})")
            if parts:
                print(f"{mode} {name}: " + ", ".join(parts))
    print()
    # The issue-2 targets, on the warm runs (the image's first variant for
    # the copy and pygrub ratios; every variant for RSS and lookups).
    get = lambda disk, cmd: next((r for m, d, c, r in rows if m == "warm" and d == disk and c == cmd), None)
    n0, p0, c0 = get(base, "nixboot"), get(base, "pygrub -q"), get("-", "copy (cp)")
    verdict = lambda ok: "PASS" if ok else "FAIL"
    if n0 and p0:
        print(f"target >= 3x faster than pygrub:  {p0['median'] / n0['median']:.1f}x  {verdict(p0['median'] >= 3 * n0['median'])}")
    if n0 and c0:
        print(f"target <= 1.25x the copy (cp):     {n0['median'] / c0['median']:.2f}x  {verdict(n0['median'] <= 1.25 * c0['median'])}")
    rss = [r["rss"] for m, d, c, r in rows if c.startswith("nixboot")]
    if rss:
        print(f"target peak RSS <= 16 MiB:         {max(rss) / 1024:.1f} MiB  {verdict(max(rss) <= 16 * 1024)}")
    lk = [(d, r["median"]) for m, d, c, r in rows if m == "warm" and c == "nixboot -n (lookup)"]
    if len(lk) > 1:
        worst = max(lk, key=lambda x: x[1])
        print(f"lookups vs {base}: " + ", ".join(f"{d} {t / lk[0][1]:.2f}x" for d, t in lk[1:])
              + f" (slowest: {worst[0]})")
    print()
    if want("nixboot"):
        parent, child = split_rss(a.nixboot, images[0][1], a.work)
        if parent:
            print(f"nixboot on {base}: parent peak RSS {parent / 1024:.1f} MiB, parse child {child / 1024:.1f} MiB "
                  f"(the table shows the larger)")


if __name__ == "__main__":
    main()
