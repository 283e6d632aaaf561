"""gato-train usage errors exit 2 before anything is read."""

from __future__ import annotations

import pytest

from trainer.cli import main


@pytest.mark.parametrize("weight", ["-1", "0", "nan", "inf"])
def test_a_bad_mixture_weight_is_bad_usage(tmp_path, weight, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--data", f"{tmp_path}:{weight}", "--out", str(tmp_path / "run")])
    assert e.value.code == 2
    assert "weight must be a positive number" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("share", ["1", "1.5", "-0.1"])
def test_an_action_noise_outside_0_1_is_bad_usage(tmp_path, share, capsys):
    code = None
    try:
        code = main(["--data", str(tmp_path), "--out", str(tmp_path / "run"), "--action-noise", share])
    except SystemExit as e:  # argparse's own range check
        code = e.code
    assert code == 2
    assert "action-noise" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("argv", [["rollout", "--checkpoint", "RUN", "--data", "D", "--env", "E", "--max-step", "2"],
                                  ["eval", "--checkpoint", "RUN", "--suit", "s.yaml"],
                                  ["generate", "--checkpoint", "RUN", "--prompt", "x", "--max-new", "2"],
                                  ["caption", "--checkpoint", "RUN", "--image-pol", "pad", "a.png"]])
def test_subcommands_refuse_abbreviated_options(argv, capsys):
    """`--max-step` must not silently become `--max-steps`: a typo is bad usage, exit 2."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert "unrecognized arguments" in capsys.readouterr().err


def test_subcommand_options_are_their_dataclass_fields():
    """Each subcommand's parser is built from its options dataclass: one flag per field, the
    field's default when not given, the field's range checked on the command line."""
    import dataclasses

    from trainer.acting.evaluate import EvalOptions, RolloutOptions
    from trainer.acting.generate import CaptionOptions, GenerateOptions
    from trainer.cli import options_parser, parse_options

    for options in (EvalOptions, RolloutOptions, GenerateOptions, CaptionOptions):
        dests = {a.dest for a in options_parser(options, "p", "")._actions if a.dest != "help"}
        assert dests == {f.name for f in dataclasses.fields(options)}
    args = parse_options(RolloutOptions, "p", "", ["--data", "D", "--env", "E", "--no-cache"])
    assert (args.episodes, args.prompt, args.cache, args.seed, args.device) == (10, "end", False, 0, "cpu")
    with pytest.raises(SystemExit):
        parse_options(RolloutOptions, "p", "", ["--data", "D", "--env", "E", "--episodes", "0"])
