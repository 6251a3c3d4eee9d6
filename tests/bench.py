"""Benchmarks (``nox -s bench``): figures and ratios against baselines, never timed tests.

Each benchmark prints what it measured and the goal it is held to; the exit code is 1 when a
goal is missed, so a scheduled run can notice.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RESULTS: list[tuple[str, bool, str]] = []


def report(name: str, ok: bool, text: str) -> None:
    RESULTS.append((name, ok, text))
    print(f"[{'ok' if ok else 'MISSED'}] {name}: {text}", flush=True)


def default_lock():
    """The lock of the first default cell: the same pins for uv and for the baseline."""
    from matrix.app.job import Options, plan_cells
    from matrix.cell.run import requirements
    from matrix.env import uv as envs

    planned = plan_cells(Options())
    matrix, cell = planned.matrix, planned.cells[0]
    runner = next(r for r in matrix.runners if r.name == cell.runner)
    lock = envs.resolve(requirements(matrix, cell), python=runner.python, overrides=list(runner.pins))
    assert isinstance(lock, envs.Lock), lock
    return cell, lock


def bench_env_creation(repeat: int = 3) -> None:
    """A cell environment with warm caches, uv vs nox's default backend (virtualenv + pip)."""
    from matrix.env import uv as envs

    cell, lock = default_lock()
    with tempfile.TemporaryDirectory(prefix="llmcompat-bench-") as tmp:
        envs.ensure(lock, root=Path(tmp, "warm"))  # warms uv's cache
        uv_times = []
        for i in range(repeat):
            t = time.perf_counter()
            envs.ensure(lock, root=Path(tmp, f"uv{i}"))
            uv_times.append(time.perf_counter() - t)
        req = Path(tmp, "lock.txt")
        req.write_text(lock.text)
        pip_times = []
        for i in range(2):  # the first run warms pip's cache; the second is measured
            venv = Path(tmp, f"pip{i}")
            t = time.perf_counter()
            subprocess.run([sys.executable, "-m", "virtualenv", "-q", str(venv)], check=True)
            subprocess.run(
                [str(venv / "bin" / "pip"), "install", "-q", "--no-deps", "-r", str(req)],
                check=True,
                env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
            )
            pip_times.append(time.perf_counter() - t)
    uv_best, pip_warm = min(uv_times), pip_times[-1]
    ratio = pip_warm / uv_best
    report(
        "env creation",
        ratio >= 25 and uv_best < 1.0,
        f"{len(lock.pins)} packages ({cell.id}): uv {uv_best:.2f}s (best of {repeat}), "
        f"virtualenv+pip {pip_warm:.2f}s warm -> {ratio:.0f}x faster (goal >= 25x and < 1 s)",
    )


def bench_second_run() -> None:
    """Run the default matrix twice with nothing new: the second run executes 0 cells."""
    from matrix.app.job import Options, run_job

    with tempfile.TemporaryDirectory(prefix="llmcompat-bench-home-") as home:
        os.environ["LLMCOMPAT_HOME"] = home
        t = time.perf_counter()
        first, _ = run_job(Options())
        t1 = time.perf_counter() - t
        t = time.perf_counter()
        second, _ = run_job(Options())
        t2 = time.perf_counter() - t
    c1, c2 = first.counts, second.counts
    report(
        "second run",
        c2["executed"] == 0,
        f"first run {len(first.reports)} cells, executed {c1['executed']} in {t1:.1f}s; "
        f"second run executed {c2['executed']}, reused {c2['reused']} in {t2:.1f}s (goal: 0 executed)",
    )


def bench_pairwise() -> None:
    from matrix.plan.covering import bench

    r = bench((5, 4, 4, 3))
    report(
        "pairwise 5x4x4x3",
        r["ratio"] <= 1.1 and r["coverage"] == 1.0,
        f"{r['rows']} rows, lower bound {r['lower_bound']}, ratio {r['ratio']:.2f} "
        f"(goal <= 1.1), coverage {r['coverage']:.0%}, {r['seconds'] * 1000:.1f} ms",
    )


def bench_bisect_probes(n: int = 40) -> None:
    """Probes per bisection over n releases, for every change point, against ceil(log2 n) + 2."""
    from bot.search import bench_probe_counts, bisect_bound

    counts = bench_probe_counts(n)
    bound = bisect_bound(n)
    report(
        f"bisect probes, n={n}",
        max(counts) <= bound,
        f"max {max(counts)}, mean {sum(counts) / len(counts):.2f} over {len(counts)} change points; "
        f"bound ceil(log2 n)+2 = {bound} (max/bound {max(counts) / bound:.2f})",
    )


def bench_noise(seeds: int = 5) -> None:
    """10% random failures over 500 cells, several seeds: confirmation must leave 0 findings."""
    from bot.confirm import simulate

    runs = [simulate(500, 0.10, seed=s) for s in range(seeds)]
    findings = sum(r["findings"] for r in runs)
    cands = sum(r["candidates"] for r in runs)
    r0 = runs[0]
    report(
        "injected noise",
        findings == 0,
        f"{seeds} x 500 cells at 10% random failure: {cands} candidates, {findings} findings (goal 0); "
        f"re-run plan {r0['need']}-of-{r0['of']}, expected false findings per sweep "
        f"{r0['expected_false_findings']:.4f} vs {r0['expected_false_findings_2_of_3']:.2f} with plain 2-of-3",
    )


def bench_bisect_real(last: int = 40) -> None:
    """A real bisection over the last 40 releases of a pure-Python package, warm caches."""
    from bot.bisect_cmd import bench_bisect

    r = bench_bisect(last)
    report(
        f"bisect {r['n']} real releases",
        r["probes"] <= r["bound"],
        f"packaging {r['last_good']} -> {r['first_bad']} in {r['probes']} probes "
        f"(bound {r['bound']}), {r['seconds']:.1f}s with warm caches ({r['seconds'] / r['probes']:.2f}s per probe)",
    )


def tiny_model_dir() -> str:
    from matrix.app.job import MODEL_PARTS, Options, load_matrix
    from matrix.tinymodel import ensure

    return str(ensure(arch="qwen2", parts=MODEL_PARTS, reference=load_matrix(Options()).reference).path)


def bench_stages_in_process() -> None:
    """Template and tokenize stages in-process (goals: >= 10,000 renders/s with the reference
    renderer, >= 5,000 texts/s), and the template corpus of the default run (a figure)."""
    from matrix.probe import bench_stages, bench_tokenize
    from matrix.probe.bench_stages import bench_corpus
    from matrix.probe.bench_stages import bench_in_process as template_rate
    from matrix.probe.bench_tokenize import bench_in_process as tokenize_rate

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # as in a cell: one thread, CPU time = cost
    t = template_rate(3000)
    report(
        "template stage in-process",
        t >= 10_000,
        f"{t:.0f} renders per CPU second, reference renderer ({bench_stages.LAST['wall']:.0f} per wall second; "
        f"goal >= 10,000/s, ratio {t / 10_000:.2f}x; was 3,853)",
    )
    k = tokenize_rate(2000, model_dir=tiny_model_dir())
    wall = 2000 / bench_tokenize.LAST["wall_seconds"]
    report(
        "tokenize stage in-process",
        k >= 5_000,
        f"{k:.0f} texts per CPU second ({wall:.0f} per wall second; goal >= 5,000/s, ratio {k / 5_000:.2f}x; "
        "was 2,198)",
    )
    from matrix.app.job import Options, build_model, load_matrix, suite_for, with_corpus

    matrix = load_matrix(Options())
    model = build_model(matrix, "tiny-qwen2")
    suite = with_corpus(matrix, Options(), {}, {model.name: model}, {model.name: suite_for("core", model)})[model.name]
    if suite.corpus:
        rate, renders = bench_corpus(suite.corpus, list(suite.cases), str(model.path))
        report(
            "template corpus in-process",
            True,
            f"{rate:.0f} renders/s over {len(suite.corpus['templates'])} "
            f"real templates ({renders} renders, reference renderer; a figure, no goal)",
        )


def bench_cell_suite() -> None:
    """The whole default CPU cell suite on the tiny model, environment and compile excluded: one
    cell per engine of the default matrix, each timed warm (its second run)."""
    from matrix.app.job import Options, prepare
    from matrix.cell.run import CellRunner, probe_job, requirements, run_probe
    from matrix.env import uv as envs
    from matrix.plan.cells import Cell

    prep = prepare(Options())
    runner = CellRunner(prep.matrix, prep.suites, prep.models)
    firsts: dict[str, Cell] = {}
    for cell in prep.cells:
        firsts.setdefault(cell.choice("engine").component, cell)
    for engine, cell in firsts.items():
        run = runner.runner(cell.runner)
        lock = envs.resolve(requirements(prep.matrix, cell), python=run.python, overrides=list(run.pins))
        if isinstance(lock, envs.Unresolvable):
            raise RuntimeError(f"{cell.id} cannot be resolved: {lock.reason}")
        env = envs.ensure(lock, built=runner.built(cell))
        job = probe_job(prep.matrix, cell, prep.models[cell.model], prep.suites[cell.model])
        job["llama_server_bin"] = runner.llama_server(cell)
        job["exports"] = runner.exports(cell, job["engines"])
        run_probe(env.python, job)  # warm: bytecode written into the cell's environment
        started = time.perf_counter()
        result, _ = run_probe(env.python, job)
        seconds = time.perf_counter() - started
        stages = {k: v["outcome"] for k, v in (result or {}).get("stages", {}).items()}
        report(
            f"default cell suite ({engine})",
            result is not None and seconds <= 20,
            f"{cell.id}: {len(job['cases'])} cases through {', '.join(job['stages'])} in {seconds:.1f}s "
            f"(goal <= 20 s, ratio {seconds / 20:.2f}); stages {stages}",
        )


def bench_narrow() -> None:
    """Narrowing a llama-cpp-python range to the llama.cpp build tag (bot/narrow.py's demo
    history: 5 tags, the bug in b5003) with warm caches (goal: nothing compiled), then with an
    empty binary cache over the persistent build worktree (goal: a few translation units per
    probe). ``LLMCOMPAT_BENCH_COLD=1`` also times a cold worktree (a full compile, minutes)."""
    from bot import narrow
    from matrix.env import builds, gitsrc
    from tests import narrow_demo

    def once(base: Path, bin_root=None, work_root=None):
        repo = gitsrc.open_repo(str(base / "llama.cpp"))
        py = gitsrc.open_repo(str(base / "py"))
        probe = narrow.CommitTest(
            repo, narrow.case_check("single-user", "inference"), bin_root=bin_root, work_root=work_root
        )
        t = time.perf_counter()
        res = narrow.narrow_releases(repo, "0.3.8", "0.3.9", probe, py_repo=py)
        return res, time.perf_counter() - t

    def units(res) -> str:
        return ", ".join(
            f"{c} {res.notes[c.commit].build.get('compiled', '?')} TUs "
            f"{res.notes[c.commit].build.get('seconds', 0):.0f}s"
            + (" (reused)" if res.notes[c.commit].build.get("reused") else "")
            for c, _ in res.probes
        )

    with tempfile.TemporaryDirectory(prefix="llmcompat-bench-narrow-") as tmp:
        base = Path(tmp)
        narrow_demo.make_demo_repo(
            base / "llama.cpp", builds.sdist("llama-cpp-python", "0.3.8"), python_repo=base / "py"
        )
        first, s0 = once(base)  # warms the shared cache (compiles only on a machine that never narrowed)
        warm, s1 = once(base)
        compiled = sum(n.build.get("compiled", 0) for n in warm.notes.values())
        report(
            "narrow llama.cpp, warm cache",
            warm.found and compiled == 0 and len(warm.probes) <= warm.bound,
            f"{warm.last_good} -> {warm.first_bad} in {len(warm.probes)} probes (bound {warm.bound}), "
            f"{s1:.1f}s, {compiled} TUs compiled (goal 0); first run here {s0:.1f}s: {units(first)}",
        )
        rebuilt, s2 = once(base, bin_root=base / "bin")
        per = [n.build.get("compiled", 0) for n in rebuilt.notes.values() if not n.build.get("reused")]
        report(
            "narrow llama.cpp, empty binary cache, warm worktree",
            rebuilt.found and max(per or [0]) <= 8,
            f"{s2:.1f}s for {len(rebuilt.probes)} probes ({s2 / max(1, len(rebuilt.probes)):.1f}s each): "
            f"{units(rebuilt)} (goal <= 8 TUs per probe)",
        )
        if os.environ.get("LLMCOMPAT_BENCH_COLD"):
            cold, s3 = once(base, bin_root=base / "bin-cold", work_root=base / "worktrees")
            report("narrow llama.cpp, cold (full compile)", cold.found, f"{s3:.1f}s: {units(cold)}")
        fulls = [builds.info(d) for d in (builds._cache() / "bin").glob("*/") if (d / builds.MARKER).is_file()]
        fulls = [m for m in fulls if m.get("kind") == "tree" and m.get("incremental") is False]
        if fulls:
            print(
                "  recorded full compiles in a fresh worktree: "
                + ", ".join(f"{m['seconds']:.0f}s ({m['compiled']} TUs)" for m in fulls)
            )


def bench_bot_soak() -> None:
    """The GitHub bot: 5 runs with faults injected leave one issue per fingerprint and lose no update;
    killed at 20 random points, re-runs converge to the uninterrupted state (tests/bench_bot.py)."""
    from tests.bench_bot import run

    run(report)


def bench_images() -> None:
    """Cell images with the real Docker engine: cached rebuild, a shared engine layer, size per engine."""
    from tests.bench_images import run

    run(report)


def bench_page(cells: int = 10_000, findings: int = 500) -> None:
    """The site for a synthetic store of 10,000 cells and 500 findings: build time (goal <= 5 s),
    a filter applied in Chromium (goal <= 100 ms, change event to the next frame), and the
    matrix view's page weight (reported)."""
    import gzip

    from reports.web.publish import publish
    from tests.page_store import synthetic_store

    with tempfile.TemporaryDirectory(prefix="llmcompat-bench-page-") as tmp:
        store = synthetic_store(Path(tmp, "store.sqlite"), cells=cells, findings=findings)
        t, cpu = time.perf_counter(), os.times()
        site = publish(store, Path(tmp, "site"))
        build, after = time.perf_counter() - t, os.times()
        used = sum(after[:4]) - sum(cpu[:4])  # this process and its forked renderers
        files = sum(1 for p in site.rglob("*") if p.is_file())
        report(
            f"page build, {cells} cells",
            build <= 5.0,
            f"{build:.2f}s wall for {files} files (goal <= 5 s, ratio {build / 5:.2f}); {used:.2f}s CPU "
            f"over {os.cpu_count()} CPUs at load {os.getloadavg()[0]:.1f}",
        )
        weight = {n: (site / n).read_bytes() for n in ("index.html", "style.css", "app.js")}
        raw = sum(len(b) for b in weight.values())
        packed = sum(len(gzip.compress(b)) for b in weight.values())
        report(
            "page weight, matrix view",
            True,
            f"{raw / 1024:.0f} KiB ({packed / 1024:.0f} KiB gzipped): "
            + ", ".join(f"{n} {len(b) / 1024:.0f} KiB" for n, b in weight.items()),
        )
        ms = _filter_ms(site)
        worst = max(ms.values())
        report(
            "page filter in Chromium",
            worst <= 100,
            ", ".join(f"{k} {v:.0f} ms" for k, v in ms.items())
            + f" (goal <= 100 ms each, worst ratio {worst / 100:.2f})",
        )


FILTER_JS = """async ([name, value]) => {
  const sel = document.querySelector(`#filters select[name=${name}]`);
  const t = performance.now();
  sel.value = value;
  sel.dispatchEvent(new Event("change", {bubbles: true}));
  await new Promise(r => requestAnimationFrame(() => setTimeout(r, 0)));
  return performance.now() - t;
}"""


def _filter_ms(site: Path) -> dict[str, float]:
    """Wall time in Chromium from a filter's change event to the next painted frame."""
    from playwright.sync_api import sync_playwright

    from tests.test_page_browser import ARGS, CHROMIUM

    out = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.goto((site / "index.html").as_uri())
        page.wait_for_selector("#filters:not([hidden])")
        for name, value in (
            ("state", "broken"),
            ("stage", "inference"),
            ("component", "engine|mistralrs"),
            ("runner", "cpu"),
        ):
            out[f"{name}={value}"] = min(page.evaluate(FILTER_JS, [name, value]) for _ in range(3))
        browser.close()
    return out


def bench_reliability(cells: int = 500) -> None:
    """500 cells, 10% injected infra failures and 5% flakes (a fault-injecting probe wrapper), run
    twice: zero findings, every infra cell retried, no cell lost (tests/bench_reliability.py)."""
    from tests import bench_reliability

    ok, text = bench_reliability.main(cells)
    report("reliability", ok, text)


BENCHES = {
    "env": bench_env_creation,
    "rerun": bench_second_run,
    "pairwise": bench_pairwise,
    "bisect": bench_bisect_probes,
    "noise": bench_noise,
    "bisect-real": bench_bisect_real,
    "stages": bench_stages_in_process,
    "cell-suite": bench_cell_suite,
    "narrow": bench_narrow,
    "images": bench_images,
    "page": bench_page,
    "reliability": bench_reliability,
}

BENCHES["bot-soak"] = bench_bot_soak


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("only", nargs="*", help=f"run only these of {', '.join(BENCHES)}")
    args = parser.parse_args(argv)
    unknown = [n for n in args.only if n not in BENCHES]
    if unknown:
        parser.error(f"unknown benchmark {unknown[0]!r}; known: {', '.join(BENCHES)}")
    for name in args.only or BENCHES:
        BENCHES[name]()
    missed = [n for n, ok, _ in RESULTS if not ok]
    print(
        f"\n{len(RESULTS) - len(missed)} of {len(RESULTS)} benchmark goals met"
        + (f"; missed: {', '.join(missed)}" if missed else "")
    )
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
