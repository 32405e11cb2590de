"""`hf-gqa push FOLDER REPO`: upload a converted or uptrained checkpoint folder to the Hugging Face Hub."""

from pathlib import Path

from ..errors import HfGqaError
from ..io.hub import push_folder


def add_parser(sub) -> None:
    parser = sub.add_parser(
        "push",
        help="upload a converted or uptrained checkpoint folder to the Hub",
        description="Create the Hub model repo REPO if needed and upload FOLDER (a checkpoint folder: config.json, "
        "weights, tokenizer, model card) to it. Needs Hub access and a token (`hf auth login` or HF_TOKEN).",
    )
    parser.add_argument("folder", metavar="FOLDER", help="a local checkpoint folder (e.g. the output of convert)")
    parser.add_argument("repo", metavar="REPO", help="the Hub repo id, e.g. me/t5-small-gqa4")
    parser.add_argument("--private", action="store_true", help="create the repo as private")


def run(args) -> int:
    folder = Path(args.folder).expanduser()
    if not folder.is_dir():
        raise HfGqaError(f"no such folder {args.folder!r}")
    if not (folder / "config.json").is_file():
        raise HfGqaError(f"{args.folder!r} has no config.json: it is not a checkpoint folder")
    url = push_folder(folder, args.repo, private=args.private)
    print(f"pushed to {args.repo}: {url}")
    return 0
