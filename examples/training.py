"""Training pieces shared by the examples: device choice, AdamW with linear warm-up, one timed step."""

from __future__ import annotations

import argparse
import textwrap
import time

import torch

from recall_task import RecallBatch, loss_and_accuracy


def pick_device(name: str) -> torch.device:
    """"auto": CUDA when present, else the CPU; otherwise the named device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def adamw_with_warmup(param_groups, lr: float, warmup: int, weight_decay: float = 0.01):
    """AdamW and a schedule scaling the learning rate by min(1, (step + 1) / warmup): it depends
    on the step only, so a run stopped and resumed follows the schedule of an uninterrupted one."""
    optimizer = torch.optim.AdamW(param_groups, lr=lr, weight_decay=weight_decay, betas=(0.9, 0.98))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / max(1, warmup)))
    return optimizer, schedule


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_step(model, optimizer, schedule, batch: RecallBatch, device: torch.device, clip: float = 1.0) -> tuple:
    """One optimisation step on the answer tokens of ``batch``: (loss, accuracy, seconds)."""
    synchronize(device)
    start = time.perf_counter()
    logits = model(input_ids=batch.ids).logits
    loss, accuracy = loss_and_accuracy(logits, batch)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], clip)
    optimizer.step()
    schedule.step()
    synchronize(device)
    return loss.item(), accuracy, time.perf_counter() - start


@torch.no_grad()
def evaluate(model, batch: RecallBatch) -> tuple:
    """(loss, accuracy) of ``model`` on the answer tokens of ``batch``."""
    logits = model(input_ids=batch.ids).logits
    loss, accuracy = loss_and_accuracy(logits, batch)
    return loss.item(), accuracy


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's layout; shows the defaults that are set (not those left None)."""

    def _get_help_string(self, action):
        text = action.help or ""
        unset = action.default is None or isinstance(action.default, bool) or action.default == argparse.SUPPRESS
        if not unset and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text


def defaults_epilog(title: str, defaults: dict) -> str:
    """Help text listing the values that options left unset take."""
    text = f"{title}: " + ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in defaults.items())
    return textwrap.fill(text, width=100, subsequent_indent="    ")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Training options; those without a default here are filled in by ``apply_defaults``."""
    group = parser.add_argument_group("training")
    group.add_argument("--steps", type=int, help="total optimisation steps")
    group.add_argument("--batch-size", type=int, help="sequences per step")
    group.add_argument("--lr", type=float, help="peak learning rate of AdamW")
    group.add_argument("--warmup", type=int, help="steps of linear learning-rate warm-up")
    group.add_argument("--dtype", choices=tuple(DTYPES),
                       help="of the weights and activations (bfloat16: pure bfloat16 training, not autocast, "
                            "under which Llama's q and k leave RoPE in float32 and v stays bfloat16: "
                            "mixed dtypes that the pass leaves to softmax)")
    group.add_argument("--compile", choices=("inductor", "aot_eager"), default="inductor",
                       help="compiler behind the models (aot_eager: no code generation, a faster start)")
    group.add_argument("--seed", type=int, default=0, help="seed of the initial weights and of the batches")
    group.add_argument("--device", default="auto", help='"auto": CUDA if present, else the CPU')
    group.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def apply_defaults(args: argparse.Namespace, defaults: dict) -> argparse.Namespace:
    """Set every option left unset (None) on the command line to its value in ``defaults``."""
    for key, value in defaults.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    return args
