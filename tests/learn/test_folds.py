import random

import pytest

from deepmir.learn.folds import loo_folds, nnunet_splits

PIDS = [f"sub-{i:02d}" for i in range(1, 25)]


def test_24_participants_give_17_6_1_without_overlap():
    folds = loo_folds(PIDS, seed=0)
    assert len(folds) == 24
    assert [f["test"] for f in folds] == [[p] for p in sorted(PIDS)]  # every participant tested once
    for f in folds:
        tr, va, te = set(f["train"]), set(f["val"]), set(f["test"])
        assert (len(tr), len(va), len(te)) == (17, 6, 1)
        assert not (tr & va) and not (tr & te) and not (va & te)
        assert tr | va | te == set(PIDS)
        assert f["train"] == sorted(f["train"]) and f["val"] == sorted(f["val"])


def test_deterministic_and_independent_of_order():
    a = loo_folds(PIDS, seed=3)
    shuffled = PIDS[:]
    random.Random(1).shuffle(shuffled)
    assert loo_folds(PIDS, seed=3) == a
    assert loo_folds(shuffled, seed=3) == a
    b = loo_folds(PIDS, seed=4)
    assert any(x["val"] != y["val"] for x, y in zip(a, b))  # the seed matters
    # validation sets differ between folds (random per fold, not one fixed draw)
    assert len({tuple(f["val"]) for f in a}) > 12
    # a fold's split depends on its test participant, not on the others' positions
    c = loo_folds(PIDS + ["sub-99"], seed=3)
    assert [f["test"] for f in c][:24] == [f["test"] for f in a]


def test_small_sets_and_errors():
    f = loo_folds(["c", "a", "b"], seed=0)
    assert [x["test"] for x in f] == [["a"], ["b"], ["c"]]
    assert all(len(x["train"]) == 1 and len(x["val"]) == 1 for x in f)  # round(0.25·2) = 0 → at least 1
    with pytest.raises(ValueError):
        loo_folds(["a", "b", "a", "c"], seed=0)
    with pytest.raises(ValueError):
        loo_folds(["a", "b"], seed=0)


def test_nnunet_splits():
    folds = loo_folds(PIDS, seed=0)
    splits = nnunet_splits(folds)
    assert len(splits) == 24
    # nnU-Net's meaning: val is the fold's held-out (test) participant, train every other one
    assert splits[5] == {"train": sorted(folds[5]["train"] + folds[5]["val"]), "val": folds[5]["test"]}
    assert all(len(s["val"]) == 1 and len(s["train"]) == 23 for s in splits)
    assert all(set(s) == {"train", "val"} for s in splits)
