"""The conversion options (converters/options.py): a typed instance, checked by its fields."""

from __future__ import annotations

import pytest

from tokenizer_kit.options import UsageError


def test_convert_options_made_in_python_are_checked_as_the_command_line_checks_them():
    from converters.text import TextOptions
    assert TextOptions(inputs=["a"], out="o", text_tokenizer="m").check().workers == 1
    for bad, msg in (({"workers": 0}, "--workers must be at least 1"), ({"split": "lines"}, "--split must be one of"),
                     ({"num_partitions": 2}, "needs --partition"), ({"partition": 2, "num_partitions": 2},
                                                                     r"--partition must be in \[0, 2\)")):
        with pytest.raises(UsageError, match=msg):
            TextOptions(inputs=["a"], out="o", text_tokenizer="m", **bad).check()
