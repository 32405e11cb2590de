"""`hf-gqa push FOLDER REPO`: upload a converted or uptrained checkpoint folder to the Hugging Face Hub, with the model
card conversion.cards writes (the same as `convert --push-to-hub` and the recipe's `push_to_hub`)."""

import json
import sys
from pathlib import Path

from ..conversion.cards import check_card, folder_card
from ..errors import HfGqaError
from ..io.hub import push_folder

RESULTS = "all_results.json"


def add_parser(sub) -> None:
    parser = sub.add_parser(
        "push",
        help="upload a converted or uptrained checkpoint folder to the Hub",
        description="Create the Hub model repo REPO if needed and upload FOLDER (a checkpoint folder: config.json, "
        "weights, tokenizer, model card) to it. The model card (README.md) is hf-gqa's, checked against the Hub's "
        "metadata spec, its loading code naming REPO: a converted folder's card is kept with its metadata (base "
        "model, inherited licence); the model of an uptraining run (RUN/model, or the run folder RUN) gets a card "
        f"with the run's options and results (RUN/{RESULTS}) as a model-index; a card hf-gqa did not write is "
        "uploaded as it is. Needs Hub access and a token (`hf auth login` or HF_TOKEN).",
    )
    parser.add_argument(
        "folder", metavar="FOLDER", help="a local checkpoint folder (the output of convert or fold, RUN/model) or RUN"
    )
    parser.add_argument("repo", metavar="REPO", help="the Hub repo id, e.g. me/t5-small-gqa4")
    parser.add_argument("--private", action="store_true", help="create the repo as private")


def resolve_folder(path: str | Path) -> tuple[Path, dict | None]:
    """The checkpoint folder to upload and, for an uptraining run's model, the run's results: FOLDER itself, or the
    `model/` of a run folder."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise HfGqaError(f"no such folder {str(path)!r}")
    if not (folder / "config.json").is_file() and (folder / "model" / "config.json").is_file():
        folder = folder / "model"  # a run folder of the recipe
    if not (folder / "config.json").is_file():
        raise HfGqaError(f"{str(path)!r} has no config.json: it is not a checkpoint folder")
    results_file = folder.parent / RESULTS if folder.name == "model" else None
    if results_file is None or not results_file.is_file():
        return folder, None
    try:
        return folder, json.loads(results_file.read_text(encoding="utf-8"))
    except ValueError:
        raise HfGqaError(f"{str(results_file)!r} is not JSON: cannot write the model card") from None


def run(args) -> int:
    folder, results = resolve_folder(args.folder)
    card = folder_card(folder, args.repo, results)
    if card is not None:
        (folder / "README.md").write_text(card, encoding="utf-8")
        print(f"wrote the model card {folder / 'README.md'} for {args.repo}")
    elif (folder / "README.md").is_file():  # a card hf-gqa did not write: uploaded as it is, checked
        try:
            check_card((folder / "README.md").read_text(encoding="utf-8"))
        except HfGqaError as error:
            print(f"warning: {folder / 'README.md'}: {error}", file=sys.stderr)
    url = push_folder(folder, args.repo, private=args.private)
    print(f"pushed to {args.repo}: {url}")
    return 0
