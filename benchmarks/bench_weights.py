"""Speed and memory of ``moeprune score`` and ``moeprune prune`` against the physical limits.

For each synthetic OLMoE-shaped bf16 checkpoint (written by make_synthetic.py if missing):

- **read limit**: ``cat`` of the shards to /dev/null, warm from the page cache (best of N); the
  score ratio compares against the time ``cat`` needs for the bytes score reads (the routed
  experts' weights), i.e. cat time x expert bytes / shard bytes;
- **score**: ``moeprune -q score MODEL --criterion aimer -o scores.json``, a fresh process per run
  (best of N), end to end: interpreter start, imports, headers, the pass, scores.json;
- **copy limit**: ``cp -r`` of the pruned output folder (best of N), and ``cp -r`` followed by
  ``sync`` of the copied files (the limit for a durable write);
- **prune**: ``moeprune -q prune MODEL --ratio 0.5 -o OUT`` end to end (it scores while it
  writes), with ``--scores scores.json`` (writing only), and with ``--fsync`` (durable: compared
  with ``cp`` + ``sync``);
- **startup**: ``moeprune --version`` (interpreter and imports), reported separately;
- **peak RSS** of every moeprune run: ``ru_maxrss`` of that process alone, taken by a small launcher
  between this driver and it (`PEAK`): Linux carries a process's high-water mark across ``exec``, so a
  child started straight from a larger driver would report at least the driver's peak.

Every run is a fresh subprocess. Before each score or prune run the shards are read into the page
cache again (some VMs page out file pages idle for a minute), and before each writing run earlier
write-back is flushed (``sync``) and memory is primed: a scratch file as large as the output is
written and deleted, so that every writer allocates page-cache pages that are equally at hand. (On
a VM whose balloon driver reports free memory back to the hypervisor, allocating pages freed
seconds earlier costs up to 10x more: writing 2 GB to the page cache took 1.0 s or 9.5 s on this
machine depending on it.) The writing commands (cp, cp + sync, the three prunes) take turns, one
run each per round, so that slow phases of a shared machine hit them alike. The log shows every
run's wall and CPU time, peak RSS, and how busy the rest of the machine was meanwhile (other
processes' share of all cores, from /proc/stat); the tables take the best wall time. ``--cold``
adds one run of ``cat`` and of score with the shards evicted from the page cache. ``--boost -10``
(root) runs everything in a session of its own at raised priority, for shared machines.

    python benchmarks/bench_weights.py                 # 4 and 8 MoE layers (3.2 and 6.4 GB of experts)
    python benchmarks/bench_weights.py --layers 4 --repeat 5 --cold --boost -10
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import make_synthetic  # noqa: E402

ROOT = Path("/tmp/moeprune-bench")


@dataclass
class Run:
    wall: float
    cpu: float
    rss_mb: float
    others: float
    """CPU share of all cores used by other processes meanwhile (0..1)."""


def _busy_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    total = sum(fields[:8])
    return total - idle, total


PEAK = (
    "import os, subprocess, sys\n"
    "p = subprocess.Popen(sys.argv[2:])\n"
    "_, status, ru = os.wait4(p.pid, 0)\n"
    "open(sys.argv[1], 'w').write(str(ru.ru_maxrss * 1024))\n"
    "sys.exit(os.waitstatus_to_exitcode(status))\n"
)
"""The launcher of every measured run: starts the command and writes its peak RSS (bytes). Being a
fresh small process, it hands the command a high-water mark of a few MB, not the driver's."""


def run(cmd: list[str], **kw: object) -> Run:
    """Run ``cmd`` (a fresh process, through the `PEAK` launcher) and measure it."""
    peak = ROOT / f"peak-{os.getpid()}.txt"
    peak.parent.mkdir(parents=True, exist_ok=True)
    peak.unlink(missing_ok=True)
    hz = os.sysconf("SC_CLK_TCK")
    b0, t0j = _busy_jiffies()
    t0 = time.perf_counter()
    launched = [sys.executable, "-c", PEAK, str(peak), *cmd]
    p = subprocess.Popen(launched, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kw)  # type: ignore[call-overload]
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    b1, t1j = _busy_jiffies()
    err = p.stderr.read().decode(errors="replace") if p.stderr else ""
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode:
        raise SystemExit(f"{shlex.join(cmd)} failed ({p.returncode}): {err}")
    cpu = ru.ru_utime + ru.ru_stime  # the launcher's and the command's
    others = max(0.0, ((b1 - b0) / hz - cpu) / max(1e-9, (t1j - t0j) / hz))
    rss = int(peak.read_text())
    peak.unlink()
    return Run(wall, cpu, rss / 1048576, others)


def best(runs: list[Run]) -> Run:
    return min(runs, key=lambda r: r.wall)


def shards(model: Path) -> list[Path]:
    return sorted(model.glob("*.safetensors"))


def expert_bytes(model: Path) -> int:
    """Bytes of routed-expert weights (what weight scoring reads), from the headers."""
    total = 0
    for file in shards(model):
        with open(file, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
        for name, entry in header.items():
            if ".mlp.experts." in name and name.endswith("weight"):
                lo, hi = entry["data_offsets"]
                total += hi - lo
    return total


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def evict(files: list[Path]) -> None:
    """Drop the files' pages from the page cache (they are clean, so this needs no privilege)."""
    for file in files:
        fd = os.open(file, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def prime(work: Path, nbytes: int) -> None:
    """Write and delete a scratch file of ``nbytes``, so that the next writer's page-cache pages are
    at hand (see the module docstring)."""
    scratch = work / "prime.bin"
    block = bytes(16 << 20)
    with open(scratch, "wb") as f:
        for _ in range(-(-nbytes // len(block))):
            f.write(block)
    scratch.unlink()


def moeprune() -> list[str]:
    exe = shutil.which("moeprune", path=str(Path(sys.executable).parent)) or shutil.which("moeprune")
    return [exe] if exe else [sys.executable, "-m", "moeprune"]


def bench_size(layers: int, repeat: int, cold: bool, work: Path) -> dict[str, object]:
    model = ROOT / f"olmoe-{layers}L"
    if not (model / "config.json").exists():
        print(f"writing {model} ...", file=sys.stderr)
        make_synthetic.write(model, layers)
    files = shards(model)
    total = sum(f.stat().st_size for f in files)
    experts = expert_bytes(model)
    mp = moeprune()
    scores = work / f"scores-{layers}L.json"
    out = work / f"pruned-{layers}L"
    copy = work / f"copy-{layers}L"
    for d in (out, copy):
        shutil.rmtree(d, ignore_errors=True)
    res: dict[str, object] = {"layers": layers, "shard_bytes": total, "expert_bytes": experts}

    def say(what: str, r: Run) -> None:
        print(
            f"  {layers}L {what:<22} {r.wall:7.3f} s  cpu {r.cpu:6.2f} s  rss {r.rss_mb:7.1f} MB  "
            f"others {100 * r.others:3.0f}%",
            file=sys.stderr,
        )

    def measure(what: str, cmd: list[str], before: object = None) -> Run:
        runs = []
        for _ in range(repeat):
            if callable(before):
                before()
            r = run(cmd)
            say(what, r)
            runs.append(r)
        return best(runs)

    cat = ["sh", "-c", "cat " + " ".join(shlex.quote(str(f)) for f in files) + " >/dev/null"]
    score = [*mp, "-q", "score", str(model), "--criterion", "aimer", "-o", str(scores), "--overwrite"]

    def warm() -> None:
        """Read the shards into the page cache (this VM evicts pages idle for a minute)."""
        subprocess.run(cat, check=True)

    warm()
    res["cat"] = measure("cat (warm)", cat)
    res["startup"] = measure("moeprune --version", [*mp, "--version"])
    res["score"] = measure("score (warm)", score, warm)

    prune = [*mp, "-q", "prune", str(model), "--ratio", "0.5", "-o", str(out)]
    run(prune)  # the output's size, for priming
    out_bytes = folder_bytes(out)
    copied = " ".join(shlex.quote(str(copy / f.name)) for f in sorted(out.iterdir()))
    writers: dict[str, tuple[list[str], str]] = {
        "prune": (prune, "input"),
        "prune_fsync": ([*prune, "--fsync"], "input"),
        "prune_scores": (
            [*mp, "-q", "prune", str(model), "--scores", str(scores), "--ratio", "0.5", "-o", str(out)],
            "input",
        ),
        "cp": (["cp", "-r", str(out), str(copy)], "output"),
        "cp_sync": (["sh", "-c", f"cp -r {shlex.quote(str(out))} {shlex.quote(str(copy))} && sync {copied}"], "output"),
    }
    runs: dict[str, list[Run]] = {key: [] for key in writers}
    for _ in range(repeat):
        for key, (cmd, reads) in writers.items():
            shutil.rmtree(copy if reads == "output" else out, ignore_errors=True)
            os.sync()  # no write-back of earlier runs left to compete with the measured one
            if reads == "input":
                warm()
            else:
                subprocess.run(["cat", *map(str, sorted(out.iterdir()))], stdout=subprocess.DEVNULL, check=True)
            prime(work, out_bytes)
            r = run(cmd)
            say(key.replace("_", " "), r)
            runs[key].append(r)
    for key, rs in runs.items():
        res[key] = best(rs)
    res["out_bytes"] = out_bytes
    if cold:
        for key, cmd in (("cat_cold", cat), ("score_cold", score)):
            evict(files)
            r = run(cmd)
            say(key.replace("_", " "), r)
            res[key] = r
    for d in (out, copy):
        shutil.rmtree(d, ignore_errors=True)
    return res


def machine() -> str:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    import numpy

    try:
        import importlib.metadata as md

        torch_v = md.version("torch")
    except Exception:
        torch_v = "?"
    try:
        from moeprune.scoring import _moments

        kernel = f"native ({_moments.isa})"
    except ImportError:
        kernel = "numpy (the native one is not built)"
    return (
        f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB RAM; Linux {platform.release()}; "
        f"Python {platform.python_version()}, numpy {numpy.__version__}, torch {torch_v}; scoring kernel {kernel}"
    )


def table(results: list[dict[str, object]]) -> str:
    def r(key: str, res: dict[str, object]) -> Run:
        return res[key]  # type: ignore[return-value]

    gb = 1e9
    lines = [
        "| experts (GB) | shards (GB) | cat (s) | cat, expert bytes (s) | startup (s) | score (s) | ratio (a) "
        "| ratio (a) less startup | score RSS (MB) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for res in results:
        ex, sh = int(res["expert_bytes"]), int(res["shard_bytes"])  # type: ignore[call-overload]
        cat = r("cat", res).wall
        cat_ex = cat * ex / sh
        st, sc = r("startup", res).wall, r("score", res)
        lines.append(
            f"| {ex / gb:.2f} | {sh / gb:.2f} | {cat:.3f} | {cat_ex:.3f} | {st:.2f} | {sc.wall:.2f} "
            f"| **{sc.wall / cat_ex:.2f}** | {(sc.wall - st) / cat_ex:.2f} | {sc.rss_mb:.0f} |"
        )
    lines += [
        "",
        "| output (GB) | cp (s) | prune (s) | ratio (b) | prune --scores (s) | vs cp | cp + sync (s) "
        "| prune --fsync (s) | vs cp + sync | prune RSS (MB) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for res in results:
        cp, cps = r("cp", res).wall, r("cp_sync", res).wall
        pr, ps, pf = r("prune", res), r("prune_scores", res), r("prune_fsync", res)
        lines.append(
            f"| {int(res['out_bytes']) / gb:.2f} | {cp:.2f} | {pr.wall:.2f} | **{pr.wall / cp:.2f}** "  # type: ignore[call-overload]
            f"| {ps.wall:.2f} | {ps.wall / cp:.2f} | {cps:.2f} | {pf.wall:.2f} | {pf.wall / cps:.2f} "
            f"| {max(pr.rss_mb, ps.rss_mb, pf.rss_mb):.0f} |"
        )
    busy = max(getattr(v, "others", 0.0) for res in results for v in res.values())
    lines += ["", f"Busiest other-process load during a best run: {100 * busy:.0f}% of all cores."]
    cold = [res for res in results if res.get("score_cold")]
    if cold:
        lines += ["", "| experts (GB) | cat cold (s) | score cold (s) |", "|---:|---:|---:|"]
        for res in cold:
            lines.append(
                f"| {int(res['expert_bytes']) / gb:.2f} | {r('cat_cold', res).wall:.2f} "  # type: ignore[call-overload]
                f"| {r('score_cold', res).wall:.2f} |"
            )
    return "\n".join(lines)


def boost(level: int, argv: list[str]) -> None:
    """Re-run this script in a new session (its own scheduler autogroup) with raised priority."""
    if os.environ.get("MOEPRUNE_BENCH_BOOSTED") != str(level):
        env = {**os.environ, "MOEPRUNE_BENCH_BOOSTED": str(level)}
        os.execvpe("setsid", ["setsid", "--wait", sys.executable, str(Path(__file__).resolve()), *argv], env)
    with open("/proc/self/autogroup", "w") as f:
        f.write(str(level))
    os.nice(level)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, nargs="+", default=[4, 8], help="MoE layers of each checkpoint")
    ap.add_argument("--repeat", type=int, default=3, help="runs per measurement (best taken)")
    ap.add_argument("--cold", action="store_true", help="also time cat and score with the shards evicted from cache")
    ap.add_argument("--json", type=Path, help="also write the raw results here")
    ap.add_argument(
        "--boost",
        type=int,
        metavar="NICE",
        help="run in a session of its own with this (negative) autogroup nice and process nice, so that "
        "other jobs on a shared machine take less of the CPU from every measured command alike (Linux, root)",
    )
    args = ap.parse_args(argv)
    if args.boost is not None:
        boost(args.boost, argv if argv is not None else sys.argv[1:])
    work = ROOT / "work"
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    load0 = os.getloadavg()
    results = [bench_size(n, args.repeat, args.cold, work) for n in args.layers]
    load1 = os.getloadavg()
    given = argv if argv is not None else sys.argv[1:]
    print(f"command: python {shlex.join(['benchmarks/bench_weights.py', *given])}")
    if args.boost is not None:
        print(f"priority: own session, autogroup nice {args.boost}, nice {os.nice(0)}")
    print(f"machine: {machine()}")
    print(
        f"date: {time.strftime('%Y-%m-%d %H:%M', time.gmtime(t0))} UTC; load average before {load0[0]:.2f}, "
        f"after {load1[0]:.2f}"
    )
    print()
    print(table(results))
    if args.json:
        args.json.write_text(
            json.dumps(
                [{k: (v.__dict__ if isinstance(v, Run) else v) for k, v in res.items()} for res in results], indent=1
            )
        )


if __name__ == "__main__":
    main()
