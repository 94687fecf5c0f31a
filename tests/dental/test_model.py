"""HierarchicalDet parts on constructed cases: paper-size parameter count, SimOTA dynamic-k assignment, prior-box
injection into the noised proposals, a missing label level giving no gradient, DDIM with 1 and 4 steps on a batch of
2, and the Faster R-CNN baseline's loss in the same interface."""

from __future__ import annotations

import pytest
import torch

from medml.config import load_config, resolve_recipe
from medml.pipelines.dental.baselines import TorchvisionBaseline, joint_label, split_label
from medml.pipelines.dental.config import DentalConfig, DentalLoss, DentalModel
from medml.pipelines.dental.losses import detection_loss, dynamic_k_match, match_image, set_loss
from medml.pipelines.dental.model import HierarchicalDiffusionDet, apply_deltas, cosine_alphas_cumprod


def tiny_model_cfg(**kw) -> DentalModel:
    base = dict(
        backbone="resnet_small",
        weights="none",
        small_width=8,
        fpn_channels=32,
        hidden_dim=32,
        num_proposals=12,
        dim_feedforward=64,
        dim_dynamic=8,
        nheads=4,
        num_heads=2,
        pooler_resolution=3,
    )
    base.update(kw)
    return DentalModel(**base)


def targets(levels=(True, True, True)):
    boxes = torch.tensor([[10.0, 10.0, 40.0, 60.0], [80.0, 20.0, 110.0, 70.0]])
    labels = torch.tensor([[0, 1, 2], [1, 3, 0]])
    return [{"boxes": boxes, "labels": labels, "levels": torch.tensor(levels), "priors": torch.zeros(0, 4)}] * 2


def test_paper_size_model_parameter_count():
    """R50-FPN (FrozenBN, stem + res2 frozen) + 6-stage head with 3 classifiers at 256/2048/64: pinned."""
    model = HierarchicalDiffusionDet(DentalModel(), pretrained=False)  # weights=imagenet -> FrozenBN, no download
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    head = sum(p.numel() for p in model.head.parameters())
    assert (total, trainable, head) == (PAPER_TOTAL, PAPER_TRAINABLE, PAPER_HEAD)
    assert len(model.head.stages) == 6 and model.num_proposals == 1000
    assert [c.out_features for c in model.head.stages[0].classifiers] == [4, 8, 4]
    # prior-probability bias on the classifiers only, not on the box deltas (spec §2.2 quirk not copied)
    assert torch.allclose(model.head.stages[0].classifiers[1].bias, torch.full((8,), -4.59512), atol=1e-4)
    assert model.head.stages[0].box_delta.bias.abs().max() < 1.0


# R50-FPN 26.8M (of which the frozen stem + res2 0.22M) + head 83.8M: per stage the dynamic-parameter generator
# (256 -> 2x256x64, 8.4M) and the 12544 -> 256 interaction output (3.2M) dominate.
PAPER_TOTAL, PAPER_TRAINABLE, PAPER_HEAD = 110_574_648, 110_352_248, 83_775_352


def test_cosine_schedule_and_box_decode():
    ac = cosine_alphas_cumprod(1000)
    assert ac.shape == (1000,) and 0.999 < ac[0] <= 1.0 and ac[-1] < 1e-4 and bool((ac[1:] <= ac[:-1]).all())
    boxes = torch.tensor([[10.0, 20.0, 30.0, 60.0]])
    assert torch.allclose(apply_deltas(torch.zeros(1, 4), boxes), boxes)
    moved = apply_deltas(torch.tensor([[2.0, 0.0, 0.0, 0.0]]), boxes)  # dx / 2 = 1 box width
    assert torch.allclose(moved, boxes + torch.tensor([[20.0, 0.0, 20.0, 0.0]]))


def test_dynamic_k_gives_each_gt_its_cheapest_predictions():
    # GT 0 has 3 predictions overlapping it well (sum of IoUs >= 2 -> k = 2), GT 1 one poor one (k = 1).
    iou = torch.tensor([[0.9, 0.0], [0.8, 0.0], [0.7, 0.1], [0.0, 0.3], [0.0, 0.0]])
    cost = torch.tensor([[1.0, 9.0], [2.0, 9.0], [3.0, 8.0], [9.0, 1.0], [9.0, 9.0]])
    selected, gt = dynamic_k_match(cost, iou, ota_k=5)
    assert selected.tolist() == [True, True, False, True, False]
    assert gt[selected].tolist() == [0, 0, 1]
    # a prediction claimed by two GTs keeps the cheaper one; the other GT still gets one prediction
    cost2 = torch.tensor([[1.0, 2.0], [5.0, 3.0], [9.0, 9.0]])
    iou2 = torch.tensor([[0.9, 0.9], [0.1, 0.1], [0.0, 0.0]])
    selected, gt = dynamic_k_match(cost2, iou2, ota_k=5)
    assert selected.tolist() == [True, True, False] and gt[:2].tolist() == [0, 1]


def test_matcher_uses_the_level_averaged_class_cost():
    """Two identical boxes on one GT: the one whose supervised-level logits favour the GT class wins; a level the
    image lacks (tooth) does not enter the cost."""
    gt_boxes, gt_labels = torch.tensor([[10.0, 10.0, 50.0, 50.0]]), torch.tensor([[2, 5, 1]])
    boxes = torch.tensor([[11.0, 11.0, 49.0, 49.0]] * 2 + [[200.0, 200.0, 220.0, 220.0]])
    quad = torch.tensor([[-5.0, -5.0, -5.0, -5.0], [-5.0, -5.0, 5.0, -5.0], [0.0] * 4])
    tooth = torch.tensor([[0.0] * 5 + [9.0, 0.0, 0.0], [-9.0] * 8, [0.0] * 8])  # would favour box 0 if it counted
    diag = torch.zeros(3, 4)
    whwh = torch.tensor([256.0, 128.0, 256.0, 128.0])
    cfg = DentalLoss(ota_k=1)
    sel, gt = match_image([quad, tooth, diag], boxes, gt_boxes, gt_labels, [0], whwh, cfg)
    assert sel.tolist() == [False, True, False]
    sel, _ = match_image([quad, tooth, diag], boxes, gt_boxes, gt_labels, [1], whwh, cfg)
    assert sel.tolist() == [True, False, False]


def test_a_box_without_a_label_at_a_level_is_neither_positive_nor_negative_there():
    """A GT box with quadrant label -1 (tier has the level, this box lacks it): the predictions matched to it get
    no quadrant loss at all, while the unmatched ones stay negatives."""
    gt_boxes, gt_labels = torch.tensor([[10.0, 10.0, 50.0, 50.0]]), torch.tensor([[-1, 5, 1]])
    boxes = torch.tensor([[[11.0, 11.0, 49.0, 49.0], [200.0, 100.0, 220.0, 120.0]]])
    logits = [torch.zeros(1, 2, c, requires_grad=True) for c in (4, 8, 4)]
    targets = [{"boxes": gt_boxes, "labels": gt_labels, "levels": torch.ones(3, dtype=torch.bool)}]
    whwh = torch.tensor([[256.0, 128.0, 256.0, 128.0]])
    set_loss(logits, boxes, targets, whwh, DentalLoss(ota_k=1))["loss_ce_0"].backward()
    assert logits[0].grad[0, 0].abs().sum() == 0  # matched to the unlabelled box
    assert logits[0].grad[0, 1].abs().sum() > 0  # background: still a negative


@pytest.mark.parametrize("inject", ["released", "clean", "none"])
def test_prior_boxes_enter_the_noised_proposals(inject):
    torch.manual_seed(0)
    model = HierarchicalDiffusionDet(tiny_model_cfg(num_proposals=8))
    sizes = torch.tensor([[128, 256]])
    gt = [torch.tensor([[10.0, 10.0, 40.0, 60.0]])]
    prior = [torch.tensor([[100.0, 30.0, 140.0, 90.0], [200.0, 40.0, 230.0, 100.0]])]
    # t = 0: almost no noise, so x_start's rows show through: GT first, then the prior boxes (not in 'none')
    boxes, _ = model.noised_proposals(gt, sizes, prior, inject, t=torch.tensor([0]))
    assert torch.allclose(boxes[0, 0], gt[0][0], atol=1.5)
    assert torch.allclose(boxes[0, 1:3], prior[0], atol=1.5) == (inject != "none")
    # t = T-1: all noise. The released code puts the prior boxes into the noise rows themselves, so the first rows
    # become a fixed function of the priors; clean and none keep Gaussian noise.
    last = torch.tensor([999])
    a, _ = model.noised_proposals(gt, sizes, prior, inject, t=last)
    b, _ = model.noised_proposals(gt, sizes, prior, inject, t=last)
    assert torch.allclose(a[0, :2], b[0, :2], atol=0.5) == (inject == "released")


def test_a_missing_level_gives_its_classifier_no_gradient():
    torch.manual_seed(0)
    model = HierarchicalDiffusionDet(tiny_model_cfg())
    images, sizes = torch.randn(2, 3, 128, 128), torch.tensor([[128, 128], [128, 120]])

    def grads(levels):
        model.zero_grad()
        tg = targets(levels)
        proposals, t = model.noised_proposals([x["boxes"] for x in tg], sizes)
        levels_out, boxes = model(images, proposals, t)
        loss, parts = detection_loss(levels_out, boxes, tg, model.whwh(sizes), DentalLoss())
        loss.backward()
        out = []
        for k in range(3):
            g = [s.classifiers[k].weight.grad for s in model.head.stages]
            out.append(sum(0.0 if x is None else float(x.abs().sum()) for x in g))
        return out, parts

    (gq, gt_, gd), parts = grads((True, True, False))
    assert gq > 0 and gt_ > 0 and gd == 0.0 and float(parts["loss_ce_2"].detach()) == 0.0
    (gq, gt_, gd), _ = grads((True, True, True))
    assert gd > 0


def test_ddim_sampling_with_renewal_and_ensemble_runs_for_steps_and_batches():
    torch.manual_seed(0)
    cfg = tiny_model_cfg(renewal_threshold=0.0)  # renewal keeps everything the (untrained) head is unsure of
    model = HierarchicalDiffusionDet(cfg).eval()
    images, sizes = torch.randn(2, 3, 96, 160), torch.tensor([[96, 160], [80, 150]])
    one = model.detect(images, sizes, level=2, steps=1)
    four = model.detect(images, sizes, level=2, steps=4, trace=True)
    assert len(one) == len(four) == 2
    for det, (h, w) in zip(four, sizes.tolist()):
        assert det["boxes"].shape[1] == 4 and det["labels"].shape[1] == 3 and len(det["scores"]) <= cfg.max_detections
        assert float(det["boxes"][:, 2].max()) <= w and float(det["boxes"][:, 3].max()) <= h
        assert [int(s["t"]) for s in det["steps"]] == [999, 749, 499, 249]
        assert bool((det["scores"][:-1] >= det["scores"][1:]).all())
    strict = HierarchicalDiffusionDet(tiny_model_cfg(renewal_threshold=0.99)).eval()
    strict.load_state_dict(model.state_dict())
    renewed = strict.detect(images, sizes, level=0, steps=3)  # nothing passes renewal: fresh boxes every step
    assert all(len(d["scores"]) > 0 for d in renewed)


def test_faster_rcnn_baseline_loss_and_detections_in_the_same_interface():
    torch.manual_seed(0)
    config = load_config(DentalConfig, resolve_recipe("dental", "tiny"))
    config = config.model_copy(update={"model": tiny_model_cfg(arch="fasterrcnn")})
    config.data.min_size, config.data.max_size = 96, 160
    model = TorchvisionBaseline(config)
    images, sizes = torch.randn(2, 3, 96, 160), torch.tensor([[96, 160], [96, 150]])
    loss, parts = model.loss(images, sizes, targets())
    assert {"loss_classifier", "loss_box_reg", "loss_objectness"} <= set(parts) and torch.isfinite(loss)
    loss.backward()
    model.eval()
    dets = model.detect(images, sizes)
    assert len(dets) == 2 and all(d["labels"].shape[1] == 3 for d in dets)
    labels = torch.tensor([[0, 0, 0], [3, 7, 3], [2, 4, 1]])
    assert joint_label(labels).tolist() == [1, 128, 82] and torch.equal(split_label(joint_label(labels)), labels)


def test_zero_box_init_starts_every_stage_as_the_identity():
    """``model.box_init: zero`` (tiny): the first forward returns the proposals at every head stage; the released
    Xavier init moves them by random deltas of order one that compound over the stages (the tiny run's failure)."""
    torch.manual_seed(0)
    images = torch.zeros(1, 3, 64, 128)
    proposals = torch.tensor([[[10.0, 8.0, 30.0, 40.0], [60.0, 20.0, 90.0, 50.0]]]).repeat(1, 6, 1)
    t = torch.tensor([10])
    zero = HierarchicalDiffusionDet(tiny_model_cfg(box_init="zero", num_proposals=12))
    _, boxes = zero(images, proposals, t)
    assert torch.allclose(boxes, proposals.expand_as(boxes), atol=1e-4)
    xavier = HierarchicalDiffusionDet(tiny_model_cfg(num_proposals=12))
    _, boxes = xavier(images, proposals, t)
    assert (boxes[-1] - proposals).abs().max() > 1.0


def test_tiny_recipe_trains_the_whole_backbone():
    """Random weights: no frozen stem or res2 (frozen random filters would be fixed noise), GroupNorm, not FrozenBN."""
    cfg = load_config(DentalConfig, resolve_recipe("dental", "tiny"))
    model = HierarchicalDiffusionDet(cfg.model)
    assert all(p.requires_grad for p in model.parameters())
    assert cfg.model.box_init == "zero"
