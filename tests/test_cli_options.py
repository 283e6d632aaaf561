"""Options the two command lines share a rule for: both refuse an abbreviated option (exit 2;
argparse's prefix matching would otherwise read `--episodes 2` as `--episodes-per-unit 2`), and
`--image-size` is one syntax in `gato-tokenize rl`, `gato-tokenize captions` and `gato-train caption`."""

from __future__ import annotations

import pytest

from converters.cli import build_parser as tokenize_parser
from converters.cli import main as tokenize_main
from trainer.cli import main as train_main
from trainer.acting.generate import CaptionOptions
from trainer.cli import options_parser


@pytest.mark.parametrize("argv, whole", [
    (["text", "x.txt", "--out", "o", "--text-tokenizer", "m.model", "--text-f", "body"], "--text-field"),
    (["rl", "x.hdf5", "--out", "o", "--episodes", "2"], "--episodes-per-unit"),
    (["captions", "x.tar", "--out", "o", "--text-tokenizer", "m.model", "--records", "5"], "--records-per-unit"),
    (["verify", "d", "--simulate", "2"], "--simulate-ranks"),
    (["inspect", "d", "--source", "a/b"], "--source-id"),
    (["view", "d", "--out", "v", "--page-s", "5"], "--page-size"),
    (["train-tokenizer", "a.txt", "--out", "m", "--vocab-size", "100", "--max", "5"], "--max-sentences"),
])
def test_gato_tokenize_refuses_an_abbreviation(argv, whole, capsys):
    with pytest.raises(SystemExit) as e:
        tokenize_main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and "unrecognized arguments" in err and argv[-2] in err, err
    assert whole not in err.splitlines()[-1]


@pytest.mark.parametrize("abbrev", ["--batch", "--save", "--log-e"])
def test_gato_train_refuses_an_abbreviation(abbrev, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        train_main(["--data", str(tmp_path), "--out", str(tmp_path / "run"), abbrev, "4"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "unrecognized arguments" in err and abbrev in err, err
    assert not (tmp_path / "run").exists()


def _image_size(command: str, text: str):
    """--image-size TEXT as `command` parses it: the value, or "refused" (exit 2)."""
    try:
        if command == "gato-train caption":
            parser = options_parser(CaptionOptions, "gato-train caption", "")
            return parser.parse_args(["--checkpoint", "run", "a.png", "--image-size", text]).image_size
        extra = ["--text-tokenizer", "m.model"] if command == "captions" else []
        args = tokenize_parser().parse_args([command, "x", "--out", "o", *extra, "--image-size", text])
        return args.options.image_size
    except SystemExit as e:
        assert e.code == 2
        return "refused"


@pytest.mark.parametrize("text, want", [("16", (16, 16)), ("32x48", (32, 48)), ("48X32", (48, 32)),
                                        ("native", None), ("Native", None), ("20x32", "refused"),
                                        ("0", "refused"), ("16x", "refused"), ("abc", "refused"),
                                        ("16384x16384", "refused")])
def test_image_size_is_one_syntax_in_every_command(text, want, capsys):
    got = {c: _image_size(c, text) for c in ("rl", "captions", "gato-train caption")}
    assert got == dict.fromkeys(got, want)


@pytest.mark.parametrize("command", ["rl", "captions", "text", "finalize", "train-tokenizer", "inspect", "verify",
                                     "view"])
def test_every_gato_tokenize_option_is_a_field_and_in_the_help(command, capsys):
    """Each subcommand's parser is built from its options dataclass: every field has its flag (or
    positional) and its help, and nothing else is on the command line."""
    import dataclasses

    sub = next(a for a in tokenize_parser()._actions if a.dest == "command").choices[command]
    with pytest.raises(SystemExit) as e:
        sub.parse_args(["--help"])
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    dests = {a.dest for a in sub._actions if a.dest != "help"}
    from converters.commands.convert import KINDS, options_class
    from tokenizer_kit.options import flag
    if command in KINDS:
        cls = options_class(command)
    else:
        module = __import__(f"converters.commands.{command.replace('-', '_')}", fromlist=["x"])
        cls = next(v for k, v in vars(module).items() if k.endswith("Options") and dataclasses.is_dataclass(v))
    fields = dataclasses.fields(cls)
    assert dests == {f.name for f in fields}
    actions = {a.dest: a for a in sub._actions}
    for f in fields:
        assert actions[f.name].help.startswith(f.metadata["help"]), f.name
        if f.metadata["positional"]:
            assert actions[f.name].option_strings == []
        elif f.metadata["cli"] != "flag":
            assert actions[f.name].option_strings == [flag(f.name)] and flag(f.name) in text, f.name
