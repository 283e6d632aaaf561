"""Nested observations as flat fields, and the shared argument types."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

from tokenizer_kit.argtypes import byte_size
from tokenizer_kit.fields import ACTION, OBS, field_key, field_keys, field_name, flatten_value


def test_nested_values_are_named_obs_key_sub_and_index():
    value = {"image": np.zeros(2), "pos": ({"x": 1}, 2.0), "mission": "go"}
    flat = flatten_value(value, "obs")
    assert sorted(flat) == ["obs/image", "obs/mission", "obs/pos/0/x", "obs/pos/1"]
    assert flat["obs/pos/0/x"] == 1 and field_name("action", "turn") == "action/turn"
    arr = np.ones(3)
    assert flatten_value(arr, "obs")["obs"] is arr  # a plain array is the field itself


def test_field_key_inverts_field_name_and_tells_a_column_from_a_member():
    for root in (OBS, ACTION):
        for key in ("image", "arm/0", 3):
            assert field_key(field_name(root, key)) == (root, str(key))
        assert field_key(root) == (root, "")
    for name in flatten_value({"a": {"b": 1}, "c": (2, 3)}, ACTION):
        assert field_name(*field_key(name)) == name
    assert field_key("observation") == ("", "observation")  # a table's column is under no root
    assert field_key("actions/x") == ("", "actions/x") and field_key("obsx") == ("", "obsx")


def test_byte_sizes_are_decimal_with_b_and_binary_without():
    assert byte_size("256MB") == 256 * 10**6
    assert byte_size("64MiB") == byte_size("64M") == 64 * 2**20
    assert byte_size("1.5kb") == 1500 and byte_size("1000") == 1000
    for bad in ("", "MB", "12XB", "0", "-5MB", "nan", "inf"):
        with pytest.raises(argparse.ArgumentTypeError):
            byte_size(bad)


def test_field_keys_inverts_field_name():
    name = field_name(field_name(ACTION, "arm"), 0)
    assert name == "action/arm/0" and field_keys(name, ACTION) == ("arm", "0")
    assert field_keys("action", ACTION) is None  # the root itself is no member
    assert field_keys("obs/image", ACTION) is None and field_keys("actions/x", ACTION) is None
