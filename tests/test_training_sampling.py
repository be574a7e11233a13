"""Uniform task sampling, the token budget of an update, and length bucketing."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest

from chatnt_core.errors import ChatNTError
from chatnt_core.training.config import TrainConfig
from chatnt_core.training.sampling import (
    UniformTaskSampler,
    build_task_index,
    padding_fraction,
    plan_micro_batches,
)

# Three tasks of very different sizes: proportional sampling would give 'big' ~90%.
TASKS = ["big"] * 900 + ["mid"] * 90 + ["small"] * 10
LENGTHS = [random.Random(i).randrange(20, 400) for i in range(len(TASKS))]


def sampler(seed: int = 0) -> UniformTaskSampler:
    return UniformTaskSampler(build_task_index(TASKS), seed)


def test_each_task_gets_an_equal_share_of_every_update() -> None:
    s = sampler()
    totals: Counter[str] = Counter()
    for step in range(200):
        draws = s.draw_update(step, LENGTHS.__getitem__, None, 30)
        counts = Counter(s.index.names[d.task] for d in draws)
        assert sorted(counts.values()) == [10, 10, 10]  # 30 samples / 3 tasks, every update
        assert all(TASKS[d.row] == s.index.names[d.task] for d in draws)
        totals.update(counts)
    assert totals == {"big": 2000, "mid": 2000, "small": 2000}


def test_uneven_update_sizes_stay_within_one_sample_per_task() -> None:
    s = sampler()
    for step in range(50):
        draws = s.draw_update(step, LENGTHS.__getitem__, None, 7)
        counts = Counter(d.task for d in draws)
        assert max(counts.values()) - min(counts.get(t, 0) for t in range(3)) <= 1


def test_within_a_task_every_example_is_seen_before_any_repeats() -> None:
    s = sampler()
    rows = [d.row for step in range(10) for d in s.draw_update(step, LENGTHS.__getitem__, None, 9)]
    small = [r for r in rows if TASKS[r] == "small"]
    assert len(small) == 30
    for block in range(3):  # 10 examples per pass, each exactly once per pass
        assert sorted(small[block * 10 : block * 10 + 10]) == list(range(990, 1000))


def test_draws_are_deterministic_for_a_seed_and_resume_exactly() -> None:
    def run(s: UniformTaskSampler, steps: range) -> list[int]:
        return [
            d.row for step in steps for d in s.draw_update(step, LENGTHS.__getitem__, 500, None)
        ]

    first, second = sampler(seed=3), sampler(seed=3)
    assert run(first, range(20)) == run(second, range(20))
    assert run(sampler(seed=4), range(20)) != run(sampler(seed=3), range(20))
    # Resume: a fresh sampler given the saved counters continues identically.
    original = sampler(seed=3)
    run(original, range(10))
    saved = original.state.to_json()
    expected = run(original, range(10, 20))
    resumed = sampler(seed=3)
    resumed.load_state(type(original.state).from_json(saved))
    assert run(resumed, range(10, 20)) == expected


def test_token_budget_takes_the_fewest_samples_that_reach_it() -> None:
    s = sampler()
    for step in range(30):
        draws = s.draw_update(step, LENGTHS.__getitem__, 2000, None)
        total = sum(d.num_tokens for d in draws)
        assert total >= 2000
        assert total - draws[-1].num_tokens < 2000  # one sample fewer would fall short
        assert all(d.num_tokens == LENGTHS[d.row] for d in draws)


def test_an_update_holds_at_least_one_sample_per_process() -> None:
    draws = sampler().draw_update(0, lambda row: 10_000, 100, None, min_samples=4)
    assert len(draws) == 4


def test_length_bucketing_reduces_padding_and_keeps_every_sample_once() -> None:
    rng = np.random.default_rng(0)
    lengths = [int(x) for x in rng.integers(20, 600, size=256)]
    plain = plan_micro_batches(lengths, 8, bucket_by_length=False)
    bucketed = plan_micro_batches(lengths, 8, bucket_by_length=True)
    assert sorted(p for b in bucketed for p in b) == list(range(256))
    assert padding_fraction(lengths, bucketed) < 0.5 * padding_fraction(lengths, plain)


def test_micro_batches_split_an_update_across_processes() -> None:
    lengths = list(range(10, 110, 10))
    shares = [plan_micro_batches(lengths, 2, True, rank, 3) for rank in range(3)]
    flat = sorted(p for share in shares for b in share for p in b)
    assert flat == list(range(10))
    sizes = [sum(len(b) for b in share) for share in shares]
    assert max(sizes) - min(sizes) <= 1


def test_unknown_task_subset_and_empty_data_are_refused() -> None:
    with pytest.raises(ChatNTError, match="data.tasks names nope"):
        build_task_index(TASKS, only=["nope"])
    with pytest.raises(ChatNTError, match="no examples"):
        build_task_index([])
    index = build_task_index(TASKS, only=["small", "mid"])
    assert index.names == ["mid", "small"] and index.num_examples == 100


def test_train_config_defaults_follow_the_paper() -> None:
    config = TrainConfig.model_validate(
        {"model": "tiny-random", "data": "d", "output_dir": "o", "max_steps": 1}
    )
    assert config.tokens_per_update == 65_536 and config.samples_per_update is None
    assert config.optimizer.lr == 3e-5 and config.optimizer.betas == (0.9, 0.999)
    assert config.optimizer.eps == 1e-8 and config.optimizer.weight_decay == 0.0
    assert config.max_grad_norm == 1.0 and config.schedule.name == "constant"
    assert config.data.paths == ["d"] and config.data.split == "train"
    with pytest.raises(ValueError, match="not both"):
        TrainConfig.model_validate(
            {**config.to_dict(), "tokens_per_update": 10, "samples_per_update": 2}
        )
    with pytest.raises(ValueError, match="exactly one of max_steps or epochs"):
        TrainConfig.model_validate({**config.to_dict(), "epochs": 1})
    with pytest.raises(ValueError, match="Extra inputs"):
        TrainConfig.model_validate({**config.to_dict(), "learning_rate": 1})
