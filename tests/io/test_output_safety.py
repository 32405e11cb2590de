"""Where a conversion may write: never over its source, a folder holding it, the working directory, home or root;
never over an output that appeared while it ran (unless --force); nothing left behind by SIGTERM or kill -9; `~` in
paths from the Python API and YAML configs."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import REPO, make_t5
from helpers import one_error_line
from helpers import run as run_cli

import hf_gqa
import hf_gqa.conversion.folder as folder_module
from hf_gqa.conversion.folder import convert_to_folder, fold_to_folder
from hf_gqa.errors import HfGqaError, OutputExistsError
from hf_gqa.io.output import atomic_output_dir, check_output_dir
from hf_gqa.io.sources import load_config_dict, load_model
from hf_gqa.training import run as training_run
from hf_gqa.training.arguments import UptrainArguments

GQA2 = hf_gqa.GQASpec(groups=2)


def snapshot(root: Path) -> dict:
    """Every file, folder and link under `root` (relative path -> content, link target or None)."""
    found = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        if path.is_symlink():
            found[key] = ("link", os.readlink(path))
        elif path.is_file():
            found[key] = path.read_bytes()
        else:
            found[key] = None
    return found


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


@pytest.fixture(scope="module")
def tiny_t5(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("src") / "t5"
    make_t5().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_wgqa(tmp_path_factory, tiny_t5) -> Path:
    path = tmp_path_factory.mktemp("src") / "wgqa"
    convert_to_folder(tiny_t5, path, hf_gqa.GQASpec(variant="wgqa", groups=2), progress=False)
    return path


def workspace(tmp_path: Path, source: Path) -> Path:
    """w/src (a copy of `source`) and w/notes.txt, the user's unrelated file."""
    w = tmp_path / "w"
    w.mkdir()
    shutil.copytree(source, w / "src")
    (w / "notes.txt").write_text("x")
    return w


# --- 1. --force never replaces the source, a folder holding it, the working directory, home or root --------------


@pytest.mark.parametrize("command", ["convert", "fold"])
@pytest.mark.parametrize("target", ["parent", "source", "link-to-source", "link-to-parent"])
def test_force_never_replaces_the_source_or_a_folder_holding_it(command, target, tiny_t5, tiny_wgqa, tmp_path, capsys):
    w = workspace(tmp_path, tiny_wgqa if command == "fold" else tiny_t5)
    links = {"link-to-source": w / "src", "link-to-parent": w}
    out = {"parent": w, "source": w / "src"}.get(target, tmp_path / "link")
    if target in links:
        out.symlink_to(links[target], target_is_directory=True)
    before = snapshot(tmp_path)
    groups = ["--groups", 2] if command == "convert" else []
    code, _, err = run_cli(capsys, command, w / "src", *groups, "-o", out, "--force")
    assert code == 2, err
    assert "source" in one_error_line(err)
    assert snapshot(tmp_path) == before


def test_the_python_api_refuses_too(tiny_t5, tmp_path):
    w = workspace(tmp_path, tiny_t5)
    before = snapshot(w)
    for out in (w, w / "src"):
        with pytest.raises(OutputExistsError, match="source"):
            convert_to_folder(w / "src", out, GQA2, force=True, progress=False)
        with pytest.raises(OutputExistsError, match="source"):
            convert_to_folder(w / "src", out, GQA2, force=True, in_memory=True, progress=False)
    assert snapshot(w) == before


def test_force_never_replaces_a_folder_inside_the_source(tiny_t5, tmp_path, capsys):
    w = workspace(tmp_path, tiny_t5)
    inside = w / "src" / "original"
    inside.mkdir()
    (inside / "consolidated.pth").write_text("the original weights")
    before = snapshot(w)
    code, _, err = run_cli(capsys, "convert", w / "src", "--groups", 2, "-o", inside, "--force")
    assert code == 2 and "inside the source" in one_error_line(err)
    assert snapshot(w) == before
    # A new folder inside the source replaces nothing: allowed.
    code, _, err = run_cli(capsys, "convert", w / "src", "--groups", 2, "-o", w / "src" / "gqa2")
    assert code == 0, err
    assert (w / "src" / "gqa2" / "config.json").is_file() and (w / "src" / "config.json").is_file()


def test_force_never_replaces_the_working_directory_or_home(tiny_t5, tmp_path, capsys, monkeypatch):
    w = workspace(tmp_path, tiny_t5)
    home = tmp_path / "home"
    home.mkdir()
    (home / ".bashrc").write_text("mine")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(w / "src")
    before = snapshot(tmp_path)
    for out, what in ((".", "current directory"), ("..", "current directory"), ("~", "home")):
        code, _, err = run_cli(capsys, "convert", tiny_t5, "--groups", 2, "-o", out, "--force")
        assert code == 2, (out, err)
        assert what in one_error_line(err)
    assert snapshot(tmp_path) == before
    for out in ("/", "/tmp", "~", ".", ".."):  # with or without --force
        for force in (False, True):
            with pytest.raises(OutputExistsError):
                check_output_dir(out, force=force)


@pytest.mark.parametrize("command", ["convert", "fold"])
def test_force_replaces_only_a_checkpoint_folder(command, tiny_t5, tiny_wgqa, tmp_path, capsys):
    """A typo such as `-o ~/Documents --force` must not delete the user's files: --force replaces a folder that
    holds a config.json (an earlier output), nothing else."""
    source = tiny_wgqa if command == "fold" else tiny_t5
    groups = ["--groups", 2] if command == "convert" else []
    documents = tmp_path / "documents"
    (documents / "letters").mkdir(parents=True)
    (documents / "letters" / "a.txt").write_text("mine")
    before = snapshot(tmp_path)
    code, _, err = run_cli(capsys, command, source, *groups, "-o", documents, "--force")
    assert code == 2, err
    line = one_error_line(err)
    assert "config.json" in line and "--force" in line and str(documents) in line
    assert snapshot(tmp_path) == before
    with pytest.raises(OutputExistsError, match="config.json"):
        convert_to_folder(tiny_t5, documents, GQA2, force=True, progress=False)
    assert snapshot(tmp_path) == before
    earlier = tmp_path / "earlier"  # an earlier output: replaced whole
    earlier.mkdir()
    (earlier / "config.json").write_text("{}")
    (earlier / "stale.safetensors").write_text("old")
    code, _, err = run_cli(capsys, command, source, *groups, "-o", earlier, "--force")
    assert code == 0, err
    assert not (earlier / "stale.safetensors").exists() and (earlier / "model.safetensors").is_file()


def recipe_args(**kwargs) -> UptrainArguments:
    return UptrainArguments(**{"model_name_or_path": "google-t5/t5-small", "output_dir": "run", **kwargs})


def test_recipe_output_dir_never_is_or_overwrites_its_model(tiny_t5, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_t5, run_dir)  # the model itself
    for overwrite in (False, True):
        args = recipe_args(model_name_or_path=str(run_dir), output_dir=str(run_dir), overwrite_output_dir=overwrite)
        with pytest.raises(HfGqaError, match="model"):
            training_run.check_output_dir(args, resuming=False)
        args = recipe_args(output_dir=str(run_dir), overwrite_output_dir=overwrite, tokenizer_name=str(run_dir))
        with pytest.raises(HfGqaError, match="tokenizer"):
            training_run.check_output_dir(args, resuming=False)
    # The previous run's model (OUT/model) is overwritten by this run's: refused; a resume checkpoint under
    # OUT/checkpoints is where it belongs: allowed.
    other = tmp_path / "other"
    shutil.copytree(tiny_t5, other / "model")
    (other / "checkpoints" / "step-2").mkdir(parents=True)
    args = recipe_args(model_name_or_path=str(other / "model"), output_dir=str(other), overwrite_output_dir=True)
    with pytest.raises(HfGqaError, match="model"):
        training_run.check_output_dir(args, resuming=False)
    resume = str(other / "checkpoints" / "step-2")
    args = recipe_args(output_dir=str(other), resume_from_checkpoint=resume)
    assert training_run.check_output_dir(args, resuming=True) == other
    args = recipe_args(output_dir=resume, resume_from_checkpoint=resume)
    with pytest.raises(HfGqaError, match="checkpoint"):
        training_run.check_output_dir(args, resuming=True)
    # Nor the working directory, home or root, even with --overwrite-output-dir or resuming.
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(other)
    for out in (".", str(tmp_path), "~", "/"):
        args = recipe_args(output_dir=out, overwrite_output_dir=True, resume_from_checkpoint="latest")
        with pytest.raises(HfGqaError):
            training_run.check_output_dir(args, resuming=True)
    assert (other / "model" / "config.json").is_file()


# --- 3. an output that appears while the conversion runs -------------------------------------------------------------


def appear_during(monkeypatch, out: Path, files: dict):
    """Make the streamed conversion create `out` (with `files`) while it runs, as another process would."""
    real = folder_module.stream_convert

    def stream_convert(*args, **kwargs):
        result = real(*args, **kwargs)
        out.mkdir()
        for name, text in files.items():
            (out / name).write_text(text)
        return result

    monkeypatch.setattr(folder_module, "stream_convert", stream_convert)


def test_an_output_that_appears_while_converting_is_not_replaced(tiny_t5, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    appear_during(monkeypatch, out, {"theirs.txt": "another run's output"})
    code, _, err = run_cli(capsys, "convert", tiny_t5, "--groups", 2, "-o", out)
    assert code == 2
    line = one_error_line(err)
    assert "appeared" in line and "--force" in line and "discarded" in line
    assert snapshot(out) == {"theirs.txt": b"another run's output"}
    assert leftovers(tmp_path) == []


def test_an_empty_output_that_appears_while_converting_is_used(tiny_t5, tmp_path, monkeypatch):
    out = tmp_path / "out"
    appear_during(monkeypatch, out, {})
    convert_to_folder(tiny_t5, out, GQA2, progress=False)
    assert (out / "config.json").is_file() and leftovers(tmp_path) == []


def test_with_force_an_output_that_appeared_is_replaced(tiny_t5, tmp_path, monkeypatch):
    out = tmp_path / "out"
    appear_during(monkeypatch, out, {"theirs.txt": "x"})
    convert_to_folder(tiny_t5, out, GQA2, force=True, progress=False)
    assert (out / "config.json").is_file() and not (out / "theirs.txt").exists()
    assert leftovers(tmp_path) == []


def test_of_two_runs_to_the_same_output_the_one_finishing_last_refuses(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(OutputExistsError, match="appeared"):
        with atomic_output_dir(out) as first:
            (first / "who").write_text("first")
            with atomic_output_dir(out) as second:
                (second / "who").write_text("second")
    assert (out / "who").read_text() == "second" and leftovers(tmp_path) == []


def test_with_force_an_interruption_between_the_renames_keeps_the_old_output(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.json").write_text("old")
    real = os.rename

    def rename(src, dst, *args, **kwargs):
        if Path(src).name.startswith(".out.tmp-") and Path(dst) == out:
            raise KeyboardInterrupt  # SIGTERM right after the old output was moved aside
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(KeyboardInterrupt):
        with atomic_output_dir(out, force=True) as tmp:
            (tmp / "config.json").write_text("new")
    assert (out / "config.json").read_text() == "old" and leftovers(tmp_path) == []


def test_with_force_a_sigterm_between_the_renames_waits_for_both(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.json").write_text("old")
    real = os.rename

    def rename(src, dst, *args, **kwargs):
        real(src, dst, *args, **kwargs)
        if Path(src) == out:  # SIGTERM right after the old output was moved aside
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(KeyboardInterrupt):
        with atomic_output_dir(out, force=True) as tmp:
            (tmp / "config.json").write_text("new")
    assert snapshot(tmp_path) == {"out": None, "out/config.json": b"new"}


# --- 7. SIGTERM and kill -9 ------------------------------------------------------------------------------------------


def sigterm_now():
    """SIGTERM to this process, as `kill` would send it (refused while SIGTERM would end the test run)."""
    assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL, "SIGTERM is not handled: it would end the run"
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(5)  # the handler raises before this ends
    raise AssertionError("SIGTERM did not interrupt")


def test_sigterm_during_a_conversion_leaves_nothing(tiny_t5, tmp_path, capsys, monkeypatch):
    real = folder_module.stream_convert

    def stream_convert(folder, tmp, *args, **kwargs):
        real(folder, tmp, *args, **kwargs)
        assert (tmp / "model.safetensors").is_file()
        sigterm_now()

    monkeypatch.setattr(folder_module, "stream_convert", stream_convert)
    previous = signal.getsignal(signal.SIGTERM)
    code, _, err = run_cli(capsys, "convert", tiny_t5, "--groups", 2, "-o", tmp_path / "out")
    assert code == 128 + signal.SIGTERM
    assert err.strip().splitlines()[-1] == "hf-gqa: terminated; nothing was written"
    assert list(tmp_path.iterdir()) == [] and signal.getsignal(signal.SIGTERM) is previous


@pytest.mark.parametrize("force", [False, True])
def test_sigterm_inside_atomic_output_dir_leaves_nothing(tmp_path, force):
    out = tmp_path / "out"
    if force:
        out.mkdir()
        (out / "config.json").write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_output_dir(out, force=force) as tmp:
            (tmp / "model.safetensors").write_bytes(b"0" * 1000)
            sigterm_now()
    assert snapshot(tmp_path) == ({"out": None, "out/config.json": b"old"} if force else {})


CHILD = """
import sys, time
import hf_gqa.conversion.folder as folder
from hf_gqa.cli import main
real = folder.stream_convert
def stream_convert(*args, **kwargs):
    result = real(*args, **kwargs)
    print("ready", flush=True)
    time.sleep(300)
    return result
folder.stream_convert = stream_convert
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow  # two fresh interpreters importing hf-gqa; the tests above cover the same in this process
def test_real_processes_sigterm_and_kill_9(tiny_t5, tmp_path, capsys):
    """`kill` and `kill -9` of real `hf-gqa convert` processes (started together: each import takes seconds)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    children = {}
    for how in ("term", "kill"):
        (tmp_path / how).mkdir()
        argv = ["convert", tiny_t5, "--groups", 2, "-o", tmp_path / how / "out"]
        command = [sys.executable, "-c", CHILD, *map(str, argv)]
        children[how] = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    for how, child in children.items():
        assert child.stdout.readline().strip() == "ready", child.communicate()[1]
        assert leftovers(tmp_path / how)  # the temporary folder, while it runs
    children["term"].send_signal(signal.SIGTERM)
    children["kill"].kill()
    _, err = children["term"].communicate(timeout=120)
    assert children["term"].returncode == 128 + signal.SIGTERM, err
    assert err.strip().splitlines()[-1] == "hf-gqa: terminated; nothing was written"
    assert list((tmp_path / "term").iterdir()) == []
    children["kill"].communicate(timeout=120)
    (stale,) = leftovers(tmp_path / "kill")  # kill -9 runs no cleanup: the next run to the same output does
    alive = tmp_path / "kill" / ".out.tmp-0123abcd"  # a run still going (this process) is left alone
    alive.mkdir()
    (alive / ".hf-gqa-owner").write_text(f"{os.getpid()} {socket.gethostname()}\n")
    code, _, err = run_cli(capsys, "convert", tiny_t5, "--groups", 2, "-o", tmp_path / "kill" / "out")
    assert code == 0, err
    assert leftovers(tmp_path / "kill") == [alive.name]
    (line,) = [line for line in err.splitlines() if "removed" in line]
    assert line.startswith("hf-gqa: removed ") and stale in line and "interrupted" in line


def test_the_sigterm_handler_is_installed_only_while_writing(tmp_path, capsys, tiny_t5):
    previous = signal.getsignal(signal.SIGTERM)
    with atomic_output_dir(tmp_path / "out"):
        assert signal.getsignal(signal.SIGTERM) is not previous
    assert signal.getsignal(signal.SIGTERM) is previous
    code, _, err = run_cli(capsys, "convert", tiny_t5, "--groups", 2, "-o", tmp_path / "cli")
    assert code == 0, err
    assert signal.getsignal(signal.SIGTERM) is previous

    def own(signum, frame):  # an application's own handler is left alone
        pass

    signal.signal(signal.SIGTERM, own)
    try:
        with atomic_output_dir(tmp_path / "own"):
            assert signal.getsignal(signal.SIGTERM) is own
    finally:
        signal.signal(signal.SIGTERM, previous)
    errors = []

    def in_a_thread():  # only the main thread may set signal handlers
        try:
            with atomic_output_dir(tmp_path / "thread") as tmp:
                (tmp / "x").write_text("x")
        except Exception as error:  # pragma: no cover - the failure is reported below
            errors.append(error)

    thread = threading.Thread(target=in_a_thread)
    thread.start()
    thread.join()
    assert not errors and (tmp_path / "thread" / "x").is_file()


def dead_pid() -> str:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return done.stdout.strip()


def test_the_next_run_removes_what_a_killed_run_left(tiny_t5, tmp_path, capsys):
    out = tmp_path / "out"
    with atomic_output_dir(out) as tmp:  # what a run leaves when killed: its folder, with its owner
        owner = (tmp / ".hf-gqa-owner").read_text()
    assert owner == f"{os.getpid()} {socket.gethostname()}\n" and not (out / ".hf-gqa-owner").exists()
    (out / "config.json").write_text("{}")  # a previous output, which the killed --force run had not replaced yet
    folders = {"killed": ".out.tmp-0000dead", "killed-old": ".out.old-0001dead", "alive": ".out.tmp-0123abcd"}
    folders.update({"unknown": ".out.tmp-99999999", "other-output": ".out2.tmp-0000dead"})
    for what, name in folders.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.safetensors").write_bytes(b"0" * 100)
        if what != "unknown":
            pid = os.getpid() if what == "alive" else dead_pid()
            (tmp_path / name / ".hf-gqa-owner").write_text(f"{pid} {socket.gethostname()}\n")
    code, _, err = run_cli(capsys, "convert", tiny_t5, "--groups", 2, "-o", out, "--force")
    assert code == 0, err
    left = {folders[what] for what in ("alive", "unknown", "other-output")}
    assert set(leftovers(tmp_path)) == left and (out / "config.json").is_file()
    (line,) = [line for line in err.splitlines() if "removed" in line]
    assert line.startswith("hf-gqa: removed ") and "interrupted" in line
    assert folders["killed"] in line and folders["killed-old"] in line and folders["alive"] not in line
    (note,) = [line for line in err.splitlines() if line.startswith("hf-gqa: note:")]
    assert folders["unknown"] in note


def test_a_killed_force_run_gets_its_old_output_back(tmp_path, capsys):
    out = tmp_path / "out"
    # kill -9 after the old output was moved aside and before the new one was renamed in
    old = tmp_path / ".out.old-0123abcd"
    old.mkdir()
    (old / "who").write_text("old")
    (old / ".hf-gqa-owner").write_text(f"{dead_pid()} {socket.gethostname()}\n")
    with pytest.raises(OutputExistsError, match="not empty"):
        check_output_dir(out)
    assert snapshot(out) == {"who": b"old"} and leftovers(tmp_path) == []
    assert "restored" in capsys.readouterr().err


# --- 8. ~ in paths ---------------------------------------------------------------------------------------------------


@pytest.fixture
def home(tmp_path, monkeypatch, tiny_t5, tiny_wgqa):
    home = tmp_path / "home"
    shutil.copytree(tiny_t5, home / "t5")
    shutil.copytree(tiny_wgqa, home / "wgqa")
    monkeypatch.setenv("HOME", str(home))
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return home


@pytest.mark.parametrize("in_memory", [False, True])
def test_tilde_in_python_api_paths(home, in_memory):
    report = convert_to_folder("~/t5", "~/gqa2", GQA2, in_memory=in_memory, progress=False)
    assert (home / "gqa2" / "config.json").is_file() and report.output == home / "gqa2"
    report = fold_to_folder("~/wgqa", "~/folded", in_memory=in_memory, progress=False)
    assert (home / "folded" / "config.json").is_file() and report.output == home / "folded"
    assert hf_gqa.load_source("~/t5").config.num_heads == 8
    assert load_model("~/gqa2", load_config_dict("~/gqa2")).config.num_key_value_heads == 2
    hf_gqa.save_converted(hf_gqa.convert("~/t5", groups=4), "~/gqa4")
    assert (home / "gqa4" / "config.json").is_file()
    assert list(Path.cwd().iterdir()) == []  # no literal ./~


def test_tilde_in_a_yaml_config(home, capsys):
    config = home / "convert.yaml"
    config.write_text("source: ~/t5\noutput: ~/from-yaml\ngroups: 2\n")
    code, out, err = run_cli(capsys, "convert", "--config", "~/convert.yaml")
    assert code == 0, err
    assert (home / "from-yaml" / "config.json").is_file() and list(Path.cwd().iterdir()) == []
    args = recipe_args(model_name_or_path="~/t5", output_dir="~/run")
    assert training_run.check_output_dir(args, resuming=False) == home / "run"
