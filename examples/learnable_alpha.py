"""Learn one entmax alpha per head and layer, alpha = 1 + sigmoid(w), with the model's weights.

    python examples/learnable_alpha.py                     # CPU: recall at 256 tokens, a few minutes
    python examples/learnable_alpha.py --steps 600 --alpha-lr 0.05 --out runs/alpha

``adasplash_compile.sparse_attention(module, alpha=nn.Parameter(...))`` learns alpha itself: a
leaf tensor, which a gradient step may push to 1 or below. Here alpha stays in (1, 2) by
construction: every attention module of a small Hugging Face Llama gets a parameter ``alpha_logit``
w (one per query head, initialised so that alpha = ``--alpha-init``), and the model's attention
implementation (``hf_attention.register``) calls ``adasplash_compile.entmax_attention(q, k, v,
alpha=1 + sigmoid(w))``, whose gradient reaches w. The model is trained on multi-query associative
recall (``recall_task.py``) under ``torch.compile(model, backend=adasplash_compile.Backend(...))``
(the op is already in the graph: on CUDA, Inductor emits its Triton kernels); w has its own
learning rate (``--alpha-lr``) and no weight decay.

Every ``--log-every`` steps the alphas of every layer and head are logged with the loss and
accuracy; every ``--eval-every`` steps (and at the end) a held-out batch is evaluated by an eager
copy running ``sparsity_probe.SparsityProbe``, which measures each layer's sparsity with
``adasplash_compile.attention_stats`` (the fraction of attention weights exactly zero among the
causally admissible ones, and the fraction of 64 x 64 tiles the kernels skip as all-zero).
Writes ``alphas.json`` and ``alphas.png`` (alpha per head over training, one panel per layer;
loss, accuracy and sparsity) to ``--out``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from tqdm import tqdm  # noqa: E402

import adasplash_compile as ac  # noqa: E402
import hf_attention  # noqa: E402
import recall_task  # noqa: E402
import small_llama  # noqa: E402
import training  # noqa: E402
from recall_task import RecallTask  # noqa: E402
from sparsity_probe import SparsityProbe, plot_sparsity  # noqa: E402

ATTENTION = "adasplash_learned_alpha"
DEFAULTS = dict(seq_len=256, num_pairs=8, num_queries=4, num_keys=32, hidden=128, layers=2, heads=4,
                steps=300, batch_size=32, lr=1e-3, warmup=50, dtype="float32")
LOG, PLOT = "alphas.json", "alphas.png"


def learned_alpha(module: nn.Module) -> torch.Tensor:
    """The module's per-head alpha, 1 + sigmoid(alpha_logit), in (1, 2)."""
    return 1 + torch.sigmoid(module.alpha_logit)


def add_alpha_logits(model, alpha_init: float) -> list:
    """Give every attention module of ``model`` an ``alpha_logit`` parameter (one per query
    head) with 1 + sigmoid(alpha_logit) = alpha_init; return the parameters, layer 0 first."""
    logit = math.log((alpha_init - 1) / (2 - alpha_init))
    params = []
    for layer in model.model.layers:
        attention = layer.self_attn
        heads = attention.config.num_attention_heads
        weight = torch.full((heads,), logit, device=attention.q_proj.weight.device)
        attention.register_parameter("alpha_logit", nn.Parameter(weight))
        params.append(attention.alpha_logit)
    return params


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] + "\n\n" + __doc__.split("\n\n")[1],
                                     formatter_class=training.HelpFormatter,
                                     epilog=training.defaults_epilog("defaults", DEFAULTS))
    recall_task.add_arguments(parser)
    small_llama.add_arguments(parser)
    training.add_arguments(parser)
    parser.add_argument("--alpha-init", type=float, default=1.5, help="initial alpha of every head, in (1, 2)")
    parser.add_argument("--alpha-lr", type=float, default=0.03, help="learning rate of the alpha logits")
    parser.add_argument("--log-every", type=int, default=5, help="steps between logged alphas")
    parser.add_argument("--eval-every", type=int, default=50, help="steps between evaluations")
    parser.add_argument("--out", default="runs/learnable_alpha", help="folder for alphas.json and alphas.png")
    args = parser.parse_args(argv)
    if not 1 < args.alpha_init < 2:
        parser.error(f"--alpha-init must lie in (1, 2), got {args.alpha_init}")
    return training.apply_defaults(args, DEFAULTS)


def build(args, task: RecallTask, device: torch.device) -> tuple:
    """The model with learnable alphas, its optimizer and schedule, and the probe's eval copy."""
    hf_attention.register(ATTENTION, learned_alpha)
    model = small_llama.small_llama(task.vocab_size, task.seq_len, args.hidden, args.layers, args.heads,
                                    args.seed, attn_implementation=ATTENTION)
    model = model.to(device=device, dtype=training.DTYPES[args.dtype])
    logits = add_alpha_logits(model, args.alpha_init)
    others = [p for p in model.parameters() if all(p is not q for q in logits)]
    optimizer, schedule = training.adamw_with_warmup(
        [{"params": others}, {"params": logits, "lr": args.alpha_lr, "weight_decay": 0.0}],
        args.lr, args.warmup)
    probe = SparsityProbe(alpha_of=learned_alpha)
    eval_copy = type(model)._from_config(copy.deepcopy(model.config), attn_implementation=probe.name)
    eval_copy = eval_copy.to(device=device, dtype=model.dtype)
    add_alpha_logits(eval_copy, args.alpha_init)  # float32, as the model's
    return model, optimizer, schedule, eval_copy.eval(), probe


def alphas(model) -> list:
    """[layer][head] alpha values."""
    return [learned_alpha(layer.self_attn).tolist() for layer in model.model.layers]


def plot(log: dict, path: Path) -> None:
    """Alpha per head over training (one panel per layer), then loss/accuracy and sparsity."""
    train = log["train"]
    steps, records = [0] + train["step"], [log["initial_alpha"]] + train["alpha"]
    layers = len(records[0])
    fig, axes = plt.subplots(1, layers + 2, figsize=(4.2 * (layers + 2), 3.8))
    for layer in range(layers):
        ax = axes[layer]
        for head, series in enumerate(zip(*(record[layer] for record in records))):
            ax.plot(steps, series, label=f"head {head}")
        ax.set_title(f"layer {layer}: alpha per head", fontsize=10)
        ax.set_ylim(1, 2)
    loss_ax = axes[layers]
    loss_ax.plot(train["step"], train["loss"], color="tab:red", label="loss (training batch)")
    acc_ax = loss_ax.twinx()
    acc_ax.plot(log["eval"]["step"], log["eval"]["accuracy"], "o-", color="tab:green", ms=3,
                label="accuracy (held out)")
    acc_ax.set_ylim(0, 1)
    loss_ax.set_title("loss and recall accuracy", fontsize=10)
    loss_ax.legend(loc="upper left", fontsize=8)
    acc_ax.legend(loc="upper right", fontsize=8)
    sparse_ax = axes[layers + 1]
    plot_sparsity(sparse_ax, log["eval"])
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax is not loss_ax and ax.lines:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> dict:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = training.pick_device(args.device)
    task = RecallTask.from_args(args)
    model, optimizer, schedule, eval_copy, probe = build(args, task, device)
    compiled = torch.compile(model, backend=ac.Backend(compiler=args.compile))
    held_out = task.batch(args.batch_size, seed=args.seed + 1_000_000, index=0).to(device)
    log = {"config": vars(args).copy(), "initial_alpha": alphas(model),
           "train": {"step": [], "loss": [], "accuracy": [], "alpha": []},
           "eval": {"step": [], "loss": [], "accuracy": [], "zero_fraction": [], "block_sparsity": []}}
    print(f"{task}; Llama {args.layers} layers x {args.hidden}, {args.heads} heads; {args.dtype} on {device}")

    for index in tqdm(range(args.steps), disable=not args.progress, desc="training", dynamic_ncols=True):
        batch = task.batch(args.batch_size, seed=args.seed, index=index).to(device)
        loss, accuracy, _ = training.train_step(compiled, optimizer, schedule, batch, device)
        if not math.isfinite(loss):
            raise FloatingPointError(f"loss {loss} at step {index + 1}")
        step = index + 1
        if step % args.log_every == 0 or step == args.steps:
            for key, value in (("step", step), ("loss", loss), ("accuracy", accuracy), ("alpha", alphas(model))):
                log["train"][key].append(value)
        if step % args.eval_every == 0 or step == args.steps:
            eval_copy.load_state_dict(model.state_dict())
            eval_loss, eval_accuracy = training.evaluate(eval_copy, held_out)
            for key, value in (("step", step), ("loss", eval_loss), ("accuracy", eval_accuracy),
                               ("zero_fraction", probe.per_layer("zero_fraction")),
                               ("block_sparsity", probe.per_layer("block_sparsity"))):
                log["eval"][key].append(value)

    (out / LOG).write_text(json.dumps(log, indent=1) + "\n")
    plot(log, out / PLOT)
    for layer, heads in enumerate(log["train"]["alpha"][-1]):
        print(f"layer {layer}: alpha per head " + " ".join(f"{a:.3f}" for a in heads) +
              f"; zero attention weights {100 * log['eval']['zero_fraction'][-1][layer]:.1f}%, "
              f"skipped tiles {100 * log['eval']['block_sparsity'][-1][layer]:.1f}%")
    print(f"held-out recall accuracy {log['eval']['accuracy'][-1]:.3f}; wrote {out / LOG}, {out / PLOT}")
    return log


if __name__ == "__main__":
    main()
