"""scripts/testbed/key_block_popularity.py: the longest per-key-block list against the mean, per head, for the
bestmass selection and the untrained router's."""

import importlib.util
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "testbed" / "key_block_popularity.py"
spec = importlib.util.spec_from_file_location("key_block_popularity", SCRIPT)
pop = importlib.util.module_from_spec(spec)
spec.loader.exec_module(pop)


def test_a_key_block_every_query_attends_is_every_query_blocks_choice():
    """Head 1's key block 3 is what every query's attention is on (keys along the queries' shared direction), head 0
    is random: head 1's longest list is every query block, head 0's a few; the mean is nq·k/nk."""
    g = torch.Generator().manual_seed(0)
    n, d, bq, bk = 512, 32, 64, 32  # nq 8, nk 16
    q, k, v = (torch.randn(1, 2, n, d, generator=g) for _ in range(3))
    u = torch.randn(d, generator=g)
    q[0, 1] = 0.3 * q[0, 1] + u
    k[0, 1, 3 * bk: 4 * bk] += 3 * u
    res, nq = pop.popularity(q, k, v, 0.75, bq, bk)  # k = 4 of 16 key blocks
    assert nq == 8
    for name in pop.SELECTIONS:
        longest, mean = res[name]
        assert mean == 8 * 4 / 16
        assert longest[1] == 8 and longest[0] < 8
    mask = torch.zeros(1, 1, 3, 4, dtype=torch.bool)
    mask[0, 0, :, 2] = True
    mask[0, 0, 0, 0] = True
    assert pop.list_lengths(mask).tolist() == [[[1, 0, 3, 0]]]


def test_bad_arguments_are_one_line_errors(tmp_path, capsys):
    for argv, word in ((["--model", str(tmp_path)], "transformer/"), (["--size", "17x128"], "--size 17x128")):
        with pytest.raises(SystemExit):
            pop.main(argv)
        assert word in capsys.readouterr().err
