"""--device, checked when the command line is read: a device string torch does not know, or CUDA
asked for where there is none, is bad usage (exit 2, one line), never a traceback from deep in
torch once the run has started."""

from __future__ import annotations

import argparse

from tokenizer_kit.errors import first_line


def device_arg(text: str) -> str:
    """`auto`, `cpu`, `cuda` or `cuda:N` (any torch device string), if this machine has it."""
    if text == "auto":
        return text
    import torch  # noqa: PLC0415 - start-up time: --device is checked before torch loads
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError, TypeError):
        raise argparse.ArgumentTypeError(f"not a device: {text!r} (expected auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"{text}: CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(f"{text}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type != "cpu":
        try:
            torch.empty(0, device=device)
        except (RuntimeError, AssertionError, NotImplementedError) as e:
            raise argparse.ArgumentTypeError(f"{text}: not usable here "
                                             f"({first_line(e)})") from None
    return text
