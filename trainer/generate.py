"""Text from a checkpoint: continue a prompt, or caption images, with the cached decoder.

    gato-train generate --checkpoint RUN --prompt "The module" --max-new-tokens 40 --temperature 0.8 --top-k 50
    gato-train caption --checkpoint RUN photo.png digit.png --image-size 16

The text tokenizer is the one the training data was tokenised with: `--tokenizer`, else the
`tokenizer.model` of the run's first data directory (config.json records them). Images are
tokenised as the captions converter does (`--image-size`, `--image-policy`), caption left off.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from tokenizer_kit.argtypes import nonnegative_float, nonnegative_int, positive_int

from .decoding import generate_text, slice_tokens, text_token_row


def run_tokenizer(checkpoint: str, given: str | None):
    """The SentencePiece model the run's data was tokenised with."""
    from schemas.manifest import TOKENIZER_NAME
    from tokenizer_kit.text import TextTokenizer

    from .checkpoint import checkpoint_path

    if given:
        return TextTokenizer(given)
    cfg = checkpoint_path(checkpoint).parent / "config.json"
    try:
        data = json.loads(cfg.read_text())["train"]["data"]
    except (OSError, ValueError, KeyError, TypeError):
        data = []
    from .data import parse_data_arg

    for item in data:
        path = Path(parse_data_arg(str(item))[0])
        if (path / TOKENIZER_NAME).is_file():
            return TextTokenizer(path / TOKENIZER_NAME)
    raise FileNotFoundError(f"{cfg}: no {TOKENIZER_NAME} in the run's data directories; give --tokenizer")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="training run directory or checkpoint file")
    p.add_argument("--tokenizer", default=None, help="SentencePiece model (default: the run's data's)")
    p.add_argument("--max-new-tokens", type=positive_int, default=32)
    p.add_argument("--temperature", type=nonnegative_float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-k", type=nonnegative_int, default=0, help="sample among the k likeliest ids (0: all)")
    p.add_argument("--seed", type=nonnegative_int, default=0)
    p.add_argument("--device", default="cpu")


def build_generate_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gato-train generate", description="Continue a text prompt.")
    _common(p)
    p.add_argument("--prompt", required=True, help="text to continue")
    return p


def build_caption_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gato-train caption", description="Caption images.")
    _common(p)
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--image-size", type=positive_int, nargs="+", default=None, metavar="PX",
                   help="resize to PX (square) or H W, as the captions converter was told (default: as stored)")
    p.add_argument("--image-policy", default="resize", help="how images were fitted (the converter's option)")
    return p


def fit_prompt(ids: np.ndarray, seq_len: int, max_new_tokens: int) -> np.ndarray:
    """The prompt's last tokens that leave room for the continuation within the model's sequence
    length (at least one): attention costs grow with the square of the context, so a long prompt
    is cut here, not handed whole to the model. Says so on stderr when it cuts."""
    keep = max(1, seq_len - max_new_tokens)
    if len(ids) <= keep:
        return ids
    print(f"gato-train generate: note: the prompt's {len(ids):,} tokens exceed the model's sequence length "
          f"{seq_len} less --max-new-tokens {max_new_tokens}; its last {keep:,} tokens are used", file=sys.stderr)
    return ids[len(ids) - keep:]


def continuation(tok, prompt_ids: np.ndarray, new_ids: np.ndarray) -> str:
    """The text the new ids add after the prompt, with the space between them: SentencePiece marks
    a word's start on its first piece, and decoding the new ids alone would drop that space."""
    head = tok.decode(prompt_ids.tolist())
    whole = tok.decode(prompt_ids.tolist() + new_ids.tolist())
    return whole[len(head):] if whole.startswith(head) else tok.decode(new_ids.tolist())


def generate(args: argparse.Namespace) -> list[str]:
    from .checkpoint import load_model

    model, layout, config = load_model(args.checkpoint, map_location=args.device)
    tok = run_tokenizer(args.checkpoint, args.tokenizer)
    ids = fit_prompt(np.asarray(tok.encode(args.prompt), np.int32), int(config.seq_len), args.max_new_tokens)
    out = generate_text(model, layout, [text_token_row(ids)], args.max_new_tokens, args.temperature, args.seed,
                        args.top_k)
    return [args.prompt + continuation(tok, ids, out[0])]


def caption(args: argparse.Namespace) -> list[str]:
    from PIL import Image

    from tokenizer_kit.layout import IMAGE
    from tokenizer_kit.text_rows import build_caption_row

    from .checkpoint import load_model

    model, layout, _ = load_model(args.checkpoint, map_location=args.device)
    tok = run_tokenizer(args.checkpoint, args.tokenizer)
    size = None
    if args.image_size:
        size = (args.image_size[0], args.image_size[-1])
    contexts = []
    for path in args.images:
        try:
            with Image.open(path) as im:
                image = np.asarray(im.convert("RGB"))
        except OSError as e:
            raise OSError(f"{path}: unreadable image ({str(e).splitlines()[0]})") from None
        row = build_caption_row(image, np.zeros(0, np.int32), layout, args.image_policy, size)
        contexts.append(slice_tokens(row, 0, int(np.count_nonzero(row.modality == IMAGE))))
    out = generate_text(model, layout, contexts, args.max_new_tokens, args.temperature, args.seed, args.top_k)
    return [f"{path}\t{tok.decode(ids.tolist())}" for path, ids in zip(args.images, out)]


def _main(prog: str, parser: argparse.ArgumentParser, fn, argv) -> int:
    from .checkpoint import CheckpointError

    args = parser.parse_args(argv)
    try:
        lines = fn(args)
    except (ValueError, OSError, CheckpointError) as e:
        print(f"{prog}: error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


def generate_main(argv: list[str] | None = None) -> int:
    return _main("gato-train generate", build_generate_parser(), generate, argv)


def caption_main(argv: list[str] | None = None) -> int:
    return _main("gato-train caption", build_caption_parser(), caption, argv)
