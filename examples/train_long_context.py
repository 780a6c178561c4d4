"""Train a small Llama on long-range associative recall, with softmax and with entmax attention.

    python examples/train_long_context.py                         # CPU: 256 tokens, ~8 min on 2 cores
    python examples/train_long_context.py --preset gpu --out runs/gpu   # one GPU: 4096 tokens, bf16
    python examples/train_long_context.py --preset gpu --out runs/gpu --steps 3000 --resume

Two copies of one random-weight Hugging Face Llama (the same initial weights, the same batches)
are trained side by side on multi-query associative recall (``recall_task.py``; loss and accuracy
on the answer tokens only):

- "softmax": ``torch.compile(model)``, the model's own SDPA attention;
- "entmax":  ``torch.compile(model, backend=adasplash_compile.Backend(alpha))``, the same model
  with its attention rewritten into sparse alpha-entmax attention. Its ``explain`` table is
  printed first, and the run stops unless every attention layer is rewritten.

Every step logs the loss, accuracy and time of each model (the first step includes compiling).
Every ``--eval-every`` steps both models are evaluated on a held-out batch by eager copies of
themselves; the entmax copy runs ``sparsity_probe.SparsityProbe``, which measures each layer's
attention sparsity on the whole batch with ``adasplash_compile.attention_stats``: the fraction of
attention weights exactly zero among the causally admissible ones, and the block sparsity (the
fraction of 64 x 64 tiles the kernels skip as all-zero).

Writes to ``--out``: ``log.json`` (settings and every logged number), ``curves.png`` (both
models' curves) and ``checkpoint.pt`` (weights, optimizer and schedule states, step, RNG states
and log; every ``--save-every`` steps and at the end). ``--resume`` continues from the
checkpoint up to ``--steps`` with the same settings; a resumed run logs what an uninterrupted
run with the same ``--seed`` logs (batches depend only on seed and step).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

import adasplash_compile as ac  # noqa: E402
import checkpoint  # noqa: E402
import recall_task  # noqa: E402
import small_llama  # noqa: E402
import training  # noqa: E402
from recall_task import RecallTask  # noqa: E402
from sparsity_probe import SparsityProbe, plot_sparsity  # noqa: E402
from training import adamw_with_warmup, evaluate, pick_device, train_step  # noqa: E402

MODELS = ("softmax", "entmax")
PRESETS = {
    "cpu": dict(seq_len=256, num_pairs=8, num_queries=4, num_keys=32, batch_size=32, hidden=128,
                layers=2, heads=4, steps=300, lr=1e-3, warmup=50, eval_every=25, save_every=100,
                dtype="float32"),
    "gpu": dict(seq_len=4096, num_pairs=16, num_queries=8, num_keys=64, batch_size=16, hidden=256,
                layers=2, heads=4, steps=1500, lr=1e-3, warmup=100, eval_every=100, save_every=500,
                dtype="bfloat16"),
}
# Settings a resumed run may change; every other one must match the checkpoint's.
RESUMABLE = ("steps", "save_every", "out", "resume", "device", "preset", "progress")
CHECKPOINT, LOG, CURVES = "checkpoint.pt", "log.json", "curves.png"


def parse_args(argv=None) -> argparse.Namespace:
    epilog = "\n\n".join(training.defaults_epilog(f"--preset {name}", values) for name, values in PRESETS.items())
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] + "\n\n" + __doc__.split("\n\n")[1],
                                     formatter_class=training.HelpFormatter, epilog=epilog)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu",
                        help="sizes and schedule; the options below left unset take the preset's values")
    recall_task.add_arguments(parser)
    small_llama.add_arguments(parser)
    training.add_arguments(parser)
    parser.add_argument("--alpha", type=float, default=1.5, help="entmax alpha of the entmax model")
    parser.add_argument("--eval-every", type=int, help="steps between evaluations (sparsity included)")
    parser.add_argument("--save-every", type=int, help="steps between checkpoints")
    parser.add_argument("--out", default="runs/long_context", help="folder for the log, plot, checkpoint")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    args = parser.parse_args(argv)
    return training.apply_defaults(args, PRESETS[args.preset])


@dataclass
class Run:
    """One trained model: the module, its compiled callable, optimizer, schedule, eval copy."""

    model: torch.nn.Module
    compiled: object
    optimizer: torch.optim.Optimizer
    schedule: object
    eval_copy: torch.nn.Module


def build_runs(args, task: RecallTask, device: torch.device, probe: SparsityProbe) -> dict:
    """Both models from the same initial weights (seeded), compiled as ``--compile`` says."""
    runs = {}
    for name in MODELS:
        model = small_llama.small_llama(task.vocab_size, task.seq_len, args.hidden, args.layers, args.heads,
                                        args.seed).to(device=device, dtype=training.DTYPES[args.dtype])
        if name == "softmax":
            compiled = torch.compile(model, backend=args.compile)
            eval_copy = small_llama.with_attention(model, "sdpa")
        else:
            compiled = torch.compile(model, backend=ac.Backend(alpha=args.alpha, compiler=args.compile))
            eval_copy = small_llama.with_attention(model, probe.name)
        optimizer, schedule = adamw_with_warmup(model.parameters(), args.lr, args.warmup)
        runs[name] = Run(model, compiled, optimizer, schedule, eval_copy.eval())
    return runs


def check_rewritten(model, batch, alpha: float) -> None:
    """Print what the backend rewrites in ``model``; stop unless it is every attention layer
    (else the "entmax" model would silently keep softmax somewhere)."""
    report = ac.Backend(alpha=alpha).explain(model, input_ids=batch.ids)
    torch._dynamo.reset()  # start the training compiles afresh
    print(report)
    layers = model.config.num_hidden_layers
    if report.left_alone or len(report.rewritten) != layers:
        raise SystemExit(f"the backend rewrote {len(report.rewritten)} of {layers} attention layers")


def new_log(args) -> dict:
    curves = {"train": {"step": [], "loss": [], "accuracy": [], "seconds": []},
              "eval": {"step": [], "loss": [], "accuracy": []}}
    log = {"config": vars(args).copy(), "models": {m: copy.deepcopy(curves) for m in MODELS}}
    log["models"]["entmax"]["eval"].update(zero_fraction=[], block_sparsity=[])
    return log


def read_checkpoint(args) -> dict:
    """The checkpoint in ``--out``, whose settings must be those given but for RESUMABLE ones."""
    path = Path(args.out) / CHECKPOINT
    if not path.exists():
        raise SystemExit(f"--resume: no checkpoint at {path}")
    state = checkpoint.read(path)
    differ = {k: (v, getattr(args, k)) for k, v in state["config"].items()
              if k not in RESUMABLE and v != getattr(args, k)}
    if differ:
        raise SystemExit("--resume: settings differ from the checkpoint's (saved vs given): " +
                         ", ".join(f"--{k.replace('_', '-')} {a!r} vs {b!r}" for k, (a, b) in differ.items()))
    return state


def resume(state: dict, args, runs: dict) -> tuple:
    """Restore the runs from a checkpoint; (step, log)."""
    checkpoint.restore(state, {k: r.model for k, r in runs.items()}, {k: r.optimizer for k, r in runs.items()},
                       {k: r.schedule for k, r in runs.items()})
    log = state["log"]
    log["config"] = vars(args).copy()
    return state["step"], log


def evaluate_runs(runs: dict, batch, probe: SparsityProbe, step: int, log: dict) -> None:
    for name, run in runs.items():
        run.eval_copy.load_state_dict(run.model.state_dict())
        loss, accuracy = evaluate(run.eval_copy, batch)
        curves = log["models"][name]["eval"]
        curves["step"].append(step)
        curves["loss"].append(loss)
        curves["accuracy"].append(accuracy)
        if name == "entmax":
            for measure in ("zero_fraction", "block_sparsity"):
                curves[measure].append(probe.per_layer(measure))


def plot(log: dict, path: Path) -> None:
    """Loss, accuracy, entmax sparsity per layer and step time, both models."""
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    (loss_ax, acc_ax), (sparse_ax, time_ax) = axes
    for name, color in zip(MODELS, ("tab:blue", "tab:orange")):
        train, held_out = log["models"][name]["train"], log["models"][name]["eval"]
        loss_ax.plot(train["step"], train["loss"], color=color, alpha=0.35, lw=0.8)
        loss_ax.plot(held_out["step"], held_out["loss"], "o-", color=color, ms=3, label=f"{name} (held out)")
        acc_ax.plot(train["step"], train["accuracy"], color=color, alpha=0.35, lw=0.8)
        acc_ax.plot(held_out["step"], held_out["accuracy"], "o-", color=color, ms=3, label=f"{name} (held out)")
        time_ax.plot(train["step"][1:], [1e3 * s for s in train["seconds"][1:]], color=color, lw=0.8, label=name)
    plot_sparsity(sparse_ax, log["models"]["entmax"]["eval"])
    config = log["config"]
    chance = 1 / config["num_keys"]
    acc_ax.axhline(chance, color="gray", ls=":", lw=0.8, label="chance")
    for ax, title in ((loss_ax, "loss on answer tokens (thin: training batches)"),
                      (acc_ax, "recall accuracy"),
                      (sparse_ax, f"entmax model (alpha={config['alpha']:g}): sparsity, %"),
                      (time_ax, "step time, ms (first step, with compiling, left out)")):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    if any(s > 0 for s in log["models"]["softmax"]["train"]["seconds"][1:]):
        time_ax.set_yscale("log")
    fig.suptitle(f"associative recall, {config['seq_len']} tokens, {config['num_pairs']} pairs; Llama "
                 f"{config['layers']} layers x {config['hidden']}, {config['heads']} heads", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(out: Path, log: dict, step: int, runs: dict | None = None) -> None:
    """log.json and curves.png; with ``runs``, also the checkpoint."""
    if runs is not None:
        checkpoint.save(out / CHECKPOINT, step, log["config"], {k: r.model for k, r in runs.items()},
                        {k: r.optimizer for k, r in runs.items()}, {k: r.schedule for k, r in runs.items()}, log)
    (out / LOG).write_text(json.dumps(log, indent=1) + "\n")
    plot(log, out / CURVES)


def summary(log: dict) -> str:
    lines = []
    for name in MODELS:
        train, held_out = log["models"][name]["train"], log["models"][name]["eval"]
        if not train["step"]:
            continue
        line = (f"{name:8s} step {train['step'][-1]}: training loss {train['loss'][-1]:.3f}, "
                f"accuracy {train['accuracy'][-1]:.3f}")
        if held_out["step"]:
            line += f"; held out (step {held_out['step'][-1]}) accuracy {held_out['accuracy'][-1]:.3f}"
        if len(train["seconds"]) > 1:
            line += f"; median step {1e3 * statistics.median(train['seconds'][1:]):.1f} ms"
        if held_out.get("zero_fraction"):
            line += ("; per layer, zero weights " + " ".join(f"{100 * s:.1f}%" for s in held_out["zero_fraction"][-1])
                     + ", skipped tiles " + " ".join(f"{100 * s:.1f}%" for s in held_out["block_sparsity"][-1]))
        lines.append(line)
    return "\n".join(lines)


def main(argv=None) -> dict:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    state = read_checkpoint(args) if args.resume else None
    device = pick_device(args.device)
    task = RecallTask.from_args(args)
    probe = SparsityProbe(alpha_of=lambda module: args.alpha)
    runs = build_runs(args, task, device, probe)
    start, log = resume(state, args, runs) if state else (0, new_log(args))
    held_out = task.batch(args.batch_size, seed=args.seed + 1_000_000, index=0).to(device)
    check_rewritten(runs["entmax"].model, held_out, args.alpha)
    print(f"{task}, vocabulary {task.vocab_size}; batch {args.batch_size}; {args.dtype} on {device}; "
          f"steps {start + 1}..{args.steps}; writing to {out}")

    progress = tqdm(range(start, args.steps), initial=start, total=args.steps, disable=not args.progress,
                    desc="training", dynamic_ncols=True)
    for index in progress:
        batch = task.batch(args.batch_size, seed=args.seed, index=index).to(device)
        step = index + 1
        for name, run in runs.items():
            loss, accuracy, seconds = train_step(run.compiled, run.optimizer, run.schedule, batch, device)
            if not math.isfinite(loss):
                raise FloatingPointError(f"{name} model: loss {loss} at step {step}")
            train = log["models"][name]["train"]
            for key, value in (("step", step), ("loss", loss), ("accuracy", accuracy), ("seconds", seconds)):
                train[key].append(value)
        progress.set_postfix({f"{n} loss/acc": f"{log['models'][n]['train']['loss'][-1]:.2f}/"
                                               f"{log['models'][n]['train']['accuracy'][-1]:.2f}" for n in MODELS})
        if step % args.eval_every == 0:
            evaluate_runs(runs, held_out, probe, step, log)
        if step % args.save_every == 0 and step != args.steps:
            write_outputs(out, log, step, runs)
    progress.close()
    write_outputs(out, log, max(start, args.steps), runs)
    print(summary(log))
    print(f"wrote {out / LOG}, {out / CURVES}, {out / CHECKPOINT}")
    return log


if __name__ == "__main__":
    main()
