"""Typed configuration: one YAML file per preset in ``ctsynth/configs/``, loaded into dataclasses.

``load_config("lung")`` reads the packaged preset; ``load_config("path/to/my.yaml")`` reads a user file.
Unknown keys are an error (a typo must not silently fall back to a default). The whole config is saved as
JSON next to every cache and checkpoint so a run is reproducible and a generated volume returns in HU.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import CTSynthError

PRESET_DIR = Path(__file__).parent / "configs"
HELD_OUT_FRACTION = 0.2  # patients kept out of training (prepare) and of the reference (evaluate of a folder)


@dataclass
class DataConfig:
    """What `prepare` makes of each study. Shapes are (z, y, x)."""

    mode: str = "lung"  # "lung": crop to the lungs' bounding box; "full": whole field of view
    shape: tuple[int, int, int] = (48, 240, 360)
    hu_window: tuple[float, float] = (-1024.0, 1500.0)  # clipped, then mapped linearly to [-1, 1]
    lung_margin_mm: float = 10.0
    labels: tuple[str, ...] = ("normal", "covid")  # class index = position in this tuple
    held_out_fraction: float = HELD_OUT_FRACTION  # studies (split by patient) kept out of training (ctsynth.split)


@dataclass
class AutoencoderConfig:
    """Stage 1: the space the diffusion model works in. ``kind: haar`` (default): the lossless 3D Haar
    wavelet packet of ``haar_levels`` levels, nothing to train (``ctsynth.models.wavelet``). ``kind: kl``:
    MONAI AutoencoderKL + PatchDiscriminator trained on random patches (every other key of this section)."""

    kind: str = "haar"  # "haar" or "kl"
    haar_levels: int = 2  # haar: 8**levels channels at 1/2**levels of the size per axis
    channels: tuple[int, ...] = (32, 64, 64)
    latent_channels: int = 4
    num_res_blocks: int = 1
    attention_levels: tuple[bool, ...] = (False, False, False)
    patch: tuple[int, int, int] = (32, 96, 96)
    batch_size: int = 2
    lr: float = 1e-4
    steps: int = 20000
    kl_weight: float = 1e-6
    adv_weight: float = 0.01
    adv_start_step: int = 2000
    disc_channels: int = 32
    disc_layers: int = 3
    norm_num_groups: int = 32  # GroupNorm groups; every entry of ``channels`` must be a multiple of it
    nonlocal_attn: bool = False  # self-attention at the lowest level (quadratic in latent voxels: small shapes only)
    eval_studies: int = 8  # held-out studies reconstructed at the end of the stage for PSNR/SSIM


@dataclass
class DiffusionConfig:
    """Stage 2: MONAI DiffusionModelUNet on the frozen autoencoder's latents, class-conditional."""

    channels: tuple[int, ...] = (64, 128, 256)
    attention_levels: tuple[bool, ...] = (False, True, True)
    num_res_blocks: int = 2
    num_head_channels: int = 32
    scheduler: str = "rflow"  # "rflow" (MONAI RFlowScheduler) or "ddim" (MONAI DDIMScheduler)
    train_timesteps: int = 1000
    sample_steps: int = 30
    guidance: float = 2.0
    label_dropout: float = 0.15  # classifier-free guidance: fraction of samples trained unconditionally
    batch_size: int = 2
    lr: float = 1e-4
    steps: int = 40000
    ema_decay: float = 0.999
    norm_num_groups: int = 32
    beta_schedule: str = "scaled_linear_beta"  # DDPM noise schedule used to train for DDIM sampling
    rflow_timestep_sampling: str = "logit-normal"  # "uniform" or "logit-normal" (RFlowScheduler sample_method)
    ddim_eta: float = 0.0  # 0: deterministic DDIM; > 0 adds per-sample-seeded noise at each step
    use_flash_attention: bool = False  # torch scaled_dot_product_attention in the UNet's attention blocks
    # The wavelet cascade (ctsynth.models.cascade; needs autoencoder.kind haar): the network above generates
    # the Haar low-pass band only, and one detail UNet per level adds that level's seven detail bands.
    cascade: bool = False
    # Cascade: the base model also generates the coarsest level's seven detail bands (8 channels on the grid of
    # LL_L, sampled jointly), so that level's structure is drawn, not regressed; detail UNets remain for the
    # finer levels only (docs/quality.md).
    base_details: bool = False
    detail_channels: tuple[int, ...] = (16, 32, 64)  # detail UNets: fully convolutional, no attention
    detail_patch: tuple[int, int, int] = (0, 0, 0)  # their training patch on their level's grid (0: whole axis)
    detail_every: int = 1  # detail UNets train on every n-th sample only (they cost more than the base)
    detail_cond_noise: float = 0.1  # Gaussian jitter of their (standardised) condition in training
    detail_objective: str = "regression"  # "regression": one pass, the bands' conditional mean; "gaussian": that
    # mean plus noise of a predicted per-voxel variance (one pass); "energy": noise mapped to the bands in one
    # pass, trained with the energy score (a draw, not the mean); "flow": sampled by rectified flow
    detail_noise: float = 1.0  # gaussian: scale of the added noise; energy: of the input noise (0: no draw)
    # regression, at sampling: each level's predicted bands times this (level 1, the finest, first; missing
    # levels 1). The conditional mean lacks the energy of what the band below does not decide (vessels, edges'
    # exact place); a gain restores part of it, like unsharp masking per wavelet level (docs/quality.md).
    detail_gain: tuple[float, ...] = ()
    # regression, at sampling: each level's bands plus this times residuals drawn from a bank of the detail
    # model's residuals on the training volumes, fitted after training (level 1 first; missing levels 0: none).
    # What the conditional mean leaves out, with real regions' sparsity and edges (models/residuals.py).
    detail_residuals: tuple[float, ...] = ()
    # ... drawn as patches of this many blocks per axis, matched on the band under them (1: block by block)
    detail_residual_patch: int = 4
    # Cascade, at sampling: after each level's details are merged, no voxel lies below the lowest block mean of
    # the 3^3 neighbourhood of its block in the band below (a lower anti-ringing clamp: no dark rim where the
    # details undershoot next to a bright wall; models/cascade.py neighbourhood_floor, docs/quality.md).
    detail_floor: bool = False
    # regression: weight of a conditional patch critic's least-squares adversarial loss on each level's bands
    # (pix2pix / SRGAN: the mean alone smears what the band below does not decide); 0: off
    detail_adv_weight: float = 0.0
    detail_critic_channels: int = 16  # the critics' first layer width (MONAI PatchDiscriminator, 2 layers)
    # Cascade training: each training volume shifted by up to (z, y, x) whole voxels, drawn per sample, against
    # memorising few crops (ctsynth.data.random_shifts; docs/quality.md). (0, 0, 0): off.
    augment_shift: tuple[int, int, int] = (0, 0, 0)
    # Cascade: the base model's training volumes scaled about their centre by a factor in [1 - a, 1 + a], drawn
    # per sample (ctsynth.data.random_zooms); the detail models see them unzoomed. 0: off.
    augment_zoom: float = 0.0
    # Cascade: each sample's voxel spacing is drawn from the training crops' (per class) and given to the base
    # model as a condition; generated volumes carry it (models/spacing.py). False: every volume at the median.
    spacing_condition: bool = False
    # Cascade: the detail models' training volumes mirrored along each enabled axis (z, y, x) with probability
    # 1/2, drawn per sample (ctsynth.data.random_flips); the base model sees them as they are. All off: none.
    augment_detail_flip: tuple[bool, bool, bool] = (False, False, False)
    # Cascade: the base model trains on the first this-many passes over the training set only, then the detail
    # models train alone; its weights and EMA stay as they were (docs/training.md, quality.md). 0: no bound.
    base_max_epochs: float = 0.0
    # Cascade: after training, this many volumes per class are sampled (fixed seeds) to fit one monotone intensity
    # curve from their pooled quantiles to the training volumes'; every sample goes through it (a smoothing
    # detail model raises the lungs' median HU; models/calibration.py, docs/quality.md). 0: off.
    calibration_samples: int = 0
    # Cascade: the voxels the curve is fitted on, on both sides: "all", or "body" (inside each volume's body mask,
    # ctsynth.segment.body_mask: the outside air, whose border the details smooth, is left out).
    calibration_region: str = "all"


@dataclass
class GanConfig:
    """The Wu et al. 2016 3D-GAN baseline (``model: gan``; ``ctsynth.models.gan``, ``ctsynth.train.gan``). The
    defaults are the paper's; ``width`` < 1 narrows every hidden layer (a CPU run)."""

    z_dim: int = 200
    width: float = 1.0  # multiplier of the hidden channels 512-256-128-64
    conditional: bool = True  # class-conditional (data.labels); false: the paper's unconditional GAN
    batch_size: int = 100
    steps: int = 20000
    lr_g: float = 0.0025
    lr_d: float = 1e-5
    beta1: float = 0.5
    d_accuracy_max: float = 0.8  # the discriminator is updated only while its accuracy on the batch is <= this


@dataclass
class SrConfig:
    """3D CT super-resolution (``model: sr``; ``ctsynth.models.sr``, ``ctsynth.train.sr``): one network
    in-plane and one in depth, each trained on random patches of the cache's training volumes degraded as
    a scanner would. A factor of 1 trains no network for that axis. An ``sr`` run takes the data section of
    the cache it trains on, so it trains on any cache."""

    inplane_factor: int = 4
    depth_factor: int = 2
    channels: int = 32  # of every convolution (Georgescu et al. 2020 use 32)
    patch: tuple[int, int, int] = (16, 64, 64)  # the fine patch (z, y, x): a multiple of the factors
    batch_size: int = 8
    lr: float = 1e-4
    steps: int = 20000  # per network
    intermediate_weight: float = 1.0  # of the loss after the sub-pixel layer (the output's weight is 1)
    eval_studies: int = 8  # held-out studies measured at the end (metrics.json: PSNR vs trilinear, cubic)


@dataclass
class TrainConfig:
    """How the loops run (Lightning Fabric)."""

    seed: int = 0
    precision: str = "bf16-mixed"
    grad_accum: int = 1
    grad_checkpointing: bool = False
    checkpoint_every: int = 500
    keep_last: int = 3
    log_every: int = 10
    nan_patience: int = 5  # skipped steps (non-finite loss or gradient) in a row before restoring a checkpoint
    num_workers: int = 2
    max_grad_norm: float = 1.0  # gradient clipping (0 disables)
    augment: bool = True  # stage 1 patches: ctsynth.data.Augment (small affine + intensity jitter, no flip)
    weight_decay: float = 0.0
    # Wall-clock limits (0 = none), counted over resumes: the diffusion stage, the GAN, and each
    # super-resolution network, ends as finished at the first step past ``time_budget_min`` (so the number
    # of steps depends on the machine); a checkpoint is also written every ``checkpoint_every_min`` in every
    # trained stage (learning curves; cluster time limits).
    time_budget_min: float = 0.0
    checkpoint_every_min: float = 0.0
    # The learning rate falls linearly to 0 over this last fraction of a stage (warmup-stable-decay without
    # the warm-up), of its steps or of its time budget, whichever ends it first: train/runner.py lr_decay.
    # 0: a constant rate.
    lr_decay_fraction: float = 0.0


MODELS = ("diffusion", "gan", "sr")


@dataclass
class Config:
    name: str = "custom"
    model: str = "diffusion"  # "diffusion": stage 1 + latent diffusion; "gan": the Wu et al. 3D-GAN baseline
    data: DataConfig = field(default_factory=DataConfig)
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    gan: GanConfig = field(default_factory=GanConfig)
    sr: SrConfig = field(default_factory=SrConfig)

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise CTSynthError(f"unknown model '{self.model}'", fix=f"use one of {list(MODELS)}")

    def to_dict(self) -> dict[str, Any]:
        """Every section; a diffusion config leaves out ``model`` and ``gan`` (added later), so that the
        configs, runs and hashes made before them stay as they were."""
        values = dataclasses.asdict(self)
        if self.model == "diffusion" and self.gan == GanConfig():
            del values["model"], values["gan"]
        if self.model != "sr" and self.sr == SrConfig():  # likewise for ``sr`` (added after ``gan``)
            del values["sr"]
        return values

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def data_hash(self) -> str:
        """Hash of the data section: a cache made with another data config is not reused."""
        text = json.dumps(dataclasses.asdict(self.data), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def hash(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    if not isinstance(values, dict):
        raise CTSynthError(f"section '{where}' must be a mapping, got {type(values).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise CTSynthError(f"unknown key(s) {unknown} in section '{where}'",
                           fix=f"valid keys are {sorted(known)}")
    kwargs = {}
    for key, value in values.items():
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = _build(hint, value or {}, f"{where}.{key}" if where else key)
        elif typing.get_origin(hint) is tuple and isinstance(value, (list, tuple)):
            kwargs[key] = tuple(_check_scalar(typing.get_args(hint)[0], v, f"{where}.{key}") for v in value)
        else:
            kwargs[key] = _check_scalar(hint, value, f"{where}.{key}" if where else key)
    return cls(**kwargs)


def _check_scalar(hint: Any, value: Any, where: str) -> Any:
    """Type-check one YAML scalar against its dataclass field type (ints may stand for floats)."""
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool) and (not isinstance(value, hint) or (hint is int and isinstance(value, bool))):
        raise CTSynthError(f"'{where}' must be {hint.__name__}, got {value!r}",
                           fix=f"write a{'n' if hint is int else ''} {hint.__name__} value")
    return value


def config_from_dict(values: dict[str, Any]) -> Config:
    """Build a Config from a plain dict (as saved in JSON next to a checkpoint or cache)."""
    return _build(Config, values, "")


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_config(name_or_path: str | Path) -> Config:
    """Load a packaged preset by name (``tiny``, ``demo``, ``lung``, ``full``) or a YAML file by path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = PRESET_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            raise CTSynthError(f"no preset named '{name_or_path}'",
                               fix=f"use one of {preset_names()} or a path to a YAML file")
    if not path.is_file():
        raise CTSynthError("config file not found", path, "give an existing YAML file or a preset name")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise CTSynthError(f"not valid YAML ({exc})", path, "fix the YAML syntax") from exc
    values.setdefault("name", path.stem)
    try:
        return config_from_dict(values)
    except CTSynthError as exc:
        raise CTSynthError(exc.problem, path, exc.fix) from exc
