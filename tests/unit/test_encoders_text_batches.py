"""Grouping and padding of text rows: length buckets for Triton, length splits in-process."""

from __future__ import annotations

import numpy as np
import pytest

from mediasearch.encoders.text_batches import bucket_groups, bucket_length, pad_rows, split_by_length


@pytest.mark.parametrize(
    ("length", "bucket", "want"),
    [(1, 8, 8), (8, 8, 8), (9, 8, 16), (70, 8, 72), (75, 8, 77), (77, 8, 77), (13, 1, 13)],
)
def test_bucket_length_rounds_up_to_the_bucket_and_stops_at_the_context(
    length: int, bucket: int, want: int
) -> None:
    assert bucket_length(length, bucket, 77) == want


def test_bucket_groups_pad_each_request_to_the_bucket_of_its_longest_row() -> None:
    lengths = [5, 12, 7, 16, 3, 30]
    groups = bucket_groups(lengths, bucket=8, context_length=77, max_batch=64, pass_cost_tokens=16)
    assert groups == [(8, [4, 0, 2]), (16, [1, 3]), (32, [5])]


def test_bucket_groups_merge_buckets_when_an_extra_request_costs_more_than_the_padding() -> None:
    groups = bucket_groups([5, 12, 7, 16], bucket=8, context_length=77, max_batch=64, pass_cost_tokens=1000)
    assert groups == [(16, [0, 2, 1, 3])]


def test_bucket_groups_never_exceed_max_batch() -> None:
    groups = bucket_groups([5] * 10, bucket=8, context_length=77, max_batch=4, pass_cost_tokens=0)
    assert sorted(len(idx) for _, idx in groups) == [2, 4, 4]
    assert all(w == 8 for w, _ in groups)
    assert sorted(i for _, idx in groups for i in idx) == list(range(10))


def test_pad_rows_pads_after_each_row_with_the_pad_id() -> None:
    out = pad_rows([[1, 2], [3, 4, 5]], 4, pad_id=9)
    assert out.dtype == np.int64
    assert out.tolist() == [[1, 2, 9, 9], [3, 4, 5, 9]]


def test_split_by_length_keeps_one_pass_when_lengths_are_close() -> None:
    assert split_by_length([10, 12, 11, 13], pass_cost_tokens=16) == [[0, 2, 1, 3]]


def test_split_by_length_separates_a_long_outlier_when_padding_to_it_costs_more_than_a_pass() -> None:
    groups = split_by_length([8, 9, 8, 70, 10, 9], pass_cost_tokens=64)
    assert groups == [[0, 2, 1, 5, 4], [3]]


def test_split_by_length_never_splits_when_the_pass_cost_is_zero() -> None:
    assert split_by_length([3, 70], pass_cost_tokens=0) == [[0, 1]]


def test_split_by_length_cuts_only_where_max_rows_forces_it_when_the_pass_cost_is_zero() -> None:
    groups = split_by_length([3, 3, 3, 70, 70], pass_cost_tokens=0, max_rows=3)
    assert [len(g) for g in groups] == [3, 2] and groups[1] == [3, 4]


def test_split_by_length_covers_every_row_once_and_sorts_each_group() -> None:
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 77, size=40).tolist()
    groups = split_by_length(lengths, pass_cost_tokens=32)
    assert sorted(i for g in groups for i in g) == list(range(40))
    for group in groups:
        assert [lengths[i] for i in group] == sorted(lengths[i] for i in group)
    padded = sum(len(g) * max(lengths[i] for i in g) + 32 for g in groups)
    assert padded <= len(lengths) * max(lengths) + 32  # never worse than one pass
