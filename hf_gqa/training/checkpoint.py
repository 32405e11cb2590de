"""Checkpoints that survive a kill, that load no pickle, and the RNG discipline that makes a resumed run repeat the
uninterrupted one.

A checkpoint is a folder `OUTPUT/checkpoints/step-N`, written as `.step-N.tmp` and renamed only when complete, so a
kill during the write leaves no half checkpoint behind that `latest` could pick. It holds:

- `model.safetensors`, `optimizer.bin`, `scheduler.bin` (and `scaler.pt` with fp16): `accelerator.save_state`'s
  files for the model, the optimizer and the learning-rate schedule;
- `hf_gqa_state.json`: hf-gqa's own state, plain data: the `Progress` counter and the training hooks' states
  (`HookStates`);
- `rng_state_P.safetensors`, one per process: the torch, CUDA, Python and NumPy random states, as tensors and JSON.

Trust model. Loading a pickle can run any code, so a resume loads none that could do so: `model.safetensors`,
`rng_state_P.safetensors` and `hf_gqa_state.json` are data formats, and `optimizer.bin`, `scheduler.bin` and
`scaler.pt` (pickles, as accelerate writes them) are read by hf-gqa itself with `torch.load(weights_only=True)`, which
rebuilds tensors and plain containers only (safe from torch 2.6; older torch is refused, CVE-2025-32434). Nothing
else in the folder is read, and a folder that holds a pickle hf-gqa does not write (`custom_checkpoint_*.pkl`,
`random_states_*.pkl`, `pytorch_model.bin`, any other `.pkl`, `.bin`, `.pt`, ...) is refused, since another tool
could load it. `--trust-checkpoint` lifts that refusal for a folder the user trusts: then the known files are loaded
as full pickles (`weights_only=False`), which a checkpoint written by an older hf-gqa needs (its progress and hook
states are accelerate's `custom_checkpoint_0.pkl` and `custom_checkpoint_1.pkl`), and unknown files are still not
loaded. Under DeepSpeed, FSDP, Megatron-LM or XLA the folder is accelerate's own layout, loaded by
`accelerator.load_state`, which unpickles: those resume only with `--trust-checkpoint`.

Exact resume needs three things, all here: the data order is a function of (seed, epoch) only
(`data.ResumableSampler`), the resumed epoch skips exactly the examples already seen, and the random numbers a
micro-batch draws (dropout) depend only on (seed, micro-step, process) (`seed_micro_step`), not on what the process
did before, e.g. how many data-loader iterators it created.
"""

import json
import pickle
import random
import re
import shutil
import zipfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_model, save_file
from torch.torch_version import TorchVersion

from ..errors import CheckpointError, HfGqaError

CHECKPOINTS = "checkpoints"
STATE_FILE = "hf_gqa_state.json"
STATE_FORMAT = "hf-gqa training checkpoint"
STATE_VERSION = 1
MODEL_FILE = "model.safetensors"
RNG_FILE = "rng_state_{}.safetensors"
# accelerate's pickles that hf-gqa reads itself, with torch.load(weights_only=True); scaler.pt only with fp16
TORCH_FILES = ("optimizer.bin", "scheduler.bin", "scaler.pt")
# how a checkpoint of hf-gqa <= 0.2 kept its state: accelerate's pickles of the registered objects
LEGACY_FILES = ("custom_checkpoint_0.pkl", "custom_checkpoint_1.pkl")
LEGACY_RNG_FILE = "random_states_{}.pkl"
# files that are (or may be) pickles: a checkpoint folder holding one hf-gqa does not write is refused
PICKLE_SUFFIXES = (".pkl", ".pickle", ".bin", ".pt", ".pth", ".ckpt", ".joblib", ".dill")
# accelerate's distributed types whose checkpoint layout is their own (loaded by `accelerator.load_state`)
OWN_LAYOUTS = ("DEEPSPEED", "FSDP", "MEGATRON_LM", "XLA")
TORCH_VERSION = torch.__version__  # weights_only=True is safe from 2.6 (CVE-2025-32434)
_STEP_DIR = re.compile(r"^step-(\d+)$")
_TRUST = "pass --trust-checkpoint only if you trust the folder"


@dataclass
class Progress:
    """How far training got, saved with every checkpoint."""

    step: int = 0  # optimizer steps completed
    micro_step: int = 0  # micro-batches (forward/backward passes) completed
    loss_sum: float = 0.0  # sum of the step losses not logged yet (a resumed run logs the same means)
    loss_steps: int = 0  # how many steps that sum covers
    ce_sum: float = 0.0  # with --distill: the same sums of the loss's CE and T^2 * KL parts
    kl_sum: float = 0.0

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        """Restore from `state_dict()`'s data; a field of the wrong type or an unknown field is a ValueError."""
        if not isinstance(state, dict):
            raise ValueError(f"expected an object, got {type(state).__name__}")
        unknown = sorted(set(state) - {f.name for f in fields(self)})
        if unknown:
            raise ValueError(f"unknown field {unknown[0]!r}")
        for name, value in state.items():
            kind = type(getattr(self, name))  # int (a count) or float
            is_number = isinstance(value, int | float) and not isinstance(value, bool)
            if kind is int and not (is_number and isinstance(value, int) and value >= 0):
                raise ValueError(f"{name} should be a count, got {value!r}")
            if not is_number:
                raise ValueError(f"{name} should be a number, got {value!r}")
            setattr(self, name, kind(value))


class HookStates:
    """The states of a run's training hooks, as one object (saved as JSON in `hf_gqa_state.json`).

    Keyed by position and class name, so a resumed run restores each hook it shares with the saved one and may add
    or drop hooks that keep no state (a debugging hook, say).
    """

    def __init__(self, hooks):
        self.hooks = list(hooks)

    @staticmethod
    def _key(index: int, hook) -> str:
        return f"{index}:{type(hook).__name__}"

    def state_dict(self) -> dict:
        return {self._key(i, h): h.state_dict() for i, h in enumerate(self.hooks) if hasattr(h, "state_dict")}

    def load_state_dict(self, state: dict) -> None:
        for i, hook in enumerate(self.hooks):
            saved = state.get(self._key(i, hook))
            if saved and hasattr(hook, "load_state_dict"):
                hook.load_state_dict(saved)


def seed_micro_step(seed: int, micro_step: int, process_index: int = 0) -> None:
    """Seed torch's global RNG (CPU and every GPU) from (seed, micro-step, process) before a micro-batch."""
    torch.manual_seed((seed * 1_000_003 + micro_step) * 1_009 + process_index)


def checkpoint_dir(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / CHECKPOINTS / f"step-{step}"


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints under `output_dir`, oldest first."""
    root = Path(output_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [(int(m[1]), p) for p in root.iterdir() if p.is_dir() and (m := _STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found)]


def resolve_resume(resume_from_checkpoint: str | None, output_dir: str | Path, trust: bool = False) -> Path | None:
    """The checkpoint to resume from: a path, `latest` (the newest one under `output_dir`, or None when there is none
    yet, so the same command starts or resumes a job), or None. The folder is checked (`check_checkpoint`) before
    anything is built."""
    if not resume_from_checkpoint:
        return None
    if resume_from_checkpoint == "latest":
        found = list_checkpoints(output_dir)
        path = found[-1] if found else None
    else:
        path = Path(resume_from_checkpoint)
        if not path.is_dir():
            raise HfGqaError(f"--resume-from-checkpoint {resume_from_checkpoint!r}: no such checkpoint folder")
    if path is not None:
        check_checkpoint(path, trust)
    return path


# --- checking a folder before anything is loaded --------------------------------------------------------------------


def _where(folder: Path, name: str | None = None) -> str:
    return f"checkpoint {str(folder / name if name else folder)!r}"


def _reason(error: BaseException) -> str:
    """One line about `error`: its first line that says something (load_state_dict's message starts with a title)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].startswith("Error(s) in loading state_dict"):
        lines = lines[1:]
    line = lines[0] if lines else type(error).__name__
    return line if len(line) <= 300 else line[:297] + "..."


def _is_legacy(folder: Path) -> bool:
    return not (folder / STATE_FILE).is_file() and all((folder / name).is_file() for name in LEGACY_FILES)


def check_checkpoint(folder: str | Path, trust: bool = False) -> None:
    """Refuse a folder a resume cannot or must not load, with one line naming the file: not a checkpoint of the recipe
    (a model folder, say), incomplete, a pickle hf-gqa does not write (unless `trust`), or a state file, model file or
    torch file that does not even parse. Cheap: reads `hf_gqa_state.json` and the headers of the other files."""
    folder = Path(folder)
    if _is_legacy(folder):
        if not trust:
            raise CheckpointError(
                f"{_where(folder)} was written by an older hf-gqa: its state is pickled ({LEGACY_FILES[0]}), and "
                f"loading a pickle can run code; {_TRUST}"
            )
    elif not (folder / STATE_FILE).is_file():
        if (folder / "config.json").is_file():
            raise CheckpointError(
                f"{_where(folder)} is a model folder, not a checkpoint of recipes/uptrain_summarization.py (no "
                f"{STATE_FILE}); to train from that model, give it as --model-name-or-path"
            )
        raise CheckpointError(
            f"{_where(folder)} is not a checkpoint of recipes/uptrain_summarization.py: no {STATE_FILE}"
        )
    else:
        read_state(folder)
    if trust:  # (a trusted folder may also be accelerate's own layout of DeepSpeed or FSDP: see `load_checkpoint`)
        return
    for name in (MODEL_FILE, *TORCH_FILES[:2]):
        if not (folder / name).is_file():
            raise CheckpointError(f"{_where(folder)} is incomplete: no {name}")
    if TorchVersion(TORCH_VERSION) < (2, 6):
        raise CheckpointError(
            f"{_where(folder)}: torch {TORCH_VERSION} cannot load its optimizer and scheduler files safely "
            f"(weights_only loading is safe from torch 2.6); upgrade torch, or {_TRUST}"
        )
    expected = {MODEL_FILE, STATE_FILE, *TORCH_FILES}
    for path in sorted(folder.rglob("*")):
        name = path.relative_to(folder).as_posix()
        if name in expected or _is_rng_file(name) or not path.is_file():
            continue
        if path.suffix.lower() in PICKLE_SUFFIXES or "custom_checkpoint" in path.name:
            raise CheckpointError(
                f"{_where(folder)} holds {name}, a file hf-gqa does not write there and which may be a pickle "
                f"(loading a pickle can run code); remove it, or {_TRUST}"
            )
    _check_readable(folder)


def _is_rng_file(name: str) -> bool:
    return re.fullmatch(RNG_FILE.format(r"\d+").replace(".", r"\."), name) is not None


def _check_readable(folder: Path) -> None:
    """The safetensors files' headers parse, and the torch files are torch's zip format."""
    for path in [folder / MODEL_FILE, *sorted(p for p in folder.iterdir() if _is_rng_file(p.name))]:
        try:
            with safe_open(str(path), framework="pt"):
                pass
        except (SafetensorError, OSError, ValueError) as error:
            raise CheckpointError(f"{_where(folder, path.name)} is corrupt: {_reason(error)}") from None
    for name in TORCH_FILES:
        path = folder / name
        if path.is_file() and not zipfile.is_zipfile(path):
            raise CheckpointError(f"{_where(folder, name)} is corrupt: not the zip archive torch.save writes")


def read_state(folder: str | Path) -> dict:
    """`hf_gqa_state.json`, checked: `{"format", "version", "progress": {...}, "hooks": {...}}`."""
    path = Path(folder) / STATE_FILE
    where = _where(Path(folder), STATE_FILE)
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise CheckpointError(f"{where} is not UTF-8 text") from None
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{where} is not valid JSON: {error}") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise CheckpointError(f'{where} is not hf-gqa\'s checkpoint state (no "format": {STATE_FORMAT!r})')
    if state.get("version") != STATE_VERSION:
        raise CheckpointError(f"{where}: version {state.get('version')!r}; this hf-gqa reads version {STATE_VERSION}")
    _check_state(state.get("progress"), state.get("hooks"), where)
    return state


def _check_state(progress, hooks, where: str) -> None:
    try:
        Progress().load_state_dict(progress)
    except ValueError as error:
        raise CheckpointError(f"{where}: progress: {error}") from None
    if not isinstance(hooks, dict) or not all(isinstance(v, dict) for v in hooks.values()):
        raise CheckpointError(f"{where}: hooks should map each hook to an object of its state, got {hooks!r:.80}")


# --- saving ---------------------------------------------------------------------------------------------------------


def _state_json(progress: Progress | None, hooks) -> str:
    """hf-gqa's state as JSON text; a hook whose state is not JSON data is an error before anything is written."""
    hook_states = HookStates(hooks).state_dict()
    for key, value in hook_states.items():
        try:
            json.dumps(value, allow_nan=True)
        except (TypeError, ValueError) as error:
            raise HfGqaError(
                f"training hook {key.split(':', 1)[1]}: state_dict() must return JSON data (dicts, lists, strings, "
                f"numbers, booleans, None) to be saved in a checkpoint: {error}"
            ) from None
        if not isinstance(value, dict):
            raise HfGqaError(f"training hook {key.split(':', 1)[1]}: state_dict() must return a dict")
    state = {
        "format": STATE_FORMAT,
        "version": STATE_VERSION,
        "progress": (progress or Progress()).state_dict(),
        "hooks": hook_states,
    }
    return json.dumps(state, indent=1) + "\n"


def _rng_state() -> tuple[dict, dict]:
    """The process's random states as (tensors, string metadata) for a safetensors file."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors.update({f"cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    metadata = {
        "python": json.dumps([version, list(internal), gauss]),
        "numpy": json.dumps([name, keys.tolist(), int(pos), int(has_gauss), float(cached)]),
    }
    return tensors, metadata


def _set_rng_state(path: Path) -> None:
    """Restore what `_rng_state` saved (CUDA states only on as many GPUs as were saved)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            tensors = {key: f.get_tensor(key) for key in f.keys()}
            metadata = f.metadata() or {}
        version, internal, gauss = json.loads(metadata["python"])
        name, keys, pos, has_gauss, cached = json.loads(metadata["numpy"])
        random.setstate((version, tuple(internal), gauss))
        np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
        torch.set_rng_state(tensors["torch"])
        cuda = [tensors[f"cuda.{i}"] for i in range(sum(k.startswith("cuda.") for k in tensors))]
        if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
    except (SafetensorError, OSError, KeyError, TypeError, ValueError, RuntimeError) as error:
        raise CheckpointError(f"{_where(path.parent, path.name)} is not a random state: {_reason(error)}") from None


def save_checkpoint(
    accelerator, output_dir: str | Path, step: int, total_limit: int | None = None, progress=None, hooks=()
) -> Path:
    """Save a checkpoint into `OUTPUT/checkpoints/step-N`, atomically; keep the newest `total_limit`.

    `accelerator.save_state` writes the model, optimizer and scheduler (no object is registered with it, so it
    pickles nothing of hf-gqa's); its RNG pickle is replaced by `rng_state_P.safetensors`, and `progress` and the
    `hooks`' states go to `hf_gqa_state.json`."""
    state_text = _state_json(progress, hooks)  # on every process: a bad hook state fails them all, before writing
    final = checkpoint_dir(output_dir, step)
    tmp = final.parent / f".{final.name}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.parent.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    index = accelerator.process_index
    (tmp / LEGACY_RNG_FILE.format(index)).unlink(missing_ok=True)
    tensors, metadata = _rng_state()
    save_file(tensors, tmp / RNG_FILE.format(index), metadata=metadata)
    if accelerator.is_main_process:
        (tmp / STATE_FILE).write_text(state_text, encoding="utf-8")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        if total_limit:
            for old in list_checkpoints(output_dir)[:-total_limit]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


# --- loading --------------------------------------------------------------------------------------------------------


def _torch_load(folder: Path, name: str, trust: bool, **kwargs):
    """`torch.load` of one of accelerate's files: weights only unless the folder is trusted."""
    if not (folder / name).is_file():
        raise CheckpointError(f"{_where(folder)} is incomplete: no {name}")
    try:
        return torch.load(folder / name, weights_only=not trust, **kwargs)
    except pickle.UnpicklingError as error:
        if not trust and str(error).startswith("Weights only load failed"):
            raise CheckpointError(
                f"{_where(folder, name)} holds more than tensors and plain data (loading it whole could run code); "
                f"{_TRUST}"
            ) from None
        raise CheckpointError(f"{_where(folder, name)} is corrupt: {_reason(error)}") from None
    except (OSError, RuntimeError, EOFError, ValueError, TypeError, AttributeError, ImportError) as error:
        raise CheckpointError(f"{_where(folder, name)} is corrupt: {_reason(error)}") from None


def _apply(folder: Path, name: str | None, what: str, load, *args) -> None:
    """`load(*args)`, with an error that does not fit this run named as the checkpoint file's."""
    try:
        load(*args)
    except CheckpointError:
        raise
    except (RuntimeError, ValueError, KeyError, IndexError, TypeError, SafetensorError, OSError) as error:
        raise CheckpointError(f"{_where(folder, name)} does not fit this run's {what}: {_reason(error)}") from None


def load_checkpoint(
    accelerator, folder: str | Path, model, optimizer, scheduler, progress: Progress, hooks, trust: bool = False
) -> None:
    """Restore a run from `folder` (see the trust model in this module's docstring): the model, optimizer, scheduler
    (and fp16 scaler), the random states of this process, `progress` and the `hooks`' states."""
    folder = Path(folder)
    check_checkpoint(folder, trust)
    legacy = _is_legacy(folder)
    if str(getattr(accelerator.distributed_type, "value", accelerator.distributed_type)) in OWN_LAYOUTS:
        if not trust:
            raise CheckpointError(
                f"{_where(folder)}: under {accelerator.distributed_type} the checkpoint is accelerate's own layout, "
                f"which accelerator.load_state unpickles; {_TRUST}"
            )
        _apply(folder, None, "state", accelerator.load_state, str(folder))
    else:
        # into the model itself: save_state wrote its weights unwrapped (no DDP `module.` prefix)
        _apply(
            folder, MODEL_FILE, "model", load_model, accelerator.unwrap_model(model), folder / MODEL_FILE, True, "cpu"
        )
        state = _torch_load(folder, "optimizer.bin", trust, map_location="cpu")
        _apply(folder, "optimizer.bin", "optimizer", optimizer.load_state_dict, state)
        state = _torch_load(folder, "scheduler.bin", trust)
        _apply(folder, "scheduler.bin", "learning-rate schedule", scheduler.load_state_dict, state)
        scaler = getattr(accelerator, "scaler", None)
        if scaler is not None and (folder / "scaler.pt").is_file():
            _apply(folder, "scaler.pt", "fp16 scaler", scaler.load_state_dict, _torch_load(folder, "scaler.pt", trust))
    index = accelerator.process_index
    if legacy:  # trusted (check_checkpoint refused it otherwise): accelerate's pickles of the old registered objects
        saved_progress, saved_hooks = (_torch_load(folder, name, True) for name in LEGACY_FILES)
        _check_state(saved_progress, saved_hooks, _where(folder, "custom_checkpoint_*.pkl"))
        rng_file = LEGACY_RNG_FILE.format(index)
        if (folder / rng_file).is_file():
            _apply(folder, rng_file, "random states", _set_legacy_rng_state, _torch_load(folder, rng_file, True))
    else:
        state = read_state(folder)
        saved_progress, saved_hooks = state["progress"], state["hooks"]
        if (folder / RNG_FILE.format(index)).is_file():
            _set_rng_state(folder / RNG_FILE.format(index))
    progress.load_state_dict(saved_progress)
    hooks_file = LEGACY_FILES[1] if legacy else STATE_FILE
    _apply(folder, hooks_file, "training hooks", HookStates(hooks).load_state_dict, saved_hooks)


def _set_legacy_rng_state(states: dict) -> None:
    """The RNG states of accelerate's `random_states_P.pkl` (a checkpoint of an older hf-gqa)."""
    random.setstate(states["random_state"])
    np.random.set_state(states["numpy_random_seed"])
    torch.set_rng_state(states["torch_manual_seed"])
    if "torch_cuda_manual_seed" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["torch_cuda_manual_seed"])


def step_of(checkpoint: str | Path) -> int | None:
    match = _STEP_DIR.match(Path(checkpoint).name)
    return int(match[1]) if match else None


__all__ = [
    "CHECKPOINTS",
    "STATE_FILE",
    "HookStates",
    "Progress",
    "check_checkpoint",
    "checkpoint_dir",
    "list_checkpoints",
    "load_checkpoint",
    "read_state",
    "resolve_resume",
    "save_checkpoint",
    "seed_micro_step",
    "step_of",
]
