"""DDP on CPU (gloo, 2 processes): penalty, capture and removal in lockstep give every rank
the same plan and identical weights; optimizer state follows the removal."""
import hashlib
import json
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

import forceprune as fp
from forceprune import distributed as fpd

import zoo

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")


def _digest(model, buffers=True) -> str:
    h = hashlib.sha256()
    items = model.state_dict().items() if buffers else model.named_parameters()
    for name, t in sorted(items):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _worker(rank: int, world: int, outdir: str) -> None:
    from torch.nn.parallel import DistributedDataParallel as DDP

    torch.set_num_threads(1)
    # a file store: no TCP port to pick (a free port found first can be taken before gloo binds it)
    store = os.path.join(outdir, "store")
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        model, x = zoo.build("plain_cnn", seed=0)  # same seed: identical weights on every rank
        model.train()
        ddp = DDP(model)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        pruner = fp.ForcePruner(model, x[:1], optimizer=opt, beta=1e-3, capture_every=0)
        # rank 0 "captured" units that rank 1 did not (as floating-point noise could cause)
        if rank == 0:
            state = pruner.state_dict()
            for us in pruner.unit_sets:
                dead = torch.zeros(us.size, dtype=torch.bool)
                dead[us.size // 2:] = True
                state["dead"][us.name] = dead
            pruner.load_state_dict(state)
        new = fpd.broadcast_capture_state(pruner)
        dead_after = {us.name: us.dead.tolist() for us in pruner.unit_sets}

        g = torch.Generator().manual_seed(1)
        X, Y = torch.randn(16, 3, 8, 8, generator=g), torch.randint(0, 5, (16,), generator=g)
        xs, ys = X[rank::world], Y[rank::world]  # rank-sharded data

        def train(ddp, steps):
            for _ in range(steps):
                for i in range(0, len(xs), 4):
                    loss = F.cross_entropy(ddp(xs[i:i + 4]), ys[i:i + 4]) + pruner.penalty()
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    pruner.step()

        train(ddp, 2)
        pruner.capture()
        before = _digest(model, buffers=False)  # DDP keeps parameters identical (BN stats are rank-local)
        report = fpd.prune_in_lockstep(pruner, opt)
        pruned = _digest(model)  # parameters and buffers: identical surgery on every rank
        plans = fpd.gather_plans(report)
        ddp = fpd.rewrap_ddp(ddp)
        train(ddp, 2)  # training continues on the pruned model with the sliced optimizer state
        ok_state = all(
            v.shape == p.shape for p, st in opt.state.items() for v in st.values() if torch.is_tensor(v) and v.dim()
        )
        result = {
            "new_captured": new,
            "dead": dead_after,
            "before": before,
            "pruned": pruned,
            "after": _digest(model, buffers=False),
            "kept": report.kept,
            "plans_equal": all(p == plans[0] for p in plans),
            "params_after": report.params_after,
            "params_before": report.params_before,
            "state_shapes_ok": ok_state,
        }
        with open(os.path.join(outdir, f"rank{rank}.json"), "w") as f:
            json.dump(result, f)
    finally:
        dist.destroy_process_group()


def test_ddp_two_ranks_prune_in_lockstep(tmp_path):
    try:
        mp.spawn(_worker, args=(2, str(tmp_path)), nprocs=2, join=True)
    except mp.ProcessExitedException:
        # seen ~1 run in 5 under a busy full suite: a rank dies by SIGABRT in gloo's teardown after
        # its work is done. The ranks' written results are what this test checks; a rank that died
        # before writing them still fails the test.
        if not all((tmp_path / f"rank{r}.json").exists() for r in range(2)):
            raise
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2))
    assert r0["new_captured"] == 0 and r1["new_captured"] > 0  # rank 1 adopted rank 0's masks
    assert r0["dead"] == r1["dead"]
    assert r0["before"] == r1["before"]  # identical weights before removal ...
    assert r0["kept"] == r1["kept"] and r0["plans_equal"] and r1["plans_equal"]
    assert r0["pruned"] == r1["pruned"]  # ... right after removal (buffers included) ...
    assert r0["after"] == r1["after"]  # ... and after more DDP training on the pruned model
    assert r0["params_after"] < r0["params_before"]
    assert r0["state_shapes_ok"] and r1["state_shapes_ok"]
    # the masks captured on rank 0 were removed: every unit set kept its first half
    for name, kept in r0["kept"].items():
        assert all(not d for d in [r0["dead"][name][i] for i in kept])


def test_helpers_are_no_ops_without_a_process_group():
    model, x = zoo.build("mlp")
    pruner = fp.ForcePruner(model, x[:1])
    assert not fpd.is_distributed()
    assert fpd.broadcast_capture_state(pruner) == 0
    fpd.broadcast_parameters(model)
    report = fpd.prune_in_lockstep(pruner)
    assert fpd.gather_plans(report) == [report.kept]
    fpd.check_same_plan(report)
