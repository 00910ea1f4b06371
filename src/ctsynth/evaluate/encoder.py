"""Learned feature spaces for the fidelity and memorisation metrics, with no downloaded weights.

- :class:`TrainedEncoder`: a small MONAI ``AutoEncoder`` trained here, self-supervised (denoising
  reconstruction with random flips, :mod:`.small_net`), on the real training thumbnails only. Its features are the per-channel
  mean and standard deviation of the bottleneck activations (64 numbers). Seeded: same data and seed, same
  features (CPU).
- :class:`ExternalEncoder`: a MONAI 3D ResNet (MedicalNet layout: ``conv1``, ``layer1..4``; ``module.``
  prefixes are stripped) whose weights the user gives as a ``.safetensors`` file; depth, block type and
  shortcut type are read from the weight names, loading never unpickles. Features are the global-average
  pooled last layer of the whole evaluation-grid volume, z-scored per volume as MedicalNet was trained.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import CTSynthError
from ..preprocess.window import normalise
from .small_net import ENCODER_FLIPS, train_small_net

ENCODER_WINDOW = (-1024.0, 600.0)  # lung to dense soft tissue: where chest CT anatomy has its contrast


def thumbs_to_tensor(thumbs: np.ndarray):
    import torch

    return torch.from_numpy(normalise(thumbs, ENCODER_WINDOW))[:, None]


class TrainedEncoder:
    """A denoising autoencoder trained on real training thumbnails; ``features`` gives 64-d vectors."""

    def __init__(self, net) -> None:
        self.net = net

    @staticmethod
    def build():
        from monai.networks.nets import AutoEncoder

        return AutoEncoder(spatial_dims=3, in_channels=1, out_channels=1, channels=(8, 16, 32),
                           strides=(2, 2, 2), num_res_units=1, norm=None)

    @classmethod
    def fit(cls, thumbs: np.ndarray, *, steps: int = 300, batch: int = 8, seed: int = 0,
            lr: float = 2e-3) -> "TrainedEncoder":
        import torch

        def denoising(net, x, idx, gen):
            return torch.nn.functional.mse_loss(net(x + 0.1 * torch.randn(x.shape, generator=gen)), x)

        return cls(train_small_net(cls.build, thumbs_to_tensor(thumbs), denoising, steps=steps, batch=batch,
                                   seed=seed, lr=lr, flips=ENCODER_FLIPS))

    def features(self, thumbs: np.ndarray, batch: int = 32) -> np.ndarray:
        import torch

        data = thumbs_to_tensor(thumbs)
        out = []
        with torch.no_grad():
            for start in range(0, len(data), batch):
                h = self.net.intermediate(self.net.encode(data[start:start + batch]))
                flat = h.flatten(2)
                out.append(torch.cat([flat.mean(2), flat.std(2)], dim=1).numpy())
        return np.concatenate(out).astype(np.float64)


_RESNET_DEPTHS = {("basic", (1, 1, 1, 1)): 10, ("basic", (2, 2, 2, 2)): 18, ("basic", (3, 4, 6, 3)): 34,
                  ("bottleneck", (3, 4, 6, 3)): 50, ("bottleneck", (3, 4, 23, 3)): 101,
                  ("bottleneck", (3, 8, 36, 3)): 152, ("bottleneck", (3, 24, 36, 3)): 200}


class ExternalEncoder:
    """A MONAI 3D ResNet from a user's safetensors file (e.g. MedicalNet weights converted to safetensors)."""

    def __init__(self, net, name: str) -> None:
        self.net = net
        self.name = name

    @classmethod
    def load(cls, path: str | Path) -> "ExternalEncoder":
        from monai.networks.nets import ResNet
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path = Path(path)
        fix = "give a .safetensors file holding a MONAI/MedicalNet 3D ResNet state dict"
        if not path.is_file():
            raise CTSynthError("encoder weights file not found", path, fix)
        try:
            state = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise CTSynthError(f"not a readable safetensors file ({exc})", path, fix) from exc
        state = {k.removeprefix("module."): v for k, v in state.items() if not k.removeprefix("module.").startswith("fc.")}
        conv1 = state.get("conv1.weight")
        if conv1 is None or conv1.ndim != 5:
            raise CTSynthError("no 3D 'conv1.weight' in the weights: not a 3D ResNet", path, fix)
        block = "bottleneck" if any(k.endswith(".conv3.weight") for k in state) else "basic"
        layers = tuple(len({k.split(".")[1] for k in state if k.startswith(f"layer{i}.")}) for i in range(1, 5))
        depth = _RESNET_DEPTHS.get((block, layers))
        if depth is None:
            raise CTSynthError(f"unrecognised ResNet layout ({block} blocks {layers})", path, fix)
        has_downsample = any(".downsample." in k for k in state)
        net = ResNet(block, list(layers), [64, 128, 256, 512], spatial_dims=3, n_input_channels=int(conv1.shape[1]),
                     conv1_t_size=tuple(int(s) for s in conv1.shape[2:]), conv1_t_stride=2,
                     shortcut_type="B" if has_downsample else "A",
                     bias_downsample=any(k.endswith("downsample.0.bias") for k in state), feed_forward=False)
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise CTSynthError(f"weights do not match a resnet{depth} ({str(exc).splitlines()[0]})", path,
                               fix) from exc
        net.eval()
        return cls(net, f"resnet{depth} ({path.name})")

    def features(self, hu: np.ndarray) -> np.ndarray:
        """Feature vector of one evaluation-grid volume (HU)."""
        import torch

        x = np.asarray(hu, dtype=np.float32)
        x = (x - x.mean()) / (x.std() + 1e-6)
        t = torch.from_numpy(x)[None, None]
        channels = self.net.conv1.in_channels
        with torch.no_grad():
            out = self.net(t.expand(1, channels, *x.shape).contiguous())
        return out[0].numpy().astype(np.float64)
