"""EPOConfig checks itself whenever one is made: by its constructor, `dataclasses.replace` and `from_dict`."""

import dataclasses
import json
import math

import numpy as np
import pytest

from reverie import ConfigError, EPOConfig


@pytest.mark.parametrize(
    "bad, message",
    [
        (dict(population=0), "population must be at least 1, got 0"),
        (dict(length=1), "length must be at least 2 tokens"),
        (dict(iters=-1), "iters and restart_every cannot be negative"),
        (dict(iters="2"), "iters must be int, got '2'"),
        (dict(iters=2.0), "iters must be int, got 2.0"),
        (dict(children=True), "children must be int, got True"),
        (dict(penalty_max=math.inf), "penalty_max must be float .*finite.*, got inf"),
        (dict(penalty_min=5, penalty_max=1), "need 0 < penalty_min <= penalty_max"),
        (dict(population=2, penalties=(1.0,)), "1 penalties given for a population of 2"),
        (dict(population=1, penalties=(-1.0,)), "penalties cannot be negative"),
        (dict(time_budget=math.nan), "time_budget must be float | None .*finite.*, got nan"),
        (dict(time_budget=-1), "time_budget must be a positive number of seconds"),
        (dict(repetition_penalty=math.nan), "repetition_penalty must be float .*finite"),
        (dict(fluency=(("self", 0.0),)), "fluency weights must be >= 0"),
        (dict(fluency="self"), r"fluency must be tuple\[tuple\[str, float\], ...\]"),
        (dict(ascii_only="no"), "ascii_only must be bool, got 'no'"),
        (dict(template="no placeholder"), "exactly once"),
        (dict(insert_rate=0.6, delete_rate=0.6), "sum <= 1"),
        (dict(length=6, insert_rate=0.1, min_length=7), "min_length <= length"),
        (dict(top_k=8, top_k_start=9), r"top_k_start \(9\) cannot exceed top_k \(8\)"),
        (dict(restart_penalty=(6.0, 1.0)), "restart_penalty must be a range lo <= hi"),
        (dict(restart_penalty=(1.0,)), r"restart_penalty must be tuple\[float, float\]"),
        (dict(init_ids=(1, 2)), r"init_ids must be tuple\[tuple\[int, ...\], ...\], got \(1, 2\)"),
        (dict(init_ids=((1, 2),), length=4), "every starting prompt must be 4 tokens"),
    ],
)
def test_a_bad_option_is_one_line_naming_it(bad, message):
    with pytest.raises(ConfigError, match=message) as info:
        EPOConfig(**bad)
    assert "\n" not in str(info.value)


def test_replace_and_from_dict_check_too():
    config = EPOConfig(iters=3)
    with pytest.raises(ConfigError, match="cannot exceed"):
        dataclasses.replace(config, top_k=8, top_k_start=9)
    with pytest.raises(ConfigError, match="time_budget"):
        dataclasses.replace(config, time_budget=math.inf)
    with pytest.raises(ConfigError, match="iters must be int"):
        EPOConfig.from_dict({**config.to_dict(), "iters": "3"})
    with pytest.raises(ConfigError, match=r"unknown EPO options \['iterations'\]"):
        EPOConfig.from_dict({"iterations": 3})
    assert dataclasses.replace(config, seed=4) == EPOConfig(iters=3, seed=4)
    assert EPOConfig.gcg(0.5, length=6).penalties == (0.5,)


def test_a_bare_string_is_one_item_not_its_letters():
    config = EPOConfig(ban_strings="dog", ban_tokens="dog")
    assert config.ban_strings == ("dog",) and config.ban_tokens == ("dog",)
    assert dataclasses.replace(config, ban_strings=["cat", "dog"]).ban_strings == ("cat", "dog")
    with pytest.raises(ConfigError, match="ban_tokens"):
        EPOConfig(ban_tokens=(1.5,))


def test_values_take_their_declared_types_and_round_trip_through_json():
    config = EPOConfig(
        population=2,
        penalties=[0.5, 2],
        fluency=[["self", 1], ["other", 0.5]],
        ban_tokens=[" dog", 17],
        restart_penalty=[1, 3],
        init_ids=[[1] * 12, []],
        iters=np.int64(5),
        penalty_min=np.float32(0.25),
    )
    assert config.penalties == (0.5, 2.0) and config.fluency == (("self", 1.0), ("other", 0.5))
    assert config.init_ids == ((1,) * 12, ()) and config.ban_tokens == (" dog", 17)
    assert type(config.iters) is int and type(config.penalty_min) is float and type(config.restart_penalty[0]) is float
    assert EPOConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert EPOConfig.from_dict(json.loads(json.dumps(EPOConfig().to_dict()))) == EPOConfig()
