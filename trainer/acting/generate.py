"""Text from a checkpoint: continue a prompt, or caption images, with the cached decoder.

    gato-train generate --checkpoint RUN --prompt "The module" --max-new-tokens 40 --temperature 0.8 --top-k 50
    gato-train caption --checkpoint RUN photo.png digit.png --image-size 16

The text tokenizer is the one the training data was tokenised with: `--tokenizer`, else the
`tokenizer.model` of the run's first data directory (config.json records them). Images are
tokenised as the captions converter does (`--image-size`, `--image-policy`), caption left off.
"""

from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from tokenizer_kit.argtypes import image_size_or_native
from tokenizer_kit.errors import first_line, run_command
from tokenizer_kit.images import FIT_POLICIES, pixel_problem
from tokenizer_kit.text import TextTokenizer
from tokenizer_kit.text_rows import caption_context, text_token_row

from ..checkpoint import CheckpointError, checkpoint_path, load_model
from ..cli import parse_options
from ..run_config import CONFIG_NAME, RunRecord, opt
from .decoding import generate_text


def run_tokenizer(checkpoint: str, given: str | None):
    """The SentencePiece model the run's data was tokenised with."""
    if given:
        return TextTokenizer(given)
    from schemas.manifest import TOKENIZER_NAME  # noqa: PLC0415 - start-up: pyarrow, only for the run's tokenizer

    from ..data import parse_data_arg  # noqa: PLC0415 - start-up: pyarrow, only for the run's tokenizer

    run = checkpoint_path(checkpoint).parent
    cfg = run / CONFIG_NAME
    data = RunRecord.read(run).train.data if cfg.is_file() else []

    for item in data:
        path = Path(parse_data_arg(str(item))[0])
        if (path / TOKENIZER_NAME).is_file():
            return TextTokenizer(path / TOKENIZER_NAME)
    raise FileNotFoundError(f"{cfg}: no {TOKENIZER_NAME} in the run's data directories; give --tokenizer")


@dataclass
class TextOptions:
    """The options `gato-train generate` and `caption` share (run_config.opt)."""

    checkpoint: str = opt("", "training run directory or checkpoint file", required=True,
                          metavar="RUN")
    tokenizer: str | None = opt(None, "SentencePiece model (default: the run's data's)", metavar="MODEL")
    max_new_tokens: int = opt(32, "tokens to generate at most", lo=1)
    temperature: float = opt(0.0, "0 = greedy (default)", lo=0)
    top_k: int = opt(0, "sample among the k likeliest ids (0: all)", lo=0)
    seed: int = opt(0, "sampling seed", lo=0)
    device: str = opt("cpu", "cpu, cuda, cuda:N", metavar="DEVICE")


@dataclass
class GenerateOptions(TextOptions):
    """`gato-train generate`: continue a text prompt."""

    prompt: str = opt("", "text to continue", required=True, metavar="TEXT")


@dataclass
class CaptionOptions(TextOptions):
    """`gato-train caption`: caption images, tokenised as the captions converter does."""

    images: list[str] = opt([], "image files", cli="list", positional=True, metavar="IMAGE")
    image_size: tuple[int, int] | None = opt(None, "fit images to N x N or H x W pixels (multiples of 16), as the "
                                                   "captions converter was told (its syntax; default native: each "
                                                   "image's own size fitted to 16s)", parse=image_size_or_native,
                                             metavar="N|HxW|native")
    image_policy: str = opt("resize", "how images were fitted (the converter's option)", choices=FIT_POLICIES)


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


def generate(args: GenerateOptions) -> list[str]:
    model, layout, config = load_model(args.checkpoint, map_location=args.device)
    tok = run_tokenizer(args.checkpoint, args.tokenizer)
    ids = fit_prompt(np.asarray(tok.encode(args.prompt), np.int32), int(config.seq_len), args.max_new_tokens)
    out = generate_text(model, layout, [text_token_row(ids)], args.max_new_tokens, args.temperature, args.seed,
                        args.top_k)
    return [args.prompt + continuation(tok, ids, out[0])]


def caption(args: CaptionOptions) -> list[str]:
    model, layout, _ = load_model(args.checkpoint, map_location=args.device)
    tok = run_tokenizer(args.checkpoint, args.tokenizer)
    size = args.image_size
    contexts = []
    for path in args.images:
        image = _decode_image(path, size, args.image_policy)
        contexts.append(caption_context(image, layout, args.image_policy, size))
    out = generate_text(model, layout, contexts, args.max_new_tokens, args.temperature, args.seed, args.top_k)
    return [f"{path}\t{tok.decode(ids.tolist())}" for path, ids in zip(args.images, out)]


def _decode_image(path: str, size: tuple[int, int] | None, policy: str) -> np.ndarray:
    """RGB pixels of an image file, under the converter's pixel rule (tokenizer_kit.images.
    pixel_problem), checked on the header's size before anything is decoded."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:  # reads the header only
                w, h = im.size
                problem = pixel_problem(h, w, size, policy)
                if problem is not None:
                    raise ValueError(f"{path}: {problem}")
                return np.asarray(im.convert("RGB"))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ValueError(f"{path}: refused before decoding: {first_line(e)}") from None
    except (OSError, SyntaxError) as e:
        raise OSError(f"{path}: unreadable image ({first_line(e)})") from None


def _main(prog: str, options: type, description: str, fn, argv) -> int:
    args = parse_options(options, prog, description, argv)

    def work() -> int:
        print("\n".join(fn(args)))
        return 0

    return run_command(prog, work, (ValueError, CheckpointError))


def generate_main(argv: list[str] | None = None) -> int:
    return _main("gato-train generate", GenerateOptions, "Continue a text prompt.", generate, argv)


def caption_main(argv: list[str] | None = None) -> int:
    return _main("gato-train caption", CaptionOptions, "Caption images.", caption, argv)
