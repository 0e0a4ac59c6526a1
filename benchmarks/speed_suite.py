"""The speed suite in reduced form (< 10 min on a quiet 2-core CPU): one dated record per run.

Each measurement runs in a fresh process, as users meet it, and separates first use
(imports, numba compile or cache load, first call) from the steady state:

==========================  ==========================================================
drr                         ``drr_throughput.py --quick --repeats 2``: DRRs/s of ours at
                            64 / 128 px (training rule), forward and forward+backward;
                            nanodrr / DiffDRR ratios when ``--bench-python`` has them
fluoro_cmd_1view/_2view     ``surgreg fluoro register`` (default method ``ncc``, default
                            options) of a synthetic case of the shipped CT, 128 px:
                            whole-command wall time (median of ``--repeats`` runs, min-max),
                            its CPU time, and the method's own ``time_s``
fluoro_import               ``import`` of the command's modules (torch included)
fluoro_e2e_*  (``--e2e``)   ``surgreg fluoro register`` with its defaults, whole command,
                            single view and two views of one synthetic case, at 1 thread
                            and at the default thread count: run 1 (first use) apart, then
                            median / min-max wall and CPU time, load before each run, and
                            the command's own breakdown (imports, reading, method, checks +
                            quality); also written to ``results/fluoro_e2e.md``. In the
                            default set (``--only fluoro`` runs the older per-view rows)
laparo_first / _steady      LiverLaparoReg: first rigid registration in a new process
                            (imports done) and the next ones, same case
us_frame                    ``surgreg us bench`` on a few frames: numba warm-up (compile or
                            cache load) and steady per-frame time (median of 3 repeats)
==========================  ==========================================================

Results: appended as dated rows to ``benchmarks/results/speed_record.md`` (one table; a
value more than 20 % slower than the previous row of the same measure is flagged) and
``speed_record.jsonl``. Every row carries the load average and the thread count: compare
rows only when both are alike. Not part of the test suite.

Run::

    source /work/wtenv.sh        # the worktree on PYTHONPATH, the project's venv
    python benchmarks/speed_suite.py [--bench-python /tmp/speed/bench-venv/bin/python]
        [--only drr e2e fluoro laparo us] [--repeats 3]
    python benchmarks/speed_suite.py --e2e [--repeats 5]   # only the fluoro command, ~3 min
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
CT = ROOT / "Resources" / "SampleData" / "ct" / "thorax_aorta_ct_cropped.nii.gz"
CLI = "import sys; from SurgicalReg2D3DLib.cli import main; sys.exit(main())"


def _run(cmd, env=None, timeout=600):
    """(wall s, CPU s of the child, completed process)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd[:6]))}...: exit {proc.returncode}: "
                           f"{(proc.stderr or proc.stdout)[-600:]}")
    return wall, cpu, proc


def _spread(values):
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "n": len(values)}


def _env(threads: int):
    return dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
                NUMBA_NUM_THREADS=str(max(threads, 1)))


def measure_drr(args, tmp: Path) -> list:
    py = args.bench_python if args.bench_python and Path(args.bench_python).exists() else sys.executable
    out = tmp / "drr"
    # reduced: 64 / 128 px, 2 rounds, no torch-path renderer (drr_throughput.py runs it)
    cmd = [py, str(HERE / "drr_throughput.py"), "--quick", "--repeats", "2", "--out", str(out),
           "--threads", str(args.threads), "--renderers", "ours", "nanodrr-torch", "diffdrr"]
    _run(cmd, env=_env(args.threads), timeout=900)
    res = json.loads(out.with_suffix(".json").read_text())
    rows = [{"measure": "drr_first_call", "value": res.get("ours_first_call_s"), "unit": "s",
             "note": "numba cache load (or compile) + first render, new process"}]
    for case in res["cases"]:
        ours = case["renderers"]["ours"]
        key = f"drr_{case['size']}px_b{case['batch']}_{case['mode']}"
        rows.append({"measure": key, "value": ours["drr_per_s"], "unit": "DRR/s (higher is better)",
                     "spread": [case["batch"] / ours["max_s"], case["batch"] / ours["min_s"]],
                     "note": f"{case['n_samples']} samples, CT x{case['ct_factor']}"})
        for peer in ("nanodrr-torch", "diffdrr", "ours-torch"):
            rec = case["renderers"].get(peer)
            if rec and "ratio_to_ours" in rec:
                r = rec["ratio_to_ours"]
                rows.append({"measure": f"{key}_vs_{peer}", "value": r["median"],
                             "unit": "x (peer time / ours, same round; higher is better)",
                             "spread": [r["min"], r["max"]]})
    return rows


def _simulate(tmp: Path, views: str, name: str) -> Path:
    out = tmp / name
    _run([sys.executable, "-c", CLI, "fluoro", "simulate", "--ct", str(CT), "--out", str(out),
          "--cases", "1", "--views", views, "--seed", "0"])
    return out / "case_000"


def measure_fluoro(args, tmp: Path) -> list:
    rows = []
    env = _env(args.threads)
    walls = []
    for _ in range(args.repeats):
        w, _, _ = _run([sys.executable, "-c", "import torch, numba, SimpleITK; "
                        "import FluoroRegLib.cli, FluoroRegLib.logic, FluoroRegLib.refine, "
                        "FluoroRegLib.drr_kernels, FluoroRegLib.xray_io, FluoroRegLib.simulate"],
                       env=env)
        walls.append(w)
    rows.append({"measure": "fluoro_import", "value": statistics.median(walls), "unit": "s",
                 "spread": [min(walls), max(walls)],
                 "note": "python start + imports of the register command (torch, numba, SimpleITK)"})
    for views, label in (("AP", "fluoro_cmd_1view"), ("AP,LAT", "fluoro_cmd_2view")):
        case = _simulate(tmp, views, label)
        n = len(views.split(","))
        cmd = [sys.executable, "-c", CLI, "fluoro", "register", "--ct", str(CT)]
        for k in range(n):
            cmd += ["--xray", str(case / f"xray_{k}.nrrd"), "--geometry", str(case / f"geometry_{k}.json")]
        out_json = tmp / f"{label}.json"
        cmd += ["--init", str(case / "init.json"), "--out", str(out_json)]
        walls, cpus, method_s = [], [], []
        for _ in range(args.repeats + 1):  # run 1: first use (numba cache load or compile)
            w, c, _ = _run(cmd, env=env)
            walls.append(w)
            cpus.append(c)
            method_s.append(json.loads(out_json.read_text()).get("time_s"))
        rows.append({"measure": label + "_first", "value": walls[0], "unit": "s (whole command)",
                     "note": f"first run after the suite started (CPU {cpus[0]:.2f} s; "
                             "compiles the DRR kernels when numba's cache is empty)"})
        walls, cpus, method_s = walls[1:], cpus[1:], method_s[1:]
        rows.append({"measure": label, "value": statistics.median(walls), "unit": "s (whole command)",
                     "spread": [min(walls), max(walls)],
                     "note": f"CPU {statistics.median(cpus):.2f} s; method time_s "
                             f"{statistics.median(method_s):.2f} s; 128 px, ncc defaults, "
                             f"steady: median of runs 2-{args.repeats + 1}"})
        rows.append({"measure": label + "_method", "value": statistics.median(method_s),
                     "unit": "s (method time_s)", "spread": [min(method_s), max(method_s)]})
    return rows


def _register_cmd(case: Path, n_views: int, out_json: Path) -> list:
    cmd = [sys.executable, "-c", CLI, "fluoro", "register", "--ct", str(CT)]
    for k in range(n_views):
        cmd += ["--xray", str(case / f"xray_{k}.nrrd"), "--geometry",
                str(case / f"geometry_{k}.json")]
    init = json.loads((case / "init.json").read_text())
    if n_views == 1 and "views" in init:  # the first view's pose of a two-view case
        init = {"ct_to_camera": init["views"][0]["ct_to_camera"]}
        one = out_json.with_name(out_json.stem + "_init.json")
        one.write_text(json.dumps(init))
        return cmd + ["--init", str(one), "--out", str(out_json)]
    return cmd + ["--init", str(case / "init.json"), "--out", str(out_json)]


def measure_e2e(args, tmp: Path) -> list:
    """``--e2e``: ``surgreg fluoro register`` with its defaults, whole command, as users
    run it: a new process per run (Python start, imports, reading the CT and the X-rays,
    the method, the quality verdict, writing OUT.json). Single view (AP) and two views
    (AP + LAT; also with ``--no-quality``, to show the quality verdict's share) of one
    synthetic case of the shipped CT (``fluoro simulate --seed 0``, 128 px), at each
    thread count of ``--e2e-threads`` (``default``: no OMP_NUM_THREADS, what a
    user's shell gives torch and numba). Run 1 is reported apart (first use); then the
    median and min-max of ``--repeats`` runs, with wall and CPU time, the load average
    before each run and the command's own timing breakdown (OUT.json ``timing_s``)."""
    case = _simulate(tmp, "AP,LAT", "e2e")
    rows, table = [], []
    for threads in args.e2e_threads:
        env = dict(os.environ)
        for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
            env.pop(key, None)
        if threads != "default":
            env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
        imports = []
        for _ in range(args.repeats):
            w, c, _ = _run([sys.executable, "-c", "import FluoroRegLib.cli, FluoroRegLib.logic, "
                            "FluoroRegLib.drr_kernels, FluoroRegLib.simulate, FluoroRegLib.quality"
                            ], env=env)
            imports.append(w)
        rows.append({"measure": f"fluoro_e2e_import_t{threads}", "value": statistics.median(imports),
                     "unit": "s", "spread": [min(imports), max(imports)],
                     "note": "python start + imports of the register command's modules"})
        for n_views, extra in ((1, []), (2, []), (2, ["--no-quality"])):
            out_json = tmp / f"e2e_{n_views}.json"
            cmd = _register_cmd(case, n_views, out_json) + extra
            runs = []
            for r in range(args.repeats + 1):
                load = os.getloadavg()[0]
                w, c, _ = _run(cmd, env=env)
                res = json.loads(out_json.read_text())
                runs.append({"wall": w, "cpu": c, "load": load, "method": res.get("time_s"),
                             "timing": res.get("timing_s", {}),
                             "verdict": (res.get("quality") or {}).get("verdict")})
            first, steady = runs[0], runs[1:]
            label = f"fluoro_e2e_{n_views}view{'_noquality' if extra else ''}_t{threads}"
            med = {k: statistics.median([x[k] for x in steady]) for k in ("wall", "cpu", "load", "method")}
            parts = {k: statistics.median([x["timing"].get(k, float("nan")) for x in steady])
                     for k in ("imports", "read_inputs", "method", "checks_and_quality")}
            rows.append({"measure": label + "_first", "value": first["wall"], "unit": "s (whole command)",
                         "note": f"run 1 (first use); CPU {first['cpu']:.2f} s; load {first['load']:.2f}"})
            rows.append({"measure": label, "value": med["wall"], "unit": "s (whole command)",
                         "spread": [min(x["wall"] for x in steady), max(x["wall"] for x in steady)],
                         "note": f"CPU {med['cpu']:.2f} s; method {med['method']:.2f} s; "
                                 f"checks+quality {parts['checks_and_quality']:.2f} s; load "
                                 f"{med['load']:.2f}; verdict {steady[-1]['verdict']}; "
                                 f"median of runs 2-{args.repeats + 1}"})
            table.append({"threads": threads, "views": f"{n_views}{' (--no-quality)' if extra else ''}",
                          "first": first, "runs": steady,
                          "median": med, "parts": parts})
    _write_e2e(table, rows, Path(args.results) / "fluoro_e2e.md")
    return rows


def _write_e2e(table: list, rows: list, path: Path) -> None:
    imports = {r["measure"]: r for r in rows if "import" in r["measure"]}
    lines = [
        "# `surgreg fluoro register` end to end (`benchmarks/speed_suite.py --e2e`)",
        "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, commit {_git_commit()}, "
        f"{os.cpu_count()} CPU cores. Whole command in a new process per run (Python start, "
        "imports, reading the shipped CT and the X-rays, the default method `ncc`, the quality "
        "verdict, writing OUT.json) on one SYNTHETIC case of the shipped CT (`fluoro simulate "
        "--seed 0`, 128 px). Threads: `default` = no OMP_NUM_THREADS (torch and the numba "
        "kernels use all cores), `1` = OMP_NUM_THREADS=1. Load: 1-minute load average before "
        "each run; above the core count the cores were shared with other jobs and the wall "
        "times are upper bounds (CPU time is the better guide then).",
        "",
        "| threads | views | runs | wall s median (min-max) | CPU s median | load median | "
        "first run wall s (CPU) | imports s | read inputs s | method s | checks + quality s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for t in table:
        m, p, f = t["median"], t["parts"], t["first"]
        walls = [x["wall"] for x in t["runs"]]
        lines.append(
            f"| {t['threads']} | {t['views']} | {len(walls)} | {m['wall']:.2f} ({min(walls):.2f}-"
            f"{max(walls):.2f}) | {m['cpu']:.2f} | {m['load']:.2f} | {f['wall']:.2f} ({f['cpu']:.2f}) | "
            f"{p['imports']:.2f} | {p['read_inputs']:.2f} | {p['method']:.2f} | "
            f"{p['checks_and_quality']:.2f} |")
    lines += ["", "Python start + imports alone (new process, median, min-max): " + "; ".join(
        f"{k.replace('fluoro_e2e_import_', '')}: {v['value']:.2f} s ({v['spread'][0]:.2f}-"
        f"{v['spread'][1]:.2f})" for k, v in imports.items()),
        "", "`imports` in the table: the command's own imports after the hub's (torch, numba, "
        "SimpleITK...); the whole-command wall time minus the four parts is Python's start, "
        "the hub's imports and writing."]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


LAPARO = r"""
import json, time
t0 = time.perf_counter()
import numpy as np
from LiverLaparoRegLib.bench import held_out_mesh, random_pose, perturb
from LiverLaparoRegLib import synthetic
from LiverLaparoRegLib.logic import register
from LiverLaparoRegLib.mesh import load_mesh
from SurgicalReg2D3DLib.cameras import PinholeCamera
t_import = time.perf_counter() - t0
mesh = load_mesh(held_out_mesh())
cam = PinholeCamera(fx=800.0, fy=800.0, cx=319.5, cy=239.5, width=640, height=480)
rng = np.random.default_rng(0)
T = random_pose(mesh.vertices, rng)
case = synthetic.make_case(mesh, cam, T, noise_px=1.0, render=True, seed=0)
T0 = perturb(T, mesh.vertices, 4.0, 10.0, rng)
times = []
for k in range(4):
    t = time.perf_counter()
    register(mesh, cam, mask=case.mask, init=T0, method="silhouette")
    times.append(time.perf_counter() - t)
print(json.dumps({"import_s": t_import, "times_s": times}))
"""


def measure_laparo(args, tmp: Path) -> list:
    firsts, steadies, imports = [], [], []
    for _ in range(args.repeats):
        _, _, proc = _run([sys.executable, "-c", LAPARO], env=_env(args.threads))
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        imports.append(res["import_s"])
        firsts.append(res["times_s"][0])
        steadies.append(statistics.median(res["times_s"][1:]))
    note = ("held-out SciKit-Surgery liver, synthetic 640x480 case, method silhouette; "
            f"{args.repeats} fresh processes")
    return [{"measure": "laparo_import", "value": statistics.median(imports), "unit": "s",
             "spread": [min(imports), max(imports)], "note": note},
            {"measure": "laparo_first", "value": statistics.median(firsts), "unit": "s",
             "spread": [min(firsts), max(firsts)], "note": "first registration in the process"},
            {"measure": "laparo_steady", "value": statistics.median(steadies), "unit": "s",
             "spread": [min(steadies), max(steadies)], "note": "median of registrations 2-4"}]


US = r"""
import json, sys
from USSliceRegLib.bench import run_bench
s = run_bench(frames=[int(f) for f in sys.argv[1].split(",")], methods=["lncc"], repeats=3,
              out_dir=None, verbose=False)
ms = [r["ms"] for r in s["rows"]]
print(json.dumps({"warmup_s": s.get("kernel_warmup_s"), "ms": ms}))
"""


def measure_us(args, tmp: Path) -> list:
    _, _, proc = _run([sys.executable, "-c", US, args.us_frames], env=_env(args.threads))
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    ms = res["ms"]
    steady = ms[1:] if len(ms) > 1 else ms
    return [{"measure": "us_kernel_warmup", "value": res["warmup_s"], "unit": "s",
             "note": "numba compile or cache load, before any frame"},
            {"measure": "us_first_frame", "value": ms[0], "unit": "ms",
             "note": "first frame (full search), median of 3 repeats"},
            {"measure": "us_frame_steady", "value": statistics.median(steady), "unit": "ms",
             "spread": [min(steady), max(steady)],
             "note": f"frames {args.us_frames[:40]}, median of 3 repeats each, lncc, hold-out loo"}]


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True).stdout.strip()
    except OSError:
        return "?"


def write_record(rows: list, meta: dict, md: Path, jsonl: Path) -> None:
    previous = {}
    if jsonl.exists():
        for line in jsonl.read_text().splitlines():
            try:
                r = json.loads(line)
                previous[r["measure"]] = r
            except (json.JSONDecodeError, KeyError):
                pass
    header = ("| date (UTC) | commit | load (start/end) | threads | measure | value | unit | "
              "spread | vs previous | note |\n|---|---|---|---|---|---|---|---|---|---|\n")
    if not md.exists():
        md.write_text("# Speed record (`benchmarks/speed_suite.py`)\n\n"
                      "One row per measure and run, newest last. Compare rows only at similar "
                      "load and the same thread count; 'SLOWER' marks a value > 20 % worse "
                      "than the previous row of the same measure.\n\n" + header)
    lines = []
    with open(jsonl, "a") as fh:
        for r in rows:
            r = dict(r, **meta)
            fh.write(json.dumps(r) + "\n")
            prev = previous.get(r["measure"])
            cmp = "-"
            if prev and prev.get("value") and r.get("value") is not None:
                higher_better = "higher is better" in r["unit"]
                ratio = r["value"] / prev["value"]
                worse = ratio < 1 / 1.2 if higher_better else ratio > 1.2
                cmp = f"{ratio:.2f}x" + (" SLOWER" if worse else "")
            v = r.get("value")
            sp = r.get("spread")
            lines.append(
                f"| {meta['date']} | {meta['commit']} | {meta['load_start']}/{meta['load_end']} | "
                f"{meta['threads']} | {r['measure']} | {v if v is None else f'{v:.3g}'} | {r['unit']} | "
                f"{'-' if not sp else f'{sp[0]:.3g}-{sp[1]:.3g}'} | {cmp} | {r.get('note', '')} |")
    with open(md, "a") as fh:
        fh.write("\n".join(lines) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", nargs="+", default=["drr", "e2e", "laparo", "us"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--bench-python", default="/tmp/speed/bench-venv/bin/python",
                    help="python with nanodrr/DiffDRR installed (optional)")
    ap.add_argument("--us-frames", default="5,7,9,15")
    ap.add_argument("--results", default=str(RESULTS))
    ap.add_argument("--e2e", action="store_true",
                    help="only the end-to-end `surgreg fluoro register` timing (writes "
                         "fluoro_e2e.md and speed_record rows); ~2-4 min quiet")
    ap.add_argument("--e2e-threads", nargs="+", default=["1", "default"],
                    help="thread counts for --e2e ('default' = no OMP_NUM_THREADS)")
    args = ap.parse_args(argv)
    if args.e2e:
        args.only = ["e2e"]
    load_start = round(os.getloadavg()[0], 2)
    start = time.time()
    rows = []
    with tempfile.TemporaryDirectory(prefix="speed-suite-") as d:
        tmp = Path(d)
        for part in args.only:
            t = time.perf_counter()
            try:
                rows += globals()[f"measure_{part}"](args, tmp)
            except Exception as exc:  # noqa: BLE001 - a failing part is recorded, not fatal
                rows.append({"measure": f"{part}_error", "value": None, "unit": "-",
                             "note": str(exc)[-300:].replace("|", "/").replace("\n", " ")})
            print(f"[speed] {part}: {time.perf_counter() - t:.0f} s", flush=True)
    meta = {"date": time.strftime("%Y-%m-%d %H:%M", time.gmtime(start)), "commit": _git_commit(),
            "load_start": load_start, "load_end": round(os.getloadavg()[0], 2),
            "threads": args.threads, "cores": os.cpu_count()}
    res = Path(args.results)
    res.mkdir(parents=True, exist_ok=True)
    write_record(rows, meta, res / "speed_record.md", res / "speed_record.jsonl")
    for r in rows:
        print(f"  {r['measure']:40s} {r['value']} {r['unit']}")
    print(f"[speed] {time.time() - start:.0f} s in all -> {res / 'speed_record.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
