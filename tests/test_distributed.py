"""Distributed training on gloo with 2 CPU processes: the same global batches as one process,
DDP gradients equal to one process's, sharded extraction byte-identical, and (slow) a whole
`qsenn train --nproc-per-node 2` run killed in one rank and resumed."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm as auto_tqdm

from qsenn_bench.testing import ddp_workers
from qsenn_train.features import stored_order
from qsenn_train.launch import Launch, without_launch_options
from qsenn_train.sharding import GlobalBatches, shuffled_order
from qsenn_train.training import make_loader

# One epoch of SGD (momentum 0.9) on 37 images, 5 steps: float summation order alone separates the
# runs (measured 1.1e-6). Longer runs drift apart: the FDL follows each image's argmax, and on
# 1×1 maps of 8 images a step can flip one, which turns a rounding difference into a jump.
PARAMETER_TOLERANCE = 1e-5


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_every_rank_takes_its_share_of_each_global_batch(world_size):
    order = shuffled_order(37, torch.Generator().manual_seed(4))

    def sampler(rank: int) -> GlobalBatches:
        return GlobalBatches(37, 8, order=order, rank=rank, world_size=world_size, drop_small_tail=True)

    shares = [list(sampler(r)) for r in range(world_size)]
    assert len({len(s) for s in shares}) == 1  # every rank runs the same number of steps
    reference = list(sampler(0).global_batches())
    assert [len(b) for b in reference] == sampler(0).global_sizes()
    for step, whole in enumerate(reference):
        parts = [shares[r][step] for r in range(world_size)]
        assert sorted(itertools.chain(*parts)) == sorted(whole)  # nothing repeated, nothing dropped
        assert all(len(p) >= 2 for p in parts)  # BatchNorm gets two images per rank
    # 37 = 4·8 + 5: the tail of 5 stays for W ≤ 2 and is dropped for W = 3 (fewer than 2 per rank)
    assert sum(map(len, reference)) == (37 if world_size < 3 else 32)


def test_the_order_is_the_one_of_the_earlier_loader_however_many_iterators_open():
    """Earlier versions shuffled with a DataLoader inside tqdm.auto; runs keep that order, and a
    rank without a progress bar (or a second iterator) gets the same one."""
    earlier = DataLoader(list(range(31)), batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(77))
    visited = [int(i) for batch in auto_tqdm(earlier, disable=True) for i in batch]
    assert stored_order(31, 77) == visited
    loader = make_loader(list(range(31)), 4, shuffle=True, workers=0, generator=torch.Generator().manual_seed(77))
    iter(loader)  # an iterator opened and dropped draws from the generator
    assert [int(i) for batch in loader for i in batch] == visited


@pytest.mark.parametrize("job", ["dense", "finetune"])
def test_ddp_matches_one_process_with_the_same_global_batch(tmp_path, job):
    ddp_workers.run_job(1, job, tmp_path / "one")
    ddp_workers.run_job(2, job, tmp_path / "two")
    one = torch.load(tmp_path / "one" / "state.pt", weights_only=True)
    two = torch.load(tmp_path / "two" / "state.pt", weights_only=True)
    start = ddp_workers.toy_network(sparse=job == "finetune").state_dict()
    assert one.keys() == two.keys()
    floats = [k for k in one if one[k].is_floating_point()]
    moved = max((one[k] - start[k]).abs().max().item() for k in floats)
    diff = max((one[k] - two[k]).abs().max().item() for k in floats)
    print(f"{job}: max |Δparameter| one vs two processes {diff:.2e} (training moved them up to {moved:.2e})")
    assert moved > 1e-2  # the steps did change the model
    assert diff < PARAMETER_TOLERANCE
    assert all(torch.equal(one[k], two[k]) for k in one if k not in floats)  # BatchNorm's step counts


def test_sharded_extraction_is_byte_identical(tmp_path):
    ddp_workers.run_job(1, "extract", tmp_path / "one")
    ddp_workers.run_job(2, "extract", tmp_path / "two")
    for name in ("features.npy", "labels.npy"):
        one, two = np.load(tmp_path / "one" / name), np.load(tmp_path / "two" / name)
        assert one.shape[0] == ddp_workers.N_IMAGES
        assert one.tobytes() == two.tobytes(), name


def test_launch_options_stay_with_the_launcher():
    argv = ["--recipe", "tiny", "--nproc-per-node", "2", "--nnodes=1", "--seed", "3", "--master-port", "29511"]
    assert without_launch_options(argv) == ["--recipe", "tiny", "--seed", "3"]
    args = Launch(2).torchrun_args(["--seed", "3"])
    assert "--standalone" in args and args[-4:] == ["cli", "train", "--seed", "3"]
    assert "--master-addr=10.0.0.1" in Launch(4, nnodes=2, node_rank=1, master_addr="10.0.0.1").torchrun_args([])
