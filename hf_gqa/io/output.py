"""Writing outputs: a folder that appears only when complete (`atomic_output_dir`), and saving a model into it.
No conversion logic here.

An output is written into a hidden temporary folder beside it (`.OUT.tmp-XXXXXXXX`, holding an owner file with the
writing process's id until the end) and renamed into place. Without `force` the rename never replaces a non-empty
folder, even one that appeared while the output was written; with `force` the old output is moved aside
(`.OUT.old-XXXXXXXX`), the new one renamed in, then the old one removed, so that an interruption never leaves OUT
missing with the old one deleted. SIGTERM, like Ctrl-C, unwinds through the cleanup; what `kill -9` leaves behind is
removed (or, for a moved-aside output whose replacement never arrived, restored) by the next run to the same OUT."""

import contextlib
import errno
import os
import re
import shutil
import signal
import socket
import sys
import threading
import uuid
from collections.abc import Mapping
from pathlib import Path

from transformers import AutoConfig, PreTrainedModel
from transformers.dynamic_module_utils import custom_object_save

from ..errors import OutputExistsError, UnsafeOutputError
from .auto import model_class
from .safetensors import INDEX_NAME

# Never copied from a source folder: weights in any format (the converted ones are written) and what is rewritten.
_SKIP_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf", ".onnx", ".ot")
_SKIP_NAMES = {"config.json", "README.md", INDEX_NAME, "pytorch_model.bin.index.json", ".gitattributes"}
# The files that carry a model's terms (Llama's LICENSE and USE_POLICY.md, NOTICE, ...): they travel with the model.
LICENSE_FILES = re.compile(r"^(licen[cs]e|use_policy|notice)([._-].*)?$", re.IGNORECASE)
# Inside a temporary or moved-aside folder while a process owns it: "<pid> <host>".
_OWNER = ".hf-gqa-owner"
# What a rename onto an existing path raises when that path must not be replaced.
_EXISTS = (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR)

_NOTED: set[Path] = set()  # folders without an owner file already mentioned

Sources = Mapping[str, "str | os.PathLike | None"]  # what each is (e.g. "the source") -> its path (or a Hub id)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread while hf-gqa writes an output (see `sigterm_as_interrupt`)."""


def _terminate(signum, frame):
    raise Terminated()


@contextlib.contextmanager
def sigterm_as_interrupt():
    """While the block runs, SIGTERM raises `Terminated` (a KeyboardInterrupt) in the main thread instead of ending
    the process at once, so that `finally` blocks (the temporary folder's removal) run. Only the default action is
    replaced, and only in the main thread; the previous handler is restored after the block."""
    install = threading.current_thread() is threading.main_thread()
    install = install and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    previous = signal.signal(signal.SIGTERM, _terminate) if install else None
    try:
        yield
    finally:
        if install:
            signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _uninterrupted():
    """Hold SIGINT and SIGTERM (main thread, Python handlers) until the block ends, then act on them as their handlers
    would: the two renames that replace an output happen together or not at all."""
    held, previous = [], {}
    if threading.current_thread() is threading.main_thread():
        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        previous = {s: handler for s, handler in previous.items() if handler is not None}  # None: not set from Python
    for s in previous:
        signal.signal(s, lambda signum, frame: held.append(signum))
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if held:
        handler = previous[held[0]]
        if callable(handler):
            handler(held[0], None)  # e.g. raises KeyboardInterrupt
        elif handler == signal.SIG_DFL:
            signal.raise_signal(held[0])


def _shown(path) -> str:
    return repr(str(path))


def check_output_safe(
    output: str | os.PathLike, sources: Sources | None = None, replaced: tuple[str, ...] | None = None
) -> None:
    """Refuse (`UnsafeOutputError`), whatever `force` says, an output that is the working directory, the home folder
    or a folder above either (the filesystem root included), or one that would replace a source: `output` is a
    source, or holds one; and, as the output folder is replaced, a mount point or a non-empty folder just below the
    root (/tmp, /usr, ...). With `replaced` (the names inside `output` that get written over, e.g. a training run's
    `model` and `checkpoints`), the output folder itself is kept: only a source at `output` or inside one of those is
    refused. Symbolic links are resolved; a source that is not a local path (a Hub id) is skipped."""
    out = Path(output).expanduser().resolve()
    if replaced is None and os.path.ismount(out) and out != Path(out.anchor):  # a rename onto it fails (EBUSY)
        raise UnsafeOutputError(f"output {_shown(output)} is a mount point: choose a new folder inside it")
    if replaced is None and out.parent == Path(out.anchor) != out and out.is_dir() and any(out.iterdir()):
        raise UnsafeOutputError(f"output {_shown(output)} is a top-level folder: choose a new folder for the output")
    for folder, what in ((Path.cwd, "the current directory"), (Path.home, "your home folder")):
        try:
            folder = folder().resolve()
        except (OSError, RuntimeError, KeyError):  # a deleted working directory, no home
            continue
        if folder == out or folder.is_relative_to(out):
            where = what if folder == out else f"a folder above {what}"
            raise UnsafeOutputError(f"output {_shown(output)} is {where}: choose a new folder for the output")
    for what, source in (sources or {}).items():
        path = Path(str(source)).expanduser() if source is not None else None
        if path is None or not (path.exists() or path.is_symlink()):
            continue
        src = path.resolve()
        if src == out:
            raise UnsafeOutputError(f"output {_shown(output)} is {what} {_shown(source)}: choose another folder")
        if replaced is None and src.is_relative_to(out):
            raise UnsafeOutputError(
                f"output {_shown(output)} holds {what} {_shown(source)}: replacing it would delete {what}; "
                "choose another folder"
            )
        for name in replaced or ():
            if src.is_relative_to(out / name):
                raise UnsafeOutputError(
                    f"output {_shown(output)} would overwrite {what} {_shown(source)} (it writes {name}/ there): "
                    "choose another folder"
                )


def check_output_dir(output_dir: str | os.PathLike, force: bool = False, sources: Sources | None = None) -> Path:
    """Refuse an existing non-empty output folder (or a file) unless `force`, and even then one that holds no
    `config.json` (only a model folder, such as an earlier output, is replaced); and, `force` or not, an unsafe one
    (`check_output_safe`; `sources` maps what each is, e.g. "the source", to its path), or a non-empty one inside a
    source. Removes what interrupted runs to the same output left beside it (`remove_leftovers`). Returns the output,
    `~` expanded."""
    shown = _shown(output_dir)
    check_output_safe(output_dir, sources)
    output_dir = Path(output_dir).expanduser()
    remove_leftovers(output_dir)
    if output_dir.is_symlink() and not output_dir.exists() and not force:
        raise OutputExistsError(f"output {shown} is a broken symbolic link; pass --force to replace it")
    if output_dir.exists() and not output_dir.is_dir():
        raise OutputExistsError(f"output {shown} exists and is not a folder")
    if output_dir.is_dir() and any(output_dir.iterdir()):
        if not force:
            raise OutputExistsError(f"output folder {shown} exists and is not empty; pass --force to replace it")
        out = output_dir.resolve()
        for what, source in (sources or {}).items():
            path = Path(str(source)).expanduser() if source is not None else None
            if path is not None and path.exists() and out.is_relative_to(path.resolve()):
                raise UnsafeOutputError(
                    f"output {shown} lies inside {what} {_shown(source)} and is not empty: --force would replace "
                    f"part of {what}; choose another folder"
                )
        if not (output_dir / "config.json").is_file():  # a typo such as `-o ~/Documents` must not delete it
            raise UnsafeOutputError(
                f"output folder {shown} is not empty and holds no config.json: --force replaces only a model folder "
                "(an earlier output); choose a new folder"
            )
    return output_dir


# --- owned temporary folders ------------------------------------------------------------------------------------


def _mark(folder: Path) -> None:
    with contextlib.suppress(OSError):
        (folder / _OWNER).write_text(f"{os.getpid()} {socket.gethostname()}\n", encoding="utf-8")


def _unmark(folder: Path) -> None:
    with contextlib.suppress(OSError):
        (folder / _OWNER).unlink()


def _owner_gone(folder: Path) -> bool | None:
    """Whether the process that wrote `folder` has ended: None when `folder` has no owner file (not hf-gqa's, or
    written by an older one), False when it runs or cannot be told (another host, another user's process)."""
    try:
        pid, host = (folder / _OWNER).read_text(encoding="utf-8").split()
        pid = int(pid)
    except (OSError, ValueError):
        return None
    if host != socket.gethostname() or pid == os.getpid() or os.name == "nt":  # os.kill(pid, 0) kills on Windows
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # EPERM: alive, someone else's
        return False
    return False


def _remove(path: Path) -> None:
    """Remove a folder (its owner file last, so that an interrupted removal is still known as stale), a link or a
    file."""
    if path.is_symlink() or not path.is_dir():
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return
    for child in path.iterdir():
        if child.name != _OWNER:
            _remove(child)
    shutil.rmtree(path, ignore_errors=True)


def _exists(path: Path) -> bool:
    return path.exists() or path.is_symlink()


def remove_leftovers(output_dir: str | os.PathLike) -> None:
    """Remove the temporary folders (`.OUT.tmp-*`, `.OUT.old-*`) that runs to `output_dir`, killed since, left beside
    it, and say so on stderr in one line. A moved-aside old output whose replacement never arrived (the run was killed
    between the two renames of `--force`) is renamed back to `output_dir` instead. Folders whose process still runs are
    kept; those without an owner file are only mentioned."""
    output_dir = Path(output_dir).expanduser().absolute()
    parent = output_dir.parent
    pattern = re.compile(rf"\.{re.escape(output_dir.name)}\.(tmp|old)-[0-9a-f]{{8}}")
    try:
        entries = sorted(p for p in parent.iterdir() if pattern.fullmatch(p.name))
    except OSError:  # no parent folder yet
        return
    removed, unknown = [], []
    for entry in entries:
        if entry.is_symlink() or not entry.is_dir():
            continue
        gone = _owner_gone(entry)
        if gone is None:
            if entry not in _NOTED:  # once: the output is checked before the work and again before writing
                _NOTED.add(entry)
                unknown.append(entry.name)
        elif gone and entry.name.startswith(f".{output_dir.name}.old-") and not _exists(output_dir):
            _unmark(entry)
            try:
                os.rename(entry, output_dir)
            except OSError:  # the output appeared meanwhile: a later run removes this one
                _mark(entry)
                continue
            print(
                f"hf-gqa: restored {str(output_dir)!r} from {entry.name}, where an interrupted --force run had moved "
                "it",
                file=sys.stderr,
            )
        elif gone:
            _remove(entry)
            removed.append(entry.name)
    if removed:
        print(
            f"hf-gqa: removed {', '.join(removed)} from {str(parent)!r}: temporary folder(s) of interrupted runs to "
            f"{output_dir.name}",
            file=sys.stderr,
        )
    if unknown:
        print(
            f"hf-gqa: note: {', '.join(unknown)} in {str(parent)!r} look like temporary folders of interrupted runs "
            f"to {output_dir.name}; remove them if no such run is going on",
            file=sys.stderr,
        )


def _appeared(shown: str) -> OutputExistsError:
    return OutputExistsError(
        f"output {shown} appeared, not empty, while this run wrote it (another run to the same output?): "
        "it was kept and this run's result discarded; pass --force to replace it"
    )


def _rename_into_place(tmp: Path, output_dir: Path, force: bool, shown: str) -> None:
    """Rename the finished `tmp` to `output_dir`. Without `force`, only onto nothing or an empty folder (whatever
    appeared meanwhile is never replaced: `rename` itself refuses a non-empty folder, race-free); with `force`, the
    existing output is moved aside first, put back if the rename fails or is interrupted, and removed after."""
    if not force:
        if output_dir.is_symlink():
            if output_dir.is_dir() and not any(output_dir.iterdir()):
                output_dir.unlink()  # a link to an empty folder holds nothing: the link is replaced, its target kept
        elif output_dir.is_dir():
            try:
                output_dir.rmdir()  # an empty folder holds nothing to lose; a non-empty one is refused here...
            except OSError as error:
                if error.errno in _EXISTS:
                    raise _appeared(shown) from None
                raise
        try:
            os.rename(tmp, output_dir)  # ... or here, if it appeared again since
        except OSError as error:
            if error.errno in _EXISTS:
                raise _appeared(shown) from None
            raise
        return
    for _ in range(5):
        if not _exists(output_dir):
            try:
                os.rename(tmp, output_dir)
                return
            except OSError as error:  # it appeared meanwhile: move it aside too
                if error.errno not in _EXISTS:
                    raise
                continue
        old = output_dir.parent / f".{output_dir.name}.old-{uuid.uuid4().hex[:8]}"
        marked = output_dir.is_dir() and not output_dir.is_symlink()
        if marked:  # owned once moved aside: should a kill -9 come next, the next run puts it back
            _mark(output_dir)
        with _uninterrupted():  # Ctrl-C or SIGTERM waits for both renames and the old output's removal
            try:
                os.rename(output_dir, old)
            except BaseException as error:
                if marked:
                    _unmark(output_dir)
                if isinstance(error, FileNotFoundError):  # gone meanwhile
                    continue
                raise
            try:
                os.rename(tmp, output_dir)
            except BaseException:  # never leave the output missing with the old one gone
                _unmark(old)
                with contextlib.suppress(OSError):
                    os.rename(old, output_dir)
                raise
            _remove(old)
        return
    raise OutputExistsError(f"output {shown} keeps being re-created while this run replaces it")


@contextlib.contextmanager
def atomic_output_dir(output_dir: str | os.PathLike, force: bool = False, sources: Sources | None = None):
    """Yield a temporary folder beside `output_dir`; rename it into place only if the block completes (see the module
    docstring). `sources` as for `check_output_dir`. While the block runs in the main thread, SIGTERM unwinds like
    Ctrl-C, so that the temporary folder is removed."""
    shown = _shown(output_dir)
    output_dir = check_output_dir(output_dir, force, sources).absolute()
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    with sigterm_as_interrupt():
        tmp = output_dir.parent / f".{output_dir.name}.tmp-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            _mark(tmp)
            yield tmp
            _unmark(tmp)
            _rename_into_place(tmp, output_dir, force, shown)
        finally:
            if _exists(tmp):
                _remove(tmp)


def save_converted(
    model: PreTrainedModel,
    output_dir,
    tokenizer=None,
    model_card: str | None = None,
    force=False,
    max_shard_size: int | str = "5GB",
    source: str | os.PathLike | None = None,
):
    """Save a converted model (weights, config, remote code, generation config), its tokenizer and model card into
    `output_dir`, atomically. With a local `source` folder, its licence files (LICENSE*, USE_POLICY*, NOTICE*) are
    copied too, as the streamed conversion copies them."""
    with atomic_output_dir(output_dir, force=force) as tmp:
        model.save_pretrained(tmp, max_shard_size=max_shard_size)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if model_card is not None:
            (tmp / "README.md").write_text(model_card, encoding="utf-8")
        copy_license_files(source, tmp)
    return Path(output_dir)


def write_config_and_code(config_dict: dict, output: Path) -> None:
    """config.json through the target's config class (as `save_pretrained` writes it), plus remote code if any."""
    config = AutoConfig.for_model(**config_dict)
    config.save_pretrained(output)
    cls = model_class((config_dict.get("architectures") or [""])[0])
    if not cls.__module__.startswith("transformers."):
        custom_object_save(cls, output)


def copy_side_files(source: Path, output: Path) -> None:
    """Copy a source folder's top-level files other than weights, config and card (tokenizer, generation config)."""
    for path in source.iterdir():
        if path.is_file() and not path.name.startswith(".") and path.name not in _SKIP_NAMES:
            if not path.name.endswith(_SKIP_SUFFIXES) and not (output / path.name).exists():
                shutil.copyfile(path, output / path.name)


def copy_license_files(source: str | os.PathLike | None, output: Path) -> list[str]:
    """Copy a local source folder's licence files (LICENSE*, USE_POLICY*, NOTICE*) into `output`, unless there already;
    their names. Nothing for a Hub id (its card links its licence on the Hub) or a single file (a .gguf)."""
    path = Path(os.path.expanduser(str(source or "")))
    if not source or not path.is_dir():
        return []
    copied = []
    for file in sorted(path.iterdir()):
        if file.is_file() and LICENSE_FILES.match(file.name) and not (output / file.name).exists():
            shutil.copyfile(file, output / file.name)
            copied.append(file.name)
    return copied


def has_tokenizer(folder: str | os.PathLike) -> bool:
    return any((Path(folder) / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json"))


__all__ = [
    "LICENSE_FILES",
    "Terminated",
    "atomic_output_dir",
    "check_output_dir",
    "check_output_safe",
    "copy_license_files",
    "copy_side_files",
    "has_tokenizer",
    "remove_leftovers",
    "save_converted",
    "sigterm_as_interrupt",
    "write_config_and_code",
]
