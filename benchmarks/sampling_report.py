"""sampling.py's report: a table per gen length and batch size, the Sudoku table, and the speed-quality figure.

Everything here reads the JSON sampling.py saves (``--json``), so a report or a figure can be drawn again,
or several runs (e.g. gen 256 and gen 1024 measured in two processes) merged, without sampling again
(``--from-json``). Speedups are always against the reference measured in the same run.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from common import table

QUALITY_SLACK = 0.05  # the bound: within 5% of the reference's quality


def ratio(a: float, b: float) -> str:
    return f"{a / b:.3f}" if b and not math.isnan(a) and not math.isnan(b) else "n/a"


def within(r: dict[str, Any], ref: dict[str, Any], samples: int) -> bool:
    """Quality within 5% of the reference: judge perplexity at most 1.05x, distinct bigrams at least 0.95x,
    and whole-sentence endings at most one sample fewer (of ``samples``, a handful: 5% of it is below one
    sample, so the bound is the count's resolution)."""
    return (r["ppl"] <= (1 + QUALITY_SLACK) * ref["ppl"]
            and not r["bigrams"] < (1 - QUALITY_SLACK) * ref["bigrams"]
            and not r["endings"] < ref["endings"] - 1 / samples - 1e-9)


def frontier(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The settings no other setting beats on both speed and judge perplexity, from the best perplexity on."""
    out: list[dict[str, Any]] = []
    for r in sorted(rows, key=lambda r: (r["ppl"], -r["tok_s"])):
        if not out or r["tok_s"] > out[-1]["tok_s"]:
            out.append(r)
    return out


def story(r: dict[str, Any]) -> list[str]:
    """The share of samples that ended (an EOS) and their mean tokens before it (n/a: runs saved before these)."""
    if math.isnan(r.get("ended", math.nan)):
        return ["n/a", "n/a"]
    return [f"{r['ended']:.2f}", f"{r['story_tokens']:.0f}"]


def run_section(run: dict[str, Any]) -> str:
    gen, rows, real = run["gen"], run["rows"], run["real"]
    ref = rows[0]
    headers = ["setting", "tokens/s", "speedup", "passes", "tokens/pass", "judge ppl", "ppl / ref",
               "distinct bigrams", "whole-sentence endings", "ended", "story tokens", "neighbours in one pass",
               "NLL together / alone"]
    body = []
    for r in rows:
        pair = (f"{r['nll_together']:.2f} / {r['nll_alone']:.2f}" if not math.isnan(r["nll_together"])
                else f"- / {r['nll_alone']:.2f}")
        body.append([r["name"] + (" ✓" if within(r, ref, run["prompts"]) else ""), f"{r['tok_s']:,.1f}",
                     f"{r['tok_s'] / ref['tok_s']:.2f}x", f"{r['forwards']:.0f}", f"{r['tokens_per_pass']:.2f}",
                     f"{r['ppl']:.2f}", ratio(r["ppl"], ref["ppl"]), f"{r['bigrams']:.3f}", f"{r['endings']:.2f}",
                     *story(r), f"{r['same_pass']:.2f}", pair])
    body.append(["real continuation (judge scale)", "", "", "", "", f"{real['ppl']:.2f}", ratio(real["ppl"], ref["ppl"]),
                 f"{real['bigrams']:.3f}", f"{real['endings']:.2f}", *story(real), "", ""])
    fastest = max(rows, key=lambda r: r["tok_s"])
    best = max((r for r in rows if within(r, ref, run["prompts"])), key=lambda r: r["tok_s"])  # ref is within
    who = "one prompt at a time (batch 1)" if run["batch"] == 1 else f"one batch of {run['batch']} prompts"
    edge = "; ".join(f"{r['name']} ({r['tok_s'] / ref['tok_s']:.2f}x, ppl {ratio(r['ppl'], ref['ppl'])}, bigrams "
                     f"{r['bigrams']:.3f})" for r in frontier(rows))
    samples = "\n\n".join(f"**{r['name']}**:\n\n```text\n{r['sample'][:300]}\n```" for r in rows)
    levels = sorted((k for k in ref if k.startswith("two_at_")), reverse=True)
    sure = ", ".join(f"{100 * ref[k]:.1f}% with two or more at >= {k[len('two_at_'):]}" for k in levels)
    census = (f"How sure the model is (the reference's steps): the top candidate's confidence averages "
              f"{ref['top_confidence']:.3f}; of the (step, prompt) pairs, {sure}. A threshold rule commits more "
              f"than one token only at such steps.\n\n" if levels else "")
    timed = ref.get("tok_s_runs")
    bracket = (f" The reference was timed first and again last ({timed[0]:,.1f} and {timed[1]:,.1f} tokens/s); "
               f"speedups are against their mean." if timed else "")
    setup = f"Measured on {run['setup']}. " if "setup" in run else ""
    return (f"## gen_length {gen}, {who}\n\n{setup}{run['prompts']} prompt(s). ✓ = within 5% of the reference's quality (judge "
            f"perplexity, distinct bigrams; whole-sentence endings at most one sample fewer).{bracket}\n\n{table(headers, body)}\n\n{census}{len(rows)} settings; fastest: {fastest['name']}, "
            f"{fastest['tok_s'] / ref['tok_s']:.2f}x the reference at judge perplexity ratio "
            f"{ratio(fastest['ppl'], ref['ppl'])}; fastest within 5% of the reference's quality: {best['name']}, "
            f"{best['tok_s'] / ref['tok_s']:.2f}x. The speed-perplexity frontier, best perplexity first: {edge}."
            f"\n\n<details><summary>first sample of each setting (300 "
            f"chars)</summary>\n\n{samples}\n\n</details>")


def report(results: dict[str, Any]) -> str:
    m = results["meta"]
    commands = "\n".join(f"- command: `{c}`" for c in m["commands"])
    sections = "\n\n".join(run_section(run) for run in results["runs"])
    return f"""# sampling

Fast sampling (issues 5 and 14): the LLaDA reference setting (low_confidence, steps = gen_length,
block {m['block']}, no cache) against the other remasking rules, the parallel rules (threshold,
Fast-dLLM's factor rule, dInfer's hierarchical decoding, credit decoding), Fast-dLLM's prefix and
dual K/V caches, and caches + parallel rules. {m['note']}

{commands}
- date: {m['date']}
- machine: {m['machine']}
- MDM: {m['mdm']}
- AR judge: {m['judge']}
- data: {m['data']}
- decoding: prompts of {m['prompt_length']} tokens from the held-out split ({m['prompt_source']}),
  temperature 0, early exit off (but in settings named "+ early exit"). tokens/s = generated tokens / seconds of `generate`: on CPU the
  process's CPU seconds (one thread, so what an idle core gives; the shared machine's load makes
  wall time swing), on GPU wall seconds after synchronising. speedup = tokens/s / the reference's,
  same run. Passes are forward passes per `generate` call (a batch shares them); tokens/pass =
  gen_length / passes, per row. A dual-cache pass runs the block's 32 columns, not the canvas.
- quality (see sample_quality.py): judge ppl = exp(mean NLL per generated token) under the AR
  judge; distinct bigrams = distinct / all word bigrams of a sample, averaged (repetition lowers
  it); whole-sentence endings = share of samples whose text up to the first EOS (the story's end)
  ends with . ! or ?; ended = share of samples with an EOS, story tokens = their mean tokens before
  the first EOS (EOS padding after a story's end is not scored by the judge); neighbours in one pass = share of adjacent generated tokens committed by the
  same forward pass; NLL together / alone = the judge's mean NLL of tokens committed in the same
  pass as a neighbour vs the others. The last row scores the real text after each prompt.

{sections}
"""


def task_report(rows: list[dict[str, Any]], ckpt: str) -> str:
    ref = rows[0]
    body = [[r["name"], f"{r['tok_s']:,.1f}", f"{r['tok_s'] / ref['tok_s']:.2f}x", f"{r['forwards']:.2f}",
             f"{r['accuracy']:.3f} ({r['solved']}/{r['n']})", ratio(r["accuracy"], ref["accuracy"])] for r in rows]
    headers = ["setting", "tokens/s", "speedup", "forward passes / puzzle", "exact accuracy", "accuracy / ref"]
    return (f"## Task accuracy: 4x4 Sudoku\n\nThe Sudoku MDM of `benchmarks/planning.py` (`{ckpt}`), d1's 500 test "
            f"puzzles one at a time, answer = 16 digits + end of turn + EOS in one block, steps = 18, "
            f"temperature 0. Exact = a valid grid that keeps every given.\n\n{table(headers, body)}\n")


def family(overrides: dict[str, Any]) -> tuple[str, str]:
    """(the rule's family, the cache) of a setting, for the figure's markers and colours."""
    rule = overrides.get("remasking", "low_confidence")
    if overrides.get("credit", 0) > 0:
        rule = f"credit + {rule}"
    elif overrides.get("remask_committed", 0) > 0:
        rule = "ReMDM"
    return rule, overrides.get("cache", "none")


MARKERS = {"low_confidence": "*", "margin": "o", "entropy": "o", "random": "o", "ReMDM": "o", "threshold": "^",
           "factor": "s", "hierarchy": "D"}
CACHE_COLOURS = {"none": "C0", "prefix": "C1", "dual": "C2"}


def figure(results: dict[str, Any], out: Path) -> Path:
    """Speedup (log) against judge perplexity / reference, one panel per run, the frontier drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    runs = results["runs"]
    cols = min(2, len(runs))
    fig, axes = plt.subplots(-(-len(runs) // cols), cols, figsize=(7 * cols, 5.2 * -(-len(runs) // cols)),
                             squeeze=False)
    for ax, run in zip(axes.flat, runs):
        ref = run["rows"][0]
        pts = [(r["ppl"] / ref["ppl"], r["tok_s"] / ref["tok_s"], r) for r in run["rows"]]
        named = {r["name"] for r in frontier(run["rows"])} | {ref["name"]}  # label these only (legible)
        for x, y, r in pts:
            rule, cache = family(r["overrides"])
            ax.scatter(x, y, marker=MARKERS.get(rule.split(" + ")[-1], "o"), s=60 if "credit" not in rule else 90,
                       color=CACHE_COLOURS[cache], edgecolors="k" if "credit" in rule else "none", zorder=3)
            if r["name"] in named:
                ax.annotate(r["name"].replace("dual cache + ", "dual + "), (x, y), fontsize=7, xytext=(4, -3),
                            textcoords="offset points")
        edge = [(r["ppl"] / ref["ppl"], r["tok_s"] / ref["tok_s"]) for r in frontier(run["rows"])]
        ax.step(*zip(*edge), where="post", color="0.5", linewidth=1, zorder=1)
        ax.axvline(1 + QUALITY_SLACK, color="r", linestyle=":", linewidth=1)
        ax.set_yscale("log")
        ax.set_xscale("log")
        plain = FuncFormatter(lambda v, _: f"{v:g}")
        for axis in (ax.xaxis, ax.yaxis):  # 0.7, 2, 10 rather than 7 x 10^-1, ...
            axis.set_major_formatter(plain)
            axis.set_minor_formatter(plain)
        ax.set_xlabel("judge perplexity / reference's (log; lower is better; red: +5%; labelled: the frontier)")
        ax.set_ylabel("speedup over the LLaDA reference")
        compiled = ", compiled" if "compile True" in run.get("setup", "") else ""
        ax.set_title(f"gen_length {run['gen']}, batch {run['batch']}{compiled}")
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(runs):]:
        ax.axis("off")
    handles = [plt.Line2D([], [], linestyle="", marker="o", color=c, label=f"cache: {k}")
               for k, c in CACHE_COLOURS.items()]
    handles += [plt.Line2D([], [], linestyle="", marker=mk, color="0.3", label=k)
                for k, mk in MARKERS.items() if k not in ("margin", "entropy", "random", "ReMDM")]
    handles.append(plt.Line2D([], [], linestyle="", marker="o", color="w", markeredgecolor="k",
                              label="black edge: + credit"))
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
