"""Where a model comes from: a directory, a hub id or the embedded default; the checks a local folder
passes before anything in it is read; the device and dtype to load it with.

No pipeline class is imported here, so that both pipelines and :mod:`.loading` can use it."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Mapping
from pathlib import Path

import diffusers
import torch

from .. import limits
from ..errors import ModelLoadError, UserInputError
from ..values import check_config_numbers

#: Folder of the model shipped inside the package (``--model default``).
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent.parent / "assets" / "default-model"

#: The precision argument of diffusers' ``from_pretrained``: ``dtype`` from diffusers 0.40 on (which
#: deprecates ``torch_dtype``); older releases take only ``torch_dtype`` and ignore ``dtype``.
DTYPE_ARG = "dtype" if tuple(int(p) for p in diffusers.__version__.split(".")[:2]) >= (0, 40) else "torch_dtype"


#: Names of the JSON configuration files diffusers and transformers read from a pipeline folder.
_CONFIG_NAMES = ("model_index.json", "config.json")


def _is_config(name: str) -> bool:
    return name in _CONFIG_NAMES or name.endswith("_config.json")


def check_model_folder(folder: str | os.PathLike) -> None:
    """Refuse a local pipeline folder that would make loading it block or over-allocate, before it is read.

    * Every file of the folder and of its component subfolders (``unet/``, ``scheduler/``…)
      must be a regular file: a FIFO blocks the reader, a device such as ``/dev/zero``
      never ends.
    * Configuration files (``model_index.json``, ``*/config.json``, ``*/*_config.json``)
      are at most :data:`~puppet_master.limits.MAX_JSON_BYTES`.
    * A scheduler's ``num_train_timesteps`` is a whole number from 1 to
      :data:`~puppet_master.limits.MAX_TRAIN_TIMESTEPS` (diffusers allocates arrays of that length).
    * A torch weight file (``.bin``, ``.pt``…) declares no more tensor data than it holds
      (:func:`~puppet_master.limits.torch_payload_bytes`; ``torch.save`` never compresses).

    Raises:
        ModelLoadError: naming the file and the problem.
    """
    root = Path(folder)
    try:
        for top in [root, *sorted(p for p in root.iterdir() if not p.name.startswith(".") and p.is_dir())]:
            for entry in sorted(top.iterdir()):
                if entry.name.startswith(".") or entry.is_dir():
                    continue
                try:
                    st = os.stat(entry)
                except FileNotFoundError:
                    continue  # a dangling link: diffusers reports it if it needs the file
                if not stat.S_ISREG(st.st_mode):
                    raise ModelLoadError(f"model file {str(entry)!r} is not a file (it is a "
                                         f"{limits.file_kind(st.st_mode)}): not a model folder")
                if _is_config(entry.name):
                    _check_config_file(entry)
                elif entry.suffix in _TORCH_SUFFIXES:
                    _check_torch_file(entry, st.st_size)
    except OSError as exc:
        raise ModelLoadError(f"cannot read model folder {str(root)!r}: {exc.strerror or exc}") from None


#: Weight files diffusers and transformers read with ``torch.load(weights_only=True)``.
_TORCH_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


def _check_torch_file(path: Path, size: int) -> None:
    """``torch.save`` stores tensor data uncompressed: a file declaring more than it holds (a deflated zip
    record inflating to gigabytes) is refused before ``torch.load`` allocates it."""
    try:
        with limits.open_regular(path, "model file") as fh:
            declared = limits.torch_payload_bytes(fh, f"model file {str(path)!r}")
    except UserInputError as exc:
        raise ModelLoadError(str(exc)) from None
    if declared > size + (1 << 20):
        raise ModelLoadError(f"model file {str(path)!r} declares {limits.format_bytes(declared)} of tensor data but "
                             f"holds {limits.format_bytes(size)} (compressed records): not a weight file torch.save "
                             "wrote")


def _check_config_file(path: Path) -> None:
    try:
        raw = limits.read_bytes_bounded(path, "model config", limits.current("MAX_JSON_BYTES"), "MAX_JSON_BYTES")
    except UserInputError as exc:
        raise ModelLoadError(str(exc)) from None
    if path.name != "scheduler_config.json":
        return
    try:
        config = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        detail = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise ModelLoadError(f"scheduler config {str(path)!r} is not valid JSON: {detail}") from None
    steps = config.get("num_train_timesteps", 1) if isinstance(config, dict) else 1
    limit = limits.current("MAX_TRAIN_TIMESTEPS")
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= limit:
        shown = repr(steps) if isinstance(steps, (int, float)) and abs(steps) < 1e30 else "a huge or non-numeric value"
        raise ModelLoadError(f"scheduler config {str(path)!r}: num_train_timesteps must be a whole number from 1 to "
                             f"{limit}, got {shown} ({limits.raise_hint('MAX_TRAIN_TIMESTEPS')})")


def resolve_model(model: str | os.PathLike | None) -> str:
    """Turn ``--model`` into a directory or hub id.

    ``None`` and ``"default"`` mean the embedded default model.

    Raises:
        ModelLoadError: the default model is not installed, or a local-looking path
            does not exist / is not a pipeline folder.
    """
    if model is None or str(model) == "default":
        if not (DEFAULT_MODEL_DIR / "model_index.json").is_file():
            raise ModelLoadError(
                "no default model is installed in this package: pass --model DIR (a folder saved by "
                "save_pretrained, e.g. made by `puppet-master random-model DIR` for a smoke test)"
            )
        return str(DEFAULT_MODEL_DIR)
    text = str(model)
    path = Path(text).expanduser()
    is_hub_id = not path.exists() and text.count("/") == 1 and not text.startswith((".", "/", "~"))
    if not is_hub_id:
        if not path.is_dir():
            raise ModelLoadError(f"model folder {text!r} does not exist")
        if not (path / "model_index.json").exists():
            raise ModelLoadError(f"model folder {text!r} has no model_index.json: it was not saved by save_pretrained")
        check_model_folder(path)
        return str(path)
    return text  # a hub id such as "user/puppet-master"


#: Device types a pipeline can run on (``meta`` holds no data; others are not supported).
DEVICE_TYPES = ("cpu", "cuda", "mps")


def check_device(device: str | torch.device) -> torch.device:
    """The ``torch.device`` of ``--device``, if this machine has it.

    Raises:
        ModelLoadError: not a device name, a type other than :data:`DEVICE_TYPES`
            (``meta`` computes nothing), CUDA or MPS asked for but not available, or a
            GPU index beyond the GPUs present.
    """
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ModelLoadError(f"unknown device {device!r}: {' '.join(str(exc).split())}; use cpu or cuda") from None
    if dev.type not in DEVICE_TYPES:
        raise ModelLoadError(f"--device {device!r}: a pipeline runs on {', '.join(DEVICE_TYPES)} only; use --device cpu "
                             "or cuda")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelLoadError("--device cuda was asked for but no CUDA GPU is available: use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ModelLoadError(f"--device {device!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s), "
                                 f"numbered from 0")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ModelLoadError("--device mps was asked for but Apple's MPS is not available: use --device cpu")
    return dev


def device_and_dtype(device: str | torch.device, torch_dtype: torch.dtype | None) -> tuple[torch.device, dict]:
    """The device to load onto and ``from_pretrained``'s dtype arguments.

    ``torch_dtype=None`` means float32 on a CPU (weights may be stored in float16, as the
    default model's are; CPUs compute in float32) and the stored dtype elsewhere.

    Raises:
        ModelLoadError: an unknown device, or CUDA asked for without a CUDA GPU.
    """
    dev = check_device(device)
    if torch_dtype is None and dev.type == "cpu":
        torch_dtype = torch.float32
    return dev, ({DTYPE_ARG: torch_dtype} if torch_dtype is not None else {})


def check_component_configs(pipe, model: str | os.PathLike | None) -> None:
    """Refuse a loaded pipeline whose components' configs hold non-finite or out-of-range numbers.

    :func:`~puppet_master.values.check_config_numbers` on the pipeline's own config
    (``model_index.json``) and every component's config: a VAE with
    ``scaling_factor: NaN`` loads without complaint and gives a black video.

    Raises:
        ModelLoadError: naming the model, the file and the entry.
    """
    name = str(model or "default")
    check_config_numbers(pipe.config, f"model {name!r} (model_index.json)", ModelLoadError)
    for component, module in pipe.components.items():
        config = getattr(module, "config", None)
        if isinstance(config, Mapping):
            check_config_numbers(config, f"model {name!r} ({component}/config.json)", ModelLoadError)
