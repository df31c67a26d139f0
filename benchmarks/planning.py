"""Planning tasks where masked diffusion should beat autoregression: 4x4 Sudoku and Countdown-3.

    python benchmarks/planning.py                   # 4-8 minutes on 2 cores (results/planning.md)
    python benchmarks/planning.py --quick           # a smoke run, 20 steps per task, writes nothing
    python benchmarks/planning.py --work-dir DIR    # keep the checkpoints (DIR/mdm-sudoku: sampling.py --sudoku)
    python benchmarks/planning.py --data DIR        # the test sets from DIR/sudoku_countdown

Known result (Ye et al. 2024, "Beyond Autoregression: Discrete Diffusion for Complex Reasoning
and Planning"; d1, Zhao et al. 2025): a masked diffusion model solves small Sudoku and Countdown
far more often than an autoregressive model of the same size, because it need not commit to the
hardest cell or the first operand first. The TEST sets are d1's (``sudoku_countdown/`` under the
dataset root: ``--data DIR``, else ``$REMASK_DATA``, else ``../shared/data`` beside the repository;
500 Sudoku puzzles with 8 blanks, 256 Countdown problems with 3 numbers).

Training data is generated here and deduplicated against the test sets:
* Sudoku: all 288 complete 4x4 grids, each with random blanks (``BLANKS``), kept only when the
  solution is unique; a test puzzle string never appears in training (the grids themselves
  necessarily do: there are only 288). ``sudoku-grids`` trains on the 288 grids alone.
* Countdown: 3 numbers in 1..100 joined by a random expression ((a o b) o c or a o (b o c), exact
  integer steps) whose value is in 1..100; a (number multiset, target) pair of the test set never
  appears in training.

Both models go through ``remask.sft.sft`` on the same ``{prompt, response}`` jsonl with the same
model size, batch, steps and learning rate: the MDM with objective ``sft`` (LLaDA SFT,
bidirectional), the baseline with objective ``ar`` (causal, next-token on the answer). The two run
at the same time, one thread each, so both see the same machine load. Answers use a short
fixed-length format (char-level, byte tokenizer):
* ``sudoku``: ``puzzle=solution`` (16 digits each, 0 = blank); MDM generates (low-confidence
  remasking, one token per step), AR decodes greedily. The like-for-like comparison.
* ``sudoku-grids``: ``sudoku=grid``; at test time the givens are imposed on the grid: the MDM infills
  the blanks, the AR model decodes left to right with each given forced (it cannot see the givens to
  the right of a blank). The MDM's natural use, and a handicap for AR by construction.
* ``countdown``: ``030,100,093:023=(x+z)-y``, the answer naming the numbers by position.
Scores are exact: a Sudoku answer counts when it is a valid grid that keeps every given; a
Countdown answer when it uses the three numbers once each and evaluates to the target. The best
single fixed Countdown answer is reported as the floor to beat.
"""

from __future__ import annotations

import argparse
import ast
import csv
import itertools
import json
import re
import sys
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from common import (
    SUDOKU_COUNTDOWN,
    add_data_arg,
    add_model_args,
    add_worker_args,
    command_line,
    data_root,
    dataset,
    date,
    machine,
    run_workers,
    table,
    work_dir,
    write_atomic,
)

TEMPLATE = ("{% for m in messages %}{{ m['content'] }}"
            "{% if m['role'] == 'user' %}={% else %}{{ eot_token }}{% endif %}{% endfor %}")
OPS = "+-*/"
# Blanks per training puzzle (uniform). The test puzzles have 8; training on puzzles that are as hard
# or harder (6-12 rather than 4-10) lifted both models at the same budget (notes in results/planning.md).
BLANKS = (6, 12)


# ----------------------------------------------------------------------------- Sudoku

def all_grids() -> np.ndarray:
    """The 288 complete 4x4 Sudoku grids, (288, 16) int8 row-major over 1..4 (row by row, pruned)."""
    rows = list(itertools.permutations((1, 2, 3, 4)))

    def fits(grid: tuple, row: tuple) -> bool:
        if any(row[c] == r[c] for r in grid for c in range(4)):  # columns
            return False
        box_mate = grid[-1] if len(grid) % 2 else None  # rows 1 and 3 share 2x2 boxes with the row above
        return box_mate is None or all({row[c], row[c + 1]}.isdisjoint({box_mate[c], box_mate[c + 1]}) for c in (0, 2))

    grids: list[tuple] = [()]
    for _ in range(4):
        grids = [(*g, r) for g in grids for r in rows if fits(g, r)]
    return np.array([sum(g, ()) for g in grids], dtype=np.int8)


def sudoku_valid(answer: str, puzzle: str) -> bool:
    if not re.fullmatch(r"[1-4]{16}", answer) or any(p != "0" and p != a for p, a in zip(puzzle, answer)):
        return False
    g = np.array([int(c) for c in answer]).reshape(4, 4)
    units = [g[r] for r in range(4)] + [g[:, c] for c in range(4)]
    units += [g[r:r + 2, c:c + 2].ravel() for r in (0, 2) for c in (0, 2)]
    return all(len(set(u.tolist())) == 4 for u in units)


def sudoku_train(test_puzzles: set[str], n: int, rng: np.random.Generator) -> list[dict[str, str]]:
    grids = all_grids()
    assert len(grids) == 288
    out, seen = [], set()
    while len(out) < n:
        g = grids[rng.integers(len(grids))]
        blanks = rng.choice(16, size=int(rng.integers(BLANKS[0], BLANKS[1] + 1)), replace=False)
        puzzle = g.copy()
        puzzle[blanks] = 0
        givens = puzzle != 0
        if int(((grids[:, givens] == puzzle[givens]).all(1)).sum()) != 1:
            continue  # keep puzzles with a unique solution
        p = "".join(map(str, puzzle))
        if p in test_puzzles or p in seen:
            continue
        seen.add(p)
        out.append({"prompt": p, "response": "".join(map(str, g))})
    return out


# ----------------------------------------------------------------------------- Countdown

def _apply(x: int, op: str, y: int) -> int | None:
    if op == "+":
        return x + y
    if op == "-":
        return x - y
    if op == "*":
        return x * y
    return x // y if y != 0 and x % y == 0 else None


def countdown_prompt(nums: list[int], target: int) -> str:
    return ",".join(f"{v:03d}" for v in nums) + f":{target:03d}"


def countdown_train(test_keys: set[tuple], n: int, rng: np.random.Generator) -> list[dict[str, str]]:
    """Random expressions over 3 numbers; the answer names the numbers by position: x, y, z."""
    out, seen = [], set()
    while len(out) < n:
        nums = [int(v) for v in rng.integers(1, 101, size=3)]
        i, j, k = (int(v) for v in rng.permutation(3))
        a, b, c = nums[i], nums[j], nums[k]
        x, y, z = "xyz"[i], "xyz"[j], "xyz"[k]
        o1, o2 = OPS[rng.integers(4)], OPS[rng.integers(4)]
        if rng.random() < 0.5:  # (a o1 b) o2 c
            inner = _apply(a, o1, b)
            value = None if inner is None else _apply(inner, o2, c)
            expr = f"({x}{o1}{y}){o2}{z}"
        else:  # a o1 (b o2 c)
            inner = _apply(b, o2, c)
            value = None if inner is None else _apply(a, o1, inner)
            expr = f"{x}{o1}({y}{o2}{z})"
        if value is None or inner is None or inner < 0 or not 1 <= value <= 100:
            continue
        key = (tuple(sorted(nums)), value)
        if key in test_keys or (tuple(nums), value) in seen:
            continue
        seen.add((tuple(nums), value))
        out.append({"prompt": countdown_prompt(nums, value), "response": expr})
    return out


def _eval(node: ast.AST) -> Fraction:
    if isinstance(node, ast.Expression):
        return _eval(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, int):
        return Fraction(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in (ast.Add, ast.Sub, ast.Mult, ast.Div):
        x, y = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Add):
            return x + y
        if isinstance(node.op, ast.Sub):
            return x - y
        if isinstance(node.op, ast.Mult):
            return x * y
        return x / y  # ZeroDivisionError is caught by the caller
    raise ValueError("not an arithmetic expression")


def countdown_valid(answer: str, nums: list[int], target: int) -> bool:
    """d1's rule: each number used exactly once, + - * / and parentheses, value == target.
    ``x``, ``y``, ``z`` name the first, second and third number of the problem."""
    if not re.fullmatch(r"[xyz+\-*/()]+", answer) or sorted(re.findall(r"[xyz]", answer)) != ["x", "y", "z"]:
        return False
    expr = answer.translate(str.maketrans({v: str(n) for v, n in zip("xyz", nums)}))
    try:
        return _eval(ast.parse(expr, mode="eval")) == target
    except (SyntaxError, ValueError, ZeroDivisionError):
        return False


def best_constant_answer(items: list[dict]) -> tuple[str, float]:
    """The single expression (same answer for every problem) that solves the most test items:
    the floor a model must beat to show it has learned anything about the numbers."""
    exprs = {f"({a}{o1}{b}){o2}{c}" for a, b, c in itertools.permutations("xyz") for o1 in OPS for o2 in OPS}
    exprs |= {f"{a}{o1}({b}{o2}{c})" for a, b, c in itertools.permutations("xyz") for o1 in OPS for o2 in OPS}
    best = max(sorted(exprs), key=lambda e: sum(countdown_valid(e, it["nums"], it["target"]) for it in items))
    return best, float(np.mean([countdown_valid(best, it["nums"], it["target"]) for it in items]))


# ----------------------------------------------------------------------------- test sets

def load_tests(folder: Path) -> dict[str, list[dict]]:
    """The test sets in ``folder`` (the dataset root's sudoku_countdown/)."""
    with (folder / "4x4_test_sudoku.csv").open() as f:
        sudoku = [{"prompt": r["Puzzle"], "solution": r["Solution"]} for r in csv.DictReader(f)]
    countdown = []
    for line in (folder / "countdown_cd3_test.jsonl").read_text().splitlines():
        r = json.loads(line)
        nums, target = [int(v) for v in r["input"].split(",")], int(r["output"])
        countdown.append({"prompt": countdown_prompt(nums, target), "nums": nums, "target": target})
    return {"sudoku": sudoku, "sudoku-grids": sudoku, "countdown": countdown}


# task -> training file, answer length (characters), optimizer steps, time cap (s) and peak lr, the
# same for both models (sudoku's lr: the best of 6e-3, 3e-3, 1.5e-3 for both; see the notes)
TASKS = {
    "sudoku": {"data": "sudoku", "answer": 16, "steps": 1200, "cap": 270.0, "lr": 1.5e-3},
    "sudoku-grids": {"data": "grids", "answer": 16, "steps": 500, "cap": 90.0, "lr": 3e-3},
    "countdown": {"data": "countdown", "answer": 7, "steps": 800, "cap": 150.0, "lr": 3e-3},
}
GRID_PROMPT = "sudoku"  # the whole prompt of the grids-only records


def score(task: str, answer: str, item: dict) -> bool:
    if task.startswith("sudoku"):
        return sudoku_valid(answer, item["prompt"])
    return countdown_valid(answer, item["nums"], item["target"])


# ----------------------------------------------------------------------------- worker

def run_config(args: argparse.Namespace, steps: int, cap: float, lr: float, ar: bool):
    from remask.config import ModelConfig, RunConfig, TrainConfig

    return RunConfig(
        model=ModelConfig(d_model=args.d_model, n_layer=args.n_layer, n_head=args.n_head, max_seq_len=64, causal=ar),
        train=TrainConfig(objective="ar" if ar else "sft", batch_size=args.batch_size, seq_len=48, max_steps=steps,
                          time_budget=cap, lr=lr, warmup_steps=20, min_lr_ratio=0.05, mask_eps=0.1,
                          eval_interval=0, eval_batches=2, eval_mc=1, ckpt_interval=0, log_interval=50,
                          progress=False, device=args.device, dtype="auto", samples=0, lr_clock=args.lr_clock))


def decode(task: str, kind: str, model, tok, items: list[dict]) -> list[str]:
    """Answers (the first ``answer`` characters) for the test items, batched."""
    import torch

    from remask.chat import prompt_ids
    from remask.sampling import SampleConfig, generate, infill
    from remask.sampling.ar import ARSampleConfig, ar_generate

    n = TASKS[task]["answer"]
    if task == "sudoku-grids":  # the givens are imposed on the grid; the model fills the blanks
        prompt = prompt_ids(tok, GRID_PROMPT)
        device = next(model.parameters()).device
        grid = torch.tensor([[tok.mask_id if c == "0" else ord(c) for c in it["prompt"]] for it in items],
                            device=device)  # (B, 16)
        holes = grid == tok.mask_id
        if kind == "mdm":  # infill: any order, low-confidence first, both sides visible
            canvas = torch.cat([torch.tensor(prompt, device=device).expand(len(items), -1), grid], 1)
            editable = torch.cat([torch.zeros(len(items), len(prompt), dtype=torch.bool, device=device), holes], 1)
            out = infill(model, canvas, editable, SampleConfig(gen_length=n, steps=n), mask_id=tok.mask_id,
                         eos_id=tok.eos_id, eot_id=tok.eot_id)
            rows = out.canvas[:, len(prompt):]
        else:  # left to right, a given forced where there is one, else the greedy choice
            x = torch.tensor(prompt, device=device).expand(len(items), -1).clone()
            with torch.inference_mode():
                for j in range(n):
                    logits = model(x)[:, -1].float()  # (B, V)
                    logits[:, tok.mask_id] = float("-inf")
                    x = torch.cat([x, torch.where(holes[:, j], logits.argmax(-1), grid[:, j])[:, None]], 1)
            rows = x[:, len(prompt):]
    else:
        prompts = [prompt_ids(tok, it["prompt"]) for it in items]  # through the checkpoint's chat template
        if kind == "mdm":  # the answer, its end-of-turn and EOS, one token per step, low confidence first
            rows = generate(model, prompts, SampleConfig(gen_length=n + 2, steps=n + 2), mask_id=tok.mask_id,
                            eos_id=tok.eos_id, eot_id=tok.eot_id).tokens
        else:
            rows = ar_generate(model, prompts, ARSampleConfig(gen_length=n), eos_id=tok.eos_id,
                               mask_id=tok.mask_id).tokens
    return [tok.decode(r[:n].tolist(), skip_special_tokens=True) for r in rows]


def task_lr(args: argparse.Namespace, task: str) -> float:
    """The task's peak learning rate: ``--lr``'s override, else the task's own."""
    return float(args.lr.get(task, TASKS[task]["lr"]))


def worker(args: argparse.Namespace, steps: dict[str, int]) -> None:
    import torch

    torch.set_num_threads(1)
    from remask.sft import sft
    from remask.train import load_model

    kind, work = args.worker, args.work_dir
    tests = load_tests(dataset(args.data, SUDOKU_COUNTDOWN))
    results = {}
    for task in args.tasks:
        spec = TASKS[task]
        t0 = time.perf_counter()
        cap, lr = args.time_cap or spec["cap"], task_lr(args, task)
        res = sft(work / f"{spec['data']}.jsonl", work / f"{kind}-{task}",
                  cfg=run_config(args, steps[task], cap, lr, kind == "ar"), template=TEMPLATE,
                  val_fraction=0.0 if task == "sudoku-grids" else 0.01, buckets=1, overwrite=True)
        train_s = time.perf_counter() - t0
        model, tok = load_model(work / f"{kind}-{task}", args.device)
        t0 = time.perf_counter()
        answers = decode(task, kind, model, tok, tests[task])
        eval_s = time.perf_counter() - t0
        solved = [score(task, a, item) for a, item in zip(answers, tests[task])]
        results[task] = {"accuracy": float(np.mean(solved)), "solved": int(sum(solved)), "n": len(solved),
                         "params": model.num_params(),
                         "steps": res.train.step, "train_s": round(train_s, 1), "eval_s": round(eval_s, 1),
                         "val_loss": res.train.val_loss, "examples": res.examples,
                         "samples": [{"prompt": it["prompt"], "answer": a} for it, a in zip(tests[task], answers)][:3]}
        print(f"[{kind}] {task}: {results[task]['accuracy']:.3f} ({res.train.step} steps, {train_s:.0f}s train, "
              f"{eval_s:.0f}s eval)", flush=True)
    write_atomic(work / f"{kind}.json", json.dumps(results, indent=2))


# ----------------------------------------------------------------------------- main

def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a smoke run: 20 steps per task")
    ap.add_argument("--steps", type=json.loads, default={}, help='per-task step overrides, e.g. \'{"sudoku": 800}\'')
    ap.add_argument("--lr", type=json.loads, default={}, help='per-task peak lr overrides, e.g. \'{"countdown": 1e-3}\'')
    ap.add_argument("--time-cap", type=float, default=None, help="training seconds per task and model "
                                                                  "(default: each task's own cap)")
    ap.add_argument("--tasks", nargs="+", choices=list(TASKS), default=list(TASKS), help="the tasks to run")
    add_model_args(ap, d_model=96, n_layer=3, n_head=4)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr-clock", choices=["steps", "time"], default="steps",
                    help="time: the lr schedule runs on the time cap (for runs the cap ends)")
    ap.add_argument("--countdown-train", type=int, default=40000, help="generated Countdown training problems")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (both workers share the one GPU)")
    ap.add_argument("--seed", type=int, default=0)
    add_data_arg(ap, "sudoku_countdown/ (the test sets)")
    add_worker_args(ap, "planning")  # --work-dir keeps the checkpoints (DIR/mdm-sudoku: sampling.py --sudoku)
    return ap.parse_args()


def training_data(tests: dict[str, Any], args: argparse.Namespace) -> dict[str, list[dict[str, str]]]:
    """The generated training records of every task, deduplicated against the test sets."""
    rng = np.random.default_rng(args.seed)
    return {
        "sudoku": sudoku_train({t["prompt"] for t in tests["sudoku"]}, 20000, rng),
        "grids": [{"prompt": GRID_PROMPT, "response": "".join(map(str, g))} for g in all_grids()],
        "countdown": countdown_train({(tuple(sorted(t["nums"])), t["target"]) for t in tests["countdown"]},
                                     args.countdown_train, rng),
    }


def main() -> None:
    args = parse_args()
    steps = {t: 20 if args.quick else int(args.steps.get(t, spec["steps"])) for t, spec in TASKS.items()}
    if args.worker:
        worker(args, steps)
        return
    t_start = time.perf_counter()
    tests = load_tests(dataset(args.data, SUDOKU_COUNTDOWN))
    data = training_data(tests, args)
    with work_dir(args.work_dir, "remask-planning-") as work:
        for name, rows in data.items():
            (work / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        # Both workers at once, on the same load; their progress lines go to this terminal.
        res = run_workers(__file__, work, [*sys.argv[1:], "--work-dir", str(work), "--steps", json.dumps(steps)],
                          logs=False)
    wall = time.perf_counter() - t_start
    report = report_text(args, res, tests, data, wall)
    if args.quick:  # a smoke run never overwrites the recorded results
        print(f"quick run done ({wall:.0f} s); results not written")
        return
    if str(args.results) == "-":  # add_worker_args: '-' prints the table only
        print(f"done ({wall:.0f} s); results not written")
        return
    write_atomic(args.results, report)
    print(f"wrote {args.results} ({wall:.0f} s)")


def report_text(args: argparse.Namespace, res: dict[str, Any], tests: dict[str, Any],
                data: dict[str, list[dict[str, str]]], wall: float) -> str:
    """The results page: the accuracy table (also printed), the verdicts, the setup and one sample each."""
    how = {"sudoku": "puzzle -> solution; MDM generates, AR greedy",
           "sudoku-grids": "grids only; givens imposed: MDM infill, AR forced left to right",
           "countdown": "numbers:target -> expression; MDM generates, AR greedy"}
    rows = []
    for task in args.tasks:
        m, a = res["mdm"][task], res["ar"][task]
        ratio = f"{m['accuracy'] / a['accuracy']:.2f}x" if a["accuracy"] > 0 else "n/a (AR 0)"
        rows.append([task, how[task], m["n"], f"{m['accuracy']:.3f} ({m['solved']})",
                     f"{a['accuracy']:.3f} ({a['solved']})", ratio, f"{m['steps']} / {a['steps']}",
                     f"{m['train_s']:.0f} / {a['train_s']:.0f}"])
    tab = table(["task", "format", "test items", "MDM exact", "AR exact", "MDM / AR", "steps MDM / AR",
                 "train s MDM / AR"], rows)
    print(tab)
    samples = "\n".join(f"- {k} {task}: `{s['prompt']}` -> `{s['answer']}`"
                        for task in args.tasks for k in ("mdm", "ar") for s in res[k][task]["samples"][:1])
    const, const_acc = best_constant_answer(tests["countdown"])
    lrs = ", ".join(f"{t} {task_lr(args, t):g}" for t in args.tasks)
    verdict = "\n".join(f"- {task}: MDM {res['mdm'][task]['accuracy']:.3f} vs AR {res['ar'][task]['accuracy']:.3f}"
                        f" -> {'MDM ahead' if res['mdm'][task]['accuracy'] > res['ar'][task]['accuracy'] else 'AR ahead or tied'}"
                        for task in args.tasks)
    report = f"""# planning.py: 4x4 Sudoku and Countdown-3, masked diffusion (LLaDA SFT) vs autoregressive

Command: `{command_line()}`
Date: {date()}
Machine: {machine()}; the MDM and AR workers run at the same time, 1 thread each, on a machine
shared with other work. Total wall time: {wall:.0f} s.

Test sets: d1's 500 4x4 Sudoku puzzles (8 blanks each) and 256 Countdown-3 problems
(`{data_root(args.data).label}/{SUDOKU_COUNTDOWN}`). Training data is generated by the script and deduplicated against
them: {len(data['sudoku'])} Sudoku puzzles (the 288 grids with {BLANKS[0]}-{BLANKS[1]} random blanks, unique solutions, no test
puzzle), the 288 complete grids (for `sudoku-grids`), {len(data['countdown'])} Countdown problems (random
+-*/ expressions over 3 numbers in 1..100 with integer steps, value in 1..100, no test (numbers, target)).

Both models per task: the remask Transformer, d_model {args.d_model}, {args.n_layer} layers, {args.n_head} heads
({res['mdm'][args.tasks[0]]['params']:,} parameters), byte tokenizer, on {args.device}, trained by `remask.sft.sft` on
the same jsonl with the same batch ({args.batch_size}), step count, lr (cosine; {lrs}) and time cap. MDM = objective `sft` (LLaDA SFT;
bidirectional; mask_eps 0.1), AR = objective `ar` (causal; next-token on the answer). Formats (a short fixed-length answer each):

- `sudoku`: prompt = the puzzle (16 digits, 0 = blank), answer = the solved grid. MDM: generate, one
  token per step, low-confidence remasking. AR: greedy.
- `sudoku-grids`: the training records are the 288 grids alone (LLaDA's random masking plays the
  blanks); at test time the givens are imposed on the grid. MDM: infill of the 8 blanks (any order,
  low confidence first). AR: left to right, the given digit forced wherever there is one, greedy
  elsewhere, so it cannot see the givens to the right of a blank. This is the MDM's natural use and the
  AR model's handicap; the `sudoku` row is the like-for-like comparison.
- `countdown`: prompt = `030,100,093:023` (numbers, target), answer = an expression naming the numbers
  by position, e.g. `(x+z)-y` (scored with the real numbers: each used once, value = target).

Exact-solution accuracy: a Sudoku answer counts when it is a valid grid that keeps every given; a
Countdown answer when it uses each number once and evaluates to the target (d1's rule).

{tab}

{verdict}
- reference for countdown: answering `{const}` to every problem solves {const_acc:.3f} of the test set
  (the best single fixed expression); a model below or near it has learned nothing about the numbers.

Goal: MDM >= 0.90 on Sudoku and clearly above AR on both tasks.

First test item per task and model:
{samples}
"""
    return report


if __name__ == "__main__":
    main()
