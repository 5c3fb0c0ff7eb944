"""StickyChooser: weighted rendezvous hashing of routing keys, and the XXH64 hash under it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import chisquare

from mve._fastroute import StickyChooser, hash_key

KEYS = [i.to_bytes(16, "little") for i in range(3000)]


def picks(chooser: StickyChooser, keys=KEYS) -> np.ndarray:
    return np.array([chooser.pick(key) for key in keys])


@pytest.mark.parametrize(
    ("data", "seed", "expected"),
    [
        (b"", 0, 0xEF46DB3751D8E999),
        (b"", 1, 0xD5AFBA1336A3BE4B),
        (b"a", 0, 0xD24EC4F1A98C6E5B),
        (b"abc", 0, 0x44BC2CF5AD770999),
        (b"asdf", 0, 0x415872F599CEA71E),
        (b"Call me Ishmael.", 0, 0x6D04390FC9D61A90),
        (b"Nobody inspects the spammish repetition", 0, 0xFBCEA83C8A378BF1),
    ],
)
def test_hash_key_is_xxh64(data, seed, expected):
    """Published XXH64 vectors: short, 4/8-byte tail and >= 32-byte (striped) inputs."""
    assert hash_key(data, seed) == expected


def test_key_types_hash_as_their_bytes():
    chooser = StickyChooser([1, 1, 1, 1])
    for text in ["user-42", "ünïcode-ключ", ""]:
        data = text.encode("utf-8")
        assert hash_key(text) == hash_key(data) == hash_key(bytearray(data)) == hash_key(memoryview(data))
        assert chooser.pick(text) == chooser.pick(data) == chooser.pick(bytearray(data)) == chooser.pick(memoryview(data))


@pytest.mark.parametrize("key", [42, None, 1.5, ["a"]])
def test_other_key_types_are_refused(key):
    with pytest.raises(TypeError, match="key must be"):
        StickyChooser([1, 1]).pick(key)


def test_picks_are_pinned_across_versions():
    """Sticky sessions survive proxy upgrades only if the hash and the scoring never change."""
    keys = [b"user-%d" % i for i in range(24)]
    assert picks(StickyChooser([1, 2, 0, 5]), keys).tolist() == [
        3, 0, 1, 0, 3, 1, 3, 1, 3, 0, 0, 0, 3, 1, 3, 3, 3, 1, 3, 3, 3, 3, 1, 1,
    ]  # fmt: skip
    assert picks(StickyChooser([1, 1], seeds=[2**64 - 1, 12345]), keys).tolist() == [
        0, 0, 1, 0, 1, 1, 1, 0, 0, 1, 1, 1, 0, 1, 0, 1, 1, 0, 1, 0, 0, 1, 0, 0,
    ]  # fmt: skip


def test_picks_are_the_same_in_another_process():
    weights, seeds = [3, 1, 0, 2], [101, 7, 55, 2**63]
    code = (
        "import json, sys\n"
        "from mve._fastroute import StickyChooser\n"
        f"chooser = StickyChooser({weights}, seeds={seeds})\n"
        "keys = [i.to_bytes(16, 'little') for i in range(3000)]\n"
        "json.dump([chooser.pick(k) for k in keys], sys.stdout)\n"
    )
    # A different PYTHONHASHSEED proves Python's randomised hash() plays no part.
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env, timeout=60)
    assert json.loads(out.stdout) == picks(StickyChooser(weights, seeds=seeds)).tolist()


@pytest.mark.parametrize("weights", [[1, 1], [1, 2, 0, 5], [0.1, 0.2, 0.3, 0.4, 0, 1, 2, 3, 4, 5]])
def test_key_shares_follow_the_weights(weights):
    keys = [i.to_bytes(8, "little") for i in range(200_000)]
    counts = np.bincount(picks(StickyChooser(weights), keys), minlength=len(weights))
    w = np.asarray(weights, dtype=float)
    assert (counts[w == 0] == 0).all()
    positive = w > 0
    expected = w[positive] / w[positive].sum() * len(keys)
    assert chisquare(counts[positive], expected).pvalue > 1e-4


def test_seeds_default_to_the_index_and_are_kept():
    chooser = StickyChooser([1, 2, 3])
    assert chooser.seeds == (0, 1, 2)
    chooser.set_weights([1, 2, 3, 4])
    assert chooser.seeds == (0, 1, 2, 3)
    explicit = StickyChooser([1, 2], seeds=[10, 20])
    explicit.set_weights([2, 1])
    assert explicit.seeds == (10, 20)
    with pytest.raises(ValueError, match="pass seeds="):
        explicit.set_weights([1, 1, 1])
    explicit.set_weights([1, 1, 1], seeds=[10, 20, 30])
    assert explicit.size == 3
    np.testing.assert_array_equal(explicit.weights, [1, 1, 1])


@pytest.mark.parametrize(
    ("seeds", "error", "message"),
    [
        ([1, 2], ValueError, "one seed per variant"),
        ([1, 1, 2], ValueError, "distinct"),
        ([1, -2, 3], ValueError, r"seeds\[1\]"),
        ([1, 2**64, 3], ValueError, r"seeds\[1\]"),
        ([1, "b", 3], TypeError, "ints"),
    ],
)
def test_bad_seeds_are_refused(seeds, error, message):
    with pytest.raises(error, match=message):
        StickyChooser([1, 1, 1], seeds=seeds)


def test_invalid_set_weights_leaves_the_chooser_unchanged():
    chooser = StickyChooser([1, 0, 1])
    before = picks(chooser)
    with pytest.raises(ValueError):
        chooser.set_weights([1, float("nan"), 1])
    with pytest.raises(ValueError):
        chooser.set_weights([1, 1, 1], seeds=[4, 4, 5])
    assert chooser.seeds == (0, 1, 2)
    np.testing.assert_array_equal(picks(chooser), before)


def test_adding_a_variant_moves_keys_only_to_it():
    before = picks(StickyChooser([1, 2, 3]))
    after = picks(StickyChooser([1, 2, 3, 2]))
    moved = before != after
    assert moved.any()
    assert (after[moved] == 3).all()


def test_a_variant_keeps_its_keys_under_explicit_seeds_when_others_come_and_go():
    """Variants named by seed: inserting one in the middle renumbers indices, not identities."""
    before_seeds = [501, 502, 503]
    after_seeds = [501, 999, 502, 503]
    before = np.array(before_seeds)[picks(StickyChooser([1, 1, 1], seeds=before_seeds))]
    after = np.array(after_seeds)[picks(StickyChooser([1, 1, 1, 1], seeds=after_seeds))]
    moved = before != after
    assert moved.any()
    assert (after[moved] == 999).all()
    removed = np.array([501, 503])[picks(StickyChooser([1, 1], seeds=[501, 503]))]
    moved = before != removed
    assert (before[moved] == 502).all()


weights_st = st.lists(
    st.one_of(st.just(0.0), st.floats(min_value=0.01, max_value=100.0)), min_size=1, max_size=8
).filter(lambda w: any(x > 0 for x in w))


@settings(max_examples=30, deadline=None)
@given(weights=weights_st, data=st.data())
def test_raising_a_weight_moves_keys_only_to_it(weights, data):
    j = data.draw(st.integers(0, len(weights) - 1), label="j")
    raised = list(weights)
    raised[j] = weights[j] + data.draw(st.floats(min_value=0.01, max_value=100.0), label="increase")
    before, after = picks(StickyChooser(weights), KEYS[:1500]), picks(StickyChooser(raised), KEYS[:1500])
    moved = before != after
    assert (after[moved] == j).all()


@settings(max_examples=30, deadline=None)
@given(weights=weights_st, data=st.data())
def test_lowering_a_weight_moves_keys_only_from_it(weights, data):
    positive = [i for i, w in enumerate(weights) if w > 0]
    j = data.draw(st.sampled_from(positive), label="j")
    lowered = list(weights)
    lowered[j] = weights[j] * data.draw(st.floats(min_value=0.0, max_value=0.99), label="factor")
    if not any(w > 0 for w in lowered):
        lowered[j] = weights[j] / 2
    chooser = StickyChooser(weights)
    before = picks(chooser, KEYS[:1500])
    chooser.set_weights(lowered)
    after = picks(chooser, KEYS[:1500])
    moved = before != after
    assert (before[moved] == j).all()
    if lowered[j] == 0:
        assert not (after == j).any()


@settings(max_examples=40, deadline=None)
@given(weights=weights_st, key=st.binary(max_size=100))
def test_any_key_picks_a_positive_weight_and_always_the_same(weights, key):
    chooser = StickyChooser(weights)
    index = chooser.pick(key)
    assert weights[index] > 0
    assert StickyChooser(weights).pick(bytes(key)) == index
