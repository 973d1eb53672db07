"""GroupNorm groups as units: U-Net / diffusion-style CNNs (GroupNorm + SiLU, residual blocks,
a skip concatenation) prune losslessly by whole groups."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import forceprune as fp


class ResBlock(nn.Module):
    def __init__(self, c: int, groups: int):
        super().__init__()
        self.n1, self.c1 = nn.GroupNorm(groups, c), nn.Conv2d(c, c, 3, padding=1)
        self.n2, self.c2 = nn.GroupNorm(groups, c), nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        h = self.c1(F.silu(self.n1(x)))
        return x + self.c2(F.silu(self.n2(h)))


class TinyUNet(nn.Module):
    """in -> res(16) -> down -> res(32) -> up -> cat(up, skip) -> GN(8, 32) -> 1x1 -> GN -> out."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Conv2d(3, 16, 3, padding=1)
        self.res1 = ResBlock(16, 4)
        self.down = nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.res2 = ResBlock(32, 8)
        self.up_conv = nn.Conv2d(32, 16, 3, padding=1)
        self.merge_norm, self.merge = nn.GroupNorm(8, 32), nn.Conv2d(32, 16, 1)
        self.out_norm, self.out = nn.GroupNorm(4, 16), nn.Conv2d(16, 3, 3, padding=1)

    def forward(self, x):
        skip = self.res1(self.inp(x))
        u = self.up_conv(F.interpolate(self.res2(self.down(skip)), scale_factor=2.0))
        m = self.merge(F.silu(self.merge_norm(torch.cat([u, skip], 1))))
        return self.out(F.silu(self.out_norm(m)))


def _unet():
    torch.manual_seed(0)
    model = TinyUNet().eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.GroupNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return model, torch.randn(3, 3, 8, 8)


def test_groupnorm_groups_are_the_units():
    model, x = _unet()
    sets = {us.name: us for us in fp.ForcePruner(model, x[:1]).unit_sets}
    # every channel group passes through GroupNorms of 4 channels per group: units of 4 channels
    assert {(n, us.kind, us.size, us.channels_per_unit) for n, us in sets.items()} == {
        ("inp", "group", 4, 4), ("res1.c1", "group", 4, 4), ("down", "group", 8, 4), ("res2.c1", "group", 8, 4),
        ("up_conv", "group", 4, 4), ("merge", "group", 4, 4),
    }
    # the skip channels land on groups 4..7 of the merge norm (after the 16 upsampled ones)
    skip = next(s for s in sets["inp"].slices if s.module_name == "merge_norm" and s.param_name == "weight")
    assert sorted(skip.index[skip.unit == 1].tolist()) == [20, 21, 22, 23]


def test_removing_whole_groups_keeps_the_outputs():
    model, x = _unet()
    pruner = fp.ForcePruner(model, x[:1])
    sets = {us.name: us for us in pruner.unit_sets}
    for name, groups in (("inp", [1, 3]), ("res1.c1", [0]), ("down", [2, 5, 6]), ("up_conv", [3]), ("merge", [1, 2])):
        mask = torch.zeros(sets[name].size, dtype=torch.bool)
        mask[groups] = True
        sets[name].zero_(mask, "all")
    with torch.no_grad():
        before = model(x)
    report = pruner.prune(calibration_inputs=x)
    with torch.no_grad():
        after = model(x)
    assert float((after - before).abs().max() / before.abs().max()) < 1e-5
    assert (model.res1.n1.num_channels, model.res1.n1.num_groups) == (8, 2)
    assert (model.res2.n1.num_channels, model.res2.n1.num_groups) == (20, 5)
    assert (model.merge_norm.num_channels, model.merge_norm.num_groups) == (20, 5)  # 12 upsampled + 8 skip
    assert (model.out_norm.num_channels, model.out_norm.num_groups) == (8, 2)
    assert {r["name"]: r["width_after"] for r in report.layers} == {
        "inp": 2, "res1.c1": 3, "down": 5, "res2.c1": 8, "up_conv": 3, "merge": 2}
    assert all(r["kind"] == "group" and r["channels_per_unit"] == 4 for r in report.layers)


def test_a_group_emitting_a_constant_is_folded_exactly():
    """up_conv's group 1 with zero weights but live biases: the merge norm normalises a constant
    group to a constant, SiLU keeps it one, and the 1x1 merge conv takes it into its bias."""
    model, x = _unet()
    pruner = fp.ForcePruner(model, x[:1], force="etp-official")
    us = {u.name: u for u in pruner.unit_sets}["up_conv"]
    with torch.no_grad():
        model.up_conv.weight[4:8] = 0
        model.up_conv.bias[4:8] = torch.tensor([0.3, -0.2, 0.5, 0.1])
    assert bool(fp.removal.removable_units(us)[1][1])  # removable, by a fold
    with torch.no_grad():
        before = model(x)
    report = pruner.prune(calibration_inputs=x)
    with torch.no_grad():
        after = model(x)
    assert not report.warnings
    assert float((after - before).abs().max() / before.abs().max()) < 1e-5
    assert model.up_conv.out_channels == 12


def test_groups_that_do_not_align_are_not_units():
    """6 + 10 concatenated channels under GroupNorm(4, 16): the 6-channel producer's channels
    do not come in whole groups, so removing any of them would change its group's statistics."""
    class Misaligned(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 6, 1), nn.Conv2d(3, 10, 1)
            self.norm, self.out = nn.GroupNorm(4, 16), nn.Conv2d(16, 2, 1)

        def forward(self, x):
            return self.out(F.silu(self.norm(torch.cat([self.a(x), self.b(x)], 1))))

    torch.manual_seed(0)
    with pytest.raises(fp.ForcePruneError, match="no prunable unit"):
        fp.ForcePruner(Misaligned().eval(), torch.randn(1, 3, 4, 4))


def test_a_pruned_unet_reloads_bit_identically(tmp_path):
    model, x = _unet()
    pruner = fp.ForcePruner(model, x[:1])
    us = {u.name: u for u in pruner.unit_sets}["down"]
    us.zero_(torch.tensor([False, True, False, False, True, False, False, False]), "all")
    pruner.prune()
    fp.save_pruned(model, fp.make_plan(pruner), tmp_path / "unet")
    loaded, _ = fp.load_pruned(tmp_path / "unet", model_factory=TinyUNet)
    with torch.no_grad():
        assert torch.equal(model(x), loaded.eval()(x))
    assert loaded.res2.n1.num_groups == 6
