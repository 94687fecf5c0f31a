"""Unit tests of the angio networks, losses, augmentation and semi-supervised step (no dataset, no training)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from medml.config import load_config
from medml.errors import ConfigError
from medml.pipelines.angio import losses as L_
from medml.pipelines.angio.augment import LabelledViews, UnlabelledViews, weak_transform
from medml.pipelines.angio.config import AngioConfig
from medml.pipelines.angio.module import TRAINING_EMAS, AngioModule, build_schedulers
from medml.pipelines.angio.outputs import (
    SPACING_DETECTOR,
    SPACING_MAGNIFICATION,
    SPACING_PATIENT,
    class_areas,
    dicom_pixel_spacing,
)
from medml.transforms.angio import to_unit_grey

TINY_MODEL = {
    "seg_features": [8, 8, 16, 16, 32, 8],
    "latent_channels": 8,
    "encoder_widths": [8, 8, 16],
    "cond_channels": 8,
    "denoiser_channels": [16, 16],
    "denoiser_attention": [False, False],
    "denoiser_head_channels": 8,
    "denoiser_groups": 8,
}


def tiny_config(**model) -> AngioConfig:
    return load_config(
        AngioConfig, {"model": {**TINY_MODEL, **model}, "diffusion": {"preset": "diffrect"}, "data": {"size": 32}}
    )


@pytest.fixture(scope="module")
def module() -> AngioModule:
    torch.manual_seed(0)
    return AngioModule(tiny_config(confidence=0.0, refine_start_step=0))


def test_paper_defaults_and_presets():
    cfg = AngioConfig()
    assert cfg.data.size == 512 and cfg.model.latent_channels == 64 and cfg.model.method == "rnpll"
    assert cfg.diffusion.resolved() == (1000, 10)
    assert load_config(AngioConfig, {"diffusion": {"preset": "diffrect"}}).diffusion.resolved() == (10, 2)
    assert load_config(AngioConfig, None, ["diffusion.inference_steps=4"]).diffusion.resolved() == (1000, 4)
    ddpm, ddim, steps = build_schedulers(cfg)
    assert ddpm.prediction_type == "sample" and ddim.prediction_type == "sample" and steps == 10
    with pytest.raises(ConfigError, match="model.method"):
        load_config(AngioConfig, {"model": {"method": "fixmatch"}})
    with pytest.raises(ConfigError, match="labelled_fraction"):
        load_config(AngioConfig, None, ["data.labelled_fraction=0"])


@pytest.mark.parametrize(
    "override",
    [
        "data.size=0",
        "data.labelled_fraction=1.5",
        "data.unlabelled_batch_size=-1",
        "data.flip_p=2",
        "model.ema_decay=1.0",
        "model.confidence=-0.1",
        "model.seg_features=[8,8,16,16,32,0]",
        "diffusion.train_timesteps=0",
        "loss.unsup_weight=-1",
        "loss.class_weights=[1,-2,1,1,1]",
        "loss.proto_temperature=0",
        "loss.proto_momentum=1",
        "eval.frame_batch=0",
    ],
)
def test_config_rejects_out_of_range_values(override: str):
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as err:
        load_config(AngioConfig, None, [override])
    assert "\n" not in str(err.value)  # the usual one-line error naming the key
    load_config(AngioConfig, None, ["model.ema_decay=0", "data.labelled_fraction=1", "loss.proto_align_weight=0"])


def test_shapes_and_latent_stride(module: AngioModule):
    net = module.net
    x = torch.rand(2, 1, 32, 32)
    logits = net.segment(x)
    assert logits.shape == (2, 5, 32, 32)
    z = net.encode_label(torch.softmax(logits, 1))
    assert z.shape == (2, 8, 4, 4) and net.latent_stride == 8
    # Per-pixel normalised latent: every latent vector has norm sqrt(d).
    assert torch.allclose(z.norm(dim=1), torch.full((2, 4, 4), math.sqrt(8)), atol=1e-4)
    cond, skips = net.encode_image(x)
    assert cond.shape[-2:] == (4, 4)
    assert net.decode(z, skips).shape == (2, 5, 32, 32)
    x0 = net.denoise(z, torch.tensor([3, 7]), z, cond)
    assert x0.shape == z.shape


def test_ddim_two_steps_finite_and_reproducible():
    torch.manual_seed(0)
    module = AngioModule(tiny_config())
    net = module.net.eval()
    # MONAI zero-initialises the denoiser's output layer; give it weights so the sampled noise matters.
    torch.nn.init.normal_(net.denoiser.out[2].conv.weight, std=0.1)
    x = torch.rand(2, 1, 32, 32)
    seg = net.segment(x)
    assert module.sample_steps == 2
    out, trajectory = net.refine(
        x, seg, module.ddim, 2, generator=torch.Generator().manual_seed(1), return_trajectory=True
    )
    assert out.shape == (2, 5, 32, 32) and torch.isfinite(out).all()
    assert len(trajectory) == 2 and all(torch.isfinite(t).all() for t in trajectory)
    again = net.refine(x, seg, module.ddim, 2, generator=torch.Generator().manual_seed(1))
    assert torch.equal(out, again)
    other = net.refine(x, seg, module.ddim, 2, generator=torch.Generator().manual_seed(2))
    assert not torch.equal(out, other)  # the starting noise matters, so the seed is what makes it reproducible


@pytest.mark.parametrize("preset", ["diffrect", "paper"])
def test_ddim_timesteps_follow_step_and_latent_noise_level(
    module: AngioModule, preset: str, monkeypatch: pytest.MonkeyPatch
):
    cfg = tiny_config() if preset == "diffrect" else AngioConfig()
    _, ddim, steps = build_schedulers(cfg)
    total = ddim.num_train_timesteps
    net = module.net
    clean = torch.randn(1, 8, 4, 4, generator=torch.Generator().manual_seed(3))
    calls: list[tuple[torch.Tensor, int]] = []

    def fixed_x0(z_t, timesteps, prior, cond):  # a denoiser that always predicts the same clean latent
        calls.append((z_t.clone(), int(timesteps[0])))
        return clean.clone()

    monkeypatch.setattr(net, "denoise", fixed_x0)
    x = torch.rand(1, 1, 32, 32)
    out = net.refine(x, net.segment(x), ddim, steps, generator=torch.Generator().manual_seed(1))
    used = [t for _, t in calls]
    assert len(used) == steps and used[0] == total - 1 and used == ddim.timesteps.tolist()
    stride = total // ddim.num_inference_steps  # what DDIMScheduler.step() moves by
    assert [a - b for a, b in zip(used, used[1:])] == [stride] * (steps - 1)
    assert used[-1] - stride == -1  # the last step lands on the clean latent
    if preset == "diffrect":
        assert used == [9, 4]
    # With a fixed x0, deterministic DDIM keeps the noise component: z_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps.
    # Recovering eps with each call's t gives the same eps only if t is the latent's true noise level.
    abar = ddim.alphas_cumprod
    eps = [(z - abar[t].sqrt() * clean) / (1 - abar[t]).sqrt() for z, t in calls]
    for e in eps[1:]:
        assert torch.allclose(e, eps[0], atol=1e-4)
    cond, skips = net.encode_image(x)
    # The sample is the decoded final x0 (plus the segmenter's log-softmax: model.prior_residual, the default).
    assert net.prior_residual
    expected = net.decode(clean, skips) + torch.log_softmax(net.segment(x), dim=1)
    assert torch.allclose(out, expected, atol=1e-5)


def test_prototype_ema_update_matches_hand_computation():
    # Two classes, d = 2, a 1x2x2 latent: class 0 at three cells, class 1 at one cell, nothing for class 2.
    feats = torch.tensor([[[[3.0, 0.0], [1.0, 0.0]], [[4.0, 1.0], [0.0, 2.0]]]])  # (1, 2, 2, 2)
    labels = torch.tensor([[[0, 0], [1, 255]]])
    protos, present = L_.batch_prototypes(feats, labels, num_classes=3)
    # Hand: class 0 = mean of normalised (3,4)->(0.6,0.8) and (0,1) -> (0.3, 0.9) -> normalised.
    c0 = torch.tensor([0.3, 0.9]) / math.hypot(0.3, 0.9)
    c1 = torch.tensor([1.0, 0.0])
    assert present.tolist() == [True, True, False]
    assert torch.allclose(protos[0], c0, atol=1e-6) and torch.allclose(protos[1], c1, atol=1e-6)
    assert torch.equal(protos[2], torch.zeros(2))

    bank = torch.tensor([[0.0, 1.0], [0.0, 0.0], [1.0, 0.0]])
    initialised = torch.tensor([True, False, True])
    L_.update_prototypes(bank, initialised, protos, present, momentum=0.9)
    expected0 = 0.9 * torch.tensor([0.0, 1.0]) + 0.1 * c0
    expected0 = expected0 / expected0.norm()
    assert torch.allclose(bank[0], expected0, atol=1e-6)  # EMA then re-normalised
    assert torch.allclose(bank[1], c1)  # first sighting: taken as is
    assert torch.equal(bank[2], torch.tensor([1.0, 0.0]))  # absent from the batch: unchanged
    assert initialised.tolist() == [True, True, True]

    # Deterministic: the same inputs give bit-identical banks.
    bank2 = torch.tensor([[0.0, 1.0], [0.0, 0.0], [1.0, 0.0]])
    init2 = torch.tensor([True, False, True])
    L_.update_prototypes(bank2, init2, *L_.batch_prototypes(feats, labels, 3), momentum=0.9)
    assert torch.equal(bank, bank2)


def test_prototype_contrastive_loss_hand_value():
    protos = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    ready = torch.tensor([True, True])
    feats = torch.tensor([[[[2.0]], [[0.0]]]])  # one latent pixel along prototype 0
    tau = 0.5
    loss0 = L_.prototype_contrastive_loss(feats, torch.tensor([[[0]]]), protos, ready, tau)
    loss1 = L_.prototype_contrastive_loss(feats, torch.tensor([[[1]]]), protos, ready, tau)
    expected0 = -math.log(math.exp(1 / tau) / (math.exp(1 / tau) + math.exp(0)))
    assert loss0.item() == pytest.approx(expected0, rel=1e-5)
    assert loss1.item() > loss0.item()
    # A class without a prototype is neither a target nor in the denominator.
    lonely = L_.prototype_contrastive_loss(feats, torch.tensor([[[1]]]), protos, torch.tensor([True, False]), tau)
    assert lonely.item() == 0.0


def test_latent_labels_keep_thin_structures():
    labels = torch.zeros(1, 8, 16, dtype=torch.long)
    labels[0, :, 3] = 2  # a 1-pixel catheter: 1/8 of the left cell
    labels[0, :, 8:10] = 1  # a 2-pixel vessel: 1/4 of the right cell
    out = L_.latent_labels(labels, stride=8, num_classes=5, min_fraction=0.25)
    assert out.tolist() == [[[255, 1]]]  # thin catheter cell is mixed -> ignored; vessel cell reaches 1/4
    assert L_.latent_labels(torch.zeros(1, 8, 8, dtype=torch.long), 8, 5).tolist() == [[[0]]]


def test_masked_dice_ce_ignores_masked_pixels():
    loss = L_.MaskedDiceCE()
    logits = torch.randn(2, 5, 8, 8)
    labels = torch.randint(0, 5, (2, 8, 8))
    labels[:, :4] = 255
    base = loss(logits, labels)
    changed = logits.clone()
    changed[:, :, :4] = torch.randn(2, 5, 4, 8) * 10
    assert torch.allclose(loss(changed, labels), base, atol=1e-6)
    assert loss(logits, torch.full_like(labels, 255)).item() == 0.0
    mask = torch.zeros(2, 8, 8, dtype=torch.bool)
    assert loss(logits, labels.clamp(max=4), mask).item() == 0.0


@pytest.mark.parametrize("ignore_by", ["index", "mask"])
def test_masked_dice_ce_perfect_prediction_with_ignored_half_is_zero(ignore_by: str):
    labels = torch.randint(1, 5, (2, 8, 8))
    perfect = torch.nn.functional.one_hot(labels, 5).permute(0, 3, 1, 2).float() * 40.0
    half = torch.zeros(2, 8, 8, dtype=torch.bool)
    half[:, 4:] = True
    if ignore_by == "index":
        target, mask = torch.where(half, labels, torch.full_like(labels, 255)), None
    else:
        target, mask = labels, half
    for dice_weight, ce_weight in ((1.0, 0.0), (0.0, 1.0), (1.0, 1.0)):
        loss = L_.MaskedDiceCE(dice_weight=dice_weight, ce_weight=ce_weight)
        assert loss(perfect, target, mask).item() == pytest.approx(0.0, abs=1e-4)
    # A wrong prediction on the kept half is still penalised by the Dice term.
    wrong = perfect.roll(1, dims=1)
    assert L_.MaskedDiceCE(ce_weight=0.0)(wrong, target, mask).item() > 0.5


def test_sigmoid_rampup():
    assert L_.sigmoid_rampup(0, 10) == pytest.approx(math.exp(-5))
    assert L_.sigmoid_rampup(5, 10) == pytest.approx(math.exp(-5 * 0.25))
    assert L_.sigmoid_rampup(20, 10) == 1.0 and L_.sigmoid_rampup(3, 0) == 1.0


def _batch(seed: int = 0, size: int = 32) -> dict:
    g = torch.Generator().manual_seed(seed)
    labels = torch.zeros(2, size, size, dtype=torch.long)
    labels[:, 10:14, :] = 1
    labels[:, :, 20:22] = 2
    return {
        "labelled": {"image": torch.rand(2, 1, size, size, generator=g), "label": labels},
        "unlabelled": {
            "image_weak": torch.rand(2, 1, size, size, generator=g),
            "image_strong": torch.rand(2, 1, size, size, generator=g),
        },
    }


def test_semi_supervised_loss_sees_unlabelled_frames(module: AngioModule):
    batch = _batch()
    strong = batch["unlabelled"]["image_strong"].requires_grad_(True)
    module.zero_grad()
    loss = module.training_step(batch, 0)
    loss.backward()
    assert torch.isfinite(loss)
    assert strong.grad is not None and strong.grad.abs().sum() > 0  # gradients flow from the unlabelled stream
    # The diffusion branch and the prototypes are trained too.
    assert module.net.denoiser.out[2].conv.weight.grad.abs().sum() > 0
    assert module.prototypes_initialised.any()


def _logged_losses(module: AngioModule, batch: dict, monkeypatch: pytest.MonkeyPatch) -> dict[str, float]:
    """The loss terms one seeded training step logs (every random draw of the step is reseeded)."""
    logged: dict[str, float] = {}
    monkeypatch.setattr(module, "log_dict", lambda values, **_: logged.update({k: float(v) for k, v in values.items()}))
    torch.manual_seed(123)
    names = ("prototypes", "prototypes_initialised", "label_prior", "pseudo_prior")
    bank = {name: getattr(module, name).clone() for name in names}
    with torch.no_grad():
        module.training_step(batch, 0)
    for name in names:  # a step updates the prototype bank and the class priors (and so the next step's
        getattr(module, name).copy_(bank[name])  # pseudo-label weights): restore them so that steps compare
    return logged


def test_unlabelled_frames_change_the_unsupervised_term(module: AngioModule, monkeypatch: pytest.MonkeyPatch):
    base = _logged_losses(module, _batch(), monkeypatch)
    again = _logged_losses(module, _batch(), monkeypatch)
    assert again["train_loss_unsup"] == pytest.approx(base["train_loss_unsup"], rel=1e-6)  # seeded: reproducible
    other = _batch()
    other["unlabelled"]["image_weak"] = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(9))
    other["unlabelled"]["image_strong"] = other["unlabelled"]["image_weak"].clone()
    changed = _logged_losses(module, other, monkeypatch)
    assert changed["train_loss_sup"] == pytest.approx(base["train_loss_sup"], rel=1e-6)  # labelled stream untouched
    assert changed["train_loss_unsup"] != pytest.approx(base["train_loss_unsup"], rel=1e-4)


def test_supervised_baseline_ignores_unlabelled_frames():
    torch.manual_seed(0)
    sup = AngioModule(tiny_config(method="supervised"))
    # Every method keeps an EMA teacher (the weights it is evaluated with), the baseline included.
    assert sup.teacher is not None and not sup.net.with_diffusion and sup.inference_net() is sup.teacher.module
    batch = _batch()
    strong = batch["unlabelled"]["image_strong"].requires_grad_(True)
    loss = sup.training_step(batch, 0)
    loss.backward()
    assert strong.grad is None


def test_mean_teacher_is_ema_of_student_and_not_optimised():
    torch.manual_seed(0)
    mt = AngioModule(tiny_config(method="mean_teacher", ema_decay=0.9))
    assert not any(n.startswith("teacher.") for n, _ in mt.stage_parameters(mt.stage))
    mt.teacher.update_parameters(mt.net)  # first update copies
    before = next(mt.teacher.module.parameters()).detach().clone()
    with torch.no_grad():
        for p in mt.net.parameters():
            p.add_(1.0)
    mt.teacher.update_parameters(mt.net)
    student = next(mt.net.parameters()).detach()
    assert torch.allclose(next(mt.teacher.module.parameters()), 0.9 * before + 0.1 * student, atol=1e-6)


def test_weak_view_same_geometry_for_image_and_mask():
    image = torch.zeros(1, 16, 16)
    label = torch.zeros(16, 16, dtype=torch.long)
    image[0, :, :4] = 1.0
    label[:, :4] = 3

    class Frames(torch.utils.data.Dataset):
        def __len__(self):
            return 1

        def __getitem__(self, i):
            return {"image": image, "label": label, "video": "v00", "frame": 0}

    views = LabelledViews(Frames(), weak_transform(rotate_limit=0.0, flip_p=1.0))[0]
    assert torch.equal(views["image"][0] > 0.5, views["label"] == 3)
    assert views["label"][:, -4:].eq(3).all()  # flipped
    unl = UnlabelledViews(Frames(), weak_transform(rotate_limit=0.0, flip_p=1.0), None)[0]
    assert "label" not in unl and torch.equal(unl["image_weak"], unl["image_strong"])
    assert torch.equal(unl["image_weak"], views["image"])


def test_grey_conversion_and_areas():
    rgb = np.zeros((2, 4, 4, 3), dtype=np.uint8)
    rgb[..., 0] = 255
    assert np.allclose(to_unit_grey(rgb), 1 / 3, atol=1e-6)
    u16 = np.array([[[100, 300]]], dtype=np.uint16)
    assert to_unit_grey(u16).tolist() == [[[0.0, 1.0]]]
    labels = np.zeros((2, 4, 4), dtype=np.uint8)
    labels[1, :2, :2] = 1
    names = ["background", "vessel", "catheter"]
    rows = class_areas(labels, names, (0.5, 0.25), [0.0, 66.7], SPACING_PATIENT)
    assert rows[1]["vessel_px"] == 4 and rows[1]["vessel_mm2"] == pytest.approx(0.5)
    assert rows[0]["vessel_px"] == 0 and "catheter_mm2" in rows[0] and rows[0]["spacing_source"] == "PixelSpacing"
    detector = class_areas(labels, names, (0.5, 0.25), None, SPACING_DETECTOR)
    assert detector[1]["vessel_mm2_detector"] == pytest.approx(0.5) and "vessel_mm2" not in detector[1]
    assert "vessel_mm2" not in class_areas(labels, names, None)[1]


def test_dicom_pixel_spacing_prefers_patient_plane():
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.ImagerPixelSpacing = [0.3, 0.3]
    assert dicom_pixel_spacing(ds) == ((0.3, 0.3), SPACING_DETECTOR)
    ds.EstimatedRadiographicMagnificationFactor = 1.5
    spacing, source = dicom_pixel_spacing(ds)
    assert spacing == pytest.approx((0.2, 0.2)) and source == SPACING_MAGNIFICATION
    ds.PixelSpacing = [0.25, 0.2]
    assert dicom_pixel_spacing(ds) == ((0.25, 0.2), SPACING_PATIENT)
    assert dicom_pixel_spacing(Dataset()) == (None, None)


def test_class_weighted_ce_matches_torch():
    logits = torch.randn(2, 5, 6, 6)
    labels = torch.randint(0, 5, (2, 6, 6))
    weights = [1.0, 2.0, 2.0, 2.0, 8.0]
    loss = L_.MaskedDiceCE(dice_weight=0.0, class_weights=weights)
    expected = torch.nn.functional.cross_entropy(logits, labels, weight=torch.tensor(weights))
    assert loss(logits, labels).item() == pytest.approx(expected.item(), rel=1e-5)


def test_teacher_updates_once_per_optimiser_step(monkeypatch: pytest.MonkeyPatch):
    torch.manual_seed(0)
    mt = AngioModule(tiny_config(method="mean_teacher"))
    step = {"global": 0}
    monkeypatch.setattr(AngioModule, "global_step", property(lambda self: step["global"]))
    updates: list[int] = []
    monkeypatch.setattr(mt.teacher, "update_parameters", lambda net: updates.append(step["global"]))
    for batch_idx in range(6):  # accumulate_grad_batches = 2: the optimiser steps after every second batch
        step["global"] = (batch_idx + 1) // 2
        mt.on_train_batch_end(None, None, batch_idx)
    assert updates == [1, 2, 3]


def _inference_parameters(module: AngioModule, x: torch.Tensor) -> set[str]:
    """Names of the student parameters the default predictor uses (the EMA teacher copies them)."""
    module.config.model.infer_with_teacher = False
    try:
        module.zero_grad()
        with torch.enable_grad():
            logits = AngioModule.predict_logits.__wrapped__(module, x, seed=0)
            logits.square().mean().backward()
    finally:
        module.config.model.infer_with_teacher = True
    used = {n for n, p in module.net.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    module.zero_grad()
    return used


def test_every_loss_term_reaches_the_parameters_used_at_inference(monkeypatch: pytest.MonkeyPatch):
    torch.manual_seed(0)
    rnpll = AngioModule(tiny_config(confidence=0.0, refine_start_step=0))
    monkeypatch.setattr(rnpll, "log_dict", lambda *a, **k: None)
    batch = _batch()
    assert rnpll.diffusion_predicts  # the default predictor is the diffusion model
    used = _inference_parameters(rnpll, batch["labelled"]["image"])
    # The predictor uses the segmenter (prior), E_x, E_y, the denoiser and D_y.
    assert {n.split(".")[0] for n in used} == {
        "segmenter",
        "image_encoder",
        "label_encoder",
        "denoiser",
        "label_decoder",
    }
    rnpll.loss_terms(batch)  # first step: the prototype bank is initialised from the labelled frames
    assert rnpll.prototypes_initialised.any()
    terms = rnpll.loss_terms(batch)
    names = ["loss_sup", "loss_unsup", "loss_diff", "loss_proto", "loss_proto_consistency", "loss_proto_align"]
    params = dict(rnpll.net.named_parameters())
    for name in names:
        assert float(terms[name]) > 0, name  # every term is active, the prototype loss included
        grads = torch.autograd.grad(
            terms[name], [params[n] for n in sorted(used)], retain_graph=True, allow_unused=True
        )
        reached = {n for n, g in zip(sorted(used), grads, strict=True) if g is not None and g.abs().sum() > 0}
        assert reached, f"{name} sends no gradient to the predictor"
        if name.startswith("loss_proto") or name == "loss_diff":
            # The diffusion and prototype terms act on the denoised latents that produce the predictions.
            assert any(n.startswith("denoiser.") for n in reached), name
            assert any(n.startswith("image_encoder.") for n in reached), name


def test_diffrect_has_no_prototype_terms_and_baselines_predict_with_the_segmenter():
    torch.manual_seed(0)
    diffrect = AngioModule(tiny_config(method="diffrect", confidence=0.0, refine_start_step=0))
    terms = diffrect.loss_terms(_batch())
    assert "loss_diff" in terms and not any(k.startswith("loss_proto") for k in terms)
    assert not diffrect.prototypes_initialised.any()
    mt = AngioModule(tiny_config(method="mean_teacher"))
    assert not mt.diffusion_predicts and set(mt.loss_terms(_batch())) >= {"loss_sup", "loss_unsup"}
    assert not AngioModule(tiny_config(predictor="segmenter")).diffusion_predicts


def test_decoder_bypass_is_a_config_key():
    torch.manual_seed(0)
    plain = AngioModule(tiny_config()).net
    skips = AngioModule(tiny_config(decoder_skips=True)).net
    assert not plain.label_decoder.use_skips and skips.label_decoder.use_skips
    x = torch.rand(1, 1, 32, 32)
    cond, feats = plain.encode_image(x)
    z = torch.randn(1, 8, 4, 4)
    # Without the bypass the logits depend on the latent only, not on the image features.
    assert torch.equal(plain.decode(z, feats), plain.decode(z, [f * 0 + 1 for f in feats]))
    cond, feats = skips.encode_image(x)
    assert not torch.equal(skips.decode(z, feats), skips.decode(z, [f * 0 + 1 for f in feats]))


def test_diffusion_noise_is_shared_along_a_video():
    torch.manual_seed(0)
    module = AngioModule(tiny_config()).eval()
    frames = np.repeat(np.random.default_rng(0).random((1, 32, 32), dtype=np.float32), 5, axis=0)
    out = module.segment_frames(frames, (32, 32), frame_batch=2, seed=3)
    assert all(np.array_equal(out[0], o) for o in out[1:])  # same frame, same noise, across chunks too
    logits = module.predict_logits(torch.from_numpy(frames[:3, None]), seed=3)
    assert torch.allclose(logits[0], logits[2])
    module.config.eval.shared_video_noise = False
    per_frame = module.predict_logits(torch.from_numpy(frames[:3, None]), seed=3)
    assert not torch.allclose(per_frame[0], per_frame[2])  # independent draws would flicker


def test_prototype_denoising_weights_and_relabels():
    labels = torch.tensor([[[1, 2], [0, 255]]])
    # One latent cell covering the 2x2 pixels, assigned to class 1 with probability 0.7, class 2 with 0.2.
    probs = torch.tensor([0.1, 0.7, 0.2, 0.0, 0.0]).view(1, 5, 1, 1)
    ready = torch.tensor([True, True, True, False, False])
    same, weights = L_.prototype_denoise(labels, probs, ready, "weight")
    assert torch.equal(same, labels)
    assert weights[0].flatten().tolist() == pytest.approx([0.7, 0.2, 0.1, 1.0])  # disagreeing pixels: down-weighted
    relabelled, ones = L_.prototype_denoise(labels, probs, ready, "relabel")
    assert relabelled.tolist() == [[[1, 1], [0, 255]]] and bool((ones == 1).all())
    background = torch.tensor([0.9, 0.05, 0.05, 0.0, 0.0]).view(1, 5, 1, 1)
    assert L_.prototype_denoise(labels, background, ready, "relabel")[0].tolist() == [[[255, 255], [0, 255]]]
    off, w = L_.prototype_denoise(labels, probs, ready, "none")
    assert torch.equal(off, labels) and bool((w == 1).all())


def test_corrupt_labels_fraction():
    labels = torch.zeros(2, 64, 64, dtype=torch.long)
    labels[:, 20:24] = 1
    labels[:, :, 40:42] = 3
    labels[:, :4] = 255
    g = torch.Generator().manual_seed(0)
    assert torch.equal(L_.corrupt_labels(labels, 0.0, g), labels)
    some = L_.corrupt_labels(labels, 0.3, torch.Generator().manual_seed(0))
    everything = L_.corrupt_labels(labels, 1.0, torch.Generator().manual_seed(0))
    changed = lambda out: float((out != labels).float().mean())  # noqa: E731
    assert 0 < changed(some) < changed(everything)
    assert bool((some[labels == 255] == 255).all())  # ignored pixels stay ignored


def test_validation_dice_is_the_evaluated_dice():
    from medml.metrics.segmentation import segmentation_scores
    from medml.pipelines.angio.module import frame_dice_sums

    rng = np.random.default_rng(0)
    pred = rng.integers(0, 5, (3, 16, 16))
    label = rng.integers(0, 5, (3, 16, 16))
    pred[0][pred[0] == 4] = 0  # frame 0: balloon missed
    label[1][label[1] == 4] = 0  # frame 1: balloon hallucinated
    label[2][label[2] == 3] = 0
    pred[2][pred[2] == 3] = 0  # frame 2: catheter in neither
    label[:, 0] = 255
    sums = frame_dice_sums(torch.from_numpy(pred), torch.from_numpy(label), 5)
    val = (sums[0] / sums[1].clamp_min(1)).numpy()
    per_frame = [segmentation_scores(p, t, 5, ignore_index=255) for p, t in zip(pred, label, strict=True)]
    for c in range(1, 5):
        scores = [s[f"class_{c}"]["dice"] for s in per_frame if s[f"class_{c}"]["present"]]
        assert sums[1, c] == len(scores) and val[c] == pytest.approx(np.mean(scores), abs=1e-6)  # MONAI: float32


def test_hd95_penalty_and_temporal_consistency():
    from medml.metrics.segmentation import segmentation_scores
    from medml.pipelines.angio.evaluate import penalise_missing_hd95, temporal_consistency

    target = np.zeros((20, 20), np.uint8)
    target[5:8, 5:15] = 1
    pred = target.copy()
    pred[15:17, 2:4] = 4  # a hallucinated balloon
    names = ["background", "vessel", "contrast_catheter", "catheter", "balloon"]
    scores = segmentation_scores(pred, target, 5, class_names=names)
    assert np.isnan(scores["balloon"]["hd95"])  # MONAI: no surface to measure
    penalise_missing_hd95(scores, names[1:], float(np.hypot(20, 20)))
    assert scores["balloon"]["hd95"] == pytest.approx(np.hypot(20, 20))
    assert scores["mean"]["hd95"] == pytest.approx((scores["vessel"]["hd95"] + np.hypot(20, 20)) / 2)
    assert np.isnan(scores["catheter"]["hd95"])  # absent from both: still not scored

    labels = np.stack([target, target, np.roll(target, 1, axis=0)])
    steady = temporal_consistency(labels.copy(), labels, [0, 1, 2], 5)
    assert steady["ratio"] == pytest.approx(1.0) and steady["pairs"] == 2
    flicker = labels.copy()
    flicker[1] = 0
    flicker[1, 10:12, 5:15] = 1
    jumpy = temporal_consistency(flicker, labels, [0, 1, 2], 5)
    assert jumpy["prediction_agreement"] < jumpy["ground_truth_agreement"] and jumpy["ratio"] < 0.5
    assert np.isnan(temporal_consistency(labels, labels, [0, 5, 10], 5)["ratio"])  # no adjacent frames


@pytest.mark.parametrize("strict", [True, False])
def test_cine_seg_pixel_measures(tmp_path, strict: bool):
    import pydicom

    from medml.io import write_dicom_seg
    from medml.io.synthetic import write_xa_cine
    from medml.pipelines.angio.outputs import segment_table

    frames = np.zeros((2, 16, 16), np.uint8)
    cine = pydicom.dcmread(write_xa_cine(tmp_path / "xa.dcm", frames, pixel_spacing_mm=0.3))
    assert "ImagerPixelSpacing" in cine and "PixelSpacing" not in cine
    masks = np.zeros((2, 16, 16), np.uint8)
    masks[:, 4:8, 4:8] = 4
    names = ["background", "vessel", "contrast_catheter", "catheter", "balloon"]
    seg = pydicom.dcmread(
        write_dicom_seg(cine, masks, segment_table(names), tmp_path / "a.dcm", strict_pixel_measures=strict)
    )
    shared = seg.SharedFunctionalGroupsSequence[0]
    if strict:  # detector-plane spacing is not relabelled as PixelSpacing, no slice thickness is invented
        assert "PixelMeasuresSequence" not in shared
    else:  # the historical behaviour other pipelines keep
        assert shared.PixelMeasuresSequence[0].PixelSpacing == [0.3, 0.3]
    cine.PixelSpacing = [0.2, 0.25]  # a calibrated cine passes its own spacing through, without a slice thickness
    seg = pydicom.dcmread(
        write_dicom_seg(cine, masks, segment_table(names), tmp_path / "b.dcm", strict_pixel_measures=strict)
    )
    measures = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    assert measures.PixelSpacing == [0.2, 0.25] and ("SliceThickness" in measures) == (not strict)


def test_supervised_warmup_gates_the_unlabelled_terms(monkeypatch: pytest.MonkeyPatch):
    """Before ``loss.warmup_fraction`` of the steps no pseudo-label term exists (and the teacher is not asked); after
    it the ramp starts from its beginning."""
    torch.manual_seed(0)
    mt = AngioModule(tiny_config(method="mean_teacher"))
    mt._total_steps = 100  # warm-up 20 steps (default 0.2), ramp over 40
    step = {"global": 0}
    monkeypatch.setattr(AngioModule, "global_step", property(lambda self: step["global"]))
    asked: list[int] = []
    teacher_view = mt.teacher_view
    monkeypatch.setattr(mt, "teacher_view", lambda x: asked.append(step["global"]) or teacher_view(x))
    step["global"] = 19
    assert mt.unsup_ramp() == 0.0
    assert "loss_unsup" not in mt.loss_terms(_batch()) and not asked
    step["global"] = 20
    assert mt.unsup_ramp() == pytest.approx(math.exp(-5))
    assert "loss_unsup" in mt.loss_terms(_batch()) and asked == [20]
    step["global"] = 60
    assert mt.unsup_ramp() == 1.0


def test_class_balanced_pseudo_label_weights():
    """A class the teacher pseudo-labels 4x as often as the labelled prior supports weighs 1/4; the others 1; and the
    pseudo-label loss drops the supervised class weights unless asked."""
    torch.manual_seed(0)
    mt = AngioModule(tiny_config(method="mean_teacher", num_classes=3, class_names=["bg", "a", "b"]))
    mt.train()
    labels = torch.zeros(1, 10, 10, dtype=torch.long)
    labels[0, 0, :] = 1  # pi = (0.8, 0.1, 0.1)
    labels[0, 1, :] = 2
    mt._update_prior(mt.label_prior, labels)
    pseudo = torch.zeros(1, 10, 10, dtype=torch.long)
    pseudo[0, :4, :] = 1  # q = (0.6, 0.4, 0.0) over the confident pixels
    pseudo[0, 9, :] = 255
    pseudo[0, 8, :9] = 0
    pseudo[0, 8, 9] = 2
    mt._update_prior(mt.pseudo_prior, pseudo)
    weight = mt.class_balance(pseudo)
    q1 = 40 / 90
    assert weight[0, 0, 0] == pytest.approx(0.1 / q1, rel=1e-5)  # over-predicted class: down-weighted
    assert weight[0, 5, 0] == 1.0 and weight[0, 8, 9] == 1.0 and weight[0, 9, 0] == 1.0  # capped at 1; ignored: 1
    mt.config.loss.pseudo_balance = "none"
    assert bool((mt.class_balance(pseudo) == 1).all())
    weighted = AngioModule(tiny_config(method="mean_teacher"))
    weighted.config.loss.class_weights = [1.0, 2.0, 2.0, 2.0, 8.0]
    assert AngioModule(weighted.config).unsup_loss.class_weights is None
    weighted.config.loss.unsup_class_weights = True
    assert AngioModule(weighted.config).unsup_loss.class_weights.tolist() == [1.0, 2.0, 2.0, 2.0, 8.0]


def test_distribution_alignment_raises_an_under_predicted_class():
    """With ``loss.distribution_alignment`` the teacher's probabilities are scaled by pi_c / p_bar_c and renormalised:
    a class the teacher predicts at a seventh of its labelled frequency gains confident pixels; off, nothing changes."""
    torch.manual_seed(0)
    mt = AngioModule(tiny_config(method="mean_teacher", num_classes=3, class_names=["bg", "a", "b"]))
    mt.train()
    probs = torch.zeros(1, 3, 10, 10)
    probs[:, 0], probs[:, 1], probs[:, 2] = 0.89, 0.10, 0.01
    probs[0, :, 0, 0] = torch.tensor([0.55, 0.0, 0.45])  # ambiguous between bg and b; p_bar_b = 0.0144
    assert torch.equal(mt.aligned(probs), probs) and mt.teacher_prior.sum() == 0  # off by default
    mt.config.loss.distribution_alignment = True
    labels = torch.zeros(1, 10, 10, dtype=torch.long)
    labels[0, 0, :] = 1
    labels[0, 1, :] = 2  # pi = (0.8, 0.1, 0.1)
    mt._update_prior(mt.label_prior, labels)
    out = mt.aligned(probs)
    p_bar = probs.mean(dim=(0, 2, 3))
    assert torch.allclose(mt.teacher_prior, p_bar)
    expected = probs[0, :, 0, 0] * torch.tensor([0.8, 0.1, 0.1]) / p_bar
    assert torch.allclose(out[0, :, 0, 0], expected / expected.sum(), atol=1e-6)
    assert torch.allclose(out.sum(dim=1), torch.ones(1, 10, 10))
    labels_before, confident_before, _ = L_.confident_pseudo_labels(probs, 0.8)
    labels_after, confident_after, _ = L_.confident_pseudo_labels(out, 0.8)
    assert labels_before[0, 0, 0] == 0 and not confident_before[0, 0, 0]
    assert labels_after[0, 0, 0] == 2 and confident_after[0, 0, 0]  # the under-predicted class is now taught


def test_refine_start_fraction_and_gate(monkeypatch: pytest.MonkeyPatch):
    """Diffusion pseudo-labels from ``refine_start_fraction`` of the run, and with ``refine_gate`` only while the
    teacher's diffusion predictor scores at least its segmenter on the labelled batch."""
    torch.manual_seed(0)
    rnpll = AngioModule(tiny_config(refine_start_fraction=0.5, refine_gate=True))
    rnpll._total_steps = 100
    step = {"global": 0}
    monkeypatch.setattr(AngioModule, "global_step", property(lambda self: step["global"]))
    assert rnpll.refine_start() == 50
    step["global"] = 49
    rnpll.refine_scores.copy_(torch.tensor([0.3, 0.6]))
    assert not rnpll.refine_active()  # before the start, whatever the scores
    step["global"] = 50
    assert rnpll.refine_active()
    rnpll.refine_scores.copy_(torch.tensor([0.6, 0.3]))
    assert not rnpll.refine_active()  # the diffusion predictor is worse: the segmenter keeps the pseudo-labels
    assert not rnpll.teacher_view(torch.rand(2, 1, 32, 32))["refined"]
    batch = _batch()
    rnpll.train()
    rnpll.refine_scores.fill_(-1.0)
    rnpll.loss_terms(batch)  # past the warm-up and the start: the gate scores are measured on the labelled batch
    assert bool((rnpll.refine_scores >= 0).all()) and bool((rnpll.refine_scores <= 1).all())
    ungated = AngioModule(tiny_config(refine_start_step=0))
    assert ungated.refine_active() and ungated.refine_start() == 0


def test_pseudo_label_priors_and_gate_scores_are_checkpointed():
    """The class priors of the balanced pseudo-label weights and the refine gate's Dice EMAs are part of the
    module's state, like the prototype bank, so a resumed run continues them instead of starting them again."""
    torch.manual_seed(0)
    trained = AngioModule(tiny_config())
    trained.label_prior.copy_(torch.tensor([0.7, 0.1, 0.1, 0.05, 0.05]))
    trained.pseudo_prior.copy_(torch.tensor([0.8, 0.1, 0.05, 0.05, 0.0]))
    trained.teacher_prior.copy_(torch.tensor([0.8, 0.1, 0.05, 0.05, 0.0]))
    trained.refine_scores.copy_(torch.tensor([0.6, 0.4]))
    resumed = AngioModule(tiny_config())
    resumed.load_state_dict(trained.state_dict())
    for name in ("label_prior", "pseudo_prior", "teacher_prior", "refine_scores"):
        assert torch.equal(getattr(resumed, name), getattr(trained, name)), name


def test_checkpoint_from_before_the_training_emas_were_saved_still_loads():
    """A state dict without the pseudo-label priors and gate scores (checkpoints written before they were saved)
    loads with them at their initial values; every weight still has to fit."""
    torch.manual_seed(0)
    trained = AngioModule(tiny_config())
    trained.label_prior.fill_(0.2)
    old = {k: v for k, v in trained.state_dict().items() if k not in TRAINING_EMAS}
    loaded = AngioModule(tiny_config())
    loaded.load_state_dict(old)
    assert loaded.label_prior.sum() == 0 and bool((loaded.refine_scores == -1).all())
    assert torch.equal(loaded.prototypes, trained.prototypes)
    first = next(iter(trained.net.state_dict()))
    with pytest.raises(RuntimeError):
        loaded.load_state_dict({k: v for k, v in old.items() if k != "net." + first})
