"""The final model's card and its upload: `publish_model` writes `OUT/model/README.md` (conversion.cards'
`uptrained_card`: the run's options and results as a model-index), copies the licence files of a local source beside
it, and, with `push_to_hub`, uploads `OUT/model` (the inference form, with its tokenizer and that card) to
`hub_model_id`, as `Trainer.push_to_hub` does."""

import json
import sys
from pathlib import Path

from ..conversion.cards import uptrained_card
from ..errors import HfGqaError
from ..io.hub import push_folder
from ..io.output import copy_license_files


def publish_model(output_dir: str | Path, args, results: dict) -> str | None:
    """(Main process, after the model and `all_results.json` are saved.) Write the model card of `OUT/model` and
    copy the source's licence files there; push that folder when `args.push_to_hub`. Returns the commit URL, or None
    when nothing was pushed."""
    model_dir = Path(output_dir) / "model"
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    location = args.hub_model_id if args.hub_model_id else str(model_dir)
    name = args.hub_model_id or args.run_name or Path(output_dir).name
    copy_license_files(args.model_name_or_path, model_dir)
    try:
        card = uptrained_card(config, results, location, model_name=name)
    except HfGqaError as error:  # the model and results are saved: a card that fails the spec stops only the push
        if args.push_to_hub:
            raise
        print(f"warning: no model card written: {error}", file=sys.stderr)
    else:
        (model_dir / "README.md").write_text(card, encoding="utf-8")
    if not args.push_to_hub:
        return None
    message = f"Upload {config.get('model_type')} uptrained with hf-gqa ({results.get('train_steps')} steps)"
    return push_folder(model_dir, args.hub_model_id, private=args.hub_private, commit_message=message)


__all__ = ["publish_model"]
